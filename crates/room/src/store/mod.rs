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

mod files;
mod types;
mod workers;

pub use types::{
    BatchInfo, BatchState, Completion, PartyColumns, PartyProgress, PendingBatch, PendingPoints,
    SealInfo,
};

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use accord_psi::{HANDLE_LEN, POINT_LEN};
use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::file::metadata::KeyValue;

use crate::columns::{column_fixed, concat, fixed_array, null_attributes, take_rows, to16};
use crate::error::{Result, RoomError};
use crate::leases::Leases;
use files::{
    TAG_LEN, batch_file, list, load_point_tags, parquet_bytes, point_tag, read_handles, read_meta,
    read_parquet, read_parquet_columns, remove_temp_files, seen_file, write_handles,
};
use workers::WorkerUpload;

/// Arrow's `FixedSizeBinary` widths of the point/token and handle columns.
const POINT: i32 = POINT_LEN as i32;
const HANDLE: i32 = HANDLE_LEN as i32;
pub(super) const DIGEST_KEY: &str = "accord.batch_digest";
/// Rows the party uploaded in a batch, kept when sealing deletes the unmatched ones.
pub(super) const UPLOADED_ROWS_KEY: &str = "accord.uploaded_rows";
const SIGNATURE_KEY: &str = "accord.signature";
const ROWS_DIGEST_KEY: &str = "accord.rows_digest";
const COMMITMENT_FILE: &str = "commitment.bin";
pub(super) const SEEN_DIR: &str = "seen";
/// Where the sealing join spills; removed after the join and at every start.
const SEAL_SCRATCH_DIR: &str = "seal-scratch";
const PROOF_FAILURES_FILE: &str = "proof-failures.txt";

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
    point_tags: BTreeMap<String, HashSet<[u8; TAG_LEN]>>,
    /// Per party whose workers lease batch numbers: the upload they share (`workers.json`).
    workers: BTreeMap<String, WorkerUpload>,
    /// The leases of those parties (in memory only; bounded by `MAX_OUTSTANDING_LEASES` each).
    leases: BTreeMap<String, Leases>,
}

