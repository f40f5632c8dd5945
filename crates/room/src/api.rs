//! What the room's core takes and gives, in plain Rust: no protocol or transport types. The
//! gRPC adapter converts these to and from the protocol's messages (`wire.rs`); the fields
//! mean what the same-named fields of `proto/accord/v1/accord.proto` mean, and the bytes the
//! protocol signs are computed from the wire form by the adapter before the core sees them.

use accord_audit::Head;

/// Who a caller says it is, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A party, by name.
    Party(String),
    /// An analyst, by name.
    Analyst(String),
    /// An auditor, by name.
    Auditor(String),
    /// An analyst known only by its key (the agreement gives the name).
    AnalystKey(Vec<u8>),
}

/// A request for a challenge, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeRequest {
    /// Agreement id or fingerprint.
    pub agreement: String,
    /// Who the caller says it is (`None`: not said).
    pub principal: Option<Principal>,
    /// The caller's 32-byte nonce.
    pub client_nonce: Vec<u8>,
    /// The key the caller will prove.
    pub public_key: Vec<u8>,
}

/// The room's challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The room's nonce.
    pub room_nonce: [u8; 32],
    /// The room's public key.
    pub room_public_key: [u8; 32],
    /// The protocol version the room speaks.
    pub protocol_version: u32,
    /// The room key's signature over its TLS certificate (empty without TLS).
    pub tls_binding_signature: Vec<u8>,
}

/// A signed answer to a challenge, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticateRequest {
    /// Agreement id or fingerprint.
    pub agreement: String,
    /// Who the caller says it is.
    pub principal: Option<Principal>,
    /// The room's nonce from the challenge.
    pub room_nonce: Vec<u8>,
    /// The caller's nonce.
    pub client_nonce: Vec<u8>,
    /// The caller's signature.
    pub signature: Vec<u8>,
    /// The key the caller proves.
    pub public_key: Vec<u8>,
}

/// A session the room started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The bearer token.
    pub session_token: String,
    /// When the session ends (ms since 1970).
    pub expires_unix_ms: i64,
    /// The agreement's audit head.
    pub head: Head,
    /// The agreement version's fingerprint.
    pub fingerprint: String,
    /// The principal's name as the agreement spells it.
    pub principal_name: String,
    /// The agreement's id.
    pub agreement_id: String,
    /// The signed manifest.
    pub manifest_toml: String,
}

/// What the room did with a submitted agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// Agreement id.
    pub agreement_id: String,
    /// Version.
    pub version: u64,
    /// Fingerprint.
    pub fingerprint: String,
    /// True when this exact agreement was already registered.
    pub already_registered: bool,
    /// The fingerprint of a version it superseded ("" if none).
    pub superseded: String,
    /// The agreement's audit head after the submission.
    pub head: Head,
}

/// The room's receipt for a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Agreement id.
    pub agreement_id: String,
    /// Fingerprint.
    pub fingerprint: String,
    /// When the room acknowledged it (ms since 1970).
    pub revoked_unix_ms: i64,
    /// The room's signature (purpose `revocation-receipt`).
    pub receipt_signature: [u8; 64],
    /// The audit head after the revocation.
    pub head: Head,
}

/// One attribute column of an upload batch, as sent.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValues {
    /// Text values and their presence flags (empty: all present).
    Text(Vec<String>, Vec<bool>),
    /// Number values and their presence flags (empty: all present).
    Number(Vec<f64>, Vec<bool>),
}

/// An attribute column of an upload batch.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadColumn {
    /// Column name.
    pub name: String,
    /// Its values (`None`: the message carried none).
    pub values: Option<ColumnValues>,
}

/// One upload batch, with the digests the adapter computed from its wire form.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadBatch {
    /// The batch number.
    pub batch_number: u64,
    /// Concatenated 32-byte points.
    pub points: Vec<u8>,
    /// Concatenated 16-byte handles.
    pub handles: Vec<u8>,
    /// Attribute columns.
    pub columns: Vec<UploadColumn>,
    /// The party's salt for the rows digest.
    pub salt: Vec<u8>,
    /// The party's signature (purpose `upload-batch`).
    pub signature: Vec<u8>,
    /// The wire encoding of the batch's columns (part of the stored batch digest).
    pub encoded_columns: Vec<u8>,
    /// `accord_proto::rows_digest` over the salt, the handles and the columns as sent.
    pub rows_digest: [u8; 32],
}

/// A party's signed completion statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadComplete {
    /// Batches uploaded.
    pub batches: u64,
    /// Rows uploaded.
    pub rows: u64,
    /// The party's signature (purpose `upload-complete`).
    pub signature: Vec<u8>,
}

