//! Known-answer tests: RFC 9496 appendix A (ristretto255) and Accord's own end-to-end vectors,
//! which are parsed out of `docs/PROTOCOL.md` so the document and the code cannot drift.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use sha2::{Digest, Sha256, Sha512};

use crate::{
    BlindErrorKind, HandleKey, HashDomain, IdentifierKind, PsiSecret, blind, hash_and_blind,
    normalize,
};

const PROTOCOL_MD: &str = include_str!("../../../docs/PROTOCOL.md");

/// RFC 9496 §A.1: encodings of 0·B … 15·B.
const MULTIPLES: [&str; 16] = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
    "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b919",
    "94741f5d5d52755ece4f23f044ee27d5d1ea1e2bd196b462166b16152a9d0259",
    "da80862773358b466ffadfe0b3293ab3d9fd53c5ea6c955358f568322daf6a57",
    "e882b131016b52c1d3337080187cf768423efccbb517bb495ab812c4160ff44e",
    "f64746d3c92b13050ed8d80236a7f0007c3b3f962f5ba793d19a601ebb1df403",
    "44f53520926ec81fbd5a387845beb7df85a96a24ece18738bdcfa6a7822a176d",
    "903293d8f2287ebe10e2374dc1a53e0bc887e592699f02d077d5263cdd55601c",
    "02622ace8f7303a31cafc63f8fc48fdc16e1c8c8d234b2f0d6685282a9076031",
    "20706fd788b2720a1ed2a5dad4952b01f413bcf0e7564de8cdc816689e2db95f",
    "bce83f8ba5dd2fa572864c24ba1810f9522bc6004afe95877ac73241cafdab42",
    "e4549ee16b9aa03099ca208c67adafcafa4c3f3e4e5303de6026e3ca8ff84460",
    "aa52e000df2e16f55fb1032fc33bc42742dad6bd5a8fc0be0167436c5948501f",
    "46376b80f409b29dc2b5f6f0c52591990896e5716f41477cd30085ab7f10301e",
    "e0c418f7c8d9c4cdd7395b93ea124f3ad99021bb681dfc3302a9d99a2e53e64e",
];

/// RFC 9496 §A.2: encodings every decoder must reject.
const BAD_ENCODINGS: [&str; 29] = [
    // Non-canonical field encodings.
    "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "f3ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    // Negative field elements.
    "0100000000000000000000000000000000000000000000000000000000000000",
    "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "ed57ffd8c914fb201471d1c3d245ce3c746fcbe63a3679d51b6a516ebebe0e20",
    "c34c4e1826e5d403b78e246e88aa051c36ccf0aafebffe137d148a2bf9104562",
    "c940e5a4404157cfb1628b108db051a8d439e1a421394ec4ebccb9ec92a8ac78",
    "47cfc5497c53dc8e61c91d17fd626ffb1c49e2bca94eed052281b510b1117a24",
    "f1c6165d33367351b0da8f6e4511010c68174a03b6581212c71c0e1d026c3c72",
    "87260f7a2f12495118360f02c26a470f450dadf34a413d21042b43b9d93e1309",
    // Non-square x².
    "26948d35ca62e643e26a83177332e6b6afeb9d08e4268b650f1f5bbd8d81d371",
    "4eac077a713c57b4f4397629a4145982c661f48044dd3f96427d40b147d9742f",
    "de6a7b00deadc788eb6b6c8d20c0ae96c2f2019078fa604fee5b87d6e989ad7b",
    "bcab477be20861e01e4a0e295284146a510150d9817763caf1a6f4b422d67042",
    "2a292df7e32cababbd9de088d1d1abec9fc0440f637ed2fba145094dc14bea08",
    "f4a9e534fc0d216c44b218fa0c42d99635a0127ee2e53c712f70609649fdff22",
    "8268436f8c4126196cf64b3c7ddbda90746a378625f9813dd9b8457077256731",
    "2810e5cbc2cc4d4eece54f61c6f69758e289aa7ab440b3cbeaa21995c2f4232b",
    // Negative xy value.
    "3eb858e78f5a7254d8c9731174a94f76755fd3941c0ac93735c07ba14579630e",
    "a45fdc55c76448c049a1ab33f17023edfb2be3581e9c7aade8a6125215e04220",
    "d483fe813c6ba647ebbfd3ec41adca1c6130c2beeee9d9bf065c8d151c5f396e",
    "8a2e1d30050198c65a54483123960ccc38aef6848e1ec8f5f780e8523769ba32",
    "32888462f8b486c68ad7dd9610be5192bbeaf3b443951ac1a8118419d9fa097b",
    "227142501b9d4355ccba290404bde41575b037693cef1f438c47f8fbf35d1165",
    "5c37cc491da847cfeb9281d407efc41e15144c876e0170b499a96a22ed31e01e",
    "445425117cb8c90edcbc7c1cc0e74f747f2c1efa5630a967c64f287792a48a4b",
    // s = -1, which causes y = 0.
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
];

