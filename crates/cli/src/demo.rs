//! `accord demo`: a full two-party run on loopback with generated data.
//!
//! A drinks maker and a snack supplier, each with its own messy customer file, sign an
//! agreement, upload through a room started in this process, and an analyst asks a handful of
//! questions — one of which loses small groups to the k threshold and one of which is
//! refused. Every file is left in a directory the demo names, so each step can be repeated
//! with the real commands it prints at the end.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use accord_agreement::{Contribution, ManifestBuilder, PublicKey, RoomSection, SecretKey};
use accord_party::QueryOutcome;
use accord_party::input::InputOptions;
use accord_party::{Connection, PartyContext, Principal, UploadOptions};
use anyhow::{Context, Result, anyhow, bail};
use chrono::{Duration as ChronoDuration, SubsecRound as _, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{party_error, runtime};
use crate::query::{Format, decode, render};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Customers per company (the shared customers are about a third of them).
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// Where to put the generated files (a previous demo there is replaced).
    #[arg(long, default_value = "accord-demo")]
    pub dir: PathBuf,
    /// Seed for the generated data (the same seed gives the same files).
    #[arg(long, default_value_t = 2027)]
    pub seed: u64,
}

const MARKER: &str = ".accord-demo";
const K: u32 = 50;

const TIERS: &[(&str, u32)] = &[
    ("bronze", 50),
    ("silver", 30),
    ("gold", 17),
    ("platinum", 3),
];
const REGIONS: &[(&str, u32)] = &[
    ("north", 30),
    ("south", 30),
    ("east", 20),
    ("west", 19),
    ("islands", 1),
];
const SNACKS: &[(&str, u32)] = &[
    ("crisps", 40),
    ("nuts", 25),
    ("pretzels", 20),
    ("popcorn", 14),
    ("seaweed", 1),
];

