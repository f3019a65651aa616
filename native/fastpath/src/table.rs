//! The table the fast path serves from, and its validation.
//!
//! The Python router owns the configuration: it validates its config and renders from it a *table*
//! (`workers/router/fastpath.py` `fastpath_table`) that it PUTs on the control socket. The fast path still
//! checks every field, because a bad value here would mean a panic (a negative duration) or a request sent
//! somewhere odd (a URL with credentials), and it names the offending field the way the Python config does
//! (`models.m[1]: must be ...`). [`TableSpec::parse`] is pure, so it is unit-tested directly.

use std::time::Duration;

use hyper::header::HeaderName;
use serde_json::{Map, Value};

use crate::pyfmt::{py_repr, py_value};

/// `TRITON_MODEL_NAME` of `planner/bounds.py`: names safe in a URL path.
fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    let edge = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    !bytes.is_empty()
        && bytes.len() <= 64
        && edge(&bytes[0])
        && edge(&bytes[bytes.len() - 1])
        && bytes.iter().all(inner)
}
const NAME_PATTERN: &str = "^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])?$";

/// `DEADLINE_HEADER_NAME` of `planner/bounds.py`.
fn valid_header(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 64
        && edge(&bytes[0])
        && edge(&bytes[bytes.len() - 1])
        && bytes.iter().all(inner)
}
const HEADER_PATTERN: &str = "^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$";

/// A validated `http://host[:port][/path]` base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    /// The URL as given, without a trailing `/` (the pool's identity; logged, never sent to a client).
    pub text: String,
    /// Host to connect to (an IPv6 literal without brackets).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, the `Host` header of requests.
    pub authority: String,
    /// The path prefix, empty or starting with `/`, without a trailing `/`.
    pub prefix: String,
}

impl BaseUrl {
    /// `url` as a base URL (the rule of `config.base_url`, plain HTTP only), or the message saying why not.
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let bad = || format!("must be an http base URL like http://127.0.0.1:8000, got {}", py_repr(url));
        if !url.is_ascii() || url.bytes().any(|b| b.is_ascii_control() || b == b' ') || url.contains(['?', '#']) {
            return Err(bad());
        }
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let text = url.trim_end_matches('/');
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], rest[at..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if !path.is_empty() && path.parse::<hyper::Uri>().is_err() {
            return Err(bad());
        }
        if authority.contains('@') {
            return Err("must not carry credentials (user:password@)".to_owned());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            if host.is_empty() || !host.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                return Err(bad());
            }
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() || (!authority.starts_with('[') && host.contains(['[', ']'])) {
            return Err(bad());
        }
        if authority.starts_with('[') && !authority.ends_with(']') && port.is_none() {
            return Err(bad());
        }
        let port = match port {
            None | Some("") => 80,
            Some(digits) if !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()) => {
                match digits.parse::<u16>() {
                    Ok(port) if port > 0 => port,
                    _ => return Err(format!("has a malformed port: {}", py_repr(url))),
                }
            }
            Some(_) => return Err(format!("has a malformed port: {}", py_repr(url))),
        };
        Ok(BaseUrl {
            text: text.to_owned(),
            host: host.to_ascii_lowercase(),
            port,
            authority: authority.to_owned(),
            prefix: path.to_owned(),
        })
    }
}

/// Bounds on clients of the data listener (the Python router's `RequestLimits`).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_upstream_bytes: u64,
    pub max_header_bytes: usize,
    pub read_timeout: Duration,
    pub keep_alive: Duration,
    pub max_requests_per_connection: u64,
    pub limit_concurrency: usize,
}

impl Default for Limits {
    /// The router's defaults, in force until the first table arrives.
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 * 1024 * 1024,
            max_upstream_bytes: 64 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            read_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(75),
            max_requests_per_connection: 1000,
            limit_concurrency: 1024,
        }
    }
}

