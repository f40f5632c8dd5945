//! Ed25519 keys and signatures, and the one place where every signature in Accord is
//! domain-separated ([`sig::Purpose`]).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use zeroize::{Zeroize, Zeroizing};

use crate::AgreementError;

/// Domain separation for every signature in Accord.
pub mod sig {
    /// Every purpose a signature in Accord can have; the signed bytes are
    /// `b"accord/v1/" ++ purpose.as_str() ++ 0x00 ++ message`, so a signature made for one
    /// purpose can never be replayed as one for another.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum Purpose {
        /// A party's signature over an agreement's canonical bytes.
        Agreement,
        /// A party's statement revoking an agreement.
        Revocation,
        /// The room's receipt acknowledging a revocation.
        RevocationReceipt,
        /// A caller's answer to the room's authentication challenge.
        AuthChallenge,
        /// A party's signature over one batch of blinded points.
        UploadBatch,
        /// A party's statement that its upload is complete.
        UploadComplete,
        /// The room's signature over the head of an audit log.
        AuditHead,
        /// The room's receipt confirming an erasure.
        ErasureReceipt,
        /// A party's commitment `K = k·B` to its per-agreement PSI key.
        PsiKeyCommitment,
        /// The room's statement that a TLS certificate is its own: signed over the SHA-256 of
        /// the certificate's DER bytes, so a client can tell the room it reached through TLS
        /// is the room the agreement names.
        TlsBinding,
    }

    impl Purpose {
        /// The purpose's name inside the domain string, e.g. `"auth-challenge"`.
        pub fn as_str(&self) -> &'static str {
            match self {
                Purpose::Agreement => "agreement",
                Purpose::Revocation => "revocation",
                Purpose::RevocationReceipt => "revocation-receipt",
                Purpose::AuthChallenge => "auth-challenge",
                Purpose::UploadBatch => "upload-batch",
                Purpose::UploadComplete => "upload-complete",
                Purpose::AuditHead => "audit-head",
                Purpose::ErasureReceipt => "erasure-receipt",
                Purpose::PsiKeyCommitment => "psi-key-commitment",
                Purpose::TlsBinding => "tls-binding",
            }
        }

        /// The domain string without the separator, e.g. `"accord/v1/agreement"`.
        pub fn domain(&self) -> String {
            format!("accord/v1/{}", self.as_str())
        }
    }

    /// The exact bytes an Ed25519 signature for `purpose` covers:
    /// `b"accord/v1/" ++ purpose ++ 0x00 ++ message`.
    pub fn signed_message(purpose: Purpose, message: &[u8]) -> Vec<u8> {
        let name = purpose.as_str().as_bytes();
        let mut out = Vec::with_capacity(10 + name.len() + 1 + message.len());
        out.extend_from_slice(b"accord/v1/");
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(message);
        out
    }
}

const KEY_PREFIX: &str = "ed25519:";

fn decode_prefixed<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N], AgreementError> {
    let s = s.trim();
    let Some(b64) = s.strip_prefix(KEY_PREFIX) else {
        return Err(AgreementError::Encoding {
            what,
            reason: format!("it must start with \"{KEY_PREFIX}\" followed by base64"),
        });
    };
    let bytes = B64.decode(b64).map_err(|e| AgreementError::Encoding {
        what,
        reason: format!("the part after \"{KEY_PREFIX}\" is not standard base64 ({e})"),
    })?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| AgreementError::Encoding {
        what,
        reason: format!("it decodes to {} bytes, expected {N}", bytes.len()),
    })
}

/// An Ed25519 public (verifying) key, written `ed25519:<base64 of the 32 bytes>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Builds a key from its 32 bytes; refuses bytes that are not a valid curve point and
    /// weak (small-order) keys, for which signatures prove nothing.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, AgreementError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| AgreementError::Encoding {
            what: "public key",
            reason: "the 32 bytes are not a valid Ed25519 point".to_owned(),
        })?;
        if key.is_weak() {
            return Err(AgreementError::Encoding {
                what: "public key",
                reason: "it is a weak (small-order) key that anyone can forge signatures for"
                    .to_owned(),
            });
        }
        Ok(PublicKey(key))
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Verifies `signature` over `message` for `purpose` with `verify_strict` (no malleable
    /// or small-order signatures).
    pub fn verify(
        &self,
        purpose: sig::Purpose,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), AgreementError> {
        let signed = sig::signed_message(purpose, message);
        self.0
            .verify_strict(&signed, &signature.0)
            .map_err(|_| AgreementError::BadSignature {
                purpose: purpose.as_str(),
                key: self.to_string(),
            })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", B64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = AgreementError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::from_bytes(&decode_prefixed::<32>(s, "public key")?)
    }
}

/// An Ed25519 signature (64 bytes), written `ed25519:<base64 of the 64 bytes>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(ed25519_dalek::Signature);

