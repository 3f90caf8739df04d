//! The InfluxDB write API: one request per batch, classified by what the caller must do.
//!
//! Only InfluxDB's own word may send a line to the dead letters: a 400/422 whose body is one
//! of its line-level errors ([`line_error`]). Whatever else can stand between the gateway and
//! InfluxDB (a proxy, a load balancer, a server that is not InfluxDB) answers in other shapes,
//! and those hold the destination instead ([`WriteOutcome::Foreign`]). Redirects are never
//! followed: a client follows a 301/302/303 with a GET without the body, and a 2xx to that is
//! no proof that anything was stored. Answers are read at most [`MAX_BODY_READ`] bytes far.

use std::io::Write as _;
use std::time::Duration;

use reqwest::{StatusCode, Url, header};

use crate::config::secrets::read_secret;
use crate::model::Destination;
use crate::sink::config::{Influx, InfluxApi};

/// What to do after a write attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// 2xx: every line is stored; delete the batch.
    Written,
    /// Worth retrying as it is: network errors, timeouts, 5xx, 429. `after` is the server's
    /// `Retry-After`, to be waited at least. `cause` is `why` without the details that change
    /// from one attempt to the next (`HTTP 503`, `timeout`, `connection failed`).
    Retry { after: Option<Duration>, why: String, cause: String, mid_request: bool },
    /// 413: the body is too large; split the batch.
    TooLarge,
    /// 400/422 with InfluxDB's own line-level error: some lines cannot be written (syntax,
    /// field-type conflict, outside retention); InfluxDB may have stored the others.
    /// `rejected` lists the 0-based line numbers when the server named every refused line
    /// (v3); otherwise the batch must be split to find them.
    Partial { status: u16, body: String, rejected: Option<Vec<usize>> },
    /// 401/403: the credentials are wrong; keep everything, back off, alert.
    Auth { status: u16, body: String },
    /// Other 4xx (unknown database/bucket): keep the data, back off, report.
    Rejected { status: u16, body: String },
    /// An answer that is not InfluxDB's: a redirect, a 400/422 without InfluxDB's line-level
    /// error (a proxy's error page, an empty body), an answer that cannot be read. It says
    /// nothing about the lines: keep everything, back off, alert. `status` is None for an
    /// unreadable answer; `cause` as for `Retry` (a redirect's names where it pointed).
    Foreign { status: Option<u16>, why: String, cause: String },
}

enum Auth {
    None,
    Basic { user: String, password: String },
    Token(String),
}

pub struct InfluxClient {
    http: reqwest::Client,
    endpoint: Url,
    api: InfluxApi,
    auth: Auth,
    gzip: bool,
}

/// Longest error body kept for logs.
const MAX_BODY_IN_LOG: usize = 512;

/// Most bytes of an answer's body read; the rest is never fetched. InfluxDB's error bodies
/// are smaller (a v3 partial-write answer names at most [`V3_MAX_NAMED`] lines, each cut
/// short), except a v1 answer listing many unparsable lines, which is still recognised by its
/// opening; whatever else answers (a proxy streaming a page, a misdirected download) must not
/// grow memory.
pub const MAX_BODY_READ: usize = 64 * 1024;

/// Most refused lines an InfluxDB 3 partial-write answer names; when it names this many,
/// others may have been refused too.
pub const V3_MAX_NAMED: usize = 100;

