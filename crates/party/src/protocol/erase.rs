//! `party erase`: turn identifiers into this party's handles and ask the room to erase them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use accord_agreement::sig::Purpose;
use accord_proto::v1::{self, psi_client::PsiClient};
use accord_psi::HANDLE_LEN;

use super::PartyContext;
use crate::error::PartyError;
use crate::input::{self, InputOptions};

/// What an erasure did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EraseOutcome {
    /// Identifiers read from the file.
    pub requested: u64,
    /// Lines that were not a valid identifier (such an identifier is never uploaded).
    pub invalid: u64,
    /// Identifiers erased at the room before (this state directory's erasure log).
    pub already_erased: u64,
    /// Rows the room erased now (receipt verified).
    pub erased: u64,
    /// Identifiers this state directory cannot account for: not in its upload record, so
    /// either never uploaded (no consent, not in the input) or uploaded from another state
    /// directory. (line number, identifier as written). The room was not asked about them.
    pub unaccounted: Vec<(usize, String)>,
}

/// Erases the customers listed in `ids_file` (one identifier per line) from the room.
///
/// Every identifier ends up accounted for (erased now, erased before, or invalid) or listed
/// in [`EraseOutcome::unaccounted`], which the CLI turns into a non-zero exit.
pub async fn erase(ctx: &PartyContext, ids_file: &Path) -> Result<EraseOutcome, PartyError> {
    erase_from(ctx, &EraseSource::Ids(ids_file.to_owned())).await
}

/// Where the customers to erase come from.
#[derive(Debug, Clone)]
pub enum EraseSource {
    /// A file of identifiers, one per line.
    Ids(PathBuf),
    /// The party's customer file (CSV or Parquet, read with the upload's rules): every
    /// customer whose winning row no longer consents is erased — consent withdrawal.
    WithdrawnConsent {
        /// The customer file.
        input: PathBuf,
        /// How to read it.
        read: InputOptions,
    },
}

/// The identifiers an erasure source names, as (line, text as written).
pub(crate) fn source_lines(
    manifest: &accord_agreement::Manifest,
    party: &str,
    source: &EraseSource,
) -> Result<Vec<(usize, String)>, PartyError> {
    Ok(match source {
        EraseSource::Ids(path) => std::fs::read_to_string(path)
            .map_err(|e| PartyError::BadInput(format!("could not read {}: {e}", path.display())))?
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l.to_owned()))
            .collect(),
        EraseSource::WithdrawnConsent { input, read } => {
            input::withdrawn(input, manifest, party, read)?
                .into_iter()
                .map(|(line, id)| (line as usize, id))
                .collect()
        }
    })
}

