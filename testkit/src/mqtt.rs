//! Readings as MQTT messages, and publishing them the way a monitor does (QoS 1).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counter for unique MQTT client ids across calls (and tests) in this process.
static CLIENT_SEQ: AtomicU64 = AtomicU64::new(0);

/// Epoch milliseconds of an RFC 3339 time.
pub fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).expect("time").timestamp_millis()
}

/// A JSON reading for `devices/{serial}/vitals`.
pub fn msg(serial: &str, payload: serde_json::Value) -> (String, Vec<u8>) {
    (format!("devices/{serial}/vitals"), payload.to_string().into_bytes())
}

/// Publishes every `(topic, payload)` at QoS 1 to the broker on 127.0.0.1:`port` and
/// returns once the broker acknowledged each one (PubAck). Panics after 30 s overall,
/// or on any MQTT error, saying how many were acknowledged.
///
/// Fresh client id and clean session per call. All requests are queued up front (the
/// request channel is as large as `msgs`) and the event loop keeps 100 in flight, so
/// 10,000 messages take well under a second.
pub async fn publish_qos1(port: u16, msgs: &[(String, Vec<u8>)]) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

    let total = msgs.len();
    if total == 0 {
        return;
    }
    let id = format!("hg-test-pub-{}-{}", std::process::id(), CLIENT_SEQ.fetch_add(1, Ordering::Relaxed));
    let mut opts = MqttOptions::new(id.clone(), "127.0.0.1", port);
    opts.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(100)
        // Default is 10 KiB; tests may send big payloads (MQTT allows ~256 MiB).
        .set_max_packet_size(256 * 1024 * 1024, 256 * 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, total + 16);
    for (topic, payload) in msgs {
        client
            .try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
            .unwrap_or_else(|e| panic!("publish_qos1: cannot queue publish to {topic:?}: {e}"));
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut acked = 0usize;
    while acked < total {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => panic!(
                "publish_qos1 ({id}) to port {port}: timed out after 30 s with {acked} of \
                 {total} messages acknowledged"
            ),
            Ok(Err(e)) => panic!(
                "publish_qos1 ({id}) to port {port}: MQTT error with {acked} of {total} \
                 messages acknowledged: {e}"
            ),
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
        }
    }

    // Say goodbye properly so the broker does not log a protocol error; failures
    // here do not matter any more, everything was acknowledged.
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}
