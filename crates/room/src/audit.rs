//! The per-agreement audit log: append-only, hash-chained JSON lines, with a head the room
//! signs. `room` is the only crate that writes it; anyone holding the agreement can verify it
//! offline with [`verify_log`].
//!
//! Entry `i` (1-based) is one line of JSON with at least `seq` (= i) and `prev` (hex SHA-256
//! of line i−1, 64 zeros for the first). The head after n entries is `(n, SHA-256(line n))`,
//! signed with purpose `audit-head` over `fingerprint ‖ u64be(n) ‖ hash`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use accord_agreement::{Fingerprint, PublicKey, SecretKey, Signature, sig::Purpose};
use accord_proto::v1::SignedHead;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::RoomError;

/// Who caused an audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// A party of the agreement.
    Party(String),
    /// An analyst named in the agreement.
    Analyst(String),
    /// The room itself (expiry, sealing).
    Room,
    /// Anyone holding the signed manifest (registration).
    Submitter,
}

/// What became of a query. Written as `"answered"` or `"refused"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The analyst got an answer.
    Answered,
    /// The query was refused (by the policy, the budget, or before the policy saw it).
    Refused,
}

/// What happened. Field names are part of the log format documented in docs/PROTOCOL.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The agreement was registered.
    AgreementRegistered {
        /// Agreement id.
        agreement_id: String,
        /// Agreement version.
        version: u64,
    },
    /// A party finished its upload (signed completion statement stored).
    UploadComplete {
        /// Batches uploaded.
        batches: u64,
        /// Rows uploaded.
        rows: u64,
    },
    /// A party refused to blind one of its partner's batches.
    BatchRefused {
        /// The party whose batch was refused.
        owner: String,
        /// The batch.
        batch_number: u64,
        /// The refusing party's reason.
        reason: String,
    },
    /// A party committed to its PSI key (`K = k·B`, hex) for this agreement.
    KeyCommitted {
        /// The commitment, hex.
        commitment: String,
    },
    /// A party returned a blinded batch whose proof did not verify; the batch was refused and
    /// stays waiting.
    BlindingProofFailed {
        /// The party whose batch it is.
        owner: String,
        /// The batch.
        batch_number: u64,
        /// Why it was refused.
        reason: String,
    },
    /// Both parties' tokens were complete and the snapshot was sealed.
    Sealed {
        /// Dimension columns withheld because they identify rather than categorize.
        withheld_columns: Vec<String>,
        /// Duplicate tokens dropped (a party uploaded the same customer twice).
        duplicate_tokens_dropped: u64,
    },
    /// A query was answered or refused.
    Query {
        /// The SQL text as received.
        sql: String,
        /// Answered or refused.
        decision: Decision,
        /// The policy rule for a refusal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        /// Rows returned to the analyst.
        rows_returned: u64,
        /// Groups dropped for having fewer than k customers (never told to the analyst).
        groups_suppressed: u64,
        /// Differential-privacy budget spent (0 with exact results).
        budget_spent: f64,
    },
    /// Differential privacy budget was spent for a query (recorded durably in the ledger
    /// before the query ran; the query's own entry follows).
    BudgetSpent {
        /// The party whose budget was spent (the analyst's party).
        party: String,
        /// ε of this query.
        epsilon: f64,
        /// δ of this query.
        delta: f64,
        /// ε spent by this party under the agreement lineage, this query included.
        epsilon_spent_total: f64,
        /// ε left.
        epsilon_remaining: f64,
    },
    /// Rows were erased at a party's request (the count only, never the handles).
    Erasure {
        /// Rows erased.
        rows: u64,
    },
    /// The agreement was revoked by a party.
    Revoked {
        /// The revocation statement's reason.
        reason: String,
    },
    /// The agreement reached `valid_until`.
    Expired,
    /// A newer version of the agreement replaced this one.
    Superseded {
        /// The new version's fingerprint.
        by: String,
    },
    /// The agreement's data was deleted from the room's disk.
    DataDeleted,
}

/// One line of the log as written.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    seq: u64,
    prev: String,
    at: String,
    actor: Actor,
    #[serde(flatten)]
    event: Event,
}

