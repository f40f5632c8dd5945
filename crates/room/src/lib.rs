//! The Accord room: the neutral server both parties and their analysts talk to.
//!
//! Owns: registration of verified agreements (and tombstones of ended ones), Ed25519
//! challenge–response sessions, the durable relay of PSI blinding work between the parties,
//! storage of double-blinded tokens and agreed attribute columns as Parquet, sealing of the
//! matched-rows snapshot, erasure, the query services (gRPC and Flight SQL, both through
//! [`Room::query`]) and the hash-chained audit log. It is the only crate that knows the audit
//! log exists.
//!
//! Must never: see a raw or plainly hashed identifier or a party's secret, answer a query
//! outside the policy of `accord-engine`, serve an agreement that is not a
//! `VerifiedAgreement` in force, acknowledge anything before it is on disk, or tell a party
//! how many of its customers matched.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
mod checks;
mod columns;
pub mod config;
mod decoded;
pub mod devcerts;
mod engine_kind;
pub mod error;
mod flight;
mod grpc;
pub mod identity;
pub mod ipc;
mod join;
mod leases;
mod ledger;
pub mod limits;
pub mod registration;
mod room;
pub mod status;
pub mod store;
pub mod tls;
mod wire;

pub use ledger::Balance;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use accord_proto::v1::{agreements_server, audit_server, auth_server, psi_server, query_server};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

pub use engine_kind::QueryEngine;
pub use error::RoomError;
pub use limits::Limits;
pub use registration::Registration;
pub use room::{EndReason, NOT_AUTHORIZED, QueryResult, Room, Tombstone, table_spec};
pub use tls::ServerTls;

/// How `accord room serve` runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the room keeps everything.
    pub data_dir: PathBuf,
    /// The gRPC listener (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The Arrow Flight SQL listener, if any.
    pub flight_sql: Option<SocketAddr>,
    /// How often expired agreements are looked for.
    pub expiry_check: Duration,
    /// TLS for both listeners (None: plain HTTP/2, which [`start`] allows on loopback only).
    pub tls: Option<ServerTls>,
    /// Serve plain text on a non-loopback address anyway (`--insecure-plaintext-network`):
    /// for a room behind a TLS-terminating proxy on a private network. Off by default.
    pub insecure_plaintext_network: bool,
    /// For a plain-text room behind a TLS-terminating proxy (`--tls-proxy-cert`): the
    /// certificate (PEM) the proxy presents to clients. The room signs the binding of that
    /// certificate to its key, so clients accept the proxy as the room's own TLS endpoint.
    /// Refused together with [`ServeConfig::tls`].
    pub tls_proxy_cert: Option<PathBuf>,
    /// The operator-tunable resource limits ([`Limits::default`] unless configured).
    pub limits: Limits,
    /// The registration allow-list file (`--registration-allow`): only agreements whose
    /// every party key it lists may be registered. Required when a listener is beyond
    /// loopback, unless `open_registration` is set (see [`Registration::for_listeners`]).
    pub registration_allow: Option<PathBuf>,
    /// Anyone who can reach the room may register agreements (`--open-registration`); only
    /// needed, and only honoured, to run beyond loopback without an allow-list.
    pub open_registration: bool,
    /// The query engine (`--engine`): single-node DataFusion unless configured; Ballista
    /// only in a build with the `ballista` feature (refused otherwise).
    pub engine: QueryEngine,
}

impl ServeConfig {
    /// Who may register agreements in a room with this configuration: a function of the
    /// listen addresses, so the rule holds whatever the room listens on.
    pub fn registration(&self) -> Result<Registration, RoomError> {
        let mut listeners = vec![self.listen];
        listeners.extend(self.flight_sql);
        Registration::for_listeners(
            &listeners,
            self.registration_allow.as_deref(),
            self.open_registration,
        )
    }
}

/// A running room; dropping it does not stop it, call [`RunningRoom::shutdown`].
#[derive(Debug)]
pub struct RunningRoom {
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound Flight SQL address.
    pub flight_sql_addr: Option<SocketAddr>,
    /// The room.
    pub room: Room,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl RunningRoom {
    /// Stops accepting, finishes in-flight calls and waits for the servers to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Waits until the servers end (they end on shutdown or a fatal error).
    pub async fn wait(self) -> Result<(), RoomError> {
        for t in self.tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(RoomError::Internal(format!("server failed: {e}"))),
                Err(e) => return Err(RoomError::Internal(format!("server task failed: {e}"))),
            }
        }
        Ok(())
    }

    /// A sender that stops the room when `true` is sent (e.g. from a Ctrl-C handler).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, RoomError> {
    TcpListener::bind(addr).await.map_err(|e| {
        RoomError::FailedPrecondition(format!(
            "could not listen for {what} on {addr}: {e} (is another process using it?)"
        ))
    })
}

