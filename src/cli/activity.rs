//! `activity`: per-stream readings, deliveries, last times and open data gaps, read-only.

use super::Error;
use crate::config::Config;
use crate::queue::{activity, schema};

pub fn command(cfg: &Config) -> Result<(), Error> {
    let conn = schema::open_read_only(&cfg.gateway.data_dir)?;
    let now = crate::now_ns();
    let ago = |ns: Option<i64>| {
        ns.map(|t| format!("{} s ago", (now - t).max(0) / 1_000_000_000)).unwrap_or_else(|| "never".into())
    };
    println!("stream\treadings\tdelivered\tlast reading\tlast delivered\tgap");
    for a in activity::list(&conn)? {
        let gap = a.open_gap_ns.map(|g| format!("open since {}", ago(Some(g)))).unwrap_or_else(|| "-".into());
        println!(
            "{}\t{}\t{}\t{}\t{}\t{gap}",
            a.stream_id,
            a.readings,
            a.delivered,
            ago(a.last_reading_ns),
            ago(a.last_delivered_ns)
        );
    }
    Ok(())
}