impl Signature {
    /// Wraps 64 signature bytes (their validity is checked when verifying).
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        Signature(ed25519_dalek::Signature::from_bytes(bytes))
    }

    /// The signature's 64 bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0.to_bytes()
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", B64.encode(self.0.to_bytes()))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl FromStr for Signature {
    type Err = AgreementError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Signature::from_bytes(&decode_prefixed::<64>(
            s,
            "signature",
        )?))
    }
}

/// First line of a key file.
const KEY_FILE_HEADER: &str = "accord-secret-key v1";

/// An Ed25519 secret (signing) key. Not `Clone`, its `Debug` prints no secret, and its
/// bytes are zeroized when it is dropped.
///
/// Key file format (UTF-8 text, written by [`SecretKey::to_key_file`]):
///
/// ```text
/// accord-secret-key v1
/// # comment lines start with '#' and blank lines are ignored
/// secret: ed25519:<standard base64 of the 32-byte Ed25519 seed>
/// public: ed25519:<standard base64 of the 32-byte public key>
/// ```
///
/// The `public` line must match the key derived from the secret, which catches a corrupted
/// or hand-edited file.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<Self, AgreementError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| AgreementError::Randomness(e.to_string()))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Builds a key from its 32-byte seed (for tests and known-answer vectors).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(seed))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `message` for `purpose` (see [`sig::signed_message`]).
    pub fn sign(&self, purpose: sig::Purpose, message: &[u8]) -> Signature {
        let mut signed = sig::signed_message(purpose, message);
        let signature = Signature(self.0.sign(&signed));
        signed.zeroize();
        signature
    }

    /// The key file text (see the type's documentation); keep it in a mode-0600 file.
    pub fn to_key_file(&self) -> Zeroizing<String> {
        let seed = Zeroizing::new(self.0.to_bytes());
        let secret_b64 = Zeroizing::new(B64.encode(seed.as_ref()));
        let mut out = Zeroizing::new(String::with_capacity(256));
        out.push_str(KEY_FILE_HEADER);
        out.push_str("\n# Accord Ed25519 secret key: whoever holds this file can sign as you.\n");
        out.push_str("# Keep it readable only by you (mode 0600) and never share it.\n");
        out.push_str("secret: ");
        out.push_str(KEY_PREFIX);
        out.push_str(&secret_b64);
        out.push('\n');
        out.push_str("public: ");
        out.push_str(&self.public_key().to_string());
        out.push('\n');
        out
    }

    /// Reads a key file written by [`SecretKey::to_key_file`].
    pub fn from_key_file(text: &[u8]) -> Result<Self, AgreementError> {
        let bad = |reason: String| AgreementError::KeyFile { reason };
        let text = std::str::from_utf8(text)
            .map_err(|_| bad("it is not UTF-8 text; is this an Accord key file?".to_owned()))?;
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some(KEY_FILE_HEADER) => {}
            Some(other) if other.starts_with(KEY_PREFIX) => {
                return Err(bad(
                    "this looks like a public key, not a secret key file; pass the file written by `accord keygen --out`"
                        .to_owned(),
                ));
            }
            _ => {
                return Err(bad(format!(
                    "it does not start with \"{KEY_FILE_HEADER}\"; pass the file written by `accord keygen --out`"
                )));
            }
        }
        let mut secret: Option<Zeroizing<[u8; 32]>> = None;
        let mut public: Option<PublicKey> = None;
        for line in lines {
            if let Some(value) = line.strip_prefix("secret:") {
                if secret.is_some() {
                    return Err(bad("it has two \"secret:\" lines".to_owned()));
                }
                secret = Some(decode_secret(value.trim())?);
            } else if let Some(value) = line.strip_prefix("public:") {
                if public.is_some() {
                    return Err(bad("it has two \"public:\" lines".to_owned()));
                }
                public = Some(value.trim().parse().map_err(|e| {
                    bad(format!(
                        "its \"public:\" line is not a valid public key: {e}"
                    ))
                })?);
            } else {
                return Err(bad(
                    "it has a line that is neither \"secret:\", \"public:\" nor a # comment"
                        .to_owned(),
                ));
            }
        }
        let secret = secret.ok_or_else(|| bad("it has no \"secret:\" line".to_owned()))?;
        let key = SecretKey(SigningKey::from_bytes(&secret));
        match public {
            Some(p) if p == key.public_key() => Ok(key),
            Some(_) => Err(bad(
                "its \"public:\" line does not match its secret key: the file is corrupted or was edited; restore it from a backup"
                    .to_owned(),
            )),
            None => Err(bad("it has no \"public:\" line".to_owned())),
        }
    }
}

