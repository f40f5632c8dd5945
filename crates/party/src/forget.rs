//! `accord party forget`: delete this party's local secrets and records for one agreement
//! version once the agreement is over (revoked, superseded or expired).
//!
//! While the agreement is in force the secrets are what erasure needs (a customer's handle is
//! recomputed from them), so forgetting is refused then unless forced.

use std::path::{Path, PathBuf};

use accord_agreement::{Manifest, SecretKey};
use chrono::{DateTime, Utc};

use crate::client::{Connection, Principal};
use crate::error::PartyError;

/// Why forgetting was allowed, and what was deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct ForgetOutcome {
    /// The state directory that was deleted.
    pub dir: PathBuf,
    /// Why the agreement counts as over (or that it was forced).
    pub why: String,
    /// The files deleted (names and sizes), secrets first.
    pub deleted: Vec<(String, u64)>,
    /// The record left for customers' receipts (terms and dates, no customer).
    pub record: PathBuf,
}

/// How to check that the agreement is over with the room.
#[derive(Debug)]
pub struct RoomCheck<'a> {
    /// The room URL.
    pub url: &'a str,
    /// This party's key (to authenticate: the room serves an agreement in force to it).
    pub key: &'a SecretKey,
}

/// Deletes `<root>/<id>/<fingerprint>/` for `party` of `manifest`, when the agreement is over:
/// expired by its own window at `now`, or refused by the room (`room`), or `force`.
pub async fn forget(
    root: &Path,
    manifest: &Manifest,
    party: &str,
    room: Option<RoomCheck<'_>>,
    force: bool,
    now: DateTime<Utc>,
) -> Result<ForgetOutcome, PartyError> {
    if !manifest.parties.contains_key(party) {
        return Err(PartyError::Invalid(format!(
            "{party:?} is not a party of agreement {} (parties: {})",
            manifest.id,
            manifest
                .parties
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let fp = manifest.fingerprint();
    let dir = root.join(&manifest.id).join(fp.to_string());
    if !dir.is_dir() {
        return Err(PartyError::Refused(format!(
            "nothing to forget: there is no state for agreement {} version {} ({fp}) at {}; check --state",
            manifest.id,
            manifest.version,
            dir.display()
        )));
    }
    let why = if now >= manifest.valid_until {
        format!("it expired at {}", manifest.valid_until)
    } else if force {
        "--force was given (the agreement may still be in force)".to_owned()
    } else {
        let in_force = format!(
            "agreement {} version {} is valid until {}",
            manifest.id, manifest.version, manifest.valid_until
        );
        let Some(room) = room else {
            return Err(PartyError::Refused(format!(
                "{in_force} and no --room was given to confirm it was revoked: its secrets are what erasure needs. \
                 Pass --room (and --key) so the room can confirm, or --force if you are sure"
            )));
        };
        // A party of an ended agreement may still open a session by fingerprint (to read the
        // audit log), so "in force" is asked of the PSI service, which refuses ended ones.
        let served = match Connection::open_checked(
            room.url,
            &crate::ClientTls::default(),
            &fp.to_string(),
            Principal::Party(party),
            room.key,
            Some(&crate::RoomIdentity::of(manifest)),
        )
        .await
        {
            Ok(mut conn) => conn.psi_status().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match served {
            Ok(()) => {
                return Err(PartyError::Refused(format!(
                    "{in_force} and the room at {} still serves it: forgetting now would lose the secrets that erasure \
                     needs. Revoke it first (`accord agreement revoke`), or pass --force",
                    room.url
                )));
            }
            Err(PartyError::Room(reason)) => format!("the room refuses it: {reason}"),
            Err(e) => {
                return Err(PartyError::Refused(format!(
                    "{in_force}, and the room could not confirm it is over ({e}); nothing was deleted. Try again \
                     when the room is reachable, or pass --force"
                )));
            }
        }
    };
    // What a customer's receipt can still say afterwards: the terms and dates, no customer.
    let state = crate::state::State::open(root, &manifest.id, fp)?;
    let record = crate::rights::record_forgotten(root, &state, manifest, party, &why, now)?;
    let deleted = delete_state(&dir)?;
    // Remove the agreement id's directory too when this was its last version.
    if let Some(parent) = dir.parent()
        && std::fs::read_dir(parent).is_ok_and(|mut d| d.next().is_none())
    {
        std::fs::remove_dir(parent)
            .map_err(|e| PartyError::State(format!("{}: {e}", parent.display())))?;
    }
    Ok(ForgetOutcome {
        dir,
        why,
        deleted,
        record,
    })
}

/// Overwrites the secrets file with zeros (synced), then deletes the directory durably.
fn delete_state(dir: &Path) -> Result<Vec<(String, u64)>, PartyError> {
    let state_err =
        |p: &Path, e: std::io::Error| PartyError::State(format!("{}: {e}", p.display()));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| state_err(dir, e))? {
        let entry = entry.map_err(|e| state_err(dir, e))?;
        let len = entry
            .metadata()
            .map_err(|e| state_err(&entry.path(), e))?
            .len();
        files.push((entry.file_name().to_string_lossy().into_owned(), len));
    }
    files.sort_by_key(|(name, _)| (name != "secrets.key", name.clone()));
    let secrets = dir.join("secrets.key");
    if let Ok(meta) = std::fs::metadata(&secrets) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&secrets)
            .map_err(|e| state_err(&secrets, e))?;
        f.write_all(&vec![0u8; meta.len() as usize])
            .and_then(|()| f.sync_data())
            .map_err(|e| state_err(&secrets, e))?;
    }
    accord_fs::remove_dir_all_durable(dir).map_err(|e| PartyError::State(e.to_string()))?;
    Ok(files)
}
