//! Revocation ordering under concurrency, made deterministic: the test holds the agreement's
//! read lock exactly as a query does from admission until its result is encoded, and checks
//! that a revocation arriving meanwhile is not acknowledged (no tombstone, data still there,
//! the call still pending) until the lock is released. No sleeps: the test waits for the
//! revocation to be queued on the lock, which it can observe.

use super::*;
use accord_agreement::{Revocation, SecretKey};

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

pub(crate) fn agreement_text() -> String {
    use accord_agreement::{Aggregate, Contribution, ManifestBuilder, RoomSection};
    use chrono::SubsecRound as _;
    let now = Utc::now().trunc_subsecs(0);
    let room = RoomSection {
        operator: "Test room".into(),
        public_key: key(6).public_key(),
    };
    let text = ManifestBuilder::new(
        "lock-test",
        "Revocation ordering test",
        now - chrono::Duration::hours(1),
        now + chrono::Duration::days(1),
        room,
    )
    .min_group_size(10)
    .party(
        "drinks",
        key(1).public_key(),
        100,
        "consent",
        [Contribution::dimension("tier")],
    )
    .party(
        "snacks",
        key(2).public_key(),
        100,
        "consent",
        [Contribution::metric("spend", 0.0, 10.0)],
    )
    .analyst("ana", "drinks", key(3).public_key())
    .aggregates([Aggregate::Count])
    .exact_results()
    .to_toml();
    let text = accord_agreement::sign_text(&text, "drinks", &key(1)).unwrap();
    accord_agreement::sign_text(&text, "snacks", &key(2)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_waits_for_queries_in_flight_and_none_start_after_it() {
    let dir = tempfile::tempdir().unwrap();
    crate::identity::install(dir.path(), &key(6)).unwrap();
    let room = Room::open(dir.path()).unwrap();
    let text = agreement_text();
    room.submit(&text).await.unwrap();
    let agreement = accord_agreement::verify(&text, Utc::now()).unwrap();
    let fp = agreement.fingerprint();
    let slot = lock(&room.inner.registry)
        .by_fingerprint
        .get(&fp)
        .cloned()
        .unwrap();
    let data = dir.path().join("agreements").join(fp.to_string());

    // A query in flight: it holds the read side, as `Room::query` does until its answer
    // is encoded.
    let in_flight = slot.live.read().await;
    let revocation = Revocation::sign(&agreement, "drinks", "stop", Utc::now(), &key(1)).unwrap();
    let revoking = {
        let room = room.clone();
        let toml = revocation.to_toml();
        tokio::spawn(async move { room.revoke(&toml).await })
    };
    // Wait (without a time bound as proof) until the revocation is queued on the lock: a
    // queued writer takes the free permits, so a new reader cannot get in.
    let mut spins = 0u32;
    loop {
        match slot.live.try_read() {
            Ok(guard) => drop(guard),
            Err(_) => break,
        }
        spins += 1;
        assert!(
            spins < 1_000_000,
            "the revocation never queued on the agreement's lock"
        );
        tokio::task::yield_now().await;
    }
    // While the query holds its lock, nothing of the revocation has happened.
    assert!(
        !revoking.is_finished(),
        "revocation acknowledged during a query"
    );
    assert!(data.exists(), "data deleted under a running query");
    assert!(
        !lock(&room.inner.registry)
            .tombstones
            .contains_key(&fp.to_string()),
        "tombstone written under a running query"
    );
    assert!(in_flight.store.is_some(), "the query still sees its data");
    // The query finishes; then the revocation completes.
    drop(in_flight);
    let receipt = revoking.await.unwrap().unwrap();
    assert_eq!(receipt.fingerprint, fp.to_string());
    assert!(!data.exists());
    // After the acknowledgement no query runs: the slot has no data and the room refuses.
    let after = room
        .query(&slot, "ana", "SELECT COUNT(*) FROM overlap", |_| Ok(()))
        .await;
    assert!(
        matches!(after, Err(RoomError::FailedPrecondition(_))),
        "{after:?}"
    );
    assert!(
        !lock(&room.inner.registry).by_fingerprint.contains_key(&fp),
        "the revoked agreement is no longer in force"
    );
}

#[test]
fn a_data_directory_of_a_newer_format_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("room");
    drop(Room::open(&data).unwrap());
    assert_eq!(
        std::fs::read_to_string(data.join("FORMAT")).unwrap(),
        format!("accord-room-data {ROOM_FORMAT}\n")
    );
    // A room directory from before format files is format 1: it opens and is migrated.
    std::fs::remove_file(data.join("FORMAT")).unwrap();
    drop(Room::open(&data).unwrap());
    assert_eq!(
        std::fs::read_to_string(data.join("FORMAT")).unwrap(),
        format!("accord-room-data {ROOM_FORMAT}\n")
    );
    // One written by a newer Accord is refused by name, and nothing in it changes.
    std::fs::write(data.join("FORMAT"), "accord-room-data 9\n").unwrap();
    let key_before = std::fs::read(data.join("room.key")).unwrap();
    let e = Room::open(&data).map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains("room data directory format 9")
            && e.contains(&format!("reads format {ROOM_FORMAT}"))
            && e.contains("Upgrade accord"),
        "{e}"
    );
    assert_eq!(std::fs::read(data.join("room.key")).unwrap(), key_before);
    assert_eq!(
        std::fs::read_to_string(data.join("FORMAT")).unwrap(),
        "accord-room-data 9\n"
    );
}

