//! Agreement registration and who may read what, tried as a hostile participant would
//! (issue 11, §1 and §5): a stranger who can reach the room tries to supersede, squat or
//! shadow an agreement, to read its audit log, or to learn that it exists. Real room on
//! loopback port 0, real clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use accord_agreement::SecretKey;
use accord_party::{Connection, PartyError, Pins, Principal};
use accord_proto::v1::{self, agreements_client::AgreementsClient, audit_client::AuditClient};
use accord_room::NOT_AUTHORIZED;
use accord_tests::*;

/// The stranger's own keys for both parties, and (to shadow it) the real analyst's public key.
fn stranger_keys(real: &Keys) -> Keys {
    Keys {
        drinks: [0xd1; 32],
        snacks: [0xd2; 32],
        analyst: real.analyst,
        room: real.room,
    }
}

fn auditor_key() -> SecretKey {
    SecretKey::from_seed(&[0xa7; 32])
}

/// `text` with an `[[auditors]]` entry for [`auditor_key`], signed again by both parties.
fn with_auditor(text: &str, keys: &Keys) -> String {
    let pk = auditor_key().public_key();
    resign(text, keys, |l| {
        if l == "exact_results = true" {
            format!(
                "exact_results = true\n\n[[auditors]]\nname = \"legal@drinks.example\"\npublic_key = \"{pk}\""
            )
        } else {
            l.to_owned()
        }
    })
}

fn room_message(e: PartyError) -> String {
    match e {
        PartyError::Room(m) => m,
        other => panic!("expected a refusal by the room, got {other:?}"),
    }
}