/// Erases customers from `source`; see [`erase`]. Every valid identifier is also remembered
/// party-wide (`rights::ErasureMemory`), so no later upload brings the customer back.
pub async fn erase_from(
    ctx: &PartyContext,
    source: &EraseSource,
) -> Result<EraseOutcome, PartyError> {
    let lines = {
        let (manifest, party, source) = (
            ctx.agreement.manifest().clone(),
            ctx.party.clone(),
            source.clone(),
        );
        tokio::task::spawn_blocking(move || source_lines(&manifest, &party, &source))
            .await
            .map_err(|e| PartyError::Internal(e.to_string()))??
    };
    let state = ctx.state()?;
    let secrets = state.secrets()?;
    let kind = ctx.identifier_kind();
    let region = ctx.agreement.manifest().default_region.clone();
    let uploaded = state.uploaded_handles()?;
    let erased_before = state.erased_handles()?;
    let mut outcome = EraseOutcome::default();
    let mut wanted: Vec<[u8; HANDLE_LEN]> = Vec::new();
    let mut seen = HashSet::new();
    let mut valid = Vec::new();
    for (line_number, line) in &lines {
        outcome.requested += 1;
        match accord_psi::normalize(kind, line, region.as_deref()) {
            Ok(Some(id)) => {
                let h = secrets.handle_key.handle(ctx.agreement.id(), id.as_bytes());
                valid.push(id);
                if !seen.insert(h) {
                    continue;
                }
                if erased_before.contains(&h) {
                    outcome.already_erased += 1;
                } else if uploaded.contains(&h) {
                    wanted.push(h);
                } else {
                    outcome
                        .unaccounted
                        .push((*line_number, line.trim().to_owned()));
                }
            }
            _ => outcome.invalid += 1,
        }
    }
    drop(secrets);
    // Remembered before the room is asked: if the call fails, the customer is still held
    // back from every later upload.
    crate::rights::ErasureMemory::open(&ctx.state_root)?.remember_erased(
        kind,
        &valid,
        chrono::Utc::now(),
    )?;
    if wanted.is_empty() {
        return Ok(outcome);
    }
    let mut conn = ctx.connect(&state).await?;
    for chunk in wanted.chunks(accord_proto::limits::MAX_ERASE_HANDLES) {
        let handles: Vec<u8> = chunk.iter().flatten().copied().collect();
        let mut session_retries = 0;
        let response = loop {
            let mut psi = PsiClient::new(conn.channel());
            match psi
                .erase(conn.request(v1::EraseRequest {
                    handles: handles.clone(),
                }))
                .await
                .map_err(|s| conn.error(s))
            {
                Ok(r) => break r.into_inner(),
                // The call never reached the erasure (no session): re-authenticate and resend.
                Err(PartyError::SessionEnded { .. }) if session_retries < 3 => {
                    session_retries += 1;
                    conn = ctx.connect(&state).await?;
                }
                Err(e) => return Err(e),
            }
        };
        check_receipt(&mut conn, ctx, &handles, &response)?;
        state.record_erased(&handles)?;
        state.log_event(&crate::rights::Event::Erased {
            at: chrono::Utc::now(),
            handles: chunk.iter().map(hex::encode).collect(),
        })?;
        outcome.erased += response.erased;
    }
    Ok(outcome)
}

/// Checks the room's signed receipt for erasing `handles` (and the head it came with).
fn check_receipt(
    conn: &mut crate::Connection,
    ctx: &PartyContext,
    handles: &[u8],
    response: &v1::EraseResponse,
) -> Result<(), PartyError> {
    conn.check_head(response.head.as_ref())?;
    let receipt = accord_proto::signed::erasure_receipt(
        ctx.fingerprint().as_bytes(),
        &ctx.party,
        response.erased,
        handles,
    );
    let sig = <[u8; 64]>::try_from(response.receipt_signature.as_slice())
        .map_err(|_| PartyError::Refused("the erasure receipt signature is not 64 bytes".into()))?;
    conn.room_key()
        .verify(
            Purpose::ErasureReceipt,
            &receipt,
            &accord_agreement::Signature::from_bytes(&sig),
        )
        .map_err(|_| PartyError::Refused("the room's erasure receipt does not verify".into()))
}

/// After the room declared that it went back in time (restored from an older backup), the
/// erasures this party made after that backup are not in it: sends every handle this state
/// erased again. Handles the room does not hold (erased before the backup, or uploaded after
/// it and not sent again) are left out by halving a refused group until each is known or
/// alone. Returns the rows the room erased again.
pub(crate) async fn reapply(
    ctx: &PartyContext,
    state: &crate::state::State,
    conn: &mut crate::Connection,
) -> Result<u64, PartyError> {
    let mut erased: Vec<[u8; HANDLE_LEN]> = state.erased_handles()?.into_iter().collect();
    erased.sort_unstable();
    let mut groups: Vec<Vec<[u8; HANDLE_LEN]>> = erased
        .chunks(accord_proto::limits::MAX_ERASE_HANDLES)
        .map(<[_]>::to_vec)
        .collect();
    let mut again = 0u64;
    while let Some(group) = groups.pop() {
        let handles: Vec<u8> = group.iter().flatten().copied().collect();
        let mut psi = PsiClient::new(conn.channel());
        match psi
            .erase(conn.request(v1::EraseRequest {
                handles: handles.clone(),
            }))
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                check_receipt(conn, ctx, &handles, &r)?;
                again += r.erased;
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                if group.len() > 1 {
                    let (a, b) = group.split_at(group.len() / 2);
                    groups.push(a.to_vec());
                    groups.push(b.to_vec());
                }
            }
            Err(status) => return Err(conn.error(status)),
        }
    }
    if again > 0 {
        tracing::warn!(
            party = %ctx.party,
            rows = again,
            "the room went back in time: erased {again} rows again that its backup still held"
        );
    }
    Ok(again)
}
