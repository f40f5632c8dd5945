//! The room is a named party of the agreement (issue 14): the room refuses an agreement
//! written for another room, clients refuse a room presenting another key than the
//! agreement's `[room]` section names, and over TLS a certificate the room's key does not
//! vouch for (an interceptor holding a certificate the client trusts) is refused. Loopback
//! only; every scenario runs against real servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use accord_agreement::{PublicKey, SecretKey};
use accord_party::{ClientTls, Connection, PartyError, Principal, RoomIdentity};
use accord_proto::v1::{self, auth_server};
use accord_room::devcerts::{self, DevCerts, Validity};
use accord_room::{ServeConfig, ServerTls};
use accord_tests::*;
use tonic::{Request, Response, Status};

const OTHER_ROOM_SEED: [u8; 32] = [0x5B; 32];

fn other_room_key() -> PublicKey {
    SecretKey::from_seed(&OTHER_ROOM_SEED).public_key()
}

fn room_key() -> PublicKey {
    SecretKey::from_seed(&ROOM_SEED).public_key()
}

#[tokio::test]
async fn the_room_refuses_an_agreement_written_for_another_room() {
    let dir = tempfile::tempdir().unwrap();
    let room = start_room(dir.path()).await;
    let url = url(&room);
    let mut keys = Keys::new(150);
    keys.room = OTHER_ROOM_SEED;
    let text = agreement_text("for-another-room", 1, &keys, 10, 1000);
    let e = submit(&url, &text).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    let m = e.message();
    assert!(
        m.contains(&format!("names room key {}", other_room_key()))
            && m.contains(&format!("this room's key is {}", room_key()))
            && m.contains("written for another room"),
        "{m}"
    );
    // The same agreement naming this room is registered.
    let ok = agreement_text("for-this-room", 1, &Keys::new(150), 10, 1000);
    submit(&url, &ok).await.unwrap();
    room.shutdown().await;
}

/// A room that is not the one the agreement names: it has its own key, knows the (public)
/// signed agreement, and answers the authentication calls as a room would.
struct Impostor {
    key: [u8; 32],
    agreement: String,
    authenticate_calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl auth_server::Auth for Impostor {
    async fn challenge(
        &self,
        _request: Request<v1::ChallengeRequest>,
    ) -> Result<Response<v1::ChallengeResponse>, Status> {
        Ok(Response::new(v1::ChallengeResponse {
            room_nonce: vec![7; 32],
            room_public_key: SecretKey::from_seed(&self.key)
                .public_key()
                .to_bytes()
                .to_vec(),
            protocol_version: accord_proto::PROTOCOL_VERSION,
            tls_binding_signature: Vec::new(),
        }))
    }

    async fn authenticate(
        &self,
        _request: Request<v1::AuthenticateRequest>,
    ) -> Result<Response<v1::AuthenticateResponse>, Status> {
        self.authenticate_calls.fetch_add(1, Ordering::SeqCst);
        let m = accord_agreement::Manifest::parse(&self.agreement).unwrap();
        Ok(Response::new(v1::AuthenticateResponse {
            session_token: "ab".repeat(32),
            expires_unix_ms: 0,
            head: None,
            fingerprint: m.fingerprint().to_string(),
            principal_name: String::new(),
            agreement_id: m.id.clone(),
            manifest_toml: self.agreement.clone(),
        }))
    }
}

async fn start_impostor(agreement: &str) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let impostor = Impostor {
        key: OTHER_ROOM_SEED,
        agreement: agreement.to_owned(),
        authenticate_calls: calls.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(auth_server::AuthServer::new(impostor))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), calls)
}

#[tokio::test]
async fn a_party_holding_the_agreement_refuses_another_room_before_signing_anything() {
    let keys = Keys::new(151);
    let text = agreement_text("impostor-party", 1, &keys, 10, 1000);
    let agreement = verified(&text);
    let (url, calls) = start_impostor(&text).await;
    let err = Connection::open_checked(
        &url,
        &ClientTls::default(),
        &agreement.fingerprint().to_string(),
        Principal::Party("drinks"),
        &keys.drinks(),
        Some(&RoomIdentity::of(agreement.manifest())),
    )
    .await
    .map(|_| ())
    .expect_err("a room presenting another key must be refused");
    assert!(matches!(err, PartyError::Refused(_)), "{err:?}");
    let m = err.to_string();
    assert!(
        m.contains(&format!("names room key {}", room_key()))
            && m.contains(&format!("presented key {}", other_room_key()))
            && m.contains("different room")
            && m.contains("attack"),
        "{m}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the client signed a challenge for a room the agreement does not name"
    );
}

