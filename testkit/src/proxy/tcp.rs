//! A TCP proxy that can swallow one direction and cut its connections.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::ports::free_port;

/// A TCP proxy on a free loopback port in front of 127.0.0.1:`upstream_port`, for faults a
/// real server does not produce on demand: bytes from the client that never reach the
/// server (`swallow_upstream`), and connections cut by the network (`cut`). Plain threads,
/// so it works from sync and async tests alike; stops accepting and cuts everything on drop.
pub struct TcpProxy {
    pub port: u16,
    shared: std::sync::Arc<ProxyShared>,
}

#[derive(Default)]
struct ProxyShared {
    stop: std::sync::atomic::AtomicBool,
    swallow: std::sync::atomic::AtomicBool,
    /// What the client sent while swallowing, in order.
    swallowed: Mutex<Vec<u8>>,
    /// Both sockets of every connection, for `cut`.
    open: Mutex<Vec<TcpStream>>,
}

impl TcpProxy {
    pub fn start(upstream_port: u16) -> Self {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the proxy");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let shared = std::sync::Arc::new(ProxyShared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    // Non-blocking: nothing to accept yet (or a passing error).
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let clones = (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone());
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = clones else { continue };
                s.open.lock().unwrap_or_else(|e| e.into_inner()).extend([c3, s3]);
                let up = s.clone();
                std::thread::spawn(move || pump(client, server, Some(up.as_ref())));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        TcpProxy { port, shared }
    }

    /// While on, what the client sends is kept here instead of reaching the server.
    pub fn swallow_upstream(&self, on: bool) {
        self.shared.swallow.store(on, Ordering::SeqCst);
    }

    /// Everything swallowed so far.
    pub fn swallowed(&self) -> Vec<u8> {
        self.shared.swallowed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Cuts every open connection (both sides see it closed); new ones are still accepted.
    pub fn cut(&self) {
        for s in self.shared.open.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

/// Copies `from` to `to` until either side closes; with `swallow`, the bytes read while it
/// is on are kept there instead.
fn pump(mut from: TcpStream, mut to: TcpStream, swallow: Option<&ProxyShared>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(s) = swallow.filter(|s| s.swallow.load(Ordering::SeqCst)) {
            s.swallowed.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]);
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}
