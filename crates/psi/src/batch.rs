//! Parallel batch operations on 32-byte compressed ristretto255 points.
//!
//! Work is split into chunks of [`CHUNK`] points spread over rayon's thread pool; every
//! output slot is pre-allocated, so results come back in input order and the per-point path
//! allocates nothing. Each chunk is compressed with one shared field inversion: we multiply by
//! `k/2` and use [`RistrettoPoint::double_and_compress_batch`], which encodes `2·(k/2)·P =
//! k·P` (measured in `docs/PERFORMANCE.md`).

use std::collections::HashSet;
use std::fmt;

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use rayon::prelude::*;

use crate::{HashDomain, POINT_LEN, PsiSecret};

/// Points per parallel work item. Large enough to amortize the batch inversion (one per
/// chunk) and rayon's scheduling, small enough to balance load on many cores.
pub(crate) const CHUNK: usize = 512;

/// How a chunk of multiplied points is encoded; `Batched` is what the public API uses, the
/// other exists only so `bench` (feature `bench`) and the tests can measure and check the
/// difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// `compress()` per point: one inverse square root each.
    #[cfg(any(test, feature = "bench"))]
    PerPoint,
    /// Multiply by `k/2`, then `double_and_compress_batch`: one inversion per chunk.
    Batched,
}

/// What is wrong with a point of a batch handed to [`blind`] or [`blind_concatenated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlindErrorKind {
    /// Not a canonical ristretto255 encoding (RFC 9496 §4.3.1 decoding fails).
    InvalidEncoding,
    /// The identity element: no honestly hashed identifier maps to it.
    Identity,
    /// Equal to an earlier point of the same batch.
    Duplicate,
    /// The concatenated batch ends in a partial point of this many bytes.
    Truncated {
        /// Bytes after the last complete 32-byte point.
        trailing_bytes: usize,
    },
}

/// A refused batch: the first offending point (0-based, in batch order) and what is wrong
/// with it. The whole batch is refused; nothing is blinded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlindError {
    /// 0-based index of the first offending point in the batch.
    pub index: usize,
    /// What is wrong with it.
    pub kind: BlindErrorKind,
}

impl BlindError {
    pub(crate) fn rank(&self) -> (usize, u8) {
        let kind = match self.kind {
            BlindErrorKind::InvalidEncoding | BlindErrorKind::Truncated { .. } => 0,
            BlindErrorKind::Identity => 1,
            BlindErrorKind::Duplicate => 2,
        };
        (self.index, kind)
    }
}

impl fmt::Display for BlindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let index = self.index;
        match self.kind {
            BlindErrorKind::InvalidEncoding => write!(
                f,
                "point {index} of the batch is not a valid ristretto255 encoding (RFC 9496): the \
                 batch is corrupt or was not produced by an accord party; the batch is refused"
            ),
            BlindErrorKind::Identity => write!(
                f,
                "point {index} of the batch is the identity element, which no hashed identifier \
                 produces; the batch is refused"
            ),
            BlindErrorKind::Duplicate => write!(
                f,
                "point {index} of the batch repeats an earlier point of the same batch; a party's \
                 identifiers are deduplicated before upload, so the batch is refused"
            ),
            BlindErrorKind::Truncated { trailing_bytes } => write!(
                f,
                "point {index} of the batch is incomplete: the batch length is not a multiple of \
                 {POINT_LEN} bytes ({trailing_bytes} trailing bytes); the batch is refused"
            ),
        }
    }
}

impl std::error::Error for BlindError {}

/// `k·H(x)` for every identifier, compressed, in input order.
///
/// `ids` are normalized identifiers (see [`crate::normalize`]); any `AsRef<[u8]>` works
/// (`&[u8]`, `Vec<u8>`, `String`, `&str`). Runs on all rayon threads.
pub fn hash_and_blind<I>(secret: &PsiSecret, domain: &HashDomain, ids: &[I]) -> Vec<[u8; POINT_LEN]>
where
    I: AsRef<[u8]> + Sync,
{
    hash_and_blind_with(secret, domain, ids, Compression::Batched)
}

