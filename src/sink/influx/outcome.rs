//! What an attempt to write a batch means for it: the answer's status and body, or why the
//! request failed, classified by what delivery must do ([`WriteOutcome`]).

use std::time::Duration;

use reqwest::{StatusCode, Url, header};

use super::answer::{describe, describe_foreign, innermost, kind, redirect_target, unreadable_answer};

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

/// Longest error body kept for logs.
const MAX_BODY_IN_LOG: usize = 512;

/// Most refused lines an InfluxDB 3 partial-write answer names; when it names this many,
/// others may have been refused too.
pub const V3_MAX_NAMED: usize = 100;

/// The outcome of a request that failed: without an answer (connection, timeout, a break
/// mid-request) it is retried; an answer that could not be read is another matter. InfluxDB
/// 1.x copies a line it cannot parse into the `X-Influxdb-Error` header, where a control
/// character makes the whole answer unreadable. Anything else in the way (a proxy, a server that is not InfluxDB) can
/// answer unreadably too, so the answer alone proves nothing about the lines. It counts as a
/// refusal only of a batch holding such a character (`uncarriable`), which line protocol
/// cannot carry and the encoder never writes (a replayed `damaged` dead letter can hold one):
/// split until that line is alone, it goes to the dead letters and the rest is written. A
/// batch without one is held, like any answer that is not InfluxDB's. So an unreadable answer
/// can only ever dead-letter lines that could not be written.
pub fn failed(e: &reqwest::Error, uncarriable: bool) -> WriteOutcome {
    if unreadable_answer(e) && uncarriable {
        return WriteOutcome::Partial { status: 400, body: describe(e), rejected: None };
    }
    if unreadable_answer(e) {
        return WriteOutcome::Foreign {
            status: None,
            why: format!("unreadable answer (not InfluxDB's?): {}", innermost(e)),
            cause: "unreadable answer".into(),
        };
    }
    let mid_request = !e.is_connect() && !e.is_timeout();
    WriteOutcome::Retry { after: None, why: describe(e), cause: kind(e).into(), mid_request }
}

/// The outcome of a redirect from `url`: never followed (see the module docs of
/// [`super`]), it holds the destination.
pub fn redirected(status: StatusCode, url: &Url, location: Option<&header::HeaderValue>) -> WriteOutcome {
    let to = redirect_target(url, location);
    WriteOutcome::Foreign {
        status: Some(status.as_u16()),
        why: format!(
            "HTTP {} redirect to {to}; writes never follow redirects: set influx.url to where InfluxDB answers",
            status.as_u16()
        ),
        cause: format!("HTTP {} to {to}", status.as_u16()),
    }
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
/// `lines` is how many lines were sent; `cut`, whether the body was cut at
/// [`super::answer::MAX_BODY_READ`].
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

/// The outcome of an answer with `status`, `body` (and whether it was cut at
/// [`super::answer::MAX_BODY_READ`]) to a batch of `lines` lines.
pub fn classify(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