fn decode_secret(value: &str) -> Result<Zeroizing<[u8; 32]>, AgreementError> {
    let bad = |reason: &str| AgreementError::KeyFile {
        reason: reason.to_owned(),
    };
    let b64 = value
        .strip_prefix(KEY_PREFIX)
        .ok_or_else(|| bad("its \"secret:\" value must start with \"ed25519:\""))?;
    let bytes = Zeroizing::new(
        B64.decode(b64)
            .map_err(|_| bad("its \"secret:\" value is not standard base64"))?,
    );
    if bytes.len() != 32 {
        return Err(bad("its \"secret:\" value does not decode to 32 bytes"));
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(&bytes);
    Ok(seed)
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(<redacted>, public {})", self.public_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_have_distinct_domains_and_signatures_do_not_cross() {
        use sig::Purpose::*;
        let all = [
            Agreement,
            Revocation,
            RevocationReceipt,
            AuthChallenge,
            UploadBatch,
            UploadComplete,
            AuditHead,
            ErasureReceipt,
            PsiKeyCommitment,
            TlsBinding,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|p| p.as_str()).collect();
        assert_eq!(names.len(), all.len());
        // docs/AGREEMENTS.md lists exactly these purposes.
        let doc = include_str!("../../../docs/AGREEMENTS.md");
        let start = doc
            .find("purpose is one of ")
            .expect("the purpose list in AGREEMENTS.md");
        let end = start + doc[start..].find(". A signature").expect("end of the list");
        let documented: std::collections::HashSet<&str> = doc[start..end]
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| !w.contains(' ') && !w.contains('_'))
            .collect();
        assert_eq!(documented, names, "docs/AGREEMENTS.md lists other purposes");
        assert_eq!(
            sig::signed_message(AuthChallenge, b"m"),
            b"accord/v1/auth-challenge\0m".to_vec()
        );
        let key = SecretKey::from_seed(&[7; 32]);
        let s = key.sign(UploadBatch, b"hello");
        key.public_key().verify(UploadBatch, b"hello", &s).unwrap();
        for other in all.iter().filter(|p| **p != UploadBatch) {
            assert!(key.public_key().verify(*other, b"hello", &s).is_err());
        }
        assert!(key.public_key().verify(UploadBatch, b"hellO", &s).is_err());
    }

    #[test]
    fn text_forms_round_trip() {
        let key = SecretKey::from_seed(&[1; 32]);
        let pk = key.public_key();
        let text = pk.to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.parse::<PublicKey>().unwrap(), pk);
        assert_eq!(PublicKey::from_bytes(&pk.to_bytes()).unwrap(), pk);
        let s = key.sign(sig::Purpose::Agreement, b"x");
        assert_eq!(s.to_string().parse::<Signature>().unwrap(), s);
        assert_eq!(Signature::from_bytes(&s.to_bytes()), s);
        for bad in ["", "ed25519:", "ed25519:!!!", "rsa:AAAA", "ed25519:AAAA"] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad}");
            assert!(bad.parse::<Signature>().is_err(), "{bad}");
        }
        // The identity point is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let err = PublicKey::from_bytes(&identity).unwrap_err();
        assert!(err.to_string().contains("weak"), "{err}");
    }

    #[test]
    fn key_file_round_trip() {
        let key = SecretKey::generate().unwrap();
        let file = key.to_key_file();
        let back = SecretKey::from_key_file(file.as_bytes()).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert_ne!(
            SecretKey::generate().unwrap().public_key(),
            key.public_key(),
            "two generated keys must differ"
        );
    }

    #[test]
    fn bad_key_files_are_refused_with_a_reason() {
        let key = SecretKey::from_seed(&[3; 32]);
        let good = key.to_key_file().to_string();
        let other = SecretKey::from_seed(&[4; 32]).public_key().to_string();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "does not start with"),
            (key.public_key().to_string(), "looks like a public key"),
            (good.replace("secret: ", "secrit: "), "neither"),
            (
                good.replace(&key.public_key().to_string(), &other),
                "does not match",
            ),
            (
                good.lines()
                    .filter(|l| !l.starts_with("public:"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                "no \"public:\" line",
            ),
            (
                good.lines()
                    .filter(|l| !l.starts_with("secret:"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                "no \"secret:\" line",
            ),
            (
                good.replace("secret: ed25519:", "secret: ed25519:AAAA"),
                "32 bytes",
            ),
        ];
        for (text, expected) in cases {
            let err = SecretKey::from_key_file(text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
        assert!(SecretKey::from_key_file(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let key = SecretKey::from_seed(&[9; 32]);
        let debug = format!("{key:?}");
        let file = key.to_key_file();
        let secret_line = file.lines().find(|l| l.starts_with("secret:")).unwrap();
        let secret_b64 = secret_line.trim_start_matches("secret: ed25519:");
        assert!(debug.contains("redacted"));
        assert!(!debug.contains(secret_b64));
    }
}

#[cfg(test)]
#[path = "keys_strict_tests.rs"]
mod strict_tests;
