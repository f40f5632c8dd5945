//! Fuzz the query policy: arbitrary UTF-8 through `Engine::query` must never panic, and
//! whatever the engine answers must be aggregate-only with every group at or above k.
//!
//! The oracle does not trust the engine: it parses the answered SQL itself, drops ORDER BY,
//! LIMIT and OFFSET (the engine applies them after removing small groups), appends
//! `COUNT(*)` to the select list and runs that on plain DataFusion over the same rows, with
//! no policy. Every answered row must then be one of those groups, with a count of at least
//! k (as a multiset: two answered rows need two such groups). A NULL in the answer matches
//! any value (the engine may withhold a sparse aggregate). An answered query the oracle
//! cannot read as one `SELECT … FROM overlap` is itself a failure: the policy admits only
//! that shape.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use accord_engine::arrow::array::{Float64Array, StringArray};
use accord_engine::arrow::record_batch::RecordBatch;
use accord_engine::corpus::render_cell;
use accord_engine::{AggregateKind, ColumnSpec, Engine, Outcome, Role, TableSpec};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{SetExpr, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

const K: u64 = 10;
const COUNT_COLUMN: &str = "accord_oracle_group_size";

struct Fixture {
    rt: tokio::runtime::Runtime,
    engine: Engine,
    oracle: SessionContext,
}

/// Regions of uneven sizes, so that some natural groups are below k (including one
/// customer alone), and a metric with distinct values, so filters can isolate rows.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let spec = TableSpec {
            columns: vec![
                ColumnSpec { name: "drinks_region".into(), role: Role::Dimension },
                ColumnSpec {
                    name: "drinks_monthly_spend".into(),
                    role: Role::Metric { min: 0.0, max: 500.0 },
                },
                ColumnSpec { name: "snacks_favourite".into(), role: Role::Dimension },
            ],
            min_group_size: K,
            aggregates: vec![AggregateKind::Count, AggregateKind::Sum, AggregateKind::Avg],
        };
        let sizes = [
            ("north", 90),
            ("south", 50),
            ("east", 30),
            ("west", 15),
            ("island", 9),
            ("rock", 4),
            ("solo", 1),
        ];
        let regions: Vec<&str> = sizes
            .iter()
            .flat_map(|(r, n)| std::iter::repeat_n(*r, *n))
            .collect();
        let n = regions.len();
        let favourite = |i: usize| match i {
            _ if i % 7 == 0 => None,
            5 | 6 => Some("rare"),
            _ if i % 3 == 0 => Some("nuts"),
            _ => Some("crisps"),
        };
        let spend = |i: usize| if i % 11 == 0 { None } else { Some(((i * 37) % 500) as f64) };
        let batch = RecordBatch::try_new(
            spec.arrow_schema(),
            vec![
                Arc::new(StringArray::from_iter(regions.iter().map(|r| Some(*r)))),
                Arc::new(Float64Array::from_iter((0..n).map(spend))),
                Arc::new(StringArray::from_iter((0..n).map(favourite))),
            ],
        )
        .expect("fixture batch");
        let engine = Engine::new(spec.clone(), vec![batch.clone()]).expect("fixture engine");
        let oracle = SessionContext::new();
        let table = MemTable::try_new(spec.arrow_schema(), vec![vec![batch]]).expect("oracle table");
        oracle.register_table("overlap", Arc::new(table)).expect("oracle register");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Fixture { rt, engine, oracle }
    })
}

/// The answered SQL as a group-counting query, or `None` if it is not one plain SELECT.
fn oracle_sql(sql: &str) -> Option<String> {
    let mut statements = Parser::parse_sql(&GenericDialect {}, sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let Statement::Query(query) = &mut statements[0] else {
        return None;
    };
    if query.with.is_some() {
        return None;
    }
    query.order_by = None;
    query.limit_clause = None;
    query.fetch = None;
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    // DISTINCT would merge groups the count tells apart; the multiset check below still
    // holds without it (an answer with DISTINCT has at most as many rows).
    select.distinct = None;
    let count = Parser::new(&GenericDialect {})
        .try_with_sql(&format!("COUNT(*) AS {COUNT_COLUMN}"))
        .ok()?
        .parse_select_item()
        .ok()?;
    select.projection.push(count);
    Some(statements[0].to_string())
}

fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            out.push(batch.columns().iter().map(|c| render_cell(c, row)).collect());
        }
    }
    out
}

fn check_answer(f: &Fixture, sql: &str, answered: &[RecordBatch], width: usize) {
    let Some(counting) = oracle_sql(sql) else {
        panic!("the policy answered a query that is not one SELECT over overlap: {sql:?}");
    };
    let groups = match f.rt.block_on(async {
        let frame = f.oracle.sql(&counting).await?;
        frame.collect().await
    }) {
        Ok(batches) => rows(&batches),
        Err(e) => panic!("the oracle cannot run {counting:?} (answered as {sql:?}): {e}"),
    };
    // Groups of at least k, keyed by their visible cells, with how many there are.
    let mut big: HashMap<Vec<String>, usize> = HashMap::new();
    let mut all: Vec<(Vec<String>, u64)> = Vec::new();
    for g in groups {
        assert_eq!(g.len(), width + 1, "oracle width for {counting:?}");
        let size: u64 = g[width].parse().expect("COUNT(*) renders as an integer");
        let cells = g[..width].to_vec();
        if size >= K {
            *big.entry(cells.clone()).or_default() += 1;
        }
        all.push((cells, size));
    }
    for row in rows(answered) {
        assert_eq!(row.len(), width);
        // Exact match first; a NULL in the answer matches any value of a big group.
        let key = if big.get(&row).copied().unwrap_or(0) > 0 {
            Some(row.clone())
        } else {
            big.iter()
                .filter(|(_, n)| **n > 0)
                .map(|(cells, _)| cells)
                .find(|cells| {
                    cells
                        .iter()
                        .zip(&row)
                        .all(|(g, a)| a == g || a == "NULL")
                })
                .cloned()
        };
        match key {
            Some(key) => *big.get_mut(&key).expect("present") -= 1,
            None => panic!(
                "answered row {row:?} of {sql:?} is not a group of at least {K} customers; \
                 groups and sizes: {all:?}"
            ),
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    if let Ok(Outcome::Answered(answer)) = f.rt.block_on(f.engine.query(sql)) {
        check_answer(f, sql, &answer.batches, answer.schema.fields().len());
    }
});
