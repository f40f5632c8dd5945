//! The upload a party's workers share (PROTOCOL.md, "Workers") and the leases of its batch
//! numbers: the store's side of `Psi.Lease`.

use std::fs;
use std::path::Path;

use super::AgreementStore;
use crate::error::{Result, RoomError};
use crate::leases::{Grant, Leases};

/// The upload a party's workers share (total batches and upload digest).
const WORKERS_FILE: &str = "workers.json";

/// The upload a party's workers share, fixed by its first lease and kept in
/// `parties/<party>/workers.json`, so batches keep arriving in any order after a restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct WorkerUpload {
    pub(super) total_batches: u64,
    /// Hex of the 32-byte upload digest (PROTOCOL.md, "Workers").
    upload_digest: String,
}

/// The shared upload recorded in party directory `pdir`, if its workers leased any batch.
pub(super) fn load(pdir: &Path) -> Result<Option<WorkerUpload>> {
    let shared = pdir.join(WORKERS_FILE);
    if !shared.exists() {
        return Ok(None);
    }
    let text = fs::read(&shared).map_err(|e| RoomError::io("read", &shared, e))?;
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        RoomError::Internal(format!(
            "{}: {e}: the data directory is damaged",
            shared.display()
        ))
    })
}

impl AgreementStore {
    /// Leases up to `want` unstored batch numbers of `party`'s upload of `total` batches with
    /// upload digest `digest` to one of its workers for `ttl` (`leases.rs`). The first lease
    /// fixes both (written to `workers.json` before any batch is leased): a worker that
    /// disagrees (another input, batch size or party state) is refused, as is a first lease
    /// when batches of an upload without workers are stored, and a total `max_rows` rules out.
    pub(crate) fn lease(
        &mut self,
        party: &str,
        total: u64,
        digest: &[u8],
        want: usize,
        ttl: std::time::Duration,
        now: std::time::Instant,
    ) -> Result<Grant> {
        let layout = self
            .party(party)
            .ok_or_else(|| RoomError::NotFound(format!("unknown party {party:?}")))?;
        if total == 0 || total > layout.max_rows {
            return Err(RoomError::InvalidArgument(format!(
                "an upload of {total} batches: it must be 1 to {} (max_rows of {party}: a batch holds at least one row)",
                layout.max_rows
            )));
        }
        let progress = self.progress.get(party).cloned().unwrap_or_default();
        if digest.len() != 32 {
            return Err(RoomError::InvalidArgument(format!(
                "an upload digest is 32 bytes, this one {} (PROTOCOL.md, \"Workers\")",
                digest.len()
            )));
        }
        let asked = WorkerUpload {
            total_batches: total,
            upload_digest: hex::encode(digest),
        };
        match self.workers.get(party) {
            Some(shared) if *shared == asked => {}
            Some(shared) => {
                return Err(RoomError::FailedPrecondition(format!(
                    "this worker's upload is not the one {party}'s workers are uploading ({} batches, digest {}…; \
                     this worker: {total} batches, digest {}…): every worker must read the same input with the same \
                     --batch-rows and a copy of the same party state (`accord party backup`, then `party restore`)",
                    shared.total_batches,
                    &shared.upload_digest[..16],
                    &asked.upload_digest[..16]
                )));
            }
            None if !progress.batches.is_empty() => {
                return Err(RoomError::FailedPrecondition(format!(
                    "the room holds {} batches of {party} from an upload without workers: finish it with \
                     `accord party upload` (without --worker) from the state directory it started from",
                    progress.batches.len()
                )));
            }
            None => {
                let path = self.party_dir(party).join(WORKERS_FILE);
                let bytes = serde_json::to_vec_pretty(&asked)
                    .map_err(|e| RoomError::Internal(e.to_string()))?;
                accord_fs::write_atomic(&path, &bytes)?;
                self.workers.insert(party.to_owned(), asked);
            }
        }
        // A completed upload leases nothing, but a worker still learns, above, whether its
        // upload is the one completed.
        if progress.complete.is_some() {
            return Ok(Grant {
                batch_numbers: Vec::new(),
                expires_in: ttl,
                stored: progress.batches.len() as u64,
                leased: 0,
                all_stored: true,
            });
        }
        let leases = self
            .leases
            .entry(party.to_owned())
            .or_insert_with(|| Leases::new(total));
        let stored = progress.batches.len() as u64;
        Ok(leases.grant(want, now, ttl, stored, |n| {
            progress.batches.contains_key(&n)
        }))
    }
}
