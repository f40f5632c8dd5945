//! Reaching the room: the client's TLS settings, opening a gRPC channel (with the room's
//! protocol check and its key-bound certificate), and TLS failures explained for the person
//! who has to fix them.

use std::path::Path;
use std::time::Duration;

use accord_agreement::{PublicKey, sig::Purpose};
use accord_proto::v1::{self, auth_client::AuthClient};
use tonic::transport::{Channel, Endpoint};
use zeroize::Zeroizing;

use super::{Principal, with_retries};
use crate::error::PartyError;

/// TLS settings of a client: the CA to trust for the room's certificate (`--ca`; without it
/// the system's roots) and, for rooms that require mutual TLS, a client certificate.
#[derive(Clone, Default)]
pub struct ClientTls {
    ca_pem: Option<Vec<u8>>,
    ca_name: Option<String>,
    identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
    domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_name)
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// Reads `--ca`, `--client-cert` and `--client-key` (either both or neither of the last two).
    pub fn load(
        ca: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<Self, PartyError> {
        let read = |p: &Path, what: &str| {
            std::fs::read(p).map_err(|e| {
                PartyError::Invalid(format!("could not read {what} {}: {e}", p.display()))
            })
        };
        let mut tls = ClientTls::default();
        if let Some(ca) = ca {
            tls = tls.with_ca(
                read(ca, "the CA certificate (--ca)")?,
                &ca.display().to_string(),
            )?;
        }
        match (client_cert, client_key) {
            (None, None) => {}
            (Some(c), Some(k)) => {
                let key = accord_fs::read_secret(k).map_err(|e| {
                    PartyError::Invalid(format!("the client key (--client-key): {e}"))
                })?;
                tls = tls.with_identity(read(c, "the client certificate (--client-cert)")?, key)?;
            }
            _ => {
                return Err(PartyError::Invalid(
                    "--client-cert and --client-key go together: give both (the certificate and its key) or neither"
                        .into(),
                ));
            }
        }
        Ok(tls)
    }

    /// Trusts this CA (PEM) for the room's certificate instead of the system's roots.
    pub fn with_ca(mut self, pem: Vec<u8>, name: &str) -> Result<Self, PartyError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let n = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                PartyError::Invalid(format!("--ca {name}: not a PEM certificate file ({e})"))
            })?
            .len();
        if n == 0 {
            return Err(PartyError::Invalid(format!(
                "--ca {name}: holds no PEM certificate (no -----BEGIN CERTIFICATE----- block)"
            )));
        }
        self.ca_pem = Some(pem);
        self.ca_name = Some(name.to_owned());
        Ok(self)
    }

    /// Presents this client certificate and key (PEM) to rooms that require mutual TLS.
    pub fn with_identity(
        mut self,
        cert_pem: Vec<u8>,
        key_pem: Zeroizing<Vec<u8>>,
    ) -> Result<Self, PartyError> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                PartyError::Invalid(format!("--client-cert: not a PEM certificate file ({e})"))
            })?;
        if certs.is_empty() {
            return Err(PartyError::Invalid(
                "--client-cert holds no PEM certificate (no -----BEGIN CERTIFICATE----- block)"
                    .into(),
            ));
        }
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            PartyError::Invalid(format!("--client-key: no PEM private key found ({e})"))
        })?;
        self.identity = Some((cert_pem, key_pem));
        Ok(self)
    }

    /// Checks the room's certificate against this name instead of the URL's host.
    pub fn with_domain(mut self, domain: &str) -> Self {
        self.domain = Some(domain.to_owned());
        self
    }

    /// True when nothing was configured.
    pub fn is_empty(&self) -> bool {
        self.ca_pem.is_none() && self.identity.is_none() && self.domain.is_none()
    }

    /// The connector of an `https://` room at `host`: this trust, this client identity, and
    /// the name the certificate must be valid for (`--tls-name`, else `host`).
    fn connector(&self, host: &str) -> Result<crate::tls_connect::RoomConnector, PartyError> {
        let config = crate::tls_connect::client_config(
            self.ca_pem.as_deref(),
            self.identity
                .as_ref()
                .map(|(c, k)| (c.as_slice(), k.as_slice())),
        )
        .map_err(PartyError::Invalid)?;
        let name = self.domain.as_deref().unwrap_or(host);
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|e| {
            PartyError::Invalid(format!(
                "{name:?} is not a name a TLS certificate can be checked for ({e}); give --tls-name"
            ))
        })?;
        Ok(crate::tls_connect::RoomConnector {
            config: std::sync::Arc::new(config),
            server_name,
            observed: crate::tls_connect::ObservedCertificate::default(),
        })
    }
}

