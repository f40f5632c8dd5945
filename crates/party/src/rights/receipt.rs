//! A customer's receipt: what happened to their data under each agreement, built from the
//! party's recorded history, and its text, JSON and HTML renderings (text from the manifest
//! escaped).

use std::path::{Path, PathBuf};

use accord_agreement::Manifest;
use accord_psi::HANDLE_LEN;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{
    AGREEMENT_FILE, AgreementTerms, Event, FORGOTTEN_DIR, ForgottenRecord, MEMORY_DIR, rfc3339,
    rfc3339_opt, state_err,
};
use crate::error::PartyError;
use crate::state::State;

/// What happened to the customer's data under one agreement.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Contribution {
    /// Shared (or an upload that includes the customer was under way).
    Shared {
        /// When the upload was acknowledged (None while in progress).
        #[serde(with = "rfc3339_opt")]
        uploaded_at: Option<DateTime<Utc>>,
    },
    /// Shared, then erased.
    Erased {
        /// When the upload was acknowledged.
        #[serde(with = "rfc3339_opt")]
        uploaded_at: Option<DateTime<Utc>>,
        /// When the room confirmed the erasure.
        #[serde(with = "rfc3339")]
        erased_at: DateTime<Utc>,
    },
    /// The party took part but has since deleted the records of which customers were
    /// included; it cannot say whether this customer was.
    RecordsDeleted {
        /// When the party's upload was acknowledged.
        #[serde(with = "rfc3339_opt")]
        uploaded_at: Option<DateTime<Utc>>,
        /// When the records were deleted.
        #[serde(with = "rfc3339")]
        deleted_at: DateTime<Utc>,
        /// Why.
        why: String,
    },
}

/// Where the agreement stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AgreementState {
    /// Not yet started.
    NotYetInForce,
    /// In force.
    InForce,
    /// Ended at the end of its window.
    Expired {
        /// When.
        #[serde(with = "rfc3339")]
        at: DateTime<Utc>,
    },
    /// Revoked.
    Revoked {
        /// When this party learnt it.
        #[serde(with = "rfc3339")]
        at: DateTime<Utc>,
    },
}

/// One agreement in a receipt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReceiptEntry {
    /// What was agreed.
    pub terms: AgreementTerms,
    /// What happened to this customer's data.
    pub contribution: Contribution,
    /// Where the agreement stands.
    pub agreement: AgreementState,
}

/// A transparency receipt for one customer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Receipt {
    /// The company (party) that wrote it.
    pub party: String,
    /// The identifier as the customer gave it.
    pub identifier: String,
    /// When it was produced.
    #[serde(with = "rfc3339")]
    pub generated_at: DateTime<Utc>,
    /// Every agreement the customer's data was contributed to (or may have been).
    pub agreements: Vec<ReceiptEntry>,
}

fn agreement_state(
    terms: &AgreementTerms,
    history: &[Event],
    now: DateTime<Utc>,
) -> AgreementState {
    if let Some(at) = history.iter().find_map(|e| match e {
        Event::Revoked { at } => Some(*at),
        _ => None,
    }) {
        return AgreementState::Revoked { at };
    }
    if now >= terms.valid_until {
        AgreementState::Expired {
            at: terms.valid_until,
        }
    } else if now < terms.valid_from {
        AgreementState::NotYetInForce
    } else {
        AgreementState::InForce
    }
}

/// Agreement version directories under the state root that recorded their manifest:
/// (state, manifest text, manifest).
fn recorded_agreements(root: &Path) -> Result<Vec<(State, String, Manifest)>, PartyError> {
    let mut out = Vec::new();
    // A mistyped --state must not produce a receipt saying "no record".
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PartyError::State(format!(
                "there is no party state at {}: give the --state directory this party's uploads used",
                root.display()
            )));
        }
        Err(e) => return Err(state_err(root, e)),
    };
    let mut ids: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n != FORGOTTEN_DIR && n != MEMORY_DIR)
        })
        .collect();
    ids.sort();
    for id_dir in ids {
        let mut versions: Vec<PathBuf> = std::fs::read_dir(&id_dir)
            .map_err(|e| state_err(&id_dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join(AGREEMENT_FILE).is_file())
            .collect();
        versions.sort();
        for dir in versions {
            let path = dir.join(AGREEMENT_FILE);
            let text = std::fs::read_to_string(&path).map_err(|e| state_err(&path, e))?;
            let manifest = Manifest::parse(&text).map_err(|e| state_err(&path, e))?;
            let fp = manifest.fingerprint();
            if dir.file_name().and_then(|n| n.to_str()) != Some(fp.to_string().as_str()) {
                return Err(PartyError::State(format!(
                    "{} holds agreement {fp}, not the one its directory is named for: the state directory was \
                     tampered with or damaged",
                    path.display()
                )));
            }
            let state = State::open(root, &manifest.id, fp)?;
            out.push((state, text, manifest));
        }
    }
    Ok(out)
}

