//! `accord room serve`, `accord room key` and `accord room status`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::common::runtime;

// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum RoomCommand {
    /// Run the room: gRPC for parties and analysts, optionally Arrow Flight SQL.
    Serve(ServeArgs),
    /// Print the room's public key (creating the key in DIR if there is none yet): the
    /// operator publishes it, and every agreement names it under [room] (`public_key`).
    Key {
        /// The room's data directory (the same as `accord room serve --data-dir`).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Report a room's data directory for operators and monitoring: format and build
    /// versions, the room key, agreements and their states, ended agreements, each audit
    /// log's last head, and disk use. Reads only; safe while the room runs.
    Status {
        /// The room's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// One JSON object instead of text (for monitoring).
        #[arg(long)]
        json: bool,
    },
    /// Take a consistent backup of the room's data directory into a new directory, while
    /// the room runs (calls wait while files are linked and the audit logs copied). Copy
    /// the result to other storage afterwards: files the room never changes in place are
    /// hard links when the backup is on the same filesystem.
    Backup {
        /// The room's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The new backup directory (must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
    /// Check a backup (every file's checksum, every audit chain) and restore it into a new
    /// data directory. Start the room on it afterwards; a party that saw a later audit head
    /// than the backup holds is detected (docs/OPERATIONS.md, "Backups").
    Restore {
        /// The backup directory (written by `accord room backup`).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The data directory to create (must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Only check the backup; restore nothing.
        #[arg(long)]
        check_only: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Read every setting from this room.toml (see deploy/README.md) instead of the flags.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "data_dir", "listen", "flight_sql", "tls_cert", "tls_key", "client_ca", "insecure_plaintext_network", "tls_proxy_cert"
    ])]
    pub config: Option<PathBuf>,
    /// Where the room keeps agreements, uploaded tokens, snapshots and audit logs.
    #[arg(long, required_unless_present = "config")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (port 0 picks a free port). A non-loopback address needs TLS.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Arrow Flight SQL listen address, for ADBC/JDBC clients (same TLS as gRPC).
    #[arg(long)]
    pub flight_sql: Option<SocketAddr>,
    /// TLS certificate chain (PEM) for both listeners.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, mode 0600).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require mutual TLS: clients must present a certificate signed by this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Serve plain text (no TLS) on a non-loopback address. Only behind a TLS-terminating
    /// proxy on a private network: otherwise tokens, SQL and results cross the network in clear.
    #[arg(long)]
    pub insecure_plaintext_network: bool,
    /// For a plain-text room behind a TLS-terminating proxy: the certificate (PEM) the proxy
    /// presents. The room signs its binding to the room key, which clients check; without it
    /// clients refuse the proxy (docs/PROTOCOL.md, "The room's identity").
    #[arg(long, value_name = "FILE", conflicts_with = "tls_cert")]
    pub tls_proxy_cert: Option<PathBuf>,
    /// Only register agreements whose every party key is listed in FILE (one "ed25519:…" per
    /// line, `#` comments; read again on every submission). Required beyond loopback.
    #[arg(long, value_name = "FILE", conflicts_with = "open_registration")]
    pub registration_allow: Option<PathBuf>,
    /// Let anyone who can reach the room register agreements, also beyond loopback.
    #[arg(long)]
    pub open_registration: bool,
    /// The query engine: single-node (DataFusion in the room's process) or
    /// ballista-standalone (Apache DataFusion Ballista, an in-process scheduler and executor on
    /// loopback; needs an accord built with `--features ballista`, refused otherwise).
    /// Overrides `engine` in room.toml.
    #[arg(long, value_name = "ENGINE", value_parser = parse_engine)]
    pub engine: Option<accord_room::QueryEngine>,
}

fn parse_engine(s: &str) -> std::result::Result<accord_room::QueryEngine, String> {
    s.parse()
}

