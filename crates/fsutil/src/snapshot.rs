//! Consistent backups of a live data directory, and their checked restore.
//!
//! **The lock.** Every process that writes a data directory holds a *shared* lock on its
//! `.lock` file for each operation ([`DirLock::shared`]); a backup holds it *exclusively*
//! while it links and copies ([`backup`]), so it sees the directory between two operations,
//! never in the middle of one (a batch renamed from `pending/` to `rows/` is caught once, an
//! audit entry is never missing its data). A second file, `.gate`, stops new operations from
//! starting while the backup waits for those in flight, so a busy service cannot starve it.
//! The lock files are advisory (`flock`) and are not part of a backup.
//!
//! **Cheap while the service waits.** Files the caller's `linkable` predicate accepts (files
//! that are only ever replaced by an atomic rename, never changed in place) are hard-linked
//! into the backup; the others (append-only logs) are copied. Checksums are computed after
//! the lock is released, over the backup's own files. A backup on another filesystem is
//! copied throughout.
//!
//! **The backup's manifest.** `BACKUP` names the kind of directory, when the backup was
//! taken, and every file with its size and SHA-256; [`verify`] checks all of it (no file
//! missing, changed or added) and [`restore`] refuses a backup that does not verify, and a
//! target that is not empty, then copies to a temporary sibling and renames it into place.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::{Access, FsError, create_dir_all, io_err, sync_dir, write_atomic};

/// The lock file held (shared) by every operation that writes the directory.
pub const LOCK_FILE: &str = ".lock";
/// The gate a backup closes so that no new operation starts while it waits.
pub const GATE_FILE: &str = ".gate";
/// The manifest of a backup.
pub const BACKUP_FILE: &str = "BACKUP";
const BACKUP_TAG: &str = "accord-backup 1";

/// How long an operation waits between attempts while a backup holds the directory (async
/// callers wait with their runtime's timer, [`DirLock::try_shared`] in a loop).
pub const RETRY: Duration = Duration::from_millis(10);

/// The locks of one data directory.
#[derive(Debug, Clone)]
pub struct DirLock {
    lock: PathBuf,
    gate: PathBuf,
}

/// Held while an operation writes the directory; dropping it releases the lock.
#[derive(Debug)]
pub struct SharedGuard {
    _file: File,
}

/// Held by a backup: no operation writes the directory meanwhile.
#[derive(Debug)]
pub struct ExclusiveGuard {
    _gate: File,
    _lock: File,
}

fn open_lock(path: &Path) -> Result<File, FsError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("open the lock file", path))
}

impl DirLock {
    /// The locks of `dir` (the files are created on first use).
    pub fn new(dir: &Path) -> Self {
        Self {
            lock: dir.join(LOCK_FILE),
            gate: dir.join(GATE_FILE),
        }
    }

    /// One attempt at the shared lock: `None` while a backup holds the directory.
    pub fn try_shared(&self) -> Result<Option<SharedGuard>, FsError> {
        let gate = open_lock(&self.gate)?;
        match gate.try_lock_shared() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &self.gate)(e)),
        }
        let file = open_lock(&self.lock)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(Some(SharedGuard { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io_err("lock", &self.lock)(e)),
        }
        // `gate` is closed here: it is held only while the operation passes.
    }

    /// The shared lock for a synchronous caller (a party's command), waiting while a backup
    /// runs.
    pub fn shared_blocking(&self) -> Result<SharedGuard, FsError> {
        loop {
            if let Some(g) = self.try_shared()? {
                return Ok(g);
            }
            std::thread::sleep(RETRY);
        }
    }

    /// The exclusive lock: closes the gate, then waits for the operations in flight.
    pub fn exclusive(&self) -> Result<ExclusiveGuard, FsError> {
        let gate = open_lock(&self.gate)?;
        gate.lock().map_err(io_err("lock", &self.gate))?;
        let lock = open_lock(&self.lock)?;
        lock.lock().map_err(io_err("lock", &self.lock))?;
        Ok(ExclusiveGuard {
            _gate: gate,
            _lock: lock,
        })
    }
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// What a backup holds, as its `BACKUP` file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupManifest {
    /// The kind of directory (the tag of its `FORMAT` file, e.g. `accord-room-data`).
    pub kind: String,
    /// When the backup was taken, seconds since the Unix epoch.
    pub taken_unix: u64,
    /// Every file, by path relative to the backup (with `/`).
    pub files: BTreeMap<String, BackupFile>,
}