/// RFC 9496 §A.3: label, SHA-512(label), from_uniform_bytes(SHA-512(label)).
const HASH_TO_GROUP: [(&str, &str, &str); 7] = [
    (
        "Ristretto is traditionally a short shot of espresso coffee",
        "5d1be09e3d0c82fc538112490e35701979d99e06ca3e2b5b54bffe8b4dc772c14d98b696a1bbfb5ca32c436cc61c16563790306c79eaca7705668b47dffe5bb6",
        "3066f82a1a747d45120d1740f14358531a8f04bbffe6a819f86dfe50f44a0a46",
    ),
    (
        "made with the normal amount of ground coffee but extracted with",
        "f116b34b8f17ceb56e8732a60d913dd10cce47a6d53bee9204be8b44f6678b270102a56902e2488c46120e9276cfe54638286b9e4b3cdb470b542d46c2068d38",
        "f26e5b6f7d362d2d2a94c5d0e7602cb4773c95a2e5c31a64f133189fa76ed61b",
    ),
    (
        "about half the amount of water in the same amount of time",
        "8422e1bbdaab52938b81fd602effb6f89110e1e57208ad12d9ad767e2e25510c27140775f9337088b982d83d7fcf0b2fa1edffe51952cbe7365e95c86eaf325c",
        "006ccd2a9e6867e6a2c5cea83d3302cc9de128dd2a9a57dd8ee7b9d7ffe02826",
    ),
    (
        "by using a finer grind.",
        "ac22415129b61427bf464e17baee8db65940c233b98afce8d17c57beeb7876c2150d15af1cb1fb824bbd14955f2b57d08d388aab431a391cfc33d5bafb5dbbaf",
        "f8f0c87cf237953c5890aec3998169005dae3eca1fbb04548c635953c817f92a",
    ),
    (
        "This produces a concentrated shot of coffee per volume.",
        "165d697a1ef3d5cf3c38565beefcf88c0f282b8e7dbd28544c483432f1cec7675debea8ebb4e5fe7d6f6e5db15f15587ac4d4d4a1de7191e0c1ca6664abcc413",
        "ae81e7dedf20a497e10c304a765c1767a42d6e06029758d2d7e8ef7cc4c41179",
    ),
    (
        "Just pulling a normal shot short will produce a weaker shot",
        "a836e6c9a9ca9f1e8d486273ad56a78c70cf18f0ce10abb1c7172ddd605d7fd2979854f47ae1ccf204a33102095b4200e5befc0465accc263175485f0e17ea5c",
        "e2705652ff9f5e44d3e841bf1c251cf7dddb77d140870d1ab2ed64f1a9ce8628",
    ),
    (
        "and is not a Ristretto as some believe.",
        "2cdc11eaeb95daf01189417cdddbf95952993aa9cb9c640eb5058d09702c74622c9965a697a3b345ec24ee56335b556e677b30e6f90ac77d781064f866a3c982",
        "80bd07262511cdde4863f8a7434cef696750681cb9510eea557088f76d9e5065",
    ),
];

