//! The Ballista runner (feature `ballista`): the checked aggregate runs on an in-process
//! Ballista scheduler and executor ("standalone" mode) instead of in the engine's own
//! DataFusion session.
//!
//! What is submitted is the physical plan of the aggregate subplan that passed the policy
//! check and the k rewrite ([`crate::Prepared::execute`]): planning, checking and rewriting
//! happen before submission, in the same code as the single-node engine. The overlap is a
//! Parquet file the executor reads (an in-memory table cannot be sent to executors); the
//! results come back to the engine, which counts suppressed groups, adds noise (with DP)
//! and runs HAVING, ORDER BY and LIMIT locally, exactly as the single-node engine does.
//!
//! The scheduler and executor start on the first query, as tasks of that query's Tokio
//! runtime, and bind loopback addresses only: the scheduler is Ballista's standalone one
//! (it binds `localhost:0`; [`Cluster::start`] refuses to go on if that is not loopback),
//! the executor is started here, on `127.0.0.1:0`, with its work directory (Ballista's
//! shuffle files: partial aggregates) inside the engine's own directory rather than the
//! system's temporary directory, so it is removed with the engine. They are inside the
//! room's trust boundary: nothing outside the room's process can submit work to them short
//! of local access to the machine (docs/THREAT_MODEL.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::record_batch::RecordBatch;
use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::session_state::SessionState;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use tokio::sync::OnceCell;

use crate::error::EngineError;

/// How long the engine waits for its in-process scheduler to accept connections.
const CONNECT_ATTEMPTS: u32 = 100;

/// The name of the Parquet file holding the overlap, inside the engine's directory.
pub(crate) const OVERLAP_FILE: &str = "overlap.parquet";

/// One in-process Ballista scheduler and executor serving one engine, started on first use.
pub(crate) struct Cluster {
    state: SessionState,
    running: OnceCell<Running>,
    jobs: AtomicU64,
    /// The engine's Parquet directory: removed when the engine is dropped (an erasure or
    /// the end of the agreement must not leave the old overlap on disk).
    dir: PathBuf,
}

struct Running {
    scheduler: SocketAddr,
    executor: SocketAddr,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoints", &self.endpoints())
            .field("jobs", &self.jobs.load(Ordering::Relaxed))
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(dir = %self.dir.display(), error = %e, "could not remove the Ballista engine's overlap");
        }
    }
}

impl Cluster {
    /// A cluster for the engine session `state`, whose overlap lives in `dir`.
    /// `state` must come from a session built with [`session_config`].
    pub(crate) fn new(state: SessionState, dir: PathBuf) -> Self {
        Self {
            state,
            running: OnceCell::new(),
            jobs: AtomicU64::new(0),
            dir,
        }
    }

    /// Jobs this cluster's scheduler accepted and ran to a result stream.
    pub(crate) fn jobs(&self) -> u64 {
        self.jobs.load(Ordering::SeqCst)
    }

    /// The scheduler's and the executor's addresses, once started.
    pub(crate) fn endpoints(&self) -> Vec<SocketAddr> {
        self.running
            .get()
            .map(|r| vec![r.scheduler, r.executor])
            .unwrap_or_default()
    }

    async fn running(&self) -> Result<&Running, EngineError> {
        self.running.get_or_try_init(|| self.start()).await
    }

