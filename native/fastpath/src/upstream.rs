//! One model server replica: a pool of HTTP/1.1 keep-alive connections and one buffered exchange on it.
//!
//! This is the Python router's `transport.FastTransport` (`_Pool` and `_Connection`): idle connections
//! are reused newest first, at most `max_keepalive_connections` of them, none older than
//! `keepalive_expiry`; a request sent on a *reused* connection that turns out to have been closed by the
//! server before a byte of the answer came back is sent once more on a fresh connection (that is not a
//! failure); an answer is read whole, but never more than `max_upstream_bytes`. Failures carry the
//! httpx exception name the Python router puts in its messages (`ConnectError`, `ReadTimeout`, ...).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant, Sleep};

use crate::stats::FailureReason;
use crate::table::{BaseUrl, Upstream};

/// A failed attempt on one replica.
#[derive(Debug)]
pub enum Failure {
    Connect(String),
    ConnectTimeout,
    ReadTimeout,
    WriteTimeout,
    Read(String),
    Protocol(String),
    /// The answer is over `max_upstream_bytes` (declared or received).
    TooLarge,
}

impl Failure {
    /// The httpx exception the Python router would have met.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "ConnectError",
            Failure::ConnectTimeout => "ConnectTimeout",
            Failure::ReadTimeout => "ReadTimeout",
            Failure::WriteTimeout => "WriteTimeout",
            Failure::Read(_) => "ReadError",
            Failure::Protocol(_) => "RemoteProtocolError",
            Failure::TooLarge => "ResponseTooLarge",
        }
    }

    pub fn reason(&self) -> FailureReason {
        match self {
            Failure::ConnectTimeout | Failure::ReadTimeout | Failure::WriteTimeout => FailureReason::Timeout,
            Failure::Connect(_) | Failure::Read(_) | Failure::Protocol(_) => FailureReason::Unavailable,
            Failure::TooLarge => FailureReason::Error,
        }
    }

    /// The transport's own words, with the address: for the log only.
    pub fn detail(&self) -> &str {
        match self {
            Failure::Connect(s) | Failure::Read(s) | Failure::Protocol(s) => s,
            Failure::ConnectTimeout => "connect timed out",
            Failure::ReadTimeout => "no complete answer in time",
            Failure::WriteTimeout => "write timed out",
            Failure::TooLarge => "answer over the size limit",
        }
    }
}

/// A complete answer: status, the headers a client gets (`content-type`, `content-encoding`,
/// `inference-header-content-length`, last value of each) and the body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

const PASSED: [&str; 3] = ["content-type", "content-encoding", "inference-header-content-length"];

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    received: Arc<AtomicBool>,
    idle_since: Instant,
}

/// One replica's base URL and its idle connections.
pub struct Replica {
    pub base: BaseUrl,
    host_header: HeaderValue,
    idle: Mutex<Vec<Conn>>,
}

impl Replica {
    pub fn new(base: BaseUrl) -> Self {
        let host_header =
            HeaderValue::from_str(&base.authority).unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Replica { base, host_header, idle: Mutex::new(Vec::new()) }
    }

