//! File helpers shared by the crates that touch the disk (`room`, `party`, `cli`).
//!
//! Owns: atomic file replacement (temp file in the same directory, fsync, rename, fsync of
//! the directory) and owner-only (mode 0600) files for secrets.
//!
//! Must never: leave a half-written file under the final name, widen the permissions of a
//! secret, or log file contents.
#![forbid(unsafe_code)]

pub mod snapshot;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use zeroize::Zeroizing;

/// A file operation that failed, with the path it was about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// An I/O error on `path` while doing `action`.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// What we were doing ("write", "create directory", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Refused to overwrite an existing file.
    #[error(
        "{path} already exists: refusing to overwrite it (choose another path or remove it first)"
    )]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A data directory was written by a newer (or unknown) format than this build reads.
    #[error(
        "{path} holds {kind} format {found}, but this build of Accord reads format {supported} \
         (and older): it was written by a newer Accord. Upgrade accord (docs/OPERATIONS.md), \
         or point this command at another directory; nothing was changed"
    )]
    NewerFormat {
        /// The directory.
        path: PathBuf,
        /// What kind of directory ("room data directory", "party state directory").
        kind: &'static str,
        /// The format it says it has.
        found: String,
        /// The newest format this build reads.
        supported: u32,
    },
    /// A backup that cannot be taken, verified or restored.
    #[error("backup {path}: {problem}")]
    BadBackup {
        /// The backup (or the directory concerned).
        path: PathBuf,
        /// What is wrong, and what to do.
        problem: String,
    },
    /// A secret file is readable or writable by other users.
    #[error(
        "{path} has permissions {mode:o}: a secret must be readable only by its owner (run `chmod 600 {path}`)"
    )]
    TooOpen {
        /// The secret file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Who may read the file written by [`write_atomic_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Default permissions (subject to the umask).
    Normal,
    /// Owner read/write only (0600): secrets.
    OwnerOnly,
}

/// Atomically replaces `path` with `bytes`: writes a temporary file beside it, fsyncs it,
/// renames it over `path` and fsyncs the directory. Readers see the old or the new content,
/// never a mix, even after a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    write_atomic_with(path, bytes, Access::Normal)
}