impl AgreementStore {
    /// Opens (creating if needed) the directory and rebuilds progress from its files.
    /// Half-finished work from a crash is cleaned up: temp files are removed and a pending
    /// batch whose tokens are already stored is dropped.
    pub fn open(dir: &Path, parties: Vec<PartyColumns>) -> Result<Self> {
        let mut progress = BTreeMap::new();
        let mut point_tags = BTreeMap::new();
        let mut workers = BTreeMap::new();
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
                let k = bytes
                    .get(..POINT_LEN)
                    .and_then(|k| <[u8; POINT_LEN]>::try_from(k).ok());
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
            if let Some(w) = workers::load(&pdir)? {
                workers.insert(p.party.clone(), w);
            }
            progress.insert(p.party.clone(), pr);
        }
        remove_temp_files(dir)?;
        // What a sealing join stopped by a crash spilled (tokens and attributes) goes.
        remove_scratch(&dir.join(SEAL_SCRATCH_DIR))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            parties,
            progress,
            point_tags,
            workers,
            leases: BTreeMap::new(),
        })
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
        let rows = (batch.handles.len() / HANDLE_LEN) as u64;
        let progress = self.progress.get(party).cloned().unwrap_or_default();
        let admission = crate::checks::admit_batch(
            &progress,
            party,
            batch_number,
            &batch.digest,
            rows,
            layout.max_rows,
            self.workers.get(party).map(|w| w.total_batches),
        )?;
        if admission == crate::checks::Admission::Retry {
            return Ok(false);
        }
        // Cross-batch repeats (repeats inside the batch were refused by the point checks).
        let tags: Vec<[u8; TAG_LEN]> = batch
            .points
            .chunks_exact(POINT_LEN)
            .map(point_tag)
            .collect();
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
    fn batch_holding(&self, party: &str, tag: &[u8; TAG_LEN]) -> Result<Option<u64>> {
        let progress = self.progress(party)?;
        for (n, path) in list(&self.party_dir(party).join(SEEN_DIR), ".bin")? {
            if !progress.batches.contains_key(&n) {
                continue;
            }
            let bytes = fs::read(&path).map_err(|e| RoomError::io("read", &path, e))?;
            if bytes.chunks_exact(TAG_LEN).any(|t| t == tag) {
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
        commitment: &[u8; POINT_LEN],
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

    /// Joins both parties' token tables into `snapshot.parquet` (matched rows only, no
    /// tokens) with the spilling join of `join.rs`, in at most `limits::SEAL_MEMORY_BYTES`
    /// of operator memory; what spills goes to a scratch directory removed afterwards. The
    /// snapshot counts only once [`AgreementStore::write_seal_info`] has written `sealed.json`.
    /// Returns the rows matched and the duplicate tokens dropped.
    pub fn build_snapshot(&self) -> Result<(u64, u64)> {
        let [a, b] = self.parties.as_slice() else {
            return Err(RoomError::Internal(
                "sealing needs exactly two parties".into(),
            ));
        };
        let side = |p: &PartyColumns| -> Result<crate::join::Side> {
            Ok(crate::join::Side {
                party: p.clone(),
                files: list(&self.party_dir(&p.party).join("rows"), ".parquet")?,
            })
        };
        let scratch = self.dir.join(SEAL_SCRATCH_DIR);
        remove_scratch(&scratch)?;
        accord_fs::create_dir_all(&scratch, accord_fs::Access::OwnerOnly)?;
        let joined = crate::join::seal_join(
            &side(a)?,
            &side(b)?,
            &self.dir.join("snapshot.parquet"),
            &scratch,
            crate::limits::SEAL_MEMORY_BYTES,
        );
        remove_scratch(&scratch)?;
        let joined = joined?;
        tracing::debug!(
            matched = joined.matched,
            spilled_bytes = joined.spilled_bytes,
            "sealing join"
        );
        Ok((joined.matched, joined.duplicates))
    }

    /// Writes `sealed.json` after the snapshot: from then on the agreement is sealed.
    pub fn write_seal_info(&self, info: &SealInfo) -> Result<()> {
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
            let matched: HashSet<[u8; HANDLE_LEN]> = (0..matched_col.len())
                .map(|i| to16(matched_col.value(i)))
                .collect();
            let pdir = self.party_dir(&party);
            let mut discarded = self
                .progress
                .get(&party)
                .map(|p| p.discarded.clone())
                .unwrap_or_default();
            // First the handles of every row that goes, written once (sorting the whole set
            // once per batch file made sealing quadratic), and durably before any row goes.
            let files = list(&pdir.join("rows"), ".parquet")?;
            let before = discarded.len();
            let mut to_rewrite = Vec::new();
            for (_, path) in &files {
                let mut unmatched = false;
                for batch in read_parquet_columns(path, &["handle"])? {
                    let h = column_fixed(&batch, "handle")?;
                    for i in 0..batch.num_rows() {
                        let handle = to16(h.value(i));
                        if !matched.contains(&handle) {
                            discarded.insert(handle);
                            unmatched = true;
                        }
                    }
                }
                if unmatched {
                    to_rewrite.push(path.clone());
                }
            }
            if discarded.len() != before {
                write_handles(&pdir.join("discarded.bin"), &discarded)?;
            }
            // Then each batch file that holds such rows is rewritten without them: files are
            // independent (each write atomic, the whole step idempotent), so on every core.
            deleted += rewrite_in_parallel(&to_rewrite, &matched)?;
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

    /// Which of `handles` are stored for `party` (pending or tokenized, not yet erased).
    pub fn known_handles(&self, party: &str) -> Result<HashSet<[u8; HANDLE_LEN]>> {
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
        handles: &HashSet<[u8; HANDLE_LEN]>,
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

/// Removes the sealing join's scratch directory, if any.
fn remove_scratch(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RoomError::io("remove", dir, e)),
    }
}

/// Rewrites each file of `paths` keeping only the rows whose handle is in `matched`, on all
/// cores; returns the rows deleted.
fn rewrite_in_parallel(paths: &[PathBuf], matched: &HashSet<[u8; HANDLE_LEN]>) -> Result<u64> {
    let rewrite = |path: &PathBuf| -> Result<u64> {
        let (batches, mut meta) = read_parquet(path)?;
        let rb = concat(&batches)?;
        let h = column_fixed(&rb, "handle")?;
        let keep: Vec<u32> = (0..rb.num_rows())
            .filter(|&i| matched.contains(&to16(h.value(i))))
            .map(|i| i as u32)
            .collect();
        meta.entry(UPLOADED_ROWS_KEY.to_owned())
            .or_insert_with(|| rb.num_rows().to_string());
        let meta = meta.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
        accord_fs::write_atomic(path, &parquet_bytes(&take_rows(&rb, &keep)?, meta)?)?;
        Ok((rb.num_rows() - keep.len()) as u64)
    };
    let threads = std::thread::available_parallelism()
        .map(std::num::NonZero::get)
        .unwrap_or(1)
        .min(paths.len().max(1));
    let chunk = paths.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(chunk)
            .map(|files| scope.spawn(move || files.iter().map(rewrite).sum::<Result<u64>>()))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(RoomError::Internal("a rewrite thread panicked".into()))
                })
            })
            .sum()
    })
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
