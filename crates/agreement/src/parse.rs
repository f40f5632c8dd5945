//! Parsing and validation: every rule of DESIGN §2, every problem reported with its line.
//!
//! The manifest is read into toml's spanned document tree and walked by hand rather than
//! deserialized with serde: the walk denies unknown keys in every table (like serde's
//! `deny_unknown_fields`) but keeps going after a problem, so legal sees every problem in
//! one run instead of fixing them one at a time.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone as _, Utc};
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use crate::manifest::{
    Aggregate, Analyst, Auditor, ColumnRole, Contribution, IdentifierKind, Manifest, ManifestError,
    Party, Privacy, PrivacyMode, Problem, RoomSection, SPECIAL_CATEGORIES,
};
use crate::{PublicKey, Signature};

type Value<'i> = Spanned<DeValue<'i>>;

/// Smallest k any agreement may set.
pub(crate) const MIN_K: u32 = 10;
const MAX_NAME: usize = 63;

const ROOT_KEYS: &[&str] = &[
    "schema_version",
    "id",
    "version",
    "purpose",
    "notes",
    "valid_from",
    "valid_until",
    "min_group_size",
    "identifier",
    "default_region",
    "parties",
    "analysts",
    "privacy",
    "auditors",
    "room",
    "signatures",
    "rotation_signatures",
];
const PARTY_KEYS: &[&str] = &["public_key", "max_rows", "consent_column", "contributes"];
const CONTRIBUTION_KEYS: &[&str] = &[
    "column",
    "role",
    "min",
    "max",
    "special_category",
    "legal_basis",
];
const ANALYST_KEYS: &[&str] = &["name", "party", "public_key"];
const AUDITOR_KEYS: &[&str] = &["name", "public_key"];
const ROOM_KEYS: &[&str] = &["operator", "public_key"];
const PRIVACY_KEYS: &[&str] = &["aggregates", "differential_privacy", "exact_results"];
const DP_KEYS: &[&str] = &["epsilon_per_query", "budget", "delta"];

/// The most delta a party's analysts may accumulate over a whole budget (answers ×
/// delta): the probability, over every answer the budget allows, that some group of one
/// customer is shown. One in a thousand keeps that a rare event even for the largest
/// budgets; the defaults (20 answers × 1e-6) stay far below it.
pub const MAX_TOTAL_DELTA: f64 = 1e-3;

/// Whether `code` is a region whose national phone numbers the normalizer can read, spelled
/// as a manifest must spell it (ISO 3166-1 alpha-2, capitals). The list is `accord-psi`'s
/// numbering-plan table and nothing else, so every region a signed agreement names works at
/// upload (`docs/PROTOCOL.md`, "Phone numbers").
pub(crate) fn is_phone_region(code: &str) -> bool {
    accord_psi::supported_regions().any(|c| c == code)
}

/// Column-name keywords that reveal a special category. A keyword matches a whole
/// `_`-separated word of the column name, or its beginning when it ends with `*`.
const SPECIAL_KEYWORDS: &[(&str, &[&str])] = &[
    (
        "health",
        &[
            "health*",
            "medic*",
            "diagnos*",
            "disease*",
            "illness*",
            "sick*",
            "prescription*",
            "pregnan*",
            "disabilit*",
            "disabled",
            "allerg*",
            "diabet*",
            "mental",
            "therapy",
            "hospital*",
            "patient*",
            "bmi",
            "hiv",
            "cancer*",
            "covid*",
            "vaccin*",
            "genetic*",
            "dna",
            "genome*",
        ],
    ),
    (
        "religion",
        &[
            "religio*",
            "faith*",
            "church*",
            "mosque*",
            "synagogue*",
            "worship*",
            "denomination*",
        ],
    ),
    ("ethnicity", &["ethnic*", "race", "racial*"]),
    (
        "politics",
        &[
            "politic*",
            "vote",
            "voter*",
            "voting",
            "partisan*",
            "ideolog*",
        ],
    ),
    (
        "sexual_orientation",
        &[
            "sexual*",
            "orientation",
            "lgbt*",
            "gay",
            "lesbian*",
            "bisexual*",
            "homosexual*",
            "heterosexual*",
        ],
    ),
    (
        "biometrics",
        &[
            "biometric*",
            "fingerprint*",
            "face",
            "facial*",
            "retina*",
            "iris",
            "voiceprint*",
            "faceprint*",
        ],
    ),
    ("union_membership", &["union*", "tradeunion*"]),
];

/// The special categories a column name suggests (empty when none).
pub(crate) fn detect_special(column: &str) -> Vec<&'static str> {
    let words: Vec<&str> = column.split('_').filter(|w| !w.is_empty()).collect();
    let mut out = Vec::new();
    for (kind, keywords) in SPECIAL_KEYWORDS {
        let hit = keywords.iter().any(|kw| match kw.strip_suffix('*') {
            Some(stem) => words.iter().any(|w| w.starts_with(stem)),
            None => words.contains(kw),
        });
        if hit {
            out.push(*kind);
        }
    }
    out
}

fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && s.len() <= MAX_NAME
}

fn is_id(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.'))
        && s.len() <= 128
}

struct Cx<'t> {
    line_starts: Vec<usize>,
    problems: Vec<Problem>,
    _text: &'t str,
}

