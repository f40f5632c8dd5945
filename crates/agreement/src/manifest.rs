//! The agreement manifest model (DESIGN §2).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::{AgreementError, PublicKey, Signature};

/// The identifier both parties match their customers on: the normalizer's own type, so a
/// manifest can only name what `accord-psi` normalizes (`email`, `phone`, `customer_id`).
pub use accord_psi::IdentifierKind;

/// The special categories of personal data (GDPR art. 9) that need an explicit basis:
/// the accepted values of a contribution's `special_category`.
pub const SPECIAL_CATEGORIES: [&str; 7] = [
    "health",
    "religion",
    "ethnicity",
    "politics",
    "sexual_orientation",
    "biometrics",
    "union_membership",
];

/// A parsed and structurally valid agreement manifest. Build it with [`Manifest::parse`];
/// only [`crate::verify`] also checks signatures and the validity window.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Version of the manifest format; always 1.
    pub schema_version: u32,
    /// The agreement's identifier (stable across versions).
    pub id: String,
    /// The agreement's version; a changed agreement carries a higher version.
    pub version: u64,
    /// What the data may be used for, in plain words.
    pub purpose: String,
    /// Anything legal wants on record (signed, unlike `#` comments).
    pub notes: Option<String>,
    /// Start of the validity window (inclusive).
    pub valid_from: DateTime<Utc>,
    /// End of the validity window (inclusive).
    pub valid_until: DateTime<Utc>,
    /// k: the smallest group any result may describe (at least 10).
    pub min_group_size: u32,
    /// The identifier both parties match on.
    pub identifier: IdentifierKind,
    /// ISO 3166 alpha-2 country for national phone numbers (phone only).
    pub default_region: Option<String>,
    /// The parties, by name.
    pub parties: BTreeMap<String, Party>,
    /// The analysts allowed to query, in file order.
    pub analysts: Vec<Analyst>,
    /// What queries may compute and with which protection.
    pub privacy: Privacy,
    /// Who may read and verify the audit log besides the parties (legal, a regulator), in
    /// file order.
    pub auditors: Vec<Auditor>,
    /// The room that serves this agreement: its operator and its Ed25519 key (`[room]`).
    /// Signed like everything else: clients refuse a room presenting another key, and the
    /// room refuses to register an agreement written for another room.
    pub room: RoomSection,
    /// Each party's signature over the canonical bytes, by party name (not signed itself).
    pub signatures: BTreeMap<String, Signature>,
    /// Signatures over the same canonical bytes by party keys of the version this one
    /// supersedes that are no longer party keys here (key rotation: the old keys authorize
    /// the new ones). Not signed itself; see `docs/AGREEMENTS.md`, "New versions and key
    /// rotation".
    pub rotation_signatures: Vec<(PublicKey, Signature)>,
}

/// Someone who may read and verify the audit log (DESIGN §2, "Auditors"): legal or a
/// regulator. An auditor cannot query and cannot act for a party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auditor {
    /// The auditor's name (often an e-mail address).
    pub name: String,
    /// The key the auditor authenticates with.
    pub public_key: PublicKey,
}

/// The `[room]` section: who operates the room and the key it proves itself with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSection {
    /// Who runs the room (a company or a person), as legal should read it.
    pub operator: String,
    /// The room's Ed25519 public key (`accord room key` prints it).
    pub public_key: PublicKey,
}

/// One party to the agreement.
#[derive(Debug, Clone, PartialEq)]
pub struct Party {
    /// The key the party signs and authenticates with.
    pub public_key: PublicKey,
    /// Upload cap: the most rows the party may upload.
    pub max_rows: u64,
    /// The party's column saying whether a customer consented; other rows are never uploaded.
    pub consent_column: String,
    /// The columns the party shares, in file order.
    pub contributes: Vec<Contribution>,
}

/// One column a party shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// The column's name in the party's data (and `<party>_<column>` in the room).
    pub column: String,
    /// Whether it is a category or a number.
    pub role: ColumnRole,
    /// The special category of personal data it holds, if any (see [`SPECIAL_CATEGORIES`]).
    pub special_category: Option<String>,
    /// The legal basis for a special category: only `"explicit-consent"` is accepted.
    pub legal_basis: Option<String>,
}

/// What a shared column is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColumnRole {
    /// A category results may be grouped and filtered by.
    Dimension,
    /// A number that may only be aggregated; values are clamped to `[min, max]`.
    Metric {
        /// Smallest value (finite, below `max`).
        min: f64,
        /// Largest value (finite).
        max: f64,
    },
}

/// Someone allowed to query the room under this agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analyst {
    /// The analyst's name (often an e-mail address).
    pub name: String,
    /// The party responsible for this analyst (whose privacy budget they spend).
    pub party: String,
    /// The key the analyst authenticates with.
    pub public_key: PublicKey,
}