pub(crate) fn hash_and_blind_with<I>(
    secret: &PsiSecret,
    domain: &HashDomain,
    ids: &[I],
    compression: Compression,
) -> Vec<[u8; POINT_LEN]>
where
    I: AsRef<[u8]> + Sync,
{
    let mut out = vec![[0u8; POINT_LEN]; ids.len()];
    ids.par_chunks(CHUNK)
        .zip(out.par_chunks_mut(CHUNK))
        .for_each_init(
            || Vec::with_capacity(CHUNK),
            |scratch: &mut Vec<RistrettoPoint>, (ids, out)| {
                scratch.clear();
                match compression {
                    Compression::Batched => {
                        scratch.extend(
                            ids.iter()
                                .map(|id| domain.hash(id.as_ref()) * secret.half()),
                        );
                    }
                    #[cfg(any(test, feature = "bench"))]
                    Compression::PerPoint => {
                        scratch.extend(
                            ids.iter()
                                .map(|id| domain.hash(id.as_ref()) * secret.scalar()),
                        );
                    }
                }
                encode_chunk(scratch, out.as_flattened_mut(), compression);
            },
        );
    out
}

/// Writes the encodings of `points` (times 2 when `Batched`) into `out` (32 bytes each).
fn encode_chunk(points: &[RistrettoPoint], out: &mut [u8], compression: Compression) {
    match compression {
        Compression::Batched => {
            let encoded = RistrettoPoint::double_and_compress_batch(points);
            for (slot, point) in out.chunks_exact_mut(POINT_LEN).zip(&encoded) {
                slot.copy_from_slice(point.as_bytes());
            }
        }
        #[cfg(any(test, feature = "bench"))]
        Compression::PerPoint => {
            for (slot, point) in out.chunks_exact_mut(POINT_LEN).zip(points) {
                slot.copy_from_slice(point.compress().as_bytes());
            }
        }
    }
}

/// `k·P` for every point of a batch, compressed, in input order.
///
/// The whole batch is refused, with the index of the first offending point, if any point is
/// not a canonical ristretto255 encoding, is the identity, or repeats an earlier point.
pub fn blind(
    secret: &PsiSecret,
    points: &[[u8; POINT_LEN]],
) -> Result<Vec<[u8; POINT_LEN]>, BlindError> {
    let mut out = vec![[0u8; POINT_LEN]; points.len()];
    blind_into(
        secret,
        points.as_flattened(),
        out.as_flattened_mut(),
        Compression::Batched,
    )?;
    Ok(out)
}

/// [`blind`] on a wire batch: concatenated 32-byte points in, concatenated points out. A length
/// that is not a multiple of 32 is refused as [`BlindErrorKind::Truncated`].
pub fn blind_concatenated(secret: &PsiSecret, bytes: &[u8]) -> Result<Vec<u8>, BlindError> {
    let trailing_bytes = bytes.len() % POINT_LEN;
    if trailing_bytes != 0 {
        return Err(BlindError {
            index: bytes.len() / POINT_LEN,
            kind: BlindErrorKind::Truncated { trailing_bytes },
        });
    }
    let mut out = vec![0u8; bytes.len()];
    blind_into(secret, bytes, &mut out, Compression::Batched)?;
    Ok(out)
}

/// Checks a concatenated batch of points without blinding it: whole 32-byte points, each a
/// canonical ristretto255 encoding, none the identity, no duplicates. The room uses this to
/// refuse a bad batch at the door, before relaying it (the blinding party checks again).
pub fn check_points(bytes: &[u8]) -> Result<(), BlindError> {
    crate::dleq::check_and_decode(bytes).map(|_| ())
}

/// Index of the first point equal to an earlier one. Encodings are canonical, so equal
/// points have equal bytes.
pub(crate) fn first_duplicate(input: &[u8]) -> Option<usize> {
    let mut seen: HashSet<&[u8]> = HashSet::with_capacity(input.len() / POINT_LEN);
    input
        .chunks_exact(POINT_LEN)
        .position(|point| !seen.insert(point))
}

