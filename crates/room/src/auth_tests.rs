//! Expiry of challenges and sessions, tested by moving their deadlines (the state's own
//! fields) instead of sleeping: deterministic on a loaded machine.

use super::*;

fn fp(b: u8) -> Fingerprint {
    hex::encode([b; 32]).parse().unwrap()
}

#[test]
fn an_expired_challenge_is_refused_and_used_up() {
    let mut a = AuthState::default();
    let role = Role::Party("drinks".into());
    let n = a.issue_challenge(fp(1), role.clone(), [9; 32]).unwrap();
    let deadline = a.challenges[&n].expires;
    assert!(
        deadline >= Instant::now() + CHALLENGE_TTL - Duration::from_secs(5),
        "a challenge lives CHALLENGE_TTL"
    );
    a.challenges.get_mut(&n).unwrap().expires = Instant::now();
    let err = a.take_challenge(&n, fp(1), &role, &[9; 32]).unwrap_err();
    assert!(err.to_string().contains("the challenge expired"), "{err}");
    // Taken even though it failed: it cannot be retried.
    let err = a.take_challenge(&n, fp(1), &role, &[9; 32]).unwrap_err();
    assert!(err.to_string().contains("unknown or already used"), "{err}");
    // A challenge one TTL in the future is still good.
    let n = a.issue_challenge(fp(1), role.clone(), [9; 32]).unwrap();
    a.take_challenge(&n, fp(1), &role, &[9; 32]).unwrap();
}

#[test]
fn a_challenge_is_bound_to_principal_and_client_nonce() {
    let mut a = AuthState::default();
    let role = Role::Party("drinks".into());
    for (other_role, nonce) in [
        (Role::Party("snacks".into()), [9; 32]),
        (Role::Analyst("drinks".into()), [9; 32]),
        (role.clone(), [8; 32]),
    ] {
        let n = a.issue_challenge(fp(1), role.clone(), [9; 32]).unwrap();
        let err = a
            .take_challenge(&n, fp(1), &other_role, &nonce)
            .unwrap_err();
        assert!(err.to_string().contains("issued for another"), "{err}");
    }
}

#[test]
fn an_expired_session_is_refused() {
    let mut a = AuthState::default();
    let (token, s) = a.start_session(fp(1), Role::Analyst("ana".into())).unwrap();
    assert_eq!(a.session(&token).unwrap(), s);
    let key: [u8; 32] = Sha256::digest(hex::decode(&token).unwrap()).into();
    a.sessions.get_mut(&key).unwrap().expires = Instant::now();
    let err = a.session(&token).unwrap_err();
    assert!(err.to_string().contains("the session expired"), "{err}");
    // Expired sessions and challenges are swept when the next challenge is issued.
    let n = a
        .issue_challenge(fp(1), Role::Party("drinks".into()), [1; 32])
        .unwrap();
    a.challenges.get_mut(&n).unwrap().expires = Instant::now();
    a.issue_challenge(fp(1), Role::Party("drinks".into()), [2; 32])
        .unwrap();
    assert!(a.sessions.is_empty());
    assert_eq!(a.challenges.len(), 1);
    let err = a.session(&token).unwrap_err();
    assert!(err.to_string().contains("no valid session"), "{err}");
}

#[test]
fn ending_an_agreement_ends_only_its_sessions_and_challenges() {
    let mut a = AuthState::default();
    let (t1, _) = a
        .start_session(fp(1), Role::Party("drinks".into()))
        .unwrap();
    let (t2, _) = a
        .start_session(fp(2), Role::Party("drinks".into()))
        .unwrap();
    let n1 = a
        .issue_challenge(fp(1), Role::Party("drinks".into()), [1; 32])
        .unwrap();
    let n2 = a
        .issue_challenge(fp(2), Role::Party("drinks".into()), [1; 32])
        .unwrap();
    a.end_sessions_for(fp(1));
    assert!(a.session(&t1).is_err());
    assert!(a.session(&t2).is_ok());
    assert!(
        a.take_challenge(&n1, fp(1), &Role::Party("drinks".into()), &[1; 32])
            .is_err()
    );
    a.take_challenge(&n2, fp(2), &Role::Party("drinks".into()), &[1; 32])
        .unwrap();
}

#[test]
fn the_challenge_flood_is_bounded() {
    let mut a = AuthState::default();
    for i in 0..MAX_CHALLENGES {
        a.issue_challenge(fp(1), Role::Party("drinks".into()), [(i % 251) as u8; 32])
            .unwrap();
    }
    let err = a
        .issue_challenge(fp(1), Role::Party("drinks".into()), [0; 32])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("too many authentication challenges"),
        "{err}"
    );
    assert_eq!(a.challenges.len(), MAX_CHALLENGES);
}
