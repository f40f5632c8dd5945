//! The room's state and every operation of its services, independent of gRPC.
//!
//! Ordering invariant (DESIGN §2): revocation, query admission and result release are
//! ordered by one per-agreement `RwLock`. A query holds the read side from admission until
//! its result bytes are built; revocation and expiry take the write side, so no query starts,
//! and no result leaves, after a revocation is acknowledged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use accord_agreement::{
    Aggregate, Fingerprint, PrivacyMode, PublicKey, Revocation, SecretKey, Signature,
    VerifiedAgreement, sig::Purpose,
};
use accord_engine::{AggregateKind, ColumnSpec, Engine, Role as EngineRole, TableSpec};
use accord_proto::limits::{
    HANDLE_LEN, MAX_AUDIT_PAGE_ENTRIES, MAX_BATCH_ROWS, MAX_TEXT_VALUE_LEN, NONCE_LEN, POINT_LEN,
};
use accord_proto::v1;
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;

use crate::audit::{Actor, AuditLog, Event};
use crate::auth::{AuthState, Role, Session, bearer};
use crate::error::{Result, RoomError};
use crate::ledger::{Balance, Ledgers, Price, Spend};
use crate::limits::Limits;
use crate::registration::Registration;
use crate::store::{
    AgreementStore, BatchInfo, BatchState, Completion, PartyColumns, PendingBatch, SealInfo,
};

/// Why a fingerprint may never be registered again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tombstone {
    /// The agreement id.
    pub agreement_id: String,
    /// The agreement version that ended.
    #[serde(default)]
    pub version: u64,
    /// "revoked", "expired" or "superseded".
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
    /// The party keys of the version that ended: a later version of the same lineage (signed
    /// by one of them) must carry a higher version. Empty in tombstones written before this
    /// field existed, which then count for every agreement with this id.
    #[serde(default)]
    pub party_keys: Vec<String>,
}

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
    live: RwLock<Live>,
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

/// Whether every party key of `old` signed `new` (as a party key of `new`, or in its
/// `[rotation_signatures]`): the only way `new` may supersede `old`.
fn endorsed_by_all(new: &accord_agreement::Manifest, old: &accord_agreement::Manifest) -> bool {
    old.parties
        .values()
        .all(|p| new.is_signed_by(&p.public_key))
}

/// The principal of `m` that `ask` names, if any: the key must be the one `m` gives that
/// role (and name, when a name was sent).
fn named_principal(m: &accord_agreement::Manifest, ask: &AuthAsk) -> Option<Role> {
    let key = &ask.key;
    match &ask.role {
        Role::Party(n) if n.is_empty() => m.party_of_key(key).map(|p| Role::Party(p.to_owned())),
        Role::Party(n) => m
            .parties
            .get(n)
            .filter(|p| p.public_key == *key)
            .map(|_| Role::Party(n.clone())),
        Role::Analyst(n) if n.is_empty() => {
            m.analyst_by_key(key).map(|a| Role::Analyst(a.name.clone()))
        }
        Role::Analyst(n) => m
            .analyst(n)
            .filter(|a| a.public_key == *key)
            .map(|a| Role::Analyst(a.name.clone())),
        Role::Auditor(n) => m
            .auditors
            .iter()
            .find(|a| a.public_key == *key && (n.is_empty() || a.name == *n))
            .map(|a| Role::Auditor(a.name.clone())),
    }
}

/// What a caller asks to prove, exactly as sent; nothing is looked up before the proof.
#[derive(Debug)]
struct AuthAsk {
    agreement: String,
    /// The role, with the name as sent ("" = the name the agreement gives the key).
    role: Role,
    key: PublicKey,
}

/// Longest agreement id or fingerprint text in an authentication request.
const MAX_SELECTOR_LEN: usize = 256;

impl AuthAsk {
    fn from_proto(
        agreement: &str,
        principal: Option<&v1::Principal>,
        public_key: &[u8],
    ) -> Result<Self> {
        let agreement = agreement.trim();
        if agreement.is_empty() || agreement.len() > MAX_SELECTOR_LEN {
            return Err(RoomError::InvalidArgument(format!(
                "agreement must be an agreement id or fingerprint of 1 to {MAX_SELECTOR_LEN} bytes"
            )));
        }
        let parse_key = |field: &'static str, bytes: &[u8]| -> Result<PublicKey> {
            let raw = accord_proto::fixed::<32>(field, bytes)
                .map_err(|e| RoomError::InvalidArgument(e.to_string()))?;
            PublicKey::from_bytes(&raw).map_err(|e| {
                RoomError::InvalidArgument(format!("{field} is not an Ed25519 public key: {e}"))
            })
        };
        let (role, key) = match principal.and_then(|p| p.kind.as_ref()) {
            Some(v1::principal::Kind::Party(n)) => {
                (Role::Party(n.clone()), parse_key("public_key", public_key)?)
            }
            Some(v1::principal::Kind::Analyst(n)) => (
                Role::Analyst(n.clone()),
                parse_key("public_key", public_key)?,
            ),
            Some(v1::principal::Kind::Auditor(n)) => (
                Role::Auditor(n.clone()),
                parse_key("public_key", public_key)?,
            ),
            Some(v1::principal::Kind::AnalystKey(k)) => {
                let key = parse_key("analyst_key", k)?;
                if !public_key.is_empty() && public_key != k.as_slice() {
                    return Err(RoomError::InvalidArgument(
                        "analyst_key and public_key differ: send one key".into(),
                    ));
                }
                (Role::Analyst(String::new()), key)
            }
            None => {
                return Err(RoomError::InvalidArgument(
                    "principal is missing: say whether you are a party, an analyst or an auditor"
                        .into(),
                ));
            }
        };
        if role.name().len() > 254 {
            return Err(RoomError::InvalidArgument(
                "the principal name is longer than 254 bytes".into(),
            ));
        }
        Ok(AuthAsk {
            agreement: agreement.to_owned(),
            role,
            key,
        })
    }

    /// The exact message the caller signs.
    fn message(
        &self,
        room_nonce: &[u8; 32],
        client_nonce: &[u8; 32],
        room_key: &[u8; 32],
    ) -> Vec<u8> {
        accord_proto::signed::auth_challenge(
            &self.agreement,
            self.role.kind(),
            self.role.name(),
            &self.key.to_bytes(),
            room_nonce,
            client_nonce,
            room_key,
        )
    }

    /// A digest of the request that the challenge is bound to (in place of a fingerprint,
    /// which is not looked up before the proof).
    fn scope(&self) -> Fingerprint {
        Fingerprint::from_bytes(Sha256::digest(self.message(&[0; 32], &[0; 32], &[0; 32])).into())
    }
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
    /// The room's signature binding its TLS certificate to its key (none without TLS).
    tls_binding: Mutex<Option<Signature>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug; the data behind it is still
    // consistent on disk, so keep serving rather than poisoning the whole room.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The columns of the `overlap` table for an agreement, minus withheld ones.
pub fn table_spec(agreement: &VerifiedAgreement, withheld: &[(String, String)]) -> TableSpec {
    let m = agreement.manifest();
    let mut columns = Vec::new();
    for party in PartyColumns::from_manifest(m) {
        for (column, role) in party.columns {
            let name = format!("{}_{column}", party.party);
            if withheld.iter().any(|(w, _)| *w == name) {
                continue;
            }
            columns.push(ColumnSpec { name, role });
        }
    }
    let aggregates = m
        .privacy
        .aggregates
        .iter()
        .map(|a| match a {
            Aggregate::Count => AggregateKind::Count,
            Aggregate::Sum => AggregateKind::Sum,
            Aggregate::Avg => AggregateKind::Avg,
        })
        .collect();
    TableSpec {
        columns,
        min_group_size: u64::from(m.min_group_size),
        aggregates,
    }
}

