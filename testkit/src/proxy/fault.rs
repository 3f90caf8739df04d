//! A fault-injecting HTTP proxy in front of a real server.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What [`FaultProxy`] does with one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Passes it to the upstream server and its answer back (502 if the upstream is down).
    Forward,
    /// Answers with these raw bytes (status line, headers, blank line, body) instead.
    Answer(String),
}

/// One request [`FaultProxy`] handled.
#[derive(Debug, Clone)]
pub struct ProxiedRequest {
    /// `POST /write?db=…` (method and target, as sent).
    pub request_line: String,
    pub body: Vec<u8>,
    /// The status line of what the client got back.
    pub answered: String,
}

/// An HTTP/1.1 proxy on a loopback port in front of `127.0.0.1:upstream_port`, for answers
/// a real server will not give on demand: `decide(n, request)` picks, for the n-th request
/// (from 0), whether it is forwarded or answered by the proxy itself (an HTML error page, a
/// redirect). Every connection carries one request and is closed after the answer, so the
/// client never reuses a connection the proxy is about to drop. Runs as tasks of the calling
/// tokio runtime; they end with it.
pub struct FaultProxy {
    pub port: u16,
    seen: std::sync::Arc<Mutex<Vec<ProxiedRequest>>>,
}

impl FaultProxy {
    pub async fn start(
        upstream_port: u16,
        decide: impl Fn(usize, &ProxiedRequest) -> Fault + Send + Sync + 'static,
    ) -> Self {
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fault proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, decide) = (seen.clone(), Arc::new(decide));
        tokio::spawn(async move {
            let n = Arc::new(AtomicU64::new(0));
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                let (log, decide, n) = (log.clone(), decide.clone(), n.clone());
                tokio::spawn(async move {
                    let _ = proxy_one(sock, upstream_port, &*decide, &n, &log).await;
                });
            }
        });
        FaultProxy { port, seen }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request handled so far, in the order they were answered.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A 400 as nginx answers plain HTTP sent to its HTTPS port: HTML, nothing of InfluxDB's.
pub fn html_400() -> Fault {
    let page = "<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent to HTTPS port</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
    Fault::Answer(format!(
        "HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
        page.len()
    ))
}

/// A 400 with an empty body, as load balancers answer requests whose headers they refuse.
pub fn empty_400() -> Fault {
    Fault::Answer("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into())
}

/// A redirect (301, 302, 303, 307, 308) to `location`.
pub fn redirect(status: u16, location: &str) -> Fault {
    let reason = match status {
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        _ => "Permanent Redirect",
    };
    Fault::Answer(format!(
        "HTTP/1.1 {status} {reason}\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ))
}

/// Reads one request (head and `Content-Length` body) from `sock`; None at EOF.
async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&tmp[..k]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&tmp[..k]),
        }
    }
    let body = buf.split_off(head_end);
    Some((buf, body))
}

async fn proxy_one(
    mut sock: tokio::net::TcpStream,
    upstream_port: u16,
    decide: &(dyn Fn(usize, &ProxiedRequest) -> Fault + Send + Sync),
    n: &AtomicU64,
    log: &Mutex<Vec<ProxiedRequest>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((head, body)) = read_request(&mut sock).await else { return Ok(()) };
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut req = ProxiedRequest {
        request_line: text.lines().next().unwrap_or_default().rsplit_once(' ').map_or("", |(r, _)| r).to_owned(),
        body,
        answered: String::new(),
    };
    let i = n.fetch_add(1, Ordering::SeqCst) as usize;
    let answer = match decide(i, &req) {
        Fault::Answer(raw) => raw.into_bytes(),
        Fault::Forward => {
            // The request as it came, but asking the upstream to close after answering: its
            // answer is then everything up to EOF, whatever its framing.
            let mut fwd: String = text
                .split("\r\n")
                .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
                .map(|l| format!("{l}\r\n"))
                .collect();
            fwd.push_str("Connection: close\r\n\r\n");
            match tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await {
                Ok(mut up) => {
                    up.write_all(fwd.as_bytes()).await?;
                    up.write_all(&req.body).await?;
                    let mut answer = Vec::new();
                    up.read_to_end(&mut answer).await?;
                    answer
                }
                Err(_) => {
                    let page = "<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>";
                    format!(
                        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                        page.len()
                    )
                    .into_bytes()
                }
            }
        }
    };
    req.answered = String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned();
    let written = sock.write_all(&answer).await;
    let _ = sock.shutdown().await;
    log.lock().unwrap_or_else(|e| e.into_inner()).push(req);
    written
}
