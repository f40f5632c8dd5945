//! Differential privacy end to end (issue 13): a real room on loopback with a DP agreement,
//! real party uploads and analyst clients. Budget exhaustion with what is left in the
//! message, persistence of every spend across a restart, concurrent spending that never
//! exceeds the budget, and an audit log without exact suppressed counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use accord_proto::v1::{self, query_client::QueryClient};
use accord_tests::*;
use arrow::array::{Array, Int64Array};

/// 200 shared customers in tiers gold/silver (100 each) plus a rare tier of 3, and 50
/// customers only one party has.
fn write_files(dir: &Path) {
    let mut drinks = Vec::new();
    let mut snacks = Vec::new();
    for i in 0..203 {
        let email = format!("c{i}@example.org");
        let tier = if i >= 200 {
            "platinum"
        } else if i % 2 == 0 {
            "gold"
        } else {
            "silver"
        };
        drinks.push(Customer {
            email: email.clone(),
            consent: true,
            cells: vec![tier.into(), "north".into(), format!("{}", i % 100)],
        });
        snacks.push(Customer {
            email,
            consent: true,
            cells: vec!["crisps".into(), "10".into()],
        });
    }
    for i in 0..50 {
        drinks.push(Customer {
            email: format!("only{i}@example.org"),
            consent: true,
            cells: vec!["gold".into(), "north".into(), "1".into()],
        });
    }
    write_csv(&dir.join("drinks.csv"), "drinks", &drinks);
    write_csv(&dir.join("snacks.csv"), "snacks", &snacks);
}

fn dp_agreement(id: &str, keys: &Keys, epsilon: f64, budget: f64) -> String {
    let text = agreement_text(id, 1, keys, 10, 10_000);
    resign(&text, keys, |l| {
        if l.starts_with("exact_results") {
            format!(
                "differential_privacy = {{ epsilon_per_query = {epsilon}, budget = {budget}, delta = 1e-6 }}"
            )
        } else {
            l.to_owned()
        }
    })
}

/// A room on loopback with a sealed DP agreement `id` over [`write_files`]' data.
async fn sealed_dp_room(
    salt: u8,
    id: &str,
    epsilon: f64,
    budget: f64,
) -> (
    tempfile::TempDir,
    Keys,
    accord_agreement::VerifiedAgreement,
    accord_room::RunningRoom,
) {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let keys = Keys::new(salt);
    let text = dp_agreement(id, &keys, epsilon, budget);
    let agreement = verified(&text);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    run_psi(&agreement, &keys, dir.path(), &url, 100).await;
    (dir, keys, agreement, room)
}

async fn budget(conn: &mut accord_party::Connection) -> v1::Budget {
    let d = QueryClient::new(conn.channel())
        .describe(conn.request(v1::DescribeRequest {}))
        .await
        .unwrap()
        .into_inner();
    conn.check_head(d.head.as_ref()).unwrap();
    d.budget.expect("a DP agreement reports the budget")
}