/// Refuses plain text on a non-loopback address unless the operator said so explicitly.
fn check_plaintext(addr: SocketAddr, what: &str, config: &ServeConfig) -> Result<(), RoomError> {
    if config.tls.is_some() || addr.ip().is_loopback() {
        return Ok(());
    }
    if config.insecure_plaintext_network {
        tracing::warn!(
            %addr,
            "INSECURE: serving {what} WITHOUT TLS on a non-loopback address (--insecure-plaintext-network): \
             session tokens, SQL and results cross the network in clear text"
        );
        return Ok(());
    }
    Err(RoomError::FailedPrecondition(format!(
        "refusing to listen for {what} on {addr} without TLS: anyone on that network could read session tokens, \
         queries and results. Give --tls-cert and --tls-key (see deploy/README.md; `accord dev-certs DIR` makes \
         certificates for trying it), listen on loopback (127.0.0.1), or, only behind a TLS-terminating proxy on a \
         private network, pass --insecure-plaintext-network"
    )))
}

/// The interceptor type of [`versioned`].
type ProtocolCheck = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// Wraps an Accord service so that calls from a client of another protocol version are
/// refused (Flight SQL is not wrapped: ADBC/JDBC clients do not speak our protocol).
fn versioned<S>(service: S) -> tonic::service::interceptor::InterceptedService<S, ProtocolCheck> {
    tonic::service::interceptor::InterceptedService::new(service, check_protocol)
}

/// The interceptor of [`versioned`]: the client's `user-agent` must name this protocol.
fn check_protocol(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let ours = accord_proto::PROTOCOL_VERSION;
    let agent = request
        .metadata()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match accord_proto::protocol_in_agent(agent) {
        Some(v) if v == ours => Ok(request),
        Some(v) => Err(tonic::Status::failed_precondition(format!(
            "this client speaks Accord protocol {v} but this room speaks protocol {ours}: the signed \
             messages differ; run the same accord release as the room (docs/PROTOCOL.md, \"Versioning\")"
        ))),
        None => Err(tonic::Status::failed_precondition(format!(
            "the client did not announce an Accord protocol version (accord 0.1 clients speak \
             protocol 1); this room speaks protocol {ours}: upgrade the client (docs/PROTOCOL.md, \
             \"Versioning\")"
        ))),
    }
}

/// The server layer holding the data directory's lock for each call (`backup.rs`): a backup
/// sees the directory between two calls.
mod hold_layer {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use crate::backup::{self, HoldDataDir};

    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    impl<S> tower_layer::Layer<S> for backup::HoldDataDir {
        type Service = Held<S>;
        fn layer(&self, inner: S) -> Held<S> {
            Held {
                inner,
                hold: self.clone(),
            }
        }
    }

    /// A service whose calls hold the data directory's shared lock.
    #[derive(Debug, Clone)]
    pub(crate) struct Held<S> {
        inner: S,
        hold: HoldDataDir,
    }

    /// Client-streaming calls that may run for as long as an upload: they take the lock for each
    /// message they process (in `grpc.rs`) instead of for the whole call, so a backup waits for
    /// one batch, not for a whole upload, and the calls it holds back do not wait that long.
    pub(crate) const HELD_PER_MESSAGE: [&str; 2] =
        ["/accord.v1.Psi/Upload", "/accord.v1.Psi/ReturnWork"];

    impl<S, B> tower_service::Service<tonic::codegen::http::Request<B>> for Held<S>
    where
        S: tower_service::Service<tonic::codegen::http::Request<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Send + 'static,
    {
        type Response = S::Response;
        type Error = BoxError;
        type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            self.inner.poll_ready(cx).map_err(Into::into)
        }

        fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
            // The clone is ready only if polled; the ready one serves this call.
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let hold = self.hold.clone();
            let per_message = HELD_PER_MESSAGE.contains(&request.uri().path());
            Box::pin(async move {
                // Only a broken disk fails here (the lock file cannot be opened).
                let _guard = if per_message {
                    None
                } else {
                    Some(hold.hold().await.map_err(|e| -> BoxError { Box::new(e) })?)
                };
                inner.call(request).await.map_err(Into::into)
            })
        }
    }
}

