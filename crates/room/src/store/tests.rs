//! The store on its own, in a temporary directory: what it acknowledges is on disk and
//! rebuilt by `open`, and each of its storage rules (retry, order, cap, repeated points,
//! tokens replacing points, sealing, minimization, erasure) holds across a reopen.

use super::*;
use accord_engine::Role;
use arrow::array::{Float64Array, StringArray};

fn layouts() -> Vec<PartyColumns> {
    vec![
        PartyColumns {
            party: "drinks".into(),
            columns: vec![("tier".into(), Role::Dimension)],
            max_rows: 6,
        },
        PartyColumns {
            party: "snacks".into(),
            columns: vec![(
                "spend".into(),
                Role::Metric {
                    min: 0.0,
                    max: 10.0,
                },
            )],
            max_rows: 6,
        },
    ]
}

/// A batch of `ids.len()` rows: handle `[id; 16]`, point `[id; 32]`, attribute from `id`.
fn batch(party: &str, ids: &[u8], tag: u8) -> PendingBatch {
    let attribute: ArrayRef = if party == "drinks" {
        Arc::new(StringArray::from(
            ids.iter().map(|i| format!("t{i}")).collect::<Vec<_>>(),
        ))
    } else {
        Arc::new(Float64Array::from(
            ids.iter()
                .map(|i| f64::from(*i) / 100.0)
                .collect::<Vec<_>>(),
        ))
    };
    PendingBatch {
        handles: ids.iter().flat_map(|i| [*i; 16]).collect(),
        points: ids.iter().flat_map(|i| [*i; 32]).collect(),
        signature: vec![tag; 64],
        attributes: vec![attribute],
        digest: [tag; 32],
        rows_digest: [tag ^ 0xff; 32],
    }
}

/// Tokens for `ids`: token `[100 + id; 32]` unless `id` is in `shared`, then `[200 + k; 32]`
/// where `k` is the position in `shared` (the same customer on both sides).
fn tokens(ids: &[u8], shared: &[u8]) -> Vec<u8> {
    ids.iter()
        .flat_map(|i| match shared.iter().position(|s| s == i) {
            Some(k) => [200 + k as u8; 32],
            None => [100 + *i; 32],
        })
        .collect()
}

fn handles(rb: &RecordBatch, column: &str) -> Vec<u8> {
    let c = column_fixed(rb, column).unwrap();
    (0..c.len()).map(|i| c.value(i)[0]).collect()
}

#[test]
fn an_upload_is_on_disk_and_rebuilt_by_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    assert_eq!(s.partner_of("drinks"), Some("snacks"));
    assert_eq!(s.partner_of("snacks"), Some("drinks"));
    assert!(
        s.store_pending("drinks", 0, &batch("drinks", &[1, 2], 7))
            .unwrap()
    );
    // The same batch again is a retry: acknowledged, not stored twice.
    assert!(
        !s.store_pending("drinks", 0, &batch("drinks", &[1, 2], 7))
            .unwrap()
    );
    assert!(
        s.store_pending("drinks", 1, &batch("drinks", &[3], 8))
            .unwrap()
    );
    let p = s.progress("drinks").unwrap();
    assert_eq!(
        (p.batches[&0].rows, p.batches[&1].rows, p.rows()),
        (2, 1, 3)
    );
    drop(s);
    let s = AgreementStore::open(dir.path(), layouts()).unwrap();
    let p = s.progress("drinks").unwrap();
    assert_eq!(p.batches.len(), 2);
    assert_eq!(p.rows(), 3);
    assert_eq!(p.batches[&0].rows, 2);
    assert_eq!(p.batches[&0].digest, [7; 32]);
    assert_eq!(p.batches[&1].state, BatchState::Pending);
    assert_eq!(p.tokenized(), 0);
    let w = s.read_pending_points("drinks", 0).unwrap();
    assert_eq!(w.points, [[1u8; 32], [2; 32]].concat());
    assert_eq!(w.signature, vec![7; 64]);
    assert_eq!(w.rows_digest, vec![7 ^ 0xff; 32]);
    assert!(s.progress("nobody").is_err());
    assert_eq!(
        s.known_handles("drinks").unwrap(),
        HashSet::from([[1u8; 16], [2; 16], [3; 16]])
    );
}

