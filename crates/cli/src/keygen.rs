//! `accord keygen`: create an Ed25519 secret key file and print its public key.
use std::process::ExitCode;

use anyhow::Context as _;

/// Arguments of `accord keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (created with mode 0600; never overwritten).
    #[arg(long)]
    pub out: std::path::PathBuf,
}

/// Writes a new secret key to `--out` and prints its public key (`ed25519:<base64>`), the
/// only line on stdout, so scripts can capture it.
pub fn run(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let key = accord_agreement::SecretKey::generate().context("could not create a key")?;
    let text = key.to_key_file();
    accord_fs::write_new_secret(&args.out, text.as_bytes())
        .with_context(|| format!("could not write the secret key to {}", args.out.display()))?;
    println!("{}", key.public_key());
    eprintln!(
        "wrote the secret key to {} (mode 0600): keep it private; share only the public key above",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
