//! The upload's bounded-memory pipeline from the customer file to batches (DESIGN §3, item 3):
//! read → prepare → shuffle → batches, never holding the file's rows in memory.
//!
//! 1. [`prepare`] streams the file through the input rules ([`crate::input::read_each`]),
//!    holds back customers this party erased, and spills the remaining rows in file order
//!    to a scratch file.
//! 2. [`shuffle`] spreads them over B = ⌈n / bucket_rows⌉ bucket files by a keyed PRF of the
//!    normalized identifier (key derived from the party's secret shuffle seed), then reads
//!    one bucket at a time into memory, sorts it by identifier (forgetting the file order),
//!    shuffles it with an RNG seeded from (shuffle seed, bucket number), computes the
//!    handles and appends it to one file in upload order, noting where every batch starts.
//! 3. [`Shuffled::batches_from`] reads batches back lazily from any batch number (a resumed
//!    upload skips what the room stored).
//!
//! The order is therefore a secret function of the *set* of rows and the party's seed: two
//! files with the same rows in another order, or a resumed run, give byte-identical batches,
//! and a row's position says nothing about its place in the file (nor, without the seed,
//! about its identifier). Memory: about `bucket_rows` rows, one record batch of the reader,
//! up to `MAX_OPEN_BUCKETS` write buffers of 64 KiB (16 MiB) while spreading, and per
//! customer the duplicate rule's 16-byte hash (while reading) and the 16-byte handle the
//! state records (afterwards).
//!
//! Scratch files hold what the input file holds (normalized identifiers and values): they
//! live in the agreement's state directory (`upload.scratch/`, mode 0700, files 0600),
//! never leave the machine, and are removed when the upload ends, whether it succeeds or
//! fails. Only a crash (kill -9, power loss) leaves them, until the next upload wipes them;
//! their names follow the pattern of interrupted atomic writes, which backups skip.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use accord_psi::{HANDLE_LEN, IdentifierKind};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use sha2::Digest as _;

use crate::error::PartyError;
use crate::input::{self, InputOptions, InputReport, PreparedRow, Value};
use crate::rights::ErasureMemory;

/// Rows of one shuffle bucket, the unit held in memory: B = ⌈n / `BUCKET_ROWS`⌉ buckets, so a
/// bucket holds about this many rows (a few MiB) whatever n is.
pub const BUCKET_ROWS: usize = 65_536;

/// Bucket files written at once (each with its own write buffer): more buckets take more
/// passes over the spilled rows, keeping open files well under the usual limit of 1024.
const MAX_OPEN_BUCKETS: usize = 256;

/// The scratch directory's name inside the agreement's state directory.
pub const SCRATCH_DIR: &str = "upload.scratch";

/// The scratch files (`.NAME.tmp-…`, the pattern of an interrupted atomic write, so that a
/// backup taken after a crash never copies them): the rows in file order, and in upload order.
const INPUT_FILE: &str = ".input.tmp-rows";
const SHUFFLED_FILE: &str = ".shuffled.tmp-rows";

/// The upload's scratch directory: wiped when created, removed when dropped.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Creates `state_dir/upload.scratch` (mode 0700), removing what a crashed run left.
    pub fn create(state_dir: &Path) -> Result<Self, PartyError> {
        let dir = state_dir.join(SCRATCH_DIR);
        accord_fs::remove_dir_all_durable(&dir).map_err(|e| scratch_err(&dir, e))?;
        accord_fs::create_dir_all(&dir, accord_fs::Access::OwnerOnly)
            .map_err(|e| scratch_err(&dir, e))?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = accord_fs::remove_dir_all_durable(&self.dir) {
            tracing::warn!(error = %e, "could not remove the upload's scratch files; remove them by hand");
        }
    }
}

fn scratch_err(path: &Path, e: impl std::fmt::Display) -> PartyError {
    PartyError::State(format!(
        "{}: {e} (the upload's scratch files, about the size of the input, live in the party's state \
         directory: check its free space and permissions)",
        path.display()
    ))
}

/// The rows that survived the input rules and the erasure hold-back, spilled in file order.
#[derive(Debug)]
pub struct Spilled {
    path: PathBuf,
    rows: u64,
}

/// What [`prepare`] did.
#[derive(Debug)]
pub struct PreparedInput {
    /// The rows to upload, on disk in file order.
    pub spilled: Spilled,
    /// What each input rule did.
    pub report: InputReport,
    /// Rows held back because this party erased that customer before.
    pub held_back_erased: u64,
}

