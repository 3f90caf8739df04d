//! Writing metric families: a descriptor and its samples, with prometheus-client's constant
//! metrics (the values are read once per scrape, nothing is registered for long).

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// A label set of `N` pairs whose values borrow from the scrape's data.
pub(super) type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

/// Nanoseconds (since the epoch, or a duration) as the seconds Prometheus expects.
pub(super) fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

/// One metric family: a descriptor and its samples.
pub(super) fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in rows {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter without labels.
pub(super) fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// A gauge without labels.
pub(super) fn gauge<V: EncodeGaugeValue + fmt::Debug + Send + Sync>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: V,
) -> fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}
