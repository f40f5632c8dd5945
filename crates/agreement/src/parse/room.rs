//! `[room]`, `[[auditors]]` and `[rotation_signatures]`: who runs the room, who may read
//! the audit log, and the old keys' consent to a key rotation.

use std::collections::HashMap;

use toml::de::DeTable;

use super::cx::{Cx, span_of};
use crate::manifest::{Analyst, Auditor, RoomSection};
use crate::{PublicKey, Signature};

const AUDITOR_KEYS: &[&str] = &["name", "public_key"];
const ROOM_KEYS: &[&str] = &["operator", "public_key"];

/// How to get the room's key, said wherever it is missing or malformed.
const ROOM_KEY_FIX: &str = "ask the room's operator for the output of `accord room key --data-dir DIR` \
     (run on the room's machine) and paste it as `public_key = \"ed25519:…\"` under [room]";

/// `[room]`: who operates the room and its Ed25519 key (required: the room is a named
/// party of the agreement, and clients refuse a room presenting another key).
pub(super) fn walk_room(cx: &mut Cx<'_>, root: &DeTable<'_>) -> Option<RoomSection> {
    let Some(v) = cx.get(root, None, "", "room", false) else {
        cx.at(
            None,
            "room",
            "the [room] section is missing: an agreement names the room that serves it (its operator and \
             its key), so that parties and analysts can refuse any other room"
                .to_owned(),
            format!(
                "add\n  [room]\n  operator = \"who runs the room\"\n  public_key = \"ed25519:…\"\n{ROOM_KEY_FIX}"
            ),
        );
        return None;
    };
    let t = cx.table(v, "room")?;
    cx.deny_unknown(t, "room", ROOM_KEYS);
    let span = span_of(v);
    let operator = cx
        .get(t, span.clone(), "room", "operator", true)
        .and_then(|v| {
            let s = cx.string(v, "room.operator")?;
            if s.trim().is_empty() || s.len() > 254 || s.chars().any(char::is_control) {
                cx.problem(
                    v,
                    "room.operator",
                    "the room operator is empty, longer than 254 bytes or has control characters",
                    "name who runs the room, e.g. \"Neutral Hosting Ltd\" (legal reads it in `accord agreement show`)",
                );
                return None;
            }
            Some(s.to_owned())
        });
    let public_key = match cx.get(t, span, "room", "public_key", true) {
        Some(v) => {
            let s = cx.string(v, "room.public_key")?;
            match s.parse::<PublicKey>() {
                Ok(k) => Some(k),
                Err(e) => {
                    cx.problem(v, "room.public_key", e.to_string(), ROOM_KEY_FIX);
                    None
                }
            }
        }
        None => None,
    };
    Some(RoomSection {
        operator: operator?,
        public_key: public_key?,
    })
}

/// `[[auditors]]`: name and key; an auditor's key is nobody else's in this agreement.
pub(super) fn walk_auditors(
    cx: &mut Cx<'_>,
    root: &DeTable<'_>,
    party_keys: &HashMap<[u8; 32], String>,
    analysts: &[Analyst],
) -> (Vec<Auditor>, bool) {
    let mut auditors: Vec<Auditor> = Vec::new();
    let mut ok = true;
    let Some(av) = cx.get(root, None, "", "auditors", false) else {
        return (auditors, ok);
    };
    let Some(items) = cx.array(av, "auditors") else {
        return (auditors, false);
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("auditors[{i}]");
        let Some(t) = cx.table(item, &path) else {
            ok = false;
            continue;
        };
        cx.deny_unknown(t, &path, AUDITOR_KEYS);
        let span = span_of(item);
        let name = cx.get(t, span.clone(), &path, "name", true).and_then(|v| {
            let key = format!("{path}.name");
            let s = cx.string(v, &key)?;
            if s.trim().is_empty() || s.len() > 254 || s.chars().any(char::is_control) {
                cx.problem(
                    v,
                    &key,
                    "the auditor name is empty, too long or has control characters",
                    "use the auditor's e-mail address",
                );
                return None;
            }
            if auditors.iter().any(|a| a.name == s) {
                cx.problem(
                    v,
                    &key,
                    format!("auditor {s:?} is listed twice"),
                    "list each auditor once",
                );
                return None;
            }
            Some(s.to_owned())
        });
        let key_v = cx.get(t, span, &path, "public_key", true);
        let public_key = key_v.and_then(|v| {
            let key = format!("{path}.public_key");
            let pk = cx.public_key(v, &key)?;
            let clash = if let Some(party) = party_keys.get(&pk.to_bytes()) {
                Some(format!("party {party:?}"))
            } else if let Some(a) = analysts.iter().find(|a| a.public_key == pk) {
                Some(format!("analyst {:?}", a.name))
            } else {
                auditors
                    .iter()
                    .find(|a| a.public_key == pk)
                    .map(|a| format!("auditor {:?}", a.name))
            };
            if let Some(other) = clash {
                cx.problem(
                    v,
                    &key,
                    format!("this auditor uses the public key of {other}"),
                    "give the auditor their own key (`accord keygen`): an auditor reads the audit log and must not be able to act as a party or query",
                );
                return None;
            }
            Some(pk)
        });
        match (name, public_key) {
            (Some(name), Some(public_key)) => auditors.push(Auditor { name, public_key }),
            _ => ok = false,
        }
    }
    (auditors, ok)
}

/// `[rotation_signatures]`: `"ed25519:<old party key>" = "ed25519:<signature>"`. Structure
/// only; the room checks them against the version in force.
pub(super) fn walk_rotation_signatures(
    cx: &mut Cx<'_>,
    root: &DeTable<'_>,
    party_keys: &HashMap<[u8; 32], String>,
) -> (Vec<(PublicKey, Signature)>, bool) {
    let mut out: Vec<(PublicKey, Signature)> = Vec::new();
    let mut ok = true;
    let Some(rv) = cx.get(root, None, "", "rotation_signatures", false) else {
        return (out, ok);
    };
    let Some(table) = cx.table(rv, "rotation_signatures") else {
        return (out, false);
    };
    for (k, v) in table.iter() {
        let name: &str = k.get_ref();
        let key = format!("rotation_signatures.{name:?}");
        let pk = match name.parse::<PublicKey>() {
            Ok(pk) => pk,
            Err(e) => {
                ok = false;
                cx.at(
                    Some(k.span()),
                    &key,
                    format!("the key of a rotation signature must be an old party key: {e}"),
                    "write the old key in quotes, as `accord keygen` printed it: \"ed25519:…\" = \"ed25519:…\"".into(),
                );
                continue;
            }
        };
        if let Some(party) = party_keys.get(&pk.to_bytes()) {
            ok = false;
            cx.at(
                Some(k.span()),
                &key,
                format!("this is the key of party {party:?}, which signs in [signatures]"),
                "remove this line: rotation signatures are only for keys that are no longer a party's key".into(),
            );
            continue;
        }
        let Some(s) = cx.string(v, &key) else {
            ok = false;
            continue;
        };
        match s.parse::<Signature>() {
            Ok(sig) => out.push((pk, sig)),
            Err(e) => {
                ok = false;
                cx.problem(
                    v,
                    &key,
                    e.to_string(),
                    "re-sign with the old key: accord agreement sign FILE --rotated-from OLD_KEYFILE",
                );
            }
        }
    }
    (out, ok)
}