impl Spilled {
    /// Rows to upload.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

/// Streams `input` through the rules, holds back erased customers and spills the rest.
pub fn prepare(
    scratch: &Path,
    input: &Path,
    manifest: &accord_agreement::Manifest,
    party: &str,
    options: &InputOptions,
    memory: &ErasureMemory,
    kind: IdentifierKind,
) -> Result<PreparedInput, PartyError> {
    let path = scratch.join(INPUT_FILE);
    let mut out = create(&path)?;
    let mut rows = 0u64;
    let mut held_back_erased = 0u64;
    let report = input::read_each(input, manifest, party, options, &mut |row| {
        // A customer this party erased before (under any agreement) stays erased, even when
        // the export still says "consent: true"; only a recorded renewal lifts it (rights.rs).
        if memory.held_back(kind, &row.identifier).is_some() {
            held_back_erased += 1;
            return Ok(());
        }
        rows += 1;
        write_row(&mut out, &row).map_err(|e| scratch_err(&path, e))
    })?;
    out.flush().map_err(|e| scratch_err(&path, e))?;
    Ok(PreparedInput {
        spilled: Spilled { path, rows },
        report,
        held_back_erased,
    })
}

/// The rows in upload order, on disk, with their handles in memory.
#[derive(Debug)]
pub struct Shuffled {
    path: PathBuf,
    rows: u64,
    batch_rows: usize,
    /// Byte offset in `path` of each batch's first row.
    offsets: Vec<u64>,
    /// The rows' handles in upload order, concatenated.
    handles: Vec<u8>,
    /// Most rows held in memory at once (the largest bucket).
    peak_rows_in_memory: usize,
}

impl Shuffled {
    /// Rows in the upload.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Batches in the upload.
    pub fn batches(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// Every row's handle, in upload order, concatenated ([`HANDLE_LEN`] bytes each).
    pub fn handles(&self) -> &[u8] {
        &self.handles
    }

    /// The most rows the shuffle held in memory at once.
    pub fn peak_rows_in_memory(&self) -> usize {
        self.peak_rows_in_memory
    }

    /// Reads the batches from number `first` on, one at a time.
    pub fn batches_from(&self, first: u64) -> Result<Batches<'_>, PartyError> {
        let mut reader = BufReader::new(open(&self.path)?);
        if let Some(&offset) = usize::try_from(first)
            .ok()
            .and_then(|i| self.offsets.get(i))
        {
            reader
                .seek(SeekFrom::Start(offset))
                .map_err(|e| scratch_err(&self.path, e))?;
        }
        Ok(Batches {
            shuffled: self,
            reader,
            next: first,
        })
    }
}

/// Batches read lazily from [`Shuffled`].
#[derive(Debug)]
pub struct Batches<'a> {
    shuffled: &'a Shuffled,
    reader: BufReader<File>,
    next: u64,
}

impl<'a> Batches<'a> {
    /// The next batch: its number, rows and handles; `None` after the last.
    #[allow(clippy::type_complexity)]
    pub fn next_batch(&mut self) -> Result<Option<(u64, Vec<PreparedRow>, &'a [u8])>, PartyError> {
        let s = self.shuffled;
        let n = self.next;
        if n >= s.batches() {
            return Ok(None);
        }
        let start = n.saturating_mul(s.batch_rows as u64);
        let count = (s.rows - start).min(s.batch_rows as u64);
        let mut rows = Vec::with_capacity(count as usize);
        for _ in 0..count {
            rows.push(read_row(&mut self.reader).map_err(|e| scratch_err(&s.path, e))?);
        }
        self.next += 1;
        let from = start as usize * HANDLE_LEN;
        let handles = &s.handles[from..from + count as usize * HANDLE_LEN];
        Ok(Some((n, rows, handles)))
    }
}

/// SHA-256 of a domain tag, the shuffle seed and `data`: the keyed functions of the shuffle.
fn keyed(seed: &[u8; 32], domain: &[u8], data: &[u8]) -> [u8; 32] {
    sha2::Sha256::new()
        .chain_update(domain)
        .chain_update([0u8])
        .chain_update(seed)
        .chain_update(data)
        .finalize()
        .into()
}