fn pick<'a>(rng: &mut StdRng, table: &'a [(&'a str, u32)]) -> &'a str {
    let total: u32 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (v, w) in table {
        if x < *w {
            return v;
        }
        x -= w;
    }
    table[0].0
}

/// Makes an e-mail look like real data entry: random case, stray spaces.
fn messy(rng: &mut StdRng, email: &str) -> String {
    let mut s: String = email
        .chars()
        .map(|c| {
            if rng.random_bool(0.15) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    if rng.random_bool(0.05) {
        s = format!("  {s}");
    }
    if rng.random_bool(0.05) {
        s.push(' ');
    }
    s
}

pub(crate) struct Generated {
    pub(crate) drinks_rows: usize,
    pub(crate) snacks_rows: usize,
}

/// Writes the two companies' customer files. Customers 0..n are drinks', n·2/3..n·5/3 are
/// snacks': about a third overlap.
pub(crate) fn generate(dir: &Path, n: usize, seed: u64) -> Result<Generated> {
    let mut rng = StdRng::seed_from_u64(seed);
    let email = |i: usize| {
        format!(
            "customer{i:07}@example.{}",
            ["com", "net", "org", "is"][i % 4]
        )
    };
    let mut drinks =
        String::from("email,consent_partner_marketing,loyalty_tier,region,monthly_spend\n");
    let mut drinks_rows = 0;
    for i in 0..n {
        let id = if rng.random_bool(0.004) {
            String::new()
        } else if rng.random_bool(0.002) {
            format!("customer{i}.example.com")
        } else {
            messy(&mut rng, &email(i))
        };
        let consent = if rng.random_bool(0.9) {
            "true"
        } else {
            "false"
        };
        let spend = if rng.random_bool(0.01) {
            750.0
        } else {
            (rng.random_range(5.0..300.0f64) * 100.0).round() / 100.0
        };
        writeln!(
            drinks,
            "{id},{consent},{},{},{spend}",
            pick(&mut rng, TIERS),
            pick(&mut rng, REGIONS)
        )?;
        drinks_rows += 1;
        if rng.random_bool(0.01) {
            // The same customer entered twice (different case): the first row wins.
            writeln!(drinks, "{},true,gold,north,99", email(i).to_uppercase())?;
            drinks_rows += 1;
        }
    }
    let mut snacks =
        String::from("email,consent_snacks_partner,favourite_snack,store_format,weekly_spend\n");
    let mut snacks_rows = 0;
    let start = n * 2 / 3;
    for i in start..start + n {
        let id = if rng.random_bool(0.004) {
            String::new()
        } else {
            messy(&mut rng, &email(i))
        };
        let consent = if rng.random_bool(0.85) { "TRUE" } else { "no" };
        let spend = (rng.random_range(1.0..60.0f64) * 100.0).round() / 100.0;
        let format = if rng.random_bool(0.6) {
            "supermarket"
        } else {
            "convenience"
        };
        writeln!(
            snacks,
            "{id},{consent},{},{format},{spend}",
            pick(&mut rng, SNACKS)
        )?;
        snacks_rows += 1;
    }
    accord_fs::write_atomic(&dir.join("drinks-customers.csv"), drinks.as_bytes())?;
    accord_fs::write_atomic(&dir.join("snacks-customers.csv"), snacks.as_bytes())?;
    Ok(Generated {
        drinks_rows,
        snacks_rows,
    })
}

fn manifest(
    id: &str,
    drinks: PublicKey,
    snacks: PublicKey,
    analyst: PublicKey,
    room: PublicKey,
    rows: usize,
) -> String {
    let now = Utc::now().trunc_subsecs(0);
    let cap = rows as u64 * 2 + 1000;
    let room = RoomSection {
        operator: "Demo room operator (neutral host)".into(),
        public_key: room,
    };
    ManifestBuilder::new(
        id,
        "Plan joint promotions for customers of both the drinks maker and the snack supplier",
        now - ChronoDuration::hours(1),
        now + ChronoDuration::days(90),
        room,
    )
    .comment("Generated by `accord demo`. Review it with: accord agreement show <this file>")
    .comment("[room] is the room that serves the agreement: `accord room key --data-dir room-data`")
    .comment("printed its key. Differential privacy: noisy answers, a budget per party.")
    .notes("Demo agreement with generated data.")
    .min_group_size(K)
    .party(
        "drinks",
        drinks,
        cap,
        "consent_partner_marketing",
        [
            Contribution::dimension("loyalty_tier"),
            Contribution::dimension("region"),
            Contribution::metric("monthly_spend", 0.0, 500.0),
        ],
    )
    .party(
        "snacks",
        snacks,
        cap,
        "consent_snacks_partner",
        [
            Contribution::dimension("favourite_snack"),
            Contribution::dimension("store_format"),
            Contribution::metric("weekly_spend", 0.0, 100.0),
        ],
    )
    .analyst("ana@drinks.example", "drinks", analyst)
    .differential_privacy(0.5, 10.0, 1e-6)
    .to_toml()
}

/// Empties `dir` for a new run: only if a previous run (its `marker` file) made it, or it is
/// empty; `what` names the command in messages.
pub(crate) fn prepare_dir(dir: &Path, marker: &str, what: &str) -> Result<()> {
    if dir.exists() {
        if !dir.join(marker).exists() {
            let empty = std::fs::read_dir(dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !empty {
                bail!(
                    "{} exists and was not made by `{what}`: choose another --dir",
                    dir.display()
                );
            }
        }
        std::fs::remove_dir_all(dir).with_context(|| {
            format!(
                "could not clear the previous run of `{what}` in {}",
                dir.display()
            )
        })?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    std::fs::write(
        dir.join(marker),
        format!("made by {what}; safe to delete\n"),
    )?;
    Ok(())
}

/// The keys and the signed agreement of a generated run (`demo`, `bench e2e`).
pub(crate) struct Signed {
    pub(crate) drinks: SecretKey,
    pub(crate) snacks: SecretKey,
    pub(crate) analyst: SecretKey,
    pub(crate) agreement: accord_agreement::VerifiedAgreement,
    /// `agreement.toml` in the run's directory.
    pub(crate) agreement_path: PathBuf,
}

/// Writes the parties' and the analyst's keys, creates the room's key in `dir/room-data`
/// (the agreement names the room that serves it), and writes the agreement `id` signed by
/// both parties.
pub(crate) fn keys_and_agreement(dir: &Path, id: &str, rows: usize) -> Result<Signed> {
    let drinks = keygen(dir, "drinks")?;
    let snacks = keygen(dir, "snacks")?;
    let analyst = keygen(dir, "analyst")?;
    let room_key = accord_room::identity::load_or_create(&dir.join("room-data"))?;
    let text = manifest(
        id,
        drinks.public_key(),
        snacks.public_key(),
        analyst.public_key(),
        room_key.public_key(),
        rows,
    );
    let text = accord_agreement::sign_text(&text, "drinks", &drinks)?;
    let text = accord_agreement::sign_text(&text, "snacks", &snacks)?;
    let agreement_path = dir.join("agreement.toml");
    accord_fs::write_atomic(&agreement_path, text.as_bytes())?;
    let agreement = accord_agreement::verify(&text, Utc::now())
        .map_err(|e| anyhow!("the generated agreement does not verify:\n{e}"))?;
    Ok(Signed {
        drinks,
        snacks,
        analyst,
        agreement,
        agreement_path,
    })
}

fn keygen(dir: &Path, name: &str) -> Result<SecretKey> {
    let key = SecretKey::generate()?;
    accord_fs::write_new_secret(
        &dir.join(format!("{name}.key")),
        key.to_key_file().as_bytes(),
    )?;
    Ok(key)
}

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    if args.rows < 1000 {
        bail!("--rows must be at least 1000 so that groups can reach k = {K}");
    }
    let started = Instant::now();
    let dir = args.dir.clone();
    prepare_dir(&dir, MARKER, "accord demo")?;
    let dir = dir.canonicalize()?;

    step(
        1,
        "Two companies' customer files (generated, deliberately messy)",
    );
    let g = generate(&dir, args.rows, args.seed)?;
    println!(
        "  drinks-customers.csv  {:>8} rows  (mixed case, stray spaces, duplicates, empty and invalid e-mails, 10% without consent)",
        g.drinks_rows
    );
    println!(
        "  snacks-customers.csv  {:>8} rows  (about a third of them are also drinks customers)",
        g.snacks_rows
    );

    step(2, "Keys and a signed sharing agreement");
    let Signed {
        drinks,
        snacks,
        analyst,
        agreement,
        ..
    } = keys_and_agreement(&dir, "drinks-snacks-demo", args.rows)?;
    println!(
        "  agreement.toml signed by drinks and snacks; fingerprint {}",
        agreement.fingerprint()
    );
    println!(
        "  k = {K}, differential privacy (epsilon 0.5 per query, budget 10 per party), analyst ana@drinks.example"
    );

    runtime()?.block_on(async move {
        step(3, "A room on loopback");
        let running = accord_room::start(accord_room::ServeConfig {
            data_dir: dir.join("room-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            flight_sql: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            tls: None,
            insecure_plaintext_network: false,
            tls_proxy_cert: None,
            expiry_check: Duration::from_secs(5),
            limits: accord_room::Limits::default(),
            // Loopback only: open registration is the rule there.
            registration_allow: None,
            open_registration: false,
            engine: Default::default(),
        })
        .await?;
        let url = format!("http://{}", running.grpc_addr);
        println!(
            "  gRPC {url}   Flight SQL grpc://{}",
            running
                .flight_sql_addr
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        let result = drive(&dir, &url, &agreement, drinks, snacks, analyst).await;
        running.shutdown().await;
        result?;
        println!(
            "\nDemo finished in {:.1} s. Files are in {}",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}

async fn drive(
    dir: &Path,
    url: &str,
    agreement: &accord_agreement::VerifiedAgreement,
    drinks: SecretKey,
    snacks: SecretKey,
    analyst: SecretKey,
) -> Result<()> {
    let submitted =
        accord_party::submit_agreement(url, &accord_party::ClientTls::default(), agreement)
            .await
            .map_err(party_error)
            .context("the room refused the agreement")?;
    println!("  agreement {} registered", submitted.agreement_id);

    step(
        4,
        "Both parties run the private set intersection at the same time",
    );
    println!(
        "  each hashes its e-mails to ristretto255 points and blinds them with its own secret;"
    );
    println!(
        "  the room relays them so the other party blinds them again: only double-blinded tokens meet."
    );
    let progress = indicatif::MultiProgress::new();
    let mut contexts = Vec::new();
    for (name, key) in [("drinks", drinks), ("snacks", snacks)] {
        let mut ctx = PartyContext::new(
            agreement.clone(),
            name,
            key,
            dir.join(format!("{name}-state")),
            url,
        )
        .map_err(party_error)?;
        ctx.progress = Some(progress.clone());
        contexts.push(ctx);
    }
    let psi_started = Instant::now();
    let options = |name: &str| UploadOptions {
        input: dir.join(format!("{name}-customers.csv")),
        read: InputOptions {
            id_column: None,
            skip_bad_rows: false,
        },
        batch_rows: accord_party::protocol::DEFAULT_BATCH_ROWS,
        wait: true,
        worker: None,
    };
    let (drinks_options, snacks_options) = (options("drinks"), options("snacks"));
    let (a, b) = tokio::join!(
        accord_party::upload(&contexts[0], &drinks_options),
        accord_party::upload(&contexts[1], &snacks_options)
    );
    let (a, b) = (a.map_err(party_error)?, b.map_err(party_error)?);
    let psi_secs = psi_started.elapsed().as_secs_f64();
    for (name, o) in [("drinks", &a), ("snacks", &b)] {
        println!("  {name}:\n{}", o.report);
    }
    println!(
        "  PSI done in {psi_secs:.1} s ({:.0} records/s across both parties); the room sealed the snapshot of matched rows",
        (a.rows + b.rows) as f64 / psi_secs
    );

    step(
        5,
        "An analyst asks questions (only aggregates; groups under k are never shown)",
    );
    let public = analyst.public_key();
    let mut conn = Connection::open(
        url,
        id_of(agreement),
        Principal::AnalystKey(&public),
        &analyst,
    )
    .await
    .map_err(party_error)?;
    let queries = [
        (
            "How many customers do we share?",
            "SELECT COUNT(*) AS shared_customers FROM overlap",
        ),
        (
            "Snack spending by drinks loyalty tier",
            "SELECT drinks_loyalty_tier, COUNT(*) AS customers, AVG(snacks_weekly_spend) AS avg_weekly_snacks \
             FROM overlap GROUP BY drinks_loyalty_tier ORDER BY customers DESC",
        ),
        (
            "Favourite snack by region (rare combinations are not shown: their noisy size is below the threshold)",
            "SELECT drinks_region, snacks_favourite_snack, COUNT(*) AS customers FROM overlap \
             GROUP BY drinks_region, snacks_favourite_snack ORDER BY drinks_region, customers DESC",
        ),
        (
            "Drinks spending of supermarket shoppers",
            "SELECT snacks_store_format, SUM(drinks_monthly_spend) AS monthly_drinks_spend FROM overlap \
             WHERE snacks_store_format = 'supermarket' GROUP BY snacks_store_format",
        ),
        (
            "A row-level question (refused)",
            "SELECT drinks_monthly_spend FROM overlap WHERE drinks_region = 'islands'",
        ),
    ];
    for (title, sql) in queries {
        println!("\n  -- {title}\n  $ accord query --sql \"{sql}\"");
        match conn
            .run_query(sql)
            .await
            .map_err(party_error)
            .context("query failed")?
        {
            QueryOutcome::Answer {
                arrow_ipc_stream,
                budget,
            } => {
                let batches = decode(&arrow_ipc_stream)?;
                for line in render(&batches, Format::Table)?.lines() {
                    println!("  {line}");
                }
                if let Some(b) = &budget {
                    println!("  (noisy answer) {}", crate::query::budget_text(b));
                }
            }
            QueryOutcome::Refused { rule, message } => {
                println!(
                    "  refused [{}]: {}",
                    accord_agreement::text::escape(&rule, 64),
                    accord_party::display::room_message(&message)
                )
            }
        }
    }

    step(
        6,
        "The parties and the agreement's auditors can check the audit log (analysts cannot)",
    );
    let drinks_key = crate::common::load_key(&dir.join("drinks.key"))?;
    let mut drinks_conn = Connection::open(
        url,
        &agreement.fingerprint().to_string(),
        Principal::Party("drinks"),
        &drinks_key,
    )
    .await
    .map_err(party_error)?;
    let (entries, head) = drinks_conn.audit_log().await.map_err(party_error)?;
    let summary = accord_audit::verify_log(&entries, &head, drinks_conn.room_key())
        .map_err(|e| anyhow!(e))?;
    let spent: f64 = entries
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter(|v| v.get("event").and_then(serde_json::Value::as_str) == Some("budget_spent"))
        .filter_map(|v| v.get("epsilon").and_then(serde_json::Value::as_f64))
        .sum();
    println!(
        "  {} entries, hash chain intact, head signed by the room; {} queries answered, {} refused",
        summary.entries, summary.queries_answered, summary.queries_refused
    );
    println!(
        "  the log records every budget spend: epsilon {spent} spent by drinks' analysts so far"
    );

    step(7, "Repeat any step yourself");
    let d = dir.display();
    println!("  accord agreement show {d}/agreement.toml");
    println!(
        "  accord room serve --data-dir {d}/room-data2 --listen 127.0.0.1:7700 --flight-sql 127.0.0.1:7701"
    );
    println!("  accord agreement submit {d}/agreement.toml --room http://127.0.0.1:7700");
    println!(
        "  accord party upload --room http://127.0.0.1:7700 --agreement {d}/agreement.toml --party drinks --key {d}/drinks.key --state {d}/drinks-state2 --input {d}/drinks-customers.csv --wait"
    );
    println!(
        "  accord party upload --room http://127.0.0.1:7700 --agreement {d}/agreement.toml --party snacks --key {d}/snacks.key --state {d}/snacks-state2 --input {d}/snacks-customers.csv --wait"
    );
    println!(
        "  accord query --room http://127.0.0.1:7700 --agreement {} --key {d}/analyst.key --sql \"SELECT drinks_loyalty_tier, COUNT(*) FROM overlap GROUP BY drinks_loyalty_tier\"",
        id_of(agreement)
    );
    println!(
        "  accord query --room http://127.0.0.1:7700 --agreement {} --key {d}/analyst.key --budget",
        id_of(agreement)
    );
    println!(
        "  accord audit verify --room http://127.0.0.1:7700 --agreement {d}/agreement.toml --party drinks --key {d}/drinks.key"
    );
    Ok(())
}

fn id_of(agreement: &accord_agreement::VerifiedAgreement) -> &str {
    agreement.id()
}
