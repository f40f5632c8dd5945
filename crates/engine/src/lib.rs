#![forbid(unsafe_code)]
//! Accord's query engine: one DataFusion session per sealed agreement, holding exactly
//! one table, `overlap`, and the aggregate-only, k-anonymous query policy of DESIGN §4.
//!
//! A query goes through [`Engine::prepare`]:
//! 0. **bound** the raw text: its length and its nesting score ([`check_text`], before any
//!    parsing); everything from here to physical planning runs on a planner thread with an
//!    explicit stack ([`stack`]), so no query can overflow a stack;
//! 1. **parse** with DataFusion's `DFParser`, refuse anything but one query
//!    (and check the syntax tree: functions, clauses, tables — [`ast`]);
//! 2. **plan** with the session and walk the logical plan with a whitelist, resolving
//!    every column to its base column ([`plan`]);
//! 3. **rewrite**: add a hidden `count(*)` and a filter `>= k` directly above the
//!    aggregate, beneath HAVING, ORDER BY and LIMIT;
//! 4. **optimize** and **re-check** the optimized plan (node whitelist, the k filter
//!    still above the aggregate).
//!
//! [`Prepared::execute`] then materializes the groups, counts the suppressed ones for the
//! audit log ([`Answer::groups_suppressed`], never shown to analysts) and runs the rest
//! of the plan (k filter, HAVING, ORDER BY, LIMIT) over them.
//!
//! With differential privacy ([`Engine::with_differential_privacy`]) the aggregate is
//! replaced by noisy groups chosen by DP partition selection ([`dp`]); the rest of the
//! plan then runs over noisy values only, and nothing exact is reported.
//!
//! With the cargo feature `ballista`, `Engine::ballista_standalone` keeps the overlap in
//! Parquet and runs the one step that reads it — the checked aggregate (with DP, its scan
//! and filter) — on an in-process Apache DataFusion Ballista scheduler and executor; every
//! step before (the policy) and after (suppression, noise, HAVING/ORDER BY/LIMIT) is the
//! same code as the single-node engine's (`ballista.rs`).

mod ast;
#[cfg(feature = "ballista")]
mod ballista;
#[cfg(any(test, feature = "corpus"))]
pub mod corpus;
mod dp;
mod error;
mod plan;
mod refusal;
mod spec;
pub mod stack;

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::DFSchemaRef;
use datafusion::common::SchemaError;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::session_state::SessionState;
use datafusion::functions_aggregate::average::avg_udaf;
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::functions_aggregate::planner::AggregateFunctionPlanner;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::planner::ExprPlanner;
use datafusion::logical_expr::{LogicalPlan, TableScan};
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::{SessionConfig, SessionContext};

pub use accord_dp;
pub use accord_dp::{DpError, NoiseSource, QueryPrivacy};
/// The Arrow version the engine's batches and schemas use.
pub use arrow;
pub use error::EngineError;
pub use refusal::{Refusal, Rule};
pub use spec::{
    AggregateKind, CardinalityProblem, ColumnSpec, MIN_GROUP_SIZE, Role, TableSpec,
    dimension_cardinality_problems,
};
pub use stack::{MAX_NESTING, MAX_SQL_LEN, check_text, nesting_score};

/// The outcome of an analyst query: an answer, or a refusal naming the rule.
#[derive(Debug)]
pub enum Outcome {
    /// The query passed the policy and ran.
    Answered(Answer),
    /// The policy refused the query.
    Refused(Refusal),
}

/// The result of an accepted query.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Schema of the result (the analyst's select list; the hidden count is dropped).
    pub schema: SchemaRef,
    /// Result rows: every row describes at least k customers.
    pub batches: Vec<RecordBatch>,
    /// Total number of rows in `batches`.
    pub rows: usize,
    /// How many groups were suppressed for having fewer than k customers. For the
    /// audit log only: never send this number to the analyst. Always 0 with differential
    /// privacy, where the number would be exact.
    pub groups_suppressed: u64,
    /// The (ε, δ) this answer spent, with differential privacy; `None` for exact results.
    pub privacy_spent: Option<QueryPrivacy>,
}

/// A query that passed every check, ready to run (e.g. a Flight SQL prepared statement).
#[derive(Debug)]
pub struct Prepared {
    state: SessionState,
    runner: Runner,
    plan: LogicalPlan,
    k: u64,
    dp: Option<Arc<dp::DpState>>,
    spec: TableSpec,
}

