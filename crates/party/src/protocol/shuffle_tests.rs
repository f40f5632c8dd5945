use std::collections::HashSet;

use accord_agreement::Manifest;
use proptest::prelude::*;

use super::*;

fn manifest() -> Manifest {
    crate::input::tests::manifest()
}

fn options() -> InputOptions {
    InputOptions {
        id_column: None,
        skip_bad_rows: false,
    }
}

/// A stand-in for the handle key: any fixed function of the identifier will do here.
/// `prepare` for the drinks party of [`manifest`] with the default [`options`].
fn prepare_drinks(
    scratch: &std::path::Path,
    input: &std::path::Path,
    memory: &ErasureMemory,
) -> Result<PreparedInput, PartyError> {
    let m = manifest();
    prepare(
        scratch,
        input,
        &m,
        "drinks",
        &options(),
        memory,
        m.identifier,
    )
}

fn handle(id: &str) -> [u8; HANDLE_LEN] {
    let d = sha2::Sha256::digest(id.as_bytes());
    let mut h = [0u8; HANDLE_LEN];
    h.copy_from_slice(&d[..HANDLE_LEN]);
    h
}

type Batch = (u64, Vec<PreparedRow>, Vec<u8>);

#[derive(Debug)]
struct Run {
    batches: Vec<Batch>,
    report: InputReport,
    held_back: u64,
    peak: usize,
}

/// The whole pipeline on `csv`: prepare, shuffle, read every batch back.
fn run_with(
    csv: &str,
    seed: [u8; 32],
    bucket_rows: usize,
    batch_rows: usize,
    memory_root: &Path,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, csv).unwrap();
    let scratch = Scratch::create(&dir.path().join("state")).unwrap();
    let memory = ErasureMemory::open(memory_root).unwrap();
    let prepared = prepare_drinks(scratch.dir(), &input, &memory).unwrap();
    let shuffled = shuffle(
        scratch.dir(),
        prepared.spilled,
        &seed,
        bucket_rows,
        batch_rows,
        &handle,
    )
    .unwrap();
    let mut batches = Vec::new();
    let mut reader = shuffled.batches_from(0).unwrap();
    while let Some((n, rows, handles)) = reader.next_batch().unwrap() {
        batches.push((n, rows, handles.to_vec()));
    }
    assert_eq!(batches.len() as u64, shuffled.batches());
    assert_eq!(
        shuffled.handles(),
        batches.iter().flat_map(|b| b.2.clone()).collect::<Vec<_>>()
    );
    // A resumed upload reads from any batch number: the same batches as the full read.
    for first in [
        1.min(shuffled.batches()),
        shuffled.batches() / 2,
        shuffled.batches(),
    ] {
        let mut reader = shuffled.batches_from(first).unwrap();
        let mut tail = Vec::new();
        while let Some((n, rows, handles)) = reader.next_batch().unwrap() {
            tail.push((n, rows, handles.to_vec()));
        }
        assert_eq!(
            tail,
            batches[first as usize..],
            "resuming from batch {first}"
        );
    }
    Run {
        batches,
        report: prepared.report,
        held_back: prepared.held_back_erased,
        peak: shuffled.peak_rows_in_memory(),
    }
}

fn run(csv: &str, bucket_rows: usize, batch_rows: usize) -> Run {
    let memory = tempfile::tempdir().unwrap();
    run_with(csv, [7; 32], bucket_rows, batch_rows, memory.path())
}

fn rows_of(run: &Run) -> Vec<PreparedRow> {
    run.batches.iter().flat_map(|b| b.1.clone()).collect()
}

fn sorted(mut rows: Vec<PreparedRow>) -> Vec<PreparedRow> {
    rows.sort_by(|a, b| a.identifier.cmp(&b.identifier));
    rows
}

fn customers(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "c{i}@example.com,{},{},{}",
                if i % 7 == 0 { "false" } else { "true" },
                ["gold", "silver", ""][i % 3],
                i % 150
            )
        })
        .collect()
}

const HEADER: &str = "email,consent,tier,spend\n";

