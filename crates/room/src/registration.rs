//! Who may register agreements in this room (issue 11, §1; `deploy/README.md`, "Who may
//! register agreements").
//!
//! Open registration lets anyone who can reach the room spend its disk and CPU, so it is the
//! default only while every listener is on loopback. Beyond loopback the operator names the
//! party keys it hosts in an allow-list file (one `ed25519:…` key per line, `#` comments), or
//! says explicitly that registration is open.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use accord_agreement::{PublicKey, VerifiedAgreement};
use accord_proto::limits::MAX_ALLOW_LIST_BYTES;

use crate::error::{Result, RoomError};

/// Who may register agreements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Anyone who can reach the room.
    Open,
    /// Only agreements whose every party key is listed in this file. The file is read again on
    /// every submission, so the operator edits it without restarting the room.
    AllowList(PathBuf),
}

impl Registration {
    /// The rule for a room with these listeners: the allow-list when one is given; otherwise
    /// open only on loopback or when the operator says so with `open` (`--open-registration`).
    pub fn for_listeners(
        listeners: &[SocketAddr],
        allow_list: Option<&Path>,
        open: bool,
    ) -> Result<Self> {
        match (allow_list, open) {
            (Some(_), true) => Err(RoomError::InvalidArgument(
                "both a registration allow-list and open registration were asked for: choose one \
                 (--registration-allow FILE or --open-registration)"
                    .into(),
            )),
            (Some(path), false) => {
                // Read it once now so a typo stops the room at start, not at the first submission.
                load_allow_list(path)?;
                Ok(Registration::AllowList(path.to_path_buf()))
            }
            (None, true) => Ok(Registration::Open),
            (None, false) => match listeners.iter().find(|a| !a.ip().is_loopback()) {
                None => Ok(Registration::Open),
                Some(addr) => Err(RoomError::FailedPrecondition(format!(
                    "refusing to start: the room listens on {addr}, beyond loopback, so it needs a registration \
                     allow-list: write the party keys it may host into a file (one \"ed25519:…\" per line) and pass \
                     --registration-allow FILE (or registration_allow in room.toml); pass --open-registration only \
                     if anyone who can reach the room may register agreements (see deploy/README.md)"
                ))),
            },
        }
    }

    /// Refuses `agreement` unless every party key is allowed.
    pub fn check(&self, agreement: &VerifiedAgreement) -> Result<()> {
        let Registration::AllowList(path) = self else {
            return Ok(());
        };
        let allowed = load_allow_list(path)?;
        let missing: Vec<String> = agreement
            .manifest()
            .parties
            .iter()
            .filter(|(_, p)| !allowed.contains(&p.public_key))
            .map(|(name, p)| format!("{name} ({})", p.public_key))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(RoomError::PermissionDenied(format!(
            "this room only registers agreements whose party keys its operator allowed; not allowed: {}. \
             Ask the room's operator to add these keys to its registration allow-list",
            missing.join(", ")
        )))
    }
}

/// Reads an allow-list file: one `ed25519:<base64>` key per line; blank lines and text after
/// `#` are ignored. Any other line is refused with its number.
pub fn load_allow_list(path: &Path) -> Result<HashSet<PublicKey>> {
    let fail = |m: String| {
        RoomError::FailedPrecondition(format!("registration allow-list {}: {m}", path.display()))
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        fail(format!(
            "cannot be read ({e}); every submission is refused until it can"
        ))
    })?;
    if meta.len() > MAX_ALLOW_LIST_BYTES as u64 {
        return Err(fail(format!(
            "is {} bytes; the limit is {MAX_ALLOW_LIST_BYTES}",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot be read as UTF-8 text ({e})")))?;
    let mut keys = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let key: PublicKey = line.parse().map_err(|e| {
            fail(format!(
                "line {}: {e} (write one key per line as `accord keygen` prints it, \"ed25519:…\")",
                i + 1
            ))
        })?;
        keys.insert(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found unpinned by mutation testing (the end-to-end tests attack it too, but only the
    /// unit tests run per mutant): the allow-list decides, and its size limit is exact.
    #[test]
    fn the_allow_list_admits_only_agreements_whose_every_party_key_it_lists() {
        let text = crate::room::revocation_tests::agreement_text();
        let agreement = accord_agreement::verify(&text, chrono::Utc::now()).unwrap();
        let key = |n: u8| accord_agreement::SecretKey::from_seed(&[n; 32]).public_key();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allow.txt");
        let list = Registration::AllowList(path.clone());
        std::fs::write(&path, format!("{}  # drinks only\n", key(1))).unwrap();
        let e = list.check(&agreement).unwrap_err().to_string();
        assert!(e.contains("snacks") && !e.contains("drinks ("), "{e}");
        std::fs::write(&path, format!("{}\n{}\n", key(1), key(2))).unwrap();
        list.check(&agreement).unwrap();
        assert!(Registration::Open.check(&agreement).is_ok());
        // Exactly at the size limit is read; one byte over is refused.
        let line = format!("{}\n", key(1));
        let mut text = String::new();
        while text.len() + line.len() <= MAX_ALLOW_LIST_BYTES {
            text.push_str(&line);
        }
        text.push_str(&"#".repeat(MAX_ALLOW_LIST_BYTES - text.len()));
        assert_eq!(text.len(), MAX_ALLOW_LIST_BYTES);
        std::fs::write(&path, &text).unwrap();
        assert_eq!(load_allow_list(&path).unwrap().len(), 1);
        std::fs::write(&path, format!("{text}#")).unwrap();
        let e = load_allow_list(&path).unwrap_err().to_string();
        assert!(e.contains("the limit is"), "{e}");
    }

    #[test]
    fn registration_is_open_only_on_loopback_unless_said_so() {
        let lo: SocketAddr = "127.0.0.1:7700".parse().unwrap();
        let lo6: SocketAddr = "[::1]:7700".parse().unwrap();
        let wide: SocketAddr = "0.0.0.0:7700".parse().unwrap();
        let lan: SocketAddr = "192.168.1.5:7700".parse().unwrap();
        assert_eq!(
            Registration::for_listeners(&[lo, lo6], None, false).unwrap(),
            Registration::Open
        );
        for addr in [wide, lan] {
            let err = Registration::for_listeners(&[lo, addr], None, false).unwrap_err();
            assert!(err.to_string().contains("--registration-allow"), "{err}");
        }
        assert_eq!(
            Registration::for_listeners(&[wide], None, true).unwrap(),
            Registration::Open
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allow.txt");
        std::fs::write(&path, "# keys\n\n").unwrap();
        assert_eq!(
            Registration::for_listeners(&[wide], Some(&path), false).unwrap(),
            Registration::AllowList(path.clone())
        );
        assert!(Registration::for_listeners(&[wide], Some(&path), true).is_err());
        std::fs::write(&path, "ed25519:nonsense\n").unwrap();
        let err = Registration::for_listeners(&[wide], Some(&path), false).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