impl Prepared {
    /// The schema the answer will have.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(self.plan.schema().inner())
    }

    /// What running this query spends, with differential privacy (the same for every
    /// query of an agreement); `None` for exact results.
    pub fn privacy_cost(&self) -> Option<QueryPrivacy> {
        self.dp.as_ref().map(|dp| dp.privacy)
    }

    /// Runs the checked, optimized plan.
    ///
    /// The aggregate is executed first and its groups are materialized; the suppressed
    /// groups are counted there; then the rest of the plan (the k filter, HAVING,
    /// ORDER BY, LIMIT, projection) runs over the materialized groups. The logical plan is
    /// not optimized again, so what runs is exactly what was checked.
    pub async fn execute(self) -> Result<Answer, EngineError> {
        let aggregate = plan::find_aggregate(&self.plan)
            .ok_or_else(|| EngineError::Internal("checked plan has no aggregate".into()))?
            .clone();
        let gates = plan::gate_columns(&aggregate);
        if gates.is_empty() {
            return Err(EngineError::Internal(
                "checked aggregate has no COUNT(*) group size".into(),
            ));
        }
        let agg_schema: DFSchemaRef = Arc::clone(&aggregate.schema);
        if let Some(dp) = self.dp.clone() {
            let groups =
                dp::noisy_groups(&self.state, &self.runner, &aggregate, &self.spec, &dp).await?;
            let arrow_schema = Arc::clone(agg_schema.inner());
            return self
                .finish(groups, arrow_schema, agg_schema, 0, Some(dp.privacy))
                .await;
        }
        // Physical planning recurses over the expressions too: planner thread.
        let planning_state = self.state.clone();
        let physical = stack::on_planner_thread(move || {
            futures::executor::block_on(
                DefaultPhysicalPlanner::default()
                    .create_physical_plan(&LogicalPlan::Aggregate(aggregate), &planning_state),
            )
        })
        .await?
        .map_err(EngineError::df("planning the aggregate"))?;
        let arrow_schema = physical.schema();
        // The one step the Ballista engine hands to its scheduler: the checked aggregate.
        let stream = self
            .runner
            .execute(physical, &self.state, "computing the groups")
            .await?;
        let groups = datafusion::physical_plan::common::collect(stream)
            .await
            .map_err(EngineError::df("computing the groups"))?;
        let k = self.k;

        // A group is suppressed when it, or any metric one of its cells aggregates, rests on
        // fewer than k customers (the filter above the aggregate drops exactly these).
        let mut suppressed = 0u64;
        for batch in &groups {
            let mut columns = Vec::with_capacity(gates.len());
            for &gate in &gates {
                columns.push(
                    batch
                        .column(gate)
                        .as_primitive_opt::<Int64Type>()
                        .ok_or_else(|| {
                            EngineError::Internal("a k gate column is not Int64".into())
                        })?,
                );
            }
            for i in 0..batch.num_rows() {
                let below_k = columns.iter().any(|sizes| {
                    let size = if sizes.is_null(i) { 0 } else { sizes.value(i) };
                    u64::try_from(size).unwrap_or(0) < k
                });
                if below_k {
                    suppressed += 1;
                }
            }
        }

        self.finish(groups, arrow_schema, agg_schema, suppressed, None)
            .await
    }

    /// Runs the plan above the aggregate (k filter, HAVING, ORDER BY, LIMIT, projection)
    /// over the materialized (exact or noisy) groups.
    async fn finish(
        self,
        groups: Vec<RecordBatch>,
        arrow_schema: SchemaRef,
        agg_schema: DFSchemaRef,
        suppressed: u64,
        privacy_spent: Option<QueryPrivacy>,
    ) -> Result<Answer, EngineError> {
        let Prepared { state, plan, .. } = self;
        let table = MemTable::try_new(arrow_schema, vec![groups])
            .map_err(EngineError::df("holding the groups"))?;
        let scan = LogicalPlan::TableScan(TableScan {
            table_name: "__accord_groups".into(),
            source: provider_as_source(Arc::new(table)),
            projection: None,
            projected_schema: agg_schema,
            filters: vec![],
            fetch: None,
            statistics_requests: Default::default(),
        });
        let planning_state = state.clone();
        let (schema, physical) = stack::on_planner_thread(move || {
            let upper = plan::replace_aggregate(plan, scan)?;
            let physical = futures::executor::block_on(
                DefaultPhysicalPlanner::default().create_physical_plan(&upper, &planning_state),
            )
            .map_err(EngineError::df("planning over the groups"))?;
            Ok::<_, EngineError>((Arc::clone(upper.schema().inner()), physical))
        })
        .await??;
        let batches = datafusion::physical_plan::collect(physical, state.task_ctx())
            .await
            .map_err(EngineError::df("filtering and ordering the groups"))?;
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        tracing::debug!(rows, suppressed, "query answered");
        Ok(Answer {
            schema,
            batches,
            rows,
            groups_suppressed: suppressed,
            privacy_spent,
        })
    }
}