pub(crate) fn blind_into(
    secret: &PsiSecret,
    input: &[u8],
    out: &mut [u8],
    compression: Compression,
) -> Result<(), BlindError> {
    debug_assert_eq!(input.len() % POINT_LEN, 0);
    debug_assert_eq!(input.len(), out.len());
    let duplicate = first_duplicate(input).map(|index| BlindError {
        index,
        kind: BlindErrorKind::Duplicate,
    });
    let scalar = match compression {
        Compression::Batched => secret.half(),
        #[cfg(any(test, feature = "bench"))]
        Compression::PerPoint => secret.scalar(),
    };
    let bytes_per_chunk = POINT_LEN * CHUNK;
    let invalid = input
        .par_chunks(bytes_per_chunk)
        .zip(out.par_chunks_mut(bytes_per_chunk))
        .enumerate()
        .map_init(
            || Vec::with_capacity(CHUNK),
            |scratch: &mut Vec<RistrettoPoint>, (chunk, (input, out))| {
                scratch.clear();
                for (offset, encoding) in input.chunks_exact(POINT_LEN).enumerate() {
                    let index = chunk * CHUNK + offset;
                    let point = match decode(encoding) {
                        Ok(point) => point,
                        Err(kind) => return Some(BlindError { index, kind }),
                    };
                    scratch.push(point * scalar);
                }
                encode_chunk(scratch, out, compression);
                None
            },
        )
        .flatten()
        .min_by_key(BlindError::rank);
    match (invalid, duplicate) {
        (None, None) => Ok(()),
        (Some(error), None) | (None, Some(error)) => Err(error),
        (Some(a), Some(b)) => Err(if a.rank() <= b.rank() { a } else { b }),
    }
}