#[test]
fn a_point_uploaded_before_is_refused_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    s.store_pending("drinks", 0, &batch("drinks", &[1, 2], 7))
        .unwrap();
    drop(s);
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    let e = s
        .store_pending("drinks", 1, &batch("drinks", &[4, 2], 8))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("its point at row 1 was already uploaded in batch 0"),
        "{e}"
    );
    // Nothing of the refused batch was kept: the next one is still number 1.
    assert_eq!(s.progress("drinks").unwrap().batches.len(), 1);
    assert!(
        s.store_pending("drinks", 1, &batch("drinks", &[4], 8))
            .unwrap()
    );
    // The other party's points are its own business.
    assert!(
        s.store_pending("snacks", 0, &batch("snacks", &[1, 2], 9))
            .unwrap()
    );
}

#[test]
fn the_refusal_of_a_repeated_point_names_the_batch_that_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    s.store_pending("drinks", 0, &batch("drinks", &[1], 1))
        .unwrap();
    s.store_pending("drinks", 1, &batch("drinks", &[2, 3], 2))
        .unwrap();
    let e = s
        .store_pending("drinks", 2, &batch("drinks", &[4, 3], 3))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("its point at row 1 was already uploaded in batch 1 of"),
        "{e}"
    );
}

#[test]
fn the_upload_cap_counts_every_stored_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    s.store_pending("drinks", 0, &batch("drinks", &[1, 2, 3, 4], 1))
        .unwrap();
    // 4 + 3 rows is past the cap of 6; 4 + 2 is at it.
    let e = s
        .store_pending("drinks", 1, &batch("drinks", &[5, 6, 7], 2))
        .unwrap_err();
    assert!(
        matches!(&e, RoomError::FailedPrecondition(m) if m.contains("upload cap of 6 rows")),
        "{e}"
    );
    assert!(
        s.store_pending("drinks", 1, &batch("drinks", &[5, 6], 2))
            .unwrap()
    );
    assert_eq!(s.progress("drinks").unwrap().rows(), 6);
}

#[test]
fn tokens_replace_points_and_the_seal_keeps_only_matched_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    s.store_pending("drinks", 0, &batch("drinks", &[1, 2, 3], 1))
        .unwrap();
    s.store_pending("snacks", 0, &batch("snacks", &[11, 12], 2))
        .unwrap();
    s.store_pending("snacks", 1, &batch("snacks", &[13], 3))
        .unwrap();
    assert!(!s.ready_to_seal());
    // drinks 1 ↔ snacks 12 and drinks 3 ↔ snacks 13 are the same customers.
    s.store_tokens("drinks", 0, &tokens(&[1, 2, 3], &[1, 3]))
        .unwrap();
    let mut t = tokens(&[11, 12], &[]);
    t[32..64].copy_from_slice(&[200; 32]);
    s.store_tokens("snacks", 0, &t).unwrap();
    assert!(
        s.read_pending_points("snacks", 0).is_err(),
        "the pending file is gone"
    );
    s.store_tokens("snacks", 1, &[201; 32]).unwrap();
    for (party, batches, rows) in [("drinks", 1, 3), ("snacks", 2, 3)] {
        assert!(!s.ready_to_seal(), "{party} has not completed yet");
        s.store_completion(
            party,
            &Completion {
                batches,
                rows,
                signature: "ab".into(),
            },
        )
        .unwrap();
    }
    assert!(s.ready_to_seal());
    assert_eq!(s.seal_info().unwrap(), None);
    let (snapshot, duplicates) = sealed(&s);
    assert_eq!(duplicates, 0);
    assert_eq!(handles(&snapshot, "drinks_handle"), vec![1, 3]);
    assert_eq!(handles(&snapshot, "snacks_handle"), vec![12, 13]);
    let info = SealInfo {
        sealed_at: "2026-12-06T00:00:00Z".into(),
        withheld: vec![("drinks_tier".into(), "too many values".into())],
    };
    s.write_seal_info(&info).unwrap();
    assert_eq!(s.seal_info().unwrap(), Some(info.clone()));
    // Minimization: drinks 2 and snacks 11 matched nobody and are deleted, their handles kept.
    assert_eq!(s.discard_unmatched(&snapshot).unwrap(), 2);
    assert_eq!(s.discard_unmatched(&snapshot).unwrap(), 0, "idempotent");
    drop(s);
    let s = AgreementStore::open(dir.path(), layouts()).unwrap();
    assert_eq!(s.seal_info().unwrap(), Some(info));
    assert_eq!(s.read_snapshot().unwrap(), snapshot);
    let d = s.progress("drinks").unwrap();
    assert_eq!(d.rows(), 3, "the upload's size survives minimization");
    assert_eq!(d.tokenized(), 1);
    assert!(d.tokens_complete());
    assert_eq!(d.discarded, HashSet::from([[2u8; 16]]));
    assert_eq!(
        s.progress("snacks").unwrap().discarded,
        HashSet::from([[11u8; 16]])
    );
    // A discarded handle is still known, so its erasure is answered.
    assert!(s.known_handles("drinks").unwrap().contains(&[2u8; 16]));
    assert!(
        !dir.path().join("parties/drinks/seen").exists(),
        "the point tags are deleted at sealing"
    );
    // Erasing a discarded handle forgets it (a second request is "unknown"), and only it.
    let mut s = s;
    assert_eq!(
        s.erase("drinks", &HashSet::from([[2u8; 16]])).unwrap(),
        Some(snapshot)
    );
    assert!(s.progress("drinks").unwrap().discarded.is_empty());
    assert!(!s.known_handles("drinks").unwrap().contains(&[2u8; 16]));
    assert_eq!(
        s.progress("snacks").unwrap().discarded,
        HashSet::from([[11u8; 16]])
    );
    drop(s);
    let s = AgreementStore::open(dir.path(), layouts()).unwrap();
    assert!(s.progress("drinks").unwrap().discarded.is_empty());
}

