//! Verifiable blinding: a party commits to its secret `k` as `K = k·B` and proves, for every
//! batch it blinds for its partner, that each output is the same `k` times its input.
//!
//! The proof is a batched Chaum–Pedersen proof of discrete-log equality
//! (`log_B K = log_{P_i} Q_i` for every `i`), made non-interactive with Fiat–Shamir:
//!
//! 1. `seed = SHA-512(SEED_TAG ‖ 0x00 ‖ agreement ‖ u32be(len prover) ‖ prover ‖
//!    u32be(len owner) ‖ owner ‖ u64be(batch) ‖ u64be(n) ‖ K ‖ P_0 … P_{n-1} ‖ Q_0 … Q_{n-1})`
//!    (all points as their 32-byte canonical encodings).
//! 2. Weights: `d_i` is the 128-bit little-endian integer in bytes `16·(i mod 4) .. 16·(i mod
//!    4) + 16` of `SHA-512(WEIGHT_TAG ‖ 0x00 ‖ seed ‖ u64be(⌊i / 4⌋))`. 128-bit weights keep the
//!    soundness error of the random linear combination at `n / 2^128` while halving the cost of
//!    the multi-scalar multiplications.
//! 3. `M = Σ d_i·P_i`, `Z = Σ d_i·Q_i` (the prover computes `Z = k·M`).
//! 4. Prover: `r` is derived from `SHA-512(NONCE_TAG ‖ 0x00 ‖ k ‖ seed ‖ 32 random bytes)` mod ℓ
//!    (hedged: safe even if the random bytes repeat), `A_1 = r·B`, `A_2 = r·M`,
//!    `c = SHA-512(CHALLENGE_TAG ‖ 0x00 ‖ seed ‖ M ‖ Z ‖ A_1 ‖ A_2)` mod ℓ, `s = r − c·k`.
//!    The proof is `c ‖ s` (64 bytes, little-endian canonical scalars).
//! 5. Verifier: `A_1' = s·B + c·K`, `A_2' = s·M + c·Z`, accept iff `c` equals the challenge
//!    recomputed from `A_1'`, `A_2'`.
//!
//! Everything is specified, with a known-answer vector, in `docs/PROTOCOL.md`.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, VartimeMultiscalarMul};
use rayon::prelude::*;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use crate::batch::{BlindError, BlindErrorKind, CHUNK, decode, first_duplicate};
use crate::{POINT_LEN, PsiSecret};

/// Length of a proof: the challenge `c` and the response `s`.
pub const PROOF_LEN: usize = 64;
/// Domain tag of the transcript seed.
pub const SEED_TAG: &[u8] = b"accord/psi/v1/dleq-seed";
/// Domain tag of the weight expansion.
pub const WEIGHT_TAG: &[u8] = b"accord/psi/v1/dleq-weights";
/// Domain tag of the prover's nonce derivation.
pub const NONCE_TAG: &[u8] = b"accord/psi/v1/dleq-nonce";
/// Domain tag of the Fiat–Shamir challenge.
pub const CHALLENGE_TAG: &[u8] = b"accord/psi/v1/dleq-challenge";

/// What a proof is bound to besides the points: the agreement, who blinded, whose batch, and
/// which batch. A proof for one batch can never be replayed for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DleqContext<'a> {
    /// The agreement's fingerprint (SHA-256 of its canonical bytes).
    pub agreement: &'a [u8; 32],
    /// The party that blinded the batch (and holds `k`).
    pub prover: &'a str,
    /// The party whose batch it is.
    pub owner: &'a str,
    /// The owner's batch number.
    pub batch: u64,
}

/// Why a proof was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DleqError {
    /// The published commitment `K` is not a valid point, or is the identity.
    #[error(
        "the partner's key commitment is not a valid ristretto255 point (or is the identity): \
         the commitment is corrupt"
    )]
    BadCommitment,
    /// The proof is not 64 bytes, or a scalar in it is not canonical.
    #[error("the blinding proof is malformed (it must be two canonical 32-byte scalars)")]
    MalformedProof,
    /// Inputs and outputs differ in length.
    #[error("the batch has {inputs} input points but {outputs} blinded points")]
    CountMismatch {
        /// Input points.
        inputs: usize,
        /// Output points.
        outputs: usize,
    },
    /// A point of the inputs or outputs is invalid.
    #[error("in the {side} points, {error}")]
    BadPoint {
        /// `"input"` or `"blinded"`.
        side: &'static str,
        /// The first offending point and what is wrong with it.
        error: BlindError,
    },
    /// The proof does not verify: at least one output was not blinded with the committed key.
    #[error(
        "the blinding proof does not verify: at least one point of the batch was not blinded \
         with the key the partner committed to"
    )]
    Invalid,
}