/// Decodes one 32-byte encoding, refusing invalid encodings and the identity.
pub(crate) fn decode(encoding: &[u8]) -> Result<RistrettoPoint, BlindErrorKind> {
    if encoding.iter().all(|&byte| byte == 0) {
        // The canonical (and only valid) encoding of the identity.
        return Err(BlindErrorKind::Identity);
    }
    CompressedRistretto::from_slice(encoding)
        .ok()
        .and_then(|compressed| compressed.decompress())
        .ok_or(BlindErrorKind::InvalidEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdentifierKind;
    use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
    use curve25519_dalek::scalar::Scalar;
    use proptest::prelude::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("customer-{i}@example.com"))
            .collect()
    }

    #[test]
    fn hash_and_blind_matches_the_definition_in_order() {
        let secret = PsiSecret::generate().unwrap();
        let domain = HashDomain::new("agr", IdentifierKind::Email);
        // More than one chunk, and a partial last chunk.
        let ids = ids(CHUNK * 2 + 7);
        let blinded = hash_and_blind(&secret, &domain, &ids);
        assert_eq!(blinded.len(), ids.len());
        for (id, got) in ids.iter().zip(&blinded) {
            let want = (domain.hash(id.as_bytes()) * secret.scalar())
                .compress()
                .to_bytes();
            assert_eq!(*got, want);
        }
        let per_point = hash_and_blind_with(&secret, &domain, &ids, Compression::PerPoint);
        assert_eq!(per_point, blinded);
        assert!(hash_and_blind::<&[u8]>(&secret, &domain, &[]).is_empty());
    }

    #[test]
    fn blind_commutes_and_matches_concatenated() {
        let a = PsiSecret::generate().unwrap();
        let b = PsiSecret::generate().unwrap();
        let domain = HashDomain::new("agr", IdentifierKind::Email);
        let ids = ids(CHUNK + 3);
        let ab = blind(&b, &hash_and_blind(&a, &domain, &ids)).unwrap();
        let ba = blind(&a, &hash_and_blind(&b, &domain, &ids)).unwrap();
        assert_eq!(ab, ba);
        let flat: Vec<u8> = hash_and_blind(&a, &domain, &ids).concat();
        assert_eq!(blind_concatenated(&b, &flat).unwrap(), ab.concat());
        let mut per_point = vec![0u8; flat.len()];
        blind_into(&b, &flat, &mut per_point, Compression::PerPoint).unwrap();
        assert_eq!(per_point, ab.concat());
        assert!(blind(&a, &[]).unwrap().is_empty());
    }

    fn valid_points(n: u64) -> Vec<[u8; 32]> {
        (1..=n)
            .map(|i| {
                (RISTRETTO_BASEPOINT_POINT * Scalar::from(i))
                    .compress()
                    .to_bytes()
            })
            .collect()
    }

    #[test]
    fn blind_refuses_with_the_first_offending_index() {
        let secret = PsiSecret::generate().unwrap();
        let mut points = valid_points(CHUNK as u64 + 10);
        let mut bad = [0xffu8; 32];
        bad[31] = 0x7f;
        points[CHUNK + 5] = bad;
        assert_eq!(
            blind(&secret, &points).unwrap_err(),
            BlindError {
                index: CHUNK + 5,
                kind: BlindErrorKind::InvalidEncoding
            }
        );
        points[CHUNK + 2] = [0u8; 32];
        assert_eq!(
            blind(&secret, &points).unwrap_err(),
            BlindError {
                index: CHUNK + 2,
                kind: BlindErrorKind::Identity
            }
        );
        points[7] = points[3];
        assert_eq!(
            blind(&secret, &points).unwrap_err(),
            BlindError {
                index: 7,
                kind: BlindErrorKind::Duplicate
            }
        );
        let error = blind(&secret, &points).unwrap_err().to_string();
        assert!(
            error.contains("point 7") && error.contains("repeats"),
            "{error}"
        );
    }

    #[test]
    fn blind_concatenated_refuses_partial_points() {
        let secret = PsiSecret::generate().unwrap();
        let flat = valid_points(3).concat();
        assert_eq!(
            blind_concatenated(&secret, &flat[..70]).unwrap_err(),
            BlindError {
                index: 2,
                kind: BlindErrorKind::Truncated { trailing_bytes: 6 }
            }
        );
        assert!(
            blind_concatenated(&secret, &flat[..70])
                .unwrap_err()
                .to_string()
                .contains("6 trailing bytes")
        );
        assert_eq!(blind_concatenated(&secret, &flat).unwrap().len(), 96);
    }

    proptest! {
        #[test]
        fn blinding_commutes_for_random_inputs(
            ids in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..20),
            agreement in "[a-z0-9-]{1,20}",
        ) {
            let a = PsiSecret::generate().unwrap();
            let b = PsiSecret::generate().unwrap();
            let domain = HashDomain::new(&agreement, IdentifierKind::CustomerId);
            let mut unique = ids.clone();
            unique.sort();
            unique.dedup();
            let ab = blind(&b, &hash_and_blind(&a, &domain, &unique)).unwrap();
            let ba = blind(&a, &hash_and_blind(&b, &domain, &unique)).unwrap();
            prop_assert_eq!(ab, ba);
        }

        #[test]
        fn different_agreements_give_different_tokens(
            id in prop::collection::vec(any::<u8>(), 0..40),
            first in "[a-z0-9-]{1,20}",
            second in "[a-z0-9-]{1,20}",
        ) {
            prop_assume!(first != second);
            let a = PsiSecret::generate().unwrap();
            let b = PsiSecret::generate().unwrap();
            let token = |agreement: &str| {
                let domain = HashDomain::new(agreement, IdentifierKind::Email);
                blind(&b, &hash_and_blind(&a, &domain, &[&id])).unwrap()
            };
            prop_assert_ne!(token(&first), token(&second));
        }

        #[test]
        fn arbitrary_bytes_are_refused_or_blinded_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let secret = PsiSecret::generate().unwrap();
            match blind_concatenated(&secret, &bytes) {
                Ok(out) => {
                    prop_assert_eq!(out.len(), bytes.len());
                    for point in bytes.chunks_exact(32) {
                        prop_assert!(CompressedRistretto::from_slice(point).unwrap().decompress().is_some());
                    }
                }
                Err(error) => prop_assert!(error.index <= bytes.len() / 32),
            }
        }

        #[test]
        fn random_encodings_are_rejected_unless_valid(point in any::<[u8; 32]>()) {
            let secret = PsiSecret::generate().unwrap();
            let valid = point != [0u8; 32] && CompressedRistretto(point).decompress().is_some();
            match blind(&secret, &[point]) {
                Ok(out) => {
                    prop_assert!(valid);
                    let expected = CompressedRistretto(point).decompress().unwrap() * secret.scalar();
                    prop_assert_eq!(out[0], expected.compress().to_bytes());
                }
                Err(error) => {
                    prop_assert!(!valid);
                    prop_assert_eq!(error.index, 0);
                }
            }
        }
    }
}