#[test]
fn a_pending_batch_stored_without_its_tag_file_still_counts_its_points() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    s.store_pending("drinks", 0, &batch("drinks", &[1, 2], 7))
        .unwrap();
    drop(s);
    // A batch stored by a build that kept no `seen/` files.
    std::fs::remove_file(dir.path().join("parties/drinks/seen").join(seen_file(0))).unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    let e = s
        .store_pending("drinks", 1, &batch("drinks", &[2], 8))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("its point at row 0 was already uploaded in"),
        "{e}"
    );
}

#[test]
fn repeated_tokens_are_dropped_at_sealing_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    s.store_pending("drinks", 0, &batch("drinks", &[1, 2], 1))
        .unwrap();
    s.store_pending("snacks", 0, &batch("snacks", &[11, 12, 13], 2))
        .unwrap();
    // Two of drinks' rows blinded to the same token (one customer uploaded twice), and two
    // of snacks' rows.
    s.store_tokens("drinks", 0, &[[200u8; 32], [200; 32]].concat())
        .unwrap();
    s.store_tokens("snacks", 0, &[[201u8; 32], [200; 32], [201; 32]].concat())
        .unwrap();
    let (snapshot, duplicates) = sealed(&s);
    assert_eq!(duplicates, 2);
    assert_eq!(handles(&snapshot, "drinks_handle"), vec![1]);
    assert_eq!(handles(&snapshot, "snacks_handle"), vec![12]);
}

#[test]
fn a_snapshot_without_its_seal_record_is_not_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    s.store_pending("drinks", 0, &batch("drinks", &[1], 1))
        .unwrap();
    s.store_pending("snacks", 0, &batch("snacks", &[11], 2))
        .unwrap();
    s.store_tokens("drinks", 0, &[200; 32]).unwrap();
    s.store_tokens("snacks", 0, &[200; 32]).unwrap();
    sealed(&s);
    let info = SealInfo {
        sealed_at: "now".into(),
        withheld: Vec::new(),
    };
    s.write_seal_info(&info).unwrap();
    // The room stopped between the snapshot and its seal record: not sealed, sealed again.
    std::fs::remove_file(dir.path().join("sealed.json")).unwrap();
    assert_eq!(s.seal_info().unwrap(), None);
    s.write_seal_info(&info).unwrap();
    assert_eq!(s.seal_info().unwrap(), Some(info));
}

#[test]
fn sealing_clears_the_attributes_of_refused_batches_and_fails_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    s.store_pending("drinks", 0, &batch("drinks", &[1], 1))
        .unwrap();
    s.store_pending("drinks", 1, &batch("drinks", &[2], 2))
        .unwrap();
    s.store_pending("snacks", 0, &batch("snacks", &[11], 3))
        .unwrap();
    s.store_tokens("drinks", 0, &[200; 32]).unwrap();
    s.store_tokens("snacks", 0, &[200; 32]).unwrap();
    s.store_refusal("drinks", 1, "identity_point: row 0")
        .unwrap();
    let (snapshot, _) = sealed(&s);
    // A `seen` that cannot be removed is an error, not skipped.
    let seen = dir.path().join("parties/snacks/seen");
    std::fs::remove_dir_all(&seen).unwrap();
    std::fs::write(&seen, b"not a directory").unwrap();
    assert!(s.discard_unmatched(&snapshot).is_err());
    std::fs::remove_file(&seen).unwrap();
    assert_eq!(s.discard_unmatched(&snapshot).unwrap(), 0);
    let pending = dir
        .path()
        .join("parties/drinks/pending")
        .join(batch_file(1));
    let (batches, _) = read_parquet(&pending).unwrap();
    let rb = concat(&batches).unwrap();
    let tier = rb.column(rb.schema().index_of("tier").unwrap());
    assert_eq!(
        tier.null_count(),
        1,
        "the refused batch's attributes are cleared"
    );
    assert_eq!(handles(&rb, "handle"), vec![2], "its handle and point stay");
}

