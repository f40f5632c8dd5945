//! The PSI relay: uploads, the partner's blinding work (fetch, return, refuse), key
//! commitments, a party's status and erasure. The checks themselves are pure functions in
//! `crate::checks`; file work and point checks run on the blocking pool.

use std::sync::Arc;

use crate::api::{
    AgreementState, BlindedBatch, ColumnValues, Erased, KeyCommitment, LeaseRequest, Status,
    UploadBatch, UploadColumn, UploadComplete, WorkBatch, WorkRefusal,
};
use accord_agreement::{Signature, sig::Purpose};
use accord_proto::limits::POINT_LEN;
use chrono::Utc;

use super::seal::build_engine;
use super::{Live, Room, Slot, ended, signature};
use crate::audit::{Actor, Event};
use crate::checks::{self, Admission, Column, Values};
use crate::error::{Result, RoomError};
use crate::leases::Grant;

/// Batch numbers a `Lease` call that asks for 0 gets.
const DEFAULT_LEASE_BATCHES: u32 = 8;
use crate::limits::MAX_LEASE_BATCHES;
use crate::store::{AgreementStore, BatchInfo, BatchState, Completion, PendingBatch};

/// A batch's columns as the borrowed shape the checks take.
fn columns(columns: &[UploadColumn]) -> Vec<Column<'_>> {
    columns
        .iter()
        .map(|c| Column {
            name: &c.name,
            values: match &c.values {
                Some(ColumnValues::Text(values, present)) => Values::Text { values, present },
                Some(ColumnValues::Number(values, present)) => Values::Number { values, present },
                None => Values::Missing,
            },
        })
        .collect()
}

impl Room {
    /// Checks and stores one upload batch. Returns whether it was new.
    pub(crate) async fn upload_batch(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        batch: UploadBatch,
    ) -> Result<bool> {
        let now = Utc::now();
        let m = slot.agreement.manifest();
        if now < m.valid_from || now >= m.valid_until {
            return Err(RoomError::FailedPrecondition(format!(
                "agreement {} is not in force now (valid {} to {}): uploads are refused",
                m.id, m.valid_from, m.valid_until
            )));
        }
        let number = batch.batch_number;
        let n = checks::batch_rows(number, &batch.points, &batch.handles)?;
        checks::salt(number, &batch.salt)?;
        let signature = signature(&batch.signature)?;
        let key = m.parties[party].public_key;
        let fp = slot.agreement.fingerprint();
        let owner = party.to_owned();
        // The signature check and the point checks (decoding every point) are CPU work: off
        // the async workers, before the agreement's lock is taken.
        let check_started = std::time::Instant::now();
        let (batch, digest, decoded) = tokio::task::spawn_blocking(move || {
            let rows_digest = batch.rows_digest;
            let msg = accord_proto::signed::upload_batch(
                fp.as_bytes(),
                &owner,
                number,
                &batch.points,
                &rows_digest,
            );
            key.verify(Purpose::UploadBatch, &msg, &signature)
                .map_err(|_| {
                    RoomError::InvalidArgument(format!(
                        "batch {number}: the batch signature does not verify with {owner}'s key (it covers \
                         the points, the handles and every attribute value: something changed them \
                         after signing)"
                    ))
                })?;
            // Kept decoded for verifying the partner's blinding proof (`decoded.rs`).
            let decoded = accord_psi::check_and_decode(&batch.points)
                .map_err(|e| RoomError::InvalidArgument(format!("batch {number}: {e}")))?;
            let digest = checks::batch_digest(
                number,
                &batch.handles,
                &batch.points,
                &batch.encoded_columns,
            );
            Ok::<_, RoomError>((batch, digest, decoded))
        })
        .await
        .map_err(|e| RoomError::Internal(format!("batch check task failed: {e}")))??;
        tracing::debug!(
            stage = "room_upload_check",
            seconds = check_started.elapsed().as_secs_f64(),
            batch = number,
            rows = n,
            "checked an uploaded batch"
        );
        let owner = party.to_owned();
        let stored = self
            .blocking_write(slot, move |_, _, live| {
                let store = live.store.as_mut().ok_or_else(ended)?;
                let layout = store
                    .party(&owner)
                    .cloned()
                    .ok_or_else(|| RoomError::Internal("party layout missing".into()))?;
                let attributes = checks::attributes(&layout, &columns(&batch.columns), n, number)?;
                let pending = PendingBatch {
                    handles: batch.handles,
                    points: batch.points,
                    signature: batch.signature,
                    attributes,
                    digest,
                    rows_digest: batch.rows_digest,
                };
                store.store_pending(&owner, number, &pending)
            })
            .await?;
        if stored {
            self.inner.decoded.insert(fp, party, number, decoded);
        }
        Ok(stored)
    }

