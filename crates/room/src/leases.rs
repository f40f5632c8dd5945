//! Batch-number leases (PROTOCOL.md, "Workers"): a party uploading from several workers
//! under one key asks the room for batch numbers, so the workers blind and upload disjoint
//! batches. A lease is coordination, not permission: every worker holds the party's key,
//! each batch is checked and stored on its own merits whoever sends it, and the same batch
//! sent by two workers (a slow worker whose lease ran out) is stored once. Leases live in
//! the room's memory only: after a restart the workers simply lease again, and the batches
//! already stored are never leased.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::limits::MAX_OUTSTANDING_LEASES;

/// One party's leases for one upload.
#[derive(Debug, Clone)]
pub(crate) struct Leases {
    /// The upload's number of batches, fixed by the first lease.
    total: u64,
    /// Leased and not yet seen stored: batch number → when the lease runs out.
    held: BTreeMap<u64, Instant>,
    /// Numbers whose lease ran out before they were stored: granted again first.
    returned: BTreeSet<u64>,
    /// Every number below this was leased at least once (or stored).
    next: u64,
}

/// What one `Lease` call gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Leased to the caller, ascending; none is stored.
    pub batch_numbers: Vec<u64>,
    /// How long the lease holds.
    pub expires_in: Duration,
    /// Batches the room holds.
    pub stored: u64,
    /// Batches leased to other workers and not stored.
    pub leased: u64,
    /// Every batch of the upload is stored.
    pub all_stored: bool,
}

impl Leases {
    /// No lease yet, for an upload of `total` batches.
    pub(crate) fn new(total: u64) -> Self {
        Self {
            total,
            held: BTreeMap::new(),
            returned: BTreeSet::new(),
            next: 0,
        }
    }

    /// Grants up to `want` numbers below the total that are neither stored (`is_stored`) nor
    /// under a lease still running at `now`, for `ttl`; `stored` is how many batches the
    /// room holds. Never more than [`MAX_OUTSTANDING_LEASES`] are held at once.
    pub(crate) fn grant(
        &mut self,
        want: usize,
        now: Instant,
        ttl: Duration,
        stored: u64,
        is_stored: impl Fn(u64) -> bool,
    ) -> Grant {
        // Stored batches need no lease; a lease that ran out returns its unstored batches.
        let mut ran_out = Vec::new();
        self.held.retain(|&n, until| {
            if is_stored(n) {
                return false;
            }
            if *until <= now {
                ran_out.push(n);
                return false;
            }
            true
        });
        self.returned.extend(ran_out);
        self.returned.retain(|&n| !is_stored(n));
        let room = MAX_OUTSTANDING_LEASES.saturating_sub(self.held.len());
        let mut granted = Vec::new();
        while granted.len() < want.min(room) {
            if let Some(n) = self.returned.pop_first() {
                granted.push(n);
                continue;
            }
            while self.next < self.total && is_stored(self.next) {
                self.next += 1;
            }
            if self.next >= self.total {
                break;
            }
            granted.push(self.next);
            self.next += 1;
        }
        granted.sort_unstable();
        let leased = self.held.len() as u64;
        for &n in &granted {
            self.held.insert(n, now + ttl);
        }
        Grant {
            batch_numbers: granted,
            expires_in: ttl,
            stored,
            leased,
            all_stored: stored >= self.total,
        }
    }
}

#[cfg(test)]
#[path = "leases_tests.rs"]
mod tests;
