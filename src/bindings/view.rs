//! What resolution reads: the binding table in force and how fresh it is, published together
//! as one value.
//!
//! The PostgreSQL sync first puts a new table in force, then advances the fresh-until mark
//! that says every central change committed up to that instant is in the table. Published on
//! two channels, a reader taking the table and then the mark could pair the *old* table with
//! the *new* mark and resolve a reading the new table gives to another stream. A [`View`] is
//! read with one `borrow`: its table always holds every change its mark promises.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::table::{BindingTable, SharedTable};

/// The freshness of the binding table, shared with intake and the parking resolver.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// Every central change committed at or before this instant (ns, database clock) is in
    /// the table. `i64::MAX` for sources that are always current (a file).
    pub fresh_until_ns: i64,
    /// When the mark last advanced (local monotonic clock).
    pub advanced_at: tokio::time::Instant,
    /// How long a stopped mark is waited for before the cached copy is used anyway.
    pub stale_grace: Duration,
}

impl Freshness {
    pub fn always() -> Self {
        Self { fresh_until_ns: i64::MAX, advanced_at: tokio::time::Instant::now(), stale_grace: Duration::MAX }
    }

    /// Nothing is known to be current yet (PostgreSQL before its first round trip).
    pub fn unknown(stale_grace: Duration) -> Self {
        Self { fresh_until_ns: i64::MIN, advanced_at: tokio::time::Instant::now(), stale_grace }
    }

    /// May a reading taken at `ts_ns` be resolved now? `Some(stale)` when it may (stale: on a
    /// copy whose mark stopped more than the grace ago), `None` when it must wait.
    pub fn resolvable(&self, ts_ns: i64) -> Option<bool> {
        if ts_ns <= self.fresh_until_ns {
            Some(false)
        } else if self.advanced_at.elapsed() > self.stale_grace {
            Some(true)
        } else {
            None
        }
    }
}

/// The table in force and its freshness, as one value.
#[derive(Debug, Clone)]
pub struct View {
    pub table: SharedTable,
    pub fresh: Freshness,
}

/// Where a binding source publishes; intake, parking, status and the reporter hold receivers.
pub type ViewTx = watch::Sender<View>;
pub type ViewRx = watch::Receiver<View>;

impl View {
    pub fn new(table: BindingTable, fresh: Freshness) -> Self {
        Self { table: Arc::new(table), fresh }
    }

    /// Puts `table` in force; the mark stays: it only ever describes central changes, and a
    /// table is never older than the changes received before it.
    pub fn put_table(tx: &ViewTx, table: BindingTable) {
        let table = Arc::new(table);
        tx.send_modify(|v| v.table = table);
    }

    /// Advances the fresh-until mark to at least `until_ns`. Call only once the table in
    /// force holds every change committed up to `until_ns`.
    pub fn advance(tx: &ViewTx, until_ns: i64) {
        tx.send_modify(|v| {
            v.fresh.fresh_until_ns = v.fresh.fresh_until_ns.max(until_ns);
            v.fresh.advanced_at = tokio::time::Instant::now();
        });
    }

    /// True when `other` is the table this view holds (the same swap, not equal content).
    pub fn holds(&self, other: &SharedTable) -> bool {
        Arc::ptr_eq(&self.table, other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::source::BindingSource;

    fn table(version: i64) -> BindingTable {
        BindingTable::new(Vec::new(), BindingSource::None, version.to_string())
    }

    /// The sync's order (table n, then mark n) against readers taking views all the while: no
    /// reader ever sees a mark its table does not satisfy. Table and mark read from two
    /// channels gave this loop mismatched pairs (3 in 20,000 rounds on a 2-core machine).
    #[test]
    fn a_reader_never_pairs_a_table_with_a_newer_mark() {
        let (tx, rx) = watch::channel(View::new(table(0), Freshness::unknown(Duration::MAX)));
        const ROUNDS: i64 = 20_000;
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    loop {
                        let v = rx.borrow().clone();
                        let version: i64 = v.table.version.parse().expect("version");
                        assert!(
                            v.fresh.fresh_until_ns <= version,
                            "mark {} with table {version}",
                            v.fresh.fresh_until_ns
                        );
                        seen += 1;
                        if version == ROUNDS {
                            return seen;
                        }
                    }
                })
            })
            .collect();
        for n in 1..=ROUNDS {
            View::put_table(&tx, table(n));
            View::advance(&tx, n);
        }
        for r in readers {
            assert!(r.join().expect("reader") > 0);
        }
    }

    #[test]
    fn the_mark_never_goes_back_and_a_new_table_keeps_it() {
        let (tx, rx) = watch::channel(View::new(table(0), Freshness::unknown(Duration::MAX)));
        View::advance(&tx, 50);
        View::advance(&tx, 40);
        assert_eq!(rx.borrow().fresh.fresh_until_ns, 50);
        let before = rx.borrow().table.clone();
        View::put_table(&tx, table(1));
        assert_eq!(rx.borrow().fresh.fresh_until_ns, 50);
        assert!(!rx.borrow().holds(&before));
    }
}
