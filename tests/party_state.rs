//! The party's local state cannot silently lose what erasure needs (issue 11 §6), and a party
//! whose session ended or whose room restarted authenticates again instead of failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use accord_party::PartyError;
use accord_proto::v1::{self, agreements_client::AgreementsClient};
use accord_tests::*;

fn handles_file(state: &Path) -> Vec<std::path::PathBuf> {
    files_under(state)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "uploaded.handles"))
        .collect()
}

/// Today's bug: a second `party upload` with a different file printed "uploaded N rows", sent
/// nothing, and overwrote the local record, so a later erase called uploaded customers "never
/// uploaded" and exited 0 while the room still held them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_different_input_after_a_completed_upload_is_refused_and_erasure_still_accounts_for_everyone()
 {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(40);
    let text = agreement_text("state-reupload", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    write_csv(
        &dir.path().join("a.csv"),
        "drinks",
        &uniform_customers(0..60, "drinks"),
    );
    write_csv(
        &dir.path().join("b.csv"),
        "drinks",
        &uniform_customers(100..130, "drinks"),
    );
    write_csv(
        &dir.path().join("snacks.csv"),
        "snacks",
        &uniform_customers(0..80, "snacks"),
    );
    let state = dir.path().join("drinks-state");
    let drinks = party(&agreement, "drinks", &keys, &state, &url);

    let first = accord_party::upload(
        &drinks,
        &upload_options(dir.path().join("a.csv"), 16, false),
    )
    .await
    .unwrap();
    assert_eq!(
        (first.rows, first.batches, first.already_stored),
        (60, 4, 0)
    );
    let record = std::fs::read(&handles_file(&state)[0]).unwrap();
    assert_eq!(record.len(), 60 * 16);

    // A different input is refused, and neither the room nor the record changes.
    let err = accord_party::upload(
        &drinks,
        &upload_options(dir.path().join("b.csv"), 16, false),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PartyError::Refused(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("different input") && msg.contains("new agreement version"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&handles_file(&state)[0]).unwrap(), record);
    let status = accord_party::status(&drinks).await.unwrap();
    assert_eq!(status.rows_uploaded, 60);

    // The same input again is idempotent: nothing sent, nothing changed.
    let again = accord_party::upload(
        &drinks,
        &upload_options(dir.path().join("a.csv"), 16, false),
    )
    .await
    .unwrap();
    assert_eq!((again.rows, again.already_stored), (60, 4));
    assert_eq!(std::fs::read(&handles_file(&state)[0]).unwrap(), record);

    // Seal, then erase: one uploaded customer, one from the refused file, one invalid line.
    let snacks = party(
        &agreement,
        "snacks",
        &keys,
        &dir.path().join("snacks-state"),
        &url,
    );
    let snacks_options = upload_options(dir.path().join("snacks.csv"), 32, true);
    let (s, d) = tokio::join!(
        accord_party::upload(&snacks, &snacks_options),
        accord_party::sync(&drinks, true)
    );
    s.unwrap();
    assert!(d.unwrap().1.tokens_complete);
    std::fs::write(
        dir.path().join("erase.txt"),
        "c5@example.org\nc110@example.org\nnot an email\n",
    )
    .unwrap();
    let o = accord_party::erase(&drinks, &dir.path().join("erase.txt"))
        .await
        .unwrap();
    assert_eq!(
        (o.requested, o.invalid, o.erased, o.already_erased),
        (3, 1, 1, 0)
    );
    assert_eq!(o.unaccounted, vec![(2, "c110@example.org".to_owned())]);
    // The record of the upload is never rewritten; a second erasure knows c5 is gone.
    assert_eq!(std::fs::read(&handles_file(&state)[0]).unwrap(), record);
    let o = accord_party::erase(&drinks, &dir.path().join("erase.txt"))
        .await
        .unwrap();
    assert_eq!((o.erased, o.already_erased, o.unaccounted.len()), (0, 1, 1));
    room.shutdown().await;
}

/// `party forget` refuses while the room still serves the agreement, and after revocation
/// deletes the secrets and records, saying what it deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forget_refuses_while_in_force_and_deletes_after_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(41);
    let text = agreement_text("state-forget", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let manifest = agreement.manifest().clone();
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    write_csv(
        &dir.path().join("a.csv"),
        "drinks",
        &uniform_customers(0..20, "drinks"),
    );
    let root = dir.path().join("drinks-state");
    let drinks = party(&agreement, "drinks", &keys, &root, &url);
    accord_party::upload(
        &drinks,
        &upload_options(dir.path().join("a.csv"), 16, false),
    )
    .await
    .unwrap();
    let key = keys.drinks();
    let check = || accord_party::forget::RoomCheck {
        url: &url,
        key: &key,
    };
    let now = chrono::Utc::now();
    use accord_party::forget::forget;

    let e = forget(&root, &manifest, "drinks", None, false, now)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("--room") && e.contains("--force"), "{e}");
    let e = forget(&root, &manifest, "drinks", Some(check()), false, now)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("still serves it"), "{e}");
    assert!(root.join("state-forget").is_dir(), "nothing was deleted");

    let revocation =
        accord_agreement::Revocation::sign(&agreement, "drinks", "campaign cancelled", now, &key)
            .unwrap();
    AgreementsClient::new(accord_party::client::channel(&url).await.unwrap())
        .revoke(v1::RevokeRequest {
            revocation_toml: revocation.to_toml(),
        })
        .await
        .unwrap();
    let o = forget(&root, &manifest, "drinks", Some(check()), false, now)
        .await
        .unwrap();
    assert!(o.why.contains("refuses"), "{}", o.why);
    let names: Vec<&str> = o.deleted.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "secrets.key");
    assert!(names.contains(&"uploaded.handles"), "{names:?}");
    assert!(!root.join("state-forget").exists());
    // A second forget finds nothing to delete.
    let e = forget(&root, &manifest, "drinks", Some(check()), false, now)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing to forget"), "{e}");
    room.shutdown().await;
}