/// What queries may compute and with which protection.
#[derive(Debug, Clone, PartialEq)]
pub struct Privacy {
    /// The aggregate functions allowed.
    pub aggregates: Vec<Aggregate>,
    /// Differential privacy or exact results.
    pub mode: PrivacyMode,
}

/// An aggregate function analysts may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Aggregate {
    /// `COUNT`.
    Count,
    /// `SUM` over a metric.
    Sum,
    /// `AVG` over a metric.
    Avg,
}

impl Aggregate {
    /// The manifest spelling: `"count"`, `"sum"` or `"avg"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Avg => "avg",
        }
    }

    /// Parses the manifest spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "count" => Some(Aggregate::Count),
            "sum" => Some(Aggregate::Sum),
            "avg" => Some(Aggregate::Avg),
            _ => None,
        }
    }
}

/// Whether results carry calibrated noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PrivacyMode {
    /// Differential privacy (the room refuses it until it is implemented).
    DifferentialPrivacy {
        /// ε spent by each query.
        epsilon_per_query: f64,
        /// Total ε per party for this agreement.
        budget: f64,
        /// δ of (ε, δ)-differential privacy.
        delta: f64,
    },
    /// No noise: an explicit opt-in with a known risk (see `accord agreement show`).
    ExactResults,
}

/// SHA-256 of an agreement's canonical bytes; shown to people as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub(crate) [u8; 32]);

impl Fingerprint {
    /// Wraps 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = AgreementError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(AgreementError::Encoding {
                what: "fingerprint",
                reason: "it must be 64 lowercase hex digits (as `accord agreement show` prints it)"
                    .to_owned(),
            });
        }
        hex::decode_to_slice(s, &mut out).map_err(|e| AgreementError::Encoding {
            what: "fingerprint",
            reason: format!("it is not hex ({e})"),
        })?;
        Ok(Fingerprint(out))
    }
}

/// Every problem found in a manifest, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The problems (never empty).
    pub problems: Vec<Problem>,
}

impl ManifestError {
    /// Whether some problem is about `key` (exactly) — handy in tests and tools.
    pub fn has(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key == key)
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

/// One problem in a manifest: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the manifest text, when known.
    pub line: Option<usize>,
    /// The key concerned, as a path: `parties.drinks.contributes[1].max`.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}, ")?;
        }
        write!(f, "{}: {} (fix: {})", self.key, self.message, self.fix)
    }
}

// The model depends on nothing but keys and errors: `Manifest::parse` is implemented in
// `parse.rs`, `canonical_bytes` and `fingerprint` in `canonical.rs`, `is_signed_by` in
// `verify.rs`, so the modules' imports point one way (manifest ← canonical ← parse ← verify).
impl Manifest {
    /// The contribution `column` of `party`, if the agreement shares it.
    pub fn column(&self, party: &str, column: &str) -> Option<&Contribution> {
        self.parties
            .get(party)?
            .contributes
            .iter()
            .find(|c| c.column == column)
    }

    /// The party whose key is `key` (not analysts' keys).
    pub fn party_of_key(&self, key: &PublicKey) -> Option<&str> {
        self.parties
            .iter()
            .find(|(_, p)| p.public_key == *key)
            .map(|(name, _)| name.as_str())
    }

    /// The analyst named `name`.
    pub fn analyst(&self, name: &str) -> Option<&Analyst> {
        self.analysts.iter().find(|a| a.name == name)
    }

    /// The analyst whose key is `key`.
    pub fn analyst_by_key(&self, key: &PublicKey) -> Option<&Analyst> {
        self.analysts.iter().find(|a| a.public_key == *key)
    }

    /// The auditor whose key is `key`.
    pub fn auditor_by_key(&self, key: &PublicKey) -> Option<&Auditor> {
        self.auditors.iter().find(|a| a.public_key == *key)
    }

    /// Whether `now` is inside `[valid_from, valid_until]`.
    pub fn is_in_window(&self, now: DateTime<Utc>) -> bool {
        self.valid_from <= now && now <= self.valid_until
    }

    /// The party names, comma-separated (for messages).
    pub(crate) fn party_names(&self) -> String {
        self.parties.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_text_round_trip() {
        let fp = Fingerprint::from_bytes([0xab; 32]);
        let text = fp.to_string();
        assert_eq!(text, "ab".repeat(32));
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        assert!("AB".repeat(32).parse::<Fingerprint>().is_err());
        assert!("ab".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn problem_display_names_line_key_and_fix() {
        let p = Problem {
            line: Some(12),
            key: "parties.drinks.contributes[1].max".into(),
            message: "a metric needs bounds".into(),
            fix: "add max".into(),
        };
        assert_eq!(
            p.to_string(),
            "line 12, parties.drinks.contributes[1].max: a metric needs bounds (fix: add max)"
        );
    }
}
