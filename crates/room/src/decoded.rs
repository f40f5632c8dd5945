//! The room's bounded memory of owner batches it decoded when it checked them at upload.
//!
//! Verifying a partner's blinding proof needs the owner's input points decoded; decoding is,
//! after the multi-scalar multiplications, the largest part of verification. The room already
//! decodes every uploaded point once to check it, so it keeps the decoded batch here until the
//! partner returns its blinding, and verification skips the second decoding.
//!
//! Nothing depends on an entry being present: a batch evicted for room, or lost in a restart,
//! is decoded again from its stored bytes, and an entry is only ever used for the exact bytes
//! it was decoded from (`accord_psi::verify_blinding_decoded` checks), so the cache can change
//! how long verification takes, never its verdict. Memory is bounded by
//! [`crate::limits::DECODED_INPUTS_BYTES`]; the oldest entries go first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use accord_agreement::Fingerprint;
use accord_psi::DecodedBatch;

/// Which owner batch an entry holds: agreement version, owner party, batch number.
type Key = (Fingerprint, String, u64);

/// Decoded owner batches waiting for their partner's blinding.
#[derive(Debug)]
pub(crate) struct DecodedInputs {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Key, (u64, Arc<DecodedBatch>)>,
    /// Insertion order, oldest first: sequence number → key.
    order: BTreeMap<u64, Key>,
    next: u64,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, key: &Key) -> Option<Arc<DecodedBatch>> {
        let (seq, batch) = self.entries.remove(key)?;
        self.order.remove(&seq);
        self.bytes -= batch.memory_bytes();
        Some(batch)
    }
}

impl DecodedInputs {
    /// An empty cache holding at most `budget` bytes of decoded points.
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the map half-updated in a way that
        // matters (every entry is optional), so a poisoned lock is simply used.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `batch` for `(fingerprint, owner, batch_number)`, evicting the oldest entries
    /// until it fits. A batch larger than the whole budget is not kept.
    pub(crate) fn insert(
        &self,
        fingerprint: Fingerprint,
        owner: &str,
        batch_number: u64,
        batch: DecodedBatch,
    ) {
        let size = batch.memory_bytes();
        if size > self.budget {
            return;
        }
        let key = (fingerprint, owner.to_owned(), batch_number);
        let mut inner = self.lock();
        inner.remove(&key);
        while inner.bytes + size > self.budget {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            if let Some((_, evicted)) = inner.entries.remove(&oldest) {
                inner.bytes -= evicted.memory_bytes();
            }
        }
        let seq = inner.next;
        inner.next += 1;
        inner.order.insert(seq, key.clone());
        inner.entries.insert(key, (seq, Arc::new(batch)));
        inner.bytes += size;
    }

    /// The decoded batch, if still kept (it stays until [`Self::remove`]: a refused or
    /// failed verification may be retried).
    pub(crate) fn get(
        &self,
        fingerprint: Fingerprint,
        owner: &str,
        batch_number: u64,
    ) -> Option<Arc<DecodedBatch>> {
        let key = (fingerprint, owner.to_owned(), batch_number);
        self.lock().entries.get(&key).map(|(_, b)| Arc::clone(b))
    }

    /// Drops the entry once the batch is blinded (or can never be).
    pub(crate) fn remove(&self, fingerprint: Fingerprint, owner: &str, batch_number: u64) {
        self.lock()
            .remove(&(fingerprint, owner.to_owned(), batch_number));
    }

    /// Drops every entry of an agreement version (revoked, expired, erased or sealed).
    pub(crate) fn forget_agreement(&self, fingerprint: Fingerprint) {
        let mut inner = self.lock();
        let keys: Vec<Key> = inner
            .entries
            .keys()
            .filter(|(fp, _, _)| *fp == fingerprint)
            .cloned()
            .collect();
        for key in keys {
            inner.remove(&key);
        }
    }

    /// Bytes of decoded points held now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use accord_psi::{HashDomain, IdentifierKind, PsiSecret, hash_and_blind};

    fn decoded(n: usize, salt: &str) -> DecodedBatch {
        let owner = PsiSecret::generate().unwrap();
        let domain = HashDomain::new("agr", IdentifierKind::Email);
        let ids: Vec<String> = (0..n).map(|i| format!("{salt}{i}@example.com")).collect();
        accord_psi::check_and_decode(&hash_and_blind(&owner, &domain, &ids).concat()).unwrap()
    }

    fn fp(byte: u8) -> Fingerprint {
        Fingerprint::from_bytes([byte; 32])
    }

    #[test]
    fn the_budget_is_never_exceeded_and_the_oldest_go_first() {
        let one = decoded(8, "a").memory_bytes();
        // Room for exactly three batches of eight points; five are inserted.
        let cache = DecodedInputs::new(3 * one);
        for batch in 0..5u64 {
            cache.insert(fp(1), "drinks", batch, decoded(8, &batch.to_string()));
            assert!(cache.bytes() <= 3 * one, "over budget after batch {batch}");
        }
        assert_eq!(cache.bytes(), 3 * one);
        for gone in 0..2 {
            assert!(
                cache.get(fp(1), "drinks", gone).is_none(),
                "batch {gone} kept"
            );
        }
        for kept in 2..5 {
            assert_eq!(cache.get(fp(1), "drinks", kept).unwrap().len(), 8);
        }
        // A batch larger than the whole budget is not kept, and evicts nothing.
        cache.insert(fp(1), "drinks", 9, decoded(32, "big"));
        assert!(cache.get(fp(1), "drinks", 9).is_none());
        assert_eq!(cache.bytes(), 3 * one);
    }

    #[test]
    fn entries_are_per_agreement_owner_and_batch_and_removed_on_request() {
        let cache = DecodedInputs::new(1 << 20);
        cache.insert(fp(1), "drinks", 0, decoded(4, "x"));
        cache.insert(fp(1), "snacks", 0, decoded(5, "y"));
        cache.insert(fp(2), "drinks", 0, decoded(6, "z"));
        assert_eq!(cache.get(fp(1), "drinks", 0).unwrap().len(), 4);
        assert_eq!(cache.get(fp(1), "snacks", 0).unwrap().len(), 5);
        assert_eq!(cache.get(fp(2), "drinks", 0).unwrap().len(), 6);
        assert!(cache.get(fp(1), "drinks", 1).is_none());
        // Replacing an entry does not count it twice.
        let before = cache.bytes();
        cache.insert(fp(1), "drinks", 0, decoded(4, "w"));
        assert_eq!(cache.bytes(), before);
        cache.remove(fp(1), "drinks", 0);
        assert!(cache.get(fp(1), "drinks", 0).is_none());
        cache.forget_agreement(fp(1));
        assert!(cache.get(fp(1), "snacks", 0).is_none());
        assert_eq!(cache.get(fp(2), "drinks", 0).unwrap().len(), 6);
        cache.forget_agreement(fp(2));
        assert_eq!(cache.bytes(), 0);
    }
}
