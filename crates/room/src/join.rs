//! The sealing join as pure functions over Arrow batches: each party's tokens made distinct,
//! then the matched rows of both parties side by side, without the tokens. The store reads
//! the rows from disk and writes the result; nothing here touches a file.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema};

use crate::columns::{column_fixed, take_rows, to32};
use crate::error::Result;
use crate::store::PartyColumns;

/// `rows` (a party's tokenized rows: `token`, `handle`, attributes) with every token once:
/// the first row holding a token, in row order, wins. Returns the rows kept and how many
/// were dropped.
pub(crate) fn distinct_tokens(rows: &RecordBatch) -> Result<(RecordBatch, u64)> {
    let tokens = column_fixed(rows, "token")?;
    let mut seen = HashSet::with_capacity(tokens.len());
    let keep: Vec<u32> = (0..tokens.len())
        .filter(|&i| seen.insert(to32(tokens.value(i))))
        .map(|i| i as u32)
        .collect();
    let dropped = (rows.num_rows() - keep.len()) as u64;
    Ok((take_rows(rows, &keep)?, dropped))
}

/// The matched-rows snapshot of two parties' rows (each with distinct tokens): one row per
/// row of `b` whose token `a` also holds, in `b`'s row order, with the columns
/// `<a>_handle`, `<b>_handle`, then `a`'s attributes and `b`'s, each named `<party>_<column>`.
/// No token leaves the join.
pub(crate) fn join(
    a: &PartyColumns,
    rows_a: &RecordBatch,
    b: &PartyColumns,
    rows_b: &RecordBatch,
) -> Result<RecordBatch> {
    let tok_a = column_fixed(rows_a, "token")?;
    let mut index: HashMap<[u8; 32], u32> = HashMap::with_capacity(tok_a.len());
    for i in 0..tok_a.len() {
        index.entry(to32(tok_a.value(i))).or_insert(i as u32);
    }
    let tok_b = column_fixed(rows_b, "token")?;
    let mut take_a = Vec::new();
    let mut take_b = Vec::new();
    for j in 0..tok_b.len() {
        if let Some(&i) = index.get(&to32(tok_b.value(j))) {
            take_a.push(i);
            take_b.push(j as u32);
        }
    }
    let ra = take_rows(rows_a, &take_a)?;
    let rb = take_rows(rows_b, &take_b)?;
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (party, rows) in [(a, &ra), (b, &rb)] {
        let handle = rows.column(rows.schema().index_of("handle")?).clone();
        fields.push(Field::new(
            format!("{}_handle", party.party),
            handle.data_type().clone(),
            false,
        ));
        columns.push(handle);
    }
    for (party, rows) in [(a, &ra), (b, &rb)] {
        for (f, (name, _)) in party.attribute_fields(true).into_iter().zip(&party.columns) {
            columns.push(rows.column(rows.schema().index_of(name)?).clone());
            fields.push(f);
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columns::fixed_array;
    use accord_engine::Role;
    use arrow::array::{FixedSizeBinaryArray, Float64Array, StringArray};
    use arrow::datatypes::DataType;

    /// The type of a token column.
    const TOKEN: DataType = DataType::FixedSizeBinary(32);

    fn token(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn handle(n: u8) -> [u8; 16] {
        [n; 16]
    }

    fn rows(tokens: &[u8], handles: &[u8], attr: ArrayRef, attr_name: &str) -> RecordBatch {
        let t: Vec<u8> = tokens.iter().flat_map(|&n| token(n)).collect();
        let h: Vec<u8> = handles.iter().flat_map(|&n| handle(n)).collect();
        let schema = Schema::new(vec![
            Field::new("token", TOKEN, false),
            Field::new("handle", DataType::FixedSizeBinary(16), false),
            Field::new(attr_name, attr.data_type().clone(), true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                fixed_array(&t, 32).unwrap(),
                fixed_array(&h, 16).unwrap(),
                attr,
            ],
        )
        .unwrap()
    }

    fn handles_of(rb: &RecordBatch, column: &str) -> Vec<u8> {
        let c = rb
            .column(rb.schema().index_of(column).unwrap())
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>()
            .unwrap();
        (0..c.len()).map(|i| c.value(i)[0]).collect()
    }

    fn drinks() -> PartyColumns {
        PartyColumns {
            party: "drinks".into(),
            columns: vec![("tier".into(), Role::Dimension)],
            max_rows: 100,
        }
    }

    fn snacks() -> PartyColumns {
        PartyColumns {
            party: "snacks".into(),
            columns: vec![(
                "spend".into(),
                Role::Metric {
                    min: 0.0,
                    max: 10.0,
                },
            )],
            max_rows: 100,
        }
    }

    #[test]
    fn a_repeated_token_is_kept_once_the_first_wins() {
        let tier = Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e"]));
        let r = rows(&[1, 2, 1, 3, 2], &[10, 20, 30, 40, 50], tier, "tier");
        let (kept, dropped) = distinct_tokens(&r).unwrap();
        assert_eq!(dropped, 2);
        assert_eq!(handles_of(&kept, "handle"), vec![10, 20, 40]);
        // Without repeats nothing changes.
        let (same, none) = distinct_tokens(&kept).unwrap();
        assert_eq!(none, 0);
        assert_eq!(same, kept);
    }

    #[test]
    fn the_join_keeps_only_matched_rows_pairs_them_and_drops_the_tokens() {
        let a = rows(
            &[1, 2, 3, 4],
            &[11, 12, 13, 14],
            Arc::new(StringArray::from(vec!["gold", "silver", "bronze", "tin"])),
            "tier",
        );
        let b = rows(
            &[9, 3, 1, 7],
            &[21, 22, 23, 24],
            Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])),
            "spend",
        );
        let s = join(&drinks(), &a, &snacks(), &b).unwrap();
        let names: Vec<String> = s
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            vec![
                "drinks_handle",
                "snacks_handle",
                "drinks_tier",
                "snacks_spend"
            ]
        );
        // In b's row order: token 3 (b row 1) then token 1 (b row 2).
        assert_eq!(handles_of(&s, "drinks_handle"), vec![13, 11]);
        assert_eq!(handles_of(&s, "snacks_handle"), vec![22, 23]);
        let tier = s.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            tier.iter().collect::<Vec<_>>(),
            vec![Some("bronze"), Some("gold")]
        );
        let spend = s.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(spend.values().to_vec(), vec![2.0, 3.0]);
        assert!(
            s.schema().fields().iter().all(|f| f.data_type() != &TOKEN),
            "a token column left the join"
        );
        // Nothing in common: no rows, same columns.
        let none = rows(
            &[5],
            &[25],
            Arc::new(Float64Array::from(vec![5.0])),
            "spend",
        );
        let empty = join(&drinks(), &a, &snacks(), &none).unwrap();
        assert_eq!(empty.num_rows(), 0);
        assert_eq!(empty.num_columns(), 4);
    }
}
