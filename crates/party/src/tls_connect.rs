//! The client's own TLS connector: rustls (ring) with the same trust as before (`--ca` or the
//! system's roots, an optional client certificate, ALPN `h2`), which also records the room's
//! leaf certificate so the client can check the room's signature binding that certificate to
//! the room key the agreement names (docs/PROTOCOL.md, "The room's identity").
//!
//! tonic's `ClientTlsConfig` does not expose the peer certificate, so the channel is built with
//! `Endpoint::connect_with_connector` and this connector does TCP and TLS itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tonic::codegen::http::Uri;

/// How long the TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The SHA-256 of the leaf certificate the room presented in the TLS handshake of this channel.
/// Once a connection recorded one, a reconnection presenting another certificate is refused:
/// everything checked against the first certificate keeps holding for the whole channel.
#[derive(Debug, Clone, Default)]
pub struct ObservedCertificate(Arc<Mutex<Option<[u8; 32]>>>);

impl ObservedCertificate {
    /// The SHA-256 of the room's leaf certificate (DER), once a handshake finished.
    pub fn sha256(&self) -> Option<[u8; 32]> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, hash: [u8; 32]) -> Result<(), std::io::Error> {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *seen {
            Some(first) if first != hash => Err(std::io::Error::other(format!(
                "the room presented TLS certificate {} on reconnecting, not {} as before: refusing \
                 (the room's key vouches for the first one only)",
                hex::encode(hash),
                hex::encode(first)
            ))),
            _ => {
                *seen = Some(hash);
                Ok(())
            }
        }
    }
}

/// The rustls configuration of a client: trust anchors, optional client identity, ALPN h2.
pub(crate) fn client_config(
    ca_pem: Option<&[u8]>,
    identity: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, String> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .ok_or_else(|| "no TLS crypto provider is installed".to_owned())?;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--ca: not a PEM certificate file ({e})"))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err("--ca: none of its certificates can be used as a trust anchor".into());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "this machine has no trusted CA certificates (system store is empty): pass the CA \
                     that issued the room's certificate with --ca FILE"
                        .into(),
                );
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => {
            let certs = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--client-cert: not a PEM certificate file ({e})"))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| format!("--client-key: no PEM private key found ({e})"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("--client-cert/--client-key cannot be used together: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A tower service connecting to the room: TCP, then TLS, recording the leaf certificate.
#[derive(Clone)]
pub(crate) struct RoomConnector {
    pub(crate) config: Arc<rustls::ClientConfig>,
    /// The name the certificate must be valid for (`--tls-name`, else the URL's host).
    pub(crate) server_name: ServerName<'static>,
    pub(crate) observed: ObservedCertificate,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for RoomConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or("the room URL has no host")?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let handshake =
                TlsConnector::from(this.config.clone()).connect(this.server_name.clone(), tcp);
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the TLS handshake did not finish within {} s",
                            HANDSHAKE_TIMEOUT.as_secs()
                        ),
                    )
                })??;
            let (_, session) = tls.get_ref();
            if session.alpn_protocol() != Some(b"h2".as_slice()) {
                return Err("HTTP/2 was not negotiated.".into());
            }
            let leaf = session
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or("the room presented no TLS certificate")?;
            this.observed.record(Sha256::digest(leaf.as_ref()).into())?;
            Ok(TokioIo::new(tls))
        })
    }
}
