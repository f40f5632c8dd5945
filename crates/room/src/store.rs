//! The room's files for one agreement. Everything the room acknowledges is on disk first;
//! the directory listing is the truth, so a restart (even after `kill -9`) rebuilds the same
//! state with [`AgreementStore::open`].
//!
//! ```text
//! <data>/agreements/<fingerprint>/manifest.toml
//!     parties/<party>/pending/<batch>.parquet   handle, point (k_party·H), attributes — waits for the partner
//!     parties/<party>/rows/<batch>.parquet      token (k_B·k_A·H), handle, attributes; after
//!                                               sealing only the matched rows (data minimization)
//!     parties/<party>/refused/<batch>.txt       the partner's reason for refusing to blind the batch
//!     parties/<party>/seen/<batch>.bin          16-byte tags of the batch's points (cross-batch duplicate
//!                                               check); deleted at sealing
//!     parties/<party>/complete.json             the party's signed completion statement
//!     parties/<party>/commitment.bin            the party's PSI key commitment K (32) ‖ its signature (64)
//!     parties/<party>/proof-failures.txt        how many of this party's batches came back with a failing proof
//!     parties/<party>/erased.bin                handles erased while their batch was still pending
//!     parties/<party>/discarded.bin             handles of rows deleted at sealing (matched nobody)
//!     snapshot.parquet, sealed.json             the sealed join: matched rows only, no tokens
//! <data>/audit/<fingerprint>.jsonl              the audit log (outlives the data)
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use accord_agreement::{ColumnRole, Manifest};
use accord_engine::Role;
use arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeBinaryArray, FixedSizeBinaryBuilder, RecordBatch,
    UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RoomError};

const POINT: i32 = 32;
const HANDLE: i32 = 16;
const DIGEST_KEY: &str = "accord.batch_digest";
/// Rows the party uploaded in a batch, kept when sealing deletes the unmatched ones.
const UPLOADED_ROWS_KEY: &str = "accord.uploaded_rows";
const SIGNATURE_KEY: &str = "accord.signature";
const ROWS_DIGEST_KEY: &str = "accord.rows_digest";

/// A party's agreed columns, in manifest order.
#[derive(Debug, Clone)]
pub struct PartyColumns {
    /// Party name.
    pub party: String,
    /// `(column, kind)` in the order of the manifest's `contributes` list.
    pub columns: Vec<(String, Role)>,
    /// The party's upload cap.
    pub max_rows: u64,
}

impl PartyColumns {
    /// The columns each party contributes, parties in name order: the room's one reading of
    /// the manifest's column roles (the engine's table spec, `room::table_spec`, is built
    /// from it too).
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