impl PsiSecret {
    /// The public commitment `K = k·B` to this secret, compressed.
    pub fn commitment(&self) -> [u8; POINT_LEN] {
        (RISTRETTO_BASEPOINT_TABLE * self.scalar())
            .compress()
            .to_bytes()
    }
}

/// Checks that a published commitment is a valid, non-identity point.
pub fn check_commitment(commitment: &[u8; POINT_LEN]) -> Result<(), DleqError> {
    decode(commitment)
        .map(|_| ())
        .map_err(|_| DleqError::BadCommitment)
}

/// Blinds a wire batch (concatenated 32-byte points) like [`crate::blind_concatenated`] and
/// proves that every output is `k` times its input. Refuses the same batches `blind` refuses.
pub fn blind_and_prove(
    secret: &PsiSecret,
    context: &DleqContext<'_>,
    input: &[u8],
) -> Result<(Vec<u8>, [u8; PROOF_LEN]), BlindError> {
    let trailing_bytes = input.len() % POINT_LEN;
    if trailing_bytes != 0 {
        return Err(BlindError {
            index: input.len() / POINT_LEN,
            kind: BlindErrorKind::Truncated { trailing_bytes },
        });
    }
    if let Some(index) = first_duplicate(input) {
        // Still report an earlier invalid point first, as `blind` does.
        let points = decode_all(input).err();
        return Err(match points {
            Some(error) if error.index < index => error,
            _ => BlindError {
                index,
                kind: BlindErrorKind::Duplicate,
            },
        });
    }
    let points = decode_all(input)?;
    let mut output = vec![0u8; input.len()];
    points
        .par_chunks(CHUNK)
        .zip(output.par_chunks_mut(POINT_LEN * CHUNK))
        .for_each(|(points, out)| {
            let scaled: Vec<RistrettoPoint> = points.iter().map(|p| p * secret.half()).collect();
            let encoded = RistrettoPoint::double_and_compress_batch(&scaled);
            for (slot, point) in out.chunks_exact_mut(POINT_LEN).zip(&encoded) {
                slot.copy_from_slice(point.as_bytes());
            }
        });
    let mut fresh = Zeroizing::new([0u8; 32]);
    if getrandom::fill(fresh.as_mut_slice()).is_err() {
        // Without OS randomness the nonce is derived from the secret and the transcript
        // only, which is still unique per statement (deterministic, as in RFC 6979).
        fresh.fill(0);
    }
    let proof = prove(secret, context, input, &output, &points, |seed| {
        let mut hash = Sha512::new();
        hash.update(NONCE_TAG);
        hash.update([0u8]);
        hash.update(secret.scalar().as_bytes());
        hash.update(seed);
        hash.update(fresh.as_slice());
        let wide = Zeroizing::new(<[u8; 64]>::from(hash.finalize()));
        Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide))
    });
    Ok((output, proof))
}

/// Steps 1–4 for a batch already blinded: `points` are the decoded inputs, `nonce` derives `r`
/// from the seed.
fn prove(
    secret: &PsiSecret,
    context: &DleqContext<'_>,
    input: &[u8],
    output: &[u8],
    points: &[RistrettoPoint],
    nonce: impl FnOnce(&[u8; 64]) -> Zeroizing<Scalar>,
) -> [u8; PROOF_LEN] {
    let commitment = secret.commitment();
    let seed = transcript_seed(context, &commitment, input, output);
    let weights = weights(&seed, points.len());
    let m = weighted_sum(&weights, points);
    let z = m * secret.scalar();
    let r = nonce(&seed);
    let a1 = RISTRETTO_BASEPOINT_TABLE * &*r;
    let a2 = m * *r;
    let c = challenge(&seed, &m, &z, &a1, &a2);
    let s = *r - c * secret.scalar();
    let mut proof = [0u8; PROOF_LEN];
    proof[..32].copy_from_slice(c.as_bytes());
    proof[32..].copy_from_slice(s.as_bytes());
    proof
}

