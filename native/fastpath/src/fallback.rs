//! The pass-through: every request the fast path does not serve goes to the Python router behind it.
//!
//! Pipelines, metadata, health, token streams, unknown models, the pipeline addressed as a model, any
//! method but POST -- the Python data listener answers them, so the fast path only relays: same method,
//! path and query, the headers but the hop-by-hop ones (and `Host`, which names the router), the body
//! streamed in both directions as it comes (Server-Sent Events flow event by event). Connections to the
//! router are kept alive and reused; one goes back to the pool only once its answer has been relayed to
//! the end (a [`Lease`] travels with the answer's body). A router that cannot be reached is a 503 in the
//! router's JSON. When the router answers with `Connection: close` (it is draining, or refused the
//! request), the client's connection is closed after the answer too -- unless that answer was the last the
//! router allows on the connection *to it* (its `max_requests_per_connection`, which concerns our pooled
//! connection, not the client's; the fast path applies the quota to the client's connection itself). A
//! connection whose request body was not relayed whole is closed, never reused.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::body::{OutBody, RequestBody};
use crate::errors::{ErrorAnswer, Reason};
use crate::log;
use crate::stats::Stats;
use crate::table::BaseUrl;

const MAX_IDLE: usize = 64;
const IDLE_EXPIRY: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
    /// Requests this connection has carried.
    uses: u64,
}

/// The Python router behind the fast path, and the idle connections to it.
pub struct Fallback {
    base: BaseUrl,
    host: HeaderValue,
    idle: Mutex<Vec<Idle>>,
    /// The router was reached once: it is up (before that, a refused connection is retried).
    reached: AtomicBool,
}

/// A connection to the router, out of the pool while one answer on it is relayed.
pub struct Lease {
    sender: Option<SendRequest<RequestBody>>,
    uses: u64,
    /// Whether the request's body was sent whole (else the connection is in no state to be reused).
    sent: Arc<AtomicBool>,
    pool: Arc<Fallback>,
}

impl Lease {
    /// The answer was relayed to its end: the connection may carry the next request.
    pub fn give_back(mut self) {
        if let Some(sender) = self.sender.take() {
            if self.sent.load(Relaxed) {
                self.pool.put_back(sender, self.uses);
            }
        }
    }
}

/// A request passed behind: what of the client's head travels.
pub struct Passed {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

fn hop_by_hop(name: &HeaderName, listed: &[String]) -> bool {
    let n = name.as_str();
    matches!(n, "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade" | "host" | "expect")
        || n.starts_with("proxy-")
        || listed.iter().any(|l| l == n)
}

/// Header names listed in `Connection` (hop-by-hop by declaration), and whether it says `close`.
fn connection_tokens(headers: &HeaderMap) -> (Vec<String>, bool) {
    let mut listed = Vec::new();
    let mut close = false;
    for value in headers.get_all(CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',') {
            let token = token.trim().to_ascii_lowercase();
            close |= token == "close";
            if !token.is_empty() {
                listed.push(token);
            }
        }
    }
    (listed, close)
}

impl Fallback {
    pub fn new(base: BaseUrl) -> Self {
        let host = HeaderValue::from_str(&base.authority).unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Fallback { base, host, idle: Mutex::new(Vec::new()), reached: AtomicBool::new(false) }
    }

    fn put_back(&self, sender: SendRequest<RequestBody>, uses: u64) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since: Instant::now(), uses });
        }
    }

    /// A new connection to the router. The router starts this process before its own listener accepts
    /// connections, so until it was reached once a refused connection is tried again (within
    /// `CONNECT_TIMEOUT`); after that a refusal is final at once.
    async fn connect(&self) -> std::io::Result<TcpStream> {
        loop {
            match TcpStream::connect((self.base.host.as_str(), self.base.port)).await {
                Ok(stream) => {
                    self.reached.store(true, Relaxed);
                    return Ok(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && !self.reached.load(Relaxed) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A connection to the router and the requests it carried so far.
    async fn connection(&self) -> Option<(SendRequest<RequestBody>, u64)> {
        loop {
            let candidate = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.pop()
            };
            let Some(mut conn) = candidate else { break };
            if conn.since.elapsed() <= IDLE_EXPIRY && conn.sender.ready().await.is_ok() {
                return Some((conn.sender, conn.uses));
            }
        }
        let stream = match timeout(CONNECT_TIMEOUT, self.connect()).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                log::warn(format_args!("the router at {} is not reachable: {e}", self.base.text));
                return None;
            }
            Err(_) => {
                log::warn(format_args!("the router at {} did not accept a connection in time", self.base.text));
                return None;
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Some((sender, 0))
    }

    /// Relay a request to the router and its answer back. `quota` is the router's
    /// `max_requests_per_connection`: its `Connection: close` on the last answer a connection to it may carry
    /// is not passed on.
    pub async fn serve(
        self: &Arc<Self>,
        passed: Passed,
        body: RequestBody,
        quota: u64,
        stats: &Stats,
    ) -> Response<OutBody> {
        stats.fallback_request();
        let unreachable = || {
            ErrorAnswer::new(Reason::UpstreamUnavailable, "the router behind the fast path is not reachable")
                .response(stats)
        };
        let (listed, _) = connection_tokens(&passed.headers);
        let path = passed.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = if self.base.prefix.is_empty() {
            path.parse::<Uri>()
        } else {
            format!("{}{path}", self.base.prefix).parse::<Uri>()
        };
        let Ok(uri) = uri else { return unreachable() };
        let sent = body.complete.clone();
        let mut outgoing = Request::new(body);
        *outgoing.method_mut() = passed.method;
        *outgoing.uri_mut() = uri;
        let headers = outgoing.headers_mut();
        headers.insert(HOST, self.host.clone());
        for (name, value) in &passed.headers {
            if !hop_by_hop(name, &listed) {
                headers.append(name.clone(), value.clone());
            }
        }
        let mut retried = false;
        let answer = loop {
            let Some((mut sender, uses)) = self.connection().await else { return unreachable() };
            match sender.try_send_request(outgoing).await {
                Ok(answer) => break (answer, sender, uses + 1),
                Err(mut error) => match error.take_message() {
                    // Never written: the pooled connection was closed under us; once more on another.
                    Some(request) if !retried => {
                        retried = true;
                        outgoing = request;
                    }
                    _ => {
                        log::warn(format_args!("the router at {} failed: {}", self.base.text, error.error()));
                        return unreachable();
                    }
                },
            }
        };
        let (answer, sender, uses) = answer;
        let (mut parts, body) = answer.into_parts();
        let (listed, close) = connection_tokens(&parts.headers);
        let names: Vec<HeaderName> = parts.headers.keys().filter(|n| hop_by_hop(n, &listed)).cloned().collect();
        for name in names {
            parts.headers.remove(&name);
        }
        if close && uses < quota {
            parts.headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let lease = Lease { sender: if close { None } else { Some(sender) }, uses, sent, pool: self.clone() };
        let body = if hyper::body::Body::is_end_stream(&body) {
            lease.give_back();
            OutBody::full(bytes::Bytes::new())
        } else {
            OutBody::relay(body, lease)
        };
        Response::from_parts(parts, body)
    }
}
