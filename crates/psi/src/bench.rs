//! Measures the PSI primitives and the in-process pipeline against the hardware bound.
//!
//! Pure: it only reads the clock (`std::time::Instant`). The bound for one party is
//! `cores / (hash + 2·mult + compress + decompress)` records per second: every record costs
//! that party one hash-to-group and one multiplication for its own row, and one decompression
//! and one multiplication for the partner's row, plus an encoding. Measured costs are
//! single-core and taken from the same binary that runs the pipeline. Nothing here asserts a
//! speed; `accord bench psi` prints the numbers.

use std::hint::black_box;
use std::time::{Duration, Instant};

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;

use crate::batch::{CHUNK, Compression, blind_into, hash_and_blind_with};
use crate::{
    DleqContext, HashDomain, IdentifierKind, POINT_LEN, PsiError, PsiSecret, blind_and_prove,
    verify_blinding, verify_blinding_decoded,
};

/// Points per proved batch in the benchmark: the party's default upload batch size.
pub const PROOF_BATCH: usize = 4096;

/// Single-core cost of each primitive, in nanoseconds per operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrimitiveCosts {
    /// SHA-512 of the domain prefix and a ~25-byte identifier, then `from_uniform_bytes`.
    pub hash_to_group_ns: f64,
    /// Variable-base scalar multiplication of a ristretto point (constant time).
    pub scalar_mult_ns: f64,
    /// `RistrettoPoint::compress` of one point.
    pub compress_ns: f64,
    /// Per-point cost of `double_and_compress_batch` over chunks of the batch size used by
    /// the batch API (one shared inversion per chunk).
    pub compress_batched_ns: f64,
    /// `CompressedRistretto::decompress` of a valid encoding.
    pub decompress_ns: f64,
    /// Operations timed per primitive.
    pub samples: usize,
    /// Threads in rayon's pool: the `cores` of the bound.
    pub threads: usize,
    /// The curve25519-dalek backend compiled in: `"simd"` (AVX2/AVX-512 chosen at run time
    /// on x86-64) or `"serial"`.
    pub backend: &'static str,
}

impl PrimitiveCosts {
    /// Nanoseconds of single-core work per record per party, as the bound counts it.
    pub fn ns_per_record(&self) -> f64 {
        self.hash_to_group_ns + 2.0 * self.scalar_mult_ns + self.compress_ns + self.decompress_ns
    }

    /// The bound: `threads / (hash + 2·mult + compress + decompress)` records per second per party.
    pub fn bound_records_per_sec(&self) -> f64 {
        self.threads as f64 * 1e9 / self.ns_per_record()
    }
}

/// Result of [`run_pipeline`].
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineReport {
    /// Identifiers per party.
    pub rows: usize,
    /// Rayon threads used.
    pub threads: usize,
    /// Wall time of the four batch steps (both parties' work).
    pub elapsed: Duration,
    /// Achieved records per second per party: both parties' work ran on the same cores, so one
    /// party's share of the time is half: `2·rows / elapsed`.
    pub records_per_sec_per_party: f64,
    /// [`PrimitiveCosts::bound_records_per_sec`] of the costs given.
    pub bound_records_per_sec: f64,
    /// `records_per_sec_per_party / bound_records_per_sec`.
    pub ratio_to_bound: f64,
    /// Tokens found on both sides (a correctness check, computed outside the timing).
    pub matched: usize,
    /// Identifiers the two synthetic inputs share: `matched` must equal it.
    pub expected_matched: usize,
}

fn backend() -> &'static str {
    if cfg!(all(target_arch = "x86_64", target_pointer_width = "64")) {
        "simd"
    } else {
        "serial"
    }
}

fn per_op(start: Instant, ops: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / ops.max(1) as f64
}

fn synthetic_ids(range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| format!("customer-{i:08}@example.com"))
        .collect()
}