/// [`write_atomic`] with a choice of permissions.
pub fn write_atomic_with(path: &Path, bytes: &[u8], access: Access) -> Result<(), FsError> {
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    // Unique per process and call: the temp file is created with `create_new`.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let unique = (u64::from(std::process::id()) << 32) ^ n;
    let tmp = dir.join(format!(".{file_name}.tmp-{unique:016x}"));
    let result = (|| {
        let mut file = create_new(&tmp, access)?;
        file.write_all(bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a new secret file (mode 0600) atomically; refuses to overwrite an existing file.
pub fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    if path.exists() {
        return Err(FsError::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    write_atomic_with(path, bytes, Access::OwnerOnly)
}

/// Reads a secret file, refusing one that other users can read or write.
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, FsError> {
    check_owner_only(path)?;
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    Ok(Zeroizing::new(bytes))
}

/// Fails when `path` is accessible by group or others.
pub fn check_owner_only(path: &Path) -> Result<(), FsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(io_err("read the permissions of", path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(FsError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

/// Creates `dir` and its parents; with [`Access::OwnerOnly`] the leaf directory gets mode 0700.
pub fn create_dir_all(dir: &Path, access: Access) -> Result<(), FsError> {
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    #[cfg(unix)]
    if access == Access::OwnerOnly {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("set permissions of", dir))?;
    }
    Ok(())
}

/// Fsyncs a directory so that renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(io_err("open directory", dir))?;
        d.sync_all().map_err(io_err("sync directory", dir))?;
    }
    Ok(())
}

/// Removes a directory tree if it exists and syncs its parent, so deleted data does not
/// come back after a crash.
pub fn remove_dir_all_durable(dir: &Path) -> Result<(), FsError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("remove", dir)(e)),
    }
    sync_dir(&parent_dir(dir))
}

/// Removes a file if it exists and syncs its directory.
pub fn remove_file_durable(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("remove", path)(e)),
    }
    sync_dir(&parent_dir(path))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn create_new(path: &Path, access: Access) -> Result<File, FsError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if access == Access::OwnerOnly {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = access;
    options.open(path).map_err(io_err("create", path))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_data_directory_names_its_format_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let check = |d: &Path| check_format(d, "accord-test-data", "test data directory", 1);
        assert_eq!(check(&data).unwrap(), FormatCheck::Created);
        assert_eq!(
            fs::read_to_string(data.join(FORMAT_FILE)).unwrap(),
            "accord-test-data 1\n"
        );
        assert_eq!(check(&data).unwrap(), FormatCheck::Current);
        // Data from before format files: marked as format 1, nothing else touched.
        let legacy = dir.path().join("legacy");
        fs::create_dir_all(legacy.join("agreements")).unwrap();
        assert_eq!(check(&legacy).unwrap(), FormatCheck::Marked);
        assert!(legacy.join("agreements").is_dir());
        // A newer format is refused by name, and the file is left as it was.
        fs::write(data.join(FORMAT_FILE), "accord-test-data 2\n").unwrap();
        let e = check(&data).unwrap_err().to_string();
        assert!(
            e.contains("test data directory format 2")
                && e.contains("reads format 1")
                && e.contains("newer Accord")
                && e.contains("nothing was changed"),
            "{e}"
        );
        assert_eq!(
            fs::read_to_string(data.join(FORMAT_FILE)).unwrap(),
            "accord-test-data 2\n"
        );
        // Another kind's file, or garbage, is not silently accepted.
        fs::write(data.join(FORMAT_FILE), "accord-other 1\n").unwrap();
        let e = check(&data).unwrap_err().to_string();
        assert!(e.contains("not a test data directory format"), "{e}");
        fs::write(data.join(FORMAT_FILE), "accord-test-data 0\n").unwrap();
        let e = check(&data).unwrap_err().to_string();
        assert!(e.contains("not a test data directory format"), "{e}");
    }

    /// Issue 17: a build of format 2 reports older data (with a format file, or without one
    /// and therefore format 1) and changes nothing, so that its caller migrates and writes
    /// the format last; a format-1 build refuses a format-2 room directory naming both.
    #[test]
    fn an_older_format_is_reported_untouched_and_a_newer_one_names_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = |d: &Path| check_format(d, "accord-room-data", "room data directory", 2);
        let v1 = |d: &Path| check_format(d, "accord-room-data", "room data directory", 1);
        let old = dir.path().join("old");
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join(FORMAT_FILE), "accord-room-data 1\n").unwrap();
        assert_eq!(v2(&old).unwrap(), FormatCheck::Older(1));
        assert_eq!(
            fs::read_to_string(old.join(FORMAT_FILE)).unwrap(),
            "accord-room-data 1\n"
        );
        // Data without a format file is format 1, and no file is written for it.
        let legacy = dir.path().join("legacy");
        fs::create_dir_all(legacy.join("agreements")).unwrap();
        assert_eq!(v2(&legacy).unwrap(), FormatCheck::Older(1));
        assert!(!legacy.join(FORMAT_FILE).exists());
        // The caller migrates, then writes the format: from then on it is current.
        write_format(&old, "accord-room-data", 2).unwrap();
        assert_eq!(v2(&old).unwrap(), FormatCheck::Current);
        // A new directory gets this build's format at once.
        let new = dir.path().join("new");
        assert_eq!(v2(&new).unwrap(), FormatCheck::Created);
        assert_eq!(
            fs::read_to_string(new.join(FORMAT_FILE)).unwrap(),
            "accord-room-data 2\n"
        );
        // A format-1 build opening the migrated directory: refused, both versions named,
        // nothing changed.
        let e = v1(&old).unwrap_err().to_string();
        assert!(
            e.contains("room data directory format 2")
                && e.contains("reads format 1 (and older)")
                && e.contains("newer Accord")
                && e.contains("nothing was changed"),
            "{e}"
        );
        assert_eq!(
            fs::read_to_string(old.join(FORMAT_FILE)).unwrap(),
            "accord-room-data 2\n"
        );
        let names: Vec<_> = fs::read_dir(&old)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FORMAT_FILE], "no temporary file left: {names:?}");
    }

    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temporary files left behind: {names:?}");
    }

    #[cfg(unix)]
    #[test]
    fn secrets_are_owner_only_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_new_secret(&path, b"secret").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            write_new_secret(&path, b"other"),
            Err(FsError::AlreadyExists { .. })
        ));
        assert_eq!(read_secret(&path).unwrap().as_slice(), b"secret");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn removing_a_missing_directory_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        remove_dir_all_durable(&dir.path().join("nope")).unwrap();
        let sub = dir.path().join("sub");
        create_dir_all(&sub.join("deeper"), Access::OwnerOnly).unwrap();
        remove_dir_all_durable(&sub).unwrap();
        assert!(!sub.exists());
    }
}

