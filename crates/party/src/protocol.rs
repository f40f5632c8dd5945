//! The party's side of the PSI protocol (DESIGN §3): upload, blind the partner's batches,
//! status, erasure. `accord-psi` does the cryptography; this module moves bytes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use accord_agreement::{Fingerprint, SecretKey, VerifiedAgreement, sig::Purpose};
use accord_proto::refusal::WorkRefusalCode;
use accord_proto::v1::{self, psi_client::PsiClient};
use accord_psi::{HANDLE_LEN, HashDomain, IdentifierKind};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use sha2::{Digest, Sha256};

use crate::client::{ClientTls, Connection, Principal, with_retries};
use crate::error::PartyError;
use crate::input::{self, InputOptions, InputReport, PreparedRow, Value};
use crate::state::State;

/// Rows per upload batch (the room accepts up to 8192).
pub const DEFAULT_BATCH_ROWS: usize = 4096;

/// Everything a party command needs.
#[derive(Debug)]
pub struct PartyContext {
    /// The verified agreement.
    pub agreement: VerifiedAgreement,
    /// This party's name in it.
    pub party: String,
    /// This party's Ed25519 key.
    pub key: SecretKey,
    /// The state root (`--state DIR`).
    pub state_root: PathBuf,
    /// The room URL.
    pub room_url: String,
    /// TLS settings for an `https://` room (`--ca`, `--client-cert`, `--client-key`).
    pub tls: ClientTls,
    /// Where progress bars go (None: a bar per step on stderr, hidden when not a terminal).
    pub progress: Option<MultiProgress>,
}

