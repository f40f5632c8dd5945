//! The sealing join (DESIGN §3.6) as a spilling DataFusion plan over the parties' Parquet
//! files, never an in-memory set of every row:
//!
//! 1. each party's tokenized rows are streamed from its batch files in batch order (one
//!    Parquet batch of [`READ_BATCH_ROWS`] rows at a time), each row tagged with its batch
//!    number and position;
//! 2. each party's rows are sorted by token, then batch and position (an external sort that
//!    spills to disk when the memory pool is full), and only the first row of each run of
//!    equal tokens is kept as they stream by: the first row holding a token, in batch order,
//!    wins;
//! 3. the two sorted streams are merge-joined on the token (a sort-merge join: no hash table
//!    of either side), and the matched rows stream into the snapshot file, which is written
//!    to a temporary file, fsynced and renamed into place. No token leaves the join.
//!
//! Memory: the caller's budget (`limits::SEAL_MEMORY_BYTES` in the room) is split into three
//! [`FairSpillPool`]s — three eighths for each party's sort, a quarter for the merge join —
//! and what does not fit spills into a scratch directory the caller owns and removes; the
//! readers and the writer hold one batch each. The snapshot comes out in
//! token order (pseudo-random: it says nothing of either party's upload order).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, BooleanArray, FixedSizeBinaryArray, RecordBatch, UInt64Array};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::{JoinType, NullEquality};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::joins::SortMergeJoinExec;
use datafusion::physical_plan::stream::{RecordBatchReceiverStream, RecordBatchStreamAdapter};
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, SendableRecordBatchStream,
};
use datafusion::prelude::{SessionConfig, SessionContext, col};
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::error::{Result, RoomError};
use crate::store::PartyColumns;

/// Rows per batch read from a party's file and per batch DataFusion moves: one batch of each
/// party is what the reader holds.
pub(crate) const READ_BATCH_ROWS: usize = 8192;

/// One party's side of the join: its columns and its tokenized batch files in batch order.
#[derive(Debug, Clone)]
pub(crate) struct Side {
    /// The party's layout.
    pub party: PartyColumns,
    /// `(batch number, rows/<batch>.parquet)`, in batch order.
    pub files: Vec<(u64, PathBuf)>,
}

/// What the join did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Joined {
    /// Rows in the snapshot (customers both parties hold).
    pub matched: u64,
    /// Rows dropped because an earlier row of the same party held the same token.
    pub duplicates: u64,
    /// Bytes DataFusion spilled to the scratch directory.
    pub spilled_bytes: u64,
}

/// Joins `a` and `b` into the snapshot file `out` (columns `<a>_handle`, `<b>_handle`, then
/// `a`'s attributes and `b`'s, each named `<party>_<column>`), with at most `memory_bytes`
/// of operator memory and `scratch` for what spills. Runs on its own thread and runtime, so
/// it can be called from the room's blocking pool or from start-up alike.
pub(crate) fn seal_join(
    a: &Side,
    b: &Side,
    out: &Path,
    scratch: &Path,
    memory_bytes: usize,
) -> Result<Joined> {
    let threads = std::thread::available_parallelism()
        .map(std::num::NonZero::get)
        .unwrap_or(1);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name("accord-seal")
                    .build()
                    .map_err(|e| RoomError::Internal(format!("the sealing runtime: {e}")))?;
                runtime.block_on(run(a, b, out, scratch, memory_bytes))
            })
            .join()
            .unwrap_or_else(|_| Err(RoomError::Internal("the sealing join panicked".into())))
    })
}

