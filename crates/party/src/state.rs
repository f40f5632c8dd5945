//! The party's local state directory (`--state DIR`), one subdirectory per agreement version:
//!
//! ```text
//! <state>/<agreement id>/<fingerprint>/
//!     secrets.key          mode 0600: PSI scalar k_p, handle key, shuffle seed (never leave the party)
//!     room.pub             the room's public key, pinned at first contact
//!     uploading.handles    16-byte handles of an upload in progress (written before the first batch)
//!     uploaded.handles     the same, once the room acknowledged the upload (written once, never replaced)
//!     erased.handles       append-only: handles the room erased (receipt verified)
//!     blinded-<partner>    one line per partner batch blinded: "<batch> <sha256 of its points> <rows>"
//! ```
//!
//! The blinded log makes blinding *once* durable: a batch number is blinded again only for
//! identical points (a retry after a lost acknowledgement), never for new points.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use accord_agreement::{Fingerprint, PublicKey};
use accord_psi::{HANDLE_LEN, HandleKey, PsiSecret};
use zeroize::Zeroizing;

use crate::error::PartyError;

const MAGIC: &[u8] = b"accord-party-secrets-v1\n";

/// The format of a party's state root (every agreement's secrets, records and receipts, and
/// the erasure memory), in its `FORMAT` file. A newer format is refused.
pub const PARTY_FORMAT: u32 = 1;
const PARTY_FORMAT_TAG: &str = "accord-party-state";

/// The audit heads this party saw, per room and agreement version ([`crate::heads`]).
pub const SEEN_HEADS_FILE: &str = "seen-heads";

/// Takes a consistent backup of the party state directory `root` into the new directory
/// `dest`. Party commands hold the directory's shared lock while they run
/// ([`hold`]), so the backup waits for a running upload or erasure to finish. Every file
/// is copied (the state is small, and some of it is appended in place); modes are kept.
pub fn backup(root: &Path, dest: &Path) -> Result<accord_fs::snapshot::BackupManifest, PartyError> {
    accord_fs::snapshot::backup(root, dest, PARTY_FORMAT_TAG, &|_| false)
        .map_err(|e| PartyError::State(e.to_string()))
}

/// Checks a party state backup (every file's checksum) and, unless `check_only`, restores
/// it into `root` (new or empty).
pub fn restore(
    backup: &Path,
    root: &Path,
    check_only: bool,
) -> Result<accord_fs::snapshot::BackupManifest, PartyError> {
    let result = if check_only {
        accord_fs::snapshot::verify(backup, PARTY_FORMAT_TAG)
    } else {
        accord_fs::snapshot::restore(backup, root, PARTY_FORMAT_TAG, &|_| Ok(()))
    };
    result.map_err(|e| PartyError::State(e.to_string()))
}

/// Holds the state directory `root` (creating it) for one party command: a backup waits
/// until the guard is dropped.
pub fn hold(root: &Path) -> Result<accord_fs::snapshot::SharedGuard, PartyError> {
    accord_fs::create_dir_all(root, accord_fs::Access::OwnerOnly)
        .and_then(|()| accord_fs::snapshot::DirLock::new(root).shared_blocking())
        .map_err(|e| PartyError::State(e.to_string()))
}

/// The default state root: `$ACCORD_STATE`, else `$XDG_DATA_HOME/accord/party`, else
/// `~/.local/share/accord/party`.
pub fn default_root() -> PathBuf {
    if let Some(p) = std::env::var_os("ACCORD_STATE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(p).join("accord").join("party");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local")
        .join("share")
        .join("accord")
        .join("party")
}

/// A party's secrets for one agreement version. No `Clone`; `Debug` shows nothing secret.
pub struct Secrets {
    /// The PSI scalar k_p.
    pub psi: PsiSecret,
    /// The handle key.
    pub handle_key: HandleKey,
    /// Seed of the upload shuffle (so a resumed upload sends identical batches).
    pub shuffle_seed: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets([redacted])")
    }
}

/// One agreement version's state directory.
#[derive(Debug)]
pub struct State {
    dir: PathBuf,
}

