//! `accord-psi`: the cryptographic core of Accord's private set intersection (DESIGN §3).
//!
//! ECDH-PSI over ristretto255: each party normalizes its identifiers ([`normalize`]), hashes
//! them to the group ([`HashDomain`], `H(x)`), and blinds them with its secret scalar
//! ([`PsiSecret`], [`hash_and_blind`]); the partner blinds those points again ([`blind`],
//! [`blind_concatenated`]), so the room ends up with `k_B·k_A·H(x)` = `k_A·k_B·H(x)` for shared
//! customers and nothing a dictionary attack can reverse. Rows also carry a keyed handle
//! ([`HandleKey`]) so the party can later ask for a customer's erasure.
//!
//! The crate is sans-IO: no files, no network, no async runtime. Secrets are converted to and
//! from bytes; the party stores them. Batch operations use every rayon thread and return their
//! results in input order. Every byte of the construction is specified, with test vectors, in
//! `docs/PROTOCOL.md`; speed is measured by the `bench` module (cargo feature `bench`, enabled
//! only by `accord-cli` for `accord bench psi`) and reported in `docs/PERFORMANCE.md`.
#![forbid(unsafe_code)]

mod batch;
#[cfg(feature = "bench")]
pub mod bench;
mod dleq;
pub mod encoding;
mod hash;
mod keys;
mod normalize;

#[cfg(test)]
mod vectors;

pub use batch::{
    BlindError, BlindErrorKind, blind, blind_concatenated, check_points, hash_and_blind,
};
pub use dleq::{
    CHALLENGE_TAG, DecodedBatch, DleqContext, DleqError, NONCE_TAG, PROOF_LEN, SEED_TAG,
    WEIGHT_TAG, blind_and_prove, check_and_decode, check_commitment, verify_blinding,
    verify_blinding_decoded,
};
pub use hash::{HASH_DOMAIN_TAG, HashDomain};
pub use keys::{HANDLE_KEY_LEN, HandleKey, PsiSecret, SECRET_LEN};
pub use normalize::{
    E164_MAX_DIGITS, E164_MIN_DIGITS, IdentifierKind, NormalizeError, calling_code,
    is_supported_region, normalize, supported_regions,
};

/// Length of a compressed ristretto255 point, the unit of every wire batch.
pub const POINT_LEN: usize = 32;
/// Length of a row handle (HMAC-SHA256 truncated to 128 bits).
pub const HANDLE_LEN: usize = 16;

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PsiError {
    /// The operating system's random number generator failed.
    #[error(
        "could not draw the {what} from the operating system's random number generator: {reason}; \
         check that the OS entropy source (getrandom/urandom) is available"
    )]
    Randomness {
        /// What was being generated.
        what: &'static str,
        /// The OS error.
        reason: String,
    },
    /// A stored secret has the wrong length.
    #[error(
        "{what} must be exactly {expected} bytes, got {actual}: the state file is truncated or \
         is not an accord {what}"
    )]
    SecretLength {
        /// Which secret.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Length given.
        actual: usize,
    },
    /// A stored PSI secret is not a canonical scalar (≥ ℓ or top bit set).
    #[error(
        "PSI secret is not a canonical ristretto255 scalar (it must be little-endian and below the \
         group order): the state file is corrupt or not an accord PSI secret"
    )]
    NonCanonicalScalar,
    /// A stored PSI secret is zero, which would map every identifier to the identity.
    #[error(
        "PSI secret is zero, which would map every identifier to the same point: the state file \
         is corrupt; generate a new secret"
    )]
    ZeroScalar,
    /// A stored handle key is all zero bytes.
    #[error(
        "handle key is all zero bytes: the state file was never initialized; generate a new key"
    )]
    ZeroHandleKey,
    /// An identifier could not be normalized.
    #[error(transparent)]
    Normalize(#[from] NormalizeError),
    /// A batch of points was refused.
    #[error(transparent)]
    Blind(#[from] BlindError),
    /// A blinding proof did not verify.
    #[error(transparent)]
    Dleq(#[from] DleqError),
    /// The benchmark could not run (it measures, it never asserts a speed).
    #[cfg(feature = "bench")]
    #[error("the benchmark could not run: {reason}")]
    Benchmark {
        /// What went wrong.
        reason: String,
    },
}
