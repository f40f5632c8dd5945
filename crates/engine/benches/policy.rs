//! Policy overhead: the same aggregate SQL through the engine (parse, AST check, plan,
//! whitelist check, k rewrite, optimize, re-check, suppressed-group count, execute)
//! versus plain DataFusion over the same in-memory overlap of 1M rows.
//!
//! Run: `cargo bench -p accord-engine --bench policy`

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::Arc;

use accord_engine::{Engine, Outcome};
use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

const ROWS: usize = 1_000_000;

const QUERIES: &[(&str, &str)] = &[
    (
        "two_keys_sum_avg",
        "SELECT drinks_region, drinks_loyalty_tier, COUNT(*) AS n, SUM(drinks_monthly_spend) AS s, \
         AVG(snacks_weekly_spend) AS a FROM overlap GROUP BY drinks_region, drinks_loyalty_tier",
    ),
    (
        "where_having_order_limit",
        "SELECT snacks_favourite, COUNT(*) AS n FROM overlap WHERE drinks_region IN ('north', 'east') \
         GROUP BY snacks_favourite HAVING COUNT(*) > 100 ORDER BY n DESC LIMIT 3",
    ),
];

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let rows = common::rows(ROWS);
    let batches = common::batches(&rows, 8192);
    drop(rows);
    let engine = Engine::new(common::spec(), batches.clone()).expect("engine");
    let plain = SessionContext::new();
    let partitions = plain.state().config().target_partitions().max(1);
    let mut parts = vec![Vec::new(); partitions];
    for (i, b) in batches.into_iter().enumerate() {
        parts[i % partitions].push(b);
    }
    let table = MemTable::try_new(common::spec().arrow_schema(), parts).expect("memtable");
    plain
        .register_table("overlap", Arc::new(table))
        .expect("register");

    let mut group = c.benchmark_group("policy_overhead");
    group.sample_size(10);
    for (name, sql) in QUERIES {
        group.bench_function(format!("{name}/plain_datafusion"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let df = plain.sql(sql).await.expect("plan");
                    black_box(df.collect().await.expect("run"))
                })
            })
        });
        group.bench_function(format!("{name}/accord_policy"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    match engine.query(sql).await.expect("engine") {
                        Outcome::Answered(a) => black_box(a),
                        Outcome::Refused(r) => panic!("bench query refused: {r}"),
                    }
                })
            })
        });
    }
    // The fixed cost of the policy alone, without execution: plain DataFusion's parse, plan
    // and optimize versus the engine's `prepare` (which adds the AST check, both plan
    // checks and the k rewrite).
    for (name, sql) in QUERIES {
        group.bench_function(format!("{name}/plain_plan_only"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let df = plain.sql(sql).await.expect("plan");
                    black_box(df.into_optimized_plan().expect("optimize"))
                })
            })
        });
        group.bench_function(format!("{name}/accord_prepare_only"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    match engine.prepare(sql).await.expect("engine") {
                        Ok(p) => black_box(p),
                        Err(r) => panic!("bench query refused: {r}"),
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