    /// Stores a party's signed completion statement and seals if everything is ready.
    pub(crate) async fn upload_complete(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        c: UploadComplete,
    ) -> Result<()> {
        let fp = slot.agreement.fingerprint();
        let key = &slot.agreement.manifest().parties[party].public_key;
        let msg = accord_proto::signed::upload_complete(fp.as_bytes(), party, c.batches, c.rows);
        key.verify(Purpose::UploadComplete, &msg, &signature(&c.signature)?)
            .map_err(|_| {
                RoomError::InvalidArgument(format!(
                    "the completion statement's signature does not verify with {party}'s key"
                ))
            })?;
        let party = party.to_owned();
        self.blocking_write(slot, move |room, slot, live| {
            let store = live.store.as_mut().ok_or_else(ended)?;
            let progress = store.progress(&party)?;
            if checks::admit_completion(progress, &party, c.batches, c.rows)? == Admission::Retry {
                return Ok(());
            }
            store.store_completion(
                &party,
                &Completion {
                    batches: c.batches,
                    rows: c.rows,
                    signature: hex::encode(&c.signature),
                },
            )?;
            room.audit(
                slot,
                Actor::Party(party.clone()),
                Event::UploadComplete {
                    batches: c.batches,
                    rows: c.rows,
                },
            )?;
            room.maybe_seal(slot, live)
        })
        .await
    }

    /// The numbers of the partner's batches waiting for this party's blinding (at most `max`;
    /// 0 means the operator's default), and the partner's name. The batches themselves are
    /// read one at a time by [`Room::read_work`] as the caller consumes the stream, so a
    /// `FetchWork` call holds one batch in memory, not `max`.
    pub(crate) async fn pending_work(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        max: u32,
    ) -> Result<(String, Vec<u64>)> {
        let max = match max {
            0 => self.inner.limits.fetch_work_batches,
            n => n.min(crate::limits::MAX_FETCH_WORK_BATCHES),
        } as usize;
        let live = slot.live.read().await;
        let store = live.store.as_ref().ok_or_else(ended)?;
        let partner = store
            .partner_of(party)
            .ok_or_else(|| RoomError::Internal("no partner".into()))?
            .to_owned();
        let pending = store
            .progress(&partner)?
            .batches
            .iter()
            .filter(|(_, info)| info.state == BatchState::Pending)
            .map(|(&n, _)| n)
            .take(max)
            .collect();
        Ok((partner, pending))
    }

    /// One of the partner's batches, read from disk, if it still waits for blinding.
    pub(crate) async fn read_work(
        &self,
        slot: &Arc<Slot>,
        partner: &str,
        n: u64,
    ) -> Result<Option<WorkBatch>> {
        let partner = partner.to_owned();
        self.blocking_read(slot, move |live| {
            let store = live.store.as_ref().ok_or_else(ended)?;
            let pending = store
                .progress(&partner)?
                .batches
                .get(&n)
                .is_some_and(|info| info.state == BatchState::Pending);
            if !pending {
                return Ok(None);
            }
            let pending = store.read_pending_points(&partner, n)?;
            Ok(Some(WorkBatch {
                from_party: partner,
                batch_number: n,
                points: pending.points,
                signature: pending.signature,
                rows_digest: pending.rows_digest,
            }))
        })
        .await
    }