/// Steps 1–4 alone, for `accord bench psi`: what [`blind_and_prove`] does beyond blinding
/// (the blinding itself is the same decode, multiply and encode as `blind_concatenated`).
#[cfg(feature = "bench")]
pub(crate) fn prove_blinded(
    secret: &PsiSecret,
    context: &DleqContext<'_>,
    input: &[u8],
    output: &[u8],
    points: &[RistrettoPoint],
) -> [u8; PROOF_LEN] {
    prove(secret, context, input, output, points, |seed| {
        let mut hash = Sha512::new();
        hash.update(NONCE_TAG);
        hash.update([0u8]);
        hash.update(secret.scalar().as_bytes());
        hash.update(seed);
        let wide = Zeroizing::new(<[u8; 64]>::from(hash.finalize()));
        Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide))
    })
}

/// The proof with a caller-chosen nonce `r`: only for the published known-answer vector.
#[cfg(test)]
pub(crate) fn prove_with_nonce(
    secret: &PsiSecret,
    context: &DleqContext<'_>,
    input: &[u8],
    r: Scalar,
) -> (Vec<u8>, [u8; PROOF_LEN]) {
    let output = crate::blind_concatenated(secret, input).expect("valid test batch");
    let points = decode_all(input).expect("valid test batch");
    let proof = prove(secret, context, input, &output, &points, |_| {
        Zeroizing::new(r)
    });
    (output, proof)
}

/// A batch of points decoded and checked once (whole canonical encodings, none the identity,
/// no duplicates: the checks of [`crate::check_points`]), kept so that verifying the blinding
/// proof for it later does not decode the points a second time. Decoding is the largest part
/// of verification after the multi-scalar multiplications, so a verifier that checked the
/// inputs when they arrived keeps this and passes it to [`verify_blinding_decoded`].
///
/// It remembers the SHA-256 of the bytes it was decoded from; given other bytes,
/// [`verify_blinding_decoded`] ignores it and decodes those bytes instead, so a stale entry
/// can cost time but never change a verdict.
#[derive(Clone)]
pub struct DecodedBatch {
    points: Vec<RistrettoPoint>,
    digest: [u8; 32],
}

impl DecodedBatch {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the batch has no points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Memory the decoded points occupy, in bytes (five times their 32-byte encodings).
    pub fn memory_bytes(&self) -> usize {
        self.points.len() * std::mem::size_of::<RistrettoPoint>()
    }

    fn decoded_from(&self, bytes: &[u8]) -> bool {
        <[u8; 32]>::from(sha2::Sha256::digest(bytes)) == self.digest
    }
}

impl std::fmt::Debug for DecodedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedBatch")
            .field("points", &self.points.len())
            .finish_non_exhaustive()
    }
}

/// Checks a concatenated batch of points exactly like [`crate::check_points`] (same errors,
/// same precedence) and keeps the decoded points for [`verify_blinding_decoded`].
pub fn check_and_decode(bytes: &[u8]) -> Result<DecodedBatch, BlindError> {
    let trailing_bytes = bytes.len() % POINT_LEN;
    if trailing_bytes != 0 {
        return Err(BlindError {
            index: bytes.len() / POINT_LEN,
            kind: BlindErrorKind::Truncated { trailing_bytes },
        });
    }
    let decoded = decode_all(bytes);
    let duplicate = first_duplicate(bytes).map(|index| BlindError {
        index,
        kind: BlindErrorKind::Duplicate,
    });
    match (decoded, duplicate) {
        (Ok(points), None) => Ok(DecodedBatch {
            points,
            digest: sha2::Sha256::digest(bytes).into(),
        }),
        (Err(error), None) | (Ok(_), Some(error)) => Err(error),
        (Err(a), Some(b)) => Err(if a.rank() <= b.rank() { a } else { b }),
    }
}

/// Verifies a proof that `output` is `input` blinded with the key committed to by
/// `commitment`, bound to `context`. Both batches are concatenated 32-byte points.
pub fn verify_blinding(
    commitment: &[u8; POINT_LEN],
    context: &DleqContext<'_>,
    input: &[u8],
    output: &[u8],
    proof: &[u8],
) -> Result<(), DleqError> {
    verify(commitment, context, input, None, output, proof)
}

