//! One party's upload split across workers (issue 15, PROTOCOL.md "Workers"): two workers with
//! copies of the party's state upload disjoint leased batches and the room seals the same
//! overlap; a lost worker's batches are taken over when its lease runs out; a worker with
//! another state, batch size or no state at all is refused before it sends a batch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use accord_party::{PartyContext, UploadOptions};
use accord_room::RunningRoom;
use accord_tests::*;

/// A worker's state: a copy of `main` made the documented way (backup, then restore).
fn worker_state(main: &Path, dir: &Path, name: &str) -> std::path::PathBuf {
    let backup = dir.join(format!("{name}-backup"));
    let state = dir.join(format!("{name}-state"));
    accord_party::state::backup(main, &backup).unwrap();
    accord_party::state::restore(&backup, &state, false).unwrap();
    state
}

fn as_worker(input: &Path, batch_rows: usize, name: &str) -> UploadOptions {
    let mut o = upload_options(input.to_path_buf(), batch_rows, false);
    o.worker = Some(name.to_owned());
    o
}

struct Setup {
    dir: tempfile::TempDir,
    keys: Keys,
    agreement: accord_agreement::VerifiedAgreement,
    url: String,
    room: RunningRoom,
}

async fn setup(limits: accord_room::Limits) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(61);
    let room = start_room_with(&dir.path().join("room"), limits, 0).await;
    let url = url(&room);
    let text = agreement_text("workers", 1, &keys, 10, 100_000);
    submit(&url, &text).await.unwrap();
    write_csv(
        &dir.path().join("drinks.csv"),
        "drinks",
        &uniform_customers(0..3000, "drinks"),
    );
    write_csv(
        &dir.path().join("snacks.csv"),
        "snacks",
        &uniform_customers(2000..5000, "snacks"),
    );
    Setup {
        dir,
        keys,
        agreement: verified(&text),
        url,
        room,
    }
}

impl Setup {
    fn drinks(&self, state: &Path) -> PartyContext {
        party(&self.agreement, "drinks", &self.keys, state, &self.url)
    }

    /// The drinks party's main state, created without uploading (`accord party init`).
    fn drinks_main(&self) -> std::path::PathBuf {
        let main = self.dir.path().join("drinks-main");
        self.drinks(&main).init_state().unwrap();
        main
    }

    /// snacks uploads on its own, then both sides blind each other's batches.
    async fn finish(&self, drinks_state: &Path) {
        let snacks = party(
            &self.agreement,
            "snacks",
            &self.keys,
            &self.dir.path().join("snacks-state"),
            &self.url,
        );
        let input = self.dir.path().join("snacks.csv");
        let drinks = self.drinks(drinks_state);
        let options = upload_options(input, 10, true);
        let (s, d) = tokio::join!(
            accord_party::upload(&snacks, &options),
            accord_party::sync(&drinks, true)
        );
        assert!(s.unwrap().status.unwrap().tokens_complete);
        assert!(d.unwrap().1.tokens_complete);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_upload_disjoint_leased_batches_and_the_room_seals_the_same_overlap() {
    let s = setup(accord_room::Limits::default()).await;
    let main = s.drinks_main();
    let w1 = worker_state(&main, s.dir.path(), "w1");
    let w2 = worker_state(&main, s.dir.path(), "w2");
    let input = s.dir.path().join("drinks.csv");

    // A worker with no state of its party is refused before it reads a row.
    let fresh = s.drinks(&s.dir.path().join("fresh"));
    let e = accord_party::upload(&fresh, &as_worker(&input, 10, "fresh"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("a worker uploads with a copy of its party's state"),
        "{e}"
    );

    let (c1, c2) = (s.drinks(&w1), s.drinks(&w2));
    let (o1, o2) = (as_worker(&input, 10, "w1"), as_worker(&input, 10, "w2"));
    let (r1, r2) = tokio::join!(
        accord_party::upload(&c1, &o1),
        accord_party::upload(&c2, &o2)
    );
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_eq!(
        r1.batches, r2.batches,
        "both workers computed the same upload"
    );
    let total = r1.batches;
    assert!(total > 200, "the test needs many batches, has {total}");
    let (sent1, sent2) = (total - r1.already_stored, total - r2.already_stored);
    assert!(
        sent1 > 0 && sent2 > 0,
        "each worker uploads part of it: {sent1} and {sent2} of {total}"
    );
    assert_eq!(sent1 + sent2, total, "no batch was leased to both workers");
    for r in [&r1, &r2] {
        let status = r.status.as_ref().unwrap();
        assert!(status.upload_complete);
        assert_eq!(status.batches_uploaded, total);
    }

    // A worker with other secrets (its own state) or another batch size is refused: its
    // batches would not be the same upload.
    let other = s.dir.path().join("other-main");
    s.drinks(&other).init_state().unwrap();
    for (state, rows, name) in [
        (other.as_path(), 10, "other-secrets"),
        (w1.as_path(), 11, "other-size"),
    ] {
        let e = accord_party::upload(&s.drinks(state), &as_worker(&input, rows, name))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is not the one drinks's workers are uploading"),
            "{name}: {e}"
        );
    }

    s.finish(&w1).await;
    assert_eq!(overlap_count(&s.url, "workers", &s.keys).await, 1000);
    s.room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_workers_batches_are_taken_over_when_its_lease_runs_out() {
    let limits = accord_room::Limits {
        lease_ttl: Duration::from_secs(1),
        ..accord_room::Limits::default()
    };
    let s = setup(limits).await;
    let main = s.drinks_main();
    let lost = worker_state(&main, s.dir.path(), "lost");
    let w2 = worker_state(&main, s.dir.path(), "w2");
    let input = s.dir.path().join("drinks.csv");

    // The first worker is lost (its task is dropped: no goodbye) once the room holds some
    // of its batches; it still holds leases on others.
    let lost_ctx = s.drinks(&lost);
    let lost_run = {
        let (ctx, o) = (lost_ctx, as_worker(&input, 10, "lost"));
        tokio::spawn(async move { accord_party::upload(&ctx, &o).await })
    };
    let mut probe = accord_party::client::Connection::open(
        &s.url,
        &s.agreement.fingerprint().to_string(),
        accord_party::client::Principal::Party("drinks"),
        &s.keys.drinks(),
    )
    .await
    .unwrap();
    let stored_when_lost = loop {
        let st = probe.psi_status().await.unwrap();
        if st.batches_uploaded > 0 {
            lost_run.abort();
            assert!(
                !st.upload_complete,
                "the first worker finished before it could be lost"
            );
            break st.batches_uploaded;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert!(lost_run.await.unwrap_err().is_cancelled());

    // The second worker uploads everything else, including the lost worker's leased batches
    // once their lease runs out, and completes the upload.
    // (Bounded: if a lost lease never came back, the worker would wait forever.)
    let r = tokio::time::timeout(
        Duration::from_secs(120),
        accord_party::upload(&s.drinks(&w2), &as_worker(&input, 10, "w2")),
    )
    .await
    .expect("the lost worker's batches came back to the pool")
    .unwrap();
    let status = r.status.as_ref().unwrap();
    assert!(status.upload_complete);
    assert_eq!(status.batches_uploaded, r.batches);
    let stored_at_abort_or_later = r.already_stored;
    assert!(stored_at_abort_or_later >= stored_when_lost);
    assert!(
        stored_at_abort_or_later < r.batches,
        "the second worker uploaded the rest"
    );

    s.finish(&w2).await;
    assert_eq!(overlap_count(&s.url, "workers", &s.keys).await, 1000);
    s.room.shutdown().await;
}
