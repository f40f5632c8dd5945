//! The room's checks of what a party uploads, as pure functions over plain data: counts and
//! sizes of a batch, its attribute columns (names, types, lengths, bounds), the digest that
//! recognizes a retry, a batch's place in the upload (order, cap, retry), the completion
//! totals, and an erasure's handles. No I/O and no transport types: the PSI relay
//! (`room::psi`) converts the request into these shapes, the store only stores what passed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use accord_proto::limits::{
    HANDLE_LEN, MAX_BATCH_ROWS, MAX_ERASE_HANDLES, MAX_TEXT_VALUE_LEN, POINT_LEN,
};
use arrow::array::{ArrayRef, Float64Array, StringArray};
use sha2::{Digest, Sha256};

use crate::error::{Result, RoomError};
use crate::store::{PartyColumns, PartyProgress};
use accord_engine::Role;

/// The values of one uploaded attribute column, as sent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Values<'a> {
    /// Dimension labels; `present` is empty (all present) or one flag per row.
    Text {
        /// The labels.
        values: &'a [String],
        /// Which rows have a value.
        present: &'a [bool],
    },
    /// Metric values; `present` as for text.
    Number {
        /// The numbers.
        values: &'a [f64],
        /// Which rows have a value.
        present: &'a [bool],
    },
    /// The column named no values at all.
    Missing,
}

/// One uploaded attribute column, as sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Column<'a> {
    /// The column name as in the manifest's `contributes` list.
    pub(crate) name: &'a str,
    /// Its values.
    pub(crate) values: Values<'a>,
}

/// The number of rows of an upload batch: its points are whole 32-byte points, 1 to
/// [`MAX_BATCH_ROWS`] of them, with one 16-byte handle each.
pub(crate) fn batch_rows(batch_number: u64, points: &[u8], handles: &[u8]) -> Result<usize> {
    let bad = |e: String| RoomError::InvalidArgument(format!("batch {batch_number}: {e}"));
    let n =
        accord_proto::count_items("points", points, POINT_LEN).map_err(|e| bad(e.to_string()))?;
    if n == 0 || n > MAX_BATCH_ROWS {
        return Err(RoomError::InvalidArgument(format!(
            "batch {batch_number} has {n} rows; a batch holds 1 to {MAX_BATCH_ROWS} rows"
        )));
    }
    accord_proto::expect_items("handles", handles, HANDLE_LEN, n)
        .map_err(|e| bad(e.to_string()))?;
    Ok(n)
}

/// The batch's 32-byte salt (protocol v2).
pub(crate) fn salt(batch_number: u64, salt: &[u8]) -> Result<[u8; 32]> {
    accord_proto::fixed("salt", salt).map_err(|e| {
        RoomError::InvalidArgument(format!(
            "batch {batch_number}: {e} (protocol v2 batches carry a 32-byte salt; upgrade accord)"
        ))
    })
}

/// What a batch is remembered by, to tell a retry (same digest) from a different batch under
/// the same number: SHA-256 of its number, handles, points and the encoding of its columns.
pub(crate) fn batch_digest(
    batch_number: u64,
    handles: &[u8],
    points: &[u8],
    columns: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(batch_number.to_be_bytes());
    h.update(handles);
    h.update(points);
    h.update(columns);
    h.finalize().into()
}

