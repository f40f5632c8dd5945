//! Expiry of sessions and the scope of ending an agreement, tested by moving deadlines (the
//! state's own fields) instead of sleeping: deterministic on a loaded machine. Challenge
//! expiry, binding and floods of the stateless challenges are tested in `auth::tests`.

use super::*;

fn fp(b: u8) -> Fingerprint {
    hex::encode([b; 32]).parse().unwrap()
}

fn state() -> AuthState {
    AuthState::new(Limits::default()).unwrap()
}

#[test]
fn an_expired_session_is_refused() {
    let mut a = state();
    let (token, s) = a.start_session(fp(1), Role::Analyst("ana".into())).unwrap();
    assert_eq!(a.session(&token).unwrap(), s);
    let key: [u8; 32] = Sha256::digest(hex::decode(&token).unwrap()).into();
    a.sessions.get_mut(&key).unwrap().expires = Instant::now();
    let err = a.session(&token).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn ending_an_agreement_ends_only_its_sessions() {
    let mut a = state();
    let (t1, _) = a
        .start_session(fp(1), Role::Party("drinks".into()))
        .unwrap();
    let (t2, _) = a
        .start_session(fp(2), Role::Party("drinks".into()))
        .unwrap();
    a.end_sessions_for(fp(1));
    assert!(a.session(&t1).is_err());
    assert!(a.session(&t2).is_ok());
}

/// Mutation testing (docs/TESTING.md) found these unpinned: the login count that the global
/// nonce cap and pruning rely on, the per-principal session cap at exactly the limit, the
/// expiry reported to the client, and the parsing of the bearer header.
#[test]
fn each_login_is_counted_once_and_pruning_gives_it_back() {
    let mut a = state();
    let role = Role::Analyst("ana".into());
    for i in 0..3u8 {
        let n = a.issue_challenge(fp(1), role.clone(), [i; 32]).unwrap();
        let c = a.check_challenge(&n, fp(1), &role, &[i; 32]).unwrap();
        a.consume(c).unwrap();
    }
    assert_eq!(a.used_total, 3);
    // Far past every challenge's expiry: everything is pruned and the count returns to 0.
    a.prune_used(u64::MAX);
    assert_eq!(a.used_total, 0);
    assert!(a.used.is_empty());
}

#[test]
fn a_principal_at_its_session_limit_loses_its_oldest_session() {
    let limits = Limits {
        max_sessions_per_principal: 2,
        ..Limits::default()
    };
    let mut a = AuthState::new(limits).unwrap();
    let role = Role::Party("drinks".into());
    let (t1, _) = a.start_session(fp(1), role.clone()).unwrap();
    let (t2, _) = a.start_session(fp(1), role.clone()).unwrap();
    assert_eq!(a.session_count(), 2);
    let (t3, _) = a.start_session(fp(1), role.clone()).unwrap();
    assert_eq!(a.session_count(), 2, "never more than the limit");
    assert!(a.session(&t1).is_err(), "the oldest went");
    assert!(a.session(&t2).is_ok() && a.session(&t3).is_ok());
    // Another principal is not affected.
    a.start_session(fp(1), Role::Party("snacks".into()))
        .unwrap();
    assert!(a.session(&t2).is_ok() && a.session(&t3).is_ok());
}

#[test]
fn the_reported_expiry_is_now_plus_the_session_lifetime() {
    let mut a = state();
    let before = chrono::Utc::now().timestamp_millis();
    let (_, s) = a.start_session(fp(1), Role::Analyst("ana".into())).unwrap();
    let after = chrono::Utc::now().timestamp_millis();
    let ttl = Limits::default().session_ttl.as_millis() as i64;
    assert!(
        (before + ttl..=after + ttl).contains(&s.expires_unix_ms),
        "{} not in {}..={}",
        s.expires_unix_ms,
        before + ttl,
        after + ttl
    );
}

/// Checking a presented audit head may read the log up to it: each session may present one,
/// and a second is refused (the login bound then bounds what a principal can make the room
/// read). Another session of the same principal may present again.
#[test]
fn a_session_presents_one_audit_head() {
    let mut a = state();
    let role = Role::Party("drinks".into());
    let (t1, _) = a.start_session(fp(1), role.clone()).unwrap();
    a.claim_head_presentation(&t1).unwrap();
    let err = a.claim_head_presentation(&t1).unwrap_err();
    assert!(err.to_string().contains("already presented"), "{err}");
    let (t2, _) = a.start_session(fp(1), role).unwrap();
    a.claim_head_presentation(&t2).unwrap();
    let err = a.claim_head_presentation("00").unwrap_err();
    assert!(matches!(err, RoomError::Unauthenticated(_)), "{err}");
}
