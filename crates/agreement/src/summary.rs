//! The template legal starts from and the plain-language summary legal reviews.

use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};

use crate::PublicKey;
use crate::builder::quote;
use crate::canonical::rfc3339;
use crate::manifest::{ColumnRole, IdentifierKind, Manifest, PrivacyMode, RoomSection};
use crate::verify::{SignatureStatus, signature_status};

/// A commented manifest legal can fill in: valid as it stands once every party signed
/// (for `phone`, use [`template_with_region`] to set `default_region`).
pub fn template(
    id: &str,
    identifier: IdentifierKind,
    parties: &[(String, PublicKey)],
    room: Option<&RoomSection>,
    now: DateTime<Utc>,
) -> String {
    template_with_region(id, identifier, None, parties, room, now)
}

/// [`template`] with `default_region` (needed when `identifier` is phone).
pub fn template_with_region(
    id: &str,
    identifier: IdentifierKind,
    default_region: Option<&str>,
    parties: &[(String, PublicKey)],
    room: Option<&RoomSection>,
    now: DateTime<Utc>,
) -> String {
    let start = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc())
        .unwrap_or(now);
    let end = start + Duration::days(90) - Duration::seconds(1);
    let mut t = String::new();
    let _ = writeln!(t, "# Accord sharing agreement. Guide: docs/AGREEMENTS.md");
    let _ = writeln!(
        t,
        "# Review with `accord agreement show FILE`; every party signs with"
    );
    let _ = writeln!(
        t,
        "# `accord agreement sign FILE --party NAME --key KEYFILE`."
    );
    let _ = writeln!(
        t,
        "# Comments (#) carry no meaning and are not signed; everything else is."
    );
    let _ = writeln!(t);
    let _ = writeln!(t, "schema_version = 1");
    let _ = writeln!(t, "id = {}", quote(id));
    let _ = writeln!(
        t,
        "version = 1                         # a changed agreement is a new, higher version"
    );
    let _ = writeln!(
        t,
        "purpose = \"Describe in plain words what the shared data may be used for\""
    );
    let _ = writeln!(
        t,
        "notes = \"Anything legal wants on record (signed, unlike comments)\""
    );
    let _ = writeln!(t, "valid_from = {}", rfc3339(&start));
    let _ = writeln!(t, "valid_until = {}", rfc3339(&end));
    let _ = writeln!(
        t,
        "min_group_size = 50                 # k: smallest group any result may describe (>= 10)"
    );
    let _ = writeln!(
        t,
        "identifier = {}              # email | phone | customer_id",
        quote(identifier.as_str())
    );
    match default_region {
        Some(r) => {
            let _ = writeln!(
                t,
                "default_region = {}              # phone only: country of national numbers",
                quote(r)
            );
        }
        None if identifier == IdentifierKind::Phone => {
            let _ = writeln!(
                t,
                "default_region = \"??\"              # REQUIRED for phone: ISO country code such as \"IS\""
            );
        }
        None => {}
    }
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "# The room that serves this agreement: who runs it and its key (`accord room key` on the"
    );
    let _ = writeln!(
        t,
        "# room's machine prints it). Parties and analysts refuse a room presenting any other key."
    );
    let _ = writeln!(t, "[room]");
    match room {
        Some(r) => {
            let _ = writeln!(t, "operator = {}", quote(&r.operator));
            let _ = writeln!(t, "public_key = {}", quote(&r.public_key.to_string()));
        }
        None => {
            let _ = writeln!(t, "operator = \"REPLACE with who runs the room\"");
            let _ = writeln!(
                t,
                "public_key = \"REPLACE with the output of `accord room key --data-dir DIR` on the room\""
            );
        }
    }
    for (name, key) in parties {
        let _ = writeln!(t);
        let _ = writeln!(t, "[parties.{name}]");
        let _ = writeln!(t, "public_key = {}", quote(&key.to_string()));
        let _ = writeln!(
            t,
            "max_rows = 1_000_000                # upload cap: stops dictionary uploads"
        );
        let _ = writeln!(
            t,
            "consent_column = \"consent_partner_marketing\"   # rows without consent are never uploaded"
        );
        let _ = writeln!(t, "contributes = [");
        let _ = writeln!(
            t,
            "  # {{ column = \"loyalty_tier\",  role = \"dimension\" }},"
        );
        let _ = writeln!(
            t,
            "  # {{ column = \"monthly_spend\", role = \"metric\", min = 0, max = 500 }},"
        );
        let _ = writeln!(t, "]");
    }
    let _ = writeln!(t);
    let _ = writeln!(t, "# One [[analysts]] section per person allowed to query:");
    let _ = writeln!(t, "# [[analysts]]");
    let _ = writeln!(t, "# name = \"ana@example.com\"");
    let _ = writeln!(
        t,
        "# party = \"{}\"",
        parties.first().map(|(n, _)| n.as_str()).unwrap_or("party")
    );
    let _ = writeln!(t, "# public_key = \"ed25519:…\"");
    let _ = writeln!(t);
    let _ = writeln!(t, "[privacy]");
    let _ = writeln!(t, "aggregates = [\"count\", \"sum\", \"avg\"]");
    let _ = writeln!(t, "# Exactly one of the two lines below.");
    let _ = writeln!(
        t,
        "# Differential privacy (the default): every answer is noisy, and each party's analysts share a"
    );
    let _ = writeln!(
        t,
        "# budget of {DEFAULT_BUDGET} that each query spends {DEFAULT_EPSILON} of. `accord agreement show` explains it; docs/PRIVACY.md has the details."
    );
    let _ = writeln!(
        t,
        "differential_privacy = {{ epsilon_per_query = {DEFAULT_EPSILON}, budget = {DEFAULT_BUDGET}, delta = {DEFAULT_DELTA} }}"
    );
    let _ = writeln!(
        t,
        "# WARNING: without noise, a party that controls its own values can learn whether one"
    );
    let _ = writeln!(
        t,
        "# specific customer is shared, whatever min_group_size is. Read docs/AGREEMENTS.md."
    );
    let _ = writeln!(t, "# exact_results = true");
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "# One [[auditors]] section per person (legal, a regulator) who may read the audit log besides the parties:"
    );
    let _ = writeln!(t, "# [[auditors]]");
    let _ = writeln!(t, "# name = \"legal@example.com\"");
    let _ = writeln!(t, "# public_key = \"ed25519:…\"");
    t
}