    /// Stores one blinded batch returned by `party` for its partner.
    pub(crate) async fn return_blinded(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        b: BlindedBatch,
    ) -> Result<()> {
        let party = party.to_owned();
        // Reading the input, verifying the proof (two multi-scalar multiplications) and
        // writing the tokens run on the blocking pool, under the agreement's write lock.
        self.blocking_write(slot, move |room, slot, live| {
            room.store_blinded(slot, live, &party, b)
        })
        .await
    }

    fn store_blinded(
        &self,
        slot: &Slot,
        live: &mut Live,
        party: &str,
        b: BlindedBatch,
    ) -> Result<()> {
        let store = live.store.as_mut().ok_or_else(ended)?;
        let (partner, info) = partner_batch(store, party, b.batch_number)?;
        match info.state {
            BatchState::Tokenized => return Ok(()), // a retry after a lost acknowledgement
            BatchState::Refused(_) => {
                return Err(RoomError::FailedPrecondition(format!(
                    "batch {} of {partner} was refused earlier and cannot be blinded now",
                    b.batch_number
                )));
            }
            BatchState::Pending => {}
        }
        accord_proto::expect_items("points", &b.points, POINT_LEN, info.rows as usize).map_err(
            |e| RoomError::InvalidArgument(format!("blinded batch {}: {e}", b.batch_number)),
        )?;
        // The point checks (valid encodings, no identity) are part of `verify_blinding`, which
        // decodes every point anyway; with distinct inputs (checked at upload) a valid proof
        // also rules out duplicates.
        let Some(commitment) = store.progress(party)?.commitment else {
            return Err(RoomError::FailedPrecondition(format!(
                "{party} returned blinded batch {} before committing to its PSI key: send the \
                 KeyCommitment first in the ReturnWork stream (protocol v2; upgrade accord)",
                b.batch_number
            )));
        };
        let input = store.read_pending_points(&partner, b.batch_number)?.points;
        let fingerprint = *slot.agreement.fingerprint().as_bytes();
        let batch_number = b.batch_number;
        let context = accord_psi::DleqContext {
            agreement: &fingerprint,
            prover: party,
            owner: &partner,
            batch: batch_number,
        };
        // The inputs decoded when they were checked at upload, when still kept; the verdict
        // is the same either way (`decoded.rs`).
        let verify_started = std::time::Instant::now();
        let verdict =
            match self
                .inner
                .decoded
                .get(slot.agreement.fingerprint(), &partner, batch_number)
            {
                Some(decoded) => accord_psi::verify_blinding_decoded(
                    &commitment,
                    &context,
                    &input,
                    &decoded,
                    &b.points,
                    &b.proof,
                ),
                None => {
                    accord_psi::verify_blinding(&commitment, &context, &input, &b.points, &b.proof)
                }
            };
        tracing::debug!(
            stage = "room_verify_blinding",
            seconds = verify_started.elapsed().as_secs_f64(),
            batch = batch_number,
            "verified a blinding proof"
        );
        if let Err(e) = verdict {
            let reason = format!("blinding proof of batch {batch_number} refused: {e}");
            store.record_proof_failure(&partner)?;
            self.audit(
                slot,
                Actor::Party(party.to_owned()),
                Event::BlindingProofFailed {
                    owner: partner.clone(),
                    batch_number,
                    reason: reason.clone(),
                },
            )?;
            tracing::warn!(agreement = %slot.agreement.id(), party, batch_number, "blinding proof failed");
            return Err(RoomError::InvalidArgument(format!(
                "{reason}; nothing was stored and the batch still waits for a correct blinding"
            )));
        }
        store.store_tokens(&partner, batch_number, &b.points)?;
        self.inner
            .decoded
            .remove(slot.agreement.fingerprint(), &partner, batch_number);
        self.maybe_seal(slot, live)?;
        Ok(())
    }

