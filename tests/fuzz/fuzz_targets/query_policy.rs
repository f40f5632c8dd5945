//! Fuzz the query policy: arbitrary UTF-8 through `Engine::query` must never panic
//! (a refusal or an internal error is fine; a panic or abort is a bug).
#![no_main]

use std::sync::{Arc, OnceLock};

use accord_engine::{AggregateKind, ColumnSpec, Engine, Role, TableSpec};
use accord_engine::arrow::array::{Float64Array, StringArray};
use accord_engine::arrow::record_batch::RecordBatch;

struct Fixture {
    rt: tokio::runtime::Runtime,
    engine: Engine,
}

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
            min_group_size: 10,
            aggregates: vec![AggregateKind::Count, AggregateKind::Sum, AggregateKind::Avg],
        };
        let n = 200;
        let regions = ["north", "south", "east", "west", "island"];
        let batch = RecordBatch::try_new(
            spec.arrow_schema(),
            vec![
                Arc::new(StringArray::from_iter((0..n).map(|i| Some(regions[i % 5])))),
                Arc::new(Float64Array::from_iter((0..n).map(|i| Some((i % 500) as f64)))),
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| if i % 7 == 0 { None } else { Some("nuts") }),
                )),
            ],
        )
        .expect("fixture batch");
        let engine = Engine::new(spec, vec![batch]).expect("fixture engine");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Fixture { rt, engine }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    let _ = f.rt.block_on(f.engine.query(sql));
});
