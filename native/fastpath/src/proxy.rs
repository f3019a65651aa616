//! The fast path: `POST /v2/models/{m}[/versions/{v}]/infer` of a proxied model, end to end.
//!
//! This is `RouterService.model_infer` of `workers/router/app.py` with `UpstreamPool.forward`: the same
//! checks in the same order (deadline header, body size and read time -- the body is read by the connection
//! loop, `server.rs` --, deadline registration, EDF admission), the same replica rotation and retries (`_transparent`), the same answer passed on and the
//! same errors (`errors.rs`). What the Python router counts for such a request is counted here for it to
//! pull: one duration observation per request that got past admission, one row per answer passed on,
//! one failure per failed attempt. A replica's late refusal (Triton's queue timeout, `LateRefused`) is not
//! retried: before the last replica it is answered as the router's `late_refused` error.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, Uri};
use tokio::time::Instant;

use crate::admission::{Permit, Refusal};
use crate::body::OutBody;
use crate::errors::{ErrorAnswer, Reason};
use crate::log;
use crate::pyfmt::{prefix_chars, py_repr, py_value, scrub};
use crate::state::{App, Route, Table};
use crate::stats::{FailureReason, ModelStats};
use crate::upstream::{Answer, Failure};

/// Triton's error, with a 503, for a request its queue timeout refused (`upstream.TRITON_QUEUE_TIMEOUT`).
const TRITON_QUEUE_TIMEOUT: &str = "Request timeout expired";

/// The client headers a proxied request keeps (`upstream.PROXY_REQUEST_HEADERS`).
const PASSED_REQUEST_HEADERS: [&str; 4] =
    ["content-type", "inference-header-content-length", "content-encoding", "accept-encoding"];

/// The model and version (if any) of a fast-path-shaped path, percent-decoded as Starlette routes it.
pub fn match_infer(path: &str) -> Option<(Cow<'_, str>, Option<String>)> {
    let decoded = if path.contains('%') { Cow::Owned(percent_decode(path)) } else { Cow::Borrowed(path) };
    let rest = decoded.strip_prefix("/v2/models/")?;
    let mut parts = rest.split('/');
    let model = parts.next().filter(|m| !m.is_empty())?;
    let (version, last) = match (parts.next()?, parts.next(), parts.next(), parts.next()) {
        ("infer", None, _, _) => (None, true),
        ("versions", Some(v), Some("infer"), None) if !v.is_empty() => (Some(v.to_owned()), true),
        _ => (None, false),
    };
    if !last {
        return None;
    }
    let model = match &decoded {
        Cow::Borrowed(_) => Cow::Borrowed(&path["/v2/models/".len().."/v2/models/".len() + model.len()]),
        Cow::Owned(_) => Cow::Owned(model.to_owned()),
    };
    Some((model, version))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A path segment percent-encoded for an upstream URL (everything but RFC 3986 `pchar`s).
fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|b| *b as char).collect()
}

/// The budget in a deadline header value, in ms, clamped to `maximum_ms` (`limits.parse_deadline_ms`).
pub fn parse_deadline_ms(raw: &[u8], header: &str, maximum_ms: f64) -> Result<f64, String> {
    let (whole, decimals) = match raw.iter().position(|b| *b == b'.') {
        Some(at) => (&raw[..at], Some(&raw[at + 1..])),
        None => (raw, None),
    };
    let digits =
        |part: &[u8], most: usize| !part.is_empty() && part.len() <= most && part.iter().all(u8::is_ascii_digit);
    if !digits(whole, 9) || decimals.is_some_and(|d| !digits(d, 3)) {
        let text = latin1(raw);
        let shown = if text.chars().count() <= 32 { text } else { format!("{}...", prefix_chars(&text, 32)) };
        return Err(format!(
            "header {header}: must be milliseconds as digits with up to 3 decimals (e.g. 250 or 12.5), got {}",
            py_repr(&shown)
        ));
    }
    let value: f64 = std::str::from_utf8(raw).ok().and_then(|s| s.parse().ok()).unwrap_or(f64::MAX);
    Ok(value.min(maximum_ms))
}

