//! The deterministic synthetic overlap shared by the corpus test and the bench.
#![allow(dead_code)]

use std::sync::Arc;

use accord_engine::{AggregateKind, ColumnSpec, Role, TableSpec};
use arrow::array::{Float64Array, StringArray};
use arrow::record_batch::RecordBatch;

/// k for the corpus.
pub const K: u64 = 10;

/// One customer of the synthetic overlap.
#[derive(Debug, Clone)]
pub struct Row {
    pub tier: Option<&'static str>,
    pub region: Option<&'static str>,
    pub drinks_spend: Option<f64>,
    pub favourite: Option<&'static str>,
    pub snacks_spend: Option<f64>,
}

/// The table spec: two parties, k = 10, COUNT/SUM/AVG.
pub fn spec() -> TableSpec {
    let dim = |n: &str| ColumnSpec {
        name: n.into(),
        role: Role::Dimension,
    };
    let metric = |n: &str, max: f64| ColumnSpec {
        name: n.into(),
        role: Role::Metric { min: 0.0, max },
    };
    TableSpec {
        columns: vec![
            dim("drinks_loyalty_tier"),
            dim("drinks_region"),
            metric("drinks_monthly_spend", 500.0),
            dim("snacks_favourite"),
            metric("snacks_weekly_spend", 100.0),
        ],
        min_group_size: K,
        aggregates: vec![AggregateKind::Count, AggregateKind::Sum, AggregateKind::Avg],
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `n` deterministic rows. Some values are deliberately rare (fewer than k rows):
/// tier `platinum`, region `island`, favourite `liquorice`. Favourite `mints` is common
/// (20 customers in 2000) but its `snacks_weekly_spend` is sparse: only customer 42 has one,
/// so any SUM/AVG/COUNT of it over `mints` would be that one customer's figure.
pub fn rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let h = |salt: u64| splitmix((i as u64) << 8 | salt);
            let tier = if i % 297 == 5 {
                Some("platinum")
            } else {
                match h(1) % 20 {
                    0 => None,
                    1..=8 => Some("bronze"),
                    9..=15 => Some("silver"),
                    _ => Some("gold"),
                }
            };
            let region = if i % 500 == 7 {
                Some("island")
            } else {
                match h(2) % 4 {
                    0 => Some("north"),
                    1 => Some("south"),
                    2 => Some("east"),
                    _ => Some("west"),
                }
            };
            let drinks_spend = if h(3) % 33 == 0 {
                None
            } else {
                Some((h(4) % 501) as f64)
            };
            let favourite = if i % 701 == 3 {
                Some("liquorice")
            } else if i % 100 == 42 {
                Some("mints")
            } else {
                match h(5) % 10 {
                    0 => None,
                    1..=4 => Some("crisps"),
                    5..=7 => Some("chocolate"),
                    _ => Some("nuts"),
                }
            };
            let sparse = favourite == Some("mints") && i != 42;
            let snacks_spend = if sparse || h(6) % 25 == 0 {
                None
            } else {
                Some((h(7) % 101) as f64)
            };
            Row {
                tier,
                region,
                drinks_spend,
                favourite,
                snacks_spend,
            }
        })
        .collect()
}

/// The rows as record batches of at most `batch_size` rows, in the spec's schema.
pub fn batches(rows: &[Row], batch_size: usize) -> Vec<RecordBatch> {
    let schema = spec().arrow_schema();
    rows.chunks(batch_size.max(1))
        .map(|chunk| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from_iter(chunk.iter().map(|r| r.tier))),
                    Arc::new(StringArray::from_iter(chunk.iter().map(|r| r.region))),
                    Arc::new(Float64Array::from_iter(
                        chunk.iter().map(|r| r.drinks_spend),
                    )),
                    Arc::new(StringArray::from_iter(chunk.iter().map(|r| r.favourite))),
                    Arc::new(Float64Array::from_iter(
                        chunk.iter().map(|r| r.snacks_spend),
                    )),
                ],
            )
            .expect("synthetic batch matches the spec")
        })
        .collect()
}
