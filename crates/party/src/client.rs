//! An authenticated connection to the room, for a party or an analyst: connect with retries,
//! prove the key the agreement names (Ed25519 challenge–response, DESIGN §6), then attach the
//! session token to every call and check the room's signed audit head on every response.

use std::time::Duration;

use accord_agreement::{Fingerprint, PublicKey, SecretKey, sig::Purpose};
use accord_proto::v1::{self, auth_client::AuthClient};
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::error::PartyError;

mod channel;

use channel::check_tls_binding;
pub use channel::{
    ClientTls, channel, channel_observed, channel_to_named_room, channel_with, check_room_protocol,
    tls_call_failure,
};

/// Who is connecting.
#[derive(Debug, Clone, Copy)]
pub enum Principal<'a> {
    /// A party, by name.
    Party(&'a str),
    /// An analyst, by name.
    Analyst(&'a str),
    /// An analyst, by public key (the room finds the name).
    AnalystKey(&'a PublicKey),
    /// An auditor, by name ("" = the name the agreement gives the key): reads the audit log.
    Auditor(&'a str),
}

impl Principal<'_> {
    fn to_proto(self) -> v1::Principal {
        v1::Principal {
            kind: Some(match self {
                Principal::Party(p) => v1::principal::Kind::Party(p.to_owned()),
                Principal::Analyst(a) => v1::principal::Kind::Analyst(a.to_owned()),
                // Sent as a name-less analyst with `public_key`: the room finds the name.
                Principal::AnalystKey(_) => v1::principal::Kind::Analyst(String::new()),
                Principal::Auditor(a) => v1::principal::Kind::Auditor(a.to_owned()),
            }),
        }
    }
    fn role(self) -> &'static str {
        match self {
            Principal::Party(_) => "party",
            Principal::Analyst(_) | Principal::AnalystKey(_) => "analyst",
            Principal::Auditor(_) => "auditor",
        }
    }
}

/// Most times [`with_retries`] starts over because the session ended (expired or the room
/// restarted): each time `f` re-authenticates; a room that ends every session is not retried
/// forever.
pub const MAX_SESSION_RESTARTS: u32 = 10;

/// Runs `f` up to 6 times with exponential backoff while it fails transiently, and again
/// (at once, up to [`MAX_SESSION_RESTARTS`] times) when its session ended: `f` must open its
/// own connection, so a new attempt re-authenticates.
pub async fn with_retries<T, F, Fut>(what: &str, mut f: F) -> Result<T, PartyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PartyError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    let mut restarts = 0;
    loop {
        match f().await {
            Err(PartyError::SessionEnded { reason, .. }) if restarts < MAX_SESSION_RESTARTS => {
                restarts += 1;
                tracing::info!(restarts, %reason, "{what}: the session ended; authenticating again");
            }
            Err(e) if e.is_transient() && attempt < 6 => {
                tracing::warn!(attempt, error = %e, "{what}: transient failure, retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            Err(PartyError::Unreachable { url, reason, .. }) => {
                return Err(PartyError::Unreachable {
                    url,
                    reason: format!("{reason} (gave up after {attempt} attempts)"),
                    gave_up: true,
                });
            }
            other => return other,
        }
    }
}

/// An authenticated session with the room. Its `Debug` never shows the bearer token.
#[derive(Clone)]
pub struct Connection {
    url: String,
    channel: Channel,
    token: MetadataValue<Ascii>,
    token_text: Zeroizing<String>,
    room_key: PublicKey,
    fingerprint: Fingerprint,
    agreement_id: String,
    principal_name: String,
    last_entries: u64,
    /// The newest head seen in this session.
    last_head: Option<v1::SignedHead>,
    /// Heads remembered across sessions ([`Connection::remember_heads`]).
    memory: Option<std::sync::Arc<std::sync::Mutex<crate::heads::HeadMemory>>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("token", &"[redacted]")
            .field("room_key", &self.room_key)
            .field("fingerprint", &self.fingerprint)
            .field("agreement_id", &self.agreement_id)
            .field("principal_name", &self.principal_name)
            .field("last_entries", &self.last_entries)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects and proves `key` for `principal` of `agreement` (an id or a fingerprint).
    /// The room resolves an id only among the agreements that name this key, and only after
    /// the proof; when `agreement` is a fingerprint, a session bound to another one is refused.
    pub async fn open(
        url: &str,
        agreement: &str,
        principal: Principal<'_>,
        key: &SecretKey,
    ) -> Result<Self, PartyError> {
        Self::open_with(url, &ClientTls::default(), agreement, principal, key).await
    }

    /// [`Connection::open`] with TLS settings for an `https://` room.
    pub async fn open_with(
        url: &str,
        tls: &ClientTls,
        agreement: &str,
        principal: Principal<'_>,
        key: &SecretKey,
    ) -> Result<Self, PartyError> {
        Self::open_checked(url, tls, agreement, principal, key, None).await
    }

    /// [`Connection::open_with`] for a caller that holds the agreement (a party, or anyone
    /// given the file): the room must present `room`, the key its `[room]` section names,
    /// before anything is signed for it. Every connection, with or without it, also checks
    /// the manifest the room sends after the proof (its fingerprint is the session's and its
    /// `[room]` key is the key the room presented) and, over TLS, the room's signature binding
    /// the certificate seen in the handshake to that key (docs/PROTOCOL.md, "The room's
    /// identity").
    pub async fn open_checked(
        url: &str,
        tls: &ClientTls,
        agreement: &str,
        principal: Principal<'_>,
        key: &SecretKey,
        room: Option<&crate::RoomIdentity>,
    ) -> Result<Self, PartyError> {
        let (channel, observed) = channel_observed(url, tls).await?;
        let mut auth = AuthClient::new(channel.clone());
        let mut client_nonce = [0u8; 32];
        getrandom::fill(&mut client_nonce)
            .map_err(|e| PartyError::Internal(format!("OS randomness: {e}")))?;
        let public_key = key.public_key();
        if let Principal::AnalystKey(k) = principal
            && *k != public_key
        {
            return Err(PartyError::Invalid(
                "the analyst key given is not the public key of the secret key given".into(),
            ));
        }
        let agreement = agreement.trim();
        let challenge = auth
            .challenge(v1::ChallengeRequest {
                agreement: agreement.to_owned(),
                principal: Some(principal.to_proto()),
                client_nonce: client_nonce.to_vec(),
                public_key: public_key.to_bytes().to_vec(),
            })
            .await
            .map_err(|s| {
                tls_call_failure(url, tls, &s).unwrap_or_else(|| PartyError::from_status(url, s))
            })?
            .into_inner();
        check_room_protocol(url, challenge.protocol_version)?;
        let room_key_bytes: [u8; 32] =
            challenge
                .room_public_key
                .as_slice()
                .try_into()
                .map_err(|_| {
                    PartyError::Refused("the room sent a public key that is not 32 bytes".into())
                })?;
        let room_key = PublicKey::from_bytes(&room_key_bytes).map_err(|e| {
            PartyError::Refused(format!("the room sent an invalid public key: {e}"))
        })?;
        // 1. The key the agreement names (when the caller holds the agreement), before the
        //    caller signs anything for this room.
        if let Some(expected) = room {
            expected.check_presented(url, &room_key)?;
        }
        // 2. Over TLS: the room's key vouches for the certificate this handshake showed.
        if let Some(observed) = &observed {
            check_tls_binding(url, observed, &room_key, &challenge.tls_binding_signature)?;
        }
        let room_nonce: [u8; 32] = challenge.room_nonce.as_slice().try_into().map_err(|_| {
            PartyError::Refused("the room sent a nonce that is not 32 bytes".into())
        })?;
        let role = principal.role();
        let sent_name = match principal {
            Principal::Party(n) | Principal::Analyst(n) | Principal::Auditor(n) => n,
            Principal::AnalystKey(_) => "",
        };
        let message = accord_proto::signed::auth_challenge(
            agreement,
            role,
            sent_name,
            &public_key.to_bytes(),
            &room_nonce,
            &client_nonce,
            &room_key_bytes,
        );
        let signature = key.sign(Purpose::AuthChallenge, &message);
        let session = auth
            .authenticate(v1::AuthenticateRequest {
                agreement: agreement.to_owned(),
                principal: Some(principal.to_proto()),
                room_nonce: room_nonce.to_vec(),
                client_nonce: client_nonce.to_vec(),
                signature: signature.to_bytes().to_vec(),
                public_key: public_key.to_bytes().to_vec(),
            })
            .await
            .map_err(|s| PartyError::from_status(url, s))?
            .into_inner();
        let fingerprint: Fingerprint = session
            .fingerprint
            .parse()
            .map_err(|_| PartyError::Refused("the room sent an invalid fingerprint".into()))?;
        if let Ok(asked) = agreement.parse::<Fingerprint>()
            && asked != fingerprint
        {
            return Err(PartyError::Refused(format!(
                "asked for agreement {asked} but the room bound the session to {fingerprint}: refusing"
            )));
        }
        // 3. The agreement the room bound the session to names this room's key.
        crate::room_identity::check_session_manifest(
            url,
            &session.manifest_toml,
            fingerprint,
            &room_key,
            room,
        )?;
        let name = session.principal_name.clone();
        if !sent_name.is_empty() && sent_name != name {
            return Err(PartyError::Refused(format!(
                "the room bound the session to {name:?} instead of {sent_name:?}: refusing"
            )));
        }
        let token =
            MetadataValue::try_from(format!("Bearer {}", session.session_token)).map_err(|_| {
                PartyError::Refused(
                    "the room sent a session token that is not valid header text".into(),
                )
            })?;
        let mut conn = Self {
            url: url.to_owned(),
            channel,
            token,
            token_text: Zeroizing::new(session.session_token),
            room_key,
            fingerprint,
            agreement_id: session.agreement_id,
            principal_name: name,
            last_entries: 0,
            last_head: None,
            memory: None,
        };
        conn.check_head(session.head.as_ref())?;
        Ok(conn)
    }

    /// The agreement's id, as the room reported it after the proof.
    pub fn agreement_id(&self) -> &str {
        &self.agreement_id
    }

    /// The whole audit log of the session's agreement, fetched page by page (only parties and
    /// auditors may), with the signed head of the last page; every head is checked. Verify
    /// the entries against the head with `accord_audit::verify_log`.
    pub async fn audit_log(&mut self) -> Result<(Vec<String>, v1::SignedHead), PartyError> {
        let mut client = accord_proto::v1::audit_client::AuditClient::new(self.channel())
            .max_decoding_message_size(accord_proto::limits::MAX_MESSAGE_BYTES);
        let mut entries: Vec<String> = Vec::new();
        loop {
            let response = client
                .fetch(self.request(v1::FetchAuditRequest {
                    fingerprint: self.fingerprint.to_string(),
                    start: entries.len() as u64,
                    max_entries: 0,
                }))
                .await
                .map_err(|s| self.error(s))?
                .into_inner();
            self.check_head(response.head.as_ref())?;
            if response.room_public_key != self.room_key.to_bytes() {
                return Err(PartyError::Refused(
                    "the room presented another key with its audit log than at authentication"
                        .into(),
                ));
            }
            let head = response.head.ok_or_else(|| {
                PartyError::Refused("the room's response carries no signed audit head".into())
            })?;
            let got = response.entries.len();
            entries.extend(response.entries);
            if entries.len() as u64 >= head.entries {
                return Ok((entries, head));
            }
            if got == 0 {
                return Err(PartyError::Refused(format!(
                    "the room's audit head counts {} entries but it sent only {}",
                    head.entries,
                    entries.len()
                )));
            }
        }
    }

    /// The channel, for building service clients.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The room URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The room's public key as presented at authentication.
    pub fn room_key(&self) -> &PublicKey {
        &self.room_key
    }

    /// The agreement version the session is bound to.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The principal's name as the agreement spells it.
    pub fn principal_name(&self) -> &str {
        &self.principal_name
    }

    /// The bearer token (for Flight SQL clients: `authorization: Bearer <token>`).
    pub fn token(&self) -> &str {
        &self.token_text
    }

    /// Wraps a message with the session's bearer token.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut().insert("authorization", self.token.clone());
        r
    }

    /// Maps a gRPC status from this room (a call made with this session: `UNAUTHENTICATED`
    /// becomes [`PartyError::SessionEnded`], which [`with_retries`] answers by starting over
    /// with a new session).
    pub fn error(&self, status: tonic::Status) -> PartyError {
        PartyError::from_session_status(&self.url, status)
    }

    /// Checks the room's signed audit head: it must be signed by the room's key, name this
    /// agreement, and never shrink during the session (truncation is noticed).
    pub fn check_head(&mut self, head: Option<&v1::SignedHead>) -> Result<(), PartyError> {
        let entries = verify_head(&self.room_key, self.fingerprint, head)?;
        if entries < self.last_entries {
            return Err(PartyError::Refused(format!(
                "the room's audit log shrank from {} to {} entries: it was truncated",
                self.last_entries, entries
            )));
        }
        self.last_entries = entries;
        if let Some(head) = head {
            self.last_head = Some(head.clone());
            if let Some(memory) = &self.memory {
                memory
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .record(&self.room_key, head)?;
            }
        }
        Ok(())
    }

    /// Remembers this room's heads for this agreement across sessions in the file at
    /// `path` (see [`crate::heads`]), after comparing the session's head with the one
    /// remembered there. When the log is not at the remembered head, the head is presented
    /// to the room, which checks that its log still holds it. A room whose log went back in
    /// time (restored from an older backup, or data lost) must say so in its log (a
    /// `went_back` entry naming the remembered head); a room that does not is refused. The
    /// entry, when there is one, is returned (and logged as a warning): whatever this client
    /// did after the backup must be done again (an upload resumes by itself).
    pub async fn remember_heads(
        &mut self,
        path: &std::path::Path,
    ) -> Result<Option<String>, PartyError> {
        use crate::heads::{HeadMemory, Seen};
        let mut memory = HeadMemory::load(path)?;
        let current = self.last_head.clone().ok_or_else(|| {
            PartyError::Refused("the room's session carries no signed audit head".into())
        })?;
        let (seen, behind) = match memory.compare(&self.room_key, &current) {
            Seen::Nothing | Seen::Same => (None, false),
            Seen::Grew(seen) => (Some(seen), false),
            Seen::Behind(seen) => (Some(seen), true),
        };
        let mut declared = None;
        if let Some(seen) = seen {
            let went_back = self.present_head(seen.clone()).await?;
            match went_back {
                None if behind => {
                    // The room claims to hold a head its own log is behind: refused.
                    return Err(crate::heads::went_back(
                        &self.url,
                        self.fingerprint,
                        &seen,
                        &current,
                        "the room did not record it in its log",
                    ));
                }
                None => {}
                Some(line) => {
                    crate::heads::check_declared(&line, &seen).map_err(|why| {
                        crate::heads::went_back(&self.url, self.fingerprint, &seen, &current, &why)
                    })?;
                    tracing::warn!(
                        room = %self.url,
                        agreement = %self.fingerprint,
                        seen_entries = seen.entries,
                        "the room went back in time (restored from an older backup, or data lost) and recorded it \
                         in its audit log; what this client did after its backup is not in the room and must be \
                         done again (an upload resumes by itself): {line}"
                    );
                    declared = Some(line);
                }
            }
        }
        let now = self.last_head.clone().unwrap_or(current);
        memory.record(&self.room_key, &now)?;
        if declared.is_some() {
            // The remembered head was declared lost: remember the room's head from now on.
            memory.replace(&self.room_key, &now)?;
        }
        self.memory = Some(std::sync::Arc::new(std::sync::Mutex::new(memory)));
        Ok(declared)
    }

    /// Presents a remembered head; returns the room's `went_back` entry, if it made one.
    async fn present_head(&mut self, head: v1::SignedHead) -> Result<Option<String>, PartyError> {
        let mut client = accord_proto::v1::audit_client::AuditClient::new(self.channel());
        let response = client
            .present(self.request(v1::PresentHeadRequest { head: Some(head) }))
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        // The log may now be shorter than in this session: a went_back entry follows what the
        // room holds. Check the signature, then take it as this session's head.
        crate::client::verify_head(&self.room_key, self.fingerprint, response.head.as_ref())?;
        if let Some(h) = &response.head
            && h.entries >= self.last_entries
        {
            self.last_entries = h.entries;
            self.last_head = Some(h.clone());
        }
        Ok(Some(response.went_back_entry).filter(|l| !l.is_empty()))
    }
}

