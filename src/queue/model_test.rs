//! Model-based test: random appends, leases, acks, dead letters and restarts against the
//! real store and a `VecDeque` per destination. No loss, no phantom rows, order kept, also
//! where batches and dead letters cut segments apart. Parked readings come and go beside
//! them, and with caps on parked readings and dead letters the store's running byte
//! figures stay those of its tables and within the caps.
use std::collections::VecDeque;
use std::sync::Arc;

use proptest::prelude::*;

use super::dead_letters::DeadLetterReason;
use super::delivery::Delivered;
use super::handle::QueueHandle;
use super::inspect::gauges;
use super::intake::Batch;
use super::parked::{NewParked, ParkReason};
use super::points::NewPoint;
use super::schema::{DB_FILE, open_read_only};
use super::{Limits, Synchronous, segment};
use crate::model::Destination;

#[derive(Debug, Clone)]
enum Op {
    /// One commit; each point to destination 0 or 1.
    Append {
        dests: Vec<usize>,
    },
    /// One commit of more points than a segment holds.
    AppendMany {
        dest: usize,
        n: usize,
    },
    /// Lease up to `n` and acknowledge them (a delivered batch).
    Deliver {
        dest: usize,
        n: usize,
    },
    /// Lease and do not acknowledge (a failed send): nothing may change.
    Fail {
        dest: usize,
        n: usize,
    },
    /// Lease up to `n`, dead-letter the picked ones, acknowledge the rest.
    DeadLetter {
        dest: usize,
        n: usize,
        pick: Vec<bool>,
    },
    /// Lease `n`, read `m` more behind them, acknowledge both (as the sink pipelines).
    ReadAhead {
        dest: usize,
        n: usize,
        m: usize,
    },
    /// Park `n` readings in one commit, `fresh` or `unbound`.
    Park {
        n: usize,
        fresh: bool,
    },
    /// Look at up to `n` readings parked `fresh`: the picked ones are resolved (removed),
    /// the others re-parked `unbound`.
    Resolve {
        n: usize,
        pick: Vec<bool>,
    },
    /// Move every reading parked before the `before`-th one to the dead letters.
    Expire {
        before: u64,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(0..2usize, 1..30).prop_map(|dests| Op::Append { dests }),
        1 => (0..2usize, 500..1200usize).prop_map(|(dest, n)| Op::AppendMany { dest, n }),
        3 => (0..2usize, prop_oneof![1..15usize, 400..700usize]).prop_map(|(dest, n)| Op::Deliver { dest, n }),
        1 => (0..2usize, 1..30usize, proptest::collection::vec(any::<bool>(), 30))
            .prop_map(|(dest, n, pick)| Op::DeadLetter { dest, n, pick }),
        1 => (0..2usize, 1..600usize, 1..600usize).prop_map(|(dest, n, m)| Op::ReadAhead { dest, n, m }),
        1 => (0..2usize, 1..15usize).prop_map(|(dest, n)| Op::Fail { dest, n }),
        1 => (1..40usize, any::<bool>()).prop_map(|(n, fresh)| Op::Park { n, fresh }),
        1 => (1..40usize, proptest::collection::vec(any::<bool>(), 40)).prop_map(|(n, pick)| Op::Resolve { n, pick }),
        1 => (0..400u64).prop_map(|before| Op::Expire { before }),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_the_model(
        ops in proptest::collection::vec(op(), 1..40),
        segment_points in prop_oneof![Just(segment::MAX_POINTS), 1..20usize],
        caps in prop_oneof![Just((u64::MAX, u64::MAX)), (0..3000u64, 0..3000u64)],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async move {
            let limits = Limits {
                segment_points,
                max_parked_bytes: caps.0,
                max_dead_letter_bytes: caps.1,
                ..Limits::default()
            };
            let mut run = Run::start(limits).await;
            for op in ops {
                run.apply(op).await;
                run.check_figures().await;
            }
            run.check_end().await;
        });
    }
}

/// One run: the store, the model beside it, and what the model counts that the store does
/// not show.
struct Run {
    /// Before `dir`, so that it is dropped first.
    q: QueueHandle,
    dir: tempfile::TempDir,
    limits: Limits,
    /// The ids of the two destinations.
    ids: Vec<i64>,
    /// Per destination, the lines waiting, in order.
    model: Vec<VecDeque<String>>,
    /// Points appended and readings parked so far: each gets the next number.
    seq: u64,
    parked_seq: u64,
    /// Points and parked readings moved to the dead letters.
    dead: u64,
    /// Dead letters deleted over the cap by earlier runs of the store (its count starts
    /// again with each).
    evicted_before: u64,
}