/// The request's budget: its deadline header (strict, clamped), else the table's default (`_budget_ms`).
fn budget_ms(headers: &HeaderMap, table: &Table) -> Result<Option<f64>, ErrorAnswer> {
    let spec = &table.spec;
    let mut values = headers.get_all(&spec.deadline_header).iter();
    let Some(first) = values.next() else { return Ok(spec.default_deadline_ms) };
    let more = values.count();
    let name = spec.deadline_header.as_str();
    if more > 0 {
        return Err(ErrorAnswer::new(Reason::BadRequest, format!("header {name}: given {} times", more + 1)));
    }
    parse_deadline_ms(first.as_bytes(), name, spec.max_deadline_ms)
        .map(Some)
        .map_err(|message| ErrorAnswer::new(Reason::BadRequest, message))
}

/// What [`prepare`] found in a fast-path request's head.
pub struct Prepared {
    budget: Option<f64>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// The checks of `model_infer` before its body is read: the deadline header, then the declared size
/// (`Content-Length` itself was checked by the parser: ASCII digits, given once).
pub fn prepare(table: &Table, headers: &HeaderMap, declared: Option<u64>) -> Result<Prepared, ErrorAnswer> {
    let limits = &table.spec.limits;
    let budget = budget_ms(headers, table).map_err(ErrorAnswer::at_proxy)?;
    if let Some(n) = declared.filter(|n| *n > limits.max_body_bytes) {
        let message = format!("the request body ({n} bytes) is over the limit of {} bytes", limits.max_body_bytes);
        return Err(ErrorAnswer::new(Reason::PayloadTooLarge, message).at_proxy());
    }
    let mut passed: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(4);
    for name in PASSED_REQUEST_HEADERS {
        if let Some(value) = headers.get(name) {
            passed.push((HeaderName::from_static(name), value.clone()));
        }
    }
    Ok(Prepared { budget, headers: passed })
}

/// A request past admission: on drop (answered, failed or abandoned) its slot goes back and its
/// duration is observed (`model_infer`'s `finish`).
struct Flight<'a> {
    stats: &'a ModelStats,
    start: Instant,
    _permit: Permit<'a>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.stats.observe(self.start.elapsed());
    }
}

/// Serve one fast-path request whose body has been read; `start` is when its head arrived.
pub async fn serve(
    app: &App,
    table: &Table,
    route: &Route,
    prepared: Prepared,
    body: Bytes,
    version: Option<String>,
    start: Instant,
) -> Response<OutBody> {
    match run(app, table, route, prepared, body, version, start).await {
        Ok(response) => response,
        Err(error) => error.response(&app.stats),
    }
}