impl State {
    /// Opens (creating with mode 0700) the state for an agreement version.
    pub fn open(
        root: &Path,
        agreement_id: &str,
        fingerprint: Fingerprint,
    ) -> Result<Self, PartyError> {
        accord_fs::check_format(
            root,
            PARTY_FORMAT_TAG,
            "party state directory",
            PARTY_FORMAT,
        )
        .map_err(|e| PartyError::State(e.to_string()))?;
        let dir = root.join(agreement_id).join(fingerprint.to_string());
        accord_fs::create_dir_all(&dir, accord_fs::Access::OwnerOnly)
            .map_err(|e| PartyError::State(e.to_string()))?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this agreement's secrets exist yet.
    pub fn has_secrets(&self) -> bool {
        self.dir.join("secrets.key").exists()
    }

    /// Loads the secrets, creating them (from OS randomness) on first use.
    pub fn secrets(&self) -> Result<Secrets, PartyError> {
        let path = self.dir.join("secrets.key");
        if !path.exists() {
            let psi = PsiSecret::generate().map_err(|e| PartyError::State(e.to_string()))?;
            let handle_key = HandleKey::generate().map_err(|e| PartyError::State(e.to_string()))?;
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::fill(seed.as_mut())
                .map_err(|e| PartyError::State(format!("OS randomness: {e}")))?;
            let mut bytes = Zeroizing::new(Vec::with_capacity(MAGIC.len() + 96));
            bytes.extend_from_slice(MAGIC);
            bytes.extend_from_slice(psi.to_bytes().as_ref());
            bytes.extend_from_slice(handle_key.to_bytes().as_ref());
            bytes.extend_from_slice(seed.as_ref());
            accord_fs::write_new_secret(&path, &bytes)
                .map_err(|e| PartyError::State(e.to_string()))?;
        }
        let bytes = accord_fs::read_secret(&path).map_err(|e| PartyError::State(e.to_string()))?;
        let body = bytes.strip_prefix(MAGIC).filter(|b| b.len() == 96).ok_or_else(|| {
            PartyError::State(format!(
                "{} is not an accord party secrets file (damaged or truncated); without it this party cannot \
                 finish this agreement version — restore it from backup",
                path.display()
            ))
        })?;
        let bad = |e: accord_psi::PsiError| PartyError::State(format!("{}: {e}", path.display()));
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&body[64..96]);
        Ok(Secrets {
            psi: PsiSecret::from_bytes(&body[..32]).map_err(bad)?,
            handle_key: HandleKey::from_bytes(&body[32..64]).map_err(bad)?,
            shuffle_seed: seed,
        })
    }

    /// Pins the room's key at first contact; afterwards refuses a different key.
    pub fn pin_room_key(&self, key: &PublicKey) -> Result<(), PartyError> {
        let path = self.dir.join("room.pub");
        let text = key.to_string();
        match std::fs::read_to_string(&path) {
            Ok(pinned) if pinned.trim() == text => Ok(()),
            Ok(pinned) => Err(PartyError::Refused(format!(
                "the room presented key {text}, but this state directory pinned {} at first contact: you may be \
                 talking to a different room. If the room's key was legitimately replaced, remove {}",
                pinned.trim(),
                path.display()
            ))),
            Err(_) => accord_fs::write_atomic(&path, text.as_bytes())
                .map_err(|e| PartyError::State(e.to_string())),
        }
    }

    /// What this state directory recorded about its upload: the handles of a completed
    /// upload (`uploaded.handles`, written only after the room acknowledged the upload's
    /// completion, never rewritten) and of one in progress (`uploading.handles`, written
    /// before the first batch leaves so erasure can account for rows the room may already
    /// hold).
    pub fn upload_record(&self) -> Result<UploadRecord, PartyError> {
        Ok(UploadRecord {
            done: read_optional(&self.dir.join(UPLOADED))?,
            pending: read_optional(&self.dir.join(UPLOADING))?,
        })
    }

    /// Records the handles of an upload about to start (before the first batch is sent).
    /// Refuses to replace a completed upload's record; the caller has checked that the room
    /// holds nothing of a different in-progress record it replaces.
    pub fn begin_upload(&self, handles: &[u8]) -> Result<(), PartyError> {
        let record = self.upload_record()?;
        if let Some(done) = record.done {
            if same_rows(&done, handles) {
                return Ok(());
            }
            return Err(PartyError::Refused(format!(
                "{} records a completed upload with different rows; it is never replaced",
                self.dir.join(UPLOADED).display()
            )));
        }
        if record.pending.as_deref() == Some(handles) {
            return Ok(());
        }
        accord_fs::write_atomic(&self.dir.join(UPLOADING), handles)
            .map_err(|e| PartyError::State(e.to_string()))
    }

