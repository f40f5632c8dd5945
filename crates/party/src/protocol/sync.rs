//! `party sync`: blind the partner's waiting batches, once each, with a proof, after checking
//! their points and the partner's proofs.

use std::time::Duration;

use accord_agreement::{Fingerprint, sig::Purpose};
use accord_proto::refusal::WorkRefusalCode;
use accord_proto::v1::{self, psi_client::PsiClient};
use sha2::{Digest, Sha256};

use super::PartyContext;
use crate::client::with_retries;
use crate::error::PartyError;
use crate::state::State;

/// Blinds the partner's waiting batches. With `wait`, keeps going until both sides' tokens
/// are complete. Returns the batches blinded (by the last attempt) and the last status.
///
/// A transient network failure restarts the work with backoff: the blind-once log makes a
/// batch blinded before the failure come out identical the second time.
pub async fn sync(ctx: &PartyContext, wait: bool) -> Result<(u64, v1::StatusResponse), PartyError> {
    with_retries("sync", || sync_once(ctx, wait)).await
}

async fn sync_once(
    ctx: &PartyContext,
    wait: bool,
) -> Result<(u64, v1::StatusResponse), PartyError> {
    let state = ctx.state()?;
    let partner = ctx.partner()?;
    let m = ctx.agreement.manifest();
    let partner_key = m.parties[&partner].public_key;
    let partner_cap = m.parties[&partner].max_rows;
    let fp = ctx.fingerprint();
    let mut conn = ctx.connect(&state).await?;
    let mut psi = PsiClient::new(conn.channel())
        .max_decoding_message_size(accord_proto::limits::MAX_MESSAGE_BYTES);
    // Every ReturnWork stream opens with this party's signed commitment K = k·B; the room
    // keeps the first and verifies every blinded batch's proof against it.
    let commitment = {
        let k = state.secrets()?.psi.commitment();
        let message = accord_proto::signed::key_commitment(fp.as_bytes(), &ctx.party, &k);
        v1::ReturnWorkMessage {
            kind: Some(v1::return_work_message::Kind::Commitment(
                v1::KeyCommitment {
                    commitment: k.to_vec(),
                    signature: ctx
                        .key
                        .sign(Purpose::PsiKeyCommitment, &message)
                        .to_bytes()
                        .to_vec(),
                },
            )),
        }
    };
    let mut blinded_total = 0u64;
    let bar = ctx.bar(0, &format!("blind {partner}'s batches"));
    let mut idle = Duration::from_millis(50);
    // Where the time goes (logged at the end for `accord bench e2e`).
    let (mut blinding, mut relaying, mut waiting) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let timings = |blinding: Duration, relaying: Duration, waiting: Duration, batches: u64| {
        tracing::info!(
            stage = "blind_partner",
            seconds = blinding.as_secs_f64(),
            batches,
            "blinded the partner's batches"
        );
        tracing::info!(
            stage = "relay_partner",
            seconds = relaying.as_secs_f64(),
            "fetched and returned the partner's batches"
        );
        tracing::info!(
            stage = "wait_partner",
            seconds = waiting.as_secs_f64(),
            "waited for the partner"
        );
    };
    loop {
        // Fetching, blinding and returning overlap: each batch is blinded as it arrives and
        // its reply streamed back at once, so the room checks and stores batch i while this
        // party blinds batch i + 1 (the relay's latency no longer adds to the blinding).
        let fetch_started = std::time::Instant::now();
        let mut fetched = psi
            .fetch_work(conn.request(v1::FetchWorkRequest {
                max_batches: FETCH_BATCHES,
            }))
            .await
            .map_err(|s| conn.error(s))?
            .into_inner();
        let first = fetched.message().await.map_err(|s| conn.error(s))?;
        relaying += fetch_started.elapsed();
        if let Some(first) = first {
            idle = Duration::from_millis(50);
            let mut log = state.blinded(&partner)?;
            let (tx, rx) = tokio::sync::mpsc::channel::<v1::ReturnWorkMessage>(4);
            let mut returner = psi.clone();
            let returned =
                returner.return_work(conn.request(tokio_stream::wrappers::ReceiverStream::new(rx)));
            let work = async {
                tx.send(commitment.clone())
                    .await
                    .map_err(|_| returning_closed())?;
                let (mut blinded, mut spent) = (0u64, Duration::ZERO);
                let mut next = Some(first);
                while let Some(batch) = next {
                    bar.inc_length(1);
                    let started = std::time::Instant::now();
                    let reply = blind_one(
                        &state,
                        &ctx.party,
                        &partner,
                        &partner_key,
                        partner_cap,
                        fp,
                        &mut log,
                        batch,
                    )
                    .await?;
                    spent += started.elapsed();
                    if matches!(reply.kind, Some(v1::return_work_message::Kind::Blinded(_))) {
                        blinded += 1;
                    }
                    tx.send(reply).await.map_err(|_| returning_closed())?;
                    bar.inc(1);
                    next = fetched.message().await.map_err(|s| conn.error(s))?;
                }
                drop(tx);
                Ok::<_, PartyError>((blinded, spent, std::time::Instant::now()))
            };
            let (returned, work) = tokio::join!(returned, work);
            // The room's refusal explains more than "the stream closed": it comes first.
            let response = returned.map_err(|s| conn.error(s))?.into_inner();
            let (blinded, spent, blinding_done) = work?;
            conn.check_head(response.head.as_ref())?;
            blinded_total += blinded;
            blinding += spent;
            // The relay's part: what was left to wait for once the last batch was blinded.
            relaying += blinding_done.elapsed();
            continue;
        }
        let status = conn.psi_status().await?;
        if !status.refused_batches.is_empty() {
            bar.finish_and_clear();
            let r = &status.refused_batches[0];
            return Err(PartyError::Refused(format!(
                "{partner} refused to blind batch {} of {}'s upload: {}. {}",
                r.batch_number,
                ctx.party,
                crate::display::work_refusal(&r.reason),
                crate::display::refusal_next_step(&r.reason)
            )));
        }
        if let Err(e) = check_partner_proofs(&status) {
            bar.finish_and_clear();
            return Err(e);
        }
        if !wait || status.tokens_complete {
            bar.finish_and_clear();
            timings(blinding, relaying, waiting, blinded_total);
            return Ok((blinded_total, status));
        }
        let wait_started = std::time::Instant::now();
        tokio::time::sleep(idle).await;
        waiting += wait_started.elapsed();
        idle = (idle * 2).min(Duration::from_millis(500));
    }
}

