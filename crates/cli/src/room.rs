//! `accord room serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::common::runtime;

#[derive(Debug, clap::Subcommand)]
pub enum RoomCommand {
    /// Run the room: gRPC for parties and analysts, optionally Arrow Flight SQL.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where the room keeps agreements, uploaded tokens, snapshots and audit logs.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// gRPC listen address (loopback; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Arrow Flight SQL listen address, for ADBC/JDBC clients.
    #[arg(long)]
    pub flight_sql: Option<SocketAddr>,
    /// TLS certificate (PEM). Not supported by this build: see deploy/README.md.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Only register agreements whose every party key is listed in FILE (one "ed25519:…" per
    /// line, `#` comments; read again on every submission). Required beyond loopback.
    #[arg(long, value_name = "FILE", conflicts_with = "open_registration")]
    pub registration_allow: Option<PathBuf>,
    /// Let anyone who can reach the room register agreements, also beyond loopback.
    #[arg(long)]
    pub open_registration: bool,
}

pub fn run(cmd: RoomCommand) -> Result<ExitCode> {
    match cmd {
        RoomCommand::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> Result<ExitCode> {
    if args.tls_cert.is_some() {
        bail!(
            "--tls-cert/--tls-key: this build does not terminate TLS itself; run the room on loopback behind a \
             TLS-terminating gRPC proxy (deploy/README.md shows one) — refusing rather than serving plain text"
        );
    }
    runtime()?.block_on(async move {
        let running = accord_room::start(accord_room::ServeConfig {
            data_dir: args.data_dir.clone(),
            listen: args.listen,
            flight_sql: args.flight_sql,
            expiry_check: Duration::from_secs(5),
            registration_allow: args.registration_allow.clone(),
            open_registration: args.open_registration,
        })
        .await?;
        println!("room listening on http://{}", running.grpc_addr);
        if let Some(f) = running.flight_sql_addr {
            println!("Flight SQL listening on grpc://{f}");
        }
        println!("room public key {}", running.room.public_key());
        println!("data directory {}", args.data_dir.display());
        let stop = running.stopper();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping the room (Ctrl-C)");
                let _ = stop.send(true);
            }
        });
        running.wait().await?;
        Ok(ExitCode::SUCCESS)
    })
}
