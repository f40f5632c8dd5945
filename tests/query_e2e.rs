//! Analysts end to end: the engine's policy corpus replayed through the room's gRPC Query
//! service and through Arrow Flight SQL (a real Flight SQL client), plus revocation,
//! erasure and expiry seen from the outside (issue: query-and-demo).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../crates/engine/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Duration;

use accord_engine::corpus::{self, Expect};
use accord_proto::v1::{self, agreements_client::AgreementsClient};
use accord_tests::*;
use arrow::array::{Array, Int64Array, RecordBatch};
use futures::TryStreamExt;

const ROWS: usize = 2000;

/// Party files whose join is exactly the engine corpus's synthetic overlap, plus customers
/// that only one party has.
fn write_corpus_files(dir: &Path) {
    let rows = common::rows(ROWS);
    let cell = |v: Option<&str>| v.unwrap_or("").to_owned();
    let num = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    let mut drinks = Vec::new();
    let mut snacks = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let email = format!("c{i}@example.org");
        drinks.push(Customer {
            email: email.clone(),
            consent: true,
            cells: vec![cell(r.tier), cell(r.region), num(r.drinks_spend)],
        });
        snacks.push(Customer {
            email,
            consent: true,
            cells: vec![cell(r.favourite), num(r.snacks_spend)],
        });
    }
    for i in 0..300 {
        drinks.push(Customer {
            email: format!("only-drinks{i}@example.org"),
            consent: true,
            cells: vec!["gold".into(), "north".into(), "1".into()],
        });
        snacks.push(Customer {
            email: format!("only-snacks{i}@example.org"),
            consent: true,
            cells: vec!["crisps".into(), "1".into()],
        });
    }
    write_csv(&dir.join("drinks.csv"), "drinks", &drinks);
    write_csv(&dir.join("snacks.csv"), "snacks", &snacks);
}

fn normalize(mut rows: Vec<Vec<String>>, rowsort: bool) -> Vec<Vec<String>> {
    if rowsort {
        rows.sort();
    }
    rows
}

