//! The plain data the store keeps per party and batch: column layouts, batches, progress,
//! completion statements and the seal record.

use std::collections::{BTreeMap, HashSet};

use accord_agreement::{ColumnRole, Manifest};
use accord_engine::Role;
use accord_psi::{HANDLE_LEN, POINT_LEN};
use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field};
use serde::{Deserialize, Serialize};

/// A party's agreed columns, in manifest order.
#[derive(Debug, Clone)]
pub struct PartyColumns {
    /// Party name.
    pub party: String,
    /// `(column, role)` in the order of the manifest's `contributes` list.
    pub columns: Vec<(String, Role)>,
    /// The party's upload cap.
    pub max_rows: u64,
}

impl PartyColumns {
    /// The columns each party contributes, parties in name order: the room's one reading of
    /// the manifest's column roles (the engine's table spec, `room::table_spec`, and
    /// `describe` are built from it too).
    pub fn from_manifest(manifest: &Manifest) -> Vec<PartyColumns> {
        manifest
            .parties
            .iter()
            .map(|(name, party)| PartyColumns {
                party: name.clone(),
                max_rows: party.max_rows,
                columns: party
                    .contributes
                    .iter()
                    .map(|c| {
                        let role = match c.role {
                            ColumnRole::Dimension => Role::Dimension,
                            ColumnRole::Metric { min, max } => Role::Metric { min, max },
                        };
                        (c.column.clone(), role)
                    })
                    .collect(),
            })
            .collect()
    }

    pub(crate) fn attribute_fields(&self, prefix: bool) -> Vec<Field> {
        self.columns
            .iter()
            .map(|(name, kind)| {
                let name = if prefix {
                    format!("{}_{}", self.party, name)
                } else {
                    name.clone()
                };
                let ty = match kind {
                    Role::Dimension => DataType::Utf8,
                    Role::Metric { .. } => DataType::Float64,
                };
                Field::new(name, ty, true)
            })
            .collect()
    }
}

/// A batch as the room keeps it before the partner blinds it.
#[derive(Debug, Clone)]
pub struct PendingBatch {
    /// Handles, 16 bytes each.
    pub handles: Vec<u8>,
    /// Points k_party·H(x), 32 bytes each.
    pub points: Vec<u8>,
    /// The party's signature over the batch.
    pub signature: Vec<u8>,
    /// Attribute columns in manifest order.
    pub attributes: Vec<ArrayRef>,
    /// SHA-256 of the batch as received, to recognize a retry.
    pub digest: [u8; 32],
    /// The signed digest of handles and attributes, relayed to the partner.
    pub rows_digest: [u8; 32],
}

/// A pending batch as the partner receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingPoints {
    /// Points k_party·H(x), 32 bytes each.
    pub points: Vec<u8>,
    /// The owner's `upload-batch` signature.
    pub signature: Vec<u8>,
    /// The digest of handles and attributes the signature covers.
    pub rows_digest: Vec<u8>,
}

/// Where one batch of a party stands.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchState {
    /// Stored; waiting for the partner to blind it.
    Pending,
    /// The partner blinded it; tokens stored.
    Tokenized,
    /// The partner refused to blind it.
    Refused(String),
}

/// What is stored for one batch.
#[derive(Debug, Clone)]
pub struct BatchInfo {
    /// Rows in the batch.
    pub rows: u64,
    /// Where it stands.
    pub state: BatchState,
    /// Digest of the batch as received.
    pub digest: [u8; 32],
}

/// The signed completion statement of a party.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Completion {
    /// Batches uploaded.
    pub batches: u64,
    /// Rows uploaded.
    pub rows: u64,
    /// Hex of the party's signature.
    pub signature: String,
}

/// A party's progress, rebuilt from the files at open.
#[derive(Debug, Clone, Default)]
pub struct PartyProgress {
    /// Batches by number.
    pub batches: BTreeMap<u64, BatchInfo>,
    /// The completion statement, once stored.
    pub complete: Option<Completion>,
    /// Handles erased while their batch was pending.
    pub erased_pending: HashSet<[u8; HANDLE_LEN]>,
    /// Handles of rows deleted at sealing because they matched nobody (data minimization);
    /// an erasure request may still name them.
    pub discarded: HashSet<[u8; HANDLE_LEN]>,
    /// The party's verified PSI key commitment `K = k·B`, once received.
    pub commitment: Option<[u8; POINT_LEN]>,
    /// Blinded batches of this party's upload returned by the partner with a failing proof.
    pub proof_failures: u64,
}

impl PartyProgress {
    /// Rows stored.
    pub fn rows(&self) -> u64 {
        self.batches.values().map(|b| b.rows).sum()
    }
    /// Batches the partner blinded.
    pub fn tokenized(&self) -> u64 {
        self.batches
            .values()
            .filter(|b| b.state == BatchState::Tokenized)
            .count() as u64
    }
    /// True when complete and every batch is tokenized.
    pub fn tokens_complete(&self) -> bool {
        self.complete
            .as_ref()
            .is_some_and(|c| c.batches == self.batches.len() as u64)
            && self
                .batches
                .values()
                .all(|b| b.state == BatchState::Tokenized)
    }
}

/// Information written at sealing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SealInfo {
    /// When the snapshot was sealed (RFC 3339).
    pub sealed_at: String,
    /// Dimension columns withheld, with the reason.
    pub withheld: Vec<(String, String)>,
}
