//! Verifiable blinding end to end (issue 12): a partner that blinds some of the other party's
//! points with a key other than the one it committed to is refused by the room before a single
//! token is stored, the owner sees it, and the batch can still be blinded correctly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use accord_agreement::sig::Purpose;
use accord_proto::v1::{self, psi_client::PsiClient, return_work_message::Kind};
use accord_psi::{DleqContext, PsiSecret, blind_and_prove};
use accord_tests::*;

fn customers(party: &str, n: usize) -> Vec<Customer> {
    (0..n)
        .map(|i| Customer {
            email: format!("person{i}@example.com"),
            consent: true,
            cells: if party == "drinks" {
                vec![
                    ["gold", "silver"][i % 2].into(),
                    "north".into(),
                    format!("{}", i % 50),
                ]
            } else {
                vec!["crisps".into(), format!("{}", i % 20)]
            },
        })
        .collect()
}

fn commitment_message(
    fp: &[u8; 32],
    party: &str,
    secret: &PsiSecret,
    keys: &Keys,
) -> v1::ReturnWorkMessage {
    let k = secret.commitment();
    let message = accord_proto::signed::key_commitment(fp, party, &k);
    v1::ReturnWorkMessage {
        kind: Some(Kind::Commitment(v1::KeyCommitment {
            commitment: k.to_vec(),
            signature: keys
                .snacks()
                .sign(Purpose::PsiKeyCommitment, &message)
                .to_bytes()
                .to_vec(),
        })),
    }
}

fn blinded(n: u64, points: Vec<u8>, proof: Vec<u8>) -> v1::ReturnWorkMessage {
    v1::ReturnWorkMessage {
        kind: Some(Kind::Blinded(v1::BlindedBatch {
            batch_number: n,
            points,
            proof,
        })),
    }
}