    /// Marks the upload complete after the room acknowledged it: the in-progress record
    /// becomes `uploaded.handles` (written once; the same content again is a no-op).
    pub fn finish_upload(&self, handles: &[u8]) -> Result<(), PartyError> {
        let done_path = self.dir.join(UPLOADED);
        match read_optional(&done_path)? {
            Some(done) if same_rows(&done, handles) => {}
            Some(_) => {
                return Err(PartyError::Refused(format!(
                    "{} records a completed upload with different rows; it is never replaced",
                    done_path.display()
                )));
            }
            None => accord_fs::write_atomic(&done_path, handles)
                .map_err(|e| PartyError::State(e.to_string()))?,
        }
        let pending = self.dir.join(UPLOADING);
        match std::fs::remove_file(&pending) {
            Ok(()) => accord_fs::sync_dir(&self.dir).map_err(|e| PartyError::State(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PartyError::State(format!("{}: {e}", pending.display()))),
        }
    }

    /// The handles of the rows this party uploaded or may have uploaded (a completed upload,
    /// or one in progress).
    pub fn uploaded_handles(
        &self,
    ) -> Result<std::collections::HashSet<[u8; HANDLE_LEN]>, PartyError> {
        let record = self.upload_record()?;
        if record.done.is_none() && record.pending.is_none() {
            return Err(PartyError::Refused(format!(
                "this state directory has no record of an upload for this agreement ({} is missing): erase with the \
                 same --state directory the upload used",
                self.dir.join(UPLOADED).display()
            )));
        }
        let mut out = std::collections::HashSet::new();
        for bytes in [record.done, record.pending].into_iter().flatten() {
            out.extend(handles_of(&bytes));
        }
        Ok(out)
    }

    /// Handles erased at the room (receipt verified), from the append-only `erased.handles`.
    pub fn erased_handles(
        &self,
    ) -> Result<std::collections::HashSet<[u8; HANDLE_LEN]>, PartyError> {
        Ok(read_optional(&self.dir.join(ERASED))?
            .map(|b| handles_of(&b).collect())
            .unwrap_or_default())
    }

    /// Appends handles the room erased (after its receipt verified) and syncs them.
    pub fn record_erased(&self, handles: &[u8]) -> Result<(), PartyError> {
        let path = self.dir.join(ERASED);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| PartyError::State(format!("{}: {e}", path.display())))?;
        f.write_all(handles)
            .and_then(|()| f.sync_data())
            .map_err(|e| PartyError::State(format!("{}: {e}", path.display())))
    }

    /// The blinded log for a partner: batch → (digest of its points, rows).
    pub fn blinded(&self, partner: &str) -> Result<BTreeMap<u64, ([u8; 32], u64)>, PartyError> {
        let path = self.dir.join(format!("blinded-{partner}"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(PartyError::State(format!("{}: {e}", path.display()))),
        };
        let mut out = BTreeMap::new();
        for line in text.lines() {
            // A torn last line (crash mid-append) was never acted on: ignore it.
            let parts: Vec<&str> = line.split(' ').collect();
            let [n, digest, rows] = parts.as_slice() else {
                continue;
            };
            let (Ok(n), Ok(digest), Ok(rows)) =
                (n.parse::<u64>(), hex::decode(digest), rows.parse::<u64>())
            else {
                continue;
            };
            let Ok(digest) = <[u8; 32]>::try_from(digest.as_slice()) else {
                continue;
            };
            out.insert(n, (digest, rows));
        }
        Ok(out)
    }

    /// Appends to the blinded log and syncs it before the blinded points are sent.
    pub fn record_blinded(
        &self,
        partner: &str,
        batch: u64,
        digest: &[u8; 32],
        rows: u64,
    ) -> Result<(), PartyError> {
        let path = self.dir.join(format!("blinded-{partner}"));
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| PartyError::State(format!("{}: {e}", path.display())))?;
        writeln!(f, "{batch} {} {rows}", hex::encode(digest))
            .map_err(|e| PartyError::State(format!("{}: {e}", path.display())))?;
        f.sync_data()
            .map_err(|e| PartyError::State(format!("{}: {e}", path.display())))?;
        Ok(())
    }
}

const UPLOADED: &str = "uploaded.handles";
const UPLOADING: &str = "uploading.handles";
const ERASED: &str = "erased.handles";

/// See [`State::upload_record`].
#[derive(Debug, Default)]
pub struct UploadRecord {
    /// Handles of the completed upload.
    pub done: Option<Vec<u8>>,
    /// Handles of an upload in progress.
    pub pending: Option<Vec<u8>>,
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, PartyError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PartyError::State(format!("{}: {e}", path.display()))),
    }
}

