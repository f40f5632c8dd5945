//! The party's side of the PSI protocol (DESIGN §3): upload, blind the partner's batches,
//! status, erasure. `accord-psi` does the cryptography; this module moves bytes.

use std::path::PathBuf;

use accord_agreement::{Fingerprint, SecretKey, VerifiedAgreement};
use accord_proto::v1;
use accord_psi::IdentifierKind;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::client::{ClientTls, Connection, Principal, with_retries};
use crate::error::PartyError;
use crate::state::State;

mod erase;
pub mod shuffle;
mod sync;
mod upload;
mod worker;

pub(crate) use erase::source_lines;
pub use erase::{EraseOutcome, EraseSource, erase, erase_from};
pub use sync::sync;
pub use upload::{UploadOptions, UploadOutcome, upload};

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

    /// Creates this party's state for the agreement (its secrets and the agreement text)
    /// without contacting the room, so that copies can be given to workers
    /// (`upload --worker`); returns the state directory. Idempotent.
    pub fn init_state(&self) -> Result<PathBuf, PartyError> {
        let state = self.state()?;
        drop(state.secrets()?);
        state.remember_agreement(self.agreement.text())?;
        Ok(state.dir().to_path_buf())
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
        let mut conn = conn;
        let went_back = conn
            .remember_heads(&self.state_root.join(crate::state::SEEN_HEADS_FILE))
            .await?;
        if went_back.is_some() {
            // The room was restored from a backup: the erasures made since are not in it.
            erase::reapply(self, state, &mut conn).await?;
        }
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

/// This party's status at the room (retried with backoff on transient failures).
pub async fn status(ctx: &PartyContext) -> Result<v1::StatusResponse, PartyError> {
    with_retries("status", || status_once(ctx)).await
}

async fn status_once(ctx: &PartyContext) -> Result<v1::StatusResponse, PartyError> {
    let state = ctx.state()?;
    let mut conn = ctx.connect(&state).await?;
    conn.psi_status().await
}

#[cfg(test)]
use sync::blind_one;
#[cfg(test)]
#[path = "protocol_tests.rs"]
mod defence_tests;
