//! An authenticated connection to the room, for a party or an analyst: connect with retries,
//! prove the key the agreement names (Ed25519 challenge–response, DESIGN §6), then attach the
//! session token to every call and check the room's signed audit head on every response.

use std::time::Duration;

use accord_agreement::{Fingerprint, PublicKey, SecretKey, sig::Purpose};
use accord_proto::v1::{self, auth_client::AuthClient};
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::error::PartyError;

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

/// Runs `f` up to 6 times with exponential backoff while it fails transiently.
pub async fn with_retries<T, F, Fut>(what: &str, mut f: F) -> Result<T, PartyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PartyError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match f().await {
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

/// Opens a channel to the room (with retries).
pub async fn channel(url: &str) -> Result<Channel, PartyError> {
    if url.starts_with("https://") {
        return Err(PartyError::Invalid(
            "this build connects to rooms over plain http on loopback only; use the room's http:// URL, or reach a \
             remote room through a local TLS tunnel (see deploy/README.md)"
                .into(),
        ));
    }
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| {
            PartyError::Invalid(format!(
                "{url:?} is not a valid room URL (e.g. http://127.0.0.1:7700): {e}"
            ))
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    with_retries("connect", || {
        let endpoint = endpoint.clone();
        async move {
            endpoint
                .connect()
                .await
                .map_err(|e| PartyError::Unreachable {
                    url: url.to_owned(),
                    reason: source_chain(&e),
                    gave_up: false,
                })
        }
    })
    .await
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// An authenticated session with the room.
#[derive(Debug, Clone)]
pub struct Connection {
    url: String,
    channel: Channel,
    token: MetadataValue<Ascii>,
    token_text: String,
    room_key: PublicKey,
    fingerprint: Fingerprint,
    agreement_id: String,
    principal_name: String,
    last_entries: u64,
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
        let channel = channel(url).await?;
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
            .map_err(|s| PartyError::from_status(url, s))?
            .into_inner();
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
            token_text: session.session_token,
            room_key,
            fingerprint,
            agreement_id: session.agreement_id,
            principal_name: name,
            last_entries: 0,
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
    /// the entries against the head with `accord_room::audit::verify_log`.
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

    /// Maps a gRPC status from this room.
    pub fn error(&self, status: tonic::Status) -> PartyError {
        PartyError::from_status(&self.url, status)
    }

    /// Checks the room's signed audit head: it must be signed by the room's key, name this
    /// agreement, and never shrink during the session (truncation is noticed).
    pub fn check_head(&mut self, head: Option<&v1::SignedHead>) -> Result<(), PartyError> {
        let head = head.ok_or_else(|| {
            PartyError::Refused("the room's response carries no signed audit head".into())
        })?;
        let hash: [u8; 32] = head
            .hash
            .as_slice()
            .try_into()
            .map_err(|_| PartyError::Refused("the audit head hash is not 32 bytes".into()))?;
        let sig: [u8; 64] =
            head.signature.as_slice().try_into().map_err(|_| {
                PartyError::Refused("the audit head signature is not 64 bytes".into())
            })?;
        if head.fingerprint != self.fingerprint.to_string() {
            return Err(PartyError::Refused(
                "the room's audit head names another agreement".into(),
            ));
        }
        let message =
            accord_proto::signed::audit_head(self.fingerprint.as_bytes(), head.entries, &hash);
        self.room_key
            .verify(
                Purpose::AuditHead,
                &message,
                &accord_agreement::Signature::from_bytes(&sig),
            )
            .map_err(|_| {
                PartyError::Refused("the room's signature on its audit head does not verify".into())
            })?;
        if head.entries < self.last_entries {
            return Err(PartyError::Refused(format!(
                "the room's audit log shrank from {} to {} entries: it was truncated",
                self.last_entries, head.entries
            )));
        }
        self.last_entries = head.entries;
        Ok(())
    }
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