/// Refuses a room that speaks another protocol version than this client, naming both.
pub fn check_room_protocol(url: &str, room_version: u32) -> Result<(), PartyError> {
    let ours = accord_proto::PROTOCOL_VERSION;
    if room_version == ours {
        return Ok(());
    }
    let theirs = if room_version == 0 {
        "protocol 1 (accord 0.1, which does not announce a version)".to_owned()
    } else {
        format!("protocol {room_version}")
    };
    Err(PartyError::Refused(format!(
        "the room at {url} speaks Accord {theirs}, but this client speaks protocol {ours}: the \
         signed messages differ, so they cannot work together; run the same accord release as \
         the room (docs/PROTOCOL.md, \"Versioning\")"
    )))
}

/// Opens a channel to the room (with retries), over plain HTTP/2 (`http://`, loopback rooms).
pub async fn channel(url: &str) -> Result<Channel, PartyError> {
    channel_with(url, &ClientTls::default()).await
}

/// Opens a channel to the room (with retries): `https://` rooms over TLS with `tls`.
pub async fn channel_with(url: &str, tls: &ClientTls) -> Result<Channel, PartyError> {
    Ok(channel_observed(url, tls).await?.0)
}

/// [`channel_with`], also returning, for an `https://` room, what its TLS handshake showed
/// (the room's leaf certificate), to check the room's binding signature against.
pub async fn channel_observed(
    url: &str,
    tls: &ClientTls,
) -> Result<(Channel, Option<crate::tls_connect::ObservedCertificate>), PartyError> {
    let secure = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err(PartyError::Invalid(format!(
            "{url:?} is not a room URL: use https://HOST:PORT (TLS) or, for a room on loopback, http://127.0.0.1:PORT"
        )));
    };
    if !secure && !tls.is_empty() {
        return Err(PartyError::Invalid(format!(
            "TLS options (--ca, --client-cert) were given but the room URL {url} is plain http://: \
             use https:// for a room that serves TLS"
        )));
    }
    let invalid = |e: &dyn std::fmt::Display| {
        PartyError::Invalid(format!(
            "{url:?} is not a valid room URL (e.g. https://room.example.com:7700 or http://127.0.0.1:7700): {e}"
        ))
    };
    // An https:// room is reached through our own TLS connector (it records the room's
    // certificate); tonic is given the http:// form so that it does not add TLS of its own,
    // and the https:// origin for the requests' :scheme and :authority.
    let transport_url = match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_owned(),
    };
    let mut endpoint = Endpoint::from_shared(transport_url)
        .map_err(|e| invalid(&e))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // Every call announces the protocol version; the room refuses another one.
        .user_agent(accord_proto::protocol_agent())
        .map_err(|e| PartyError::Internal(format!("user agent: {e}")))?;
    let connector = if secure {
        install_crypto_provider();
        let origin: tonic::codegen::http::Uri = url.parse().map_err(|e| invalid(&e))?;
        let host = origin
            .host()
            .ok_or_else(|| invalid(&"it has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        endpoint = endpoint.origin(origin);
        Some(tls.connector(&host)?)
    } else {
        None
    };
    let channel = with_retries("connect", || {
        let endpoint = endpoint.clone();
        let connector = connector.clone();
        async move {
            match connector {
                Some(c) => endpoint.connect_with_connector(c).await,
                None => endpoint.connect().await,
            }
            .map_err(|e| connect_error(url, secure, tls, &e))
        }
    })
    .await?;
    Ok((channel, connector.map(|c| c.observed)))
}

/// Installs rustls's `ring` provider as the process default unless one is installed.
// rustls 0.23.48 deprecates the ring provider for lacking post-quantum key exchange; it is
// kept because it builds with only a C compiler (aws-lc-rs needs cmake and more), and the
// TLS key exchange is X25519/ECDHE (classical) either way unless aws-lc-rs is chosen.
#[allow(deprecated)]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only means another thread installed one in between: that one is kept.
        rustls::crypto::ring::default_provider()
            .install_default()
            .ok();
    }
}

/// The rustls error somewhere in `e`'s source chain (io::Error hides its payload from
/// `source()`, so each io::Error's inner error is looked at too).
fn find_rustls(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r.clone());
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(r.clone());
        }
        cur = c.source();
    }
    None
}