impl InfluxClient {
    pub fn new(cfg: &Influx) -> Result<Self, String> {
        let mut endpoint = Url::parse(&cfg.url).map_err(|e| format!("influx.url: {e}"))?;
        let path = endpoint.path().trim_end_matches('/').to_owned();
        endpoint.set_path(&match cfg.api {
            InfluxApi::V1 => format!("{path}/write"),
            InfluxApi::V2 => format!("{path}/api/v2/write"),
            InfluxApi::V3 => format!("{path}/api/v3/write_lp"),
        });
        let auth = match (cfg.api, &cfg.token_file, &cfg.username) {
            (InfluxApi::V2 | InfluxApi::V3, Some(f), _) => {
                Auth::Token(read_secret(f).map_err(|e| format!("influx.token_file: {e}"))?)
            }
            (InfluxApi::V1, _, Some(user)) => Auth::Basic {
                user: user.clone(),
                password: match &cfg.password_file {
                    Some(f) => read_secret(f).map_err(|e| format!("influx.password_file: {e}"))?,
                    None => String::new(),
                },
            },
            _ => Auth::None,
        };
        crate::tls::install_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.request_timeout_ms.min(10_000)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("heartguard-gateway/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.ca_file {
            // The gateway's one rustls configuration (ring, exactly this CA, the client
            // certificate if any); without a CA file, https:// trusts the system's store.
            let client = cfg.client_cert_file.as_deref().zip(cfg.client_key_file.as_deref());
            let tls = crate::tls::client_config(ca, client).map_err(|e| format!("influx.ca_file: {e}"))?;
            builder = builder.tls_backend_preconfigured(tls);
        }
        // Never follow a redirect: see the module docs.
        builder = builder.redirect(reqwest::redirect::Policy::none());
        let http = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { http, endpoint, api: cfg.api, auth, gzip: cfg.gzip })
    }

    /// The URL a destination's batches are posted to (credentials are never in it).
    pub fn url_for(&self, dest: &Destination) -> Url {
        let mut url = self.endpoint.clone();
        {
            let mut q = url.query_pairs_mut();
            match self.api {
                InfluxApi::V1 => {
                    // InfluxDB's own v2-compatibility mapping: bucket "db/rp".
                    let (db, rp) = dest.bucket.split_once('/').unwrap_or((&dest.bucket, ""));
                    q.append_pair("db", db);
                    if !rp.is_empty() {
                        q.append_pair("rp", rp);
                    }
                }
                InfluxApi::V2 => {
                    q.append_pair("org", &dest.org);
                    q.append_pair("bucket", &dest.bucket);
                }
                InfluxApi::V3 => {
                    q.append_pair("db", &dest.bucket);
                }
            }
            // Always explicit: v3 would otherwise guess the unit from the magnitude.
            q.append_pair("precision", if self.api == InfluxApi::V3 { "nanosecond" } else { "ns" });
        }
        url
    }

    /// Posts `body` (lines separated by `\n`) to `dest`.
    pub async fn write(&self, dest: &Destination, body: Vec<u8>) -> WriteOutcome {
        let url = self.url_for(dest);
        let lines =
            body.iter().filter(|&&b| b == b'\n').count() + usize::from(body.last().is_some_and(|&b| b != b'\n'));
        let uncarriable = body.iter().any(|&b| b.is_ascii_control() && b != b'\t' && b != b'\n');
        let mut req = self.http.post(url.clone()).header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
        req = match &self.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password)),
            Auth::Token(t) => req.header(header::AUTHORIZATION, format!("Token {t}")),
        };
        let body = if self.gzip {
            match gzip(&body) {
                Ok(z) => {
                    req = req.header(header::CONTENT_ENCODING, "gzip");
                    z
                }
                Err(_) => body,
            }
        } else {
            body
        };
        let mut resp = match req.body(body).send().await {
            Ok(r) => r,
            // InfluxDB 1.x copies a line it cannot parse into the `X-Influxdb-Error` header,
            // where a control character makes the whole answer unreadable. Anything else in
            // the way (a proxy, a server that is not InfluxDB) can answer unreadably too, so
            // the answer alone proves nothing about the lines. It counts as a refusal only of
            // a batch holding such a character, which line protocol cannot carry and the
            // encoder never writes (a replayed `damaged` dead letter can hold one): split
            // until that line is alone, it goes to the dead letters and the rest is written.
            // A batch without one is held, like any answer that is not InfluxDB's. So an
            // unreadable answer can only ever dead-letter lines that could not be written.
            Err(e) if unreadable_answer(&e) && uncarriable => {
                return WriteOutcome::Partial { status: 400, body: describe(&e), rejected: None };
            }
            Err(e) if unreadable_answer(&e) => {
                return WriteOutcome::Foreign {
                    status: None,
                    why: format!("unreadable answer (not InfluxDB's?): {}", innermost(&e)),
                    cause: "unreadable answer".into(),
                };
            }
            Err(e) => {
                let mid_request = !e.is_connect() && !e.is_timeout();
                return WriteOutcome::Retry { after: None, why: describe(&e), cause: kind(&e).into(), mid_request };
            }
        };
        let status = resp.status();
        if status.is_redirection() {
            let to = redirect_target(&url, resp.headers().get(header::LOCATION));
            return WriteOutcome::Foreign {
                status: Some(status.as_u16()),
                why: format!(
                    "HTTP {} redirect to {to}; writes never follow redirects: set influx.url to where InfluxDB answers",
                    status.as_u16()
                ),
                cause: format!("HTTP {} to {to}", status.as_u16()),
            };
        }
        let retry_after =
            resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let content_type = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (text, cut) = read_body(&mut resp).await;
        classify(status, retry_after, text, cut, content_type.as_deref(), lines)
    }

    pub fn api(&self) -> InfluxApi {
        self.api
    }
}