/// Times each primitive `samples` times on the calling thread (at least one sample).
pub fn measure_primitives(samples: usize) -> PrimitiveCosts {
    let samples = samples.max(1);
    let domain = HashDomain::new("accord-bench", IdentifierKind::Email);
    let ids = synthetic_ids(0..samples);
    let scalar = Scalar::from_bytes_mod_order_wide(&domain.digest(b"bench scalar"));

    let start = Instant::now();
    let points: Vec<RistrettoPoint> = ids
        .iter()
        .map(|id| domain.hash(black_box(id.as_bytes())))
        .collect();
    let hash_to_group_ns = per_op(start, samples);

    let start = Instant::now();
    let multiplied: Vec<RistrettoPoint> = points.iter().map(|p| black_box(p) * scalar).collect();
    let scalar_mult_ns = per_op(start, samples);

    let start = Instant::now();
    let encoded: Vec<CompressedRistretto> =
        multiplied.iter().map(|p| black_box(p).compress()).collect();
    let compress_ns = per_op(start, samples);

    let start = Instant::now();
    for chunk in multiplied.chunks(CHUNK) {
        black_box(RistrettoPoint::double_and_compress_batch(black_box(chunk)));
    }
    let compress_batched_ns = per_op(start, samples);

    let start = Instant::now();
    let decoded = encoded
        .iter()
        .filter(|c| black_box(*c).decompress().is_some())
        .count();
    let decompress_ns = per_op(start, samples);
    black_box(decoded);

    PrimitiveCosts {
        hash_to_group_ns,
        scalar_mult_ns,
        compress_ns,
        compress_batched_ns,
        decompress_ns,
        samples,
        threads: rayon::current_num_threads(),
        backend: backend(),
    }
}

/// Runs both sides of the PSI in process on `rows` synthetic identifiers per party (half of
/// them shared): A hashes and blinds its rows, B hashes and blinds its rows, B blinds A's
/// points, A blinds B's points. Only those four steps are timed.
pub fn run_pipeline(rows: usize, costs: &PrimitiveCosts) -> Result<PipelineReport, PsiError> {
    run_pipeline_with(rows, costs, Compression::Batched)
}

fn run_pipeline_with(
    rows: usize,
    costs: &PrimitiveCosts,
    compression: Compression,
) -> Result<PipelineReport, PsiError> {
    let shared = rows / 2;
    let ids_a = synthetic_ids(0..rows);
    let ids_b = synthetic_ids(rows - shared..2 * rows - shared);
    let secret_a = PsiSecret::generate()?;
    let secret_b = PsiSecret::generate()?;
    let domain = HashDomain::new("accord-bench", IdentifierKind::Email);
    let mut tokens_a = vec![0u8; rows * POINT_LEN];
    let mut tokens_b = vec![0u8; rows * POINT_LEN];

    let start = Instant::now();
    let blinded_a = hash_and_blind_with(&secret_a, &domain, &ids_a, compression);
    let blinded_b = hash_and_blind_with(&secret_b, &domain, &ids_b, compression);
    blind_into(
        &secret_b,
        blinded_a.as_flattened(),
        &mut tokens_a,
        compression,
    )?;
    blind_into(
        &secret_a,
        blinded_b.as_flattened(),
        &mut tokens_b,
        compression,
    )?;
    let elapsed = start.elapsed();

    let side_a: std::collections::HashSet<&[u8]> = tokens_a.chunks_exact(POINT_LEN).collect();
    let matched = tokens_b
        .chunks_exact(POINT_LEN)
        .filter(|t| side_a.contains(t))
        .count();
    let records_per_sec_per_party = 2.0 * rows as f64 / elapsed.as_secs_f64().max(1e-9);
    let bound_records_per_sec = costs.bound_records_per_sec();
    Ok(PipelineReport {
        rows,
        threads: rayon::current_num_threads(),
        elapsed,
        records_per_sec_per_party,
        bound_records_per_sec,
        ratio_to_bound: records_per_sec_per_party / bound_records_per_sec,
        matched,
        expected_matched: shared,
    })
}

/// Runs the pipeline twice, once encoding each point separately and once with the batched
/// encoding the API uses, and returns `(per_point, batched)`: the evidence for the choice
/// recorded in `docs/PERFORMANCE.md`.
pub fn compare_encodings(
    rows: usize,
    costs: &PrimitiveCosts,
) -> Result<(PipelineReport, PipelineReport), PsiError> {
    Ok((
        run_pipeline_with(rows, costs, Compression::PerPoint)?,
        run_pipeline_with(rows, costs, Compression::Batched)?,
    ))
}

