//! Helpers shared by the commands: loading keys and agreements, mapping errors to exit codes.

use std::path::{Path, PathBuf};

use accord_agreement::{SecretKey, VerifiedAgreement};
use anyhow::{Context, Result, anyhow};

use crate::RoomUnreachable;

/// Loads an Ed25519 key file (refusing one readable by other users).
pub fn load_key(path: &Path) -> Result<SecretKey> {
    let bytes = accord_fs::read_secret(path)?;
    SecretKey::from_key_file(&bytes)
        .with_context(|| format!("{} is not a usable key file", path.display()))
}

/// Loads and verifies an agreement file: valid, in force now, signed by every party.
pub fn load_agreement(path: &Path) -> Result<VerifiedAgreement> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "could not read the agreement {} (party commands take the agreement file)",
            path.display()
        )
    })?;
    accord_agreement::verify(&text, chrono::Utc::now())
        .map_err(|e| anyhow!("{} cannot be used:\n{e}", path.display()))
}

/// An agreement given as a file path, an id or a fingerprint → what the room understands
/// (the fingerprint when a file was given, otherwise the text as is), and the room the
/// agreement names when a file was given (the client then refuses any other room before
/// signing anything for it).
pub fn agreement_ref_and_room(given: &str) -> Result<(String, Option<accord_party::RoomIdentity>)> {
    let path = Path::new(given);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read {}", path.display()))?;
        let manifest = accord_agreement::Manifest::parse(&text)
            .map_err(|e| anyhow!("{}:\n{e}", path.display()))?;
        return Ok((
            manifest.fingerprint().to_string(),
            Some(accord_party::RoomIdentity::of(&manifest)),
        ));
    }
    Ok((given.to_owned(), None))
}

/// Checks the fingerprint the room bound the session to against the client's pins, and says
/// so on stderr when an agreement **id** is used at this room for the first time: the room's
/// key was then checked against a manifest the parties signed, but which agreement the id
/// means is taken on first use (docs/PROTOCOL.md, "The room's identity").
pub fn check_pins(
    pins_path: &Path,
    room: &str,
    asked: &str,
    conn: &accord_party::Connection,
) -> Result<()> {
    let mut pins = accord_party::Pins::load(pins_path).map_err(party_error)?;
    let by_id = asked.parse::<accord_agreement::Fingerprint>().is_err();
    if by_id && pins.get(room, conn.agreement_id()).is_none() {
        eprintln!(
            "note: first use of agreement id {:?} at {room}: the room bound the session to fingerprint {}, \
             whose signed [room] section names the key this room presented ({}). The fingerprint is now pinned \
             in {}. Compare it with the one your party gave you (`accord agreement show` prints it), or pass \
             --agreement with the fingerprint or the agreement file to have it checked from the first use.",
            accord_agreement::text::escape(conn.agreement_id(), 128),
            conn.fingerprint(),
            conn.room_key(),
            pins_path.display()
        );
    }
    pins.check(room, conn.agreement_id(), asked, conn.fingerprint())
        .map_err(party_error)
}

/// [`check_pins`], then the audit heads this client saw at this room, remembered beside the
/// pins file with its extension replaced (`key.pins` → `key.heads`): a room that
/// went back in time is refused (docs/OPERATIONS.md, "Backups").
pub async fn check_pins_and_heads(
    pins_path: &Path,
    room: &str,
    asked: &str,
    conn: &mut accord_party::Connection,
) -> Result<()> {
    check_pins(pins_path, room, asked, conn)?;
    let declared = conn
        .remember_heads(&pins_path.with_extension("heads"))
        .await
        .map_err(party_error)?;
    if let Some(entry) = declared {
        eprintln!(
            "warning: the room {room} went back in time (restored from an older backup, or data lost) and says so \
             in its audit log: {}. What happened after its backup is not in the room.",
            accord_agreement::text::escape(&entry, 400)
        );
    }
    Ok(())
}

/// Converts a party-side error, keeping "room unreachable" recognizable for exit code 3.
pub fn party_error(e: accord_party::PartyError) -> anyhow::Error {
    match e {
        accord_party::PartyError::Unreachable { url, reason, .. } => {
            anyhow::Error::new(RoomUnreachable(format!("{url}: {reason}")))
        }
        other => anyhow::Error::new(other),
    }
}

/// A multi-threaded runtime for the async commands.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

/// The TLS options of every command that talks to a room.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) that issued the room's TLS certificate, for https:// rooms with a
    /// private CA (default: the system's trusted CAs).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for rooms that require mutual TLS.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, mode 0600).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Check the room's certificate for this name instead of the URL's host.
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
}

impl TlsArgs {
    /// Reads the files.
    pub fn load(&self) -> Result<accord_party::ClientTls> {
        let mut tls = accord_party::ClientTls::load(
            self.ca.as_deref(),
            self.client_cert.as_deref(),
            self.client_key.as_deref(),
        )
        .map_err(party_error)?;
        if let Some(n) = &self.tls_name {
            tls = tls.with_domain(n);
        }
        Ok(tls)
    }
}

/// Bytes for people: `512 bytes`, `3.2 MiB`, `1.7 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod human_bytes_tests {
    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(super::human_bytes(0), "0 bytes");
        assert_eq!(super::human_bytes(1023), "1023 bytes");
        assert_eq!(super::human_bytes(1024), "1.0 KiB");
        assert_eq!(super::human_bytes(3 * 1024 * 1024 + 200 * 1024), "3.2 MiB");
        assert_eq!(super::human_bytes(5 << 30), "5.0 GiB");
    }
}
