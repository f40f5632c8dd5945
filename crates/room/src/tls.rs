//! TLS for the room's listeners (gRPC and Flight SQL): rustls through tonic, with the `ring`
//! crypto provider, and optional client-certificate authentication (mutual TLS).
//!
//! Files are checked when the room starts, not at the first connection: a certificate file
//! without a certificate, a key that does not belong to the certificate or a client CA file
//! without a CA are refused with the file's name and what to do.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use zeroize::Zeroizing;

use crate::RoomError;

/// How long a client may take to finish the TLS handshake before the room drops the
/// connection: bounds what a client that connects and then stays silent costs the room.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs rustls's `ring` provider as the process default, once. If another provider was
/// installed first (by an embedding program), that one is kept.
// rustls 0.23.48 deprecates the ring provider for lacking post-quantum key exchange; it is
// kept because it builds with only a C compiler (aws-lc-rs needs cmake and more).
#[allow(deprecated)]
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only means another thread installed one in between: that one is kept.
        rustls::crypto::ring::default_provider()
            .install_default()
            .ok();
    }
}

/// SHA-256 of the leaf (first) certificate of the PEM file at `path` (`--tls-proxy-cert`).
pub fn leaf_sha256(path: &Path) -> Result<[u8; 32], RoomError> {
    let pem = read(path, "TLS proxy certificate (--tls-proxy-cert)")?;
    let chain = certs(&pem, &path.display().to_string(), "--tls-proxy-cert")?;
    Ok(Sha256::digest(chain[0].as_ref()).into())
}

/// The room's TLS identity and, for mutual TLS, the CA that client certificates must chain to.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Zeroizing<Vec<u8>>,
    client_ca_pem: Option<Vec<u8>>,
    cert_sha256: [u8; 32],
    source: String,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("source", &self.source)
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, RoomError> {
    std::fs::read(path).map_err(|e| {
        RoomError::FailedPrecondition(format!("could not read the {what} {}: {e}", path.display()))
    })
}

fn certs(pem: &[u8], what: &str, flag: &str) -> Result<Vec<CertificateDer<'static>>, RoomError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            RoomError::FailedPrecondition(format!(
                "{flag} {what}: not a PEM certificate file ({e}); give a file with \
                 -----BEGIN CERTIFICATE----- blocks"
            ))
        })?;
    if certs.is_empty() {
        return Err(RoomError::FailedPrecondition(format!(
            "{flag} {what}: holds no PEM certificate (no -----BEGIN CERTIFICATE----- block)"
        )));
    }
    Ok(certs)
}

impl ServerTls {
    /// Reads and checks `--tls-cert`, `--tls-key` and the optional `--client-ca`.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, RoomError> {
        let cert_pem = read(cert, "TLS certificate (--tls-cert)")?;
        // The key is a secret: refuse one that other users can read, like every key file.
        let key_pem = accord_fs::read_secret(key).map_err(|e| {
            RoomError::FailedPrecondition(format!("the TLS private key (--tls-key): {e}"))
        })?;
        let client_ca_pem = client_ca
            .map(|p| read(p, "client CA (--client-ca)"))
            .transpose()?;
        Self::from_pem(
            cert_pem,
            key_pem,
            client_ca_pem,
            &cert.display().to_string(),
            &key.display().to_string(),
            client_ca.map(Path::to_path_buf),
        )
    }

    /// Checks PEM texts (names are used in messages only).
    pub fn from_pem(
        cert_pem: Vec<u8>,
        key_pem: Zeroizing<Vec<u8>>,
        client_ca_pem: Option<Vec<u8>>,
        cert_name: &str,
        key_name: &str,
        client_ca_name: Option<PathBuf>,
    ) -> Result<Self, RoomError> {
        install_crypto_provider();
        let chain = certs(&cert_pem, cert_name, "--tls-cert")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            RoomError::FailedPrecondition(format!(
                "--tls-key {key_name}: no PEM private key found ({e}); give the key that belongs to \
                 --tls-cert (PKCS#8, PKCS#1 or SEC1 PEM)"
            ))
        })?;
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .ok_or_else(|| RoomError::Internal("no TLS crypto provider is installed".into()))?;
        let signing = provider.key_provider.load_private_key(key).map_err(|e| {
            RoomError::FailedPrecondition(format!(
                "--tls-key {key_name}: unusable private key: {e}"
            ))
        })?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
        certified.keys_match().map_err(|e| {
            RoomError::FailedPrecondition(format!(
                "--tls-key {key_name} is not the private key of --tls-cert {cert_name} ({e}): \
                 give the key the certificate was issued for"
            ))
        })?;
        let cert_sha256: [u8; 32] = Sha256::digest(chain[0].as_ref()).into();
        if let (Some(pem), Some(name)) = (&client_ca_pem, &client_ca_name) {
            let name = name.display().to_string();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs(pem, &name, "--client-ca")?);
            if added == 0 {
                return Err(RoomError::FailedPrecondition(format!(
                    "--client-ca {name}: none of its certificates can be used as a trust anchor"
                )));
            }
        }
        let mut source = format!("{cert_name} (key {key_name})");
        if let Some(ca) = &client_ca_name {
            source.push_str(&format!(", client certificates from {}", ca.display()));
        }
        Ok(Self {
            cert_pem,
            key_pem,
            client_ca_pem,
            cert_sha256,
            source,
        })
    }

    /// True when clients must present a certificate signed by the client CA.
    pub fn requires_client_certificate(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// SHA-256 of the leaf certificate (DER) the room presents.
    pub fn certificate_sha256(&self) -> [u8; 32] {
        self.cert_sha256
    }

    /// Where the files came from, for the start-up log line.
    pub fn describe(&self) -> &str {
        &self.source
    }

    pub(crate) fn tonic_config(&self) -> ServerTlsConfig {
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, self.key_pem.as_slice()))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca_pem {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        config
    }
}