    /// Stores `party`'s PSI key commitment after checking its signature; the same commitment
    /// again is a no-op, a different one is refused (a party has one key per agreement).
    pub(crate) async fn commit_key(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        c: KeyCommitment,
    ) -> Result<()> {
        let commitment: [u8; 32] = accord_proto::fixed("commitment", &c.commitment)
            .map_err(|e| RoomError::InvalidArgument(format!("key commitment: {e}")))?;
        let signature: [u8; 64] = accord_proto::fixed("signature", &c.signature)
            .map_err(|e| RoomError::InvalidArgument(format!("key commitment: {e}")))?;
        let key = slot
            .agreement
            .manifest()
            .parties
            .get(party)
            .map(|p| p.public_key)
            .ok_or_else(|| {
                RoomError::Internal(format!("{party} is not a party of the agreement"))
            })?;
        let message = accord_proto::signed::key_commitment(
            slot.agreement.fingerprint().as_bytes(),
            party,
            &commitment,
        );
        key.verify(
            Purpose::PsiKeyCommitment,
            &message,
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| {
            RoomError::PermissionDenied(format!(
                "the PSI key commitment is not signed by {party}'s key in the agreement"
            ))
        })?;
        let party = party.to_owned();
        self.blocking_write(slot, move |room, slot, live| {
            let store = live.store.as_mut().ok_or_else(ended)?;
            match store.progress(&party)?.commitment {
                Some(stored) if stored == commitment => return Ok(()),
                Some(_) => {
                    return Err(RoomError::FailedPrecondition(format!(
                        "{party} already committed to a different PSI key for this agreement; a party \
                         keeps one key per agreement version (its state directory was replaced?)"
                    )));
                }
                None => {}
            }
            accord_psi::check_commitment(&commitment).map_err(|e| {
                RoomError::InvalidArgument(format!("{party}'s key commitment: {e}"))
            })?;
            store.store_commitment(&party, &commitment, &signature)?;
            room.audit(
                slot,
                Actor::Party(party.clone()),
                Event::KeyCommitted {
                    commitment: hex::encode(commitment),
                },
            )
        })
        .await
    }

    /// Records `party`'s refusal to blind one of its partner's batches.
    pub(crate) async fn refuse_batch(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        r: WorkRefusal,
    ) -> Result<()> {
        let party = party.to_owned();
        self.blocking_write(slot, move |room, slot, live| {
            let store = live.store.as_mut().ok_or_else(ended)?;
            let (partner, info) = partner_batch(store, &party, r.batch_number)?;
            if info.state != BatchState::Pending {
                return Ok(());
            }
            let reason = crate::limits::refusal_reason(&r.reason)?;
            store.store_refusal(&partner, r.batch_number, &reason)?;
            room.audit(
                slot,
                Actor::Party(party),
                Event::BatchRefused {
                    owner: partner,
                    batch_number: r.batch_number,
                    reason,
                },
            )
        })
        .await
    }

