//! TLS and mutual TLS end to end (issue 14): a real room serving gRPC and Flight SQL over TLS
//! with `accord dev-certs` certificates, real clients, and every refusal a user can meet
//! (unknown CA, name mismatch, expired certificate, missing client certificate, plain-text
//! room, plain text on a non-loopback address), each with the message that says what failed.
//! Loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use accord_party::{ClientTls, PartyError, Principal};
use accord_room::devcerts::{self, DevCerts, Validity};
use accord_room::{RunningRoom, ServeConfig, ServerTls};
use accord_tests::*;
use zeroize::Zeroizing;

fn certs(dir: &Path, validity: Validity) -> DevCerts {
    let clients: Vec<String> = devcerts::DEFAULT_CLIENTS
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    devcerts::generate(dir, &[], &clients, validity).unwrap()
}

fn server_tls(c: &DevCerts, mutual: bool) -> ServerTls {
    ServerTls::load(
        &c.room_cert,
        &c.room_key,
        mutual.then_some(c.ca_cert.as_path()),
    )
    .unwrap()
}

async fn tls_room(data: &Path, tls: Option<ServerTls>) -> RunningRoom {
    if !accord_room::identity::key_path(data).exists() {
        install_room_key(data, ROOM_SEED);
    }
    accord_room::start(ServeConfig {
        data_dir: data.to_path_buf(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        flight_sql: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        expiry_check: Duration::from_secs(5),
        tls,
        insecure_plaintext_network: false,
        tls_proxy_cert: None,
        limits: accord_room::Limits::default(),
        registration_allow: None,
        open_registration: false,
        engine: Default::default(),
    })
    .await
    .unwrap()
}

fn client(c: &DevCerts, who: Option<&str>) -> ClientTls {
    let ca = std::fs::read(&c.ca_cert).unwrap();
    let tls = ClientTls::default()
        .with_ca(ca, &c.ca_cert.display().to_string())
        .unwrap();
    match who {
        None => tls,
        Some(name) => {
            let (_, cert, key) = c.clients.iter().find(|(n, _, _)| n == name).unwrap();
            tls.with_identity(
                std::fs::read(cert).unwrap(),
                Zeroizing::new(std::fs::read(key).unwrap()),
            )
            .unwrap()
        }
    }
}

async fn connect_err(url: &str, tls: &ClientTls) -> String {
    let err = accord_party::client::channel_with(url, tls)
        .await
        .map(|_| ())
        .expect_err("the connection must be refused");
    assert!(
        matches!(err, PartyError::Refused(_)),
        "a TLS failure is the caller's to fix, not a transient one: {err:?}"
    );
    err.to_string()
}

fn write_small_files(dir: &Path, n: usize) {
    let mut drinks = Vec::new();
    let mut snacks = Vec::new();
    for i in 0..n {
        let email = format!("c{i}@example.org");
        drinks.push(Customer {
            email: email.clone(),
            consent: true,
            cells: vec![
                ["gold", "silver"][i % 2].into(),
                "north".into(),
                (i % 400).to_string(),
            ],
        });
        snacks.push(Customer {
            email,
            consent: true,
            cells: vec!["crisps".into(), (i % 90).to_string()],
        });
    }
    write_csv(&dir.join("drinks.csv"), "drinks", &drinks);
    write_csv(&dir.join("snacks.csv"), "snacks", &snacks);
}

/// The whole flow over mutual TLS: submit, both uploads, an analyst's query, and a Flight
/// SQL bearer token usable by the ADBC test below. Returns (room, url, token).
async fn mutual_tls_flow(dir: &Path, c: &DevCerts) -> (RunningRoom, String, String) {
    let room = tls_room(&dir.join("room"), Some(server_tls(c, true))).await;
    let url = format!("https://127.0.0.1:{}", room.grpc_addr.port());
    let keys = Keys::new(41);
    let text = agreement_text("tls-e2e", 1, &keys, 10, 1000);
    let agreement = verified(&text);

    let channel = accord_party::client::channel_with(&url, &client(c, Some("drinks")))
        .await
        .unwrap();
    accord_proto::v1::agreements_client::AgreementsClient::new(channel)
        .submit(accord_proto::v1::SubmitAgreementRequest {
            manifest_toml: text.clone(),
        })
        .await
        .unwrap();

    write_small_files(dir, 60);
    let mut a = party(&agreement, "drinks", &keys, &dir.join("drinks-state"), &url);
    a.tls = client(c, Some("drinks"));
    let mut b = party(&agreement, "snacks", &keys, &dir.join("snacks-state"), &url);
    b.tls = client(c, Some("snacks"));
    let oa = upload_options(dir.join("drinks.csv"), 16, true);
    let ob = upload_options(dir.join("snacks.csv"), 16, true);
    let (ra, rb) = tokio::join!(accord_party::upload(&a, &oa), accord_party::upload(&b, &ob));
    assert!(ra.unwrap().status.unwrap().tokens_complete);
    assert!(rb.unwrap().status.unwrap().tokens_complete);

    let key = keys.analyst();
    let public = key.public_key();
    let mut conn = accord_party::Connection::open_with(
        &url,
        &client(c, Some("analyst")),
        &agreement.fingerprint().to_string(),
        Principal::AnalystKey(&public),
        &key,
    )
    .await
    .unwrap();
    let batches = grpc_query(
        &mut conn,
        "SELECT drinks_loyalty_tier, COUNT(*) AS n FROM overlap GROUP BY drinks_loyalty_tier ORDER BY drinks_loyalty_tier",
    )
    .await
    .unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2, "gold and silver, 30 customers each");
    let token = conn.token().to_owned();
    (room, url, token)
}

