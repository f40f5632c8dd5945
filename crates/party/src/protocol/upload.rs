//! `party upload`: read and normalize the export, hash and blind it, and stream it to the
//! room in batches (resuming an interrupted upload of the same data).

use std::path::PathBuf;
use std::time::Duration;

use accord_agreement::{SecretKey, sig::Purpose};
use accord_proto::v1::{self, psi_client::PsiClient};
use accord_psi::HashDomain;
use tokio_stream::StreamExt as _;

use super::shuffle::{self, Scratch, Shuffled};
use super::sync::{batch_salt, check_partner_proofs, sync};
use super::{PartyContext, status};
use crate::client::Connection;
use crate::error::PartyError;
use crate::input::{InputOptions, InputReport, PreparedRow, Value};
use crate::state::State;

/// How to upload.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// The CSV or Parquet file.
    pub input: PathBuf,
    /// Reading options.
    pub read: InputOptions,
    /// Rows per batch.
    pub batch_rows: usize,
    /// Keep blinding partner work until both sides' tokens are complete.
    pub wait: bool,
    /// Upload as one of several workers of this party, under this label: only the batches
    /// the room leases to it (PROTOCOL.md, "Workers").
    pub worker: Option<String>,
}

/// What an upload did.
#[derive(Debug, Clone)]
pub struct UploadOutcome {
    /// What each input rule did.
    pub report: InputReport,
    /// Rows held back because this party erased that customer before (and no renewal of
    /// consent was recorded since).
    pub held_back_erased: u64,
    /// Batches in the upload.
    pub batches: u64,
    /// Rows uploaded.
    pub rows: u64,
    /// Batches the room already had (an interrupted upload resumed).
    pub already_stored: u64,
    /// Partner batches this party blinded while waiting.
    pub blinded: u64,
    /// The final status, when waiting.
    pub status: Option<v1::StatusResponse>,
}

