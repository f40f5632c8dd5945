//! The tombstones that keep an ended agreement ended, on disk, and the migration of the data
//! directory from format 1 to format 2 (issue 17).
//!
//! Format 2 keeps one file per tombstone, `tombstones/<fingerprint>.json`, written atomically
//! when the agreement ends and read at start-up by listing the directory: ending an agreement
//! writes one small file (format 1 rewrote every tombstone in `tombstones.json` at each
//! ending), and a damaged file names itself instead of hiding every other tombstone.
//!
//! The migration from format 1 is a sequence of steps each of which is atomic (a rename, an
//! unlink, a mkdir) or idempotent (writing a file that may already be there with the same
//! bytes). `FORMAT` changes to 2 once every tombstone has its file and before
//! `tombstones.json` goes, so every state a kill can leave is safe for both builds: while
//! `FORMAT` says 1, `tombstones.json` is whole (the previous build still reads it, and this
//! one migrates again); once it says 2, the previous build refuses the directory, and this one
//! finishes by removing the leftover `tombstones.json` (`tombstones_tests.rs` builds every such
//! state).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use accord_agreement::Fingerprint;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RoomError};

/// The directory of tombstone files (format 2).
pub const TOMBSTONES_DIR: &str = "tombstones";
/// The single tombstone file of format 1, replaced by [`TOMBSTONES_DIR`] in format 2.
pub const FORMAT_1_TOMBSTONES: &str = "tombstones.json";

/// Why an agreement version ended. Stored in its tombstone by these lower-case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// A party revoked it.
    Revoked,
    /// Its validity window ended.
    Expired,
    /// A newer version signed by every one of its party keys replaced it.
    Superseded,
}

impl EndReason {
    /// The name stored and shown ("revoked", "expired", "superseded").
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Superseded => "superseded",
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a fingerprint may never be registered again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The agreement id.
    pub agreement_id: String,
    /// The agreement version that ended.
    #[serde(default)]
    pub version: u64,
    /// Why it ended.
    pub reason: EndReason,
    /// When (RFC 3339).
    pub at: String,
    /// The party keys of the version that ended: a later version of the same lineage (signed
    /// by one of them) must carry a higher version. Empty in tombstones written before this
    /// field existed, which then count for every agreement with this id.
    #[serde(default)]
    pub party_keys: Vec<String>,
}

/// The tombstones of a data directory by fingerprint (its hex text), as the room holds them.
pub type Tombstones = BTreeMap<String, Tombstone>;

/// `tombstones/` of `data_dir`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(TOMBSTONES_DIR)
}

fn file_of(data_dir: &Path, fingerprint: &str) -> PathBuf {
    dir(data_dir).join(format!("{fingerprint}.json"))
}

fn encode(t: &Tombstone) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(t).map_err(|e| RoomError::Internal(e.to_string()))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Writes one tombstone file atomically (format 2).
pub(crate) fn write(data_dir: &Path, fingerprint: Fingerprint, t: &Tombstone) -> Result<()> {
    accord_fs::write_atomic(&file_of(data_dir, &fingerprint.to_string()), &encode(t)?)?;
    Ok(())
}

/// Whether `text` is a fingerprint as the room writes it (64 lower-case hex digits).
fn is_fingerprint(text: &str) -> bool {
    text.parse::<Fingerprint>()
        .is_ok_and(|fp| fp.to_string() == text)
}

/// A temporary file that [`accord_fs::write_atomic`] left when stopped before its rename
/// (`.<name>.tmp-<hex>`): never acknowledged, so nothing was lost with it.
fn is_leftover_temp(name: &str, of: Option<&str>) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((target, unique)) = rest.rsplit_once(".tmp-") else {
        return false;
    };
    !unique.is_empty()
        && unique.bytes().all(|b| b.is_ascii_hexdigit())
        && of.is_none_or(|of| of == target)
}

/// Reads every tombstone of `tombstones/` (absent: none) without changing anything (the
/// status command reads a running room's directory). A file that does not parse, or whose
/// name is not `<fingerprint>.json`, is an error naming it; the leftover temporary files of an
/// interrupted write are skipped.
pub(crate) fn read_all(data_dir: &Path) -> Result<Tombstones> {
    let dir = dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tombstones::new()),
        Err(e) => return Err(RoomError::io("list", &dir, e)),
    };
    let mut out = Tombstones::new();
    for entry in entries {
        let path = entry.map_err(|e| RoomError::io("list", &dir, e))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if is_leftover_temp(&name, None) {
            continue;
        }
        let fingerprint = name
            .strip_suffix(".json")
            .filter(|fp| is_fingerprint(fp))
            .ok_or_else(|| {
                RoomError::FailedPrecondition(format!(
                    "{} is not a tombstone (tombstones/<fingerprint>.json): the room does not start \
                     with files it does not know there; move it out of the data directory",
                    path.display()
                ))
            })?;
        let bytes = std::fs::read(&path).map_err(|e| RoomError::io("read", &path, e))?;
        let t = serde_json::from_slice(&bytes).map_err(|e| {
            RoomError::FailedPrecondition(format!(
                "the tombstone {} is damaged ({e}): the room does not start without it (it would \
                 forget that this agreement ended); restore the file from a backup",
                path.display()
            ))
        })?;
        out.insert(fingerprint.to_owned(), t);
    }
    Ok(out)
}

