//! Every bound on what a caller can make the room spend, in one place, each with its reason.
//!
//! Two kinds:
//! - [`Limits`]: what an operator may tune (fields with [`Default`]s; the room's configuration
//!   file sets them). [`Limits::check`] refuses a value the room cannot honour.
//! - constants: bounds that are part of the protocol or of the room's safety, not tunable.
//!   Wire sizes shared with clients live in [`accord_proto::limits`]; the ones here are the
//!   room's own.
//!
//! Each bound is exceeded by a test: unit tests in `auth.rs` and here, and the load test
//! `tests/load.rs` (floods of challenges, streams and oversized messages while a legitimate
//! party and analyst still get answers).

use std::time::Duration;

use crate::error::RoomError;

/// Largest decoded request of the `Auth` service. A challenge or an authentication is under
/// 300 bytes; anything near this is an attack on the decoder, not a login.
pub const AUTH_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest decoded request of the `Agreements` service: a manifest or revocation
/// ([`accord_proto::limits::MAX_MANIFEST_BYTES`]) with room for the protobuf framing.
pub const AGREEMENTS_MESSAGE_BYTES: usize = 1024 * 1024;
/// Largest decoded request of the `Psi` service: one full upload batch with wide attributes.
pub const PSI_MESSAGE_BYTES: usize = accord_proto::limits::MAX_MESSAGE_BYTES;
/// Largest decoded request of the `Query` service: SQL is capped at
/// [`accord_proto::limits::MAX_SQL_BYTES`]; this leaves room for the framing only.
pub const QUERY_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest decoded request of the `Audit` service (a fingerprint and paging fields).
pub const AUDIT_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest decoded request of the Flight SQL service: a statement or a metadata call wrapped
/// in Flight's `Any` envelopes (SQL itself is capped at [`accord_proto::limits::MAX_SQL_BYTES`]).
pub const FLIGHT_SQL_MESSAGE_BYTES: usize = 1024 * 1024;

/// Most bytes of SQL text one audit entry stores. The query path refuses longer SQL
/// (`too_long`) but still audits the attempt; storing it whole would let one analyst grow the
/// log by a whole message per call. Longer text is stored as its prefix, its length and its
/// SHA-256, so the entry still identifies the query exactly.
pub const MAX_AUDIT_SQL_BYTES: usize = 4 * 1024;

/// Most bytes of a partner's refusal detail the room stores and relays (after escaping).
pub const MAX_REFUSAL_DETAIL_BYTES: usize = 300;

/// Most used challenge nonces remembered at once, over all principals: a second bound behind
/// the per-principal one ([`Limits::max_logins_per_principal`]). Only a caller that proved a
/// key can add one, so strangers cannot fill it.
pub const MAX_USED_NONCES: usize = 100_000;

// Not a constant here, because the parties agreed on it: the room's memory for the
// cross-batch duplicate check (one 16-byte tag per point a party uploaded, until its upload
// is complete) is bounded by that party's `max_rows` in the signed manifest, which the upload
// cap enforces before any tag is added. See `AgreementStore::point_tags` in `store.rs`.

/// Most bytes of decoded owner points the room keeps between an upload and the partner's
/// blinding of it (`decoded.rs`), so that verifying the blinding proof does not decode the
/// inputs again. 64 MiB holds 100 batches of 4 096 points (160 bytes each decoded): enough
/// for both parties uploading and blinding at once; beyond it the oldest batches are decoded
/// again from disk when their blinding arrives, which costs time, never correctness. Parties
/// cannot grow it: it is the same few MiB whatever they upload.
pub const DECODED_INPUTS_BYTES: usize = 64 * 1024 * 1024;

/// Most batches one `FetchWork` call returns when the caller asks for more (or for 0, which
/// means "the default", [`Limits::fetch_work_batches`]). Batches are read from disk one at a
/// time as the stream is consumed, so this bounds the call's duration, not its memory.
pub const MAX_FETCH_WORK_BATCHES: u32 = 1024;

/// Most batch numbers one `Lease` call grants (a worker asks for a few at a time, so a lost
/// worker strands few batches until its lease runs out).
pub const MAX_LEASE_BATCHES: u32 = 64;

/// Most batch numbers leased and not yet stored, per party of an agreement. Leases live in
/// the room's memory (about 40 bytes each); a party's workers, whatever they ask for, cannot
/// make the table hold more. 1 024 batches of 4 096 rows keep hundreds of workers busy.
pub const MAX_OUTSTANDING_LEASES: usize = 1024;

/// Operator memory of the sealing join (`join.rs`): DataFusion's sorts and merge join share
/// this pool and spill to disk beyond it, so sealing 10 million customers per party takes
/// this much besides one batch per reader and writer, not the parties' rows. 256 MiB keeps
/// the sorts of a million-row party in memory (no spill at the sizes most agreements have).
pub const SEAL_MEMORY_BYTES: usize = 256 * 1024 * 1024;

