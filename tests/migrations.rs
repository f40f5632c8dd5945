//! On-disk format migrations (issue 17), tested on REAL data of the previous format: the
//! fixture `tests/fixtures/room-format-1/` was written by the format-1 code itself (the
//! `#[ignore]`d `generate_room_format_1_fixture` below, run with that code:
//! `cargo test --workspace --test migrations -- --ignored generate`), with the answer an analyst
//! got from it recorded next to it. A newer build must migrate it and answer the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use accord_agreement::{Contribution, ManifestBuilder, RoomSection};
use accord_proto::v1::{self, agreements_client::AgreementsClient};
use accord_tests::*;
use chrono::{Duration as ChronoDuration, SubsecRound as _, Utc};

/// The keys of the fixture's agreements (`Keys::new(SALT)`; the room key is [`ROOM_SEED`]).
const SALT: u8 = 217;
/// The analyst's aggregate query whose answer the fixture records.
const QUERY: &str = "SELECT drinks_loyalty_tier, COUNT(*) AS n, SUM(drinks_monthly_spend) AS spend \
FROM overlap GROUP BY drinks_loyalty_tier ORDER BY drinks_loyalty_tier";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Like `agreement_text`, but in force for about ten years (the fixture must stay queryable)
/// and with the smallest k a manifest may have (10), so a few dozen customers make groups.
fn long_agreement(id: &str, keys: &Keys) -> String {
    let now = Utc::now().trunc_subsecs(0);
    let room = RoomSection {
        operator: "Test Rooms Ltd".into(),
        public_key: keys.room().public_key(),
    };
    let text = ManifestBuilder::new(
        id,
        "Migration fixture: joint promotions",
        now - ChronoDuration::hours(1),
        now + ChronoDuration::days(3650),
        room,
    )
    .min_group_size(10)
    .party(
        "drinks",
        keys.drinks().public_key(),
        1000,
        "consent",
        [
            Contribution::dimension("loyalty_tier"),
            Contribution::dimension("region"),
            Contribution::metric("monthly_spend", 0.0, 500.0),
        ],
    )
    .party(
        "snacks",
        keys.snacks().public_key(),
        1000,
        "consent",
        [
            Contribution::dimension("favourite"),
            Contribution::metric("weekly_spend", 0.0, 100.0),
        ],
    )
    .analyst("ana@drinks.example", "drinks", keys.analyst().public_key())
    .exact_results()
    .to_toml();
    let text = accord_agreement::sign_text(&text, "drinks", &keys.drinks()).unwrap();
    accord_agreement::sign_text(&text, "snacks", &keys.snacks()).unwrap()
}