#[test]
fn commitments_refusals_and_proof_failures_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    s.store_pending("drinks", 0, &batch("drinks", &[1], 1))
        .unwrap();
    s.store_pending("drinks", 1, &batch("drinks", &[2], 2))
        .unwrap();
    s.store_commitment("snacks", &[5; 32], &[6; 64]).unwrap();
    assert_eq!(s.record_proof_failure("drinks").unwrap(), 1);
    assert_eq!(s.record_proof_failure("drinks").unwrap(), 2);
    s.store_refusal("drinks", 1, "identity_point: row 0")
        .unwrap();
    drop(s);
    let s = AgreementStore::open(dir.path(), layouts()).unwrap();
    assert_eq!(s.progress("snacks").unwrap().commitment, Some([5; 32]));
    assert_eq!(s.progress("drinks").unwrap().commitment, None);
    let d = s.progress("drinks").unwrap();
    assert_eq!(d.proof_failures, 2);
    assert_eq!(d.batches[&0].state, BatchState::Pending);
    assert_eq!(
        d.batches[&1].state,
        BatchState::Refused("identity_point: row 0".into())
    );
    assert!(!d.tokens_complete());
}

#[test]
fn erasure_reaches_pending_rows_tokenized_rows_and_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    s.store_pending("drinks", 0, &batch("drinks", &[1, 2], 1))
        .unwrap();
    s.store_pending("snacks", 0, &batch("snacks", &[11, 12], 2))
        .unwrap();
    // Erased while pending: the attribute goes now, the row when its token arrives.
    assert_eq!(
        s.erase("drinks", &HashSet::from([[2u8; 16]])).unwrap(),
        None
    );
    assert_eq!(
        s.progress("drinks").unwrap().erased_pending,
        HashSet::from([[2u8; 16]])
    );
    assert!(!s.known_handles("drinks").unwrap().contains(&[2u8; 16]));
    s.store_tokens("drinks", 0, &[[200u8; 32], [201; 32]].concat())
        .unwrap();
    s.store_tokens("snacks", 0, &[[200u8; 32], [201; 32]].concat())
        .unwrap();
    let (snapshot, _) = sealed(&s);
    assert_eq!(
        handles(&snapshot, "drinks_handle"),
        vec![1],
        "row 2 is gone"
    );
    s.write_seal_info(&SealInfo {
        sealed_at: "now".into(),
        withheld: Vec::new(),
    })
    .unwrap();
    // Erased after sealing: the snapshot is rewritten without the row.
    let new = s
        .erase("snacks", &HashSet::from([[11u8; 16]]))
        .unwrap()
        .expect("a sealed store returns its new snapshot");
    assert_eq!(new.num_rows(), 0);
    drop(s);
    let s = AgreementStore::open(dir.path(), layouts()).unwrap();
    assert_eq!(s.read_snapshot().unwrap().num_rows(), 0);
    assert_eq!(
        s.known_handles("snacks").unwrap(),
        HashSet::from([[12u8; 16]])
    );
}

#[test]
fn a_damaged_directory_is_an_error_not_an_empty_store() {
    // A handle file that cannot be read.
    let dir = tempfile::tempdir().unwrap();
    drop(AgreementStore::open(dir.path(), layouts()).unwrap());
    std::fs::create_dir(dir.path().join("parties/drinks/erased.bin")).unwrap();
    assert!(AgreementStore::open(dir.path(), layouts()).is_err());
    // A directory of point tags that cannot be listed.
    let dir = tempfile::tempdir().unwrap();
    drop(AgreementStore::open(dir.path(), layouts()).unwrap());
    std::fs::write(dir.path().join("parties/drinks/seen"), b"not a directory").unwrap();
    assert!(AgreementStore::open(dir.path(), layouts()).is_err());
}