/// The attribute columns of a batch of `n` rows as Arrow arrays in manifest order, after
/// checking that they are exactly the agreed ones (no repeats, none missing, none extra),
/// of the agreed type, of `n` values (and `n` presence flags, or none), with labels of at
/// most [`MAX_TEXT_VALUE_LEN`] bytes and present metric values finite and within bounds.
pub(crate) fn attributes(
    layout: &PartyColumns,
    columns: &[Column<'_>],
    n: usize,
    batch: u64,
) -> Result<Vec<ArrayRef>> {
    let bad = |m: String| RoomError::InvalidArgument(format!("batch {batch}: {m}"));
    let mut by_name: HashMap<&str, &Column<'_>> = HashMap::new();
    for c in columns {
        if by_name.insert(c.name, c).is_some() {
            return Err(bad(format!("column {:?} appears twice", c.name)));
        }
        if !layout.columns.iter().any(|(name, _)| name == c.name) {
            return Err(bad(format!(
                "column {:?} is not one {} contributes under this agreement (agreed: {})",
                c.name,
                layout.party,
                layout
                    .columns
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut out = Vec::with_capacity(layout.columns.len());
    for (name, kind) in &layout.columns {
        let c = by_name
            .get(name.as_str())
            .ok_or_else(|| bad(format!("agreed column {name:?} is missing")))?;
        let present = |p: &[bool]| -> Result<Vec<bool>> {
            match p.len() {
                0 => Ok(vec![true; n]),
                len if len == n => Ok(p.to_vec()),
                len => Err(bad(format!(
                    "column {name:?} has {len} presence flags for {n} rows"
                ))),
            }
        };
        let array: ArrayRef = match (kind, c.values) {
            (Role::Dimension, Values::Text { values, present: p }) => {
                if values.len() != n {
                    return Err(bad(format!(
                        "column {name:?} has {} values for {n} rows",
                        values.len()
                    )));
                }
                let p = present(p)?;
                if let Some(v) = values.iter().find(|v| v.len() > MAX_TEXT_VALUE_LEN) {
                    return Err(bad(format!(
                        "column {name:?} has a value of {} bytes; dimension values are at most {MAX_TEXT_VALUE_LEN} bytes",
                        v.len()
                    )));
                }
                Arc::new(
                    values
                        .iter()
                        .zip(p)
                        .map(|(v, ok)| ok.then_some(v.as_str()))
                        .collect::<StringArray>(),
                )
            }
            (Role::Metric { min, max }, Values::Number { values, present: p }) => {
                if values.len() != n {
                    return Err(bad(format!(
                        "column {name:?} has {} values for {n} rows",
                        values.len()
                    )));
                }
                let p = present(p)?;
                for (v, ok) in values.iter().zip(&p) {
                    if *ok && (!v.is_finite() || *v < *min || *v > *max) {
                        return Err(bad(format!(
                            "column {name:?} has the value {v}, outside its agreed bounds [{min}, {max}] (parties clamp metrics before upload)"
                        )));
                    }
                }
                Arc::new(
                    values
                        .iter()
                        .zip(p)
                        .map(|(v, ok)| ok.then_some(*v))
                        .collect::<Float64Array>(),
                )
            }
            (Role::Dimension, _) => {
                return Err(bad(format!(
                    "column {name:?} is a dimension: send text values"
                )));
            }
            (Role::Metric { .. }, _) => {
                return Err(bad(format!(
                    "column {name:?} is a metric: send number values"
                )));
            }
        };
        out.push(array);
    }
    Ok(out)
}

/// Whether a checked batch is new or a retry of one already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Not stored yet: store it.
    New,
    /// Stored already with the same digest (a retry after a lost acknowledgement).
    Retry,
}

/// Where batch `batch_number` of `rows` rows with `digest` stands in `party`'s upload:
/// a retry of a stored batch is admitted (different content is refused), a new batch must
/// be the next number — or, when the party's workers lease batch numbers (`leased_total`,
/// the upload's number of batches), any number below the total — the upload must still be
/// open, and the party must stay within its agreed `max_rows`.
pub(crate) fn admit_batch(
    progress: &PartyProgress,
    party: &str,
    batch_number: u64,
    digest: &[u8; 32],
    rows: u64,
    max_rows: u64,
    leased_total: Option<u64>,
) -> Result<Admission> {
    if let Some(existing) = progress.batches.get(&batch_number) {
        if existing.digest == *digest {
            return Ok(Admission::Retry);
        }
        return Err(RoomError::AlreadyExists(format!(
            "batch {batch_number} of {party} is already stored with different content: an upload is resumed \
             only with exactly the same input and state directory (if the input changed, the agreement needs a \
             new version)"
        )));
    }
    let next = progress.batches.len() as u64;
    if let Some(total) = leased_total {
        if batch_number >= total {
            return Err(RoomError::InvalidArgument(format!(
                "batch {batch_number} of {party} is beyond its upload of {total} batches (leased by its workers)"
            )));
        }
    } else if batch_number != next {
        return Err(RoomError::InvalidArgument(format!(
            "batch {batch_number} of {party} is out of order: the room expects batch {next} next"
        )));
    }
    if progress.complete.is_some() {
        return Err(RoomError::FailedPrecondition(format!(
            "{party} already completed its upload for this agreement version; later changes are erasures"
        )));
    }
    if progress.rows() + rows > max_rows {
        return Err(RoomError::FailedPrecondition(format!(
            "this batch would take {party} past its agreed upload cap of {max_rows} rows (max_rows in the agreement)"
        )));
    }
    Ok(Admission::New)
}

/// Whether a completion statement of `batches` and `rows` is new or a repeat of the one
/// stored: the totals must be what the room holds, and a stored statement is never replaced.
pub(crate) fn admit_completion(
    progress: &PartyProgress,
    party: &str,
    batches: u64,
    rows: u64,
) -> Result<Admission> {
    if let Some(existing) = &progress.complete {
        if existing.batches == batches && existing.rows == rows {
            return Ok(Admission::Retry);
        }
        return Err(RoomError::AlreadyExists(format!(
            "{party} already completed its upload with other totals"
        )));
    }
    // With leased workers batches arrive in any order: the numbers held must be 0..batches.
    let last = progress.batches.keys().next_back().map_or(0, |n| n + 1);
    if progress.batches.len() as u64 != batches || last != batches || progress.rows() != rows {
        return Err(RoomError::FailedPrecondition(format!(
            "{party} says it uploaded {batches} batches and {rows} rows, but the room holds {} batches and {} rows: \
             resume the upload (run the same `accord party upload` again)",
            progress.batches.len(),
            progress.rows()
        )));
    }
    Ok(Admission::New)
}

/// The distinct handles of an erasure request: whole 16-byte handles, 1 to
/// [`MAX_ERASE_HANDLES`] of them.
pub(crate) fn erase_handles(handles: &[u8]) -> Result<HashSet<[u8; 16]>> {
    let n = accord_proto::count_items("handles", handles, HANDLE_LEN)
        .map_err(|e| RoomError::InvalidArgument(e.to_string()))?;
    if n == 0 || n > MAX_ERASE_HANDLES {
        return Err(RoomError::InvalidArgument(format!(
            "an erasure request carries 1 to {MAX_ERASE_HANDLES} handles, this one {n}"
        )));
    }
    Ok(handles
        .chunks_exact(HANDLE_LEN)
        .map(crate::columns::to16)
        .collect())
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
