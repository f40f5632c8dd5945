//! Customers' rights end to end (issue 16): transparency receipts for one customer across
//! agreements (erased, revoked, forgotten), the receipt's HTML parsed and hostile text
//! escaped, consent withdrawal read from the customer file, erasure from every agreement,
//! and no resurrection of an erased customer by a stale export in a new agreement version.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use accord_party::rights::{self, AgreementErasure, AgreementState, Contribution};
use accord_party::{EraseSource, input::InputOptions};
use accord_proto::v1::{self, agreements_client::AgreementsClient};
use accord_tests::*;

fn customer(email: &str, consent: bool) -> Customer {
    Customer {
        email: email.into(),
        consent,
        cells: vec!["gold".into(), "north".into(), "10".into()],
    }
}

fn snacks_customer(email: &str) -> Customer {
    Customer {
        email: email.into(),
        consent: true,
        cells: vec!["crisps".into(), "10".into()],
    }
}

/// 30 shared customers (alice among them), carol without consent at drinks, and bob (in
/// drinks' file only when `with_bob`).
fn write_files(dir: &Path, alice_consents: bool, with_bob: bool) {
    let mut drinks = vec![
        customer("Alice@Example.org", alice_consents),
        customer("carol@example.org", false),
    ];
    if with_bob {
        drinks.push(customer("bob@example.org", true));
    }
    let mut snacks = vec![
        snacks_customer("alice@example.org"),
        snacks_customer("carol@example.org"),
    ];
    for i in 0..30 {
        drinks.push(customer(&format!("c{i}@example.org"), true));
        snacks.push(snacks_customer(&format!("c{i}@example.org")));
    }
    write_csv(&dir.join("drinks.csv"), "drinks", &drinks);
    write_csv(&dir.join("snacks.csv"), "snacks", &snacks);
}

const HOSTILE_PURPOSE: &str =
    "Plan <script>alert(\"x\")</script> promotions & <b>offers</b> for 'shared' customers";

