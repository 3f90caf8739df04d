//! `[report]`: activity, counts and data gaps reported back to PostgreSQL.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::problem::Problems;
use crate::config::secrets::read_secret;

/// Reporting activity, counts and gaps back to PostgreSQL (`sql/heartguard-gateway-report.sql`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Report {
    pub enabled: bool,
    /// Connection string file; default: `bindings.postgres_url_file` (same TLS settings).
    pub postgres_url_file: Option<PathBuf>,
    pub interval_ms: u64,
    /// A stream is in a gap after `gap_factor` sample periods without a reading
    /// (`signal_streams.sample_rate_hz`)…
    pub gap_factor: f64,
    /// …and never less than this (also the threshold of streams without a sample rate).
    pub gap_min_ms: u64,
}

impl Default for Report {
    fn default() -> Self {
        Self { enabled: false, postgres_url_file: None, interval_ms: 60_000, gap_factor: 3.0, gap_min_ms: 10_000 }
    }
}

impl Report {
    /// Checks every `report.*` key, its file included, but whether it has a database and may
    /// be reached without TLS (`config`: both depend on `[bindings]`).
    pub fn validate(&self, p: &mut Problems) {
        let r = self;
        if !(1000..=86_400_000).contains(&r.interval_ms) {
            p.bad("report.interval_ms", "between 1000 and 86400000".into());
        }
        if !(r.gap_factor.is_finite() && r.gap_factor >= 1.0) {
            p.bad("report.gap_factor", "a number of sample periods, at least 1".into());
        }
        if r.gap_min_ms < 100 {
            p.bad("report.gap_min_ms", "at least 100".into());
        }
        if let Some(f) = &self.postgres_url_file
            && let Err(e) = read_secret(f)
        {
            p.bad("report.postgres_url_file", e.to_string());
        }
    }
}
