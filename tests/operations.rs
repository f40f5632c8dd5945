//! Operating a room across disasters (issue 17): a backup taken while the parties upload
//! restores to a room that seals the same overlap, and a room restored to before what its
//! parties saw says so in its audit log instead of forking it silently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use accord_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_during_an_upload_restores_to_a_room_that_seals_the_same_overlap_and_says_it_went_back()
 {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(60);
    let data_a = dir.path().join("room-a");
    let room_a = start_room(&data_a).await;
    let url_a = url(&room_a);
    let text = agreement_text("ops", 1, &keys, 10, 10_000);
    submit(&url_a, &text).await.unwrap();
    let agreement = verified(&text);
    let fp = agreement.fingerprint().to_string();
    write_csv(
        &dir.path().join("drinks.csv"),
        "drinks",
        &uniform_customers(0..600, "drinks"),
    );
    write_csv(
        &dir.path().join("snacks.csv"),
        "snacks",
        &uniform_customers(400..1000, "snacks"),
    );

    // Both parties upload in small batches while backups are taken one after another.
    let upload = {
        let (agreement, root, url) = (agreement.clone(), dir.path().to_path_buf(), url_a.clone());
        tokio::spawn(async move { run_psi(&agreement, &keys, &root, &url, 10).await })
    };
    let mut mid_upload = None;
    let mut taken = 0;
    while !upload.is_finished() {
        taken += 1;
        let dest = dir.path().join(format!("backup-{taken}"));
        let from = data_a.clone();
        let to = dest.clone();
        let m = tokio::task::spawn_blocking(move || accord_room::backup::backup(&from, &to))
            .await
            .unwrap()
            .unwrap();
        let batches = m
            .files
            .keys()
            .filter(|k| k.contains("/parties/") && k.ends_with(".parquet"))
            .count();
        let sealed = m.files.keys().any(|k| k.ends_with("snapshot.parquet"));
        if batches > 0 && !sealed && mid_upload.is_none() {
            mid_upload = Some((dest, batches));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    upload.await.unwrap();
    let (backup, batches) = mid_upload.unwrap_or_else(|| {
        panic!(
            "none of the {taken} backups caught the upload in progress (batches stored, not sealed)"
        )
    });
    let expected = overlap_count(&url_a, "ops", &keys).await;
    assert_eq!(expected, 200);
    room_a.shutdown().await;

    // Room A's disk is lost; the backup is checked and restored, and a room starts on it.
    let data_b = dir.path().join("room-b");
    accord_room::backup::restore(&backup, &data_b).unwrap();
    let room_b = start_room(&data_b).await;
    let url_b = url(&room_b);
    // The parties run again with the state directories they had: their uploads resume (the
    // batches after the backup are sent again) and the room seals the same overlap.
    run_psi(&agreement, &keys, dir.path(), &url_b, 10).await;
    assert_eq!(
        overlap_count(&url_b, "ops", &keys).await,
        expected,
        "the backup held {batches} batch files"
    );
    // The parties had seen later heads than the backup holds: the room said so in its log,
    // naming the head, instead of continuing as if nothing had happened. (Both parties saw
    // the same last head, sealed; it is declared once, by whoever presented it first.)
    let (entries, _) = party_audit_log(&url_b, &fp, "drinks", &keys.drinks()).await;
    let went_back: Vec<&String> = entries
        .iter()
        .filter(|e| e.contains("\"event\":\"went_back\""))
        .collect();
    assert!(
        !went_back.is_empty(),
        "the restored room did not say it went back: {entries:#?}"
    );
    for e in &went_back {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        assert!(
            v["seen_entries"].as_u64().unwrap() > v["log_entries"].as_u64().unwrap(),
            "{e}"
        );
        assert!(
            v["presented_by"].as_str().unwrap().starts_with("party "),
            "{e}"
        );
    }
    // The operator's status report says so too.
    let status = accord_room::status::read_status(&data_b).unwrap();
    let a = status
        .agreements
        .iter()
        .find(|a| a.fingerprint == fp)
        .unwrap();
    assert_eq!(a.audit_went_back, went_back.len() as u64);
    // Once declared, a head is not declared again: a new session adds no entry.
    let again = party_audit_log(&url_b, &fp, "snacks", &keys.snacks())
        .await
        .0;
    assert_eq!(
        again.iter().filter(|e| e.contains("went_back")).count(),
        went_back.len()
    );
    room_b.shutdown().await;
}

/// Every call holds the data directory's shared lock while it is served: a backup holding it
/// exclusively makes calls wait (not fail), and they complete once it is released. Without
/// the room's lock layer the submission below would complete at once, and a backup could
/// catch a call half-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_wait_while_a_backup_holds_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(61);
    let data = dir.path().join("room");
    let room = start_room(&data).await;
    let url = url(&room);
    let held = accord_fs::snapshot::DirLock::new(&data)
        .exclusive()
        .unwrap();
    let text = agreement_text("held", 1, &keys, 10, 1_000);
    let call = {
        let (url, text) = (url.clone(), text.clone());
        tokio::spawn(async move { submit(&url, &text).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !call.is_finished(),
        "the call completed while a backup held the data directory"
    );
    assert!(
        !data.join("agreements").read_dir().unwrap().any(|_| true),
        "nothing is written while the backup holds the directory"
    );
    drop(held);
    let submitted = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the call resumes once the backup is done")
        .unwrap();
    submitted.expect("and succeeds");
    assert!(data.join("agreements").read_dir().unwrap().any(|_| true));
    room.shutdown().await;
}

/// A customer erased after the backup was taken is in the restored room again (its files
/// predate the erasure). The party's next session meets the room's `went_back` declaration and
/// sends its erasures again, so the customer is gone again without anyone having to remember.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasures_made_after_a_backup_are_made_again_once_the_restored_room_says_it_went_back() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(62);
    let data_a = dir.path().join("room-a");
    let room_a = start_room(&data_a).await;
    let url_a = url(&room_a);
    let text = agreement_text("erase-again", 1, &keys, 10, 10_000);
    submit(&url_a, &text).await.unwrap();
    let agreement = verified(&text);
    write_csv(
        &dir.path().join("drinks.csv"),
        "drinks",
        &uniform_customers(0..300, "drinks"),
    );
    write_csv(
        &dir.path().join("snacks.csv"),
        "snacks",
        &uniform_customers(200..500, "snacks"),
    );
    run_psi(&agreement, &keys, dir.path(), &url_a, 100).await;
    assert_eq!(overlap_count(&url_a, "erase-again", &keys).await, 100);
    let backup = dir.path().join("backup");
    accord_room::backup::backup(&data_a, &backup).unwrap();

    // After the backup, a shared customer asks drinks to forget them.
    let ids = dir.path().join("forget.txt");
    std::fs::write(&ids, "c250@example.org\n").unwrap();
    let drinks_a = party(
        &agreement,
        "drinks",
        &keys,
        &dir.path().join("drinks-state"),
        &url_a,
    );
    assert_eq!(
        accord_party::erase(&drinks_a, &ids).await.unwrap().erased,
        1
    );
    assert_eq!(overlap_count(&url_a, "erase-again", &keys).await, 99);
    room_a.shutdown().await;

    let data_b = dir.path().join("room-b");
    accord_room::backup::restore(&backup, &data_b).unwrap();
    let room_b = start_room(&data_b).await;
    let url_b = url(&room_b);
    assert_eq!(
        overlap_count(&url_b, "erase-again", &keys).await,
        100,
        "the restored room holds the customer again"
    );
    // Drinks' next session (any call) finds the room behind its remembered head.
    let drinks_b = party(
        &agreement,
        "drinks",
        &keys,
        &dir.path().join("drinks-state"),
        &url_b,
    );
    accord_party::status(&drinks_b).await.unwrap();
    let fp = agreement.fingerprint().to_string();
    let (entries, _) = party_audit_log(&url_b, &fp, "drinks", &keys.drinks()).await;
    assert_eq!(
        overlap_count(&url_b, "erase-again", &keys).await,
        99,
        "the erasure was made again: {entries:#?}"
    );
    let went_back = entries
        .iter()
        .position(|e| e.contains("\"went_back\""))
        .unwrap();
    assert!(
        entries[went_back..]
            .iter()
            .any(|e| e.contains("\"erasure\"") && e.contains("\"rows\":1")),
        "the erasure after the declaration: {entries:#?}"
    );
    room_b.shutdown().await;
}

/// An upload is one long client stream: a backup must not wait for all of it (nor hold every
/// other call back meanwhile). Upload and ReturnWork take the data directory's lock per
/// message, so a backup taken while an upload stream is open completes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_does_not_wait_for_an_open_upload_stream() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(63);
    let data = dir.path().join("room");
    let room = start_room(&data).await;
    let url = url(&room);
    let text = agreement_text("long-upload", 1, &keys, 10, 1_000);
    submit(&url, &text).await.unwrap();
    let fp = verified(&text).fingerprint().to_string();
    let conn = accord_party::Connection::open(
        &url,
        &fp,
        accord_party::Principal::Party("drinks"),
        &keys.drinks(),
    )
    .await
    .unwrap();
    // The stream is open and nothing is sent yet: a party still reading its next batch.
    let (tx, rx) = tokio::sync::mpsc::channel::<accord_proto::v1::UploadMessage>(1);
    let mut psi = accord_proto::v1::psi_client::PsiClient::new(conn.channel());
    let request = conn.request(tokio_stream::wrappers::ReceiverStream::new(rx));
    let upload = tokio::spawn(async move { psi.upload(request).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!upload.is_finished());
    let (from, to) = (data.clone(), dir.path().join("backup"));
    let backup = tokio::task::spawn_blocking(move || accord_room::backup::backup(&from, &to));
    tokio::time::timeout(Duration::from_secs(10), backup)
        .await
        .expect("the backup waited for the open upload stream")
        .unwrap()
        .unwrap();
    drop(tx);
    let response = upload.await.unwrap().unwrap().into_inner();
    assert_eq!(response.batches_stored, 0);
    room.shutdown().await;
}
