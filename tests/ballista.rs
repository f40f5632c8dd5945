//! The Ballista engine (feature `ballista`) answers exactly as the single-node engine:
//! the same analyst queries over the same sealed overlap, both engines, identical answers,
//! suppression counts and refusals; and the Ballista path really ran (its in-process
//! scheduler, on loopback, accepted one job per answered query).
//!
//! Metric values are whole numbers, so sums are exact whatever order the partitions are
//! added in; with differential privacy both engines draw from the same seeded noise.
#![cfg(feature = "ballista")]

use std::sync::Arc;

use accord_engine::arrow::array::{Float64Array, RecordBatch, StringArray};
use accord_engine::corpus::render_rows;
use accord_engine::{
    AggregateKind, ColumnSpec, Engine, NoiseSource, Outcome, QueryPrivacy, Role, TableSpec,
};

fn spec() -> TableSpec {
    let dim = |name: &str| ColumnSpec {
        name: name.into(),
        role: Role::Dimension,
    };
    let metric = |name: &str, max: f64| ColumnSpec {
        name: name.into(),
        role: Role::Metric { min: 0.0, max },
    };
    TableSpec {
        columns: vec![
            dim("region"),
            dim("tier"),
            metric("spend", 100.0),
            metric("visits", 50.0),
        ],
        min_group_size: 10,
        aggregates: vec![AggregateKind::Count, AggregateKind::Sum, AggregateKind::Avg],
    }
}

/// 1,500 rows in three batches: four regions, three common tiers and a `rare` tier of 4
/// rows (below k), whole-number metrics with some missing spends.
fn batches() -> Vec<RecordBatch> {
    let regions = ["north", "south", "east", "west"];
    let tiers = ["gold", "silver", "bronze"];
    let mut out = Vec::new();
    for part in 0..3u64 {
        let (mut region, mut tier, mut spend, mut visits) = (vec![], vec![], vec![], vec![]);
        for i in 0..500u64 {
            let n = part * 500 + i;
            let x = n.wrapping_mul(2_654_435_761) % 10_007;
            region.push(regions[(x % 4) as usize]);
            tier.push(if n % 375 == 7 {
                "rare"
            } else {
                tiers[((x / 4) % 3) as usize]
            });
            spend.push((x % 13 != 0).then_some((x % 101) as f64));
            visits.push(Some((x % 51) as f64));
        }
        out.push(
            RecordBatch::try_new(
                spec().arrow_schema(),
                vec![
                    Arc::new(StringArray::from(region)),
                    Arc::new(StringArray::from(tier)),
                    Arc::new(Float64Array::from(spend)),
                    Arc::new(Float64Array::from(visits)),
                ],
            )
            .expect("batch"),
        );
    }
    out
}

/// (query, whether its rows come in a defined order)
const ANSWERED: &[(&str, bool)] = &[
    ("SELECT COUNT(*) AS n FROM overlap", true),
    (
        "SELECT COUNT(spend) AS c, SUM(spend) AS s, AVG(spend) AS a, SUM(visits) AS v FROM overlap",
        true,
    ),
    (
        "SELECT region, COUNT(*) AS n, SUM(spend) AS s FROM overlap GROUP BY region",
        false,
    ),
    (
        "SELECT region, tier, AVG(visits) AS v, COUNT(*) AS n FROM overlap GROUP BY region, tier ORDER BY region, tier",
        true,
    ),
    // `rare` has 4 customers: suppressed (and counted) by both engines.
    (
        "SELECT tier, COUNT(*) AS n FROM overlap GROUP BY tier ORDER BY tier",
        true,
    ),
    (
        "SELECT tier, COUNT(*) AS n FROM overlap GROUP BY tier HAVING COUNT(*) > 400 ORDER BY n DESC, tier",
        true,
    ),
    (
        "SELECT region, SUM(spend) AS s FROM overlap GROUP BY region ORDER BY s DESC, region LIMIT 2",
        true,
    ),
    (
        "SELECT region, AVG(spend) AS a FROM overlap WHERE tier = 'gold' AND region <> 'west' GROUP BY region ORDER BY region",
        true,
    ),
    (
        "SELECT region, tier, SUM(visits) AS v FROM overlap WHERE tier IN ('gold', 'silver') GROUP BY region, tier ORDER BY v DESC, region, tier LIMIT 5",
        true,
    ),
];