async fn run(
    a: &Side,
    b: &Side,
    out: &Path,
    scratch: &Path,
    memory_bytes: usize,
) -> Result<Joined> {
    // Each side's distinct step gets its own pool, so the side that finishes its sort first
    // cannot starve the other (a sort's sorted runs are held unspillable while they merge);
    // the merge join keeps the rest.
    let side_memory = memory_bytes / 8 * 3;
    let merge_memory = memory_bytes - 2 * side_memory;
    // One partition per side (the two sides run at once, one core each): a side's sort is
    // the only large consumer of its pool.
    let ctx_a = context(side_memory, scratch)?;
    let ctx_b = context(side_memory, scratch)?;
    let merge = context(merge_memory, scratch)?;
    let read_a = Arc::new(AtomicU64::new(0));
    let read_b = Arc::new(AtomicU64::new(0));
    let kept_a = Arc::new(AtomicU64::new(0));
    let kept_b = Arc::new(AtomicU64::new(0));
    let da = distinct(&ctx_a, a, "a", Arc::clone(&read_a)).await?;
    let db = distinct(&ctx_b, b, "b", Arc::clone(&read_b)).await?;
    let left = sorted_input(&ctx_a, Arc::clone(&da), "a", Arc::clone(&kept_a))?;
    let right = sorted_input(&ctx_b, Arc::clone(&db), "b", Arc::clone(&kept_b))?;
    // Both sides arrive as one stream sorted by token: a sort-merge join reads them in step,
    // holding only the rows of the current token (never a hash table of a whole side, which
    // DataFusion cannot spill; its planner picks a merge join only with a repartition and
    // re-sort of both sides, which this plan does not need).
    let on = vec![(
        Arc::new(Column::new_with_schema("a_t", &left.schema())?) as _,
        Arc::new(Column::new_with_schema("b_t", &right.schema())?) as _,
    )];
    let plan: Arc<dyn ExecutionPlan> = Arc::new(SortMergeJoinExec::try_new(
        left,
        right,
        on,
        None,
        JoinType::Inner,
        vec![SortOptions::default()],
        NullEquality::NullEqualsNothing,
    )?);
    // Output columns of the join: a's (token, handle, attributes), then b's.
    let (na, nb) = (a.party.columns.len(), b.party.columns.len());
    let mut pick = vec![1, 2 + na + 1];
    pick.extend(2..2 + na);
    pick.extend(2 + na + 2..2 + na + 2 + nb);
    let stream = plan.execute(0, merge.task_ctx())?;
    let matched = write_snapshot(stream, &pick, &snapshot_schema(a, b), out).await?;
    let spilled_bytes = [&da, &db, &plan]
        .into_iter()
        .map(|p| spilled(p.as_ref()))
        .sum();
    let dropped = |read: &AtomicU64, kept: &AtomicU64| {
        read.load(Ordering::Relaxed)
            .saturating_sub(kept.load(Ordering::Relaxed))
    };
    Ok(Joined {
        matched,
        duplicates: dropped(&read_a, &kept_a) + dropped(&read_b, &kept_b),
        spilled_bytes,
    })
}

/// A one-partition session whose operators share a pool of `memory` bytes and spill into
/// `scratch`.
fn context(memory: usize, scratch: &Path) -> Result<SessionContext> {
    // The error of an exhausted pool names its largest consumers.
    let pool = Arc::new(TrackConsumersPool::new(
        FairSpillPool::new(memory),
        std::num::NonZeroUsize::new(8).unwrap_or(std::num::NonZeroUsize::MIN),
    ));
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(pool)
        .with_temp_file_path(scratch)
        .build_arc()?;
    let mut config = SessionConfig::new()
        .with_target_partitions(1)
        .with_batch_size(READ_BATCH_ROWS)
        .with_information_schema(false);
    // Each sort keeps this much back for merging what it spilled; DataFusion's 10 MB
    // default would not fit a small pool.
    config.options_mut().execution.sort_spill_reservation_bytes = (memory / 32).max(64 * 1024);
    Ok(SessionContext::new_with_state(
        SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build(),
    ))
}

/// `plan` (one side's distinct rows, sorted by token) as the merge join's input: run in the
/// side's own session, declared sorted by `<p>_t`, its rows counted into `kept`.
fn sorted_input(
    ctx: &SessionContext,
    plan: Arc<dyn ExecutionPlan>,
    p: &str,
    kept: Arc<AtomicU64>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = plan.schema();
    let token = Column::new_with_schema(&format!("{p}_t"), &schema)?;
    let ordering = LexOrdering::new([PhysicalSortExpr::new_default(Arc::new(token))])
        .ok_or_else(|| RoomError::Internal("an empty sort order".into()))?;
    let stream = Distinct {
        schema: Arc::clone(&schema),
        plan,
        task: ctx.task_ctx(),
        kept,
    };
    Ok(Arc::new(StreamingTableExec::try_new(
        schema,
        vec![Arc::new(stream)],
        None,
        [ordering],
        false,
        None,
    )?))
}

/// The snapshot's schema: both handles, then each party's attributes, prefixed.
fn snapshot_schema(a: &Side, b: &Side) -> SchemaRef {
    let handle = |p: &PartyColumns| {
        Field::new(
            format!("{}_handle", p.party),
            DataType::FixedSizeBinary(HANDLE),
            false,
        )
    };
    let mut fields = vec![handle(&a.party), handle(&b.party)];
    fields.extend(a.party.attribute_fields(true));
    fields.extend(b.party.attribute_fields(true));
    Arc::new(Schema::new(fields))
}

