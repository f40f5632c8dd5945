//! `accord agreement submit | revoke`: the two agreement commands that talk to the room.

use std::path::PathBuf;
use std::process::ExitCode;

use accord_agreement::Revocation;
use anyhow::{Context, Result, anyhow};

use crate::common::{TlsArgs, load_agreement, load_key, party_error, runtime};

/// Arguments of `accord agreement submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The signed agreement file.
    pub file: PathBuf,
    /// The room's URL, e.g. http://127.0.0.1:7700.
    #[arg(long)]
    pub room: String,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Arguments of `accord agreement revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The signed agreement file.
    pub file: PathBuf,
    /// The revoking party.
    #[arg(long)]
    pub party: String,
    /// The party's key file.
    #[arg(long)]
    pub key: PathBuf,
    /// The room's URL.
    #[arg(long)]
    pub room: String,
    /// Why, for the record (kept in the audit log).
    #[arg(long, default_value = "revoked by the party")]
    pub reason: String,
    /// The party's state directory (default: $ACCORD_STATE, else ~/.local/share/accord/party):
    /// the revocation is recorded there for customers' receipts.
    #[arg(long)]
    pub state: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Submits a verified agreement.
pub fn submit(args: SubmitArgs) -> Result<ExitCode> {
    let agreement = load_agreement(&args.file)?;
    let tls = args.tls.load()?;
    runtime()?.block_on(async move {
        // The room must be the one the agreement names before the manifest is sent to it; its
        // answer must carry an audit head signed by that room's key.
        let r = accord_party::submit_agreement(&args.room, &tls, &agreement)
            .await
            .map_err(party_error)?;
        if r.already_registered {
            println!(
                "agreement {} version {} was already registered (fingerprint {})",
                r.agreement_id, r.version, r.fingerprint
            );
        } else {
            println!(
                "agreement {} version {} registered (fingerprint {})",
                r.agreement_id, r.version, r.fingerprint
            );
        }
        if !r.superseded.is_empty() {
            println!(
                "it supersedes {}: that version's data was deleted and it can never be used again",
                r.superseded
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Signs a revocation statement and sends it; checks the room's signed receipt.
pub fn revoke(args: RevokeArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("could not read {}", args.file.display()))?;
    // A revocation must work for an agreement that is still valid; verify it as of now.
    let agreement = accord_agreement::verify(&text, chrono::Utc::now()).map_err(|e| {
        anyhow!(
            "{} cannot be revoked as it is not a valid agreement in force:\n{e}",
            args.file.display()
        )
    })?;
    let key = load_key(&args.key)?;
    let revocation = Revocation::sign(
        &agreement,
        &args.party,
        &args.reason,
        chrono::Utc::now(),
        &key,
    )?;
    let tls = args.tls.load()?;
    runtime()?.block_on(async move {
        // Authenticate first: it proves the key and tells us the room's key to check the receipt.
        let fp = agreement.fingerprint().to_string();
        let mut conn = accord_party::Connection::open_checked(
            &args.room,
            &tls,
            &fp,
            accord_party::Principal::Party(&args.party),
            &key,
            Some(&accord_party::RoomIdentity::of(agreement.manifest())),
        )
        .await
        .map_err(party_error)?;
        let r = conn.revoke(&revocation).await.map_err(party_error)?;
        println!(
            "agreement {} (fingerprint {}) revoked by {}",
            r.agreement_id, r.fingerprint, args.party
        );
        println!("the room stopped its queries and deleted its data");
        println!(
            "signed receipt (verified, room key {}): revoked_unix_ms={} signature={}",
            conn.room_key(),
            r.revoked_unix_ms,
            hex_encode(&r.signature)
        );
        // The party's own record, so its customers' receipts can say the agreement was
        // revoked (only when this party has state for it; nothing is created).
        let root = args
            .state
            .clone()
            .unwrap_or_else(accord_party::state::default_root);
        let dir = root
            .join(agreement.id())
            .join(agreement.fingerprint().to_string());
        if dir.is_dir() {
            accord_party::state::State::open(&root, agreement.id(), agreement.fingerprint())
                .and_then(|s| {
                    s.log_event(&accord_party::rights::Event::Revoked {
                        at: chrono::Utc::now(),
                    })
                })
                .map_err(party_error)?;
            println!("recorded in {} for customers' receipts", dir.display());
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
