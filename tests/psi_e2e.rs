//! Room and parties end to end over real gRPC on loopback (issue: room-and-party).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::Path;

use accord_agreement::sig::Purpose;
use accord_proto::v1::{self, psi_client::PsiClient};
use accord_tests::*;
use arrow::array::Array;
use sha2::{Digest, Sha256, Sha512};

/// Both files: messy case and whitespace, duplicates, non-consented and empty-id rows.
/// Returns the plaintext intersection of consented, normalized identifiers.
fn write_messy_files(dir: &Path, n: usize) -> HashSet<String> {
    let mut drinks = Vec::new();
    let mut snacks = Vec::new();
    let mut drinks_ok = HashSet::new();
    let mut snacks_ok = HashSet::new();
    for i in 0..n {
        let email = format!("person{i}@example.com");
        // drinks: everyone 0..n; every 7th without consent; every 11th written messily.
        let consent = !i.is_multiple_of(7);
        let written = if i.is_multiple_of(11) {
            format!("  PERSON{i}@Example.COM ")
        } else {
            email.clone()
        };
        drinks.push(Customer {
            email: written,
            consent,
            cells: vec!["gold".into(), "north".into(), "10".into()],
        });
        if consent {
            drinks_ok.insert(email.clone());
        }
        // snacks: customers n/2..n+n/2; every 5th without consent; duplicates of every 13th.
        let j = i + n / 2;
        let semail = format!("person{j}@example.com");
        let sconsent = !j.is_multiple_of(5);
        snacks.push(Customer {
            email: semail.to_uppercase(),
            consent: sconsent,
            cells: vec!["nuts".into(), "5".into()],
        });
        if sconsent {
            snacks_ok.insert(semail.clone());
        }
        if j.is_multiple_of(13) {
            // A later duplicate without consent: the first row (above) wins, so it changes nothing.
            snacks.push(Customer {
                email: format!(" {semail}"),
                consent: !sconsent,
                cells: vec!["nuts".into(), "5".into()],
            });
        }
    }
    // Empty identifiers, consented, in both files.
    for _ in 0..3 {
        drinks.push(Customer {
            email: "  ".into(),
            consent: true,
            cells: vec!["gold".into(), "north".into(), "1".into()],
        });
        snacks.push(Customer {
            email: String::new(),
            consent: true,
            cells: vec!["nuts".into(), "1".into()],
        });
    }
    write_csv(&dir.join("drinks.csv"), "drinks", &drinks);
    write_csv(&dir.join("snacks.csv"), "snacks", &snacks);
    drinks_ok.intersection(&snacks_ok).cloned().collect()
}

/// Everything a party or room that skipped a step could leave at rest, for every identifier
/// in the two input files: each spelling (as written, trimmed, lowercased, normalized), the
/// SHA-256 and SHA-512 of each (raw and hex), and the unblinded hash point `H(x)` of the
/// normalized identifier (raw and hex). A party that uploaded `H(x)` instead of `k·H(x)`
/// fails this scan. (The test identifier is e-mail; phone numbers would add their E.164 form.)
struct Needles {
    by_len: std::collections::BTreeMap<usize, HashSet<Vec<u8>>>,
    labels: std::collections::HashMap<Vec<u8>, String>,
}

