//! The store's file formats: Parquet batches with their key-value metadata, handle files,
//! point-tag files, batch file names, and the clean-up of interrupted writes.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use accord_psi::HANDLE_LEN;
use arrow::array::{Array, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use sha2::{Digest as _, Sha256};

use super::{BatchState, DIGEST_KEY, PartyProgress, SEEN_DIR, UPLOADED_ROWS_KEY};
use crate::columns::{column_fixed, to16};
use crate::error::{Result, RoomError};

/// Bytes of a point tag (the `seen/` files hold them concatenated).
pub(super) const TAG_LEN: usize = 16;

/// The tag kept for an uploaded point: the first 16 bytes of SHA-256(point). Equal points
/// have equal tags (encodings are canonical), so no repeat is missed; two different points
/// sharing a tag (probability about 2⁻¹²⁸ per pair, and only the owner chooses its points)
/// would refuse the owner's own batch, nothing else. Hashing keeps no part of the point.
pub(super) fn point_tag(point: &[u8]) -> [u8; TAG_LEN] {
    to16(&Sha256::digest(point))
}

pub(super) fn batch_file(n: u64) -> String {
    format!("{n:010}.parquet")
}

pub(super) fn seen_file(n: u64) -> String {
    format!("{n:010}.bin")
}

/// The point tags of every stored batch of a party: its `seen/` files; for a pending batch
/// stored by a build without them, its points (a tokenized batch stored by such a build has
/// no points left and is not covered; sealing still drops repeated tokens). Tag files of
/// batches that are not stored (a crash between the two writes of
/// [`AgreementStore::store_pending`]) are ignored.
pub(super) fn load_point_tags(
    pdir: &Path,
    progress: &PartyProgress,
) -> Result<HashSet<[u8; TAG_LEN]>> {
    let mut tags = HashSet::with_capacity(progress.rows() as usize);
    let files: BTreeMap<u64, PathBuf> = list(&pdir.join(SEEN_DIR), ".bin")?.into_iter().collect();
    for (n, info) in &progress.batches {
        if let Some(path) = files.get(n) {
            let bytes = fs::read(path).map_err(|e| RoomError::io("read", path, e))?;
            tags.extend(bytes.chunks_exact(TAG_LEN).map(to16));
        } else if info.state == BatchState::Pending {
            let path = pdir.join("pending").join(batch_file(*n));
            for rb in read_parquet(&path)?.0 {
                let points = column_fixed(&rb, "point")?;
                tags.extend((0..points.len()).map(|i| point_tag(points.value(i))));
            }
        }
    }
    Ok(tags)
}

pub(super) fn parse_batch_file(name: &str, ext: &str) -> Option<u64> {
    name.strip_suffix(ext)?.parse().ok()
}

pub(super) fn parquet_bytes(rb: &RecordBatch, meta: Vec<KeyValue>) -> Result<Vec<u8>> {
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_key_value_metadata(if meta.is_empty() { None } else { Some(meta) })
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, rb.schema(), Some(props))?;
    w.write(rb)?;
    w.close()?;
    Ok(out)
}

pub(super) fn read_parquet(path: &Path) -> Result<(Vec<RecordBatch>, BTreeMap<String, String>)> {
    let file = fs::File::open(path).map_err(|e| RoomError::io("open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let meta = kv(builder.metadata().file_metadata().key_value_metadata());
    let schema = builder.schema().clone();
    let mut batches = Vec::new();
    for b in builder.build()? {
        batches.push(b?);
    }
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(schema));
    }
    Ok((batches, meta))
}

/// Only the named columns of a Parquet file (no empty batch is added for an empty file).
pub(super) fn read_parquet_columns(path: &Path, names: &[&str]) -> Result<Vec<RecordBatch>> {
    let file = fs::File::open(path).map_err(|e| RoomError::io("open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), names.iter().copied());
    let mut batches = Vec::new();
    for b in builder.with_projection(mask).build()? {
        batches.push(b?);
    }
    Ok(batches)
}

pub(super) fn kv(meta: Option<&Vec<KeyValue>>) -> BTreeMap<String, String> {
    meta.map(|m| {
        m.iter()
            .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
            .collect()
    })
    .unwrap_or_default()
}

/// Reads a file of concatenated 16-byte handles (absent: none).
pub(super) fn read_handles(path: &Path) -> Result<HashSet<[u8; HANDLE_LEN]>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(RoomError::io("read", path, e)),
    };
    Ok(bytes.chunks_exact(HANDLE_LEN).map(to16).collect())
}

/// Writes a set of handles atomically, sorted so the file does not depend on hashing.
pub(super) fn write_handles(path: &Path, handles: &HashSet<[u8; HANDLE_LEN]>) -> Result<()> {
    let mut sorted: Vec<&[u8; HANDLE_LEN]> = handles.iter().collect();
    sorted.sort();
    let bytes: Vec<u8> = sorted.into_iter().flatten().copied().collect();
    accord_fs::write_atomic(path, &bytes)?;
    Ok(())
}

pub(super) fn read_meta(path: &Path) -> Result<(u64, [u8; 32])> {
    let file = fs::File::open(path).map_err(|e| RoomError::io("open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let md = builder.metadata().file_metadata();
    let meta = kv(md.key_value_metadata());
    // After sealing a batch file keeps only its matched rows; the upload's size stays here.
    let rows = match meta.get(UPLOADED_ROWS_KEY) {
        Some(n) => n.parse().map_err(|_| {
            RoomError::Internal(format!("{}: bad {UPLOADED_ROWS_KEY}", path.display()))
        })?,
        None => md.num_rows() as u64,
    };
    let digest = meta
        .get(DIGEST_KEY)
        .and_then(|d| hex::decode(d).ok())
        .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
        .ok_or_else(|| RoomError::Internal(format!("{} has no batch digest", path.display())))?;
    Ok((rows, digest))
}

pub(super) fn list(dir: &Path, ext: &str) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(RoomError::io("list", dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| RoomError::io("list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = parse_batch_file(&name, ext) {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes temp files left by an interrupted atomic write anywhere under `dir`.
pub(super) fn remove_temp_files(dir: &Path) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(_) => return Ok(()),
    };
    for entry in rd {
        let entry = entry.map_err(|e| RoomError::io("list", dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            remove_temp_files(&path)?;
        } else if entry.file_name().to_string_lossy().contains(".tmp-") {
            fs::remove_file(&path).map_err(|e| RoomError::io("remove", &path, e))?;
        }
    }
    Ok(())
}
