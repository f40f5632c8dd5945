//! Attacks on the room's defences through its public API (in process, no network where the
//! network adds nothing): relay protection in the signed challenge, principals the agreement
//! does not name, the room-side upload cap, tombstones across a restart, the signed byte
//! layouts with their domain prefix, and "only the room writes the audit log".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use accord_agreement::sig::Purpose;
use accord_agreement::{SecretKey, Signature};
use accord_proto::v1::{self, psi_client::PsiClient};
use accord_room::api::{AuthenticateRequest, Challenge, ChallengeRequest, Principal};
use accord_room::{Room, RoomError};
use accord_tests::*;

fn challenge_request(
    id: &str,
    principal: Principal,
    nonce: [u8; 32],
    key: &SecretKey,
) -> ChallengeRequest {
    ChallengeRequest {
        agreement: id.into(),
        principal: Some(principal),
        client_nonce: nonce.to_vec(),
        public_key: key.public_key().to_bytes().to_vec(),
    }
}

/// The name a principal signs (an analyst given by key signs the empty name).
fn principal_name(principal: &Principal) -> String {
    match principal {
        Principal::Party(n) | Principal::Analyst(n) | Principal::Auditor(n) => n.clone(),
        Principal::AnalystKey(_) => String::new(),
    }
}

/// Answers `challenge` as `role` with `key`, claiming the room key is `room_key`.
fn answer(
    id: &str,
    principal: Principal,
    role: &str,
    client_nonce: [u8; 32],
    challenge: &Challenge,
    room_key: &[u8; 32],
    key: &SecretKey,
) -> AuthenticateRequest {
    let message = accord_proto::signed::auth_challenge(
        id,
        role,
        &principal_name(&principal),
        &key.public_key().to_bytes(),
        &challenge.room_nonce,
        &client_nonce,
        room_key,
    );
    AuthenticateRequest {
        agreement: id.into(),
        principal: Some(principal),
        room_nonce: challenge.room_nonce.to_vec(),
        client_nonce: client_nonce.to_vec(),
        signature: key
            .sign(Purpose::AuthChallenge, &message)
            .to_bytes()
            .to_vec(),
        public_key: key.public_key().to_bytes().to_vec(),
    }
}

async fn room_with(dir: &Path, text: &str) -> Room {
    let room = accord_tests::open_room(dir);
    room.submit(text).await.unwrap();
    room
}

#[tokio::test]
async fn a_challenge_signed_for_another_room_key_is_refused() {
    // A malicious room R' relays our challenge to the real room R: the victim signs a
    // challenge naming R' key, which R must refuse, or R' could log in as the victim.
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(110);
    let text = agreement_text("def-relay", 1, &keys, 10, 1000);
    let room = room_with(dir.path(), &text).await;
    let party = || Principal::Party("drinks".into());
    let relay_key = SecretKey::from_seed(&[0xee; 32]).public_key().to_bytes();
    let real_key = room.public_key().to_bytes();
    assert_ne!(relay_key, real_key);
    let drinks = keys.drinks();

    let c = room
        .challenge(challenge_request("def-relay", party(), [1; 32], &drinks))
        .unwrap();
    assert_eq!(c.room_public_key, real_key);
    let req = answer(
        "def-relay",
        party(),
        "party",
        [1; 32],
        &c,
        &relay_key,
        &drinks,
    );
    let err = room.authenticate(req).unwrap_err();
    assert!(matches!(err, RoomError::PermissionDenied(_)), "{err:?}");
    assert_eq!(err.to_string(), accord_room::NOT_AUTHORIZED);

    // Other fields of the signed challenge are bound too: role, client nonce.
    let c = room
        .challenge(challenge_request("def-relay", party(), [2; 32], &drinks))
        .unwrap();
    let req = answer(
        "def-relay",
        party(),
        "analyst",
        [2; 32],
        &c,
        &real_key,
        &drinks,
    );
    assert!(room.authenticate(req).is_err(), "signed as another role");
    let c = room
        .challenge(challenge_request("def-relay", party(), [3; 32], &drinks))
        .unwrap();
    let mut req = answer(
        "def-relay",
        party(),
        "party",
        [3; 32],
        &c,
        &real_key,
        &drinks,
    );
    req.client_nonce = vec![4; 32];
    let err = room.authenticate(req).unwrap_err();
    assert!(
        matches!(err, RoomError::Unauthenticated(_)),
        "another client nonce: {err:?}"
    );

    // Positive control: the honest answer works, once.
    let c = room
        .challenge(challenge_request("def-relay", party(), [5; 32], &drinks))
        .unwrap();
    let req = answer(
        "def-relay",
        party(),
        "party",
        [5; 32],
        &c,
        &real_key,
        &drinks,
    );
    let session = room.authenticate(req.clone()).unwrap();
    assert_eq!(session.session_token.len(), 64);
    let err = room.authenticate(req).unwrap_err();
    assert!(err.to_string().contains("already used"), "{err}");
}