impl Room {
    /// Opens the room's data directory (creating it), loads or creates the room key, and
    /// recovers every agreement. Agreements that expired while the room was down are deleted.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_with(data_dir, Limits::default(), Registration::Open)
    }

    /// [`Room::open`] with operator-tuned [`Limits`] (refused when out of range) and a rule
    /// for who may register agreements.
    pub fn open_with(data_dir: &Path, limits: Limits, registration: Registration) -> Result<Self> {
        limits.check()?;
        accord_fs::create_dir_all(data_dir, accord_fs::Access::OwnerOnly)?;
        accord_fs::create_dir_all(&data_dir.join("agreements"), accord_fs::Access::OwnerOnly)?;
        accord_fs::create_dir_all(&data_dir.join("audit"), accord_fs::Access::OwnerOnly)?;
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
                tls_binding: Mutex::new(None),
            }),
        };
        room.recover()?;
        Ok(room)
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

    fn tombstones_path(&self) -> PathBuf {
        self.inner.data_dir.join("tombstones.json")
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

    fn recover(&self) -> Result<()> {
        let tomb_path = self.tombstones_path();
        if tomb_path.exists() {
            let bytes =
                std::fs::read(&tomb_path).map_err(|e| RoomError::io("read", &tomb_path, e))?;
            lock(&self.inner.registry).tombstones = serde_json::from_slice(&bytes)
                .map_err(|e| RoomError::Internal(format!("{}: {e}", tomb_path.display())))?;
        }
        let dir = self.inner.data_dir.join("agreements");
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| RoomError::io("list", &dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        let now = Utc::now();
        let mut stored = Vec::new();
        for path in entries {
            let manifest_path = path.join("manifest.toml");
            let Ok(text) = std::fs::read_to_string(&manifest_path) else {
                // Registration never finished (crash before the manifest landed): nothing was acknowledged.
                accord_fs::remove_dir_all_durable(&path)?;
                continue;
            };
            match accord_agreement::Manifest::parse(&text) {
                Ok(m) => stored.push((path, text, m)),
                Err(e) => {
                    tracing::error!(path = %manifest_path.display(), error = %e, "stored manifest no longer parses; leaving it untouched");
                }
            }
        }
        // A stored version that another stored version supersedes (same id, higher version,
        // signed by every one of its party keys) means the room stopped while superseding it.
        let superseded_by: Vec<Option<Fingerprint>> = stored
            .iter()
            .map(|(_, _, m)| {
                stored
                    .iter()
                    .map(|(_, _, n)| n)
                    .find(|n| n.id == m.id && n.version > m.version && endorsed_by_all(n, m))
                    .map(accord_agreement::Manifest::fingerprint)
            })
            .collect();
        for ((path, text, manifest), newer) in stored.into_iter().zip(superseded_by) {
            let fp = manifest.fingerprint();
            let ended = {
                let reg = lock(&self.inner.registry);
                reg.tombstones.contains_key(&fp.to_string())
            };
            if ended {
                // The room stopped after recording the end but before the data was gone.
                accord_fs::remove_dir_all_durable(&path)?;
                let mut audit = AuditLog::open(&self.audit_path(fp), fp)?;
                audit.append(Actor::Room, Event::DataDeleted, now)?;
                tracing::info!(agreement = %manifest.id, %fp, "finished deleting the data of an ended agreement");
                continue;
            }
            let (event, reason) = if manifest.valid_until <= now {
                (Event::Expired, "expired")
            } else if let Some(by) = newer {
                let by = by.to_string();
                (Event::Superseded { by }, "superseded")
            } else {
                match accord_agreement::verify(&text, now) {
                    Ok(agreement) => {
                        if let Err(e) = crate::identity::check_agreement_names(
                            &self.inner.public_key,
                            &agreement.manifest().room.public_key,
                            agreement.id(),
                        ) {
                            // The room key was replaced: clients would refuse this room anyway.
                            tracing::error!(path = %path.display(), error = %e, "stored agreement names another room key; not serving it");
                            continue;
                        }
                        self.load_slot(agreement)?;
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "stored agreement no longer verifies; not serving it");
                    }
                }
                continue;
            };
            let mut audit = AuditLog::open(&self.audit_path(fp), fp)?;
            audit.append(Actor::Room, event, now)?;
            self.add_tombstone(fp, &manifest, reason)?;
            accord_fs::remove_dir_all_durable(&path)?;
            audit.append(Actor::Room, Event::DataDeleted, now)?;
            tracing::info!(agreement = %manifest.id, %fp, reason, "agreement ended while the room was down; data deleted");
        }
        Ok(())
    }

    fn load_slot(&self, agreement: VerifiedAgreement) -> Result<Arc<Slot>> {
        let fp = agreement.fingerprint();
        let dir = self.agreement_dir(fp);
        let mut store =
            AgreementStore::open(&dir, PartyColumns::from_manifest(agreement.manifest()))?;
        let audit = AuditLog::open(&self.audit_path(fp), fp)?;
        let (engine, withheld) = match store.seal_info()? {
            Some(info) => {
                let snapshot = store.read_snapshot()?;
                // Finishes a minimization the room was stopped in (a no-op otherwise).
                store.discard_unmatched(&snapshot)?;
                let engine = build_engine(&agreement, &info.withheld, &snapshot)?;
                (Some(Arc::new(engine)), info.withheld)
            }
            None => (None, Vec::new()),
        };
        let live = Live {
            store: Some(store),
            engine,
            withheld,
        };
        let slot = Arc::new(Slot {
            agreement,
            audit: Mutex::new(audit),
            live: RwLock::new(live),
        });
        // The manifest stays next to the audit log after the data is deleted: it says who may
        // still read the log (the parties and auditors) once the agreement has ended.
        let copy = self.audit_manifest_path(fp);
        if !copy.exists() {
            accord_fs::write_atomic(&copy, slot.agreement.text().as_bytes())?;
        }
        lock(&self.inner.registry)
            .by_fingerprint
            .insert(fp, slot.clone());
        Ok(slot)
    }

    fn add_tombstone(
        &self,
        fp: Fingerprint,
        manifest: &accord_agreement::Manifest,
        reason: &str,
    ) -> Result<()> {
        let mut reg = lock(&self.inner.registry);
        reg.tombstones.insert(
            fp.to_string(),
            Tombstone {
                agreement_id: manifest.id.clone(),
                version: manifest.version,
                reason: reason.to_owned(),
                at: Utc::now().to_rfc3339(),
                party_keys: manifest
                    .parties
                    .values()
                    .map(|p| p.public_key.to_string())
                    .collect(),
            },
        );
        let bytes = serde_json::to_vec_pretty(&reg.tombstones)
            .map_err(|e| RoomError::Internal(e.to_string()))?;
        accord_fs::write_atomic(&self.tombstones_path(), &bytes)?;
        Ok(())
    }

    fn audit(&self, slot: &Slot, actor: Actor, event: Event) -> Result<()> {
        lock(&slot.audit).append(actor, event, Utc::now())
    }

    /// The current signed head of an agreement's audit log.
    pub(crate) fn head(&self, slot: &Slot) -> v1::SignedHead {
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

    /// Resolves the bearer token of a request to a session.
    pub fn session(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Session> {
        let token = bearer(metadata)?;
        lock(&self.inner.auth).session(&token)
    }

    // ---------------------------------------------------------------------------------------
    // Agreements

    /// Registers a signed agreement (see the `Agreements.Submit` contract).
    pub async fn submit(&self, text: &str) -> Result<v1::SubmitAgreementResponse> {
        if text.len() > accord_proto::limits::MAX_MANIFEST_BYTES {
            return Err(RoomError::InvalidArgument(
                "the manifest is larger than 256 KiB".into(),
            ));
        }
        let agreement = accord_agreement::verify(text, Utc::now()).map_err(|e| {
            RoomError::InvalidArgument(format!("the room refuses this agreement:\n{e}"))
        })?;
        crate::identity::check_agreement_names(
            &self.inner.public_key,
            &agreement.manifest().room.public_key,
            agreement.id(),
        )?;
        self.inner.registration.check(&agreement)?;
        let m = agreement.manifest();
        query_privacy(&agreement)?;
        if m.parties.len() != 2 {
            return Err(RoomError::FailedPrecondition(format!(
                "this room supports agreements between exactly two parties; this one has {}",
                m.parties.len()
            )));
        }
        let fp = agreement.fingerprint();
        let id = agreement.id().to_owned();
        let version = m.version;
        let old = {
            let reg = lock(&self.inner.registry);
            if let Some(t) = reg.tombstones.get(&fp.to_string()) {
                return Err(RoomError::FailedPrecondition(format!(
                    "agreement {id} with fingerprint {fp} was {} at {}; it can never be registered again \
                     (a changed agreement needs a new version signed by every party)",
                    t.reason, t.at
                )));
            }
            if let Some(slot) = reg.by_fingerprint.get(&fp) {
                return Ok(v1::SubmitAgreementResponse {
                    agreement_id: id,
                    version,
                    fingerprint: fp.to_string(),
                    already_registered: true,
                    superseded: String::new(),
                    head: Some(lock(&slot.audit).signed_head(&self.inner.key)),
                });
            }
            // Which agreement in force with this id, if any, this one replaces: only one that
            // every one of whose party keys signed it. One that only some of them signed is an
            // attempt to take it over; one that none of them signed is unrelated and coexists.
            let mut predecessor: Option<Arc<Slot>> = None;
            for slot in reg
                .by_fingerprint
                .values()
                .filter(|s| s.agreement.id() == id)
            {
                let old = slot.agreement.manifest();
                let unsigned: Vec<String> = old
                    .parties
                    .iter()
                    .filter(|(_, p)| !m.is_signed_by(&p.public_key))
                    .map(|(name, p)| format!("{name} ({})", p.public_key))
                    .collect();
                if unsigned.len() == old.parties.len() {
                    continue;
                }
                // Someone who signed this with a party key of the version in force: they may
                // learn what it lacks.
                if !unsigned.is_empty() {
                    return Err(RoomError::PermissionDenied(format!(
                        "agreement {id} version {} is in force and a new version replaces it only when every one of \
                         its party keys signs the new one; not signed by: {}. A party that changed its key signs \
                         with the old key too: accord agreement sign FILE --rotated-from OLD_KEYFILE",
                        old.version,
                        unsigned.join(", ")
                    )));
                }
                if version <= old.version {
                    return Err(RoomError::FailedPrecondition(format!(
                        "agreement {id} version {} is registered; a changed agreement must carry a higher \
                         version (this one says {version})",
                        old.version
                    )));
                }
                if predecessor.is_some() {
                    return Err(RoomError::FailedPrecondition(format!(
                        "this manifest is signed by the party keys of two agreements {id} in force; a new version \
                         replaces one agreement: revoke the other first"
                    )));
                }
                predecessor = Some(slot.clone());
            }
            // Every ended version of this lineage counts too: a new version must be newer
            // than all of them (an old version can never come back).
            let lineage = |t: &&Tombstone| {
                t.agreement_id == id
                    && (t.party_keys.is_empty()
                        || t.party_keys
                            .iter()
                            .any(|k| k.parse::<PublicKey>().is_ok_and(|k| m.is_signed_by(&k))))
            };
            let max_ended = reg
                .tombstones
                .values()
                .filter(lineage)
                .map(|t| t.version)
                .max();
            if let Some(v) = max_ended.filter(|v| version <= *v) {
                return Err(RoomError::FailedPrecondition(format!(
                    "agreement {id} version {v} of these parties has ended (revoked, expired or superseded); a new \
                     agreement of theirs under this id must carry a version higher than {v} (this one says {version})"
                )));
            }
            predecessor
        };
        let dir = self.agreement_dir(fp);
        accord_fs::create_dir_all(&dir, accord_fs::Access::OwnerOnly)?;
        accord_fs::write_atomic(&dir.join("manifest.toml"), agreement.text().as_bytes())?;
        let slot = self.load_slot(agreement)?;
        self.audit(
            &slot,
            Actor::Submitter,
            Event::AgreementRegistered {
                agreement_id: id.clone(),
                version,
            },
        )?;
        let mut superseded = String::new();
        if let Some(old) = old {
            let old_fp = old.agreement.fingerprint();
            self.end(
                &old,
                Actor::Room,
                Event::Superseded { by: fp.to_string() },
                "superseded",
            )
            .await?;
            superseded = old_fp.to_string();
        }
        tracing::info!(agreement = %id, version, %fp, "agreement registered");
        Ok(v1::SubmitAgreementResponse {
            agreement_id: id,
            version,
            fingerprint: fp.to_string(),
            already_registered: false,
            superseded,
            head: Some(self.head(&slot)),
        })
    }

    /// Ends an agreement version: waits for running queries, deletes its data, records a
    /// tombstone, and logs `event` then `data_deleted`.
    async fn end(&self, slot: &Arc<Slot>, actor: Actor, event: Event, reason: &str) -> Result<()> {
        let fp = slot.agreement.fingerprint();
        let mut live = slot.live.write().await;
        if live.store.is_none() {
            return Ok(());
        }
        self.audit(slot, actor, event)?;
        live.engine = None;
        live.store = None;
        // The tombstone first: if the room stops before the data is gone, recovery finds
        // the tombstone and finishes the deletion instead of serving the agreement again.
        self.add_tombstone(fp, slot.agreement.manifest(), reason)?;
        accord_fs::remove_dir_all_durable(&self.agreement_dir(fp))?;
        self.audit(slot, Actor::Room, Event::DataDeleted)?;
        lock(&self.inner.auth).end_sessions_for(fp);
        lock(&self.inner.registry).by_fingerprint.remove(&fp);
        tracing::info!(agreement = %slot.agreement.id(), %fp, reason, "agreement ended and its data deleted");
        Ok(())
    }

    /// Revokes an agreement with a revocation statement signed by one of its parties.
    pub async fn revoke(&self, text: &str) -> Result<v1::RevokeResponse> {
        if text.len() > accord_proto::limits::MAX_MANIFEST_BYTES {
            return Err(RoomError::InvalidArgument(
                "the revocation statement is larger than 256 KiB".into(),
            ));
        }
        let revocation = Revocation::from_toml(text).map_err(|e| {
            RoomError::InvalidArgument(format!("the revocation statement is malformed: {e}"))
        })?;
        // Unknown, ended or not signed by a party: the same refusal, so a revocation statement
        // cannot probe which agreements exist.
        let slot = lock(&self.inner.registry)
            .by_fingerprint
            .get(&revocation.fingerprint)
            .cloned()
            .filter(|s| revocation.verify(s.agreement.manifest()).is_ok())
            .ok_or_else(|| {
                RoomError::PermissionDenied(
                    "not authorized: no agreement in force in this room accepts this revocation (its fingerprint is \
                     unknown or has ended, or the party's signature does not verify)"
                        .into(),
                )
            })?;
        // The audit log survives the deletion; keep a handle on it for the receipt's head.
        self.end(
            &slot,
            Actor::Party(revocation.party.clone()),
            Event::Revoked {
                reason: revocation.reason.clone(),
            },
            "revoked",
        )
        .await?;
        let revoked_unix_ms = Utc::now().timestamp_millis();
        let fp = slot.agreement.fingerprint();
        let receipt = accord_proto::signed::revocation_receipt(
            fp.as_bytes(),
            revoked_unix_ms,
            &revocation.party,
        );
        Ok(v1::RevokeResponse {
            agreement_id: slot.agreement.id().to_owned(),
            fingerprint: fp.to_string(),
            revoked_unix_ms,
            receipt_signature: self
                .inner
                .key
                .sign(Purpose::RevocationReceipt, &receipt)
                .to_bytes()
                .to_vec(),
            head: Some(self.head(&slot)),
        })
    }

    /// Ends every agreement whose validity window is over. Called periodically by the server
    /// and before each admission.
    pub async fn expire_due(&self) -> Result<usize> {
        let now = Utc::now();
        let due: Vec<Arc<Slot>> = lock(&self.inner.registry)
            .by_fingerprint
            .values()
            .filter(|s| s.agreement.manifest().valid_until <= now)
            .cloned()
            .collect();
        for slot in &due {
            self.end(slot, Actor::Room, Event::Expired, "expired")
                .await?;
        }
        Ok(due.len())
    }

    // ---------------------------------------------------------------------------------------
    // Authentication

    /// Issues a challenge. Nothing is looked up: the answer is the same whether or not the
    /// agreement exists or names the key (issue 11, §5).
    pub fn challenge(&self, req: v1::ChallengeRequest) -> Result<v1::ChallengeResponse> {
        let ask = AuthAsk::from_proto(&req.agreement, req.principal.as_ref(), &req.public_key)?;
        let client_nonce = nonce("client_nonce", &req.client_nonce)?;
        let room_nonce =
            lock(&self.inner.auth).issue_challenge(ask.scope(), ask.role.clone(), client_nonce)?;
        Ok(v1::ChallengeResponse {
            room_nonce: room_nonce.to_vec(),
            room_public_key: self.inner.public_key.to_bytes().to_vec(),
            protocol_version: accord_proto::PROTOCOL_VERSION,
            tls_binding_signature: lock(&self.inner.tls_binding)
                .as_ref()
                .map(|s| s.to_bytes().to_vec())
                .unwrap_or_default(),
        })
    }

    /// Checks a signed challenge, then (only then) resolves the agreement among those that
    /// name the proven key, and starts a session.
    pub fn authenticate(&self, req: v1::AuthenticateRequest) -> Result<v1::AuthenticateResponse> {
        let ask = AuthAsk::from_proto(&req.agreement, req.principal.as_ref(), &req.public_key)?;
        let room_nonce = nonce("room_nonce", &req.room_nonce)?;
        let client_nonce = nonce("client_nonce", &req.client_nonce)?;
        // One HMAC before the signature check; the nonce is consumed (single use, per-principal
        // login bound) only after the proof and the resolution succeeded, so strangers signing
        // with keys of their own cannot fill the replay set.
        let checked = lock(&self.inner.auth).check_challenge(
            &room_nonce,
            ask.scope(),
            &ask.role,
            &client_nonce,
        )?;
        let message = ask.message(
            &room_nonce,
            &client_nonce,
            &self.inner.public_key.to_bytes(),
        );
        let sig = signature(&req.signature)?;
        ask.key
            .verify(Purpose::AuthChallenge, &message, &sig)
            .map_err(|_| not_authorized())?;
        let resolved = self.resolve(&ask)?;
        let (token, session) = {
            let mut auth = lock(&self.inner.auth);
            auth.consume(checked)?;
            auth.start_session(resolved.fingerprint, resolved.role.clone())?
        };
        tracing::info!(agreement = %resolved.agreement_id, principal = %resolved.role.name(), kind = resolved.role.kind(), "session started");
        Ok(v1::AuthenticateResponse {
            session_token: token,
            expires_unix_ms: session.expires_unix_ms,
            head: Some(resolved.head),
            fingerprint: resolved.fingerprint.to_string(),
            principal_name: resolved.role.name().to_owned(),
            agreement_id: resolved.agreement_id,
            manifest_toml: resolved.manifest_toml,
        })
    }

    /// The agreement and principal a proven key may act as. An id resolves only among the
    /// agreements in force that name the key for the role; a fingerprint of an agreement that
    /// has ended still lets its parties and auditors read its audit log.
    fn resolve(&self, ask: &AuthAsk) -> Result<Resolved> {
        let by_fp = ask.agreement.parse::<Fingerprint>().ok();
        let matches: Vec<(Arc<Slot>, Role)> = {
            let reg = lock(&self.inner.registry);
            reg.by_fingerprint
                .values()
                .filter(|s| match by_fp {
                    Some(fp) => s.agreement.fingerprint() == fp,
                    None => s.agreement.id() == ask.agreement,
                })
                .filter_map(|s| {
                    named_principal(s.agreement.manifest(), ask).map(|r| (s.clone(), r))
                })
                .collect()
        };
        match matches.as_slice() {
            [(slot, role)] => {
                return Ok(Resolved {
                    fingerprint: slot.agreement.fingerprint(),
                    role: role.clone(),
                    agreement_id: slot.agreement.id().to_owned(),
                    head: self.head(slot),
                    manifest_toml: slot.agreement.text().to_owned(),
                });
            }
            [] => {}
            several => {
                // The caller proved a key every one of these names: it may see their fingerprints.
                let fps: Vec<String> = several
                    .iter()
                    .map(|(s, _)| s.agreement.fingerprint().to_string())
                    .collect();
                return Err(RoomError::FailedPrecondition(format!(
                    "{} agreements with id {:?} in this room name your key: give the fingerprint of the one you \
                     mean instead of the id (one of {})",
                    fps.len(),
                    ask.agreement,
                    fps.join(", ")
                )));
            }
        }
        // An ended agreement, by fingerprint: its audit log stays readable by its parties and
        // auditors (the session can do nothing else: no slot is in force for it).
        let Some(fp) = by_fp else {
            return Err(not_authorized());
        };
        if matches!(ask.role, Role::Analyst(_)) {
            return Err(not_authorized());
        }
        let copy = self.audit_manifest_path(fp);
        let log = self.audit_path(fp);
        if !copy.exists() || !log.exists() {
            return Err(not_authorized());
        }
        let text = std::fs::read_to_string(&copy).map_err(|e| RoomError::io("read", &copy, e))?;
        let manifest = accord_agreement::Manifest::parse(&text)
            .map_err(|e| RoomError::Internal(format!("{}: {e}", copy.display())))?;
        if manifest.fingerprint() != fp {
            return Err(RoomError::Internal(format!(
                "{} does not have fingerprint {fp}",
                copy.display()
            )));
        }
        let role = named_principal(&manifest, ask).ok_or_else(not_authorized)?;
        let head = AuditLog::open(&log, fp)?.signed_head(&self.inner.key);
        Ok(Resolved {
            fingerprint: fp,
            role,
            agreement_id: manifest.id,
            head,
            manifest_toml: text,
        })
    }

    fn party_session(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(Session, Arc<Slot>, String)> {
        let session = self.session(metadata)?;
        let Role::Party(party) = session.role.clone() else {
            return Err(RoomError::PermissionDenied(
                "only a party of the agreement may do this".into(),
            ));
        };
        let slot = self.slot_of(&session)?;
        Ok((session, slot, party))
    }

    // ---------------------------------------------------------------------------------------
    // PSI

    /// Checks and stores one upload batch. Returns whether it was new.
    pub(crate) async fn upload_batch(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        batch: v1::UploadBatch,
    ) -> Result<bool> {
        let now = Utc::now();
        let m = slot.agreement.manifest();
        if now < m.valid_from || now >= m.valid_until {
            return Err(RoomError::FailedPrecondition(format!(
                "agreement {} is not in force now (valid {} to {}): uploads are refused",
                m.id, m.valid_from, m.valid_until
            )));
        }
        let n = accord_proto::count_items("points", &batch.points, POINT_LEN).map_err(|e| {
            RoomError::InvalidArgument(format!("batch {}: {e}", batch.batch_number))
        })?;
        if n == 0 || n > MAX_BATCH_ROWS {
            return Err(RoomError::InvalidArgument(format!(
                "batch {} has {n} rows; a batch holds 1 to {MAX_BATCH_ROWS} rows",
                batch.batch_number
            )));
        }
        accord_proto::expect_items("handles", &batch.handles, HANDLE_LEN, n).map_err(|e| {
            RoomError::InvalidArgument(format!("batch {}: {e}", batch.batch_number))
        })?;
        let fp = slot.agreement.fingerprint();
        let key = &m.parties[party].public_key;
        let salt: [u8; 32] = accord_proto::fixed("salt", &batch.salt).map_err(|e| {
            RoomError::InvalidArgument(format!(
                "batch {}: {e} (protocol v2 batches carry a 32-byte salt; upgrade accord)",
                batch.batch_number
            ))
        })?;
        let rows_digest = accord_proto::rows_digest(&salt, &batch.handles, &batch.columns);
        let msg = accord_proto::signed::upload_batch(
            fp.as_bytes(),
            party,
            batch.batch_number,
            &batch.points,
            &rows_digest,
        );
        key.verify(Purpose::UploadBatch, &msg, &signature(&batch.signature)?)
            .map_err(|_| {
                RoomError::InvalidArgument(format!(
                    "batch {}: the batch signature does not verify with {party}'s key (it covers \
                     the points, the handles and every attribute value: something changed them \
                     after signing)",
                    batch.batch_number
                ))
            })?;
        if let Err(e) = accord_psi::check_points(&batch.points) {
            return Err(RoomError::InvalidArgument(format!(
                "batch {}: {e}",
                batch.batch_number
            )));
        }
        let digest: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(batch.batch_number.to_be_bytes());
            h.update(&batch.handles);
            h.update(&batch.points);
            h.update(prost::Message::encode_to_vec(&v1::UploadBatch {
                columns: batch.columns.clone(),
                ..Default::default()
            }));
            h.finalize().into()
        };
        let mut live = slot.live.write().await;
        let store = live.store.as_mut().ok_or_else(ended)?;
        let layout = store
            .party(party)
            .cloned()
            .ok_or_else(|| RoomError::Internal("party layout missing".into()))?;
        let attributes = attributes(&layout, &batch.columns, n, batch.batch_number)?;
        let pending = PendingBatch {
            handles: batch.handles,
            points: batch.points,
            signature: batch.signature,
            attributes,
            digest,
            rows_digest,
        };
        store.store_pending(party, batch.batch_number, &pending)
    }

    /// Stores a party's signed completion statement and seals if everything is ready.
    pub(crate) async fn upload_complete(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        c: v1::UploadComplete,
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
        let mut live = slot.live.write().await;
        let store = live.store.as_mut().ok_or_else(ended)?;
        let progress = store.progress(party)?.clone();
        if let Some(existing) = &progress.complete {
            if existing.batches == c.batches && existing.rows == c.rows {
                return Ok(());
            }
            return Err(RoomError::AlreadyExists(format!(
                "{party} already completed its upload with other totals"
            )));
        }
        if progress.batches.len() as u64 != c.batches || progress.rows() != c.rows {
            return Err(RoomError::FailedPrecondition(format!(
                "{party} says it uploaded {} batches and {} rows, but the room holds {} batches and {} rows: \
                 resume the upload (run the same `accord party upload` again)",
                c.batches,
                c.rows,
                progress.batches.len(),
                progress.rows()
            )));
        }
        store.store_completion(
            party,
            &Completion {
                batches: c.batches,
                rows: c.rows,
                signature: hex::encode(&c.signature),
            },
        )?;
        self.audit(
            slot,
            Actor::Party(party.to_owned()),
            Event::UploadComplete {
                batches: c.batches,
                rows: c.rows,
            },
        )?;
        self.maybe_seal(slot, &mut live)?;
        Ok(())
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
    ) -> Result<Option<v1::WorkBatch>> {
        let live = slot.live.read().await;
        let store = live.store.as_ref().ok_or_else(ended)?;
        let pending = store
            .progress(partner)?
            .batches
            .get(&n)
            .is_some_and(|info| info.state == BatchState::Pending);
        if !pending {
            return Ok(None);
        }
        let pending = store.read_pending_points(partner, n)?;
        Ok(Some(v1::WorkBatch {
            from_party: partner.to_owned(),
            batch_number: n,
            points: pending.points,
            signature: pending.signature,
            rows_digest: pending.rows_digest,
        }))
    }

    /// Stores one blinded batch returned by `party` for its partner.
    pub(crate) async fn return_blinded(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        b: v1::BlindedBatch,
    ) -> Result<()> {
        let mut live = slot.live.write().await;
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
        let (prover, owner, batch_number) = (party.to_owned(), partner.clone(), b.batch_number);
        let (output, proof) = (b.points, b.proof);
        // Verification is CPU work (two multi-scalar multiplications): off the async workers.
        let (verdict, output) = tokio::task::spawn_blocking(move || {
            let context = accord_psi::DleqContext {
                agreement: &fingerprint,
                prover: &prover,
                owner: &owner,
                batch: batch_number,
            };
            let verdict =
                accord_psi::verify_blinding(&commitment, &context, &input, &output, &proof);
            (verdict, output)
        })
        .await
        .map_err(|e| RoomError::Internal(format!("proof verification task failed: {e}")))?;
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
        store.store_tokens(&partner, batch_number, &output)?;
        self.maybe_seal(slot, &mut live)?;
        Ok(())
    }

    /// Stores `party`'s PSI key commitment after checking its signature; the same commitment
    /// again is a no-op, a different one is refused (a party has one key per agreement).
    pub(crate) async fn commit_key(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        c: v1::KeyCommitment,
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
        let mut live = slot.live.write().await;
        let store = live.store.as_mut().ok_or_else(ended)?;
        match store.progress(party)?.commitment {
            Some(stored) if stored == commitment => return Ok(()),
            Some(_) => {
                return Err(RoomError::FailedPrecondition(format!(
                    "{party} already committed to a different PSI key for this agreement; a party \
                     keeps one key per agreement version (its state directory was replaced?)"
                )));
            }
            None => {}
        }
        accord_psi::check_commitment(&commitment)
            .map_err(|e| RoomError::InvalidArgument(format!("{party}'s key commitment: {e}")))?;
        store.store_commitment(party, &commitment, &signature)?;
        self.audit(
            slot,
            Actor::Party(party.to_owned()),
            Event::KeyCommitted {
                commitment: hex::encode(commitment),
            },
        )?;
        Ok(())
    }

    /// Records `party`'s refusal to blind one of its partner's batches.
    pub(crate) async fn refuse_batch(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        r: v1::WorkRefusal,
    ) -> Result<()> {
        let mut live = slot.live.write().await;
        let store = live.store.as_mut().ok_or_else(ended)?;
        let (partner, info) = partner_batch(store, party, r.batch_number)?;
        if info.state != BatchState::Pending {
            return Ok(());
        }
        let reason = crate::limits::refusal_reason(&r.reason)?;
        store.store_refusal(&partner, r.batch_number, &reason)?;
        self.audit(
            slot,
            Actor::Party(party.to_owned()),
            Event::BatchRefused {
                owner: partner,
                batch_number: r.batch_number,
                reason,
            },
        )?;
        Ok(())
    }

    fn maybe_seal(&self, slot: &Slot, live: &mut Live) -> Result<()> {
        let Some(store) = live.store.as_mut() else {
            return Ok(());
        };
        if !store.ready_to_seal() || store.seal_info()?.is_some() {
            return Ok(());
        }
        let (snapshot, duplicates) = store.build_snapshot()?;
        // With exact results, a dimension with more distinct values among the matched
        // customers than groups of k could cover is withheld: it identifies customers. The
        // decision compares two exact counts derived from the overlap, so with differential
        // privacy it is not taken at all (issue 13: nothing a party or analyst reads holds
        // an exact overlap count, not even one bit of it). There, DP partition selection
        // already keeps every group of a few customers out of every answer.
        let withheld: Vec<(String, String)> = if query_privacy(&slot.agreement)?.is_some() {
            Vec::new()
        } else {
            let full_spec = table_spec(&slot.agreement, &[]);
            let attrs = attribute_batch(&snapshot, &full_spec)?;
            accord_engine::dimension_cardinality_problems(&full_spec, &[attrs])
                .into_iter()
                .map(|p| (p.column.clone(), p.to_string()))
                .collect()
        };
        let info = SealInfo {
            sealed_at: Utc::now().to_rfc3339(),
            withheld: withheld.clone(),
        };
        store.write_snapshot(&snapshot, &info)?;
        store.discard_unmatched(&snapshot)?;
        live.engine = Some(Arc::new(build_engine(
            &slot.agreement,
            &withheld,
            &snapshot,
        )?));
        live.withheld = withheld.clone();
        self.audit(
            slot,
            Actor::Room,
            Event::Sealed {
                withheld_columns: withheld.into_iter().map(|(c, _)| c).collect(),
                duplicate_tokens_dropped: duplicates,
            },
        )?;
        tracing::info!(agreement = %slot.agreement.id(), "snapshot sealed");
        Ok(())
    }

    /// A party's own progress.
    pub(crate) async fn status(&self, slot: &Arc<Slot>, party: &str) -> Result<v1::StatusResponse> {
        let live = slot.live.read().await;
        let store = live.store.as_ref().ok_or_else(ended)?;
        let partner = store.partner_of(party).unwrap_or_default().to_owned();
        let me = store.progress(party)?;
        let them = store.progress(&partner)?;
        let sealed = store.seal_info()?.is_some();
        Ok(v1::StatusResponse {
            agreement_id: slot.agreement.id().to_owned(),
            fingerprint: slot.agreement.fingerprint().to_string(),
            state: if sealed {
                v1::AgreementState::Sealed
            } else {
                v1::AgreementState::Collecting
            } as i32,
            batches_uploaded: me.batches.len() as u64,
            rows_uploaded: me.rows(),
            upload_complete: me.complete.is_some(),
            batches_tokenized: me.tokenized(),
            refused_batches: me
                .batches
                .iter()
                .filter_map(|(n, b)| match &b.state {
                    BatchState::Refused(reason) => Some(v1::WorkRefusal {
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
            head: Some(self.head(slot)),
        })
    }

    /// Erases a party's rows by handle: all of them or none.
    pub(crate) async fn erase(
        &self,
        slot: &Arc<Slot>,
        party: &str,
        handles: &[u8],
    ) -> Result<v1::EraseResponse> {
        let n = accord_proto::count_items("handles", handles, HANDLE_LEN)
            .map_err(|e| RoomError::InvalidArgument(e.to_string()))?;
        if n == 0 || n > accord_proto::limits::MAX_ERASE_HANDLES {
            return Err(RoomError::InvalidArgument(format!(
                "an erasure request carries 1 to {} handles, this one {n}",
                accord_proto::limits::MAX_ERASE_HANDLES
            )));
        }
        let wanted: HashSet<[u8; 16]> = handles
            .chunks_exact(HANDLE_LEN)
            .map(|c| {
                let mut a = [0u8; 16];
                a.copy_from_slice(c);
                a
            })
            .collect();
        let mut live = slot.live.write().await;
        let store = live.store.as_mut().ok_or_else(ended)?;
        let known = store.known_handles(party)?;
        let unknown = wanted.iter().filter(|h| !known.contains(*h)).count();
        if unknown > 0 {
            return Err(RoomError::NotFound(format!(
                "{unknown} of the {} handles are not in {party}'s data for this agreement (never uploaded or already \
                 erased); nothing was erased — send only handles of uploaded rows",
                wanted.len()
            )));
        }
        let snapshot = store.erase(party, &wanted)?;
        if let Some(snapshot) = snapshot {
            let withheld = live.withheld.clone();
            live.engine = Some(Arc::new(build_engine(
                &slot.agreement,
                &withheld,
                &snapshot,
            )?));
        }
        let erased = wanted.len() as u64;
        self.audit(
            slot,
            Actor::Party(party.to_owned()),
            Event::Erasure { rows: erased },
        )?;
        let fp = slot.agreement.fingerprint();
        let receipt = accord_proto::signed::erasure_receipt(fp.as_bytes(), party, erased, handles);
        Ok(v1::EraseResponse {
            erased,
            receipt_signature: self
                .inner
                .key
                .sign(Purpose::ErasureReceipt, &receipt)
                .to_bytes()
                .to_vec(),
            head: Some(self.head(slot)),
        })
    }

    /// Session helpers for the gRPC layer.
    pub(crate) fn party_call(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(Arc<Slot>, String)> {
        let (_, slot, party) = self.party_session(metadata)?;
        Ok((slot, party))
    }

    // ---------------------------------------------------------------------------------------
    // Queries

    /// Resolves an analyst session.
    pub(crate) fn analyst_call(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(Arc<Slot>, String)> {
        let session = self.session(metadata)?;
        let Role::Analyst(name) = session.role.clone() else {
            return Err(RoomError::PermissionDenied(
                "only an analyst named in the agreement may query; parties query through their analysts".into(),
            ));
        };
        Ok((self.slot_of(&session)?, name))
    }

    /// The queryable columns.
    pub(crate) async fn describe(&self, slot: &Arc<Slot>) -> Result<v1::DescribeResponse> {
        let live = slot.live.read().await;
        live.store.as_ref().ok_or_else(ended)?;
        let m = slot.agreement.manifest();
        let mut columns = Vec::new();
        for c in table_spec(&slot.agreement, &[]).columns {
            let withheld = live
                .withheld
                .iter()
                .find(|(w, _)| *w == c.name)
                .map(|(_, r)| r.clone())
                .unwrap_or_default();
            let (role, min, max) = match c.role {
                EngineRole::Dimension => ("dimension", 0.0, 0.0),
                EngineRole::Metric { min, max } => ("metric", min, max),
            };
            columns.push(v1::ColumnInfo {
                name: c.name,
                role: role.into(),
                min,
                max,
                withheld,
            });
        }
        Ok(v1::DescribeResponse {
            agreement_id: m.id.clone(),
            fingerprint: slot.agreement.fingerprint().to_string(),
            sealed: live.engine.is_some(),
            min_group_size: m.min_group_size,
            aggregates: m
                .privacy
                .aggregates
                .iter()
                .map(|a| format!("{a:?}").to_uppercase())
                .collect(),
            columns,
            head: Some(self.head(slot)),
            budget: None,
        })
    }

    /// Runs one query under the policy and logs it, answered or refused. The answer is
    /// encoded by `encode` while the agreement's read lock is held (result release is ordered
    /// with revocation).
    pub(crate) async fn query<T>(
        &self,
        slot: &Arc<Slot>,
        analyst: &str,
        sql: &str,
        encode: impl FnOnce(&accord_engine::Answer) -> Result<T>,
    ) -> Result<QueryResult<T>> {
        let live = slot.live.read().await;
        live.store.as_ref().ok_or_else(ended)?;
        let actor = Actor::Analyst(analyst.to_owned());
        // Every query is logged, also the ones refused before the policy sees them.
        let refuse_early = |rule: &str, message: &str| -> Result<QueryResult<T>> {
            self.audit(
                slot,
                actor.clone(),
                query_event(sql, "refused", Some(rule), 0, 0),
            )?;
            Err(RoomError::FailedPrecondition(message.to_owned()))
        };
        if slot.agreement.manifest().valid_until <= Utc::now() {
            return refuse_early("expired", "the agreement has expired: queries are refused");
        }
        let Some(engine) = live.engine.clone() else {
            return refuse_early(
                "not_sealed",
                "the agreement's data is not sealed yet: both parties must finish their upload and blinding",
            );
        };
        if sql.len() > accord_proto::limits::MAX_SQL_BYTES {
            let message = format!("the query is {} bytes long; the limit is 16 KiB", sql.len());
            self.audit(
                slot,
                actor,
                query_event(sql, "refused", Some("too_long"), 0, 0),
            )?;
            return Ok(QueryResult::Refused {
                rule: "too_long".into(),
                message,
                head: self.head(slot),
            });
        }
        // The length and nesting limits are checked on the raw text, and a refusal logged,
        // before anything parses or plans it (the engine checks again: defence in depth).
        let prepared = match accord_engine::check_text(sql) {
            Err(refusal) => Err(refusal),
            Ok(()) => engine
                .prepare(sql)
                .await
                .map_err(|e| RoomError::Internal(format!("query engine: {e}")))?,
        };
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(refusal) => {
                let rule = refusal.rule.name().to_owned();
                let message = refusal.to_string();
                self.audit(slot, actor, query_event(sql, "refused", Some(&rule), 0, 0))?;
                tracing::info!(agreement = %slot.agreement.id(), analyst, rule, "query refused");
                return Ok(QueryResult::Refused {
                    rule,
                    message,
                    head: self.head(slot),
                });
            }
        };
        // With differential privacy the query's cost is recorded durably (and audited)
        // before it runs, so no result leaves whose spend is not on disk.
        let mut budget = None;
        let mut spent = 0.0;
        if let Some(cost) = prepared.privacy_cost() {
            let (party, price) = self.price(slot, analyst)?;
            match self.inner.ledgers.spend(&slot.agreement, &party, price)? {
                Spend::Exhausted(balance) => {
                    let message = exhausted_message(slot.agreement.id(), &party, &balance);
                    self.audit(
                        slot,
                        actor,
                        query_event(sql, "refused", Some(BUDGET_RULE), 0, 0),
                    )?;
                    tracing::info!(agreement = %slot.agreement.id(), analyst, party, "query refused: budget exhausted");
                    return Ok(QueryResult::Refused {
                        rule: BUDGET_RULE.into(),
                        message,
                        head: self.head(slot),
                    });
                }
                Spend::Spent(balance) => {
                    self.audit(
                        slot,
                        Actor::Analyst(analyst.to_owned()),
                        Event::BudgetSpent {
                            party,
                            epsilon: cost.epsilon,
                            delta: cost.delta,
                            epsilon_spent_total: balance.epsilon_spent,
                            epsilon_remaining: balance.epsilon_remaining,
                        },
                    )?;
                    spent = cost.epsilon;
                    budget = Some(balance);
                }
            }
        }
        let answer = match prepared.execute().await {
            Ok(answer) => answer,
            Err(e) => {
                self.audit(
                    slot,
                    actor,
                    with_budget(
                        query_event(sql, "refused", Some("internal_error"), 0, 0),
                        spent,
                    ),
                )?;
                return Err(RoomError::Internal(format!("query engine: {e}")));
            }
        };
        let encoded = encode(&answer)?;
        self.audit(
            slot,
            actor,
            with_budget(
                query_event(
                    sql,
                    "answered",
                    None,
                    answer.rows as u64,
                    answer.groups_suppressed,
                ),
                spent,
            ),
        )?;
        tracing::info!(agreement = %slot.agreement.id(), analyst, rows = answer.rows, "query answered");
        Ok(QueryResult::Answered {
            value: encoded,
            rows: answer.rows as u64,
            budget,
            head: self.head(slot),
        })
    }

    /// The spending party of `analyst` and the agreement's price per query.
    fn price(&self, slot: &Slot, analyst: &str) -> Result<(String, Price)> {
        let m = slot.agreement.manifest();
        let party = m
            .analysts
            .iter()
            .find(|a| a.name == analyst)
            .map(|a| a.party.clone())
            .ok_or_else(|| {
                RoomError::PermissionDenied(format!(
                    "analyst {analyst} is not named in agreement {}",
                    m.id
                ))
            })?;
        let PrivacyMode::DifferentialPrivacy {
            epsilon_per_query,
            budget,
            delta,
        } = m.privacy.mode
        else {
            return Err(RoomError::Internal(
                "a budget was asked of an agreement with exact results".into(),
            ));
        };
        Ok((party, Price::new(epsilon_per_query, delta, budget)))
    }

    /// What is left of the budget of `analyst`'s party; `None` with exact results.
    pub(crate) fn budget(&self, slot: &Slot, analyst: &str) -> Result<Option<Balance>> {
        if !matches!(
            slot.agreement.manifest().privacy.mode,
            PrivacyMode::DifferentialPrivacy { .. }
        ) {
            return Ok(None);
        }
        let (party, price) = self.price(slot, analyst)?;
        self.inner
            .ledgers
            .balance(&slot.agreement, &party, price)
            .map(Some)
    }

    /// The result schema of a query without running it (Flight SQL's GetFlightInfo), or its refusal.
    pub(crate) async fn query_schema(
        &self,
        slot: &Arc<Slot>,
        sql: &str,
    ) -> Result<std::result::Result<arrow::datatypes::SchemaRef, (String, String)>> {
        let live = slot.live.read().await;
        let Some(engine) = live.engine.clone() else {
            // The caller runs refusals through `query`, which logs and explains this one.
            return Ok(Err((
                "not_sealed".into(),
                "the agreement's data is not sealed yet".into(),
            )));
        };
        if sql.len() > accord_proto::limits::MAX_SQL_BYTES {
            return Ok(Err((
                "too_long".into(),
                "the query is longer than 16 KiB".into(),
            )));
        }
        match engine
            .prepare(sql)
            .await
            .map_err(|e| RoomError::Internal(format!("query engine: {e}")))?
        {
            Ok(prepared) => Ok(Ok(prepared.schema())),
            Err(refusal) => Ok(Err((refusal.rule.name().to_owned(), refusal.to_string()))),
        }
    }

    /// The schema of the `overlap` table for an analyst session.
    pub(crate) async fn overlap_schema(
        &self,
        slot: &Arc<Slot>,
    ) -> Result<arrow::datatypes::SchemaRef> {
        let live = slot.live.read().await;
        let withheld = live.withheld.clone();
        Ok(table_spec(&slot.agreement, &withheld).arrow_schema())
    }

    // ---------------------------------------------------------------------------------------
    // Audit

    /// One page of the audit log of the session's agreement (also after its data was
    /// deleted). Only its parties and auditors may read it.
    pub fn fetch_audit(
        &self,
        session: &Session,
        req: &v1::FetchAuditRequest,
    ) -> Result<v1::FetchAuditResponse> {
        if let Role::Analyst(_) = session.role {
            return Err(RoomError::PermissionDenied(
                "analysts may not read the audit log (it holds every query of every analyst): ask a party or an \
                 auditor of the agreement"
                    .into(),
            ));
        }
        let fp = session.fingerprint;
        let asked = req.fingerprint.trim();
        if !asked.is_empty() && asked != fp.to_string() {
            return Err(not_authorized());
        }
        let max = match req.max_entries {
            0 => MAX_AUDIT_PAGE_ENTRIES,
            n => (n as usize).min(MAX_AUDIT_PAGE_ENTRIES),
        };
        let slot = lock(&self.inner.registry).by_fingerprint.get(&fp).cloned();
        let (entries, head) = match slot {
            Some(slot) => {
                let audit = lock(&slot.audit);
                (
                    audit.read_page(req.start, max)?,
                    audit.signed_head(&self.inner.key),
                )
            }
            None => {
                let path = self.audit_path(fp);
                if !path.exists() {
                    return Err(not_authorized());
                }
                let audit = AuditLog::open(&path, fp)?;
                (
                    audit.read_page(req.start, max)?,
                    audit.signed_head(&self.inner.key),
                )
            }
        };
        Ok(v1::FetchAuditResponse {
            entries,
            head: Some(head),
            room_public_key: self.inner.public_key.to_bytes().to_vec(),
            start: req.start,
        })
    }
}

/// The result of [`Room::query`].
#[derive(Debug)]
pub enum QueryResult<T> {
    /// Answered; `value` is the encoded answer.
    Answered {
        /// The encoded answer.
        value: T,
        /// Rows returned.
        rows: u64,
        /// With differential privacy, the party's budget after this query.
        budget: Option<Balance>,
        /// The audit head after logging.
        head: v1::SignedHead,
    },
    /// Refused by the policy.
    Refused {
        /// Stable rule name.
        rule: String,
        /// The sentence for the analyst.
        message: String,
        /// The audit head after logging.
        head: v1::SignedHead,
    },
}

fn query_event(sql: &str, decision: &str, rule: Option<&str>, rows: u64, suppressed: u64) -> Event {
    Event::Query {
        sql: crate::limits::audit_sql(sql),
        decision: decision.to_owned(),
        rule: rule.map(str::to_owned),
        rows_returned: rows,
        groups_suppressed: suppressed,
        budget_spent: 0.0,
    }
}

/// Why a dimension was withheld at sealing, without the exact counts behind the decision.
/// The rule name of a query refused because its party's budget is spent.
pub(crate) const BUDGET_RULE: &str = "budget_exhausted";

fn exhausted_message(agreement_id: &str, party: &str, b: &Balance) -> String {
    format!(
        "the privacy budget is spent: this query costs epsilon {} but party {party} has {:.3} of its {} left \
         under agreement {agreement_id} ({} queries answered); no result was computed and nothing was spent. \
         Each answer spends budget so that repeated questions cannot average the noise away; to ask more, \
         the parties must agree on a larger budget in a new version of the agreement",
        b.epsilon_per_query, b.epsilon_remaining, b.epsilon_budget, b.queries
    )
}

/// The query privacy of a DP agreement (`None` with exact results), checked against what
/// the engine supports.
fn query_privacy(agreement: &VerifiedAgreement) -> Result<Option<accord_engine::QueryPrivacy>> {
    let m = agreement.manifest();
    match m.privacy.mode {
        PrivacyMode::DifferentialPrivacy {
            epsilon_per_query,
            delta,
            ..
        } => accord_engine::QueryPrivacy::new(epsilon_per_query, delta, u64::from(m.min_group_size))
            .map(Some)
            .map_err(|e| {
                RoomError::FailedPrecondition(format!(
                    "the room refuses this agreement's differential privacy settings: {e}; fix [privacy] differential_privacy and sign again"
                ))
            }),
        _ => Ok(None),
    }
}

/// `event` (a query event) with the ε it spent.
fn with_budget(mut event: Event, spent: f64) -> Event {
    if let Event::Query { budget_spent, .. } = &mut event {
        *budget_spent = spent;
    }
    event
}

fn ended() -> RoomError {
    RoomError::FailedPrecondition(
        "this agreement has ended (revoked, expired or superseded) and its data was deleted".into(),
    )
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

fn nonce(field: &'static str, bytes: &[u8]) -> Result<[u8; NONCE_LEN]> {
    accord_proto::fixed::<NONCE_LEN>(field, bytes)
        .map_err(|e| RoomError::InvalidArgument(e.to_string()))
}

fn signature(bytes: &[u8]) -> Result<Signature> {
    let raw = accord_proto::fixed::<64>("signature", bytes)
        .map_err(|e| RoomError::InvalidArgument(e.to_string()))?;
    Ok(Signature::from_bytes(&raw))
}

/// A proven caller's agreement and principal.
#[derive(Debug)]
struct Resolved {
    fingerprint: Fingerprint,
    role: Role,
    agreement_id: String,
    head: v1::SignedHead,
    /// The signed manifest text (the client checks its fingerprint and `[room]` key).
    manifest_toml: String,
}

/// Converts a batch's proto columns into Arrow arrays in manifest order, checking names,
/// types, counts, lengths and bounds.
fn attributes(
    layout: &PartyColumns,
    columns: &[v1::Column],
    n: usize,
    batch: u64,
) -> Result<Vec<ArrayRef>> {
    let bad = |m: String| RoomError::InvalidArgument(format!("batch {batch}: {m}"));
    let mut by_name: HashMap<&str, &v1::Column> = HashMap::new();
    for c in columns {
        if by_name.insert(c.name.as_str(), c).is_some() {
            return Err(bad(format!("column {:?} appears twice", c.name)));
        }
        if !layout.columns.iter().any(|(name, _)| *name == c.name) {
            return Err(bad(format!(
                "column {:?} is not one {} contributes under this agreement (agreed: {})",
                c.name,
                layout.party,
                layout
                    .columns
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut out = Vec::with_capacity(layout.columns.len());
    for (name, kind) in &layout.columns {
        let c = by_name
            .get(name.as_str())
            .ok_or_else(|| bad(format!("agreed column {name:?} is missing")))?;
        let present = |p: &[bool]| -> Result<Vec<bool>> {
            match p.len() {
                0 => Ok(vec![true; n]),
                len if len == n => Ok(p.to_vec()),
                len => Err(bad(format!(
                    "column {name:?} has {len} presence flags for {n} rows"
                ))),
            }
        };
        let array: ArrayRef = match (kind, &c.values) {
            (EngineRole::Dimension, Some(v1::column::Values::Text(t))) => {
                if t.values.len() != n {
                    return Err(bad(format!(
                        "column {name:?} has {} values for {n} rows",
                        t.values.len()
                    )));
                }
                let p = present(&t.present)?;
                if let Some(v) = t.values.iter().find(|v| v.len() > MAX_TEXT_VALUE_LEN) {
                    return Err(bad(format!(
                        "column {name:?} has a value of {} bytes; dimension values are at most {MAX_TEXT_VALUE_LEN} bytes",
                        v.len()
                    )));
                }
                Arc::new(
                    t.values
                        .iter()
                        .zip(p)
                        .map(|(v, ok)| ok.then_some(v.as_str()))
                        .collect::<StringArray>(),
                )
            }
            (EngineRole::Metric { min, max }, Some(v1::column::Values::Number(x))) => {
                if x.values.len() != n {
                    return Err(bad(format!(
                        "column {name:?} has {} values for {n} rows",
                        x.values.len()
                    )));
                }
                let p = present(&x.present)?;
                for (v, ok) in x.values.iter().zip(&p) {
                    if *ok && (!v.is_finite() || *v < *min || *v > *max) {
                        return Err(bad(format!(
                            "column {name:?} has the value {v}, outside its agreed bounds [{min}, {max}] (parties clamp metrics before upload)"
                        )));
                    }
                }
                Arc::new(
                    x.values
                        .iter()
                        .zip(p)
                        .map(|(v, ok)| ok.then_some(*v))
                        .collect::<Float64Array>(),
                )
            }
            (EngineRole::Dimension, _) => {
                return Err(bad(format!(
                    "column {name:?} is a dimension: send text values"
                )));
            }
            (EngineRole::Metric { .. }, _) => {
                return Err(bad(format!(
                    "column {name:?} is a metric: send number values"
                )));
            }
        };
        out.push(array);
    }
    Ok(out)
}

/// The attribute columns of a snapshot, in `spec` order (no handles, nothing else).
fn attribute_batch(snapshot: &RecordBatch, spec: &TableSpec) -> Result<RecordBatch> {
    let schema = spec.arrow_schema();
    let mut columns = Vec::with_capacity(spec.columns.len());
    for c in &spec.columns {
        columns.push(
            snapshot
                .column(snapshot.schema().index_of(&c.name)?)
                .clone(),
        );
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn build_engine(
    agreement: &VerifiedAgreement,
    withheld: &[(String, String)],
    snapshot: &RecordBatch,
) -> Result<Engine> {
    let spec = table_spec(agreement, withheld);
    let attrs = attribute_batch(snapshot, &spec)?;
    let engine = Engine::new(spec, vec![attrs])
        .map_err(|e| RoomError::Internal(format!("query engine: {e}")))?;
    match query_privacy(agreement)? {
        Some(privacy) => {
            let noise = accord_engine::NoiseSource::from_os()
                .map_err(|e| RoomError::Internal(format!("query engine: {e}")))?;
            Ok(engine.with_differential_privacy(privacy, noise))
        }
        None => Ok(engine),
    }
}

#[cfg(test)]
#[path = "room_tests.rs"]
pub(crate) mod revocation_tests;
