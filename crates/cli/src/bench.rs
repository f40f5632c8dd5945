//! `accord bench psi --rows N`: measures the PSI primitives, derives the hardware bound and
//! runs the full two-party pipeline in process, then prints how close it comes.
use std::process::ExitCode;

use accord_psi::bench::{
    PROOF_BATCH, PipelineReport, PrimitiveCosts, ProofCosts, ProvedPipelineReport,
    measure_primitives, measure_proofs, run_pipeline_with_proofs,
};
use anyhow::Context;

/// Single-core samples per primitive: enough for a stable mean, a few seconds at most.
const PRIMITIVE_SAMPLES: usize = 20_000;
/// Batches proved and verified when measuring proof costs.
const PROOF_ROUNDS: usize = 8;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Measure the PSI pipeline against the bound set by one scalar multiplication.
    Psi {
        /// Synthetic identifiers per party (half of them shared with the other party).
        #[arg(long, default_value_t = 100_000, value_parser = parse_rows)]
        rows: usize,
    },
    /// The whole run as a data team feels it: the room and both parties as separate
    /// processes on loopback (CSV in, PSI, sealing, queries), against the crypto bound
    /// measured in the same run.
    E2e(crate::bench_e2e::E2eArgs),
}

/// `--rows N` with N ≥ 1 (a usage error otherwise, exit 2).
fn parse_rows(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::E2e(args) => crate::bench_e2e::run(args),
        BenchCommand::Psi { rows } => {
            eprintln!("measuring primitives ({PRIMITIVE_SAMPLES} samples each, one core)…");
            let costs = measure_primitives(PRIMITIVE_SAMPLES);
            eprintln!("running the two-party pipeline on {rows} rows per party…");
            eprintln!("measuring verifiable blinding ({PROOF_BATCH}-point batches, one core)…");
            let proofs = measure_proofs(PROOF_BATCH, PROOF_ROUNDS)
                .context("measuring the blinding proofs failed")?;
            let proved =
                run_pipeline_with_proofs(rows, &costs).context("the benchmark pipeline failed")?;
            let report = &proved.plain;
            anyhow::ensure!(
                report.matched == report.expected_matched,
                "the pipeline matched {} rows but the inputs share {}: this is a bug",
                report.matched,
                report.expected_matched
            );
            print!("{}", render(&costs, report));
            print!("{}", render_proofs(&proofs, &proved));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn rate(records_per_sec: f64) -> String {
    if records_per_sec >= 1e6 {
        format!("{:.2} M records/s", records_per_sec / 1e6)
    } else {
        format!("{:.1} k records/s", records_per_sec / 1e3)
    }
}

fn render(costs: &PrimitiveCosts, report: &PipelineReport) -> String {
    let build = if cfg!(debug_assertions) {
        "debug build (crypto crates optimized by the dev profile)"
    } else {
        "release build"
    };
    format!(
        "PSI benchmark — {build}, curve25519-dalek backend {backend}\n\
         \n\
         primitive costs (one core, mean of {samples} operations)\n\
         \x20 hash to group         {hash:>10.0} ns\n\
         \x20 scalar multiplication {mult:>10.0} ns\n\
         \x20 compress              {compress:>10.0} ns   (batched encoding: {batched:.0} ns per point)\n\
         \x20 decompress            {decompress:>10.0} ns\n\
         \n\
         bound   {threads} cores / (hash + 2·mult + compress + decompress = {per_record:.0} ns)\n\
         \x20       = {bound} per party\n\
         achieved {achieved} per party ({rows} rows per party, both parties in {elapsed:.2} s, {matched} matched)\n\
         ratio    {ratio:.2} of the bound\n",
        backend = costs.backend,
        samples = costs.samples,
        hash = costs.hash_to_group_ns,
        mult = costs.scalar_mult_ns,
        compress = costs.compress_ns,
        batched = costs.compress_batched_ns,
        decompress = costs.decompress_ns,
        threads = costs.threads,
        per_record = costs.ns_per_record(),
        bound = rate(report.bound_records_per_sec),
        achieved = rate(report.records_per_sec_per_party),
        rows = report.rows,
        elapsed = report.elapsed.as_secs_f64(),
        matched = report.matched,
        ratio = report.ratio_to_bound,
    )
}

fn render_proofs(proofs: &ProofCosts, proved: &ProvedPipelineReport) -> String {
    let plain = proved.plain.records_per_sec_per_party;
    format!(
        "\n\
         verifiable blinding (batched DLEQ proofs, one core, per point of a {batch}-point batch)\n\
         \x20 proving adds           {prove:>10.0} ns\n\
         \x20 verifying (room)       {verify:>10.0} ns   (inputs decoded when the room checked them at upload)\n\
         \x20 together               {sum:>10.0} ns = {overhead:.1} % of the bound's {per_record:.0} ns per record (measured between the proof rounds)\n\
         \x20 verifying from bytes   {from_bytes:>10.0} ns   (decoded inputs no longer cached: {overhead_bytes:.1} % with proving)\n\
         pipeline with proofs {with} per party vs {without} without ({ratio:.2} of the rate without; {batches} batches verified from their bytes, the room's work on the same two cores)\n",
        batch = proofs.batch,
        prove = proofs.prove_extra_ns,
        verify = proofs.verify_ns,
        from_bytes = proofs.verify_from_bytes_ns,
        overhead_bytes = 100.0 * proofs.overhead_from_bytes(),
        sum = proofs.ns_per_record(),
        overhead = 100.0 * proofs.overhead_of_bound(),
        per_record = proofs.bound_ns,
        with = rate(proved.records_per_sec_per_party),
        without = rate(plain),
        ratio = proved.records_per_sec_per_party / plain.max(1e-9),
        batches = proved.verified_batches,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_block_names_every_number() {
        let costs = measure_primitives(4);
        let proved = run_pipeline_with_proofs(64, &costs).unwrap();
        let proofs = measure_proofs(16, 1).unwrap();
        let text = render(&costs, &proved.plain) + &render_proofs(&proofs, &proved);
        for needle in [
            "hash to group",
            "scalar multiplication",
            "compress",
            "decompress",
            "bound",
            "achieved",
            "ratio",
            "32 matched",
            "proving adds",
            "verifying (room)",
            "verifying from bytes",
            "pipeline with proofs",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
