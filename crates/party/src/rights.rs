//! Customers' rights on the party's side (issue 16): where did one customer's data go, and
//! making sure an erased customer stays erased.
//!
//! Everything here reads and writes only the party's own state directory; nothing is sent
//! to the room or the partner, and nothing says whether a customer matched (the party never
//! learns it). Files it adds (docs/DATA_SUBJECTS.md explains them for people):
//!
//! ```text
//! <state>/<agreement id>/<fingerprint>/agreement.toml   the signed manifest, as uploaded under
//! <state>/<agreement id>/<fingerprint>/history.jsonl    append-only: uploaded, erased (with handles), revoked
//! <state>/forgotten/<agreement id>.<fingerprint>.json   what `party forget` leaves behind
//! <state>/erasures/memory.key                           mode 0600: key of the erasure memory
//! <state>/erasures/memory.jsonl                         append-only: keyed tags of erased / renewed customers
//! ```
//!
//! The erasure memory holds, per customer the party erased, `HMAC(memory key, kind ‖
//! normalized identifier)` cut to 128 bits — not the identifier — so a later upload (a new
//! agreement version, another agreement) can hold that customer back even when the export
//! it reads still says "consent: true". Only an explicit, recorded renewal lifts it.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use accord_agreement::{ColumnRole, Manifest, PrivacyMode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::PartyError;
use crate::state::State;

mod memory;
mod receipt;

pub use memory::{
    AgreementErasure, ErasureMemory, erase_everywhere, remember_erasures, renew_consent,
};
pub use receipt::{
    AgreementState, Contribution, Receipt, ReceiptEntry, agreements_in, html_escape, receipt,
    render_html, render_json, render_text,
};

/// The signed manifest an agreement's state directory was used for.
pub const AGREEMENT_FILE: &str = "agreement.toml";
const HISTORY_FILE: &str = "history.jsonl";
const FORGOTTEN_DIR: &str = "forgotten";
const MEMORY_DIR: &str = "erasures";
const MEMORY_KEY: &str = "memory.key";
const MEMORY_LOG: &str = "memory.jsonl";

/// Timestamps as RFC 3339 text in the JSON files and receipts.
mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

mod rfc3339_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

fn state_err(path: &Path, e: impl std::fmt::Display) -> PartyError {
    PartyError::State(format!("{}: {e}", path.display()))
}

/// Appends one JSON line and syncs it before returning.
fn append_line(path: &Path, value: &impl Serialize) -> Result<(), PartyError> {
    let mut line = serde_json::to_vec(value).map_err(|e| state_err(path, e))?;
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| state_err(path, e))?;
    f.write_all(&line)
        .and_then(|()| f.sync_data())
        .map_err(|e| state_err(path, e))
}

/// Reads a JSON-lines file. A torn last line (a crash mid-append) was never acted on and is
/// ignored; a damaged line before it is an error naming the file and line.
fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, PartyError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(state_err(path, e)),
    };
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == lines.len() => {} // torn: no newline after it
            Err(e) => {
                return Err(PartyError::State(format!(
                    "{}, line {}: damaged record ({e}); restore this file from backup",
                    path.display(),
                    i + 1
                )));
            }
        }
    }
    Ok(out)
}

/// One event in an agreement version's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The room acknowledged the whole upload.
    Uploaded {
        /// When.
        #[serde(with = "rfc3339")]
        at: DateTime<Utc>,
        /// Rows uploaded.
        rows: u64,
    },
    /// The room erased these rows (its receipt verified).
    Erased {
        /// When.
        #[serde(with = "rfc3339")]
        at: DateTime<Utc>,
        /// The erased rows' handles, hex.
        handles: Vec<String>,
    },
    /// The agreement version was revoked (by this party, or the room said so).
    Revoked {
        /// When this party learnt it.
        #[serde(with = "rfc3339")]
        at: DateTime<Utc>,
    },
}

impl State {
    /// Keeps the signed manifest this state directory is used for (first one wins: the
    /// directory is per fingerprint, so every later one means the same).
    pub fn remember_agreement(&self, text: &str) -> Result<(), PartyError> {
        let path = self.dir().join(AGREEMENT_FILE);
        if path.exists() {
            return Ok(());
        }
        accord_fs::write_atomic(&path, text.as_bytes()).map_err(|e| state_err(&path, e))
    }

    /// Appends to the history (synced).
    pub fn log_event(&self, event: &Event) -> Result<(), PartyError> {
        append_line(&self.dir().join(HISTORY_FILE), event)
    }

