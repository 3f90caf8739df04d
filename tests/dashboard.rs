//! The Grafana dashboard in `dashboards/` only queries metrics the gateway exports.

use std::collections::BTreeSet;
use std::sync::Arc;

use heartguard_gateway::queue::inspect::QueueGauges;
use heartguard_gateway::telemetry::Counters;
use heartguard_gateway::telemetry::metrics::{Gauges, render};

/// Every `heartguard_…` metric name in `text`.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("heartguard_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_dashboard_query_uses_an_exported_metric() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/heartguard-gateway.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read the dashboard")).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());

    let scrape =
        render(&Arc::new(Counters::default()), Gauges { queue: Some(QueueGauges::default()), ..Gauges::default() });
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| names(e)).collect();
    for name in &used {
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        assert!(exported.contains(family), "the dashboard queries {name}, which the gateway does not export");
    }
    // And the other way round: nothing exported is left off the dashboard.
    for family in &exported {
        assert!(used.iter().any(|u| u.starts_with(family.as_str())), "{family} is on no dashboard panel");
    }
}