/// Sessions last one second here; `sync --wait` polls for longer than that while the partner
/// uploads, so its session ends mid-loop. It must authenticate again, not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_session_authenticates_again() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(42);
    let text = agreement_text("state-session", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let limits = accord_room::Limits {
        session_ttl: Duration::from_secs(1),
        ..accord_room::Limits::default()
    };
    let room = start_room_with(&dir.path().join("room"), limits, 0).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    write_csv(
        &dir.path().join("drinks.csv"),
        "drinks",
        &uniform_customers(0..40, "drinks"),
    );
    write_csv(
        &dir.path().join("snacks.csv"),
        "snacks",
        &uniform_customers(0..40, "snacks"),
    );
    let drinks = party(&agreement, "drinks", &keys, &dir.path().join("d"), &url);
    let snacks = party(&agreement, "snacks", &keys, &dir.path().join("s"), &url);
    accord_party::upload(
        &drinks,
        &upload_options(dir.path().join("drinks.csv"), 8, false),
    )
    .await
    .unwrap();
    let late_partner = async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        accord_party::upload(
            &snacks,
            &upload_options(dir.path().join("snacks.csv"), 8, true),
        )
        .await
    };
    let (d, s) = tokio::join!(accord_party::sync(&drinks, true), late_partner);
    s.unwrap();
    let (_, status) = d.unwrap();
    assert!(status.tokens_complete);
    room.shutdown().await;
}

/// The room restarts (same data, same port) while a party waits in `sync --wait`: the party's
/// session is gone with the old process, and it authenticates with the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_restart_between_calls_authenticates_again() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(43);
    let text = agreement_text("state-restart", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let data = dir.path().join("room");
    let room = start_room(&data).await;
    let port = room.grpc_addr.port();
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    write_csv(
        &dir.path().join("drinks.csv"),
        "drinks",
        &uniform_customers(0..40, "drinks"),
    );
    write_csv(
        &dir.path().join("snacks.csv"),
        "snacks",
        &uniform_customers(0..40, "snacks"),
    );
    let drinks = party(&agreement, "drinks", &keys, &dir.path().join("d"), &url);
    let snacks = party(&agreement, "snacks", &keys, &dir.path().join("s"), &url);
    accord_party::upload(
        &drinks,
        &upload_options(dir.path().join("drinks.csv"), 8, false),
    )
    .await
    .unwrap();
    // A connection made before the restart...
    let conn = accord_party::Connection::open(
        &url,
        &agreement.fingerprint().to_string(),
        accord_party::Principal::Party("drinks"),
        &keys.drinks(),
    )
    .await
    .unwrap();
    room.shutdown().await;
    let room = start_room_with(&data, accord_room::Limits::default(), port).await;
    // ...is told its session ended (not a refusal), which the retry loops answer by
    // authenticating again.
    let mut psi = v1::psi_client::PsiClient::new(conn.channel());
    let err = loop {
        match psi.status(conn.request(v1::StatusRequest {})).await {
            Err(s) if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown => {
                tokio::time::sleep(Duration::from_millis(50)).await; // the channel reconnects
            }
            Err(s) => break conn.error(s),
            Ok(_) => panic!("the old session must not survive a restart"),
        }
    };
    assert!(matches!(err, PartyError::SessionEnded { .. }), "{err:?}");
    let snacks_options = upload_options(dir.path().join("snacks.csv"), 8, true);
    let (d, s) = tokio::join!(
        accord_party::sync(&drinks, true),
        accord_party::upload(&snacks, &snacks_options)
    );
    s.unwrap();
    assert!(d.unwrap().1.tokens_complete);
    room.shutdown().await;
}