const BY_TIER: &str = "SELECT drinks_loyalty_tier, COUNT(*) AS n FROM overlap GROUP BY drinks_loyalty_tier ORDER BY drinks_loyalty_tier";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_budget_is_spent_durably_refused_when_exhausted_and_kept_across_a_restart() {
    let (dir, keys, agreement, room) = sealed_dp_room(130, "e2e-dp", 1.0, 3.0).await;
    let url = url(&room);

    let mut ana = analyst(&url, "e2e-dp", &keys).await;
    let b = budget(&mut ana).await;
    assert_eq!((b.queries_remaining, b.queries_answered), (3, 0));
    assert_eq!(b.party, "drinks");

    // A policy refusal spends nothing.
    let refused = grpc_query(&mut ana, "SELECT drinks_monthly_spend FROM overlap")
        .await
        .unwrap_err();
    assert_ne!(refused.0, "budget_exhausted");
    assert_eq!(budget(&mut ana).await.queries_remaining, 3);

    for left in [2u64, 1, 0] {
        let batches = grpc_query(&mut ana, BY_TIER).await.unwrap();
        let tiers: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                let c = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .unwrap()
                    .clone();
                (0..c.len()).map(move |i| c.value(i).to_owned())
            })
            .collect();
        assert_eq!(
            tiers,
            ["gold", "silver"],
            "platinum (3 customers) is never shown"
        );
        let counts: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let c = b
                    .column(1)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone();
                (0..c.len()).map(move |i| c.value(i))
            })
            .collect();
        // Noise at ε = 1 with J = 1 has sd ≈ 1.4: far inside ±40.
        assert!(
            counts.iter().all(|&n| (60..=140).contains(&n)),
            "{counts:?}"
        );
        let b = budget(&mut ana).await;
        assert_eq!(b.queries_remaining, left);
        assert_eq!(b.queries_answered, 3 - left);
    }
    let (rule, message) = grpc_query(&mut ana, BY_TIER).await.unwrap_err();
    assert_eq!(rule, "budget_exhausted");
    assert!(
        message.contains("party drinks has 0.000 of its 3 left")
            && message.contains("3 queries answered"),
        "{message}"
    );

    // After a restart every spend is still there.
    room.shutdown().await;
    let room = start_room(&dir.path().join("room")).await;
    let url = accord_tests::url(&room);
    let mut ana = analyst(&url, "e2e-dp", &keys).await;
    let b = budget(&mut ana).await;
    assert_eq!((b.queries_remaining, b.queries_answered), (0, 3));
    assert_eq!(
        grpc_query(&mut ana, "SELECT COUNT(*) FROM overlap")
            .await
            .unwrap_err()
            .0,
        "budget_exhausted"
    );

    // The audit log has every spend, and no exact suppressed-group count.
    // (Analysts may not read the log: a party reads it.)
    let (log_entries, _) = party_audit_log(
        &url,
        &agreement.fingerprint().to_string(),
        "drinks",
        &keys.drinks(),
    )
    .await;
    let entries: Vec<serde_json::Value> = log_entries
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let spends: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["event"] == "budget_spent")
        .collect();
    assert_eq!(spends.len(), 3);
    assert_eq!(spends[2]["epsilon_remaining"], 0.0);
    for e in entries.iter().filter(|e| e["event"] == "query") {
        assert_eq!(e["groups_suppressed"], 0, "{e}");
    }
    let answered: Vec<_> = entries
        .iter()
        .filter(|e| e["event"] == "query" && e["decision"] == "answered")
        .collect();
    assert_eq!(answered.len(), 3);
    assert!(answered.iter().all(|e| e["budget_spent"] == 1.0));
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_queries_never_spend_more_than_the_budget() {
    let (_dir, keys, _agreement, room) = sealed_dp_room(140, "e2e-dp-race", 0.5, 5.0).await;
    let url = url(&room);

    // 8 analyst sessions × 4 queries = 32 concurrent attempts at a budget of 10 queries.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = analyst(&url, "e2e-dp-race", &keys).await;
            let mut outcomes = Vec::new();
            for _ in 0..4 {
                outcomes.push(
                    grpc_query(&mut conn, "SELECT COUNT(*) FROM overlap")
                        .await
                        .map(|_| ()),
                );
            }
            outcomes
        }));
    }
    let mut answered = 0;
    let mut exhausted = 0;
    for t in tasks {
        for outcome in t.await.unwrap() {
            match outcome {
                Ok(()) => answered += 1,
                Err((rule, _)) if rule == "budget_exhausted" => exhausted += 1,
                Err(other) => panic!("unexpected refusal {other:?}"),
            }
        }
    }
    assert_eq!((answered, exhausted), (10, 22));
    let mut ana = analyst(&url, "e2e-dp-race", &keys).await;
    let b = budget(&mut ana).await;
    assert_eq!((b.queries_answered, b.queries_remaining), (10, 0));
    assert_eq!(b.epsilon_remaining, 0.0);
    room.shutdown().await;
}

/// Shared customers whose drinks region is unique to each of them: more distinct values than
/// groups of k = 10 could cover, so with exact results the room withholds the column at
/// sealing.
fn write_identifying_region(dir: &Path) {
    let mut drinks = Vec::new();
    let mut snacks = Vec::new();
    for i in 0..200 {
        let email = format!("c{i}@example.org");
        let tier = if i % 2 == 0 { "gold" } else { "silver" };
        drinks.push(Customer {
            email: email.clone(),
            consent: true,
            cells: vec![tier.into(), format!("r{i}"), "10".into()],
        });
        snacks.push(Customer {
            email,
            consent: true,
            cells: vec!["crisps".into(), "10".into()],
        });
    }
    write_csv(&dir.join("drinks.csv"), "drinks", &drinks);
    write_csv(&dir.join("snacks.csv"), "snacks", &snacks);
}

