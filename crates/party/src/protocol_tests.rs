//! Attacks on the partner's checks before blinding (`blind_one`): each test hands the party a
//! hostile work batch (as a malicious room or partner would) and checks that the refusal path
//! is reached, nothing is blinded and the blind-once log is unchanged.

use super::*;
use accord_agreement::sig::Purpose;
use accord_psi::HashDomain;
use accord_psi::PsiSecret;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

const PARTNER: &str = "snacks";

fn fp() -> Fingerprint {
    hex::encode([0x5a; 32]).parse().unwrap()
}

fn partner_key() -> SecretKey {
    SecretKey::from_seed(&[0x42; 32])
}

/// `n` honest points `k_partner·H(x)` for identifiers `tag-0@x.org` … .
fn points(tag: &str, n: usize) -> Vec<u8> {
    let secret = PsiSecret::from_bytes(&[3; 32]).unwrap();
    let domain = HashDomain::new("agr", IdentifierKind::Email);
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}@x.org")).collect();
    accord_psi::hash_and_blind(&secret, &domain, &ids)
        .into_iter()
        .flatten()
        .collect()
}

/// The (opaque, salted) digest of handles and attributes a partner batch's signature covers.
const ROWS_DIGEST: [u8; 32] = [0x5a; 32];

fn sign(key: &SecretKey, party: &str, n: u64, points: &[u8]) -> Vec<u8> {
    let message =
        accord_proto::signed::upload_batch(fp().as_bytes(), party, n, points, &ROWS_DIGEST);
    key.sign(Purpose::UploadBatch, &message).to_bytes().to_vec()
}

fn batch(n: u64, points: Vec<u8>) -> v1::WorkBatch {
    v1::WorkBatch {
        from_party: PARTNER.into(),
        batch_number: n,
        signature: sign(&partner_key(), PARTNER, n, &points),
        points,
        rows_digest: ROWS_DIGEST.to_vec(),
    }
}

struct Party {
    _dir: tempfile::TempDir,
    state: State,
    log: BTreeMap<u64, ([u8; 32], u64)>,
}