#[tokio::test]
async fn mutual_tls_handshake_with_the_dev_ca_runs_the_whole_flow() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(&dir.path().join("certs"), Validity::days(30));
    let (room, _url, _token) = mutual_tls_flow(dir.path(), &c).await;
    room.shutdown().await;
}

#[tokio::test]
async fn wrong_ca_is_refused_as_unknown_ca() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(&dir.path().join("certs"), Validity::days(30));
    let other = certs(&dir.path().join("other"), Validity::days(30));
    let room = tls_room(&dir.path().join("room"), Some(server_tls(&c, false))).await;
    let url = format!("https://127.0.0.1:{}", room.grpc_addr.port());
    let msg = connect_err(&url, &client(&other, None)).await;
    assert!(msg.contains("unknown CA"), "{msg}");
    assert!(msg.contains("--ca"), "says how to fix it: {msg}");
    // The right CA works against the same room.
    accord_party::client::channel_with(&url, &client(&c, None))
        .await
        .unwrap();
    room.shutdown().await;
}

#[tokio::test]
async fn missing_client_certificate_is_refused_when_mutual_tls_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(&dir.path().join("certs"), Validity::days(30));
    let other = certs(&dir.path().join("other"), Validity::days(30));
    let room = tls_room(&dir.path().join("room"), Some(server_tls(&c, true))).await;
    let url = format!("https://127.0.0.1:{}", room.grpc_addr.port());
    let keys = Keys::new(42);
    // Without a client certificate: refused, and the message names the fix.
    let err = accord_party::Connection::open_with(
        &url,
        &client(&c, None),
        "tls-mtls",
        Principal::Party("drinks"),
        &keys.drinks(),
    )
    .await
    .expect_err("no client certificate");
    let msg = err.to_string();
    assert!(
        msg.contains("requires a client certificate"),
        "{msg} ({err:?})"
    );
    assert!(msg.contains("--client-cert"), "{msg}");
    // A client certificate from another CA: refused too, and said so.
    let (_, cert, key) = &other.clients[0];
    let wrong = client(&c, None)
        .with_identity(
            std::fs::read(cert).unwrap(),
            Zeroizing::new(std::fs::read(key).unwrap()),
        )
        .unwrap();
    let err = accord_party::Connection::open_with(
        &url,
        &wrong,
        "tls-mtls",
        Principal::Party("drinks"),
        &keys.drinks(),
    )
    .await
    .expect_err("a client certificate from another CA");
    let msg = err.to_string();
    assert!(
        msg.contains("refused your client certificate"),
        "{msg} ({err:?})"
    );
    room.shutdown().await;
}

#[tokio::test]
async fn name_mismatch_expired_certificate_and_plain_text_room_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(&dir.path().join("certs"), Validity::days(30));
    let room = tls_room(&dir.path().join("room"), Some(server_tls(&c, false))).await;
    let url = format!("https://127.0.0.1:{}", room.grpc_addr.port());
    let msg = connect_err(&url, &client(&c, None).with_domain("room.other.example")).await;
    assert!(msg.contains("name mismatch"), "{msg}");
    assert!(msg.contains("room.other.example"), "{msg}");
    room.shutdown().await;

    let expired = certs(
        &dir.path().join("expired"),
        Validity {
            not_before: (2020, 1, 1),
            not_after: (2020, 2, 1),
        },
    );
    let room = tls_room(&dir.path().join("room2"), Some(server_tls(&expired, false))).await;
    let url = format!("https://127.0.0.1:{}", room.grpc_addr.port());
    let msg = connect_err(&url, &client(&expired, None)).await;
    assert!(msg.contains("expired certificate"), "{msg}");
    room.shutdown().await;

    let plain = tls_room(&dir.path().join("room3"), None).await;
    let url = format!("https://127.0.0.1:{}", plain.grpc_addr.port());
    let msg = connect_err(&url, &client(&c, None)).await;
    assert!(msg.contains("plain-text room"), "{msg}");
    assert!(msg.contains("http://"), "{msg}");
    plain.shutdown().await;
}