/// Single-core cost of verifiable blinding, per point of a [`PROOF_BATCH`]-point batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProofCosts {
    /// What [`blind_and_prove`] does beyond blinding, timed on its own: the transcript
    /// hash, the weights, the multi-scalar multiplication and the few single
    /// multiplications of the proof (the blinding is the same work as `blind_concatenated`).
    pub prove_extra_ns: f64,
    /// `verify_blinding_decoded` of the batch with the inputs the room decoded when it
    /// checked them at upload: the room's work when the batch is still in its cache of decoded
    /// inputs (the normal case).
    pub verify_ns: f64,
    /// `verify_blinding` from the encoded bytes: the room's work when the decoded inputs are
    /// no longer cached (after a restart, or with more pending batches than the cache holds).
    pub verify_from_bytes_ns: f64,
    /// The bound's per-record cost (`hash + 2·mult + compress + decompress`), measured
    /// between the proof rounds on the same thread, so that a change of machine load moves
    /// both sides of the ratio alike.
    pub bound_ns: f64,
    /// Points per batch measured.
    pub batch: usize,
}

impl ProofCosts {
    /// Proving plus verifying (inputs decoded at upload), per record.
    pub fn ns_per_record(&self) -> f64 {
        self.prove_extra_ns + self.verify_ns
    }

    /// What proofs add to the bound's per-record cost, as a fraction (0.10 = +10 %), against
    /// the bound measured between the proof rounds.
    pub fn overhead_of_bound(&self) -> f64 {
        self.ns_per_record() / self.bound_ns
    }

    /// The same with the room decoding the inputs again (no cached decoded inputs).
    pub fn overhead_from_bytes(&self) -> f64 {
        (self.prove_extra_ns + self.verify_from_bytes_ns) / self.bound_ns
    }
}

/// Times proving and verifying one batch of `batch` points on a single thread, `rounds` times.
pub fn measure_proofs(batch: usize, rounds: usize) -> Result<ProofCosts, PsiError> {
    let batch = batch.max(1);
    let rounds = rounds.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|err| PsiError::Benchmark {
            reason: format!("could not start a one-thread pool: {err}"),
        })?;
    let owner = PsiSecret::generate()?;
    let prover = PsiSecret::generate()?;
    let domain = HashDomain::new("accord-bench", IdentifierKind::Email);
    let input = hash_and_blind_with(
        &owner,
        &domain,
        &synthetic_ids(0..batch),
        Compression::Batched,
    )
    .concat();
    let fingerprint = [0u8; 32];
    let context = DleqContext {
        agreement: &fingerprint,
        prover: "b",
        owner: "a",
        batch: 1,
    };
    let commitment = prover.commitment();
    let decoded = crate::check_and_decode(&input).map_err(|err| PsiError::Benchmark {
        reason: format!("the benchmark batch does not decode: {err}"),
    })?;
    pool.install(|| {
        let points = crate::dleq::decode_all(&input).map_err(|err| PsiError::Benchmark {
            reason: format!("the benchmark batch does not decode: {err}"),
        })?;
        let (output, proof) = blind_and_prove(&prover, &context, &input)?;
        // Rounds interleave the bound and the three measurements so that a change of machine
        // load during the run affects both sides of the ratio alike.
        let (mut proving, mut verify, mut from_bytes, mut bound) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..rounds {
            bound += measure_primitives(batch.div_ceil(4)).ns_per_record();
            let start = Instant::now();
            black_box(crate::dleq::prove_blinded(
                &prover,
                &context,
                black_box(&input),
                &output,
                &points,
            ));
            proving += per_op(start, batch);
            let start = Instant::now();
            verify_blinding_decoded(&commitment, &context, &input, &decoded, &output, &proof)?;
            verify += per_op(start, batch);
            let start = Instant::now();
            verify_blinding(&commitment, &context, &input, &output, &proof)?;
            from_bytes += per_op(start, batch);
        }
        let rounds = rounds as f64;
        Ok(ProofCosts {
            prove_extra_ns: proving / rounds,
            verify_ns: verify / rounds,
            verify_from_bytes_ns: from_bytes / rounds,
            bound_ns: bound / rounds,
            batch,
        })
    })
}

