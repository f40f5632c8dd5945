//! Internal failures of the engine. An analyst's bad query is never an [`EngineError`]:
//! it is a [`crate::Refusal`].

use datafusion::error::DataFusionError;

/// Something went wrong inside the engine (not the analyst's fault).
///
/// The messages are for operators and may name columns of the `overlap` table; an
/// execution error's source may quote data values, so the room must log these and send
/// analysts only a generic message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The table spec itself is unusable.
    #[error("invalid table spec: {problem}; fix the agreement's column list or k")]
    InvalidSpec {
        /// What is wrong with the spec.
        problem: String,
    },
    /// A record batch handed to [`crate::Engine::new`] does not match the spec's schema.
    #[error(
        "record batch {batch} does not match the table spec: {problem}; the sealed snapshot must have exactly the spec's columns (dimensions Utf8, metrics Float64), in order"
    )]
    SchemaMismatch {
        /// Index of the offending batch.
        batch: usize,
        /// What differs.
        problem: String,
    },
    /// A metric value in the sealed data lies outside the agreed bounds (or is not finite).
    #[error(
        "metric column {column} holds a value outside its agreed bounds [{min}, {max}] or a non-finite value (batch {batch}, row {row}); bounds are enforced at upload, so the snapshot is corrupt"
    )]
    MetricOutOfBounds {
        /// The metric column.
        column: String,
        /// Agreed lower bound.
        min: f64,
        /// Agreed upper bound.
        max: f64,
        /// Index of the batch.
        batch: usize,
        /// Row within the batch.
        row: usize,
    },
    /// DataFusion failed while setting up the session or running an accepted query.
    #[error("DataFusion failed during {stage}")]
    DataFusion {
        /// What the engine was doing.
        stage: &'static str,
        /// The underlying error (may quote data values: log it, never send it to an analyst).
        #[source]
        source: DataFusionError,
    },
    /// The Ballista engine (feature `ballista`) could not write its Parquet overlap or start
    /// its in-process scheduler and executor.
    #[error("Ballista engine: {0}")]
    Ballista(String),
    /// The optimizer produced a plan the engine cannot execute safely (a bug, not the analyst's fault).
    #[error("internal policy error: {0}; please report this with the query's SQL")]
    Internal(String),
}

impl EngineError {
    pub(crate) fn df(stage: &'static str) -> impl FnOnce(DataFusionError) -> EngineError {
        move |source| EngineError::DataFusion { stage, source }
    }
}
