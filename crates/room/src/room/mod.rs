//! The room's state and every operation of its services, independent of gRPC.
//!
//! Ordering invariant (DESIGN §2): revocation, query admission and result release are
//! ordered by one per-agreement `RwLock`. A query holds the read side from admission until
//! its result bytes are built; revocation and expiry take the write side, so no query starts,
//! and no result leaves, after a revocation is acknowledged.

mod lifecycle;
mod login;
mod psi;
mod query;
mod seal;
pub(crate) mod tombstones;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use accord_agreement::{Fingerprint, PublicKey, SecretKey, Signature, VerifiedAgreement};
use accord_engine::Engine;
use accord_proto::limits::NONCE_LEN;
use chrono::Utc;
use tokio::sync::RwLock;

use crate::audit::{Actor, AuditLog, Event, Head};
use crate::auth::{AuthState, Role, Session};
use crate::decoded::DecodedInputs;
use crate::error::{Result, RoomError};
use crate::ledger::Ledgers;
use crate::limits::Limits;
use crate::registration::Registration;
use crate::store::AgreementStore;

pub use query::QueryResult;
pub use seal::table_spec;
pub use tombstones::{EndReason, Tombstone};

/// Where an agreement stands.
#[derive(Debug)]
pub(crate) struct Live {
    /// None once the data is deleted.
    store: Option<AgreementStore>,
    engine: Option<Arc<Engine>>,
    withheld: Vec<(String, String)>,
}

/// One registered agreement version.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) agreement: VerifiedAgreement,
    audit: Mutex<AuditLog>,
    live: Arc<RwLock<Live>>,
}

/// The agreements in force and the tombstones of ended ones. An id is not a global name:
/// several agreements in force may share one when their party keys are unrelated; a new
/// version replaces one only when every party key of the version in force signed it.
#[derive(Debug, Default)]
struct Registry {
    by_fingerprint: HashMap<Fingerprint, Arc<Slot>>,
    tombstones: BTreeMap<String, Tombstone>,
}

/// The refusal every caller gets before proving a key the agreement names: the same words
/// whether the agreement exists, ended, or never existed (issue 11, §5).
pub const NOT_AUTHORIZED: &str = "not authorized: this room has no agreement in force for this id or fingerprint that names \
this key for this role, or the signature does not verify; check --agreement, --key and the room URL";

fn not_authorized() -> RoomError {
    RoomError::PermissionDenied(NOT_AUTHORIZED.into())
}

/// The room.
#[derive(Debug, Clone)]
pub struct Room {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    data_dir: PathBuf,
    key: SecretKey,
    public_key: PublicKey,
    registry: Mutex<Registry>,
    auth: Mutex<AuthState>,
    limits: Limits,
    registration: Registration,
    ledgers: Ledgers,
    /// Owner batches decoded at upload, kept for verifying their partner's blinding proof.
    decoded: DecodedInputs,
    /// The room's signature binding its TLS certificate to its key (none without TLS).
    tls_binding: Mutex<Option<Signature>>,
    /// The query engine of every sealed agreement.
    engine: crate::QueryEngine,
    /// Numbers the Ballista engines' Parquet directories (`ballista/` in the data directory).
    #[cfg(feature = "ballista")]
    engine_dirs: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug; the data behind it is still
    // consistent on disk, so keep serving rather than poisoning the whole room.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The format of the room's data directory (agreements, audit logs, ledgers, tombstones,
/// the room key), in its `FORMAT` file. A newer format is refused at start-up; an older one
/// is migrated forward first. Format 2 keeps one file per tombstone in `tombstones/` where
/// format 1 kept them all in `tombstones.json` ([`tombstones::migrate_1_to_2`]).
pub const ROOM_FORMAT: u32 = 2;
const ROOM_FORMAT_TAG: &str = "accord-room-data";

impl Room {
    /// Opens the room's data directory (creating it), migrates it from an older format (or
    /// refuses a newer one), loads or creates the room key, and recovers every agreement.
    /// Agreements that expired while the room was down are deleted.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_with(data_dir, Limits::default(), Registration::Open)
    }

    /// [`Room::open`] with operator-tuned [`Limits`] (refused when out of range) and a rule
    /// for who may register agreements.
    pub fn open_with(data_dir: &Path, limits: Limits, registration: Registration) -> Result<Self> {
        Self::open_with_engine(
            data_dir,
            limits,
            registration,
            crate::QueryEngine::SingleNode,
        )
    }