    fn attribute_fields(&self, prefix: bool) -> Vec<Field> {
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
    pub erased_pending: HashSet<[u8; 16]>,
    /// Handles of rows deleted at sealing because they matched nobody (data minimization);
    /// an erasure request may still name them.
    pub discarded: HashSet<[u8; 16]>,
    /// The party's verified PSI key commitment `K = k·B`, once received.
    pub commitment: Option<[u8; 32]>,
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

/// One agreement's directory.
#[derive(Debug)]
pub struct AgreementStore {
    dir: PathBuf,
    parties: Vec<PartyColumns>,
    progress: BTreeMap<String, PartyProgress>,
    /// Per party whose upload is still open: the [`point_tag`] of every point it uploaded
    /// under this agreement version, so a batch repeating one is refused at upload.
    ///
    /// Bound: one tag per stored row, and [`AgreementStore::store_pending`] refuses rows
    /// beyond the party's `max_rows` *before* it adds tags, so a set never holds more than
    /// the party's `max_rows` entries (16 bytes each plus the hash set's overhead, about
    /// 40 MiB per million rows). `max_rows` is agreed and signed by both parties in the
    /// manifest the room accepted. The set is freed when the party completes its upload
    /// (no batch can be added after that) and its files are deleted at sealing.
    point_tags: BTreeMap<String, HashSet<[u8; 16]>>,
}

/// The tag kept for an uploaded point: the first 16 bytes of SHA-256(point). Equal points
/// have equal tags (encodings are canonical), so no repeat is missed; two different points
/// sharing a tag (probability about 2⁻¹²⁸ per pair, and only the owner chooses its points)
/// would refuse the owner's own batch, nothing else. Hashing keeps no part of the point.
fn point_tag(point: &[u8]) -> [u8; 16] {
    to16(&Sha256::digest(point))
}

const COMMITMENT_FILE: &str = "commitment.bin";
const SEEN_DIR: &str = "seen";
const PROOF_FAILURES_FILE: &str = "proof-failures.txt";

fn batch_file(n: u64) -> String {
    format!("{n:010}.parquet")
}

fn seen_file(n: u64) -> String {
    format!("{n:010}.bin")
}

/// The point tags of every stored batch of a party: its `seen/` files; for a pending batch
/// stored by a build without them, its points (a tokenized batch stored by such a build has
/// no points left and is not covered; sealing still drops repeated tokens). Tag files of
/// batches that are not stored (a crash between the two writes of
/// [`AgreementStore::store_pending`]) are ignored.
fn load_point_tags(pdir: &Path, progress: &PartyProgress) -> Result<HashSet<[u8; 16]>> {
    let mut tags = HashSet::with_capacity(progress.rows() as usize);
    let files: BTreeMap<u64, PathBuf> = list(&pdir.join(SEEN_DIR), ".bin")?.into_iter().collect();
    for (n, info) in &progress.batches {
        if let Some(path) = files.get(n) {
            let bytes = fs::read(path).map_err(|e| RoomError::io("read", path, e))?;
            tags.extend(bytes.chunks_exact(16).map(to16));
        } else if info.state == BatchState::Pending {
            let path = pdir.join("pending").join(batch_file(*n));
            for rb in read_parquet(&path)?.0 {
                let points = column_fixed(&rb, "point")?;
                tags.extend((0..points.len()).map(|i| point_tag(points.value(i))));
            }
        }
    }
    Ok(tags)
}

fn parse_batch_file(name: &str, ext: &str) -> Option<u64> {
    name.strip_suffix(ext)?.parse().ok()
}

impl AgreementStore {
    /// Opens (creating if needed) the directory and rebuilds progress from its files.
    /// Half-finished work from a crash is cleaned up: temp files are removed and a pending
    /// batch whose tokens are already stored is dropped.
    pub fn open(dir: &Path, parties: Vec<PartyColumns>) -> Result<Self> {
        let mut progress = BTreeMap::new();
        let mut point_tags = BTreeMap::new();
        for p in &parties {
            let pdir = dir.join("parties").join(&p.party);
            for sub in ["pending", "rows", "refused"] {
                accord_fs::create_dir_all(&pdir.join(sub), accord_fs::Access::OwnerOnly)?;
            }
            let mut pr = PartyProgress::default();
            for (n, path) in list(&pdir.join("rows"), ".parquet")? {
                let (rows, digest) = read_meta(&path)?;
                pr.batches.insert(
                    n,
                    BatchInfo {
                        rows,
                        state: BatchState::Tokenized,
                        digest,
                    },
                );
            }
            for (n, path) in list(&pdir.join("pending"), ".parquet")? {
                if pr.batches.contains_key(&n) {
                    // Tokens were stored but the crash came before the pending file was removed.
                    fs::remove_file(&path).map_err(|e| RoomError::io("remove", &path, e))?;
                    continue;
                }
                let (rows, digest) = read_meta(&path)?;
                pr.batches.insert(
                    n,
                    BatchInfo {
                        rows,
                        state: BatchState::Pending,
                        digest,
                    },
                );
            }
            for (n, path) in list(&pdir.join("refused"), ".txt")? {
                let reason =
                    fs::read_to_string(&path).map_err(|e| RoomError::io("read", &path, e))?;
                if let Some(b) = pr.batches.get_mut(&n) {
                    b.state = BatchState::Refused(reason);
                }
            }
            let complete = pdir.join("complete.json");
            if complete.exists() {
                let text = fs::read(&complete).map_err(|e| RoomError::io("read", &complete, e))?;
                pr.complete =
                    Some(serde_json::from_slice(&text).map_err(|e| {
                        RoomError::Internal(format!("{}: {e}", complete.display()))
                    })?);
            }
            pr.erased_pending = read_handles(&pdir.join("erased.bin"))?;
            pr.discarded = read_handles(&pdir.join("discarded.bin"))?;
            let commitment = pdir.join(COMMITMENT_FILE);
            if commitment.exists() {
                let bytes =
                    fs::read(&commitment).map_err(|e| RoomError::io("read", &commitment, e))?;
                let k = bytes.get(..32).and_then(|k| <[u8; 32]>::try_from(k).ok());
                pr.commitment = Some(k.filter(|_| bytes.len() == 96).ok_or_else(|| {
                    RoomError::Internal(format!(
                        "{} is {} bytes, not 96: the data directory is damaged",
                        commitment.display(),
                        bytes.len()
                    ))
                })?);
            }
            let failures = pdir.join(PROOF_FAILURES_FILE);
            if failures.exists() {
                let text = fs::read_to_string(&failures)
                    .map_err(|e| RoomError::io("read", &failures, e))?;
                pr.proof_failures = text.trim().parse().map_err(|_| {
                    RoomError::Internal(format!(
                        "{} does not hold a count: the data directory is damaged",
                        failures.display()
                    ))
                })?;
            }
            if pr.complete.is_none() {
                point_tags.insert(p.party.clone(), load_point_tags(&pdir, &pr)?);
            }
            progress.insert(p.party.clone(), pr);
        }
        remove_temp_files(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            parties,
            progress,
            point_tags,
        })
    }

    /// The agreement directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parties' column layouts.
    pub fn parties(&self) -> &[PartyColumns] {
        &self.parties
    }

    /// A party's column layout.
    pub fn party(&self, name: &str) -> Option<&PartyColumns> {
        self.parties.iter().find(|p| p.party == name)
    }

    /// The other party (agreements have exactly two parties in this version).
    pub fn partner_of(&self, name: &str) -> Option<&str> {
        self.parties
            .iter()
            .map(|p| p.party.as_str())
            .find(|p| *p != name)
    }

    /// A party's progress.
    pub fn progress(&self, party: &str) -> Result<&PartyProgress> {
        self.progress.get(party).ok_or_else(|| {
            RoomError::NotFound(format!("party {party:?} is not part of this agreement"))
        })
    }

    fn party_dir(&self, party: &str) -> PathBuf {
        self.dir.join("parties").join(party)
    }

    /// Stores an upload batch durably. Returns false when the same batch was already stored.
    pub fn store_pending(
        &mut self,
        party: &str,
        batch_number: u64,
        batch: &PendingBatch,
    ) -> Result<bool> {
        let layout = self
            .party(party)
            .cloned()
            .ok_or_else(|| RoomError::NotFound(format!("unknown party {party:?}")))?;
        let progress = self.progress.get(party).cloned().unwrap_or_default();
        if let Some(existing) = progress.batches.get(&batch_number) {
            if existing.digest == batch.digest {
                return Ok(false);
            }
            return Err(RoomError::AlreadyExists(format!(
                "batch {batch_number} of {party} is already stored with different content: an upload is resumed \
                 only with exactly the same input and state directory (if the input changed, the agreement needs a \
                 new version)"
            )));
        }
        let next = progress.batches.len() as u64;
        if batch_number != next {
            return Err(RoomError::InvalidArgument(format!(
                "batch {batch_number} of {party} is out of order: the room expects batch {next} next"
            )));
        }
        if progress.complete.is_some() {
            return Err(RoomError::FailedPrecondition(format!(
                "{party} already completed its upload for this agreement version; later changes are erasures"
            )));
        }
        let rows = (batch.handles.len() / 16) as u64;
        if progress.rows() + rows > layout.max_rows {
            return Err(RoomError::FailedPrecondition(format!(
                "this batch would take {party} past its agreed upload cap of {} rows (max_rows in the agreement)",
                layout.max_rows
            )));
        }
        // Cross-batch repeats (repeats inside the batch were refused by the point checks).
        let tags: Vec<[u8; 16]> = batch.points.chunks_exact(32).map(point_tag).collect();
        let seen = self.point_tags.entry(party.to_owned()).or_default();
        if let Some(row) = tags.iter().position(|t| seen.contains(t)) {
            let earlier = match self.batch_holding(party, &tags[row])? {
                Some(m) => format!("batch {m}"),
                None => "an earlier batch".to_owned(),
            };
            return Err(RoomError::InvalidArgument(format!(
                "batch {batch_number} of {party} is refused: its point at row {row} was already uploaded \
                 in {earlier} of this agreement version, and a party uploads each customer once. \
                 Nothing was stored. Remove the repeated rows (de-duplicate on the normalized \
                 identifier before blinding, as `accord party upload` does) and send batch \
                 {batch_number} again; if `accord party upload` sent it, the input file or state \
                 directory changed during the upload: restore them, or upload under a new \
                 agreement version"
            )));
        }
        let seen_dir = self.party_dir(party).join(SEEN_DIR);
        accord_fs::create_dir_all(&seen_dir, accord_fs::Access::OwnerOnly)?;
        accord_fs::write_atomic(&seen_dir.join(seen_file(batch_number)), tags.as_flattened())?;
        let mut fields = vec![
            Field::new("handle", DataType::FixedSizeBinary(HANDLE), false),
            Field::new("point", DataType::FixedSizeBinary(POINT), false),
        ];
        fields.extend(layout.attribute_fields(false));
        let mut columns: Vec<ArrayRef> = vec![
            fixed_array(&batch.handles, HANDLE)?,
            fixed_array(&batch.points, POINT)?,
        ];
        columns.extend(batch.attributes.iter().cloned());
        let rb = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        let meta = vec![
            KeyValue::new(DIGEST_KEY.to_owned(), hex::encode(batch.digest)),
            KeyValue::new(SIGNATURE_KEY.to_owned(), hex::encode(&batch.signature)),
            KeyValue::new(ROWS_DIGEST_KEY.to_owned(), hex::encode(batch.rows_digest)),
        ];
        let path = self
            .party_dir(party)
            .join("pending")
            .join(batch_file(batch_number));
        accord_fs::write_atomic(&path, &parquet_bytes(&rb, meta)?)?;
        self.point_tags
            .entry(party.to_owned())
            .or_default()
            .extend(tags);
        self.progress
            .entry(party.to_owned())
            .or_default()
            .batches
            .insert(
                batch_number,
                BatchInfo {
                    rows,
                    state: BatchState::Pending,
                    digest: batch.digest,
                },
            );
        Ok(true)
    }

    /// Which stored batch of `party` holds a point with this tag (reads the tag files: only
    /// on the error path).
    fn batch_holding(&self, party: &str, tag: &[u8; 16]) -> Result<Option<u64>> {
        let progress = self.progress(party)?;
        for (n, path) in list(&self.party_dir(party).join(SEEN_DIR), ".bin")? {
            if !progress.batches.contains_key(&n) {
                continue;
            }
            let bytes = fs::read(&path).map_err(|e| RoomError::io("read", &path, e))?;
            if bytes.chunks_exact(16).any(|t| t == tag) {
                return Ok(Some(n));
            }
        }
        Ok(None)
    }

    /// Reads a pending batch: its points, the owner's signature and the rows digest it covers.
    pub fn read_pending_points(&self, party: &str, batch_number: u64) -> Result<PendingPoints> {
        let path = self
            .party_dir(party)
            .join("pending")
            .join(batch_file(batch_number));
        let (batches, meta) = read_parquet(&path)?;
        let signature = meta
            .get(SIGNATURE_KEY)
            .and_then(|s| hex::decode(s).ok())
            .ok_or_else(|| RoomError::Internal(format!("{} has no signature", path.display())))?;
        let rows_digest = meta
            .get(ROWS_DIGEST_KEY)
            .and_then(|s| hex::decode(s).ok())
            .ok_or_else(|| RoomError::Internal(format!("{} has no rows digest", path.display())))?;
        let mut points = Vec::new();
        for rb in &batches {
            let col = column_fixed(rb, "point")?;
            for i in 0..col.len() {
                points.extend_from_slice(col.value(i));
            }
        }
        Ok(PendingPoints {
            points,
            signature,
            rows_digest,
        })
    }

    /// Replaces a pending batch by its double-blinded tokens (same order as its points).
    /// Rows erased while pending are dropped here.
    pub fn store_tokens(&mut self, party: &str, batch_number: u64, tokens: &[u8]) -> Result<()> {
        let pending = self
            .party_dir(party)
            .join("pending")
            .join(batch_file(batch_number));
        let (batches, meta) = read_parquet(&pending)?;
        let rb = concat(&batches)?;
        let erased = self
            .progress
            .get(party)
            .map(|p| p.erased_pending.clone())
            .unwrap_or_default();
        let handles = column_fixed(&rb, "handle")?;
        let keep: Vec<u32> = (0..rb.num_rows())
            .filter(|&i| !erased.contains(&to16(handles.value(i))))
            .map(|i| i as u32)
            .collect();
        let token_col = fixed_array(tokens, POINT)?;
        let mut fields = vec![Field::new("token", DataType::FixedSizeBinary(POINT), false)];
        let mut columns: Vec<ArrayRef> = vec![token_col];
        for (i, f) in rb.schema().fields().iter().enumerate() {
            if f.name() == "point" {
                continue;
            }
            fields.push(f.as_ref().clone());
            columns.push(rb.column(i).clone());
        }
        let full = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        let kept = take_rows(&full, &keep)?;
        let meta: Vec<KeyValue> = meta.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
        let rows_path = self
            .party_dir(party)
            .join("rows")
            .join(batch_file(batch_number));
        accord_fs::write_atomic(&rows_path, &parquet_bytes(&kept, meta)?)?;
        fs::remove_file(&pending).map_err(|e| RoomError::io("remove", &pending, e))?;
        accord_fs::sync_dir(&self.party_dir(party).join("pending"))?;
        if let Some(b) = self
            .progress
            .get_mut(party)
            .and_then(|p| p.batches.get_mut(&batch_number))
        {
            b.state = BatchState::Tokenized;
        }
        Ok(())
    }

    /// Stores a party's verified PSI key commitment (`K ‖ signature`). The caller has checked
    /// that none is stored yet.
    pub fn store_commitment(
        &mut self,
        party: &str,
        commitment: &[u8; 32],
        signature: &[u8; 64],
    ) -> Result<()> {
        let mut bytes = commitment.to_vec();
        bytes.extend_from_slice(signature);
        accord_fs::write_atomic(&self.party_dir(party).join(COMMITMENT_FILE), &bytes)?;
        self.progress
            .entry(party.to_owned())
            .or_default()
            .commitment = Some(*commitment);
        Ok(())
    }

    /// Counts one blinded batch of `owner`'s upload that came back with a failing proof.
    pub fn record_proof_failure(&mut self, owner: &str) -> Result<u64> {
        let count = self.progress(owner)?.proof_failures + 1;
        accord_fs::write_atomic(
            &self.party_dir(owner).join(PROOF_FAILURES_FILE),
            count.to_string().as_bytes(),
        )?;
        self.progress
            .entry(owner.to_owned())
            .or_default()
            .proof_failures = count;
        Ok(count)
    }

    /// Records the partner's refusal to blind a batch.
    pub fn store_refusal(&mut self, party: &str, batch_number: u64, reason: &str) -> Result<()> {
        let path = self
            .party_dir(party)
            .join("refused")
            .join(format!("{batch_number:010}.txt"));
        accord_fs::write_atomic(&path, reason.as_bytes())?;
        if let Some(b) = self
            .progress
            .get_mut(party)
            .and_then(|p| p.batches.get_mut(&batch_number))
        {
            b.state = BatchState::Refused(reason.to_owned());
        }
        Ok(())
    }

    /// Stores a party's completion statement.
    pub fn store_completion(&mut self, party: &str, completion: &Completion) -> Result<()> {
        let path = self.party_dir(party).join("complete.json");
        let bytes = serde_json::to_vec_pretty(completion)
            .map_err(|e| RoomError::Internal(e.to_string()))?;
        accord_fs::write_atomic(&path, &bytes)?;
        self.progress.entry(party.to_owned()).or_default().complete = Some(completion.clone());
        // No batch can be added any more: the duplicate check's memory is freed.
        self.point_tags.remove(party);
        Ok(())
    }

    /// True when both parties are complete and every batch is tokenized.
    pub fn ready_to_seal(&self) -> bool {
        self.progress.len() >= 2 && self.progress.values().all(PartyProgress::tokens_complete)
    }

    /// The sealed snapshot's information, if sealed.
    pub fn seal_info(&self) -> Result<Option<SealInfo>> {
        let path = self.dir.join("sealed.json");
        if !path.exists() || !self.dir.join("snapshot.parquet").exists() {
            return Ok(None);
        }
        let bytes = fs::read(&path).map_err(|e| RoomError::io("read", &path, e))?;
        Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
            RoomError::Internal(format!("{}: {e}", path.display()))
        })?))
    }

    /// Joins both parties' token tables, keeping only matched rows (no tokens), and writes
    /// the snapshot. Returns the snapshot and the number of duplicate tokens dropped.
    pub fn build_snapshot(&self) -> Result<(RecordBatch, u64)> {
        if self.parties.len() != 2 {
            return Err(RoomError::Internal(
                "sealing needs exactly two parties".into(),
            ));
        }
        let a = &self.parties[0];
        let b = &self.parties[1];
        let (rows_a, dup_a) = self.read_party_rows(a)?;
        let (rows_b, dup_b) = self.read_party_rows(b)?;
        let tok_a = column_fixed(&rows_a, "token")?;
        let mut index: HashMap<[u8; 32], u32> = HashMap::with_capacity(tok_a.len());
        for i in 0..tok_a.len() {
            index.entry(to32(tok_a.value(i))).or_insert(i as u32);
        }
        let tok_b = column_fixed(&rows_b, "token")?;
        let mut take_a = Vec::new();
        let mut take_b = Vec::new();
        for j in 0..tok_b.len() {
            if let Some(&i) = index.get(&to32(tok_b.value(j))) {
                take_a.push(i);
                take_b.push(j as u32);
            }
        }
        let ra = take_rows(&rows_a, &take_a)?;
        let rb = take_rows(&rows_b, &take_b)?;
        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (party, rows) in [(a, &ra), (b, &rb)] {
            fields.push(Field::new(
                format!("{}_handle", party.party),
                DataType::FixedSizeBinary(HANDLE),
                false,
            ));
            columns.push(rows.column(rows.schema().index_of("handle")?).clone());
        }
        for (party, rows) in [(a, &ra), (b, &rb)] {
            for (f, (name, _)) in party.attribute_fields(true).into_iter().zip(&party.columns) {
                columns.push(rows.column(rows.schema().index_of(name)?).clone());
                fields.push(f);
            }
        }
        let snapshot = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        Ok((snapshot, dup_a + dup_b))
    }

    /// Writes the sealed snapshot and its information atomically.
    pub fn write_snapshot(&self, snapshot: &RecordBatch, info: &SealInfo) -> Result<()> {
        accord_fs::write_atomic(
            &self.dir.join("snapshot.parquet"),
            &parquet_bytes(snapshot, Vec::new())?,
        )?;
        let bytes =
            serde_json::to_vec_pretty(info).map_err(|e| RoomError::Internal(e.to_string()))?;
        accord_fs::write_atomic(&self.dir.join("sealed.json"), &bytes)?;
        Ok(())
    }

    /// Data minimization after sealing (DESIGN §3.6): deletes every tokenized row that is not
    /// in `snapshot` (its token, handle and attributes) and clears the attributes of batches
    /// left pending (refused by the partner). The handles of deleted rows are kept in
    /// `discarded.bin`, written before the rows go, so erasure still recognizes them.
    /// Idempotent: the room runs it again after a restart. Returns the rows deleted.
    pub fn discard_unmatched(&mut self, snapshot: &RecordBatch) -> Result<u64> {
        let mut deleted = 0u64;
        let names: Vec<String> = self.parties.iter().map(|p| p.party.clone()).collect();
        for party in names {
            let matched_col = column_fixed(snapshot, &format!("{party}_handle"))?;
            let matched: HashSet<[u8; 16]> = (0..matched_col.len())
                .map(|i| to16(matched_col.value(i)))
                .collect();
            let pdir = self.party_dir(&party);
            let mut discarded = self
                .progress
                .get(&party)
                .map(|p| p.discarded.clone())
                .unwrap_or_default();
            for (_, path) in list(&pdir.join("rows"), ".parquet")? {
                let (batches, mut meta) = read_parquet(&path)?;
                let rb = concat(&batches)?;
                let h = column_fixed(&rb, "handle")?;
                let mut keep = Vec::new();
                let before = discarded.len();
                for i in 0..rb.num_rows() {
                    let handle = to16(h.value(i));
                    if matched.contains(&handle) {
                        keep.push(i as u32);
                    } else {
                        discarded.insert(handle);
                    }
                }
                if keep.len() == rb.num_rows() {
                    continue;
                }
                if discarded.len() != before {
                    write_handles(&pdir.join("discarded.bin"), &discarded)?;
                }
                meta.entry(UPLOADED_ROWS_KEY.to_owned())
                    .or_insert_with(|| rb.num_rows().to_string());
                let meta = meta.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
                accord_fs::write_atomic(&path, &parquet_bytes(&take_rows(&rb, &keep)?, meta)?)?;
                deleted += (rb.num_rows() - keep.len()) as u64;
            }
            for (_, path) in list(&pdir.join("pending"), ".parquet")? {
                let (batches, meta) = read_parquet(&path)?;
                let rb = concat(&batches)?;
                let all: Vec<usize> = (0..rb.num_rows()).collect();
                let nulled = null_attributes(&rb, &all)?;
                if nulled != rb {
                    let meta = meta.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
                    accord_fs::write_atomic(&path, &parquet_bytes(&nulled, meta)?)?;
                }
            }
            let seen = pdir.join(SEEN_DIR);
            match fs::remove_dir_all(&seen) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RoomError::io("remove", &seen, e)),
            }
            self.progress.entry(party).or_default().discarded = discarded;
        }
        Ok(deleted)
    }

    /// Reads the sealed snapshot.
    pub fn read_snapshot(&self) -> Result<RecordBatch> {
        let (batches, _) = read_parquet(&self.dir.join("snapshot.parquet"))?;
        concat(&batches)
    }

    /// Reads a party's tokenized rows, dropping duplicate tokens (first in batch order wins).
    fn read_party_rows(&self, party: &PartyColumns) -> Result<(RecordBatch, u64)> {
        let mut fields = vec![
            Field::new("token", DataType::FixedSizeBinary(POINT), false),
            Field::new("handle", DataType::FixedSizeBinary(HANDLE), false),
        ];
        fields.extend(party.attribute_fields(false));
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let mut all = Vec::new();
        for (_, path) in list(&self.party_dir(&party.party).join("rows"), ".parquet")? {
            let (batches, _) = read_parquet(&path)?;
            all.extend(batches);
        }
        let rows = arrow::compute::concat_batches(&schema, &all)?;
        let tokens = column_fixed(&rows, "token")?;
        let mut seen = HashSet::with_capacity(tokens.len());
        let keep: Vec<u32> = (0..tokens.len())
            .filter(|&i| seen.insert(to32(tokens.value(i))))
            .map(|i| i as u32)
            .collect();
        let dropped = (rows.num_rows() - keep.len()) as u64;
        Ok((take_rows(&rows, &keep)?, dropped))
    }

    /// Which of `handles` are stored for `party` (pending or tokenized, not yet erased).
    pub fn known_handles(&self, party: &str) -> Result<HashSet<[u8; 16]>> {
        let mut known = HashSet::new();
        for sub in ["pending", "rows"] {
            for (_, path) in list(&self.party_dir(party).join(sub), ".parquet")? {
                let (batches, _) = read_parquet(&path)?;
                for rb in &batches {
                    let h = column_fixed(rb, "handle")?;
                    for i in 0..h.len() {
                        known.insert(to16(h.value(i)));
                    }
                }
            }
        }
        if let Some(p) = self.progress.get(party) {
            for h in &p.erased_pending {
                known.remove(h);
            }
            known.extend(p.discarded.iter().copied());
        }
        Ok(known)
    }

    /// Erases rows of `party` with the given handles from every file: tokenized rows are
    /// rewritten without them, pending rows lose their attributes now and are dropped when
    /// their tokens arrive, and the sealed snapshot (if any) is rewritten without them.
    /// Returns the new snapshot if there was one.
    pub fn erase(
        &mut self,
        party: &str,
        handles: &HashSet<[u8; 16]>,
    ) -> Result<Option<RecordBatch>> {
        let pdir = self.party_dir(party);
        for (_, path) in list(&pdir.join("rows"), ".parquet")? {
            let (batches, meta) = read_parquet(&path)?;
            let rb = concat(&batches)?;
            let h = column_fixed(&rb, "handle")?;
            let keep: Vec<u32> = (0..rb.num_rows())
                .filter(|&i| !handles.contains(&to16(h.value(i))))
                .map(|i| i as u32)
                .collect();
            if keep.len() != rb.num_rows() {
                let meta = meta.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
                accord_fs::write_atomic(&path, &parquet_bytes(&take_rows(&rb, &keep)?, meta)?)?;
            }
        }
        let mut newly_pending = Vec::new();
        for (_, path) in list(&pdir.join("pending"), ".parquet")? {
            let (batches, meta) = read_parquet(&path)?;
            let rb = concat(&batches)?;
            let h = column_fixed(&rb, "handle")?;
            let hit: Vec<usize> = (0..rb.num_rows())
                .filter(|&i| handles.contains(&to16(h.value(i))))
                .collect();
            if hit.is_empty() {
                continue;
            }
            // The points stay (the partner verifies the batch signature over them); the
            // customer's attributes go now, the row itself when the tokens arrive.
            let nulled = null_attributes(&rb, &hit)?;
            let meta = meta.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
            accord_fs::write_atomic(&path, &parquet_bytes(&nulled, meta)?)?;
            newly_pending.extend(hit.iter().map(|&i| to16(h.value(i))));
        }
        if !newly_pending.is_empty() {
            let progress = self.progress.entry(party.to_owned()).or_default();
            progress.erased_pending.extend(newly_pending);
            write_handles(&pdir.join("erased.bin"), &progress.erased_pending)?;
        }
        let progress = self.progress.entry(party.to_owned()).or_default();
        if handles.iter().any(|h| progress.discarded.contains(h)) {
            // Already deleted at sealing; forgetting the handle makes a second request "unknown".
            progress.discarded.retain(|h| !handles.contains(h));
            write_handles(&pdir.join("discarded.bin"), &progress.discarded)?;
        }
        if self.seal_info()?.is_some() {
            let snapshot = self.read_snapshot()?;
            let h = column_fixed(&snapshot, &format!("{party}_handle"))?;
            let keep: Vec<u32> = (0..snapshot.num_rows())
                .filter(|&i| !handles.contains(&to16(h.value(i))))
                .map(|i| i as u32)
                .collect();
            let new = take_rows(&snapshot, &keep)?;
            accord_fs::write_atomic(
                &self.dir.join("snapshot.parquet"),
                &parquet_bytes(&new, Vec::new())?,
            )?;
            return Ok(Some(new));
        }
        Ok(None)
    }
}