fn audit_text(room_dir: &Path, fp: &str) -> String {
    std::fs::read_to_string(room_dir.join("audit").join(format!("{fp}.jsonl"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partner_that_alters_one_point_is_refused_seen_and_recoverable() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(61);
    let text = agreement_text("e2e-dleq", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let fp = agreement.fingerprint();
    let room_dir = dir.path().join("room");
    let room = start_room(&room_dir).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    write_csv(
        &dir.path().join("drinks.csv"),
        "drinks",
        &customers("drinks", 60),
    );
    let drinks = party(
        &agreement,
        "drinks",
        &keys,
        &dir.path().join("drinks-state"),
        &url,
    );
    accord_party::upload(
        &drinks,
        &upload_options(dir.path().join("drinks.csv"), 25, false),
    )
    .await
    .unwrap();

    // snacks, cheating: fetch drinks' batches and blind them with its committed key, except
    // one point of the first batch, blinded with another key (still a valid point).
    let conn = accord_party::Connection::open(
        &url,
        "e2e-dleq",
        accord_party::Principal::Party("snacks"),
        &keys.snacks(),
    )
    .await
    .unwrap();
    let mut psi = PsiClient::new(conn.channel());
    let mut stream = psi
        .fetch_work(conn.request(v1::FetchWorkRequest { max_batches: 0 }))
        .await
        .unwrap()
        .into_inner();
    let mut work = Vec::new();
    while let Some(w) = stream.message().await.unwrap() {
        work.push(w);
    }
    assert_eq!(work.len(), 3, "60 rows in batches of 25");
    let first = &work[0];
    let secret = PsiSecret::generate().unwrap();
    let context = DleqContext {
        agreement: fp.as_bytes(),
        prover: "snacks",
        owner: "drinks",
        batch: first.batch_number,
    };
    let (mut output, proof) = blind_and_prove(&secret, &context, &first.points).unwrap();
    let other = PsiSecret::generate().unwrap();
    let fourth = 3 * accord_psi::POINT_LEN..4 * accord_psi::POINT_LEN;
    let wrong = accord_psi::blind_concatenated(&other, &first.points[fourth.clone()]).unwrap();
    output[fourth].copy_from_slice(&wrong);

    // Without a commitment first, no blinded batch is accepted.
    let status = psi
        .return_work(conn.request(futures::stream::iter(vec![blinded(
            first.batch_number,
            output.clone(),
            proof.to_vec(),
        )])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("before committing"),
        "{}",
        status.message()
    );

    // With the commitment, the altered point makes the proof fail.
    let status = psi
        .return_work(conn.request(futures::stream::iter(vec![
            commitment_message(fp.as_bytes(), "snacks", &secret, &keys),
            blinded(first.batch_number, output.clone(), proof.to_vec()),
        ])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("blinding proof of batch 0 refused"),
        "{}",
        status.message()
    );
    // A missing proof is refused the same way (not accepted as "no proof needed").
    let status = psi
        .return_work(conn.request(futures::stream::iter(vec![blinded(
            first.batch_number,
            output,
            Vec::new(),
        )])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Nothing was stored: drinks still has no tokenized batch, and sees two failures.
    let st = accord_party::status(&drinks).await.unwrap();
    assert_eq!(st.batches_tokenized, 0);
    assert_eq!(st.partner_proof_failures, 2);
    let audit = audit_text(&room_dir, &fp.to_string());
    assert_eq!(
        audit.matches("\"event\":\"blinding_proof_failed\"").count(),
        2,
        "{audit}"
    );
    assert_eq!(
        audit.matches("\"event\":\"key_committed\"").count(),
        1,
        "{audit}"
    );
    // drinks' sync explains instead of waiting forever.
    let err = accord_party::sync(&drinks, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("whose proof did not verify"), "{err}");

    // A second, different key for snacks is refused.
    let status = psi
        .return_work(conn.request(futures::stream::iter(vec![commitment_message(
            fp.as_bytes(),
            "snacks",
            &other,
            &keys,
        )])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");

    // Recovery: the batch still waits, and an honest blinding with a proof is accepted.
    let (output, proof) = blind_and_prove(&secret, &context, &first.points).unwrap();
    let response = psi
        .return_work(conn.request(futures::stream::iter(vec![
            commitment_message(fp.as_bytes(), "snacks", &secret, &keys),
            blinded(first.batch_number, output, proof.to_vec()),
        ])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.accepted, 1);
    let st = accord_party::status(&drinks).await.unwrap();
    assert_eq!(st.batches_tokenized, 1);

    // A proof made for batch 0 does not pass for batch 1 (context binding).
    let second = &work[1];
    let (output, proof) = blind_and_prove(&secret, &context, &second.points).unwrap();
    let status = psi
        .return_work(conn.request(futures::stream::iter(vec![blinded(
            second.batch_number,
            output,
            proof.to_vec(),
        )])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn honest_parties_prove_every_batch_and_seal() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(62);
    let text = agreement_text("e2e-dleq-ok", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let room_dir = dir.path().join("room");
    let room = start_room(&room_dir).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    write_csv(
        &dir.path().join("drinks.csv"),
        "drinks",
        &customers("drinks", 80),
    );
    write_csv(
        &dir.path().join("snacks.csv"),
        "snacks",
        &customers("snacks", 70),
    );
    run_psi(&agreement, &keys, dir.path(), &url, 20).await;
    let audit = audit_text(&room_dir, &agreement.fingerprint().to_string());
    assert_eq!(
        audit.matches("\"event\":\"key_committed\"").count(),
        2,
        "{audit}"
    );
    assert_eq!(audit.matches("blinding_proof_failed").count(), 0, "{audit}");
    // The point tags of the cross-batch duplicate check are deleted at sealing.
    let seen: Vec<_> = files_under(&room_dir)
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "seen"))
        .collect();
    assert!(seen.is_empty(), "{seen:?}");
    room.shutdown().await;
}

/// A signed batch from drinks with two rows, as the party would send it.
fn signed_batch(fp: &[u8; 32], keys: &Keys) -> v1::UploadBatch {
    let points: Vec<u8> = (0..2u8)
        .flat_map(|i| {
            accord_psi::HashDomain::new("e2e-rows", accord_psi::IdentifierKind::Email)
                .hash_compressed(&[i])
        })
        .collect();
    let columns = vec![
        v1::Column {
            name: "loyalty_tier".into(),
            values: Some(v1::column::Values::Text(v1::TextValues {
                values: vec!["gold".into(), "silver".into()],
                present: vec![],
            })),
        },
        v1::Column {
            name: "region".into(),
            values: Some(v1::column::Values::Text(v1::TextValues {
                values: vec!["north".into(), "south".into()],
                present: vec![],
            })),
        },
        v1::Column {
            name: "monthly_spend".into(),
            values: Some(v1::column::Values::Number(v1::NumberValues {
                values: vec![10.0, 20.0],
                present: vec![],
            })),
        },
    ];
    let salt = [7u8; 32];
    let handles: Vec<u8> = (0..32u8).collect();
    let digest = accord_proto::rows_digest(&salt, &handles, &columns);
    let message = accord_proto::signed::upload_batch(fp, "drinks", 0, &points, &digest);
    v1::UploadBatch {
        batch_number: 0,
        handles,
        points,
        columns,
        signature: keys
            .drinks()
            .sign(Purpose::UploadBatch, &message)
            .to_bytes()
            .to_vec(),
        salt: salt.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_handle_or_attribute_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(63);
    let text = agreement_text("e2e-rows", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let fp = *agreement.fingerprint().as_bytes();
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    let conn = accord_party::Connection::open(
        &url,
        "e2e-rows",
        accord_party::Principal::Party("drinks"),
        &keys.drinks(),
    )
    .await
    .unwrap();
    let psi = PsiClient::new(conn.channel());
    let send = |batch: v1::UploadBatch| {
        let mut psi = psi.clone();
        let req = conn.request(futures::stream::iter(vec![v1::UploadMessage {
            kind: Some(v1::upload_message::Kind::Batch(batch)),
        }]));
        async move { psi.upload(req).await }
    };
    let mut changed_attribute = signed_batch(&fp, &keys);
    if let Some(v1::column::Values::Number(n)) = &mut changed_attribute.columns[2].values {
        n.values[1] = 499.0;
    }
    let mut changed_handle = signed_batch(&fp, &keys);
    changed_handle.handles[17] ^= 0x01;
    let mut nulled = signed_batch(&fp, &keys);
    if let Some(v1::column::Values::Text(t)) = &mut nulled.columns[0].values {
        t.present = vec![true, false];
    }
    let mut other_salt = signed_batch(&fp, &keys);
    other_salt.salt = vec![8; 32];
    for (what, batch) in [
        ("attribute", changed_attribute),
        ("handle", changed_handle),
        ("present flag", nulled),
        ("salt", other_salt),
    ] {
        let e = send(batch).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
        assert!(
            e.message().contains("signature does not verify"),
            "{what}: {}",
            e.message()
        );
    }
    let mut no_salt = signed_batch(&fp, &keys);
    no_salt.salt.clear();
    let e = send(no_salt).await.unwrap_err();
    assert!(e.message().contains("salt"), "{}", e.message());
    // The untouched batch is accepted, and the partner receives the digest its signature covers.
    send(signed_batch(&fp, &keys)).await.unwrap();
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_rooms_of_other_protocol_versions_refuse_each_other_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    let challenge = |agent: Option<String>| {
        let url = url.clone();
        async move {
            let mut endpoint = tonic::transport::Endpoint::from_shared(url).unwrap();
            if let Some(agent) = agent {
                endpoint = endpoint.user_agent(agent).unwrap();
            }
            let channel = endpoint.connect().await.unwrap();
            v1::auth_client::AuthClient::new(channel)
                .challenge(v1::ChallengeRequest {
                    agreement: "anything".into(),
                    principal: None,
                    client_nonce: vec![0; 32],
                    public_key: vec![0; 32],
                })
                .await
                .unwrap_err()
        }
    };
    // An accord 0.1 client (protocol 1) sends no version.
    let e = challenge(None).await;
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("protocol 1") && e.message().contains("protocol 3"),
        "{}",
        e.message()
    );
    // A protocol 2 client (8-byte string lengths in its signatures) and a newer one.
    for other in ["2", "4"] {
        let e = challenge(Some(format!("accord-protocol/{other}"))).await;
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains(&format!("protocol {other}"))
                && e.message().contains("protocol 3"),
            "{}",
            e.message()
        );
    }
    // And a client of this build refuses a room that does not announce protocol 3.
    for (room_version, named) in [(0, "protocol 1"), (2, "protocol 2"), (4, "protocol 4")] {
        let e = accord_party::client::check_room_protocol("http://other-room", room_version)
            .unwrap_err()
            .to_string();
        assert!(e.contains(named) && e.contains("protocol 3"), "{e}");
    }
    assert!(accord_party::client::check_room_protocol("http://room", 3).is_ok());
    room.shutdown().await;
}

/// A signed batch `number` of drinks with one row per seed: point `H(seed)`, handle
/// `seed` repeated, and a value in each of drinks' three columns.
fn seeded_batch(fp: &[u8; 32], keys: &Keys, number: u64, seeds: &[u8]) -> v1::UploadBatch {
    let domain = accord_psi::HashDomain::new("e2e-dups", accord_psi::IdentifierKind::Email);
    let points: Vec<u8> = seeds
        .iter()
        .flat_map(|s| domain.hash_compressed(&[*s]))
        .collect();
    let handles: Vec<u8> = seeds.iter().flat_map(|s| [*s; 16]).collect();
    let text = |name: &str| v1::Column {
        name: name.into(),
        values: Some(v1::column::Values::Text(v1::TextValues {
            values: seeds.iter().map(|s| format!("v{s}")).collect(),
            present: vec![],
        })),
    };
    let columns = vec![
        text("loyalty_tier"),
        text("region"),
        v1::Column {
            name: "monthly_spend".into(),
            values: Some(v1::column::Values::Number(v1::NumberValues {
                values: seeds.iter().map(|s| f64::from(*s)).collect(),
                present: vec![],
            })),
        },
    ];
    let salt = [number as u8; 32];
    let digest = accord_proto::rows_digest(&salt, &handles, &columns);
    let message = accord_proto::signed::upload_batch(fp, "drinks", number, &points, &digest);
    v1::UploadBatch {
        batch_number: number,
        handles,
        points,
        columns,
        signature: keys
            .drinks()
            .sign(Purpose::UploadBatch, &message)
            .to_bytes()
            .to_vec(),
        salt: salt.to_vec(),
    }
}

async fn send_batch(
    conn: &accord_party::Connection,
    batch: v1::UploadBatch,
) -> Result<v1::UploadResponse, tonic::Status> {
    let mut psi = PsiClient::new(conn.channel());
    let req = conn.request(futures::stream::iter(vec![v1::UploadMessage {
        kind: Some(v1::upload_message::Kind::Batch(batch)),
    }]));
    psi.upload(req).await.map(tonic::Response::into_inner)
}

/// Issue 12: a point a party already uploaded in an earlier batch of the same agreement
/// version is refused at upload (not only counted at sealing), also after a room restart;
/// an identical resend of a stored batch is still acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_repeated_across_batches_is_refused_at_upload() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(64);
    let text = agreement_text("e2e-dups", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let fp = *agreement.fingerprint().as_bytes();
    let room_dir = dir.path().join("room");
    let room = start_room(&room_dir).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    let open = |url: String| {
        let key = keys.drinks();
        async move {
            accord_party::Connection::open(
                &url,
                "e2e-dups",
                accord_party::Principal::Party("drinks"),
                &key,
            )
            .await
            .unwrap()
        }
    };
    let conn = open(url.clone()).await;
    let stored = send_batch(&conn, seeded_batch(&fp, &keys, 0, &[0, 1]))
        .await
        .unwrap();
    assert_eq!((stored.batches_stored, stored.rows_stored), (1, 2));

    // Batch 1 repeats batch 0's second point (row 1 of batch 1).
    let repeat = seeded_batch(&fp, &keys, 1, &[2, 1]);
    let e = send_batch(&conn, repeat.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    for needle in [
        "batch 1 of drinks",
        "row 1",
        "already uploaded in batch 0",
        "Nothing was stored",
    ] {
        assert!(e.message().contains(needle), "{needle}: {}", e.message());
    }
    // A repeat inside one batch was already refused.
    let e = send_batch(&conn, seeded_batch(&fp, &keys, 1, &[3, 3]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // An identical resend of batch 0 (a resumed upload) is acknowledged without change.
    let again = send_batch(&conn, seeded_batch(&fp, &keys, 0, &[0, 1]))
        .await
        .unwrap();
    assert_eq!((again.batches_stored, again.rows_stored), (1, 2));

    // The room remembers batch 0's points across a restart.
    room.shutdown().await;
    let room = start_room(&room_dir).await;
    let conn = open(self::url(&room)).await;
    let e = send_batch(&conn, repeat).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("already uploaded in batch 0"),
        "{}",
        e.message()
    );
    // Without the repeat, batch 1 is accepted.
    let stored = send_batch(&conn, seeded_batch(&fp, &keys, 1, &[2, 3]))
        .await
        .unwrap();
    assert_eq!((stored.batches_stored, stored.rows_stored), (2, 4));
    room.shutdown().await;
}

/// Issue 12: the recovery path of a refused batch, as docs/PROTOCOL.md "Refusals and recovery"
/// documents it. The partner's state directory claims drinks' batch 0 was blinded before with
/// other points, so the partner's real client refuses it (`blinded-before`); drinks sees the
/// refusal with its explanation in `Status.refused_batches` and from `sync`, the audit log
/// records it, and this version can never seal. Both parties sign version 2, submit it, upload
/// again, and the room seals and answers a query.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_batch_is_explained_and_a_new_version_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(65);
    let v1_text = agreement_text("e2e-recover", 1, &keys, 10, 10_000);
    let v1 = verified(&v1_text);
    let room_dir = dir.path().join("room");
    let room = start_room(&room_dir).await;
    let url = url(&room);
    submit(&url, &v1_text).await.unwrap();
    write_csv(
        &dir.path().join("drinks.csv"),
        "drinks",
        &customers("drinks", 60),
    );
    write_csv(
        &dir.path().join("snacks.csv"),
        "snacks",
        &customers("snacks", 40),
    );
    let (drinks_state, snacks_state) = (
        dir.path().join("drinks-state"),
        dir.path().join("snacks-state"),
    );
    let drinks = party(&v1, "drinks", &keys, &drinks_state, &url);
    let snacks = party(&v1, "snacks", &keys, &snacks_state, &url);
    accord_party::upload(
        &drinks,
        &upload_options(dir.path().join("drinks.csv"), 25, false),
    )
    .await
    .unwrap();
    accord_party::upload(
        &snacks,
        &upload_options(dir.path().join("snacks.csv"), 25, false),
    )
    .await
    .unwrap();
    // snacks' state directory for v1 says batch 0 of drinks was blinded with other points.
    let log = snacks_state
        .join("e2e-recover")
        .join(v1.fingerprint().to_string())
        .join("blinded-drinks");
    std::fs::write(&log, format!("0 {} 25\n", "ab".repeat(32))).unwrap();
    accord_party::sync(&snacks, false).await.unwrap();

    // drinks sees the refusal, with the code's meaning and the documented way out.
    let st = accord_party::status(&drinks).await.unwrap();
    assert_eq!(st.refused_batches.len(), 1, "{st:?}");
    let refused = &st.refused_batches[0];
    assert_eq!(refused.batch_number, 0);
    assert!(
        refused.reason.starts_with("blinded-before: "),
        "{}",
        refused.reason
    );
    let next = accord_party::display::refusal_next_step(&refused.reason);
    for needle in ["state directory", "new agreement version", "upload"] {
        assert!(next.contains(needle), "{needle}: {next}");
    }
    let err = accord_party::sync(&drinks, true)
        .await
        .unwrap_err()
        .to_string();
    for needle in [
        "snacks refused to blind batch 0",
        "already blinded with other points [blinded-before]",
        "can never seal",
        "new agreement version",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let audit = audit_text(&room_dir, &v1.fingerprint().to_string());
    assert_eq!(
        audit.matches("\"event\":\"batch_refused\"").count(),
        1,
        "{audit}"
    );
    assert!(!audit.contains("\"event\":\"sealed\""), "{audit}");
    // The other batches were blinded; batch 0 stays refused, so v1 never seals.
    assert_eq!(st.batches_tokenized, 2);
    assert!(!st.tokens_complete);

    // Recovery: version 2, signed by both, submitted; both upload again (fresh state per version).
    let v2_text = resign(&v1_text, &keys, |l| {
        if l.starts_with("version") {
            "version = 2".to_owned()
        } else {
            l.to_owned()
        }
    });
    let v2 = verified(&v2_text);
    let registered = submit(&url, &v2_text).await.unwrap();
    assert_eq!(registered.superseded, v1.fingerprint().to_string());
    run_psi(&v2, &keys, dir.path(), &url, 25).await;
    let mut ana = analyst(&url, "e2e-recover", &keys).await;
    let batches = grpc_query(&mut ana, "SELECT COUNT(*) AS n FROM overlap")
        .await
        .unwrap();
    let n = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    // customers() gives both parties person0.. so the overlap is snacks' 40.
    assert_eq!(n, 40);
    room.shutdown().await;
}

/// docs/PROTOCOL.md "FetchWork and ReturnWork, precisely": no leases (a fetch repeats the
/// pending batches, in ascending order), a batch that was not fetched is accepted on its
/// proof, a second answer for a tokenized batch is acknowledged and ignored (even a wrong one,
/// which is not verified and changes nothing), a refusal of a tokenized batch is ignored, an
/// unknown batch is NOT_FOUND and a refusal without a known code INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetch_and_return_work_behave_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(66);
    let text = agreement_text("e2e-work", 1, &keys, 10, 10_000);
    let agreement = verified(&text);
    let fp = agreement.fingerprint();
    let room_dir = dir.path().join("room");
    let room = start_room(&room_dir).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    write_csv(
        &dir.path().join("drinks.csv"),
        "drinks",
        &customers("drinks", 60),
    );
    let drinks = party(
        &agreement,
        "drinks",
        &keys,
        &dir.path().join("drinks-state"),
        &url,
    );
    accord_party::upload(
        &drinks,
        &upload_options(dir.path().join("drinks.csv"), 25, false),
    )
    .await
    .unwrap();
    let conn = accord_party::Connection::open(
        &url,
        "e2e-work",
        accord_party::Principal::Party("snacks"),
        &keys.snacks(),
    )
    .await
    .unwrap();
    let mut psi = PsiClient::new(conn.channel());
    let fetcher = psi.clone();
    let fetch = |max: u32| {
        let mut psi = fetcher.clone();
        let req = conn.request(v1::FetchWorkRequest { max_batches: max });
        async move {
            let mut stream = psi.fetch_work(req).await.unwrap().into_inner();
            let mut out = Vec::new();
            while let Some(w) = stream.message().await.unwrap() {
                out.push(w);
            }
            out
        }
    };
    // No leases: the same pending batch again, in ascending order.
    let first = fetch(1).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].batch_number, 0);
    assert_eq!(fetch(1).await[0].batch_number, 0);
    let all = fetch(0).await;
    assert_eq!(
        all.iter().map(|w| w.batch_number).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );

    // Batch 1 was never fetched by a call that returned it alone: accepted on its proof.
    let secret = PsiSecret::generate().unwrap();
    let commit = || commitment_message(fp.as_bytes(), "snacks", &secret, &keys);
    let context = DleqContext {
        agreement: fp.as_bytes(),
        prover: "snacks",
        owner: "drinks",
        batch: 1,
    };
    let (output, proof) = blind_and_prove(&secret, &context, &all[1].points).unwrap();
    let r = psi
        .return_work(conn.request(futures::stream::iter(vec![
            commit(),
            blinded(1, output.clone(), proof.to_vec()),
        ])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.accepted, r.refused), (1, 0));

    // A second, different answer for batch 1 is acknowledged and ignored (not verified).
    let mut wrong = output.clone();
    wrong[..32].copy_from_slice(&all[1].points[..32]);
    let refusal = |n: u64, reason: &str| v1::ReturnWorkMessage {
        kind: Some(Kind::Refusal(v1::WorkRefusal {
            batch_number: n,
            reason: reason.into(),
        })),
    };
    let r = psi
        .return_work(conn.request(futures::stream::iter(vec![
            blinded(1, wrong, vec![0; 64]),
            refusal(1, "over-cap: changed my mind"),
        ])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.accepted, r.refused), (1, 1));
    let st = accord_party::status(&drinks).await.unwrap();
    assert_eq!(st.batches_tokenized, 1);
    assert!(st.refused_batches.is_empty(), "{st:?}");
    assert_eq!(st.partner_proof_failures, 0);
    let audit = audit_text(&room_dir, &fp.to_string());
    assert!(!audit.contains("blinding_proof_failed"), "{audit}");
    assert!(!audit.contains("batch_refused"), "{audit}");
    // The tokenized batch is no longer offered.
    assert_eq!(
        fetch(0)
            .await
            .iter()
            .map(|w| w.batch_number)
            .collect::<Vec<_>>(),
        vec![0, 2]
    );

    // An unknown batch, and a refusal without one of the codes.
    let e = psi
        .return_work(conn.request(futures::stream::iter(vec![blinded(
            99,
            output,
            proof.to_vec(),
        )])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = psi
        .return_work(conn.request(futures::stream::iter(vec![refusal(
            0,
            "please wire money: now",
        )])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    room.shutdown().await;
}
