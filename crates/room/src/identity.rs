//! The room's identity: its Ed25519 key (the key every agreement names in `[room]`) and the
//! statement binding its TLS certificate to that key.
//!
//! The key lives in `<data dir>/room.key` (owner-only). `accord room key --data-dir DIR`
//! creates it (or loads it) and prints the public key the parties paste into the agreement;
//! the room refuses to register an agreement naming any other key, and clients refuse a room
//! presenting any other key.

use std::path::{Path, PathBuf};

use accord_agreement::{PublicKey, SecretKey, Signature, sig::Purpose};

use crate::error::{Result, RoomError};

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "room.key";

/// Where the room key of `data_dir` lives.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Loads the room key of `data_dir`, creating the directory (owner-only) and a new key when
/// there is none yet.
pub fn load_or_create(data_dir: &Path) -> Result<SecretKey> {
    accord_fs::create_dir_all(data_dir, accord_fs::Access::OwnerOnly)?;
    let path = key_path(data_dir);
    if path.exists() {
        let bytes = accord_fs::read_secret(&path)?;
        return SecretKey::from_key_file(&bytes).map_err(|e| {
            RoomError::FailedPrecondition(format!(
                "the room key {} cannot be used: {e}; restore it from a backup (every agreement of this \
                 room names its public key, so a new key means new agreements)",
                path.display()
            ))
        });
    }
    let key = SecretKey::generate().map_err(|e| RoomError::Internal(e.to_string()))?;
    accord_fs::write_new_secret(&path, key.to_key_file().as_bytes())?;
    tracing::info!(path = %path.display(), public_key = %key.public_key(), "created the room key");
    Ok(key)
}

/// Installs `key` as the room key of `data_dir` (for provisioning and tests); refuses to
/// replace an existing key.
pub fn install(data_dir: &Path, key: &SecretKey) -> Result<()> {
    accord_fs::create_dir_all(data_dir, accord_fs::Access::OwnerOnly)?;
    let path = key_path(data_dir);
    if path.exists() {
        return Err(RoomError::FailedPrecondition(format!(
            "{} already holds a room key; it is never replaced (agreements name it)",
            path.display()
        )));
    }
    accord_fs::write_new_secret(&path, key.to_key_file().as_bytes())?;
    Ok(())
}

/// The room's signature binding the TLS leaf certificate with this SHA-256 (of its DER bytes)
/// to the room key (purpose `tls-binding`; docs/PROTOCOL.md, "The room's identity").
pub fn tls_binding(key: &SecretKey, cert_sha256: &[u8; 32]) -> Signature {
    key.sign(
        Purpose::TlsBinding,
        &accord_proto::signed::tls_binding(cert_sha256),
    )
}

/// The refusal of an agreement written for another room, naming both keys.
pub fn check_agreement_names(ours: &PublicKey, named: &PublicKey, id: &str) -> Result<()> {
    if ours == named {
        return Ok(());
    }
    Err(RoomError::FailedPrecondition(format!(
        "agreement {id} names room key {named}; this room's key is {ours} — the agreement was written for \
         another room. Register it at the room it names, or have every party sign a version whose [room] \
         public_key is this room's key (`accord room key` prints it)"
    )))
}