/// 60 customers at each party, 48 of them shared (16 in each loyalty tier).
fn write_customers(dir: &Path) {
    let tiers = ["bronze", "gold", "silver"];
    let drinks: Vec<Customer> = (0..60)
        .map(|i| Customer {
            email: format!("customer{i}@example.org"),
            consent: true,
            cells: vec![
                tiers[i % 3].into(),
                if i % 2 == 0 { "north" } else { "south" }.into(),
                (10 + 7 * i).to_string(),
            ],
        })
        .collect();
    let snacks: Vec<Customer> = (12..72)
        .map(|i| Customer {
            email: format!("customer{i}@example.org"),
            consent: true,
            cells: vec![
                if i % 2 == 0 { "crisps" } else { "nuts" }.into(),
                (i % 40).to_string(),
            ],
        })
        .collect();
    write_csv(&dir.join("drinks.csv"), "drinks", &drinks);
    write_csv(&dir.join("snacks.csv"), "snacks", &snacks);
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

fn render(batches: &[arrow::array::RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string()
}

/// Writes `tests/fixtures/room-format-1/`: `data/` is a room data directory written by this
/// build (format 1) holding one sealed agreement (`migration-sealed`) and one revoked one
/// (`migration-revoked`, so `tombstones.json` exists); `expected.json` records both
/// fingerprints and the analyst's answer to [`QUERY`] as this build gave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "writes the committed fixture; run only with the format-1 code"]
async fn generate_room_format_1_fixture() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let keys = Keys::new(SALT);
    let sealed = long_agreement("migration-sealed", &keys);
    let revoked = long_agreement("migration-revoked", &keys);
    let room = start_room(&data).await;
    let url = url(&room);

    submit(&url, &sealed).await.unwrap();
    write_customers(work.path());
    run_psi(&verified(&sealed), &keys, work.path(), &url, 16).await;
    let mut ana = analyst(&url, "migration-sealed", &keys).await;
    let answer = render(&grpc_query(&mut ana, QUERY).await.unwrap());

    submit(&url, &revoked).await.unwrap();
    let revocation = accord_agreement::Revocation::sign(
        &verified(&revoked),
        "drinks",
        "campaign cancelled",
        Utc::now(),
        &keys.drinks(),
    )
    .unwrap();
    AgreementsClient::new(accord_party::client::channel(&url).await.unwrap())
        .revoke(v1::RevokeRequest {
            revocation_toml: revocation.to_toml(),
        })
        .await
        .unwrap();
    room.shutdown().await;
    assert_eq!(
        std::fs::read_to_string(data.join("FORMAT")).unwrap(),
        "accord-room-data 1\n",
        "run the generator with the format-1 code"
    );
    assert!(data.join("tombstones.json").is_file());

    let out = fixture("room-format-1");
    let _ = std::fs::remove_dir_all(&out);
    copy_dir(&data, &out.join("data"));
    let expected = serde_json::json!({
        "written_by": format!("accord {} (room data directory format 1)", env!("CARGO_PKG_VERSION")),
        "keys_salt": SALT,
        "sealed": {
            "id": "migration-sealed",
            "fingerprint": verified(&sealed).fingerprint().to_string(),
        },
        "revoked": {
            "id": "migration-revoked",
            "fingerprint": verified(&revoked).fingerprint().to_string(),
        },
        "query": QUERY,
        "answer": answer,
    });
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
    std::fs::write(out.join("revoked-agreement.toml"), &revoked).unwrap();
}

/// What the generator recorded.
struct Expected {
    sealed_id: String,
    sealed_fp: String,
    revoked_fp: String,
    revoked_text: String,
    answer: String,
}

fn expected() -> Expected {
    let dir = fixture("room-format-1");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    assert_eq!(json["query"], QUERY, "the fixture recorded another query");
    let s = |v: &serde_json::Value| v.as_str().unwrap().to_owned();
    Expected {
        sealed_id: s(&json["sealed"]["id"]),
        sealed_fp: s(&json["sealed"]["fingerprint"]),
        revoked_fp: s(&json["revoked"]["fingerprint"]),
        revoked_text: std::fs::read_to_string(dir.join("revoked-agreement.toml")).unwrap(),
        answer: s(&json["answer"]),
    }
}

/// A copy of the fixture's format-1 data directory in `to`. Git does not keep file modes, so
/// the room key is made owner-only again, as the room wrote it (the room refuses it otherwise).
fn copy_fixture(to: &Path) {
    copy_dir(&fixture("room-format-1").join("data"), to);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = accord_room::identity::key_path(to);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(to.join("FORMAT")).unwrap(),
        "accord-room-data 1\n"
    );
    assert!(to.join("tombstones.json").is_file());
}

