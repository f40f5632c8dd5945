//! `accord room status`: what an operator (or a monitor) needs to know about a room's data
//! directory — its format and the build's, the room's public key, the agreements it holds and
//! their states, the agreements that ended, the last audit head of each, and the disk used.
//! Read only: nothing is created, repaired or truncated, so it is safe while the room runs (a
//! half-written last audit line is simply not counted).

use std::path::{Path, PathBuf};

use accord_agreement::{Fingerprint, SecretKey};
use serde::Serialize;

use crate::error::{Result, RoomError};
use crate::room::{ROOM_FORMAT, tombstones};

/// An agreement version the room holds data for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgreementStatus {
    /// Its id.
    pub id: String,
    /// Its version.
    pub version: u64,
    /// Its fingerprint.
    pub fingerprint: String,
    /// `collecting` (uploads and blinding under way) or `sealed` (queryable).
    pub state: &'static str,
    /// When it stops being in force (RFC 3339).
    pub valid_until: String,
    /// Entries in its audit log.
    pub audit_entries: u64,
    /// Hex SHA-256 of its last audit entry (the hash the room's signed head carries).
    pub audit_head: String,
    /// `went_back` entries in the log: times the room was found to have gone back in time
    /// (restored from an older backup, data lost). Worth an alert.
    pub audit_went_back: u64,
}

/// An agreement version that ended; its audit log stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndedStatus {
    /// Its id.
    pub id: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Why it ended.
    pub reason: String,
    /// When.
    pub at: String,
    /// Entries in its audit log.
    pub audit_entries: u64,
    /// Hex SHA-256 of its last audit entry.
    pub audit_head: String,
    /// `went_back` entries in the log: times the room was found to have gone back in time
    /// (restored from an older backup, data lost). Worth an alert.
    pub audit_went_back: u64,
}

/// What `accord room status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomStatus {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Its format (`FORMAT` file), or 1 for a directory from before format files.
    pub format: u32,
    /// The newest format this build reads.
    pub build_format: u32,
    /// This build's version.
    pub build_version: &'static str,
    /// The wire protocol this build speaks.
    pub protocol_version: u32,
    /// The room's public key (`ed25519:…`), if it has one yet.
    pub room_public_key: Option<String>,
    /// Agreements with data, by fingerprint.
    pub agreements: Vec<AgreementStatus>,
    /// Ended agreements, by fingerprint.
    pub ended: Vec<EndedStatus>,
    /// Bytes of every file under the data directory.
    pub disk_bytes: u64,
}