fn to16(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    a
}

fn to32(b: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[..32]);
    a
}

/// The batch with every text and number column (the customer's attributes) set to null in
/// `rows`; the fixed-size columns (handles, points) are kept.
fn null_attributes(rb: &RecordBatch, rows: &[usize]) -> Result<RecordBatch> {
    let mut mask = vec![false; rb.num_rows()];
    for &r in rows {
        if let Some(m) = mask.get_mut(r) {
            *m = true;
        }
    }
    let mask = BooleanArray::from(mask);
    let columns = rb
        .schema()
        .fields()
        .iter()
        .zip(rb.columns())
        .map(|(f, col)| match f.data_type() {
            DataType::Utf8 | DataType::Float64 => arrow::compute::nullif(col, &mask),
            _ => Ok(col.clone()),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(rb.schema(), columns)?)
}

/// A fixed-size binary column from concatenated items.
pub fn fixed_array(bytes: &[u8], size: i32) -> Result<ArrayRef> {
    let n = bytes.len() / size as usize;
    let mut b = FixedSizeBinaryBuilder::with_capacity(n, size);
    for chunk in bytes.chunks_exact(size as usize) {
        b.append_value(chunk)?;
    }
    Ok(Arc::new(b.finish()))
}

fn column_fixed<'a>(rb: &'a RecordBatch, name: &str) -> Result<&'a FixedSizeBinaryArray> {
    let idx = rb.schema().index_of(name)?;
    rb.column(idx)
        .as_any()
        .downcast_ref::<FixedSizeBinaryArray>()
        .ok_or_else(|| RoomError::Internal(format!("column {name} has the wrong type")))
}