/// The limits an operator may tune. [`Default`] is what `accord room serve` uses when the
/// configuration says nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long a challenge may be answered. Long enough for a slow client on a slow link;
    /// short, because the room keeps nothing for it and a used nonce is remembered this long.
    pub challenge_ttl: Duration,
    /// How long a session lasts. Clients re-authenticate when it ends.
    pub session_ttl: Duration,
    /// Most live sessions per principal of an agreement version. A new login beyond it ends
    /// that principal's oldest session, so one principal (even one with a key) cannot grow
    /// the session table, and a login never fails for lack of room.
    pub max_sessions_per_principal: usize,
    /// Most successful logins per principal within one `challenge_ttl` (each leaves a used
    /// nonce behind to stop replays). A principal over it is told to wait; no one else is.
    pub max_logins_per_principal: usize,
    /// Most concurrent HTTP/2 streams (calls) one connection may have open. A client opening
    /// more waits at the HTTP/2 layer; it cannot hold more of the room's tasks.
    pub max_concurrent_streams: u32,
    /// Most requests one connection may have in service at once (the rest queue on that
    /// connection only, never on others).
    pub concurrency_per_connection: usize,
    /// Longest time any call may take, from request to response (for a client-streaming call
    /// such as `Upload`, until the room has consumed the whole stream). A peer that keeps a
    /// call open forever cannot hold the room's task. Long enough for a large upload on a
    /// slow link; an upload cut by it resumes where the room stands.
    pub request_timeout: Duration,
    /// A connection that carries no traffic is pinged this often, and dropped when a ping is
    /// not answered within the same time: a peer that went silent cannot keep its
    /// connection (and its streams) open.
    pub stream_idle_timeout: Duration,
    /// Batches one `FetchWork` call returns when the caller asks for 0 (the default).
    pub fetch_work_batches: u32,
    /// How long a batch-number lease (`Lease`, a party's upload split across workers) holds
    /// before the batch is granted to another worker: a lost worker's batches are taken over
    /// after this long. Long enough to blind and upload a lease's batches on a slow core.
    pub lease_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            challenge_ttl: Duration::from_secs(120),
            session_ttl: Duration::from_secs(3600),
            max_sessions_per_principal: 16,
            max_logins_per_principal: 64,
            max_concurrent_streams: 32,
            concurrency_per_connection: 32,
            request_timeout: Duration::from_secs(1800),
            stream_idle_timeout: Duration::from_secs(60),
            fetch_work_batches: 64,
            lease_ttl: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// Refuses values the room cannot honour (zero where zero would lock everyone out, or
    /// above a hard bound), naming the setting and the allowed range.
    pub fn check(&self) -> Result<(), RoomError> {
        let bad = |name: &str, range: &str, got: String| {
            Err(RoomError::InvalidArgument(format!(
                "limits.{name} = {got} is out of range: it must be {range}"
            )))
        };
        let secs = |d: Duration| format!("{}s", d.as_secs_f64());
        if self.challenge_ttl < Duration::from_secs(1)
            || self.challenge_ttl > Duration::from_secs(3600)
        {
            return bad(
                "challenge_ttl",
                "between 1 s and 1 h",
                secs(self.challenge_ttl),
            );
        }
        if self.session_ttl < Duration::from_secs(1)
            || self.session_ttl > Duration::from_secs(7 * 24 * 3600)
        {
            return bad(
                "session_ttl",
                "between 1 s and 7 days",
                secs(self.session_ttl),
            );
        }
        if !(1..=1024).contains(&self.max_sessions_per_principal) {
            return bad(
                "max_sessions_per_principal",
                "1 to 1024",
                self.max_sessions_per_principal.to_string(),
            );
        }
        if !(1..=10_000).contains(&self.max_logins_per_principal) {
            return bad(
                "max_logins_per_principal",
                "1 to 10000",
                self.max_logins_per_principal.to_string(),
            );
        }
        if !(1..=1024).contains(&self.max_concurrent_streams) {
            return bad(
                "max_concurrent_streams",
                "1 to 1024",
                self.max_concurrent_streams.to_string(),
            );
        }
        if !(1..=1024).contains(&self.concurrency_per_connection) {
            return bad(
                "concurrency_per_connection",
                "1 to 1024",
                self.concurrency_per_connection.to_string(),
            );
        }
        if self.request_timeout < Duration::from_secs(1)
            || self.request_timeout > Duration::from_secs(24 * 3600)
        {
            return bad(
                "request_timeout",
                "between 1 s and 24 h",
                secs(self.request_timeout),
            );
        }
        if self.stream_idle_timeout < Duration::from_secs(1)
            || self.stream_idle_timeout > Duration::from_secs(3600)
        {
            return bad(
                "stream_idle_timeout",
                "between 1 s and 1 h",
                secs(self.stream_idle_timeout),
            );
        }
        if !(1..=MAX_FETCH_WORK_BATCHES).contains(&self.fetch_work_batches) {
            return bad(
                "fetch_work_batches",
                "1 to 1024",
                self.fetch_work_batches.to_string(),
            );
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl > Duration::from_secs(3600) {
            return bad("lease_ttl", "between 1 s and 1 h", secs(self.lease_ttl));
        }
        Ok(())
    }
}

