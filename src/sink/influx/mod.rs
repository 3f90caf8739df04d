//! The InfluxDB write API: one request per batch, classified by what the caller must do.
//!
//! Only InfluxDB's own word may send a line to the dead letters: a 400/422 whose body is one
//! of its line-level errors ([`outcome::line_error`]). Whatever else can stand between the
//! gateway and InfluxDB (a proxy, a load balancer, a server that is not InfluxDB) answers in
//! other shapes, and those hold the destination instead ([`WriteOutcome::Foreign`]).
//! Redirects are never followed: a client follows a 301/302/303 with a GET without the body,
//! and a 2xx to that is no proof that anything was stored. Answers are read at most
//! [`answer::MAX_BODY_READ`] bytes far.
//!
//! Layout: this file is the client (endpoint, credentials, the request); [`outcome`] says
//! what an answer or a failed request means for the batch; [`answer`] reads answers and
//! describes them, and request errors, for logs and status without credentials.

pub mod answer;
pub mod outcome;

use std::io::Write as _;
use std::time::Duration;

use reqwest::{Url, header};

use crate::config::secrets::{SecretError, read_secret};
use crate::model::Destination;
use crate::sink::config::{Influx, InfluxApi};
use crate::tls::TlsError;
use outcome::WriteOutcome;

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

/// Why a client could not be built from `[influx]`; each message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("influx.url: {0}")]
    Url(<Url as std::str::FromStr>::Err),
    #[error("influx.token_file: {0}")]
    TokenFile(SecretError),
    #[error("influx.password_file: {0}")]
    PasswordFile(SecretError),
    #[error("influx.ca_file: {0}")]
    Tls(TlsError),
    #[error("HTTP client: {0}")]
    Http(reqwest::Error),
}

impl InfluxClient {
    pub fn new(cfg: &Influx) -> Result<Self, ClientError> {
        let mut endpoint = Url::parse(&cfg.url).map_err(ClientError::Url)?;
        let path = endpoint.path().trim_end_matches('/').to_owned();
        endpoint.set_path(&match cfg.api {
            InfluxApi::V1 => format!("{path}/write"),
            InfluxApi::V2 => format!("{path}/api/v2/write"),
            InfluxApi::V3 => format!("{path}/api/v3/write_lp"),
        });
        let auth = match (cfg.api, &cfg.token_file, &cfg.username) {
            (InfluxApi::V2 | InfluxApi::V3, Some(f), _) => Auth::Token(read_secret(f).map_err(ClientError::TokenFile)?),
            (InfluxApi::V1, _, Some(user)) => Auth::Basic {
                user: user.clone(),
                password: match &cfg.password_file {
                    Some(f) => read_secret(f).map_err(ClientError::PasswordFile)?,
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
            let tls = crate::tls::client_config(ca, client).map_err(ClientError::Tls)?;
            builder = builder.tls_backend_preconfigured(tls);
        }
        // Never follow a redirect: see the module docs.
        builder = builder.redirect(reqwest::redirect::Policy::none());
        let http = builder.build().map_err(ClientError::Http)?;
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
            Err(e) => return outcome::failed(&e, uncarriable),
        };
        let status = resp.status();
        if status.is_redirection() {
            return outcome::redirected(status, &url, resp.headers().get(header::LOCATION));
        }
        let retry_after =
            resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(outcome::parse_retry_after);
        let content_type = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (text, cut) = answer::read_body(&mut resp).await;
        outcome::classify(status, retry_after, text, cut, content_type.as_deref(), lines)
    }

    pub fn api(&self) -> InfluxApi {
        self.api
    }
}

/// The gzip encoding of a request body, at flate2's fastest level. Public so
/// `benches/hot_path.rs` measures it.
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), flate2::Compression::fast());
    enc.write_all(data)?;
    enc.finish()
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
}
