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

pub mod audit;
pub mod auth;
pub mod error;
mod flight;
mod grpc;
pub mod ipc;
mod ledger;
mod room;
pub mod store;

pub use ledger::Balance;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use accord_proto::limits::MAX_MESSAGE_BYTES;
use accord_proto::v1::{agreements_server, audit_server, auth_server, psi_server, query_server};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

pub use error::RoomError;
pub use room::{QueryResult, Room, Tombstone, table_spec};

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

fn check_loopback(addr: SocketAddr) -> Result<(), RoomError> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    Err(RoomError::FailedPrecondition(format!(
        "refusing to listen on {addr} without TLS: this build serves plain connections on loopback only; \
         for other networks put the room behind a TLS-terminating gRPC proxy on the same host (see deploy/README.md)"
    )))
}

/// Opens the data directory and starts the gRPC (and optionally Flight SQL) servers.
pub async fn start(config: ServeConfig) -> Result<RunningRoom, RoomError> {
    check_loopback(config.listen)?;
    if let Some(f) = config.flight_sql {
        check_loopback(f)?;
    }
    let room = Room::open(&config.data_dir)?;
    let (stop, stopped) = watch::channel(false);
    let listener = bind(config.listen, "gRPC").await?;
    let grpc_addr = listener
        .local_addr()
        .map_err(|e| RoomError::Internal(e.to_string()))?;
    let mut tasks = Vec::new();

    let r = room.clone();
    let mut s = stopped.clone();
    let grpc = tonic::transport::Server::builder()
        .add_service(auth_server::AuthServer::new(r.clone()).max_decoding_message_size(64 * 1024))
        .add_service(
            agreements_server::AgreementsServer::new(r.clone())
                .max_decoding_message_size(1024 * 1024),
        )
        .add_service(
            psi_server::PsiServer::new(r.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(query_server::QueryServer::new(r.clone()).max_decoding_message_size(64 * 1024))
        .add_service(audit_server::AuditServer::new(r.clone()).max_decoding_message_size(64 * 1024))
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
        let server = tonic::transport::Server::builder()
            .add_service(flight::service(room.clone())?)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = s.wait_for(|v| *v).await;
            });
        tasks.push(tokio::spawn(server));
    }

    let r = room.clone();
    let mut s = stopped;
    let every = config.expiry_check;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {
                    if let Err(e) = r.expire_due().await {
                        tracing::error!(error = %e, "expiry check failed");
                    }
                }
                _ = async { let _ = s.wait_for(|v| *v).await; } => break,
            }
        }
    });

    tracing::info!(%grpc_addr, flight_sql = ?flight_sql_addr, data_dir = %config.data_dir.display(), "room listening");
    Ok(RunningRoom {
        grpc_addr,
        flight_sql_addr,
        room,
        stop,
        tasks,
    })
}
