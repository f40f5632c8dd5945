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

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use accord_agreement::{ColumnRole, Manifest, PrivacyMode};
use accord_psi::{HANDLE_LEN, HandleKey, IdentifierKind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::PartyError;
use crate::state::State;

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

/// Tag → (erased at, renewed at).
type MemoryEntries = HashMap<[u8; 16], (DateTime<Utc>, Option<DateTime<Utc>>)>;

/// The party-wide memory of erased customers (see the module docs).
pub struct ErasureMemory {
    dir: PathBuf,
    key: HandleKey,
    entries: MemoryEntries,
}

impl std::fmt::Debug for ErasureMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErasureMemory")
            .field("dir", &self.dir)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MemoryAction {
    Erased,
    Renewed,
}

#[derive(Debug, Serialize, Deserialize)]
struct MemoryRecord {
    action: MemoryAction,
    #[serde(with = "rfc3339")]
    at: DateTime<Utc>,
    tag: String,
}

impl ErasureMemory {
    /// Opens the memory under the state root, creating its key on first use.
    pub fn open(root: &Path) -> Result<Self, PartyError> {
        let dir = root.join(MEMORY_DIR);
        accord_fs::create_dir_all(&dir, accord_fs::Access::OwnerOnly)
            .map_err(|e| state_err(&dir, e))?;
        let key_path = dir.join(MEMORY_KEY);
        if !key_path.exists() {
            let key = HandleKey::generate().map_err(|e| state_err(&key_path, e))?;
            accord_fs::write_new_secret(&key_path, key.to_bytes().as_ref())
                .map_err(|e| state_err(&key_path, e))?;
        }
        let bytes = accord_fs::read_secret(&key_path).map_err(|e| state_err(&key_path, e))?;
        let key = HandleKey::from_bytes(&bytes).map_err(|e| state_err(&key_path, e))?;
        let mut entries = MemoryEntries::new();
        for r in read_lines::<MemoryRecord>(&dir.join(MEMORY_LOG))? {
            let Some(tag) = hex::decode(&r.tag)
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
            else {
                return Err(PartyError::State(format!(
                    "{}: a record with a malformed tag; restore this file from backup",
                    dir.join(MEMORY_LOG).display()
                )));
            };
            match r.action {
                MemoryAction::Erased => {
                    entries.insert(tag, (r.at, None));
                }
                MemoryAction::Renewed => {
                    if let Some(e) = entries.get_mut(&tag) {
                        e.1 = Some(r.at);
                    }
                }
            }
        }
        Ok(Self { dir, key, entries })
    }

    fn tag(&self, kind: IdentifierKind, normalized: &str) -> [u8; 16] {
        self.key.handle(
            &format!("accord/erasure-memory/{kind:?}"),
            normalized.as_bytes(),
        )
    }

    /// Records that these customers (normalized identifiers of `kind`) were erased.
    pub fn remember_erased(
        &mut self,
        kind: IdentifierKind,
        normalized: &[String],
        at: DateTime<Utc>,
    ) -> Result<(), PartyError> {
        for id in normalized {
            let tag = self.tag(kind, id);
            if self.held_back_tag(&tag).is_some() {
                continue;
            }
            append_line(
                &self.dir.join(MEMORY_LOG),
                &MemoryRecord {
                    action: MemoryAction::Erased,
                    at,
                    tag: hex::encode(tag),
                },
            )?;
            self.entries.insert(tag, (at, None));
        }
        Ok(())
    }

    /// Records a customer's renewed consent; false if they were not held back.
    pub fn renew(
        &mut self,
        kind: IdentifierKind,
        normalized: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, PartyError> {
        let tag = self.tag(kind, normalized);
        if self.held_back_tag(&tag).is_none() {
            return Ok(false);
        }
        append_line(
            &self.dir.join(MEMORY_LOG),
            &MemoryRecord {
                action: MemoryAction::Renewed,
                at,
                tag: hex::encode(tag),
            },
        )?;
        if let Some(e) = self.entries.get_mut(&tag) {
            e.1 = Some(at);
        }
        Ok(true)
    }

    fn held_back_tag(&self, tag: &[u8; 16]) -> Option<DateTime<Utc>> {
        match self.entries.get(tag) {
            Some((erased, None)) => Some(*erased),
            _ => None,
        }
    }

    /// When this customer was erased, if they are still held back (erased and not renewed).
    pub fn held_back(&self, kind: IdentifierKind, normalized: &str) -> Option<DateTime<Utc>> {
        self.held_back_tag(&self.tag(kind, normalized))
    }

    /// How many customers are held back.
    pub fn len(&self) -> usize {
        self.entries.values().filter(|(_, r)| r.is_none()).count()
    }

    /// Whether no customer is held back.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Remembers the customers `source` names as erased without asking the room (for an
/// agreement that is over: the room holds nothing any more, but later uploads must still
/// hold them back). Returns how many valid identifiers were remembered.
pub fn remember_erasures(
    root: &Path,
    manifest: &Manifest,
    party: &str,
    source: &crate::protocol::EraseSource,
) -> Result<usize, PartyError> {
    let kind = manifest.identifier;
    let region = manifest.default_region.as_deref();
    let valid: Vec<String> = crate::protocol::source_lines(manifest, party, source)?
        .into_iter()
        .filter_map(|(_, id)| accord_psi::normalize(kind, &id, region).ok().flatten())
        .collect();
    ErasureMemory::open(root)?.remember_erased(kind, &valid, Utc::now())?;
    Ok(valid.len())
}

/// What `erase_everywhere` did under one agreement version.
#[derive(Debug)]
pub enum AgreementErasure {
    /// Erased at the room.
    Erased(crate::protocol::EraseOutcome),
    /// The agreement is not in force (expired, not yet valid): the room holds nothing to
    /// erase; the customers were remembered (held back) all the same. (why, how many)
    Over(String, usize),
    /// The room could not be asked (the customers were remembered all the same).
    Failed(PartyError),
}

/// Erases the customers `source` names from every agreement version this state root
/// recorded for `party` (`party erase --all-agreements`): one outcome per agreement, as
/// (`<id> version <n>`, outcome). `key` loads the party's key for each agreement.
pub async fn erase_everywhere(
    root: &Path,
    party: &str,
    key: impl Fn() -> Result<accord_agreement::SecretKey, PartyError>,
    room_url: &str,
    tls: &crate::client::ClientTls,
    source: &crate::protocol::EraseSource,
) -> Result<Vec<(String, AgreementErasure)>, PartyError> {
    let mut out = Vec::new();
    for (text, manifest) in agreements_in(root)? {
        if !manifest.parties.contains_key(party) {
            continue;
        }
        let label = format!("{} version {}", manifest.id, manifest.version);
        let verified = match accord_agreement::verify(&text, Utc::now()) {
            Ok(v) => v,
            Err(e) => {
                let n = remember_erasures(root, &manifest, party, source)?;
                let why = e
                    .problems
                    .first()
                    .map(|p| p.message.clone())
                    .unwrap_or_else(|| e.to_string());
                out.push((label, AgreementErasure::Over(why, n)));
                continue;
            }
        };
        let mut ctx = crate::protocol::PartyContext::new(
            verified,
            party,
            key()?,
            root.to_path_buf(),
            room_url,
        )?;
        ctx.tls = tls.clone();
        let outcome = match crate::protocol::erase_from(&ctx, source).await {
            Ok(o) => AgreementErasure::Erased(o),
            Err(e) => AgreementErasure::Failed(e),
        };
        out.push((label, outcome));
    }
    Ok(out)
}

/// Records that a customer consented again (`party renew-consent`): later uploads include
/// them when the customer file says they consent. False if they were not held back.
pub fn renew_consent(
    root: &Path,
    manifest: &Manifest,
    identifier: &str,
) -> Result<bool, PartyError> {
    let kind = manifest.identifier;
    let normalized = accord_psi::normalize(kind, identifier, manifest.default_region.as_deref())
        .map_err(|e| {
            PartyError::BadInput(format!("{identifier:?} is not a valid identifier: {e}"))
        })?
        .ok_or_else(|| PartyError::BadInput("the identifier is empty".into()))?;
    ErasureMemory::open(root)?.renew(kind, &normalized, Utc::now())
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

/// Per agreement (id → count), for summaries.
pub type Counts = BTreeMap<String, u64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_from_a_state_directory_that_does_not_exist_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = receipt(&dir.path().join("typo"), "drinks", "a@x.org", Utc::now())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no party state at") && e.contains("--state"),
            "{e}"
        );
        // An existing state with no agreement is a real "no record".
        assert!(
            receipt(dir.path(), "drinks", "a@x.org", Utc::now())
                .unwrap()
                .agreements
                .is_empty()
        );
    }

    #[test]
    fn html_escape_leaves_no_markup() {
        let s = html_escape("<script>alert('x')</script> & \"q\"\u{7}");
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('"') && !s.contains('\''));
        assert_eq!(
            s,
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;&#x7;"
        );
    }

    #[test]
    fn the_erasure_memory_survives_reopening_and_renewal_lifts_it() {
        let dir = tempfile::tempdir().unwrap();
        let t0: DateTime<Utc> = "2027-01-02T00:00:00Z".parse().unwrap();
        let t1: DateTime<Utc> = "2027-02-02T00:00:00Z".parse().unwrap();
        let mut m = ErasureMemory::open(dir.path()).unwrap();
        assert!(m.is_empty());
        m.remember_erased(
            IdentifierKind::Email,
            &["a@x.org".into(), "b@x.org".into()],
            t0,
        )
        .unwrap();
        let mut m = ErasureMemory::open(dir.path()).unwrap();
        assert_eq!(m.held_back(IdentifierKind::Email, "a@x.org"), Some(t0));
        assert_eq!(m.held_back(IdentifierKind::Email, "c@x.org"), None);
        // Same text, another kind: another tag.
        assert_eq!(m.held_back(IdentifierKind::CustomerId, "a@x.org"), None);
        assert!(m.renew(IdentifierKind::Email, "a@x.org", t1).unwrap());
        assert!(!m.renew(IdentifierKind::Email, "c@x.org", t1).unwrap());
        let m = ErasureMemory::open(dir.path()).unwrap();
        assert_eq!(m.held_back(IdentifierKind::Email, "a@x.org"), None);
        assert_eq!(m.len(), 1);
        // The log holds tags, never the identifiers.
        let log = std::fs::read_to_string(dir.path().join(MEMORY_DIR).join(MEMORY_LOG)).unwrap();
        assert!(!log.contains("x.org"), "{log}");
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_a_damaged_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.jsonl");
        let t0: DateTime<Utc> = "2027-01-02T00:00:00Z".parse().unwrap();
        append_line(&p, &Event::Revoked { at: t0 }).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"event\":\"upl")
            .unwrap();
        assert_eq!(
            read_lines::<Event>(&p).unwrap(),
            vec![Event::Revoked { at: t0 }]
        );
        std::fs::write(
            &p,
            "garbage\n{\"event\":\"revoked\",\"at\":\"2027-01-02T00:00:00Z\"}\n",
        )
        .unwrap();
        let e = read_lines::<Event>(&p).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
