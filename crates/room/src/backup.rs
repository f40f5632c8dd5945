//! Backups of a running room (`accord room backup`, `accord room restore`).
//!
//! Every call the room serves, and its expiry sweep, holds the data directory's shared lock
//! ([`accord_fs::snapshot::DirLock`]) while it runs ([`HoldDataDir`], a layer on both
//! servers); a backup holds it exclusively while it links and copies, so it sees the
//! directory between two calls: crash-consistent, the state a clean stop would leave. The
//! bulk data files, which the room only ever replaces by an atomic rename, are hard-linked,
//! so the calls wait only as long as listing and linking takes plus copying the small files;
//! checksums are computed afterwards. A restore verifies every checksum, then
//! every audit chain, before the directory is renamed into place.

use std::path::Path;
use std::sync::Arc;

use accord_fs::snapshot::{self, BackupManifest, DirLock};

use crate::error::RoomError;

/// The `FORMAT` tag of a room data directory (and the `kind` of its backups).
pub const KIND: &str = "accord-room-data";

/// Files that may be hard-linked into a backup: the bulk of the data (uploaded batches, the
/// sealed snapshot, handle sets), which the room only ever replaces by an atomic rename and
/// never changes in place. Everything else (the room key, audit logs, which are appended
/// in place, manifests, ledgers) is small and copied, so that editing a backup can never
/// change the live room's key or log.
fn linkable(rel: &str) -> bool {
    rel.ends_with(".parquet") || rel.ends_with(".bin")
}

/// Takes a consistent backup of the room data directory `data_dir` into the new directory
/// `dest`, whether the room is running or not.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<BackupManifest, RoomError> {
    Ok(snapshot::backup(data_dir, dest, KIND, &linkable)?)
}

/// Checks a room backup without restoring it: checksums, then every audit chain.
pub fn verify(backup: &Path) -> Result<BackupManifest, RoomError> {
    let manifest = snapshot::verify(backup, KIND)?;
    check_audit_chains(backup).map_err(|problem| accord_fs::FsError::BadBackup {
        path: backup.to_path_buf(),
        problem,
    })?;
    Ok(manifest)
}

/// Restores a room backup into `data_dir` (new or empty), after checking it whole.
pub fn restore(backup: &Path, data_dir: &Path) -> Result<BackupManifest, RoomError> {
    Ok(snapshot::restore(
        backup,
        data_dir,
        KIND,
        &check_audit_chains,
    )?)
}

/// Every audit log in `dir/audit` is a whole hash chain (a backup holds complete lines only:
/// a torn last line, which a crash can leave and the room drops, is refused here).
fn check_audit_chains(dir: &Path) -> Result<(), String> {
    let audit = dir.join("audit");
    let Ok(entries) = std::fs::read_dir(&audit) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut prev = [0u8; 32];
        for (i, line) in text.lines().enumerate() {
            prev = accord_audit::check_line(line, i as u64 + 1, &prev).map_err(|e| {
                format!(
                    "the audit log {} is broken ({e}): this backup cannot be trusted",
                    path.display()
                )
            })?;
        }
        if !text.is_empty() && !text.ends_with('\n') {
            return Err(format!(
                "the audit log {} ends with a torn line: this backup cannot be trusted",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The data directory's shared lock, as every call takes it (the server's layer in `lib.rs`,
/// and per message in the long client streams).
#[derive(Debug, Clone)]
pub(crate) struct HoldDataDir {
    lock: Arc<DirLock>,
}

impl HoldDataDir {
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self {
            lock: Arc::new(DirLock::new(data_dir)),
        }
    }

    /// Waits (on the runtime's timer) for the shared lock.
    pub(crate) async fn hold(&self) -> Result<snapshot::SharedGuard, RoomError> {
        let mut waited = false;
        loop {
            if let Some(g) = self.lock.try_shared()? {
                if waited {
                    tracing::debug!("a backup of the data directory ended; calls resume");
                }
                return Ok(g);
            }
            waited = true;
            tokio::time::sleep(snapshot::RETRY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accord_agreement::Fingerprint;

    /// A room data directory with one audit log of three entries.
    fn room_dir(root: &Path) -> std::path::PathBuf {
        let data = root.join("data");
        let room = crate::Room::open(&data).unwrap();
        drop(room);
        let fp = Fingerprint::from_bytes([9; 32]);
        let mut log =
            crate::audit::AuditLog::open(&data.join("audit").join(format!("{fp}.jsonl")), fp)
                .unwrap();
        for rows in 1..=3 {
            log.append(
                crate::audit::Actor::Room,
                crate::audit::Event::Erasure { rows },
                chrono::Utc::now(),
            )
            .unwrap();
        }
        data
    }

    #[test]
    fn a_room_backup_restores_whole_and_a_broken_audit_chain_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let data = room_dir(root.path());
        let b = root.path().join("backup");
        let m = backup(&data, &b).unwrap();
        assert!(m.files.keys().any(|k| k == "room.key"));
        // The room key is a copy, never a link to the live key.
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(std::fs::metadata(b.join("room.key")).unwrap().nlink(), 1);
            assert_eq!(
                std::fs::metadata(b.join("room.key")).unwrap().mode() & 0o777,
                0o600
            );
        }
        assert!(m.files.keys().any(|k| k.starts_with("audit/")));
        verify(&b).unwrap();
        let restored = root.path().join("restored");
        restore(&b, &restored).unwrap();
        // The restored room opens, with the same key.
        let a = crate::Room::open(&data).unwrap().public_key().to_string();
        let r = crate::Room::open(&restored)
            .unwrap()
            .public_key()
            .to_string();
        assert_eq!(a, r);

        // An audit log that was already broken on the room's disk when the backup was taken
        // (the checksums match: they were taken of the broken file) is refused at restore.
        let log = std::fs::read_dir(data.join("audit"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::write(&log, text.replacen("\"rows\":2", "\"rows\":20", 1)).unwrap();
        let b2 = root.path().join("backup-2");
        backup(&data, &b2).unwrap();
        let err = verify(&b2).unwrap_err().to_string();
        assert!(err.contains("is broken"), "{err}");
        let target = root.path().join("restored-2");
        let err = restore(&b2, &target).unwrap_err().to_string();
        assert!(err.contains("is broken"), "{err}");
        assert!(!target.exists(), "nothing restored");
        // Not a room backup at all: refused by its kind.
        let party = root.path().join("party");
        std::fs::create_dir_all(&party).unwrap();
        std::fs::write(party.join("FORMAT"), "accord-party-state 1\n").unwrap();
        let err = backup(&party, &root.path().join("b3"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a accord-room-data directory"), "{err}");
    }
}