fn take_rows(rb: &RecordBatch, rows: &[u32]) -> Result<RecordBatch> {
    let idx = UInt32Array::from(rows.to_vec());
    Ok(arrow::compute::take_record_batch(rb, &idx)?)
}

fn concat(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| RoomError::Internal("a parquet file with no record batch".into()))?;
    Ok(arrow::compute::concat_batches(&schema, batches)?)
}

fn parquet_bytes(rb: &RecordBatch, meta: Vec<KeyValue>) -> Result<Vec<u8>> {
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_key_value_metadata(if meta.is_empty() { None } else { Some(meta) })
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, rb.schema(), Some(props))?;
    w.write(rb)?;
    w.close()?;
    Ok(out)
}

fn read_parquet(path: &Path) -> Result<(Vec<RecordBatch>, BTreeMap<String, String>)> {
    let file = fs::File::open(path).map_err(|e| RoomError::io("open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let meta = kv(builder.metadata().file_metadata().key_value_metadata());
    let schema = builder.schema().clone();
    let mut batches = Vec::new();
    for b in builder.build()? {
        batches.push(b?);
    }
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(schema));
    }
    Ok((batches, meta))
}

fn kv(meta: Option<&Vec<KeyValue>>) -> BTreeMap<String, String> {
    meta.map(|m| {
        m.iter()
            .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
            .collect()
    })
    .unwrap_or_default()
}

