//! Ed25519 challenge–response and short-lived sessions (DESIGN §6).
//!
//! A caller asks for a challenge for one principal (party or analyst) of one agreement, signs
//! `fingerprint ‖ role ‖ name ‖ room_nonce ‖ client_nonce ‖ room_public_key` with the key the
//! agreement names for it, and gets a random bearer token. Tokens are stored only as their
//! SHA-256, so a lookup leaks nothing through timing about valid tokens.
//!
//! Challenges are stateless: the room nonce is `expiry ‖ random ‖ MAC`, the MAC (HMAC-SHA256
//! under a key drawn at start-up that never leaves the process) binding the agreement, the
//! principal and the client nonce. Issuing one stores nothing, so no flood of challenge
//! requests can fill a table and lock anyone out. Single use is enforced after the signature
//! verifies, by a replay set of used nonces kept until they expire and bounded per principal
//! ([`Limits::max_logins_per_principal`]): only a caller holding a key can add to it, and a
//! principal over its bound locks out only itself. Sessions are bounded per principal
//! ([`Limits::max_sessions_per_principal`]; a new login ends that principal's oldest one).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use accord_agreement::Fingerprint;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Result, RoomError};
use crate::limits::{Limits, MAX_USED_NONCES};

/// Domain of the room nonce's MAC.
const NONCE_MAC_DOMAIN: &[u8] = b"accord/v1/room-challenge";

/// The role a caller proves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A party, by name.
    Party(String),
    /// An analyst, by name.
    Analyst(String),
    /// An auditor, by name: may read the audit log, nothing else.
    Auditor(String),
}

impl Role {
    /// "party", "analyst" or "auditor", as signed.
    pub fn kind(&self) -> &'static str {
        match self {
            Role::Party(_) => "party",
            Role::Analyst(_) => "analyst",
            Role::Auditor(_) => "auditor",
        }
    }
    /// The principal's name.
    pub fn name(&self) -> &str {
        match self {
            Role::Party(n) | Role::Analyst(n) | Role::Auditor(n) => n,
        }
    }
}

/// A proven caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The agreement version the session is bound to.
    pub fingerprint: Fingerprint,
    /// Who the caller is.
    pub role: Role,
    /// When it stops working.
    pub expires: Instant,
    /// The same, as wall-clock milliseconds since the epoch (for the client).
    pub expires_unix_ms: i64,
    /// Whether the session already presented an audit head (`Audit.Present`): checking one
    /// may read the log up to that entry, so each session may ask it once.
    pub presented_head: bool,
}

/// The key of a session in the table: SHA-256 of the token's bytes (tokens are hex of 32
/// bytes; the decoded bytes are hashed so both spellings agree).
fn session_key(token: &str) -> [u8; 32] {
    match hex::decode(token.trim()) {
        Ok(raw) => Sha256::digest(&raw).into(),
        Err(_) => Sha256::digest(token.trim().as_bytes()).into(),
    }
}

/// A room nonce whose MAC and expiry checked out; [`AuthState::consume`] makes it used.
#[derive(Debug)]
#[must_use = "a checked challenge must be consumed once its signature verifies"]
pub struct CheckedChallenge {
    principal: (Fingerprint, Role),
    expiry_ms: u64,
    nonce: [u8; 32],
}

/// One principal's used nonces: (expiry ms, nonce), oldest expiry first.
type UsedNonces = BTreeSet<(u64, [u8; 32])>;

/// The challenge MAC key, live sessions and the replay set of used nonces.
pub struct AuthState {
    limits: Limits,
    /// Instant 0 of the nonce's expiry field.
    epoch: Instant,
    mac_key: Zeroizing<[u8; 32]>,
    sessions: HashMap<[u8; 32], Session>,
    /// Used nonces per principal, ordered by expiry (expiry ms, nonce).
    used: HashMap<(Fingerprint, Role), UsedNonces>,
    used_total: usize,
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState")
            .field("limits", &self.limits)
            .field("sessions", &self.sessions.len())
            .field("used_nonces", &self.used_total)
            .finish_non_exhaustive()
    }
}