/// One DataFusion session with exactly one table, `overlap`, and the query policy.
///
/// The session registers only the aggregates the agreement allows, no scalar, window or
/// table functions, no information_schema and no file or URL tables.
pub struct Engine {
    spec: TableSpec,
    ctx: SessionContext,
    dp: Option<Arc<dp::DpState>>,
    runner: Runner,
}

/// Where the checked aggregate (or, with DP, its input) runs.
#[derive(Debug, Clone)]
enum Runner {
    /// In the engine's own DataFusion session.
    SingleNode,
    /// On the engine's in-process Ballista scheduler and executor.
    #[cfg(feature = "ballista")]
    Ballista(Arc<ballista::Cluster>),
}

impl Runner {
    /// Runs `physical`, planned from the checked plan by the engine's session `state`.
    async fn execute(
        &self,
        physical: Arc<dyn ExecutionPlan>,
        state: &SessionState,
        what: &'static str,
    ) -> Result<SendableRecordBatchStream, EngineError> {
        match self {
            Runner::SingleNode => {
                execute_stream(physical, state.task_ctx()).map_err(EngineError::df(what))
            }
            #[cfg(feature = "ballista")]
            Runner::Ballista(cluster) => cluster.execute(physical, what).await,
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("spec", &self.spec)
            .field("session_id", &self.ctx.session_id())
            .field("runner", &self.runner)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the session over the sealed snapshot `batches`.
    ///
    /// Every batch must have exactly the spec's columns, in order, with the spec's types
    /// ([`TableSpec::arrow_schema`]); metric values must be finite and within bounds.
    pub fn new(spec: TableSpec, batches: Vec<RecordBatch>) -> Result<Self, EngineError> {
        let normalized = validate(&spec, batches)?;
        let ctx = session(&spec, base_config());
        let partitions = ctx.copied_config().target_partitions().max(1);
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
        for (i, batch) in normalized.into_iter().enumerate() {
            parts[i % partitions].push(batch);
        }
        let table = MemTable::try_new(spec.arrow_schema(), parts)
            .map_err(EngineError::df("creating the overlap table"))?;
        ctx.register_table(ast::TABLE_NAME, Arc::new(table))
            .map_err(EngineError::df("registering the overlap table"))?;
        Ok(Self {
            spec,
            ctx,
            dp: None,
            runner: Runner::SingleNode,
        })
    }

    /// Builds the Ballista engine (feature `ballista`) over the sealed snapshot `batches`,
    /// checked as in [`Engine::new`].
    ///
    /// The overlap is written to `dir/overlap.parquet` (`dir` is created; give each engine
    /// a directory of its own, inside the room's data directory) and registered as a
    /// Parquet listing table; `dir` is removed when the engine is dropped. Queries are
    /// parsed, planned, checked and rewritten exactly as with [`Engine::new`]; the checked
    /// aggregate is then run by an in-process Ballista scheduler and executor, started on
    /// the first query and bound to loopback only.
    #[cfg(feature = "ballista")]
    pub fn ballista_standalone(
        spec: TableSpec,
        batches: Vec<RecordBatch>,
        dir: &std::path::Path,
    ) -> Result<Self, EngineError> {
        use datafusion::datasource::file_format::parquet::ParquetFormat;
        use datafusion::datasource::listing::{
            ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
        };
        let normalized = validate(&spec, batches)?;
        let path = ballista::write_overlap(dir, spec.arrow_schema(), &normalized)?;
        let cluster_dir = dir.to_path_buf();
        let path = std::fs::canonicalize(&path)
            .map_err(|e| EngineError::Ballista(format!("resolving {}: {e}", path.display())))?;
        let url = path
            .to_str()
            .ok_or_else(|| EngineError::Ballista(format!("{} is not valid UTF-8", path.display())))
            .and_then(|p| {
                ListingTableUrl::parse(p).map_err(EngineError::df("locating the overlap"))
            })?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(spec.arrow_schema());
        let table =
            ListingTable::try_new(config).map_err(EngineError::df("creating the overlap table"))?;
        let ctx = session(&spec, ballista::session_config(base_config()));
        ctx.register_table(ast::TABLE_NAME, Arc::new(table))
            .map_err(EngineError::df("registering the overlap table"))?;
        let cluster = ballista::Cluster::new(ctx.state(), cluster_dir);
        Ok(Self {
            spec,
            ctx,
            dp: None,
            runner: Runner::Ballista(Arc::new(cluster)),
        })
    }

    /// With the Ballista engine: how many jobs its scheduler has accepted (one per answered
    /// query); `None` for the single-node engine.
    pub fn distributed_jobs(&self) -> Option<u64> {
        match &self.runner {
            Runner::SingleNode => None,
            #[cfg(feature = "ballista")]
            Runner::Ballista(cluster) => Some(cluster.jobs()),
        }
    }

    /// With the Ballista engine, once its first query has started them: the addresses its
    /// in-process scheduler and executor listen on (loopback addresses only); empty
    /// otherwise.
    pub fn distributed_endpoints(&self) -> Vec<std::net::SocketAddr> {
        match &self.runner {
            Runner::SingleNode => Vec::new(),
            #[cfg(feature = "ballista")]
            Runner::Ballista(cluster) => cluster.endpoints(),
        }
    }
}

/// Checks the sealed snapshot against the spec ([`Engine::new`]) and gives it the spec's
/// schema.
fn validate(spec: &TableSpec, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, EngineError> {
    spec.validate()?;
    let schema = spec.arrow_schema();
    let mut normalized = Vec::with_capacity(batches.len());
    for (index, batch) in batches.into_iter().enumerate() {
        let got = batch.schema();
        if got.fields().len() != schema.fields().len() {
            return Err(EngineError::SchemaMismatch {
                batch: index,
                problem: format!(
                    "it has {} columns, the spec has {}",
                    got.fields().len(),
                    schema.fields().len()
                ),
            });
        }
        for (want, have) in schema.fields().iter().zip(got.fields()) {
            if want.name() != have.name() || want.data_type() != have.data_type() {
                return Err(EngineError::SchemaMismatch {
                    batch: index,
                    problem: format!(
                        "column {} {:?} where the spec has {} {:?}",
                        have.name(),
                        have.data_type(),
                        want.name(),
                        want.data_type()
                    ),
                });
            }
        }
        for (col, column) in spec.columns.iter().enumerate() {
            if let Role::Metric { min, max } = column.role {
                let values = batch
                    .column(col)
                    .as_primitive_opt::<arrow::datatypes::Float64Type>()
                    .ok_or_else(|| EngineError::SchemaMismatch {
                        batch: index,
                        problem: format!("metric {} is not Float64", column.name),
                    })?;
                for row in 0..values.len() {
                    if values.is_null(row) {
                        continue;
                    }
                    let v = values.value(row);
                    if !(v.is_finite() && v >= min && v <= max) {
                        return Err(EngineError::MetricOutOfBounds {
                            column: column.name.clone(),
                            min,
                            max,
                            batch: index,
                            row,
                        });
                    }
                }
            }
        }
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), batch.columns().to_vec()).map_err(|e| {
                EngineError::SchemaMismatch {
                    batch: index,
                    problem: e.to_string(),
                }
            })?;
        normalized.push(batch);
    }
    Ok(normalized)
}

/// The session configuration: no information_schema, one default catalog and schema.
fn base_config() -> SessionConfig {
    SessionConfig::new()
        .with_information_schema(false)
        .with_create_default_catalog_and_schema(true)
}

/// The locked-down session: only the agreement's aggregates, no other function, no
/// information_schema; the caller registers the one table.
fn session(spec: &TableSpec, config: SessionConfig) -> SessionContext {
    let mut udafs = Vec::new();
    for kind in &spec.aggregates {
        let udaf = match kind {
            AggregateKind::Count => count_udaf(),
            AggregateKind::Sum => sum_udaf(),
            AggregateKind::Avg => avg_udaf(),
        };
        if !udafs.iter().any(|u: &Arc<_>| Arc::ptr_eq(u, &udaf)) {
            udafs.push(udaf);
        }
    }
    let planners: Vec<Arc<dyn ExprPlanner>> = vec![Arc::new(AggregateFunctionPlanner)];
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_aggregate_functions(udafs)
        .with_expr_planners(planners)
        .build();
    SessionContext::new_with_state(state)
}

impl Engine {
    /// Turns on differential privacy: every answer is noisy, groups are chosen by DP
    /// partition selection, and each query costs `privacy` (docs/PRIVACY.md). `noise` is
    /// [`NoiseSource::from_os`] in the room; a seeded source only in tests.
    pub fn with_differential_privacy(mut self, privacy: QueryPrivacy, noise: NoiseSource) -> Self {
        self.dp = Some(Arc::new(dp::DpState::new(privacy, noise)));
        self
    }