#[tokio::test]
async fn an_analyst_with_only_an_id_refuses_an_impostor_serving_the_real_agreement() {
    let keys = Keys::new(152);
    let text = agreement_text("impostor-analyst", 1, &keys, 10, 1000);
    let (url, calls) = start_impostor(&text).await;
    let key = keys.analyst();
    let public = key.public_key();
    let err = Connection::open(
        &url,
        "impostor-analyst",
        Principal::AnalystKey(&public),
        &key,
    )
    .await
    .map(|_| ())
    .expect_err("a room the agreement does not name must be refused");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let m = err.to_string();
    assert!(
        m.contains(&format!("names room key {}", room_key()))
            && m.contains(&format!("presented key {}", other_room_key()))
            && m.contains("Test Rooms Ltd")
            && m.contains("attack"),
        "{m}"
    );
}

#[tokio::test]
async fn an_analyst_with_only_an_id_is_refused_an_agreement_not_signed_by_its_parties() {
    // The impostor writes its own agreement naming itself and the analyst's key, but cannot
    // sign it as the parties.
    let keys = Keys::new(153);
    let mut impostor_keys = keys;
    impostor_keys.room = OTHER_ROOM_SEED;
    let forged = agreement_text("impostor-forged", 1, &impostor_keys, 10, 1000);
    let forged = forged
        .lines()
        .take_while(|l| !l.starts_with("[signatures]"))
        .collect::<Vec<_>>()
        .join("\n");
    let (url, _) = start_impostor(&forged).await;
    let key = keys.analyst();
    let public = key.public_key();
    let err = Connection::open(
        &url,
        "impostor-forged",
        Principal::AnalystKey(&public),
        &key,
    )
    .await
    .map(|_| ())
    .expect_err("an unsigned agreement cannot vouch for a room");
    let m = err.to_string();
    assert!(m.contains("not signed by every party"), "{m}");
}

fn certs(dir: &Path) -> DevCerts {
    devcerts::generate(dir, &[], &[], Validity::days(2)).unwrap()
}

/// A TLS interceptor: terminates TLS with `cert` (a certificate the client trusts, for the
/// room's name) and relays the bytes to the real room over TLS.
async fn interceptor(cert: &DevCerts, room: SocketAddr, room_ca: &Path) -> SocketAddr {
    tls_relay(cert, room, Some(room_ca)).await
}

