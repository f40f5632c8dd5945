//! Registration and the end of agreements: recovery at start-up, submission (and
//! superseding), revocation, expiry, and the tombstones that keep an ended agreement ended.

use std::sync::{Arc, Mutex};

use crate::api::{Revoked, Submitted};
use accord_agreement::{Fingerprint, PublicKey, Revocation, VerifiedAgreement, sig::Purpose};
use chrono::Utc;
use tokio::sync::RwLock;

use super::seal::{build_engine, query_privacy};
use super::tombstones::{self, EndReason, Tombstone};
use super::{Live, Room, Slot, lock};
use crate::audit::{Actor, AuditLog, Event};
use crate::error::{Result, RoomError};
use crate::store::{AgreementStore, PartyColumns};

/// Whether every party key of `old` signed `new` (as a party key of `new`, or in its
/// `[rotation_signatures]`): the only way `new` may supersede `old`.
fn endorsed_by_all(new: &accord_agreement::Manifest, old: &accord_agreement::Manifest) -> bool {
    old.parties
        .values()
        .all(|p| new.is_signed_by(&p.public_key))
}

impl Room {
    pub(super) fn recover(&self) -> Result<()> {
        lock(&self.inner.registry).tombstones = tombstones::load(&self.inner.data_dir)?;
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
                (Event::Expired, EndReason::Expired)
            } else if let Some(by) = newer {
                let by = by.to_string();
                (Event::Superseded { by }, EndReason::Superseded)
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
            tracing::info!(agreement = %manifest.id, %fp, %reason, "agreement ended while the room was down; data deleted");
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
                let engine = build_engine(self, &agreement, &info.withheld, &snapshot)?;
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
            live: Arc::new(RwLock::new(live)),
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
        reason: EndReason,
    ) -> Result<()> {
        let tombstone = Tombstone {
            agreement_id: manifest.id.clone(),
            version: manifest.version,
            reason,
            at: Utc::now().to_rfc3339(),
            party_keys: manifest
                .parties
                .values()
                .map(|p| p.public_key.to_string())
                .collect(),
        };
        // Written while holding the registry: the file and the map never disagree for a
        // submission checking them.
        let mut reg = lock(&self.inner.registry);
        tombstones::write(&self.inner.data_dir, fp, &tombstone)?;
        reg.tombstones.insert(fp.to_string(), tombstone);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Agreements

    /// Registers a signed agreement (see the `Agreements.Submit` contract).
    pub async fn submit(&self, text: &str) -> Result<Submitted> {
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
                return Ok(Submitted {
                    agreement_id: id,
                    version,
                    fingerprint: fp.to_string(),
                    already_registered: true,
                    superseded: String::new(),
                    head: lock(&slot.audit).signed_head(&self.inner.key),
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
        let room = self.clone();
        // Creating the agreement's directories and files syncs each: on the blocking pool.
        let slot = tokio::task::spawn_blocking(move || {
            accord_fs::create_dir_all(&dir, accord_fs::Access::OwnerOnly)?;
            accord_fs::write_atomic(&dir.join("manifest.toml"), agreement.text().as_bytes())?;
            room.load_slot(agreement)
        })
        .await
        .map_err(|e| RoomError::Internal(format!("registering the agreement failed: {e}")))??;
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
                EndReason::Superseded,
            )
            .await?;
            superseded = old_fp.to_string();
        }
        tracing::info!(agreement = %id, version, %fp, "agreement registered");
        Ok(Submitted {
            agreement_id: id,
            version,
            fingerprint: fp.to_string(),
            already_registered: false,
            superseded,
            head: self.head(&slot),
        })
    }

    /// Ends an agreement version: waits for running queries, deletes its data, records a
    /// tombstone, and logs `event` then `data_deleted`.
    pub(super) async fn end(
        &self,
        slot: &Arc<Slot>,
        actor: Actor,
        event: Event,
        reason: EndReason,
    ) -> Result<()> {
        let fp = slot.agreement.fingerprint();
        let mut live = slot.live.clone().write_owned().await;
        if live.store.is_none() {
            return Ok(());
        }
        // Deleting the data syncs every directory it touches: on the blocking pool, still
        // under the agreement's write lock.
        let (room, slot) = (self.clone(), slot.clone());
        tokio::task::spawn_blocking(move || {
            room.audit(&slot, actor, event)?;
            live.engine = None;
            live.store = None;
            room.inner.decoded.forget_agreement(fp);
            // The tombstone first: if the room stops before the data is gone, recovery finds
            // the tombstone and finishes the deletion instead of serving the agreement again.
            room.add_tombstone(fp, slot.agreement.manifest(), reason)?;
            accord_fs::remove_dir_all_durable(&room.agreement_dir(fp))?;
            room.audit(&slot, Actor::Room, Event::DataDeleted)?;
            lock(&room.inner.auth).end_sessions_for(fp);
            lock(&room.inner.registry).by_fingerprint.remove(&fp);
            tracing::info!(agreement = %slot.agreement.id(), %fp, %reason, "agreement ended and its data deleted");
            drop(live);
            Ok(())
        })
        .await
        .map_err(|e| RoomError::Internal(format!("ending the agreement failed: {e}")))?
    }

    /// Revokes an agreement with a revocation statement signed by one of its parties.
    pub async fn revoke(&self, text: &str) -> Result<Revoked> {
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
            EndReason::Revoked,
        )
        .await?;
        let revoked_unix_ms = Utc::now().timestamp_millis();
        let fp = slot.agreement.fingerprint();
        let receipt = accord_proto::signed::revocation_receipt(
            fp.as_bytes(),
            revoked_unix_ms,
            &revocation.party,
        );
        Ok(Revoked {
            agreement_id: slot.agreement.id().to_owned(),
            fingerprint: fp.to_string(),
            revoked_unix_ms,
            receipt_signature: self
                .inner
                .key
                .sign(Purpose::RevocationReceipt, &receipt)
                .to_bytes(),
            head: self.head(&slot),
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
            self.end(slot, Actor::Room, Event::Expired, EndReason::Expired)
                .await?;
        }
        Ok(due.len())
    }
}