pub fn run(cmd: RoomCommand) -> Result<ExitCode> {
    match cmd {
        RoomCommand::Serve(args) => serve(args),
        RoomCommand::Status { data_dir, json } => {
            let status = accord_room::status::read_status(&data_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status_text(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        RoomCommand::Backup { data_dir, to } => {
            let m = accord_room::backup::backup(&data_dir, &to)?;
            println!(
                "Backed up {} to {}: {} files, {}, checksums in {}. Copy it to other storage; \
                 `accord room restore --from {} --data-dir NEW` checks and restores it.",
                data_dir.display(),
                to.display(),
                m.files.len(),
                crate::common::human_bytes(m.bytes()),
                to.join(accord_fs::snapshot::BACKUP_FILE).display(),
                to.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        RoomCommand::Restore {
            from,
            data_dir,
            check_only,
        } => {
            let m = if check_only {
                accord_room::backup::verify(&from)?
            } else {
                accord_room::backup::restore(&from, &data_dir)?
            };
            let taken = chrono::DateTime::from_timestamp(m.taken_unix as i64, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| m.taken_unix.to_string());
            if check_only {
                println!(
                    "{} is a whole room backup taken {taken}: {} files, {}, every checksum and audit chain verified.",
                    from.display(),
                    m.files.len(),
                    crate::common::human_bytes(m.bytes())
                );
            } else {
                println!(
                    "Restored the room backup taken {taken} into {} ({} files, {}; checksums and audit chains \
                     verified). Start the room with --data-dir {}: everything after {taken} is lost, and a \
                     party that saw a later audit head will be told so (docs/OPERATIONS.md, \"Backups\").",
                    data_dir.display(),
                    m.files.len(),
                    crate::common::human_bytes(m.bytes()),
                    data_dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RoomCommand::Key { data_dir } => {
            let key = accord_room::identity::load_or_create(&data_dir)?;
            println!("{}", key.public_key());
            eprintln!(
                "The room key of {} (keep {} secret and backed up). Give the line above to the parties: \
                 their agreement names it as\n  [room]\n  operator = \"…\"\n  public_key = \"{}\"\n\
                 (or `accord agreement init --room-key {} --room-operator \"…\"`).",
                data_dir.display(),
                accord_room::identity::key_path(&data_dir).display(),
                key.public_key(),
                key.public_key()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve_config(args: &ServeArgs) -> Result<accord_room::ServeConfig> {
    let expiry_check = Duration::from_secs(5);
    if let Some(path) = &args.config {
        let mut config =
            accord_room::config::RoomFile::load(path)?.to_serve_config(expiry_check)?;
        if let Some(engine) = args.engine {
            config.engine = engine;
        }
        return Ok(config);
    }
    let Some(data_dir) = args.data_dir.clone() else {
        bail!("give --data-dir DIR (or --config room.toml)");
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(accord_room::ServerTls::load(
            c,
            k,
            args.client_ca.as_deref(),
        )?),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together: give both or neither"),
    };
    Ok(accord_room::ServeConfig {
        data_dir,
        listen: args.listen,
        flight_sql: args.flight_sql,
        expiry_check,
        tls,
        insecure_plaintext_network: args.insecure_plaintext_network,
        tls_proxy_cert: args.tls_proxy_cert.clone(),
        limits: accord_room::Limits::default(),
        registration_allow: args.registration_allow.clone(),
        open_registration: args.open_registration,
        engine: args.engine.unwrap_or_default(),
    })
}

fn serve(args: ServeArgs) -> Result<ExitCode> {
    let config = serve_config(&args)?;
    let secure = config.tls.is_some();
    let mutual = config
        .tls
        .as_ref()
        .is_some_and(accord_room::ServerTls::requires_client_certificate);
    let data_dir = config.data_dir.clone();
    runtime()?.block_on(async move {
        let running = accord_room::start(config).await?;
        let (scheme, flight) = if secure {
            ("https", "grpc+tls")
        } else {
            ("http", "grpc")
        };
        println!("room listening on {scheme}://{}", running.grpc_addr);
        if let Some(f) = running.flight_sql_addr {
            println!("Flight SQL listening on {flight}://{f}");
        }
        if mutual {
            println!("mutual TLS: clients must present a certificate signed by the --client-ca");
        }
        println!("room public key {}", running.room.public_key());
        println!("data directory {}", data_dir.display());
        let stop = running.stopper();
        // Ctrl-C, or SIGTERM (what systemd, Docker and Kubernetes send): stop accepting,
        // finish the calls in service, exit 0. Every write the room acknowledged is already
        // on disk either way.
        tokio::spawn(async move {
            let which = tokio::select! {
                r = tokio::signal::ctrl_c() => r.map(|()| "Ctrl-C"),
                r = terminate() => r.map(|()| "SIGTERM"),
            };
            if let Ok(which) = which {
                eprintln!("stopping the room ({which}): finishing the calls in service");
                let _ = stop.send(true);
            }
        });
        running.wait().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves when the process receives SIGTERM (never on platforms without it).
async fn terminate() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        term.recv().await;
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::future::pending::<std::io::Result<()>>().await
    }
}

fn status_text(s: &accord_room::status::RoomStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "room data directory {}", s.data_dir.display());
    let _ = writeln!(
        out,
        "  format {} (this build reads up to {}), accord {}, protocol {}",
        s.format, s.build_format, s.build_version, s.protocol_version
    );
    let _ = writeln!(
        out,
        "  room key {}",
        s.room_public_key
            .as_deref()
            .unwrap_or("none yet (`accord room key` creates it)")
    );
    let _ = writeln!(out, "  disk used {} bytes", s.disk_bytes);
    let _ = writeln!(out, "agreements with data: {}", s.agreements.len());
    for a in &s.agreements {
        let _ = writeln!(
            out,
            "  {} version {} ({}): {}, in force until {}; audit {} entries, head {}",
            accord_agreement::text::escape(&a.id, 80),
            a.version,
            a.fingerprint,
            a.state,
            a.valid_until,
            a.audit_entries,
            a.audit_head
        );
        went_back(&mut out, a.audit_went_back);
    }
    let _ = writeln!(out, "ended agreements: {}", s.ended.len());
    for e in &s.ended {
        let _ = writeln!(
            out,
            "  {} ({}): {} at {}; audit {} entries, head {}",
            accord_agreement::text::escape(&e.id, 80),
            e.fingerprint,
            e.reason,
            e.at,
            e.audit_entries,
            e.audit_head
        );
        went_back(&mut out, e.audit_went_back);
    }
    out
}

/// The line that makes a rollback visible to an operator reading the status.
fn went_back(out: &mut String, times: u64) {
    use std::fmt::Write as _;
    if times > 0 {
        let _ = writeln!(
            out,
            "    ALERT: this log went back in time {times} time(s): the room was restored from an older backup \
             or lost data (see its went_back entries; docs/OPERATIONS.md, \"A room that went back in time\")"
        );
    }
}