#[tokio::test]
async fn principals_the_agreement_does_not_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(111);
    let text = agreement_text("def-principal", 1, &keys, 10, 1000);
    let room = room_with(dir.path(), &text).await;
    let real_key = room.public_key().to_bytes();
    let mallory = SecretKey::from_seed(&[0xdd; 32]);
    // Each signs correctly with its own key; none is a principal the agreement names with
    // that key, so each gets the one "not authorized" answer (and the challenge itself,
    // issued without looking anything up, tells nothing).
    for (kind, role, key) in [
        (
            Principal::Analyst("mallory@x.example".into()),
            "analyst",
            &mallory,
        ),
        (
            Principal::AnalystKey(mallory.public_key().to_bytes().to_vec()),
            "analyst",
            &mallory,
        ),
        // A party's key is not an analyst's key.
        (
            Principal::AnalystKey(keys.drinks().public_key().to_bytes().to_vec()),
            "analyst",
            &keys.drinks(),
        ),
        (Principal::Party("cheese".into()), "party", &keys.drinks()),
        // The named analyst's name with someone else's key.
        (
            Principal::Analyst("ana@drinks.example".into()),
            "analyst",
            &mallory,
        ),
        (
            Principal::Analyst("ana@drinks.example".into()),
            "analyst",
            &keys.drinks(),
        ),
    ] {
        let c = room
            .challenge(challenge_request(
                "def-principal",
                kind.clone(),
                [1; 32],
                key,
            ))
            .unwrap();
        let req = answer(
            "def-principal",
            kind.clone(),
            role,
            [1; 32],
            &c,
            &real_key,
            key,
        );
        let err = room.authenticate(req).unwrap_err();
        assert!(
            matches!(err, RoomError::PermissionDenied(_)),
            "{kind:?}: {err:?}"
        );
        assert_eq!(err.to_string(), accord_room::NOT_AUTHORIZED, "{kind:?}");
    }
    // Positive control: the named analyst with its key.
    let ana = Principal::Analyst("ana@drinks.example".into());
    let c = room
        .challenge(challenge_request(
            "def-principal",
            ana.clone(),
            [7; 32],
            &keys.analyst(),
        ))
        .unwrap();
    let req = answer(
        "def-principal",
        ana,
        "analyst",
        [7; 32],
        &c,
        &real_key,
        &keys.analyst(),
    );
    room.authenticate(req).unwrap();
}

