//! The per-agreement audit log file: append-only, hash-chained JSON lines (the format and the
//! verification live in `accord-audit`), with a head the room signs. `room` is the only crate
//! that writes it; anyone holding the agreement can verify it offline with
//! [`accord_audit::verify_log`].

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use accord_agreement::{Fingerprint, SecretKey};
pub use accord_audit::{
    Actor, Decision, Event, Head, LogSummary, check_line, sign_head, verify_head, verify_log,
};
use chrono::{DateTime, Utc};
use sha2::Digest;

use crate::error::RoomError;

/// An open audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    fingerprint: Fingerprint,
    entries: u64,
    last_hash: [u8; 32],
}

/// The heads a log already declared lost (`audit/<fingerprint>.went-back.json`): a head is
/// declared once, however often it is presented again.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Declared {
    /// `(entries, hash hex, the went_back entry's line)` per declared head.
    heads: Vec<(u64, String, String)>,
}

/// The file of declared heads beside the log at `log`.
fn declared_path(log: &Path) -> PathBuf {
    log.with_extension("went-back.json")
}

fn read_declared(log: &Path) -> Result<Declared, RoomError> {
    let path = declared_path(log);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| RoomError::Internal(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Declared::default()),
        Err(e) => Err(RoomError::io("read", &path, e)),
    }
}

