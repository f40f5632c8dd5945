//! Which room a client accepts: the one the agreement names in `[room]` (issue 14).
//!
//! Checked in this order on every connection (docs/PROTOCOL.md, "The room's identity"):
//! 1. a caller that holds the agreement refuses, before signing anything, a room presenting
//!    another key than `[room].public_key` ([`RoomIdentity::check_presented`]);
//! 2. over TLS, the room's `tls-binding` signature must verify with the presented key over
//!    the SHA-256 of the certificate this client observed in the handshake;
//! 3. after the proof, the room sends the signed manifest the session is bound to: its
//!    fingerprint must be the session's (and the one asked for), every party must have signed
//!    it, and its `[room].public_key` must be the key the room presented
//!    ([`check_session_manifest`]). A caller that gave only an agreement id thereby learns the
//!    room key from a manifest signed by the parties, not from the room's word alone.

use accord_agreement::{Fingerprint, Manifest, PublicKey, SignatureStatus};

use crate::error::PartyError;

/// The room an agreement names: its key and operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomIdentity {
    /// The room's Ed25519 key (`[room].public_key`).
    pub public_key: PublicKey,
    /// Who operates it (`[room].operator`).
    pub operator: String,
    /// The agreement that names it, for messages (`id (fingerprint)`).
    pub named_by: String,
}

impl RoomIdentity {
    /// The room `manifest` names.
    pub fn of(manifest: &Manifest) -> Self {
        Self {
            public_key: manifest.room.public_key,
            operator: manifest.room.operator.clone(),
            named_by: format!("{} ({})", manifest.id, manifest.fingerprint()),
        }
    }

    /// Refuses a room presenting another key than the agreement names.
    pub fn check_presented(&self, url: &str, presented: &PublicKey) -> Result<(), PartyError> {
        if *presented == self.public_key {
            return Ok(());
        }
        Err(PartyError::Refused(format!(
            "the agreement {} names room key {} (operator {}), but the room at {url} presented key {presented}: \
             this is a different room, or someone impersonating the room (an attack). Nothing was sent to it. \
             Check the room URL; if the room's key really changed, every party must sign a new agreement version \
             naming the new key",
            self.named_by,
            self.public_key,
            accord_agreement::text::escape(&self.operator, 256),
        )))
    }
}

/// Check 3: the manifest the room sent after the proof.
pub(crate) fn check_session_manifest(
    url: &str,
    manifest_toml: &str,
    session: Fingerprint,
    presented: &PublicKey,
    expected: Option<&RoomIdentity>,
) -> Result<(), PartyError> {
    if manifest_toml.is_empty() {
        return Err(PartyError::Refused(format!(
            "the room at {url} did not send the agreement the session is bound to, so its key {presented} \
             cannot be checked against the agreement's [room] section: refusing (an older room, or not an \
             Accord room of this version)"
        )));
    }
    let manifest = Manifest::parse(manifest_toml).map_err(|_| {
        PartyError::Refused(format!(
            "the agreement text the room at {url} sent for the session does not parse: refusing"
        ))
    })?;
    let got = manifest.fingerprint();
    if got != session {
        return Err(PartyError::Refused(format!(
            "the room at {url} bound the session to agreement {session} but sent agreement {got} as its text: \
             refusing"
        )));
    }
    let unsigned: Vec<&str> = manifest
        .parties
        .keys()
        .filter(|p| accord_agreement::signature_status(&manifest, p) != SignatureStatus::Valid)
        .map(String::as_str)
        .collect();
    if !unsigned.is_empty() {
        return Err(PartyError::Refused(format!(
            "the agreement {session} the room at {url} sent is not signed by every party (missing or invalid: {}): \
             refusing",
            unsigned.join(", ")
        )));
    }
    if manifest.room.public_key != *presented {
        return Err(PartyError::Refused(format!(
            "the agreement {} ({session}) names room key {} (operator {}), but the room at {url} presented key \
             {presented}: this is a different room, or someone impersonating the room (an attack). Refusing; \
             check the room URL",
            accord_agreement::text::escape(&manifest.id, 128),
            manifest.room.public_key,
            accord_agreement::text::escape(&manifest.room.operator, 256),
        )));
    }
    if let Some(expected) = expected
        && expected.public_key != manifest.room.public_key
    {
        return Err(PartyError::Refused(format!(
            "the room at {url} bound the session to an agreement naming room key {}, not {} as agreement {} \
             does: refusing",
            manifest.room.public_key, expected.public_key, expected.named_by
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_presenting_another_key_is_refused_naming_both() {
        let named = accord_agreement::SecretKey::from_seed(&[6; 32]).public_key();
        let other = accord_agreement::SecretKey::from_seed(&[7; 32]).public_key();
        let id = RoomIdentity {
            public_key: named,
            operator: "Neutral Rooms Ltd".into(),
            named_by: "x (fp)".into(),
        };
        id.check_presented("http://r", &named).unwrap();
        let e = id
            .check_presented("http://r", &other)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&named.to_string())
                && e.contains(&other.to_string())
                && e.contains("different room")
                && e.contains("attack"),
            "{e}"
        );
    }
}