#[tokio::test]
async fn plain_http_client_to_a_tls_room_is_told_to_use_https() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(&dir.path().join("certs"), Validity::days(30));
    let room = tls_room(&dir.path().join("room"), Some(server_tls(&c, false))).await;
    let url = format!("http://127.0.0.1:{}", room.grpc_addr.port());
    let keys = Keys::new(43);
    let msg =
        accord_party::Connection::open(&url, "any", Principal::Party("drinks"), &keys.drinks())
            .await
            .expect_err("plain HTTP/2 to a TLS room")
            .to_string();
    assert!(msg.contains("https://"), "{msg}");
    room.shutdown().await;
}

#[tokio::test]
async fn non_loopback_listen_without_tls_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (listen, flight) in [
        // 192.0.2.1 is TEST-NET-1: the refusal comes before any bind, so nothing is sent anywhere.
        (SocketAddr::from(([192, 0, 2, 1], 7700)), None),
        (
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(SocketAddr::from(([192, 0, 2, 1], 7701))),
        ),
    ] {
        let err = accord_room::start(ServeConfig {
            data_dir: dir.path().join("room"),
            listen,
            flight_sql: flight,
            expiry_check: Duration::from_secs(5),
            tls: None,
            insecure_plaintext_network: false,
            tls_proxy_cert: None,
            limits: accord_room::Limits::default(),
            registration_allow: None,
            // Registration is settled (open), so the refusal tested is the plain-text one.
            open_registration: true,
            engine: Default::default(),
        })
        .await
        .map(|_| ())
        .expect_err("plain text on a non-loopback address");
        let msg = err.to_string();
        assert!(msg.contains("without TLS"), "{msg}");
        assert!(msg.contains("--tls-cert"), "{msg}");
        assert!(msg.contains("--insecure-plaintext-network"), "{msg}");
    }
}

fn adbc_python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("bash")
        .arg(root.join("tests/adbc/setup.sh"))
        .output();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    match out {
        Ok(o) if o.status.success() => Some(PathBuf::from(
            String::from_utf8(o.stdout).unwrap().trim().to_owned(),
        )),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                !ci,
                "CI=true: the ADBC Flight SQL driver must be installable (tests/adbc/setup.sh): {why}"
            );
            eprintln!("SKIPPED adbc_flight_sql_over_tls: tests/adbc/setup.sh failed: {why}");
            None
        }
    }
}

#[tokio::test]
async fn adbc_flight_sql_over_tls() {
    let Some(python) = adbc_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = certs(&dir.path().join("certs"), Validity::days(30));
    let (room, _url, token) = mutual_tls_flow(dir.path(), &c).await;
    let flight = room.flight_sql_addr.unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("adbc/query.py");
    let (_, cert, key) = c
        .clients
        .iter()
        .find(|(n, _, _)| n == "analyst")
        .cloned()
        .unwrap();
    let ca = c.ca_cert.clone();
    let run = move |with_client_cert: bool| {
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .arg(format!("grpc+tls://127.0.0.1:{}", flight.port()))
            .arg(&token)
            .arg(&ca);
        if with_client_cert {
            cmd.arg(&cert).arg(&key);
        }
        cmd.arg("--").arg(
            "SELECT drinks_loyalty_tier, COUNT(*) AS n FROM overlap GROUP BY drinks_loyalty_tier ORDER BY drinks_loyalty_tier",
        );
        cmd.output().unwrap()
    };
    let python_run = tokio::task::spawn_blocking(move || (run(true), run(false)));
    let (ok, no_cert) = tokio::time::timeout(Duration::from_secs(120), python_run)
        .await
        .expect("the ADBC client finished within 2 minutes")
        .unwrap();
    assert!(
        ok.status.success(),
        "ADBC query failed: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(
        result["columns"],
        serde_json::json!(["drinks_loyalty_tier", "n"])
    );
    assert_eq!(
        result["rows"],
        serde_json::json!([
            {"drinks_loyalty_tier": "gold", "n": 30},
            {"drinks_loyalty_tier": "silver", "n": 30}
        ])
    );
    // The same driver without a client certificate is refused by the mutual-TLS room.
    assert!(
        !no_cert.status.success(),
        "{}",
        String::from_utf8_lossy(&no_cert.stdout)
    );
    room.shutdown().await;
}
