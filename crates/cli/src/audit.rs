//! `accord audit verify`: fetch an agreement's audit log and check it offline.

use std::process::ExitCode;

use std::path::PathBuf;

use accord_agreement::PublicKey;
use accord_party::{Connection, Principal};
use anyhow::{Result, anyhow, bail};

use crate::common::{TlsArgs, agreement_ref_and_room, load_key, party_error, runtime};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check that the log is complete and untampered: every entry chains to the previous one
    /// and the room's signature on the head verifies. Only the agreement's parties and
    /// auditors may read the log: prove one of their keys with --key.
    Verify {
        /// The room's URL.
        #[arg(long)]
        room: String,
        /// The agreement: its file, fingerprint or id (an ended agreement: its file or fingerprint).
        #[arg(long)]
        agreement: String,
        /// Your Ed25519 key file: an auditor's key named in the agreement, or a party's key with --party.
        #[arg(long)]
        key: PathBuf,
        /// Read the log as this party (with the party's key) instead of as an auditor.
        #[arg(long)]
        party: Option<String>,
        /// The room's public key, if known ("ed25519:…"); otherwise the key the room presents is shown.
        #[arg(long)]
        room_key: Option<String>,
        /// Where the fingerprint first used per room and agreement id is remembered (default:
        /// the key file's path with `.pins` appended).
        #[arg(long, value_name = "FILE")]
        pins: Option<PathBuf>,
        /// Also print every entry.
        #[arg(long)]
        show: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

pub fn run(cmd: AuditCommand) -> Result<ExitCode> {
    let AuditCommand::Verify {
        room,
        agreement,
        key,
        party,
        room_key,
        pins,
        show,
        tls,
    } = cmd;
    let tls = tls.load()?;
    let (selector, named_room) = agreement_ref_and_room(&agreement)?;
    let secret = load_key(&key)?;
    let pins_path = crate::query::pins_path(pins.as_ref(), &key);
    runtime()?.block_on(async move {
        let principal = match &party {
            Some(p) => Principal::Party(p),
            None => Principal::Auditor(""),
        };
        let mut conn =
            Connection::open_checked(&room, &tls, &selector, principal, &secret, named_room.as_ref())
                .await
            .map_err(party_error)?;
        crate::common::check_pins_and_heads(&pins_path, &room, &selector, &mut conn).await?;
        let fingerprint = conn.fingerprint().to_string();
        let (entries, head) = conn.audit_log().await.map_err(party_error)?;
        let presented = *conn.room_key();
        if let Some(expected) = room_key {
            let expected: PublicKey = expected.parse().map_err(|e| anyhow!("--room-key: {e}"))?;
            if expected != presented {
                bail!("the room presented key {presented}, not the expected {expected}: this is not the room you meant");
            }
        }
        if head.fingerprint != fingerprint {
            bail!("the room's head is for another agreement");
        }
        if show {
            for e in &entries {
                // Entries hold analysts' SQL: escape what could drive the terminal.
                println!("{}", accord_agreement::text::escape(e, 64 * 1024));
            }
        }
        match accord_audit::verify_log(&entries, &head, &presented) {
            Ok(s) => {
                println!("audit log of {fingerprint}: OK");
                println!("  {} entries, hash chain intact, head signed by the room ({presented})", s.entries);
                println!("  queries answered {}, refused {}", s.queries_answered, s.queries_refused);
                if let Some(last) = s.last_event {
                    println!(
                        "  last event: {}",
                        accord_agreement::text::escape(&last.to_string(), 4096)
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("audit log of {fingerprint}: FAILED — {e}");
                Ok(ExitCode::from(1))
            }
        }
    })
}
