//! Manifest TOML written from parts, for code that needs an agreement without a person writing
//! one: `accord demo` and the tests. The text is what legal would write by hand (one key per
//! line, `contributes` as an array of inline tables), so it reads like any other manifest;
//! nothing here validates — [`Manifest::parse`](crate::Manifest::parse) does, as for every
//! manifest. Legal's commented starting point is [`crate::template`] instead.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::PublicKey;
use crate::canonical::rfc3339;
use crate::manifest::{
    Aggregate, Analyst, Auditor, ColumnRole, Contribution, IdentifierKind, Party, PrivacyMode,
    RoomSection,
};

/// Builds the text of an unsigned manifest. Sign it with [`crate::sign_text`].
///
/// ```
/// # use accord_agreement::{Contribution, ManifestBuilder, Manifest, RoomSection, SecretKey};
/// # let key = |n: u8| SecretKey::from_seed(&[n; 32]).public_key();
/// let now = chrono::Utc::now();
/// let room = RoomSection { operator: "Neutral Rooms Ltd".into(), public_key: key(6) };
/// let text = ManifestBuilder::new("drinks-snacks", "Plan joint promotions", now, now + chrono::Duration::days(90), room)
///     .min_group_size(50)
///     .party("drinks", key(1), 1000, "consent", [Contribution::dimension("tier")])
///     .party("snacks", key(2), 1000, "consent", [Contribution::metric("spend", 0.0, 100.0)])
///     .analyst("ana@drinks.example", "drinks", key(3))
///     .exact_results()
///     .to_toml();
/// assert_eq!(Manifest::parse(&text).unwrap().min_group_size, 50);
/// ```
#[derive(Debug, Clone)]
pub struct ManifestBuilder {
    comment: Vec<String>,
    id: String,
    version: u64,
    purpose: String,
    notes: Option<String>,
    valid_from: DateTime<Utc>,
    valid_until: DateTime<Utc>,
    min_group_size: u32,
    identifier: IdentifierKind,
    default_region: Option<String>,
    parties: Vec<(String, Party)>,
    analysts: Vec<Analyst>,
    auditors: Vec<Auditor>,
    room: RoomSection,
    aggregates: Vec<Aggregate>,
    mode: Option<PrivacyMode>,
}

impl ManifestBuilder {
    /// A manifest with what has no sensible default: the id, the purpose, the validity window
    /// and the room. The rest starts as version 1, k = 50, `email`, all three aggregates,
    /// no parties, analysts or auditors, and no privacy mode (choose one with
    /// [`Self::exact_results`] or [`Self::differential_privacy`]; without one the text does
    /// not parse).
    pub fn new(
        id: &str,
        purpose: &str,
        valid_from: DateTime<Utc>,
        valid_until: DateTime<Utc>,
        room: RoomSection,
    ) -> Self {
        Self {
            comment: Vec::new(),
            id: id.to_owned(),
            version: 1,
            purpose: purpose.to_owned(),
            notes: None,
            valid_from,
            valid_until,
            min_group_size: 50,
            identifier: IdentifierKind::Email,
            default_region: None,
            parties: Vec::new(),
            analysts: Vec::new(),
            auditors: Vec::new(),
            room,
            aggregates: vec![Aggregate::Count, Aggregate::Sum, Aggregate::Avg],
            mode: None,
        }
    }

    /// A `#` comment line at the top of the file (not signed, like every comment).
    pub fn comment(mut self, line: &str) -> Self {
        self.comment.push(line.to_owned());
        self
    }

    /// The agreement's version.
    pub fn version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// Notes legal wants on record (signed).
    pub fn notes(mut self, notes: &str) -> Self {
        self.notes = Some(notes.to_owned());
        self
    }

    /// k, the smallest group a result may describe.
    pub fn min_group_size(mut self, k: u32) -> Self {
        self.min_group_size = k;
        self
    }

    /// The identifier both parties match on (for `phone`, also set [`Self::default_region`]).
    pub fn identifier(mut self, kind: IdentifierKind) -> Self {
        self.identifier = kind;
        self
    }

    /// The region national phone numbers are read in.
    pub fn default_region(mut self, region: &str) -> Self {
        self.default_region = Some(region.to_owned());
        self
    }

    /// A party, in the order given.
    pub fn party(
        mut self,
        name: &str,
        public_key: PublicKey,
        max_rows: u64,
        consent_column: &str,
        contributes: impl IntoIterator<Item = Contribution>,
    ) -> Self {
        self.parties.push((
            name.to_owned(),
            Party {
                public_key,
                max_rows,
                consent_column: consent_column.to_owned(),
                contributes: contributes.into_iter().collect(),
            },
        ));
        self
    }