/// Checks a signed audit head outside a session: signed by `room_key`, naming `fingerprint`.
/// Returns the number of entries it vouches for. [`Connection::check_head`] adds the
/// session's "never shrinks" check.
pub fn verify_head(
    room_key: &PublicKey,
    fingerprint: Fingerprint,
    head: Option<&v1::SignedHead>,
) -> Result<u64, PartyError> {
    let head = head.ok_or_else(|| {
        PartyError::Refused("the room's response carries no signed audit head".into())
    })?;
    if head.fingerprint != fingerprint.to_string() {
        return Err(PartyError::Refused(
            "the room's audit head names another agreement".into(),
        ));
    }
    accord_audit::verify_head(room_key, head).map_err(PartyError::Refused)?;
    Ok(head.entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn unreachable() -> PartyError {
        PartyError::Unreachable {
            url: "http://127.0.0.1:9".into(),
            reason: "connection refused".into(),
            gave_up: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_give_up_once_and_nested_loops_do_not_multiply() {
        let calls = AtomicU32::new(0);
        let inner = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(unreachable())
        };
        let err = with_retries("outer", || with_retries("inner", inner))
            .await
            .unwrap_err();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            6,
            "the inner loop's 6 attempts only"
        );
        assert!(!err.is_transient());
        assert!(
            err.to_string().contains("gave up after 6 attempts"),
            "{err}"
        );
        // Errors that are not transient are returned at once.
        let calls = AtomicU32::new(0);
        let err = with_retries("refused", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(PartyError::Room("no".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(matches!(err, PartyError::Room(_)));
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod head_tests;
