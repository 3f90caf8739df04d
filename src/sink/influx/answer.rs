//! Reading an answer, and describing answers and request errors for logs and `status`:
//! bounded in size, on one line, without credentials.

use reqwest::{Url, header};

/// Most bytes of an answer's body read; the rest is never fetched. InfluxDB's error bodies
/// are smaller (a v3 partial-write answer names at most [`super::outcome::V3_MAX_NAMED`]
/// lines, each cut short), except a v1 answer listing many unparsable lines, which is still
/// recognised by its opening; whatever else answers (a proxy streaming a page, a misdirected
/// download) must not grow memory.
pub const MAX_BODY_READ: usize = 64 * 1024;

/// The body of an answer, at most [`MAX_BODY_READ`] bytes of it, read as it streams in; and
/// whether it was cut there (or broke off).
pub async fn read_body(resp: &mut reqwest::Response) -> (String, bool) {
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
pub fn redirect_target(from: &Url, location: Option<&header::HeaderValue>) -> String {
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
pub fn describe_foreign(body: &str, content_type: Option<&str>) -> String {
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

/// Whether the request failed on an answer that could not be read (a malformed header).
pub fn unreadable_answer(e: &reqwest::Error) -> bool {
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

/// The innermost cause of a request error: for an unreadable answer, what was wrong with it.
pub fn innermost(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// What kind of failure a request error is, in a word or two.
pub fn kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

/// A request error with its kind and every cause, for logs and `status`.
pub fn describe(e: &reqwest::Error) -> String {
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
