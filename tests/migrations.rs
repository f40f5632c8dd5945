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