impl AuthState {
    /// A fresh state with a new MAC key (challenges of an earlier process no longer verify:
    /// clients ask for a new one).
    pub fn new(limits: Limits) -> Result<Self> {
        Ok(Self {
            limits,
            epoch: Instant::now(),
            mac_key: Zeroizing::new(random32()?),
            sessions: HashMap::new(),
            used: HashMap::new(),
            used_total: 0,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mac(
        &self,
        fingerprint: Fingerprint,
        role: &Role,
        client_nonce: &[u8; 32],
        head: &[u8],
    ) -> Result<[u8; 16]> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.mac_key.as_slice())
            .map_err(|e| RoomError::Internal(format!("challenge MAC key: {e}")))?;
        mac.update(NONCE_MAC_DOMAIN);
        mac.update(fingerprint.as_bytes());
        mac.update(role.kind().as_bytes());
        mac.update(&accord_proto::signed::str_len(role.name()));
        mac.update(role.name().as_bytes());
        mac.update(client_nonce);
        mac.update(head);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        Ok(out)
    }

    /// A new room nonce for this agreement, principal and client nonce. Stores nothing.
    pub fn issue_challenge(
        &self,
        fingerprint: Fingerprint,
        role: Role,
        client_nonce: [u8; 32],
    ) -> Result<[u8; 32]> {
        let expiry_ms = self
            .now_ms()
            .saturating_add(self.limits.challenge_ttl.as_millis() as u64);
        let mut nonce = [0u8; 32];
        nonce[..8].copy_from_slice(&expiry_ms.to_be_bytes());
        nonce[8..16].copy_from_slice(&random32()?[..8]);
        let tag = self.mac(fingerprint, &role, &client_nonce, &nonce[..16])?;
        nonce[16..].copy_from_slice(&tag);
        Ok(nonce)
    }

    /// Checks that `room_nonce` was issued by this room for this request and has not expired.
    /// Cheap (one HMAC); call it before verifying the signature, and [`AuthState::consume`]
    /// after.
    pub fn check_challenge(
        &self,
        room_nonce: &[u8; 32],
        fingerprint: Fingerprint,
        role: &Role,
        client_nonce: &[u8; 32],
    ) -> Result<CheckedChallenge> {
        let tag = self.mac(fingerprint, role, client_nonce, &room_nonce[..16])?;
        if !bool::from(tag.ct_eq(&room_nonce[16..])) {
            return Err(RoomError::Unauthenticated(
                "this challenge was not issued by this room for this agreement, principal and client nonce \
                 (or the room restarted since): ask for a new one"
                    .into(),
            ));
        }
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&room_nonce[..8]);
        let expiry_ms = u64::from_be_bytes(expiry);
        if expiry_ms <= self.now_ms() {
            return Err(RoomError::Unauthenticated(
                "the challenge expired: ask for a new one".into(),
            ));
        }
        Ok(CheckedChallenge {
            principal: (fingerprint, role.clone()),
            expiry_ms,
            nonce: *room_nonce,
        })
    }

    /// Marks a checked challenge as used (after its signature verified): a second use, or a
    /// principal over its login bound, is refused.
    pub fn consume(&mut self, c: CheckedChallenge) -> Result<()> {
        let now = self.now_ms();
        self.prune_used(now);
        let max = self.limits.max_logins_per_principal;
        let ttl = self.limits.challenge_ttl;
        let set = self.used.entry(c.principal.clone()).or_default();
        if set.contains(&(c.expiry_ms, c.nonce)) {
            return Err(RoomError::Unauthenticated(
                "this challenge was already used: ask for a new one".into(),
            ));
        }
        if set.len() >= max {
            return Err(RoomError::FailedPrecondition(format!(
                "{} {} logged in {max} times within {} s; wait {} s and try again (limits.max_logins_per_principal)",
                c.principal.1.kind(),
                c.principal.1.name(),
                ttl.as_secs(),
                ttl.as_secs()
            )));
        }
        if self.used_total >= MAX_USED_NONCES {
            return Err(RoomError::FailedPrecondition(format!(
                "the room is handling more than {MAX_USED_NONCES} logins within {} s; try again shortly",
                ttl.as_secs()
            )));
        }
        set.insert((c.expiry_ms, c.nonce));
        self.used_total += 1;
        Ok(())
    }

    fn prune_used(&mut self, now_ms: u64) {
        let mut removed = 0;
        self.used.retain(|_, set| {
            while let Some(first) = set.first() {
                if first.0 > now_ms {
                    break;
                }
                set.pop_first();
                removed += 1;
            }
            !set.is_empty()
        });
        self.used_total -= removed;
    }

