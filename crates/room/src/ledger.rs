//! The differential-privacy budget ledger: one durable account per (agreement lineage,
//! party), shared by all of that party's analysts.
//!
//! - **Lineage** = the agreement id and its parties' keys: a new version of the same
//!   agreement between the same keys keeps spending the same budget; a new id (or new
//!   party keys) starts a new one (docs/PRIVACY.md says so).
//! - **Durable before release**: [`Ledgers::spend`] writes the new total atomically
//!   (temporary file, fsync, rename, fsync of the directory, via `accord-fs`) before it
//!   returns, and the room calls it before it runs the query, so no result leaves whose
//!   cost is not on disk. A crash after the write loses budget, never grants it.
//! - **Race-free**: one lock per account is held from the check to the durable write, so
//!   concurrent queries can never spend more than the budget between them.
//! - Amounts are integers in units of 10^-9 ε and 10^-12 δ (`accord_dp::account`), costs
//!   rounded up and budgets down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use accord_agreement::VerifiedAgreement;
use accord_engine::accord_dp::account;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, RoomError};

/// One account as stored on disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Account {
    /// The agreement id of the lineage (for people reading the file).
    pub(crate) agreement_id: String,
    /// The party whose analysts spend this budget.
    pub(crate) party: String,
    /// ε spent, in units of 10^-9.
    pub(crate) epsilon_spent_units: u64,
    /// δ spent, in units of 10^-12.
    pub(crate) delta_spent_units: u64,
    /// Queries answered.
    pub(crate) queries: u64,
}

/// What is left of a party's budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    /// The party whose budget this is.
    pub party: String,
    /// ε spent so far.
    pub epsilon_spent: f64,
    /// δ spent so far.
    pub delta_spent: f64,
    /// The agreement's total ε budget.
    pub epsilon_budget: f64,
    /// ε left.
    pub epsilon_remaining: f64,
    /// ε of one query.
    pub epsilon_per_query: f64,
    /// δ of one query.
    pub delta_per_query: f64,
    /// How many more queries the remaining budget allows.
    pub queries_remaining: u64,
    /// Queries answered so far.
    pub queries: u64,
}

/// The outcome of a spend attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Spend {
    /// Recorded durably; the balance after the spend.
    Spent(Balance),
    /// Refused: the query costs more than what is left (nothing was recorded).
    Exhausted(Balance),
}

/// The DP parameters of an agreement, in ledger units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Price {
    epsilon_per_query: f64,
    delta_per_query: f64,
    cost_units: u64,
    delta_units: u64,
    budget_units: u64,
}

impl Price {
    pub(crate) fn new(epsilon_per_query: f64, delta_per_query: f64, budget: f64) -> Self {
        Self {
            epsilon_per_query,
            delta_per_query,
            cost_units: account::epsilon_cost_units(epsilon_per_query),
            delta_units: account::delta_cost_units(delta_per_query),
            budget_units: account::epsilon_budget_units(budget),
        }
    }

    fn balance(&self, a: &Account) -> Balance {
        let remaining = self.budget_units.saturating_sub(a.epsilon_spent_units);
        Balance {
            party: a.party.clone(),
            epsilon_spent: account::epsilon_from_units(a.epsilon_spent_units),
            delta_spent: account::delta_from_units(a.delta_spent_units),
            epsilon_budget: account::epsilon_from_units(self.budget_units),
            epsilon_remaining: account::epsilon_from_units(remaining),
            epsilon_per_query: self.epsilon_per_query,
            delta_per_query: self.delta_per_query,
            queries_remaining: remaining.checked_div(self.cost_units).unwrap_or(0),
            queries: a.queries,
        }
    }
}

struct Entry {
    path: PathBuf,
    account: Account,
}

/// All accounts of a room, under `<data dir>/ledgers/`.
pub(crate) struct Ledgers {
    dir: PathBuf,
    open: Mutex<HashMap<[u8; 32], Arc<Mutex<Entry>>>>,
}

impl std::fmt::Debug for Ledgers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledgers")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The account key: SHA-256 over a domain string, the agreement id, every party's name and
/// key (in name order) and the spending party, each length-prefixed.
pub(crate) fn account_key(agreement: &VerifiedAgreement, party: &str) -> [u8; 32] {
    let m = agreement.manifest();
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(b"accord/v1/budget-account");
    field(m.id.as_bytes());
    let mut parties: Vec<_> = m.parties.iter().collect();
    parties.sort_by(|a, b| a.0.cmp(b.0));
    for (name, p) in parties {
        field(name.as_bytes());
        field(&p.public_key.to_bytes());
    }
    field(party.as_bytes());
    h.finalize().into()
}