/// The SQL text an audit entry stores: the text itself up to [`MAX_AUDIT_SQL_BYTES`], else
/// its prefix (cut on a character boundary), its length and its SHA-256.
pub fn audit_sql(sql: &str) -> String {
    if sql.len() <= MAX_AUDIT_SQL_BYTES {
        return sql.to_owned();
    }
    let mut cut = MAX_AUDIT_SQL_BYTES;
    while !sql.is_char_boundary(cut) {
        cut -= 1;
    }
    use sha2::Digest as _;
    format!(
        "{}… [truncated by the room: {} bytes in all, sha256 {}]",
        &sql[..cut],
        sql.len(),
        hex::encode(sha2::Sha256::digest(sql.as_bytes()))
    )
}

/// The refusal reason the room stores and relays for a partner's `WorkRefusal`: one of the
/// closed set of [`WorkRefusalCode`]s, with its detail escaped and cut to
/// [`MAX_REFUSAL_DETAIL_BYTES`]. Any other code is refused.
///
/// [`WorkRefusalCode`]: accord_proto::refusal::WorkRefusalCode
pub fn refusal_reason(reason: &str) -> Result<String, RoomError> {
    use accord_proto::refusal::WorkRefusalCode;
    let (code, detail) = WorkRefusalCode::parse(reason).ok_or_else(|| {
        RoomError::InvalidArgument(format!(
            "a work refusal must start with one of the codes {} followed by ':'; this one does not",
            WorkRefusalCode::ALL.map(WorkRefusalCode::as_str).join(", ")
        ))
    })?;
    let mut detail = accord_agreement::text::escape(detail, MAX_REFUSAL_DETAIL_BYTES);
    while detail.len() > MAX_REFUSAL_DETAIL_BYTES {
        detail.pop();
    }
    Ok(code.reason(&detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_reasons_are_a_closed_set_with_bounded_escaped_detail() {
        assert!(refusal_reason("you have been hacked, call +1 555").is_err());
        let r = refusal_reason(&format!(
            "bad-signature: batch 3 \u{1b}[2J\u{202e}{}",
            "x".repeat(5000)
        ))
        .unwrap();
        assert!(
            r.starts_with("bad-signature: batch 3 \\u{1b}[2J\\u{202e}"),
            "{r}"
        );
        assert!(
            r.len() <= "bad-signature: ".len() + MAX_REFUSAL_DETAIL_BYTES,
            "{}",
            r.len()
        );
        assert!(accord_agreement::text::first_forbidden(&r).is_none());
    }

    /// The wire cap on SQL and the engine's own cap are one bound: the room refuses at the
    /// former before the engine ever sees the text (issue 10, one vocabulary).
    #[test]
    fn the_wire_and_the_engine_agree_on_the_longest_sql() {
        assert_eq!(
            accord_proto::limits::MAX_SQL_BYTES,
            accord_engine::MAX_SQL_LEN
        );
    }

    #[test]
    fn defaults_pass_their_own_check_and_zero_is_refused() {
        Limits::default().check().unwrap();
        let l = Limits {
            max_sessions_per_principal: 0,
            ..Limits::default()
        };
        let e = l.check().unwrap_err().to_string();
        assert!(e.contains("limits.max_sessions_per_principal = 0"), "{e}");
        let l = Limits {
            fetch_work_batches: MAX_FETCH_WORK_BATCHES + 1,
            ..Limits::default()
        };
        assert!(l.check().is_err());
    }

    #[test]
    fn audit_sql_is_bounded_and_identifies_the_query() {
        let short = "SELECT COUNT(*) FROM overlap";
        assert_eq!(audit_sql(short), short);
        let long = format!("SELECT {} FROM overlap", "é".repeat(10_000));
        let stored = audit_sql(&long);
        assert!(stored.len() < MAX_AUDIT_SQL_BYTES + 200, "{}", stored.len());
        assert!(stored.contains(&format!("{} bytes in all", long.len())));
        let other = format!("SELECT {}x FROM overlap", "é".repeat(10_000));
        assert_ne!(
            audit_sql(&other),
            stored,
            "the hash tells two long queries apart"
        );
    }
}
