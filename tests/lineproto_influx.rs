//! The line-protocol encoder against a real InfluxDB 1.x: arbitrary measurement names and tag
//! values are written by the encoder and read back exactly as the documented rule says.

use heartguard_gateway::fields::FieldValue;
use heartguard_gateway::lineproto::{carried, carried_measurement, encode_line, series_prefix};
use heartguard_testkit::Influx1;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::json;

const DB: &str = "roundtrip";

fn arbitrary_texts(n: usize, seed_regex: &str) -> Vec<String> {
    let mut runner = TestRunner::deterministic();
    let strategy = proptest::string::string_regex(seed_regex).expect("regex");
    (0..n).map(|_| strategy.new_tree(&mut runner).expect("value").current()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_tag_values_and_measurements_round_trip_through_influxdb() {
    let influx = Influx1::start();
    influx.create_db(DB).await;

    let values = arbitrary_texts(300, "[ -~\t\n\r\x01\x1b\\\\é心🫀]{1,24}");
    let measurements = arbitrary_texts(40, "[a-z][ -~\t\n\\\\é]{0,16}");

    let mut body = String::new();
    for (i, v) in values.iter().enumerate() {
        let prefix = series_prefix("rt", [("id", i.to_string().as_str()), ("v", v.as_str()), ("k,=x ", "key")]);
        encode_line(&mut body, &prefix, [("n", FieldValue::Int(i as i64))], 1_000 + i as i64);
        body.push('\n');
    }
    for (i, m) in measurements.iter().enumerate() {
        let prefix = series_prefix(m, [("id", i.to_string().as_str())]);
        encode_line(&mut body, &prefix, [("x", FieldValue::Float(1.0))], 1);
        body.push('\n');
    }
    let (status, resp) = influx.write(DB, &body).await;
    assert_eq!(status, 204, "InfluxDB accepted every line: {resp}");

    let rows = influx.rows(DB, "rt").await;
    assert_eq!(rows.len(), values.len(), "one point per line, none split or merged");
    for r in &rows {
        let i: usize = r["id"].as_str().and_then(|s| s.parse().ok()).expect("id tag");
        assert_eq!(r["v"], json!(carried(&values[i])), "value #{i} {:?}", values[i]);
        assert_eq!(r["k,=x "], json!("key"));
        assert_eq!(r["n"], json!(i));
    }

    let shown = influx.query(DB, "SHOW MEASUREMENTS").await;
    let mut got: Vec<String> = shown["results"][0]["series"][0]["values"]
        .as_array()
        .expect("measurements")
        .iter()
        .filter_map(|v| v[0].as_str().map(str::to_owned))
        .filter(|m| m != "rt")
        .collect();
    let mut want: Vec<String> = measurements.iter().map(|m| carried_measurement(m).into_owned()).collect();
    got.sort();
    want.sort();
    want.dedup();
    assert_eq!(got, want);
}
