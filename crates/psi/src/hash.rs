//! Hash-to-group: `H(x) = RistrettoPoint::from_uniform_bytes(SHA-512(prefix ‖ x))` with
//! `prefix = "accord/psi/v1" ‖ u32be(len(agreement_id)) ‖ agreement_id ‖
//! u32be(len(kind)) ‖ kind` (DESIGN §3.2, `docs/PROTOCOL.md` "Hash to group").

use curve25519_dalek::ristretto::RistrettoPoint;
use sha2::{Digest, Sha512};

use crate::{IdentifierKind, POINT_LEN};

/// The protocol's domain-separation tag, the first bytes hashed into every `H(x)`.
pub const HASH_DOMAIN_TAG: &[u8] = b"accord/psi/v1";

/// `H(·)` for one agreement and identifier kind. The prefix is absorbed once; each call
/// clones the SHA-512 state, absorbs the normalized identifier and maps the 64-byte digest
/// with the ristretto255 one-way map (RFC 9496 §4.3.4).
#[derive(Clone)]
pub struct HashDomain {
    agreement_id: String,
    kind: IdentifierKind,
    prefix: Sha512,
}

impl HashDomain {
    /// The hash domain of `agreement_id` (the manifest's `id`) and `kind`.
    pub fn new(agreement_id: &str, kind: IdentifierKind) -> Self {
        let mut prefix = Sha512::new();
        prefix.update(HASH_DOMAIN_TAG);
        put_str(&mut prefix, agreement_id);
        put_str(&mut prefix, kind.as_str());
        Self {
            agreement_id: agreement_id.to_owned(),
            kind,
            prefix,
        }
    }

    /// The agreement id this domain separates.
    pub fn agreement_id(&self) -> &str {
        &self.agreement_id
    }

    /// The identifier kind this domain separates.
    pub fn kind(&self) -> IdentifierKind {
        self.kind
    }

    /// The 64-byte SHA-512 digest fed to the one-way map (exposed for test vectors).
    pub fn digest(&self, normalized: &[u8]) -> [u8; 64] {
        let mut state = self.prefix.clone();
        state.update(normalized);
        state.finalize().into()
    }

    /// `H(x)` of a normalized identifier (see [`crate::normalize`]).
    pub fn hash(&self, normalized: &[u8]) -> RistrettoPoint {
        RistrettoPoint::from_uniform_bytes(&self.digest(normalized))
    }

    /// `H(x)`, compressed to its 32-byte ristretto255 encoding.
    pub fn hash_compressed(&self, normalized: &[u8]) -> [u8; POINT_LEN] {
        self.hash(normalized).compress().to_bytes()
    }
}

impl std::fmt::Debug for HashDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashDomain")
            .field("agreement_id", &self.agreement_id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// `u32be(len(s)) ‖ s`, the protocol's one string encoding (`docs/PROTOCOL.md`, notation).
fn put_str(hash: &mut Sha512, s: &str) {
    hash.update(crate::encoding::str_len(s));
    hash.update(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_layout_is_exactly_as_documented() {
        let domain = HashDomain::new("agr-1", IdentifierKind::Phone);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"accord/psi/v1");
        bytes.extend_from_slice(&[0, 0, 0, 5]);
        bytes.extend_from_slice(b"agr-1");
        bytes.extend_from_slice(&[0, 0, 0, 5]);
        bytes.extend_from_slice(b"phone");
        bytes.extend_from_slice(b"+3545812345");
        let expected: [u8; 64] = Sha512::digest(&bytes).into();
        assert_eq!(domain.digest(b"+3545812345"), expected);
        assert_eq!(
            domain.hash(b"+3545812345"),
            RistrettoPoint::from_uniform_bytes(&expected)
        );
    }

    #[test]
    fn domains_separate_agreements_and_kinds() {
        let x = b"alice@example.com";
        let a = HashDomain::new("a", IdentifierKind::Email).hash_compressed(x);
        assert_ne!(
            a,
            HashDomain::new("b", IdentifierKind::Email).hash_compressed(x)
        );
        assert_ne!(
            a,
            HashDomain::new("a", IdentifierKind::CustomerId).hash_compressed(x)
        );
        assert_eq!(
            a,
            HashDomain::new("a", IdentifierKind::Email).hash_compressed(x)
        );
        // Length prefixes: moving a byte between agreement id and identifier changes H.
        let ab = HashDomain::new("ab", IdentifierKind::CustomerId).hash_compressed(b"c");
        let a_bc = HashDomain::new("a", IdentifierKind::CustomerId).hash_compressed(b"bc");
        assert_ne!(ab, a_bc);
    }
}