impl Party {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path(), "agr", fp()).unwrap();
        Self {
            _dir: dir,
            state,
            log: BTreeMap::new(),
        }
    }

    async fn blind(&mut self, cap: u64, batch: v1::WorkBatch) -> v1::ReturnWorkMessage {
        let key = partner_key().public_key();
        blind_one(
            &self.state,
            "drinks",
            PARTNER,
            &key,
            cap,
            fp(),
            &mut self.log,
            batch,
        )
        .await
        .unwrap()
    }

    /// Blinds and expects a refusal whose reason contains `expected`; checks that nothing
    /// reached the blind-once log (in memory and on disk).
    async fn refused(&mut self, cap: u64, batch: v1::WorkBatch, expected: &str) -> String {
        let n = batch.batch_number;
        let before = self.log.clone();
        let on_disk_before = self.state.blinded(PARTNER).unwrap();
        match self.blind(cap, batch).await.kind {
            Some(v1::return_work_message::Kind::Refusal(r)) => {
                assert_eq!(r.batch_number, n);
                assert!(
                    r.reason.contains(expected),
                    "refusal {:?} should say {expected:?}",
                    r.reason
                );
                assert_eq!(self.log, before, "a refused batch must not enter the log");
                assert_eq!(self.state.blinded(PARTNER).unwrap(), on_disk_before);
                r.reason
            }
            other => panic!("batch {n} should be refused ({expected}), got {other:?}"),
        }
    }

    async fn blinded(&mut self, cap: u64, batch: v1::WorkBatch) -> Vec<u8> {
        let n = batch.batch_number;
        let len = batch.points.len();
        match self.blind(cap, batch).await.kind {
            Some(v1::return_work_message::Kind::Blinded(b)) => {
                assert_eq!(b.batch_number, n);
                assert_eq!(b.points.len(), len);
                b.points
            }
            other => panic!("batch {n} should be blinded, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_honest_batch_is_blinded_once_and_logged() {
    let mut p = Party::new();
    let pts = points("a", 3);
    let out = p.blinded(10, batch(0, pts.clone())).await;
    let secrets = p.state.secrets().unwrap();
    assert_eq!(
        out,
        accord_psi::blind_concatenated(&secrets.psi, &pts).unwrap(),
        "the reply is k_me·P for every point, in order"
    );
    let digest: [u8; 32] = Sha256::digest(&pts).into();
    assert_eq!(p.log.get(&0), Some(&(digest, 3)));
    assert_eq!(p.state.blinded(PARTNER).unwrap(), p.log, "synced to disk");
    // The same points again (a retry after a lost acknowledgement): the same answer, one entry.
    assert_eq!(p.blinded(10, batch(0, pts)).await, out);
    assert_eq!(p.state.blinded(PARTNER).unwrap().len(), 1);
}

#[tokio::test]
async fn a_batch_number_is_never_blinded_again_with_other_points() {
    let mut p = Party::new();
    p.blinded(100, batch(0, points("a", 2))).await;
    // Properly signed by the partner, same number, other points: the attack that would let a
    // partner learn k_me·H(y) for fresh guesses y under an old batch number.
    p.refused(
        100,
        batch(0, points("b", 2)),
        "blinded before with other points",
    )
    .await;
    // Also after a restart: the log on disk is what counts.
    p.log = p.state.blinded(PARTNER).unwrap();
    p.refused(
        100,
        batch(0, points("b", 2)),
        "blinded before with other points",
    )
    .await;
    // A new batch number is fine.
    p.blinded(100, batch(1, points("b", 2))).await;
}

#[tokio::test]
async fn the_partners_cap_is_enforced_on_the_blinding_side() {
    let mut p = Party::new();
    p.blinded(5, batch(0, points("a", 3))).await;
    // 3 + 3 > 5: refused.
    p.refused(5, batch(1, points("b", 3)), "past its agreed cap of 5 rows")
        .await;
    // 3 + 2 = 5: exactly the cap is allowed.
    p.blinded(5, batch(1, points("c", 2))).await;
    // Nothing more, not even one row.
    p.refused(5, batch(2, points("d", 1)), "past its agreed cap")
        .await;
    // A retry of an already blinded batch does not count twice.
    p.blinded(5, batch(1, points("c", 2))).await;
}

#[tokio::test]
async fn a_first_batch_over_the_cap_is_refused() {
    let mut p = Party::new();
    p.refused(2, batch(0, points("a", 3)), "past its agreed cap of 2 rows")
        .await;
}

#[tokio::test]
async fn bad_signatures_are_refused_before_blinding() {
    let mut p = Party::new();
    let pts = points("a", 2);
    // Signed by someone else (a room forging work).
    let mut b = batch(0, pts.clone());
    b.signature = sign(&SecretKey::from_seed(&[0x99; 32]), PARTNER, 0, &pts);
    p.refused(10, b, "signature does not verify").await;
    // The partner's signature for another batch number (relabelling).
    let mut b = batch(0, pts.clone());
    b.signature = sign(&partner_key(), PARTNER, 1, &pts);
    p.refused(10, b, "signature does not verify").await;
    // The partner's signature over other points.
    let mut b = batch(0, pts.clone());
    b.signature = sign(&partner_key(), PARTNER, 0, &points("b", 2));
    p.refused(10, b, "signature does not verify").await;
    // The partner's signature made under another party name.
    let mut b = batch(0, pts.clone());
    b.signature = sign(&partner_key(), "drinks", 0, &pts);
    p.refused(10, b, "signature does not verify").await;
    // One flipped bit.
    let mut b = batch(0, pts.clone());
    b.signature[10] ^= 1;
    p.refused(10, b, "signature does not verify").await;
    // A malleated signature (S + ℓ): refused by strict verification.
    let mut b = batch(0, pts.clone());
    let mut s = [0u8; 32];
    s.copy_from_slice(&b.signature[32..]);
    b.signature[32..].copy_from_slice(&add_l(s));
    p.refused(10, b, "signature does not verify").await;
    // Not 64 bytes.
    let mut b = batch(0, pts.clone());
    b.signature.pop();
    p.refused(10, b, "not 64 bytes").await;
    let mut b = batch(0, pts);
    b.signature.clear();
    p.refused(10, b, "not 64 bytes").await;
    // None of the above used up the batch number: the honest batch still goes through.
    p.blinded(10, batch(0, points("a", 2))).await;
}

/// `s + ℓ` as 32 little-endian bytes (ℓ = 2^252 + 27742317777372353535851937790883648493).
fn add_l(s: [u8; 32]) -> [u8; 32] {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(s[i]) + u16::from(L[i]) + carry;
        out[i] = (v & 0xff) as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0, "s < ℓ so s + ℓ < 2^256");
    out
}

#[tokio::test]
async fn a_batch_claiming_another_sender_is_refused() {
    let mut p = Party::new();
    let mut b = batch(0, points("a", 2));
    b.from_party = "drinks".into();
    p.refused(10, b, "not the partner snacks").await;
}

#[tokio::test]
async fn identity_duplicate_and_invalid_points_are_refused_even_when_signed() {
    let mut p = Party::new();
    let good = points("a", 3);
    // The identity point (encoding: all zeros) in position 1.
    let mut pts = good.clone();
    pts[32..64].fill(0);
    p.refused(10, batch(0, pts), "point 1 of the batch is the identity")
        .await;
    // Point 2 repeats point 0.
    let mut pts = good.clone();
    pts.copy_within(0..32, 64);
    p.refused(10, batch(0, pts), "point 2 of the batch repeats")
        .await;
    // Not a ristretto255 encoding.
    let mut pts = good.clone();
    pts[..32].fill(0xff);
    p.refused(
        10,
        batch(0, pts),
        "point 0 of the batch is not a valid ristretto255",
    )
    .await;
    // A partial point.
    let mut pts = good.clone();
    pts.truncate(70);
    p.refused(10, batch(0, pts), "incomplete").await;
    // None of these used up batch 0.
    p.blinded(10, batch(0, good)).await;
}
