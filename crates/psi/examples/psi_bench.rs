//! Measures primitives, the bound and the in-process pipeline without building the CLI:
//! `cargo run --release -p accord-psi --example psi_bench -- [ROWS] [--compare]`.
use accord_psi::bench::{compare_encodings, measure_primitives, run_pipeline};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rows = 100_000;
    let mut compare = false;
    for arg in std::env::args().skip(1) {
        if arg == "--compare" {
            compare = true;
        } else {
            rows = arg
                .parse()
                .map_err(|e| format!("ROWS must be a number, got {arg:?}: {e}"))?;
        }
    }
    let costs = measure_primitives(20_000);
    println!("{costs:#?}");
    println!(
        "bound: {:.0} records/s per party",
        costs.bound_records_per_sec()
    );
    if compare {
        let (per_point, batched) = compare_encodings(rows, &costs)?;
        println!(
            "per-point encoding: {:.0} records/s per party, ratio {:.3}",
            per_point.records_per_sec_per_party, per_point.ratio_to_bound
        );
        println!(
            "batched encoding:   {:.0} records/s per party, ratio {:.3}",
            batched.records_per_sec_per_party, batched.ratio_to_bound
        );
        println!(
            "batched / per-point = {:.3}",
            batched.records_per_sec_per_party / per_point.records_per_sec_per_party
        );
    } else {
        let report = run_pipeline(rows, &costs)?;
        println!("{report:#?}");
    }
    Ok(())
}
