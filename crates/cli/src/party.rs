//! `accord party init | upload | sync | erase | status | forget | receipt | renew-consent`: the
//! partner data team's side of the PSI, and of its customers' rights.

use std::path::PathBuf;
use std::process::ExitCode;

use accord_party::input::InputOptions;
use accord_party::rights::AgreementErasure;
use accord_party::{EraseSource, PartyContext, UploadOptions};
use anyhow::Result;

use crate::common::{TlsArgs, load_agreement, load_key, party_error, runtime};

#[derive(Debug, clap::Args)]
pub struct PartyArgs {
    /// The room's URL, e.g. http://127.0.0.1:7700.
    #[arg(long)]
    pub room: String,
    /// The signed agreement file.
    #[arg(long)]
    pub agreement: PathBuf,
    /// This party's name in the agreement.
    #[arg(long)]
    pub party: String,
    /// This party's Ed25519 key file.
    #[arg(long)]
    pub key: PathBuf,
    /// Where this party's PSI secret and handle key live (default: $ACCORD_STATE, else ~/.local/share/accord/party).
    #[arg(long)]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum PartyCommand {
    /// Read the customer file, apply consent and the agreement's rules, and upload blinded points.
    Upload {
        #[command(flatten)]
        common: PartyArgs,
        /// The customer file: CSV (with a header line) or Parquet.
        #[arg(long)]
        input: PathBuf,
        /// The identifier column (default: the agreement's identifier kind, e.g. `email`).
        #[arg(long)]
        id_column: Option<String>,
        /// Skip malformed rows (counted in the report) instead of stopping at the first.
        #[arg(long)]
        skip_bad_rows: bool,
        /// Rows per batch (1 to 8192).
        #[arg(long, default_value_t = accord_party::protocol::DEFAULT_BATCH_ROWS)]
        batch_rows: usize,
        /// Keep blinding the partner's work until both sides' tokens are complete.
        #[arg(long)]
        wait: bool,
        /// Run as one of several workers of this party, named NAME in the room's log: upload
        /// only the batches the room leases to this worker (each worker needs the party's key
        /// and a copy of its state directory made with `party backup`/`party restore`; see
        /// docs/PROTOCOL.md, "Workers").
        #[arg(long, value_name = "NAME")]
        worker: Option<String>,
    },
    /// Create this party's state and secrets for an agreement without uploading, so that
    /// copies of the state can be given to workers (`upload --worker`).
    Init {
        /// The signed agreement file.
        #[arg(long)]
        agreement: PathBuf,
        /// This party's name in the agreement.
        #[arg(long)]
        party: String,
        /// This party's Ed25519 key file.
        #[arg(long)]
        key: PathBuf,
        /// Where this party's state lives (default: $ACCORD_STATE, else ~/.local/share/accord/party).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Blind the partner's batches waiting at the room.
    Sync {
        #[command(flatten)]
        common: PartyArgs,
        /// Keep going until both sides' tokens are complete.
        #[arg(long)]
        wait: bool,
    },
    /// Forget customers: the identifiers in a file (one per line), or the customers whose
    /// consent a customer file no longer records (consent withdrawn). Every one of them is
    /// also held back from this party's later uploads.
    Erase {
        /// The room's URL, e.g. http://127.0.0.1:7700.
        #[arg(long)]
        room: String,
        /// The signed agreement file.
        #[arg(
            long,
            required_unless_present = "all_agreements",
            conflicts_with = "all_agreements"
        )]
        agreement: Option<PathBuf>,
        /// Erase from every agreement this state directory took part in (their signed
        /// manifests are kept in the state), with one summary.
        #[arg(long)]
        all_agreements: bool,
        /// This party's name in the agreement.
        #[arg(long)]
        party: String,
        /// This party's Ed25519 key file.
        #[arg(long)]
        key: PathBuf,
        /// Where this party's state lives (default: $ACCORD_STATE, else ~/.local/share/accord/party).
        #[arg(long)]
        state: Option<PathBuf>,
        #[command(flatten)]
        tls: TlsArgs,
        /// File of identifiers to erase, one per line.
        #[arg(long, required_unless_present = "input", conflicts_with = "input")]
        ids: Option<PathBuf>,
        /// The customer file, as for upload (CSV or Parquet): every customer whose consent
        /// column is no longer `true` is erased.
        #[arg(long)]
        input: Option<PathBuf>,
        /// The identifier column of --input (default: the agreement's identifier kind).
        #[arg(long, requires = "input")]
        id_column: Option<String>,
    },
    /// A transparency receipt for one customer: every agreement their data went to, what was
    /// shared, how they were protected, and whether it was erased. Reads only this party's
    /// state; never contacts the room or the partner.
    Receipt {
        /// The customer's identifier (email, phone number or customer id).
        #[arg(long)]
        id: String,
        /// This party's name.
        #[arg(long)]
        party: String,
        /// Where this party's state lives (default: $ACCORD_STATE, else ~/.local/share/accord/party).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Output: text for a person, json for systems, html for an email.
        #[arg(long, value_enum, default_value_t = ReceiptFormat::Text)]
        format: ReceiptFormat,
    },
    /// Record that an erased customer gave their consent again, so later uploads include
    /// them when the customer file says they consent.
    RenewConsent {
        /// The customer's identifier.
        #[arg(long)]
        id: String,
        /// An agreement file naming the identifier kind (email, phone, customer_id).
        #[arg(long)]
        agreement: PathBuf,
        /// Where this party's state lives (default: $ACCORD_STATE, else ~/.local/share/accord/party).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Show this party's progress at the room (never match counts).
    Status {
        #[command(flatten)]
        common: PartyArgs,
    },
    /// Delete this party's local secrets and records for an agreement version that is over
    /// (revoked, superseded or expired). Refused while it is in force, unless --force.
    Forget {
        /// The agreement file (it may have expired).
        #[arg(long)]
        agreement: PathBuf,
        /// This party's name in the agreement.
        #[arg(long)]
        party: String,
        /// The state directory the party commands used (default: $ACCORD_STATE, else ~/.local/share/accord/party).
        #[arg(long)]
        state: Option<PathBuf>,
        /// The room's URL, to confirm the agreement was revoked (not needed once it expired).
        #[arg(long, requires = "key")]
        room: Option<String>,
        /// This party's Ed25519 key file (with --room).
        #[arg(long, requires = "room")]
        key: Option<PathBuf>,
        /// Forget even though the agreement may still be in force (erasure will no longer be possible).
        #[arg(long)]
        force: bool,
    },
    /// Take a consistent backup of this party's state directory (the only keys that can
    /// erase a customer from the room again): waits for running party commands to finish.
    /// Store the result encrypted: it holds secrets.
    Backup {
        /// The state directory (default: $ACCORD_STATE, else ~/.local/share/accord/party).
        #[arg(long)]
        state: Option<PathBuf>,
        /// The new backup directory (must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
    /// Check a state backup (every file's checksum) and restore it into a new state
    /// directory.
    Restore {
        /// The backup directory (written by `accord party backup`).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The state directory to create (must not exist, or be empty).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Only check the backup; restore nothing.
        #[arg(long)]
        check_only: bool,
    },
}

/// The state directory a command writes, if any (held for the command's whole run, so a
/// backup never sees it in the middle of one).
fn state_of(cmd: &PartyCommand) -> Option<PathBuf> {
    let root =
        |s: &Option<PathBuf>| Some(s.clone().unwrap_or_else(accord_party::state::default_root));
    match cmd {
        PartyCommand::Upload { common, .. }
        | PartyCommand::Sync { common, .. }
        | PartyCommand::Status { common } => root(&common.state),
        PartyCommand::Erase { state, .. }
        | PartyCommand::RenewConsent { state, .. }
        | PartyCommand::Forget { state, .. }
        | PartyCommand::Receipt { state, .. }
        | PartyCommand::Init { state, .. } => root(state),
        PartyCommand::Backup { .. } | PartyCommand::Restore { .. } => None,
    }
}

fn backup_command(cmd: PartyCommand) -> Result<ExitCode> {
    let (m, what) = match cmd {
        PartyCommand::Backup { state, to } => {
            let root = state.unwrap_or_else(accord_party::state::default_root);
            let m = accord_party::state::backup(&root, &to).map_err(party_error)?;
            let what = format!(
                "Backed up the party state {} to {}. It holds this party's secrets: store it encrypted, \
                 like the key file.",
                root.display(),
                to.display()
            );
            (m, what)
        }
        PartyCommand::Restore {
            from,
            state,
            check_only,
        } => {
            let root = state.unwrap_or_else(accord_party::state::default_root);
            let m = accord_party::state::restore(&from, &root, check_only).map_err(party_error)?;
            let what = if check_only {
                format!(
                    "{} is a whole party state backup (every checksum verified).",
                    from.display()
                )
            } else {
                format!(
                    "Restored the party state backup {} into {}.",
                    from.display(),
                    root.display()
                )
            };
            (m, what)
        }
        _ => unreachable!("only backup and restore come here"),
    };
    println!(
        "{what} {} files, {}.",
        m.files.len(),
        crate::common::human_bytes(m.bytes())
    );
    Ok(ExitCode::SUCCESS)
}

/// Formats of `party receipt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReceiptFormat {
    /// Plain text.
    Text,
    /// JSON.
    Json,
    /// One self-contained HTML page.
    Html,
}