#[tokio::test]
async fn tombstones_of_revoked_and_expired_agreements_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(112);
    let text = agreement_text("def-tomb", 1, &keys, 10, 1000);
    let agreement = verified(&text);
    let fp = agreement.fingerprint();
    {
        let room = room_with(dir.path(), &text).await;
        let revocation = accord_agreement::Revocation::sign(
            &agreement,
            "snacks",
            "test",
            chrono::Utc::now(),
            &keys.snacks(),
        )
        .unwrap();
        room.revoke(&revocation.to_toml()).await.unwrap();
        let err = room.submit(&text).await.unwrap_err();
        assert!(err.to_string().contains("revoked"), "{err}");
    }
    // A new process: the tombstone is read back, the agreement stays refused.
    let room = accord_tests::open_room(dir.path());
    let err = room.submit(&text).await.unwrap_err();
    assert!(matches!(err, RoomError::FailedPrecondition(_)), "{err:?}");
    assert!(
        err.to_string().contains("was revoked")
            && err.to_string().contains("never be registered again"),
        "{err}"
    );

    // Expiry: an agreement whose window ends while the room is down is ended at the next
    // start and gets a tombstone. The test waits for the wall clock to pass the window (not
    // for the room), so no assertion depends on how fast the machine is.
    drop(room);
    let until = chrono::Utc::now() + chrono::Duration::seconds(3);
    let short = resign(
        &agreement_text("def-tomb-exp", 1, &keys, 10, 1000),
        &keys,
        |l| {
            if l.starts_with("valid_until") {
                format!(
                    "valid_until = {}",
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            } else {
                l.to_owned()
            }
        },
    );
    let short_fp = verified(&short).fingerprint();
    {
        let room = accord_tests::open_room(dir.path());
        room.submit(&short).await.unwrap();
    }
    while chrono::Utc::now() <= until + chrono::Duration::milliseconds(100) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let room = accord_tests::open_room(dir.path());
    assert!(
        !dir.path()
            .join("agreements")
            .join(short_fp.to_string())
            .exists(),
        "the expired agreement's data is deleted at startup"
    );
    drop(room);
    // One file per tombstone (data directory format 2).
    let tombstone = |fp: accord_agreement::Fingerprint| -> serde_json::Value {
        let path = dir.path().join("tombstones").join(format!("{fp}.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    assert_eq!(tombstone(fp)["reason"], "revoked");
    assert_eq!(tombstone(short_fp)["reason"], "expired");
    assert!(!dir.path().join("tombstones.json").exists());
    // And again after one more restart: nothing is forgotten.
    let room = accord_tests::open_room(dir.path());
    let err = room.submit(&text).await.unwrap_err();
    assert!(err.to_string().contains("was revoked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_enforces_the_upload_cap() {
    // max_rows = 3: a hostile party that sends batches by hand cannot store a fourth row.
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(113);
    let text = agreement_text("def-cap", 1, &keys, 10, 3);
    let agreement = verified(&text);
    let fp = agreement.fingerprint();
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    let conn = accord_party::Connection::open(
        &url,
        "def-cap",
        accord_party::Principal::Party("drinks"),
        &keys.drinks(),
    )
    .await
    .unwrap();
    let psi = PsiClient::new(conn.channel());
    let domain = accord_psi::HashDomain::new("def-cap", accord_psi::IdentifierKind::Email);
    let batch = |n: u64, ids: std::ops::Range<u8>| {
        let points: Vec<u8> = ids
            .clone()
            .flat_map(|i| domain.hash_compressed(&[b'a', i]))
            .collect();
        let rows = ids.len();
        let mut b = v1::UploadBatch {
            batch_number: n,
            handles: ids.flat_map(|i| [i; 16]).collect(),
            points,
            columns: vec![
                v1::Column {
                    name: "loyalty_tier".into(),
                    values: Some(v1::column::Values::Text(v1::TextValues {
                        values: vec!["g".into(); rows],
                        present: vec![],
                    })),
                },
                v1::Column {
                    name: "region".into(),
                    values: Some(v1::column::Values::Text(v1::TextValues {
                        values: vec!["n".into(); rows],
                        present: vec![],
                    })),
                },
                v1::Column {
                    name: "monthly_spend".into(),
                    values: Some(v1::column::Values::Number(v1::NumberValues {
                        values: vec![1.0; rows],
                        present: vec![],
                    })),
                },
            ],
            salt: vec![3; 32],
            ..Default::default()
        };
        let digest = accord_proto::rows_digest(&[3; 32], &b.handles, &b.columns);
        let message =
            accord_proto::signed::upload_batch(fp.as_bytes(), "drinks", n, &b.points, &digest);
        b.signature = keys
            .drinks()
            .sign(Purpose::UploadBatch, &message)
            .to_bytes()
            .to_vec();
        b
    };
    let send = |b: v1::UploadBatch| {
        let mut psi = psi.clone();
        let req = conn.request(futures::stream::iter(vec![v1::UploadMessage {
            kind: Some(v1::upload_message::Kind::Batch(b)),
        }]));
        async move { psi.upload(req).await }
    };
    // Four rows in one batch: refused.
    let e = send(batch(0, 0..4)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("past its agreed upload cap of 3 rows"),
        "{}",
        e.message()
    );
    // 2 rows, then 2 more: the second batch is refused.
    send(batch(0, 0..2)).await.unwrap();
    let e = send(batch(1, 2..4)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("past its agreed upload cap of 3 rows"),
        "{}",
        e.message()
    );
    // Exactly the cap is fine.
    send(batch(1, 2..3)).await.unwrap();
    let status = psi
        .clone()
        .status(conn.request(v1::StatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.batches_uploaded, status.rows_uploaded), (2, 3));
    room.shutdown().await;
}

#[test]
fn signed_messages_carry_the_documented_domain_prefix() {
    // "accord/v1/" ‖ purpose ‖ 0x00 ‖ message, checked with a raw Ed25519 verifier over bytes
    // written out here, for each purpose the protocol signs.
    let key = SecretKey::from_seed(&[0x61; 32]);
    let raw = ed25519_dalek::VerifyingKey::from_bytes(&key.public_key().to_bytes()).unwrap();
    let message = b"\x01\x02message";
    for (purpose, name) in [
        (Purpose::Agreement, "agreement"),
        (Purpose::Revocation, "revocation"),
        (Purpose::RevocationReceipt, "revocation-receipt"),
        (Purpose::AuthChallenge, "auth-challenge"),
        (Purpose::UploadBatch, "upload-batch"),
        (Purpose::UploadComplete, "upload-complete"),
        (Purpose::AuditHead, "audit-head"),
        (Purpose::ErasureReceipt, "erasure-receipt"),
    ] {
        let sig = key.sign(purpose, message);
        let mut signed = b"accord/v1/".to_vec();
        signed.extend_from_slice(name.as_bytes());
        signed.push(0);
        signed.extend_from_slice(message);
        raw.verify_strict(
            &signed,
            &ed25519_dalek::Signature::from_bytes(&sig.to_bytes()),
        )
        .unwrap_or_else(|_| panic!("{name}: not the documented signed bytes"));
        // And our verifier agrees on the same bytes.
        key.public_key()
            .verify(purpose, message, &Signature::from_bytes(&sig.to_bytes()))
            .unwrap();
    }
}

#[test]
fn only_the_room_writes_the_audit_log() {
    // The audit log's writers (`AuditLog::open`, `append`, `sign_head`, `Head::sign`, new
    // entries) are used in crates/room only; everyone else may only read and verify it.
    // crates/audit defines the format (and the signing the room calls) and is skipped.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut offenders = Vec::new();
    let mut checked = 0;
    for crate_dir in std::fs::read_dir(root.join("crates")).unwrap() {
        let crate_dir = crate_dir.unwrap().path();
        if crate_dir.ends_with("room") || crate_dir.ends_with("audit") {
            continue;
        }
        for file in files_under(&crate_dir) {
            if file.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            checked += 1;
            let text = std::fs::read_to_string(&file).unwrap();
            for needle in [
                "AuditLog",
                "sign_head(",
                "Head::sign(",
                "accord_audit::entry(",
                "audit::Event",
                "audit::Actor",
            ] {
                if text.contains(needle) {
                    offenders.push(format!("{} uses {needle}", file.display()));
                }
            }
        }
    }
    assert!(checked > 20, "the scan saw the sources ({checked} files)");
    assert!(offenders.is_empty(), "{offenders:#?}");
    // And nothing outside the room and the binaries depends on the room crate.
    for krate in [
        "agreement",
        "audit",
        "psi",
        "engine",
        "proto",
        "fsutil",
        "party",
    ] {
        let manifest =
            std::fs::read_to_string(root.join("crates").join(krate).join("Cargo.toml")).unwrap();
        assert!(
            !manifest.contains("accord-room"),
            "{krate} depends on accord-room"
        );
    }
}

/// Compile-time: `T` does not implement `Clone`. If it did, both impls below would apply and
/// the call would be ambiguous, so this file would not compile (the technique of
/// `static_assertions::assert_not_impl_any!`, written out by hand).
macro_rules! assert_not_clone {
    ($t:ty) => {{
        trait AmbiguousIfClone<A> {
            fn check() {}
        }
        impl<T: ?Sized> AmbiguousIfClone<()> for T {}
        #[allow(dead_code)]
        struct IsClone;
        impl<T: ?Sized + Clone> AmbiguousIfClone<IsClone> for T {}
        <$t as AmbiguousIfClone<_>>::check();
    }};
}

fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop + ?Sized>() {}

#[test]
fn secrets_cannot_be_cloned_and_are_zeroized_on_drop() {
    assert_not_clone!(accord_agreement::SecretKey);
    assert_not_clone!(accord_psi::PsiSecret);
    assert_not_clone!(accord_psi::HandleKey);
    assert_not_clone!(accord_party::state::Secrets);
    // What the secret types are made of wipes itself on drop: `SecretKey` wraps an
    // ed25519-dalek `SigningKey` (its `zeroize` feature on), the party's `Secrets` holds a
    // `PsiSecret`, a `HandleKey` and a `Zeroizing` shuffle seed.
    zeroized_on_drop::<ed25519_dalek::SigningKey>();
    zeroized_on_drop::<accord_psi::PsiSecret>();
    zeroized_on_drop::<accord_psi::HandleKey>();
    zeroized_on_drop::<zeroize::Zeroizing<[u8; 32]>>();
    // And their Debug output holds nothing secret.
    let key = SecretKey::from_seed(&[0x5e; 32]);
    let file = key.to_key_file();
    let secret = file
        .lines()
        .find_map(|l| l.strip_prefix("secret: ed25519:"))
        .unwrap()
        .to_owned();
    assert!(!format!("{key:?}").contains(&secret));
    let psi = accord_psi::PsiSecret::from_bytes(&[7; 32]).unwrap();
    assert!(!format!("{psi:?}").contains("0707"), "{psi:?}");
}

/// Secrets never appear in `Debug` (issue 10): a client connection's bearer token would
/// otherwise end up in any log line or error that prints the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_never_shows_its_bearer_token_in_debug() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(190);
    let text = agreement_text("debug-token", 1, &keys, 10, 100);
    let room = start_room(&dir.path().join("room")).await;
    let url = url(&room);
    submit(&url, &text).await.unwrap();
    let conn = analyst(&url, "debug-token", &keys).await;
    let token = conn.token().to_owned();
    assert!(token.len() >= 16, "a real token: {token:?}");
    let shown = format!("{conn:?} {conn:#?}");
    assert!(!shown.contains(&token), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
    room.shutdown().await;
}
