//! Revocation statements: any party may revoke an agreement.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::canonical::rfc3339;
use crate::manifest::{Fingerprint, Manifest};
use crate::{AgreementError, SecretKey, Signature, VerifiedAgreement, sig};

/// A party's signed statement that an agreement is revoked.
///
/// Signed bytes ([`Revocation::signed_bytes`]): `b"accord/v1/revocation" ++ 0x00 ++
/// str(agreement_id) ++ fingerprint (32 raw bytes) ++ str(party) ++ str(reason) ++
/// str(revoked_at as RFC 3339 UTC)`, where `str` is a big-endian `u32` byte length followed
/// by the UTF-8 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The revoked agreement's id.
    pub agreement_id: String,
    /// The revoked agreement's fingerprint.
    pub fingerprint: Fingerprint,
    /// The revoking party.
    pub party: String,
    /// Why, in plain words (recorded in the audit log).
    pub reason: String,
    /// When the party revoked it.
    pub revoked_at: DateTime<Utc>,
    /// The party's signature over [`Revocation::signed_bytes`].
    pub signature: Signature,
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&accord_psi::encoding::str_len(s));
    out.extend_from_slice(s.as_bytes());
}

fn message(
    agreement_id: &str,
    fingerprint: &Fingerprint,
    party: &str,
    reason: &str,
    at: &DateTime<Utc>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + reason.len());
    push_str(&mut out, agreement_id);
    out.extend_from_slice(fingerprint.as_bytes());
    push_str(&mut out, party);
    push_str(&mut out, reason);
    push_str(&mut out, &rfc3339(at));
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationFile {
    agreement_id: String,
    fingerprint: String,
    party: String,
    reason: String,
    revoked_at: toml::value::Datetime,
    signature: String,
}

impl Revocation {
    /// `party` revokes `agreement` at `at`; the key must be the party's key in the agreement.
    pub fn sign(
        agreement: &VerifiedAgreement,
        party: &str,
        reason: &str,
        at: DateTime<Utc>,
        key: &SecretKey,
    ) -> Result<Self, AgreementError> {
        let manifest = agreement.manifest();
        let Some(p) = manifest.parties.get(party) else {
            return Err(AgreementError::UnknownParty {
                party: party.to_owned(),
                known: manifest.party_names(),
            });
        };
        if key.public_key() != p.public_key {
            return Err(AgreementError::WrongKey {
                party: party.to_owned(),
                key: key.public_key().to_string(),
                expected: p.public_key.to_string(),
            });
        }
        let fingerprint = agreement.fingerprint();
        let msg = message(agreement.id(), &fingerprint, party, reason, &at);
        Ok(Revocation {
            agreement_id: agreement.id().to_owned(),
            fingerprint,
            party: party.to_owned(),
            reason: reason.to_owned(),
            revoked_at: at,
            signature: key.sign(sig::Purpose::Revocation, &msg),
        })
    }

    /// The exact bytes the Ed25519 signature covers (domain prefix included).
    pub fn signed_bytes(&self) -> Vec<u8> {
        sig::signed_message(
            sig::Purpose::Revocation,
            &message(
                &self.agreement_id,
                &self.fingerprint,
                &self.party,
                &self.reason,
                &self.revoked_at,
            ),
        )
    }

    /// Checks that the party exists in `manifest`, that the revocation names this
    /// agreement (id and fingerprint), and the signature (`verify_strict`).
    pub fn verify(&self, manifest: &Manifest) -> Result<(), AgreementError> {
        let fingerprint = manifest.fingerprint();
        if self.agreement_id != manifest.id || self.fingerprint != fingerprint {
            return Err(AgreementError::WrongAgreement {
                found: format!("{} ({})", self.agreement_id, self.fingerprint),
                expected: format!("{} ({fingerprint})", manifest.id),
            });
        }
        let Some(p) = manifest.parties.get(&self.party) else {
            return Err(AgreementError::UnknownParty {
                party: self.party.clone(),
                known: manifest.party_names(),
            });
        };
        let msg = message(
            &self.agreement_id,
            &self.fingerprint,
            &self.party,
            &self.reason,
            &self.revoked_at,
        );
        p.public_key
            .verify(sig::Purpose::Revocation, &msg, &self.signature)
    }

    /// The statement as a small TOML document.
    pub fn to_toml(&self) -> String {
        let mut doc = toml_edit::DocumentMut::new();
        doc.insert("agreement_id", toml_edit::value(self.agreement_id.as_str()));
        doc.insert(
            "fingerprint",
            toml_edit::value(self.fingerprint.to_string()),
        );
        doc.insert("party", toml_edit::value(self.party.as_str()));
        doc.insert("reason", toml_edit::value(self.reason.as_str()));
        let at: Result<toml_edit::Datetime, _> = rfc3339(&self.revoked_at).parse();
        match at {
            Ok(dt) => doc.insert("revoked_at", toml_edit::value(dt)),
            // RFC 3339 UTC always parses as a TOML datetime; fall back to a string anyway.
            Err(_) => doc.insert("revoked_at", toml_edit::value(rfc3339(&self.revoked_at))),
        };
        doc.insert("signature", toml_edit::value(self.signature.to_string()));
        format!("# Accord revocation statement\n{doc}")
    }

    /// Reads a statement written by [`Revocation::to_toml`] (the signature is checked by
    /// [`Revocation::verify`], not here).
    pub fn from_toml(text: &str) -> Result<Self, AgreementError> {
        let bad = |reason: String| AgreementError::RevocationFormat { reason };
        let file: RevocationFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let fingerprint = file
            .fingerprint
            .parse()
            .map_err(|e| bad(format!("fingerprint: {e}")))?;
        let signature = file
            .signature
            .parse()
            .map_err(|e| bad(format!("signature: {e}")))?;
        let dt = file.revoked_at;
        let revoked_at = match (dt.date, dt.time, dt.offset) {
            (Some(_), Some(_), Some(_)) => DateTime::parse_from_rfc3339(&dt.to_string())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| bad(format!("revoked_at: {e}")))?,
            _ => {
                return Err(bad(
                    "revoked_at must be a date and time with offset, e.g. 2027-02-01T12:00:00Z"
                        .into(),
                ));
            }
        };
        Ok(Revocation {
            agreement_id: file.agreement_id,
            fingerprint,
            party: file.party,
            reason: file.reason,
            revoked_at,
            signature,
        })
    }
}