/// Upstream timeouts and keep-alive pooling.
#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    /// Validated and kept, but unused: the table has no connection cap for a pool wait to bound.
    pub pool: Duration,
    pub max_keepalive_connections: usize,
    pub keepalive_expiry: Duration,
}

/// A validated table.
#[derive(Clone, Debug)]
pub struct TableSpec {
    pub pipeline: String,
    /// Models and their replicas, in the table's order.
    pub models: Vec<(String, Vec<BaseUrl>)>,
    pub deadline_header: HeaderName,
    pub default_deadline_ms: Option<f64>,
    pub max_deadline_ms: f64,
    pub limits: Limits,
    pub queue_concurrency: usize,
    pub queue_max_size: usize,
    pub upstream: Upstream,
}

/// A refused table: the field path and what is wrong with it.
#[derive(Debug, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn fail<T>(field: &str, message: String) -> Result<T, FieldError> {
    Err(FieldError { field: field.to_owned(), message })
}

const FIELDS: [&str; 20] = [
    "pipeline",
    "models",
    "deadline_header",
    "default_deadline_ms",
    "max_deadline_ms",
    "max_body_bytes",
    "max_upstream_bytes",
    "max_header_bytes",
    "read_timeout_s",
    "keep_alive_s",
    "max_requests_per_connection",
    "limit_concurrency",
    "queue_concurrency",
    "queue_max_size",
    "connect_ms",
    "read_ms",
    "write_ms",
    "pool_ms",
    "max_keepalive_connections",
    "keepalive_expiry_s",
];

/// Longest time a table may set, per unit (about 11.5 days either way; keeps every `Duration` sane).
const MAX_MS: f64 = 999_999_999.0;
const MAX_S: f64 = 999_999.0;

struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Result<&Value, FieldError> {
        self.0.get(key).map_or_else(|| fail(key, "is required".to_owned()), Ok)
    }

    fn integer(&self, key: &str, low: u64) -> Result<u64, FieldError> {
        let value = self.get(key)?;
        match value.as_u64() {
            Some(n) if n >= low => Ok(n),
            _ => fail(key, format!("must be an integer >= {low}, got {}", py_value(value, false))),
        }
    }

    /// A time in `(0, high]` (the Python config's `low_open` bound), or `[0, high]` with `zero`.
    fn number(&self, key: &str, high: f64, zero: bool) -> Result<f64, FieldError> {
        let value = self.get(key)?;
        match value.as_f64() {
            Some(n) if n <= high && (n > 0.0 || (zero && n == 0.0)) => Ok(n),
            Some(_) => {
                let low = if zero { "[0" } else { "(0" };
                fail(key, format!("must be in {low}, {high}], got {}", py_value(value, false)))
            }
            None => fail(key, format!("must be a number, got {}", py_value(value, false))),
        }
    }

    fn string(&self, key: &str, valid: fn(&str) -> bool, pattern: &str) -> Result<String, FieldError> {
        let value = self.get(key)?;
        match value.as_str() {
            Some(text) if valid(text) => Ok(text.to_owned()),
            _ => fail(key, format!("must be a string matching {pattern}, got {}", py_value(value, false))),
        }
    }
}

fn models(raw: &Value) -> Result<Vec<(String, Vec<BaseUrl>)>, FieldError> {
    let Some(map) = raw.as_object() else {
        return fail("models", "must be an object of model name to a list of base URLs".to_owned());
    };
    let mut models = Vec::with_capacity(map.len());
    for (model, urls) in map {
        let path = format!("models.{model}");
        if !valid_name(model) {
            return fail(&path, format!("model names must match {NAME_PATTERN}"));
        }
        let list = match urls.as_array() {
            Some(list) if !list.is_empty() => list,
            _ => return fail(&path, format!("must be a non-empty list of base URLs, got {}", py_value(urls, false))),
        };
        let mut bases = Vec::with_capacity(list.len());
        for (i, url) in list.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let Some(text) = url.as_str() else {
                return fail(
                    &at,
                    format!("must be an http base URL like http://127.0.0.1:8000, got {}", py_value(url, false)),
                );
            };
            bases.push(BaseUrl::parse(text).map_err(|message| FieldError { field: at, message })?);
        }
        models.push((model.clone(), bases));
    }
    Ok(models)
}