impl<'t> Cx<'t> {
    fn new(text: &'t str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Cx {
            line_starts,
            problems: Vec::new(),
            _text: text,
        }
    }

    fn line(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    fn at(&mut self, span: Option<Range<usize>>, key: &str, message: String, fix: String) {
        let line = span.map(|s| self.line(s.start));
        self.problems.push(Problem {
            line,
            key: key.to_owned(),
            message,
            fix,
        });
    }

    fn problem(
        &mut self,
        v: &Value<'_>,
        key: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.at(Some(v.span()), key, message.into(), fix.into());
    }

    /// Reports every key of `table` not in `allowed`.
    fn deny_unknown(&mut self, table: &DeTable<'_>, path: &str, allowed: &[&str]) {
        for (k, _) in table.iter() {
            let name: &str = k.get_ref();
            if !allowed.contains(&name) {
                let key = join(path, name);
                self.at(
                    Some(k.span()),
                    &key,
                    format!("unknown key {name:?}"),
                    format!(
                        "remove it or correct its spelling; allowed here: {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    /// The value of `key` in `table`; reports it missing when `required`.
    fn get<'a, 'i>(
        &mut self,
        table: &'a DeTable<'i>,
        table_span: Option<Range<usize>>,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<&'a Value<'i>> {
        let found = table.iter().find(|(k, _)| {
            let k: &str = k.get_ref();
            k == key
        });
        match found {
            Some((_, v)) => Some(v),
            None => {
                if required {
                    let full = join(path, key);
                    self.at(
                        table_span,
                        &full,
                        format!("required key {key:?} is missing"),
                        format!("add `{key} = …` (see docs/AGREEMENTS.md)"),
                    );
                }
                None
            }
        }
    }

    fn wrong_type(&mut self, v: &Value<'_>, key: &str, expected: &str) {
        let found = v.get_ref().type_str();
        self.problem(
            v,
            key,
            format!("expected {expected}, found {found}"),
            format!("write {key} as {expected}"),
        );
    }

    fn string<'a>(&mut self, v: &'a Value<'_>, key: &str) -> Option<&'a str> {
        match v.get_ref() {
            DeValue::String(s) => {
                // The raw text was checked line by line; this catches escapes such as
                // "\u202e" or "\u001b" that decode to a hidden character.
                if let Some((_, c, why)) = crate::text::first_forbidden(s) {
                    self.problem(
                        v,
                        key,
                        format!(
                            "{key} contains U+{:04X}, {why}: people reading the agreement would not see what was signed",
                            c as u32
                        ),
                        "remove the escape sequence that produces it and write the text in plain characters",
                    );
                    return None;
                }
                Some(s.as_ref())
            }
            _ => {
                self.wrong_type(v, key, "a string in quotes");
                None
            }
        }
    }

    fn integer(&mut self, v: &Value<'_>, key: &str) -> Option<i128> {
        match v.get_ref() {
            DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.problem(
                        v,
                        key,
                        "the number is too large",
                        "use a smaller whole number",
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(v, key, "a whole number");
                None
            }
        }
    }

    fn unsigned<T>(&mut self, v: &Value<'_>, key: &str, min: T, what: &str) -> Option<T>
    where
        T: TryFrom<i128> + Copy + PartialOrd + std::fmt::Display,
    {
        let n = self.integer(v, key)?;
        match T::try_from(n) {
            Ok(n) if n >= min => Some(n),
            _ => {
                self.problem(
                    v,
                    key,
                    format!("{n} is out of range: {what}"),
                    format!("use a whole number of at least {min}"),
                );
                None
            }
        }
    }

    fn number(&mut self, v: &Value<'_>, key: &str) -> Option<f64> {
        let n = match v.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            _ => {
                self.wrong_type(v, key, "a number");
                return None;
            }
        };
        match n {
            Some(n) if n.is_finite() => Some(n),
            _ => {
                self.problem(
                    v,
                    key,
                    "the number is not finite (nan, inf or out of range)",
                    "use an ordinary finite number",
                );
                None
            }
        }
    }

    fn time(&mut self, v: &Value<'_>, key: &str) -> Option<DateTime<Utc>> {
        let DeValue::Datetime(dt) = v.get_ref() else {
            self.wrong_type(
                v,
                key,
                "a date and time such as 2027-01-01T00:00:00Z (no quotes)",
            );
            return None;
        };
        let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
            self.problem(
                v,
                key,
                "a date and time with its UTC offset is needed (a local date or time is ambiguous)",
                format!(
                    "write it like 2027-01-01T00:00:00Z, e.g. {key} = {}T00:00:00Z",
                    dt.date
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "2027-01-01".into())
                ),
            );
            return None;
        };
        let converted = (|| {
            let d = NaiveDate::from_ymd_opt(
                i32::from(date.year),
                u32::from(date.month),
                u32::from(date.day),
            )?;
            let t = NaiveTime::from_hms_nano_opt(
                u32::from(time.hour),
                u32::from(time.minute),
                u32::from(time.second.unwrap_or(0)),
                time.nanosecond.unwrap_or(0),
            )?;
            let minutes = match offset {
                toml::value::Offset::Z => 0,
                toml::value::Offset::Custom { minutes } => i32::from(minutes),
            };
            let tz = FixedOffset::east_opt(minutes * 60)?;
            let local = tz.from_local_datetime(&d.and_time(t)).single()?;
            Some(local.with_timezone(&Utc))
        })();
        if converted.is_none() {
            self.problem(
                v,
                key,
                "not a valid date and time",
                "write a real date and time such as 2027-01-01T00:00:00Z",
            );
        }
        converted
    }

    fn table<'a, 'i>(&mut self, v: &'a Value<'i>, key: &str) -> Option<&'a DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(v, key, "a table");
                None
            }
        }
    }

    fn array<'a, 'i>(&mut self, v: &'a Value<'i>, key: &str) -> Option<&'a DeArray<'i>> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            _ => {
                self.wrong_type(v, key, "a list in [ ]");
                None
            }
        }
    }

    fn name(&mut self, v: &Value<'_>, key: &str, what: &str) -> Option<String> {
        let s = self.string(v, key)?;
        if is_name(s) {
            Some(s.to_owned())
        } else {
            self.problem(
                v,
                key,
                format!("{what} {s:?} is not a valid name"),
                format!("use lowercase letters, digits and _, starting with a letter, at most {MAX_NAME} characters (e.g. monthly_spend)"),
            );
            None
        }
    }

    fn public_key(&mut self, v: &Value<'_>, key: &str) -> Option<PublicKey> {
        let s = self.string(v, key)?;
        match s.parse::<PublicKey>() {
            Ok(k) => Some(k),
            Err(e) => {
                self.problem(
                    v,
                    key,
                    e.to_string(),
                    "paste the line `accord keygen` printed, e.g. \"ed25519:…\" (44 base64 characters)",
                );
                None
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn span_of(v: &Value<'_>) -> Option<Range<usize>> {
    Some(v.span())
}

/// Where a TOML error that carries no position (the parser's recursion limit, found by
/// fuzzing) starts: the first line at which the text, cut after that line, already fails
/// with the same message. Found by bisection over line ends (a handful of parses), so every
/// syntax error still names a line.
fn spanless_error_line(text: &str, message: &str) -> Option<Range<usize>> {
    let ends: Vec<usize> = text
        .match_indices('\n')
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let fails = |end: usize| {
        let (_, errors) = DeTable::parse_recoverable(&text[..end]);
        errors
            .iter()
            .any(|e| e.span().is_none() && e.message() == message)
    };
    let (mut lo, mut hi) = (0usize, ends.len() - 1);
    if !fails(ends[hi]) {
        return None;
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(ends[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let start = if lo == 0 { 0 } else { ends[lo - 1] + 1 };
    Some(start..start)
}

impl Manifest {
    /// Parses a manifest and checks every structural rule of DESIGN §2 (everything except
    /// signatures and whether the window has started or ended), reporting all problems.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        parse(text)
    }
}

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    let mut cx = Cx::new(text);
    hidden_characters(&mut cx, text);
    if !cx.problems.is_empty() {
        return Err(ManifestError {
            problems: cx.problems,
        });
    }
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for e in errors {
            let message = e.message().to_owned();
            let span = e.span().or_else(|| spanless_error_line(text, &message));
            cx.at(
                span,
                "(syntax)",
                format!("not valid TOML: {message}"),
                "correct the TOML syntax at that place (strings in \"quotes\", one key = value per line)".to_owned(),
            );
        }
        return Err(ManifestError {
            problems: cx.problems,
        });
    }
    let root_table = root.get_ref();
    let manifest = walk(&mut cx, root_table);
    let mut problems = cx.problems;
    // File order: by line, problems without a line (missing top-level keys) first.
    problems.sort_by_key(|p| p.line.unwrap_or(0));
    match manifest {
        Some(m) if problems.is_empty() => Ok(m),
        _ => {
            if problems.is_empty() {
                // `walk` only returns None after recording a problem; keep the invariant anyway.
                problems.push(Problem {
                    line: None,
                    key: "(manifest)".into(),
                    message: "the manifest is incomplete".into(),
                    fix: "compare it with `accord agreement init` output".into(),
                });
            }
            Err(ManifestError { problems })
        }
    }
}

/// Refuses, anywhere in the file (comments included), characters that make text display
/// differently from its bytes: controls, ANSI escapes, bidirectional and invisible format
/// characters ([`crate::text::forbidden`]). One problem per line, with the line number.
fn hidden_characters(cx: &mut Cx<'_>, text: &str) {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        let body = body.strip_suffix('\r').unwrap_or(body);
        // A byte-order mark is tolerated only as the file's first character.
        let (skip, body) = match body.strip_prefix('\u{feff}') {
            Some(rest) if offset == 0 => ('\u{feff}'.len_utf8(), rest),
            _ => (0, body),
        };
        if let Some((i, c, why)) = crate::text::first_forbidden(body) {
            let at = offset + skip + i;
            let column = body[..i].chars().count() + 1;
            cx.at(
                Some(at..at + c.len_utf8()),
                "(text)",
                format!(
                    "column {column} holds U+{:04X}, {why}: it can make this line display differently from what is signed",
                    c as u32
                ),
                "delete that character (retype the line by hand if you cannot see it); manifests may contain only \
                 printable text, tabs and line breaks"
                    .to_owned(),
            );
        }
        offset += line.len();
    }
}

struct PartyDraft {
    name: String,
    party: Option<Party>,
    key_span: Option<Range<usize>>,
}

fn walk(cx: &mut Cx<'_>, root: &DeTable<'_>) -> Option<Manifest> {
    cx.deny_unknown(root, "", ROOT_KEYS);

    let schema_version = cx.get(root, None, "", "schema_version", true).and_then(|v| {
        let n = cx.integer(v, "schema_version")?;
        if n == 1 {
            Some(1u32)
        } else {
            cx.problem(
                v,
                "schema_version",
                format!("schema_version {n} is not supported: this version of Accord reads schema_version 1"),
                "set schema_version = 1, or upgrade Accord",
            );
            None
        }
    });

    let id = cx.get(root, None, "", "id", true).and_then(|v| {
        let s = cx.string(v, "id")?;
        if is_id(s) {
            Some(s.to_owned())
        } else {
            cx.problem(
                v,
                "id",
                format!("id {s:?} is not a valid agreement id"),
                "use lowercase letters, digits, '-', '_' and '.', starting with a letter or digit, at most 128 characters (e.g. drinks-snacks-2027q1)",
            );
            None
        }
    });

    let version = cx
        .get(root, None, "", "version", true)
        .and_then(|v| cx.unsigned::<u64>(v, "version", 1, "versions start at 1"));

    let purpose = cx.get(root, None, "", "purpose", true).and_then(|v| {
        let s = cx.string(v, "purpose")?;
        if s.trim().is_empty() {
            cx.problem(
                v,
                "purpose",
                "the purpose is empty",
                "say in plain words what the shared data may be used for",
            );
            None
        } else {
            Some(s.to_owned())
        }
    });

    let notes_value = cx.get(root, None, "", "notes", false);
    let notes = match notes_value {
        Some(v) => cx.string(v, "notes").map(|s| Some(s.to_owned())),
        None => Some(None),
    };

    let from_v = cx.get(root, None, "", "valid_from", true);
    let valid_from = from_v.and_then(|v| cx.time(v, "valid_from"));
    let until_v = cx.get(root, None, "", "valid_until", true);
    let valid_until = until_v.and_then(|v| cx.time(v, "valid_until"));
    if let (Some(from), Some(until), Some(uv)) = (valid_from, valid_until, until_v)
        && until <= from
    {
        cx.problem(
            uv,
            "valid_until",
            format!(
                "the window is inverted: valid_until ({}) is not after valid_from ({})",
                crate::canonical::rfc3339(&until),
                crate::canonical::rfc3339(&from)
            ),
            "set valid_until later than valid_from",
        );
    }

    let min_group_size = cx.get(root, None, "", "min_group_size", true).and_then(|v| {
        let n = cx.integer(v, "min_group_size")?;
        match u32::try_from(n) {
            Ok(k) if k >= MIN_K => Some(k),
            _ => {
                cx.problem(
                    v,
                    "min_group_size",
                    format!("k = {n} is too small: results describing fewer than {MIN_K} customers can single people out"),
                    format!("set min_group_size to at least {MIN_K} (50 or more is usual)"),
                );
                None
            }
        }
    });

    let identifier = cx.get(root, None, "", "identifier", true).and_then(|v| {
        let s = cx.string(v, "identifier")?;
        let kind = IdentifierKind::from_label(s);
        if kind.is_none() {
            cx.problem(
                v,
                "identifier",
                format!("identifier {s:?} is not supported"),
                "use \"email\", \"phone\" or \"customer_id\"",
            );
        }
        kind
    });

    let region_v = cx.get(root, None, "", "default_region", false);
    let mut region_ok = true;
    let default_region = match region_v {
        Some(v) => match cx.string(v, "default_region") {
            Some(s) if is_phone_region(s) => Some(s.to_owned()),
            Some(s) => {
                region_ok = false;
                let (message, fix) = if is_phone_region(&s.to_ascii_uppercase()) {
                    (
                        format!("{s:?} is not written in capitals"),
                        format!(
                            "write it in capitals: default_region = {:?}",
                            s.to_ascii_uppercase()
                        ),
                    )
                } else {
                    (
                        format!(
                            "{s:?} is not a region whose national phone numbers Accord can read \
                             (the phone rules have no numbering plan for it, so every national \
                             number would be refused at upload)"
                        ),
                        format!(
                            "use one of the supported ISO 3166-1 alpha-2 codes, e.g. \"IS\": {} \
                             (the numbering-plan table in docs/PROTOCOL.md); a region missing \
                             there needs its plan added to accord-psi first",
                            accord_psi::supported_regions()
                                .collect::<Vec<_>>()
                                .join(" ")
                        ),
                    )
                };
                cx.problem(v, "default_region", message, fix);
                None
            }
            None => {
                region_ok = false;
                None
            }
        },
        None => None,
    };
    match (identifier, region_v) {
        (Some(IdentifierKind::Phone), None) => cx.at(
            None,
            "default_region",
            "identifier = \"phone\" needs default_region, the country whose national numbers the parties hold".into(),
            "add e.g. default_region = \"IS\"".into(),
        ),
        (Some(kind), Some(v)) if kind != IdentifierKind::Phone => {
            region_ok = false;
            cx.problem(
                v,
                "default_region",
                format!("default_region is only used with identifier = \"phone\" (this agreement matches on {kind})"),
                "remove default_region",
            );
        }
        _ => {}
    }

    // Parties.
    let mut drafts: Vec<PartyDraft> = Vec::new();
    let mut parties_ok = true;
    match cx.get(root, None, "", "parties", true) {
        Some(pv) => {
            if let Some(table) = cx.table(pv, "parties") {
                for (k, v) in table.iter() {
                    let name: &str = k.get_ref();
                    let path = format!("parties.{name}");
                    if !is_name(name) {
                        parties_ok = false;
                        cx.at(
                            Some(k.span()),
                            &path,
                            format!("party name {name:?} is not a valid name"),
                            format!("use lowercase letters, digits and _, starting with a letter, at most {MAX_NAME} characters (e.g. drinks)"),
                        );
                    }
                    let party = walk_party(cx, v, &path);
                    if party.is_none() {
                        parties_ok = false;
                    }
                    let key_span = v
                        .get_ref()
                        .as_table()
                        .and_then(|t| {
                            t.iter().find(|(k, _)| {
                                let k: &str = k.get_ref();
                                k == "public_key"
                            })
                        })
                        .map(|(_, v)| v.span());
                    drafts.push(PartyDraft {
                        name: name.to_owned(),
                        party,
                        key_span,
                    });
                }
                if drafts.len() < 2 {
                    parties_ok = false;
                    cx.problem(
                        pv,
                        "parties",
                        format!(
                            "an agreement needs at least two parties, this one has {}",
                            drafts.len()
                        ),
                        "add a [parties.<name>] section for every organization that shares data",
                    );
                } else if drafts.len() > 2 {
                    // The PSI, the room's join and the audit of this version are between two
                    // parties; a third would be accepted here and refused by every room.
                    parties_ok = false;
                    cx.problem(
                        pv,
                        "parties",
                        format!(
                            "an agreement has exactly two parties in this version of Accord \
                             (protocol 3); this one has {}",
                            drafts.len()
                        ),
                        "make one agreement per pair of organizations",
                    );
                }
            } else {
                parties_ok = false;
            }
        }
        None => parties_ok = false,
    }

    // Two parties sharing a key.
    let mut key_owner: HashMap<[u8; 32], String> = HashMap::new();
    for d in &drafts {
        if let Some(p) = &d.party {
            if let Some(other) = key_owner.get(&p.public_key.to_bytes()) {
                parties_ok = false;
                cx.at(
                    d.key_span.clone(),
                    &format!("parties.{}.public_key", d.name),
                    format!(
                        "parties {other:?} and {:?} have the same public key",
                        d.name
                    ),
                    "every party must use its own key: run `accord keygen` for each party".into(),
                );
            } else {
                key_owner.insert(p.public_key.to_bytes(), d.name.clone());
            }
        }
    }
    let party_names: Vec<String> = drafts.iter().map(|d| d.name.clone()).collect();

    // Analysts.
    let mut analysts = Vec::new();
    let mut analysts_ok = true;
    if let Some(av) = cx.get(root, None, "", "analysts", false) {
        if let Some(items) = cx.array(av, "analysts") {
            let mut seen_names: HashMap<String, usize> = HashMap::new();
            let mut analyst_key_party: HashMap<[u8; 32], (String, String)> = HashMap::new();
            for (i, item) in items.iter().enumerate() {
                let path = format!("analysts[{i}]");
                let Some(t) = cx.table(item, &path) else {
                    analysts_ok = false;
                    continue;
                };
                cx.deny_unknown(t, &path, ANALYST_KEYS);
                let span = span_of(item);
                let name = cx.get(t, span.clone(), &path, "name", true).and_then(|v| {
                    let key = format!("{path}.name");
                    let s = cx.string(v, &key)?;
                    if s.trim().is_empty() || s.len() > 254 || s.chars().any(char::is_control) {
                        cx.problem(
                            v,
                            &key,
                            "the analyst name is empty, too long or has control characters",
                            "use the analyst's e-mail address",
                        );
                        return None;
                    }
                    if let Some(first) = seen_names.get(s) {
                        cx.problem(
                            v,
                            &key,
                            format!("analyst {s:?} is listed twice (also analysts[{first}])"),
                            "list each analyst once",
                        );
                        return None;
                    }
                    seen_names.insert(s.to_owned(), i);
                    Some(s.to_owned())
                });
                let party_v = cx.get(t, span.clone(), &path, "party", true);
                let party = party_v.and_then(|v| {
                    let key = format!("{path}.party");
                    let s = cx.string(v, &key)?;
                    if party_names.iter().any(|p| p == s) {
                        Some(s.to_owned())
                    } else {
                        cx.problem(
                            v,
                            &key,
                            format!("analyst's party {s:?} is not a party of this agreement"),
                            format!("use one of: {}", party_names.join(", ")),
                        );
                        None
                    }
                });
                let key_v = cx.get(t, span, &path, "public_key", true);
                let public_key =
                    key_v.and_then(|v| cx.public_key(v, &format!("{path}.public_key")));
                if let (Some(pk), Some(party), Some(kv)) = (public_key, &party, key_v) {
                    let key = format!("{path}.public_key");
                    if let Some(owner) = key_owner.get(&pk.to_bytes())
                        && owner != party
                    {
                        cx.problem(
                            kv,
                            &key,
                            format!("this analyst of {party:?} uses the public key of party {owner:?}"),
                            "give the analyst their own key (`accord keygen`); a party's key must not act for another party",
                        );
                        analysts_ok = false;
                    }
                    match analyst_key_party.get(&pk.to_bytes()) {
                        Some((other_name, other_party)) if other_party != party => {
                            cx.problem(
                                kv,
                                &key,
                                format!("this analyst of {party:?} shares a key with analyst {other_name:?} of {other_party:?}"),
                                "give each analyst their own key (`accord keygen`)",
                            );
                            analysts_ok = false;
                        }
                        _ => {
                            analyst_key_party.insert(
                                pk.to_bytes(),
                                (name.clone().unwrap_or_default(), party.clone()),
                            );
                        }
                    }
                }
                match (name, party, public_key) {
                    (Some(name), Some(party), Some(public_key)) => analysts.push(Analyst {
                        name,
                        party,
                        public_key,
                    }),
                    _ => analysts_ok = false,
                }
            }
        } else {
            analysts_ok = false;
        }
    }

    let privacy = match cx.get(root, None, "", "privacy", true) {
        Some(v) => walk_privacy(cx, v),
        None => None,
    };

    // Signatures: structure only; `verify` checks them.
    let mut signatures = BTreeMap::new();
    let mut signatures_ok = true;
    if let Some(sv) = cx.get(root, None, "", "signatures", false) {
        if let Some(table) = cx.table(sv, "signatures") {
            for (k, v) in table.iter() {
                let name: &str = k.get_ref();
                let key = format!("signatures.{name}");
                if !party_names.iter().any(|p| p == name) {
                    signatures_ok = false;
                    cx.at(
                        Some(k.span()),
                        &key,
                        format!("{name:?} is not a party of this agreement"),
                        format!("remove this signature; parties: {}", party_names.join(", ")),
                    );
                    continue;
                }
                let Some(s) = cx.string(v, &key) else {
                    signatures_ok = false;
                    continue;
                };
                match s.parse::<Signature>() {
                    Ok(sig) => {
                        signatures.insert(name.to_owned(), sig);
                    }
                    Err(e) => {
                        signatures_ok = false;
                        cx.problem(
                            v,
                            &key,
                            e.to_string(),
                            format!(
                                "re-sign: accord agreement sign FILE --party {name} --key KEYFILE"
                            ),
                        );
                    }
                }
            }
        } else {
            signatures_ok = false;
        }
    }

    let (auditors, auditors_ok) = walk_auditors(cx, root, &key_owner, &analysts);
    let (rotation_signatures, rotation_ok) = walk_rotation_signatures(cx, root, &key_owner);
    let room = walk_room(cx, root);

    if !(parties_ok && analysts_ok && signatures_ok && region_ok && auditors_ok && rotation_ok) {
        return None;
    }
    let parties: BTreeMap<String, Party> = drafts
        .into_iter()
        .filter_map(|d| d.party.map(|p| (d.name, p)))
        .collect();
    let valid_from = valid_from?;
    let valid_until = valid_until?;
    if valid_until <= valid_from {
        return None;
    }
    Some(Manifest {
        schema_version: schema_version?,
        id: id?,
        version: version?,
        purpose: purpose?,
        notes: notes?,
        valid_from,
        valid_until,
        min_group_size: min_group_size?,
        identifier: identifier?,
        default_region,
        parties,
        analysts,
        privacy: privacy?,
        auditors,
        room: room?,
        signatures,
        rotation_signatures,
    })
}

/// How to get the room's key, said wherever it is missing or malformed.
const ROOM_KEY_FIX: &str = "ask the room's operator for the output of `accord room key --data-dir DIR` \
     (run on the room's machine) and paste it as `public_key = \"ed25519:…\"` under [room]";

/// `[room]`: who operates the room and its Ed25519 key (required: the room is a named
/// party of the agreement, and clients refuse a room presenting another key).
fn walk_room(cx: &mut Cx<'_>, root: &DeTable<'_>) -> Option<RoomSection> {
    let Some(v) = cx.get(root, None, "", "room", false) else {
        cx.at(
            None,
            "room",
            "the [room] section is missing: an agreement names the room that serves it (its operator and \
             its key), so that parties and analysts can refuse any other room"
                .to_owned(),
            format!(
                "add\n  [room]\n  operator = \"who runs the room\"\n  public_key = \"ed25519:…\"\n{ROOM_KEY_FIX}"
            ),
        );
        return None;
    };
    let t = cx.table(v, "room")?;
    cx.deny_unknown(t, "room", ROOM_KEYS);
    let span = span_of(v);
    let operator = cx
        .get(t, span.clone(), "room", "operator", true)
        .and_then(|v| {
            let s = cx.string(v, "room.operator")?;
            if s.trim().is_empty() || s.len() > 254 || s.chars().any(char::is_control) {
                cx.problem(
                    v,
                    "room.operator",
                    "the room operator is empty, longer than 254 bytes or has control characters",
                    "name who runs the room, e.g. \"Neutral Hosting Ltd\" (legal reads it in `accord agreement show`)",
                );
                return None;
            }
            Some(s.to_owned())
        });
    let public_key = match cx.get(t, span, "room", "public_key", true) {
        Some(v) => {
            let s = cx.string(v, "room.public_key")?;
            match s.parse::<PublicKey>() {
                Ok(k) => Some(k),
                Err(e) => {
                    cx.problem(v, "room.public_key", e.to_string(), ROOM_KEY_FIX);
                    None
                }
            }
        }
        None => None,
    };
    Some(RoomSection {
        operator: operator?,
        public_key: public_key?,
    })
}

/// `[[auditors]]`: name and key; an auditor's key is nobody else's in this agreement.
fn walk_auditors(
    cx: &mut Cx<'_>,
    root: &DeTable<'_>,
    party_keys: &HashMap<[u8; 32], String>,
    analysts: &[Analyst],
) -> (Vec<Auditor>, bool) {
    let mut auditors: Vec<Auditor> = Vec::new();
    let mut ok = true;
    let Some(av) = cx.get(root, None, "", "auditors", false) else {
        return (auditors, ok);
    };
    let Some(items) = cx.array(av, "auditors") else {
        return (auditors, false);
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("auditors[{i}]");
        let Some(t) = cx.table(item, &path) else {
            ok = false;
            continue;
        };
        cx.deny_unknown(t, &path, AUDITOR_KEYS);
        let span = span_of(item);
        let name = cx.get(t, span.clone(), &path, "name", true).and_then(|v| {
            let key = format!("{path}.name");
            let s = cx.string(v, &key)?;
            if s.trim().is_empty() || s.len() > 254 || s.chars().any(char::is_control) {
                cx.problem(
                    v,
                    &key,
                    "the auditor name is empty, too long or has control characters",
                    "use the auditor's e-mail address",
                );
                return None;
            }
            if auditors.iter().any(|a| a.name == s) {
                cx.problem(
                    v,
                    &key,
                    format!("auditor {s:?} is listed twice"),
                    "list each auditor once",
                );
                return None;
            }
            Some(s.to_owned())
        });
        let key_v = cx.get(t, span, &path, "public_key", true);
        let public_key = key_v.and_then(|v| {
            let key = format!("{path}.public_key");
            let pk = cx.public_key(v, &key)?;
            let clash = if let Some(party) = party_keys.get(&pk.to_bytes()) {
                Some(format!("party {party:?}"))
            } else if let Some(a) = analysts.iter().find(|a| a.public_key == pk) {
                Some(format!("analyst {:?}", a.name))
            } else {
                auditors
                    .iter()
                    .find(|a| a.public_key == pk)
                    .map(|a| format!("auditor {:?}", a.name))
            };
            if let Some(other) = clash {
                cx.problem(
                    v,
                    &key,
                    format!("this auditor uses the public key of {other}"),
                    "give the auditor their own key (`accord keygen`): an auditor reads the audit log and must not be able to act as a party or query",
                );
                return None;
            }
            Some(pk)
        });
        match (name, public_key) {
            (Some(name), Some(public_key)) => auditors.push(Auditor { name, public_key }),
            _ => ok = false,
        }
    }
    (auditors, ok)
}

/// `[rotation_signatures]`: `"ed25519:<old party key>" = "ed25519:<signature>"`. Structure
/// only; the room checks them against the version in force.
fn walk_rotation_signatures(
    cx: &mut Cx<'_>,
    root: &DeTable<'_>,
    party_keys: &HashMap<[u8; 32], String>,
) -> (Vec<(PublicKey, Signature)>, bool) {
    let mut out: Vec<(PublicKey, Signature)> = Vec::new();
    let mut ok = true;
    let Some(rv) = cx.get(root, None, "", "rotation_signatures", false) else {
        return (out, ok);
    };
    let Some(table) = cx.table(rv, "rotation_signatures") else {
        return (out, false);
    };
    for (k, v) in table.iter() {
        let name: &str = k.get_ref();
        let key = format!("rotation_signatures.{name:?}");
        let pk = match name.parse::<PublicKey>() {
            Ok(pk) => pk,
            Err(e) => {
                ok = false;
                cx.at(
                    Some(k.span()),
                    &key,
                    format!("the key of a rotation signature must be an old party key: {e}"),
                    "write the old key in quotes, as `accord keygen` printed it: \"ed25519:…\" = \"ed25519:…\"".into(),
                );
                continue;
            }
        };
        if let Some(party) = party_keys.get(&pk.to_bytes()) {
            ok = false;
            cx.at(
                Some(k.span()),
                &key,
                format!("this is the key of party {party:?}, which signs in [signatures]"),
                "remove this line: rotation signatures are only for keys that are no longer a party's key".into(),
            );
            continue;
        }
        let Some(s) = cx.string(v, &key) else {
            ok = false;
            continue;
        };
        match s.parse::<Signature>() {
            Ok(sig) => out.push((pk, sig)),
            Err(e) => {
                ok = false;
                cx.problem(
                    v,
                    &key,
                    e.to_string(),
                    "re-sign with the old key: accord agreement sign FILE --rotated-from OLD_KEYFILE",
                );
            }
        }
    }
    (out, ok)
}

fn walk_party(cx: &mut Cx<'_>, v: &Value<'_>, path: &str) -> Option<Party> {
    let t = cx.table(v, path)?;
    cx.deny_unknown(t, path, PARTY_KEYS);
    let span = span_of(v);
    let public_key = cx
        .get(t, span.clone(), path, "public_key", true)
        .and_then(|v| cx.public_key(v, &format!("{path}.public_key")));
    let max_rows = cx
        .get(t, span.clone(), path, "max_rows", true)
        .and_then(|v| {
            cx.unsigned::<u64>(
                v,
                &format!("{path}.max_rows"),
                1,
                "the upload cap must allow at least one row",
            )
        });
    let consent_v = cx.get(t, span.clone(), path, "consent_column", true);
    let consent_column =
        consent_v.and_then(|v| cx.name(v, &format!("{path}.consent_column"), "consent column"));
    let mut ok = true;
    let mut contributes = Vec::new();
    if let Some(cv) = cx.get(t, span, path, "contributes", true) {
        let cpath = format!("{path}.contributes");
        if let Some(items) = cx.array(cv, &cpath) {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for (i, item) in items.iter().enumerate() {
                let ipath = format!("{cpath}[{i}]");
                match walk_contribution(cx, item, &ipath) {
                    Some(c) => {
                        if let Some(first) = seen.get(&c.column) {
                            ok = false;
                            cx.problem(
                                item,
                                &format!("{ipath}.column"),
                                format!(
                                    "column {:?} is contributed twice (also {cpath}[{first}])",
                                    c.column
                                ),
                                "list each column once",
                            );
                        } else if consent_column.as_deref() == Some(c.column.as_str()) {
                            ok = false;
                            cx.problem(
                                item,
                                &format!("{ipath}.column"),
                                format!("column {:?} is the consent column; it decides which rows are uploaded and is not shared", c.column),
                                "remove it from contributes",
                            );
                        } else {
                            seen.insert(c.column.clone(), i);
                            contributes.push(c);
                        }
                    }
                    None => ok = false,
                }
            }
        } else {
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    Some(Party {
        public_key: public_key?,
        max_rows: max_rows?,
        consent_column: consent_column?,
        contributes,
    })
}

fn walk_contribution(cx: &mut Cx<'_>, item: &Value<'_>, path: &str) -> Option<Contribution> {
    let t = cx.table(item, path)?;
    cx.deny_unknown(t, path, CONTRIBUTION_KEYS);
    let span = span_of(item);
    let column = cx
        .get(t, span.clone(), path, "column", true)
        .and_then(|v| cx.name(v, &format!("{path}.column"), "column"));
    let role_v = cx.get(t, span.clone(), path, "role", true);
    let role_name = role_v.and_then(|v| cx.string(v, &format!("{path}.role")));
    let min_v = cx.get(t, None, path, "min", false);
    let max_v = cx.get(t, None, path, "max", false);
    let min = min_v.and_then(|v| cx.number(v, &format!("{path}.min")));
    let max = max_v.and_then(|v| cx.number(v, &format!("{path}.max")));
    let role = match (role_name, role_v) {
        (Some("dimension"), Some(rv)) => {
            let mut ok = true;
            for (v, key) in [(min_v, "min"), (max_v, "max")] {
                if let Some(v) = v {
                    ok = false;
                    cx.problem(
                        v,
                        &format!("{path}.{key}"),
                        "a dimension has no bounds: bounds only apply to metrics",
                        format!("remove {key}, or set role = \"metric\""),
                    );
                }
            }
            let _ = rv;
            ok.then_some(ColumnRole::Dimension)
        }
        (Some("metric"), Some(rv)) => match (min_v, max_v, min, max) {
            (Some(_), Some(_), Some(min), Some(max)) => {
                if min < max {
                    Some(ColumnRole::Metric { min, max })
                } else {
                    cx.problem(
                        max_v.unwrap_or(rv),
                        &format!("{path}.max"),
                        format!("min ({min}) must be below max ({max})"),
                        "set max above min: values are clamped to [min, max]",
                    );
                    None
                }
            }
            (None, _, _, _) | (_, None, _, _) => {
                let missing: Vec<&str> = [("min", min_v.is_none()), ("max", max_v.is_none())]
                    .into_iter()
                    .filter(|(_, m)| *m)
                    .map(|(k, _)| k)
                    .collect();
                cx.problem(
                    item,
                    &format!("{path}.{}", missing.join("/")),
                    format!("a metric needs bounds: {} missing", missing.join(" and ")),
                    "add min = … and max = …: values are clamped to these bounds, which limits what one customer can contribute",
                );
                None
            }
            _ => None, // min/max present but not numbers: already reported
        },
        (Some(other), Some(rv)) => {
            cx.problem(
                rv,
                &format!("{path}.role"),
                format!("role {other:?} is not known"),
                "use role = \"dimension\" (a category) or role = \"metric\" (a number, with min and max)",
            );
            None
        }
        _ => None,
    };

    let special_v = cx.get(t, None, path, "special_category", false);
    let special = special_v.and_then(|v| cx.string(v, &format!("{path}.special_category")));
    let basis_v = cx.get(t, None, path, "legal_basis", false);
    let basis = basis_v.and_then(|v| cx.string(v, &format!("{path}.legal_basis")));
    let mut special_ok =
        (special_v.is_none() || special.is_some()) && (basis_v.is_none() || basis.is_some());
    let detected = column.as_deref().map(detect_special).unwrap_or_default();
    if let (Some(kind), Some(sv)) = (special, special_v) {
        if !SPECIAL_CATEGORIES.contains(&kind) {
            special_ok = false;
            cx.problem(
                sv,
                &format!("{path}.special_category"),
                format!("{kind:?} is not a special category"),
                format!("use one of: {}", SPECIAL_CATEGORIES.join(", ")),
            );
        } else if !detected.is_empty() && !detected.contains(&kind) {
            special_ok = false;
            cx.problem(
                sv,
                &format!("{path}.special_category"),
                format!(
                    "the column name suggests {} but special_category says {kind:?}",
                    detected.join(" and ")
                ),
                format!(
                    "set special_category = {:?} (or rename the column if its name misleads)",
                    detected[0]
                ),
            );
        }
    }
    let is_special = special.is_some() || !detected.is_empty();
    if is_special {
        let kind = special.or(detected.first().copied()).unwrap_or("health");
        if special.is_none() {
            special_ok = false;
            let col = column.as_deref().unwrap_or("?");
            cx.problem(
                item,
                &format!("{path}.special_category"),
                format!(
                    "column {col:?} looks like special-category data ({}), which needs an explicit legal basis",
                    detected.join(", ")
                ),
                format!(
                    "do not share it, or declare special_category = {kind:?} and legal_basis = \"explicit-consent\" after checking that every customer explicitly consented"
                ),
            );
        }
        match (basis, basis_v) {
            (Some("explicit-consent"), _) => {}
            (Some(other), Some(bv)) => {
                special_ok = false;
                cx.problem(
                    bv,
                    &format!("{path}.legal_basis"),
                    format!("legal basis {other:?} is not accepted for special-category data"),
                    "only legal_basis = \"explicit-consent\" is accepted; otherwise do not share this column",
                );
            }
            _ if special.is_some() => {
                special_ok = false;
                cx.problem(
                    special_v.unwrap_or(item),
                    &format!("{path}.legal_basis"),
                    "special-category data needs legal_basis = \"explicit-consent\"",
                    "add legal_basis = \"explicit-consent\" once every customer explicitly consented, or do not share this column",
                );
            }
            _ => {}
        }
    } else if let (Some(_), Some(bv)) = (basis, basis_v) {
        special_ok = false;
        cx.problem(
            bv,
            &format!("{path}.legal_basis"),
            "legal_basis is only used together with special_category",
            "remove legal_basis, or add special_category if this column holds special-category data",
        );
    }

    if !special_ok {
        return None;
    }
    Some(Contribution {
        column: column?,
        role: role?,
        special_category: special.map(str::to_owned),
        legal_basis: basis.map(str::to_owned),
    })
}

fn walk_privacy(cx: &mut Cx<'_>, v: &Value<'_>) -> Option<Privacy> {
    let t = cx.table(v, "privacy")?;
    cx.deny_unknown(t, "privacy", PRIVACY_KEYS);
    let span = span_of(v);
    let mut aggregates = Vec::new();
    let mut ok = true;
    if let Some(av) = cx.get(t, span.clone(), "privacy", "aggregates", true) {
        if let Some(items) = cx.array(av, "privacy.aggregates") {
            for (i, item) in items.iter().enumerate() {
                let key = format!("privacy.aggregates[{i}]");
                let Some(s) = cx.string(item, &key) else {
                    ok = false;
                    continue;
                };
                match Aggregate::from_name(s) {
                    Some(a) if aggregates.contains(&a) => {
                        ok = false;
                        cx.problem(
                            item,
                            &key,
                            format!("{s:?} is listed twice"),
                            "list each aggregate once",
                        );
                    }
                    Some(a) => aggregates.push(a),
                    None => {
                        ok = false;
                        cx.problem(
                            item,
                            &key,
                            format!("aggregate {s:?} is not allowed"),
                            "use only \"count\", \"sum\" and \"avg\" (MIN, MAX and percentiles reveal single customers)",
                        );
                    }
                }
            }
            if items.is_empty() {
                ok = false;
                cx.problem(
                    av,
                    "privacy.aggregates",
                    "no aggregate is allowed, so no query could run",
                    "list at least \"count\"",
                );
            }
        } else {
            ok = false;
        }
    }
    let dp_v = cx.get(t, None, "privacy", "differential_privacy", false);
    let exact_v = cx.get(t, None, "privacy", "exact_results", false);
    let exact = match exact_v {
        Some(ev) => match ev.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                cx.wrong_type(ev, "privacy.exact_results", "true");
                ok = false;
                None
            }
        },
        None => Some(false),
    };
    let mode = match (dp_v, exact) {
        (Some(dv), Some(false)) | (Some(dv), None) => {
            if let (Some(ev), Some(false)) = (exact_v, exact) {
                cx.problem(
                    ev,
                    "privacy.exact_results",
                    "exact_results = false has no meaning next to differential_privacy",
                    "remove the exact_results line",
                );
                ok = false;
            }
            walk_dp(cx, dv)
        }
        (Some(dv), Some(true)) => {
            cx.problem(
                dv,
                "privacy",
                "both differential_privacy and exact_results = true are set; choose one",
                "keep differential_privacy (noise protects customers) or exact_results = true (no noise, see the warning in docs/AGREEMENTS.md), not both",
            );
            None
        }
        (None, Some(true)) => Some(PrivacyMode::ExactResults),
        (None, _) => {
            cx.at(
                span,
                "privacy",
                "neither differential_privacy nor exact_results = true is set".into(),
                "add differential_privacy = { epsilon_per_query = …, budget = …, delta = … }, or opt in to exact_results = true after reading its risk in docs/AGREEMENTS.md".into(),
            );
            None
        }
    };
    if !ok {
        return None;
    }
    Some(Privacy {
        aggregates,
        mode: mode?,
    })
}

fn walk_dp(cx: &mut Cx<'_>, v: &Value<'_>) -> Option<PrivacyMode> {
    let path = "privacy.differential_privacy";
    let t = cx.table(v, path)?;
    cx.deny_unknown(t, path, DP_KEYS);
    let span = span_of(v);
    let positive = |cx: &mut Cx<'_>, key: &str| {
        let value = cx.get(t, span.clone(), path, key, true)?;
        let full = format!("{path}.{key}");
        let n = cx.number(value, &full)?;
        if n > 0.0 {
            Some((n, value))
        } else {
            cx.problem(
                value,
                &full,
                format!("{key} must be above 0, it is {n}"),
                format!("set {key} to a positive number"),
            );
            None
        }
    };
    let epsilon = positive(cx, "epsilon_per_query");
    let budget = positive(cx, "budget");
    let delta = cx.get(t, span.clone(), path, "delta", true).and_then(|dv| {
        let full = format!("{path}.delta");
        let n = cx.number(dv, &full)?;
        if n > 0.0 && n < 1.0 {
            Some((n, dv))
        } else {
            cx.problem(
                dv,
                &full,
                format!("delta must be above 0 and below 1, it is {n}"),
                "use a tiny delta such as 1e-6 (well below 1 / number of customers); \
                 delta = 0 would need an infinite threshold for showing a group",
            );
            None
        }
    });
    let (epsilon, _) = epsilon?;
    let (budget, bv) = budget?;
    if budget < epsilon {
        cx.problem(
            bv,
            &format!("{path}.budget"),
            format!("the budget ({budget}) is smaller than one query's epsilon ({epsilon}), so no query could run"),
            "set budget to at least epsilon_per_query",
        );
        return None;
    }
    let (delta, dv) = delta?;
    // Each answer may show a group of one customer with probability up to delta, and a
    // party's analysts get floor(budget / epsilon) answers: the deltas add up.
    let queries = (budget / epsilon + 1e-9).floor();
    if queries * delta > MAX_TOTAL_DELTA {
        cx.problem(
            dv,
            &format!("{path}.delta"),
            format!(
                "over the whole budget ({queries} queries) delta adds up to {}, above {MAX_TOTAL_DELTA}: \
                 the chance that some answer shows a group of one customer would be too high",
                queries * delta
            ),
            format!(
                "lower delta to at most {} (1e-6 is usual), or raise epsilon_per_query / lower the budget",
                MAX_TOTAL_DELTA / queries
            ),
        );
        return None;
    }
    Some(PrivacyMode::DifferentialPrivacy {
        epsilon_per_query: epsilon,
        budget,
        delta,
    })
}