/// A TLS failure, said in the words of the person who must fix it.
fn tls_failure(url: &str, tls: &ClientTls, r: &rustls::Error, chain: &str) -> PartyError {
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    let ca = tls
        .ca_name
        .as_deref()
        .map(|n| format!("the CA in {n}"))
        .unwrap_or_else(|| "the system's trusted CAs (no --ca given)".into());
    let refused = |m: String| PartyError::Refused(format!("TLS connection to {url} failed: {m}"));
    let r = r.clone();
    match r {
        R::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => refused(format!(
            "the room's certificate is not signed by a CA you trust (unknown CA: checked against {ca}); \
             pass the CA that issued the room's certificate with --ca FILE"
        )),
        R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => refused(format!(
            "the room's certificate is not valid for the name in the URL (name mismatch: {}); connect with a \
             name the certificate lists (dev-certs: localhost, 127.0.0.1 and each --san) or reissue it",
            match &r {
                R::InvalidCertificate(C::NotValidForNameContext { expected, presented }) => format!(
                    "expected {expected:?}, the certificate names {}",
                    presented.join(", ")
                ),
                _ => "the certificate does not name this host".into(),
            }
        )),
        R::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => refused(
            "the room's certificate has expired (expired certificate); the room's operator must renew it".into(),
        ),
        R::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => refused(
            "the room's certificate is not valid yet (check this machine's clock and the room's)".into(),
        ),
        R::AlertReceived(A::CertificateRequired) => refused(
            "the room requires a client certificate (mutual TLS) and none was presented: pass \
             --client-cert FILE and --client-key FILE"
                .into(),
        ),
        R::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::AccessDenied)
            if tls.identity.is_some() =>
        {
            refused(format!(
                "the room refused your client certificate ({r}): it is not signed by the CA the room trusts \
                 (the room's --client-ca); ask the room's operator which CA to use"
            ))
        }
        R::AlertReceived(A::HandshakeFailure) if tls.identity.is_none() => refused(
            "the room ended the handshake; it may require a client certificate (mutual TLS): pass \
             --client-cert FILE and --client-key FILE"
                .into(),
        ),
        R::InvalidMessage(_) => refused(
            "the room answered in plain text, not TLS (plain-text room): use http:// for a room that serves \
             plain HTTP/2 on loopback, or ask its operator to start it with --tls-cert/--tls-key"
                .into(),
        ),
        other => refused(format!("{other} ({chain})")),
    }
}

/// A failed call whose cause is a TLS failure (TLS 1.3 reports a refused client certificate
/// only at the first call, after the client's side of the handshake finished).
pub fn tls_call_failure(url: &str, tls: &ClientTls, status: &tonic::Status) -> Option<PartyError> {
    let chain = source_chain(status);
    if let Some(r) = find_rustls(status) {
        return Some(tls_failure(url, tls, &r, &chain));
    }
    // h2 keeps only the text of an I/O error: a TLS alert the room sent after the client's
    // side of the handshake (TLS 1.3) arrives as "received fatal alert: NAME".
    if let Some(rest) = chain.split("received fatal alert: ").nth(1) {
        use rustls::AlertDescription as A;
        let name: String = rest
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        let alert = match name.as_str() {
            "CertificateRequired" => Some(A::CertificateRequired),
            "HandshakeFailure" => Some(A::HandshakeFailure),
            "UnknownCA" => Some(A::UnknownCA),
            "BadCertificate" => Some(A::BadCertificate),
            "CertificateUnknown" => Some(A::CertificateUnknown),
            "AccessDenied" => Some(A::AccessDenied),
            "DecryptError" => Some(A::DecryptError),
            _ => None,
        };
        if let Some(a) = alert {
            return Some(tls_failure(
                url,
                tls,
                &rustls::Error::AlertReceived(a),
                &chain,
            ));
        }
    }
    let closed = chain.contains("operation was canceled")
        || chain.contains("broken pipe")
        || chain.contains("connection reset");
    // TLS 1.3: the room checks the client certificate after the client's side of the
    // handshake, and depending on timing the alert is lost and only a closed connection is seen.
    if url.starts_with("https://") && closed {
        return Some(PartyError::Refused(format!(
            "TLS connection to {url} failed: the room closed the connection at the first call ({chain}); {}",
            if tls.identity.is_none() {
                "it probably requires a client certificate (mutual TLS) and none was presented: pass \
                 --client-cert FILE and --client-key FILE"
            } else {
                "it may have refused your client certificate (not signed by the CA the room trusts, \
                 its --client-ca); ask the room's operator which CA to use"
            }
        )));
    }
    if url.starts_with("http://")
        && (chain.contains("h2 protocol error")
            || chain.contains("broken pipe")
            || chain.contains("operation was canceled"))
    {
        return Some(PartyError::Refused(format!(
            "could not speak plain HTTP/2 to {url}: the connection broke at the first call ({chain}); \
             if the room serves TLS, use https://"
        )));
    }
    None
}