    /// The differential privacy of every answer, if on.
    pub fn privacy(&self) -> Option<QueryPrivacy> {
        self.dp.as_ref().map(|dp| dp.privacy)
    }

    /// The spec this engine enforces.
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// Parses, plans, checks, rewrites, optimizes and re-checks `sql`.
    ///
    /// The outer `Result` is for internal failures only; an analyst's mistake or attack
    /// (including a syntax error or an unknown column) is an inner `Err(Refusal)`.
    pub async fn prepare(&self, sql: &str) -> Result<Result<Prepared, Refusal>, EngineError> {
        // Cheap, linear and recursion-free: refuse before a planner thread is even asked.
        if let Err(refusal) = check_text(sql) {
            return Ok(Err(refusal));
        }
        let state = self.ctx.state();
        let spec = self.spec.clone();
        let dp = self.dp.clone();
        let sql = sql.to_owned();
        let runner = self.runner.clone();
        stack::on_planner_thread(move || plan_query(state, runner, &spec, dp, &sql)).await?
    }

    /// Prepares and runs `sql`.
    pub async fn query(&self, sql: &str) -> Result<Outcome, EngineError> {
        match self.prepare(sql).await? {
            Ok(prepared) => Ok(Outcome::Answered(prepared.execute().await?)),
            Err(refusal) => Ok(Outcome::Refused(refusal)),
        }
    }
}

/// Parses, plans, checks, rewrites, optimizes and re-checks `sql` on the calling thread:
/// run it only on a planner thread ([`stack::on_planner_thread`]), whose stack is sized for
/// the nesting limit.
fn plan_query(
    state: SessionState,
    runner: Runner,
    spec: &TableSpec,
    dp: Option<Arc<dp::DpState>>,
    sql: &str,
) -> Result<Result<Prepared, Refusal>, EngineError> {
    let statement = match ast::parse_and_check(sql, &spec.aggregates, &spec.columns) {
        Ok(statement) => statement,
        Err(refusal) => return Ok(Err(refusal)),
    };
    // Resolving the one table is the only asynchronous step, and it never waits.
    let logical = match futures::executor::block_on(state.statement_to_plan(statement)) {
        Ok(plan) => plan,
        Err(e) => return Ok(Err(planning_refusal(&e))),
    };
    if let Err(refusal) = plan::check(&logical, spec, plan::Stage::Initial) {
        return Ok(Err(refusal));
    }
    let k = spec.min_group_size;
    let rewritten = plan::add_k_filter(logical, k)?;
    let optimized = match state.optimize(&rewritten) {
        Ok(plan) => plan,
        Err(e) => return Ok(Err(planning_refusal(&e))),
    };
    if let Err(refusal) = plan::check(&optimized, spec, plan::Stage::Optimized { k }) {
        tracing::warn!(
            rule = refusal.rule.name(),
            "optimized plan failed the re-check"
        );
        return Ok(Err(refusal));
    }
    Ok(Ok(Prepared {
        state,
        runner,
        plan: optimized,
        k,
        dp,
        spec: spec.clone(),
    }))
}

/// Turns a DataFusion planning error (which never involves data values) into a refusal.
fn planning_refusal(e: &DataFusionError) -> Refusal {
    let root = e.find_root();
    match root {
        DataFusionError::SchemaError(schema_error, _) => match schema_error.as_ref() {
            SchemaError::FieldNotFound { field, .. } => {
                Refusal::new(Rule::UnknownColumn, format!("column {}", field.name))
            }
            SchemaError::AmbiguousReference { field } => Refusal::new(
                Rule::UnknownColumn,
                format!("column {} (ambiguous)", field.name),
            ),
            other => Refusal::new(
                Rule::InvalidQuery,
                format!("the query ({})", first_line(&other.to_string())),
            ),
        },
        DataFusionError::Plan(msg) if msg.contains("not found") && msg.contains("table") => {
            Refusal::new(
                Rule::UnknownTable,
                format!("the query ({})", first_line(msg)),
            )
        }
        DataFusionError::Plan(msg) if msg.starts_with("Invalid function") => {
            Refusal::new(Rule::Function, format!("the query ({})", first_line(msg)))
        }
        DataFusionError::NotImplemented(msg) => {
            Refusal::new(Rule::Clause, format!("the query ({})", first_line(msg)))
        }
        other => Refusal::new(
            Rule::InvalidQuery,
            format!("the query ({})", first_line(&other.to_string())),
        ),
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut out: String = line.chars().take(200).collect();
    if line.chars().count() > 200 {
        out.push('…');
    }
    out
}

#[cfg(test)]
#[path = "lib_tests.rs"]
mod tests;