#[test]
fn memory_holds_one_bucket_and_the_order_ignores_the_file_order() {
    // 2 000 customers, each twice (the second record never counts), buckets of about 100.
    let lines = customers(2000);
    let mut doubled = lines.clone();
    doubled.extend(lines.iter().map(|l| l.replace(",true,", ",false,")));
    let csv = format!("{HEADER}{}\n", doubled.join("\n"));
    let mut reversed_lines = lines.clone();
    reversed_lines.reverse();
    let mut reversed = reversed_lines.clone();
    reversed.extend(
        reversed_lines
            .iter()
            .map(|l| l.replace(",false,", ",true,")),
    );
    let reversed = format!("{HEADER}{}\n", reversed.join("\n"));

    let a = run(&csv, 100, 64);
    // Memory: one bucket of about bucket_rows rows, not the ~1 700 rows uploaded.
    assert!(a.peak <= 200, "the largest bucket held {} rows", a.peak);
    assert!(a.peak >= 50);
    // Same rows and report as the in-memory rules.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    std::fs::write(&path, &csv).unwrap();
    let (expected, report) = crate::input::read(&path, &manifest(), "drinks", &options()).unwrap();
    assert_eq!(a.report, report);
    assert_eq!(a.report.duplicates, 2000);
    assert_eq!(sorted(rows_of(&a)), sorted(expected.clone()));
    assert_eq!(a.batches.len(), expected.len().div_ceil(64));
    // The file order is gone: the first batch is not the file's first rows.
    assert_ne!(a.batches[0].1, expected[..64]);
    // Byte-identical batches across runs, and for the same rows in the reverse file order.
    let again = run(&csv, 100, 64);
    assert_eq!(again.batches, a.batches);
    let b = run(&reversed, 100, 64);
    assert_eq!(b.batches, a.batches);
    assert_eq!(b.report.prepared, a.report.prepared);
    // Another seed, another order.
    let memory = tempfile::tempdir().unwrap();
    let c = run_with(&csv, [8; 32], 100, 64, memory.path());
    assert_ne!(c.batches, a.batches);
    assert_eq!(sorted(rows_of(&c)), sorted(rows_of(&a)));
}

#[test]
fn more_buckets_than_open_files_take_several_passes() {
    let lines = customers(700);
    let csv = format!("{HEADER}{}\n", lines.join("\n"));
    // Buckets of about 1 row: ~600 buckets, three passes of MAX_OPEN_BUCKETS files.
    let a = run(&csv, 1, 10);
    assert!(a.peak < 20, "the largest bucket held {} rows", a.peak);
    assert_eq!(rows_of(&a).len() as u64, a.report.prepared);
    let (expected, _) = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.csv");
        std::fs::write(&path, &csv).unwrap();
        crate::input::read(&path, &manifest(), "drinks", &options()).unwrap()
    };
    assert_eq!(sorted(rows_of(&a)), sorted(expected));
}

#[test]
fn erased_customers_are_held_back_before_the_spill() {
    let csv = format!("{HEADER}{}\n", customers(50).join("\n"));
    let memory = tempfile::tempdir().unwrap();
    let mut m = ErasureMemory::open(memory.path()).unwrap();
    m.remember_erased(
        manifest().identifier,
        &["c1@example.com".to_owned(), "c2@example.com".to_owned()],
        chrono::Utc::now(),
    )
    .unwrap();
    drop(m);
    let a = run_with(&csv, [7; 32], 8, 5, memory.path());
    assert_eq!(a.held_back, 2);
    let ids: HashSet<String> = rows_of(&a).into_iter().map(|r| r.identifier).collect();
    assert!(!ids.contains("c1@example.com") && !ids.contains("c2@example.com"));
    assert!(ids.contains("c3@example.com"));
    assert_eq!(ids.len() as u64 + 2, a.report.prepared);
}

#[cfg(unix)]
#[test]
fn scratch_files_are_private_wiped_before_and_removed_after() {
    use std::os::unix::fs::PermissionsExt as _;
    let state = tempfile::tempdir().unwrap();
    let stale = state.path().join(SCRATCH_DIR);
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join(".bucket-3.tmp-rows"), b"left by a crash").unwrap();
    let scratch = Scratch::create(state.path()).unwrap();
    assert_eq!(std::fs::read_dir(scratch.dir()).unwrap().count(), 0);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(scratch.dir()), 0o700);
    let input = state.path().join("in.csv");
    std::fs::write(&input, format!("{HEADER}{}\n", customers(30).join("\n"))).unwrap();
    let memory = ErasureMemory::open(&state.path().join("memory")).unwrap();
    let p = prepare_drinks(scratch.dir(), &input, &memory).unwrap();
    assert_eq!(mode(&scratch.dir().join(INPUT_FILE)), 0o600);
    let s = shuffle(scratch.dir(), p.spilled, &[1; 32], 4, 3, &handle).unwrap();
    let left: Vec<_> = std::fs::read_dir(scratch.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [SHUFFLED_FILE], "the spill and bucket files are gone");
    assert_eq!(mode(&scratch.dir().join(SHUFFLED_FILE)), 0o600);
    drop(s);
    drop(scratch);
    assert!(
        !stale.exists(),
        "the scratch directory is removed at the end"
    );
}

