//! Reporting back to PostgreSQL: per-stream activity, point counts and data gaps.
//!
//! The queue keeps the figures durably, in the same transactions as the data they count
//! (readings when accepted, deliveries when InfluxDB answered 2xx). This task
//! - opens a gap when a stream's readings stop for longer than its threshold (the first
//!   reading after it closes the gap, in the queue's own commit);
//! - every `report.interval_ms` upserts totals, the last interval and gaps into the tables
//!   of `sql/heartguard-gateway-report.sql`, keyed by gateway and stream, so a repeated
//!   report is harmless. PostgreSQL away: nothing is lost, the next report carries it.
//!
//! It never holds the data path back: it only reads figures and writes to PostgreSQL.

pub mod config;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bindings::postgres::{PgSource, connect_client};
use crate::pipeline::Pipeline;
use crate::queue::QueueError;
use crate::queue::activity::{Activity, Gap};

/// How often gaps are looked for.
const GAP_CHECK: Duration = Duration::from_secs(1);

pub struct Reporter {
    pub pipe: Pipeline,
    pub gateway_id: String,
    pub pg: PgSource,
    pub interval: Duration,
    pub gap_factor: f64,
    pub gap_min: Duration,
}

impl Reporter {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut gaps = tokio::time::interval(GAP_CHECK);
        let mut report = tokio::time::interval(self.interval);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut client: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> = None;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = gaps.tick() => self.check_gaps().await,
                _ = report.tick() => {
                    if client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                        client = match connect_client(&self.pg).await {
                            Ok(c) => Some(c),
                            Err(e) => {
                                if !failing {
                                    warn!(database = %self.pg.label, error = %e, "Cannot reach PostgreSQL to report activity; figures keep accumulating.");
                                }
                                failing = true;
                                continue;
                            }
                        };
                    }
                    let Some((c, _)) = client.as_mut() else { continue };
                    match self.report(c).await {
                        Ok((streams, gaps)) => {
                            if failing {
                                info!("Activity reporting to PostgreSQL works again.");
                            }
                            failing = false;
                            tracing::debug!(streams, gaps, "Activity reported.");
                        }
                        Err(e) => {
                            if !failing {
                                warn!(error = %e, "Activity report failed; it is retried with the next one.");
                            }
                            failing = true;
                            client = None;
                        }
                    }
                }
            }
        }
    }

    async fn check_gaps(&self) {
        let Ok(activity) = self.pipe.queue.activity().await else { return };
        let table = self.pipe.view.borrow().table.clone();
        let now = crate::now_ns();
        for a in activity {
            let (Some(last), None) = (a.last_reading_ns, a.open_gap_ns) else { continue };
            // Only streams still bound here and not ended: a finished stream has no gap.
            let Some(b) = table.iter().map(|c| &c.binding).find(|b| b.stream_id == a.stream_id) else { continue };
            if b.ended_at.is_some_and(|e| e <= now) {
                continue;
            }
            let threshold = threshold_ns(b.sample_rate_hz, self.gap_factor, self.gap_min);
            if now.saturating_sub(last) > threshold
                && matches!(self.pipe.queue.open_gap(a.stream_key, last, threshold).await, Ok(true))
            {
                self.pipe.counters.gaps_opened.fetch_add(1, Relaxed);
                info!(stream = %a.stream_id, device = %crate::model::loggable(&b.serial), threshold_ms = threshold / 1_000_000, "Data gap: no reading for longer than the stream's threshold.");
            }
        }
    }

    /// One report in one transaction; returns (streams, gaps) sent.
    async fn report(&self, client: &mut tokio_postgres::Client) -> Result<(usize, usize), ReportError> {
        let activity = self.pipe.queue.activity().await?;
        let gaps = self.pipe.queue.unreported_gaps().await?;
        let now = crate::now_ns();
        let tx = client.transaction().await?;
        let sent = self.upsert_activity(&tx, &activity, now).await?;
        let sent_gaps = self.upsert_gaps(&tx, &gaps).await?;
        tx.commit().await?;
        let counts = (sent.len(), sent_gaps.len());
        // Recorded only after PostgreSQL committed: a crash in between resends the same
        // figures, which the upserts make harmless.
        self.pipe.queue.mark_reported(sent, sent_gaps, now).await?;
        Ok(counts)
    }

    /// Upserts every stream's figures; returns (stream key, readings, delivered) of each sent.
    async fn upsert_activity(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        activity: &[Activity],
        now: i64,
    ) -> Result<Vec<(i64, u64, u64)>, tokio_postgres::Error> {
        let upsert = tx
            .prepare(
                "INSERT INTO stream_activity (gateway_id, stream_id, last_reading_at, last_delivered_at, readings_received,
                   points_delivered, interval_started_at, interval_readings, interval_points, reported_at)
                 VALUES ($1, $2::text::uuid, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (gateway_id, stream_id) DO UPDATE SET
                   last_reading_at = excluded.last_reading_at, last_delivered_at = excluded.last_delivered_at,
                   readings_received = excluded.readings_received, points_delivered = excluded.points_delivered,
                   interval_started_at = excluded.interval_started_at, interval_readings = excluded.interval_readings,
                   interval_points = excluded.interval_points, reported_at = excluded.reported_at",
            )
            .await?;
        let mut sent = Vec::new();
        for a in activity.iter().filter(|a| is_uuid(&a.stream_id)) {
            tx.execute(
                &upsert,
                &[
                    &self.gateway_id,
                    &a.stream_id,
                    &a.last_reading_ns.map(ts),
                    &a.last_delivered_ns.map(ts),
                    &(a.readings as i64),
                    &(a.delivered as i64),
                    &a.reported_ns.map(ts),
                    &(a.readings.saturating_sub(a.reported_readings) as i64),
                    &(a.delivered.saturating_sub(a.reported_delivered) as i64),
                    &ts(now),
                ],
            )
            .await?;
            sent.push((a.stream_key, a.readings, a.delivered));
        }
        Ok(sent)
    }

    /// Upserts every gap not reported since it changed; returns (gap id, closed) of each sent.
    async fn upsert_gaps(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        gaps: &[Gap],
    ) -> Result<Vec<(i64, bool)>, tokio_postgres::Error> {
        let gap = tx
            .prepare(
                "INSERT INTO stream_gaps (gateway_id, stream_id, started_at, ended_at, threshold_ms)
                 VALUES ($1, $2::text::uuid, $3, $4, $5)
                 ON CONFLICT (gateway_id, stream_id, started_at) DO UPDATE SET ended_at = excluded.ended_at",
            )
            .await?;
        let mut sent_gaps = Vec::new();
        for g in gaps.iter().filter(|g| is_uuid(&g.stream_id)) {
            tx.execute(
                &gap,
                &[
                    &self.gateway_id,
                    &g.stream_id,
                    &ts(g.started_ns),
                    &g.ended_ns.map(ts),
                    &(g.threshold_ns / 1_000_000),
                ],
            )
            .await?;
            sent_gaps.push((g.id, g.ended_ns.is_some()));
        }
        Ok(sent_gaps)
    }
}

