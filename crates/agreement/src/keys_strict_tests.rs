//! Attacks on strict signature verification: signatures that ed25519's lax rules accept
//! (small-order `R`, `S` not reduced) and small-order public keys must all be refused.

use super::*;
use curve25519_dalek::Scalar;
use ed25519_dalek::Verifier as _;
use sha2::{Digest as _, Sha512};

/// ℓ, the order of the prime-order subgroup, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

fn add_l(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(s[i]) + u16::from(L[i]) + carry;
        out[i] = (v & 0xff) as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0);
    out
}

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

/// The eight small-order points of edwards25519 (canonical encodings), and non-canonical
/// spellings of some of them.
fn small_order_encodings() -> Vec<[u8; 32]> {
    [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        // Non-canonical: y = p + 1 (the identity again), and the identity with the sign bit set.
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0100000000000000000000000000000000000000000000000000000000000080",
    ]
    .iter()
    .map(|s| hex32(s))
    .collect()
}

#[test]
fn malleated_signatures_are_refused() {
    let key = SecretKey::from_seed(&[21; 32]);
    let pk = key.public_key();
    let good = key.sign(sig::Purpose::UploadBatch, b"batch");
    pk.verify(sig::Purpose::UploadBatch, b"batch", &good)
        .unwrap();
    let bytes = good.to_bytes();
    // S + ℓ is the same scalar mod ℓ: a second valid-looking signature for the same message.
    let mut malleated = bytes;
    malleated[32..].copy_from_slice(&add_l(&bytes[32..]));
    assert_ne!(malleated, bytes);
    let err = pk
        .verify(
            sig::Purpose::UploadBatch,
            b"batch",
            &Signature::from_bytes(&malleated),
        )
        .unwrap_err();
    assert!(matches!(err, AgreementError::BadSignature { .. }), "{err}");
    // Any S with the top bits set is not canonical either.
    let mut high = bytes;
    high[63] |= 0xe0;
    assert!(
        pk.verify(
            sig::Purpose::UploadBatch,
            b"batch",
            &Signature::from_bytes(&high)
        )
        .is_err()
    );
    // R replaced by another encoding of the same... any change of R breaks the signature.
    let mut r = bytes;
    r[0] ^= 1;
    assert!(
        pk.verify(
            sig::Purpose::UploadBatch,
            b"batch",
            &Signature::from_bytes(&r)
        )
        .is_err()
    );
}

/// A signature with `R` = the identity and `S = k·a` (k = H(R ‖ A ‖ M)) satisfies the lax
/// (cofactorless) equation `S·B = R + k·A`, so plain `verify` accepts it; `verify_strict`
/// refuses it because `R` has small order. Our `verify` must refuse it.
#[test]
fn a_small_order_r_that_lax_verification_accepts_is_refused() {
    let key = SecretKey::from_seed(&[22; 32]);
    let pk = key.public_key();
    let purpose = sig::Purpose::AuthChallenge;
    let message = b"challenge";
    let signed = sig::signed_message(purpose, message);
    let r = hex32("0100000000000000000000000000000000000000000000000000000000000000");
    let mut h = Sha512::new();
    h.update(r);
    h.update(pk.to_bytes());
    h.update(&signed);
    let digest: [u8; 64] = h.finalize().into();
    let k = Scalar::from_bytes_mod_order_wide(&digest);
    let s = k * key.0.to_scalar();
    let mut forged = [0u8; 64];
    forged[..32].copy_from_slice(&r);
    forged[32..].copy_from_slice(s.as_bytes());
    let forged_sig = ed25519_dalek::Signature::from_bytes(&forged);
    // The attack is real: the lax rules accept this signature.
    assert!(
        pk.0.verify(&signed, &forged_sig).is_ok(),
        "lax verification accepts a small-order R"
    );
    let err = pk
        .verify(purpose, message, &Signature::from_bytes(&forged))
        .unwrap_err();
    assert!(matches!(err, AgreementError::BadSignature { .. }), "{err}");
}

#[test]
fn small_order_public_keys_are_refused() {
    for bytes in small_order_encodings() {
        let err = PublicKey::from_bytes(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("weak") || err.to_string().contains("not a valid Ed25519"),
            "{}: {err}",
            hex::encode(bytes)
        );
        let text = format!("ed25519:{}", B64.encode(bytes));
        assert!(text.parse::<PublicKey>().is_err(), "{text}");
    }
    // The eight canonical encodings are valid points, so they must be refused as weak
    // (not merely as undecodable): this is the small-order check itself.
    for bytes in &small_order_encodings()[..8] {
        let err = PublicKey::from_bytes(bytes).unwrap_err();
        assert!(
            err.to_string().contains("weak"),
            "{}: {err}",
            hex::encode(bytes)
        );
    }
}

/// With the identity as the public key, `R` = identity and `S` = 0 verify for every message
/// under the lax rules. The key cannot even be built.
#[test]
fn the_identity_key_forgery_is_impossible() {
    let identity = hex32("0100000000000000000000000000000000000000000000000000000000000000");
    let lax = ed25519_dalek::VerifyingKey::from_bytes(&identity).unwrap();
    let mut forged = [0u8; 64];
    forged[..32].copy_from_slice(&identity);
    let forged = ed25519_dalek::Signature::from_bytes(&forged);
    assert!(
        lax.verify(b"anything", &forged).is_ok(),
        "the lax forgery works"
    );
    assert!(PublicKey::from_bytes(&identity).is_err());
}

/// Kills the mutant "any first line that is not the header is a public key": a text file that
/// is neither gets the message that names the expected header.
#[test]
fn a_file_that_is_neither_a_key_file_nor_a_public_key_is_named_as_such() {
    for text in [
        "hello\n",
        "accord-secret-key v2\nsecret: x\n",
        "ed2551:abc\n",
    ] {
        let err = SecretKey::from_key_file(text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not start with"), "{text:?}: {err}");
        assert!(!err.contains("looks like a public key"), "{text:?}: {err}");
    }
}
