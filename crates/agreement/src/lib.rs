//! Accord sharing agreements: the manifest legal writes and every party signs.
//!
//! Owns: the manifest model ([`Manifest`]), its validation (every rule of DESIGN §2, all
//! problems reported at once with their line), the canonical bytes and fingerprint, Ed25519
//! keys and signatures with domain separation for the whole system ([`sig`]), signing in
//! place ([`sign_text`]), verification ([`verify`] → [`VerifiedAgreement`]), revocation
//! statements ([`Revocation`]), the template and the plain-language summary for legal, and
//! [`ManifestBuilder`], which writes manifest text for the demo and the tests.
//!
//! Must never: do I/O beyond parsing text, let a secret key leak through `Debug` or a copy,
//! or hand out a [`VerifiedAgreement`] that is not valid, in force and signed by every party.
//!
//! The canonical encoding is documented byte by byte in `docs/AGREEMENTS.md`
//! ("Canonical encoding") and in [`Manifest::canonical_bytes`].
#![forbid(unsafe_code)]

mod builder;
mod canonical;
mod keys;
mod manifest;
mod parse;
mod revocation;
mod summary;
pub mod text;
mod verify;

#[cfg(test)]
mod tests;

pub use builder::ManifestBuilder;
pub use keys::{PublicKey, SecretKey, Signature, sig};
pub use manifest::{
    Aggregate, Analyst, Auditor, ColumnRole, Contribution, Fingerprint, IdentifierKind, Manifest,
    ManifestError, Party, Privacy, PrivacyMode, Problem, RoomSection, SPECIAL_CATEGORIES,
};
pub use parse::MAX_TOTAL_DELTA;
pub use revocation::Revocation;
pub use summary::{SummaryFormat, operator_parties, summary, template, template_with_region};
pub use verify::{
    SignatureStatus, VerifiedAgreement, sign_rotation_text, sign_text, signature_status, verify,
};

/// Everything that can go wrong in this crate outside manifest validation (which reports a
/// [`ManifestError`] listing every problem).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgreementError {
    /// A key, signature or fingerprint in text form could not be decoded.
    #[error("invalid {what}: {reason}")]
    Encoding {
        /// What was being decoded ("public key", "signature", "fingerprint").
        what: &'static str,
        /// Why it was refused and what the expected form is.
        reason: String,
    },
    /// A signature did not verify.
    #[error(
        "the {purpose} signature does not verify with key {key}: it was made by another key or over different content"
    )]
    BadSignature {
        /// The signature's purpose ([`sig::Purpose::as_str`]).
        purpose: &'static str,
        /// The key it was checked against.
        key: String,
    },
    /// A secret key file could not be read.
    #[error("not a valid Accord secret key file: {reason}")]
    KeyFile {
        /// What is wrong with the file and how to fix it.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error("could not get randomness from the operating system: {0}")]
    Randomness(String),
    /// The manifest is invalid; every problem is listed.
    #[error("the agreement is invalid:\n{0}")]
    Invalid(ManifestError),
    /// A party name that the agreement does not list.
    #[error(
        "the agreement has no party named {party:?} (its parties: {known}); check the spelling"
    )]
    UnknownParty {
        /// The name given.
        party: String,
        /// The agreement's parties, comma-separated.
        known: String,
    },
    /// A key that is not the one the agreement names for this party.
    #[error(
        "key {key} is not party {party:?}'s key in the agreement (which names {expected}); use that party's key file"
    )]
    WrongKey {
        /// The party.
        party: String,
        /// The key that was offered.
        key: String,
        /// The key the agreement names.
        expected: String,
    },
    /// A revocation that does not belong to this agreement.
    #[error("the revocation is for {found}, but this agreement is {expected}")]
    WrongAgreement {
        /// The agreement the revocation names (id and fingerprint).
        found: String,
        /// This agreement (id and fingerprint).
        expected: String,
    },
    /// A revocation statement file could not be read.
    #[error("invalid revocation statement: {reason}")]
    RevocationFormat {
        /// What is wrong and how to fix it.
        reason: String,
    },
}
