//! `accord bench …` (placeholder until the PSI work lands).
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Measure the PSI pipeline against the bound set by one scalar multiplication.
    Psi {
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
    },
}

pub fn run(_cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("accord bench is not built yet")
}