/// Partner batches asked for per FetchWork call.
const FETCH_BATCHES: u32 = 16;

fn returning_closed() -> PartyError {
    PartyError::Room("the room closed the stream of blinded batches".into())
}

/// The salt of batch `n`: `SHA-256("accord/v2/batch-salt" ‖ 0x00 ‖ shuffle_seed ‖
/// fingerprint ‖ u64be(n))`. Secret (the shuffle seed never leaves the state directory) and
/// deterministic, so a resumed upload sends byte-identical batches.
pub(super) fn batch_salt(seed: &[u8; 32], fingerprint: &[u8; 32], n: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"accord/v2/batch-salt\0");
    h.update(seed);
    h.update(fingerprint);
    h.update(n.to_be_bytes());
    h.finalize().into()
}

/// Refuses to go on when the partner returned blinded batches of this party's upload with
/// proofs that did not verify: waiting would never end, and the owners must know.
pub(super) fn check_partner_proofs(status: &v1::StatusResponse) -> Result<(), PartyError> {
    if status.partner_proof_failures == 0 {
        return Ok(());
    }
    Err(PartyError::Refused(format!(
        "{partner} returned {n} blinded batch(es) of this party's upload whose proof did not \
         verify: the room refused them, so the overlap cannot be sealed from them. Either \
         {partner}'s software is broken or {partner} blinded some rows with a key other than \
         the one it committed to. Ask {partner} to run `accord party sync` with an up-to-date \
         accord; if it happens again, revoke the agreement (`accord agreement revoke`). The \
         audit log (`accord audit verify`) records each failure.",
        partner = status.partner,
        n = status.partner_proof_failures
    )))
}

