//! Known-answer vectors for every signed message, parsed out of `docs/PROTOCOL.md` ("Signed
//! message vectors") so that the document and the code cannot drift (issue 12). Each message
//! is written here byte by byte from the documented layout, compared with the builders the
//! room and the parties use (`accord_proto::signed`, `Revocation::signed_bytes`), with the
//! documented hex and SHA-256, and signed with the documented test keys (Ed25519 is
//! deterministic, so the signatures are known answers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use accord_agreement::sig::Purpose;
use accord_agreement::{Fingerprint, Revocation, SecretKey, Signature};
use accord_proto::v1;
use chrono::TimeZone as _;
use sha2::{Digest, Sha256};

const PROTOCOL_MD: &str = include_str!("../docs/PROTOCOL.md");

/// Table rows (cells trimmed, backticks removed) of the section whose heading is `heading`.
fn table_rows(heading: &str) -> Vec<Vec<String>> {
    let section = PROTOCOL_MD
        .split("\n### ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no section {heading:?}"));
    section
        .lines()
        .take_while(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with('|') && !line.starts_with("|--"))
        .skip(1)
        .map(|line| {
            let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
            inner
                .split('|')
                .map(|cell| cell.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The documented inputs, by name (the value column).
fn inputs() -> BTreeMap<String, String> {
    table_rows("Signed message inputs")
        .into_iter()
        .map(|r| (r[0].clone(), r[2].clone()))
        .collect()
}

fn h32(inputs: &BTreeMap<String, String>, name: &str) -> [u8; 32] {
    hex::decode(&inputs[name]).unwrap().try_into().unwrap()
}

/// `str` of PROTOCOL.md and AGREEMENTS.md (one encoding since protocol 3): u32be length,
/// then the bytes.
fn str32(s: &str) -> Vec<u8> {
    [
        &u32::try_from(s.len()).unwrap().to_be_bytes()[..],
        s.as_bytes(),
    ]
    .concat()
}

fn signed(purpose: &str, message: &[u8]) -> Vec<u8> {
    [format!("accord/v1/{purpose}").as_bytes(), &[0], message].concat()
}

/// The two columns the rows-digest vector covers.
fn columns() -> Vec<v1::Column> {
    vec![
        v1::Column {
            name: "loyalty_tier".into(),
            values: Some(v1::column::Values::Text(v1::TextValues {
                values: vec!["gold".into(), "silver".into()],
                present: vec![],
            })),
        },
        v1::Column {
            name: "monthly_spend".into(),
            values: Some(v1::column::Values::Number(v1::NumberValues {
                values: vec![10.5, 0.0],
                present: vec![true, false],
            })),
        },
    ]
}

/// `(name, signer, bytes, SHA-256, signature)` of every vector, computed from the inputs.
fn vectors() -> Vec<[String; 5]> {
    let i = inputs();
    let party_key = SecretKey::from_seed(&h32(&i, "party key seed"));
    let room_key = SecretKey::from_seed(&h32(&i, "room key seed"));
    assert_eq!(
        hex::encode(party_key.public_key().to_bytes()),
        i["party public key"]
    );
    assert_eq!(
        hex::encode(room_key.public_key().to_bytes()),
        i["room public key"]
    );
    let fp = h32(&i, "fingerprint");
    let (agreement, party) = (&i["agreement_id"], &i["party"]);
    let points = hex::decode(&i["points"]).unwrap();
    let handles = hex::decode(&i["handles"]).unwrap();
    let salt = h32(&i, "salt");
    let pk = party_key.public_key().to_bytes();
    let room_pk = room_key.public_key().to_bytes();
    let int = |name: &str| -> u64 { i[name].parse().unwrap() };

    // rows_digest: its preimage and digest (not signed itself; the upload-batch covers it).
    let mut preimage = b"accord/v2/batch-rows\0".to_vec();
    preimage.extend_from_slice(&salt);
    preimage.extend_from_slice(&sha256(&handles));
    preimage.extend(str32("loyalty_tier"));
    preimage.push(0x01);
    preimage.extend_from_slice(&2u64.to_be_bytes());
    preimage.extend(str32("gold"));
    preimage.extend(str32("silver"));
    preimage.extend_from_slice(&0u64.to_be_bytes()); // present: empty list = all present
    preimage.extend(str32("monthly_spend"));
    preimage.push(0x02);
    preimage.extend_from_slice(&2u64.to_be_bytes());
    preimage.extend_from_slice(&10.5f64.to_bits().to_be_bytes());
    preimage.extend_from_slice(&0f64.to_bits().to_be_bytes());
    preimage.extend_from_slice(&2u64.to_be_bytes());
    preimage.extend_from_slice(&[1, 0]);
    let rows_digest = sha256(&preimage);
    assert_eq!(
        accord_proto::rows_digest(&salt, &handles, &columns()),
        rows_digest
    );

    // Each message: (purpose, signer key, documented layout, the builder's bytes).
    let revoked_at = chrono::Utc
        .timestamp_millis_opt(int("revoked_unix_ms") as i64)
        .unwrap();
    assert_eq!(
        revoked_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        i["revoked_at"]
    );
    let revocation = Revocation {
        agreement_id: agreement.clone(),
        fingerprint: Fingerprint::from_bytes(fp),
        party: party.clone(),
        reason: i["reason"].clone(),
        revoked_at,
        signature: Signature::from_bytes(&[0; 64]),
    };
    let messages: Vec<(&str, &SecretKey, Vec<u8>, Vec<u8>)> = vec![
        (
            "auth-challenge",
            &party_key,
            [
                str32(agreement),
                str32("party"),
                str32(party),
                pk.to_vec(),
                h32(&i, "room_nonce").to_vec(),
                h32(&i, "client_nonce").to_vec(),
                room_pk.to_vec(),
            ]
            .concat(),
            accord_proto::signed::auth_challenge(
                agreement,
                "party",
                party,
                &pk,
                &h32(&i, "room_nonce"),
                &h32(&i, "client_nonce"),
                &room_pk,
            ),
        ),
        (
            "upload-batch",
            &party_key,
            [
                fp.to_vec(),
                str32(party),
                int("batch_number").to_be_bytes().to_vec(),
                ((points.len() / 32) as u64).to_be_bytes().to_vec(),
                sha256(&points).to_vec(),
                rows_digest.to_vec(),
            ]
            .concat(),
            accord_proto::signed::upload_batch(
                &fp,
                party,
                int("batch_number"),
                &points,
                &rows_digest,
            ),
        ),
        (
            "upload-complete",
            &party_key,
            [
                fp.to_vec(),
                str32(party),
                int("batches").to_be_bytes().to_vec(),
                int("rows").to_be_bytes().to_vec(),
            ]
            .concat(),
            accord_proto::signed::upload_complete(&fp, party, int("batches"), int("rows")),
        ),
        (
            "psi-key-commitment",
            &party_key,
            [fp.to_vec(), str32(party), h32(&i, "K").to_vec()].concat(),
            accord_proto::signed::key_commitment(&fp, party, &h32(&i, "K")),
        ),
        (
            "audit-head",
            &room_key,
            [
                fp.to_vec(),
                int("entries").to_be_bytes().to_vec(),
                h32(&i, "audit_hash").to_vec(),
            ]
            .concat(),
            accord_proto::signed::audit_head(&fp, int("entries"), &h32(&i, "audit_hash")),
        ),
        (
            "revocation-receipt",
            &room_key,
            [
                fp.to_vec(),
                (int("revoked_unix_ms") as i64).to_be_bytes().to_vec(),
                str32(party),
            ]
            .concat(),
            accord_proto::signed::revocation_receipt(&fp, int("revoked_unix_ms") as i64, party),
        ),
        (
            "erasure-receipt",
            &room_key,
            [
                fp.to_vec(),
                str32(party),
                int("erased").to_be_bytes().to_vec(),
                sha256(&handles).to_vec(),
            ]
            .concat(),
            accord_proto::signed::erasure_receipt(&fp, party, int("erased"), &handles),
        ),
        (
            "revocation",
            &party_key,
            [
                str32(agreement),
                fp.to_vec(),
                str32(party),
                str32(&i["reason"]),
                str32(&i["revoked_at"]),
            ]
            .concat(),
            revocation.signed_bytes()[b"accord/v1/revocation\0".len()..].to_vec(),
        ),
    ];
    let mut out = vec![[
        "rows_digest".to_owned(),
        "—".to_owned(),
        hex::encode(&preimage),
        hex::encode(rows_digest),
        "—".to_owned(),
    ]];
    for (purpose, key, layout, built) in messages {
        assert_eq!(
            layout, built,
            "{purpose}: the builder differs from the documented layout"
        );
        let bytes = signed(purpose, &layout);
        let purpose_enum = match purpose {
            "auth-challenge" => Purpose::AuthChallenge,
            "upload-batch" => Purpose::UploadBatch,
            "upload-complete" => Purpose::UploadComplete,
            "psi-key-commitment" => Purpose::PsiKeyCommitment,
            "audit-head" => Purpose::AuditHead,
            "revocation-receipt" => Purpose::RevocationReceipt,
            "erasure-receipt" => Purpose::ErasureReceipt,
            "revocation" => Purpose::Revocation,
            other => panic!("no purpose {other}"),
        };
        let signature = key.sign(purpose_enum, &layout).to_bytes();
        // The signature covers exactly the documented bytes (domain prefix included).
        let verifying =
            ed25519_dalek::VerifyingKey::from_bytes(&key.public_key().to_bytes()).unwrap();
        verifying
            .verify_strict(&bytes, &ed25519_dalek::Signature::from_bytes(&signature))
            .unwrap();
        let signer = if std::ptr::eq(key, &room_key) {
            "room"
        } else {
            "party"
        };
        out.push([
            purpose.to_owned(),
            signer.to_owned(),
            hex::encode(&bytes),
            hex::encode(sha256(&bytes)),
            hex::encode(signature),
        ]);
    }
    out
}

#[test]
fn protocol_md_signed_message_vectors() {
    let documented = table_rows("Signed message vectors");
    let computed = vectors();
    let names: Vec<&str> = documented.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        names,
        computed.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        "every signed message has a vector, in this order"
    );
    for (doc, want) in documented.iter().zip(&computed) {
        assert_eq!(doc.as_slice(), want.as_slice(), "vector {}", want[0]);
    }
}

/// The inputs that the document derives from its other tables are those tables' values: the
/// points are the `k_A·H(x)` and the handles the handles of the two e-mail rows of
/// "End-to-end vectors" (which `accord-psi`'s tests recompute), and `K` is `K_B` of
/// "Verifiable blinding vector".
#[test]
fn protocol_md_inputs_are_the_documented_psi_values() {
    let i = inputs();
    let rows = table_rows("End-to-end vectors");
    let emails: Vec<&Vec<String>> = rows.iter().filter(|r| r[0] == "email").take(2).collect();
    assert_eq!(emails.len(), 2, "two e-mail rows in End-to-end vectors");
    assert_eq!(i["points"], format!("{}{}", emails[0][4], emails[1][4]));
    assert_eq!(i["handles"], format!("{}{}", emails[0][6], emails[1][6]));
    let dleq = table_rows("Verifiable blinding vector");
    let k_b = dleq.iter().find(|r| r[0] == "K_B").expect("K_B row");
    assert_eq!(i["K"], k_b[2]);
}

/// Prints the vector table: `cargo test --workspace --test protocol_vectors print -- --ignored --nocapture`.
#[test]
#[ignore = "generator for docs/PROTOCOL.md, run by hand"]
fn print_signed_message_vectors() {
    println!(
        "| message | signer | signed bytes (hex) | SHA-256 of the signed bytes | Ed25519 signature |"
    );
    println!("|---|---|---|---|---|");
    for row in vectors() {
        println!("| {} |", row.map(|c| format!("`{c}`")).join(" | "));
    }
}
