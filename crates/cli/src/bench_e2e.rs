//! `accord bench e2e`: the whole run as a data team feels it — CSV in, both parties, the
//! room relaying, sealing, then an analyst's queries — with the room and the two parties as
//! separate `accord` processes on loopback, measured against the crypto the protocol needs
//! (measured in the same run, printed as a sum of its parts).

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accord_party::{Connection, Principal, QueryOutcome};
use accord_psi::bench::{PrimitiveCosts, ProofCosts, measure_primitives, measure_proofs};
use anyhow::{Context, Result, bail, ensure};

use crate::common::{human_bytes, party_error, runtime};

const MARKER: &str = ".accord-bench-e2e";
const PRIMITIVE_SAMPLES: usize = 2_000;
const PROOF_BATCH: usize = 1024;
const PROOF_ROUNDS: usize = 3;
/// Each query is run this many times; the median is reported.
const QUERY_RUNS: usize = 3;

/// The analyst's queries: a count, groupings by one and two dimensions, a sum.
const QUERIES: [&str; 4] = [
    "SELECT COUNT(*) FROM overlap",
    "SELECT drinks_region, COUNT(*), AVG(drinks_monthly_spend) FROM overlap GROUP BY drinks_region",
    "SELECT drinks_loyalty_tier, snacks_favourite_snack, COUNT(*) FROM overlap GROUP BY drinks_loyalty_tier, snacks_favourite_snack",
    "SELECT snacks_store_format, SUM(snacks_weekly_spend) FROM overlap GROUP BY snacks_store_format",
];

#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// Customers per company (about a third are shared; about 85-90 % consent).
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// Rows per upload batch.
    #[arg(long, default_value_t = accord_party::protocol::DEFAULT_BATCH_ROWS)]
    pub batch_rows: usize,
    /// Where the generated files, states and the room's data go (a previous run there is
    /// replaced).
    #[arg(long, default_value = "accord-bench")]
    pub dir: PathBuf,
}