    /// An analyst acting for `party`.
    pub fn analyst(mut self, name: &str, party: &str, public_key: PublicKey) -> Self {
        self.analysts.push(Analyst {
            name: name.to_owned(),
            party: party.to_owned(),
            public_key,
        });
        self
    }

    /// An auditor (reads and verifies the audit log).
    pub fn auditor(mut self, name: &str, public_key: PublicKey) -> Self {
        self.auditors.push(Auditor {
            name: name.to_owned(),
            public_key,
        });
        self
    }

    /// The aggregate functions analysts may use.
    pub fn aggregates(mut self, aggregates: impl IntoIterator<Item = Aggregate>) -> Self {
        self.aggregates = aggregates.into_iter().collect();
        self
    }

    /// Exact results (no noise): the explicit opt-in `exact_results = true`.
    pub fn exact_results(mut self) -> Self {
        self.mode = Some(PrivacyMode::ExactResults);
        self
    }

    /// Differential privacy with these parameters.
    pub fn differential_privacy(mut self, epsilon_per_query: f64, budget: f64, delta: f64) -> Self {
        self.mode = Some(PrivacyMode::DifferentialPrivacy {
            epsilon_per_query,
            budget,
            delta,
        });
        self
    }

    /// The manifest text, unsigned.
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        // Writing to a String cannot fail.
        let _ = self.write(&mut t);
        t
    }

    fn write(&self, t: &mut String) -> std::fmt::Result {
        for line in &self.comment {
            writeln!(t, "# {line}")?;
        }
        writeln!(t, "schema_version = 1")?;
        writeln!(t, "id = {}", quote(&self.id))?;
        writeln!(t, "version = {}", self.version)?;
        writeln!(t, "purpose = {}", quote(&self.purpose))?;
        if let Some(notes) = &self.notes {
            writeln!(t, "notes = {}", quote(notes))?;
        }
        writeln!(t, "valid_from = {}", rfc3339(&self.valid_from))?;
        writeln!(t, "valid_until = {}", rfc3339(&self.valid_until))?;
        writeln!(t, "min_group_size = {}", self.min_group_size)?;
        writeln!(t, "identifier = {}", quote(self.identifier.as_str()))?;
        if let Some(region) = &self.default_region {
            writeln!(t, "default_region = {}", quote(region))?;
        }
        for (name, party) in &self.parties {
            writeln!(t, "\n[parties.{name}]")?;
            writeln!(t, "public_key = {}", quote(&party.public_key.to_string()))?;
            writeln!(t, "max_rows = {}", party.max_rows)?;
            writeln!(t, "consent_column = {}", quote(&party.consent_column))?;
            writeln!(t, "contributes = [")?;
            for c in &party.contributes {
                write!(t, "  {{ column = {}", quote(&c.column))?;
                match c.role {
                    ColumnRole::Dimension => write!(t, ", role = \"dimension\"")?,
                    ColumnRole::Metric { min, max } => write!(
                        t,
                        ", role = \"metric\", min = {}, max = {}",
                        float(min),
                        float(max)
                    )?,
                }
                if let Some(category) = &c.special_category {
                    write!(t, ", special_category = {}", quote(category))?;
                }
                if let Some(basis) = &c.legal_basis {
                    write!(t, ", legal_basis = {}", quote(basis))?;
                }
                writeln!(t, " }},")?;
            }
            writeln!(t, "]")?;
        }
        for a in &self.analysts {
            writeln!(t, "\n[[analysts]]")?;
            writeln!(t, "name = {}", quote(&a.name))?;
            writeln!(t, "party = {}", quote(&a.party))?;
            writeln!(t, "public_key = {}", quote(&a.public_key.to_string()))?;
        }
        for a in &self.auditors {
            writeln!(t, "\n[[auditors]]")?;
            writeln!(t, "name = {}", quote(&a.name))?;
            writeln!(t, "public_key = {}", quote(&a.public_key.to_string()))?;
        }
        writeln!(t, "\n[room]")?;
        writeln!(t, "operator = {}", quote(&self.room.operator))?;
        writeln!(
            t,
            "public_key = {}",
            quote(&self.room.public_key.to_string())
        )?;
        writeln!(t, "\n[privacy]")?;
        let aggregates: Vec<String> = self.aggregates.iter().map(|a| quote(a.as_str())).collect();
        writeln!(t, "aggregates = [{}]", aggregates.join(", "))?;
        match self.mode {
            Some(PrivacyMode::ExactResults) => writeln!(t, "exact_results = true")?,
            Some(PrivacyMode::DifferentialPrivacy {
                epsilon_per_query,
                budget,
                delta,
            }) => writeln!(
                t,
                "differential_privacy = {{ epsilon_per_query = {}, budget = {}, delta = {} }}",
                float(epsilon_per_query),
                float(budget),
                float(delta)
            )?,
            None => {}
        }
        Ok(())
    }
}

