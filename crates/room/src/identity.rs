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

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    const PROTOCOL_MD: &str = include_str!("../../../docs/PROTOCOL.md");

    /// The rows (name, value) of the table under `### TLS binding vector`.
    fn documented() -> Vec<(String, String)> {
        let section = PROTOCOL_MD
            .split("\n### ")
            .find(|s| s.starts_with("TLS binding vector"))
            .expect("docs/PROTOCOL.md has a section \"TLS binding vector\"");
        section
            .lines()
            .take_while(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with('|') && !l.starts_with("|--"))
            .skip(1)
            .map(|l| {
                let cells: Vec<String> = l
                    .trim()
                    .trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().trim_matches('`').to_owned())
                    .collect();
                (cells[0].clone(), cells[2].clone())
            })
            .collect()
    }

    /// The vector, computed with this crate's signing code.
    fn computed() -> Vec<(String, String)> {
        let seed: [u8; 32] = Sha256::digest(b"accord test room key").into();
        let key = SecretKey::from_seed(&seed);
        let cert_sha256: [u8; 32] = Sha256::digest(b"accord test certificate").into();
        let signature = tls_binding(&key, &cert_sha256);
        vec![
            ("seed".into(), hex::encode(seed)),
            (
                "room_public_key".into(),
                hex::encode(key.public_key().to_bytes()),
            ),
            ("cert_sha256".into(), hex::encode(cert_sha256)),
            (
                "signed bytes".into(),
                hex::encode(accord_agreement::sig::signed_message(
                    Purpose::TlsBinding,
                    &accord_proto::signed::tls_binding(&cert_sha256),
                )),
            ),
            ("signature".into(), hex::encode(signature.to_bytes())),
        ]
    }

    /// docs/PROTOCOL.md's TLS binding vector: the signed bytes are exactly the documented
    /// layout (rebuilt here by hand), the documented signature verifies over them with the
    /// documented key (checked with ed25519-dalek directly), and the room's code makes it.
    #[test]
    fn protocol_md_tls_binding_vector() {
        let doc = documented();
        assert_eq!(doc, computed());
        let value =
            |name: &str| hex::decode(&doc.iter().find(|(n, _)| n == name).unwrap().1).unwrap();
        let mut by_hand = b"accord/v1/tls-binding".to_vec();
        by_hand.push(0);
        by_hand.extend_from_slice(&Sha256::digest(b"accord test certificate"));
        assert_eq!(value("signed bytes"), by_hand);
        let vk =
            ed25519_dalek::VerifyingKey::from_bytes(&value("room_public_key").try_into().unwrap())
                .unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(&value("signature").try_into().unwrap());
        vk.verify_strict(&by_hand, &sig).unwrap();
    }

    /// Prints the vector's rows (for docs/PROTOCOL.md), run by hand.
    #[test]
    #[ignore = "generator for docs/PROTOCOL.md, run by hand"]
    fn print_tls_binding_vector() {
        for (name, value) in computed() {
            println!("| {name} | | `{value}` |");
        }
    }

    #[test]
    fn a_binding_does_not_verify_for_another_certificate_or_key() {
        let key = SecretKey::from_seed(&[1; 32]);
        let a = [0xaa; 32];
        let b = [0xbb; 32];
        let s = tls_binding(&key, &a);
        let msg = |h: &[u8; 32]| accord_proto::signed::tls_binding(h);
        key.public_key()
            .verify(Purpose::TlsBinding, &msg(&a), &s)
            .unwrap();
        assert!(
            key.public_key()
                .verify(Purpose::TlsBinding, &msg(&b), &s)
                .is_err()
        );
        let other = SecretKey::from_seed(&[2; 32]).public_key();
        assert!(other.verify(Purpose::TlsBinding, &msg(&a), &s).is_err());
        // Not usable as another purpose's signature (e.g. an audit head).
        assert!(
            key.public_key()
                .verify(Purpose::AuditHead, &msg(&a), &s)
                .is_err()
        );
    }
}
