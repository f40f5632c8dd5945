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

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A layer holding the data directory's shared lock for the whole of every call.
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

impl<S> tower_layer::Layer<S> for HoldDataDir {
    type Service = Held<S>;
    fn layer(&self, inner: S) -> Held<S> {
        Held {
            inner,
            hold: self.clone(),
        }
    }
}

/// A service whose calls hold the data directory's shared lock.
#[derive(Debug, Clone)]
pub(crate) struct Held<S> {
    inner: S,
    hold: HoldDataDir,
}

/// Client-streaming calls that may run for as long as an upload: they take the lock for each
/// message they process (in `grpc.rs`) instead of for the whole call, so a backup waits for
/// one batch, not for a whole upload, and the calls it holds back do not wait that long.
pub(crate) const HELD_PER_MESSAGE: [&str; 2] =
    ["/accord.v1.Psi/Upload", "/accord.v1.Psi/ReturnWork"];

impl<S, B> tower_service::Service<tonic::codegen::http::Request<B>> for Held<S>
where
    S: tower_service::Service<tonic::codegen::http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        // The clone is ready only if polled; the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let hold = self.hold.clone();
        let per_message = HELD_PER_MESSAGE.contains(&request.uri().path());
        Box::pin(async move {
            // Only a broken disk fails here (the lock file cannot be opened).
            let _guard = if per_message {
                None
            } else {
                Some(hold.hold().await.map_err(|e| -> BoxError { Box::new(e) })?)
            };
            inner.call(request).await.map_err(Into::into)
        })
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
