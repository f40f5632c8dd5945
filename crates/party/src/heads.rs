//! The audit heads a client saw, remembered across sessions: the newest head each room
//! signed for each agreement version. A room restored from an older backup (or that lost
//! data) signs heads behind what its participants saw; a client that remembers notices at
//! its next session and presents the remembered head to the room, which then stops serving
//! the agreement instead of forking its log (docs/OPERATIONS.md, "Backups").
//!
//! The file holds one line per (room key, fingerprint):
//! `<room key> <fingerprint> <entries> <hash hex> <signature hex>`, written atomically with
//! owner-only permissions. Every remembered head was checked against the room's key before
//! it was written, and is checked again when read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use accord_agreement::{Fingerprint, PublicKey};
use accord_proto::v1::SignedHead;

use crate::error::PartyError;

/// The remembered heads of one client.
#[derive(Debug)]
pub struct HeadMemory {
    path: PathBuf,
    heads: BTreeMap<(String, String), SignedHead>,
}

/// How a session's head compares with the remembered one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Nothing remembered for this room and agreement.
    Nothing,
    /// The session's head is the remembered one.
    Same,
    /// The log grew since: the remembered head should be presented to the room, which
    /// checks that its log still holds it.
    Grew(SignedHead),
    /// The room's log is behind what this client saw (fewer entries, or another last entry
    /// at the same count): the room went back in time.
    Behind(SignedHead),
}

