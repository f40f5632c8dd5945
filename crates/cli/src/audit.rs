//! `accord audit verify`: fetch an agreement's audit log and check it offline.

use std::process::ExitCode;

use accord_agreement::PublicKey;
use accord_proto::v1::{self, audit_client::AuditClient};
use anyhow::{Result, anyhow, bail};

use crate::common::{TlsArgs, agreement_ref, call_error, runtime};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check that the log is complete and untampered: every entry chains to the previous one
    /// and the room's signature on the head verifies.
    Verify {
        /// The room's URL.
        #[arg(long)]
        room: String,
        /// The agreement file or its fingerprint (the log is shown to whoever holds the agreement).
        #[arg(long)]
        agreement: String,
        /// The room's public key, if known ("ed25519:…"); otherwise the key the room presents is shown.
        #[arg(long)]
        room_key: Option<String>,
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
        room_key,
        show,
        tls,
    } = cmd;
    let tls = tls.load()?;
    let fingerprint = agreement_ref(&agreement)?;
    if fingerprint.len() != 64 || !fingerprint.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "--agreement must be the agreement file or its 64-hex fingerprint: the audit log is only shown to those who hold the agreement"
        );
    }
    runtime()?.block_on(async move {
        let channel = accord_party::client::channel_with(&room, &tls).await.map_err(crate::common::party_error)?;
        let response = AuditClient::new(channel)
            .max_decoding_message_size(256 * 1024 * 1024)
            .fetch(v1::FetchAuditRequest { fingerprint: fingerprint.clone() })
            .await
            .map_err(|s| call_error(&room, &tls, s))?
            .into_inner();
        let presented = <[u8; 32]>::try_from(response.room_public_key.as_slice())
            .map_err(|_| anyhow!("the room's public key is not 32 bytes"))
            .and_then(|b| PublicKey::from_bytes(&b).map_err(|e| anyhow!("the room's public key is invalid: {e}")))?;
        if let Some(expected) = room_key {
            let expected: PublicKey = expected.parse().map_err(|e| anyhow!("--room-key: {e}"))?;
            if expected != presented {
                bail!("the room presented key {presented}, not the expected {expected}: this is not the room you meant");
            }
        }
        let head = response.head.ok_or_else(|| anyhow!("the room sent no signed head"))?;
        if head.fingerprint != fingerprint {
            bail!("the room's head is for another agreement");
        }
        if show {
            for e in &response.entries {
                // Entries hold analysts' SQL: escape what could drive the terminal.
                println!("{}", accord_agreement::text::escape(e, 64 * 1024));
            }
        }
        match accord_room::audit::verify_log(&response.entries, &head, &presented) {
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