    fn take_idle(&self, expiry: Duration) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && now.duration_since(conn.idle_since) <= expiry {
                return Some(conn);
            }
        }
        None
    }

    fn put_back(&self, mut conn: Conn, max_idle: usize) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < max_idle {
            conn.idle_since = Instant::now();
            idle.push(conn);
        }
    }

    async fn connect(&self, t: &Upstream) -> Result<Conn, Failure> {
        let (stream, received) = timeout(t.connect, open(&self.base.host, self.base.port, t.write))
            .await
            .map_err(|_| Failure::ConnectTimeout)??;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Connect(format!("{}: handshake: {e}", self.base.text)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { sender, received, idle_since: Instant::now() })
    }

    /// POST `body` to `path` (origin form) with `headers`: the whole answer, or why not.
    pub async fn exchange(
        &self,
        path: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: &Bytes,
        t: &Upstream,
        max_bytes: u64,
    ) -> Result<Answer, Failure> {
        let mut reused = None;
        while let Some(mut conn) = self.take_idle(t.keepalive_expiry) {
            if conn.sender.ready().await.is_ok() {
                reused = Some(conn);
                break;
            }
        }
        let was_reused = reused.is_some();
        let mut conn = match reused {
            Some(conn) => conn,
            None => self.connect(t).await?,
        };
        let first = self.send(&mut conn, path, headers, body, t, max_bytes).await;
        let (answer, keep) = match first {
            Err(Retry::Stale(_)) if was_reused => {
                conn = self.connect(t).await?; // a stale keep-alive connection: once more on a fresh one
                self.send(&mut conn, path, headers, body, t, max_bytes).await.map_err(Retry::into_failure)?
            }
            other => other.map_err(Retry::into_failure)?,
        };
        if keep {
            self.put_back(conn, t.max_keepalive_connections);
        }
        Ok(answer)
    }

    async fn send(
        &self,
        conn: &mut Conn,
        path: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: &Bytes,
        t: &Upstream,
        max_bytes: u64,
    ) -> Result<(Answer, bool), Retry> {
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = path.clone();
        let h = request.headers_mut();
        h.insert(HOST, self.host_header.clone());
        for (name, value) in headers {
            h.insert(name.clone(), value.clone());
        }
        h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        conn.received.store(false, Relaxed);
        let received = conn.received.clone();
        let exchange = async {
            let response = conn.sender.try_send_request(request).await.map_err(|e| {
                let stale = e.message().is_some() || !received.load(Relaxed);
                let failure = classify(e.error(), &self.base.text);
                if stale && !matches!(failure, Failure::WriteTimeout) {
                    Retry::Stale(failure)
                } else {
                    Retry::Final(failure)
                }
            })?;
            let declared = response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max_bytes) {
                return Err(Retry::Final(Failure::TooLarge));
            }
            let (parts, mut incoming) = response.into_parts();
            let mut data = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
            let mut single: Option<Bytes> = None;
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(|e| Retry::Final(classify(&e, &self.base.text)))?;
                if let Ok(chunk) = frame.into_data() {
                    let held = single.as_ref().map_or(0, |b| b.len()) + data.len();
                    if (held + chunk.len()) as u64 > max_bytes {
                        return Err(Retry::Final(Failure::TooLarge));
                    }
                    match single.take() {
                        None if data.is_empty() => single = Some(chunk),
                        first => {
                            if let Some(first) = first {
                                data.extend_from_slice(&first);
                            }
                            data.extend_from_slice(&chunk);
                        }
                    }
                }
            }
            let keep = !parts
                .headers
                .get_all(hyper::header::CONNECTION)
                .iter()
                .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))));
            let mut passed: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(2);
            for name in PASSED {
                if let Some(value) = parts.headers.get_all(name).iter().next_back() {
                    passed.push((HeaderName::from_static(name), value.clone()));
                }
            }
            let body = single.unwrap_or_else(|| data.freeze());
            Ok((Answer { status: parts.status, headers: passed, body }, keep))
        };
        match timeout(t.read, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Retry::Final(Failure::ReadTimeout)),
        }
    }
}

/// A failed send: `Stale` when nothing of an answer came back (retried once if the connection was reused).
enum Retry {
    Stale(Failure),
    Final(Failure),
}

impl Retry {
    fn into_failure(self) -> Failure {
        match self {
            Retry::Stale(f) | Retry::Final(f) => f,
        }
    }
}

/// A hyper error as the httpx exception the Python transport raises for it.
fn classify(error: &hyper::Error, base: &str) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut {
                return Failure::WriteTimeout;
            }
        }
        source = e.source();
    }
    if error.is_parse() || error.is_parse_status() {
        Failure::Protocol(format!("{base}: malformed HTTP response: {error}"))
    } else {
        Failure::Read(format!("{base}: the server closed the connection: {error}"))
    }
}

async fn open(host: &str, port: u16, write_timeout: Duration) -> Result<(UpIo, Arc<AtomicBool>), Failure> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Failure::Connect(format!("cannot resolve {host}: {e}")))?
            .collect(),
    };
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let received = Arc::new(AtomicBool::new(false));
                let io = UpIo { inner: stream, received: received.clone(), write_timeout, stalled: None };
                return Ok((io, received));
            }
            Err(e) => last = Some(format!("cannot connect to {addr}: {e}")),
        }
    }
    Err(Failure::Connect(last.unwrap_or_else(|| format!("cannot resolve {host}: no address"))))
}

/// An upstream socket that notes whether any byte came back and fails a write stalled for `write_timeout`.
struct UpIo {
    inner: TcpStream,
    received: Arc<AtomicBool>,
    write_timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl AsyncRead for UpIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.received.store(true, Relaxed);
        }
        polled
    }
}

impl UpIo {
    /// A write that cannot proceed: pending, or failed once it has been stalled for `write_timeout`.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let limit = self.write_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(sleep(limit)));
        if stalled.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")));
        }
        Poll::Pending
    }
}

impl AsyncWrite for UpIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