#[test]
fn open_removes_what_an_interrupted_write_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    s.store_pending("drinks", 0, &batch("drinks", &[1], 1))
        .unwrap();
    drop(s);
    let pending = dir.path().join("parties/drinks/pending");
    let temp = pending.join(".0000000001.parquet.tmp-123");
    std::fs::write(&temp, b"half a file").unwrap();
    let s = AgreementStore::open(dir.path(), layouts()).unwrap();
    assert!(!temp.exists(), "the temp file is removed");
    assert!(
        pending.join(batch_file(0)).exists(),
        "the stored batch stays"
    );
    assert_eq!(s.progress("drinks").unwrap().batches.len(), 1);
}

/// A party's layout as plain data: name, columns, upload cap.
type Layout = (String, Vec<(String, Role)>, u64);

#[test]
fn the_layout_follows_the_manifest() {
    let text = crate::room::revocation_tests::agreement_text();
    let manifest = accord_agreement::Manifest::parse(&text).unwrap();
    let layouts = PartyColumns::from_manifest(&manifest);
    let summary: Vec<Layout> = layouts
        .into_iter()
        .map(|p| (p.party, p.columns, p.max_rows))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "drinks".to_owned(),
                vec![("tier".to_owned(), Role::Dimension)],
                100
            ),
            (
                "snacks".to_owned(),
                vec![(
                    "spend".to_owned(),
                    Role::Metric {
                        min: 0.0,
                        max: 10.0
                    }
                )],
                100
            ),
        ]
    );
}

#[test]
fn workers_share_one_upload_that_survives_a_restart_and_arrives_in_any_order() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    let (ttl, now) = (Duration::from_secs(60), Instant::now());
    let digest = [7u8; 32];
    let g = s.lease("drinks", 3, &digest, 2, ttl, now).unwrap();
    assert_eq!(g.batch_numbers, vec![0, 1]);
    // Another input, batch size or state: refused, naming the shared upload.
    for (total, other) in [(3, [8u8; 32]), (4, digest)] {
        let e = s.lease("drinks", total, &other, 2, ttl, now).unwrap_err();
        assert!(
            matches!(&e, RoomError::FailedPrecondition(m) if m.contains("is not the one drinks's workers are uploading")),
            "{e}"
        );
    }
    assert!(matches!(
        s.lease("drinks", 3, &[7u8; 31], 2, ttl, now),
        Err(RoomError::InvalidArgument(_))
    ));
    assert!(matches!(
        s.lease("drinks", 7, &digest, 2, ttl, now),
        Err(RoomError::InvalidArgument(m)) if m.contains("1 to 6 (max_rows of drinks")
    ));
    // Batch 1 arrives before batch 0, and still after a restart.
    s.store_pending("drinks", 1, &batch("drinks", &[2], 2))
        .unwrap();
    drop(s);
    let mut s = AgreementStore::open(dir.path(), layouts()).unwrap();
    s.store_pending("drinks", 2, &batch("drinks", &[3], 3))
        .unwrap();
    let e = s
        .store_pending("drinks", 3, &batch("drinks", &[4], 4))
        .unwrap_err();
    assert!(
        e.to_string().contains("beyond its upload of 3 batches"),
        "{e}"
    );
    // The leases were in memory: batch 0 is leased again, 1 and 2 are stored.
    let g = s.lease("drinks", 3, &digest, 8, ttl, now).unwrap();
    assert_eq!(g.batch_numbers, vec![0]);
    assert_eq!(g.stored, 2);
    s.store_pending("drinks", 0, &batch("drinks", &[1], 1))
        .unwrap();
    assert!(
        s.lease("drinks", 3, &digest, 8, ttl, now)
            .unwrap()
            .all_stored
    );
    // A party that uploaded without workers cannot switch to workers halfway.
    s.store_pending("snacks", 0, &batch("snacks", &[11], 5))
        .unwrap();
    let e = s.lease("snacks", 2, &digest, 2, ttl, now).unwrap_err();
    assert!(
        e.to_string().contains("from an upload without workers"),
        "{e}"
    );
}

/// Seals `s` the way the room does: the join writes the snapshot, which is then read back.
fn sealed(s: &AgreementStore) -> (RecordBatch, u64) {
    let (matched, duplicates) = s.build_snapshot().unwrap();
    let snapshot = s.read_snapshot().unwrap();
    assert_eq!(snapshot.num_rows() as u64, matched);
    (snapshot, duplicates)
}