    /// Starts the scheduler and one executor in this process, both on loopback.
    async fn start(&self) -> Result<Running, EngineError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            EngineError::Ballista(format!("starting the in-process {what}: {e}"))
        };
        let scheduler =
            ballista_scheduler::standalone::new_standalone_scheduler_from_state(&self.state)
                .await
                .map_err(|e| failed("scheduler", &e))?;
        if !scheduler.ip().is_loopback() {
            return Err(EngineError::Ballista(format!(
                "the in-process Ballista scheduler bound {scheduler}, not a loopback address; \
                 refusing to use it (check that `localhost` resolves to 127.0.0.1 or ::1)"
            )));
        }
        let url = format!("http://{scheduler}");
        let mut attempt = 0;
        let client = loop {
            match SchedulerGrpcClient::connect(url.clone()).await {
                Ok(client) => break client,
                Err(e) if attempt >= CONNECT_ATTEMPTS => {
                    return Err(failed("scheduler connection", &e));
                }
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        };
        let vcores = self.state.config().ballista_standalone_parallelism().max(1);
        let executor = self
            .start_executor(client, vcores)
            .await
            .map_err(|e| failed("executor", &e))?;
        tracing::info!(%scheduler, %executor, vcores, "in-process Ballista scheduler and executor started");
        Ok(Running {
            scheduler,
            executor,
        })
    }

    /// Ballista's `new_standalone_executor_from_state`, except that the executor listens on
    /// 127.0.0.1 (not whatever `localhost` resolves to) and works in `dir/work` (not in a
    /// world-readable directory under the system's temporary directory that outlives it).
    async fn start_executor(
        &self,
        scheduler: SchedulerGrpcClient<tonic::transport::Channel>,
        vcores: usize,
    ) -> Result<SocketAddr, EngineError> {
        use arrow_flight::flight_service_server::FlightServiceServer;
        use ballista_core::serde::BallistaCodec;
        use ballista_core::serde::protobuf::ExecutorRegistration;
        use ballista_core::serde::scheduler::{
            ExecutorOperatingSystemSpecification, ExecutorSpecification,
        };
        use ballista_core::utils::{GrpcServerConfig, create_grpc_server};
        use ballista_core::{ConfigProducer, RuntimeProducer};
        use ballista_executor::executor::Executor;
        use ballista_executor::flight_service::BallistaFlightService;
        use ballista_executor::metrics::LoggingMetricsCollector;
        use datafusion_proto::protobuf::LogicalPlanNode;

        let work = self.dir.join("work");
        std::fs::create_dir_all(&work)
            .map_err(|e| EngineError::Ballista(format!("creating {}: {e}", work.display())))?;
        let work = work
            .to_str()
            .ok_or_else(|| EngineError::Ballista(format!("{} is not UTF-8", work.display())))?
            .to_owned();
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| EngineError::Ballista(format!("binding 127.0.0.1:0: {e}")))?;
        let address = listener
            .local_addr()
            .map_err(|e| EngineError::Ballista(format!("the executor's address: {e}")))?;
        let metadata = ExecutorRegistration {
            id: ballista_core::ids::new_instance_id(),
            host: Some(address.ip().to_string()),
            port: u32::from(address.port()),
            // As in Ballista's standalone executor; the push-mode gRPC server it names is
            // never started (the standalone scheduler pulls).
            grpc_port: 50020,
            specification: Some(
                ExecutorSpecification::default()
                    .with_vcores(u32::try_from(vcores).unwrap_or(1))
                    .into(),
            ),
            os_info: Some(ExecutorOperatingSystemSpecification::default().into()),
            ballista_protocol_version: ballista_core::BALLISTA_PROTOCOL_VERSION,
        };
        let config = self.state.config().clone();
        let max_message = config.ballista_grpc_client_max_message_size();
        let codec: BallistaCodec<LogicalPlanNode, PhysicalPlanNode> = BallistaCodec::new(
            config.ballista_logical_extension_codec(),
            config.ballista_physical_extension_codec(),
        );
        let runtime = Arc::clone(self.state.runtime_env());
        let config_producer: ConfigProducer = Arc::new(move || config.clone());
        let runtime_producer: RuntimeProducer = Arc::new(move |_| Ok(Arc::clone(&runtime)));
        let executor = Arc::new(Executor::with_default_execution_engine(
            metadata,
            &work,
            runtime_producer,
            config_producer,
            Arc::new((&self.state).into()),
            Arc::new(LoggingMetricsCollector::default()),
            vcores,
        ));
        let flight = FlightServiceServer::new(BallistaFlightService::new(work))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        tokio::spawn(
            create_grpc_server(&GrpcServerConfig::default())
                .add_service(flight)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        tokio::spawn(ballista_executor::execution_loop::poll_loop(
            scheduler,
            executor,
            codec,
            None,
            None,
            ballista_executor::health::ExecutorHealth::new(),
        ));
        Ok(address)
    }

    /// Submits `plan` to the scheduler as one job and streams its result.
    pub(crate) async fn execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        what: &'static str,
    ) -> Result<SendableRecordBatchStream, EngineError> {
        let running = self.running().await?;
        let config = self.state.config().clone();
        let codec = config.ballista_physical_extension_codec();
        let stream = execute_physical_plan::<PhysicalPlanNode>(
            format!("http://{}", running.scheduler),
            &config.ballista_config(),
            plan,
            codec.as_ref(),
            self.state.session_id().to_owned(),
            config,
        )
        .await
        .map_err(EngineError::df(what))?;
        self.jobs.fetch_add(1, Ordering::SeqCst);
        Ok(stream)
    }
}

/// The engine's session configuration with Ballista's settings added (still no
/// information_schema).
pub(crate) fn session_config(
    base: datafusion::prelude::SessionConfig,
) -> datafusion::prelude::SessionConfig {
    base.upgrade_for_ballista().with_information_schema(false)
}

/// Writes the (validated) overlap to `dir/overlap.parquet`, creating `dir`.
pub(crate) fn write_overlap(
    dir: &Path,
    schema: arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> Result<PathBuf, EngineError> {
    let io = |e: std::io::Error| {
        EngineError::Ballista(format!(
            "writing the overlap to {}: {e}",
            dir.join(OVERLAP_FILE).display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(OVERLAP_FILE);
    let file = std::fs::File::create(&path).map_err(io)?;
    let parquet = |e: datafusion::parquet::errors::ParquetError| {
        EngineError::Ballista(format!("writing the overlap to {}: {e}", path.display()))
    };
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None).map_err(parquet)?;
    for batch in batches {
        writer.write(batch).map_err(parquet)?;
    }
    let file = writer.into_inner().map_err(parquet)?;
    file.sync_all().map_err(io)?;
    Ok(path)
}