async fn withheld(conn: &mut accord_party::Connection) -> Vec<(String, String)> {
    let d = QueryClient::new(conn.channel())
        .describe(conn.request(v1::DescribeRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(d.sealed);
    d.columns
        .into_iter()
        .filter(|c| !c.withheld.is_empty())
        .map(|c| (c.name, c.withheld))
        .collect()
}

/// Issue 13, side channels: with differential privacy nothing a party or analyst reads may
/// be computed from exact overlap counts — including which dimensions are withheld at
/// sealing. With exact results the room withholds an identifying dimension (the decision
/// compares exact distinct values with matched rows / k); with DP it withholds nothing (DP
/// partition selection already keeps every group of a few customers out of the answers), so
/// the set of queryable columns is the same whatever the overlap holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sealing_withholds_on_exact_counts_only_without_differential_privacy() {
    let dir = tempfile::tempdir().unwrap();
    write_identifying_region(dir.path());
    let keys = Keys::new(150);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);

    // Exact results: the region (200 values among 200 matched, k = 10) is withheld.
    let exact = agreement_text("e2e-withhold-exact", 1, &keys, 10, 10_000);
    assert!(
        exact.contains("exact_results"),
        "the fixture is an exact agreement"
    );
    let exact_dir = dir.path().join("exact");
    std::fs::create_dir_all(&exact_dir).unwrap();
    for f in ["drinks.csv", "snacks.csv"] {
        std::fs::copy(dir.path().join(f), exact_dir.join(f)).unwrap();
    }
    submit(&url, &exact).await.unwrap();
    run_psi(&verified(&exact), &keys, &exact_dir, &url, 100).await;
    let mut ana = analyst(&url, "e2e-withhold-exact", &keys).await;
    let w = withheld(&mut ana).await;
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].0, "drinks_region");
    let (rule, _) = grpc_query(
        &mut ana,
        "SELECT drinks_region, COUNT(*) FROM overlap GROUP BY drinks_region",
    )
    .await
    .unwrap_err();
    assert_ne!(rule, "budget_exhausted");

    // Differential privacy: the same data withholds nothing, and the sealing entry of the
    // audit log names no withheld column.
    let dp = dp_agreement("e2e-withhold-dp", &keys, 1.0, 3.0);
    let dp_dir = dir.path().join("dp");
    std::fs::create_dir_all(&dp_dir).unwrap();
    for f in ["drinks.csv", "snacks.csv"] {
        std::fs::copy(dir.path().join(f), dp_dir.join(f)).unwrap();
    }
    submit(&url, &dp).await.unwrap();
    let agreement = verified(&dp);
    run_psi(&agreement, &keys, &dp_dir, &url, 100).await;
    let mut ana = analyst(&url, "e2e-withhold-dp", &keys).await;
    assert_eq!(withheld(&mut ana).await, Vec::<(String, String)>::new());
    // Grouping by it is answered; every group is one customer, so DP partition selection
    // releases none of them (each would pass with probability at most δ = 1e-6).
    let batches = grpc_query(
        &mut ana,
        "SELECT drinks_region, COUNT(*) FROM overlap GROUP BY drinks_region",
    )
    .await
    .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    let (log_entries, _) = party_audit_log(
        &url,
        &agreement.fingerprint().to_string(),
        "drinks",
        &keys.drinks(),
    )
    .await;
    let sealed: Vec<serde_json::Value> = log_entries
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap())
        .filter(|e| e["event"] == "sealed")
        .collect();
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0]["withheld_columns"], serde_json::json!([]));
    room.shutdown().await;
}

/// Issue 13: every path answers the same way. Flight SQL queries spend the same party budget
/// as gRPC ones (one ledger, shared by both), asking for a statement's schema
/// (GetFlightInfo) spends nothing, and when the budget is gone Flight SQL refuses with the
/// same rule and what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flight_sql_spends_the_same_budget_as_grpc_and_is_refused_when_it_is_spent() {
    let (_dir, keys, _agreement, room) = sealed_dp_room(160, "e2e-dp-flight", 1.0, 3.0).await;
    let url = url(&room);

    let mut ana = analyst(&url, "e2e-dp-flight", &keys).await;
    let mut flight = flight_client(room.flight_sql_addr.unwrap(), ana.token()).await;

    // Schemas are free: five GetFlightInfo calls whose tickets are never redeemed.
    for _ in 0..5 {
        flight.execute(BY_TIER.to_owned(), None).await.unwrap();
    }
    assert_eq!(budget(&mut ana).await.queries_remaining, 3);

    // One answer through Flight SQL, one through gRPC: both come out of the one budget, and
    // Flight SQL applies the same DP partition selection (platinum, 3 customers, never shows).
    let batches = flight_query(&mut flight, BY_TIER).await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    assert_eq!(budget(&mut ana).await.queries_remaining, 2);
    grpc_query(&mut ana, BY_TIER).await.unwrap();
    assert_eq!(budget(&mut ana).await.queries_remaining, 1);

    // A ticket issued while budget is left is refused at DoGet once the budget is spent.
    let pending = flight.execute(BY_TIER.to_owned(), None).await.unwrap();
    grpc_query(&mut ana, BY_TIER).await.unwrap();
    let b = budget(&mut ana).await;
    assert_eq!((b.queries_remaining, b.queries_answered), (0, 3));
    let ticket = pending.endpoint[0].ticket.clone().unwrap();
    let refused = match flight.do_get(ticket).await {
        Ok(_) => panic!("DoGet answered with the budget spent"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("[budget_exhausted]"), "{refused}");
    let refused = flight_query(&mut flight, BY_TIER).await.unwrap_err();
    assert!(refused.contains("[budget_exhausted]"), "{refused}");
    assert!(
        refused.contains("has 0.000 of its 3 left"),
        "the refusal says what is left: {refused}"
    );
    assert_eq!(budget(&mut ana).await.queries_answered, 3);
    room.shutdown().await;
}
