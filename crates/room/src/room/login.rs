//! Authentication: challenges, the signed answer, and the resolution of a proven key to an
//! agreement and principal (nothing is looked up before the proof).

use std::sync::Arc;

use crate::api::{AuthenticateRequest, Authenticated, Challenge, ChallengeRequest, Principal};
use accord_agreement::{Fingerprint, PublicKey, sig::Purpose};
use sha2::{Digest, Sha256};

use super::{Room, Slot, lock, nonce, not_authorized, signature};
use crate::audit::{AuditLog, Head};
use crate::auth::Role;
use crate::error::{Result, RoomError};

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
    fn from_request(
        agreement: &str,
        principal: Option<&Principal>,
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
        let (role, key) = match principal {
            Some(Principal::Party(n)) => {
                (Role::Party(n.clone()), parse_key("public_key", public_key)?)
            }
            Some(Principal::Analyst(n)) => (
                Role::Analyst(n.clone()),
                parse_key("public_key", public_key)?,
            ),
            Some(Principal::Auditor(n)) => (
                Role::Auditor(n.clone()),
                parse_key("public_key", public_key)?,
            ),
            Some(Principal::AnalystKey(k)) => {
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

impl Room {
    /// Issues a challenge. Nothing is looked up: the answer is the same whether or not the
    /// agreement exists or names the key (issue 11, §5).
    pub fn challenge(&self, req: ChallengeRequest) -> Result<Challenge> {
        let ask = AuthAsk::from_request(&req.agreement, req.principal.as_ref(), &req.public_key)?;
        let client_nonce = nonce("client_nonce", &req.client_nonce)?;
        let room_nonce =
            lock(&self.inner.auth).issue_challenge(ask.scope(), ask.role.clone(), client_nonce)?;
        Ok(Challenge {
            room_nonce,
            room_public_key: self.inner.public_key.to_bytes(),
            protocol_version: accord_proto::PROTOCOL_VERSION,
            tls_binding_signature: lock(&self.inner.tls_binding)
                .as_ref()
                .map(|s| s.to_bytes().to_vec())
                .unwrap_or_default(),
        })
    }

    /// Checks a signed challenge, then (only then) resolves the agreement among those that
    /// name the proven key, and starts a session.
    pub fn authenticate(&self, req: AuthenticateRequest) -> Result<Authenticated> {
        let ask = AuthAsk::from_request(&req.agreement, req.principal.as_ref(), &req.public_key)?;
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
        Ok(Authenticated {
            session_token: token,
            expires_unix_ms: session.expires_unix_ms,
            head: resolved.head,
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
}

/// A proven caller's agreement and principal.
#[derive(Debug)]
struct Resolved {
    fingerprint: Fingerprint,
    role: Role,
    agreement_id: String,
    head: Head,
    /// The signed manifest text (the client checks its fingerprint and `[room]` key).
    manifest_toml: String,
}