fn ms(value: f64) -> Duration {
    Duration::from_secs_f64(value / 1000.0)
}

impl TableSpec {
    /// Validate a decoded table.
    pub fn parse(raw: &Value) -> Result<TableSpec, FieldError> {
        let Some(map) = raw.as_object() else {
            return fail("table", format!("must be an object, got {}", json_kind(raw)));
        };
        if let Some(key) = map.keys().find(|key| !FIELDS.contains(&key.as_str())) {
            return fail(key, format!("unknown field (allowed: {})", FIELDS.join(", ")));
        }
        let f = Fields(map);
        let pipeline = f.string("pipeline", valid_name, NAME_PATTERN)?;
        let models = models(f.get("models")?)?;
        let header = f.string("deadline_header", valid_header, HEADER_PATTERN)?;
        let deadline_header = HeaderName::from_bytes(header.as_bytes())
            .map_or_else(|_| fail("deadline_header", "is not a header name".to_owned()), Ok)?;
        let default_deadline_ms = match f.get("default_deadline_ms")? {
            Value::Null => None,
            _ => Some(f.number("default_deadline_ms", MAX_MS, false)?),
        };
        let size = |key: &str| f.integer(key, 1);
        let count = |key: &str| -> Result<usize, FieldError> {
            let n = f.integer(key, 1)?;
            usize::try_from(n).map_or_else(|_| fail(key, "is too large".to_owned()), Ok)
        };
        let limits = Limits {
            max_body_bytes: size("max_body_bytes")?,
            max_upstream_bytes: size("max_upstream_bytes")?,
            max_header_bytes: count("max_header_bytes")?,
            read_timeout: Duration::from_secs_f64(f.number("read_timeout_s", MAX_S, false)?),
            keep_alive: Duration::from_secs_f64(f.number("keep_alive_s", MAX_S, false)?),
            max_requests_per_connection: size("max_requests_per_connection")?,
            limit_concurrency: count("limit_concurrency")?,
        };
        let max_deadline_ms = f.number("max_deadline_ms", MAX_MS, false)?;
        let upstream = Upstream {
            connect: ms(f.number("connect_ms", MAX_MS, false)?),
            read: ms(f.number("read_ms", MAX_MS, false)?),
            write: ms(f.number("write_ms", MAX_MS, false)?),
            pool: ms(f.number("pool_ms", MAX_MS, false)?),
            // 0 is the Python config's own lower bound here: no idle connection is kept.
            max_keepalive_connections: usize::try_from(f.integer("max_keepalive_connections", 0)?)
                .unwrap_or(usize::MAX),
            keepalive_expiry: Duration::from_secs_f64(f.number("keepalive_expiry_s", MAX_S, true)?),
        };
        Ok(TableSpec {
            pipeline,
            models,
            deadline_header,
            default_deadline_ms,
            max_deadline_ms,
            limits,
            queue_concurrency: count("queue_concurrency")?,
            queue_max_size: count("queue_max_size")?,
            upstream,
        })
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example() -> Value {
        json!({"pipeline": "digits",
               "models": {"cnn_small": ["http://127.0.0.1:8000", "http://10.0.0.5:8000/prefix/"]},
               "deadline_header": "x-paretoserve-deadline-ms", "default_deadline_ms": null,
               "max_deadline_ms": 600000.0, "max_body_bytes": 16777216, "max_upstream_bytes": 67108864,
               "max_header_bytes": 16384, "read_timeout_s": 10.0, "keep_alive_s": 75,
               "max_requests_per_connection": 1000, "limit_concurrency": 1024, "queue_concurrency": 64,
               "queue_max_size": 1024, "connect_ms": 1000.0, "read_ms": 30000.0, "write_ms": 5000.0,
               "pool_ms": 5000.0, "max_keepalive_connections": 64, "keepalive_expiry_s": 30.0})
    }

    fn refused(patch: Value) -> FieldError {
        let mut raw = example();
        for (key, value) in patch.as_object().unwrap() {
            raw[key] = value.clone();
        }
        TableSpec::parse(&raw).unwrap_err()
    }

    #[test]
    fn accepts_the_example() {
        let spec = TableSpec::parse(&example()).unwrap();
        assert_eq!(spec.pipeline, "digits");
        assert_eq!(spec.limits, Limits::default());
        let (model, bases) = &spec.models[0];
        assert_eq!(model, "cnn_small");
        assert_eq!(bases[1].prefix, "/prefix");
        assert_eq!(bases[1].text, "http://10.0.0.5:8000/prefix");
        assert_eq!((bases[0].host.as_str(), bases[0].port), ("127.0.0.1", 8000));
        assert_eq!(spec.upstream.connect, Duration::from_secs(1));
        assert_eq!(spec.default_deadline_ms, None);
    }

    #[test]
    fn names_the_bad_field() {
        assert_eq!(refused(json!({"queue_concurrency": 0})).field, "queue_concurrency");
        assert_eq!(refused(json!({"max_body_bytes": 1.5})).message, "must be an integer >= 1, got 1.5");
        assert_eq!(refused(json!({"read_ms": -1})).field, "read_ms");
        assert_eq!(refused(json!({"read_ms": 0})).message, "must be in (0, 999999999], got 0");
        assert_eq!(refused(json!({"keep_alive_s": 1e7})).field, "keep_alive_s");
        assert!(TableSpec::parse(&{
            let mut raw = example();
            raw["keepalive_expiry_s"] = json!(0);
            raw["max_keepalive_connections"] = json!(0);
            raw["default_deadline_ms"] = json!(250.5);
            raw["models"] = json!({});
            raw
        })
        .is_ok());
        assert_eq!(refused(json!({"read_ms": "10"})).message, "must be a number, got '10'");
        assert_eq!(refused(json!({"default_deadline_ms": true})).field, "default_deadline_ms");
        assert_eq!(refused(json!({"deadline_header": "X-Deadline"})).field, "deadline_header");
        assert_eq!(refused(json!({"pipeline": ""})).field, "pipeline");
        assert_eq!(refused(json!({"extra": 1})).field, "extra");
        assert_eq!(refused(json!({"models": {"m": []}})).field, "models.m");
        assert_eq!(refused(json!({"models": {"bad/name": ["http://h"]}})).field, "models.bad/name");
        let mut raw = example();
        raw.as_object_mut().unwrap().remove("pool_ms");
        assert_eq!(
            TableSpec::parse(&raw).unwrap_err(),
            FieldError { field: "pool_ms".into(), message: "is required".into() }
        );
        assert_eq!(TableSpec::parse(&json!([])).unwrap_err().field, "table");
    }

    #[test]
    fn checks_base_urls() {
        for bad in [
            "https://h:1",
            "http://u:p@h:1",
            "http://h:1/?q",
            "http://h:1#f",
            "http://h:99999",
            "http://h:x",
            "http:///p",
            "ftp://h",
            "http://h 1",
            "http://[::1",
            "http://h:0",
        ] {
            let error = refused(json!({"models": {"m": ["http://ok:1", bad]}}));
            assert_eq!(error.field, "models.m[1]", "{bad}");
        }
        let v6 = BaseUrl::parse("http://[::1]:8001/").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.authority.as_str(), v6.prefix.as_str()),
            ("::1", 8001, "[::1]:8001", "")
        );
        assert_eq!(BaseUrl::parse("http://Triton.ns").unwrap().port, 80);
        assert_eq!(
            refused(json!({"models": {"m": ["http://u@h"]}})).message,
            "must not carry credentials (user:password@)"
        );
    }
}
