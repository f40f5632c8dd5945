//! The room's error type. Its one mapping to gRPC status codes lives in the gRPC adapter
//! (`grpc::to_status`): the room's core does not know the transport.

use std::path::Path;

/// Everything that can go wrong in the room. User errors (bad input, refused access) are kept
/// apart from internal failures; the gRPC adapter maps them to real gRPC codes. Failures of
/// the file system, Parquet and Arrow keep their source error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// The request is malformed (sizes, encodings, counts, unknown columns).
    #[error("{0}")]
    InvalidArgument(String),
    /// No valid session, or a bad signature on the challenge.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The thing asked for does not exist (unknown agreement, batch, handle).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with stored state (same batch number, other content).
    #[error("{0}")]
    AlreadyExists(String),
    /// The agreement is not in a state that allows this (not sealed, expired, revoked, caps).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A disk operation failed.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file concerned.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file operation of `accord-fs` failed (atomic write, durable delete).
    #[error("{0}")]
    Fs(#[from] accord_fs::FsError),
    /// Reading or writing a Parquet file failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// An Arrow operation on stored columns failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The sealing join (DataFusion over the parties' Parquet files) failed.
    #[error("sealing join: {0}")]
    Sealing(#[from] datafusion::error::DataFusionError),
    /// A bug or an unexpected failure inside the room.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RoomError {
    /// An I/O error about `path`.
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.display().to_string(),
            source,
        }
    }
}

/// Shorthand.
pub type Result<T, E = RoomError> = std::result::Result<T, E>;