fn agreement_with_purpose(id: &str, version: u64, keys: &Keys, purpose: &str) -> String {
    let text = agreement_text(id, version, keys, 10, 10_000);
    resign(&text, keys, |l| {
        if l.starts_with("purpose = ") {
            format!("purpose = {}", toml_string(purpose))
        } else {
            l.to_owned()
        }
    })
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

async fn revoke(url: &str, text: &str, keys: &Keys) {
    let agreement = verified(text);
    let revocation = accord_agreement::Revocation::sign(
        &agreement,
        "drinks",
        "campaign cancelled",
        chrono::Utc::now(),
        &keys.drinks(),
    )
    .unwrap();
    AgreementsClient::new(accord_party::client::channel(url).await.unwrap())
        .revoke(v1::RevokeRequest {
            revocation_toml: revocation.to_toml(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receipt_follows_one_customer_through_erasure_revocation_and_forgetting() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(170);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    let a_text = agreement_with_purpose("rights-a", 1, &keys, HOSTILE_PURPOSE);
    let b_text = agreement_with_purpose("rights-b", 1, &keys, "Measure a joint campaign");
    // Bob is in drinks' file for rights-a only.
    for (t, with_bob) in [(&a_text, true), (&b_text, false)] {
        write_files(dir.path(), true, with_bob);
        submit(&url, t).await.unwrap();
        run_psi(&verified(t), &keys, dir.path(), &url, 16).await;
    }
    let root = dir.path().join("drinks-state");
    let now = chrono::Utc::now();

    // Zero agreements: a customer who never consented, and a stranger.
    for who in ["carol@example.org", "nobody@example.org"] {
        let r = rights::receipt(&root, "drinks", who, now).unwrap();
        assert!(r.agreements.is_empty(), "{who}: {r:?}");
        assert!(rights::render_text(&r).contains("no record of sharing"));
    }
    // One agreement.
    let r = rights::receipt(&root, "drinks", "bob@example.org", now).unwrap();
    assert_eq!(r.agreements.len(), 1, "{r:?}");
    assert_eq!(r.agreements[0].terms.id, "rights-a");
    assert!(rights::render_text(&r).contains("lists that agreement"));
    // Two agreements; the identifier as the customer writes it (case, spaces) is found.
    let r = rights::receipt(&root, "drinks", "  ALICE@example.org ", now).unwrap();
    assert_eq!(r.agreements.len(), 2, "{r:?}");
    for e in &r.agreements {
        assert!(
            matches!(
                e.contribution,
                Contribution::Shared {
                    uploaded_at: Some(_)
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.agreement, AgreementState::InForce);
        assert_eq!(e.terms.partner, "snacks");
        assert_eq!(e.terms.min_group_size, 10);
        assert!(!e.terms.columns.is_empty());
    }
    // One agreement: a customer erased from rights-a only.
    std::fs::write(dir.path().join("erase.txt"), "alice@example.org\n").unwrap();
    let a = verified(&a_text);
    let drinks_a = party(&a, "drinks", &keys, &root, &url);
    let o = accord_party::erase(&drinks_a, &dir.path().join("erase.txt"))
        .await
        .unwrap();
    assert_eq!(o.erased, 1);
    // rights-b is revoked (this party records it, as `agreement revoke --state` does).
    revoke(&url, &b_text, &keys).await;
    let b = verified(&b_text);
    accord_party::state::State::open(&root, b.id(), b.fingerprint())
        .unwrap()
        .log_event(&rights::Event::Revoked {
            at: chrono::Utc::now(),
        })
        .unwrap();
    let r = rights::receipt(&root, "drinks", "alice@example.org", chrono::Utc::now()).unwrap();
    let by_id = |id: &str| {
        r.agreements
            .iter()
            .find(|e| e.terms.id == id)
            .unwrap_or_else(|| panic!("{id} missing: {r:?}"))
            .clone()
    };
    assert!(matches!(
        by_id("rights-a").contribution,
        Contribution::Erased { .. }
    ));
    assert!(matches!(
        by_id("rights-b").agreement,
        AgreementState::Revoked { .. }
    ));
    let text = rights::render_text(&r);
    for needle in [
        "Where your data went",
        "erased from the clean room on",
        "was cancelled on",
        "groups of at least 10 customers",
        "snacks never received your",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    let json: serde_json::Value = serde_json::from_str(&rights::render_json(&r).unwrap()).unwrap();
    assert_eq!(json["agreements"].as_array().unwrap().len(), 2);

    // The HTML parses, is self-contained, and the hostile purpose is text, not markup.
    let html = rights::render_html(&r);
    let dom = tl::parse(&html, tl::ParserOptions::default()).unwrap();
    let parser = dom.parser();
    assert_eq!(dom.query_selector("script").unwrap().count(), 0);
    assert_eq!(dom.query_selector("b").unwrap().count(), 0);
    assert_eq!(
        dom.query_selector("meta[name=viewport]").unwrap().count(),
        1,
        "readable on a phone"
    );
    for tag in ["img", "link", "iframe", "object"] {
        assert_eq!(
            dom.query_selector(tag).unwrap().count(),
            0,
            "{tag}: no assets"
        );
    }
    let dds: Vec<String> = dom
        .query_selector("dd")
        .unwrap()
        .map(|h| h.get(parser).unwrap().inner_text(parser).into_owned())
        .collect();
    let shown_purpose = dds
        .iter()
        .find(|d| d.contains("promotions"))
        .expect("the purpose is shown");
    assert!(
        shown_purpose.contains("&lt;script&gt;"),
        "escaped in the source: {shown_purpose}"
    );
    assert!(!html.contains("<script>") && !html.contains("<b>"));

    // After `party forget`, the receipt still says what it can: took part, records deleted.
    let key = keys.drinks();
    let o = accord_party::forget::forget(
        &root,
        b.manifest(),
        "drinks",
        Some(accord_party::forget::RoomCheck {
            url: &url,
            key: &key,
        }),
        false,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert!(o.record.is_file());
    let r = rights::receipt(&root, "drinks", "alice@example.org", chrono::Utc::now()).unwrap();
    let forgotten = r
        .agreements
        .iter()
        .find(|e| e.terms.id == "rights-b")
        .unwrap();
    assert!(
        matches!(forgotten.contribution, Contribution::RecordsDeleted { .. }),
        "{forgotten:?}"
    );
    let text = rights::render_text(&r);
    assert!(
        text.contains("can no longer say whether you") && text.contains("deleted"),
        "{text}"
    );
    // A customer never shared anywhere still gets no entry for the still-present agreement;
    // the forgotten agreement is listed for everyone (it cannot tell).
    let r = rights::receipt(&root, "drinks", "nobody@example.org", chrono::Utc::now()).unwrap();
    assert_eq!(r.agreements.len(), 1);
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn withdrawn_consent_is_erased_everywhere_and_never_resurrected_by_a_stale_export() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), true, false);
    let keys = Keys::new(180);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    let a_text = agreement_with_purpose("withdraw-a", 1, &keys, "Plan promotions");
    let b_text = agreement_with_purpose("withdraw-b", 1, &keys, "Measure a campaign");
    for t in [&a_text, &b_text] {
        submit(&url, t).await.unwrap();
        run_psi(&verified(t), &keys, dir.path(), &url, 16).await;
    }
    let root = dir.path().join("drinks-state");

    // Alice withdraws consent: the new export says so. Erasing from every agreement with the
    // customer file erases her from both (carol never consented: never uploaded, not erased).
    let withdrawn = dir.path().join("drinks-withdrawn.csv");
    std::fs::create_dir_all(dir.path().join("w")).unwrap();
    write_files(&dir.path().join("w"), false, false);
    std::fs::copy(dir.path().join("w").join("drinks.csv"), &withdrawn).unwrap();
    let source = EraseSource::WithdrawnConsent {
        input: withdrawn.clone(),
        read: InputOptions {
            id_column: None,
            skip_bad_rows: false,
        },
    };
    let outcomes = rights::erase_everywhere(
        &root,
        "drinks",
        || Ok(keys.drinks()),
        &url,
        &Default::default(),
        &source,
    )
    .await
    .unwrap();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    for (label, o) in &outcomes {
        let AgreementErasure::Erased(o) = o else {
            panic!("{label}: {o:?}");
        };
        assert_eq!(o.requested, 2, "{label}: alice and carol lack consent");
        assert_eq!(o.erased, 1, "{label}: alice");
        assert_eq!(o.unaccounted.len(), 1, "{label}: carol was never uploaded");
    }
    for id in ["withdraw-a", "withdraw-b"] {
        let n = overlap_count(&url, id, &keys).await;
        assert_eq!(n, 30, "{id}: alice is gone from the overlap");
    }

    // A room restart keeps the erasure.
    room.shutdown().await;
    let room = start_room(&dir.path().join("room")).await;
    let url = self::url(&room);
    assert_eq!(overlap_count(&url, "withdraw-a", &keys).await, 30);

    // A new version of withdraw-a; drinks uploads a stale export that still says alice
    // consents. She is held back; only a recorded renewal brings her back.
    let v2 = agreement_with_purpose("withdraw-a", 2, &keys, "Plan promotions");
    submit(&url, &v2).await.unwrap();
    let v2a = verified(&v2);
    let drinks = party(&v2a, "drinks", &keys, &root, &url);
    let snacks = party(
        &v2a,
        "snacks",
        &keys,
        &dir.path().join("snacks-state"),
        &url,
    );
    let od = upload_options(dir.path().join("drinks.csv"), 16, true);
    let os = upload_options(dir.path().join("snacks.csv"), 16, true);
    let (rd, rs) = tokio::join!(
        accord_party::upload(&drinks, &od),
        accord_party::upload(&snacks, &os)
    );
    let (rd, _) = (rd.unwrap(), rs.unwrap());
    assert_eq!(rd.held_back_erased, 1, "alice is held back");
    assert_eq!(rd.rows, 30);
    let r = rights::receipt(&root, "drinks", "alice@example.org", chrono::Utc::now()).unwrap();
    assert!(
        r.agreements
            .iter()
            .all(|e| !(e.terms.version == 2
                && matches!(e.contribution, Contribution::Shared { .. }))),
        "version 2 never received alice: {r:?}"
    );
    assert!(rights::renew_consent(&root, v2a.manifest(), "alice@example.org").unwrap());
    assert!(!rights::renew_consent(&root, v2a.manifest(), "alice@example.org").unwrap());
    let memory = rights::ErasureMemory::open(&root).unwrap();
    assert!(
        memory
            .held_back(accord_psi::IdentifierKind::Email, "alice@example.org")
            .is_none()
    );
    room.shutdown().await;
}
