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
//! The scheduler and executor start on the first query and bind loopback addresses only
//! (Ballista's standalone mode binds `localhost:0`; [`Cluster::start`] refuses to go on if
//! the scheduler's address is not loopback). They are inside the room's trust boundary:
//! nothing outside the room's process can submit work to them short of local access to the
//! machine (docs/THREAT_MODEL.md).

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
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("scheduler", &self.running.get().map(|r| r.scheduler))
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

    /// The scheduler's address, once started.
    pub(crate) fn scheduler_addr(&self) -> Option<SocketAddr> {
        self.running.get().map(|r| r.scheduler)
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
        ballista_executor::new_standalone_executor_from_state(client, vcores, &self.state)
            .await
            .map_err(|e| failed("executor", &e))?;
        tracing::info!(%scheduler, vcores, "in-process Ballista scheduler and executor started");
        Ok(Running { scheduler })
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