/// [`verify_blinding`] with the inputs already decoded by [`check_and_decode`] (from these
/// same `input` bytes; otherwise `decoded` is ignored and `input` decoded afresh). The verdict
/// is always the one [`verify_blinding`] gives.
pub fn verify_blinding_decoded(
    commitment: &[u8; POINT_LEN],
    context: &DleqContext<'_>,
    input: &[u8],
    decoded: &DecodedBatch,
    output: &[u8],
    proof: &[u8],
) -> Result<(), DleqError> {
    let decoded = decoded
        .decoded_from(input)
        .then_some(decoded.points.as_slice());
    verify(commitment, context, input, decoded, output, proof)
}

fn verify(
    commitment: &[u8; POINT_LEN],
    context: &DleqContext<'_>,
    input: &[u8],
    decoded: Option<&[RistrettoPoint]>,
    output: &[u8],
    proof: &[u8],
) -> Result<(), DleqError> {
    let k_point = decode(commitment).map_err(|_| DleqError::BadCommitment)?;
    let proof: &[u8; PROOF_LEN] = proof.try_into().map_err(|_| DleqError::MalformedProof)?;
    let c = canonical(&proof[..32])?;
    let s = canonical(&proof[32..])?;
    if input.len() != output.len() || !input.len().is_multiple_of(POINT_LEN) {
        return Err(DleqError::CountMismatch {
            inputs: input.len() / POINT_LEN,
            outputs: output.len() / POINT_LEN,
        });
    }
    let fresh;
    let inputs = match decoded {
        Some(points) => points,
        None => {
            fresh = decode_all(input).map_err(|error| DleqError::BadPoint {
                side: "input",
                error,
            })?;
            fresh.as_slice()
        }
    };
    let outputs = decode_all(output).map_err(|error| DleqError::BadPoint {
        side: "blinded",
        error,
    })?;
    let seed = transcript_seed(context, commitment, input, output);
    let weights = weights(&seed, inputs.len());
    let (m, z) = rayon::join(
        || weighted_sum(&weights, inputs),
        || weighted_sum(&weights, &outputs),
    );
    let a1 = RistrettoPoint::vartime_double_scalar_mul_basepoint(&c, &k_point, &s);
    let a2 = RistrettoPoint::vartime_multiscalar_mul([s, c], [m, z]);
    if challenge(&seed, &m, &z, &a1, &a2) == c {
        Ok(())
    } else {
        Err(DleqError::Invalid)
    }
}

fn canonical(bytes: &[u8]) -> Result<Scalar, DleqError> {
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| DleqError::MalformedProof)?;
    Option::from(Scalar::from_canonical_bytes(bytes)).ok_or(DleqError::MalformedProof)
}

/// Decodes every point of a concatenated batch in parallel (length already checked).
pub(crate) fn decode_all(input: &[u8]) -> Result<Vec<RistrettoPoint>, BlindError> {
    let mut points = vec![RistrettoPoint::identity(); input.len() / POINT_LEN];
    let error = input
        .par_chunks(POINT_LEN * CHUNK)
        .zip(points.par_chunks_mut(CHUNK))
        .enumerate()
        .filter_map(|(chunk, (input, out))| {
            for (offset, (encoding, slot)) in input.chunks_exact(POINT_LEN).zip(out).enumerate() {
                match decode(encoding) {
                    Ok(point) => *slot = point,
                    Err(kind) => {
                        return Some(BlindError {
                            index: chunk * CHUNK + offset,
                            kind,
                        });
                    }
                }
            }
            None
        })
        .min_by_key(|error| error.index);
    match error {
        Some(error) => Err(error),
        None => Ok(points),
    }
}

fn put_str(hash: &mut Sha512, text: &str) {
    hash.update(crate::encoding::str_len(text));
    hash.update(text.as_bytes());
}

/// Step 1 of the construction: the seed that binds context, commitment and every point.
pub(crate) fn transcript_seed(
    context: &DleqContext<'_>,
    commitment: &[u8; POINT_LEN],
    input: &[u8],
    output: &[u8],
) -> [u8; 64] {
    let mut hash = Sha512::new();
    hash.update(SEED_TAG);
    hash.update([0u8]);
    hash.update(context.agreement);
    put_str(&mut hash, context.prover);
    put_str(&mut hash, context.owner);
    hash.update(context.batch.to_be_bytes());
    hash.update(((input.len() / POINT_LEN) as u64).to_be_bytes());
    hash.update(commitment);
    hash.update(input);
    hash.update(output);
    hash.finalize().into()
}

