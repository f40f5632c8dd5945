//! `room.toml`: the room's configuration file (`accord room serve --config room.toml`), the
//! same settings as the flags plus the tables that only a file can hold conveniently.
//!
//! Unknown keys are refused (a misspelt `client_ca` must not silently turn mutual TLS off),
//! and every error names the file, the line and the column. Relative paths are relative to
//! the file's directory.
//!
//! ```toml
//! data_dir = "/var/lib/accord"
//! listen = "0.0.0.0:7700"
//! flight_sql = "0.0.0.0:7701"        # optional
//! insecure_plaintext_network = false # optional, see `--insecure-plaintext-network`
//! tls_proxy_cert = "proxy.crt"       # optional, see `--tls-proxy-cert`
//! engine = "single-node"             # optional: or "ballista-standalone" (a `ballista` build)
//!
//! [tls]                              # optional; required for non-loopback addresses
//! cert = "tls/room.crt"
//! key = "tls/room.key"
//! client_ca = "tls/clients-ca.crt"   # optional: require mutual TLS
//!
//! [limits]                           # optional; each key overrides one default of `Limits`
//! challenge_ttl_secs = 120
//! session_ttl_secs = 3600
//! max_sessions_per_principal = 16
//! max_logins_per_principal = 64
//! max_concurrent_streams = 32
//! concurrency_per_connection = 32
//! request_timeout_secs = 1800
//! stream_idle_timeout_secs = 60
//! fetch_work_batches = 64
//! lease_ttl_secs = 60
//!
//! [registration]                     # who may register agreements (deploy/README.md)
//! allow = "/etc/accord/registration-allow.txt"   # only these party keys
//! open = false                       # true: anyone who can reach the room (beyond loopback)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{RoomError, ServeConfig, ServerTls};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomFile {
    /// Where the room keeps everything.
    pub data_dir: PathBuf,
    /// The gRPC listener (default 127.0.0.1:7700).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The Flight SQL listener, if any.
    #[serde(default)]
    pub flight_sql: Option<SocketAddr>,
    /// Plain text on a non-loopback address (see `--insecure-plaintext-network`).
    #[serde(default)]
    pub insecure_plaintext_network: bool,
    /// The certificate a TLS-terminating proxy in front of the room presents (see
    /// `--tls-proxy-cert`).
    #[serde(default)]
    pub tls_proxy_cert: Option<PathBuf>,
    /// TLS for both listeners.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// `[limits]`: overrides of the room's tunable bounds ([`crate::Limits`]); a key that is
    /// not a tunable limit is refused with its line, a value out of range when the room starts.
    #[serde(default)]
    pub limits: LimitsFile,
    /// `[registration]`: who may register agreements (`--registration-allow`,
    /// `--open-registration`).
    #[serde(default)]
    pub registration: RegistrationFile,
    /// The query engine (`--engine`): `"single-node"` (default) or `"ballista-standalone"`.
    #[serde(default)]
    pub engine: crate::QueryEngine,
}

/// `[limits]`: every key optional; durations in whole seconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    challenge_ttl_secs: Option<u64>,
    session_ttl_secs: Option<u64>,
    max_sessions_per_principal: Option<usize>,
    max_logins_per_principal: Option<usize>,
    max_concurrent_streams: Option<u32>,
    concurrency_per_connection: Option<usize>,
    request_timeout_secs: Option<u64>,
    stream_idle_timeout_secs: Option<u64>,
    fetch_work_batches: Option<u32>,
    lease_ttl_secs: Option<u64>,
}

impl LimitsFile {
    /// The defaults with this table's overrides (range checks happen in `Limits::check`).
    pub fn to_limits(&self) -> crate::Limits {
        let mut l = crate::Limits::default();
        let secs = Duration::from_secs;
        if let Some(v) = self.challenge_ttl_secs {
            l.challenge_ttl = secs(v);
        }
        if let Some(v) = self.session_ttl_secs {
            l.session_ttl = secs(v);
        }
        if let Some(v) = self.max_sessions_per_principal {
            l.max_sessions_per_principal = v;
        }
        if let Some(v) = self.max_logins_per_principal {
            l.max_logins_per_principal = v;
        }
        if let Some(v) = self.max_concurrent_streams {
            l.max_concurrent_streams = v;
        }
        if let Some(v) = self.concurrency_per_connection {
            l.concurrency_per_connection = v;
        }
        if let Some(v) = self.request_timeout_secs {
            l.request_timeout = secs(v);
        }
        if let Some(v) = self.stream_idle_timeout_secs {
            l.stream_idle_timeout = secs(v);
        }
        if let Some(v) = self.fetch_work_batches {
            l.fetch_work_batches = v;
        }
        if let Some(v) = self.lease_ttl_secs {
            l.lease_ttl = secs(v);
        }
        l
    }
}