/// The file in a data directory that names its format: `<kind-tag> <version>\n`.
pub const FORMAT_FILE: &str = "FORMAT";

/// What [`check_format`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatCheck {
    /// The directory already had this build's format.
    Current,
    /// The directory was new (empty or absent): the format file was written.
    Created,
    /// The directory held data from before format files existed (format 1 without the
    /// file) and this build's format is 1: the file was written, nothing else changed.
    Marked,
    /// The directory holds this older format (a `FORMAT` file naming it, or data without a
    /// `FORMAT` file: format 1). Nothing was changed: the caller migrates the data forward,
    /// then writes its format with [`write_format`], last.
    Older(u32),
}

/// Writes the format file of data directory `dir` atomically: `<tag> <version>\n`. A
/// migration calls it last, once every other file is in the new format.
pub fn write_format(dir: &Path, tag: &str, version: u32) -> Result<(), FsError> {
    write_atomic(
        &dir.join(FORMAT_FILE),
        format!("{tag} {version}\n").as_bytes(),
    )
}

/// Checks (creating if needed) the format file of data directory `dir`, whose files this
/// build writes in format `current`. `tag` names the kind in the file (`accord-room-data`),
/// `kind` in messages. A directory of a newer or unreadable format is refused, naming both
/// versions, and left untouched; an older one is reported ([`FormatCheck::Older`]), also
/// untouched, for the caller to migrate. Data written before format files existed is format 1.
pub fn check_format(
    dir: &Path,
    tag: &str,
    kind: &'static str,
    current: u32,
) -> Result<FormatCheck, FsError> {
    let path = dir.join(FORMAT_FILE);
    let newer = |found: String| FsError::NewerFormat {
        path: dir.to_path_buf(),
        kind,
        found,
        supported: current,
    };
    match fs::read_to_string(&path) {
        Ok(text) => {
            let found = text.trim();
            let version = found
                .strip_prefix(tag)
                .map(str::trim)
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|v| *v >= 1)
                .ok_or_else(|| {
                    newer(format!("{found:?} (not a {kind} format this build knows)"))
                })?;
            if version > current {
                return Err(newer(version.to_string()));
            }
            Ok(if version < current {
                FormatCheck::Older(version)
            } else {
                FormatCheck::Current
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let had_data = fs::read_dir(dir)
                .map(|mut entries| entries.next().is_some())
                .unwrap_or(false);
            if had_data && current > 1 {
                return Ok(FormatCheck::Older(1));
            }
            create_dir_all(dir, Access::OwnerOnly)?;
            write_format(dir, tag, current)?;
            Ok(if had_data {
                FormatCheck::Marked
            } else {
                FormatCheck::Created
            })
        }
        Err(e) => Err(io_err("read", &path)(e)),
    }
}