/// The agreement versions this state root recorded (for `party erase --all-agreements`).
pub fn agreements_in(root: &Path) -> Result<Vec<(String, Manifest)>, PartyError> {
    Ok(recorded_agreements(root)?
        .into_iter()
        .map(|(_, text, m)| (text, m))
        .collect())
}

/// Builds the receipt for `identifier` from `party`'s state under `root`. Reads only local
/// files; creates no secret.
pub fn receipt(
    root: &Path,
    party: &str,
    identifier: &str,
    now: DateTime<Utc>,
) -> Result<Receipt, PartyError> {
    let mut agreements = Vec::new();
    for (state, _, manifest) in recorded_agreements(root)? {
        if !manifest.parties.contains_key(party) {
            continue;
        }
        let kind = manifest.identifier;
        let Ok(Some(normalized)) =
            accord_psi::normalize(kind, identifier, manifest.default_region.as_deref())
        else {
            continue; // not an identifier of this agreement's kind: never uploaded here
        };
        if !state.dir().join("secrets.key").exists() {
            continue; // nothing was ever uploaded from this directory
        }
        let handle = state
            .secrets()?
            .handle_key
            .handle(&manifest.id, normalized.as_bytes());
        let record = state.upload_record()?;
        let included = [record.done.as_deref(), record.pending.as_deref()]
            .into_iter()
            .flatten()
            .any(|bytes| bytes.chunks_exact(HANDLE_LEN).any(|c| c == handle));
        if !included {
            continue;
        }
        let history = state.history()?;
        let uploaded_at = history.iter().find_map(|e| match e {
            Event::Uploaded { at, .. } => Some(*at),
            _ => None,
        });
        let hex_handle = hex::encode(handle);
        let erased_at = history.iter().find_map(|e| match e {
            Event::Erased { at, handles } if handles.contains(&hex_handle) => Some(*at),
            _ => None,
        });
        let contribution = match erased_at {
            Some(erased_at) => Contribution::Erased {
                uploaded_at,
                erased_at,
            },
            None => Contribution::Shared { uploaded_at },
        };
        let terms = AgreementTerms::of(&manifest, party)?;
        let agreement = agreement_state(&terms, &history, now);
        agreements.push(ReceiptEntry {
            terms,
            contribution,
            agreement,
        });
    }
    // Agreements whose records were deleted (`party forget`): say what is still known.
    let forgotten_dir = root.join(FORGOTTEN_DIR);
    if let Ok(entries) = std::fs::read_dir(&forgotten_dir) {
        let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).map_err(|e| state_err(&path, e))?;
            let record: ForgottenRecord =
                serde_json::from_slice(&bytes).map_err(|e| state_err(&path, e))?;
            if record.party != party {
                continue;
            }
            let agreement = agreement_state(&record.terms, &[], now);
            agreements.push(ReceiptEntry {
                terms: record.terms,
                contribution: Contribution::RecordsDeleted {
                    uploaded_at: record.uploaded_at,
                    deleted_at: record.forgotten_at,
                    why: record.why,
                },
                agreement,
            });
        }
    }
    Ok(Receipt {
        party: party.to_owned(),
        identifier: identifier.trim().to_owned(),
        generated_at: now,
        agreements,
    })
}

fn day(t: &DateTime<Utc>) -> String {
    t.format("%-d %B %Y").to_string()
}