impl Ledgers {
    /// The ledgers under `data_dir/ledgers` (created on first spend).
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("ledgers"),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, key: [u8; 32], agreement_id: &str, party: &str) -> Result<Arc<Mutex<Entry>>> {
        let mut open = lock(&self.open);
        if let Some(e) = open.get(&key) {
            return Ok(Arc::clone(e));
        }
        let path = self.dir.join(format!("{}.json", hex::encode(key)));
        let account = if path.exists() {
            let bytes = std::fs::read(&path).map_err(|e| RoomError::io("read", &path, e))?;
            serde_json::from_slice(&bytes).map_err(|e| {
                RoomError::Internal(format!(
                    "the budget ledger {} is unreadable ({e}); queries under this agreement are refused until an operator restores it from backup (deleting it would reset the budget)",
                    path.display()
                ))
            })?
        } else {
            Account {
                agreement_id: agreement_id.to_owned(),
                party: party.to_owned(),
                ..Account::default()
            }
        };
        let entry = Arc::new(Mutex::new(Entry { path, account }));
        open.insert(key, Arc::clone(&entry));
        Ok(entry)
    }

    /// The balance of `party` under `agreement`'s lineage.
    pub(crate) fn balance(
        &self,
        agreement: &VerifiedAgreement,
        party: &str,
        price: Price,
    ) -> Result<Balance> {
        self.balance_of(account_key(agreement, party), agreement.id(), party, price)
    }

    fn balance_of(&self, key: [u8; 32], id: &str, party: &str, price: Price) -> Result<Balance> {
        let entry = self.entry(key, id, party)?;
        let e = lock(&entry);
        Ok(price.balance(&e.account))
    }

    /// Spends one query's (ε, δ) from `party`'s account if the budget allows it; the new
    /// total is on disk before this returns `Spent`.
    pub(crate) fn spend(
        &self,
        agreement: &VerifiedAgreement,
        party: &str,
        price: Price,
    ) -> Result<Spend> {
        self.spend_from(account_key(agreement, party), agreement.id(), party, price)
    }

    fn spend_from(&self, key: [u8; 32], id: &str, party: &str, price: Price) -> Result<Spend> {
        let entry = self.entry(key, id, party)?;
        let mut e = lock(&entry);
        let after = e.account.epsilon_spent_units.checked_add(price.cost_units);
        let Some(after) = after.filter(|&a| a <= price.budget_units) else {
            return Ok(Spend::Exhausted(price.balance(&e.account)));
        };
        let mut next = e.account.clone();
        next.epsilon_spent_units = after;
        next.delta_spent_units = next.delta_spent_units.saturating_add(price.delta_units);
        next.queries += 1;
        accord_fs::create_dir_all(&self.dir, accord_fs::Access::OwnerOnly)?;
        let bytes = serde_json::to_vec_pretty(&next)
            .map_err(|e| RoomError::Internal(format!("encoding the budget ledger: {e}")))?;
        accord_fs::write_atomic(&e.path, &bytes)?;
        e.account = next;
        Ok(Spend::Spent(price.balance(&e.account)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn spent(s: Spend) -> Balance {
        match s {
            Spend::Spent(b) => b,
            Spend::Exhausted(b) => panic!("exhausted: {b:?}"),
        }
    }

    #[test]
    fn spends_until_exhausted_then_refuses_with_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let ledgers = Ledgers::new(dir.path());
        let price = Price::new(0.3, 1e-6, 1.0);
        for i in 1..=3u64 {
            let b = spent(ledgers.spend_from(KEY, "a", "drinks", price).unwrap());
            assert_eq!(b.queries, i);
        }
        let Spend::Exhausted(b) = ledgers.spend_from(KEY, "a", "drinks", price).unwrap() else {
            panic!("a fourth query of 0.3 fits in a budget of 1.0");
        };
        assert_eq!(b.queries_remaining, 0);
        assert!((b.epsilon_remaining - 0.1).abs() < 1e-9, "{b:?}");
        assert!((b.delta_spent - 3e-6).abs() < 1e-15);
        // Another party of the same lineage has its own account.
        let other = ledgers.balance_of([8; 32], "a", "snacks", price).unwrap();
        assert_eq!(other.queries_remaining, 3);
    }

    /// The account a spend lands in (found unpinned by mutation testing): one per party and
    /// lineage — a new version of the same agreement (same id, same party keys) keeps
    /// spending the same budget; another party, another id or other party keys do not.
    #[test]
    fn each_party_and_lineage_has_its_own_account_across_versions() {
        use accord_agreement::SecretKey;
        let base = crate::room::revocation_tests::agreement_text();
        let variant = |edit: &dyn Fn(&str) -> String, snacks: u8| {
            let text = edit(&base);
            let text =
                accord_agreement::sign_text(&text, "drinks", &SecretKey::from_seed(&[1; 32]))
                    .unwrap();
            let text =
                accord_agreement::sign_text(&text, "snacks", &SecretKey::from_seed(&[snacks; 32]))
                    .unwrap();
            accord_agreement::verify(&text, chrono::Utc::now()).unwrap()
        };
        let same = |t: &str| t.to_owned();
        let v1 = variant(&same, 2);
        let v2 = variant(&|t: &str| t.replace("\nversion = 1", "\nversion = 2"), 2);
        let other_id = variant(
            &|t: &str| t.replace("id = \"lock-test\"", "id = \"other\""),
            2,
        );
        let snacks_key = SecretKey::from_seed(&[9; 32]).public_key().to_string();
        let rekeyed = variant(
            &|t: &str| {
                t.replacen(
                    &SecretKey::from_seed(&[2; 32]).public_key().to_string(),
                    &snacks_key,
                    1,
                )
            },
            9,
        );
        let k = |a: &VerifiedAgreement, p: &str| account_key(a, p);
        assert_ne!(v1.fingerprint(), v2.fingerprint());
        assert_eq!(
            k(&v1, "drinks"),
            k(&v2, "drinks"),
            "a new version keeps the budget"
        );
        assert_ne!(k(&v1, "drinks"), k(&v1, "snacks"));
        assert_ne!(k(&v1, "drinks"), k(&other_id, "drinks"));
        assert_ne!(k(&v1, "drinks"), k(&rekeyed, "drinks"));
        // Spends land in that account and are reported with its agreement and party.
        let dir = tempfile::tempdir().unwrap();
        let ledgers = Ledgers::new(dir.path());
        let price = Price::new(0.5, 1e-6, 10.0);
        spent(ledgers.spend(&v1, "drinks", price).unwrap());
        let b = ledgers.balance(&v2, "drinks", price).unwrap();
        assert_eq!(b.queries, 1);
        assert_eq!(b.party, "drinks");
        assert_eq!(ledgers.balance(&v1, "snacks", price).unwrap().queries, 0);
        // The ledger file names its agreement and party for the operator.
        let file = dir
            .path()
            .join("ledgers")
            .join(format!("{}.json", hex::encode(k(&v1, "drinks"))));
        let stored = std::fs::read_to_string(file).unwrap();
        assert!(
            stored.contains("\"lock-test\"") && stored.contains("\"drinks\""),
            "{stored}"
        );
        let proto = crate::grpc::budget_proto(&b);
        assert_eq!(proto.party, "drinks");
        assert_eq!(proto.queries_answered, 1);
    }

    #[test]
    fn a_restart_keeps_every_spend() {
        let dir = tempfile::tempdir().unwrap();
        let price = Price::new(0.5, 1e-6, 10.0);
        {
            let ledgers = Ledgers::new(dir.path());
            for _ in 0..7 {
                spent(ledgers.spend_from(KEY, "a", "drinks", price).unwrap());
            }
        }
        let ledgers = Ledgers::new(dir.path());
        let b = ledgers.balance_of(KEY, "a", "drinks", price).unwrap();
        assert_eq!(b.queries, 7);
        assert_eq!(b.queries_remaining, 13);
        assert!((b.epsilon_spent - 3.5).abs() < 1e-9);
    }

    #[test]
    fn concurrent_spending_never_exceeds_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let ledgers = Arc::new(Ledgers::new(dir.path()));
        let price = Price::new(0.5, 1e-6, 10.0);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let ledgers = Arc::clone(&ledgers);
                std::thread::spawn(move || {
                    let mut ok = 0u64;
                    for _ in 0..10 {
                        if let Spend::Spent(_) =
                            ledgers.spend_from(KEY, "a", "drinks", price).unwrap()
                        {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let answered: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(answered, 20, "80 attempts, budget for exactly 20");
        let b = Ledgers::new(dir.path())
            .balance_of(KEY, "a", "drinks", price)
            .unwrap();
        assert_eq!(b.queries, 20);
        assert_eq!(b.epsilon_remaining, 0.0);
    }

    #[test]
    fn a_corrupt_ledger_refuses_rather_than_resetting() {
        let dir = tempfile::tempdir().unwrap();
        let ledgers = Ledgers::new(dir.path());
        let price = Price::new(0.5, 1e-6, 10.0);
        spent(ledgers.spend_from(KEY, "a", "drinks", price).unwrap());
        let path = dir
            .path()
            .join("ledgers")
            .join(format!("{}.json", hex::encode(KEY)));
        std::fs::write(&path, b"{ torn").unwrap();
        let err = Ledgers::new(dir.path())
            .spend_from(KEY, "a", "drinks", price)
            .unwrap_err();
        assert!(err.to_string().contains("unreadable"), "{err}");
    }
}
