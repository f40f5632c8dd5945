//! Floods against a real room on loopback (issue 11 §4): challenges, held-open streams and
//! oversized messages, while a legitimate party and analyst still authenticate and get
//! answers. Every flood is bounded in count, and the whole test in time; nothing leaves
//! 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use accord_proto::v1::{self, auth_client::AuthClient, psi_client::PsiClient};
use accord_room::limits::{AUTH_MESSAGE_BYTES, MAX_AUDIT_SQL_BYTES, QUERY_MESSAGE_BYTES};
use accord_tests::*;

/// The whole test must end well within this.
const DEADLINE: Duration = Duration::from_secs(240);
/// Challenge requests in the flood: more than the 10 000-entry table the room used to keep.
const CHALLENGE_FLOOD: usize = 10_400;
/// Concurrent connections the challenge flood uses.
const FLOOD_CONNECTIONS: usize = 8;
/// Streams the member flood holds open on one connection.
const HELD_STREAMS: usize = 40;
/// Oversized requests sent.
const OVERSIZED: usize = 40;

fn customers(n: usize, party: &str) -> Vec<Customer> {
    (0..n)
        .map(|i| Customer {
            email: format!("c{i}@example.org"),
            consent: true,
            cells: if party == "drinks" {
                vec![
                    ["gold", "silver"][i % 2].into(),
                    "north".into(),
                    "10".into(),
                ]
            } else {
                vec!["nuts".into(), "5".into()]
            },
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn legitimate_calls_succeed_while_floods_run() {
    tokio::time::timeout(DEADLINE, floods())
        .await
        .expect("the load test ran past its deadline");
}

async fn floods() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(50);
    let text = agreement_text("load", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let limits = accord_room::Limits {
        max_concurrent_streams: 8,
        concurrency_per_connection: 8,
        request_timeout: Duration::from_secs(3),
        fetch_work_batches: 3,
        ..accord_room::Limits::default()
    };
    let room = start_room_with(&dir.path().join("room"), limits, 0).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    write_csv(
        &dir.path().join("drinks.csv"),
        "drinks",
        &customers(200, "drinks"),
    );
    write_csv(
        &dir.path().join("snacks.csv"),
        "snacks",
        &customers(200, "snacks"),
    );
    let drinks = party(&agreement, "drinks", &keys, &dir.path().join("d"), &url);
    accord_party::upload(
        &drinks,
        &upload_options(dir.path().join("drinks.csv"), 16, false),
    )
    .await
    .unwrap();

    // FetchWork with max_batches = 0 returns the operator's default (3 here), read one by one.
    let snacks_conn = accord_party::Connection::open(
        &url,
        "load",
        accord_party::Principal::Party("snacks"),
        &keys.snacks(),
    )
    .await
    .unwrap();
    let mut stream = PsiClient::new(snacks_conn.channel())
        .fetch_work(snacks_conn.request(v1::FetchWorkRequest { max_batches: 0 }))
        .await
        .unwrap()
        .into_inner();
    let mut fetched = 0;
    while stream.message().await.unwrap().is_some() {
        fetched += 1;
    }
    assert_eq!(fetched, 3, "limits.fetch_work_batches");

    run_psi_rest(&agreement, &keys, dir.path(), &url).await;

    // 1. A challenge flood from a stranger who can reach the room: the room used to keep
    //    every challenge in a 10 000-entry table and refuse everyone once it was full.
    let mut tasks = Vec::new();
    // Any valid key will do: nothing is looked up before a signature verifies.
    let stranger = Keys::new(99).drinks().public_key().to_bytes().to_vec();
    for t in 0..FLOOD_CONNECTIONS {
        let url = url.clone();
        let stranger = stranger.clone();
        tasks.push(tokio::spawn(async move {
            let mut auth = AuthClient::new(accord_party::client::channel(&url).await.unwrap());
            for i in 0..CHALLENGE_FLOOD / FLOOD_CONNECTIONS {
                let mut nonce = [0u8; 32];
                nonce[..8].copy_from_slice(&((t * 1_000_000 + i) as u64).to_be_bytes());
                auth.challenge(v1::ChallengeRequest {
                    agreement: "load".into(),
                    principal: Some(v1::Principal {
                        kind: Some(v1::principal::Kind::Party("drinks".into())),
                    }),
                    client_nonce: nonce.to_vec(),
                    public_key: stranger.clone(),
                })
                .await
                .unwrap();
            }
        }));
    }
    // The analyst logs in and queries while the flood runs, and again after it.
    let mut ana = analyst(&url, "load", &keys).await;
    assert_eq!(
        count(
            &grpc_query(&mut ana, "SELECT COUNT(*) FROM overlap")
                .await
                .unwrap()
        ),
        200
    );
    for t in tasks {
        t.await.unwrap();
    }
    let mut ana = analyst(&url, "load", &keys).await;
    assert_eq!(
        count(
            &grpc_query(&mut ana, "SELECT COUNT(*) FROM overlap")
                .await
                .unwrap()
        ),
        200,
        "a legitimate login after {CHALLENGE_FLOOD} challenges"
    );

    // 2. A member holds streams open without sending: at most 8 run at once on its
    //    connection, each is cut after request_timeout, and others are not blocked.
    let holder = accord_party::Connection::open(
        &url,
        "load",
        accord_party::Principal::Party("drinks"),
        &keys.drinks(),
    )
    .await
    .unwrap();
    let mut held = Vec::new();
    for _ in 0..HELD_STREAMS {
        let mut psi = PsiClient::new(holder.channel());
        let (tx, rx) = tokio::sync::mpsc::channel::<v1::UploadMessage>(1);
        let request = holder.request(tokio_stream::wrappers::ReceiverStream::new(rx));
        held.push(tokio::spawn(async move {
            let result = psi.upload(request).await;
            drop(tx); // kept alive (never sending) until the room answers
            result.map(|_| ()).map_err(|s| s.code())
        }));
    }
    let mut ana = analyst(&url, "load", &keys).await;
    assert_eq!(
        count(
            &grpc_query(&mut ana, "SELECT COUNT(*) FROM overlap")
                .await
                .unwrap()
        ),
        200,
        "an analyst is answered while a member holds {HELD_STREAMS} streams open"
    );
    for h in held {
        // The room ends each held stream itself (request_timeout); this test does not.
        let r = tokio::time::timeout(Duration::from_secs(120), h)
            .await
            .expect("the room kept a silent stream open past request_timeout")
            .unwrap();
        // The room answers `Cancelled` (its timeout layer) and then resets the
        // still-open request body; which the client observes first is a race, and a
        // reset reads as `Unavailable`. Either way the room, not the client, ended it.
        assert!(
            matches!(
                r,
                Err(tonic::Code::Cancelled) | Err(tonic::Code::Unavailable)
            ),
            "{r:?}"
        );
    }

    // 3. Oversized messages are refused at decoding, before any work.
    let mut auth = AuthClient::new(accord_party::client::channel(&url).await.unwrap());
    for _ in 0..OVERSIZED {
        let e = auth
            .challenge(v1::ChallengeRequest {
                agreement: "load".into(),
                principal: None,
                client_nonce: vec![7; AUTH_MESSAGE_BYTES + 1],
                public_key: vec![],
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                e.code(),
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ),
            "{e:?}"
        );
    }
    let mut query = v1::query_client::QueryClient::new(ana.channel());
    let e = query
        .run(ana.request(v1::RunQueryRequest {
            sql: "x".repeat(QUERY_MESSAGE_BYTES + 1),
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{e:?}"
    );
    // SQL under the message cap but over the SQL cap is refused and audited, bounded.
    let long = format!(
        "SELECT COUNT(*) FROM overlap WHERE {}",
        "1 = 1 AND ".repeat(3000)
    );
    let (rule, _) = grpc_query(&mut ana, &long).await.unwrap_err();
    assert_eq!(rule, "too_long");
    let audit = dir
        .path()
        .join("room")
        .join("audit")
        .join(format!("{}.jsonl", agreement.fingerprint()));
    let log = std::fs::read_to_string(audit).unwrap();
    let last = log.lines().last().unwrap();
    assert!(last.contains("truncated by the room"), "{last}");
    assert!(last.len() < MAX_AUDIT_SQL_BYTES + 1024, "{}", last.len());

    // And still: a party and an analyst are served.
    accord_party::status(&drinks).await.unwrap();
    assert_eq!(
        count(
            &grpc_query(&mut ana, "SELECT COUNT(*) FROM overlap")
                .await
                .unwrap()
        ),
        200
    );
    room.shutdown().await;
}

/// Finishes the PSI after drinks' upload: snacks uploads and both blind until sealed.
async fn run_psi_rest(
    agreement: &accord_agreement::VerifiedAgreement,
    keys: &Keys,
    dir: &std::path::Path,
    url: &str,
) {
    let drinks = party(agreement, "drinks", keys, &dir.join("d"), url);
    let snacks = party(agreement, "snacks", keys, &dir.join("s"), url);
    let options = upload_options(dir.join("snacks.csv"), 16, true);
    let (s, d) = tokio::join!(
        accord_party::upload(&snacks, &options),
        accord_party::sync(&drinks, true)
    );
    s.unwrap();
    assert!(d.unwrap().1.tokens_complete);
}