/// Reads, filters, shuffles and uploads the party's data, resuming an interrupted upload.
pub async fn upload(
    ctx: &PartyContext,
    options: &UploadOptions,
) -> Result<UploadOutcome, PartyError> {
    let m = ctx.agreement.manifest();
    let now = chrono::Utc::now();
    if !m.is_in_window(now) {
        return Err(PartyError::Refused(format!(
            "agreement {} is not in force now (valid {} to {})",
            m.id, m.valid_from, m.valid_until
        )));
    }
    let batch_rows = options
        .batch_rows
        .clamp(1, accord_proto::limits::MAX_BATCH_ROWS);
    // Read, prepare and shuffle through scratch files in the state directory: memory is
    // bounded by a bucket of rows plus 16 bytes per customer (shuffle.rs).
    let state = ctx.state()?;
    if options.worker.is_some() && !state.has_secrets() {
        // A worker that made its own secrets would blind another upload than its party's.
        return Err(PartyError::Refused(format!(
            "{} has no secrets for agreement {}: a worker uploads with a copy of its party's state. Create the \
             state once with `accord party init` (or any earlier upload or sync of the party), copy it to each \
             worker with `accord party backup` and `accord party restore`, then run the workers",
            state.dir().display(),
            ctx.agreement.id()
        )));
    }
    let scratch = Scratch::create(state.dir())?;
    let read_started = std::time::Instant::now();
    let prepared = {
        let dir = scratch.dir().to_owned();
        let path = options.input.clone();
        let manifest = m.clone();
        let party = ctx.party.clone();
        let read = options.read.clone();
        let memory = crate::rights::ErasureMemory::open(&ctx.state_root)?;
        let kind = ctx.identifier_kind();
        tokio::task::spawn_blocking(move || {
            shuffle::prepare(&dir, &path, &manifest, &party, &read, &memory, kind)
        })
        .await
        .map_err(|e| PartyError::Internal(e.to_string()))??
    };
    let (spilled, report, held_back_erased) =
        (prepared.spilled, prepared.report, prepared.held_back_erased);
    tracing::info!(
        stage = "read_and_normalize",
        seconds = read_started.elapsed().as_secs_f64(),
        rows = spilled.rows(),
        "read and normalized the input"
    );
    let max_rows = m.parties[&ctx.party].max_rows;
    if spilled.rows() > max_rows {
        return Err(PartyError::Refused(format!(
            "{} rows are ready to upload but the agreement caps {} at {max_rows} rows (max_rows): the upload would be \
             refused; ask legal for a new agreement version with a higher cap",
            spilled.rows(),
            ctx.party
        )));
    }
    if spilled.rows() == 0 {
        return Err(PartyError::Refused(format!(
            "no row of {} can be uploaded (see the report):\n{report}",
            options.input.display()
        )));
    }
    // The order is a secret function of the set of rows and the per-agreement seed: a resumed
    // upload (or the same rows in another file order) sends the same batches.
    let shuffle_started = std::time::Instant::now();
    let shuffled = {
        let secrets = state.secrets()?;
        let dir = scratch.dir().to_owned();
        let agreement_id = ctx.agreement.id().to_owned();
        tokio::task::spawn_blocking(move || {
            shuffle::shuffle(
                &dir,
                spilled,
                &secrets.shuffle_seed,
                shuffle::BUCKET_ROWS,
                batch_rows,
                &|id| secrets.handle_key.handle(&agreement_id, id.as_bytes()),
            )
        })
        .await
        .map_err(|e| PartyError::Internal(e.to_string()))??
    };
    tracing::info!(
        stage = "shuffle",
        seconds = shuffle_started.elapsed().as_secs_f64(),
        buckets_peak_rows = shuffled.peak_rows_in_memory(),
        "shuffled the rows through scratch files and computed their handles"
    );
    check_same_upload(ctx, &state, shuffled.handles(), options.worker.is_some()).await?;
    state.remember_agreement(ctx.agreement.text())?;
    state.begin_upload(shuffled.handles())?;

    let total_rows = shuffled.rows();
    let total_batches = shuffled.batches();
    let shuffled = std::sync::Arc::new(shuffled);
    let mut already_stored = None;
    let upload_started = std::time::Instant::now();
    let mut attempt = 0;
    let mut restarts = 0;
    let status = loop {
        if let Some(worker) = &options.worker {
            let digest = accord_proto::upload_digest(batch_rows as u64, shuffled.handles());
            let (status, sent) = super::worker::work(
                ctx,
                &state,
                &shuffled,
                (total_batches, total_rows),
                &digest,
                worker,
            )
            .await?;
            already_stored = Some(total_batches - sent.min(total_batches));
            break status;
        }
        attempt += 1;
        let result = upload_attempt(ctx, &state, &shuffled, total_batches, total_rows).await;
        match result {
            Ok((status, first_stored)) => {
                already_stored.get_or_insert(first_stored);
                break status;
            }
            Err(PartyError::SessionEnded { reason, .. })
                if restarts < crate::client::MAX_SESSION_RESTARTS =>
            {
                restarts += 1;
                attempt -= 1; // not a failure of the room: authenticate again and resume
                tracing::info!(%reason, "upload: the session ended; authenticating again");
            }
            Err(e) if e.is_transient() && attempt < 6 => {
                tracing::warn!(error = %e, "upload interrupted; resuming");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    };
    tracing::info!(
        stage = "hash_blind_upload",
        seconds = upload_started.elapsed().as_secs_f64(),
        batches = total_batches,
        "hashed, blinded and uploaded every batch"
    );
    // The rows are on their way or stored: the scratch copy goes (the handles stay in memory).
    drop(scratch);
    // The room acknowledged the completion: only now does the record say "uploaded".
    state.finish_upload(shuffled.handles())?;
    if !state
        .history()?
        .iter()
        .any(|e| matches!(e, crate::rights::Event::Uploaded { .. }))
    {
        state.log_event(&crate::rights::Event::Uploaded {
            at: chrono::Utc::now(),
            rows: total_rows,
        })?;
    }
    if !status.refused_batches.is_empty() {
        let r = &status.refused_batches[0];
        return Err(PartyError::Refused(format!(
            "{} refused to blind batch {} of this upload: {}. {}",
            status.partner,
            r.batch_number,
            crate::display::work_refusal(&r.reason),
            crate::display::refusal_next_step(&r.reason)
        )));
    }
    check_partner_proofs(&status)?;
    let mut outcome = UploadOutcome {
        held_back_erased,
        report,
        batches: total_batches,
        rows: total_rows,
        already_stored: already_stored.unwrap_or(0),
        blinded: 0,
        status: Some(status),
    };
    if options.wait {
        let (blinded, status) = sync(ctx, true).await?;
        outcome.blinded = blinded;
        outcome.status = Some(status);
    }
    Ok(outcome)
}

/// An agreement version accepts one upload per party. Refuses, before anything is sent or
/// recorded, an input whose rows differ from the upload this state directory recorded, and an
/// upload when the room holds rows this state directory has no record of.
async fn check_same_upload(
    ctx: &PartyContext,
    state: &State,
    handles: &[u8],
    worker: bool,
) -> Result<(), PartyError> {
    let record = state.upload_record()?;
    let rows = |b: &[u8]| b.len() / accord_proto::limits::HANDLE_LEN;
    if let Some(done) = &record.done {
        if crate::state::same_rows(done, handles) {
            return Ok(()); // the same input again: resume or confirm
        }
        return Err(PartyError::Refused(format!(
            "{} already completed its upload to agreement {} ({} rows) from a different input ({} rows now): an \
             agreement version accepts one upload and nothing was sent. To change the data, agree a new agreement \
             version (a higher version number, signed again by both parties) and upload to it; to remove customers, \
             use `accord party erase`",
            ctx.party,
            ctx.agreement.id(),
            rows(done),
            rows(handles)
        )));
    }
    if record.pending.as_deref() == Some(handles) {
        return Ok(()); // resuming an interrupted upload of the same input
    }
    if worker {
        // The other workers' batches are expected; the room's lease compares this worker's
        // upload digest (input, batch size and secrets) with theirs.
        return Ok(());
    }
    // No record, or an interrupted upload of another input: only safe if the room holds nothing.
    let status = status(ctx).await?;
    if status.batches_uploaded > 0 || status.upload_complete {
        let why = if record.pending.is_some() {
            "an interrupted upload of a different input from this state directory"
        } else {
            "an upload this state directory has no record of (was it made with another --state directory?)"
        };
        return Err(PartyError::Refused(format!(
            "the room already holds {} batches ({} rows) of {} for agreement {}: {why}. Nothing was sent. Resume \
             with the original input and --state directory; to change the data, agree a new agreement version",
            status.batches_uploaded,
            status.rows_uploaded,
            ctx.party,
            ctx.agreement.id()
        )));
    }
    Ok(())
}

/// One pass: ask where the room stands, then stream the missing batches and the completion.
async fn upload_attempt(
    ctx: &PartyContext,
    state: &State,
    shuffled: &std::sync::Arc<Shuffled>,
    total_batches: u64,
    total_rows: u64,
) -> Result<(v1::StatusResponse, u64), PartyError> {
    let mut conn = ctx.connect(state).await?;
    let status = conn.psi_status().await?;
    let stored = status.batches_uploaded;
    if status.upload_complete {
        if stored != total_batches || status.rows_uploaded != total_rows {
            return Err(PartyError::Refused(format!(
                "the room holds a completed upload of {stored} batches ({} rows) from {}, but this input makes \
                 {total_batches} batches ({total_rows} rows): the input or --batch-rows changed; an agreement version \
                 accepts one upload",
                status.rows_uploaded, ctx.party
            )));
        }
        return Ok((status, stored));
    }
    if stored > total_batches {
        return Err(PartyError::Refused(format!(
            "the room holds {stored} batches for {} but this input makes only {total_batches}: the input changed since \
             the first upload; an agreement version accepts one upload (later changes are erasures)",
            ctx.party
        )));
    }
    send_batches(
        ctx,
        state,
        &mut conn,
        shuffled,
        (stored..total_batches).collect(),
        Some((total_batches, total_rows)),
    )
    .await?;
    let status = conn.psi_status().await?;
    if !status.upload_complete {
        return Err(PartyError::Unreachable {
            url: ctx.room_url.clone(),
            reason: "the upload stream ended before the room stored the completion".into(),
            gave_up: false,
        });
    }
    Ok((status, stored))
}

/// Hashes, blinds, signs and streams the batches `numbers` (ascending) of `shuffled`, then
/// the completion statement `complete` (batches, rows) if given; returns the room's answer.
/// Hash-and-blind runs on all cores in a blocking thread, one batch ahead of the network.
pub(super) async fn send_batches(
    ctx: &PartyContext,
    state: &State,
    conn: &mut Connection,
    shuffled: &std::sync::Arc<Shuffled>,
    numbers: Vec<u64>,
    complete: Option<(u64, u64)>,
) -> Result<v1::UploadResponse, PartyError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<v1::UploadMessage, PartyError>>(4);
    let secrets = state.secrets()?;
    let domain = HashDomain::new(ctx.agreement.id(), ctx.identifier_kind());
    let fp = ctx.fingerprint();
    let party = ctx.party.clone();
    let key_bytes = ctx.key.to_key_file();
    let manifest = ctx.agreement.manifest().clone();
    let shuffled = shuffled.clone();
    let bar = ctx.bar(numbers.len() as u64, "upload batches");
    let producer_bar = bar.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let key = match SecretKey::from_key_file(key_bytes.as_bytes()) {
            Ok(k) => k,
            Err(e) => {
                let _ = tx.blocking_send(Err(PartyError::Internal(e.to_string())));
                return;
            }
        };
        let mut batches = None;
        for want in numbers {
            // One reader for each run of consecutive numbers (a lease may skip some).
            let batch = (|| {
                let reader = match &mut batches {
                    Some((next, reader)) if *next == want => reader,
                    _ => &mut batches.insert((want, shuffled.batches_from(want)?)).1,
                };
                let batch = reader.next_batch()?;
                if let Some((next, _)) = &mut batches {
                    *next = want + 1;
                }
                batch.ok_or_else(|| {
                    PartyError::Internal(format!("batch {want} is beyond this upload"))
                })
            })();
            let (n, rows, handles) = match batch {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            let rows = rows.as_slice();
            let handles = handles.to_vec();
            let ids: Vec<&[u8]> = rows.iter().map(|r| r.identifier.as_bytes()).collect();
            let points: Vec<u8> = accord_psi::hash_and_blind(&secrets.psi, &domain, &ids)
                .into_iter()
                .flatten()
                .collect();
            let columns = proto_columns(&manifest, &party, rows);
            let salt = batch_salt(&secrets.shuffle_seed, fp.as_bytes(), n);
            let rows_digest = accord_proto::rows_digest(&salt, &handles, &columns);
            let message =
                accord_proto::signed::upload_batch(fp.as_bytes(), &party, n, &points, &rows_digest);
            let signature = key.sign(Purpose::UploadBatch, &message).to_bytes().to_vec();
            let batch = v1::UploadBatch {
                batch_number: n,
                handles,
                points,
                columns,
                signature,
                salt: salt.to_vec(),
            };
            if tx
                .blocking_send(Ok(v1::UploadMessage {
                    kind: Some(v1::upload_message::Kind::Batch(batch)),
                }))
                .is_err()
            {
                return;
            }
            producer_bar.inc(1);
        }
        let Some((total_batches, total_rows)) = complete else {
            return;
        };
        let message =
            accord_proto::signed::upload_complete(fp.as_bytes(), &party, total_batches, total_rows);
        let complete = v1::UploadComplete {
            batches: total_batches,
            rows: total_rows,
            signature: key
                .sign(Purpose::UploadComplete, &message)
                .to_bytes()
                .to_vec(),
        };
        let _ = tx.blocking_send(Ok(v1::UploadMessage {
            kind: Some(v1::upload_message::Kind::Complete(complete)),
        }));
    });
    let (err_tx, mut err_rx) = tokio::sync::oneshot::channel::<PartyError>();
    let mut err_tx = Some(err_tx);
    let stream =
        tokio_stream::wrappers::ReceiverStream::new(rx).map_while(move |item| match item {
            Ok(m) => Some(m),
            Err(e) => {
                if let Some(tx) = err_tx.take() {
                    let _ = tx.send(e);
                }
                None
            }
        });
    let mut psi = PsiClient::new(conn.channel())
        .max_decoding_message_size(accord_proto::limits::MAX_MESSAGE_BYTES);
    let response = psi.upload(conn.request(stream)).await;
    producer.abort();
    bar.finish_and_clear();
    if let Ok(e) = err_rx.try_recv() {
        return Err(e);
    }
    let response = response.map_err(|s| conn.error(s))?.into_inner();
    conn.check_head(response.head.as_ref())?;
    Ok(response)
}