    /// The history, oldest first.
    pub fn history(&self) -> Result<Vec<Event>, PartyError> {
        read_lines(&self.dir().join(HISTORY_FILE))
    }
}

/// A column this party shared, as a person reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedColumn {
    /// The column's name in the party's data.
    pub name: String,
    /// "a category" or "a number between MIN and MAX".
    pub kind: String,
}

/// What an agreement promised, in the receipt's words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgreementTerms {
    /// The agreement's id.
    pub id: String,
    /// Its version.
    pub version: u64,
    /// Its fingerprint (hex).
    pub fingerprint: String,
    /// The other company.
    pub partner: String,
    /// The purpose, in legal's words.
    pub purpose: String,
    /// What this party shared about each customer.
    pub columns: Vec<SharedColumn>,
    /// k: the smallest group any answer describes.
    pub min_group_size: u32,
    /// Differential privacy, in words (None with exact results).
    pub differential_privacy: Option<String>,
    /// Start of the validity window.
    #[serde(with = "rfc3339")]
    pub valid_from: DateTime<Utc>,
    /// End of the validity window.
    #[serde(with = "rfc3339")]
    pub valid_until: DateTime<Utc>,
}

impl AgreementTerms {
    fn of(manifest: &Manifest, party: &str) -> Result<Self, PartyError> {
        let p = manifest.parties.get(party).ok_or_else(|| {
            PartyError::Invalid(format!(
                "{party:?} is not a party of agreement {}",
                manifest.id
            ))
        })?;
        let partner = manifest
            .parties
            .keys()
            .find(|n| n.as_str() != party)
            .cloned()
            .unwrap_or_default();
        let columns = p
            .contributes
            .iter()
            .map(|c| SharedColumn {
                name: c.column.clone(),
                kind: match c.role {
                    ColumnRole::Dimension => "a category".to_owned(),
                    ColumnRole::Metric { min, max } => format!("a number between {min} and {max}"),
                },
            })
            .collect();
        let differential_privacy = match &manifest.privacy.mode {
            PrivacyMode::DifferentialPrivacy {
                epsilon_per_query,
                budget,
                ..
            } => Some(format!(
                "random noise is added to every answer (epsilon {epsilon_per_query} per question, at most \
                 {budget} in total for each company), so no answer depends much on any one customer"
            )),
            PrivacyMode::ExactResults => None,
        };
        Ok(Self {
            id: manifest.id.clone(),
            version: manifest.version,
            fingerprint: manifest.fingerprint().to_string(),
            partner,
            purpose: manifest.purpose.clone(),
            columns,
            min_group_size: manifest.min_group_size,
            differential_privacy,
            valid_from: manifest.valid_from,
            valid_until: manifest.valid_until,
        })
    }
}

/// What `party forget` leaves behind: the terms and dates, no customer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForgottenRecord {
    /// This party.
    pub party: String,
    /// What was agreed.
    pub terms: AgreementTerms,
    /// When the upload was acknowledged, if it was.
    #[serde(with = "rfc3339_opt")]
    pub uploaded_at: Option<DateTime<Utc>>,
    /// When the records were deleted.
    #[serde(with = "rfc3339")]
    pub forgotten_at: DateTime<Utc>,
    /// Why (expired, revoked, forced).
    pub why: String,
}

/// Writes the record `party forget` leaves, before it deletes the state directory.
pub fn record_forgotten(
    root: &Path,
    state: &State,
    manifest: &Manifest,
    party: &str,
    why: &str,
    now: DateTime<Utc>,
) -> Result<PathBuf, PartyError> {
    let dir = root.join(FORGOTTEN_DIR);
    accord_fs::create_dir_all(&dir, accord_fs::Access::OwnerOnly)
        .map_err(|e| state_err(&dir, e))?;
    let uploaded_at = state.history()?.into_iter().find_map(|e| match e {
        Event::Uploaded { at, .. } => Some(at),
        _ => None,
    });
    let record = ForgottenRecord {
        party: party.to_owned(),
        terms: AgreementTerms::of(manifest, party)?,
        uploaded_at,
        forgotten_at: now,
        why: why.to_owned(),
    };
    let path = dir.join(format!("{}.{}.json", manifest.id, manifest.fingerprint()));
    let bytes = serde_json::to_vec_pretty(&record).map_err(|e| state_err(&path, e))?;
    accord_fs::write_atomic(&path, &bytes).map_err(|e| state_err(&path, e))?;
    Ok(path)
}

/// Per agreement (id → count), for summaries.
pub type Counts = BTreeMap<String, u64>;

#[cfg(test)]
#[path = "rights_tests.rs"]
mod tests;