impl BackupManifest {
    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    fn to_text(&self) -> String {
        let mut t = format!(
            "{BACKUP_TAG}\nkind {}\ntaken_unix {}\n",
            self.kind, self.taken_unix
        );
        for (path, f) in &self.files {
            t.push_str(&format!("file {} {} {path}\n", f.sha256, f.size));
        }
        t
    }

    fn parse(text: &str, at: &Path) -> Result<Self, FsError> {
        let bad = |line: usize, what: &str| FsError::BadBackup {
            path: at.to_path_buf(),
            problem: format!("line {line} of {BACKUP_FILE}: {what}"),
        };
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, l)) if l == BACKUP_TAG => {}
            Some((_, l)) if l.starts_with("accord-backup ") => {
                return Err(bad(
                    1,
                    &format!(
                        "{l:?} is a backup format this build does not read (it reads {BACKUP_TAG:?})"
                    ),
                ));
            }
            _ => return Err(bad(1, "not an Accord backup manifest")),
        }
        let mut kind = None;
        let mut taken = None;
        let mut files = BTreeMap::new();
        for (i, line) in lines {
            let n = i + 1;
            if let Some(k) = line.strip_prefix("kind ") {
                kind = Some(k.trim().to_owned());
            } else if let Some(t) = line.strip_prefix("taken_unix ") {
                taken = Some(
                    t.trim()
                        .parse()
                        .map_err(|_| bad(n, "taken_unix is not a number"))?,
                );
            } else if let Some(rest) = line.strip_prefix("file ") {
                let mut parts = rest.splitn(3, ' ');
                let (Some(sha), Some(size), Some(path)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(bad(n, "expected `file <sha256> <size> <path>`"));
                };
                if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(n, "the checksum is not 64 hex digits"));
                }
                let size = size
                    .parse()
                    .map_err(|_| bad(n, "the size is not a number"))?;
                check_relative(path).map_err(|what| bad(n, &what))?;
                files.insert(
                    path.to_owned(),
                    BackupFile {
                        size,
                        sha256: sha.to_ascii_lowercase(),
                    },
                );
            } else if !line.trim().is_empty() {
                return Err(bad(n, "unknown line"));
            }
        }
        Ok(Self {
            kind: kind.ok_or_else(|| bad(0, "no `kind` line"))?,
            taken_unix: taken.ok_or_else(|| bad(0, "no `taken_unix` line"))?,
            files,
        })
    }
}

/// A path in a manifest must stay inside the backup.
fn check_relative(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    // `/x` starts with a root component and `a/../b` holds a parent one: only plain names.
    if path.is_empty()
        || p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!("{path:?} is not a plain relative path"));
    }
    Ok(())
}

