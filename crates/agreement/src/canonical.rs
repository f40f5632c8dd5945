//! The canonical encoding of a manifest (documented in `docs/AGREEMENTS.md`).
//!
//! Primitives (all integers big-endian):
//! - `u8`, `u32`, `u64`: fixed width.
//! - `str`: `u32` byte length, then the UTF-8 bytes.
//! - `f64`: the 8 bytes of the IEEE 754 binary64 value, with `-0.0` written as `+0.0`
//!   (validation refuses NaN and infinities).
//! - `time`: `str` of the UTC instant in RFC 3339, `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]Z`
//!   (fraction only when non-zero, in the shortest of 3, 6 or 9 digits).
//! - `opt<T>`: `0x00` when absent, `0x01` then `T` when present.
//! - `list<T>`: `u32` count, then the items.
//! - `key`: the 32 raw bytes of an Ed25519 public key.
//!
//! Lists whose order carries no meaning are sorted: parties by name, each party's
//! contributions by column, analysts by name, aggregates as count < sum < avg, auditors by
//! name. The `[room]` section (operator, key) comes last.

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

use crate::manifest::{ColumnRole, Fingerprint, Manifest, PrivacyMode};
use crate::sig;

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn len(&mut self, n: usize) {
        // Manifests are parsed from text far smaller than 4 GiB; saturate rather than wrap.
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn str(&mut self, s: &str) {
        self.0.extend_from_slice(&accord_psi::encoding::str(s));
    }
    fn f64(&mut self, v: f64) {
        let v = if v == 0.0 { 0.0 } else { v };
        self.0.extend_from_slice(&v.to_bits().to_be_bytes());
    }
    fn time(&mut self, t: &DateTime<Utc>) {
        self.str(&rfc3339(t));
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    fn key(&mut self, k: &crate::PublicKey) {
        self.0.extend_from_slice(&k.to_bytes());
    }
}

/// The RFC 3339 UTC form used in canonical bytes and shown to people.
pub(crate) fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The body: every field except `signatures`, in the documented order.
pub(crate) fn body(m: &Manifest) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(512));
    w.u32(m.schema_version);
    w.str(&m.id);
    w.u64(m.version);
    w.str(&m.purpose);
    w.opt_str(m.notes.as_deref());
    w.time(&m.valid_from);
    w.time(&m.valid_until);
    w.u32(m.min_group_size);
    w.str(m.identifier.as_str());
    w.opt_str(m.default_region.as_deref());

    w.len(m.parties.len());
    for (name, party) in &m.parties {
        w.str(name);
        w.key(&party.public_key);
        w.u64(party.max_rows);
        w.str(&party.consent_column);
        let mut contributes: Vec<_> = party.contributes.iter().collect();
        contributes.sort_by(|a, b| a.column.cmp(&b.column));
        w.len(contributes.len());
        for c in contributes {
            w.str(&c.column);
            match c.role {
                ColumnRole::Dimension => w.u8(0),
                ColumnRole::Metric { min, max } => {
                    w.u8(1);
                    w.f64(min);
                    w.f64(max);
                }
            }
            w.opt_str(c.special_category.as_deref());
            w.opt_str(c.legal_basis.as_deref());
        }
    }

    let mut analysts: Vec<_> = m.analysts.iter().collect();
    analysts.sort_by(|a, b| a.name.cmp(&b.name));
    w.len(analysts.len());
    for a in analysts {
        w.str(&a.name);
        w.str(&a.party);
        w.key(&a.public_key);
    }

    let mut aggregates = m.privacy.aggregates.clone();
    aggregates.sort();
    aggregates.dedup();
    w.len(aggregates.len());
    for a in aggregates {
        w.str(a.as_str());
    }
    match m.privacy.mode {
        PrivacyMode::DifferentialPrivacy {
            epsilon_per_query,
            budget,
            delta,
        } => {
            w.u8(0);
            w.f64(epsilon_per_query);
            w.f64(budget);
            w.f64(delta);
        }
        PrivacyMode::ExactResults => w.u8(1),
    }

    let mut auditors: Vec<_> = m.auditors.iter().collect();
    auditors.sort_by(|a, b| a.name.cmp(&b.name));
    w.len(auditors.len());
    for a in auditors {
        w.str(&a.name);
        w.key(&a.public_key);
    }

    w.str(&m.room.operator);
    w.key(&m.room.public_key);
    w.0
}

impl Manifest {
    /// The canonical bytes every party signs (see `docs/AGREEMENTS.md`, "Canonical
    /// encoding"): `b"accord/v1/agreement" ++ 0x00 ++ body`, where the body encodes every
    /// field except `signatures` in a fixed order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        sig::signed_message(sig::Purpose::Agreement, &body(self))
    }

    /// SHA-256 of [`Manifest::canonical_bytes`].
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(Sha256::digest(self.canonical_bytes()).into())
    }
}