    /// Starts a session; returns the bearer token (hex) and the session. Ends the principal's
    /// oldest session when it already has the most allowed.
    pub fn start_session(
        &mut self,
        fingerprint: Fingerprint,
        role: Role,
    ) -> Result<(String, Session)> {
        let now = Instant::now();
        self.sessions.retain(|_, s| s.expires > now);
        let mine: Vec<([u8; 32], Instant)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.fingerprint == fingerprint && s.role == role)
            .map(|(k, s)| (*k, s.expires))
            .collect();
        if mine.len() >= self.limits.max_sessions_per_principal {
            let mut mine = mine;
            mine.sort_by_key(|(_, expires)| *expires);
            let excess = mine.len() + 1 - self.limits.max_sessions_per_principal;
            for (k, _) in mine.into_iter().take(excess) {
                self.sessions.remove(&k);
            }
        }
        let token = random32()?;
        let ttl = self.limits.session_ttl;
        let expires_unix_ms = chrono::Utc::now().timestamp_millis() + ttl.as_millis() as i64;
        let session = Session {
            fingerprint,
            role,
            expires: now + ttl,
            expires_unix_ms,
            presented_head: false,
        };
        self.sessions
            .insert(Sha256::digest(token).into(), session.clone());
        Ok((hex::encode(token), session))
    }

    /// The live session for a bearer token.
    pub fn session(&self, token: &str) -> Result<Session> {
        match self.sessions.get(&session_key(token)) {
            Some(s) if s.expires > Instant::now() => Ok(s.clone()),
            Some(_) => Err(RoomError::Unauthenticated(
                "the session expired: authenticate again".into(),
            )),
            None => Err(RoomError::Unauthenticated(
                "no valid session (it ended, or the room restarted): authenticate with the key the agreement \
                 names for you"
                    .into(),
            )),
        }
    }

    /// Lets the session of `token` present one audit head; a second one is refused (checking
    /// a head may read the log up to it: one per session bounds what a principal can make
    /// the room read by its login bound).
    pub fn claim_head_presentation(&mut self, token: &str) -> Result<()> {
        match self.sessions.get_mut(&session_key(token)) {
            Some(s) if s.presented_head => Err(RoomError::FailedPrecondition(
                "this session already presented an audit head: a session presents one (authenticate again \
                 to present another)"
                    .into(),
            )),
            Some(s) => {
                s.presented_head = true;
                Ok(())
            }
            None => Err(RoomError::Unauthenticated(
                "no valid session: authenticate first".into(),
            )),
        }
    }

    /// Ends every session bound to an agreement version (revocation, expiry, supersession).
    pub fn end_sessions_for(&mut self, fingerprint: Fingerprint) {
        self.sessions.retain(|_, s| s.fingerprint != fingerprint);
    }

    /// Live sessions (for tests and metrics).
    pub fn session_count(&self) -> usize {
        let now = Instant::now();
        self.sessions.values().filter(|s| s.expires > now).count()
    }
}

