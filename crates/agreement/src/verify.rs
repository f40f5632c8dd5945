//! Signing in place and verification.

use chrono::{DateTime, Utc};

use crate::canonical::{body, rfc3339};
use crate::manifest::{Fingerprint, Manifest, ManifestError, Problem};
use crate::{AgreementError, PublicKey, SecretKey, sig};

impl Manifest {
    /// Whether `key` signed this manifest's canonical bytes, as a party key (in
    /// `[signatures]`) or as the key of a superseded version (in `[rotation_signatures]`).
    pub fn is_signed_by(&self, key: &PublicKey) -> bool {
        let body = body(self);
        let by_party = self.parties.iter().any(|(name, p)| {
            p.public_key == *key
                && self
                    .signatures
                    .get(name)
                    .is_some_and(|s| key.verify(sig::Purpose::Agreement, &body, s).is_ok())
        });
        by_party
            || self
                .rotation_signatures
                .iter()
                .any(|(k, s)| k == key && key.verify(sig::Purpose::Agreement, &body, s).is_ok())
    }
}

/// Adds or replaces `party`'s signature in the TOML text, preserving comments and layout
/// (toml_edit); refuses an invalid manifest, an unknown party, and a key that is not the
/// party's `public_key` in the manifest.
pub fn sign_text(text: &str, party: &str, key: &SecretKey) -> Result<String, AgreementError> {
    let manifest = Manifest::parse(text).map_err(AgreementError::Invalid)?;
    let Some(p) = manifest.parties.get(party) else {
        return Err(AgreementError::UnknownParty {
            party: party.to_owned(),
            known: manifest.party_names(),
        });
    };
    let offered = key.public_key();
    if offered != p.public_key {
        return Err(AgreementError::WrongKey {
            party: party.to_owned(),
            key: offered.to_string(),
            expected: p.public_key.to_string(),
        });
    }
    let signature = key.sign(sig::Purpose::Agreement, &body(&manifest));

    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        AgreementError::Invalid(ManifestError {
            problems: vec![Problem {
                line: None,
                key: "(syntax)".into(),
                message: format!("not valid TOML: {}", e.message()),
                fix: "correct the TOML syntax".into(),
            }],
        })
    })?;
    let root = doc.as_table_mut();
    if !root.contains_key("signatures") {
        let mut table = toml_edit::Table::new();
        table.decor_mut().set_prefix(
            "\n# Added by `accord agreement sign`, one per party. Not part of what is signed.\n",
        );
        root.insert("signatures", toml_edit::Item::Table(table));
    }
    let Some(table) = root
        .get_mut("signatures")
        .and_then(toml_edit::Item::as_table_like_mut)
    else {
        // Parse succeeded, so `signatures` is a table; this is unreachable in practice.
        return Err(AgreementError::Invalid(ManifestError {
            problems: vec![Problem {
                line: None,
                key: "signatures".into(),
                message: "signatures is not a table".into(),
                fix: "write it as a [signatures] section".into(),
            }],
        }));
    };
    table.insert(party, toml_edit::value(signature.to_string()));
    let out = doc.to_string();

    // The edit must not change what was signed.
    let reparsed = Manifest::parse(&out).map_err(AgreementError::Invalid)?;
    debug_assert_eq!(reparsed.fingerprint(), manifest.fingerprint());
    if reparsed.fingerprint() != manifest.fingerprint() {
        return Err(AgreementError::Invalid(ManifestError {
            problems: vec![Problem {
                line: None,
                key: "signatures".into(),
                message: "adding the signature changed the agreement's content".into(),
                fix: "report this as a bug in Accord".into(),
            }],
        }));
    }
    Ok(out)
}

/// Adds or replaces the rotation signature of `old_key` (a party key of the version this
/// manifest supersedes that is no longer a party key here) in `[rotation_signatures]`,
/// preserving comments and layout. Refuses an invalid manifest and a key that is a party key
/// of this manifest (that party signs with `sign_text`).
pub fn sign_rotation_text(text: &str, old_key: &SecretKey) -> Result<String, AgreementError> {
    let manifest = Manifest::parse(text).map_err(AgreementError::Invalid)?;
    let offered = old_key.public_key();
    if let Some(party) = manifest.party_of_key(&offered) {
        return Err(AgreementError::Invalid(ManifestError {
            problems: vec![Problem {
                line: None,
                key: "rotation_signatures".into(),
                message: format!(
                    "key {offered} is party {party:?}'s key in this version, not a rotated-out key"
                ),
                fix: format!(
                    "sign as the party instead: accord agreement sign FILE --party {party} --key KEYFILE"
                ),
            }],
        }));
    }
    let signature = old_key.sign(sig::Purpose::Agreement, &body(&manifest));
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        AgreementError::Invalid(ManifestError {
            problems: vec![Problem {
                line: None,
                key: "(syntax)".into(),
                message: format!("not valid TOML: {}", e.message()),
                fix: "correct the TOML syntax".into(),
            }],
        })
    })?;
    let root = doc.as_table_mut();
    if !root.contains_key("rotation_signatures") {
        let mut table = toml_edit::Table::new();
        table.decor_mut().set_prefix(
            "\n# Added by `accord agreement sign --rotated-from`: the previous version's party keys that this\n\
             # version replaces authorize it. Not part of what is signed.\n",
        );
        root.insert("rotation_signatures", toml_edit::Item::Table(table));
    }
    let Some(table) = root
        .get_mut("rotation_signatures")
        .and_then(toml_edit::Item::as_table_like_mut)
    else {
        return Err(AgreementError::Invalid(ManifestError {
            problems: vec![Problem {
                line: None,
                key: "rotation_signatures".into(),
                message: "rotation_signatures is not a table".into(),
                fix: "write it as a [rotation_signatures] section".into(),
            }],
        }));
    };
    table.insert(
        &offered.to_string(),
        toml_edit::value(signature.to_string()),
    );
    let out = doc.to_string();
    let reparsed = Manifest::parse(&out).map_err(AgreementError::Invalid)?;
    if reparsed.fingerprint() != manifest.fingerprint() {
        return Err(AgreementError::Invalid(ManifestError {
            problems: vec![Problem {
                line: None,
                key: "rotation_signatures".into(),
                message: "adding the signature changed the agreement's content".into(),
                fix: "report this as a bug in Accord".into(),
            }],
        }));
    }
    Ok(out)
}