/// An open audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    fingerprint: Fingerprint,
    entries: u64,
    last_hash: [u8; 32],
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

    /// Appends an entry and syncs it to disk before returning.
    pub fn append(
        &mut self,
        actor: Actor,
        event: Event,
        at: DateTime<Utc>,
    ) -> Result<(), RoomError> {
        let line = Line {
            seq: self.entries + 1,
            prev: hex::encode(self.last_hash),
            at: at.to_rfc3339_opts(SecondsFormat::Millis, true),
            actor,
            event,
        };
        let mut text = serde_json::to_string(&line)
            .map_err(|e| RoomError::Internal(format!("audit entry: {e}")))?;
        let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
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
    pub fn signed_head(&self, room_key: &SecretKey) -> SignedHead {
        sign_head(room_key, self.fingerprint, self.entries, self.last_hash)
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

/// Signs a head.
pub fn sign_head(
    room_key: &SecretKey,
    fingerprint: Fingerprint,
    entries: u64,
    hash: [u8; 32],
) -> SignedHead {
    let message = accord_proto::signed::audit_head(fingerprint.as_bytes(), entries, &hash);
    SignedHead {
        fingerprint: fingerprint.to_string(),
        entries,
        hash: hash.to_vec(),
        signature: room_key
            .sign(Purpose::AuditHead, &message)
            .to_bytes()
            .to_vec(),
    }
}

/// Checks a head's signature against the room's public key.
pub fn verify_head(room_key: &PublicKey, head: &SignedHead) -> Result<Fingerprint, String> {
    let fingerprint: Fingerprint = head.fingerprint.parse().map_err(|_| {
        format!(
            "the head names an invalid fingerprint {:?}",
            head.fingerprint
        )
    })?;
    let hash: [u8; 32] = head
        .hash
        .as_slice()
        .try_into()
        .map_err(|_| "the head hash is not 32 bytes".to_owned())?;
    let sig: [u8; 64] = head
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| "the head signature is not 64 bytes".to_owned())?;
    let message = accord_proto::signed::audit_head(fingerprint.as_bytes(), head.entries, &hash);
    room_key
        .verify(Purpose::AuditHead, &message, &Signature::from_bytes(&sig))
        .map_err(|_| "the room's signature on the audit head does not verify".to_owned())?;
    Ok(fingerprint)
}

fn check_line(text: &str, expected_seq: u64, prev: &[u8; 32]) -> Result<[u8; 32], String> {
    let line: Line = serde_json::from_str(text)
        .map_err(|e| format!("entry {expected_seq} is not valid JSON: {e}"))?;
    if line.seq != expected_seq {
        return Err(format!(
            "entry {expected_seq} says it is entry {}",
            line.seq
        ));
    }
    if line.prev != hex::encode(prev) {
        return Err(format!(
            "entry {expected_seq} does not chain to entry {}: the log was altered or reordered",
            expected_seq - 1
        ));
    }
    Ok(Sha256::digest(text.as_bytes()).into())
}

/// What an offline verification of a log found.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSummary {
    /// Entries checked.
    pub entries: u64,
    /// Queries answered.
    pub queries_answered: u64,
    /// Queries refused.
    pub queries_refused: u64,
    /// The last event, for a one-line status.
    pub last_event: Option<String>,
}

/// Verifies a fetched log against its signed head: every entry chains to the previous one,
/// the count and last hash match the head, and the room's signature on the head verifies.
pub fn verify_log(
    entries: &[String],
    head: &SignedHead,
    room_key: &PublicKey,
) -> Result<LogSummary, String> {
    verify_head(room_key, head)?;
    let mut prev = [0u8; 32];
    let mut summary = LogSummary {
        entries: 0,
        queries_answered: 0,
        queries_refused: 0,
        last_event: None,
    };
    for (i, text) in entries.iter().enumerate() {
        prev = check_line(text, i as u64 + 1, &prev)?;
        let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Event::Query { decision, .. } = &line.event {
            match decision {
                Decision::Answered => summary.queries_answered += 1,
                Decision::Refused => summary.queries_refused += 1,
            }
        }
        summary.last_event = Some(event_name(&line.event).to_owned());
        summary.entries += 1;
    }
    if summary.entries != head.entries {
        return Err(format!(
            "the log has {} entries but the signed head says {}: entries were removed or added",
            summary.entries, head.entries
        ));
    }
    if head.hash.as_slice() != prev {
        return Err(
            "the last entry does not match the signed head: the log was altered".to_owned(),
        );
    }
    Ok(summary)
}

fn event_name(event: &Event) -> &'static str {
    match event {
        Event::AgreementRegistered { .. } => "agreement_registered",
        Event::UploadComplete { .. } => "upload_complete",
        Event::BatchRefused { .. } => "batch_refused",
        Event::KeyCommitted { .. } => "key_committed",
        Event::BlindingProofFailed { .. } => "blinding_proof_failed",
        Event::Sealed { .. } => "sealed",
        Event::Query { .. } => "query",
        Event::BudgetSpent { .. } => "budget_spent",
        Event::Erasure { .. } => "erasure",
        Event::Revoked { .. } => "revoked",
        Event::Expired => "expired",
        Event::Superseded { .. } => "superseded",
        Event::DataDeleted => "data_deleted",
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
        let summary = verify_log(&entries, &head, &k.public_key()).unwrap();
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
            verify_log(&truncated, &head, &k.public_key())
                .unwrap_err()
                .contains("entries")
        );

        let mut altered = entries.clone();
        altered[1] = altered[1].replace("\"rows\":3", "\"rows\":4");
        assert!(verify_log(&altered, &head, &k.public_key()).is_err());

        let other = key();
        assert!(
            verify_log(&entries, &head, &other.public_key())
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
        verify_log(&entries, &log.signed_head(&k), &k.public_key()).unwrap();
    }
}