/// Step 2: `n` 128-bit weights, four per SHA-512 block.
pub(crate) fn weights(seed: &[u8; 64], n: usize) -> Vec<Scalar> {
    let blocks = n.div_ceil(4);
    let mut out: Vec<Scalar> = (0..blocks)
        .into_par_iter()
        .flat_map_iter(|block| {
            let mut hash = Sha512::new();
            hash.update(WEIGHT_TAG);
            hash.update([0u8]);
            hash.update(seed);
            hash.update((block as u64).to_be_bytes());
            let bytes: [u8; 64] = hash.finalize().into();
            (0..4).map(move |j| {
                let mut wide = [0u8; 32];
                wide[..16].copy_from_slice(&bytes[16 * j..16 * j + 16]);
                Scalar::from_bytes_mod_order(wide)
            })
        })
        .collect();
    out.truncate(n);
    out
}

/// `Σ d_i·P_i`, split over rayon threads (variable time: weights and points are public).
fn weighted_sum(weights: &[Scalar], points: &[RistrettoPoint]) -> RistrettoPoint {
    const MSM_CHUNK: usize = 4096;
    weights
        .par_chunks(MSM_CHUNK)
        .zip(points.par_chunks(MSM_CHUNK))
        .map(|(w, p)| RistrettoPoint::vartime_multiscalar_mul(w, p))
        .reduce(RistrettoPoint::identity, |a, b| a + b)
}

fn challenge(
    seed: &[u8; 64],
    m: &RistrettoPoint,
    z: &RistrettoPoint,
    a1: &RistrettoPoint,
    a2: &RistrettoPoint,
) -> Scalar {
    let mut hash = Sha512::new();
    hash.update(CHALLENGE_TAG);
    hash.update([0u8]);
    hash.update(seed);
    for point in [m, z, a1, a2] {
        hash.update(point.compress().as_bytes());
    }
    Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
}