/// Checks one partner batch and blinds it with a proof, or explains the refusal. The blinded
/// log is synced to disk before the result is sent, so a batch is blinded once.
#[allow(clippy::too_many_arguments)]
pub(super) async fn blind_one(
    state: &State,
    me: &str,
    partner: &str,
    partner_key: &accord_agreement::PublicKey,
    partner_cap: u64,
    fp: Fingerprint,
    log: &mut std::collections::BTreeMap<u64, ([u8; 32], u64)>,
    batch: v1::WorkBatch,
) -> Result<v1::ReturnWorkMessage, PartyError> {
    let n = batch.batch_number;
    let refuse = |reason: String| {
        tracing::warn!(batch = n, %reason, "refusing to blind a partner batch");
        v1::ReturnWorkMessage {
            kind: Some(v1::return_work_message::Kind::Refusal(v1::WorkRefusal {
                batch_number: n,
                reason,
            })),
        }
    };
    if batch.from_party != partner {
        return Ok(refuse(WorkRefusalCode::WrongSender.reason(&format!(
            "the batch claims to come from {:?}, not the partner {partner}",
            batch.from_party
        ))));
    }
    let Ok(sig) = <[u8; 64]>::try_from(batch.signature.as_slice()) else {
        return Ok(refuse(
            WorkRefusalCode::BadSignature.reason("the batch signature is not 64 bytes"),
        ));
    };
    let Ok(rows_digest) = <[u8; 32]>::try_from(batch.rows_digest.as_slice()) else {
        return Ok(refuse(WorkRefusalCode::BadSignature.reason(&format!(
            "batch {n}: the rows digest is not 32 bytes, so the signature cannot be checked (a \
             protocol v1 room or a corrupt batch)"
        ))));
    };
    let message =
        accord_proto::signed::upload_batch(fp.as_bytes(), partner, n, &batch.points, &rows_digest);
    if partner_key
        .verify(
            Purpose::UploadBatch,
            &message,
            &accord_agreement::Signature::from_bytes(&sig),
        )
        .is_err()
    {
        return Ok(refuse(WorkRefusalCode::BadSignature.reason(&format!(
            "batch {n}: {partner}'s signature does not verify"
        ))));
    }
    let rows = (batch.points.len() / accord_proto::limits::POINT_LEN) as u64;
    let digest: [u8; 32] = Sha256::digest(&batch.points).into();
    match log.get(&n) {
        Some((d, _)) if *d != digest => {
            return Ok(refuse(WorkRefusalCode::BlindedBefore.reason(&format!(
                "batch {n} was blinded before with other points; a batch is blinded only once"
            ))));
        }
        Some(_) => {} // the same points again: a retry after a lost acknowledgement
        None => {
            let used: u64 = log.values().map(|(_, r)| r).sum();
            if used + rows > partner_cap {
                return Ok(refuse(WorkRefusalCode::OverCap.reason(&format!(
                    "blinding batch {n} would take {partner} past its agreed cap of {partner_cap} rows"
                ))));
            }
        }
    }
    let secrets = state.secrets()?;
    let points = batch.points;
    let (me, owner, fingerprint) = (me.to_owned(), partner.to_owned(), *fp.as_bytes());
    let result = tokio::task::spawn_blocking(move || {
        let context = accord_psi::DleqContext {
            agreement: &fingerprint,
            prover: &me,
            owner: &owner,
            batch: n,
        };
        accord_psi::blind_and_prove(&secrets.psi, &context, &points)
    })
    .await
    .map_err(|e| PartyError::Internal(e.to_string()))?;
    match result {
        Ok((blinded, proof)) => {
            if let std::collections::btree_map::Entry::Vacant(entry) = log.entry(n) {
                state.record_blinded(partner, n, &digest, rows)?;
                entry.insert((digest, rows));
            }
            Ok(v1::ReturnWorkMessage {
                kind: Some(v1::return_work_message::Kind::Blinded(v1::BlindedBatch {
                    batch_number: n,
                    points: blinded,
                    proof: proof.to_vec(),
                })),
            })
        }
        Err(e) => Ok(refuse(
            WorkRefusalCode::InvalidPoints.reason(&format!("batch {n}: {e}")),
        )),
    }
}