/// Files of `dir` (relative paths, `/`-separated, sorted), leaving out the lock files, the
/// backup manifest and temporary files of interrupted atomic writes.
fn list_files(dir: &Path) -> Result<Vec<String>, FsError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), FsError> {
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let entry = entry.map_err(io_err("list", dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io_err("inspect", &path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else if kind.is_file() {
                let top = dir == root;
                let skipped = (top
                    && (name == LOCK_FILE || name == GATE_FILE || name == BACKUP_FILE))
                    || (name.starts_with('.') && name.contains(".tmp-"));
                if !skipped {
                    let rel = path.strip_prefix(root).map_err(|_| {
                        io_err("relate", &path)(io::Error::other("outside the root"))
                    })?;
                    let parts: Vec<String> = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    out.push(parts.join("/"));
                }
            }
            // Symbolic links and other kinds are not part of any Accord directory: skipped.
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn sha256_file(path: &Path) -> Result<BackupFile, FsError> {
    let mut f = File::open(path).map_err(io_err("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(BackupFile {
        size,
        sha256: hex_lower(&hasher.finalize()),
    })
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies `from` to `to` (new file, same permissions), synced.
fn copy_file(from: &Path, to: &Path) -> Result<(), FsError> {
    fs::copy(from, to).map_err(io_err("copy", from))?;
    File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync", to))
}

/// Creates each parent directory of `rel` under `root` (mode 0700), once.
fn make_parents(
    root: &Path,
    rel: &str,
    made: &mut std::collections::BTreeSet<PathBuf>,
) -> Result<PathBuf, FsError> {
    let to = root.join(rel);
    if let Some(parent) = to.parent()
        && made.insert(parent.to_path_buf())
    {
        create_dir_all(parent, Access::OwnerOnly)?;
    }
    Ok(to)
}

fn sync_tree(root: &Path, made: &std::collections::BTreeSet<PathBuf>) -> Result<(), FsError> {
    for d in made.iter().rev() {
        sync_dir(d)?;
    }
    sync_dir(root)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn refuse_existing(path: &Path, what: &str) -> Result<(), FsError> {
    match fs::read_dir(path) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(FsError::BadBackup {
                    path: path.to_path_buf(),
                    problem: format!(
                        "the {what} exists and is not empty: choose a new directory (nothing was changed)"
                    ),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Err(FsError::BadBackup {
            path: path.to_path_buf(),
            problem: format!("the {what} is a file: choose a new directory (nothing was changed)"),
        }),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// A sibling of `dest` for work in progress: renamed onto `dest` when complete, so a backup
/// or restore interrupted at any point leaves no directory that looks finished.
fn partial_of(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    dest.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

fn finish(partial: &Path, dest: &Path) -> Result<(), FsError> {
    if dest.exists() {
        // Only an empty directory can be here (checked before): replace it.
        fs::remove_dir(dest).map_err(io_err("replace the empty directory", dest))?;
    }
    fs::rename(partial, dest).map_err(io_err("rename into place", dest))?;
    sync_dir(&crate::parent_dir(dest))
}

/// Takes a consistent backup of the data directory `src` (whose `FORMAT` tag is `kind`) into
/// the new directory `dest`, while the services writing `src` keep running (they wait for
/// the time the files are linked or copied). `linkable` says which files (by relative path)
/// are only ever replaced by an atomic rename and may be hard-linked.
pub fn backup(
    src: &Path,
    dest: &Path,
    kind: &str,
    linkable: &dyn Fn(&str) -> bool,
) -> Result<BackupManifest, FsError> {
    let format = fs::read_to_string(src.join(crate::FORMAT_FILE))
        .map_err(io_err("read the format of", src))?;
    if format.split_whitespace().next() != Some(kind) {
        return Err(FsError::BadBackup {
            path: src.to_path_buf(),
            problem: format!(
                "this is not a {kind} directory (its FORMAT file says {:?})",
                format.trim()
            ),
        });
    }
    refuse_existing(dest, "backup directory")?;
    let partial = partial_of(dest);
    let _ = fs::remove_dir_all(&partial);
    create_dir_all(&partial, Access::OwnerOnly)?;
    let result = (|| {
        let mut made = std::collections::BTreeSet::new();
        let taken_unix;
        let names;
        {
            let _held = DirLock::new(src).exclusive()?;
            taken_unix = now_unix();
            names = list_files(src)?;
            for rel in &names {
                let from = src.join(rel);
                let to = make_parents(&partial, rel, &mut made)?;
                let linked = linkable(rel) && fs::hard_link(&from, &to).is_ok();
                if !linked {
                    copy_file(&from, &to)?;
                }
            }
        }
        let mut files = BTreeMap::new();
        for rel in names {
            let f = sha256_file(&partial.join(&rel))?;
            files.insert(rel, f);
        }
        let manifest = BackupManifest {
            kind: kind.to_owned(),
            taken_unix,
            files,
        };
        write_atomic(&partial.join(BACKUP_FILE), manifest.to_text().as_bytes())?;
        sync_tree(&partial, &made)?;
        finish(&partial, dest)?;
        Ok(manifest)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    result
}

/// Checks a backup: its manifest names `kind`, and every file it lists is there with its
/// size and checksum, and no other file is. Returns the manifest.
pub fn verify(backup: &Path, kind: &str) -> Result<BackupManifest, FsError> {
    let manifest_path = backup.join(BACKUP_FILE);
    let text = fs::read_to_string(&manifest_path).map_err(|e| FsError::BadBackup {
        path: backup.to_path_buf(),
        problem: format!("cannot read its {BACKUP_FILE} file ({e}): it is not an Accord backup, or an unfinished one"),
    })?;
    let manifest = BackupManifest::parse(&text, backup)?;
    let bad = |problem: String| FsError::BadBackup {
        path: backup.to_path_buf(),
        problem,
    };
    if manifest.kind != kind {
        return Err(bad(format!(
            "it is a backup of a {} directory, not of a {kind} directory",
            manifest.kind
        )));
    }
    let present = list_files(backup)?;
    for rel in &present {
        if !manifest.files.contains_key(rel) {
            return Err(bad(format!(
                "{rel} is not listed in {BACKUP_FILE}: something was added after the backup"
            )));
        }
    }
    for (rel, expected) in &manifest.files {
        let path = backup.join(rel);
        if !path.is_file() {
            return Err(bad(format!("{rel} is listed in {BACKUP_FILE} but missing")));
        }
        let got = sha256_file(&path)?;
        if got != *expected {
            return Err(bad(format!(
                "{rel} changed since the backup (size {} and SHA-256 {}, expected size {} and {})",
                got.size, got.sha256, expected.size, expected.sha256
            )));
        }
    }
    Ok(manifest)
}

/// Restores a verified backup into `dest`, which must not exist or be empty: the files are
/// copied into a temporary sibling, synced, and renamed onto `dest` at once. `check` runs on
/// the copy before the rename (the caller's own checks, e.g. audit chains).
pub fn restore(
    backup: &Path,
    dest: &Path,
    kind: &str,
    check: &dyn Fn(&Path) -> Result<(), String>,
) -> Result<BackupManifest, FsError> {
    let manifest = verify(backup, kind)?;
    refuse_existing(dest, "target directory")?;
    let partial = partial_of(dest);
    let _ = fs::remove_dir_all(&partial);
    create_dir_all(&partial, Access::OwnerOnly)?;
    let result = (|| {
        let mut made = std::collections::BTreeSet::new();
        for rel in manifest.files.keys() {
            let to = make_parents(&partial, rel, &mut made)?;
            copy_file(&backup.join(rel), &to)?;
        }
        // What was copied is what the manifest promised (a disk error in the copy is caught).
        for (rel, expected) in &manifest.files {
            if sha256_file(&partial.join(rel))? != *expected {
                return Err(FsError::BadBackup {
                    path: backup.to_path_buf(),
                    problem: format!("{rel} was not copied faithfully; nothing was restored"),
                });
            }
        }
        check(&partial).map_err(|problem| FsError::BadBackup {
            path: backup.to_path_buf(),
            problem,
        })?;
        sync_tree(&partial, &made)?;
        finish(&partial, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    result.map(|()| manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn data_dir(root: &Path) -> PathBuf {
        let d = root.join("data");
        create_dir_all(&d.join("sub"), Access::OwnerOnly).unwrap();
        fs::write(d.join(crate::FORMAT_FILE), "accord-test 1\n").unwrap();
        fs::write(d.join("sub/batch.parquet"), b"immutable").unwrap();
        fs::write(d.join("log.jsonl"), b"line 1\n").unwrap();
        fs::write(d.join(".x.tmp-0001"), b"torn").unwrap();
        fs::write(d.join("sub/.keep"), b"dot").unwrap();
        d
    }

    fn linkable(rel: &str) -> bool {
        rel.ends_with(".parquet")
    }

    #[test]
    fn a_backup_holds_every_file_and_restores_exactly() {
        let root = tempfile::tempdir().unwrap();
        let src = data_dir(root.path());
        let _lock = DirLock::new(&src).try_shared().unwrap().unwrap();
        drop(_lock);
        let dest = root.path().join("b1");
        let m = backup(&src, &dest, "accord-test", &linkable).unwrap();
        assert_eq!(
            m.files.keys().cloned().collect::<Vec<_>>(),
            vec!["FORMAT", "log.jsonl", "sub/.keep", "sub/batch.parquet"],
            "lock files and temporary files are left out, other dot files kept"
        );
        assert_eq!(m.files["log.jsonl"].size, 7);
        assert_eq!(m.bytes(), 14 + 7 + 3 + 9);
        // The clock read here, not through `now_unix`: the time a backup says it was taken.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            m.taken_unix <= now && m.taken_unix + 600 > now,
            "{}",
            m.taken_unix
        );
        // The append-only log is a copy: appending to the live one does not change the backup.
        OpenOptions::new()
            .append(true)
            .open(src.join("log.jsonl"))
            .unwrap()
            .write_all(b"line 2\n")
            .unwrap();
        verify(&dest, "accord-test").unwrap();
        let restored = root.path().join("restored");
        restore(&dest, &restored, "accord-test", &|_| Ok(())).unwrap();
        assert_eq!(fs::read(restored.join("log.jsonl")).unwrap(), b"line 1\n");
        assert_eq!(
            fs::read(restored.join("sub/batch.parquet")).unwrap(),
            b"immutable"
        );
        assert!(!restored.join(BACKUP_FILE).exists());
        // Into a directory that is not empty: refused, nothing changed.
        fs::write(restored.join("mine"), b"keep me").unwrap();
        let err = restore(&dest, &restored, "accord-test", &|_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exists and is not empty"), "{err}");
        assert_eq!(fs::read(restored.join("mine")).unwrap(), b"keep me");
        let err = backup(&src, &dest, "accord-test", &linkable)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exists and is not empty"), "{err}");
        // Onto a file: refused by name, the file untouched.
        let file = root.path().join("a-file");
        fs::write(&file, b"x").unwrap();
        let err = restore(&dest, &file, "accord-test", &|_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a file"), "{err}");
        assert_eq!(fs::read(&file).unwrap(), b"x");
        // Into a directory that does not exist yet, or is empty: fine.
        let empty = root.path().join("empty");
        fs::create_dir(&empty).unwrap();
        restore(&dest, &empty, "accord-test", &|_| Ok(())).unwrap();
    }

    #[test]
    fn a_changed_missing_or_added_file_fails_verification_and_restores_nothing() {
        let root = tempfile::tempdir().unwrap();
        let src = data_dir(root.path());
        let fresh = |name: &str| {
            let b = root.path().join(name);
            backup(&src, &b, "accord-test", &linkable).unwrap();
            b
        };
        type Spoil = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Spoil, &str)> = vec![
            (
                "changed",
                Box::new(|b: &Path| fs::write(b.join("log.jsonl"), b"line X\n").unwrap()),
                "changed since the backup",
            ),
            (
                "missing",
                Box::new(|b: &Path| fs::remove_file(b.join("FORMAT")).unwrap()),
                "missing",
            ),
            (
                "added",
                Box::new(|b: &Path| fs::write(b.join("sub/extra"), b"x").unwrap()),
                "not listed",
            ),
            (
                "manifest",
                Box::new(|b: &Path| fs::write(b.join(BACKUP_FILE), "accord-backup 9\n").unwrap()),
                "does not read",
            ),
            (
                "kind",
                Box::new(|b: &Path| {
                    let t = fs::read_to_string(b.join(BACKUP_FILE))
                        .unwrap()
                        .replace("kind accord-test", "kind accord-other");
                    fs::write(b.join(BACKUP_FILE), t).unwrap()
                }),
                "not of a accord-test directory",
            ),
            (
                "escape",
                Box::new(|b: &Path| {
                    let mut t = fs::read_to_string(b.join(BACKUP_FILE)).unwrap();
                    t.push_str(&format!("file {} 1 ../outside\n", "0".repeat(64)));
                    fs::write(b.join(BACKUP_FILE), t).unwrap()
                }),
                "not a plain relative path",
            ),
            (
                "not a manifest",
                Box::new(|b: &Path| fs::write(b.join(BACKUP_FILE), "hello\n").unwrap()),
                "not an Accord backup manifest",
            ),
            (
                "unknown line",
                Box::new(|b: &Path| {
                    let t = fs::read_to_string(b.join(BACKUP_FILE))
                        .unwrap()
                        .replacen("kind ", "sort ", 1);
                    fs::write(b.join(BACKUP_FILE), t).unwrap()
                }),
                "line 2 of BACKUP: unknown line",
            ),
            (
                "short checksum",
                Box::new(|b: &Path| {
                    let mut t = fs::read_to_string(b.join(BACKUP_FILE)).unwrap();
                    t.push_str(&format!("file {} 1 extra\n", "0".repeat(63)));
                    fs::write(b.join(BACKUP_FILE), t).unwrap()
                }),
                "line 8 of BACKUP: the checksum is not 64 hex digits",
            ),
            (
                "not hex",
                Box::new(|b: &Path| {
                    let mut t = fs::read_to_string(b.join(BACKUP_FILE)).unwrap();
                    t.push_str(&format!("file {} 1 extra\n", "g".repeat(64)));
                    fs::write(b.join(BACKUP_FILE), t).unwrap()
                }),
                "not 64 hex digits",
            ),
            (
                "absolute",
                Box::new(|b: &Path| {
                    let mut t = fs::read_to_string(b.join(BACKUP_FILE)).unwrap();
                    t.push_str(&format!("file {} 1 /etc/passwd\n", "0".repeat(64)));
                    fs::write(b.join(BACKUP_FILE), t).unwrap()
                }),
                "not a plain relative path",
            ),
        ];
        for (name, spoil, expected) in cases {
            let b = fresh(name);
            spoil(&b);
            let err = verify(&b, "accord-test").unwrap_err().to_string();
            assert!(err.contains(expected), "{name}: {err}");
            let target = root.path().join(format!("r-{name}"));
            assert!(restore(&b, &target, "accord-test", &|_| Ok(())).is_err());
            assert!(!target.exists(), "{name}: nothing restored");
        }
        // The caller's own check refuses too, and nothing is left behind.
        let b = fresh("checked");
        let target = root.path().join("r-checked");
        let err = restore(&b, &target, "accord-test", &|_| {
            Err("audit chain broken".into())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("audit chain broken"), "{err}");
        assert!(!target.exists());
        assert!(
            fs::read_dir(root.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("partial"))
        );
    }

    #[test]
    fn a_backup_waits_for_operations_in_flight_and_holds_new_ones_back() {
        let root = tempfile::tempdir().unwrap();
        let src = data_dir(root.path());
        let lock = DirLock::new(&src);
        let in_flight = lock.try_shared().unwrap().expect("free");
        // A second operation may run beside the first.
        let second = lock.try_shared().unwrap().expect("shared with the first");
        drop(second);
        let (tx, rx) = std::sync::mpsc::channel();
        let src2 = src.clone();
        let t = std::thread::spawn(move || {
            let dest = src2.parent().unwrap().join("b");
            let m = backup(&src2, &dest, "accord-test", &linkable).unwrap();
            tx.send(()).unwrap();
            m
        });
        // The backup cannot finish while the operation holds the directory...
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        // ...and has closed the gate: a new operation waits.
        let mut held_back = false;
        for _ in 0..100 {
            match lock.try_shared().unwrap() {
                None => {
                    held_back = true;
                    break;
                }
                Some(g) => drop(g),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(held_back, "a new operation must wait for the backup");
        // The operation in flight writes, then ends: the backup sees its write.
        fs::write(src.join("sub/late.parquet"), b"late").unwrap();
        drop(in_flight);
        let m = t.join().unwrap();
        rx.recv().unwrap();
        assert!(m.files.contains_key("sub/late.parquet"));
        assert!(
            lock.try_shared().unwrap().is_some(),
            "free again after the backup"
        );
    }
}