impl PartyContext {
    /// Checks that the party is in the agreement and that the key is the one it names.
    pub fn new(
        agreement: VerifiedAgreement,
        party: &str,
        key: SecretKey,
        state_root: PathBuf,
        room_url: &str,
    ) -> Result<Self, PartyError> {
        let m = agreement.manifest();
        let p = m.parties.get(party).ok_or_else(|| {
            PartyError::Invalid(format!(
                "{party:?} is not a party of agreement {} (parties: {})",
                m.id,
                m.parties.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        if p.public_key != key.public_key() {
            return Err(PartyError::Invalid(format!(
                "this key ({}) is not the key agreement {} names for {party} ({}): use {party}'s key file",
                key.public_key(),
                m.id,
                p.public_key
            )));
        }
        Ok(Self {
            agreement,
            party: party.to_owned(),
            key,
            state_root,
            room_url: room_url.to_owned(),
            tls: ClientTls::default(),
            progress: None,
        })
    }

    fn partner(&self) -> Result<String, PartyError> {
        self.agreement
            .manifest()
            .parties
            .keys()
            .find(|p| **p != self.party)
            .cloned()
            .ok_or_else(|| PartyError::Invalid("the agreement has no partner party".into()))
    }

    fn fingerprint(&self) -> Fingerprint {
        self.agreement.fingerprint()
    }

    fn state(&self) -> Result<State, PartyError> {
        State::open(&self.state_root, self.agreement.id(), self.fingerprint())
    }

    fn identifier_kind(&self) -> IdentifierKind {
        self.agreement.manifest().identifier
    }

    async fn connect(&self, state: &State) -> Result<Connection, PartyError> {
        let fp = self.fingerprint().to_string();
        // The room must present the key the agreement's [room] section names.
        let room = crate::RoomIdentity::of(self.agreement.manifest());
        let conn = with_retries("authenticate", || {
            Connection::open_checked(
                &self.room_url,
                &self.tls,
                &fp,
                Principal::Party(&self.party),
                &self.key,
                Some(&room),
            )
        })
        .await?;
        state.pin_room_key(conn.room_key())?;
        Ok(conn)
    }

    fn bar(&self, len: u64, message: &str) -> ProgressBar {
        let bar = ProgressBar::new(len).with_message(format!("{}: {message}", self.party));
        bar.set_style(
            ProgressStyle::with_template("{msg:32} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        match &self.progress {
            Some(m) => m.add(bar),
            None => bar,
        }
    }
}

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

struct Prepared {
    handles: Vec<[u8; HANDLE_LEN]>,
    rows: Vec<PreparedRow>,
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
    let (rows, report) = {
        let path = options.input.clone();
        let manifest = m.clone();
        let party = ctx.party.clone();
        let read = options.read.clone();
        tokio::task::spawn_blocking(move || input::read(&path, &manifest, &party, &read))
            .await
            .map_err(|e| PartyError::Internal(e.to_string()))??
    };
    // A customer this party erased before (under any agreement) stays erased, even when the
    // export still says "consent: true"; only a recorded renewal lifts it (rights.rs).
    let memory = crate::rights::ErasureMemory::open(&ctx.state_root)?;
    let kind = ctx.identifier_kind();
    let read_rows = rows.len();
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| memory.held_back(kind, &r.identifier).is_none())
        .collect();
    let held_back_erased = (read_rows - rows.len()) as u64;
    drop(memory);
    let max_rows = m.parties[&ctx.party].max_rows;
    if rows.len() as u64 > max_rows {
        return Err(PartyError::Refused(format!(
            "{} rows are ready to upload but the agreement caps {} at {max_rows} rows (max_rows): the upload would be \
             refused; ask legal for a new agreement version with a higher cap",
            rows.len(),
            ctx.party
        )));
    }
    if rows.is_empty() {
        return Err(PartyError::Refused(format!(
            "no row of {} can be uploaded (see the report):\n{report}",
            options.input.display()
        )));
    }
    let state = ctx.state()?;
    let secrets = state.secrets()?;
    let agreement_id = ctx.agreement.id().to_owned();
    let mut prepared = Prepared {
        handles: rows
            .iter()
            .map(|r| {
                secrets
                    .handle_key
                    .handle(&agreement_id, r.identifier.as_bytes())
            })
            .collect(),
        rows,
    };
    // A fixed per-agreement seed: a resumed upload shuffles identically and sends the same batches.
    let mut rng = rand::rngs::StdRng::from_seed(*secrets.shuffle_seed);
    let mut order: Vec<usize> = (0..prepared.rows.len()).collect();
    order.shuffle(&mut rng);
    prepared = Prepared {
        handles: order.iter().map(|&i| prepared.handles[i]).collect(),
        rows: order.iter().map(|&i| prepared.rows[i].clone()).collect(),
    };
    let all_handles: Vec<u8> = prepared.handles.iter().flatten().copied().collect();
    drop(secrets);
    check_same_upload(ctx, &state, &all_handles).await?;
    state.remember_agreement(ctx.agreement.text())?;
    state.begin_upload(&all_handles)?;

    let total_rows = prepared.rows.len() as u64;
    let total_batches = prepared.rows.len().div_ceil(batch_rows) as u64;
    let prepared = std::sync::Arc::new(prepared);
    let mut already_stored = None;
    let mut attempt = 0;
    let mut restarts = 0;
    let status = loop {
        attempt += 1;
        let result = upload_attempt(
            ctx,
            &state,
            &prepared,
            batch_rows,
            total_batches,
            total_rows,
        )
        .await;
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
    // The room acknowledged the completion: only now does the record say "uploaded".
    state.finish_upload(&all_handles)?;
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
) -> Result<(), PartyError> {
    let record = state.upload_record()?;
    let rows = |b: &[u8]| b.len() / accord_proto::limits::HANDLE_LEN;
    if let Some(done) = &record.done {
        if done.as_slice() == handles {
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
    prepared: &std::sync::Arc<Prepared>,
    batch_rows: usize,
    total_batches: u64,
    total_rows: u64,
) -> Result<(v1::StatusResponse, u64), PartyError> {
    let mut conn = ctx.connect(state).await?;
    let mut psi = PsiClient::new(conn.channel())
        .max_decoding_message_size(accord_proto::limits::MAX_MESSAGE_BYTES);
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
    // Hash-and-blind runs on all cores in a blocking thread, one batch ahead of the network.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<v1::UploadMessage, PartyError>>(4);
    let secrets = state.secrets()?;
    let domain = HashDomain::new(ctx.agreement.id(), ctx.identifier_kind());
    let fp = ctx.fingerprint();
    let party = ctx.party.clone();
    let key_bytes = ctx.key.to_key_file();
    let manifest = ctx.agreement.manifest().clone();
    let prepared = prepared.clone();
    let bar = ctx.bar(total_batches - stored, "upload batches");
    let producer_bar = bar.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let key = match SecretKey::from_key_file(key_bytes.as_bytes()) {
            Ok(k) => k,
            Err(e) => {
                let _ = tx.blocking_send(Err(PartyError::Internal(e.to_string())));
                return;
            }
        };
        for n in stored..total_batches {
            let start = n as usize * batch_rows;
            let end = (start + batch_rows).min(prepared.rows.len());
            let rows = &prepared.rows[start..end];
            let ids: Vec<&[u8]> = rows.iter().map(|r| r.identifier.as_bytes()).collect();
            let points: Vec<u8> = accord_psi::hash_and_blind(&secrets.psi, &domain, &ids)
                .into_iter()
                .flatten()
                .collect();
            let handles: Vec<u8> = prepared.handles[start..end]
                .iter()
                .flatten()
                .copied()
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
    let response = psi.upload(conn.request(stream)).await;
    producer.abort();
    bar.finish_and_clear();
    if let Ok(e) = err_rx.try_recv() {
        return Err(e);
    }
    let response = response.map_err(|s| conn.error(s))?.into_inner();
    conn.check_head(response.head.as_ref())?;
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

use tokio_stream::StreamExt as _;

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
    loop {
        let work = fetch_work(&mut psi, &conn).await?;
        if !work.is_empty() {
            idle = Duration::from_millis(50);
            bar.inc_length(work.len() as u64);
            let mut log = state.blinded(&partner)?;
            let mut replies = Vec::with_capacity(work.len() + 1);
            replies.push(commitment.clone());
            for batch in work {
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
                if matches!(reply.kind, Some(v1::return_work_message::Kind::Blinded(_))) {
                    blinded_total += 1;
                }
                replies.push(reply);
                bar.inc(1);
            }
            let response = psi
                .return_work(conn.request(futures::stream::iter(replies)))
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            conn.check_head(response.head.as_ref())?;
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
            return Ok((blinded_total, status));
        }
        tokio::time::sleep(idle).await;
        idle = (idle * 2).min(Duration::from_millis(500));
    }
}

async fn fetch_work(
    psi: &mut PsiClient<tonic::transport::Channel>,
    conn: &Connection,
) -> Result<Vec<v1::WorkBatch>, PartyError> {
    let mut stream = psi
        .fetch_work(conn.request(v1::FetchWorkRequest { max_batches: 16 }))
        .await
        .map_err(|s| conn.error(s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(b) = stream.message().await.map_err(|s| conn.error(s))? {
        out.push(b);
    }
    Ok(out)
}

/// The salt of batch `n`: `SHA-256("accord/v2/batch-salt" ‖ 0x00 ‖ shuffle_seed ‖
/// fingerprint ‖ u64be(n))`. Secret (the shuffle seed never leaves the state directory) and
/// deterministic, so a resumed upload sends byte-identical batches.
fn batch_salt(seed: &[u8; 32], fingerprint: &[u8; 32], n: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"accord/v2/batch-salt\0");
    h.update(seed);
    h.update(fingerprint);
    h.update(n.to_be_bytes());
    h.finalize().into()
}

/// Refuses to go on when the partner returned blinded batches of this party's upload with
/// proofs that did not verify: waiting would never end, and the owners must know.
fn check_partner_proofs(status: &v1::StatusResponse) -> Result<(), PartyError> {
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
async fn blind_one(
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

/// This party's status at the room (retried with backoff on transient failures).
pub async fn status(ctx: &PartyContext) -> Result<v1::StatusResponse, PartyError> {
    with_retries("status", || status_once(ctx)).await
}

async fn status_once(ctx: &PartyContext) -> Result<v1::StatusResponse, PartyError> {
    let state = ctx.state()?;
    let mut conn = ctx.connect(&state).await?;
    conn.psi_status().await
}

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
    let fp = ctx.fingerprint();
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
        conn.check_head(response.head.as_ref())?;
        let receipt = accord_proto::signed::erasure_receipt(
            fp.as_bytes(),
            &ctx.party,
            response.erased,
            &handles,
        );
        let sig = <[u8; 64]>::try_from(response.receipt_signature.as_slice()).map_err(|_| {
            PartyError::Refused("the erasure receipt signature is not 64 bytes".into())
        })?;
        conn.room_key()
            .verify(
                Purpose::ErasureReceipt,
                &receipt,
                &accord_agreement::Signature::from_bytes(&sig),
            )
            .map_err(|_| {
                PartyError::Refused("the room's erasure receipt does not verify".into())
            })?;
        state.record_erased(&handles)?;
        state.log_event(&crate::rights::Event::Erased {
            at: chrono::Utc::now(),
            handles: chunk.iter().map(hex::encode).collect(),
        })?;
        outcome.erased += response.erased;
    }
    Ok(outcome)
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod defence_tests;