/// A process being measured: its peak resident memory, sampled from /proc.
struct Watched {
    name: &'static str,
    child: Child,
    peak_kib: Arc<Mutex<u64>>,
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Watched {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Self> {
        let log = std::fs::File::create(log)?;
        let child = cmd
            .env("RUST_LOG", "info,accord_room=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("could not start the {name} process"))?;
        let peak_kib = Arc::new(Mutex::new(0));
        let (pid, peak) = (child.id(), peak_kib.clone());
        // The high-water mark only grows: the last sample before the process ends is its peak.
        std::thread::spawn(move || {
            while let Some(kib) = vm_hwm_kib(pid) {
                *peak
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = kib;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Ok(Self {
            name,
            child,
            peak_kib,
        })
    }

    fn peak(&self) -> u64 {
        *self
            .peak_kib
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait_ok(&mut self, log: &Path) -> Result<()> {
        let status = self.child.wait()?;
        if !status.success() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            bail!(
                "the {} process failed ({status}); last log lines:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }
}

/// Seconds per stage (summed over a process's log), and the rows read.
#[derive(Debug, Default)]
struct Stages {
    seconds: BTreeMap<String, f64>,
    rows: u64,
}

/// Reads the `stage`/`seconds` fields of a process's JSON log lines.
fn stages(log: &Path) -> Result<Stages> {
    let mut out = Stages::default();
    let file = std::fs::File::open(log)?;
    for line in std::io::BufReader::new(file).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line?) else {
            continue;
        };
        let fields = &v["fields"];
        if let (Some(stage), Some(seconds)) = (fields["stage"].as_str(), fields["seconds"].as_f64())
        {
            *out.seconds.entry(stage.to_owned()).or_default() += seconds;
            if stage == "read_and_normalize" {
                out.rows += fields["rows"].as_u64().unwrap_or(0);
            }
        }
    }
    Ok(out)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The crypto the protocol requires for `own_a` and `own_b` uploaded records, on `cores`
/// cores, in seconds, with its parts: each party hashes, blinds and encodes its own records,
/// decodes, blinds, encodes and proves its partner's, and the room verifies every proof.
fn bound(costs: &PrimitiveCosts, proofs: &ProofCosts, own_a: u64, own_b: u64) -> (f64, String) {
    let n = (own_a + own_b) as f64;
    let own = n * (costs.hash_to_group_ns + costs.scalar_mult_ns + costs.compress_ns);
    let partner = n
        * (costs.decompress_ns + costs.scalar_mult_ns + costs.compress_ns + proofs.prove_extra_ns);
    let verify = n * proofs.verify_ns;
    let cores = costs.threads as f64;
    let total = (own + partner + verify) / cores / 1e9;
    let parts = format!(
        "  own records      {n:.0} × (hash {h:.0} + mult {m:.0} + compress {c:.0} ns) = {own:.2} core-s\n\
         \x20 partner records  {n:.0} × (decompress {d:.0} + mult {m:.0} + compress {c:.0} + prove {p:.0} ns) = {partner:.2} core-s\n\
         \x20 room verifies    {n:.0} × {v:.0} ns = {verify:.2} core-s\n\
         \x20 bound            ({own:.2} + {partner:.2} + {verify:.2}) core-s / {cores} cores = {total:.2} s\n",
        h = costs.hash_to_group_ns,
        m = costs.scalar_mult_ns,
        c = costs.compress_ns,
        d = costs.decompress_ns,
        p = proofs.prove_extra_ns,
        v = proofs.verify_ns,
        own = own / 1e9,
        partner = partner / 1e9,
        verify = verify / 1e9,
    );
    (total, parts)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run(args: E2eArgs) -> Result<ExitCode> {
    ensure!(
        args.rows >= 1000,
        "--rows must be at least 1000 so that groups can reach k"
    );
    let exe = std::env::current_exe().context("cannot find the accord binary")?;
    crate::demo::prepare_dir(&args.dir, MARKER, "accord bench e2e")?;
    let dir = args.dir.canonicalize()?;
    eprintln!("generating {} customers per company…", args.rows);
    let generated = crate::demo::generate(&dir, args.rows, 2027)?;
    let crate::demo::Signed {
        analyst,
        agreement,
        agreement_path,
        ..
    } = crate::demo::keys_and_agreement(&dir, "bench-e2e", args.rows)?;
    let room_data = dir.join("room-data");

    eprintln!("measuring the bound's primitives ({PRIMITIVE_SAMPLES} samples each, one core)…");
    let costs = measure_primitives(PRIMITIVE_SAMPLES);
    let proofs = measure_proofs(PROOF_BATCH, PROOF_ROUNDS)?;

    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let room_log = dir.join("room.log");
    let mut room_cmd = Command::new(&exe);
    room_cmd
        .args(["--log-format", "json", "room", "serve", "--data-dir"])
        .arg(&room_data)
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    let mut room = Watched::spawn("room", room_cmd, &room_log)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "the room did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = runtime()?;
    rt.block_on(accord_party::submit_agreement(
        &url,
        &accord_party::ClientTls::default(),
        &agreement,
    ))
    .map_err(party_error)?;

    eprintln!("running both parties' uploads as separate processes…");
    let started = Instant::now();
    let mut parties = Vec::new();
    for name in ["drinks", "snacks"] {
        let mut cmd = Command::new(&exe);
        cmd.args(["--log-format", "json", "party", "upload", "--room", &url])
            .arg("--agreement")
            .arg(&agreement_path)
            .args(["--party", name, "--key"])
            .arg(dir.join(format!("{name}.key")))
            .arg("--state")
            .arg(dir.join(format!("{name}-state")))
            .arg("--input")
            .arg(dir.join(format!("{name}-customers.csv")))
            .args(["--batch-rows", &args.batch_rows.to_string(), "--wait"]);
        let log = dir.join(format!("{name}.log"));
        parties.push((Watched::spawn(name, cmd, &log)?, log));
    }
    for (p, log) in &mut parties {
        p.wait_ok(log)?;
    }
    let psi = started.elapsed();

    eprintln!("running the analyst's queries…");
    let fp = agreement.fingerprint().to_string();
    let latencies = rt.block_on(async {
        let public = analyst.public_key();
        let mut conn = Connection::open(&url, &fp, Principal::AnalystKey(&public), &analyst)
            .await
            .map_err(party_error)?;
        let mut out = Vec::new();
        for sql in QUERIES {
            let mut runs = Vec::new();
            for _ in 0..QUERY_RUNS {
                let t = Instant::now();
                match conn.run_query(sql).await.map_err(party_error)? {
                    QueryOutcome::Answer { .. } => {}
                    QueryOutcome::Refused { rule, message } => {
                        bail!("the room refused {sql:?} [{rule}]: {message}")
                    }
                }
                runs.push(t.elapsed());
            }
            out.push(median(runs));
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    let snapshot = room_data
        .join("agreements")
        .join(&fp)
        .join("snapshot.parquet");
    let plain = plain_datafusion(&rt, &snapshot)?;
    let _ = Command::new("kill")
        .args(["-TERM", &room.child.id().to_string()])
        .status();
    room.wait_ok(&room_log)?;

    let drinks_stages = stages(&parties[0].1)?;
    let snacks_stages = stages(&parties[1].1)?;
    let room_stages = stages(&room_log)?;
    let (bound_s, parts) = bound(&costs, &proofs, drinks_stages.rows, snacks_stages.rows);
    let uploaded = drinks_stages.rows + snacks_stages.rows;
    let machine = format!(
        "{} cores; {}",
        costs.threads,
        if cfg!(debug_assertions) {
            "debug build (crypto crates optimized by the dev profile)"
        } else {
            "release build"
        }
    );
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "accord bench e2e — {} + {} rows generated ({} uploaded after consent and input rules), {machine}\n",
        generated.drinks_rows, generated.snacks_rows, uploaded
    );
    let _ = writeln!(
        out,
        "PSI wall time    {:.1} s (both `party upload --wait` processes, start to both sealed)",
        psi.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "records/s        {:.0} across both parties",
        uploaded as f64 / psi.as_secs_f64()
    );
    let _ = write!(out, "{parts}");
    let _ = writeln!(
        out,
        "ratio            {:.2} of the bound\n",
        psi.as_secs_f64() / bound_s
    );
    let _ = writeln!(
        out,
        "time per stage (seconds; summed over each process's log)"
    );
    for (who, st) in [
        ("drinks", &drinks_stages),
        ("snacks", &snacks_stages),
        ("room", &room_stages),
    ] {
        for (stage, s) in &st.seconds {
            let _ = writeln!(out, "  {who:<7} {stage:<22} {s:>8.2}");
        }
    }
    let _ = writeln!(out, "\npeak resident memory");
    for (name, kib) in [
        ("room", room.peak()),
        ("drinks", parties[0].0.peak()),
        ("snacks", parties[1].0.peak()),
    ] {
        let _ = writeln!(out, "  {name:<7} {}", human_bytes(kib * 1024));
    }
    let room_bytes = dir_bytes(&room_data);
    let _ = writeln!(
        out,
        "\ndisk             room {} ({:.0} bytes per uploaded customer); states {} + {}",
        human_bytes(room_bytes),
        room_bytes as f64 / uploaded.max(1) as f64,
        human_bytes(dir_bytes(&dir.join("drinks-state"))),
        human_bytes(dir_bytes(&dir.join("snacks-state")))
    );
    let _ = writeln!(
        out,
        "\nqueries (median of {QUERY_RUNS}; room = gRPC round trip with the policy, differential privacy and an \
         fsynced audit entry; plain = the same SQL on DataFusion in this process over the same snapshot)"
    );
    for ((sql, room_t), plain_t) in QUERIES.iter().zip(&latencies).zip(&plain) {
        let _ = writeln!(
            out,
            "  room {:>8.1} ms   plain {:>8.1} ms   {:>6.1}×   {sql}",
            room_t.as_secs_f64() * 1e3,
            plain_t.as_secs_f64() * 1e3,
            room_t.as_secs_f64() / plain_t.as_secs_f64().max(1e-9)
        );
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The same queries on plain DataFusion over the sealed snapshot (no policy, no transport,
/// no audit): the floor the room's query path is compared with.
fn plain_datafusion(rt: &tokio::runtime::Runtime, snapshot: &Path) -> Result<Vec<Duration>> {
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;
    let file = std::fs::File::open(snapshot)
        .with_context(|| format!("cannot read the sealed snapshot {}", snapshot.display()))?;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .context("the snapshot is empty")?;
    rt.block_on(async {
        let ctx = SessionContext::new();
        ctx.register_table(
            "overlap",
            Arc::new(MemTable::try_new(schema, vec![batches])?),
        )?;
        let mut out = Vec::new();
        for sql in QUERIES {
            let mut runs = Vec::new();
            for _ in 0..QUERY_RUNS {
                let t = Instant::now();
                ctx.sql(sql).await?.collect().await?;
                runs.push(t.elapsed());
            }
            out.push(median(runs));
        }
        Ok(out)
    })
}