/// ε per query `accord agreement init` writes.
pub const DEFAULT_EPSILON: &str = "0.5";
/// Total ε per party `accord agreement init` writes.
pub const DEFAULT_BUDGET: &str = "10.0";
/// δ per query `accord agreement init` writes.
pub const DEFAULT_DELTA: &str = "1e-6";

/// Plain-language sentences about a DP setting, for `accord agreement show`.
fn dp_explanation(epsilon: f64, budget: f64, delta: f64, k: u32) -> Vec<String> {
    let queries = (budget / epsilon + 1e-9).floor();
    let factor = epsilon.exp();
    // A COUNT(*) query measures one number per group: scale 1/ε; the error of one
    // discrete Laplace draw has standard deviation √(2q)/(1−q), q = e^(−ε).
    let q = (-epsilon).exp();
    let sd = (2.0 * q).sqrt() / (1.0 - q);
    let relative = 100.0 * sd / f64::from(k);
    let total = queries * delta;
    let max = crate::MAX_TOTAL_DELTA;
    vec![
        format!(
            "What epsilon {epsilon} means for one customer: whether or not any one customer is in the data, \
             each answer is almost equally likely — at most {factor:.2} times (e^{epsilon}) more likely one way than the other. \
             So no answer reveals much about one person, whether they are shared or what they spend."
        ),
        format!(
            "Budget: each party's analysts share a total epsilon of {budget}, so together they get {queries} \
             queries under this agreement; then the room refuses further queries. Over all of them the factor \
             above grows to at most e^{budget} for that party's analysts (and the other party has its own budget)."
        ),
        format!(
            "Accuracy: a count of a group of k = {k} customers is off by about {sd:.1} (standard deviation), \
             about {relative:.1}% of {k}; queries with several aggregates split epsilon between them and are noisier."
        ),
        format!(
            "Groups are shown only when their noisy size is large enough (at least k = {k}, more when a query \
             asks several aggregates), so a group of one customer appears with probability below delta = {delta} \
             per answer; over all {queries} answers at most {total:e} (the room refuses agreements where this \
             exceeds {max:e})."
        ),
    ]
}