    /// [`Room::open_with`] with the query engine of every sealed agreement (refused when
    /// this build does not have it).
    pub fn open_with_engine(
        data_dir: &Path,
        limits: Limits,
        registration: Registration,
        engine: crate::QueryEngine,
    ) -> Result<Self> {
        engine.check()?;
        limits.check()?;
        accord_fs::create_dir_all(data_dir, accord_fs::Access::OwnerOnly)?;
        migrate(data_dir)?;
        accord_fs::create_dir_all(&data_dir.join("agreements"), accord_fs::Access::OwnerOnly)?;
        accord_fs::create_dir_all(&data_dir.join("audit"), accord_fs::Access::OwnerOnly)?;
        accord_fs::create_dir_all(&tombstones::dir(data_dir), accord_fs::Access::OwnerOnly)?;
        // The Ballista engines' Parquet copies of sealed overlaps are rebuilt on recovery:
        // none left by an earlier run may outlive an erasure or an agreement's end.
        let ballista = data_dir.join(seal::BALLISTA_DIR);
        if ballista.exists() {
            accord_fs::remove_dir_all_durable(&ballista)?;
        }
        let key = crate::identity::load_or_create(data_dir)?;
        let public_key = key.public_key();
        let room = Room {
            inner: Arc::new(Inner {
                data_dir: data_dir.to_path_buf(),
                key,
                public_key,
                registry: Mutex::new(Registry::default()),
                auth: Mutex::new(AuthState::new(limits.clone())?),
                limits,
                registration,
                ledgers: Ledgers::new(data_dir),
                decoded: DecodedInputs::new(crate::limits::DECODED_INPUTS_BYTES),
                tls_binding: Mutex::new(None),
                engine,
                #[cfg(feature = "ballista")]
                engine_dirs: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        room.recover()?;
        Ok(room)
    }

    /// The room's data directory.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The room's public key (signs audit heads and receipts).
    pub fn public_key(&self) -> &PublicKey {
        &self.inner.public_key
    }

    /// Signs the binding of the TLS leaf certificate with this SHA-256 to the room key; the
    /// room sends it with every challenge (call once the TLS configuration is loaded).
    pub fn bind_tls_certificate(&self, cert_sha256: &[u8; 32]) {
        let signature = crate::identity::tls_binding(&self.inner.key, cert_sha256);
        *lock(&self.inner.tls_binding) = Some(signature);
    }

    fn agreement_dir(&self, fp: Fingerprint) -> PathBuf {
        self.inner.data_dir.join("agreements").join(fp.to_string())
    }

    fn audit_manifest_path(&self, fp: Fingerprint) -> PathBuf {
        self.inner
            .data_dir
            .join("audit")
            .join(format!("{fp}.manifest.toml"))
    }

    fn audit_path(&self, fp: Fingerprint) -> PathBuf {
        self.inner
            .data_dir
            .join("audit")
            .join(format!("{fp}.jsonl"))
    }

    fn audit(&self, slot: &Slot, actor: Actor, event: Event) -> Result<()> {
        lock(&slot.audit).append(actor, event, Utc::now())
    }

    /// The current signed head of an agreement's audit log.
    pub(crate) fn head(&self, slot: &Slot) -> Head {
        lock(&slot.audit).signed_head(&self.inner.key)
    }

    fn slot_of(&self, session: &Session) -> Result<Arc<Slot>> {
        let reg = lock(&self.inner.registry);
        reg.by_fingerprint
            .get(&session.fingerprint)
            .cloned()
            .ok_or_else(|| {
                RoomError::FailedPrecondition(
                    "the agreement of this session is no longer in force".into(),
                )
            })
    }

    /// Runs `f` on the blocking pool holding the agreement's write lock (taken here, in
    /// turn with every other writer): Parquet writes with fsync, point checks and proof
    /// verification do not stall the async workers. `f` runs to its end even if the caller
    /// goes away, as a synchronous write would.
    async fn blocking_write<T: Send + 'static>(
        &self,
        slot: &Arc<Slot>,
        f: impl FnOnce(&Room, &Slot, &mut Live) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let mut live = slot.live.clone().write_owned().await;
        let (room, slot) = (self.clone(), slot.clone());
        tokio::task::spawn_blocking(move || f(&room, &slot, &mut live))
            .await
            .map_err(|e| RoomError::Internal(format!("a storage task failed: {e}")))?
    }

    /// [`Room::blocking_write`] for readers: `f` reads files under the read lock.
    async fn blocking_read<T: Send + 'static>(
        &self,
        slot: &Arc<Slot>,
        f: impl FnOnce(&Live) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let live = slot.live.clone().read_owned().await;
        tokio::task::spawn_blocking(move || f(&live))
            .await
            .map_err(|e| RoomError::Internal(format!("a storage task failed: {e}")))?
    }

    /// The session a bearer token names (the transport adapters read the token from their
    /// request metadata; the room never sees the transport).
    pub fn session(&self, token: &str) -> Result<Session> {
        lock(&self.inner.auth).session(token)
    }

    /// See [`crate::auth::AuthState::claim_head_presentation`].
    pub fn claim_head_presentation(&self, token: &str) -> Result<()> {
        lock(&self.inner.auth).claim_head_presentation(token)
    }

    /// The agreement in force and the party name of a party's session; any other role is
    /// refused.
    pub(crate) fn party_call(&self, session: &Session) -> Result<(Arc<Slot>, String)> {
        let Role::Party(party) = session.role.clone() else {
            return Err(RoomError::PermissionDenied(
                "only a party of the agreement may do this".into(),
            ));
        };
        Ok((self.slot_of(session)?, party))
    }

    /// The agreement in force and the analyst name of an analyst's session; any other role
    /// is refused.
    pub(crate) fn analyst_call(&self, session: &Session) -> Result<(Arc<Slot>, String)> {
        let Role::Analyst(name) = session.role.clone() else {
            return Err(RoomError::PermissionDenied(
                "only an analyst named in the agreement may query; parties query through their analysts".into(),
            ));
        };
        Ok((self.slot_of(session)?, name))
    }
}

/// Checks the format of `data_dir` and migrates it forward to [`ROOM_FORMAT`], saying in the
/// log what it did. Runs before anything else reads or writes the directory.
fn migrate(data_dir: &Path) -> Result<()> {
    let check = accord_fs::check_format(
        data_dir,
        ROOM_FORMAT_TAG,
        "room data directory",
        ROOM_FORMAT,
    )?;
    match check {
        // `Marked` is for builds of format 1 only.
        accord_fs::FormatCheck::Created
        | accord_fs::FormatCheck::Current
        | accord_fs::FormatCheck::Marked => Ok(()),
        accord_fs::FormatCheck::Older(1) => {
            let done = tombstones::migrate_1_to_2(data_dir, ROOM_FORMAT_TAG)?;
            let dir = data_dir.display();
            if done.had_format_1_file {
                tracing::info!(
                    data_dir = %dir,
                    already_there = done.already_there,
                    "migrated the data directory from format 1 to 2: {} tombstones moved to tombstones/ \
                     (tombstones.json removed)",
                    done.moved
                );
            } else {
                tracing::info!(
                    data_dir = %dir,
                    "migrated the data directory from format 1 to 2: 0 tombstones moved to tombstones/ \
                     (there was no tombstones.json: no agreement had ended, or an interrupted \
                     migration had already moved them)"
                );
            }
            Ok(())
        }
        accord_fs::FormatCheck::Older(v) => Err(RoomError::FailedPrecondition(format!(
            "{} holds room data directory format {v}, which no Accord wrote: this build reads \
             formats 1 to {ROOM_FORMAT}; nothing was changed",
            data_dir.display()
        ))),
    }
}

fn ended() -> RoomError {
    RoomError::FailedPrecondition(
        "this agreement has ended (revoked, expired or superseded) and its data was deleted".into(),
    )
}

fn nonce(field: &'static str, bytes: &[u8]) -> Result<[u8; NONCE_LEN]> {
    accord_proto::fixed::<NONCE_LEN>(field, bytes)
        .map_err(|e| RoomError::InvalidArgument(e.to_string()))
}

fn signature(bytes: &[u8]) -> Result<Signature> {
    let raw = accord_proto::fixed::<64>("signature", bytes)
        .map_err(|e| RoomError::InvalidArgument(e.to_string()))?;
    Ok(Signature::from_bytes(&raw))
}

#[cfg(test)]
#[path = "tests.rs"]
pub(crate) mod revocation_tests;