/// The tombstones the format-1 code wrote, by fingerprint.
fn format_1_tombstones() -> std::collections::BTreeMap<String, accord_room::Tombstone> {
    let path = fixture("room-format-1").join("data/tombstones.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Starts a room on the (copied) fixture in `data`, and checks everything the format-1 room
/// could do is still done the same after the migration.
async fn check_migrated_room(data: &Path) {
    let e = expected();
    let keys = Keys::new(SALT);
    let room = start_room(data).await;
    let url = url(&room);

    // Format 2 on disk: one tombstone file, the same tombstone; no tombstones.json.
    assert_eq!(
        std::fs::read_to_string(data.join("FORMAT")).unwrap(),
        "accord-room-data 2\n"
    );
    assert!(!data.join("tombstones.json").exists());
    let names: Vec<String> = std::fs::read_dir(data.join("tombstones"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [format!("{}.json", e.revoked_fp)]);
    let moved: accord_room::Tombstone =
        serde_json::from_slice(&std::fs::read(data.join("tombstones").join(&names[0])).unwrap())
            .unwrap();
    assert_eq!(moved, format_1_tombstones()[&e.revoked_fp]);
    assert_eq!(moved.reason, accord_room::EndReason::Revoked);
    let leftovers: Vec<_> = files_under(data)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The sealed agreement answers the analyst exactly as the format-1 room did.
    let mut ana = analyst(&url, &e.sealed_id, &keys).await;
    let answer = render(&grpc_query(&mut ana, QUERY).await.unwrap());
    assert_eq!(answer, e.answer);

    // The revoked agreement is still ended: it can never be registered again.
    let refused = submit(&url, &e.revoked_text).await.unwrap_err();
    assert!(
        refused.message().contains("was revoked")
            && refused.message().contains("never be registered again"),
        "{}",
        refused.message()
    );

    // Both audit logs verify against the room's signed heads and say what happened.
    let (sealed_log, summary) = party_audit_log(&url, &e.sealed_fp, "drinks", &keys.drinks()).await;
    assert_eq!(summary.entries as usize, sealed_log.len());
    assert!(
        sealed_log
            .iter()
            .any(|l| l.contains("\"agreement_registered\""))
    );
    let (revoked_log, _) = party_audit_log(&url, &e.revoked_fp, "snacks", &keys.snacks()).await;
    let events: Vec<String> = revoked_log
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
        .collect();
    assert_eq!(
        events,
        [
            "\"agreement_registered\"",
            "\"revoked\"",
            "\"data_deleted\""
        ]
    );
    room.shutdown().await;

    // A second start finds format 2: nothing to migrate, the same answer.
    let before = files_under(data).len();
    let room = start_room(data).await;
    let mut ana = analyst(&accord_tests::url(&room), &e.sealed_id, &keys).await;
    assert_eq!(
        render(&grpc_query(&mut ana, QUERY).await.unwrap()),
        e.answer
    );
    room.shutdown().await;
    assert_eq!(files_under(data).len(), before);
}

/// Issue 17, done when: data written by the previous format is migrated and queried correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_format_1_room_is_migrated_and_answers_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_fixture(&data);
    check_migrated_room(&data).await;

    // The same data from before format files existed (no FORMAT file) is format 1 too.
    let legacy = dir.path().join("legacy");
    copy_fixture(&legacy);
    std::fs::remove_file(legacy.join("FORMAT")).unwrap();
    check_migrated_room(&legacy).await;
}

/// The fixture as a `kill -9` during its migration leaves it, at the two points where the
/// real data is half-way (see `crates/room/src/room/tombstones_tests.rs` for every point, and
/// why building a state is the same as killing the room there): the tombstone file written
/// but `tombstones.json` still there, beside the temporary file of a format-1 room stopped
/// while rewriting it; and `tombstones.json` removed with `FORMAT` still 1, beside the
/// temporary file of the `FORMAT` write. The next start finishes, and answers as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_format_1_room_killed_mid_migration_finishes_it_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let e = expected();
    let tombstone = &format_1_tombstones()[&e.revoked_fp];
    let mut bytes = serde_json::to_vec_pretty(tombstone).unwrap();
    bytes.push(b'\n');
    for (i, json_removed) in [false, true].into_iter().enumerate() {
        let data = dir.path().join(format!("state-{i}"));
        copy_fixture(&data);
        std::fs::create_dir(data.join("tombstones")).unwrap();
        std::fs::write(
            data.join("tombstones")
                .join(format!("{}.json", e.revoked_fp)),
            &bytes,
        )
        .unwrap();
        if json_removed {
            std::fs::remove_file(data.join("tombstones.json")).unwrap();
            std::fs::write(data.join(".FORMAT.tmp-000004d200000003"), "accord-room").unwrap();
        } else {
            std::fs::write(
                data.join(".tombstones.json.tmp-000004d200000001"),
                "{\n  \"5175",
            )
            .unwrap();
        }
        check_migrated_room(&data).await;
    }
}