/// What the log made of a head presented to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// The log holds it.
    Held,
    /// The log did not hold it: it went back in time. The `went_back` entry saying so (its
    /// line as stored), appended now or when the same head was presented before.
    WentBack(String),
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, checking the chain. A torn last line left by a
    /// crash (never acknowledged, since every append is synced before replying) is dropped.
    pub fn open(path: &Path, fingerprint: Fingerprint) -> Result<Self, RoomError> {
        let mut entries = 0u64;
        let mut last_hash = [0u8; 32];
        let mut good_len = 0u64;
        if path.exists() {
            let reader =
                BufReader::new(File::open(path).map_err(|e| RoomError::io("open", path, e))?);
            for (i, line) in reader.split(b'\n').enumerate() {
                let line = line.map_err(|e| RoomError::io("read", path, e))?;
                let expected_seq = i as u64 + 1;
                let Ok(text) = std::str::from_utf8(&line) else {
                    break;
                };
                match check_line(text, expected_seq, &last_hash) {
                    Ok(hash) => {
                        entries = expected_seq;
                        last_hash = hash;
                        good_len += line.len() as u64 + 1;
                    }
                    Err(_) => break,
                }
            }
            let actual = std::fs::metadata(path)
                .map_err(|e| RoomError::io("stat", path, e))?
                .len();
            if actual != good_len {
                tracing::warn!(path = %path.display(), kept = entries, "dropping a torn or invalid tail of the audit log");
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| RoomError::io("open", path, e))?;
                f.set_len(good_len)
                    .map_err(|e| RoomError::io("truncate", path, e))?;
                f.sync_all().map_err(|e| RoomError::io("sync", path, e))?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| RoomError::io("open", path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            fingerprint,
            entries,
            last_hash,
        })
    }

    /// Whether entry `n` of this log hashes to `hash_hex` (n = 0: the empty log).
    fn holds(&self, n: u64, hash_hex: &str) -> Result<bool, RoomError> {
        if n > self.entries {
            return Ok(false);
        }
        let hash = if n == self.entries {
            self.last_hash
        } else if n == 0 {
            [0u8; 32]
        } else {
            let line = self.read_page(n - 1, 1)?;
            let Some(line) = line.first() else {
                return Ok(false);
            };
            sha2::Sha256::digest(line.as_bytes()).into()
        };
        Ok(hex::encode(hash) == hash_hex)
    }

    /// Compares a head this room signed for this log (checked by the caller), presented by
    /// `who`, with the log. A head the log does not hold (more entries, or another entry at
    /// that count) means the room went back in time: the log says so in a `went_back` entry
    /// (once per head) and continues from there.
    pub fn compare_presented(&mut self, head: &Head, who: &str) -> Result<Presented, RoomError> {
        let hash = hex::encode(head.hash);
        if self.holds(head.entries, &hash)? {
            return Ok(Presented::Held);
        }
        let mut declared = read_declared(&self.path)?;
        if let Some((_, _, line)) = declared
            .heads
            .iter()
            .find(|(n, h, _)| *n == head.entries && *h == hash)
        {
            return Ok(Presented::WentBack(line.clone()));
        }
        let log_entries = self.entries;
        self.append(
            Actor::Room,
            Event::WentBack {
                seen_entries: head.entries,
                seen_hash: hash.clone(),
                seen_signature: hex::encode(head.signature),
                log_entries,
                presented_by: who.to_owned(),
            },
            Utc::now(),
        )?;
        let line = self
            .read_page(self.entries - 1, 1)?
            .pop()
            .ok_or_else(|| RoomError::Internal("the entry just appended is missing".into()))?;
        tracing::error!(
            log = %self.path.display(),
            presented_by = who,
            seen_entries = head.entries,
            log_entries,
            "the audit log went back in time: a participant presented a head this room signed that the log does not \
             hold (restored from an older backup, or data lost); recorded as entry {} and continuing",
            self.entries
        );
        // After the entry: a crash in between declares the head once more, never not at all.
        declared.heads.push((head.entries, hash, line.clone()));
        let bytes = serde_json::to_vec_pretty(&declared)
            .map_err(|e| RoomError::Internal(format!("declared heads: {e}")))?;
        accord_fs::write_atomic(&declared_path(&self.path), &bytes)?;
        Ok(Presented::WentBack(line))
    }

    /// Appends an entry and syncs it to disk before returning.
    pub fn append(
        &mut self,
        actor: Actor,
        event: Event,
        at: DateTime<Utc>,
    ) -> Result<(), RoomError> {
        let (mut text, hash) =
            accord_audit::entry(self.entries + 1, &self.last_hash, at, actor, event)
                .map_err(|e| RoomError::Internal(format!("audit entry: {e}")))?;
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| RoomError::io("append to", &self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| RoomError::io("sync", &self.path, e))?;
        self.entries += 1;
        self.last_hash = hash;
        Ok(())
    }

    /// The current head, signed with the room's key.
    pub fn signed_head(&self, room_key: &SecretKey) -> Head {
        Head::sign(room_key, self.fingerprint, self.entries, self.last_hash)
    }

    /// Number of entries.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Entries `start..start + max` (0-based), in order, as stored, reading the file line by
    /// line so a long log never sits in memory whole.
    pub fn read_page(&self, start: u64, max: usize) -> Result<Vec<String>, RoomError> {
        let end = self.entries.min(start.saturating_add(max as u64));
        if start >= end {
            return Ok(Vec::new());
        }
        let reader = BufReader::new(
            File::open(&self.path).map_err(|e| RoomError::io("open", &self.path, e))?,
        );
        let mut out = Vec::with_capacity((end - start) as usize);
        for line in reader
            .lines()
            .skip(start as usize)
            .take((end - start) as usize)
        {
            out.push(line.map_err(|e| RoomError::io("read", &self.path, e))?);
        }
        Ok(out)
    }

    /// Every entry, in order, as stored.
    pub fn read_all(&self) -> Result<Vec<String>, RoomError> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| RoomError::io("read", &self.path, e))?;
        Ok(text
            .lines()
            .take(self.entries as usize)
            .map(str::to_owned)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::generate().unwrap()
    }

    #[test]
    fn log_verifies_and_detects_tampering_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let fp: Fingerprint = "00".repeat(32).parse().unwrap();
        let k = key();
        let mut log = AuditLog::open(&path, fp).unwrap();
        log.append(
            Actor::Submitter,
            Event::AgreementRegistered {
                agreement_id: "a".into(),
                version: 1,
            },
            Utc::now(),
        )
        .unwrap();
        log.append(
            Actor::Party("drinks".into()),
            Event::Erasure { rows: 3 },
            Utc::now(),
        )
        .unwrap();
        let query = |decision: Decision| Event::Query {
            sql: "SELECT COUNT(*) FROM overlap".into(),
            decision,
            rule: None,
            rows_returned: 1,
            groups_suppressed: 0,
            budget_spent: 0.0,
        };
        for decision in [Decision::Answered, Decision::Refused, Decision::Answered] {
            log.append(Actor::Analyst("ana".into()), query(decision), Utc::now())
                .unwrap();
        }
        log.append(Actor::Room, Event::Expired, Utc::now()).unwrap();
        let head = log.signed_head(&k);
        let entries = log.read_all().unwrap();
        let summary = verify_log(&entries, &head.to_proto(), &k.public_key()).unwrap();
        // What `accord audit verify` reports (pinned: found by mutation testing).
        assert_eq!(
            summary,
            LogSummary {
                entries: 6,
                queries_answered: 2,
                queries_refused: 1,
                last_event: Some("expired".into()),
            }
        );
        assert_eq!(log.entries(), 6);

        // Pages are exact slices of the log (found unpinned by mutation testing).
        assert_eq!(log.read_page(0, 2).unwrap(), entries[..2].to_vec());
        assert_eq!(log.read_page(1, 10).unwrap(), entries[1..].to_vec());
        assert_eq!(log.read_page(4, 1).unwrap(), entries[4..5].to_vec());
        assert_eq!(log.read_page(6, 10).unwrap(), Vec::<String>::new());
        assert_eq!(log.read_page(0, 0).unwrap(), Vec::<String>::new());

        let mut truncated = entries.clone();
        truncated.pop();
        assert!(
            verify_log(&truncated, &head.to_proto(), &k.public_key())
                .unwrap_err()
                .contains("entries")
        );

        let mut altered = entries.clone();
        altered[1] = altered[1].replace("\"rows\":3", "\"rows\":4");
        assert!(verify_log(&altered, &head.to_proto(), &k.public_key()).is_err());

        let other = key();
        assert!(
            verify_log(&entries, &head.to_proto(), &other.public_key())
                .unwrap_err()
                .contains("signature")
        );
    }

    #[test]
    fn reopening_continues_the_chain_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let fp: Fingerprint = "11".repeat(32).parse().unwrap();
        let k = key();
        {
            let mut log = AuditLog::open(&path, fp).unwrap();
            log.append(Actor::Room, Event::Expired, Utc::now()).unwrap();
        }
        // A crash in the middle of an append leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":2,\"prev\":\"ab").unwrap();
        drop(f);
        let mut log = AuditLog::open(&path, fp).unwrap();
        log.append(Actor::Room, Event::DataDeleted, Utc::now())
            .unwrap();
        let entries = log.read_all().unwrap();
        assert_eq!(entries.len(), 2);
        verify_log(&entries, &log.signed_head(&k).to_proto(), &k.public_key()).unwrap();
    }

    /// What the room makes of heads presented to it: its own heads of this log, at the end
    /// or earlier, are held; one it does not hold (more entries, another entry at a count) is
    /// declared once in a `went_back` entry naming it, also across a reopen.
    #[test]
    fn presented_heads_are_held_or_declared_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let fp: Fingerprint = "11".repeat(32).parse().unwrap();
        let k = key();
        let mut log = AuditLog::open(&path, fp).unwrap();
        let empty = log.signed_head(&k);
        let mut heads = Vec::new();
        for rows in 1..=3 {
            log.append(Actor::Room, Event::Erasure { rows }, Utc::now())
                .unwrap();
            heads.push(log.signed_head(&k));
        }
        for h in heads.iter().chain([&empty]) {
            assert_eq!(
                log.compare_presented(h, "party drinks").unwrap(),
                Presented::Held
            );
        }
        assert_eq!(log.entries(), 3, "holding a head appends nothing");
        // A head for more entries than the log holds (a restored room).
        let ahead = Head::sign(&k, fp, 5, [5; 32]);
        let Presented::WentBack(line) = log.compare_presented(&ahead, "party drinks").unwrap()
        else {
            panic!("a head ahead of the log must be declared");
        };
        assert_eq!(log.entries(), 4);
        assert_eq!(
            accord_audit::declared_head(&line).unwrap(),
            (5, hex::encode([5u8; 32]))
        );
        assert!(
            line.contains("\"log_entries\":3") && line.contains("party drinks"),
            "{line}"
        );
        assert!(line.contains(&hex::encode(ahead.signature)), "{line}");
        // Declared once: presented again (also after a reopen), the same line, no new entry.
        assert_eq!(
            log.compare_presented(&ahead, "party snacks").unwrap(),
            Presented::WentBack(line.clone())
        );
        drop(log);
        let mut log = AuditLog::open(&path, fp).unwrap();
        assert_eq!(
            log.compare_presented(&ahead, "party snacks").unwrap(),
            Presented::WentBack(line.clone())
        );
        assert_eq!(log.entries(), 4);
        // The same count with another hash is another head: declared on its own.
        let sibling = Head::sign(&k, fp, 5, [6; 32]);
        let Presented::WentBack(own) = log.compare_presented(&sibling, "party snacks").unwrap()
        else {
            panic!("another head at the same count must be declared");
        };
        assert_eq!(
            accord_audit::declared_head(&own).unwrap(),
            (5, hex::encode([6u8; 32]))
        );
        assert_eq!(log.entries(), 5);
        // Another entry at a count the log has (a rewritten log): declared too.
        let rewritten = Head::sign(&k, fp, 2, [9; 32]);
        let Presented::WentBack(second) = log.compare_presented(&rewritten, "analyst ana").unwrap()
        else {
            panic!("another entry at a held count must be declared");
        };
        assert_ne!(second, line);
        assert_eq!(log.entries(), 6);
        // The chain stays whole, and the declared heads now include the log's own new ones.
        let entries = log.read_all().unwrap();
        verify_log(&entries, &log.signed_head(&k).to_proto(), &k.public_key()).unwrap();
        assert_eq!(
            log.compare_presented(&log.signed_head(&k), "party drinks")
                .unwrap(),
            Presented::Held
        );
    }

    /// A record of declared heads that cannot be read is an error, never an empty record
    /// (which would declare the same head again and again).
    #[test]
    fn an_unreadable_record_of_declared_heads_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let fp: Fingerprint = "22".repeat(32).parse().unwrap();
        let k = key();
        let mut log = AuditLog::open(&path, fp).unwrap();
        log.append(Actor::Room, Event::Erasure { rows: 1 }, Utc::now())
            .unwrap();
        std::fs::create_dir(declared_path(&path)).unwrap();
        let ahead = Head::sign(&k, fp, 5, [5; 32]);
        assert!(log.compare_presented(&ahead, "party drinks").is_err());
        assert_eq!(log.entries(), 1, "nothing declared");
    }
}