fn random32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| RoomError::Internal(format!("OS randomness unavailable: {e}")))?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fp(b: u8) -> Fingerprint {
        hex::encode([b; 32]).parse().unwrap()
    }

    fn state() -> AuthState {
        AuthState::new(Limits::default()).unwrap()
    }

    #[test]
    fn challenges_are_single_use_and_bound() {
        let mut a = state();
        let role = Role::Party("drinks".into());
        let n = a.issue_challenge(fp(1), role.clone(), [9; 32]).unwrap();
        assert!(
            a.check_challenge(&n, fp(2), &role, &[9; 32]).is_err(),
            "other agreement"
        );
        assert!(
            a.check_challenge(&n, fp(1), &Role::Party("snacks".into()), &[9; 32])
                .is_err(),
            "other principal"
        );
        assert!(
            a.check_challenge(&n, fp(1), &role, &[8; 32]).is_err(),
            "other client nonce"
        );
        let mut forged = n;
        forged[0] ^= 1; // a later expiry
        assert!(a.check_challenge(&forged, fp(1), &role, &[9; 32]).is_err());
        let c = a.check_challenge(&n, fp(1), &role, &[9; 32]).unwrap();
        a.consume(c).unwrap();
        let c = a.check_challenge(&n, fp(1), &role, &[9; 32]).unwrap();
        let e = a.consume(c).unwrap_err().to_string();
        assert!(e.contains("already used"), "{e}");
    }

    #[test]
    fn another_process_challenges_do_not_verify() {
        let a = state();
        let b = state();
        let role = Role::Analyst("ana".into());
        let n = a.issue_challenge(fp(1), role.clone(), [1; 32]).unwrap();
        assert!(b.check_challenge(&n, fp(1), &role, &[1; 32]).is_err());
    }

    #[test]
    fn expired_challenges_are_refused() {
        let a = AuthState::new(Limits {
            challenge_ttl: Duration::from_millis(1),
            ..Limits::default()
        })
        .unwrap();
        let role = Role::Party("drinks".into());
        let n = a.issue_challenge(fp(1), role.clone(), [9; 32]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let e = a
            .check_challenge(&n, fp(1), &role, &[9; 32])
            .unwrap_err()
            .to_string();
        assert!(e.contains("expired"), "{e}");
    }

    /// The flood that locked everyone out with a global challenge table: a million requests
    /// now store nothing, and the legitimate login that follows works.
    #[test]
    fn a_challenge_flood_stores_nothing_and_blocks_no_one() {
        let mut a = state();
        let stranger = Role::Party("drinks".into());
        for i in 0..20_000u32 {
            let mut cn = [0u8; 32];
            cn[..4].copy_from_slice(&i.to_be_bytes());
            a.issue_challenge(fp(1), stranger.clone(), cn).unwrap();
        }
        assert_eq!(a.used_total, 0);
        let ana = Role::Analyst("ana".into());
        let n = a.issue_challenge(fp(1), ana.clone(), [7; 32]).unwrap();
        let c = a.check_challenge(&n, fp(1), &ana, &[7; 32]).unwrap();
        a.consume(c).unwrap();
    }

    #[test]
    fn logins_over_the_bound_lock_out_only_that_principal() {
        let mut a = AuthState::new(Limits {
            max_logins_per_principal: 3,
            ..Limits::default()
        })
        .unwrap();
        let drinks = Role::Party("drinks".into());
        for i in 0..3u8 {
            let n = a.issue_challenge(fp(1), drinks.clone(), [i; 32]).unwrap();
            let c = a.check_challenge(&n, fp(1), &drinks, &[i; 32]).unwrap();
            a.consume(c).unwrap();
        }
        let n = a.issue_challenge(fp(1), drinks.clone(), [9; 32]).unwrap();
        let c = a.check_challenge(&n, fp(1), &drinks, &[9; 32]).unwrap();
        let e = a.consume(c).unwrap_err().to_string();
        assert!(e.contains("max_logins_per_principal"), "{e}");
        let snacks = Role::Party("snacks".into());
        let n = a.issue_challenge(fp(1), snacks.clone(), [9; 32]).unwrap();
        let c = a.check_challenge(&n, fp(1), &snacks, &[9; 32]).unwrap();
        a.consume(c).unwrap();
    }

    #[test]
    fn sessions_per_principal_are_bounded_oldest_ends_first() {
        let mut a = AuthState::new(Limits {
            max_sessions_per_principal: 2,
            ..Limits::default()
        })
        .unwrap();
        let ana = Role::Analyst("ana".into());
        let (t1, _) = a.start_session(fp(1), ana.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let (t2, _) = a.start_session(fp(1), ana.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let (t3, _) = a.start_session(fp(1), ana.clone()).unwrap();
        let (t4, _) = a
            .start_session(fp(1), Role::Party("drinks".into()))
            .unwrap();
        assert!(a.session(&t1).is_err(), "the oldest session ended");
        a.session(&t2).unwrap();
        a.session(&t3).unwrap();
        a.session(&t4).unwrap();
        assert_eq!(a.session_count(), 3);
    }

    #[test]
    fn sessions_resolve_and_end() {
        let mut a = state();
        let (token, s) = a.start_session(fp(1), Role::Analyst("ana".into())).unwrap();
        assert_eq!(a.session(&token).unwrap(), s);
        assert!(a.session("00").is_err());
        a.end_sessions_for(fp(1));
        assert!(a.session(&token).is_err());
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod expiry_tests;
