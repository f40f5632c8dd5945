//! The audit chain every Accord component agrees on: what is recorded ([`Event`], [`Actor`]),
//! the hash-chained entry format, and the room's signed head. The room writes entries with
//! [`entry`] (its `audit.rs` adds the file and its fsync); every client verifies a fetched log
//! with [`verify_log`] and a head with [`verify_head`]. Pure: no I/O.
//!
//! Entry `i` (1-based) is one line of JSON with at least `seq` (= i) and `prev` (hex SHA-256
//! of line i−1, 64 zeros for the first). The head after n entries is `(n, SHA-256(line n))`,
//! signed with purpose `audit-head` over `fingerprint ‖ u64be(n) ‖ hash`
//! (`accord_proto::signed::audit_head`, `docs/PROTOCOL.md`).
#![forbid(unsafe_code)]

use accord_agreement::{Fingerprint, PublicKey, SecretKey, Signature, sig::Purpose};
use accord_proto::v1::SignedHead;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    /// The log had gone back in time: a participant presented a head this room signed that
    /// the log did not hold (the room was restored from an older backup, or lost data). The
    /// entries that head vouched for after `log_entries` are lost; the log continues from
    /// here, saying so, instead of forking silently.
    WentBack {
        /// Entries of the presented head.
        seen_entries: u64,
        /// Its hash, hex.
        seen_hash: String,
        /// The room's signature on it, hex (anyone can check it with the room's key).
        seen_signature: String,
        /// Entries the log held when the head was presented.
        log_entries: u64,
        /// Who presented it (`party drinks`, `analyst ana@…`).
        presented_by: String,
    },
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

/// Entry number `seq` of a log whose previous entry hashed to `prev` (zeros for the first):
/// its line (without the newline) and the hash the next entry chains to.
pub fn entry(
    seq: u64,
    prev: &[u8; 32],
    at: DateTime<Utc>,
    actor: Actor,
    event: Event,
) -> Result<(String, [u8; 32]), serde_json::Error> {
    let line = Line {
        seq,
        prev: hex::encode(prev),
        at: at.to_rfc3339_opts(SecondsFormat::Millis, true),
        actor,
        event,
    };
    let text = serde_json::to_string(&line)?;
    let hash = Sha256::digest(text.as_bytes()).into();
    Ok((text, hash))
}

/// The room's signed audit head as the room's core keeps it; [`Head::to_proto`] is the
/// wire form (`SignedHead`) the adapters send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The agreement version whose log this is.
    pub fingerprint: Fingerprint,
    /// Entries the head vouches for.
    pub entries: u64,
    /// SHA-256 of the last entry's line (zeros for an empty log).
    pub hash: [u8; 32],
    /// The room's signature (purpose `audit-head`).
    pub signature: [u8; 64],
}

impl Head {
    /// Signs the head after `entries` entries whose last hashed to `hash`.
    pub fn sign(
        room_key: &SecretKey,
        fingerprint: Fingerprint,
        entries: u64,
        hash: [u8; 32],
    ) -> Self {
        let message = accord_proto::signed::audit_head(fingerprint.as_bytes(), entries, &hash);
        Self {
            fingerprint,
            entries,
            hash,
            signature: room_key.sign(Purpose::AuditHead, &message).to_bytes(),
        }
    }

    /// The wire form.
    pub fn to_proto(&self) -> SignedHead {
        SignedHead {
            fingerprint: self.fingerprint.to_string(),
            entries: self.entries,
            hash: self.hash.to_vec(),
            signature: self.signature.to_vec(),
        }
    }
}

/// Signs a head, in its wire form.
pub fn sign_head(
    room_key: &SecretKey,
    fingerprint: Fingerprint,
    entries: u64,
    hash: [u8; 32],
) -> SignedHead {
    Head::sign(room_key, fingerprint, entries, hash).to_proto()
}

/// Checks a head's signature against the room's public key.
pub fn verify_head(room_key: &PublicKey, head: &SignedHead) -> Result<Fingerprint, String> {
    Head::check(
        room_key,
        &head.fingerprint,
        head.entries,
        &head.hash,
        &head.signature,
    )
    .map(|h| h.fingerprint)
}

