//! The room's error type and its one mapping to gRPC status codes.

use std::path::Path;

/// Everything that can go wrong in the room. User errors (bad input, refused access) are kept
/// apart from internal failures; [`RoomError::to_status`] maps them to real gRPC codes.
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

    /// The gRPC status for this error. Internal details stay in the room's log.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Status;
        match self {
            Self::InvalidArgument(m) => Status::invalid_argument(m.clone()),
            Self::Unauthenticated(m) => Status::unauthenticated(m.clone()),
            Self::PermissionDenied(m) => Status::permission_denied(m.clone()),
            Self::NotFound(m) => Status::not_found(m.clone()),
            Self::AlreadyExists(m) => Status::already_exists(m.clone()),
            Self::FailedPrecondition(m) => Status::failed_precondition(m.clone()),
            Self::Io { .. } | Self::Internal(_) => {
                tracing::error!(error = %self, "internal error");
                Status::internal(
                    "the room hit an internal error; it has been logged on the room's side",
                )
            }
        }
    }
}

impl From<RoomError> for tonic::Status {
    fn from(e: RoomError) -> Self {
        e.to_status()
    }
}

impl From<accord_fs::FsError> for RoomError {
    fn from(e: accord_fs::FsError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<parquet::errors::ParquetError> for RoomError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Self::Internal(format!("parquet: {e}"))
    }
}

impl From<arrow::error::ArrowError> for RoomError {
    fn from(e: arrow::error::ArrowError) -> Self {
        Self::Internal(format!("arrow: {e}"))
    }
}

/// Shorthand.
pub type Result<T, E = RoomError> = std::result::Result<T, E>;