/// Why a report failed; it is retried with the next one.
#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

/// A time as PostgreSQL's `TIMESTAMP` (UTC) takes it.
fn ts(ns: i64) -> chrono::NaiveDateTime {
    chrono::DateTime::from_timestamp_nanos(ns).naive_utc()
}

/// Only streams with a UUID id are reported: the central tables key them by UUID.
fn is_uuid(s: &str) -> bool {
    s.parse::<uuid::Uuid>().is_ok()
}

/// A stream's gap threshold: `factor` sample periods, at least `min`.
pub fn threshold_ns(sample_rate_hz: Option<f64>, factor: f64, min: Duration) -> i64 {
    let min = min.as_nanos().min(i64::MAX as u128) as i64;
    match sample_rate_hz.filter(|r| r.is_finite() && *r > 0.0) {
        Some(rate) => ((factor / rate) * 1e9).min(i64::MAX as f64).max(min as f64) as i64,
        None => min,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_from_sample_rate_with_a_floor() {
        let min = Duration::from_secs(2);
        assert_eq!(threshold_ns(Some(1.0), 3.0, min), 3_000_000_000);
        assert_eq!(threshold_ns(Some(100.0), 3.0, min), 2_000_000_000);
        assert_eq!(threshold_ns(None, 3.0, min), 2_000_000_000);
        assert_eq!(threshold_ns(Some(0.0), 3.0, min), 2_000_000_000);
    }
}