fn proto_columns(
    manifest: &accord_agreement::Manifest,
    party: &str,
    rows: &[PreparedRow],
) -> Vec<v1::Column> {
    let Some(p) = manifest.parties.get(party) else {
        return Vec::new();
    };
    p.contributes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let values = match c.role {
                accord_agreement::ColumnRole::Dimension => {
                    let mut t = v1::TextValues::default();
                    for r in rows {
                        let v = match &r.values[i] {
                            Value::Text(v) => v.clone(),
                            Value::Number(_) => None,
                        };
                        t.present.push(v.is_some());
                        t.values.push(v.unwrap_or_default());
                    }
                    if t.present.iter().all(|p| *p) {
                        t.present.clear();
                    }
                    v1::column::Values::Text(t)
                }
                accord_agreement::ColumnRole::Metric { .. } => {
                    let mut x = v1::NumberValues::default();
                    for r in rows {
                        let v = match &r.values[i] {
                            Value::Number(v) => *v,
                            Value::Text(_) => None,
                        };
                        x.present.push(v.is_some());
                        x.values.push(v.unwrap_or_default());
                    }
                    if x.present.iter().all(|p| *p) {
                        x.present.clear();
                    }
                    v1::column::Values::Number(x)
                }
            };
            v1::Column {
                name: c.column.clone(),
                values: Some(values),
            }
        })
        .collect()
}