impl Needles {
    fn from_inputs(dir: &Path, agreement_id: &str) -> Self {
        let domain = accord_psi::HashDomain::new(agreement_id, accord_psi::IdentifierKind::Email);
        let mut n = Needles {
            by_len: Default::default(),
            labels: Default::default(),
        };
        for file in ["drinks.csv", "snacks.csv"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            for line in text.lines().skip(1) {
                let raw = line.split(',').next().unwrap();
                let Ok(Some(normalized)) =
                    accord_psi::normalize(accord_psi::IdentifierKind::Email, raw, None)
                else {
                    continue;
                };
                let point = domain.hash_compressed(normalized.as_bytes());
                n.add(point.to_vec(), format!("H({normalized})"));
                n.add(
                    hex::encode(point).into_bytes(),
                    format!("hex H({normalized})"),
                );
                for spelling in [
                    raw.to_owned(),
                    raw.trim().to_owned(),
                    raw.trim().to_lowercase(),
                    normalized.clone(),
                ] {
                    let b = spelling.as_bytes();
                    n.add(b.to_vec(), format!("{spelling:?}"));
                    n.add(Sha256::digest(b).to_vec(), format!("SHA-256({spelling:?})"));
                    n.add(
                        hex::encode(Sha256::digest(b)).into_bytes(),
                        format!("hex SHA-256({spelling:?})"),
                    );
                    n.add(Sha512::digest(b).to_vec(), format!("SHA-512({spelling:?})"));
                    n.add(
                        hex::encode(Sha512::digest(b)).into_bytes(),
                        format!("hex SHA-512({spelling:?})"),
                    );
                }
            }
        }
        n
    }

    fn add(&mut self, needle: Vec<u8>, label: String) {
        assert!(needle.len() >= 8, "needle {label} too short to scan for");
        self.by_len
            .entry(needle.len())
            .or_default()
            .insert(needle.clone());
        self.labels.insert(needle, label);
    }

    fn count(&self) -> usize {
        self.labels.len()
    }

    fn find_in(&self, bytes: &[u8]) -> Option<String> {
        for (len, set) in &self.by_len {
            if let Some(w) = bytes.windows(*len).find(|w| set.contains(*w)) {
                return Some(self.labels[w].clone());
            }
        }
        None
    }

    /// Raw bytes, and for Parquet every decoded value.
    fn find_in_file(&self, path: &Path) -> Option<String> {
        let bytes = std::fs::read(path).unwrap();
        if let Some(found) = self.find_in(&bytes) {
            return Some(found);
        }
        if path.extension().is_some_and(|e| e == "parquet") {
            return self.find_in(&parquet_values(path));
        }
        None
    }

    fn self_test(&self, dir: &Path, agreement_id: &str) {
        use std::sync::Arc;
        let domain = accord_psi::HashDomain::new(agreement_id, accord_psi::IdentifierKind::Email);
        let point = domain.hash_compressed(b"person302@example.com");
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new(
                "p",
                arrow::datatypes::DataType::FixedSizeBinary(32),
                false,
            ),
            arrow::datatypes::Field::new("e", arrow::datatypes::DataType::Utf8, false),
        ]));
        let rb = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(
                    arrow::array::FixedSizeBinaryArray::try_from_iter(std::iter::repeat_n(
                        point, 50,
                    ))
                    .unwrap(),
                ),
                Arc::new(arrow::array::StringArray::from(vec!["x"; 50])),
            ],
        )
        .unwrap();
        let path = dir.join("self-test.parquet");
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            schema,
            Some(props),
        )
        .unwrap();
        w.write(&rb).unwrap();
        w.close().unwrap();
        assert_eq!(
            self.find_in_file(&path).as_deref(),
            Some("H(person302@example.com)"),
            "the scanner must find an unblinded point in a Parquet file"
        );
        std::fs::write(dir.join("self-test.txt"), b"..  PERSON11@Example.COM ..").unwrap();
        assert!(self.find_in_file(&dir.join("self-test.txt")).is_some());
    }
}

