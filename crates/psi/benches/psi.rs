//! Criterion benches for each PSI primitive and the batch APIs:
//! `cargo bench -p accord-psi --bench psi`.
use std::hint::black_box;

use accord_psi::{
    HashDomain, IdentifierKind, PsiSecret, blind, blind_concatenated, hash_and_blind,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;

const BATCH: usize = 4096;

fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("customer-{i:08}@example.com"))
        .collect()
}

fn primitives(c: &mut Criterion) {
    let domain = HashDomain::new("accord-bench", IdentifierKind::Email);
    let scalar = Scalar::from_bytes_mod_order_wide(&domain.digest(b"bench scalar"));
    let point = domain.hash(b"alice@example.com");
    let encoded = point.compress();
    let mut group = c.benchmark_group("primitive");
    group.bench_function("hash_to_group", |b| {
        b.iter(|| domain.hash(black_box(b"alice@example.com")))
    });
    group.bench_function("scalar_mult", |b| {
        b.iter(|| black_box(&point) * black_box(&scalar))
    });
    group.bench_function("compress", |b| b.iter(|| black_box(&point).compress()));
    group.bench_function("decompress", |b| {
        b.iter(|| black_box(&encoded).decompress())
    });
    let points: Vec<RistrettoPoint> = ids(512)
        .iter()
        .map(|id| domain.hash(id.as_bytes()))
        .collect();
    group.throughput(Throughput::Elements(points.len() as u64));
    group.bench_function("compress_512_each", |b| {
        b.iter(|| points.iter().map(|p| p.compress()).collect::<Vec<_>>())
    });
    group.bench_function("double_and_compress_batch_512", |b| {
        b.iter(|| RistrettoPoint::double_and_compress_batch(black_box(&points)))
    });
    group.finish();
}

fn batches(c: &mut Criterion) {
    let secret = PsiSecret::generate().expect("OS randomness");
    let partner = PsiSecret::generate().expect("OS randomness");
    let domain = HashDomain::new("accord-bench", IdentifierKind::Email);
    let ids = ids(BATCH);
    let points = hash_and_blind(&partner, &domain, &ids);
    let flat = points.concat();
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.bench_function("hash_and_blind_4096", |b| {
        b.iter(|| hash_and_blind(&secret, &domain, black_box(&ids)))
    });
    group.bench_function("blind_4096", |b| {
        b.iter_batched(
            || points.clone(),
            |p| blind(&secret, &p),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("blind_concatenated_4096", |b| {
        b.iter(|| blind_concatenated(&secret, black_box(&flat)))
    });
    group.finish();
}

criterion_group!(benches, primitives, batches);
criterion_main!(benches);
