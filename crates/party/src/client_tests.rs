//! Attacks on `Connection::check_head`: the room's signed audit head must verify under the
//! room key pinned at authentication, name this agreement, and never shrink.

use super::*;
use tonic::transport::Endpoint;

fn fp() -> Fingerprint {
    hex::encode([0x33; 32]).parse().unwrap()
}

fn room_key() -> SecretKey {
    SecretKey::from_seed(&[0x77; 32])
}

fn head_signed_by(
    key: &SecretKey,
    fingerprint: Fingerprint,
    entries: u64,
    hash: [u8; 32],
) -> v1::SignedHead {
    let message = accord_proto::signed::audit_head(fingerprint.as_bytes(), entries, &hash);
    v1::SignedHead {
        fingerprint: fingerprint.to_string(),
        entries,
        hash: hash.to_vec(),
        signature: key.sign(Purpose::AuditHead, &message).to_bytes().to_vec(),
    }
}

fn head(entries: u64) -> v1::SignedHead {
    head_signed_by(&room_key(), fp(), entries, [entries as u8; 32])
}

fn connection() -> Connection {
    let channel = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    Connection {
        url: "http://127.0.0.1:9".into(),
        channel,
        token: MetadataValue::try_from("Bearer x").unwrap(),
        token_text: zeroize::Zeroizing::new("x".to_owned()),
        room_key: room_key().public_key(),
        fingerprint: fp(),
        agreement_id: "agr".into(),
        principal_name: "drinks".into(),
        last_entries: 0,
        last_head: None,
        memory: None,
    }
}

fn refused(conn: &mut Connection, head: Option<&v1::SignedHead>, expected: &str) {
    let before = conn.last_entries;
    let err = conn.check_head(head).unwrap_err();
    assert!(matches!(err, PartyError::Refused(_)), "{err:?}");
    assert!(
        err.to_string().contains(expected),
        "{err} should say {expected:?}"
    );
    assert_eq!(
        conn.last_entries, before,
        "a refused head must not move the high-water mark"
    );
}

#[tokio::test]
async fn a_head_that_shrinks_is_refused_and_an_equal_one_is_not() {
    let mut conn = connection();
    conn.check_head(Some(&head(5))).unwrap();
    assert_eq!(conn.last_entries, 5);
    // The same head again (no new entries): fine.
    conn.check_head(Some(&head(5))).unwrap();
    conn.check_head(Some(&head(7))).unwrap();
    assert_eq!(conn.last_entries, 7);
    refused(&mut conn, Some(&head(6)), "shrank from 7 to 6");
    refused(&mut conn, Some(&head(0)), "shrank from 7 to 0");
    conn.check_head(Some(&head(8))).unwrap();
}

#[tokio::test]
async fn badly_signed_heads_are_refused() {
    let mut conn = connection();
    conn.check_head(Some(&head(3))).unwrap();
    // Signed by another key (a different room, or an attacker in the middle).
    let other = SecretKey::from_seed(&[0x78; 32]);
    refused(
        &mut conn,
        Some(&head_signed_by(&other, fp(), 4, [4; 32])),
        "does not verify",
    );
    // The room's signature, but the entry count was changed after signing (hiding entries).
    let mut h = head(4);
    h.entries = 9;
    refused(&mut conn, Some(&h), "does not verify");
    // The hash was changed after signing.
    let mut h = head(4);
    h.hash[0] ^= 1;
    refused(&mut conn, Some(&h), "does not verify");
    // A signature made for another purpose over the same bytes.
    let mut h = head(4);
    let message = accord_proto::signed::audit_head(fp().as_bytes(), 4, &[4; 32]);
    h.signature = room_key()
        .sign(Purpose::ErasureReceipt, &message)
        .to_bytes()
        .to_vec();
    refused(&mut conn, Some(&h), "does not verify");
    // A correctly signed head of another agreement.
    let other_fp: Fingerprint = hex::encode([0x34; 32]).parse().unwrap();
    refused(
        &mut conn,
        Some(&head_signed_by(&room_key(), other_fp, 4, [4; 32])),
        "names another agreement",
    );
    // The right fingerprint text, but signed over another agreement's fingerprint.
    let mut h = head_signed_by(&room_key(), other_fp, 4, [4; 32]);
    h.fingerprint = fp().to_string();
    refused(&mut conn, Some(&h), "does not verify");
    // Malformed fields and a missing head.
    let mut h = head(4);
    h.hash.pop();
    refused(&mut conn, Some(&h), "hash is not 32 bytes");
    let mut h = head(4);
    h.signature.pop();
    refused(&mut conn, Some(&h), "signature is not 64 bytes");
    refused(&mut conn, None, "carries no signed audit head");
    // The honest head still passes afterwards.
    conn.check_head(Some(&head(4))).unwrap();
    assert_eq!(conn.last_entries, 4);
}