/// A tonic server with TLS (when configured) and the connection-level limits of [`Limits`]:
/// streams and requests in service per connection, a timeout on every call, and keepalive
/// pings that drop silent peers.
fn server_builder(config: &ServeConfig) -> Result<tonic::transport::Server, RoomError> {
    let limits = &config.limits;
    let builder = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(limits.concurrency_per_connection)
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(Some(limits.stream_idle_timeout))
        .http2_keepalive_timeout(Some(limits.stream_idle_timeout))
        .tcp_keepalive(Some(limits.stream_idle_timeout));
    match &config.tls {
        None => Ok(builder),
        Some(tls) => builder.tls_config(tls.tonic_config()).map_err(|e| {
            RoomError::FailedPrecondition(format!(
                "the TLS configuration {} cannot be used: {e}",
                tls.describe()
            ))
        }),
    }
}

/// Opens the data directory and starts the gRPC (and optionally Flight SQL) servers.
pub async fn start(config: ServeConfig) -> Result<RunningRoom, RoomError> {
    let registration = config.registration()?;
    config.engine.check()?;
    check_plaintext(config.listen, "gRPC", &config)?;
    if let Some(f) = config.flight_sql {
        check_plaintext(f, "Flight SQL", &config)?;
    }
    if config.tls.is_some() {
        tls::install_crypto_provider();
    }
    config.limits.check()?;
    let proxy_cert = match (&config.tls, &config.tls_proxy_cert) {
        (Some(_), Some(_)) => {
            return Err(RoomError::FailedPrecondition(
                "--tls-proxy-cert is for a plain-text room behind a TLS-terminating proxy; this room serves TLS \
                 itself (--tls-cert): give one or the other"
                    .into(),
            ));
        }
        (None, Some(path)) => Some(tls::leaf_sha256(path)?),
        _ => None,
    };
    // Opening recovers (finishes deletions, drops torn tails): not while a backup copies.
    accord_fs::create_dir_all(&config.data_dir, accord_fs::Access::OwnerOnly)?;
    let opening = accord_fs::snapshot::DirLock::new(&config.data_dir).shared_blocking()?;
    let room = Room::open_with_engine(
        &config.data_dir,
        config.limits.clone(),
        registration,
        config.engine,
    )?;
    drop(opening);
    // Clients check this signature against the certificate they observe in the handshake.
    if let Some(tls) = &config.tls {
        room.bind_tls_certificate(&tls.certificate_sha256());
    } else if let Some(hash) = proxy_cert {
        room.bind_tls_certificate(&hash);
    }
    let (stop, stopped) = watch::channel(false);
    let listener = bind(config.listen, "gRPC").await?;
    let grpc_addr = listener
        .local_addr()
        .map_err(|e| RoomError::Internal(e.to_string()))?;
    let mut tasks = Vec::new();

    let r = room.clone();
    let mut s = stopped.clone();
    // Every call holds the data directory's shared lock: a backup sees it between calls.
    let grpc = server_builder(&config)?
        .layer(backup::HoldDataDir::new(&config.data_dir))
        .add_service(versioned(
            auth_server::AuthServer::new(r.clone())
                .max_decoding_message_size(limits::AUTH_MESSAGE_BYTES),
        ))
        .add_service(versioned(
            agreements_server::AgreementsServer::new(r.clone())
                .max_decoding_message_size(limits::AGREEMENTS_MESSAGE_BYTES),
        ))
        .add_service(versioned(
            psi_server::PsiServer::new(r.clone())
                .max_decoding_message_size(limits::PSI_MESSAGE_BYTES),
        ))
        .add_service(versioned(
            query_server::QueryServer::new(r.clone())
                .max_decoding_message_size(limits::QUERY_MESSAGE_BYTES),
        ))
        .add_service(versioned(
            audit_server::AuditServer::new(r.clone())
                .max_decoding_message_size(limits::AUDIT_MESSAGE_BYTES),
        ))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            let _ = s.wait_for(|v| *v).await;
        });
    tasks.push(tokio::spawn(grpc));

    let mut flight_sql_addr = None;
    if let Some(addr) = config.flight_sql {
        let listener = bind(addr, "Flight SQL").await?;
        flight_sql_addr = Some(
            listener
                .local_addr()
                .map_err(|e| RoomError::Internal(e.to_string()))?,
        );
        let mut s = stopped.clone();
        let server = server_builder(&config)?
            .layer(backup::HoldDataDir::new(&config.data_dir))
            .add_service(flight::service(room.clone())?)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = s.wait_for(|v| *v).await;
            });
        tasks.push(tokio::spawn(server));
    }

    let r = room.clone();
    let mut s = stopped;
    let every = config.expiry_check;
    let hold = backup::HoldDataDir::new(&config.data_dir);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {
                    let held = hold.hold().await;
                    if let Err(e) = held {
                        tracing::error!(error = %e, "expiry check skipped: the data directory's lock");
                    } else if let Err(e) = r.expire_due().await {
                        tracing::error!(error = %e, "expiry check failed");
                    }
                }
                _ = async { let _ = s.wait_for(|v| *v).await; } => break,
            }
        }
    });

    let tls = config.tls.as_ref().map(|t| t.describe().to_owned());
    tracing::info!(%grpc_addr, flight_sql = ?flight_sql_addr, data_dir = %config.data_dir.display(), tls = ?tls, "room listening");
    Ok(RunningRoom {
        grpc_addr,
        flight_sql_addr,
        room,
        stop,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's table is read from the agreement in one place (`PartyColumns`, issue 10):
    /// every agreed column once, `<party>_<column>`, with the engine's role and the agreed
    /// bounds, parties in name order, withheld columns left out.
    #[test]
    fn the_table_spec_is_the_agreed_columns_with_their_roles() {
        use accord_engine::{AggregateKind, ColumnSpec, Role};
        let text = crate::room::revocation_tests::agreement_text();
        let agreement = accord_agreement::verify(&text, chrono::Utc::now()).expect("verify");
        let spec = table_spec(&agreement, &[]);
        assert_eq!(
            spec.columns,
            vec![
                ColumnSpec {
                    name: "drinks_tier".into(),
                    role: Role::Dimension
                },
                ColumnSpec {
                    name: "snacks_spend".into(),
                    role: Role::Metric {
                        min: 0.0,
                        max: 10.0
                    }
                },
            ]
        );
        assert_eq!(spec.min_group_size, 10);
        assert_eq!(spec.aggregates, vec![AggregateKind::Count]);
        let withheld = [("drinks_tier".to_owned(), "too many values".to_owned())];
        let names: Vec<String> = table_spec(&agreement, &withheld)
            .columns
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, vec!["snacks_spend".to_owned()]);
    }

    #[test]
    fn plain_text_is_refused_off_loopback_unless_named_or_tls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = devcerts::generate(dir.path(), &[], &[], devcerts::Validity::days(2))
            .expect("dev certs");
        let tls = ServerTls::load(&c.room_cert, &c.room_key, None).expect("tls");
        for (listen, with_tls, insecure, ok) in [
            ("127.0.0.1:7700", false, false, true),
            ("[::1]:7700", false, false, true),
            ("127.0.0.2:7700", false, false, true),
            ("10.1.2.3:7700", false, false, false),
            ("0.0.0.0:7700", false, false, false),
            ("[::]:7700", false, false, false),
            ("10.1.2.3:7700", false, true, true),
            ("10.1.2.3:7700", true, false, true),
        ] {
            let config = ServeConfig {
                data_dir: dir.path().join("never-created"),
                listen: listen.parse().expect("address"),
                flight_sql: None,
                expiry_check: Duration::from_secs(5),
                tls: with_tls.then(|| tls.clone()),
                insecure_plaintext_network: insecure,
                tls_proxy_cert: None,
                limits: Limits::default(),
                registration_allow: None,
                open_registration: false,
                engine: QueryEngine::default(),
            };
            let r = check_plaintext(config.listen, "gRPC", &config);
            assert_eq!(
                r.is_ok(),
                ok,
                "{listen} tls={with_tls} insecure={insecure}: {r:?}"
            );
            if let Err(e) = r {
                let m = e.to_string();
                assert!(
                    m.contains("without TLS") && m.contains("--insecure-plaintext-network"),
                    "{m}"
                );
            }
        }
    }

    #[test]
    fn tls_files_are_checked_at_start_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = devcerts::generate(&dir.path().join("a"), &[], &[], devcerts::Validity::days(2))
            .expect("dev certs");
        let b = devcerts::generate(&dir.path().join("b"), &[], &[], devcerts::Validity::days(2))
            .expect("dev certs");
        // A key that is not the certificate's.
        let e = ServerTls::load(&a.room_cert, &b.room_key, None).expect_err("mismatch");
        assert!(e.to_string().contains("is not the private key of"), "{e}");
        // The key where the certificate should be.
        let e = ServerTls::load(&a.room_key, &a.room_key, None).expect_err("no cert");
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        // A key readable by others.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&a.room_key, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
            let e = ServerTls::load(&a.room_cert, &a.room_key, None).expect_err("0644 key");
            assert!(e.to_string().contains("--tls-key"), "{e}");
            std::fs::set_permissions(&a.room_key, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        let ok = ServerTls::load(&a.room_cert, &a.room_key, Some(&a.ca_cert)).expect("valid");
        assert!(ok.requires_client_certificate());
        // dev-certs wrote every key with mode 0600.
        #[cfg(unix)]
        for k in [&a.room_key, &dir.path().join("a/ca.key")] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(k).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", k.display());
        }
    }
}