/// Whether a party's signature is present and valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureStatus {
    /// Present and valid over the canonical bytes.
    Valid,
    /// Not present.
    Missing,
    /// Present but made by another key or over different content.
    Invalid,
}

/// The status of `party`'s signature in `manifest`.
pub fn signature_status(manifest: &Manifest, party: &str) -> SignatureStatus {
    let (Some(p), Some(s)) = (manifest.parties.get(party), manifest.signatures.get(party)) else {
        return SignatureStatus::Missing;
    };
    match p
        .public_key
        .verify(sig::Purpose::Agreement, &body(manifest), s)
    {
        Ok(()) => SignatureStatus::Valid,
        Err(_) => SignatureStatus::Invalid,
    }
}

/// The only way to build a [`VerifiedAgreement`]: parses, validates, checks every party
/// signed with `verify_strict` over the canonical bytes, and that `now` is within
/// `[valid_from, valid_until]`. Every problem is reported.
pub fn verify(text: &str, now: DateTime<Utc>) -> Result<VerifiedAgreement, ManifestError> {
    let manifest = Manifest::parse(text)?;
    let mut problems = Vec::new();
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.trim_start().starts_with(needle))
            .map(|i| i + 1)
    };
    for name in manifest.parties.keys() {
        match signature_status(&manifest, name) {
            SignatureStatus::Valid => {}
            SignatureStatus::Missing => problems.push(Problem {
                line: None,
                key: format!("signatures.{name}"),
                message: format!("party {name:?} has not signed"),
                fix: format!("accord agreement sign FILE --party {name} --key KEYFILE"),
            }),
            SignatureStatus::Invalid => problems.push(Problem {
                line: line_of(&format!("{name} ")).or_else(|| line_of(&format!("{name}="))),
                key: format!("signatures.{name}"),
                message: format!(
                    "party {name:?}'s signature does not verify: the agreement changed after signing, or it was signed with another key"
                ),
                fix: format!(
                    "review the agreement with `accord agreement show`, then re-sign: accord agreement sign FILE --party {name} --key KEYFILE"
                ),
            }),
        }
    }
    if now < manifest.valid_from {
        problems.push(Problem {
            line: line_of("valid_from"),
            key: "valid_from".into(),
            message: format!(
                "the agreement is not in force yet: it starts at {} (now is {})",
                rfc3339(&manifest.valid_from),
                rfc3339(&now)
            ),
            fix: "wait until valid_from, or agree on an earlier start (a new version every party signs)".into(),
        });
    }
    if now > manifest.valid_until {
        problems.push(Problem {
            line: line_of("valid_until"),
            key: "valid_until".into(),
            message: format!(
                "the agreement is over: it ended at {} (now is {})",
                rfc3339(&manifest.valid_until),
                rfc3339(&now)
            ),
            fix: "agree on a new version with a later valid_until and a higher version, signed by every party".into(),
        });
    }
    if !problems.is_empty() {
        return Err(ManifestError { problems });
    }
    let fingerprint = manifest.fingerprint();
    Ok(VerifiedAgreement {
        manifest,
        fingerprint,
        text: text.to_owned(),
    })
}

/// An agreement that was valid, in force and signed by every party when [`verify`] checked
/// it. It cannot be built any other way.
#[derive(Debug, Clone)]
pub struct VerifiedAgreement {
    manifest: Manifest,
    fingerprint: Fingerprint,
    text: String,
}

impl VerifiedAgreement {
    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of the canonical bytes.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The signed manifest text, exactly as verified.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The agreement's id.
    pub fn id(&self) -> &str {
        &self.manifest.id
    }

    /// Whether `now` is inside the validity window (it was when verified; it may have
    /// expired since).
    pub fn is_in_force(&self, now: DateTime<Utc>) -> bool {
        self.manifest.is_in_window(now)
    }
}
