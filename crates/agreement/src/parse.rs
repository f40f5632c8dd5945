//! Parsing and validation: every rule of DESIGN §2, every problem reported with its line.
//!
//! The manifest is read into toml's spanned document tree and walked by hand rather than
//! deserialized with serde: the walk denies unknown keys in every table (like serde's
//! `deny_unknown_fields`) but keeps going after a problem, so legal sees every problem in
//! one run instead of fixing them one at a time.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::Signature;
use crate::manifest::{Analyst, IdentifierKind, Manifest, ManifestError, Party, Problem};

mod cx;
mod party;
mod privacy;
mod room;
mod special;

use cx::{Cx, is_id, is_name, span_of, spanless_error_line};
use party::walk_party;
pub use privacy::MAX_TOTAL_DELTA;
use privacy::walk_privacy;
use room::{walk_auditors, walk_room, walk_rotation_signatures};
#[cfg(test)]
pub(crate) use special::detect_special;

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
const ANALYST_KEYS: &[&str] = &["name", "party", "public_key"];

/// Whether `code` is a region whose national phone numbers the normalizer can read, spelled
/// as a manifest must spell it (ISO 3166-1 alpha-2, capitals). The list is `accord-psi`'s
/// numbering-plan table and nothing else, so every region a signed agreement names works at
/// upload (`docs/PROTOCOL.md`, "Phone numbers").
pub(crate) fn is_phone_region(code: &str) -> bool {
    accord_psi::supported_regions().any(|c| c == code)
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
