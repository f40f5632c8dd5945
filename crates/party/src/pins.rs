//! Fingerprint pins: the agreement version a client first used for an id at a room.
//!
//! An agreement id is not a global name (issue 11, §1): a room may later answer the same id
//! with another fingerprint — a new version the parties agreed, or, if something went wrong,
//! someone else's agreement. A client given an id remembers the fingerprint it first got per
//! (room, id) and refuses a silent change; giving the fingerprint itself (`--agreement
//! <fingerprint>`) is how a person accepts a new one, and that updates the pin.
//!
//! The file holds one line per pin, `<room URL> <agreement id> <fingerprint>`, written
//! atomically with owner-only permissions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use accord_agreement::Fingerprint;

use crate::error::PartyError;

/// The pins of one client.
#[derive(Debug)]
pub struct Pins {
    path: PathBuf,
    pins: BTreeMap<(String, String), String>,
}

fn room_key(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

impl Pins {
    /// Reads the pins at `path` (none yet if the file does not exist).
    pub fn load(path: &Path) -> Result<Self, PartyError> {
        let mut pins = BTreeMap::new();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| {
                PartyError::State(format!("cannot read the pins file {}: {e}", path.display()))
            })?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let parts: Vec<&str> = line.split_whitespace().collect();
                let [room, id, fp] = parts.as_slice() else {
                    return Err(PartyError::State(format!(
                        "{} line {}: expected `<room URL> <agreement id> <fingerprint>`; fix or delete the line",
                        path.display(),
                        i + 1
                    )));
                };
                fp.parse::<Fingerprint>().map_err(|e| {
                    PartyError::State(format!("{} line {}: {e}", path.display(), i + 1))
                })?;
                pins.insert(((*room).to_owned(), (*id).to_owned()), (*fp).to_owned());
            }
        }
        Ok(Pins {
            path: path.to_path_buf(),
            pins,
        })
    }

    /// The pinned fingerprint for `agreement_id` at `room`, if any.
    pub fn get(&self, room: &str, agreement_id: &str) -> Option<&str> {
        self.pins
            .get(&(room_key(room), agreement_id.to_owned()))
            .map(String::as_str)
    }

    /// Checks the fingerprint the room bound a session to. `asked` is what the person gave
    /// as `--agreement`: a fingerprint is an explicit choice and (re)pins; an id must match
    /// the pin, or is pinned the first time.
    pub fn check(
        &mut self,
        room: &str,
        agreement_id: &str,
        asked: &str,
        got: Fingerprint,
    ) -> Result<(), PartyError> {
        let got = got.to_string();
        let key = (room_key(room), agreement_id.to_owned());
        let explicit = asked.trim() == got;
        match self.pins.get(&key) {
            Some(pinned) if *pinned == got => return Ok(()),
            Some(pinned) if !explicit => {
                return Err(PartyError::Refused(format!(
                    "the room {} now answers agreement {agreement_id:?} with fingerprint {got}, but you first used \
                     {pinned} there (pinned in {}). It may be a new version your parties agreed, or someone else's \
                     agreement under the same id. Check it with the parties (`accord agreement show` prints the \
                     fingerprint); if it is the one you mean, run again with --agreement {got}, which updates the pin",
                    key.0,
                    self.path.display()
                )));
            }
            _ => {}
        }
        self.pins.insert(key, got);
        self.save()
    }

    fn save(&self) -> Result<(), PartyError> {
        let mut text = String::from(
            "# Accord fingerprint pins: <room URL> <agreement id> <fingerprint>, one per line.\n",
        );
        for ((room, id), fp) in &self.pins {
            text.push_str(&format!("{room} {id} {fp}\n"));
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            accord_fs::create_dir_all(dir, accord_fs::Access::OwnerOnly)
                .map_err(|e| PartyError::State(e.to_string()))?;
        }
        accord_fs::write_atomic_with(&self.path, text.as_bytes(), accord_fs::Access::OwnerOnly)
            .map_err(|e| PartyError::State(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::from_bytes([b; 32])
    }

    #[test]
    fn a_changed_fingerprint_is_refused_until_chosen_explicitly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        let room = "http://127.0.0.1:7700/";
        let mut pins = Pins::load(&path).unwrap();
        pins.check(room, "deal", "deal", fp(1)).unwrap();
        // Survives a restart of the client, and the URL's trailing slash does not matter.
        let mut pins = Pins::load(&path).unwrap();
        assert_eq!(
            pins.get("http://127.0.0.1:7700", "deal"),
            Some(fp(1).to_string().as_str())
        );
        pins.check(room, "deal", "deal", fp(1)).unwrap();
        let err = pins
            .check(room, "deal", "deal", fp(2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&fp(1).to_string()) && err.contains(&format!("--agreement {}", fp(2))),
            "{err}"
        );
        // The same id at another room is another pin.
        pins.check("http://127.0.0.1:7701", "deal", "deal", fp(2))
            .unwrap();
        // Giving the new fingerprint accepts it.
        pins.check(room, "deal", &fp(2).to_string(), fp(2)).unwrap();
        let mut pins = Pins::load(&path).unwrap();
        pins.check(room, "deal", "deal", fp(2)).unwrap();
        assert!(pins.check(room, "deal", "deal", fp(1)).is_err());
    }
}
