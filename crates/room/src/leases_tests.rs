use std::collections::BTreeSet;

use super::*;

const TTL: Duration = Duration::from_secs(60);

fn grant(l: &mut Leases, want: usize, now: Instant, stored: &BTreeSet<u64>) -> Grant {
    l.grant(want, now, TTL, stored.len() as u64, |n| stored.contains(&n))
}

#[test]
fn workers_get_disjoint_batches_until_every_batch_is_leased() {
    let now = Instant::now();
    let mut l = Leases::new(10);
    let none = BTreeSet::new();
    let a = grant(&mut l, 4, now, &none);
    let b = grant(&mut l, 4, now, &none);
    let c = grant(&mut l, 4, now, &none);
    assert_eq!(a.batch_numbers, vec![0, 1, 2, 3]);
    assert_eq!(b.batch_numbers, vec![4, 5, 6, 7]);
    assert_eq!(c.batch_numbers, vec![8, 9]);
    assert_eq!(c.leased, 8, "the others' leases are reported");
    let d = grant(&mut l, 4, now, &none);
    assert!(d.batch_numbers.is_empty(), "nothing left while leases run");
    assert!(!d.all_stored);
    assert_eq!(d.expires_in, TTL);
}

#[test]
fn stored_batches_are_never_leased_and_all_stored_ends_the_work() {
    let now = Instant::now();
    let mut l = Leases::new(5);
    // Batches 0 and 2 were stored by an earlier, single-process attempt.
    let mut stored = BTreeSet::from([0, 2]);
    let a = grant(&mut l, 10, now, &stored);
    assert_eq!(a.batch_numbers, vec![1, 3, 4]);
    stored.extend([1, 3, 4]);
    let b = grant(&mut l, 10, now, &stored);
    assert!(b.batch_numbers.is_empty());
    assert!(b.all_stored);
    assert_eq!(b.leased, 0, "stored batches release their leases");
}

#[test]
fn a_lost_workers_batches_go_to_another_worker_when_its_lease_runs_out() {
    let start = Instant::now();
    let mut l = Leases::new(6);
    let mut stored = BTreeSet::new();
    let lost = grant(&mut l, 3, start, &stored);
    assert_eq!(lost.batch_numbers, vec![0, 1, 2]);
    let other = grant(&mut l, 3, start, &stored);
    assert_eq!(other.batch_numbers, vec![3, 4, 5]);
    // The lost worker stored batch 1 before it went; the other worker stored all of its own.
    stored.extend([1, 3, 4, 5]);
    let early = grant(&mut l, 3, start + TTL / 2, &stored);
    assert!(early.batch_numbers.is_empty(), "the lease still runs");
    let late = grant(&mut l, 3, start + TTL, &stored);
    assert_eq!(
        late.batch_numbers,
        vec![0, 2],
        "only the unstored batches come back"
    );
    assert_eq!(late.leased, 0);
}

#[test]
fn the_table_never_holds_more_than_its_bound_whatever_the_workers_ask() {
    let now = Instant::now();
    let total = (MAX_OUTSTANDING_LEASES * 3) as u64;
    let mut l = Leases::new(total);
    let none = BTreeSet::new();
    let mut granted = 0;
    for _ in 0..MAX_OUTSTANDING_LEASES {
        granted += grant(&mut l, 64, now, &none).batch_numbers.len();
    }
    assert_eq!(granted, MAX_OUTSTANDING_LEASES);
    assert_eq!(l.held.len(), MAX_OUTSTANDING_LEASES);
    assert!(grant(&mut l, 64, now, &none).batch_numbers.is_empty());
    // When those leases run out, the next numbers are granted, still within the bound.
    let later = grant(&mut l, 64, now + TTL, &none);
    assert_eq!(later.batch_numbers.len(), 64);
    assert!(l.held.len() <= MAX_OUTSTANDING_LEASES);
    assert!(l.returned.len() <= MAX_OUTSTANDING_LEASES);
    assert_eq!(l.total, total);
}
