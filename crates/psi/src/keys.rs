//! A party's per-agreement secrets: the blinding scalar `k_p` and the handle key.
//!
//! Neither type is `Clone`, `Serialize` or printable: `Debug` shows a placeholder, memory is
//! wiped on drop, equality is constant time. Writing them to disk (mode 0600) is the caller's
//! job; this crate only converts to and from bytes.

use std::fmt;

use curve25519_dalek::scalar::Scalar;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{HANDLE_LEN, PsiError};

/// Length of an encoded [`PsiSecret`] (a canonical little-endian scalar).
pub const SECRET_LEN: usize = 32;
/// Length of an encoded [`HandleKey`].
pub const HANDLE_KEY_LEN: usize = 32;

fn os_random(buf: &mut [u8], what: &'static str) -> Result<(), PsiError> {
    getrandom::fill(buf).map_err(|err| PsiError::Randomness {
        what,
        reason: err.to_string(),
    })
}

/// A party's secret blinding scalar `k_p` for one agreement: a uniformly random non-zero
/// element of the ristretto255 scalar field.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct PsiSecret {
    scalar: Scalar,
    /// `k / 2 mod ℓ`: blinding multiplies by this and then doubles while compressing, which
    /// lets a whole batch share one field inversion (see `docs/PERFORMANCE.md`).
    half: Scalar,
}

impl PsiSecret {
    /// Draws a fresh secret from the operating system's CSPRNG: 64 random bytes reduced
    /// modulo ℓ (bias below 2⁻²⁵⁰), redrawn in the (2⁻²⁵²-likely) event of zero.
    pub fn generate() -> Result<Self, PsiError> {
        let mut wide = Zeroizing::new([0u8; 64]);
        loop {
            os_random(wide.as_mut_slice(), "PSI secret scalar")?;
            let scalar = Scalar::from_bytes_mod_order_wide(&wide);
            if scalar != Scalar::ZERO {
                return Ok(Self::from_scalar(scalar));
            }
        }
    }

    fn from_scalar(scalar: Scalar) -> Self {
        Self {
            half: scalar.div_by_2(),
            scalar,
        }
    }

    /// Decodes a secret written by [`PsiSecret::to_bytes`]: exactly 32 bytes, a canonical
    /// little-endian scalar below ℓ, not zero.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PsiError> {
        let array: [u8; SECRET_LEN] = bytes.try_into().map_err(|_| PsiError::SecretLength {
            what: "PSI secret",
            expected: SECRET_LEN,
            actual: bytes.len(),
        })?;
        let array = Zeroizing::new(array);
        let scalar: Option<Scalar> = Scalar::from_canonical_bytes(*array).into();
        let scalar = scalar.ok_or(PsiError::NonCanonicalScalar)?;
        if bool::from(scalar.ct_eq(&Scalar::ZERO)) {
            return Err(PsiError::ZeroScalar);
        }
        Ok(Self::from_scalar(scalar))
    }

    /// The canonical 32-byte little-endian encoding, wiped when the returned value drops.
    pub fn to_bytes(&self) -> Zeroizing<[u8; SECRET_LEN]> {
        Zeroizing::new(self.scalar.to_bytes())
    }

    pub(crate) fn scalar(&self) -> &Scalar {
        &self.scalar
    }

    pub(crate) fn half(&self) -> &Scalar {
        &self.half
    }
}

impl fmt::Debug for PsiSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PsiSecret(<redacted>)")
    }
}

impl ConstantTimeEq for PsiSecret {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.scalar.ct_eq(&other.scalar)
    }
}

impl PartialEq for PsiSecret {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for PsiSecret {}

/// A party's key for row handles: `handle = HMAC-SHA256(key, u64be(len(agreement_id)) ‖
/// agreement_id ‖ x)[..16]`. The party can recompute a customer's handle for erasure from
/// the identifier alone, without keeping a table; the room cannot invert it.
#[derive(ZeroizeOnDrop)]
pub struct HandleKey {
    key: Zeroizing<[u8; HANDLE_KEY_LEN]>,
    /// The key schedule (ipad/opad states), computed once; wiped on drop by `hmac`.
    #[zeroize(skip)]
    mac: Hmac<Sha256>,
}

impl HandleKey {
    /// Draws 32 random bytes from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, PsiError> {
        let mut key = Zeroizing::new([0u8; HANDLE_KEY_LEN]);
        os_random(key.as_mut_slice(), "handle key")?;
        Self::from_array(key)
    }