async fn run(
    app: &App,
    table: &Table,
    route: &Route,
    prepared: Prepared,
    body: Bytes,
    version: Option<String>,
    start: Instant,
) -> Result<Response<OutBody>, ErrorAnswer> {
    let deadline = prepared.budget.map(|ms| start + Duration::from_secs_f64(ms / 1000.0));
    let tracked = app.stats.track(deadline); // only now: a client still sending cannot move the gauge
    let permit = app.admission.acquire(deadline).await.map_err(|refusal| {
        let error = match refusal {
            Refusal::PassedBefore => ErrorAnswer::new(
                Reason::DeadlineExceeded,
                "the deadline passed before the request could be sent upstream",
            ),
            Refusal::Full(n) => ErrorAnswer::new(
                Reason::QueueFull,
                format!("the router queue is full ({n} requests waiting); retry later"),
            ),
            Refusal::ExpiredQueued => {
                ErrorAnswer::new(Reason::DeadlineExceeded, "the deadline passed while the request was queued")
            }
        };
        error.at_proxy()
    })?;
    let flight = Flight { stats: &route.stats, start, _permit: permit };
    let answered = forward(table, route, version.as_deref(), &prepared.headers, &body).await;
    drop(flight);
    drop(tracked);
    let answer = answered.map_err(ErrorAnswer::at_proxy)?;
    route.stats.row();
    let mut response = Response::new(OutBody::full(answer.body));
    *response.status_mut() = answer.status;
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

/// The answer of `route`'s replicas a client gets (`UpstreamPool._transparent` with `forward`).
async fn forward(
    table: &Table,
    route: &Route,
    version: Option<&str>,
    headers: &[(HeaderName, HeaderValue)],
    body: &Bytes,
) -> Result<Answer, ErrorAnswer> {
    let model = route.name.as_str();
    let n = route.replicas.len();
    let first = route.first();
    let mut errors: Vec<ErrorAnswer> = Vec::new();
    for attempt in 0..n {
        let (replica, infer) = &route.replicas[(first + attempt) % n];
        let versioned;
        let path = match version {
            None => infer,
            Some(v) => {
                let text = format!("{}/v2/models/{model}/versions/{}/infer", replica.base.prefix, encode_segment(v));
                versioned = text.parse::<Uri>().unwrap_or_else(|_| infer.clone());
                &versioned
            }
        };
        let spec = &table.spec;
        match replica.exchange(path, headers, body, &spec.upstream, spec.limits.max_upstream_bytes).await {
            Err(failure) => {
                route.stats.failure(failure.reason());
                log::warn(format_args!(
                    "model {model}: {}: {} {}",
                    replica.base.text,
                    failure.kind(),
                    failure.detail()
                ));
                let message = match failure {
                    Failure::TooLarge => {
                        let message =
                            format!("a replica of model {} answered more than the router accepts", py_repr(model));
                        return Err(ErrorAnswer::new(Reason::UpstreamError, message).for_model(model));
                    }
                    Failure::ConnectTimeout | Failure::ReadTimeout | Failure::WriteTimeout => {
                        format!("{}: a replica of model {} did not answer in time", failure.kind(), py_repr(model))
                    }
                    _ => format!("{}: a replica of model {} could not be reached", failure.kind(), py_repr(model)),
                };
                errors.push(ErrorAnswer::new(failure.reason().reason(), message).for_model(model));
            }
            Ok(answer) => {
                let status = answer.status.as_u16();
                let retryable = status >= 500 || matches!(status, 404 | 408 | 429);
                if status < 300 || attempt == n - 1 || !retryable {
                    return Ok(answer);
                }
                let (message, reason) = status_error(model, status, &answer.body);
                route.stats.failure(reason);
                log::warn(format_args!("model {model}: {}: answered {status}", replica.base.text));
                if reason == FailureReason::LateRefused {
                    // it waited too long to be on time on any replica: not retried
                    return Err(ErrorAnswer::new(reason.reason(), message).for_model(model));
                }
                errors.push(ErrorAnswer::new(reason.reason(), message).for_model(model));
            }
        }
    }
    Err(exhausted(model, errors))
}

/// The error of a retryable non-2xx answer (`upstream.status_error`).
fn status_error(model: &str, status: u16, content: &[u8]) -> (String, FailureReason) {
    let head = &content[..content.len().min(200)];
    let detail = match serde_json::from_slice::<serde_json::Value>(content) {
        Ok(serde_json::Value::Object(map)) => match map.get("error") {
            Some(value) => py_value(value, true),
            None => py_value(&serde_json::Value::Object(map), true),
        },
        _ => String::from_utf8_lossy(head).into_owned(),
    };
    let detail = prefix_chars(&detail, 300);
    let message = format!("a replica of model {} answered {status}: {}", py_repr(model), scrub(detail));
    let reason = if status == 503 && detail == TRITON_QUEUE_TIMEOUT {
        FailureReason::LateRefused
    } else if status == 504 {
        FailureReason::Timeout
    } else {
        FailureReason::Unavailable
    };
    (message, reason)
}

/// The error when every replica failed (`UpstreamPool._exhausted`).
fn exhausted(model: &str, mut errors: Vec<ErrorAnswer>) -> ErrorAnswer {
    let Some(last) = errors.pop() else {
        let message = format!("no upstream replica serves model {}", py_repr(model));
        return ErrorAnswer::new(Reason::UpstreamUnavailable, message).for_model(model);
    };
    if errors.is_empty() {
        return last;
    }
    let count = errors.len() + 1;
    let summary: Vec<&str> = errors.iter().chain(std::iter::once(&last)).map(|e| e.message.as_str()).collect();
    let message = format!("all {count} replicas of {} failed: {}", py_repr(model), summary.join("; "));
    ErrorAnswer { message, ..last }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "x-paretoserve-deadline-ms";

    #[test]
    fn deadline_values() {
        assert_eq!(parse_deadline_ms(b"250", H, 600_000.0), Ok(250.0));
        assert_eq!(parse_deadline_ms(b"12.5", H, 600_000.0), Ok(12.5));
        assert_eq!(parse_deadline_ms(b"0.001", H, 600_000.0), Ok(0.001));
        assert_eq!(parse_deadline_ms(b"999999999.999", H, 600_000.0), Ok(600_000.0));
        assert_eq!(parse_deadline_ms(b"0", H, 10.0), Ok(0.0));
        for bad in
            ["", "-100000", "1e308", "1_000", "nan", "12.", ".5", "1.2345", "1234567890", " 5", "5 ", "+5", "0x10"]
        {
            let message = parse_deadline_ms(bad.as_bytes(), H, 600_000.0).unwrap_err();
            assert_eq!(
                message,
                format!(
                    "header {H}: must be milliseconds as digits with up to 3 decimals (e.g. 250 or 12.5), got {}",
                    py_repr(bad)
                )
            );
        }
        let long = "9".repeat(40);
        assert!(parse_deadline_ms(long.as_bytes(), H, 1.0)
            .unwrap_err()
            .ends_with(&format!("got '{}...'", &long[..32])));
        assert!(parse_deadline_ms(b"\xe9", H, 1.0).unwrap_err().ends_with("got '\u{e9}'"));
    }

    #[test]
    fn infer_paths() {
        let m = |p: &str| match_infer(p).map(|(m, v)| (m.into_owned(), v));
        assert_eq!(m("/v2/models/cnn/infer"), Some(("cnn".into(), None)));
        assert_eq!(m("/v2/models/cnn/versions/2/infer"), Some(("cnn".into(), Some("2".into()))));
        assert_eq!(m("/v2/models/cnn%5Fs/infer"), Some(("cnn_s".into(), None)));
        for other in [
            "/v2/models/cnn/infer/",
            "/v2/models//infer",
            "/v2/models/cnn/versions//infer",
            "/v2/models/cnn",
            "/v2/models/cnn/ready",
            "/v2/models/cnn/versions/2/infer/x",
            "/v2/pipelines/p/infer",
            "/v2/models/a%2Fb/infer",
        ] {
            assert_eq!(m(other), None, "{other}");
        }
        assert_eq!(encode_segment("1 a/b%"), "1%20a%2Fb%25");
    }

    #[test]
    fn upstream_status_words() {
        let (message, reason) = status_error("m", 503, br#"{"error": "overloaded at http://10.0.0.5:8000/x"}"#);
        assert_eq!(message, "a replica of model 'm' answered 503: overloaded at <address>");
        assert_eq!(reason, FailureReason::Unavailable);
        let (message, reason) = status_error("m", 504, b"gateway 10.0.0.1:80 slow");
        assert_eq!(message, "a replica of model 'm' answered 504: gateway <address> slow");
        assert_eq!(reason, FailureReason::Timeout);
        let (message, reason) = status_error("m", 503, br#"{"error":"Request timeout expired"}"#);
        assert_eq!(message, "a replica of model 'm' answered 503: Request timeout expired");
        assert_eq!((reason, reason.reason().status()), (FailureReason::LateRefused, 503));
        assert_eq!(status_error("m", 500, br#"{"error":"Request timeout expired"}"#).1, FailureReason::Unavailable);
        let (message, _) = status_error("m", 500, br#"{"code": 1}"#);
        assert_eq!(message, "a replica of model 'm' answered 500: {'code': 1}");
        let one = exhausted("m", vec![ErrorAnswer::new(Reason::UpstreamTimeout, "x").for_model("m")]);
        assert_eq!((one.message.as_str(), one.status), ("x", 504));
        let two = exhausted(
            "m",
            vec![
                ErrorAnswer::new(Reason::UpstreamTimeout, "a").for_model("m"),
                ErrorAnswer::new(Reason::UpstreamUnavailable, "b").for_model("m"),
            ],
        );
        assert_eq!(
            (two.message.as_str(), two.reason),
            ("all 2 replicas of 'm' failed: a; b", Reason::UpstreamUnavailable)
        );
    }
}