fn point32(hex_str: &str) -> [u8; 32] {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

#[test]
fn rfc9496_multiples_of_the_generator() {
    let mut point = RistrettoPoint::identity();
    for (i, expected) in MULTIPLES.iter().enumerate() {
        assert_eq!(hex::encode(point.compress().as_bytes()), *expected, "{i}·B");
        assert_eq!(
            CompressedRistretto(point32(expected)).decompress(),
            Some(point),
            "decode {i}·B"
        );
        point += RISTRETTO_BASEPOINT_POINT;
    }
}

#[test]
fn rfc9496_bad_encodings_are_rejected() {
    let secret = PsiSecret::generate().unwrap();
    let valid = point32(MULTIPLES[1]);
    for bad in BAD_ENCODINGS {
        let bad = point32(bad);
        assert!(
            CompressedRistretto(bad).decompress().is_none(),
            "{}",
            hex::encode(bad)
        );
        let error = blind(&secret, &[valid, bad]).unwrap_err();
        assert_eq!(
            (error.index, error.kind),
            (1, BlindErrorKind::InvalidEncoding)
        );
    }
    // The identity decodes, but the blinding API refuses it.
    let error = blind(&secret, &[point32(MULTIPLES[0])]).unwrap_err();
    assert_eq!((error.index, error.kind), (0, BlindErrorKind::Identity));
}

#[test]
fn rfc9496_hash_to_group() {
    for (label, digest, expected) in HASH_TO_GROUP {
        let wide: [u8; 64] = Sha512::digest(label.as_bytes()).into();
        assert_eq!(hex::encode(wide), digest, "SHA-512({label:?})");
        let point = RistrettoPoint::from_uniform_bytes(&wide);
        assert_eq!(
            hex::encode(point.compress().as_bytes()),
            expected,
            "{label:?}"
        );
    }
}

/// Parameters of the vectors in docs/PROTOCOL.md, derived from public strings.
struct Fixture {
    a: PsiSecret,
    b: PsiSecret,
    handle_key: HandleKey,
}

fn test_scalar(label: &str) -> PsiSecret {
    let wide: [u8; 64] = Sha512::digest(label.as_bytes()).into();
    PsiSecret::from_bytes(&Scalar::from_bytes_mod_order_wide(&wide).to_bytes()).unwrap()
}

fn fixture() -> Fixture {
    Fixture {
        a: test_scalar("accord test scalar A"),
        b: test_scalar("accord test scalar B"),
        handle_key: HandleKey::from_bytes(&Sha256::digest(b"accord test handle key")).unwrap(),
    }
}

pub(crate) const AGREEMENT_ID: &str = "drinks-snacks-2027q1";
pub(crate) const REGION: &str = "IS";

/// One row of the end-to-end table: raw → normalized → H(x) → k_A·H(x) → k_B·k_A·H(x), handle.
fn row(fixture: &Fixture, kind: IdentifierKind, raw: &str) -> [String; 7] {
    let normalized = normalize(kind, raw, Some(REGION)).unwrap().unwrap();
    let domain = HashDomain::new(AGREEMENT_ID, kind);
    let h = domain.hash_compressed(normalized.as_bytes());
    let a = hash_and_blind(&fixture.a, &domain, &[&normalized])[0];
    let ba = blind(&fixture.b, &[a]).unwrap()[0];
    let handle = fixture
        .handle_key
        .handle(AGREEMENT_ID, normalized.as_bytes());
    [
        kind.as_str().to_owned(),
        raw.to_owned(),
        normalized,
        hex::encode(h),
        hex::encode(a),
        hex::encode(ba),
        hex::encode(handle),
    ]
}

/// Table rows (cells trimmed, backticks removed) of the section whose heading is `heading`.
fn table_rows(heading: &str) -> Vec<Vec<String>> {
    let section = PROTOCOL_MD
        .split("\n## ")
        .chain(PROTOCOL_MD.split("\n### "))
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no section {heading:?}"));
    section
        .lines()
        .take_while(|line| !line.starts_with('#'))
        .filter(|line| {
            line.starts_with('|') && !line.starts_with("|--") && !line.starts_with("| --")
        })
        .skip(1) // header
        .map(|line| {
            let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
            inner
                .split('|')
                .map(|cell| cell.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect()
}

#[test]
fn protocol_md_test_parameters() {
    let fixture = fixture();
    let rows = table_rows("Test parameters");
    let value = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no parameter {name}"))[2]
            .clone()
    };
    assert_eq!(value("agreement_id"), AGREEMENT_ID);
    assert_eq!(value("default_region"), REGION);
    assert_eq!(value("k_A"), hex::encode(*fixture.a.to_bytes()));
    assert_eq!(value("k_B"), hex::encode(*fixture.b.to_bytes()));
    assert_eq!(
        value("handle_key"),
        hex::encode(*fixture.handle_key.to_bytes())
    );
}

#[test]
fn protocol_md_end_to_end_vectors() {
    let fixture = fixture();
    let rows = table_rows("End-to-end vectors");
    assert!(
        rows.len() >= 6,
        "expected at least two vectors per identifier kind, found {}",
        rows.len()
    );
    for documented in rows {
        assert_eq!(documented.len(), 7, "row {documented:?}");
        let kind = IdentifierKind::from_label(&documented[0]).unwrap();
        let computed = row(&fixture, kind, &documented[1]);
        assert_eq!(documented, computed.to_vec());
    }
}

/// Prints the tables for docs/PROTOCOL.md: `cargo test -p accord-psi print_protocol_vectors -- --ignored --nocapture`.
#[test]
#[ignore = "generator for docs/PROTOCOL.md, run by hand"]
fn print_protocol_vectors() {
    let fixture = fixture();
    println!("| name | derivation | value (hex) |\n|---|---|---|");
    println!("| agreement_id | — | `{AGREEMENT_ID}` |");
    println!("| default_region | — | `{REGION}` |");
    for (name, label, secret) in [("k_A", "A", &fixture.a), ("k_B", "B", &fixture.b)] {
        println!(
            "| {name} | `Scalar::from_bytes_mod_order_wide(SHA-512(\"accord test scalar {label}\"))` | `{}` |",
            hex::encode(*secret.to_bytes())
        );
    }
    println!(
        "| handle_key | `SHA-256(\"accord test handle key\")` | `{}` |\n",
        hex::encode(*fixture.handle_key.to_bytes())
    );
    println!(
        "| kind | raw | normalized | H(x) | k_A·H(x) | k_B·k_A·H(x) | handle |\n|---|---|---|---|---|---|---|"
    );
    // Every documented row, recomputed from its `kind` and `raw` cells (a new row is added to
    // the document by hand with any values, then regenerated here).
    for documented in table_rows("End-to-end vectors") {
        let kind = IdentifierKind::from_label(&documented[0]).unwrap();
        let cells = row(&fixture, kind, &documented[1]);
        println!("| {} |", cells.map(|c| format!("`{c}`")).join(" | "));
    }
}

/// The verifiable-blinding vector: k_B proves its blinding of the first two `k_A·H(x)` points
/// of the end-to-end table (the two e-mail rows), with the published nonce.
fn dleq_vector() -> Vec<(String, String)> {
    let fixture = fixture();
    let rows = table_rows("End-to-end vectors");
    let input: Vec<u8> = rows[..2]
        .iter()
        .flat_map(|r| hex::decode(&r[4]).unwrap())
        .collect();
    let agreement: [u8; 32] = Sha256::digest(b"accord test fingerprint").into();
    let context = crate::DleqContext {
        agreement: &agreement,
        prover: "snacks",
        owner: "drinks",
        batch: 0,
    };
    let wide: [u8; 64] = Sha512::digest(b"accord test dleq nonce").into();
    let r = Scalar::from_bytes_mod_order_wide(&wide);
    let (output, proof) = crate::dleq::prove_with_nonce(&fixture.b, &context, &input, r);
    let commitment = fixture.b.commitment();
    let seed = crate::dleq::transcript_seed(&context, &commitment, &input, &output);
    let weights = crate::dleq::weights(&seed, 2);
    assert_eq!(
        crate::verify_blinding(&commitment, &context, &input, &output, &proof),
        Ok(())
    );
    vec![
        ("fingerprint".into(), hex::encode(agreement)),
        ("r".into(), hex::encode(r.to_bytes())),
        ("K_B".into(), hex::encode(commitment)),
        ("Q_0".into(), hex::encode(&output[..32])),
        ("Q_1".into(), hex::encode(&output[32..])),
        ("seed".into(), hex::encode(seed)),
        ("d_0".into(), hex::encode(weights[0].to_bytes())),
        ("d_1".into(), hex::encode(weights[1].to_bytes())),
        ("c".into(), hex::encode(&proof[..32])),
        ("s".into(), hex::encode(&proof[32..])),
    ]
}

#[test]
fn protocol_md_dleq_vector() {
    let documented: Vec<(String, String)> = table_rows("Verifiable blinding vector")
        .into_iter()
        .map(|r| (r[0].clone(), r[2].clone()))
        .collect();
    assert_eq!(documented, dleq_vector());
}

/// Prints the DLEQ table: `cargo test -p accord-psi print_dleq_vector -- --ignored --nocapture`.
#[test]
#[ignore = "generator for docs/PROTOCOL.md, run by hand"]
fn print_dleq_vector() {
    for (name, value) in dleq_vector() {
        println!("| {name} | | `{value}` |");
    }
}

/// The e-mail addresses of the "Normalization vectors" table, with a note each: non-ASCII
/// addresses and the case-mapping edge cases (issue 12).
const UNICODE_EMAILS: [(&str, &str); 14] = [
    ("ΟΔΟΣ@example.gr", "final sigma: Σ before `@` → ς (U+03C2)"),
    (
        "ΣΑΣ.ΣΑΣ@example.gr",
        "Σ before `.` then a letter is not final (`.` is case-ignorable)",
    ),
    ("Σ@example.gr", "a lone Σ has no cased letter before it → σ"),
    (
        "İSTANBUL@örnek.com.tr",
        "İ (U+0130) → i + U+0307, two code points; no Turkish rules",
    ),
    (
        "IŞIK@örnek.com.tr",
        "I → i (not dotless ı): no Turkish rules",
    ),
    ("ılgaz@örnek.com.tr", "dotless ı (U+0131) is kept"),
    ("ẞTRASSE@example.de", "capital sharp s (U+1E9E) → ß"),
    (
        "ᎠᏍᎦᏯ@example.com",
        "Cherokee capitals → U+AB70… (lowercase added in Unicode 8.0)",
    ),
    ("\u{A7CB}@example.com", "U+A7CB (Unicode 16.0) → U+0264"),
    (
        "\u{10D50}@example.com",
        "Garay capital (Unicode 16.0) → U+10D70",
    ),
    (
        "\u{A7CE}@example.com",
        "U+A7CE (Unicode 17.0) → U+A7CF; unchanged with older tables",
    ),
    (
        "ＡＢＣ@example.com",
        "fullwidth letters stay fullwidth (no NFKC)",
    ),
    (
        "JOSE\u{301}@example.com",
        "e + U+0301 stays decomposed (no NFC): not the same as é",
    ),
    ("用户@例子.广告", "no case: unchanged"),
];

/// `kind, raw, hex(raw), normalized, hex(normalized)` of one normalization vector.
fn normalization_row(kind: IdentifierKind, raw: &str) -> [String; 5] {
    let normalized = normalize(kind, raw, Some(REGION)).unwrap().unwrap();
    let normalized_hex = hex::encode(&normalized);
    [
        kind.as_str().to_owned(),
        raw.to_owned(),
        hex::encode(raw),
        normalized,
        normalized_hex,
    ]
}

/// The Unicode version of the case mapping, trimming and character classes normalization
/// uses (Rust's `char::UNICODE_VERSION` of the toolchain), as "major.minor.update".
fn unicode_version() -> String {
    let (a, b, c) = char::UNICODE_VERSION;
    format!("{a}.{b}.{c}")
}

/// A toolchain with other Unicode tables would lowercase some addresses differently: this
/// fails, and the documented version (a protocol constant) must change with a new protocol
/// version, or the toolchain must stay.
#[test]
fn protocol_md_unicode_version() {
    let rows = table_rows("Unicode version");
    assert_eq!(rows.len(), 1, "{rows:?}");
    println!("char::UNICODE_VERSION = {}", unicode_version());
    assert_eq!(
        rows[0][1],
        unicode_version(),
        "this toolchain's Unicode tables are not the ones docs/PROTOCOL.md pins"
    );
}

#[test]
fn protocol_md_normalization_vectors() {
    let rows = table_rows("Normalization vectors");
    assert!(rows.len() >= UNICODE_EMAILS.len(), "{} rows", rows.len());
    for documented in rows {
        assert_eq!(documented.len(), 6, "row {documented:?}");
        // The raw hex is authoritative (some raw values hold invisible characters).
        let raw = String::from_utf8(hex::decode(&documented[2]).unwrap()).unwrap();
        assert_eq!(documented[1], raw, "raw cell and its hex differ");
        let kind = IdentifierKind::from_label(&documented[0]).unwrap();
        let computed = normalization_row(kind, &raw);
        assert_eq!(documented[..5], computed, "{}", documented[5]);
    }
}

/// Prints the normalization table: `cargo test --workspace --lib print_normalization_vectors -- --ignored --nocapture`.
#[test]
#[ignore = "generator for docs/PROTOCOL.md, run by hand"]
fn print_normalization_vectors() {
    println!("| kind | raw | raw (UTF-8 hex) | normalized | normalized (UTF-8 hex) | note |");
    println!("|---|---|---|---|---|---|");
    for (raw, note) in UNICODE_EMAILS {
        let cells = normalization_row(IdentifierKind::Email, raw);
        println!(
            "| {} | {note} |",
            cells.map(|c| format!("`{c}`")).join(" | ")
        );
    }
    for (kind, raw) in [
        (IdentifierKind::Email, "ΟΔΟΣ@example.gr"),
        (IdentifierKind::Email, "İSTANBUL@örnek.com.tr"),
    ] {
        let cells = row(&fixture(), kind, raw);
        println!("| {} |", cells.map(|c| format!("`{c}`")).join(" | "));
    }
}