const TOKEN: i32 = accord_psi::POINT_LEN as i32;
const HANDLE: i32 = accord_psi::HANDLE_LEN as i32;

/// The schema of one side as the join sees it: `<p>_t` token, `<p>_h` handle, `<p>_c<i>`
/// attributes, then `<p>_bn` batch number and `<p>_ps` position (only before the
/// distinct step).
fn side_schema(side: &Side, p: &str, with_order: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new(format!("{p}_t"), DataType::FixedSizeBinary(TOKEN), true),
        Field::new(format!("{p}_h"), DataType::FixedSizeBinary(HANDLE), true),
    ];
    for (i, f) in side.party.attribute_fields(false).iter().enumerate() {
        fields.push(Field::new(format!("{p}_c{i}"), f.data_type().clone(), true));
    }
    if with_order {
        fields.push(Field::new(format!("{p}_bn"), DataType::UInt64, false));
        fields.push(Field::new(format!("{p}_ps"), DataType::UInt64, false));
    }
    Arc::new(Schema::new(fields))
}

/// The physical plan of `side`'s rows with distinct tokens (first in batch order wins),
/// sorted by token, in one partition. `read` counts the rows read.
async fn distinct(
    ctx: &SessionContext,
    side: &Side,
    p: &str,
    read: Arc<AtomicU64>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = side_schema(side, p, true);
    let files = PartyFiles {
        schema: Arc::clone(&schema),
        side: side.clone(),
        read,
    };
    let table = StreamingTable::try_new(schema, vec![Arc::new(files)])?;
    let (t, bn, ps) = (format!("{p}_t"), format!("{p}_bn"), format!("{p}_ps"));
    let mut keep = vec![col(&t), col(format!("{p}_h"))];
    keep.extend((0..side.party.columns.len()).map(|i| col(format!("{p}_c{i}"))));
    // Sorted by token, then by place in the upload: the first row of each run of equal
    // tokens is the one that wins, and `Distinct` keeps exactly those as they stream by.
    let plan = ctx
        .read_table(Arc::new(table))?
        .sort(vec![
            col(&t).sort(true, false),
            col(&bn).sort(true, false),
            col(&ps).sort(true, false),
        ])?
        .select(keep)?
        .create_physical_plan()
        .await?;
    if plan.output_partitioning().partition_count() != 1 {
        return Err(RoomError::Internal(
            "the sealing join's distinct step did not end in one sorted stream".into(),
        ));
    }
    Ok(plan)
}

/// Streams the join's output columns `pick` into `out` (temporary file, fsync, rename); returns its rows.
async fn write_snapshot(
    mut stream: SendableRecordBatchStream,
    pick: &[usize],
    schema: &SchemaRef,
    out: &Path,
) -> Result<u64> {
    let dir = out.parent().unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{:x}", std::process::id()));
    let result = async {
        let file = File::create(&tmp).map_err(|e| RoomError::io("create", &tmp, e))?;
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let mut writer = ArrowWriter::try_new(file, Arc::clone(schema), Some(props))?;
        let mut rows = 0u64;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let columns = pick.iter().map(|&i| Arc::clone(batch.column(i))).collect();
            let batch = RecordBatch::try_new(Arc::clone(schema), columns)?;
            rows += batch.num_rows() as u64;
            writer.write(&batch)?;
        }
        let file = writer.into_inner()?;
        file.sync_all()
            .map_err(|e| RoomError::io("sync", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, out).map_err(|e| RoomError::io("rename into place", out, e))?;
        accord_fs::sync_dir(dir)?;
        Ok(rows)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Bytes spilled by `plan` and every operator below it.
fn spilled(plan: &dyn ExecutionPlan) -> u64 {
    let own = plan.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0) as u64;
    own + plan
        .children()
        .into_iter()
        .map(|c| spilled(c.as_ref()))
        .sum::<u64>()
}

/// A party's batch files read in order, one Parquet batch at a time.
#[derive(Debug)]
struct PartyFiles {
    schema: SchemaRef,
    side: Side,
    read: Arc<AtomicU64>,
}

impl PartitionStream for PartyFiles {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rows = FileRows {
            schema: Arc::clone(&self.schema),
            names: std::iter::once("token".to_owned())
                .chain(std::iter::once("handle".to_owned()))
                .chain(self.side.party.columns.iter().map(|(n, _)| n.clone()))
                .collect(),
            files: self.side.files.clone().into_iter(),
            current: None,
            read: Arc::clone(&self.read),
        };
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::iter(rows),
        ))
    }
}

