//! HTTP on loopback: blocking probes for readiness checks, and the async client of the
//! query helpers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// True if something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn tcp_accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Minimal blocking `GET` (HTTP/1.0, so the server closes the connection after the
/// answer) returning the status code, or `None` if there is no valid answer. Used for
/// readiness checks so `start()` needs no async runtime.
pub(crate) fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut head = [0u8; 32];
    let mut len = 0;
    // Read just enough for "HTTP/1.x NNN".
    while len < 12 {
        match stream.read(&mut head[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    let text = std::str::from_utf8(&head[..len]).ok()?;
    let mut parts = text.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.get(..3)?.parse().ok()
}

/// HTTP client for the query helpers. No connection pooling: servers get stopped and
/// restarted under the tests' feet, and a pooled connection to a killed server would
/// make the next helper call fail spuriously. No proxy: everything is on loopback.
pub fn http_client() -> reqwest::Client {
    // reqwest is built with rustls but without a crypto provider (`rustls-no-provider`, as
    // in the gateway): install the gateway's, ring (`tls::install_provider`).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build reqwest client")
}