    /// Decodes a key written by [`HandleKey::to_bytes`]: exactly 32 bytes, not all zero (an
    /// all-zero key means an uninitialized file, not a key).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PsiError> {
        let key: [u8; HANDLE_KEY_LEN] = bytes.try_into().map_err(|_| PsiError::SecretLength {
            what: "handle key",
            expected: HANDLE_KEY_LEN,
            actual: bytes.len(),
        })?;
        Self::from_array(Zeroizing::new(key))
    }

    fn from_array(key: Zeroizing<[u8; HANDLE_KEY_LEN]>) -> Result<Self, PsiError> {
        if bool::from(key.ct_eq(&[0u8; HANDLE_KEY_LEN])) {
            return Err(PsiError::ZeroHandleKey);
        }
        let mac =
            Hmac::<Sha256>::new_from_slice(key.as_slice()).map_err(|_| PsiError::SecretLength {
                what: "handle key",
                expected: HANDLE_KEY_LEN,
                actual: key.len(),
            })?;
        Ok(Self { key, mac })
    }

    /// The 32 key bytes, wiped when the returned value drops.
    pub fn to_bytes(&self) -> Zeroizing<[u8; HANDLE_KEY_LEN]> {
        Zeroizing::new(*self.key)
    }

    /// The 128-bit handle of a normalized identifier under this key and agreement.
    pub fn handle(&self, agreement_id: &str, normalized: &[u8]) -> [u8; HANDLE_LEN] {
        let mut mac = self.mac.clone();
        mac.update(&(agreement_id.len() as u64).to_be_bytes());
        mac.update(agreement_id.as_bytes());
        mac.update(normalized);
        let tag = mac.finalize().into_bytes();
        let mut handle = [0u8; HANDLE_LEN];
        handle.copy_from_slice(&tag[..HANDLE_LEN]);
        handle
    }
}

impl fmt::Debug for HandleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandleKey(<redacted>)")
    }
}

impl ConstantTimeEq for HandleKey {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.key.ct_eq(&*other.key)
    }
}

impl PartialEq for HandleKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for HandleKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trips_and_is_nonzero() {
        let secret = PsiSecret::generate().unwrap();
        let bytes = secret.to_bytes();
        let again = PsiSecret::from_bytes(bytes.as_slice()).unwrap();
        assert_eq!(secret, again);
        assert_ne!(*bytes, [0u8; 32]);
        assert_ne!(secret, PsiSecret::generate().unwrap());
        assert_eq!(secret.half() + secret.half(), *secret.scalar());
    }

    #[test]
    fn secret_rejects_bad_encodings() {
        assert_eq!(
            PsiSecret::from_bytes(&[1u8; 31]).unwrap_err(),
            PsiError::SecretLength {
                what: "PSI secret",
                expected: 32,
                actual: 31
            }
        );
        assert_eq!(
            PsiSecret::from_bytes(&[0u8; 32]).unwrap_err(),
            PsiError::ZeroScalar
        );
        // ℓ itself is not canonical, nor is anything with the top bit set.
        let mut ell = [0u8; 32];
        ell.copy_from_slice(
            &hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
                .unwrap(),
        );
        assert_eq!(
            PsiSecret::from_bytes(&ell).unwrap_err(),
            PsiError::NonCanonicalScalar
        );
        assert_eq!(
            PsiSecret::from_bytes(&[0xffu8; 32]).unwrap_err(),
            PsiError::NonCanonicalScalar
        );
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(PsiSecret::from_bytes(&one).is_ok());
    }

    #[test]
    fn debug_is_redacted() {
        let secret = PsiSecret::generate().unwrap();
        let key = HandleKey::generate().unwrap();
        assert_eq!(format!("{secret:?}"), "PsiSecret(<redacted>)");
        assert_eq!(format!("{key:?}"), "HandleKey(<redacted>)");
    }

    #[test]
    fn handle_key_round_trips_and_rejects_bad_keys() {
        let key = HandleKey::generate().unwrap();
        let again = HandleKey::from_bytes(key.to_bytes().as_slice()).unwrap();
        assert_eq!(key, again);
        assert_eq!(key.handle("a", b"x"), again.handle("a", b"x"));
        assert_eq!(
            HandleKey::from_bytes(&[0u8; 32]).unwrap_err(),
            PsiError::ZeroHandleKey
        );
        assert_eq!(
            HandleKey::from_bytes(&[7u8; 33]).unwrap_err(),
            PsiError::SecretLength {
                what: "handle key",
                expected: 32,
                actual: 33
            }
        );
    }

    #[test]
    fn handle_is_truncated_hmac_with_length_prefixed_agreement() {
        let key = HandleKey::from_bytes(&[0x42u8; 32]).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&[0x42u8; 32]).unwrap();
        mac.update(&[0, 0, 0, 0, 0, 0, 0, 3]);
        mac.update(b"agr");
        mac.update(b"alice@example.com");
        let full = mac.finalize().into_bytes();
        assert_eq!(key.handle("agr", b"alice@example.com")[..], full[..16]);
        // The length prefix separates ("ab", "c…") from ("a", "bc…").
        assert_ne!(key.handle("ab", b"c"), key.handle("a", b"bc"));
        assert_ne!(key.handle("agr", b"x"), key.handle("agr2", b"x"));
    }
}
