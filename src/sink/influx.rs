//! The InfluxDB write API: one request per batch, classified by what the caller must do.

use std::io::Write as _;
use std::time::Duration;

use reqwest::{StatusCode, Url, header};

use crate::bindings::Destination;
use crate::config::{Influx, InfluxApi, read_secret};

/// What to do after a write attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// 2xx: every line is stored; delete the batch.
    Written,
    /// Worth retrying as it is: network errors, timeouts, 5xx, 429. `after` is the server's
    /// `Retry-After`, to be waited at least.
    Retry { after: Option<Duration>, why: String, mid_request: bool },
    /// 413: the body is too large; split the batch.
    TooLarge,
    /// 400/422: some lines cannot be written (syntax, field-type conflict, outside retention);
    /// InfluxDB may have stored the others. `rejected` lists the 0-based line numbers when
    /// the server named them (v3); otherwise the batch must be split to find them.
    Partial { status: u16, body: String, rejected: Option<Vec<usize>> },
    /// 401/403: the credentials are wrong; keep everything, back off, alert.
    Auth { status: u16, body: String },
    /// Other 4xx (bad line, unknown database/bucket): keep the data, back off, report.
    Rejected { status: u16, body: String },
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
        let mut req = self.http.post(self.url_for(dest)).header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
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
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) if unreadable_answer(&e) => {
                // InfluxDB 1.x copies a rejected line into the `X-Influxdb-Error` header; a
                // control character there makes the answer unparseable. It is a rejection.
                return WriteOutcome::Partial { status: 400, body: describe(&e), rejected: None };
            }
            Err(e) => {
                let mid_request = !e.is_connect() && !e.is_timeout();
                return WriteOutcome::Retry { after: None, why: describe(&e), mid_request };
            }
        };
        let status = resp.status();
        let retry_after =
            resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let text = resp.text().await.unwrap_or_default();
        classify(status, retry_after, text)
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

/// The 0-based numbers of the lines a v3 partial-write answer names, if it names any:
/// `{"error": …, "data": [{"line_number": 2, "original_line": …, "error_message": …}]}`.
pub fn rejected_lines(body: &str) -> Option<Vec<usize>> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let data = v.get("data")?.as_array()?;
    let lines: Vec<usize> = data
        .iter()
        .filter_map(|d| d.get("line_number")?.as_u64())
        .filter_map(|n| usize::try_from(n).ok()?.checked_sub(1))
        .collect();
    (!lines.is_empty() && lines.len() == data.len()).then_some(lines)
}

fn classify(status: StatusCode, retry_after: Option<Duration>, body: String) -> WriteOutcome {
    let mut body = body.trim().to_owned();
    if body.len() > MAX_BODY_IN_LOG {
        let mut cut = MAX_BODY_IN_LOG;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
    }
    let code = status.as_u16();
    match code {
        200..=299 => WriteOutcome::Written,
        413 => WriteOutcome::TooLarge,
        401 | 403 => WriteOutcome::Auth { status: code, body },
        400 | 422 => {
            let rejected = rejected_lines(&body);
            WriteOutcome::Partial { status: code, body, rejected }
        }
        429 | 500..=599 => {
            WriteOutcome::Retry { after: retry_after, why: format!("HTTP {code}: {body}"), mid_request: false }
        }
        408 => WriteOutcome::Retry { after: retry_after, why: "HTTP 408".into(), mid_request: false },
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

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut s = format!("{kind}: {e}");
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
        let c = |s: u16| classify(StatusCode::from_u16(s).expect("status"), None, "x".into());
        assert_eq!(c(204), WriteOutcome::Written);
        assert_eq!(c(413), WriteOutcome::TooLarge);
        assert!(matches!(c(401), WriteOutcome::Auth { status: 401, .. }));
        assert!(matches!(c(404), WriteOutcome::Rejected { status: 404, .. }));
        assert!(matches!(c(400), WriteOutcome::Partial { status: 400, rejected: None, .. }));
        assert!(matches!(c(422), WriteOutcome::Partial { status: 422, .. }));
        let v3 = r#"{"error":"partial write of line protocol occurred","data":[{"original_line":"x","line_number":2,"error_message":"bad"}]}"#;
        assert_eq!(rejected_lines(v3), Some(vec![1]));
        assert_eq!(rejected_lines("{\"error\":\"partial write: dropped=1\"}"), None);
        assert!(matches!(c(503), WriteOutcome::Retry { .. }));
        assert!(matches!(c(429), WriteOutcome::Retry { .. }));
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
