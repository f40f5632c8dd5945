//! `accord keygen` (owned by the agreement work; placeholder until it lands).
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (created with mode 0600; never overwritten).
    #[arg(long)]
    pub out: std::path::PathBuf,
}

pub fn run(_args: KeygenArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("accord keygen is not built yet")
}
