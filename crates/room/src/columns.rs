//! Small pure helpers over Arrow columns that the store, the upload checks and the sealing
//! join share: fixed-size binary columns of handles, points and tokens, row selection, and
//! clearing a customer's attributes.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeBinaryArray, FixedSizeBinaryBuilder, RecordBatch,
    UInt32Array,
};
use arrow::datatypes::DataType;

use crate::error::{Result, RoomError};

pub(crate) fn to16(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    a
}

#[cfg(test)]
pub(crate) fn to32(b: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[..32]);
    a
}

/// The batch with every text and number column (the customer's attributes) set to null in
/// `rows`; the fixed-size columns (handles, points) are kept.
pub(crate) fn null_attributes(rb: &RecordBatch, rows: &[usize]) -> Result<RecordBatch> {
    let mut mask = vec![false; rb.num_rows()];
    for &r in rows {
        if let Some(m) = mask.get_mut(r) {
            *m = true;
        }
    }
    let mask = BooleanArray::from(mask);
    let columns = rb
        .schema()
        .fields()
        .iter()
        .zip(rb.columns())
        .map(|(f, col)| match f.data_type() {
            DataType::Utf8 | DataType::Float64 => arrow::compute::nullif(col, &mask),
            _ => Ok(col.clone()),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(rb.schema(), columns)?)
}

/// A fixed-size binary column from concatenated items.
pub(crate) fn fixed_array(bytes: &[u8], size: i32) -> Result<ArrayRef> {
    let n = bytes.len() / size as usize;
    let mut b = FixedSizeBinaryBuilder::with_capacity(n, size);
    for chunk in bytes.chunks_exact(size as usize) {
        b.append_value(chunk)?;
    }
    Ok(Arc::new(b.finish()))
}

pub(crate) fn column_fixed<'a>(
    rb: &'a RecordBatch,
    name: &str,
) -> Result<&'a FixedSizeBinaryArray> {
    let idx = rb.schema().index_of(name)?;
    rb.column(idx)
        .as_any()
        .downcast_ref::<FixedSizeBinaryArray>()
        .ok_or_else(|| RoomError::Internal(format!("column {name} has the wrong type")))
}

pub(crate) fn take_rows(rb: &RecordBatch, rows: &[u32]) -> Result<RecordBatch> {
    let idx = UInt32Array::from(rows.to_vec());
    Ok(arrow::compute::take_record_batch(rb, &idx)?)
}

pub(crate) fn concat(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| RoomError::Internal("a parquet file with no record batch".into()))?;
    Ok(arrow::compute::concat_batches(&schema, batches)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn null_attributes_clears_only_the_named_rows_attributes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("handle", DataType::FixedSizeBinary(2), false),
            Field::new("tier", DataType::Utf8, true),
            Field::new("spend", DataType::Float64, true),
        ]));
        let rb = RecordBatch::try_new(
            schema,
            vec![
                fixed_array(&[1, 1, 2, 2, 3, 3], 2).unwrap(),
                Arc::new(StringArray::from(vec![Some("gold"), None, Some("silver")])),
                Arc::new(Float64Array::from(vec![Some(1.0), Some(2.0), Some(3.0)])),
            ],
        )
        .unwrap();
        let out = null_attributes(&rb, &[0, 2]).unwrap();
        assert_eq!(out.schema(), rb.schema());
        assert_eq!(
            out.column(0).as_ref(),
            rb.column(0).as_ref(),
            "handles kept"
        );
        let tier = out
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(tier.iter().collect::<Vec<_>>(), vec![None, None, None]);
        let spend = out
            .column(2)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(
            spend.iter().collect::<Vec<_>>(),
            vec![None, Some(2.0), None]
        );
        // An out-of-range row number changes nothing rather than failing the erasure.
        let same = null_attributes(&rb, &[7]).unwrap();
        assert_eq!(same, rb);
    }
}