/// Says exactly what failed when a connection to the room could not be made: TLS failures
/// are the caller's configuration to fix and are not retried; the rest may be transient.
fn connect_error(
    url: &str,
    secure: bool,
    tls: &ClientTls,
    e: &(dyn std::error::Error + 'static),
) -> PartyError {
    let chain = source_chain(e);
    if let Some(r) = find_rustls(e) {
        return tls_failure(url, tls, &r, &chain);
    }
    let refused = |m: String| PartyError::Refused(format!("TLS connection to {url} failed: {m}"));
    if secure
        && (chain.contains("HTTP/2 was not negotiated") || chain.contains("tls handshake eof"))
    {
        return refused(format!(
            "the room did not complete a TLS handshake ({chain}): it may be a plain-text room (use http://) \
             or not an Accord room"
        ));
    }
    if !secure && chain.contains("h2 protocol error") {
        return PartyError::Refused(format!(
            "could not speak plain HTTP/2 to {url} ({chain}): if the room serves TLS, use https://"
        ));
    }
    PartyError::Unreachable {
        url: url.to_owned(),
        reason: chain,
        gave_up: false,
    }
}

fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Opens a channel to the room at `url` and checks, before anything about `agreement` is sent,
/// that it is the room the agreement names: its key (from a challenge, which the room answers
/// without looking anything up) and, over TLS, its binding of the certificate seen in the
/// handshake. For calls that send an agreement without a session (`agreement submit`): a
/// manifest says who shares what, which an impostor room must not learn.
pub async fn channel_to_named_room(
    url: &str,
    tls: &ClientTls,
    agreement: &accord_agreement::Manifest,
) -> Result<Channel, PartyError> {
    let room = crate::RoomIdentity::of(agreement);
    let (channel, observed) = channel_observed(url, tls).await?;
    let mut client_nonce = [0u8; 32];
    getrandom::fill(&mut client_nonce)
        .map_err(|e| PartyError::Internal(format!("OS randomness: {e}")))?;
    // Any party's (public) key and name: the challenge is the same for every request.
    let (party, probe) = agreement
        .parties
        .iter()
        .next()
        .ok_or_else(|| PartyError::Invalid("the agreement has no party".into()))?;
    let challenge = AuthClient::new(channel.clone())
        .challenge(v1::ChallengeRequest {
            agreement: agreement.fingerprint().to_string(),
            principal: Some(Principal::Party(party).to_proto()),
            client_nonce: client_nonce.to_vec(),
            public_key: probe.public_key.to_bytes().to_vec(),
        })
        .await
        .map_err(|s| {
            tls_call_failure(url, tls, &s).unwrap_or_else(|| PartyError::from_status(url, s))
        })?
        .into_inner();
    check_room_protocol(url, challenge.protocol_version)?;
    let presented = <[u8; 32]>::try_from(challenge.room_public_key.as_slice())
        .ok()
        .and_then(|b| PublicKey::from_bytes(&b).ok())
        .ok_or_else(|| {
            PartyError::Refused(format!("the room at {url} sent an invalid public key"))
        })?;
    room.check_presented(url, &presented)?;
    if let Some(observed) = &observed {
        check_tls_binding(url, observed, &presented, &challenge.tls_binding_signature)?;
    }
    Ok(channel)
}

/// Checks the room's signature binding the TLS certificate observed in this channel's
/// handshake to `room_key` (purpose `tls-binding`).
pub(super) fn check_tls_binding(
    url: &str,
    observed: &crate::tls_connect::ObservedCertificate,
    room_key: &PublicKey,
    signature: &[u8],
) -> Result<(), PartyError> {
    let Some(cert) = observed.sha256() else {
        return Err(PartyError::Refused(format!(
            "the TLS connection to {url} recorded no room certificate: refusing (this is a bug in the client)"
        )));
    };
    if signature.is_empty() {
        return Err(PartyError::Refused(format!(
            "the room at {url} serves TLS but sent no signature binding its certificate to its key \
             (room key {room_key}): it may be a TLS-terminating proxy or another server relaying the room, \
             or a room older than this client. Connect to the room itself; see docs/PROTOCOL.md, \"The room's identity\""
        )));
    }
    let sig: [u8; 64] = signature.try_into().map_err(|_| {
        PartyError::Refused(format!(
            "the room at {url} sent a TLS binding signature of {} bytes, not 64: refusing",
            signature.len()
        ))
    })?;
    room_key
        .verify(
            Purpose::TlsBinding,
            &accord_proto::signed::tls_binding(&cert),
            &accord_agreement::Signature::from_bytes(&sig),
        )
        .map_err(|_| {
            PartyError::Refused(format!(
                "the room key {room_key} does not vouch for the TLS certificate {url} presented (SHA-256 {}): \
                 the connection may be intercepted by a server holding another certificate (an attack), or \
                 the room's certificate changed since it started. Do not use this connection; ask the room's \
                 operator (docs/PROTOCOL.md, \"The room's identity\")",
                hex::encode(cert)
            ))
        })?;
    Ok(())
}