/// The parties that operate the room, with why: the operator text names the party (its name,
/// case-insensitively), or the room key is the party's own key.
pub fn operator_parties(m: &Manifest) -> Vec<(String, &'static str)> {
    let operator = m.room.operator.trim().to_lowercase();
    m.parties
        .iter()
        .filter_map(|(name, p)| {
            if p.public_key == m.room.public_key {
                Some((name.clone(), "the room key is this party's own key"))
            } else if operator == name.to_lowercase() {
                Some((name.clone(), "the operator is this party"))
            } else {
                None
            }
        })
        .collect()
}

/// The output format of [`summary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryFormat {
    /// Plain text for a terminal.
    Text,
    /// Markdown for a review document.
    Markdown,
}

/// A plain-language summary of `manifest` for legal review: who shares what, for what,
/// until when, with which protections and risks, and who signed.
pub fn summary(manifest: &Manifest, now: DateTime<Utc>, format: SummaryFormat) -> String {
    let md = format == SummaryFormat::Markdown;
    let mut o = String::new();
    let heading = |o: &mut String, s: &str| {
        if md {
            let _ = writeln!(o, "\n## {s}\n");
        } else {
            let _ = writeln!(o, "\n{s}\n{}", "-".repeat(s.chars().count()));
        }
    };
    let bullet = if md { "- " } else { "  * " };
    let m = manifest;
    if md {
        let _ = writeln!(o, "# Agreement `{}`, version {}", m.id, m.version);
    } else {
        let _ = writeln!(o, "Agreement {}, version {}", m.id, m.version);
    }
    let _ = writeln!(o, "\nFingerprint: {}", m.fingerprint());
    let names: Vec<&str> = m.parties.keys().map(String::as_str).collect();
    let _ = writeln!(o, "Parties: {}", names.join(", "));
    let _ = writeln!(o, "Purpose: {}", m.purpose);
    if let Some(n) = &m.notes {
        let _ = writeln!(o, "Notes: {n}");
    }

    heading(&mut o, "When");
    let status = if now < m.valid_from {
        "NOT YET IN FORCE"
    } else if now > m.valid_until {
        "EXPIRED: no query may run and the room deletes the data"
    } else {
        "in force now"
    };
    let _ = writeln!(
        o,
        "From {} until {} (UTC): {status}.",
        rfc3339(&m.valid_from),
        rfc3339(&m.valid_until)
    );

    heading(&mut o, "What each party shares");
    let region = m
        .default_region
        .as_deref()
        .map(|r| format!(" (national numbers read as {r})"))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "Customers are matched on {}{region}. Only customers present in both parties' data are kept.",
        match m.identifier {
            IdentifierKind::Email => "e-mail address",
            IdentifierKind::Phone => "phone number",
            IdentifierKind::CustomerId => "customer number",
        }
    );
    for (name, p) in &m.parties {
        let _ = writeln!(
            o,
            "\n{name}: at most {} rows; only rows whose column `{}` is true (consent) are uploaded.",
            p.max_rows, p.consent_column
        );
        if p.contributes.is_empty() {
            let _ = writeln!(
                o,
                "{bullet}no columns: {name} only takes part in the matching"
            );
        }
        for c in &p.contributes {
            let role = match c.role {
                ColumnRole::Dimension => {
                    "a category results can be grouped and filtered by".to_owned()
                }
                ColumnRole::Metric { min, max } => {
                    format!("a number, only summed/averaged, each value clamped to [{min}, {max}]")
                }
            };
            let special = match (&c.special_category, &c.legal_basis) {
                (Some(k), Some(b)) => format!(" — SPECIAL-CATEGORY DATA ({k}), legal basis: {b}"),
                (Some(k), None) => format!(" — SPECIAL-CATEGORY DATA ({k})"),
                _ => String::new(),
            };
            let _ = writeln!(
                o,
                "{bullet}`{}` (in the room: `{name}_{}`): {role}{special}",
                c.column, c.column
            );
        }
    }

    heading(&mut o, "What is NOT shared");
    let _ = writeln!(
        o,
        "{bullet}Raw identifiers never leave a party: the room sees only doubly-blinded tokens it cannot reverse."
    );
    let _ = writeln!(
        o,
        "{bullet}Columns not listed above are never uploaded; rows without consent are never uploaded."
    );
    let _ = writeln!(
        o,
        "{bullet}Customers present at only one party are dropped before any query."
    );
    let _ = writeln!(
        o,
        "{bullet}Analysts see only aggregates (the allowed functions below), never single rows."
    );

    heading(&mut o, "Protections");
    let aggs: Vec<&str> = m.privacy.aggregates.iter().map(|a| a.as_str()).collect();
    let _ = writeln!(o, "{bullet}Allowed aggregates: {}.", aggs.join(", "));
    let _ = writeln!(
        o,
        "{bullet}Every result row describes at least {} customers (k); smaller groups are never shown.",
        m.min_group_size
    );
    match m.privacy.mode {
        PrivacyMode::ExactResults => {
            let _ = writeln!(o, "{bullet}Privacy mode: EXACT RESULTS (no noise).");
            let warn = "WARNING: results are exact. Without noise, a party that controls its own values \
(for example a planted metric, a planted category, or \"total minus everyone but X\") can learn \
whether one specific customer is shared with the other party — whatever k is. Only agree to \
this if every party is trusted not to try.";
            if md {
                let _ = writeln!(o, "\n> **{warn}**");
            } else {
                let _ = writeln!(o, "\n!! {warn}");
            }
        }
        PrivacyMode::DifferentialPrivacy {
            epsilon_per_query,
            budget,
            delta,
        } => {
            let _ = writeln!(
                o,
                "{bullet}Privacy mode: differential privacy, epsilon {epsilon_per_query} per query, total budget {budget} per party, delta {delta}."
            );
            for line in dp_explanation(epsilon_per_query, budget, delta, m.min_group_size) {
                let _ = writeln!(o, "{bullet}{line}");
            }
        }
    }

    heading(&mut o, "Analysts");
    if m.analysts.is_empty() {
        let _ = writeln!(
            o,
            "{bullet}none: nobody can query the room under this agreement"
        );
    }
    for a in &m.analysts {
        let _ = writeln!(
            o,
            "{bullet}{} for {} (key {})",
            a.name, a.party, a.public_key
        );
    }

    heading(
        &mut o,
        "Auditors (may read the audit log: every query's SQL and decision)",
    );
    let _ = writeln!(
        o,
        "{bullet}the parties ({}) always may",
        m.parties.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    for a in &m.auditors {
        let _ = writeln!(o, "{bullet}{} (key {})", a.name, a.public_key);
    }
    let _ = writeln!(
        o,
        "{bullet}analysts may not (they see only the answers to their own queries)"
    );

    heading(&mut o, "Room (who operates it, and its key)");
    let _ = writeln!(o, "{bullet}operator: {}", m.room.operator);
    let _ = writeln!(
        o,
        "{bullet}room key: {} (parties and analysts refuse a room presenting any other key)",
        m.room.public_key
    );
    let _ = writeln!(
        o,
        "{bullet}the room enforces every protection above; it sees blinded tokens, the agreed columns of \
         matched customers and the audit log, never raw identifiers (docs/THREAT_MODEL.md)"
    );
    for (party, why) in operator_parties(m) {
        let warn = format!(
            "WARNING: the room is operated by a party of this agreement ({party}: {why}). {party}'s own \
             state directory (its blinding key and the handles of its customers) together with the room's \
             data links each of {party}'s customers to the other party's attributes: the protections \
             above then rest on {party} not combining them. Prefer a neutral operator."
        );
        if md {
            let _ = writeln!(o, "\n> **{warn}**");
        } else {
            let _ = writeln!(o, "\n!! {warn}");
        }
    }

    heading(&mut o, "Signatures");
    for (key, _) in &m.rotation_signatures {
        let s = if m.is_signed_by(key) {
            "valid"
        } else {
            "INVALID (changed after signing or wrong key)"
        };
        let _ = writeln!(
            o,
            "{bullet}previous version's key {key} (key rotation): {s}"
        );
    }
    for name in m.parties.keys() {
        let s = match signature_status(m, name) {
            SignatureStatus::Valid => "valid",
            SignatureStatus::Missing => "MISSING",
            SignatureStatus::Invalid => "INVALID (changed after signing or wrong key)",
        };
        let _ = writeln!(o, "{bullet}{name}: {s}");
    }
    o
}
