//! `accord agreement …` (placeholder until the agreement work lands).
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum AgreementCommand {
    /// Check that an agreement is valid, in force and signed by every party.
    Verify { file: std::path::PathBuf },
}

pub fn run(_cmd: AgreementCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("accord agreement is not built yet")
}