struct FileRows {
    schema: SchemaRef,
    /// The file columns in side-schema order (token, handle, attributes).
    names: Vec<String>,
    files: std::vec::IntoIter<(u64, PathBuf)>,
    /// The file being read: its batch number, reader, and rows read from it so far.
    current: Option<(u64, ParquetRecordBatchReader, u64)>,
    read: Arc<AtomicU64>,
}

impl FileRows {
    fn open(path: &Path) -> Result<ParquetRecordBatchReader> {
        let file = File::open(path).map_err(|e| RoomError::io("open", path, e))?;
        Ok(ParquetRecordBatchReaderBuilder::try_new(file)?
            .with_batch_size(READ_BATCH_ROWS)
            .build()?)
    }

    fn tag(&self, batch_number: u64, first: u64, rb: &RecordBatch) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.names.len() + 2);
        for name in &self.names {
            columns.push(Arc::clone(rb.column(rb.schema().index_of(name)?)));
        }
        let n = rb.num_rows() as u64;
        columns.push(Arc::new(UInt64Array::from_value(
            batch_number,
            rb.num_rows(),
        )));
        columns.push(Arc::new(UInt64Array::from_iter_values(first..first + n)));
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

impl Iterator for FileRows {
    type Item = datafusion::error::Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let (n, path) = self.files.next()?;
                match Self::open(&path) {
                    Ok(reader) => self.current = Some((n, reader, 0)),
                    Err(e) => return Some(Err(external(e))),
                }
            }
            let (n, reader, at) = self.current.as_mut()?;
            let (n, first) = (*n, *at);
            match reader.next() {
                None => self.current = None,
                Some(Err(e)) => return Some(Err(external(RoomError::Arrow(e)))),
                Some(Ok(rb)) => {
                    if let Some((_, _, at)) = self.current.as_mut() {
                        *at += rb.num_rows() as u64;
                    }
                    self.read.fetch_add(rb.num_rows() as u64, Ordering::Relaxed);
                    return Some(self.tag(n, first, &rb).map_err(external));
                }
            }
        }
    }
}

fn external(e: RoomError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A side's distinct rows, run in the side's own session, counted as they pass.
#[derive(Debug)]
struct Distinct {
    schema: SchemaRef,
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    kept: Arc<AtomicU64>,
}

impl PartitionStream for Distinct {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        // Its own task, so both sides' sorts run at once (the merge join polls one at a time).
        let mut builder = RecordBatchReceiverStream::builder(Arc::clone(&self.schema), 2);
        let tx = builder.tx();
        let (plan, task, kept) = (
            Arc::clone(&self.plan),
            Arc::clone(&self.task),
            Arc::clone(&self.kept),
        );
        builder.spawn(async move {
            let mut stream = plan.execute(0, task)?;
            let mut last: Option<Vec<u8>> = None;
            while let Some(batch) = stream.next().await {
                let batch = first_of_each_token(&batch?, &mut last)?;
                if batch.num_rows() == 0 {
                    continue;
                }
                kept.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                if tx.send(Ok(batch)).await.is_err() {
                    break; // the join stopped reading
                }
            }
            Ok(())
        });
        builder.build()
    }
}

/// The rows of `batch` (sorted by its first column, the token) whose token differs from the
/// row before it; `last` carries the last token across batches.
fn first_of_each_token(
    batch: &RecordBatch,
    last: &mut Option<Vec<u8>>,
) -> datafusion::error::Result<RecordBatch> {
    let tokens = batch
        .column(0)
        .as_any()
        .downcast_ref::<FixedSizeBinaryArray>()
        .ok_or_else(|| DataFusionError::Internal("the token column is not fixed-size".into()))?;
    let mut keep = Vec::with_capacity(tokens.len());
    for i in 0..tokens.len() {
        let token = tokens.value(i);
        let first = last.as_deref() != Some(token);
        if first {
            *last = Some(token.to_vec());
        }
        keep.push(first);
    }
    Ok(arrow::compute::filter_record_batch(
        batch,
        &BooleanArray::from(keep),
    )?)
}

#[cfg(test)]
#[path = "join_tests.rs"]
mod tests;