#[tokio::test]
async fn the_status_report_reads_without_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    crate::identity::install(dir.path(), &key(6)).unwrap();
    let room = Room::open(dir.path()).unwrap();
    let text = agreement_text();
    let submitted = room.submit(&text).await.unwrap();
    let fp = submitted.fingerprint.clone();
    let s = crate::status::read_status(dir.path()).unwrap();
    assert_eq!((s.format, s.build_format), (ROOM_FORMAT, ROOM_FORMAT));
    assert_eq!(s.room_public_key, Some(key(6).public_key().to_string()));
    assert_eq!(s.agreements.len(), 1);
    let a = &s.agreements[0];
    assert_eq!(
        (a.id.as_str(), a.version, a.state),
        ("lock-test", 1, "collecting")
    );
    assert_eq!(a.fingerprint, fp);
    // The head the room signs is the head the report shows.
    assert_eq!(a.audit_entries, submitted.head.entries);
    assert_eq!(a.audit_head, hex::encode(submitted.head.hash));
    assert!(s.ended.is_empty());
    assert!(s.disk_bytes > 0);

    // A half-written last line (a crash mid-append) is not counted, and not repaired: the
    // report changes nothing on disk.
    let log = dir.path().join("audit").join(format!("{fp}.jsonl"));
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(b"{\"seq\":2,\"prev\":");
    std::fs::write(&log, &bytes).unwrap();
    let again = crate::status::read_status(dir.path()).unwrap();
    assert_eq!(again.agreements[0].audit_entries, a.audit_entries);
    assert_eq!(
        std::fs::read(&log).unwrap(),
        bytes,
        "the log was not touched"
    );
    bytes.truncate(bytes.len() - b"{\"seq\":2,\"prev\":".len());
    std::fs::write(&log, &bytes).unwrap();

    // An ended agreement is listed with why, and its log (which outlives the data) counted.
    let agreement = accord_agreement::verify(&text, Utc::now()).unwrap();
    let revocation = Revocation::sign(&agreement, "drinks", "stop", Utc::now(), &key(1)).unwrap();
    let revoked = room.revoke(&revocation.to_toml()).await.unwrap();
    let s = crate::status::read_status(dir.path()).unwrap();
    assert!(s.agreements.is_empty());
    assert_eq!(s.ended.len(), 1);
    assert_eq!(s.ended[0].reason, "revoked");
    assert_eq!(s.ended[0].audit_entries, revoked.head.entries);

    // A directory of a newer format is refused by name.
    std::fs::write(dir.path().join("FORMAT"), "accord-room-data 5\n").unwrap();
    let e = crate::status::read_status(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"accord-room-data 5\"") && e.contains(&format!("reads format {ROOM_FORMAT}")),
        "{e}"
    );
    // And a path that is no room at all is said so.
    let e = crate::status::read_status(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a room data directory"), "{e}");
}