    /// Leases batch numbers of `party`'s upload to one of its workers (`leases.rs`).
    pub(crate) async fn lease(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        request: &LeaseRequest,
    ) -> Result<Grant> {
        let want = match request.max_batches {
            0 => DEFAULT_LEASE_BATCHES,
            n if n <= MAX_LEASE_BATCHES => n,
            n => {
                return Err(RoomError::InvalidArgument(format!(
                    "a lease of {n} batches: ask for 1 to {MAX_LEASE_BATCHES} (0 means {DEFAULT_LEASE_BATCHES})"
                )));
            }
        };
        let worker = &request.worker;
        if worker.len() > 64 || !worker.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(RoomError::InvalidArgument(
                "a worker label is at most 64 printable ASCII characters".into(),
            ));
        }
        let mut live = slot.live.write().await;
        let store = live.store.as_mut().ok_or_else(ended)?;
        let grant = store.lease(
            party,
            request.total_batches,
            &request.upload_digest,
            want as usize,
            self.inner.limits.lease_ttl,
            std::time::Instant::now(),
        )?;
        tracing::info!(
            agreement = %slot.agreement.id(),
            party,
            worker = %worker,
            granted = ?grant.batch_numbers,
            stored = grant.stored,
            "leased batch numbers to a worker"
        );
        Ok(grant)
    }

    /// A party's own progress.
    pub(crate) async fn status(&self, slot: &Arc<Slot>, party: &str) -> Result<Status> {
        let live = slot.live.read().await;
        let store = live.store.as_ref().ok_or_else(ended)?;
        let partner = store.partner_of(party).unwrap_or_default().to_owned();
        let me = store.progress(party)?;
        let them = store.progress(&partner)?;
        let sealed = store.seal_info()?.is_some();
        Ok(Status {
            agreement_id: slot.agreement.id().to_owned(),
            fingerprint: slot.agreement.fingerprint().to_string(),
            state: if sealed {
                AgreementState::Sealed
            } else {
                AgreementState::Collecting
            },
            batches_uploaded: me.batches.len() as u64,
            rows_uploaded: me.rows(),
            upload_complete: me.complete.is_some(),
            batches_tokenized: me.tokenized(),
            refused_batches: me
                .batches
                .iter()
                .filter_map(|(n, b)| match &b.state {
                    BatchState::Refused(reason) => Some(WorkRefusal {
                        batch_number: *n,
                        reason: reason.clone(),
                    }),
                    _ => None,
                })
                .collect(),
            partner,
            partner_upload_complete: them.complete.is_some(),
            work_waiting: them
                .batches
                .values()
                .filter(|b| b.state == BatchState::Pending)
                .count() as u64,
            tokens_complete: me.tokens_complete() && them.tokens_complete(),
            partner_proof_failures: me.proof_failures,
            head: self.head(slot),
        })
    }

    /// Erases a party's rows by handle: all of them or none.
    pub(crate) async fn erase(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        handles: &[u8],
    ) -> Result<Erased> {
        let wanted = checks::erase_handles(handles)?;
        let owner = party.to_owned();
        // Reading and rewriting the party's files (and the snapshot) with fsync: on the
        // blocking pool, under the agreement's write lock.
        let wanted = self
            .blocking_write(slot, move |room, slot, live| {
                let store = live.store.as_mut().ok_or_else(ended)?;
                let known = store.known_handles(&owner)?;
                let unknown = wanted.iter().filter(|h| !known.contains(*h)).count();
                if unknown > 0 {
                    return Err(RoomError::NotFound(format!(
                        "{unknown} of the {} handles are not in {owner}'s data for this agreement (never uploaded or \
                         already erased); nothing was erased — send only handles of uploaded rows",
                        wanted.len()
                    )));
                }
                if let Some(snapshot) = store.erase(&owner, &wanted)? {
                    let engine = build_engine(room, &slot.agreement, &live.withheld, &snapshot)?;
                    live.engine = Some(Arc::new(engine));
                }
                room.audit(
                    slot,
                    Actor::Party(owner),
                    Event::Erasure {
                        rows: wanted.len() as u64,
                    },
                )?;
                Ok(wanted)
            })
            .await?;
        let erased = wanted.len() as u64;
        let fp = slot.agreement.fingerprint();
        let receipt = accord_proto::signed::erasure_receipt(fp.as_bytes(), party, erased, handles);
        Ok(Erased {
            erased,
            receipt_signature: self
                .inner
                .key
                .sign(Purpose::ErasureReceipt, &receipt)
                .to_bytes(),
            head: self.head(slot),
        })
    }
}

/// `party`'s partner and the state of the partner's batch `batch_number`.
fn partner_batch(
    store: &AgreementStore,
    party: &str,
    batch_number: u64,
) -> Result<(String, BatchInfo)> {
    let partner = store
        .partner_of(party)
        .ok_or_else(|| RoomError::Internal("no partner".into()))?
        .to_owned();
    let info = store
        .progress(&partner)?
        .batches
        .get(&batch_number)
        .cloned()
        .ok_or_else(|| {
            RoomError::NotFound(format!(
                "batch {batch_number} of {partner} was never uploaded"
            ))
        })?;
    Ok((partner, info))
}
