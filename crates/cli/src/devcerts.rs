//! `accord dev-certs DIR`: a local CA and certificates for a room and its clients, for trying
//! TLS and mutual TLS on one machine (never for production).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

/// Arguments of `accord dev-certs`.
#[derive(Debug, clap::Args)]
pub struct DevCertsArgs {
    /// Where to write ca.crt, room.crt/.key and NAME.crt/.key (created; nothing is overwritten).
    pub dir: PathBuf,
    /// Another name (DNS name or IP address) the room certificate is valid for; repeatable.
    /// localhost, 127.0.0.1 and ::1 are always included.
    #[arg(long = "san", value_name = "NAME")]
    pub sans: Vec<String>,
    /// A client certificate to make (repeatable; default: drinks, snacks and analyst).
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// How many days the certificates are valid.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..=825))]
    pub days: u16,
}

pub fn run(args: DevCertsArgs) -> Result<ExitCode> {
    let clients = if args.clients.is_empty() {
        accord_room::devcerts::DEFAULT_CLIENTS
            .iter()
            .map(|c| (*c).to_owned())
            .collect()
    } else {
        args.clients.clone()
    };
    let made = accord_room::devcerts::generate(
        &args.dir,
        &args.sans,
        &clients,
        accord_room::devcerts::Validity::days(i64::from(args.days)),
    )
    .with_context(|| format!("could not make dev certificates in {}", args.dir.display()))?;
    let d = args.dir.display();
    println!(
        "development certificates in {d} (valid {} days; NOT for production):",
        args.days
    );
    println!(
        "  CA           {}  (clients: --ca; room: --client-ca)",
        made.ca_cert.display()
    );
    println!(
        "  room         {} + room.key  (valid for {})",
        made.room_cert.display(),
        made.room_names.join(", ")
    );
    for (name, cert, _) in &made.clients {
        println!("  client       {} + {name}.key", cert.display());
    }
    println!();
    println!("  accord room serve --data-dir DATA --listen 127.0.0.1:7700 \\");
    println!("      --tls-cert {d}/room.crt --tls-key {d}/room.key --client-ca {d}/ca.crt");
    if let Some((name, _, _)) = made.clients.first() {
        println!(
            "  accord ... --room https://localhost:7700 --ca {d}/ca.crt --client-cert {d}/{name}.crt --client-key {d}/{name}.key"
        );
    }
    Ok(ExitCode::SUCCESS)
}
