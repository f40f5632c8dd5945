//! `party upload --worker NAME`: one of several processes uploading one party's batches, each
//! batch number leased from the room (PROTOCOL.md, "Workers"). Every worker reads the same
//! input with a copy of the party's state, so all compute the same batches; the room hands
//! each batch number to one worker at a time, and gives a lost worker's batches to the next
//! worker that asks once its lease runs out.

use std::time::Duration;

use accord_proto::v1;

use super::PartyContext;
use super::shuffle::Shuffled;
use super::upload::send_batches;
use crate::error::PartyError;
use crate::state::State;

/// Batch numbers a worker asks for at a time: small, so a lost worker strands few batches
/// and the last ones spread over the workers; large enough that leasing costs nothing next
/// to blinding 8 × 4 096 rows.
pub const WORKER_LEASE_BATCHES: u32 = 8;

/// The longest a worker waits before asking again when the other workers hold every batch
/// left (it asks sooner when their lease would run out sooner).
const RECHECK: Duration = Duration::from_secs(1);

/// Uploads leased batches until the room holds every batch of the upload, then sends the
/// completion statement (any worker may; a repeat is a no-op). Returns the final status and
/// how many batches this worker sent.
pub(super) async fn work(
    ctx: &PartyContext,
    state: &State,
    shuffled: &std::sync::Arc<Shuffled>,
    (total_batches, total_rows): (u64, u64),
    digest: &[u8; 32],
    worker: &str,
) -> Result<(v1::StatusResponse, u64), PartyError> {
    let mut sent = 0u64;
    let mut failures = 0u32;
    let mut restarts = 0u32;
    loop {
        let upload = Upload {
            shuffled,
            total_batches,
            total_rows,
            digest,
            worker,
        };
        match round(ctx, state, &upload, &mut sent).await {
            Ok(status) => return Ok((status, sent)),
            Err(PartyError::SessionEnded { reason, .. })
                if restarts < crate::client::MAX_SESSION_RESTARTS =>
            {
                restarts += 1;
                tracing::info!(%reason, worker, "the session ended; authenticating again");
            }
            Err(e) if e.is_transient() && failures < 6 => {
                failures += 1;
                tracing::warn!(error = %e, worker, "upload interrupted; leasing again");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What a worker uploads.
struct Upload<'a> {
    shuffled: &'a std::sync::Arc<Shuffled>,
    total_batches: u64,
    total_rows: u64,
    digest: &'a [u8; 32],
    worker: &'a str,
}

/// One connection: lease, upload, repeat, until every batch is stored and the completion is.
async fn round(
    ctx: &PartyContext,
    state: &State,
    upload: &Upload<'_>,
    sent: &mut u64,
) -> Result<v1::StatusResponse, PartyError> {
    let Upload {
        shuffled,
        total_batches,
        total_rows,
        digest,
        worker,
    } = *upload;
    let mut conn = ctx.connect(state).await?;
    loop {
        // Leasing first: the room checks this worker's upload digest even once the upload is
        // complete, so a worker with another input or state never reports success.
        let lease = conn
            .lease(total_batches, WORKER_LEASE_BATCHES, digest, worker)
            .await?;
        if !lease.batch_numbers.is_empty() {
            tracing::info!(worker, batches = ?lease.batch_numbers, "leased batches");
            let n = lease.batch_numbers.len() as u64;
            send_batches(ctx, state, &mut conn, shuffled, lease.batch_numbers, None).await?;
            *sent += n;
            continue;
        }
        if lease.all_stored {
            let status = conn.psi_status().await?;
            if status.upload_complete {
                return Ok(status);
            }
            // Every batch is stored: close the upload (the same statement from another
            // worker is a no-op).
            send_batches(
                ctx,
                state,
                &mut conn,
                shuffled,
                Vec::new(),
                Some((total_batches, total_rows)),
            )
            .await?;
            continue;
        }
        // Other workers hold the batches left: wait for them to store them or to lose them.
        let wait = Duration::from_millis(lease.expires_in_ms).min(RECHECK);
        tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
    }
}