fn check(case: &corpus::Case, outcome: Result<Vec<RecordBatch>, String>, via: &str) {
    match (&case.expect, outcome) {
        (
            Expect::Rows {
                columns,
                rows,
                rowsort,
            },
            Ok(batches),
        ) => {
            if let Some(b) = batches.first() {
                let names: Vec<String> = b
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                assert_eq!(&names, columns, "{via} {}: columns", case.name);
            }
            let got = normalize(corpus::render_rows(&batches), *rowsort);
            assert_eq!(
                got,
                normalize(rows.clone(), *rowsort),
                "{via} {} (line {}): rows",
                case.name,
                case.line
            );
        }
        (Expect::Refused(rule), Err(message)) => {
            // Both transports put the rule in brackets ("[rule] …" over gRPC, "query refused
            // [rule]: …" over Flight SQL): match it whole, not as a substring of another rule.
            assert!(
                message.contains(&format!("[{rule}]")),
                "{via} {}: expected rule {rule}, got {message}",
                case.name
            );
        }
        (Expect::Rows { .. }, Err(message)) => panic!(
            "{via} {}: expected an answer, got a refusal: {message}",
            case.name
        ),
        (Expect::Refused(rule), Ok(_)) => panic!(
            "{via} {}: expected refusal {rule}, got an answer",
            case.name
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_policy_corpus_gives_the_same_decisions_and_values_through_grpc_and_flight_sql() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus_files(dir.path());
    let keys = Keys::new(60);
    let text = agreement_text("e2e-corpus", 1, &keys, 10, 100_000);
    let agreement = verified(&text);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    run_psi(&agreement, &keys, dir.path(), &url, 512).await;

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/engine/tests/corpus/policy.slt"
    ))
    .unwrap();
    let cases = corpus::parse(&text).unwrap();
    assert!(cases.len() >= 60, "the corpus has {} cases", cases.len());
    let mut ana = analyst(&url, "e2e-corpus", &keys).await;
    let mut flight = flight_client(room.flight_sql_addr.unwrap(), ana.token()).await;
    for case in &cases {
        let grpc = grpc_query(&mut ana, &case.sql)
            .await
            .map_err(|(rule, message)| format!("[{rule}] {message}"));
        check(case, grpc, "gRPC");
        let via_flight = flight_query(&mut flight, &case.sql).await;
        check(case, via_flight, "Flight SQL");
    }

    // Schema discovery through Flight SQL: one table, `overlap`, with the agreed columns only.
    let info = flight
        .get_tables(arrow_flight::sql::CommandGetTables {
            include_schema: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<RecordBatch> = flight
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let names = batches[0].column_by_name("table_name").unwrap();
    let names = names
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    assert_eq!(names.len(), 1);
    assert_eq!(names.value(0), "overlap");

    // Name filters are matched in linear time and capped: a pattern of many `%` (which used
    // to take exponential time) is answered, and one over the cap is refused.
    let cap = accord_proto::limits::MAX_NAME_PATTERN_BYTES;
    for (pattern, expected) in [
        (format!("{}overlap", "%".repeat(cap - 7)), 1),
        (format!("{}x", "%".repeat(cap - 1)), 0),
        (format!("{}%p", "%_".repeat((cap - 2) / 2)), 0),
    ] {
        let info = flight
            .get_tables(arrow_flight::sql::CommandGetTables {
                table_name_filter_pattern: Some(pattern.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let batches: Vec<RecordBatch> = flight
            .do_get(ticket)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, expected, "GetTables LIKE {pattern}");
    }
    let too_long = "%".repeat(cap + 1);
    let err = flight
        .get_tables(arrow_flight::sql::CommandGetTables {
            table_name_filter_pattern: Some(too_long.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("table_name_filter_pattern is 257 bytes long"),
        "{err}"
    );
    let err = flight
        .get_db_schemas(arrow_flight::sql::CommandGetDbSchemas {
            db_schema_filter_pattern: Some(too_long),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("db_schema_filter_pattern is 257 bytes long"),
        "{err}"
    );

    // A ticket is bound to the session that asked for it: the same analyst's other session
    // cannot redeem it, and the session that asked still can.
    let info = flight
        .execute("SELECT COUNT(*) AS n FROM overlap".to_owned(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let other = analyst(&url, "e2e-corpus", &keys).await;
    assert_ne!(other.token(), ana.token());
    let mut other_flight = flight_client(room.flight_sql_addr.unwrap(), other.token()).await;
    let err = other_flight.do_get(ticket.clone()).await.unwrap_err();
    assert!(err.to_string().contains("another session"), "{err}");
    // Refused before it was spent, so its owner can still fetch the answer.
    let mut fresh = flight_client(room.flight_sql_addr.unwrap(), ana.token()).await;
    let batches: Vec<RecordBatch> = fresh
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(batches[0].num_rows(), 1);

    // A Flight SQL client without a session is refused.
    let mut anonymous = flight_client(room.flight_sql_addr.unwrap(), "not-a-token").await;
    let err = flight_query(&mut anonymous, "SELECT COUNT(*) FROM overlap")
        .await
        .unwrap_err();
    assert!(
        err.contains("session") || err.contains("Unauthenticated"),
        "{err}"
    );

    // Every query above is in the audit log, which verifies (read by a party: analysts may not).
    let (_, summary) = party_audit_log(
        &url,
        &agreement.fingerprint().to_string(),
        "drinks",
        &keys.drinks(),
    )
    .await;
    assert!(summary.queries_answered + summary.queries_refused >= 2 * cases.len() as u64);
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flight_handshake_authenticates_with_a_signed_challenge() {
    use arrow_flight::HandshakeRequest;
    use arrow_flight::flight_service_client::FlightServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(70);
    let text = agreement_text("e2e-handshake", 1, &keys, 10, 1000);
    let agreement = verified(&text);
    let room = start_room(&dir.path().join("room")).await;
    submit(&url(&room), &text).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        room.flight_sql_addr.unwrap()
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut client = FlightServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let client_nonce = [5u8; 32];
    let analyst_key = keys.analyst().public_key().to_bytes();
    let hello = serde_json::json!({"agreement": "e2e-handshake", "analyst": "ana@drinks.example", "public_key": hex::encode(analyst_key), "client_nonce": hex::encode(client_nonce)});
    tx.send(HandshakeRequest {
        protocol_version: 0,
        payload: serde_json::to_vec(&hello).unwrap().into(),
    })
    .await
    .unwrap();
    let mut responses = client
        .handshake(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let challenge: serde_json::Value =
        serde_json::from_slice(&responses.message().await.unwrap().unwrap().payload).unwrap();
    let room_nonce: [u8; 32] = hex::decode(challenge["room_nonce"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let room_key: [u8; 32] = hex::decode(challenge["room_public_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    // Nothing about the agreement before the proof: only the nonce and the room's key.
    assert_eq!(
        challenge.as_object().unwrap().len(),
        2,
        "the challenge reveals only the nonce and the room key: {challenge}"
    );
    let message = accord_proto::signed::auth_challenge(
        "e2e-handshake",
        "analyst",
        "ana@drinks.example",
        &analyst_key,
        &room_nonce,
        &client_nonce,
        &room_key,
    );
    let signature = keys
        .analyst()
        .sign(accord_agreement::sig::Purpose::AuthChallenge, &message);
    let proof = serde_json::json!({"signature": hex::encode(signature.to_bytes())});
    tx.send(HandshakeRequest {
        protocol_version: 0,
        payload: serde_json::to_vec(&proof).unwrap().into(),
    })
    .await
    .unwrap();
    let token =
        String::from_utf8(responses.message().await.unwrap().unwrap().payload.to_vec()).unwrap();
    assert_eq!(token.len(), 64);
    // The token is a session: the agreement is not sealed yet, so the query is refused for that reason.
    let mut flight = flight_client(room.flight_sql_addr.unwrap(), &token).await;
    let err = flight_query(&mut flight, "SELECT COUNT(*) FROM overlap")
        .await
        .unwrap_err();
    assert!(err.contains("not sealed"), "{err}");
    // Refused before the policy saw it, and still in the audit log.
    let (entries, _) = party_audit_log(
        &url(&room),
        &agreement.fingerprint().to_string(),
        "snacks",
        &keys.snacks(),
    )
    .await;
    let last = entries.last().unwrap();
    assert!(
        last.contains("\"refused\"") && last.contains("not_sealed"),
        "{last}"
    );
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasure_then_revocation_stop_queries_delete_data_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus_files(dir.path());
    let keys = Keys::new(80);
    let text = agreement_text("e2e-revoke", 1, &keys, 10, 100_000);
    let agreement = verified(&text);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    run_psi(&agreement, &keys, dir.path(), &url, 512).await;
    let mut ana = analyst(&url, "e2e-revoke", &keys).await;
    let count = |b: Vec<RecordBatch>| {
        b[0].column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!(
        count(
            grpc_query(&mut ana, "SELECT COUNT(*) FROM overlap")
                .await
                .unwrap()
        ),
        ROWS as i64
    );

    // snacks erases 25 shared customers, 5 it never had, and 3 blank lines.
    let ids: String = (0..25)
        .map(|i| format!("C{i}@Example.org\n"))
        .chain((0..5).map(|i| format!("nobody{i}@x.org\n")))
        .collect::<String>()
        + "\n\n\n";
    std::fs::write(dir.path().join("erase.txt"), ids).unwrap();
    let snacks = party(
        &agreement,
        "snacks",
        &keys,
        &dir.path().join("snacks-state"),
        &url,
    );
    let outcome = accord_party::erase(&snacks, &dir.path().join("erase.txt"))
        .await
        .unwrap();
    assert_eq!(
        (outcome.requested, outcome.unaccounted.len(), outcome.erased),
        (30, 5, 25)
    );
    assert_eq!(
        count(
            grpc_query(&mut ana, "SELECT COUNT(*) FROM overlap")
                .await
                .unwrap()
        ),
        ROWS as i64 - 25
    );
    // Erasing them again finds nothing left to erase.
    let again = accord_party::erase(&snacks, &dir.path().join("erase.txt"))
        .await
        .unwrap();
    assert_eq!(again.erased, 0);

    // drinks revokes: the room acknowledges, deletes the data, and refuses everything after.
    let revocation = accord_agreement::Revocation::sign(
        &agreement,
        "drinks",
        "campaign cancelled",
        chrono::Utc::now(),
        &keys.drinks(),
    )
    .unwrap();
    let channel = accord_party::client::channel(&url).await.unwrap();
    let receipt = AgreementsClient::new(channel.clone())
        .revoke(v1::RevokeRequest {
            revocation_toml: revocation.to_toml(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.fingerprint, agreement.fingerprint().to_string());
    let msg = accord_proto::signed::revocation_receipt(
        agreement.fingerprint().as_bytes(),
        receipt.revoked_unix_ms,
        "drinks",
    );
    ana.room_key()
        .verify(
            accord_agreement::sig::Purpose::RevocationReceipt,
            &msg,
            &accord_agreement::Signature::from_bytes(
                &receipt.receipt_signature.as_slice().try_into().unwrap(),
            ),
        )
        .unwrap();
    let e = accord_proto::v1::query_client::QueryClient::new(ana.channel())
        .run(ana.request(v1::RunQueryRequest {
            sql: "SELECT COUNT(*) FROM overlap".into(),
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::Unauthenticated | tonic::Code::FailedPrecondition
        ),
        "{e:?}"
    );
    assert!(
        !dir.path()
            .join("room/agreements")
            .join(agreement.fingerprint().to_string())
            .exists(),
        "data deleted"
    );
    // The same agreement can never be registered again.
    let e = submit(&url, &text).await.unwrap_err();
    assert!(e.message().contains("revoked"), "{}", e.message());
    // The log outlives the data and says what happened, in order; the parties still read it
    // by fingerprint.
    let (entries, _) = party_audit_log(
        &url,
        &agreement.fingerprint().to_string(),
        "drinks",
        &keys.drinks(),
    )
    .await;
    let events: Vec<String> = entries
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(e).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let tail: Vec<&str> = events
        .iter()
        .rev()
        .take(2)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(tail, ["revoked", "data_deleted"]);
    assert!(events.contains(&"erasure".to_owned()));
    // The erasure entry carries a count, never handles.
    let erasure = entries.iter().find(|e| e.contains("\"erasure\"")).unwrap();
    assert!(
        erasure.contains("\"rows\":25") && !erasure.contains("handle"),
        "{erasure}"
    );
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_agreement_is_ended_and_its_data_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(90);
    let text = agreement_text("e2e-expiry", 1, &keys, 10, 1000);
    // The window ends in four seconds (whole seconds: at least three from now).
    let room = start_room(&dir.path().join("room")).await;
    let until = (chrono::Utc::now() + chrono::Duration::seconds(4))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let text = resign(&text, &keys, |l| {
        if l.starts_with("valid_until") {
            format!("valid_until = {until}")
        } else {
            l.to_owned()
        }
    });
    let agreement = verified(&text);
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    let dir_of = dir
        .path()
        .join("room/agreements")
        .join(agreement.fingerprint().to_string());
    assert!(dir_of.exists());
    // Wait for the room's expiry sweep (every 200 ms) after the window ends, with a deadline
    // far beyond it, so a loaded machine cannot fail the test.
    let valid_until = agreement.manifest().valid_until;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while dir_of.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "expired data must be deleted (still there a minute after the window ended)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        chrono::Utc::now() >= valid_until,
        "the data was deleted before the agreement expired"
    );
    let err = accord_party::Connection::open(
        &url,
        "e2e-expiry",
        accord_party::Principal::Party("drinks"),
        &keys.drinks(),
    )
    .await
    .unwrap_err();
    // An ended agreement looks like any unknown one to a caller.
    assert!(
        err.to_string().contains(accord_room::NOT_AUTHORIZED),
        "{err}"
    );
    room.shutdown().await;
}