/// A point's compressed encoding (for test vectors and callers that hold `RistrettoPoint`s).
#[cfg(test)]
fn enc(point: &RistrettoPoint) -> [u8; 32] {
    point.compress().to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HashDomain, IdentifierKind, hash_and_blind};
    use curve25519_dalek::ristretto::CompressedRistretto;
    use proptest::prelude::*;

    const FP: [u8; 32] = [7u8; 32];

    fn ctx(batch: u64) -> DleqContext<'static> {
        DleqContext {
            agreement: &FP,
            prover: "snacks",
            owner: "drinks",
            batch,
        }
    }

    fn batch(owner: &PsiSecret, n: usize) -> Vec<u8> {
        let domain = HashDomain::new("agr", IdentifierKind::Email);
        let ids: Vec<String> = (0..n).map(|i| format!("c{i}@example.com")).collect();
        hash_and_blind(owner, &domain, &ids).concat()
    }

    #[test]
    fn honest_proofs_verify_and_blinding_matches_blind() {
        let owner = PsiSecret::generate().unwrap();
        let prover = PsiSecret::generate().unwrap();
        for n in [1, 3, CHUNK + 5, 2 * 4096 + 1] {
            let input = batch(&owner, n);
            let (output, proof) = blind_and_prove(&prover, &ctx(3), &input).unwrap();
            assert_eq!(output, crate::blind_concatenated(&prover, &input).unwrap());
            let k = prover.commitment();
            assert_eq!(
                verify_blinding(&k, &ctx(3), &input, &output, &proof),
                Ok(())
            );
        }
    }

    #[test]
    fn inputs_decoded_at_upload_give_the_same_verdicts() {
        let owner = PsiSecret::generate().unwrap();
        let prover = PsiSecret::generate().unwrap();
        let k = prover.commitment();
        let input = batch(&owner, 64);
        let decoded = check_and_decode(&input).unwrap();
        assert_eq!(decoded.len(), 64);
        assert_eq!(decoded.memory_bytes(), 64 * size_of::<RistrettoPoint>());
        let (output, proof) = blind_and_prove(&prover, &ctx(1), &input).unwrap();
        assert_eq!(
            verify_blinding_decoded(&k, &ctx(1), &input, &decoded, &output, &proof),
            Ok(())
        );
        // One altered point, a proof for another batch number, another key: refused alike.
        let mut altered = output.clone();
        altered[5 * 32..6 * 32].copy_from_slice(&output[6 * 32..7 * 32]);
        altered[6 * 32..7 * 32].copy_from_slice(&output[5 * 32..6 * 32]);
        for (commitment, context, out) in [
            (k, ctx(1), &altered),
            (k, ctx(2), &output),
            (PsiSecret::generate().unwrap().commitment(), ctx(1), &output),
        ] {
            assert_eq!(
                verify_blinding_decoded(&commitment, &context, &input, &decoded, out, &proof),
                verify_blinding(&commitment, &context, &input, out, &proof),
            );
            assert_eq!(
                verify_blinding(&commitment, &context, &input, out, &proof),
                Err(DleqError::Invalid)
            );
        }
        // Decoded points of other bytes are never used for these: a stale entry cannot turn
        // a cheat into a pass, nor an honest batch into a refusal.
        let other_input = batch(&owner, 65)[32..].to_vec();
        let stale = check_and_decode(&other_input).unwrap();
        assert_eq!(
            verify_blinding_decoded(&k, &ctx(1), &input, &stale, &output, &proof),
            Ok(())
        );
        let (other_output, other_proof) = blind_and_prove(&prover, &ctx(1), &other_input).unwrap();
        assert_eq!(
            verify_blinding_decoded(&k, &ctx(1), &input, &stale, &other_output, &other_proof),
            Err(DleqError::Invalid)
        );
        // The checks at upload are check_points' checks, with its errors.
        let mut duplicated = input.clone();
        duplicated[3 * 32..4 * 32].copy_from_slice(&input[..32]);
        let mut invalid = input.clone();
        invalid[9 * 32..10 * 32].fill(0xff);
        for bytes in [&duplicated, &invalid, &input[..100].to_vec()] {
            assert_eq!(
                check_and_decode(bytes).map(|_| ()),
                crate::check_points(bytes)
            );
            assert!(check_and_decode(bytes).is_err());
        }
    }

    #[test]
    fn one_altered_point_is_refused() {
        let owner = PsiSecret::generate().unwrap();
        let prover = PsiSecret::generate().unwrap();
        let input = batch(&owner, 100);
        let (mut output, proof) = blind_and_prove(&prover, &ctx(1), &input).unwrap();
        // A cheating partner blinds point 42 with another key (it stays a valid point).
        let other = PsiSecret::generate().unwrap();
        let wrong = crate::blind_concatenated(&other, &input[42 * 32..43 * 32]).unwrap();
        output[42 * 32..43 * 32].copy_from_slice(&wrong);
        let k = prover.commitment();
        assert_eq!(
            verify_blinding(&k, &ctx(1), &input, &output, &proof),
            Err(DleqError::Invalid)
        );
    }

    #[test]
    fn a_whole_batch_under_another_key_is_refused() {
        let owner = PsiSecret::generate().unwrap();
        let prover = PsiSecret::generate().unwrap();
        let other = PsiSecret::generate().unwrap();
        let input = batch(&owner, 10);
        // A consistent proof under a key other than the committed one.
        let (output, proof) = blind_and_prove(&other, &ctx(1), &input).unwrap();
        assert_eq!(
            verify_blinding(&prover.commitment(), &ctx(1), &input, &output, &proof),
            Err(DleqError::Invalid)
        );
        // ...which does verify against its own commitment.
        assert_eq!(
            verify_blinding(&other.commitment(), &ctx(1), &input, &output, &proof),
            Ok(())
        );
    }

    #[test]
    fn proofs_are_bound_to_their_context() {
        let owner = PsiSecret::generate().unwrap();
        let prover = PsiSecret::generate().unwrap();
        let input = batch(&owner, 8);
        let (output, proof) = blind_and_prove(&prover, &ctx(5), &input).unwrap();
        let k = prover.commitment();
        let other_fp = [8u8; 32];
        let contexts = [
            ctx(6),
            DleqContext {
                agreement: &other_fp,
                ..ctx(5)
            },
            DleqContext {
                prover: "drinks",
                owner: "snacks",
                ..ctx(5)
            },
            // Length prefixes: moving a byte between the names changes the transcript.
            DleqContext {
                prover: "snack",
                owner: "sdrinks",
                ..ctx(5)
            },
        ];
        for context in contexts {
            assert_eq!(
                verify_blinding(&k, &context, &input, &output, &proof),
                Err(DleqError::Invalid),
                "{context:?}"
            );
        }
        // Reordering the batch (same pairs, other order) changes the transcript too.
        let mut swapped_in = input.clone();
        let mut swapped_out = output.clone();
        swapped_in[..32].copy_from_slice(&input[32..64]);
        swapped_in[32..64].copy_from_slice(&input[..32]);
        swapped_out[..32].copy_from_slice(&output[32..64]);
        swapped_out[32..64].copy_from_slice(&output[..32]);
        assert_eq!(
            verify_blinding(&k, &ctx(5), &swapped_in, &swapped_out, &proof),
            Err(DleqError::Invalid)
        );
    }

    #[test]
    fn malformed_inputs_are_refused_specifically() {
        let owner = PsiSecret::generate().unwrap();
        let prover = PsiSecret::generate().unwrap();
        let input = batch(&owner, 4);
        let (output, proof) = blind_and_prove(&prover, &ctx(1), &input).unwrap();
        let k = prover.commitment();
        assert_eq!(
            verify_blinding(&[0u8; 32], &ctx(1), &input, &output, &proof),
            Err(DleqError::BadCommitment)
        );
        assert_eq!(
            verify_blinding(&k, &ctx(1), &input, &output, &proof[..63]),
            Err(DleqError::MalformedProof)
        );
        let mut non_canonical = proof;
        non_canonical[63] = 0xff; // s ≥ ℓ: a non-canonical scalar is not an alternative proof
        assert_eq!(
            verify_blinding(&k, &ctx(1), &input, &output, &non_canonical),
            Err(DleqError::MalformedProof)
        );
        assert_eq!(
            verify_blinding(&k, &ctx(1), &input, &output[..96], &proof),
            Err(DleqError::CountMismatch {
                inputs: 4,
                outputs: 3
            })
        );
        let mut identity_out = output.clone();
        identity_out[32..64].fill(0);
        assert!(matches!(
            verify_blinding(&k, &ctx(1), &input, &identity_out, &proof),
            Err(DleqError::BadPoint {
                side: "blinded",
                error: BlindError {
                    index: 1,
                    kind: BlindErrorKind::Identity
                }
            })
        ));
    }

    #[test]
    fn blind_and_prove_refuses_what_blind_refuses() {
        let owner = PsiSecret::generate().unwrap();
        let prover = PsiSecret::generate().unwrap();
        let mut input = batch(&owner, 10);
        let dup = input[..32].to_vec();
        input[5 * 32..6 * 32].copy_from_slice(&dup);
        let err = blind_and_prove(&prover, &ctx(1), &input).unwrap_err();
        assert_eq!(err, crate::blind_concatenated(&prover, &input).unwrap_err());
        input[2 * 32..3 * 32].fill(0);
        let err = blind_and_prove(&prover, &ctx(1), &input).unwrap_err();
        assert_eq!(err, crate::blind_concatenated(&prover, &input).unwrap_err());
        assert_eq!(
            blind_and_prove(&prover, &ctx(1), &input[..33]).unwrap_err(),
            crate::blind_concatenated(&prover, &input[..33]).unwrap_err()
        );
    }

    #[test]
    fn weights_follow_the_documented_expansion() {
        let seed = [9u8; 64];
        let w = weights(&seed, 6);
        let mut hash = Sha512::new();
        hash.update(b"accord/psi/v1/dleq-weights\0");
        hash.update(seed);
        hash.update(1u64.to_be_bytes());
        let block: [u8; 64] = hash.finalize().into();
        let mut want = [0u8; 32];
        want[..16].copy_from_slice(&block[16..32]);
        assert_eq!(w[5], Scalar::from_bytes_mod_order(want));
        assert_eq!(w.len(), 6);
        assert_eq!(enc(&RistrettoPoint::identity()), [0u8; 32]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn any_single_corruption_is_caught(n in 1usize..40, victim in 0usize..40, scale in 2u64..1000) {
            let victim = victim % n;
            let owner = PsiSecret::generate().unwrap();
            let prover = PsiSecret::generate().unwrap();
            let input = batch(&owner, n);
            let (mut output, proof) = blind_and_prove(&prover, &ctx(2), &input).unwrap();
            let p = CompressedRistretto::from_slice(&output[victim * 32..victim * 32 + 32])
                .unwrap().decompress().unwrap();
            let altered = (p * Scalar::from(scale)).compress().to_bytes();
            output[victim * 32..victim * 32 + 32].copy_from_slice(&altered);
            prop_assert_eq!(
                verify_blinding(&prover.commitment(), &ctx(2), &input, &output, &proof),
                Err(DleqError::Invalid)
            );
        }
    }
}