impl Run {
    async fn start(limits: Limits) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, _j) = QueueHandle::open(dir.path(), Synchronous::Normal, limits).expect("open");
        let mut ids = Vec::new();
        for b in ["a", "b"] {
            ids.push(q.destination_id(Destination { org: String::new(), bucket: b.into() }).await.expect("dest"));
        }
        let model = vec![VecDeque::new(), VecDeque::new()];
        Run { q, dir, limits, ids, model, seq: 0, parked_seq: 0, dead: 0, evicted_before: 0 }
    }

    async fn apply(&mut self, op: Op) {
        match op {
            Op::Append { dests } => self.append(&dests).await,
            Op::AppendMany { dest, n } => self.append_many(dest, n).await,
            Op::DeadLetter { dest, n, pick } => self.dead_letter(dest, n, &pick).await,
            Op::ReadAhead { dest, n, m } => self.read_ahead(dest, n, m).await,
            Op::Deliver { dest, n } => self.lease(dest, n, true).await,
            Op::Fail { dest, n } => self.lease(dest, n, false).await,
            Op::Park { n, fresh } => self.park(n, fresh).await,
            Op::Resolve { n, pick } => self.resolve(n, &pick).await,
            Op::Expire { before } => self.expire(before).await,
            Op::Restart => self.restart().await,
        }
    }

    async fn append(&mut self, dests: &[usize]) {
        let points: Vec<NewPoint> = dests
            .iter()
            .map(|&dest| {
                self.seq += 1;
                let seq = self.seq;
                let line = format!("m v={seq}i {seq}");
                self.model[dest].push_back(line.clone());
                NewPoint { dest_id: self.ids[dest], line, enqueued_ns: seq as i64, ..Default::default() }
            })
            .collect();
        self.q.append(points).await.expect("append");
    }

    async fn append_many(&mut self, dest: usize, n: usize) {
        let lines: Vec<String> = (0..n)
            .map(|_| {
                self.seq += 1;
                format!("m v={0}i {0}", self.seq)
            })
            .collect();
        self.model[dest].extend(lines.iter().cloned());
        let dest_id = self.ids[dest];
        let points = lines.into_iter().map(|line| NewPoint { dest_id, line, ..Default::default() }).collect();
        self.q.append(points).await.expect("append");
    }

    /// Lease up to `n`, dead-letter the picked ones, acknowledge the rest.
    async fn dead_letter(&mut self, dest: usize, n: usize, pick: &[bool]) {
        let (q, id) = (&self.q, self.ids[dest]);
        let got = q.lease(id, n, usize::MAX).await.expect("lease");
        let chosen: Vec<i64> = got.iter().zip(pick).filter(|(_, p)| **p).map(|(l, _)| l.id).collect();
        let moved =
            q.dead_letter(id, chosen.clone(), DeadLetterReason::Rejected, Some(400), "x".into()).await.expect("dead");
        assert_eq!(moved as usize, chosen.len());
        self.dead += moved;
        if let (Some(first), Some(last)) = (got.first(), got.last()) {
            let k = q.delete_delivered(id, first.id, last.id, Delivered::of(&got)).await.expect("delete");
            assert_eq!(k as usize, got.len() - chosen.len());
        }
        self.model[dest].drain(..got.len());
    }

    /// Lease `n`, read `m` more behind them, acknowledge both (as the sink pipelines).
    async fn read_ahead(&mut self, dest: usize, n: usize, m: usize) {
        let (q, id) = (&self.q, self.ids[dest]);
        let got = q.lease(id, n, usize::MAX).await.expect("lease");
        let after = got.last().map_or(0, |l| l.id);
        let next = q.lease_after(id, after, m, usize::MAX).await.expect("lease after");
        let want: Vec<String> = self.model[dest].iter().skip(got.len()).take(m).cloned().collect();
        assert_eq!(next.iter().map(|l| l.line.clone()).collect::<Vec<_>>(), want);
        for batch in [&got, &next] {
            if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
                let k = q.delete_delivered(id, first.id, last.id, Delivered::of(batch)).await.expect("delete");
                assert_eq!(k as usize, batch.len());
            }
        }
        self.model[dest].drain(..got.len() + next.len());
    }

    /// Lease up to `n`; acknowledge them if `deliver` (else a failed send: nothing changes).
    async fn lease(&mut self, dest: usize, n: usize, deliver: bool) {
        let (q, id) = (&self.q, self.ids[dest]);
        let got = q.lease(id, n, usize::MAX).await.expect("lease");
        let want: Vec<String> = self.model[dest].iter().take(n).cloned().collect();
        assert_eq!(got.iter().map(|l| l.line.clone()).collect::<Vec<_>>(), want);
        if deliver && !got.is_empty() {
            let k = q.delete(id, got[0].id, got[got.len() - 1].id).await.expect("delete");
            assert_eq!(k as usize, got.len());
            self.model[dest].drain(..got.len());
        }
    }

    async fn park(&mut self, n: usize, fresh: bool) {
        let parked = (0..n)
            .map(|_| {
                self.parked_seq += 1;
                let seq = self.parked_seq;
                NewParked {
                    serial: format!("S-{seq}"),
                    ts_ns: seq as i64,
                    reason: if fresh { ParkReason::Fresh } else { ParkReason::Unbound },
                    body: format!("reading {seq}"),
                    parked_ns: seq as i64,
                }
            })
            .collect();
        self.q.append_shared(Arc::new(Batch { points: Vec::new(), parked })).await.expect("park");
    }

    /// Look at up to `n` readings parked `fresh`: the picked ones are resolved (removed),
    /// the others parked again `unbound`.
    async fn resolve(&mut self, n: usize, pick: &[bool]) {
        let rows = self.q.scan_parked(ParkReason::Fresh, i64::MAX, 0, n).await.expect("scan");
        let (remove, repark): (Vec<_>, Vec<_>) = rows.iter().zip(pick).partition(|(_, p)| **p);
        let remove = remove.into_iter().map(|(r, _)| r.id).collect();
        let repark = repark.into_iter().map(|(r, _)| (r.id, ParkReason::Unbound)).collect();
        self.q.promote(Vec::new(), remove, repark).await.expect("promote");
    }

    async fn expire(&mut self, before: u64) {
        let conn = open_read_only(self.dir.path()).expect("ro");
        let expiring: i64 = conn
            .query_row("SELECT count(*) FROM parked WHERE parked_ns < ?1", [before as i64], |r| r.get(0))
            .expect("count");
        assert_eq!(self.q.expire_parked(before as i64).await.expect("expire"), expiring as u64);
        self.dead += expiring as u64;
    }

    async fn restart(&mut self) {
        self.evicted_before += self.q.gauges().await.expect("gauges").evicted_dead_letters;
        self.q.close().await.expect("close");
        self.q = QueueHandle::open(self.dir.path(), Synchronous::Normal, self.limits).expect("reopen").0;
    }

    /// The running counts behind the metrics follow every change.
    async fn check_figures(&self) {
        let g = self.q.gauges().await.expect("gauges");
        let counts: Vec<u64> = g.destinations.iter().map(|(_, n, _)| *n).collect();
        assert_eq!(counts, self.model.iter().map(|m| m.len() as u64).collect::<Vec<_>>());
        let bytes: u64 = self.model.iter().flatten().map(|l| l.len() as u64 + 1).sum();
        assert_eq!(g.bytes, bytes);
        let conn = open_read_only(self.dir.path()).expect("ro");
        let counted = gauges(&conn, &self.dir.path().join(DB_FILE), None).expect("counted");
        assert_eq!(
            (g.parked_bytes, g.unbound_bytes, g.dead_letter_bytes),
            (counted.parked_bytes, counted.unbound_bytes, counted.dead_letter_bytes)
        );
        let caps = (self.limits.max_parked_bytes, self.limits.max_dead_letter_bytes);
        assert!(g.unbound_bytes <= caps.0 && g.dead_letter_bytes <= caps.1, "{g:?}");
    }

    /// Nothing lost, nothing added: the counts add up, and everything left reads back in
    /// order, across segment boundaries.
    async fn check_end(&self) {
        let total: usize = self.model.iter().map(VecDeque::len).sum();
        let stats = self.q.stats().await.expect("stats");
        let evicted = self.evicted_before + self.q.gauges().await.expect("gauges").evicted_dead_letters;
        assert_eq!((stats.points as usize, stats.dead_letters + evicted), (total, self.dead));
        for (dest, want) in self.model.iter().enumerate() {
            let got = self.q.lease(self.ids[dest], usize::MAX, usize::MAX).await.expect("lease");
            assert_eq!(got.iter().map(|l| &l.line).collect::<Vec<_>>(), want.iter().collect::<Vec<_>>());
        }
    }
}
