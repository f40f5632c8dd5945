//! Known answers for every signed-message layout of `docs/PROTOCOL.md` ("Signatures"),
//! written out byte by byte from the documented encoding — not with the builders under test —
//! so that any change of layout (field order, widths, length prefixes, endianness, hashing)
//! fails here and must be made deliberately, in the document too.
#![allow(clippy::unwrap_used)]

use accord_proto::signed;

/// Hex with spaces and newlines ignored, so each field stands on its own line.
fn bytes(hex_text: &str) -> Vec<u8> {
    let clean: String = hex_text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(clean.len().is_multiple_of(2), "odd hex");
    (0..clean.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&clean[i..i + 2], 16).unwrap())
        .collect()
}

const FP: [u8; 32] = [0x11; 32];
const FP_HEX: &str = "1111111111111111111111111111111111111111111111111111111111111111";

#[test]
fn auth_challenge_layout() {
    // str(agreement) ‖ str(role) ‖ str(name) ‖ public_key(32) ‖ room_nonce(32) ‖
    // client_nonce(32) ‖ room_public_key(32)
    let expected = bytes(
        "00000003 616772
         00000005 7061727479
         00000003 616e61
         5555555555555555555555555555555555555555555555555555555555555555
         2222222222222222222222222222222222222222222222222222222222222222
         3333333333333333333333333333333333333333333333333333333333333333
         4444444444444444444444444444444444444444444444444444444444444444",
    );
    assert_eq!(
        signed::auth_challenge(
            "agr",
            "party",
            "ana",
            &[0x55; 32],
            &[0x22; 32],
            &[0x33; 32],
            &[0x44; 32]
        ),
        expected
    );
    let expected = bytes(&format!(
        "00000040 {}
         00000007 616e616c797374
         00000000
         5555555555555555555555555555555555555555555555555555555555555555
         2222222222222222222222222222222222222222222222222222222222222222
         3333333333333333333333333333333333333333333333333333333333333333
         4444444444444444444444444444444444444444444444444444444444444444",
        hex_of(FP_HEX)
    ));
    assert_eq!(
        signed::auth_challenge(
            FP_HEX,
            "analyst",
            "",
            &[0x55; 32],
            &[0x22; 32],
            &[0x33; 32],
            &[0x44; 32]
        ),
        expected
    );
}

/// The hex of a text's UTF-8 bytes.
fn hex_of(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn upload_batch_layout() {
    // fingerprint(32) ‖ str(party) ‖ u64be(batch_number) ‖ u64be(n) ‖ SHA-256(points)(32) ‖
    // rows_digest(32)
    let points = [[1u8; 32], [2u8; 32]].concat();
    let expected = bytes(&format!(
        "{FP_HEX}
         00000006 6472696e6b73
         0000000000000103
         0000000000000002
         f818afd37a6dc3bc92fb44731011277006db4efa6e9023cd7468c02335d22a4d
         6666666666666666666666666666666666666666666666666666666666666666"
    ));
    assert_eq!(
        signed::upload_batch(&FP, "drinks", 0x103, &points, &[0x66; 32]),
        expected
    );
}

#[test]
fn rows_digest_layout() {
    // SHA-256("accord/v2/batch-rows" ‖ 0x00 ‖ salt(32) ‖ SHA-256(handles)(32) ‖ columns),
    // a column = str(name) ‖ kind ‖ u64be(count) ‖ values ‖ u64be(flags) ‖ flags.
    use accord_proto::v1;
    use sha2::{Digest, Sha256};
    let handles = [0xabu8; 32];
    let columns = vec![
        v1::Column {
            name: "tier".into(),
            values: Some(v1::column::Values::Text(v1::TextValues {
                values: vec!["gold".into()],
                present: vec![],
            })),
        },
        v1::Column {
            name: "spend".into(),
            values: Some(v1::column::Values::Number(v1::NumberValues {
                values: vec![1.5, 0.0],
                present: vec![true, false],
            })),
        },
    ];
    let mut preimage = b"accord/v2/batch-rows\0".to_vec();
    preimage.extend_from_slice(&[0x77; 32]);
    preimage.extend_from_slice(&Sha256::digest(handles));
    preimage.extend_from_slice(&bytes(
        "00000004 74696572 01
         0000000000000001 00000004 676f6c64
         0000000000000000
         00000005 7370656e64 02
         0000000000000002 3ff8000000000000 0000000000000000
         0000000000000002 01 00",
    ));
    let expected: [u8; 32] = Sha256::digest(&preimage).into();
    assert_eq!(
        accord_proto::rows_digest(&[0x77; 32], &handles, &columns),
        expected
    );
}

#[test]
fn key_commitment_layout() {
    // fingerprint(32) ‖ str(party) ‖ K(32)
    let expected = bytes(&format!(
        "{FP_HEX}
         00000006 736e61636b73
         8888888888888888888888888888888888888888888888888888888888888888"
    ));
    assert_eq!(signed::key_commitment(&FP, "snacks", &[0x88; 32]), expected);
}

#[test]
fn upload_complete_layout() {
    // fingerprint(32) ‖ str(party) ‖ u64be(batches) ‖ u64be(rows)
    let expected = bytes(&format!(
        "{FP_HEX}
         00000006 736e61636b73
         0000000000000019
         0000000100000000"
    ));
    assert_eq!(
        signed::upload_complete(&FP, "snacks", 25, 1 << 32),
        expected
    );
}

#[test]
fn audit_head_layout() {
    // fingerprint(32) ‖ u64be(entries) ‖ hash(32)
    let expected = bytes(&format!(
        "{FP_HEX}
         00000000000004d2
         abababababababababababababababababababababababababababababababab"
    ));
    assert_eq!(signed::audit_head(&FP, 1234, &[0xab; 32]), expected);
}

#[test]
fn revocation_receipt_layout() {
    // fingerprint(32) ‖ i64be(revoked_unix_ms) ‖ str(party)
    let expected = bytes(&format!(
        "{FP_HEX}
         0000019a2b3c4d5e
         00000006 6472696e6b73"
    ));
    assert_eq!(
        signed::revocation_receipt(&FP, 0x0000_019a_2b3c_4d5e, "drinks"),
        expected
    );
    // A negative time is two's complement, big-endian.
    let expected = bytes(&format!(
        "{FP_HEX}
         ffffffffffffffff
         00000001 78"
    ));
    assert_eq!(signed::revocation_receipt(&FP, -1, "x"), expected);
}

#[test]
fn erasure_receipt_layout() {
    // fingerprint(32) ‖ str(party) ‖ u64be(erased) ‖ SHA-256(handles)(32)
    let handles = [0xabu8; 48];
    let expected = bytes(&format!(
        "{FP_HEX}
         00000006 6472696e6b73
         0000000000000003
         2b5194b12b01058a369ef70fdb8b9b3e1fbadf6d08b23c1d602d7b567163cffc"
    ));
    assert_eq!(
        signed::erasure_receipt(&FP, "drinks", 3, &handles),
        expected
    );
    // No handles: the SHA-256 of the empty string.
    let expected = bytes(&format!(
        "{FP_HEX}
         00000006 6472696e6b73
         0000000000000000
         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    ));
    assert_eq!(signed::erasure_receipt(&FP, "drinks", 0, &[]), expected);
}
