//! The party client's errors. `Unreachable` is kept apart so the CLI can exit with code 3.

/// What can go wrong on the party's side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PartyError {
    /// The room could not be reached (connection refused, DNS, timeouts after retries).
    #[error("could not reach the room at {url}: {reason}")]
    Unreachable {
        /// The room URL.
        url: String,
        /// What failed.
        reason: String,
        /// Already retried with backoff until giving up: an outer loop must not retry again.
        gave_up: bool,
    },
    /// The room refused the request; the message says why.
    #[error("the room refused: {0}")]
    Room(String),
    /// The session ended (expired, or the room restarted) before the call ran: nothing was
    /// done, and the caller re-authenticates and tries again.
    #[error("the session with the room at {url} ended ({reason}); re-authenticating did not help")]
    SessionEnded {
        /// The room URL.
        url: String,
        /// The room's message (escaped).
        reason: String,
    },
    /// This side refused (bad signature from the partner, pinned key mismatch, …).
    #[error("{0}")]
    Refused(String),
    /// The input file is unusable; the message names file, line and column.
    #[error("{0}")]
    BadInput(String),
    /// Invalid arguments or agreement.
    #[error("{0}")]
    Invalid(String),
    /// The local state directory is unusable.
    #[error("state directory: {0}")]
    State(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl PartyError {
    /// Maps a gRPC status from the room.
    pub fn from_status(url: &str, status: tonic::Status) -> Self {
        use tonic::Code;
        // A connection that breaks mid-call surfaces as UNKNOWN "transport error" (or an h2
        // error) rather than UNAVAILABLE: it is the room going away, not the room refusing.
        let broken = status.code() == Code::Unknown && {
            let m = status.message();
            m.contains("transport error")
                || m.contains("h2 protocol error")
                || m.contains("connection")
        };
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                PartyError::Unreachable {
                    url: url.to_owned(),
                    reason: crate::display::room_message(status.message()),
                    gave_up: false,
                }
            }
            _ if broken => PartyError::Unreachable {
                url: url.to_owned(),
                reason: crate::display::room_message(status.message()),
                gave_up: false,
            },
            _ => PartyError::Room(crate::display::room_message(status.message())),
        }
    }

    /// Maps a gRPC status from a call made with a session: `UNAUTHENTICATED` there means the
    /// session ended (expired, or the room restarted and forgot it), which re-authenticating
    /// fixes; everything else as [`PartyError::from_status`].
    pub fn from_session_status(url: &str, status: tonic::Status) -> Self {
        if status.code() == tonic::Code::Unauthenticated {
            return PartyError::SessionEnded {
                url: url.to_owned(),
                reason: crate::display::room_message(status.message()),
            };
        }
        Self::from_status(url, status)
    }

    /// True for errors worth retrying with backoff.
    pub fn is_transient(&self) -> bool {
        matches!(self, PartyError::Unreachable { gave_up: false, .. })
    }
}