const REFUSED: &[&str] = &[
    "SELECT * FROM overlap",
    "SELECT region FROM overlap",
    "SELECT MAX(spend) FROM overlap",
    "SELECT COUNT(*) FROM customers",
    "SELECT region, COUNT(*) FROM overlap GROUP BY region LIMIT 1 OFFSET 1; DROP TABLE overlap",
];

/// What an analyst (and the audit log) sees of an outcome.
fn seen(outcome: Outcome, ordered: bool) -> String {
    match outcome {
        Outcome::Answered(answer) => {
            let names: Vec<String> = answer
                .schema
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect();
            let mut rows = render_rows(&answer.batches);
            if !ordered {
                rows.sort();
            }
            format!(
                "columns {names:?}\nrows {rows:?}\nrows {} suppressed {} privacy {:?}",
                answer.rows, answer.groups_suppressed, answer.privacy_spent
            )
        }
        Outcome::Refused(refusal) => format!("refused: {refusal}"),
    }
}

fn engines(dir: &std::path::Path) -> (Engine, Engine) {
    let single = Engine::new(spec(), batches()).expect("single-node engine");
    let ballista =
        Engine::ballista_standalone(spec(), batches(), &dir.join("engine")).expect("ballista");
    assert_eq!(single.distributed_jobs(), None);
    assert_eq!(ballista.distributed_jobs(), Some(0));
    (single, ballista)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ballista_answers_equal_single_node_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (single, ballista) = engines(dir.path());
    assert!(dir.path().join("engine/overlap.parquet").is_file());
    for (i, &(sql, ordered)) in ANSWERED.iter().enumerate() {
        let want = seen(single.query(sql).await.expect(sql), ordered);
        let got = seen(ballista.query(sql).await.expect(sql), ordered);
        assert!(want.starts_with("columns"), "{sql}: {want}");
        assert_eq!(got, want, "{sql}");
        // The Ballista path ran: its scheduler accepted this query's job.
        assert_eq!(ballista.distributed_jobs(), Some(i as u64 + 1), "{sql}");
    }
    let sup = seen(ballista.query(ANSWERED[4].0).await.expect("tiers"), true);
    assert!(
        sup.contains("suppressed 1"),
        "the rare tier is suppressed: {sup}"
    );
    let jobs = ballista.distributed_jobs();
    for sql in REFUSED {
        let want = seen(single.query(sql).await.expect(sql), true);
        let got = seen(ballista.query(sql).await.expect(sql), true);
        assert!(want.starts_with("refused"), "{sql}: {want}");
        assert_eq!(got, want, "{sql}");
    }
    assert_eq!(
        ballista.distributed_jobs(),
        jobs,
        "a refused query never reaches the scheduler"
    );
    let endpoints = ballista.distributed_endpoints();
    assert_eq!(
        endpoints.len(),
        2,
        "a scheduler and an executor: {endpoints:?}"
    );
    for endpoint in &endpoints {
        assert!(
            endpoint.ip().is_loopback(),
            "the in-process scheduler and executor listen on loopback only, not {endpoint}"
        );
    }
    // The executor's shuffle files are inside the engine's directory, not in /tmp.
    assert!(dir.path().join("engine/work").is_dir());
    // Dropping the engine removes its copy of the overlap.
    drop(ballista);
    assert!(!dir.path().join("engine").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ballista_noisy_answers_equal_single_node_noisy_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (single, ballista) = engines(dir.path());
    let privacy = QueryPrivacy::new(1.0, 1e-6, 10).expect("privacy");
    let single = single.with_differential_privacy(privacy, NoiseSource::from_seed(7));
    let ballista = ballista.with_differential_privacy(privacy, NoiseSource::from_seed(7));
    for (i, &(sql, ordered)) in ANSWERED.iter().enumerate() {
        let want = seen(single.query(sql).await.expect(sql), ordered);
        let got = seen(ballista.query(sql).await.expect(sql), ordered);
        assert!(want.contains("privacy Some"), "{sql}: {want}");
        assert_eq!(got, want, "{sql}");
        assert_eq!(ballista.distributed_jobs(), Some(i as u64 + 1), "{sql}");
    }
}

/// Party files: 700 customers each, 600 of them in both; whole-number spends.
fn write_party_files(dir: &std::path::Path) {
    use accord_tests::{Customer, write_csv};
    let tiers = ["gold", "silver", "bronze"];
    let regions = ["north", "south", "east", "west"];
    let favourites = ["nuts", "crisps", "fruit"];
    let customer = |i: usize, cells: Vec<String>| Customer {
        email: format!("c{i}@example.org"),
        consent: true,
        cells,
    };
    let drinks: Vec<Customer> = (0..700)
        .map(|i| {
            let tier = if i % 150 == 3 { "rare" } else { tiers[i % 3] };
            let spend = (i * 37 % 500).to_string();
            customer(i, vec![tier.into(), regions[i / 3 % 4].into(), spend])
        })
        .collect();
    let snacks: Vec<Customer> = (100..800)
        .map(|i| customer(i, vec![favourites[i / 5 % 3].into(), (i % 97).to_string()]))
        .collect();
    write_csv(&dir.join("drinks.csv"), "drinks", &drinks);
    write_csv(&dir.join("snacks.csv"), "snacks", &snacks);
}

const ROOM_QUERIES: &[&str] = &[
    "SELECT COUNT(*) AS n FROM overlap",
    "SELECT drinks_loyalty_tier, COUNT(*) AS n, SUM(drinks_monthly_spend) AS s FROM overlap GROUP BY drinks_loyalty_tier ORDER BY drinks_loyalty_tier",
    "SELECT drinks_region, snacks_favourite, AVG(snacks_weekly_spend) AS w FROM overlap GROUP BY drinks_region, snacks_favourite ORDER BY drinks_region, snacks_favourite",
    "SELECT drinks_region, COUNT(*) AS n FROM overlap GROUP BY drinks_region HAVING COUNT(*) > 140 ORDER BY n DESC, drinks_region LIMIT 3",
    "SELECT snacks_favourite, SUM(snacks_weekly_spend) AS w FROM overlap WHERE drinks_loyalty_tier = 'gold' GROUP BY snacks_favourite ORDER BY snacks_favourite",
    "SELECT * FROM overlap",
    "SELECT drinks_region FROM overlap",
];

/// The same agreement and uploads in a single-node room and a `ballista-standalone` room:
/// every analyst sees the same answers and refusals over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ballista_room_answers_as_a_single_node_room() {
    use accord_room::QueryEngine;
    use accord_tests::*;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Keys::new(77);
    let text = agreement_text("ballista-room", 1, &keys, 10, 100_000);
    let agreement = verified(&text);
    let mut seen_by = Vec::new();
    for engine in [QueryEngine::SingleNode, QueryEngine::BallistaStandalone] {
        let work = dir.path().join(engine.to_string());
        std::fs::create_dir_all(&work).expect("work dir");
        write_party_files(&work);
        let data = work.join("room");
        let mut config = serve_config(&data);
        config.engine = engine;
        let room = accord_room::start(config).await.expect("room starts");
        let url = url(&room);
        submit(&url, &text).await.expect("submit");
        run_psi(&agreement, &keys, &work, &url, 256).await;
        // The Ballista room keeps its engine's Parquet copy of the overlap in its data
        // directory; the single-node room has none.
        let parquet = files_under(&data)
            .into_iter()
            .filter(|p| p.ends_with("overlap.parquet"))
            .count();
        assert_eq!(
            parquet,
            usize::from(engine == QueryEngine::BallistaStandalone)
        );
        let mut ana = analyst(&url, "ballista-room", &keys).await;
        let mut answers = Vec::new();
        for sql in ROOM_QUERIES {
            answers.push(match grpc_query(&mut ana, sql).await {
                Ok(batches) => format!("{:?}", render_rows(&batches)),
                Err((rule, _)) => format!("refused [{rule}]"),
            });
        }
        room.shutdown().await;
        seen_by.push(answers);
    }
    assert!(seen_by[0][1].contains("bronze"), "{:?}", seen_by[0]);
    assert!(seen_by[0][5].starts_with("refused"), "{:?}", seen_by[0]);
    assert_eq!(seen_by[1], seen_by[0]);
}