/// `[registration]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationFile {
    /// The allow-list file of party keys.
    #[serde(default)]
    pub allow: Option<PathBuf>,
    /// Open registration beyond loopback.
    #[serde(default)]
    pub open: bool,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7700))
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM, mode 0600).
    pub key: PathBuf,
    /// Require client certificates signed by this CA (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl RoomFile {
    /// Parses the text of `path` (used in messages and to resolve relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Self, RoomError> {
        let mut file: RoomFile = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            let (at, shown) = if line > 0 {
                let text = text.lines().nth(line - 1).unwrap_or("").trim();
                (
                    format!("{}:{line}:{col}", path.display()),
                    format!(" in `{}`", text.escape_debug()),
                )
            } else {
                (path.display().to_string(), String::new())
            };
            RoomError::InvalidArgument(format!(
                "{at}: {}{shown} (see the room.toml keys in deploy/README.md)",
                e.message().trim_end()
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut file.data_dir);
        if let Some(a) = &mut file.registration.allow {
            resolve(a);
        }
        if let Some(p) = &mut file.tls_proxy_cert {
            resolve(p);
        }
        if let Some(t) = &mut file.tls {
            resolve(&mut t.cert);
            resolve(&mut t.key);
            if let Some(ca) = &mut t.client_ca {
                resolve(ca);
            }
        }
        Ok(file)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, RoomError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            RoomError::InvalidArgument(format!(
                "could not read the room configuration {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text, path)
    }

    /// The serve configuration (reads and checks the TLS files).
    pub fn to_serve_config(&self, expiry_check: Duration) -> Result<ServeConfig, RoomError> {
        let tls = self
            .tls
            .as_ref()
            .map(|t| ServerTls::load(&t.cert, &t.key, t.client_ca.as_deref()))
            .transpose()?;
        Ok(ServeConfig {
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            flight_sql: self.flight_sql,
            expiry_check,
            tls,
            insecure_plaintext_network: self.insecure_plaintext_network,
            tls_proxy_cert: self.tls_proxy_cert.clone(),
            limits: self.limits.to_limits(),
            registration_allow: self.registration.allow.clone(),
            open_registration: self.registration.open,
            engine: self.engine,
        })
    }
}

/// 1-based line and column of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RoomFile, String> {
        RoomFile::parse(text, Path::new("/etc/accord/room.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_file_parses_and_paths_are_relative_to_it() {
        let f = parse(
            "data_dir = \"data\"\nlisten = \"0.0.0.0:7700\"\nflight_sql = \"0.0.0.0:7701\"\n\
             [tls]\ncert = \"tls/room.crt\"\nkey = \"/keys/room.key\"\nclient_ca = \"tls/ca.crt\"\n\
             [limits]\nsession_ttl_secs = 600\nmax_concurrent_streams = 8\n\
             [registration]\nallow = \"allowed.txt\"\n",
        )
        .unwrap();
        let limits = f.limits.to_limits();
        assert_eq!(limits.session_ttl, Duration::from_secs(600));
        assert_eq!(limits.max_concurrent_streams, 8);
        assert_eq!(
            limits.challenge_ttl,
            crate::Limits::default().challenge_ttl,
            "keys not given keep their defaults"
        );
        assert_eq!(
            f.registration.allow.as_deref(),
            Some(Path::new("/etc/accord/allowed.txt"))
        );
        assert!(!f.registration.open);
        assert_eq!(f.data_dir, Path::new("/etc/accord/data"));
        assert_eq!(f.listen, "0.0.0.0:7700".parse().unwrap());
        assert_eq!(f.flight_sql, Some("0.0.0.0:7701".parse().unwrap()));
        let tls = f.tls.unwrap();
        assert_eq!(tls.cert, Path::new("/etc/accord/tls/room.crt"));
        assert_eq!(tls.key, Path::new("/keys/room.key"));
        assert_eq!(tls.client_ca.unwrap(), Path::new("/etc/accord/tls/ca.crt"));
        assert!(!f.insecure_plaintext_network);
    }

    #[test]
    fn defaults_are_loopback_plain_text() {
        let f = parse("data_dir = \"/d\"\n").unwrap();
        assert_eq!(f.listen, default_listen());
        assert!(f.tls.is_none() && f.flight_sql.is_none());
        assert_eq!(f.engine, crate::QueryEngine::SingleNode);
    }

    #[test]
    fn the_engine_is_named_and_an_unknown_one_refused_with_its_line() {
        let f = parse("data_dir = \"/d\"\nengine = \"ballista-standalone\"\n").unwrap();
        assert_eq!(f.engine, crate::QueryEngine::BallistaStandalone);
        let config = f.to_serve_config(Duration::from_secs(1)).unwrap();
        assert_eq!(config.engine, crate::QueryEngine::BallistaStandalone);
        let e = parse("data_dir = \"/d\"\nengine = \"ballista\"\n").unwrap_err();
        assert!(
            e.contains("room.toml:2") && e.contains("ballista-standalone"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_line() {
        let cases = [
            // A misspelt key must not silently drop mutual TLS.
            (
                "data_dir = \"/d\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nclient_cert_ca = \"ca\"\n",
                "room.toml:5:1",
                "client_cert_ca",
            ),
            (
                "data_dir = \"/d\"\nlisten = \"nowhere\"\n",
                "room.toml:2:",
                "listen",
            ),
            ("data_dir = \"/d\"\nport = 7700\n", "room.toml:2:1", "port"),
            // A limit this build does not have is refused, not ignored.
            (
                "data_dir = \"/d\"\n[limits]\nmax_sessions = 10\n",
                "room.toml:3:1",
                "max_sessions",
            ),
            (
                "data_dir = \"/d\"\n[registration]\nallow_list = \"x\"\n",
                "room.toml:3:1",
                "allow_list",
            ),
            ("listen = \"127.0.0.1:1\"\n", "room.toml", "data_dir"),
            (
                "data_dir = \"/d\"\n[tls]\ncert = \"c\"\n",
                "room.toml",
                "key",
            ),
        ];
        for (text, at, names) in cases {
            let err = parse(text).map(|_| ()).expect_err(text);
            assert!(err.contains(at), "{text:?}: {err}");
            assert!(err.contains(names), "{text:?}: {err}");
        }
    }
}