/// Terminates TLS with `cert` and relays to `room`: over TLS (trusting `room_ca`) or, when
/// `room_ca` is None, in plain text (a TLS-terminating proxy in front of a plain-text room).
async fn tls_relay(cert: &DevCerts, room: SocketAddr, room_ca: Option<&Path>) -> SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    accord_room::tls::install_crypto_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.room_cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&cert.room_key).unwrap();
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = room_ca.map(|ca| {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let mut client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(client))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let connector = connector.clone();
            tokio::spawn(async move {
                let Ok(mut inbound) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut upstream = tokio::net::TcpStream::connect(room).await.unwrap();
                match connector {
                    Some(connector) => {
                        let name = ServerName::try_from("127.0.0.1").unwrap();
                        let Ok(mut outbound) = connector.connect(name, upstream).await else {
                            return;
                        };
                        tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                            .await
                            .ok();
                    }
                    None => {
                        tokio::io::copy_bidirectional(&mut inbound, &mut upstream)
                            .await
                            .ok();
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_tls_interceptor_with_a_trusted_certificate_is_refused_by_the_room_key_binding() {
    let dir = tempfile::tempdir().unwrap();
    let real = certs(&dir.path().join("real"));
    let other = certs(&dir.path().join("other"));
    let data = dir.path().join("room");
    install_room_key(&data, ROOM_SEED);
    let mut config = serve_config(&data);
    config.flight_sql = None;
    config.tls = Some(ServerTls::load(&real.room_cert, &real.room_key, None).unwrap());
    let room = accord_room::start(ServeConfig { ..config }).await.unwrap();
    let keys = Keys::new(154);
    let text = agreement_text("tls-binding", 1, &keys, 10, 1000);
    let agreement = verified(&text);

    // The client trusts both CAs (say, a public CA that mis-issued a certificate).
    let mut both = std::fs::read(&real.ca_cert).unwrap();
    both.extend(std::fs::read(&other.ca_cert).unwrap());
    let tls = ClientTls::default().with_ca(both, "both CAs").unwrap();
    let direct = format!("https://127.0.0.1:{}", room.grpc_addr.port());
    let channel = accord_party::client::channel_with(&direct, &tls)
        .await
        .unwrap();
    v1::agreements_client::AgreementsClient::new(channel)
        .submit(v1::SubmitAgreementRequest {
            manifest_toml: text.clone(),
        })
        .await
        .unwrap();
    let fp = agreement.fingerprint().to_string();
    let named = RoomIdentity::of(agreement.manifest());

    // Directly: the room's key vouches for the certificate the client saw.
    Connection::open_checked(
        &direct,
        &tls,
        &fp,
        Principal::Party("drinks"),
        &keys.drinks(),
        Some(&named),
    )
    .await
    .unwrap();

    // Through the interceptor: the TLS handshake succeeds (the client trusts its CA), the room
    // key is the right one (relayed), but it did not sign the interceptor's certificate.
    let proxy = interceptor(&other, room.grpc_addr, &real.ca_cert).await;
    let through = format!("https://127.0.0.1:{}", proxy.port());
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        Connection::open_checked(
            &through,
            &tls,
            &fp,
            Principal::Party("drinks"),
            &keys.drinks(),
            Some(&named),
        ),
    )
    .await
    .unwrap()
    .map(|_| ())
    .expect_err("an interceptor must be refused");
    assert!(matches!(err, PartyError::Refused(_)), "{err:?}");
    let m = err.to_string();
    assert!(
        m.contains(&format!(
            "room key {} does not vouch for the TLS certificate",
            room_key()
        )) && m.contains("intercepted"),
        "{m}"
    );
    room.shutdown().await;
}

/// A room whose key was replaced (a new data directory key under old agreements) does not
/// serve the agreements naming the old key: clients would refuse it anyway.
#[tokio::test]
async fn a_room_whose_key_was_replaced_does_not_serve_agreements_naming_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("room");
    let keys = Keys::new(157);
    let text = agreement_text("key-replaced", 1, &keys, 10, 1000);
    let fp = verified(&text).fingerprint().to_string();
    let room = start_room(&data).await;
    submit(&url(&room), &text).await.unwrap();
    let url_before = url(&room);
    accord_tests::party_audit_log(&url_before, &fp, "drinks", &keys.drinks()).await;
    room.shutdown().await;
    std::fs::remove_file(accord_room::identity::key_path(&data)).unwrap();
    install_room_key(&data, OTHER_ROOM_SEED);
    let room = start_room(&data).await;
    let key = keys.analyst();
    let public = key.public_key();
    let err = Connection::open(&url(&room), &fp, Principal::AnalystKey(&public), &key)
        .await
        .map(|_| ())
        .expect_err("the agreement names the old key: not served");
    assert!(err.to_string().contains("not authorized"), "{err}");
    room.shutdown().await;
}

/// A plain-text room behind a TLS-terminating proxy: clients refuse the proxy unless the room
/// was told the proxy's certificate (`--tls-proxy-cert`) and so signs its binding.
#[tokio::test]
async fn a_tls_terminating_proxy_is_accepted_only_when_the_room_binds_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let proxy_certs = certs(&dir.path().join("proxy"));
    let tls = ClientTls::default()
        .with_ca(std::fs::read(&proxy_certs.ca_cert).unwrap(), "proxy CA")
        .unwrap();
    let keys = Keys::new(156);
    let text = agreement_text("behind-a-proxy", 1, &keys, 10, 1000);
    let agreement = verified(&text);
    let fp = agreement.fingerprint().to_string();
    let named = RoomIdentity::of(agreement.manifest());
    for bound in [false, true] {
        let data = dir.path().join(format!("room-{bound}"));
        let mut config = serve_config(&data);
        config.flight_sql = None;
        if bound {
            config.tls_proxy_cert = Some(proxy_certs.room_cert.clone());
        }
        let room = accord_room::start(config).await.unwrap();
        submit(&url(&room), &text).await.unwrap();
        let proxy = tls_relay(&proxy_certs, room.grpc_addr, None).await;
        let through = format!("https://127.0.0.1:{}", proxy.port());
        let result = Connection::open_checked(
            &through,
            &tls,
            &fp,
            Principal::Party("drinks"),
            &keys.drinks(),
            Some(&named),
        )
        .await
        .map(|_| ());
        if bound {
            result.unwrap();
        } else {
            let m = result.expect_err("an unbound proxy is refused").to_string();
            assert!(
                m.contains("sent no signature binding its certificate"),
                "{m}"
            );
        }
        room.shutdown().await;
    }
}

/// `agreement submit` checks the room before sending it the manifest (who shares what).
#[tokio::test]
async fn an_agreement_is_not_sent_to_a_room_it_does_not_name() {
    let keys = Keys::new(158);
    let text = agreement_text("submit-to-impostor", 1, &keys, 10, 1000);
    let agreement = verified(&text);
    let (impostor, _) = start_impostor(&text).await;
    let err = accord_party::client::channel_to_named_room(
        &impostor,
        &ClientTls::default(),
        agreement.manifest(),
    )
    .await
    .map(|_| ())
    .expect_err("an impostor must be refused before the manifest is sent");
    let m = err.to_string();
    assert!(
        m.contains(&format!("presented key {}", other_room_key()))
            && m.contains("Nothing was sent"),
        "{m}"
    );
    // The room it names passes.
    let dir = tempfile::tempdir().unwrap();
    let room = start_room(dir.path()).await;
    accord_party::client::channel_to_named_room(
        &url(&room),
        &ClientTls::default(),
        agreement.manifest(),
    )
    .await
    .unwrap();
    room.shutdown().await;
}

/// A stranger that echoes the real room's (public) key at `Challenge` and then claims to have
/// registered whatever it is sent. It cannot sign as the room.
struct EchoingImpostor;

#[tonic::async_trait]
impl auth_server::Auth for EchoingImpostor {
    async fn challenge(
        &self,
        _request: Request<v1::ChallengeRequest>,
    ) -> Result<Response<v1::ChallengeResponse>, Status> {
        Ok(Response::new(v1::ChallengeResponse {
            room_nonce: vec![7; 32],
            room_public_key: room_key().to_bytes().to_vec(),
            protocol_version: accord_proto::PROTOCOL_VERSION,
            tls_binding_signature: Vec::new(),
        }))
    }

    async fn authenticate(
        &self,
        _request: Request<v1::AuthenticateRequest>,
    ) -> Result<Response<v1::AuthenticateResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }
}

#[tonic::async_trait]
impl v1::agreements_server::Agreements for EchoingImpostor {
    async fn submit(
        &self,
        request: Request<v1::SubmitAgreementRequest>,
    ) -> Result<Response<v1::SubmitAgreementResponse>, Status> {
        let m = accord_agreement::Manifest::parse(&request.into_inner().manifest_toml).unwrap();
        let fingerprint = m.fingerprint();
        // A head for the right agreement, signed by a key that is not the room's.
        let hash = [9u8; 32];
        let message = accord_proto::signed::audit_head(fingerprint.as_bytes(), 1, &hash);
        let signature = SecretKey::from_seed(&OTHER_ROOM_SEED)
            .sign(accord_agreement::sig::Purpose::AuditHead, &message);
        Ok(Response::new(v1::SubmitAgreementResponse {
            agreement_id: m.id.clone(),
            version: m.version,
            fingerprint: fingerprint.to_string(),
            already_registered: false,
            superseded: String::new(),
            head: Some(v1::SignedHead {
                fingerprint: fingerprint.to_string(),
                entries: 1,
                hash: hash.to_vec(),
                signature: signature.to_bytes().to_vec(),
            }),
        }))
    }

    async fn revoke(
        &self,
        _request: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }
}

#[tokio::test]
async fn a_registration_the_named_room_did_not_sign_is_not_believed() {
    let keys = Keys::new(159);
    let text = agreement_text("fake-registration", 1, &keys, 10, 1000);
    let agreement = verified(&text);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(auth_server::AuthServer::new(EchoingImpostor))
            .add_service(v1::agreements_server::AgreementsServer::new(
                EchoingImpostor,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let err = accord_party::submit_agreement(
        &format!("http://{addr}"),
        &ClientTls::default(),
        &agreement,
    )
    .await
    .expect_err("a registration without the room's signed head must be refused");
    assert!(matches!(err, PartyError::Refused(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("signature on its audit head does not verify"),
        "{err}"
    );
    // The room the agreement names answers with a head it signed: accepted.
    let dir = tempfile::tempdir().unwrap();
    let room = start_room(dir.path()).await;
    let submitted = accord_party::submit_agreement(&url(&room), &ClientTls::default(), &agreement)
        .await
        .unwrap();
    assert_eq!(submitted.fingerprint, agreement.fingerprint().to_string());
    assert!(!submitted.already_registered);
    assert_eq!(
        submitted.audit_entries, 1,
        "the registration is the first entry"
    );
    room.shutdown().await;
}