fn context(args: &PartyArgs) -> Result<PartyContext> {
    let agreement = load_agreement(&args.agreement)?;
    let key = load_key(&args.key)?;
    let state = args
        .state
        .clone()
        .unwrap_or_else(accord_party::state::default_root);
    let mut ctx =
        PartyContext::new(agreement, &args.party, key, state, &args.room).map_err(party_error)?;
    ctx.tls = args.tls.load()?;
    Ok(ctx)
}

pub fn run(cmd: PartyCommand) -> Result<ExitCode> {
    let _held = match state_of(&cmd) {
        Some(root) => Some(accord_party::state::hold(&root).map_err(party_error)?),
        None => None,
    };
    let rt = runtime()?;
    match cmd {
        c @ (PartyCommand::Backup { .. } | PartyCommand::Restore { .. }) => backup_command(c),
        PartyCommand::Upload {
            common,
            input,
            id_column,
            skip_bad_rows,
            batch_rows,
            wait,
            worker,
        } => {
            let ctx = context(&common)?;
            let options = UploadOptions {
                input: input.clone(),
                read: InputOptions {
                    id_column,
                    skip_bad_rows,
                },
                batch_rows,
                wait,
                worker: worker.clone(),
            };
            let outcome = rt
                .block_on(accord_party::upload(&ctx, &options))
                .map_err(party_error)?;
            println!(
                "{}: upload of {} to agreement {}",
                ctx.party,
                input.display(),
                ctx.agreement.id()
            );
            println!("{}", outcome.report);
            if outcome.held_back_erased > 0 {
                println!(
                    "  held back: erased earlier (no renewed consent recorded) {:>6}",
                    outcome.held_back_erased
                );
            }
            if outcome.already_stored > 0 && outcome.already_stored < outcome.batches {
                println!(
                    "  resumed: the room already had {} of {} batches",
                    outcome.already_stored, outcome.batches
                );
            }
            if outcome.already_stored == outcome.batches {
                println!(
                    "  nothing sent: the room already had this upload ({} rows in {} batches)",
                    outcome.rows, outcome.batches
                );
            } else {
                println!(
                    "  uploaded {} rows in {} batches; raw identifiers never left this machine",
                    outcome.rows, outcome.batches
                );
            }
            if let Some(s) = &outcome.status {
                print_status(s);
            }
            Ok(ExitCode::SUCCESS)
        }
        PartyCommand::Sync { common, wait } => {
            let ctx = context(&common)?;
            let (blinded, status) = rt
                .block_on(accord_party::sync(&ctx, wait))
                .map_err(party_error)?;
            println!(
                "{}: blinded {blinded} batches of {}",
                ctx.party,
                accord_agreement::text::escape(&status.partner, 64)
            );
            print_status(&status);
            Ok(ExitCode::SUCCESS)
        }
        PartyCommand::Erase {
            room,
            agreement,
            all_agreements,
            party,
            key,
            state,
            tls,
            ids,
            input,
            id_column,
        } => {
            let root = state.unwrap_or_else(accord_party::state::default_root);
            let source = match (&ids, &input) {
                (Some(ids), _) => EraseSource::Ids(ids.clone()),
                (None, Some(input)) => EraseSource::WithdrawnConsent {
                    input: input.clone(),
                    read: InputOptions {
                        id_column,
                        skip_bad_rows: false,
                    },
                },
                (None, None) => anyhow::bail!("give --ids FILE or --input FILE"),
            };
            let what = ids
                .as_ref()
                .or(input.as_ref())
                .map(|p| p.display().to_string());
            let what = what.unwrap_or_default();
            let tls = tls.load()?;
            let make = |text: &str| -> Result<PartyContext> {
                let verified = accord_agreement::verify(text, chrono::Utc::now())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut ctx =
                    PartyContext::new(verified, &party, load_key(&key)?, root.clone(), &room)
                        .map_err(party_error)?;
                ctx.tls = tls.clone();
                Ok(ctx)
            };
            if !all_agreements {
                let Some(agreement) = agreement else {
                    anyhow::bail!("give --agreement FILE or --all-agreements");
                };
                let text = std::fs::read_to_string(&agreement).map_err(|e| {
                    anyhow::anyhow!("could not read the agreement {}: {e}", agreement.display())
                })?;
                let ctx = make(&text)?;
                let o = rt
                    .block_on(accord_party::erase_from(&ctx, &source))
                    .map_err(party_error)?;
                // A consent file lists customers who never consented (never uploaded): only
                // a list of identifiers must be fully accounted for.
                return print_erasure(&ctx, &what, &o, ids.is_some());
            }
            let outcomes = rt
                .block_on(accord_party::rights::erase_everywhere(
                    &root,
                    &party,
                    || {
                        load_key(&key)
                            .map_err(|e| accord_party::PartyError::Invalid(format!("{e:#}")))
                    },
                    &room,
                    &tls,
                    &source,
                ))
                .map_err(party_error)?;
            println!(
                "{party}: erasure from every agreement recorded in {}",
                root.display()
            );
            let mut failures = 0;
            for (label, outcome) in &outcomes {
                match outcome {
                    AgreementErasure::Erased(o) => println!(
                        "  {label}: erased {} now, {} before, {} never uploaded under it, {} not valid",
                        o.erased,
                        o.already_erased,
                        o.unaccounted.len(),
                        o.invalid
                    ),
                    AgreementErasure::Over(why, _) => println!(
                        "  {label}: not in force ({}), the room holds nothing to erase",
                        accord_agreement::text::escape(why, 300)
                    ),
                    AgreementErasure::Failed(e) => {
                        failures += 1;
                        println!(
                            "  {label}: FAILED: {}",
                            accord_party::display::room_message(&e.to_string())
                        );
                    }
                }
            }
            if outcomes.is_empty() {
                println!("  no agreement of {party} is recorded in this state directory");
            }
            println!("  every valid identifier is held back from this party's later uploads");
            if failures > 0 {
                anyhow::bail!(
                    "{failures} agreements could not be erased (see above); run the command again when the room is reachable"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PartyCommand::Receipt {
            id,
            party,
            state,
            format,
        } => {
            let root = state.unwrap_or_else(accord_party::state::default_root);
            let r = accord_party::rights::receipt(&root, &party, &id, chrono::Utc::now())
                .map_err(party_error)?;
            match format {
                ReceiptFormat::Text => print!("{}", accord_party::rights::render_text(&r)),
                ReceiptFormat::Json => {
                    println!(
                        "{}",
                        accord_party::rights::render_json(&r).map_err(party_error)?
                    )
                }
                ReceiptFormat::Html => print!("{}", accord_party::rights::render_html(&r)),
            }
            Ok(ExitCode::SUCCESS)
        }
        PartyCommand::RenewConsent {
            id,
            agreement,
            state,
        } => {
            let root = state.unwrap_or_else(accord_party::state::default_root);
            let text = std::fs::read_to_string(&agreement).map_err(|e| {
                anyhow::anyhow!("could not read the agreement {}: {e}", agreement.display())
            })?;
            let manifest = accord_agreement::Manifest::parse(&text)
                .map_err(|e| anyhow::anyhow!("{} cannot be used:\n{e}", agreement.display()))?;
            let renewed =
                accord_party::rights::renew_consent(&root, &manifest, &id).map_err(party_error)?;
            if renewed {
                println!(
                    "recorded: this customer consented again; uploads from now on include them when the customer file says they consent"
                );
            } else {
                println!("nothing to renew: this customer is not held back by an erasure");
            }
            Ok(ExitCode::SUCCESS)
        }
        PartyCommand::Forget {
            agreement,
            party,
            state,
            room,
            key,
            force,
        } => {
            let text = std::fs::read_to_string(&agreement).map_err(|e| {
                anyhow::anyhow!("could not read the agreement {}: {e}", agreement.display())
            })?;
            let manifest = accord_agreement::Manifest::parse(&text)
                .map_err(|e| anyhow::anyhow!("{} cannot be used:\n{e}", agreement.display()))?;
            let key = key.as_deref().map(load_key).transpose()?;
            let root = state.unwrap_or_else(accord_party::state::default_root);
            let check = match (&room, &key) {
                (Some(url), Some(key)) => Some(accord_party::forget::RoomCheck { url, key }),
                _ => None,
            };
            let o = rt
                .block_on(accord_party::forget::forget(
                    &root,
                    &manifest,
                    &party,
                    check,
                    force,
                    chrono::Utc::now(),
                ))
                .map_err(party_error)?;
            println!(
                "{party}: forgot agreement {} version {} ({})",
                manifest.id,
                manifest.version,
                manifest.fingerprint()
            );
            println!("  allowed because {}", o.why);
            println!("  deleted {}:", o.dir.display());
            for (name, len) in &o.deleted {
                println!("    {name:<24}{len:>12} bytes");
            }
            println!(
                "  customers of this agreement version can no longer be erased or re-identified from this machine"
            );
            Ok(ExitCode::SUCCESS)
        }
        PartyCommand::Init {
            agreement,
            party,
            key,
            state,
        } => {
            let root = state.unwrap_or_else(accord_party::state::default_root);
            let ctx = PartyContext::new(
                load_agreement(&agreement)?,
                &party,
                load_key(&key)?,
                root.clone(),
                "",
            )
            .map_err(party_error)?;
            let dir = ctx.init_state().map_err(party_error)?;
            println!(
                "The state of {party} for agreement {} is ready in {} (its secrets are readable by you only).\n\
                 To upload from several workers, copy it to each over your own secure channel:\n  \
                 accord party backup --state {} --to BACKUP\n  \
                 accord party restore --from BACKUP --state WORKER_STATE\n\
                 then run `accord party upload --worker NAME --state WORKER_STATE ...` on each worker, with this \
                 party's key file. Neither the secrets nor the key ever go to the room.",
                ctx.agreement.id(),
                dir.display(),
                root.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PartyCommand::Status { common } => {
            let ctx = context(&common)?;
            let status = rt
                .block_on(accord_party::status(&ctx))
                .map_err(party_error)?;
            print_status(&status);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_erasure(
    ctx: &PartyContext,
    what: &str,
    o: &accord_party::EraseOutcome,
    strict: bool,
) -> Result<ExitCode> {
    println!(
        "{}: erasure for agreement {}",
        ctx.party,
        ctx.agreement.id()
    );
    println!("  identifiers in {:<28}{:>8}", what, o.requested);
    println!("  not valid identifiers (never uploaded) {:>3}", o.invalid);
    println!(
        "  erased before (this state's log)   {:>8}",
        o.already_erased
    );
    println!("  erased at the room (receipt ok)    {:>8}", o.erased);
    println!(
        "  not in this state's upload record  {:>8}",
        o.unaccounted.len()
    );
    println!("  all of them are held back from this party's later uploads");
    if strict && !o.unaccounted.is_empty() {
        const SHOWN: usize = 50;
        let mut list: Vec<String> = o
            .unaccounted
            .iter()
            .take(SHOWN)
            .map(|(line, id)| format!("  line {line}: {}", accord_agreement::text::escape(id, 200)))
            .collect();
        if o.unaccounted.len() > SHOWN {
            list.push(format!("  … and {} more", o.unaccounted.len() - SHOWN));
        }
        anyhow::bail!(
            "{} identifiers of {what} are not in the upload record of this state directory, so this command cannot \
             say whether the room holds them:\n{}\nEither they were never uploaded (no consent, not in the \
             input file), or the upload ran with another --state directory: rerun with that one. The room was \
             not asked about them; everything else above was done.",
            o.unaccounted.len(),
            list.join("\n")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(s: &accord_proto::v1::StatusResponse) {
    // Names in the status come from the room: shown escaped.
    let partner = accord_agreement::text::escape(&s.partner, 64);
    let agreement_id = accord_agreement::text::escape(&s.agreement_id, 128);
    let state = if s.state == accord_proto::v1::AgreementState::Sealed as i32 {
        "sealed: analysts may query"
    } else {
        "collecting"
    };
    println!("  agreement {agreement_id} ({state})");
    println!(
        "  this party: {} rows in {} batches uploaded{}, {} batches blinded by {}",
        s.rows_uploaded,
        s.batches_uploaded,
        if s.upload_complete { " (complete)" } else { "" },
        s.batches_tokenized,
        partner
    );
    println!(
        "  {}: upload {}, {} of its batches wait for this party's blinding",
        partner,
        if s.partner_upload_complete {
            "complete"
        } else {
            "not complete"
        },
        s.work_waiting
    );
    for r in &s.refused_batches {
        println!(
            "  batch {} was refused by {}: {}",
            r.batch_number,
            partner,
            accord_party::display::work_refusal(&r.reason)
        );
        println!(
            "    {}",
            accord_party::display::refusal_next_step(&r.reason)
        );
    }
}
