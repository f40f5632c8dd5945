//! The party side of Accord: what a partner data team runs on its own premises.
//!
//! Owns: reading the party's CSV/Parquet file and applying consent, normalization,
//! de-duplication and metric bounds ([`input`]); the party's local state — PSI secret,
//! handle key, pinned room key, blinded-once log ([`state`]); an authenticated connection
//! to the room ([`client`], also used by analysts); and the party's steps of the PSI
//! protocol: upload, blinding the partner's batches, status, erasure ([`protocol`]).
//!
//! Must never: send a raw, normalized or plainly hashed identifier anywhere (only
//! `k_party·H(x)` points and HMAC handles leave), upload a row without consent, blind a
//! partner batch whose signature does not verify, blind the same batch number twice with
//! different points, or exceed the partner's `max_rows`.
#![forbid(unsafe_code)]

pub mod calls;
pub mod client;
pub mod display;
pub mod error;
pub mod forget;
pub mod heads;
pub mod input;
pub mod pins;
pub mod protocol;
pub mod rights;
pub mod room_identity;
pub mod state;
pub mod tls_connect;

pub use calls::{QueryOutcome, RevocationReceipt, Submitted, submit_agreement};
pub use client::{ClientTls, Connection, Principal};
pub use error::PartyError;
pub use pins::Pins;
pub use protocol::{
    EraseOutcome, EraseSource, PartyContext, UploadOptions, UploadOutcome, erase, erase_from,
    status, sync, upload,
};
pub use room_identity::RoomIdentity;
