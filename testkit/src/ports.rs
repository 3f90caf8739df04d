//! Free loopback ports for test servers.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports this process already handed out. A port is never handed out twice, even
/// after the server using it is gone: a test may restart a server on "its" port
/// later, and another test must not have taken it in between.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns a loopback TCP port that is free right now and that this process never
/// handed out before.
///
/// Ports are taken from below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, usually 32768–60999): the kernel picks
/// the local port of every outgoing connection (reqwest, rumqttc, the gateway …) from
/// that range, so a port from `bind(127.0.0.1:0)` could be taken by some client's
/// connection between the moment we hand it out and the moment the server binds it.
/// Below the range only explicit `bind`s compete, and each candidate is checked by
/// binding it. The start offset depends on the process id, so two test processes
/// running at the same time rarely probe the same ports. If the range cannot be read
/// (not Linux) we fall back to `bind(127.0.0.1:0)`.
pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);

    const LOW: u16 = 20_000;
    let high = ephemeral_range_start().unwrap_or(0);
    if high > LOW + 1_000 {
        let span = u32::from(high - LOW);
        let start = (std::process::id().wrapping_mul(7_919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0))
            % span;
        for i in 0..span {
            let port = LOW + ((start + i) % span) as u16;
            if handed_out.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.insert(port);
                return port;
            }
        }
    }
    // Fallback: let the kernel choose, but still never repeat a port.
    for _ in 0..1_000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr of a bound listener").port();
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("free_port: found no free loopback port");
}

/// First port of the kernel's ephemeral range, if known.
fn ephemeral_range_start() -> Option<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    text.split_whitespace().next()?.parse().ok()
}
