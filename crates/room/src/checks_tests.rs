//! Each upload check attacked on its own, at its boundaries (the end-to-end suites reach
//! them only through a whole upload).

use super::*;
use crate::store::{BatchInfo, BatchState, Completion};
use arrow::array::Array;

fn layout() -> PartyColumns {
    PartyColumns {
        party: "drinks".into(),
        columns: vec![
            ("tier".into(), Role::Dimension),
            (
                "spend".into(),
                Role::Metric {
                    min: 0.0,
                    max: 10.0,
                },
            ),
        ],
        max_rows: 10,
    }
}

fn text<'a>(name: &'a str, values: &'a [String], present: &'a [bool]) -> Column<'a> {
    Column {
        name,
        values: Values::Text { values, present },
    }
}

fn number<'a>(name: &'a str, values: &'a [f64], present: &'a [bool]) -> Column<'a> {
    Column {
        name,
        values: Values::Number { values, present },
    }
}

fn err(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(RoomError::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn a_batch_holds_one_to_the_maximum_rows_with_one_handle_each() {
    let points = |n: usize| vec![7u8; n * POINT_LEN];
    let handles = |n: usize| vec![1u8; n * HANDLE_LEN];
    assert_eq!(batch_rows(3, &points(1), &handles(1)).unwrap(), 1);
    assert_eq!(
        batch_rows(3, &points(MAX_BATCH_ROWS), &handles(MAX_BATCH_ROWS)).unwrap(),
        MAX_BATCH_ROWS
    );
    let m = err(batch_rows(3, &[], &[]));
    assert!(m.contains("batch 3 has 0 rows"), "{m}");
    let m = err(batch_rows(
        3,
        &points(MAX_BATCH_ROWS + 1),
        &handles(MAX_BATCH_ROWS + 1),
    ));
    assert!(
        m.contains(&format!("has {} rows", MAX_BATCH_ROWS + 1)),
        "{m}"
    );
    // A partial point, a missing handle, an extra handle, a partial handle.
    let m = err(batch_rows(3, &points(2)[1..], &handles(2)));
    assert!(m.starts_with("batch 3: ") && m.contains("points"), "{m}");
    for h in [handles(1), handles(3), handles(2)[1..].to_vec()] {
        let m = err(batch_rows(3, &points(2), &h));
        assert!(m.starts_with("batch 3: ") && m.contains("handles"), "{m}");
    }
}

#[test]
fn the_salt_is_exactly_32_bytes() {
    assert_eq!(salt(1, &[9; 32]).unwrap(), [9; 32]);
    for bad in [&[9u8; 31][..], &[9; 33], &[]] {
        let m = err(salt(1, bad));
        assert!(
            m.starts_with("batch 1: ") && m.contains("32-byte salt"),
            "{m}"
        );
    }
}

#[test]
fn the_batch_digest_covers_number_handles_points_and_columns_in_order() {
    let d = batch_digest(5, b"hh", b"pp", b"cc");
    // Known answer, computed independently: SHA-256(be64(5) ‖ "hh" ‖ "pp" ‖ "cc").
    let mut input = 5u64.to_be_bytes().to_vec();
    input.extend_from_slice(b"hhppcc");
    assert_eq!(d, <[u8; 32]>::from(Sha256::digest(&input)));
    assert_ne!(d, batch_digest(6, b"hh", b"pp", b"cc"));
    assert_ne!(d, batch_digest(5, b"hx", b"pp", b"cc"));
    assert_ne!(d, batch_digest(5, b"hh", b"px", b"cc"));
    assert_ne!(d, batch_digest(5, b"hh", b"pp", b"cx"));
}

#[test]
fn agreed_columns_become_arrow_arrays_in_manifest_order() {
    let tiers = vec!["gold".to_owned(), "x".repeat(MAX_TEXT_VALUE_LEN)];
    let spend = [0.0, 10.0];
    // Sent in the other order, the metric's bounds reached exactly, the second tier absent.
    let cols = [
        number("spend", &spend, &[]),
        text("tier", &tiers, &[true, false]),
    ];
    let out = attributes(&layout(), &cols, 2, 4).unwrap();
    assert_eq!(out.len(), 2);
    let tier = out[0].as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(tier.iter().collect::<Vec<_>>(), vec![Some("gold"), None]);
    let spend = out[1].as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(
        spend.iter().collect::<Vec<_>>(),
        vec![Some(0.0), Some(10.0)]
    );
    // An absent metric value is not bounds-checked.
    let nan = [f64::NAN, 3.0];
    let cols = [
        text("tier", &tiers, &[]),
        number("spend", &nan, &[false, true]),
    ];
    let out = attributes(&layout(), &cols, 2, 4).unwrap();
    let spend = out[1].as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(spend.iter().collect::<Vec<_>>(), vec![None, Some(3.0)]);
}

#[test]
fn every_malformed_column_is_refused_with_its_batch_and_name() {
    let tiers = vec!["gold".to_owned(), "silver".to_owned()];
    let spend = [1.0, 2.0];
    let ok_text = text("tier", &tiers, &[]);
    let ok_number = number("spend", &spend, &[]);
    let long = vec!["gold".to_owned(), "x".repeat(MAX_TEXT_VALUE_LEN + 1)];
    let one = vec!["gold".to_owned()];
    let three = [1.0, 2.0, 3.0];
    let cases: Vec<(Vec<Column<'_>>, &str)> = vec![
        (
            vec![ok_text, ok_number, ok_text],
            "column \"tier\" appears twice",
        ),
        (
            vec![ok_text, ok_number, number("age", &spend, &[])],
            "column \"age\" is not one drinks contributes under this agreement (agreed: tier, spend)",
        ),
        (vec![ok_number], "agreed column \"tier\" is missing"),
        (vec![ok_text], "agreed column \"spend\" is missing"),
        (
            vec![text("tier", &one, &[]), ok_number],
            "column \"tier\" has 1 values for 2 rows",
        ),
        (
            vec![ok_text, number("spend", &three, &[])],
            "column \"spend\" has 3 values for 2 rows",
        ),
        (
            vec![text("tier", &tiers, &[true]), ok_number],
            "column \"tier\" has 1 presence flags for 2 rows",
        ),
        (
            vec![ok_text, number("spend", &spend, &[true, true, true])],
            "column \"spend\" has 3 presence flags for 2 rows",
        ),
        (
            vec![text("tier", &long, &[]), ok_number],
            "has a value of 257 bytes; dimension values are at most 256 bytes",
        ),
        (
            vec![number("tier", &spend, &[]), ok_number],
            "column \"tier\" is a dimension: send text values",
        ),
        (
            vec![ok_text, text("spend", &tiers, &[])],
            "column \"spend\" is a metric: send number values",
        ),
        (
            vec![
                ok_text,
                Column {
                    name: "spend",
                    values: Values::Missing,
                },
            ],
            "column \"spend\" is a metric: send number values",
        ),
        (
            vec![
                Column {
                    name: "tier",
                    values: Values::Missing,
                },
                ok_number,
            ],
            "column \"tier\" is a dimension: send text values",
        ),
    ];
    for (cols, want) in cases {
        let m = err(attributes(&layout(), &cols, 2, 9));
        assert!(m.starts_with("batch 9: "), "{m}");
        assert!(m.contains(want), "wanted {want:?} in {m:?}");
    }
    for bad in [-0.5, 10.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let v = [1.0, bad];
        let m = err(attributes(
            &layout(),
            &[ok_text, number("spend", &v, &[])],
            2,
            9,
        ));
        assert!(
            m.contains("outside its agreed bounds [0, 10]"),
            "{bad}: {m}"
        );
    }
}

fn progress(batches: &[(u64, [u8; 32])], complete: Option<(u64, u64)>) -> PartyProgress {
    let mut p = PartyProgress::default();
    for (n, digest) in batches {
        p.batches.insert(
            *n,
            BatchInfo {
                rows: 3,
                state: BatchState::Pending,
                digest: *digest,
            },
        );
    }
    p.complete = complete.map(|(batches, rows)| Completion {
        batches,
        rows,
        signature: String::new(),
    });
    p
}

#[test]
fn a_batch_is_admitted_in_order_once_within_the_cap() {
    let p = progress(&[(0, [1; 32]), (1, [2; 32])], None); // 6 rows of 10
    assert_eq!(
        admit_batch(&p, "d", 2, &[3; 32], 4, 10, None).unwrap(),
        Admission::New
    );
    assert_eq!(
        admit_batch(&p, "d", 1, &[2; 32], 3, 10, None).unwrap(),
        Admission::Retry
    );
    assert!(matches!(
        admit_batch(&p, "d", 1, &[9; 32], 3, 10, None),
        Err(RoomError::AlreadyExists(m)) if m.contains("batch 1 of d is already stored with different content")
    ));
    for out_of_order in [3, 5] {
        let m = err(admit_batch(&p, "d", out_of_order, &[3; 32], 1, 10, None));
        assert!(m.contains("the room expects batch 2 next"), "{m}");
    }
    assert!(matches!(
        admit_batch(&p, "d", 2, &[3; 32], 5, 10, None),
        Err(RoomError::FailedPrecondition(m)) if m.contains("past its agreed upload cap of 10 rows")
    ));
    let done = progress(&[(0, [1; 32])], Some((1, 3)));
    assert!(matches!(
        admit_batch(&done, "d", 1, &[3; 32], 1, 10, None),
        Err(RoomError::FailedPrecondition(m)) if m.contains("already completed its upload")
    ));
    // A retry is still recognized after completion.
    assert_eq!(
        admit_batch(&done, "d", 0, &[1; 32], 3, 10, None).unwrap(),
        Admission::Retry
    );
}

#[test]
fn workers_with_leases_may_send_batches_out_of_order_but_never_beyond_the_upload() {
    let p = progress(&[(0, [1; 32]), (3, [2; 32])], None); // 6 rows of 10, batches 1 and 2 leased
    assert_eq!(
        admit_batch(&p, "d", 2, &[3; 32], 1, 10, Some(5)).unwrap(),
        Admission::New
    );
    assert_eq!(
        admit_batch(&p, "d", 3, &[2; 32], 3, 10, Some(5)).unwrap(),
        Admission::Retry,
        "the same batch from a second worker is one batch"
    );
    let m = err(admit_batch(&p, "d", 5, &[3; 32], 1, 10, Some(5)));
    assert!(m.contains("beyond its upload of 5 batches"), "{m}");
    assert!(matches!(
        admit_batch(&p, "d", 4, &[3; 32], 5, 10, Some(5)),
        Err(RoomError::FailedPrecondition(m)) if m.contains("past its agreed upload cap of 10 rows")
    ));
    // Without leases the order rule stands.
    let m = err(admit_batch(&p, "d", 4, &[3; 32], 1, 10, None));
    assert!(m.contains("the room expects batch 2 next"), "{m}");
    // A completion must cover 0..batches: two batches held, but not batches 0 and 1.
    assert!(matches!(
        admit_completion(&p, "d", 2, 6),
        Err(RoomError::FailedPrecondition(m)) if m.contains("says it uploaded 2 batches")
    ));
}

#[test]
fn a_completion_states_exactly_what_the_room_holds_once() {
    let p = progress(&[(0, [1; 32]), (1, [2; 32])], None);
    assert_eq!(admit_completion(&p, "d", 2, 6).unwrap(), Admission::New);
    for (batches, rows) in [(1, 6), (3, 6), (2, 5), (2, 7)] {
        assert!(matches!(
            admit_completion(&p, "d", batches, rows),
            Err(RoomError::FailedPrecondition(m))
                if m.contains(&format!("says it uploaded {batches} batches and {rows} rows, but the room holds 2 batches and 6 rows"))
        ));
    }
    let done = progress(&[(0, [1; 32]), (1, [2; 32])], Some((2, 6)));
    assert_eq!(
        admit_completion(&done, "d", 2, 6).unwrap(),
        Admission::Retry
    );
    for (batches, rows) in [(2, 5), (1, 6)] {
        assert!(matches!(
            admit_completion(&done, "d", batches, rows),
            Err(RoomError::AlreadyExists(m)) if m.contains("already completed its upload with other totals")
        ));
    }
}

#[test]
fn an_erasure_names_one_to_the_maximum_whole_handles() {
    let mut handles = [1u8; 16].to_vec();
    handles.extend([2u8; 16]);
    handles.extend([1u8; 16]);
    let set = erase_handles(&handles).unwrap();
    assert_eq!(set, HashSet::from([[1u8; 16], [2u8; 16]]));
    let max = vec![0u8; MAX_ERASE_HANDLES * HANDLE_LEN];
    assert_eq!(erase_handles(&max).unwrap().len(), 1);
    let m = err(erase_handles(&[]));
    assert!(m.contains("1 to 100000 handles, this one 0"), "{m}");
    let m = err(erase_handles(&vec![
        0u8;
        (MAX_ERASE_HANDLES + 1) * HANDLE_LEN
    ]));
    assert!(m.contains("this one 100001"), "{m}");
    let m = err(erase_handles(&[0u8; 17]));
    assert!(m.contains("handles"), "{m}");
}