/// Whether a completed upload's record holds the same rows as `handles`: the same bytes, or
/// the same handles in another order (an upload completed by a version whose shuffle
/// depended on the file order; sorting happens only then).
pub fn same_rows(done: &[u8], handles: &[u8]) -> bool {
    if done == handles {
        return true;
    }
    if done.len() != handles.len() {
        return false;
    }
    let sorted = |b: &[u8]| {
        let mut v: Vec<[u8; HANDLE_LEN]> = handles_of(b).collect();
        v.sort_unstable();
        v
    };
    sorted(done) == sorted(handles)
}

fn handles_of(bytes: &[u8]) -> impl Iterator<Item = [u8; HANDLE_LEN]> + '_ {
    // A torn last record (crash mid-append) is shorter than a handle and ignored.
    bytes.chunks_exact(HANDLE_LEN).map(|c| {
        let mut a = [0u8; HANDLE_LEN];
        a.copy_from_slice(c);
        a
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_root_of_a_newer_format_is_refused_before_anything_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let fp: Fingerprint = "cd".repeat(32).parse().unwrap();
        drop(State::open(dir.path(), "a-1", fp).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("FORMAT")).unwrap(),
            format!("accord-party-state {PARTY_FORMAT}\n")
        );
        std::fs::write(dir.path().join("FORMAT"), "accord-party-state 7\n").unwrap();
        let e = State::open(dir.path(), "a-2", fp).unwrap_err().to_string();
        assert!(
            e.contains("party state directory format 7") && e.contains("reads format 1"),
            "{e}"
        );
        assert!(!dir.path().join("a-2").exists(), "nothing was created");
    }

    #[test]
    fn secrets_persist_and_blinded_log_survives_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let fp: Fingerprint = "ab".repeat(32).parse().unwrap();
        let s = State::open(dir.path(), "a-1", fp).unwrap();
        let a = s.secrets().unwrap();
        let b = s.secrets().unwrap();
        assert_eq!(*a.psi.to_bytes(), *b.psi.to_bytes());
        assert_eq!(*a.shuffle_seed, *b.shuffle_seed);
        assert_eq!(format!("{a:?}"), "Secrets([redacted])");
        s.record_blinded("snacks", 0, &[1; 32], 10).unwrap();
        s.record_blinded("snacks", 1, &[2; 32], 5).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(s.dir().join("blinded-snacks"))
            .unwrap()
            .write_all(b"2 abc")
            .unwrap();
        let log = s.blinded("snacks").unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[&1], ([2; 32], 5));
    }

    #[test]
    fn a_different_room_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fp: Fingerprint = "cd".repeat(32).parse().unwrap();
        let s = State::open(dir.path(), "a-1", fp).unwrap();
        let k1 = accord_agreement::SecretKey::generate()
            .unwrap()
            .public_key();
        let k2 = accord_agreement::SecretKey::generate()
            .unwrap()
            .public_key();
        s.pin_room_key(&k1).unwrap();
        s.pin_room_key(&k1).unwrap();
        assert!(
            s.pin_room_key(&k2)
                .unwrap_err()
                .to_string()
                .contains("pinned")
        );
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;

    #[test]
    fn a_completed_upload_record_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let fp: Fingerprint = "ef".repeat(32).parse().unwrap();
        let s = State::open(dir.path(), "a-1", fp).unwrap();
        assert!(s.uploaded_handles().is_err(), "no record yet");
        s.begin_upload(&[1; 32]).unwrap();
        // A completed upload is the same one in another row order (an older shuffle).
        let ab = [[1u8; 16], [2; 16]].concat();
        let ba = [[2u8; 16], [1; 16]].concat();
        assert!(same_rows(&ab, &ba) && same_rows(&ab, &ab));
        assert!(!same_rows(&ab, &[[1u8; 16], [3; 16]].concat()));
        assert!(!same_rows(&ab, &[1; 16]));
        assert_eq!(s.uploaded_handles().unwrap().len(), 1, "pending counts");
        s.begin_upload(&[2; 32]).unwrap(); // the caller checked the room holds none of it
        s.finish_upload(&[2; 32]).unwrap();
        s.finish_upload(&[2; 32]).unwrap();
        assert!(s.begin_upload(&[3; 32]).is_err());
        assert!(s.finish_upload(&[3; 32]).is_err());
        let r = s.upload_record().unwrap();
        assert_eq!(r.done.as_deref(), Some(&[2u8; 32][..]));
        assert!(r.pending.is_none());
        s.record_erased(&[2; 16]).unwrap();
        assert!(s.erased_handles().unwrap().contains(&[2; 16]));
        assert_eq!(
            s.uploaded_handles().unwrap().len(),
            1,
            "erasure keeps the upload record"
        );
    }
}
