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