/// The rules of input.rs, written plainly over (identifier, consent, tier, spend) records.
fn reference(records: &[(String, bool, String, Option<i32>)]) -> (Vec<PreparedRow>, u64, u64) {
    let m = manifest();
    let mut seen = HashSet::new();
    let (mut rows, mut duplicates, mut not_consented) = (Vec::new(), 0, 0);
    for (id, consent, tier, spend) in records {
        let Ok(Some(n)) = accord_psi::normalize(m.identifier, id, None) else {
            continue;
        };
        if !seen.insert(n.clone()) {
            duplicates += 1;
            continue;
        }
        if !consent {
            not_consented += 1;
            continue;
        }
        rows.push(PreparedRow {
            identifier: n,
            values: vec![
                Value::Text(Some(tier.clone()).filter(|t| !t.is_empty())),
                Value::Number(spend.map(|s| f64::from(s).clamp(0.0, 100.0))),
            ],
        });
    }
    (rows, duplicates, not_consented)
}

fn record() -> impl Strategy<Value = (String, bool, String, Option<i32>)> {
    (
        prop_oneof![
            8 => (0..25u32).prop_map(|i| format!("C{i}@Example.com ")),
            1 => Just(String::new()),
            1 => Just("no-at-sign".to_owned()),
        ],
        any::<bool>(),
        prop_oneof![
            Just(String::new()),
            Just("gold".to_owned()),
            Just("tin".to_owned())
        ],
        proptest::option::of(-10..200i32),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_streaming_pipeline_matches_the_plain_rules(
        records in proptest::collection::vec(record(), 1..80),
        bucket_rows in 1..12usize,
        batch_rows in 1..9usize,
    ) {
        let csv: String = std::iter::once(HEADER.to_owned())
            .chain(records.iter().map(|(id, consent, tier, spend)| {
                format!(
                    "{id},{consent},{tier},{}\n",
                    spend.map(|s| s.to_string()).unwrap_or_default()
                )
            }))
            .collect();
        let a = run(&csv, bucket_rows, batch_rows);
        let (expected, duplicates, not_consented) = reference(&records);
        prop_assert_eq!(sorted(rows_of(&a)), sorted(expected.clone()));
        prop_assert_eq!(a.report.rows_read, records.len() as u64);
        prop_assert_eq!(a.report.prepared, expected.len() as u64);
        prop_assert_eq!(a.report.duplicates, duplicates);
        prop_assert_eq!(a.report.not_consented, not_consented);
        prop_assert_eq!(a.batches.len(), expected.len().div_ceil(batch_rows));
        for (i, b) in a.batches.iter().enumerate() {
            prop_assert_eq!(b.0, i as u64);
            prop_assert_eq!(b.2.len(), b.1.len() * HANDLE_LEN);
        }
        // Input order independence: the records reversed, keeping which record wins.
        let mut winners = HashSet::new();
        let mut reordered: Vec<_> = records
            .iter()
            .filter(|r| {
                accord_psi::normalize(manifest().identifier, &r.0, None)
                    .ok()
                    .flatten()
                    .is_some_and(|n| winners.insert(n))
            })
            .cloned()
            .collect();
        reordered.reverse();
        let csv: String = std::iter::once(HEADER.to_owned())
            .chain(reordered.iter().map(|(id, consent, tier, spend)| {
                format!(
                    "{id},{consent},{tier},{}\n",
                    spend.map(|s| s.to_string()).unwrap_or_default()
                )
            }))
            .collect();
        let b = run(&csv, bucket_rows, batch_rows);
        prop_assert_eq!(b.batches, a.batches);
    }
}

#[test]
fn a_backup_after_a_crash_never_copies_scratch_rows() {
    let root = tempfile::tempdir().unwrap();
    let fp: accord_agreement::Fingerprint = "ab".repeat(32).parse().unwrap();
    let state = crate::state::State::open(root.path(), "t-1", fp).unwrap();
    let scratch = Scratch::create(state.dir()).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let input = elsewhere.path().join("in.csv");
    std::fs::write(&input, format!("{HEADER}{}\n", customers(30).join("\n"))).unwrap();
    let memory = ErasureMemory::open(root.path()).unwrap();
    let p = prepare_drinks(scratch.dir(), &input, &memory).unwrap();
    let s = shuffle(scratch.dir(), p.spilled, &[1; 32], 4, 3, &handle).unwrap();
    assert!(scratch.dir().join(SHUFFLED_FILE).exists());
    // As a kill -9 leaves them: the scratch directory outlives the process.
    std::mem::forget(scratch);
    drop(s);
    let dest = tempfile::tempdir().unwrap().path().join("backup");
    crate::state::backup(root.path(), &dest).unwrap();
    let mut copied = Vec::new();
    let mut dirs = vec![dest.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else {
                copied.push(std::fs::read(e.path()).unwrap());
            }
        }
    }
    assert!(!copied.is_empty());
    assert!(
        !copied.iter().any(|b| b
            .windows(b"c3@example.com".len())
            .any(|w| w == b"c3@example.com")),
        "no backed-up file holds a customer's identifier"
    );
}