/// Every value of every column of a Parquet file, concatenated (0xff between values).
fn parquet_values(path: &Path) -> Vec<u8> {
    use arrow::array::AsArray;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        for col in batch.columns() {
            let mut push = |v: &[u8]| {
                out.extend_from_slice(v);
                out.push(0xff);
            };
            match col.data_type() {
                arrow::datatypes::DataType::FixedSizeBinary(_) => col
                    .as_fixed_size_binary()
                    .iter()
                    .flatten()
                    .for_each(&mut push),
                arrow::datatypes::DataType::Binary => {
                    col.as_binary::<i32>().iter().flatten().for_each(&mut push)
                }
                arrow::datatypes::DataType::Utf8 => col
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .for_each(|s| push(s.as_bytes())),
                _ => {}
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joined_count_equals_the_plaintext_intersection_and_nothing_reversible_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let expected = write_messy_files(dir.path(), 600);
    let keys = Keys::new(10);
    let text = agreement_text("e2e-count", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    run_psi(&agreement, &keys, dir.path(), &url, 100).await;

    let mut ana = analyst(&url, "e2e-count", &keys).await;
    let batches = grpc_query(&mut ana, "SELECT COUNT(*) AS n FROM overlap")
        .await
        .unwrap();
    let n = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(
        n as usize,
        expected.len(),
        "the room's join must equal the plaintext intersection"
    );

    // The sealed snapshot holds the matched rows only, and no token (nor any 32-byte point).
    let snapshot = files_under(&dir.path().join("room"))
        .into_iter()
        .find(|f| f.file_name().is_some_and(|n| n == "snapshot.parquet"))
        .expect("a sealed snapshot");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&snapshot).unwrap(),
    )
    .unwrap();
    let schema = reader.schema().clone();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert!(
        names.contains(&"drinks_handle") && names.contains(&"snacks_handle"),
        "{names:?}"
    );
    for field in schema.fields() {
        assert!(
            !field.name().contains("token") && !field.name().contains("point"),
            "the snapshot has a column {}",
            field.name()
        );
        assert_ne!(
            field.data_type(),
            &arrow::datatypes::DataType::FixedSizeBinary(32),
            "the snapshot column {} holds 32-byte values (tokens?)",
            field.name()
        );
    }
    let snapshot_rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(snapshot_rows, expected.len(), "matched rows only");

    // Data minimization: after sealing, the parties' row files hold only the matched rows.
    let stored_rows = || -> usize {
        files_under(&dir.path().join("room"))
            .into_iter()
            .filter(|f| {
                f.extension().is_some_and(|e| e == "parquet")
                    && f.parent().is_some_and(|d| d.ends_with("rows"))
            })
            .map(|f| {
                parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&f).unwrap())
                    .map(|r| {
                        use parquet::file::reader::FileReader;
                        r.metadata().file_metadata().num_rows() as usize
                    })
                    .unwrap()
            })
            .sum()
    };
    assert_eq!(stored_rows(), 2 * expected.len());
    // The room still counts what each party uploaded (caps, status), and after a restart the
    // sealed data answers the same.
    room.shutdown().await;
    let room = start_room(&dir.path().join("room")).await;
    let url = accord_tests::url(&room);
    let mut ana = analyst(&url, "e2e-count", &keys).await;
    let again = grpc_query(&mut ana, "SELECT COUNT(*) AS n FROM overlap")
        .await
        .unwrap();
    assert_eq!(again, batches);
    assert_eq!(stored_rows(), 2 * expected.len());
    for name in ["drinks", "snacks"] {
        let ctx = party(
            &agreement,
            name,
            &keys,
            &dir.path().join(format!("{name}-state")),
            &url,
        );
        let status = accord_party::status(&ctx).await.unwrap();
        assert!(
            status.rows_uploaded > expected.len() as u64,
            "{name}: {} uploaded rows reported",
            status.rows_uploaded
        );
    }
    // Erasure still recognizes a customer whose row was deleted at sealing (person1: drinks
    // only) next to a matched one (person302), and a second request finds nothing.
    assert!(
        !expected.contains("person1@example.com") && expected.contains("person302@example.com")
    );
    std::fs::write(
        dir.path().join("erase.txt"),
        "person1@example.com\nperson302@example.com\n",
    )
    .unwrap();
    let drinks = party(
        &agreement,
        "drinks",
        &keys,
        &dir.path().join("drinks-state"),
        &url,
    );
    let outcome = accord_party::erase(&drinks, &dir.path().join("erase.txt"))
        .await
        .unwrap();
    assert_eq!(
        (outcome.requested, outcome.unaccounted.len(), outcome.erased),
        (2, 0, 2)
    );
    let after = grpc_query(&mut ana, "SELECT COUNT(*) AS n FROM overlap")
        .await
        .unwrap();
    let after = after[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(after, n - 1);
    let again = accord_party::erase(&drinks, &dir.path().join("erase.txt"))
        .await
        .unwrap();
    assert_eq!(again.erased, 0);

    // No spelling of any input identifier, no plain hash of one and no unblinded point H(x)
    // anywhere in the room's data dir (Parquet files are decoded too: they are compressed).
    let needles = Needles::from_inputs(dir.path(), "e2e-count");
    assert!(needles.count() > 4 * 1200, "{} needles", needles.count());
    let files = files_under(&dir.path().join("room"));
    assert!(files.len() > 5, "the room should have written files");
    for f in &files {
        if let Some(found) = needles.find_in_file(f) {
            panic!("{} contains {found}", f.display());
        }
    }
    // The scanner itself finds what it looks for, also inside a compressed Parquet file.
    needles.self_test(dir.path(), "e2e-count");
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_party_only_ever_receives_the_partners_points_never_its_own_tokens() {
    let dir = tempfile::tempdir().unwrap();
    write_messy_files(dir.path(), 200);
    let keys = Keys::new(20);
    let text = agreement_text("e2e-own", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    // Both upload without blinding each other's work.
    let a = party(
        &agreement,
        "drinks",
        &keys,
        &dir.path().join("drinks-state"),
        &url,
    );
    let b = party(
        &agreement,
        "snacks",
        &keys,
        &dir.path().join("snacks-state"),
        &url,
    );
    accord_party::upload(
        &a,
        &upload_options(dir.path().join("drinks.csv"), 50, false),
    )
    .await
    .unwrap();
    accord_party::upload(
        &b,
        &upload_options(dir.path().join("snacks.csv"), 50, false),
    )
    .await
    .unwrap();

    // What drinks receives as work: only snacks' batches, signed by snacks.
    let conn = accord_party::Connection::open(
        &url,
        "e2e-own",
        accord_party::Principal::Party("drinks"),
        &keys.drinks(),
    )
    .await
    .unwrap();
    let mut psi = PsiClient::new(conn.channel());
    let mut stream = psi
        .fetch_work(conn.request(v1::FetchWorkRequest { max_batches: 0 }))
        .await
        .unwrap()
        .into_inner();
    let mut received = HashSet::new();
    let fp = agreement.fingerprint();
    while let Some(w) = stream.message().await.unwrap() {
        assert_eq!(w.from_party, "snacks");
        let msg = accord_proto::signed::upload_batch(
            fp.as_bytes(),
            "snacks",
            w.batch_number,
            &w.points,
            &w.rows_digest.as_slice().try_into().unwrap(),
        );
        keys.snacks()
            .public_key()
            .verify(
                Purpose::UploadBatch,
                &msg,
                &accord_agreement::Signature::from_bytes(
                    &w.signature.as_slice().try_into().unwrap(),
                ),
            )
            .unwrap();
        for p in w.points.chunks(accord_psi::POINT_LEN) {
            received.insert(p.to_vec());
        }
    }
    assert!(!received.is_empty());
    // Finish the protocol, then compare with drinks' final tokens as stored by the room.
    let (ra, rb) = tokio::join!(accord_party::sync(&a, true), accord_party::sync(&b, true));
    ra.unwrap();
    rb.unwrap();
    let rows_dir = dir
        .path()
        .join("room/agreements")
        .join(fp.to_string())
        .join("parties/drinks/rows");
    let mut tokens = 0;
    for f in std::fs::read_dir(rows_dir).unwrap() {
        let file = std::fs::File::open(f.unwrap().path()).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let col = b
                .column_by_name("token")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::FixedSizeBinaryArray>()
                .unwrap();
            for i in 0..col.len() {
                tokens += 1;
                assert!(
                    !received.contains(col.value(i)),
                    "drinks received one of its own tokens"
                );
            }
        }
    }
    assert!(tokens > 0);
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_of_the_same_customers_differ_between_agreements() {
    let dir = tempfile::tempdir().unwrap();
    write_messy_files(dir.path(), 120);
    let keys = Keys::new(30);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    let mut all = Vec::new();
    for id in ["e2e-one", "e2e-two"] {
        let text = agreement_text(id, 1, &keys, 10, 10_000);
        let agreement = verified(&text);
        submit(&url, &text).await.unwrap();
        let sub = dir.path().join(id);
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::copy(dir.path().join("drinks.csv"), sub.join("drinks.csv")).unwrap();
        std::fs::copy(dir.path().join("snacks.csv"), sub.join("snacks.csv")).unwrap();
        run_psi(&agreement, &keys, &sub, &url, 64).await;
        let mut tokens = HashSet::new();
        let rows = dir
            .path()
            .join("room/agreements")
            .join(agreement.fingerprint().to_string())
            .join("parties/drinks/rows");
        for f in std::fs::read_dir(rows).unwrap() {
            let file = std::fs::File::open(f.unwrap().path()).unwrap();
            for b in parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
            {
                let b = b.unwrap();
                let col = b
                    .column_by_name("token")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<arrow::array::FixedSizeBinaryArray>()
                    .unwrap();
                tokens.extend((0..col.len()).map(|i| col.value(i).to_vec()));
            }
        }
        assert!(!tokens.is_empty());
        all.push(tokens);
    }
    assert_eq!(
        all[0].intersection(&all[1]).count(),
        0,
        "tokens must not link across agreements"
    );
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploading_twice_and_dropping_the_stream_midway_leave_exactly_the_right_rows() {
    let dir = tempfile::tempdir().unwrap();
    let expected = write_messy_files(dir.path(), 300);
    let keys = Keys::new(40);
    let text = agreement_text("e2e-faults", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();

    // drinks uploads, then uploads the same file again: the second run finds everything stored.
    let a = party(
        &agreement,
        "drinks",
        &keys,
        &dir.path().join("drinks-state"),
        &url,
    );
    let first = accord_party::upload(
        &a,
        &upload_options(dir.path().join("drinks.csv"), 40, false),
    )
    .await
    .unwrap();
    assert_eq!(first.already_stored, 0);
    let again = accord_party::upload(
        &a,
        &upload_options(dir.path().join("drinks.csv"), 40, false),
    )
    .await
    .unwrap();
    assert_eq!(
        again.already_stored, first.batches,
        "the second upload must find every batch stored"
    );
    assert_eq!(
        again.status.unwrap().rows_uploaded,
        first.rows,
        "nothing doubled"
    );

    // snacks: one row per batch, and the client goes away once the room holds a few batches.
    let b = party(
        &agreement,
        "snacks",
        &keys,
        &dir.path().join("snacks-state"),
        &url,
    );
    let b2 = party(
        &agreement,
        "snacks",
        &keys,
        &dir.path().join("snacks-state"),
        &url,
    );
    let input = dir.path().join("snacks.csv");
    let task =
        tokio::spawn(
            async move { accord_party::upload(&b2, &upload_options(input, 1, false)).await },
        );
    let conn = accord_party::Connection::open(
        &url,
        "e2e-faults",
        accord_party::Principal::Party("snacks"),
        &keys.snacks(),
    )
    .await
    .unwrap();
    let mut psi = PsiClient::new(conn.channel());
    let mut interrupted = false;
    for _ in 0..2000 {
        let s = psi
            .status(conn.request(v1::StatusRequest {}))
            .await
            .unwrap()
            .into_inner();
        if s.batches_uploaded >= 3 && !s.upload_complete {
            task.abort();
            interrupted = true;
            break;
        }
        if s.upload_complete {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // The scenario must really happen: an upload stopped after 3 batches, before the end.
    assert!(
        interrupted,
        "the upload was never seen mid-way, so nothing was interrupted"
    );
    let stopped = task.await;
    assert!(
        stopped
            .as_ref()
            .is_err_and(tokio::task::JoinError::is_cancelled),
        "the upload task should have been cancelled mid-way: {stopped:?}"
    );
    let mid = psi
        .status(conn.request(v1::StatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !mid.upload_complete,
        "an interrupted upload is not complete"
    );
    assert!(mid.batches_uploaded >= 3);
    // Resume: the room keeps what it acknowledged, the party sends the rest once.
    let opts = upload_options(dir.path().join("snacks.csv"), 1, true);
    let (resumed, synced) = tokio::join!(
        accord_party::upload(&b, &opts),
        accord_party::sync(&a, true)
    );
    let resumed = resumed.unwrap();
    synced.unwrap();
    // Batches already in flight when the client went away may still land: never fewer.
    assert!(resumed.already_stored >= mid.batches_uploaded);
    let done = resumed.status.as_ref().unwrap();
    assert_eq!(done.rows_uploaded, resumed.rows, "every row exactly once");
    assert_eq!(done.batches_uploaded, resumed.batches);

    let mut ana = analyst(&url, "e2e-faults", &keys).await;
    let batches = grpc_query(&mut ana, "SELECT COUNT(*) FROM overlap")
        .await
        .unwrap();
    let n = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(
        n as usize,
        expected.len(),
        "exactly the right rows after the interruption"
    );
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_input_gets_specific_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(50);
    let text = agreement_text("e2e-hostile", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    let fp = agreement.fingerprint();

    // Unknown agreement; a party that is not in the agreement; the right name, the wrong key:
    // before a proof every refusal is the same words (nothing about the agreement leaks).
    let (drinks_key, snacks_key) = (keys.drinks(), keys.snacks());
    let expected = accord_room::NOT_AUTHORIZED;
    for (agreement_ref, name, key) in [
        ("no-such-agreement", "drinks", &drinks_key),
        ("e2e-hostile", "cheese", &drinks_key),
        ("e2e-hostile", "drinks", &snacks_key),
    ] {
        let err = accord_party::Connection::open(
            &url,
            agreement_ref,
            accord_party::Principal::Party(name),
            key,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(expected), "{name}: {err}");
    }

    let conn = accord_party::Connection::open(
        &url,
        "e2e-hostile",
        accord_party::Principal::Party("drinks"),
        &keys.drinks(),
    )
    .await
    .unwrap();
    let mut psi = PsiClient::new(conn.channel()).max_encoding_message_size(64 * 1024 * 1024);
    let columns = |n: usize| {
        vec![
            v1::Column {
                name: "loyalty_tier".into(),
                values: Some(v1::column::Values::Text(v1::TextValues {
                    values: vec!["g".into(); n],
                    present: vec![],
                })),
            },
            v1::Column {
                name: "region".into(),
                values: Some(v1::column::Values::Text(v1::TextValues {
                    values: vec!["n".into(); n],
                    present: vec![],
                })),
            },
            v1::Column {
                name: "monthly_spend".into(),
                values: Some(v1::column::Values::Number(v1::NumberValues {
                    values: vec![1.0; n],
                    present: vec![],
                })),
            },
        ]
    };
    // Signs a batch as drinks would: the salt, handles and columns are covered too.
    let sign = |mut b: v1::UploadBatch| {
        b.salt = vec![9; 32];
        let digest = accord_proto::rows_digest(&[9; 32], &b.handles, &b.columns);
        let msg = accord_proto::signed::upload_batch(
            fp.as_bytes(),
            "drinks",
            b.batch_number,
            &b.points,
            &digest,
        );
        b.signature = keys
            .drinks()
            .sign(Purpose::UploadBatch, &msg)
            .to_bytes()
            .to_vec();
        b
    };
    let send = |batch: v1::UploadBatch| {
        let mut psi = psi.clone();
        let req = conn.request(futures::stream::iter(vec![v1::UploadMessage {
            kind: Some(v1::upload_message::Kind::Batch(batch)),
        }]));
        async move { psi.upload(req).await }
    };
    // A corrupt point (not a valid ristretto255 encoding), properly signed.
    let mut points = accord_psi::HashDomain::new("x", accord_psi::IdentifierKind::Email)
        .hash_compressed(b"a@b.c")
        .to_vec();
    points.extend_from_slice(&[0xff; 32]);
    let e = send(sign(v1::UploadBatch {
        batch_number: 0,
        handles: vec![1; 32],
        points: points.clone(),
        columns: columns(2),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains("point 1 of the batch is not a valid ristretto255 encoding"),
        "{}",
        e.message()
    );
    // A batch whose handles do not match its points.
    let good: Vec<u8> = (0..2u8)
        .flat_map(|i| {
            accord_psi::HashDomain::new("x", accord_psi::IdentifierKind::Email)
                .hash_compressed(&[i])
        })
        .collect();
    let e = send(sign(v1::UploadBatch {
        batch_number: 0,
        handles: vec![1; 48],
        points: good.clone(),
        columns: columns(2),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // Points of the wrong size.
    let e = send(sign(v1::UploadBatch {
        batch_number: 0,
        handles: vec![1; 32],
        points: good[..63].to_vec(),
        columns: columns(2),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // A bad signature.
    let e = send(v1::UploadBatch {
        batch_number: 0,
        handles: vec![1; 32],
        points: good.clone(),
        columns: columns(2),
        signature: vec![0; 64],
        salt: vec![9; 32],
    })
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("signature"));
    // A column the party does not contribute.
    let mut cols = columns(2);
    cols[0].name = "email".into();
    let e = send(sign(v1::UploadBatch {
        batch_number: 0,
        handles: vec![1; 32],
        points: good.clone(),
        columns: cols,
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("not one drinks contributes"),
        "{}",
        e.message()
    );
    // A metric outside its agreed bounds.
    let mut cols = columns(2);
    cols[2].values = Some(v1::column::Values::Number(v1::NumberValues {
        values: vec![1.0, 9999.0],
        present: vec![],
    }));
    let e = send(sign(v1::UploadBatch {
        batch_number: 0,
        handles: vec![1; 32],
        points: good.clone(),
        columns: cols,
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert!(
        e.message().contains("outside its agreed bounds"),
        "{}",
        e.message()
    );
    // An oversized message.
    let huge = vec![7u8; 9 * 1024 * 1024];
    let e = send(v1::UploadBatch {
        batch_number: 0,
        handles: vec![],
        points: huge,
        columns: vec![],
        signature: vec![],
        salt: vec![],
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
        ),
        "{e:?}"
    );
    // Erasing an unknown handle.
    let e = psi
        .erase(conn.request(v1::EraseRequest {
            handles: vec![9; 16],
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    // An analyst session cannot act as a party.
    let mut ana = analyst(&url, "e2e-hostile", &keys).await;
    let e = PsiClient::new(ana.channel())
        .status(ana.request(v1::StatusRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // Nothing was stored by any of the above.
    let status = psi
        .status(conn.request(v1::StatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.batches_uploaded, 0);
    assert_eq!(status.rows_uploaded, 0);
    // Not sealed: queries are refused with a clear precondition.
    let e = accord_proto::v1::query_client::QueryClient::new(ana.channel())
        .run(ana.request(v1::RunQueryRequest {
            sql: "SELECT COUNT(*) FROM overlap".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let _ = &mut ana;
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_room_refuses_unsupported_privacy_replays_and_stale_versions() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(55);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    let v1 = agreement_text("e2e-life", 1, &keys, 10, 1000);

    // A differential-privacy setting the engine does not support (epsilon above 100):
    // refused with the reason, never ignored.
    let dp = resign(&v1, &keys, |l| {
        if l.starts_with("exact_results") {
            "differential_privacy = { epsilon_per_query = 500.0, budget = 1000.0, delta = 1e-6 }"
                .to_owned()
        } else {
            l.to_owned()
        }
    });
    let e = submit(&url, &dp).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("differential privacy") && e.message().contains("at most 100"),
        "{}",
        e.message()
    );

    // Not signed by every party: refused with the reason.
    let unsigned: String = v1
        .lines()
        .take_while(|l| !l.starts_with("[signatures]"))
        .map(|l| format!("{l}\n"))
        .collect();
    let once = accord_agreement::sign_text(&unsigned, "drinks", &keys.drinks()).unwrap();
    let e = submit(&url, &once).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("snacks"), "{}", e.message());

    // Registered once; the same text again is a no-op.
    let first = submit(&url, &v1).await.unwrap();
    assert!(!first.already_registered);
    assert!(submit(&url, &v1).await.unwrap().already_registered);
    // A changed agreement under the same version is refused; a higher version supersedes.
    let changed = resign(&v1, &keys, |l| {
        if l.starts_with("purpose") {
            "purpose = \"Something else\"".to_owned()
        } else {
            l.to_owned()
        }
    });
    let e = submit(&url, &changed).await.unwrap_err();
    assert!(e.message().contains("higher"), "{}", e.message());
    let v2 = resign(&changed, &keys, |l| {
        if l.starts_with("version") {
            "version = 2".to_owned()
        } else {
            l.to_owned()
        }
    });
    let second = submit(&url, &v2).await.unwrap();
    assert_eq!(second.superseded, first.fingerprint);
    // The superseded version can never come back.
    let e = submit(&url, &v1).await.unwrap_err();
    assert!(e.message().contains("superseded"), "{}", e.message());
    assert!(
        !dir.path()
            .join("room/agreements")
            .join(&first.fingerprint)
            .exists()
    );

    // After a restart the room still knows all of this.
    room.shutdown().await;
    let room = start_room(&dir.path().join("room")).await;
    let url = accord_tests::url(&room);
    let e = submit(&url, &v1).await.unwrap_err();
    assert!(e.message().contains("superseded"), "{}", e.message());
    assert!(submit(&url, &v2).await.unwrap().already_registered);
    room.shutdown().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_stopped_while_ending_or_superseding_finishes_the_job_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(56);
    let v1 = agreement_text("e2e-crash", 1, &keys, 10, 1000);
    let v2 = resign(&v1, &keys, |l| {
        if l.starts_with("version") {
            "version = 2".to_owned()
        } else {
            l.to_owned()
        }
    });
    let fp1 = verified(&v1).fingerprint().to_string();
    let fp2 = verified(&v2).fingerprint().to_string();

    // A reference room that superseded v1 by v2 normally: its files show what a finished
    // supersession leaves behind (v2's directory, v1's tombstone).
    let reference = dir.path().join("reference");
    let room = start_room(&reference).await;
    submit(&url(&room), &v1).await.unwrap();
    assert_eq!(submit(&url(&room), &v2).await.unwrap().superseded, fp1);
    room.shutdown().await;

    // Stopped between registering v2 and ending v1: both versions on disk, no tombstone.
    let mid_supersede = dir.path().join("mid-supersede");
    let room = start_room(&mid_supersede).await;
    submit(&url(&room), &v1).await.unwrap();
    room.shutdown().await;
    copy_dir(
        &reference.join("agreements").join(&fp2),
        &mid_supersede.join("agreements").join(&fp2),
    );
    let room = start_room(&mid_supersede).await;
    let e = submit(&url(&room), &v1).await.unwrap_err();
    assert!(e.message().contains("superseded"), "{}", e.message());
    assert!(submit(&url(&room), &v2).await.unwrap().already_registered);
    assert!(!mid_supersede.join("agreements").join(&fp1).exists());
    room.shutdown().await;

    // Stopped between recording v1's tombstone and deleting its data.
    let mid_end = dir.path().join("mid-end");
    let room = start_room(&mid_end).await;
    submit(&url(&room), &v1).await.unwrap();
    room.shutdown().await;
    std::fs::copy(
        reference.join("tombstones").join(format!("{fp1}.json")),
        mid_end.join("tombstones").join(format!("{fp1}.json")),
    )
    .unwrap();
    assert!(mid_end.join("agreements").join(&fp1).exists());
    let room = start_room(&mid_end).await;
    assert!(!mid_end.join("agreements").join(&fp1).exists());
    let e = submit(&url(&room), &v1).await.unwrap_err();
    assert!(e.message().contains("superseded"), "{}", e.message());
    room.shutdown().await;
}