/// One agreement as paragraphs of plain text: (heading, [(label, text)]).
fn paragraphs(receipt: &Receipt, e: &ReceiptEntry) -> (String, Vec<(&'static str, String)>) {
    let t = &e.terms;
    let us = &receipt.party;
    let heading = format!(
        "Shared with {} under agreement \"{}\" (version {})",
        t.partner, t.id, t.version
    );
    let columns = if t.columns.is_empty() {
        "nothing beyond the fact that you are a customer".to_owned()
    } else {
        t.columns
            .iter()
            .map(|c| format!("your {} ({})", c.name.replace('_', " "), c.kind))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut protections = format!(
        "{} never received your {} or any detail that says who you are. Your details and theirs were \
         combined by a separate service (a \"clean room\") using scrambled codes that neither company can \
         turn back into your identity. People at either company could only ask for totals and averages \
         about groups of at least {} customers; nobody could look at your row.",
        t.partner, "identifier (such as your email address or phone number)", t.min_group_size
    );
    if let Some(dp) = &t.differential_privacy {
        protections.push_str(&format!(" In addition, {dp}."));
    }
    let status = match &e.contribution {
        Contribution::Shared { uploaded_at } => match uploaded_at {
            Some(at) => format!("Your details were shared on {}.", day(at)),
            None => "Your details were being shared when this receipt was made.".to_owned(),
        },
        Contribution::Erased {
            uploaded_at,
            erased_at,
        } => format!(
            "Your details were shared{} and erased from the clean room on {}, as you asked. {us} will not \
             share them again unless you give your consent again.",
            uploaded_at
                .map(|a| format!(" on {}", day(&a)))
                .unwrap_or_default(),
            day(erased_at)
        ),
        Contribution::RecordsDeleted {
            uploaded_at,
            deleted_at,
            why,
        } => format!(
            "{us} took part in this agreement{} with customers who had given their consent. On {} {us} deleted \
             its records of which customers were included ({why}), so it can no longer say whether you \
             were one of them.",
            uploaded_at
                .map(|a| format!(" from {}", day(&a)))
                .unwrap_or_default(),
            day(deleted_at)
        ),
    };
    let standing = match &e.agreement {
        AgreementState::NotYetInForce => format!("The agreement starts on {}.", day(&t.valid_from)),
        AgreementState::InForce => format!(
            "The agreement runs until {}; after that the clean room deletes the shared data.",
            day(&t.valid_until)
        ),
        AgreementState::Expired { at } => format!(
            "The agreement ended on {}, and the clean room deleted the shared data.",
            day(at)
        ),
        AgreementState::Revoked { at } => format!(
            "The agreement was cancelled on {}, and the clean room deleted the shared data.",
            day(at)
        ),
    };
    (
        heading,
        vec![
            ("Why", t.purpose.clone()),
            ("What was shared about you", columns),
            ("How you were protected", protections),
            ("What happened", format!("{status} {standing}")),
            (
                "Reference",
                format!(
                    "agreement {} version {}, fingerprint {}",
                    t.id, t.version, t.fingerprint
                ),
            ),
        ],
    )
}

fn intro(receipt: &Receipt) -> String {
    let us = &receipt.party;
    match receipt.agreements.len() {
        0 => format!(
            "{us} has no record of sharing any of your details with a partner company through a clean room."
        ),
        n => format!(
            "{us} shared some of your details with {} through a clean room: a way for two companies to learn \
             about their customers in general without either of them learning who the other's customers are. \
             This receipt lists {}.",
            if n == 1 {
                "a partner company".to_owned()
            } else {
                "partner companies".to_owned()
            },
            if n == 1 {
                "that agreement".to_owned()
            } else {
                format!("all {n} agreements")
            }
        ),
    }
}

/// Text for a terminal: the manifest's text was signed by both parties, but it is still
/// another party's text, so it is escaped (control, ANSI and bidi characters).
fn esc(text: &str) -> String {
    accord_agreement::text::escape_lines(text, 8000)
}

/// The receipt as plain text for a person who has never heard of a clean room.
pub fn render_text(receipt: &Receipt) -> String {
    let mut out = format!(
        "Where your data went — a receipt from {}\nFor: {}\nMade on: {}\n\n{}\n",
        esc(&receipt.party),
        esc(&receipt.identifier),
        day(&receipt.generated_at),
        esc(&intro(receipt))
    );
    for (i, e) in receipt.agreements.iter().enumerate() {
        let (heading, paras) = paragraphs(receipt, e);
        out.push_str(&format!("\n{}. {}\n", i + 1, esc(&heading)));
        for (label, text) in paras {
            out.push_str(&format!("   {label}: {}\n", esc(&text)));
        }
    }
    out
}

/// The receipt as JSON (for a company's own systems).
pub fn render_json(receipt: &Receipt) -> Result<String, PartyError> {
    serde_json::to_string_pretty(receipt).map_err(|e| PartyError::Internal(e.to_string()))
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => out.push_str(&format!("&#x{:X};", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The receipt as one self-contained HTML page (no external assets, readable on a phone,
/// every text escaped) that a company can email.
pub fn render_html(receipt: &Receipt) -> String {
    let mut body = String::new();
    for e in &receipt.agreements {
        let (heading, paras) = paragraphs(receipt, e);
        body.push_str(&format!(
            "<section>\n<h2>{}</h2>\n<dl>\n",
            html_escape(&heading)
        ));
        for (label, text) in paras {
            body.push_str(&format!(
                "<dt>{}</dt>\n<dd>{}</dd>\n",
                html_escape(label),
                html_escape(&text)
            ));
        }
        body.push_str("</dl>\n</section>\n");
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Where your data went — {party}</title>\n<style>\n\
         body{{font-family:system-ui,sans-serif;max-width:40rem;margin:0 auto;padding:1rem;line-height:1.5;color:#111}}\n\
         h1{{font-size:1.4rem}} h2{{font-size:1.1rem;margin-top:2rem}}\n\
         dt{{font-weight:600;margin-top:.75rem}} dd{{margin:0}}\n\
         section{{border-top:1px solid #ccc}} .meta{{color:#555}}\n</style>\n</head>\n<body>\n\
         <h1>Where your data went</h1>\n<p class=\"meta\">A receipt from {party} for {who}, made on {when}.</p>\n\
         <p>{intro}</p>\n{body}</body>\n</html>\n",
        party = html_escape(&receipt.party),
        who = html_escape(&receipt.identifier),
        when = html_escape(&day(&receipt.generated_at)),
        intro = html_escape(&intro(receipt)),
    )
}