impl HeadMemory {
    /// Reads the memory at `path` (empty if the file does not exist).
    pub fn load(path: &Path) -> Result<Self, PartyError> {
        let mut heads = BTreeMap::new();
        let bad = |line: usize, what: &str| {
            PartyError::State(format!(
                "{} line {line}: {what}; fix or delete the line (it only helps notice a room that went back in time)",
                path.display()
            ))
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate() {
                    let n = i + 1;
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let parts: Vec<&str> = line.split_whitespace().collect();
                    let [room, fp, entries, hash, sig] = parts.as_slice() else {
                        return Err(bad(
                            n,
                            "expected `<room key> <fingerprint> <entries> <hash> <signature>`",
                        ));
                    };
                    let room_key: PublicKey = room
                        .parse()
                        .map_err(|_| bad(n, "the room key does not parse"))?;
                    let head = SignedHead {
                        fingerprint: (*fp).to_owned(),
                        entries: entries
                            .parse()
                            .map_err(|_| bad(n, "the entry count is not a number"))?,
                        hash: hex::decode(hash).map_err(|_| bad(n, "the hash is not hex"))?,
                        signature: hex::decode(sig)
                            .map_err(|_| bad(n, "the signature is not hex"))?,
                    };
                    accord_audit::verify_head(&room_key, &head).map_err(|e| bad(n, &e))?;
                    heads.insert(((*room).to_owned(), (*fp).to_owned()), head);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(PartyError::State(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            heads,
        })
    }

    /// Where the memory is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Compares a verified head of `room_key` with the remembered one.
    pub fn compare(&self, room_key: &PublicKey, head: &SignedHead) -> Seen {
        let Some(seen) = self
            .heads
            .get(&(room_key.to_string(), head.fingerprint.clone()))
        else {
            return Seen::Nothing;
        };
        if seen.entries > head.entries || (seen.entries == head.entries && seen.hash != head.hash) {
            Seen::Behind(seen.clone())
        } else if seen.entries == head.entries {
            Seen::Same
        } else {
            Seen::Grew(seen.clone())
        }
    }

    /// Remembers a verified head of `room_key` if it is newer than the remembered one.
    pub fn record(&mut self, room_key: &PublicKey, head: &SignedHead) -> Result<(), PartyError> {
        let key = (room_key.to_string(), head.fingerprint.clone());
        if self
            .heads
            .get(&key)
            .is_some_and(|seen| seen.entries >= head.entries)
        {
            return Ok(());
        }
        self.heads.insert(key, head.clone());
        self.save()
    }

    /// Remembers `head` even if it is older than the remembered one: only after the room
    /// declared the remembered one lost in its log.
    pub fn replace(&mut self, room_key: &PublicKey, head: &SignedHead) -> Result<(), PartyError> {
        self.heads.insert(
            (room_key.to_string(), head.fingerprint.clone()),
            head.clone(),
        );
        self.save()
    }

    fn save(&self) -> Result<(), PartyError> {
        let mut text = String::from(
            "# Accord: the newest audit head each room signed for each agreement, as this client saw it.\n\
             # <room key> <fingerprint> <entries> <hash> <signature>\n",
        );
        for ((room, fp), h) in &self.heads {
            text.push_str(&format!(
                "{room} {fp} {} {} {}\n",
                h.entries,
                hex::encode(&h.hash),
                hex::encode(&h.signature)
            ));
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            accord_fs::create_dir_all(dir, accord_fs::Access::OwnerOnly)
                .map_err(|e| PartyError::State(e.to_string()))?;
        }
        accord_fs::write_atomic_with(&self.path, text.as_bytes(), accord_fs::Access::OwnerOnly)
            .map_err(|e| PartyError::State(e.to_string()))
    }
}

/// Checks that a `went_back` entry declares `seen` lost (its count and hash).
pub fn check_declared(line: &str, seen: &SignedHead) -> Result<(), String> {
    match accord_audit::declared_head(line) {
        Ok((entries, hash)) if entries == seen.entries && hash == hex::encode(&seen.hash) => Ok(()),
        _ => Err(format!(
            "the room answered with an audit entry that does not declare the head this client saw lost: {}",
            accord_agreement::text::escape(line, 300)
        )),
    }
}

/// What a client says when the room's log is behind the head it remembers.
pub fn went_back(
    url: &str,
    fingerprint: Fingerprint,
    seen: &SignedHead,
    now: &SignedHead,
    room_said: &str,
) -> PartyError {
    let how = if seen.entries > now.entries {
        format!(
            "its audit log of agreement {fingerprint} now has {} entries, but this client saw a head the room signed for {}",
            now.entries, seen.entries
        )
    } else {
        format!(
            "its audit log of agreement {fingerprint} no longer holds the entry {} this client saw (the log was rewritten)",
            seen.entries
        )
    };
    PartyError::Refused(format!(
        "the room {url} went back in time: {how}. It was restored from an older backup or lost data; anything \
         after that point (uploads, erasures, queries) is not in it. Nothing more was sent. Tell the room's \
         operator{}",
        if room_said.is_empty() {
            String::new()
        } else {
            format!("; the room says: {room_said}")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use accord_agreement::SecretKey;

    /// A head signed as the room signs it (built here from the documented message: only the
    /// room's crate signs heads).
    fn head(key: &SecretKey, entries: u64, hash: u8) -> SignedHead {
        let fp = Fingerprint::from_bytes([7; 32]);
        let message = accord_proto::signed::audit_head(fp.as_bytes(), entries, &[hash; 32]);
        SignedHead {
            fingerprint: fp.to_string(),
            entries,
            hash: vec![hash; 32],
            signature: key
                .sign(accord_agreement::sig::Purpose::AuditHead, &message)
                .to_bytes()
                .to_vec(),
        }
    }

    #[test]
    fn the_newest_head_is_remembered_and_a_room_behind_it_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heads");
        let room = SecretKey::from_seed(&[1; 32]);
        let rk = room.public_key();
        let mut m = HeadMemory::load(&path).unwrap();
        assert_eq!(m.compare(&rk, &head(&room, 3, 3)), Seen::Nothing);
        m.record(&rk, &head(&room, 5, 5)).unwrap();
        // An older head never replaces a newer one.
        m.record(&rk, &head(&room, 4, 4)).unwrap();
        let m = HeadMemory::load(&path).unwrap();
        assert_eq!(m.compare(&rk, &head(&room, 5, 5)), Seen::Same);
        assert_eq!(
            m.compare(&rk, &head(&room, 6, 6)),
            Seen::Grew(head(&room, 5, 5))
        );
        assert_eq!(
            m.compare(&rk, &head(&room, 4, 4)),
            Seen::Behind(head(&room, 5, 5))
        );
        // Same count, another last entry: a rewritten log.
        assert_eq!(
            m.compare(&rk, &head(&room, 5, 9)),
            Seen::Behind(head(&room, 5, 5))
        );
        // Another room key is another memory.
        let other = SecretKey::from_seed(&[2; 32]);
        assert_eq!(
            m.compare(&other.public_key(), &head(&other, 1, 1)),
            Seen::Nothing
        );
    }

    #[test]
    fn a_tampered_memory_file_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heads");
        let room = SecretKey::from_seed(&[1; 32]);
        let mut m = HeadMemory::load(&path).unwrap();
        m.record(&room.public_key(), &head(&room, 5, 5)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // Raising the count without the room's signature.
        let line = text.lines().last().unwrap();
        let forged = line.replacen(" 5 ", " 50 ", 1);
        std::fs::write(&path, text.replace(line, &forged)).unwrap();
        let err = HeadMemory::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("does not verify"),
            "{err}"
        );
    }

    /// A room's answer is believed only if its entry declares this client's head lost.
    #[test]
    fn only_an_entry_declaring_this_clients_head_is_believed() {
        let room = SecretKey::from_seed(&[1; 32]);
        let seen = head(&room, 5, 5);
        let line = |entries: u64, hash: &str, event: &str| {
            format!(
                r#"{{"seq":3,"prev":"{}","at":"2026-12-06T05:00:00Z","actor":"room","event":"{event}","seen_entries":{entries},"seen_hash":"{hash}","seen_signature":"00","log_entries":2,"presented_by":"party drinks"}}"#,
                "0".repeat(64)
            )
        };
        let right = hex::encode([5u8; 32]);
        check_declared(&line(5, &right, "went_back"), &seen).unwrap();
        let wrong = [
            line(4, &right, "went_back"),
            line(5, &hex::encode([6u8; 32]), "went_back"),
            r#"{"seq":3,"prev":"00","at":"x","actor":"room","event":"expired"}"#.to_owned(),
            "not json".to_owned(),
        ];
        for l in wrong {
            let err = check_declared(&l, &seen).unwrap_err();
            assert!(err.contains("does not declare"), "{err}");
        }
    }

    /// Every damaged line is named with its number and what is wrong with it; a memory that
    /// cannot be read is an error, not an empty memory.
    #[test]
    fn damaged_memory_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let room = SecretKey::from_seed(&[1; 32]);
        let path = dir.path().join("new").join("heads");
        let mut m = HeadMemory::load(&path).unwrap();
        m.record(&room.public_key(), &head(&room, 5, 5)).unwrap();
        let good = std::fs::read_to_string(&path).unwrap();
        let line = good.lines().last().unwrap().to_owned();
        let parts: Vec<&str> = line.split_whitespace().collect();
        let with = |i: usize, v: &str| {
            let mut p = parts.clone();
            p[i] = v;
            p.join(" ")
        };
        for (bad, expected) in [
            (parts[..4].join(" "), "expected `<room key>"),
            (with(0, "nonsense"), "the room key does not parse"),
            (with(2, "five"), "the entry count is not a number"),
            (with(3, "zz"), "the hash is not hex"),
            (with(4, "zz"), "the signature is not hex"),
        ] {
            std::fs::write(&path, format!("# comment\n\n{bad}\n")).unwrap();
            let err = HeadMemory::load(&path).unwrap_err().to_string();
            assert!(err.contains("line 3") && err.contains(expected), "{err}");
        }
        let err = HeadMemory::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    /// After the room declared a head lost, the older head replaces it.
    #[test]
    fn a_declared_loss_replaces_the_remembered_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heads");
        let room = SecretKey::from_seed(&[1; 32]);
        let rk = room.public_key();
        let mut m = HeadMemory::load(&path).unwrap();
        m.record(&rk, &head(&room, 9, 9)).unwrap();
        m.replace(&rk, &head(&room, 4, 4)).unwrap();
        let m = HeadMemory::load(&path).unwrap();
        assert_eq!(m.compare(&rk, &head(&room, 4, 4)), Seen::Same);
    }

    #[test]
    fn the_message_says_how_the_room_went_back() {
        let room = SecretKey::from_seed(&[1; 32]);
        let fp = Fingerprint::from_bytes([7; 32]);
        let fewer =
            went_back("http://r", fp, &head(&room, 6, 6), &head(&room, 3, 3), "").to_string();
        assert!(
            fewer.contains("now has 3 entries") && fewer.contains("for 6"),
            "{fewer}"
        );
        assert!(!fewer.contains("the room says"), "{fewer}");
        let rewritten =
            went_back("http://r", fp, &head(&room, 6, 6), &head(&room, 6, 9), "no").to_string();
        assert!(
            rewritten.contains("no longer holds the entry 6")
                && rewritten.contains("the room says: no"),
            "{rewritten}"
        );
        let more =
            went_back("http://r", fp, &head(&room, 6, 6), &head(&room, 8, 9), "").to_string();
        assert!(more.contains("no longer holds the entry 6"), "{more}");
    }
}