/// Reads a file of concatenated 16-byte handles (absent: none).
fn read_handles(path: &Path) -> Result<HashSet<[u8; 16]>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(RoomError::io("read", path, e)),
    };
    Ok(bytes.chunks_exact(16).map(to16).collect())
}

/// Writes a set of handles atomically, sorted so the file does not depend on hashing.
fn write_handles(path: &Path, handles: &HashSet<[u8; 16]>) -> Result<()> {
    let mut sorted: Vec<&[u8; 16]> = handles.iter().collect();
    sorted.sort();
    let bytes: Vec<u8> = sorted.into_iter().flatten().copied().collect();
    accord_fs::write_atomic(path, &bytes)?;
    Ok(())
}

fn read_meta(path: &Path) -> Result<(u64, [u8; 32])> {
    let file = fs::File::open(path).map_err(|e| RoomError::io("open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let md = builder.metadata().file_metadata();
    let meta = kv(md.key_value_metadata());
    // After sealing a batch file keeps only its matched rows; the upload's size stays here.
    let rows = match meta.get(UPLOADED_ROWS_KEY) {
        Some(n) => n.parse().map_err(|_| {
            RoomError::Internal(format!("{}: bad {UPLOADED_ROWS_KEY}", path.display()))
        })?,
        None => md.num_rows() as u64,
    };
    let digest = meta
        .get(DIGEST_KEY)
        .and_then(|d| hex::decode(d).ok())
        .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
        .ok_or_else(|| RoomError::Internal(format!("{} has no batch digest", path.display())))?;
    Ok((rows, digest))
}

fn list(dir: &Path, ext: &str) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(RoomError::io("list", dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| RoomError::io("list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = parse_batch_file(&name, ext) {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes temp files left by an interrupted atomic write anywhere under `dir`.
fn remove_temp_files(dir: &Path) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(_) => return Ok(()),
    };
    for entry in rd {
        let entry = entry.map_err(|e| RoomError::io("list", dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            remove_temp_files(&path)?;
        } else if entry.file_name().to_string_lossy().contains(".tmp-") {
            fs::remove_file(&path).map_err(|e| RoomError::io("remove", &path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};

    #[test]
    fn null_attributes_clears_only_the_named_rows_attributes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("handle", DataType::FixedSizeBinary(2), false),
            Field::new("tier", DataType::Utf8, true),
            Field::new("spend", DataType::Float64, true),
        ]));
        let rb = RecordBatch::try_new(
            schema,
            vec![
                fixed_array(&[1, 1, 2, 2, 3, 3], 2).unwrap(),
                Arc::new(StringArray::from(vec![Some("gold"), None, Some("silver")])),
                Arc::new(Float64Array::from(vec![Some(1.0), Some(2.0), Some(3.0)])),
            ],
        )
        .unwrap();
        let out = null_attributes(&rb, &[0, 2]).unwrap();
        assert_eq!(out.schema(), rb.schema());
        assert_eq!(
            out.column(0).as_ref(),
            rb.column(0).as_ref(),
            "handles kept"
        );
        let tier = out
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(tier.iter().collect::<Vec<_>>(), vec![None, None, None]);
        let spend = out
            .column(2)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(
            spend.iter().collect::<Vec<_>>(),
            vec![None, Some(2.0), None]
        );
        // An out-of-range row number changes nothing rather than failing the erasure.
        let same = null_attributes(&rb, &[7]).unwrap();
        assert_eq!(same, rb);
    }
}