fn unreadable_answer(e: &reqwest::Error) -> bool {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(inner) = src {
        let dbg = format!("{inner:?}");
        if dbg.contains("Parse(Header") {
            return true;
        }
        src = inner.source();
    }
    false
}

/// The body of an answer, at most [`MAX_BODY_READ`] bytes of it, read as it streams in; and
/// whether it was cut there (or broke off).
async fn read_body(resp: &mut reqwest::Response) -> (String, bool) {
    let mut buf: Vec<u8> = Vec::new();
    let cut = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_BODY_READ - buf.len();
                if chunk.len() >= room {
                    buf.extend_from_slice(&chunk[..room]);
                    break true;
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    (String::from_utf8_lossy(&buf).into_owned(), cut)
}

/// Where a redirect pointed, fit for logs and `status`: resolved against the request's URL,
/// without user name, password or password parameters.
fn redirect_target(from: &Url, location: Option<&header::HeaderValue>) -> String {
    let Some(location) = location.and_then(|v| v.to_str().ok()) else {
        return "nowhere (no readable Location)".into();
    };
    let Ok(mut to) = from.join(location) else {
        return "an unreadable Location".into();
    };
    let _ = to.set_username("");
    let _ = to.set_password(None);
    to.set_fragment(None);
    if to.query_pairs().any(|(k, _)| is_secret_param(&k)) {
        let pairs: Vec<(String, String)> = to
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) { "redacted".to_owned() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        to.query_pairs_mut().clear().extend_pairs(pairs);
    }
    short_text(to.as_str(), 200)
}

/// Query parameters that carry credentials (InfluxDB 1.x takes `p`, others a token).
fn is_secret_param(k: &str) -> bool {
    matches!(k.to_ascii_lowercase().as_str(), "p" | "password" | "token" | "access_token")
}

/// The 0-based numbers of the lines the `data` of a v3 partial-write answer names, if it names
/// every refused line: `[{"line_number": 2, "original_line": …, "error_message": …}]`. None
/// when it names [`V3_MAX_NAMED`] or more (the server names no more than that), or a line
/// number that is not one of the `lines` sent: then the batch must be split.
fn named_lines(data: &serde_json::Value, lines: usize) -> Option<Vec<usize>> {
    let data = data.as_array()?;
    let named: Vec<usize> = data
        .iter()
        .filter_map(|d| d.get("line_number")?.as_u64())
        .filter_map(|n| usize::try_from(n).ok()?.checked_sub(1))
        .filter(|&i| i < lines)
        .collect();
    (!named.is_empty() && named.len() == data.len() && named.len() < V3_MAX_NAMED).then_some(named)
}

/// What InfluxDB's own answer to a batch with bad lines says about them.
#[derive(Debug, PartialEq, Eq)]
pub enum LineError {
    /// The server refused these lines (0-based) and stored every other (v3).
    Named(Vec<usize>),
    /// Some lines were refused; which ones, only splitting the batch tells.
    Unnamed,
}

/// Whether `body`, the answer to a 400/422, is one of InfluxDB's line-level errors, and what
/// it says; None for anything else (an HTML page, an empty or plain-text body, other JSON).
/// `lines` is how many lines were sent; `cut`, whether the body was cut at [`MAX_BODY_READ`].
///
/// - v1 (and the `/api/v2/write` of 1.8+): `{"error":"partial write: … dropped=N"}`,
///   `{"error":"unable to parse '…': …"}`, a field type conflict.
/// - v2: `{"code":"invalid","message":"failed to parse line protocol: …","line":N}` (or
///   `unable to parse`), and 422 `{"code":"unprocessable entity","message":"… partial write …"}`.
/// - v3: `{"error":"partial write of line protocol occurred","data":[…]}` naming the refused
///   lines, and `{"error":"parsing failed for write_lp endpoint","data":{…"line_number":N…}}`
///   when the whole batch was refused for one line.
pub fn line_error(body: &str, lines: usize, cut: bool) -> Option<LineError> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        // Cut short (a v1 answer lists every unparsable line in its one message): only the
        // opening can be read, in InfluxDB's own compact form.
        let opens = |p: &str| body.starts_with(p);
        let line_level = opens(r#"{"error":"partial write"#)
            || opens(r#"{"error":"unable to parse"#)
            || opens(r#"{"error":"parsing failed for write_lp"#)
            || (opens(r#"{"code":"invalid","#)
                && (body.contains("failed to parse line protocol") || body.contains("unable to parse")))
            || (opens(r#"{"code":"unprocessable entity","#) && body.contains("partial write"));
        return (cut && line_level).then_some(LineError::Unnamed);
    };
    let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
    if let Some(e) = text("error") {
        if e == "partial write of line protocol occurred" {
            return Some(
                v.get("data").and_then(|d| named_lines(d, lines)).map_or(LineError::Unnamed, LineError::Named),
            );
        }
        let whole_batch = e.starts_with("parsing failed for write_lp") || e == "line protocol parsing error";
        if whole_batch && v.get("data").and_then(|d| d.get("line_number")).is_some() {
            return Some(LineError::Unnamed);
        }
        if e.starts_with("partial write") || e.starts_with("unable to parse") || e.contains("field type conflict") {
            return Some(LineError::Unnamed);
        }
    }
    match (text("code"), text("message")) {
        (Some("invalid"), Some(m))
            if v.get("line").is_some_and(serde_json::Value::is_u64)
                || m.starts_with("failed to parse line protocol")
                || m.starts_with("unable to parse") =>
        {
            Some(LineError::Unnamed)
        }
        (Some("unprocessable entity"), Some(m)) if m.contains("partial write") => Some(LineError::Unnamed),
        _ => None,
    }
}

/// `s` on one line, at most `max` characters.
fn short_text(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// What an answer that is not InfluxDB's looked like, for logs and `status`: its content type
/// and, of a page, its title; of anything else, its opening.
fn describe_foreign(body: &str, content_type: Option<&str>) -> String {
    if body.is_empty() {
        return "empty body".into();
    }
    let lower = body.to_ascii_lowercase();
    let title = lower
        .find("<title>")
        .map(|i| i + "<title>".len())
        .and_then(|i| Some((i, i + lower[i..].find("</title>")?)))
        .and_then(|(a, b)| body.get(a..b));
    let kind = content_type.unwrap_or("no content type");
    match title {
        Some(t) => format!("{kind}: {}", short_text(t, 120)),
        None => format!("{kind}: {}", short_text(body, 120)),
    }
}

/// The outcome of an answer with `status`, `body` (and whether it was cut at
/// [`MAX_BODY_READ`]) to a batch of `lines` lines.
fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: String,
    cut: bool,
    content_type: Option<&str>,
    lines: usize,
) -> WriteOutcome {
    let code = status.as_u16();
    let body = body.trim();
    // Recognised on the whole body read; logs get its first MAX_BODY_IN_LOG bytes.
    let line_error = matches!(code, 400 | 422).then(|| line_error(body, lines, cut)).flatten();
    let mut body = body.to_owned();
    if body.len() > MAX_BODY_IN_LOG {
        let mut cut = MAX_BODY_IN_LOG;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
    }
    match code {
        200..=299 => WriteOutcome::Written,
        413 => WriteOutcome::TooLarge,
        401 | 403 => WriteOutcome::Auth { status: code, body },
        400 | 422 => match line_error {
            Some(LineError::Named(rejected)) => WriteOutcome::Partial { status: code, body, rejected: Some(rejected) },
            Some(LineError::Unnamed) => WriteOutcome::Partial { status: code, body, rejected: None },
            None => WriteOutcome::Foreign {
                status: Some(code),
                why: format!(
                    "HTTP {code} that is not InfluxDB's line-level error ({})",
                    describe_foreign(&body, content_type)
                ),
                cause: format!("HTTP {code} not from InfluxDB"),
            },
        },
        429 | 500..=599 => WriteOutcome::Retry {
            after: retry_after,
            why: format!("HTTP {code}: {body}"),
            cause: format!("HTTP {code}"),
            mid_request: false,
        },
        408 => WriteOutcome::Retry {
            after: retry_after,
            why: "HTTP 408".into(),
            cause: "HTTP 408".into(),
            mid_request: false,
        },
        _ => WriteOutcome::Rejected { status: code, body },
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(24 * 3600)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.signed_duration_since(chrono::Utc::now());
    Some(delta.to_std().unwrap_or(Duration::ZERO).min(Duration::from_secs(24 * 3600)))
}

/// The gzip encoding of a request body, at flate2's fastest level. Public so
/// `benches/hot_path.rs` measures it.
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), flate2::Compression::fast());
    enc.write_all(data)?;
    enc.finish()
}

/// The innermost cause of a request error: for an unreadable answer, what was wrong with it.
fn innermost(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// What kind of failure a request error is, in a word or two.
fn kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = format!("{}: {e}", kind(e));
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(api: InfluxApi) -> Influx {
        Influx { url: "http://127.0.0.1:8086/proxy/".into(), api, ..Influx::default() }
    }

    #[test]
    fn v1_maps_bucket_to_db_and_rp() {
        let c = InfluxClient::new(&cfg(InfluxApi::V1)).expect("client");
        let d = Destination { org: "o".into(), bucket: "heartguard/30d".into() };
        assert_eq!(c.url_for(&d).as_str(), "http://127.0.0.1:8086/proxy/write?db=heartguard&rp=30d&precision=ns");
        let d = Destination { org: "o".into(), bucket: "heartguard vitals".into() };
        assert_eq!(c.url_for(&d).as_str(), "http://127.0.0.1:8086/proxy/write?db=heartguard+vitals&precision=ns");
    }

    #[test]
    fn v2_uses_org_and_bucket() {
        let mut c = cfg(InfluxApi::V2);
        c.url = "http://h:1".into();
        let c = InfluxClient::new(&c).expect("client");
        let d = Destination { org: "heartguard".into(), bucket: "heartguard_vitals".into() };
        assert_eq!(
            c.url_for(&d).as_str(),
            "http://h:1/api/v2/write?org=heartguard&bucket=heartguard_vitals&precision=ns"
        );
    }

    #[test]
    fn classification_follows_the_write_semantics() {
        let answer =
            |s: u16, body: &str| classify(StatusCode::from_u16(s).expect("status"), None, body.into(), false, None, 4);
        let c = |s: u16| answer(s, "x");
        assert_eq!(c(204), WriteOutcome::Written);
        assert_eq!(c(413), WriteOutcome::TooLarge);
        assert!(matches!(c(401), WriteOutcome::Auth { status: 401, .. }));
        assert!(matches!(c(404), WriteOutcome::Rejected { status: 404, .. }));
        let v1 = r#"{"error":"partial write: unable to parse 'm v= 2': missing field value dropped=0"}"#;
        assert!(matches!(answer(400, v1), WriteOutcome::Partial { status: 400, rejected: None, .. }));
        let v2 = r#"{"code":"unprocessable entity","message":"failure writing points to database: partial write: points beyond retention policy dropped=1"}"#;
        assert!(matches!(answer(422, v2), WriteOutcome::Partial { status: 422, rejected: None, .. }));
        let v3 = r#"{"error":"partial write of line protocol occurred","data":[{"original_line":"x","line_number":2,"error_message":"bad"}]}"#;
        assert!(matches!(answer(400, v3), WriteOutcome::Partial { rejected: Some(ref l), .. } if l == &[1]));
        assert_eq!(line_error(v3, 1, false), Some(LineError::Unnamed), "a line that was not sent");
        assert!(matches!(c(400), WriteOutcome::Foreign { status: Some(400), .. }));
        assert!(matches!(c(422), WriteOutcome::Foreign { status: Some(422), .. }));
        assert!(matches!(c(503), WriteOutcome::Retry { .. }));
        assert!(matches!(c(429), WriteOutcome::Retry { .. }));
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn only_influxdbs_own_line_errors_are_line_errors() {
        let le = |body: &str| line_error(body, 10, false);
        // v1, as InfluxDB 1.6 answers.
        assert_eq!(le(r#"{"error":"unable to parse 'm v= 2': missing field value"}"#), Some(LineError::Unnamed));
        assert_eq!(
            le(
                r#"{"error":"partial write: field type conflict: input field \"v\" on measurement \"m\" is type string, already exists as type integer dropped=1"}"#
            ),
            Some(LineError::Unnamed)
        );
        // v2.
        assert_eq!(
            le(
                r#"{"code":"invalid","message":"failed to parse line protocol: errors encountered on line(s):\nerror parsing line 2 (1-based): No fields were provided","line":2}"#
            ),
            Some(LineError::Unnamed)
        );
        assert_eq!(le(r#"{"code":"invalid","message":"bucket name is required"}"#), None);
        // v3: the refused lines named, or the whole batch refused for one.
        let named = |n: usize| {
            let data: Vec<String> = (1..=n)
                .map(|i| format!(r#"{{"original_line":"x","line_number":{i},"error_message":"bad"}}"#))
                .collect();
            format!(r#"{{"error":"partial write of line protocol occurred","data":[{}]}}"#, data.join(","))
        };
        assert_eq!(line_error(&named(3), 200, false), Some(LineError::Named(vec![0, 1, 2])));
        assert_eq!(line_error(&named(V3_MAX_NAMED), 200, false), Some(LineError::Unnamed), "maybe more refused");
        assert_eq!(
            le(
                r#"{"error":"parsing failed for write_lp endpoint","data":{"original_line":"x","line_number":1,"error_message":"No fields were provided"}}"#
            ),
            Some(LineError::Unnamed)
        );
        // Anything else.
        for other in [
            "",
            "Bad Request",
            "<html><head><title>400 Bad Request</title></head></html>",
            r#"{"error":"bad gateway"}"#,
            r#"{"message":"Request header or cookie too large"}"#,
            r#"{"error":"invalid character in database name","data":null}"#,
        ] {
            assert_eq!(le(other), None, "{other}");
        }
        // Cut at MAX_BODY_READ: recognised by its opening, and only then.
        let long = format!(r#"{{"error":"partial write: unable to parse '{}"#, "m v= 1".repeat(100));
        assert_eq!(line_error(&long, 10, true), Some(LineError::Unnamed));
        assert_eq!(line_error(&long, 10, false), None, "a whole body must parse");
        assert_eq!(line_error(r#"{"error":"bad gat"#, 10, true), None);
    }

    #[test]
    fn a_redirect_shows_where_it_pointed_without_credentials() {
        let from = Url::parse("http://10.0.0.1:8086/write?db=x&precision=ns").expect("url");
        let loc = |s: &str| header::HeaderValue::from_str(s).expect("header");
        assert_eq!(
            redirect_target(&from, Some(&loc("https://gw:secret@influx.example/write?db=x&p=hunter2#f"))),
            "https://influx.example/write?db=x&p=redacted"
        );
        assert_eq!(redirect_target(&from, Some(&loc("/login"))), "http://10.0.0.1:8086/login");
        assert_eq!(redirect_target(&from, None), "nowhere (no readable Location)");
    }

    #[test]
    fn an_answer_that_is_not_influxdbs_is_described_by_its_title() {
        let page = "<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head><body>…</body></html>";
        assert_eq!(
            describe_foreign(page, Some("text/html")),
            "text/html: 400 The plain HTTP request was sent to HTTPS port"
        );
        assert_eq!(describe_foreign("", None), "empty body");
        assert_eq!(
            describe_foreign("Request Header Or Cookie Too Large", None),
            "no content type: Request Header Or Cookie Too Large"
        );
    }
}