async fn open_err(url: &str, agreement: &str, principal: Principal<'_>, key: &SecretKey) -> String {
    room_message(
        Connection::open(url, agreement, principal, key)
            .await
            .unwrap_err(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranger_cannot_supersede_an_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let real = Keys::new(110);
    let text = agreement_text("reg-takeover", 1, &real, 10, 1000);
    let agreement = verified(&text);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    let real_dir = dir
        .path()
        .join("room/agreements")
        .join(agreement.fingerprint().to_string());

    // The stranger's "version 2" of the same id, signed by keys of their own choosing and
    // naming the real analyst. Today's room superseded the real agreement with it.
    let stranger = stranger_keys(&real);
    let forged = agreement_text("reg-takeover", 2, &stranger, 10, 1000);
    let r = submit(&url, &forged).await.unwrap();
    assert_eq!(
        r.superseded, "",
        "the stranger's manifest superseded nothing"
    );
    assert!(
        real_dir.exists(),
        "the real agreement's data is still there"
    );
    // The real parties still act on the real agreement, by id and by fingerprint.
    for selector in [
        "reg-takeover".to_owned(),
        agreement.fingerprint().to_string(),
    ] {
        let conn = Connection::open(&url, &selector, Principal::Party("drinks"), &real.drinks())
            .await
            .unwrap();
        assert_eq!(conn.fingerprint(), agreement.fingerprint());
    }
    // The real analyst is never silently answered from the stranger's agreement: by id the
    // room says two agreements name the key and lists both fingerprints (after the proof).
    let key = real.analyst();
    let public = key.public_key();
    let err = open_err(&url, "reg-takeover", Principal::AnalystKey(&public), &key).await;
    assert!(
        err.contains(&agreement.fingerprint().to_string())
            && err.contains(&verified(&forged).fingerprint().to_string()),
        "{err}"
    );
    let ana = analyst(&url, &agreement.fingerprint().to_string(), &real).await;
    assert_eq!(ana.fingerprint(), agreement.fingerprint());
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_version_needs_every_old_party_key_and_key_rotation_works() {
    let dir = tempfile::tempdir().unwrap();
    let real = Keys::new(120);
    let v1_text = agreement_text("reg-rotate", 1, &real, 10, 1000);
    let v1 = verified(&v1_text);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &v1_text).await.unwrap();

    // drinks alone, with a key of its choosing as "snacks": refused, naming the key that did not sign.
    let half = Keys {
        snacks: [0xe2; 32],
        ..real
    };
    let hijack = agreement_text("reg-rotate", 2, &half, 10, 1000);
    let e = submit(&url, &hijack).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{}", e.message());
    assert!(
        e.message().contains("not signed by: snacks") && !e.message().contains("drinks ("),
        "{}",
        e.message()
    );
    // Signed by both current keys but not a higher version: refused.
    let same_version = resign(&v1_text, &real, |l| {
        if l.starts_with("purpose") {
            "purpose = \"Something else\"".into()
        } else {
            l.to_owned()
        }
    });
    let e = submit(&url, &same_version).await.unwrap_err();
    assert!(e.message().contains("higher"), "{}", e.message());

    // snacks rotates its key: the new key signs as the party, the old key in
    // [rotation_signatures]. Without the old key's signature it is the refused case above.
    let rotated = Keys {
        snacks: [0xe3; 32],
        ..real
    };
    let v2_text = agreement_text("reg-rotate", 2, &rotated, 10, 1000);
    let e = submit(&url, &v2_text).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{}", e.message());
    let v2_text = accord_agreement::sign_rotation_text(&v2_text, &real.snacks()).unwrap();
    let v2 = verified(&v2_text);
    let r = submit(&url, &v2_text).await.unwrap();
    assert_eq!(r.superseded, v1.fingerprint().to_string());
    // The new key acts for snacks; the old one no longer does.
    let conn = Connection::open(
        &url,
        "reg-rotate",
        Principal::Party("snacks"),
        &rotated.snacks(),
    )
    .await
    .unwrap();
    assert_eq!(conn.fingerprint(), v2.fingerprint());
    let err = open_err(
        &url,
        "reg-rotate",
        Principal::Party("snacks"),
        &real.snacks(),
    )
    .await;
    assert_eq!(err, NOT_AUTHORIZED);
    // The superseded version never comes back.
    let e = submit(&url, &v1_text).await.unwrap_err();
    assert!(e.message().contains("superseded"), "{}", e.message());
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_id_cannot_be_squatted_or_shadowed() {
    let dir = tempfile::tempdir().unwrap();
    let real = Keys::new(130);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    // A stranger claims the id first, with a high version, then revokes it (burning the id
    // on today's room).
    let stranger = stranger_keys(&real);
    let squat = agreement_text("reg-squat", 7, &stranger, 10, 1000);
    submit(&url, &squat).await.unwrap();
    let squat_agreement = verified(&squat);
    let revocation = accord_agreement::Revocation::sign(
        &squat_agreement,
        "drinks",
        "squatting",
        chrono::Utc::now(),
        &stranger.drinks(),
    )
    .unwrap();
    AgreementsClient::new(accord_party::client::channel(&url).await.unwrap())
        .revoke(v1::RevokeRequest {
            revocation_toml: revocation.to_toml(),
        })
        .await
        .unwrap();
    let squat2 = agreement_text("reg-squat", 8, &stranger, 10, 1000);
    submit(&url, &squat2).await.unwrap();

    // The owners register version 1 of their agreement under the same id: accepted, and
    // each agreement stays its owners'.
    let text = agreement_text("reg-squat", 1, &real, 10, 1000);
    let agreement = verified(&text);
    let r = submit(&url, &text).await.unwrap();
    assert_eq!(r.fingerprint, agreement.fingerprint().to_string());
    assert_eq!(r.superseded, "");
    let real_drinks = Connection::open(
        &url,
        "reg-squat",
        Principal::Party("drinks"),
        &real.drinks(),
    )
    .await
    .unwrap();
    assert_eq!(real_drinks.fingerprint(), agreement.fingerprint());
    let their_drinks = Connection::open(
        &url,
        "reg-squat",
        Principal::Party("drinks"),
        &stranger.drinks(),
    )
    .await
    .unwrap();
    assert_eq!(their_drinks.fingerprint(), verified(&squat2).fingerprint());

    // The analyst's client pins the fingerprint it chose, and refuses the id if the room
    // ever answers it with another one.
    let pins_path = dir.path().join("ana.pins");
    let mut pins = Pins::load(&pins_path).unwrap();
    let ana = analyst(&url, &agreement.fingerprint().to_string(), &real).await;
    pins.check(
        &url,
        ana.agreement_id(),
        &agreement.fingerprint().to_string(),
        ana.fingerprint(),
    )
    .unwrap();
    let squatted = verified(&squat2).fingerprint();
    let err = pins
        .check(&url, "reg-squat", "reg-squat", squatted)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&agreement.fingerprint().to_string()) && err.contains(&squatted.to_string()),
        "{err}"
    );
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_allow_list_decides_who_registers() {
    let dir = tempfile::tempdir().unwrap();
    let real = Keys::new(140);
    let allow = dir.path().join("allow.txt");
    std::fs::write(
        &allow,
        format!("# drinks only, for now\n{}\n", real.drinks().public_key()),
    )
    .unwrap();
    let mut config = serve_config(&dir.path().join("room"));
    config.registration_allow = Some(allow.clone());
    let room = accord_room::start(config).await.unwrap();
    let url = url(&room);
    let text = agreement_text("reg-allow", 1, &real, 10, 1000);
    let e = submit(&url, &text).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(
        e.message().contains("snacks") && !e.message().contains("drinks ("),
        "{}",
        e.message()
    );
    // The operator adds snacks; no restart needed.
    std::fs::write(
        &allow,
        format!(
            "{}\n{} # snacks\n",
            real.drinks().public_key(),
            real.snacks().public_key()
        ),
    )
    .unwrap();
    submit(&url, &text).await.unwrap();
    // A stranger's agreement is refused; so is everything if the list cannot be read.
    let stranger = agreement_text("reg-allow-2", 1, &Keys::new(141), 10, 1000);
    assert_eq!(
        submit(&url, &stranger).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    std::fs::remove_file(&allow).unwrap();
    let e = submit(&url, &agreement_text("reg-allow-3", 1, &real, 10, 1000))
        .await
        .unwrap_err();
    assert!(e.message().contains("allow-list"), "{}", e.message());
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_parties_and_auditors_read_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let real = Keys::new(150);
    let text = with_auditor(&agreement_text("reg-audit", 1, &real, 10, 1000), &real);
    let agreement = verified(&text);
    let fp = agreement.fingerprint().to_string();
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    // 300 refused queries (not sealed yet): more entries than one page holds.
    let ana = analyst(&url, "reg-audit", &real).await;
    let mut query = accord_proto::v1::query_client::QueryClient::new(ana.channel());
    for _ in 0..300 {
        let e = query
            .run(ana.request(v1::RunQueryRequest {
                sql: "SELECT COUNT(*) FROM overlap".into(),
            }))
            .await
            .unwrap_err();
        assert!(e.message().contains("not sealed"), "{}", e.message());
    }
    // No session: refused. An analyst's session: refused.
    let mut audit = AuditClient::new(accord_party::client::channel(&url).await.unwrap());
    let e = audit
        .fetch(v1::FetchAuditRequest {
            fingerprint: fp.clone(),
            start: 0,
            max_entries: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{}", e.message());
    let e = AuditClient::new(ana.channel())
        .fetch(ana.request(v1::FetchAuditRequest {
            fingerprint: fp.clone(),
            start: 0,
            max_entries: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{}", e.message());
    assert!(e.message().contains("analysts may not"), "{}", e.message());

    // The auditor (legal) reads it, page by page, pages bounded by the room.
    let auditor = auditor_key();
    let mut legal = Connection::open(&url, "reg-audit", Principal::Auditor(""), &auditor)
        .await
        .unwrap();
    assert_eq!(legal.principal_name(), "legal@drinks.example");
    let mut client = AuditClient::new(legal.channel());
    let page = client
        .fetch(legal.request(v1::FetchAuditRequest {
            fingerprint: fp.clone(),
            start: 0,
            max_entries: 100_000,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.entries.len(),
        accord_proto::limits::MAX_AUDIT_PAGE_ENTRIES
    );
    assert_eq!(
        page.head.as_ref().unwrap().entries,
        301,
        "registered + 300 queries"
    );
    let page = client
        .fetch(legal.request(v1::FetchAuditRequest {
            fingerprint: String::new(),
            start: 299,
            max_entries: 5,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.entries.len(), 2);
    assert!(
        page.entries[1].contains("\"seq\":301"),
        "{}",
        page.entries[1]
    );
    let (entries, head) = legal.audit_log().await.unwrap();
    assert_eq!(entries.len(), 301);
    accord_room::audit::verify_log(&entries, &head, legal.room_key()).unwrap();
    // An auditor can do nothing else: not query, not act as a party.
    let e = accord_proto::v1::query_client::QueryClient::new(legal.channel())
        .run(legal.request(v1::RunQueryRequest {
            sql: "SELECT COUNT(*) FROM overlap".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // Another agreement's session cannot read this one's log.
    let other = agreement_text("reg-audit-other", 1, &Keys::new(151), 10, 1000);
    submit(&url, &other).await.unwrap();
    let other_party = Connection::open(
        &url,
        "reg-audit-other",
        Principal::Party("drinks"),
        &Keys::new(151).drinks(),
    )
    .await
    .unwrap();
    let e = AuditClient::new(other_party.channel())
        .fetch(other_party.request(v1::FetchAuditRequest {
            fingerprint: fp.clone(),
            start: 0,
            max_entries: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.message(), NOT_AUTHORIZED);

    // After revocation the parties and the auditor still read the log, by fingerprint; the
    // analyst cannot even open a session.
    let revocation = accord_agreement::Revocation::sign(
        &agreement,
        "snacks",
        "done",
        chrono::Utc::now(),
        &real.snacks(),
    )
    .unwrap();
    AgreementsClient::new(accord_party::client::channel(&url).await.unwrap())
        .revoke(v1::RevokeRequest {
            revocation_toml: revocation.to_toml(),
        })
        .await
        .unwrap();
    let mut legal = Connection::open(&url, &fp, Principal::Auditor(""), &auditor)
        .await
        .unwrap();
    let (entries, _) = legal.audit_log().await.unwrap();
    assert!(entries.last().unwrap().contains("data_deleted"));
    let (entries, _) = party_audit_log(&url, &fp, "drinks", &real.drinks()).await;
    assert_eq!(
        entries.len(),
        303,
        "registered, 300 queries, revoked, data_deleted"
    );
    let key = real.analyst();
    let public = key.public_key();
    assert_eq!(
        open_err(&url, &fp, Principal::AnalystKey(&public), &key).await,
        NOT_AUTHORIZED
    );
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_learn_nothing_before_proving_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let real = Keys::new(160);
    let text = agreement_text("reg-secret", 1, &real, 10, 1000);
    let agreement = verified(&text);
    let ended_text = agreement_text("reg-ended", 1, &real, 10, 1000);
    let ended = verified(&ended_text);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    submit(&url, &ended_text).await.unwrap();
    let revocation = accord_agreement::Revocation::sign(
        &ended,
        "drinks",
        "ended",
        chrono::Utc::now(),
        &real.drinks(),
    )
    .unwrap();
    let mut agreements = AgreementsClient::new(accord_party::client::channel(&url).await.unwrap());
    agreements
        .revoke(v1::RevokeRequest {
            revocation_toml: revocation.to_toml(),
        })
        .await
        .unwrap();

    // The challenge answer is the same for an agreement that exists and one that does not.
    let mut auth =
        v1::auth_client::AuthClient::new(accord_party::client::channel(&url).await.unwrap());
    let stranger = SecretKey::from_seed(&[0x5e; 32]);
    let mut answers = Vec::new();
    for selector in ["reg-secret", "no-such-agreement"] {
        let c = auth
            .challenge(v1::ChallengeRequest {
                agreement: selector.into(),
                principal: Some(v1::Principal {
                    kind: Some(v1::principal::Kind::Party(String::new())),
                }),
                client_nonce: vec![1; 32],
                public_key: stranger.public_key().to_bytes().to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(c.room_nonce.len(), 32);
        answers.push(c.room_public_key);
    }
    assert_eq!(answers[0], answers[1]);

    // Every way of not proving a key the agreement names gets the same words.
    let fp = agreement.fingerprint().to_string();
    let ended_fp = ended.fingerprint().to_string();
    let analyst_key = real.analyst();
    let mut refusals = vec![
        open_err(&url, "reg-secret", Principal::Party(""), &stranger).await,
        open_err(&url, "reg-secret", Principal::Party("drinks"), &stranger).await,
        open_err(
            &url,
            "no-such-agreement",
            Principal::Party("drinks"),
            &stranger,
        )
        .await,
        open_err(&url, &fp, Principal::Auditor(""), &stranger).await,
        open_err(&url, &ended_fp, Principal::Party("drinks"), &stranger).await,
        open_err(
            &url,
            "reg-ended",
            Principal::Party("drinks"),
            &real.drinks(),
        )
        .await,
        open_err(
            &url,
            "reg-secret",
            Principal::Party("snacks"),
            &real.drinks(),
        )
        .await,
        open_err(&url, "reg-secret", Principal::Party(""), &analyst_key).await,
        open_err(&url, "reg-secret", Principal::Auditor(""), &real.drinks()).await,
    ];
    refusals.dedup();
    assert_eq!(refusals, [NOT_AUTHORIZED], "{refusals:#?}");
    for leak in [fp.as_str(), "drinks", "snacks", "revoked"] {
        assert!(!NOT_AUTHORIZED.contains(leak));
    }

    // A bad signature with a named key: the same words.
    let c = auth
        .challenge(v1::ChallengeRequest {
            agreement: "reg-secret".into(),
            principal: Some(v1::Principal {
                kind: Some(v1::principal::Kind::Party("drinks".into())),
            }),
            client_nonce: vec![2; 32],
            public_key: real.drinks().public_key().to_bytes().to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let e = auth
        .authenticate(v1::AuthenticateRequest {
            agreement: "reg-secret".into(),
            principal: Some(v1::Principal {
                kind: Some(v1::principal::Kind::Party("drinks".into())),
            }),
            room_nonce: c.room_nonce,
            client_nonce: vec![2; 32],
            signature: vec![0; 64],
            public_key: real.drinks().public_key().to_bytes().to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.message(), NOT_AUTHORIZED);

    // Revocations cannot probe either: unknown, ended, or signed by a stranger look alike.
    let stranger_agreement = verified(&agreement_text(
        "reg-secret",
        1,
        &stranger_keys(&Keys::new(161)),
        10,
        1000,
    ));
    let mut probes = Vec::new();
    for (target, key) in [
        (&stranger_agreement, stranger_keys(&Keys::new(161)).drinks()),
        (&ended, real.drinks()),
    ] {
        let statement =
            accord_agreement::Revocation::sign(target, "drinks", "probe", chrono::Utc::now(), &key)
                .unwrap();
        let e = agreements
            .revoke(v1::RevokeRequest {
                revocation_toml: statement.to_toml(),
            })
            .await
            .unwrap_err();
        probes.push((e.code(), e.message().to_owned()));
    }
    // The real agreement's fingerprint with a stranger's signature.
    let mut forged = accord_agreement::Revocation::sign(
        &stranger_agreement,
        "drinks",
        "probe",
        chrono::Utc::now(),
        &stranger_keys(&Keys::new(161)).drinks(),
    )
    .unwrap();
    forged.fingerprint = agreement.fingerprint();
    forged.agreement_id = "reg-secret".into();
    let e = agreements
        .revoke(v1::RevokeRequest {
            revocation_toml: forged.to_toml(),
        })
        .await
        .unwrap_err();
    probes.push((e.code(), e.message().to_owned()));
    probes.dedup();
    assert_eq!(probes.len(), 1, "{probes:#?}");
    assert_eq!(probes[0].0, tonic::Code::PermissionDenied);
    // The real agreement is untouched.
    Connection::open(
        &url,
        "reg-secret",
        Principal::Party("drinks"),
        &real.drinks(),
    )
    .await
    .unwrap();
    room.shutdown().await;
}