impl Head {
    /// A head given as its parts (as a client presents it), checked against the room's
    /// public key: well-formed, and signed by that key for that fingerprint and count.
    pub fn check(
        room_key: &PublicKey,
        fingerprint: &str,
        entries: u64,
        hash: &[u8],
        signature: &[u8],
    ) -> Result<Head, String> {
        let fingerprint: Fingerprint = fingerprint
            .parse()
            .map_err(|_| format!("the head names an invalid fingerprint {fingerprint:?}"))?;
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| "the audit head hash is not 32 bytes".to_owned())?;
        let signature: [u8; 64] = signature
            .try_into()
            .map_err(|_| "the audit head signature is not 64 bytes".to_owned())?;
        let message = accord_proto::signed::audit_head(fingerprint.as_bytes(), entries, &hash);
        room_key
            .verify(
                Purpose::AuditHead,
                &message,
                &Signature::from_bytes(&signature),
            )
            .map_err(|_| "the room's signature on its audit head does not verify".to_owned())?;
        Ok(Head {
            fingerprint,
            entries,
            hash,
            signature,
        })
    }
}

/// Checks that `text` is entry `expected_seq` chaining to `prev`; returns its hash.
pub fn check_line(text: &str, expected_seq: u64, prev: &[u8; 32]) -> Result<[u8; 32], String> {
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
        Event::WentBack { .. } => "went_back",
    }
}

/// The head a `went_back` entry declares lost: `(seen_entries, seen_hash hex)`; an error for
/// any other line.
pub fn declared_head(text: &str) -> Result<(u64, String), String> {
    match read_entry(text)? {
        (
            _,
            Event::WentBack {
                seen_entries,
                seen_hash,
                ..
            },
        ) => Ok((seen_entries, seen_hash)),
        (_, other) => Err(format!("a {} entry, not went_back", event_name(&other))),
    }
}

/// The sequence number and event of one entry's line (its chaining is not checked here).
pub fn read_entry(text: &str) -> Result<(u64, Event), String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("not an audit entry: {e}"))?;
    Ok((line.seq, line.event))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chain(n: u64) -> (Vec<String>, [u8; 32]) {
        let mut prev = [0u8; 32];
        let mut lines = Vec::new();
        for seq in 1..=n {
            let (text, hash) = entry(
                seq,
                &prev,
                DateTime::from_timestamp(1_800_000_000 + seq as i64, 0).unwrap(),
                Actor::Party("drinks".into()),
                Event::Erasure { rows: seq },
            )
            .unwrap();
            lines.push(text);
            prev = hash;
        }
        (lines, prev)
    }

    #[test]
    fn entries_chain_and_the_signed_head_covers_them() {
        let room = SecretKey::generate().unwrap();
        let fp = Fingerprint::from_bytes([3; 32]);
        let (lines, last) = chain(3);
        assert!(lines[0].contains(&format!("\"prev\":\"{}\"", "0".repeat(64))));
        assert!(lines[0].contains("\"at\":\"2027-01-15T08:00:01.000Z\""));
        let head = sign_head(&room, fp, 3, last);
        assert_eq!(verify_head(&room.public_key(), &head), Ok(fp));
        let summary = verify_log(&lines, &head, &room.public_key()).unwrap();
        assert_eq!(summary.entries, 3);
        assert_eq!(summary.last_event.as_deref(), Some("erasure"));
        // Reordered, altered, cut short or signed by another key: refused, each by name.
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        assert!(
            verify_log(&swapped, &head, &room.public_key())
                .unwrap_err()
                .contains("entry 2")
        );
        let mut altered = lines.clone();
        altered[2] = altered[2].replace("\"rows\":3", "\"rows\":30");
        assert!(
            verify_log(&altered, &head, &room.public_key())
                .unwrap_err()
                .contains("altered")
        );
        assert!(
            verify_log(&lines[..2], &head, &room.public_key())
                .unwrap_err()
                .contains("entries were removed")
        );
        let other = SecretKey::generate().unwrap();
        assert!(
            verify_log(&lines, &head, &other.public_key())
                .unwrap_err()
                .contains("signature")
        );
        let mut short = head.clone();
        short.hash.pop();
        assert_eq!(
            verify_head(&room.public_key(), &short),
            Err("the audit head hash is not 32 bytes".to_owned())
        );
    }
}