impl Contribution {
    /// A dimension column (a category results may be grouped by).
    pub fn dimension(column: &str) -> Self {
        Contribution {
            column: column.to_owned(),
            role: ColumnRole::Dimension,
            special_category: None,
            legal_basis: None,
        }
    }

    /// A metric column clamped to `[min, max]`.
    pub fn metric(column: &str, min: f64, max: f64) -> Self {
        Contribution {
            column: column.to_owned(),
            role: ColumnRole::Metric { min, max },
            special_category: None,
            legal_basis: None,
        }
    }
}

/// A TOML basic string.
pub(crate) fn quote(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

/// A TOML float that reads back as exactly `x` (`500.0`, `1e-6`, `0.5`): Rust's shortest
/// round-trip form, which is TOML for every finite value (the parser refuses the others).
fn float(x: f64) -> String {
    if x.is_finite() {
        format!("{x:?}")
    } else {
        toml_edit::Value::from(x).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::key;
    use crate::{Manifest, Privacy};
    use chrono::TimeZone as _;

    fn room() -> RoomSection {
        RoomSection {
            operator: "Rooms \"R\" Us".into(),
            public_key: key(6).public_key(),
        }
    }

    /// Everything the builder can set comes back from the parser unchanged.
    #[test]
    fn every_field_round_trips_through_the_parser() {
        let from = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
        let until = Utc.with_ymd_and_hms(2027, 3, 31, 23, 59, 59).unwrap();
        let mut health = Contribution::dimension("health_plan");
        health.special_category = Some("health".into());
        health.legal_basis = Some("explicit-consent".into());
        let text = ManifestBuilder::new(
            "x-1",
            "Plan \"joint\" offers\nline two",
            from,
            until,
            room(),
        )
        .comment("made by a test")
        .version(3)
        .notes("on record")
        .min_group_size(12)
        .identifier(IdentifierKind::Phone)
        .default_region("IS")
        .party(
            "drinks",
            key(1).public_key(),
            2_000,
            "consent",
            [
                Contribution::dimension("tier"),
                Contribution::metric("spend", -1.5, 500.0),
            ],
        )
        .party("snacks", key(2).public_key(), 7, "ok", [health])
        .analyst("ana@drinks.example", "drinks", key(3).public_key())
        .auditor("legal@drinks.example", key(4).public_key())
        .aggregates([Aggregate::Count, Aggregate::Avg])
        .differential_privacy(0.5, 10.0, 1e-6)
        .to_toml();
        assert!(text.starts_with("# made by a test\n"), "{text}");
        let m = Manifest::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(m.id, "x-1");
        assert_eq!(m.version, 3);
        assert_eq!(m.purpose, "Plan \"joint\" offers\nline two");
        assert_eq!(m.notes.as_deref(), Some("on record"));
        assert_eq!((m.valid_from, m.valid_until), (from, until));
        assert_eq!(m.min_group_size, 12);
        assert_eq!(m.identifier, IdentifierKind::Phone);
        assert_eq!(m.default_region.as_deref(), Some("IS"));
        assert_eq!(
            m.column("drinks", "spend").unwrap().role,
            ColumnRole::Metric {
                min: -1.5,
                max: 500.0
            }
        );
        assert_eq!(m.parties["snacks"].max_rows, 7);
        assert_eq!(m.parties["snacks"].consent_column, "ok");
        assert_eq!(
            m.column("snacks", "health_plan")
                .unwrap()
                .legal_basis
                .as_deref(),
            Some("explicit-consent")
        );
        assert_eq!(m.analysts[0].party, "drinks");
        assert_eq!(m.auditors[0].public_key, key(4).public_key());
        assert_eq!(m.room, room());
        assert_eq!(
            m.privacy,
            Privacy {
                aggregates: vec![Aggregate::Count, Aggregate::Avg],
                mode: PrivacyMode::DifferentialPrivacy {
                    epsilon_per_query: 0.5,
                    budget: 10.0,
                    delta: 1e-6
                }
            }
        );
    }

    /// Without a privacy mode the text does not parse: the builder never picks exact results
    /// for its caller.
    #[test]
    fn no_privacy_mode_is_refused_by_the_parser() {
        let now = Utc::now();
        let text = ManifestBuilder::new("x-1", "p", now, now + chrono::Duration::days(1), room())
            .party("drinks", key(1).public_key(), 10, "c", [])
            .party("snacks", key(2).public_key(), 10, "c", [])
            .to_toml();
        let e = Manifest::parse(&text).unwrap_err();
        assert!(e.to_string().contains("privacy"), "{e}");
    }
}