/// The bucket of a customer: a PRF of the normalized identifier under the secret seed.
fn bucket_of(seed: &[u8; 32], identifier: &str, buckets: u64) -> u64 {
    let h = keyed(seed, b"accord/v2/shuffle-bucket", identifier.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    u64::from_be_bytes(first) % buckets
}

/// Puts the spilled rows in upload order (see the module comment) and computes their handles.
/// Removes the spill and the bucket files as it goes.
pub fn shuffle(
    scratch: &Path,
    spilled: Spilled,
    seed: &[u8; 32],
    bucket_rows: usize,
    batch_rows: usize,
    handle: &dyn Fn(&str) -> [u8; HANDLE_LEN],
) -> Result<Shuffled, PartyError> {
    let n = spilled.rows;
    let buckets = n.div_ceil(bucket_rows.max(1) as u64).max(1);
    let bucket_path = |b: u64| scratch.join(format!(".bucket-{b}.tmp-rows"));
    let mut counts = vec![0u64; buckets as usize];
    // Spread the rows over the buckets, MAX_OPEN_BUCKETS files per pass over the spill.
    let mut lo = 0u64;
    while lo < buckets {
        let hi = (lo + MAX_OPEN_BUCKETS as u64).min(buckets);
        let mut writers = (lo..hi)
            .map(|b| create(&bucket_path(b)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut reader = BufReader::new(open(&spilled.path)?);
        for _ in 0..n {
            let row = read_row(&mut reader).map_err(|e| scratch_err(&spilled.path, e))?;
            let b = bucket_of(seed, &row.identifier, buckets);
            if (lo..hi).contains(&b) {
                let i = (b - lo) as usize;
                write_row(&mut writers[i], &row).map_err(|e| scratch_err(&bucket_path(b), e))?;
                counts[b as usize] += 1;
            }
        }
        for (w, b) in writers.iter_mut().zip(lo..hi) {
            w.flush().map_err(|e| scratch_err(&bucket_path(b), e))?;
        }
        lo = hi;
    }
    accord_fs::remove_file_durable(&spilled.path).map_err(|e| scratch_err(&spilled.path, e))?;
    // Shuffle each bucket in memory and append it to the file in upload order.
    let path = scratch.join(SHUFFLED_FILE);
    let mut out = Counting {
        inner: create(&path)?,
        written: 0,
    };
    let batch_rows = batch_rows.max(1);
    let mut offsets = Vec::with_capacity(n.div_ceil(batch_rows as u64) as usize);
    let mut handles = Vec::with_capacity(n as usize * HANDLE_LEN);
    let mut peak_rows_in_memory = 0;
    let mut emitted = 0u64;
    for (b, &count) in counts.iter().enumerate() {
        let in_path = bucket_path(b as u64);
        let mut reader = BufReader::new(open(&in_path)?);
        let mut rows = (0..count)
            .map(|_| read_row(&mut reader))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| scratch_err(&in_path, e))?;
        drop(reader);
        accord_fs::remove_file_durable(&in_path).map_err(|e| scratch_err(&in_path, e))?;
        peak_rows_in_memory = peak_rows_in_memory.max(rows.len());
        // Identifiers are unique after the duplicate rule: sorting forgets the file order.
        rows.sort_unstable_by(|a, b| a.identifier.cmp(&b.identifier));
        let order_seed = keyed(seed, b"accord/v2/shuffle-order", &(b as u64).to_be_bytes());
        rows.shuffle(&mut rand::rngs::StdRng::from_seed(order_seed));
        for row in &rows {
            if emitted.is_multiple_of(batch_rows as u64) {
                offsets.push(out.written);
            }
            emitted += 1;
            handles.extend_from_slice(&handle(&row.identifier));
            write_row(&mut out, row).map_err(|e| scratch_err(&path, e))?;
        }
    }
    out.flush().map_err(|e| scratch_err(&path, e))?;
    Ok(Shuffled {
        path,
        rows: n,
        batch_rows,
        offsets,
        handles,
        peak_rows_in_memory,
    })
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A new scratch file, readable and writable by the owner only.
fn create(path: &Path) -> Result<BufWriter<File>, PartyError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let file = options.open(path).map_err(|e| scratch_err(path, e))?;
    Ok(BufWriter::with_capacity(64 * 1024, file))
}

fn open(path: &Path) -> Result<File, PartyError> {
    File::open(path).map_err(|e| scratch_err(path, e))
}

// A row on disk: identifier (u32 length, bytes), value count (u32), then per value a tag
// (0 empty text, 1 text, 2 empty number, 3 number) and the text (u32 length, bytes) or the
// number (f64, little-endian). Scratch only: written and read by the same run.

fn write_bytes(w: &mut impl Write, b: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(b.len()).map_err(std::io::Error::other)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(b)
}

fn write_row(w: &mut impl Write, row: &PreparedRow) -> std::io::Result<()> {
    write_bytes(w, row.identifier.as_bytes())?;
    let count = u32::try_from(row.values.len()).map_err(std::io::Error::other)?;
    w.write_all(&count.to_le_bytes())?;
    for v in &row.values {
        match v {
            Value::Text(None) => w.write_all(&[0])?,
            Value::Text(Some(t)) => {
                w.write_all(&[1])?;
                write_bytes(w, t.as_bytes())?;
            }
            Value::Number(None) => w.write_all(&[2])?,
            Value::Number(Some(x)) => {
                w.write_all(&[3])?;
                w.write_all(&x.to_le_bytes())?;
            }
        }
    }
    Ok(())
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> std::io::Result<String> {
    let mut b = vec![0u8; read_u32(r)? as usize];
    r.read_exact(&mut b)?;
    String::from_utf8(b).map_err(std::io::Error::other)
}

fn read_row(r: &mut impl Read) -> std::io::Result<PreparedRow> {
    let identifier = read_string(r)?;
    let count = read_u32(r)?;
    let mut values = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)?;
        values.push(match tag[0] {
            0 => Value::Text(None),
            1 => Value::Text(Some(read_string(r)?)),
            2 => Value::Number(None),
            3 => {
                let mut x = [0u8; 8];
                r.read_exact(&mut x)?;
                Value::Number(Some(f64::from_le_bytes(x)))
            }
            t => {
                return Err(std::io::Error::other(format!(
                    "a damaged scratch row (value tag {t})"
                )));
            }
        });
    }
    Ok(PreparedRow { identifier, values })
}

#[cfg(test)]
#[path = "shuffle_tests.rs"]
mod tests;
