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
    let wrong = accord_psi::blind_concatenated(&other, &first.points[3 * 32..4 * 32]).unwrap();
    output[3 * 32..4 * 32].copy_from_slice(&wrong);

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
    room.shutdown().await;
}
