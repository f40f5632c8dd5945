//! The real `accord` binary end to end: a room process killed with SIGKILL in the middle of an
//! upload and restarted, parties and analysts as separate processes, exit codes, and the demo.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn accord() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_accord"));
    c.env("RUST_LOG", "warn");
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run accord")
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{:?} failed:\nstdout: {}\nstderr: {}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_room(data: &Path, port: u16) -> Child {
    spawn_room_with(data, port, Stdio::null())
}

/// Starts `accord room serve` and waits until it listens; `stderr` is where its logs go.
fn spawn_room_with(data: &Path, port: u16, stderr: Stdio) -> Child {
    let child = accord()
        .args(["room", "serve", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the room did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn keygen(dir: &Path, name: &str) -> String {
    let out = ok(accord()
        .arg("keygen")
        .arg("--out")
        .arg(dir.join(format!("{name}.key"))));
    out.trim().to_owned()
}

fn write_files(dir: &Path, n: usize) -> usize {
    let mut drinks = String::from("email,consent,tier,spend\n");
    let mut snacks = String::from("email,consent,snack\n");
    for i in 0..n {
        writeln!(
            drinks,
            "Person{i}@Example.com,true,{},{}",
            ["gold", "silver"][i % 2],
            i % 90
        )
        .unwrap();
        let j = i + n / 2;
        writeln!(
            snacks,
            " person{j}@example.com ,true,{}",
            ["nuts", "crisps", "popcorn"][j % 3]
        )
        .unwrap();
    }
    std::fs::write(dir.join("drinks.csv"), drinks).unwrap();
    std::fs::write(dir.join("snacks.csv"), snacks).unwrap();
    n - n / 2
}

fn agreement(dir: &Path, drinks: &str, snacks: &str, analyst: &str, room: &str) -> PathBuf {
    use accord_agreement::{Contribution, ManifestBuilder, PublicKey, RoomSection};
    let key = |k: &str| k.parse::<PublicKey>().unwrap();
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0);
    let room = RoomSection {
        operator: "CLI test room".into(),
        public_key: key(room),
    };
    let text = ManifestBuilder::new(
        "cli-e2e",
        "Command-line end-to-end test",
        now - chrono::Duration::hours(1),
        now + chrono::Duration::days(1),
        room,
    )
    .min_group_size(10)
    .party(
        "drinks",
        key(drinks),
        100000,
        "consent",
        [
            Contribution::dimension("tier"),
            Contribution::metric("spend", 0.0, 100.0),
        ],
    )
    .party(
        "snacks",
        key(snacks),
        100000,
        "consent",
        [Contribution::dimension("snack")],
    )
    .analyst("ana@drinks.example", "drinks", key(analyst))
    .exact_results()
    .to_toml();
    let path = dir.join("agreement.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn party_args(cmd: &mut Command, sub: &str, url: &str, agreement: &Path, dir: &Path, name: &str) {
    cmd.args(["party", sub, "--room", url, "--agreement"])
        .arg(agreement)
        .args(["--party", name, "--key"])
        .arg(dir.join(format!("{name}.key")))
        .arg("--state")
        .arg(dir.join(format!("{name}-state")));
}

/// Batches drinks' upload of `drinks.csv` makes: its consented rows with an identifier,
/// deduplicated, in batches of `batch_rows` (the same input rules as the party).
fn expected_drinks_batches(dir: &Path, batch_rows: usize) -> usize {
    let text = std::fs::read_to_string(dir.join("drinks.csv")).unwrap();
    let mut header = text.lines().next().unwrap().split(',');
    let email = header.position(|h| h == "email").unwrap();
    let header = text.lines().next().unwrap();
    let consent = header.split(',').position(|h| h == "consent").unwrap();
    let rows: std::collections::HashSet<String> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            let id = cells[email].trim().to_lowercase();
            (cells[consent] == "true" && !id.is_empty()).then_some(id)
        })
        .collect();
    rows.len().div_ceil(batch_rows)
}

/// Whether the room stored `party`'s signed completion statement.
fn completion_stored(data: &Path, party: &str) -> bool {
    std::fs::read_dir(data.join("agreements"))
        .map(|d| {
            d.filter_map(Result::ok).any(|a| {
                a.path()
                    .join("parties")
                    .join(party)
                    .join("complete.json")
                    .exists()
            })
        })
        .unwrap_or(false)
}

fn pending_batches(data: &Path) -> usize {
    let Ok(agreements) = std::fs::read_dir(data.join("agreements")) else {
        return 0;
    };
    agreements
        .filter_map(Result::ok)
        .map(|a| {
            ["pending", "rows"]
                .iter()
                .map(|sub| {
                    std::fs::read_dir(a.path().join("parties/drinks").join(sub))
                        .map(|d| d.count())
                        .unwrap_or(0)
                })
                .sum::<usize>()
        })
        .sum()
}

#[test]
fn a_room_killed_mid_upload_loses_nothing_and_the_commands_keep_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let expected = write_files(d, 3000);
    let (drinks, snacks, analyst) = (
        keygen(d, "drinks"),
        keygen(d, "snacks"),
        keygen(d, "analyst"),
    );
    // The room's key first (`accord room key` creates it in the data directory): the
    // agreement names the room.
    let data = d.join("room-data");
    let room_key = ok(accord().args(["room", "key", "--data-dir"]).arg(&data));
    let room_key = room_key.trim();
    assert!(room_key.starts_with("ed25519:"), "{room_key}");
    // Asking again prints the same key (it is loaded, not replaced).
    assert_eq!(
        ok(accord().args(["room", "key", "--data-dir"]).arg(&data)).trim(),
        room_key
    );
    let file = agreement(d, &drinks, &snacks, &analyst, room_key);
    ok(accord()
        .args(["agreement", "sign"])
        .arg(&file)
        .args(["--party", "drinks", "--key"])
        .arg(d.join("drinks.key")));
    // Not signed by snacks yet: verify lists the missing signature and exits 1.
    let out = run(accord().args(["agreement", "verify"]).arg(&file));
    assert_eq!(out.status.code(), Some(1));
    ok(accord()
        .args(["agreement", "sign"])
        .arg(&file)
        .args(["--party", "snacks", "--key"])
        .arg(d.join("snacks.key")));
    ok(accord().args(["agreement", "verify"]).arg(&file));

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut room = spawn_room(&data, port);
    ok(accord()
        .args(["agreement", "submit"])
        .arg(&file)
        .args(["--room", &url]));

    // drinks uploads in small batches; the room is killed -9 once a few are stored.
    let mut upload = accord();
    party_args(&mut upload, "upload", &url, &file, d, "drinks");
    let drinks_proc = upload
        .arg("--input")
        .arg(d.join("drinks.csv"))
        .args(["--batch-rows", "16"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while pending_batches(&data) < 5 {
        assert!(Instant::now() < deadline, "no batch reached the room");
        std::thread::sleep(Duration::from_millis(5));
    }
    room.kill().unwrap(); // SIGKILL
    room.wait().unwrap();
    let stored_at_kill = pending_batches(&data);
    // The kill really happened mid-upload: some batches stored, not all, no completion.
    let total_batches = expected_drinks_batches(d, 16);
    assert!(
        (5..total_batches).contains(&stored_at_kill),
        "the room was killed after {stored_at_kill} of {total_batches} batches: not mid-upload"
    );
    assert!(
        !completion_stored(&data, "drinks"),
        "the room was killed after the upload completed: not mid-upload"
    );
    let mut room = spawn_room(&data, port);
    let first = drinks_proc.wait_with_output().unwrap();
    if !first.status.success() {
        // The party gave up while the room was down (exit 3): running it again resumes.
        assert_eq!(
            first.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
        let mut again = accord();
        party_args(&mut again, "upload", &url, &file, d, "drinks");
        ok(again
            .arg("--input")
            .arg(d.join("drinks.csv"))
            .args(["--batch-rows", "16"]));
    }
    assert!(
        pending_batches(&data) >= stored_at_kill,
        "acknowledged batches survived the kill"
    );

    // Both parties finish the protocol as separate processes.
    let mut s = accord();
    party_args(&mut s, "upload", &url, &file, d, "snacks");
    let snacks_proc = s
        .arg("--input")
        .arg(d.join("snacks.csv"))
        .arg("--wait")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sync = accord();
    party_args(&mut sync, "sync", &url, &file, d, "drinks");
    ok(sync.arg("--wait"));
    let out = snacks_proc.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(
        report.contains("rows to upload") && report.contains("sealed"),
        "{report}"
    );

    // Exactly the right rows: nothing lost or doubled by the kill.
    let query = |sql: &str, format: &str| {
        let mut c = accord();
        c.args(["query", "--room", &url, "--agreement", "cli-e2e", "--key"])
            .arg(d.join("analyst.key"))
            .args(["--sql", sql, "--format", format]);
        run(&mut c)
    };
    let out = query("SELECT COUNT(*) AS n FROM overlap", "json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["n"].as_u64().unwrap() as usize, expected);
    // The first use of an id says which agreement it was taken to mean, and only once.
    let first = String::from_utf8_lossy(&out.stderr);
    assert!(
        first.contains("first use of agreement id \"cli-e2e\"") && first.contains(room_key),
        "{first}"
    );
    let again = query(
        "SELECT drinks_tier, COUNT(*) AS n FROM overlap GROUP BY drinks_tier ORDER BY drinks_tier",
        "csv",
    );
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("first use"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let csv = String::from_utf8(again.stdout).unwrap();
    assert!(csv.starts_with("drinks_tier,n\ngold,"), "{csv}");

    // A refusal: exit 1, the reason on stderr, nothing on stdout.
    let out = query("SELECT drinks_spend FROM overlap", "table");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    // The audit log verifies offline, read by a party; an analyst may not read it.
    let audit = ok(accord()
        .args(["audit", "verify", "--room", &url, "--agreement"])
        .arg(&file)
        .args(["--party", "drinks", "--key"])
        .arg(d.join("drinks.key")));
    assert!(audit.contains("OK"), "{audit}");
    let out = run(accord()
        .args(["audit", "verify", "--room", &url, "--agreement"])
        .arg(&file)
        .arg("--key")
        .arg(d.join("analyst.key")));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not authorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Erasure that cannot account for an identifier fails loudly and names it.
    std::fs::write(d.join("erase.txt"), "nobody-ever@example.org\n").unwrap();
    let mut c = accord();
    party_args(&mut c, "erase", &url, &file, d, "drinks");
    let out = run(c.arg("--ids").arg(d.join("erase.txt")));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 1: nobody-ever@example.org"),
        "{stderr}"
    );

    // `party forget` refuses while the agreement is in force.
    let mut c = accord();
    party_args(&mut c, "forget", &url, &file, d, "snacks");
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still serves it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A room nobody listens on: exit 3.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut c = accord();
    c.args(["query", "--room", &dead, "--agreement", "cli-e2e", "--key"])
        .arg(d.join("analyst.key"))
        .args(["--sql", "SELECT COUNT(*) FROM overlap"]);
    let out = run(&mut c);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Revocation: acknowledged with a verified receipt; afterwards queries are refused.
    let revoked = ok(accord()
        .args(["agreement", "revoke"])
        .arg(&file)
        .args(["--party", "snacks", "--key"])
        .arg(d.join("snacks.key"))
        .args(["--room", &url]));
    assert!(
        revoked.contains("revoked") && revoked.contains("verified"),
        "{revoked}"
    );
    let out = query("SELECT COUNT(*) FROM overlap", "json");
    assert_eq!(out.status.code(), Some(1));
    // After revocation, `party forget` deletes snacks' secrets and records and says so.
    let mut c = accord();
    party_args(&mut c, "forget", &url, &file, d, "snacks");
    let forgot = ok(&mut c);
    assert!(
        forgot.contains("secrets.key") && forgot.contains("uploaded.handles"),
        "{forgot}"
    );
    assert!(!d.join("snacks-state").join("cli-e2e").exists());
    room.kill().unwrap();
    room.wait().unwrap();
}

#[test]
fn the_demo_runs_end_to_end_and_shows_each_step() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(accord()
        .args(["demo", "--rows", "2000", "--dir"])
        .arg(dir.path().join("demo")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "rows to upload",
        "shared_customers",
        "drinks_loyalty_tier",
        "refused [",
        "hash chain intact",
        "budget spend",
        "(noisy answer) budget of party drinks",
        "aggregations remaining",
        "accord party upload",
        "Demo finished",
    ] {
        assert!(
            stdout.contains(expected),
            "the demo output lacks {expected:?}:\n{stdout}"
        );
    }
    for file in [
        "agreement.toml",
        "drinks-customers.csv",
        "snacks-customers.csv",
        "drinks.key",
        "analyst.key",
    ] {
        assert!(
            dir.path().join("demo").join(file).exists(),
            "{file} was not left for the user"
        );
    }
    // The agreement it wrote is valid and fully signed.
    assert!(
        run(accord()
            .args(["agreement", "verify"])
            .arg(dir.path().join("demo/agreement.toml")))
        .status
        .success()
    );
}

/// `--log-format json` writes one JSON object per line on stderr, for log pipelines; the
/// default is text for people.
#[test]
fn logs_can_be_structured_json() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = accord()
        .env("RUST_LOG", "info")
        .args(["--log-format", "json", "room", "serve", "--data-dir"])
        .arg(dir.path().join("room"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let value: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            value["timestamp"].is_string() && value["level"].is_string(),
            "{line}"
        );
        let message = value["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        seen.push(message.clone());
        if message == "room listening" {
            assert!(
                value["fields"]["grpc_addr"]
                    .as_str()
                    .unwrap()
                    .starts_with("127.0.0.1:")
            );
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.iter().any(|m| m == "room listening"), "{seen:?}");
    // An unknown format is refused by name.
    let key = dir.path().join("never.key");
    let out = run(accord()
        .args(["--log-format", "xml", "keygen", "--out"])
        .arg(&key));
    assert!(!out.status.success());
    assert!(!key.exists(), "nothing ran");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid value 'xml'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGTERM (what systemd, Docker and Kubernetes send) stops the room cleanly: it says so and
/// exits 0, and the data directory opens again.
#[cfg(unix)]
#[test]
fn sigterm_stops_the_room_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("room");
    let child = spawn_room_with(&data, free_port(), Stdio::piped());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("stopping the room (SIGTERM)"), "{stderr}");
    ok(accord().args(["room", "status", "--data-dir"]).arg(&data));
}

/// `accord room backup` of a running room, `restore --check-only`, `restore`; a damaged
/// backup and a non-empty target are refused with exit code 1; `accord party backup` and
/// `restore` keep a secret file's content and mode.
#[cfg(unix)]
#[test]
fn backup_and_restore_commands_check_what_they_restore() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("room");
    let mut room = spawn_room(&data, free_port());
    let backup = dir.path().join("room-backup");
    let out = ok(accord()
        .args(["room", "backup", "--data-dir"])
        .arg(&data)
        .arg("--to")
        .arg(&backup));
    room.kill().unwrap();
    room.wait().unwrap();
    assert!(out.contains("Backed up") && out.contains("files"), "{out}");
    let out = ok(accord()
        .args(["room", "restore", "--check-only", "--from"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(dir.path().join("unused")));
    assert!(
        out.contains("every checksum and audit chain verified"),
        "{out}"
    );
    assert!(!dir.path().join("unused").exists());
    let restored = dir.path().join("restored");
    ok(accord()
        .args(["room", "restore", "--from"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&restored));
    let key = |d: &Path| ok(accord().args(["room", "key", "--data-dir"]).arg(d));
    assert_eq!(key(&data), key(&restored), "the same room key");
    // Into a directory that is not empty: refused, exit 1.
    let out = run(accord()
        .args(["room", "restore", "--from"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&restored));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    // A damaged backup: refused, nothing restored.
    std::fs::write(backup.join("FORMAT"), "accord-room-data 1\n\n").unwrap();
    let out = run(accord()
        .args(["room", "restore", "--from"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(dir.path().join("r2")));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FORMAT changed since the backup"),
        "{stderr}"
    );
    assert!(!dir.path().join("r2").exists());

    // A party's state: FORMAT and a secret (mode 0600).
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("deal/abc")).unwrap();
    std::fs::write(state.join("FORMAT"), "accord-party-state 1\n").unwrap();
    let secret = state.join("deal/abc/secrets.key");
    std::fs::write(&secret, b"secret bytes").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pb = dir.path().join("party-backup");
    ok(accord()
        .args(["party", "backup", "--state"])
        .arg(&state)
        .arg("--to")
        .arg(&pb));
    let state2 = dir.path().join("state2");
    ok(accord()
        .args(["party", "restore", "--from"])
        .arg(&pb)
        .arg("--state")
        .arg(&state2));
    let copy = state2.join("deal/abc/secrets.key");
    assert_eq!(std::fs::read(&copy).unwrap(), b"secret bytes");
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A room backup is not a party backup.
    let out = run(accord()
        .args(["party", "restore", "--from"])
        .arg(&backup)
        .arg("--state")
        .arg(dir.path().join("state3")));
    assert_eq!(out.status.code(), Some(1));
}

/// `accord bench e2e` runs the room and both parties as processes and reports every number
/// it promises (on a tiny input: this checks the report, not the speed).
#[test]
fn bench_e2e_reports_wall_time_bound_stages_memory_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(accord()
        .args(["bench", "e2e", "--rows", "1000", "--dir"])
        .arg(dir.path().join("bench")));
    for needle in [
        "PSI wall time",
        "records/s",
        "own records",
        "partner records",
        "room verifies",
        "bound",
        "ratio",
        "drinks  read_and_normalize",
        "snacks  hash_blind_upload",
        "drinks  blind_partner",
        "room    room_upload_check",
        "room    room_verify_blinding",
        "room    seal",
        "peak resident memory",
        "bytes per uploaded customer",
        "SELECT COUNT(*) FROM overlap",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
}
