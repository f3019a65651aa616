//! Every error answer the fast path gives, in the Python router's words and JSON shape.
//!
//! A client must not be able to tell which side of the router answered, so the messages, reasons,
//! statuses and headers here are those of `workers/router/errors.py`, `limits.py`, `http_guard.py` and
//! `upstream.py` (the Python formatting they use is in `pyfmt.rs`). An answer is built by
//! [`ErrorAnswer::response`], which also counts it in the `errors` figures the Python router folds into
//! its `/metrics`.

use bytes::Bytes;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::body::OutBody;
use crate::stats::Stats;

/// The `reason` of an error body; the index is its slot in the stats' error counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    BadRequest,
    PayloadTooLarge,
    HeadersTooLarge,
    RequestTimeout,
    DeadlineExceeded,
    QueueFull,
    Overloaded,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    Internal,
    NotFound,
    MethodNotAllowed,
    LateRefused,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Reason::BadRequest,
        Reason::PayloadTooLarge,
        Reason::HeadersTooLarge,
        Reason::RequestTimeout,
        Reason::DeadlineExceeded,
        Reason::QueueFull,
        Reason::Overloaded,
        Reason::UpstreamError,
        Reason::UpstreamTimeout,
        Reason::UpstreamUnavailable,
        Reason::Internal,
        Reason::NotFound,
        Reason::MethodNotAllowed,
        Reason::LateRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::RequestTimeout => "request_timeout",
            Reason::DeadlineExceeded => "deadline_exceeded",
            Reason::QueueFull => "queue_full",
            Reason::Overloaded => "overloaded",
            Reason::UpstreamError => "upstream_error",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::Internal => "internal",
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::LateRefused => "late_refused",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The HTTP status of the Python error class with this reason.
    pub fn status(self) -> u16 {
        match self {
            Reason::BadRequest => 400,
            Reason::PayloadTooLarge => 413,
            Reason::HeadersTooLarge => 431,
            Reason::RequestTimeout => 408,
            Reason::DeadlineExceeded => 504,
            Reason::QueueFull => 429,
            Reason::Overloaded => 503,
            Reason::UpstreamError => 502,
            Reason::UpstreamTimeout => 504,
            Reason::UpstreamUnavailable => 503,
            Reason::Internal => 500,
            Reason::NotFound => 404,
            Reason::MethodNotAllowed => 405,
            Reason::LateRefused => 503,
        }
    }

    /// `connection: close` (413, 408, 503 overloaded) and `retry-after: 1` (429, 503 overloaded).
    fn headers(self) -> (bool, bool) {
        match self {
            Reason::PayloadTooLarge | Reason::HeadersTooLarge | Reason::RequestTimeout => (true, false),
            Reason::Overloaded => (true, true),
            Reason::QueueFull => (false, true),
            _ => (false, false),
        }
    }
}

/// `"stage"` of the errors a proxied request meets (the Python router's `PROXY_STAGE`).
pub const PROXY_STAGE: &str = "proxy";

/// One error answer: `{"error", "reason", "status"}` plus `stage` and `model` when known.
#[derive(Debug, Clone)]
pub struct ErrorAnswer {
    pub reason: Reason,
    pub status: u16,
    pub message: String,
    pub stage: Option<&'static str>,
    pub model: Option<String>,
    /// `connection: close` whatever the reason (the parser's refusals).
    pub close: bool,
}

impl ErrorAnswer {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        ErrorAnswer { reason, status: reason.status(), message: message.into(), stage: None, model: None, close: false }
    }

    /// The same error, answered with `connection: close` and its connection closed.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The same error raised inside the proxy path (`RouterError.at_stage(PROXY_STAGE)`).
    pub fn at_proxy(mut self) -> Self {
        self.stage.get_or_insert(PROXY_STAGE);
        self
    }

    pub fn for_model(mut self, model: &str) -> Self {
        self.model = Some(model.to_owned());
        self
    }

    /// The JSON body, keys in the Python router's order.
    pub fn body(&self) -> String {
        let mut out = String::with_capacity(96 + self.message.len());
        out.push_str("{\"error\":");
        out.push_str(&json_string(&self.message));
        out.push_str(",\"reason\":\"");
        out.push_str(self.reason.as_str());
        out.push_str("\",\"status\":");
        out.push_str(&self.status.to_string());
        if let Some(stage) = self.stage {
            out.push_str(",\"stage\":");
            out.push_str(&json_string(stage));
        }
        if let Some(model) = &self.model {
            out.push_str(",\"model\":");
            out.push_str(&json_string(model));
        }
        out.push('}');
        out
    }

    /// The HTTP answer, counted in `stats.errors`.
    pub fn response(&self, stats: &Stats) -> Response<OutBody> {
        stats.error(self.reason);
        self.uncounted()
    }

    /// The HTTP answer, not counted (the control socket's own refusals).
    pub fn uncounted(&self) -> Response<OutBody> {
        let mut response = Response::new(OutBody::full(Bytes::from(self.body())));
        *response.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let (close, retry) = self.reason.headers();
        if retry {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if close || self.close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// `text` as a JSON string literal.
pub fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_shape() {
        let error = ErrorAnswer::new(Reason::UpstreamTimeout, "slow \"m\"").at_proxy().for_model("m");
        assert_eq!(
            error.body(),
            r#"{"error":"slow \"m\"","reason":"upstream_timeout","status":504,"stage":"proxy","model":"m"}"#
        );
    }
}
