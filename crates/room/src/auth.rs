//! Ed25519 challenge–response and short-lived sessions (DESIGN §6).
//!
//! A caller asks for a challenge for one principal (party or analyst) of one agreement, signs
//! `fingerprint ‖ role ‖ name ‖ room_nonce ‖ client_nonce ‖ room_public_key` with the key the
//! agreement names for it, and gets a random bearer token. Tokens are stored only as their
//! SHA-256, so a lookup leaks nothing through timing about valid tokens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use accord_agreement::Fingerprint;
use sha2::{Digest, Sha256};

use crate::error::{Result, RoomError};

/// How long a challenge may be answered.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(120);
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(3600);
/// Most outstanding challenges (a flood of challenge requests cannot grow memory).
pub const MAX_CHALLENGES: usize = 10_000;

/// The role a caller proves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// A party, by name.
    Party(String),
    /// An analyst, by name.
    Analyst(String),
}

impl Role {
    /// "party" or "analyst", as signed.
    pub fn kind(&self) -> &'static str {
        match self {
            Role::Party(_) => "party",
            Role::Analyst(_) => "analyst",
        }
    }
    /// The principal's name.
    pub fn name(&self) -> &str {
        match self {
            Role::Party(n) | Role::Analyst(n) => n,
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
}

#[derive(Debug)]
struct Challenge {
    fingerprint: Fingerprint,
    role: Role,
    client_nonce: [u8; 32],
    expires: Instant,
}

/// Outstanding challenges and live sessions.
#[derive(Debug, Default)]
pub struct AuthState {
    challenges: HashMap<[u8; 32], Challenge>,
    sessions: HashMap<[u8; 32], Session>,
}

impl AuthState {
    /// Records a new challenge and returns the room nonce.
    pub fn issue_challenge(
        &mut self,
        fingerprint: Fingerprint,
        role: Role,
        client_nonce: [u8; 32],
    ) -> Result<[u8; 32]> {
        let now = Instant::now();
        self.challenges.retain(|_, c| c.expires > now);
        self.sessions.retain(|_, s| s.expires > now);
        if self.challenges.len() >= MAX_CHALLENGES {
            return Err(RoomError::FailedPrecondition(
                "too many authentication challenges are outstanding; try again in a minute".into(),
            ));
        }
        let nonce = random32()?;
        self.challenges.insert(
            nonce,
            Challenge {
                fingerprint,
                role,
                client_nonce,
                expires: now + CHALLENGE_TTL,
            },
        );
        Ok(nonce)
    }

    /// Takes (single use) the challenge for `room_nonce`, checking it matches the request.
    pub fn take_challenge(
        &mut self,
        room_nonce: &[u8; 32],
        fingerprint: Fingerprint,
        role: &Role,
        client_nonce: &[u8; 32],
    ) -> Result<()> {
        let c = self.challenges.remove(room_nonce).ok_or_else(|| {
            RoomError::Unauthenticated(
                "unknown or already used challenge: ask for a new one".into(),
            )
        })?;
        if c.expires <= Instant::now() {
            return Err(RoomError::Unauthenticated(
                "the challenge expired: ask for a new one".into(),
            ));
        }
        if c.fingerprint != fingerprint || &c.role != role || &c.client_nonce != client_nonce {
            return Err(RoomError::Unauthenticated(
                "the challenge was issued for another agreement, principal or client nonce".into(),
            ));
        }
        Ok(())
    }

    /// Starts a session; returns the bearer token (hex) and the session.
    pub fn start_session(
        &mut self,
        fingerprint: Fingerprint,
        role: Role,
    ) -> Result<(String, Session)> {
        let token = random32()?;
        let expires_unix_ms =
            chrono::Utc::now().timestamp_millis() + SESSION_TTL.as_millis() as i64;
        let session = Session {
            fingerprint,
            role,
            expires: Instant::now() + SESSION_TTL,
            expires_unix_ms,
        };
        self.sessions
            .insert(Sha256::digest(token).into(), session.clone());
        Ok((hex::encode(token), session))
    }

    /// The live session for a bearer token.
    pub fn session(&self, token: &str) -> Result<Session> {
        let key: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Tokens are hex of 32 bytes; hash the decoded bytes so both spellings agree.
        let key = match hex::decode(token.trim()) {
            Ok(raw) => Sha256::digest(&raw).into(),
            Err(_) => key,
        };
        match self.sessions.get(&key) {
            Some(s) if s.expires > Instant::now() => Ok(s.clone()),
            Some(_) => Err(RoomError::Unauthenticated(
                "the session expired: authenticate again".into(),
            )),
            None => Err(RoomError::Unauthenticated(
                "no valid session: authenticate with the key the agreement names for you".into(),
            )),
        }
    }

    /// Ends every session bound to an agreement version (revocation, expiry, supersession).
    pub fn end_sessions_for(&mut self, fingerprint: Fingerprint) {
        self.sessions.retain(|_, s| s.fingerprint != fingerprint);
        self.challenges.retain(|_, c| c.fingerprint != fingerprint);
    }
}

fn random32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| RoomError::Internal(format!("OS randomness unavailable: {e}")))?;
    Ok(b)
}

/// Reads `authorization: Bearer <token>` from request metadata.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<String> {
    let value = metadata.get("authorization").ok_or_else(|| {
        RoomError::Unauthenticated(
            "missing `authorization: Bearer <token>`: authenticate first".into(),
        )
    })?;
    let text = value
        .to_str()
        .map_err(|_| RoomError::Unauthenticated("the authorization header is not text".into()))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| {
            RoomError::Unauthenticated("the authorization header must be `Bearer <token>`".into())
        })?;
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        hex::encode([b; 32]).parse().unwrap()
    }

    #[test]
    fn challenges_are_single_use_and_bound() {
        let mut a = AuthState::default();
        let role = Role::Party("drinks".into());
        let n = a.issue_challenge(fp(1), role.clone(), [9; 32]).unwrap();
        assert!(
            a.take_challenge(&n, fp(2), &role, &[9; 32]).is_err(),
            "other agreement"
        );
        let n = a.issue_challenge(fp(1), role.clone(), [9; 32]).unwrap();
        a.take_challenge(&n, fp(1), &role, &[9; 32]).unwrap();
        assert!(
            a.take_challenge(&n, fp(1), &role, &[9; 32]).is_err(),
            "replayed"
        );
    }

    #[test]
    fn sessions_resolve_and_end() {
        let mut a = AuthState::default();
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
