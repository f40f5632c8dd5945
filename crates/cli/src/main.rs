//! `accord`: the command line for every role of a clean room.
//!
//! Legal writes and signs agreements, partner data teams run the party side of the private
//! set intersection, analysts query the room, and anyone can verify the audit log. The
//! command-line contract (commands, flags, exit codes) is DESIGN §9 and must not change.
//!
//! Exit codes: 0 success, 1 refused or invalid (reason on stderr), 2 usage, 3 room unreachable.
#![forbid(unsafe_code)]

mod agreement;
mod agreement_room;
mod audit;
mod bench;
mod bench_e2e;
mod common;
mod demo;
mod devcerts;
mod keygen;
mod party;
mod query;
mod room;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Marks an error that means "the room could not be reached" (exit code 3).
#[derive(Debug)]
pub struct RoomUnreachable(pub String);

impl std::fmt::Display for RoomUnreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "could not reach the room: {}", self.0)
    }
}

impl std::error::Error for RoomUnreachable {}

#[derive(Debug, Parser)]
#[command(
    name = "accord",
    version,
    about = "Accord: a privacy-preserving data clean room"
)]
struct Cli {
    /// How logs on stderr are written: `text` for people, `json` (one object per line) for
    /// log pipelines. RUST_LOG sets the level.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an Ed25519 key (file mode 0600) and print its public key.
    Keygen(keygen::KeygenArgs),
    /// Write, sign, verify, summarize, submit and revoke sharing agreements.
    #[command(subcommand)]
    Agreement(agreement::AgreementCommand),
    /// Run the room server.
    #[command(subcommand)]
    Room(room::RoomCommand),
    /// A partner data team's side: upload, blind the partner's work, erase, status.
    #[command(subcommand)]
    Party(party::PartyCommand),
    /// Run an aggregate SQL query as an analyst named in the agreement.
    Query(query::QueryArgs),
    /// Verify an agreement's audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// A full two-party run on loopback with generated data: the quickest tour of Accord.
    Demo(demo::DemoArgs),
    /// Measure performance against the hardware bound.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Make a local CA and TLS certificates for a room and its clients (for trying TLS).
    DevCerts(devcerts::DevCertsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr; RUST_LOG=info (or debug) shows more. Output meant for people goes to stdout.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match cli.command {
            Command::Room(_) => "info",
            _ => "warn",
        })
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    let result = match cli.command {
        Command::Keygen(args) => keygen::run(args),
        Command::Agreement(cmd) => agreement::run(cmd),
        Command::Room(cmd) => room::run(cmd),
        Command::Party(cmd) => party::run(cmd),
        Command::Query(args) => query::run(args),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::DevCerts(args) => devcerts::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.chain().any(|cause| cause.is::<RoomUnreachable>()) {
                ExitCode::from(3)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