/// One of the partner's batches for a party to blind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkBatch {
    /// The partner's name.
    pub from_party: String,
    /// The partner's batch number.
    pub batch_number: u64,
    /// Concatenated points.
    pub points: Vec<u8>,
    /// The partner's signature over the batch.
    pub signature: Vec<u8>,
    /// The rows digest the partner's signature covers.
    pub rows_digest: Vec<u8>,
}

/// A party's blinding of one of its partner's batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlindedBatch {
    /// The partner's batch number.
    pub batch_number: u64,
    /// The blinded points.
    pub points: Vec<u8>,
    /// The blinding proof.
    pub proof: Vec<u8>,
}

/// A party's signed commitment to its PSI key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCommitment {
    /// `K = k·B`.
    pub commitment: Vec<u8>,
    /// The party's signature (purpose `psi-key-commitment`).
    pub signature: Vec<u8>,
}

/// A party's refusal to blind one of its partner's batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkRefusal {
    /// The partner's batch number.
    pub batch_number: u64,
    /// Why (a reason code and the refusing party's explanation, as sent).
    pub reason: String,
}

/// Where an agreement's PSI stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgreementState {
    /// Uploads and blinding are under way.
    Collecting,
    /// Sealed: queryable.
    Sealed,
}

/// A party's view of its agreement's PSI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Agreement id.
    pub agreement_id: String,
    /// Fingerprint.
    pub fingerprint: String,
    /// Collecting or sealed.
    pub state: AgreementState,
    /// This party's batches stored.
    pub batches_uploaded: u64,
    /// This party's rows stored.
    pub rows_uploaded: u64,
    /// Whether this party's completion statement is stored.
    pub upload_complete: bool,
    /// This party's batches the partner has blinded.
    pub batches_tokenized: u64,
    /// This party's batches the partner refused.
    pub refused_batches: Vec<WorkRefusal>,
    /// The partner's name.
    pub partner: String,
    /// Whether the partner's completion statement is stored.
    pub partner_upload_complete: bool,
    /// The partner's batches this party has yet to blind.
    pub work_waiting: u64,
    /// Whether every batch of both parties is tokenized.
    pub tokens_complete: bool,
    /// The audit head.
    pub head: Head,
    /// Blinding proofs of the partner that failed for this party's batches.
    pub partner_proof_failures: u64,
}

/// A worker's request for batch numbers of its party's upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    /// The upload's number of batches, as the worker computed it.
    pub total_batches: u64,
    /// At most this many (0: the default).
    pub max_batches: u32,
    /// A label for the room's log.
    pub worker: String,
    /// The upload digest every worker of the party computes (PROTOCOL.md, "Workers").
    pub upload_digest: Vec<u8>,
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    /// Rows erased.
    pub erased: u64,
    /// The room's signature (purpose `erasure-receipt`).
    pub receipt_signature: [u8; 64],
    /// The audit head after the erasure.
    pub head: Head,
}

/// One queryable column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnInfo {
    /// `<party>_<column>`.
    pub name: String,
    /// "dimension" or "metric".
    pub role: &'static str,
    /// A metric's agreed lower bound (0 for a dimension).
    pub min: f64,
    /// A metric's agreed upper bound (0 for a dimension).
    pub max: f64,
    /// Why the column was withheld at sealing ("" if it was not).
    pub withheld: String,
}

/// What an analyst may ask.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    /// Agreement id.
    pub agreement_id: String,
    /// Fingerprint.
    pub fingerprint: String,
    /// Whether the overlap is sealed (queryable).
    pub sealed: bool,
    /// k.
    pub min_group_size: u32,
    /// The agreed aggregates, lowercase.
    pub aggregates: Vec<String>,
    /// The columns.
    pub columns: Vec<ColumnInfo>,
    /// The audit head.
    pub head: Head,
}

/// A signed audit head a client presents (unchecked until the room checks it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedHead {
    /// The fingerprint, as text.
    pub fingerprint: String,
    /// Entries it vouches for.
    pub entries: u64,
    /// SHA-256 of the last entry.
    pub hash: Vec<u8>,
    /// The room's signature.
    pub signature: Vec<u8>,
}

/// Which page of the audit log a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRequest {
    /// Empty, or the session's fingerprint.
    pub fingerprint: String,
    /// The first entry (0-based).
    pub start: u64,
    /// Most entries (0: the room's default).
    pub max_entries: u32,
}

/// One page of an audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    /// The entries, as stored.
    pub entries: Vec<String>,
    /// The head of the whole log.
    pub head: Head,
    /// The room's public key.
    pub room_public_key: [u8; 32],
    /// The first entry's position.
    pub start: u64,
}
