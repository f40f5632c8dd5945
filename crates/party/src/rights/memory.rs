//! The party-wide erasure memory: keyed tags of erased customers, so that a later upload
//! holds them back until a recorded renewal (see the parent module's docs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use accord_agreement::Manifest;
use accord_psi::{HandleKey, IdentifierKind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::receipt::agreements_in;
use super::{MEMORY_DIR, MEMORY_KEY, MEMORY_LOG, append_line, read_lines, rfc3339, state_err};
use crate::error::PartyError;

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
