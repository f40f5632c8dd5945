//! `accord agreement init | sign | verify | show | submit | revoke` (DESIGN §9). `submit`
//! and `revoke` talk to the room (`agreement_room.rs`).
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use accord_agreement::{
    IdentifierKind, Manifest, ManifestError, PublicKey, SecretKey, SummaryFormat,
};
use anyhow::Context as _;
use chrono::Utc;

/// The `accord agreement` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AgreementCommand {
    /// Print a commented agreement template to fill in (redirect it to a file).
    Init(InitArgs),
    /// Add a party's signature to the agreement file, in place.
    Sign(SignArgs),
    /// Check that an agreement is valid, in force and signed by every party.
    Verify {
        /// The agreement file.
        file: PathBuf,
    },
    /// Summarize an agreement in plain language for legal review.
    Show {
        /// The agreement file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
        format: ShowFormat,
    },
    /// Register a fully signed agreement with a room.
    Submit(crate::agreement_room::SubmitArgs),
    /// Revoke an agreement at the room: queries stop and its data is deleted.
    Revoke(crate::agreement_room::RevokeArgs),
}

/// Arguments of `accord agreement init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The agreement's id, e.g. drinks-snacks-2027q1.
    #[arg(long)]
    pub id: String,
    /// The identifier both parties match on.
    #[arg(long, value_enum)]
    pub identifier: Identifier,
    /// A party as NAME=PUBKEY (the line `accord keygen` printed); give it once per party.
    #[arg(long = "party", value_name = "NAME=PUBKEY", required = true, value_parser = parse_party)]
    pub parties: Vec<(String, PublicKey)>,
    /// ISO 3166 alpha-2 country of national phone numbers (required with --identifier phone);
    /// one of the regions of the numbering-plan table in docs/PROTOCOL.md.
    #[arg(long)]
    pub default_region: Option<String>,
    /// The room's public key: the line `accord room key --data-dir DIR` printed on the room's
    /// machine (without it the template holds a placeholder to replace).
    #[arg(long, value_name = "PUBKEY", requires = "room_operator")]
    pub room_key: Option<PublicKey>,
    /// Who operates the room (a company or person), as legal should read it.
    #[arg(long, value_name = "TEXT", requires = "room_key")]
    pub room_operator: Option<String>,
}

/// Arguments of `accord agreement sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The agreement file (rewritten atomically with the signature added).
    pub file: PathBuf,
    /// The party signing.
    #[arg(
        long,
        required_unless_present = "rotated_from",
        conflicts_with = "rotated_from"
    )]
    pub party: Option<String>,
    /// The party's secret key file (from `accord keygen`).
    #[arg(
        long,
        required_unless_present = "rotated_from",
        conflicts_with = "rotated_from"
    )]
    pub key: Option<PathBuf>,
    /// Key rotation: sign with a party key of the version in force that this version no
    /// longer names (the old key authorizes the new one; see docs/AGREEMENTS.md).
    #[arg(long, value_name = "OLD_KEYFILE")]
    pub rotated_from: Option<PathBuf>,
}

/// `--identifier` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Identifier {
    /// E-mail addresses.
    Email,
    /// Phone numbers.
    Phone,
    /// A shared customer number.
    #[value(name = "customer_id")]
    CustomerId,
}

impl From<Identifier> for IdentifierKind {
    fn from(i: Identifier) -> Self {
        match i {
            Identifier::Email => IdentifierKind::Email,
            Identifier::Phone => IdentifierKind::Phone,
            Identifier::CustomerId => IdentifierKind::CustomerId,
        }
    }
}

/// `--format` values of `show`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ShowFormat {
    /// Plain text.
    Text,
    /// Markdown.
    Markdown,
}

/// Runs an `accord agreement` subcommand.
pub fn run(cmd: AgreementCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AgreementCommand::Init(args) => init(args),
        AgreementCommand::Sign(args) => sign(args),
        AgreementCommand::Verify { file } => verify(&file),
        AgreementCommand::Show { file, format } => show(&file, format),
        AgreementCommand::Submit(args) => crate::agreement_room::submit(args),
        AgreementCommand::Revoke(args) => crate::agreement_room::revoke(args),
    }
}

fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("could not read the agreement {}", file.display()))
}