/// Result of [`run_pipeline_with_proofs`]: the pipeline with every partner batch proved by its
/// blinder and verified (as the room does), in [`PROOF_BATCH`]-point batches.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvedPipelineReport {
    /// The same pipeline without proofs, run just before, for the ratio.
    pub plain: PipelineReport,
    /// Wall time with proving and verifying.
    pub elapsed: Duration,
    /// Achieved records per second per party with proofs.
    pub records_per_sec_per_party: f64,
    /// Batches whose proof verified (all of them, or the run is an error).
    pub verified_batches: usize,
}

/// Runs [`run_pipeline`] and then the same work with verifiable blinding.
pub fn run_pipeline_with_proofs(
    rows: usize,
    costs: &PrimitiveCosts,
) -> Result<ProvedPipelineReport, PsiError> {
    let plain = run_pipeline(rows, costs)?;
    let shared = rows / 2;
    let ids_a = synthetic_ids(0..rows);
    let ids_b = synthetic_ids(rows - shared..2 * rows - shared);
    let secret_a = PsiSecret::generate()?;
    let secret_b = PsiSecret::generate()?;
    let (commit_a, commit_b) = (secret_a.commitment(), secret_b.commitment());
    let domain = HashDomain::new("accord-bench", IdentifierKind::Email);
    let fingerprint = [0u8; 32];
    let start = Instant::now();
    let blinded_a = hash_and_blind_with(&secret_a, &domain, &ids_a, Compression::Batched);
    let blinded_b = hash_and_blind_with(&secret_b, &domain, &ids_b, Compression::Batched);
    let mut verified_batches = 0;
    for (input, prover, commitment, owner, prover_name) in [
        (&blinded_a, &secret_b, &commit_b, "a", "b"),
        (&blinded_b, &secret_a, &commit_a, "b", "a"),
    ] {
        for (n, batch) in input.chunks(PROOF_BATCH).enumerate() {
            let context = DleqContext {
                agreement: &fingerprint,
                prover: prover_name,
                owner,
                batch: n as u64,
            };
            let flat = batch.as_flattened();
            let (output, proof) = blind_and_prove(prover, &context, flat)?;
            verify_blinding(commitment, &context, flat, &output, &proof)?;
            verified_batches += 1;
        }
    }
    let elapsed = start.elapsed();
    Ok(ProvedPipelineReport {
        plain,
        elapsed,
        records_per_sec_per_party: 2.0 * rows as f64 / elapsed.as_secs_f64().max(1e-9),
        verified_batches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_costs_and_proved_pipeline_are_measured() {
        let costs = measure_primitives(4);
        let proofs = measure_proofs(64, 1).unwrap();
        assert_eq!(proofs.batch, 64);
        assert!(proofs.verify_ns > 0.0 && proofs.overhead_of_bound().is_finite());
        let report = run_pipeline_with_proofs(PROOF_BATCH + 10, &costs).unwrap();
        assert_eq!(report.verified_batches, 4);
        assert_eq!(report.plain.matched, report.plain.expected_matched);
    }

    #[test]
    fn primitives_are_measured() {
        let costs = measure_primitives(8);
        assert_eq!(costs.samples, 8);
        assert!(costs.threads >= 1);
        for cost in [
            costs.hash_to_group_ns,
            costs.scalar_mult_ns,
            costs.compress_ns,
            costs.decompress_ns,
        ] {
            assert!(cost.is_finite() && cost >= 0.0);
        }
        assert!(costs.bound_records_per_sec() > 0.0);
    }

    #[test]
    fn pipeline_finds_exactly_the_shared_rows() {
        let costs = measure_primitives(4);
        let report = run_pipeline(CHUNK + 11, &costs).unwrap();
        assert_eq!(report.rows, CHUNK + 11);
        assert_eq!(report.expected_matched, (CHUNK + 11) / 2);
        assert_eq!(report.matched, report.expected_matched);
        let (per_point, batched) = compare_encodings(64, &costs).unwrap();
        assert_eq!(per_point.matched, 32);
        assert_eq!(batched.matched, 32);
    }
}