/// Reads format 1's `tombstones.json` (absent: `None`), without changing anything.
pub(crate) fn read_format_1(data_dir: &Path) -> Result<Option<Tombstones>> {
    let path = data_dir.join(FORMAT_1_TOMBSTONES);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RoomError::io("read", &path, e)),
    };
    let all: Tombstones = serde_json::from_slice(&bytes).map_err(|e| {
        RoomError::FailedPrecondition(format!(
            "{} is damaged ({e}): nothing was migrated; restore it from a backup",
            path.display()
        ))
    })?;
    if let Some(bad) = all.keys().find(|fp| !is_fingerprint(fp)) {
        return Err(RoomError::FailedPrecondition(format!(
            "{} holds a tombstone under {bad:?}, which is not a fingerprint: nothing was migrated",
            path.display()
        )));
    }
    Ok(Some(all))
}

/// Loads the tombstones of a format-2 data directory at start-up, first removing the leftover
/// temporary files of a write the room was stopped in. A `tombstones.json` here is what a
/// migration stopped after writing `FORMAT` left (or a format-1 file copied in by hand): it is
/// never ignored, since it may hold a record that an agreement ended. Each of its tombstones
/// that has no file yet gets one (a tombstone only ever refuses more), then it is removed.
pub(crate) fn load(data_dir: &Path) -> Result<Tombstones> {
    remove_leftover_temps(&dir(data_dir), None)?;
    if let Some(legacy) = read_format_1(data_dir)? {
        remove_leftover_temps(data_dir, Some(FORMAT_1_TOMBSTONES))?;
        accord_fs::create_dir_all(&dir(data_dir), accord_fs::Access::OwnerOnly)?;
        let present = read_all(data_dir)?;
        let mut added = 0;
        for (fingerprint, t) in &legacy {
            if !present.contains_key(fingerprint) {
                accord_fs::write_atomic(&file_of(data_dir, fingerprint), &encode(t)?)?;
                added += 1;
            }
        }
        let path = data_dir.join(FORMAT_1_TOMBSTONES);
        std::fs::remove_file(&path).map_err(|e| RoomError::io("remove", &path, e))?;
        accord_fs::sync_dir(data_dir)?;
        tracing::info!(
            kept = legacy.len(),
            added,
            "removed the format-1 tombstones.json left in a format-2 data directory (every tombstone in it has its file)"
        );
    }
    read_all(data_dir)
}

/// Removes the temporary files an interrupted atomic write left in `dir` (of `of` only, when
/// given), syncing the directory when it removed any.
fn remove_leftover_temps(dir: &Path, of: Option<&str>) -> Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(RoomError::io("list", dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| RoomError::io("list", dir, e))?;
        if is_leftover_temp(&entry.file_name().to_string_lossy(), of) {
            std::fs::remove_file(entry.path())
                .map_err(|e| RoomError::io("remove", &entry.path(), e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        accord_fs::sync_dir(dir)?;
    }
    Ok(removed)
}

/// What [`migrate_1_to_2`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// Tombstones of `tombstones.json` now in `tombstones/` (written, or already there with
    /// the same content from an interrupted run).
    pub moved: usize,
    /// Of these, the ones an interrupted run had already written.
    pub already_there: usize,
    /// Whether `tombstones.json` was still there (false: absent, or removed by an interrupted
    /// run after it had moved every tombstone).
    pub had_format_1_file: bool,
}

/// Migrates the data directory `data_dir` from format 1 to format 2, in steps a `kill -9`
/// may interrupt anywhere:
///
/// 1. create `tombstones/` (and sync the data directory);
/// 2. write each tombstone of `tombstones.json` as `tombstones/<fingerprint>.json`, atomically;
///    one already there with the same content is kept, one that differs is rewritten
///    (`tombstones.json` is the record while the format is 1);
/// 3. write `FORMAT` = `accord-room-data 2` atomically (killed before: the next start
///    migrates again; the previous build still reads the whole `tombstones.json`);
/// 4. remove `tombstones.json` and sync the data directory (killed before: [`load`] finishes
///    it; the previous build refuses format 2).
///
/// Leftover temporary files of interrupted writes of these files are removed first.
pub(crate) fn migrate_1_to_2(data_dir: &Path, tag: &str) -> Result<Migrated> {
    let legacy = data_dir.join(FORMAT_1_TOMBSTONES);
    // Before anything is written, so that a damaged tombstones.json changes nothing.
    let tombstones = read_format_1(data_dir)?;
    remove_leftover_temps(data_dir, Some(FORMAT_1_TOMBSTONES))?;
    remove_leftover_temps(data_dir, Some(accord_fs::FORMAT_FILE))?;
    let dir = dir(data_dir);
    accord_fs::create_dir_all(&dir, accord_fs::Access::OwnerOnly)?;
    accord_fs::sync_dir(data_dir)?;
    remove_leftover_temps(&dir, None)?;
    let mut migrated = Migrated {
        moved: 0,
        already_there: 0,
        had_format_1_file: tombstones.is_some(),
    };
    for (fingerprint, t) in tombstones.iter().flatten() {
        let path = file_of(data_dir, fingerprint);
        let bytes = encode(t)?;
        if std::fs::read(&path).is_ok_and(|on_disk| on_disk == bytes) {
            migrated.already_there += 1;
        } else {
            accord_fs::write_atomic(&path, &bytes)?;
        }
        migrated.moved += 1;
    }
    accord_fs::write_format(data_dir, tag, 2)?;
    if migrated.had_format_1_file {
        std::fs::remove_file(&legacy).map_err(|e| RoomError::io("remove", &legacy, e))?;
        accord_fs::sync_dir(data_dir)?;
    }
    Ok(migrated)
}

#[cfg(test)]
#[path = "tombstones_tests.rs"]
mod tests;