fn report(file: &Path, err: &ManifestError) -> ExitCode {
    eprintln!("{}: {} problem(s):", file.display(), err.problems.len());
    for p in &err.problems {
        eprintln!("  {p}");
    }
    ExitCode::from(1)
}

/// `--party NAME=PUBKEY`, checked while the command line is parsed (a usage error, exit 2).
fn parse_party(spec: &str) -> Result<(String, PublicKey), String> {
    let Some((name, key)) = spec.split_once('=') else {
        return Err("must be NAME=PUBKEY, e.g. --party drinks=ed25519:…".into());
    };
    let key: PublicKey = key
        .parse()
        .map_err(|e| format!("the public key of {name} is not valid: {e}"))?;
    Ok((name.trim().to_owned(), key))
}

fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let parties = args.parties;
    let room = match (args.room_key, args.room_operator) {
        (Some(public_key), Some(operator)) => Some(accord_agreement::RoomSection {
            operator,
            public_key,
        }),
        _ => None,
    };
    let text = accord_agreement::template_with_region(
        &args.id,
        args.identifier.into(),
        args.default_region.as_deref(),
        &parties,
        room.as_ref(),
        Utc::now(),
    );
    // The template must be a valid manifest (but for the room's placeholders when no room
    // was given); report what the arguments got wrong.
    if let Err(err) = Manifest::parse(&text) {
        let problems: Vec<_> = err
            .problems
            .iter()
            .filter(|p| room.is_some() || !p.key.starts_with("room"))
            .collect();
        if !problems.is_empty() {
            eprintln!("the arguments do not make a valid agreement:");
            for p in problems {
                eprintln!("  {}: {} (fix: {})", p.key, p.message, p.fix);
            }
            return Ok(ExitCode::from(1));
        }
    }
    if room.is_none() {
        eprintln!(
            "note: no --room-key/--room-operator given: replace the placeholders under [room] with the room \
             operator's name and the output of `accord room key --data-dir DIR` on the room's machine before signing"
        );
    }
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let text = read(&args.file)?;
    let (key_path, party) = match (&args.rotated_from, &args.key, &args.party) {
        (Some(old), _, _) => (old.clone(), None),
        (None, Some(key), Some(party)) => (key.clone(), Some(party.clone())),
        _ => anyhow::bail!("give --party NAME --key KEYFILE, or --rotated-from OLD_KEYFILE"),
    };
    let secret = accord_fs::read_secret(&key_path)
        .with_context(|| format!("could not read the key file {}", key_path.display()))?;
    let key = SecretKey::from_key_file(&secret)
        .with_context(|| format!("{} is not a usable key file", key_path.display()))?;
    let result = match &party {
        Some(party) => accord_agreement::sign_text(&text, party, &key),
        None => accord_agreement::sign_rotation_text(&text, &key),
    };
    let signed = match result {
        Ok(s) => s,
        Err(accord_agreement::AgreementError::Invalid(err)) => {
            eprintln!("refusing to sign an invalid agreement");
            return Ok(report(&args.file, &err));
        }
        Err(e) => return Err(e).context(format!("could not sign {}", args.file.display())),
    };
    accord_fs::write_atomic(&args.file, signed.as_bytes())
        .with_context(|| format!("could not write {}", args.file.display()))?;
    let fingerprint = Manifest::parse(&signed)
        .map(|m| m.fingerprint().to_string())
        .unwrap_or_default();
    let who = match &party {
        Some(p) => p.clone(),
        None => format!("the previous version's key {}", key.public_key()),
    };
    println!(
        "signed {} as {who} (fingerprint {fingerprint})",
        args.file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(file: &Path) -> anyhow::Result<ExitCode> {
    let text = read(file)?;
    match accord_agreement::verify(&text, Utc::now()) {
        Ok(v) => {
            println!(
                "{}: valid, in force and signed by every party; agreement {} version {}, fingerprint {}",
                file.display(),
                v.id(),
                v.manifest().version,
                v.fingerprint()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(report(file, &err)),
    }
}

fn show(file: &Path, format: ShowFormat) -> anyhow::Result<ExitCode> {
    let text = read(file)?;
    match Manifest::parse(&text) {
        Ok(m) => {
            let format = match format {
                ShowFormat::Text => SummaryFormat::Text,
                ShowFormat::Markdown => SummaryFormat::Markdown,
            };
            print!("{}", accord_agreement::summary(&m, Utc::now(), format));
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(report(file, &err)),
    }
}