/// Reads the status of the room data directory `dir` without changing anything. A directory
/// of a newer format than this build reads is refused, naming both versions.
pub fn read_status(dir: &Path) -> Result<RoomStatus> {
    if !dir.is_dir() {
        return Err(RoomError::NotFound(format!(
            "{} is not a room data directory (no such directory): give the --data-dir the room \
             runs with",
            dir.display()
        )));
    }
    let format = read_format(dir)?;
    let room_public_key = match std::fs::metadata(crate::identity::key_path(dir)) {
        Ok(_) => {
            let bytes = accord_fs::read_secret(&crate::identity::key_path(dir))?;
            let key = SecretKey::from_key_file(&bytes).map_err(|e| {
                RoomError::FailedPrecondition(format!("the room key cannot be read: {e}"))
            })?;
            Some(key.public_key().to_string())
        }
        Err(_) => None,
    };
    let mut agreements = Vec::new();
    let agreements_dir = dir.join("agreements");
    for path in sorted_entries(&agreements_dir)? {
        let manifest_path = path.join("manifest.toml");
        let Ok(text) = std::fs::read_to_string(&manifest_path) else {
            continue; // a registration that never finished; the room removes it at start
        };
        let m = accord_agreement::Manifest::parse(&text)
            .map_err(|e| RoomError::Internal(format!("{}: {e}", manifest_path.display())))?;
        let fp = m.fingerprint();
        let (audit_entries, audit_head, audit_went_back) = audit_head(dir, fp)?;
        agreements.push(AgreementStatus {
            id: m.id.clone(),
            version: m.version,
            fingerprint: fp.to_string(),
            state: if path.join("sealed.json").is_file() {
                "sealed"
            } else {
                "collecting"
            },
            valid_until: m
                .valid_until
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            audit_entries,
            audit_head,
            audit_went_back,
        });
    }
    // Format 2 keeps one file per tombstone in tombstones/; format 1 kept them all in
    // tombstones.json. A format-1 directory (not migrated yet: status changes nothing), or one
    // whose migration was interrupted, may have both: every tombstone of either counts.
    let mut tombstones = tombstones::read_all(dir)?;
    for (fp, t) in tombstones::read_format_1(dir)?.unwrap_or_default() {
        tombstones.entry(fp).or_insert(t);
    }
    let mut ended = Vec::new();
    for (fp_text, t) in tombstones {
        let (audit_entries, audit_head, audit_went_back) = match fp_text.parse::<Fingerprint>() {
            Ok(fp) => audit_head(dir, fp)?,
            Err(_) => (0, String::new(), 0),
        };
        ended.push(EndedStatus {
            id: t.agreement_id,
            fingerprint: fp_text,
            reason: t.reason.to_string(),
            at: t.at,
            audit_entries,
            audit_head,
            audit_went_back,
        });
    }
    Ok(RoomStatus {
        data_dir: dir.to_path_buf(),
        format,
        build_format: ROOM_FORMAT,
        build_version: env!("CARGO_PKG_VERSION"),
        protocol_version: accord_proto::PROTOCOL_VERSION,
        room_public_key,
        agreements,
        ended,
        disk_bytes: disk_bytes(dir)?,
    })
}

fn read_format(dir: &Path) -> Result<u32> {
    let path = dir.join(accord_fs::FORMAT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(1),
        Err(e) => return Err(RoomError::io("read", &path, e)),
    };
    let found = text.trim();
    let version = found
        .strip_prefix("accord-room-data")
        .map(str::trim)
        .and_then(|v| v.parse::<u32>().ok());
    match version {
        Some(v) if v <= ROOM_FORMAT => Ok(v),
        _ => Err(RoomError::FailedPrecondition(format!(
            "{} holds room data directory format {found:?}, but this build of Accord reads \
             format {ROOM_FORMAT} (and older): it was written by a newer Accord; use that \
             version's `accord room status`",
            dir.display()
        ))),
    }
}

/// Entries, last hash and `went_back` entries of an agreement's audit log, counting only
/// whole, chained lines.
fn audit_head(dir: &Path, fp: Fingerprint) -> Result<(u64, String, u64)> {
    let path = dir.join("audit").join(format!("{fp}.jsonl"));
    let text = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((0, hex::encode([0; 32]), 0));
        }
        Err(e) => return Err(RoomError::io("read", &path, e)),
    };
    let mut prev = [0u8; 32];
    let mut entries = 0u64;
    let mut went_back = 0u64;
    // Only lines ended by a newline count: the room syncs each whole line before replying.
    let complete = match text.iter().rposition(|&b| b == b'\n') {
        Some(last) => &text[..last],
        None => &[][..],
    };
    for line in complete.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            break;
        };
        match accord_audit::check_line(line, entries + 1, &prev) {
            Ok(hash) => {
                prev = hash;
                entries += 1;
                if accord_audit::declared_head(line).is_ok() {
                    went_back += 1;
                }
            }
            Err(_) => break,
        }
    }
    Ok((entries, hex::encode(prev), went_back))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(RoomError::io("list", dir, e)),
    };
    out.sort();
    Ok(out)
}

fn disk_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| RoomError::io("list", dir, e))? {
        let entry = entry.map_err(|e| RoomError::io("list", dir, e))?;
        let meta = entry
            .metadata()
            .map_err(|e| RoomError::io("stat", &entry.path(), e))?;
        total += if meta.is_dir() {
            disk_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
