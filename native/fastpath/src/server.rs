//! The data listener: its own strict HTTP/1.1 server, the connection bounds, and the choice between the
//! fast path and the router behind.
//!
//! Every request is parsed here (`http1.rs`) and refused here when its framing is anything but plain, so
//! nothing ambiguous reaches the router (request smuggling), and every refusal is the router's JSON: 400
//! `malformed HTTP request (refused by the parser)` and 431 for a head over `max_header_bytes`, both with
//! `Connection: close`. The rules of `workers/router/http_guard.py` and uvicorn apply to every request,
//! served here or passed behind: a connection idle for `keep_alive_s` (before its first request or between
//! two) is closed silently; a request has `read_timeout_s` from its first byte to arrive whole, else 408 and
//! the connection closed; past `limit_concurrency` connections or requests in progress a request is answered
//! 503 `overloaded`; a `Content-Length` over `max_body_bytes` is answered 413 before a byte of the body is
//! read (and before `100 Continue`), a chunked body is counted as it arrives; the
//! `max_requests_per_connection`-th answer on a connection -- whoever gave it -- carries `Connection:
//! close`. Once the drain started (`POST /drain`), every answer carries `Connection: close` and closes its
//! connection and new connections are still served; connections kept alive after an answer and idle stay
//! open as the Python router leaves them (their next answer closes them), or close at once when the drain
//! asks for it (`POST /drain?idle=close`); when the process stops, every idle connection closes at once.
//!
//! A connection serves its requests one after the other (pipelined ones wait in its buffer). While a
//! request is being served its socket is still read, so a client that goes away is noticed (a queued
//! request leaves the queue) and pipelined bytes are buffered; a client that ends its side of the
//! connection is gone (as for uvicorn, whose transport then closes). An answer given before the request's
//! body was read whole (a refusal, or the router answering early) is followed by the rest of the body being
//! read and dropped, as uvicorn's parser does, unless the connection closes anyway. A closing connection
//! ends its side, then reads what the client still sends for a moment, so that unread request bytes do not
//! turn the close into a reset that destroys the answer in flight.

use std::future::pending;
use std::io::{self, Write as _};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::header::{HeaderMap, CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use hyper::{Method, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::body::{BodyFeed, OutBody, RequestBody};
use crate::errors::{ErrorAnswer, Reason};
use crate::fallback::Passed;
use crate::http1::{self, BodyDecoder, Fault, Head, Piece, Scan};
use crate::proxy;
use crate::pyfmt::py_g;
use crate::state::{App, Table, IDLE_ALL, IDLE_KEPT};

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Bodies up to this size are copied behind their head (one write); larger ones are written on their own.
const COPY_MOST: usize = 16 * 1024;
/// Bytes buffered ahead (pipelined requests) while a request is served; past it, reading pauses.
const AHEAD: usize = 64 * 1024;
/// How long, and for how many bytes, a closing connection keeps reading what its client still sends.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

/// An open data connection (the `limit_concurrency` rule counts them).
struct Connected(Arc<App>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Relaxed);
    }
}

/// A request in progress (the `limit_concurrency` rule counts them too).
struct InProgress<'a>(&'a App);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Relaxed);
    }
}

/// After an answer: serve the next request, or close.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFault {
    /// Malformed chunked framing (400) or trailers over the head limit (431).
    Refused(Fault),
    /// More than `max_body_bytes` (413).
    OverLimit,
    /// Not whole within `read_timeout_s` of the request's first byte (408).
    Timeout,
    /// The client closed or reset the connection: nobody to answer.
    Gone,
    /// The router behind stopped reading it (its answer tells what happened).
    Behind,
}

/// What of the request head matters once its headers went behind.
struct Request {
    keep_alive: bool,
    http10: bool,
    head_method: bool,
    expect_continue: bool,
}

/// A data connection.
struct Conn {
    app: Arc<App>,
    stream: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
    read_timeout: Duration,
    keep_alive: Duration,
    max_header_bytes: usize,
    /// Answers given on this connection.
    served: u64,
    /// The client ended its side.
    eof: bool,
    /// The body of the request being relayed, while it is fed from this connection.
    feed: Option<BodyFeed>,
}

fn parser_refusal(fault: Fault, max_header_bytes: usize) -> ErrorAnswer {
    match fault {
        Fault::Malformed => ErrorAnswer::new(Reason::BadRequest, "malformed HTTP request (refused by the parser)"),
        Fault::TooLarge => ErrorAnswer::new(
            Reason::HeadersTooLarge,
            format!("the request head is over the limit of {max_header_bytes} bytes"),
        ),
    }
    .closing()
}

fn says_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value.as_bytes().split(|b| *b == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

impl Conn {
    /// Read once more into the buffer: the bytes read (0: the client ended its side).
    async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        self.eof |= n == 0;
        Ok(n)
    }

    /// Read more before `deadline`.
    async fn read_until(&mut self, deadline: Instant) -> Result<(), BodyFault> {
        match timeout_at(deadline, self.read_more()).await {
            Err(_) => Err(BodyFault::Timeout),
            Ok(Ok(0)) | Ok(Err(_)) => Err(BodyFault::Gone),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Resolves when the client is gone (end of its side, or an error); what it sends meanwhile is buffered.
    async fn gone(&mut self) {
        loop {
            if self.buf.len() >= AHEAD {
                pending::<()>().await;
            }
            match self.read_more().await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    async fn run(&mut self, mut close_idle: watch::Receiver<u8>) {
        let mut idle_since = Instant::now();
        loop {
            if self.buf.is_empty() {
                // Kept alive after an answer: closed when the drain says so. A new connection is served, until
                // the process stops.
                let closing = if self.served > 0 { IDLE_KEPT } else { IDLE_ALL };
                if *close_idle.borrow() >= closing {
                    return;
                }
                let idle_until = idle_since + self.keep_alive;
                tokio::select! {
                    biased;
                    read = self.read_more() => if !matches!(read, Ok(n) if n > 0) { return },
                    _ = sleep_until(idle_until) => return, // as uvicorn's keep-alive timeout: silently
                    _ = close_idle.wait_for(|level| *level >= closing) => return,
                }
            }
            let first_byte = Instant::now();
            let deadline = first_byte + self.read_timeout;
            let head = match self.read_head(deadline).await {
                Ok(head) => head,
                Err(Some(fault)) => {
                    let refusal = parser_refusal(fault, self.max_header_bytes).response(&self.app.stats);
                    let _ = self.write_response(refusal, false, true, false).await;
                    return;
                }
                Err(None) => return,
            };
            match self.serve(head, deadline).await {
                Next::KeepAlive => idle_since = Instant::now(),
                Next::Close => return,
            }
        }
    }

    /// The next request head: `Err(Some(fault))` to refuse, `Err(None)` when the connection just ends
    /// (the 408 of a head not complete in time is written here).
    async fn read_head(&mut self, deadline: Instant) -> Result<Head, Option<Fault>> {
        let mut scanned = 0;
        loop {
            if scanned == 0 {
                http1::skip_empty_lines(&mut self.buf);
            }
            match http1::scan(&self.buf, scanned) {
                Scan::Complete(n) => {
                    let raw = self.buf.split_to(n);
                    return http1::parse_head(&raw, self.max_header_bytes).map_err(Some);
                }
                Scan::Malformed => return Err(Some(Fault::Malformed)),
                Scan::Partial(at) => scanned = at,
            }
            // An incomplete head is measured by the bytes received for it (`http_guard.data_received`).
            if self.buf.len() > self.max_header_bytes {
                return Err(Some(Fault::TooLarge));
            }
            match self.read_until(deadline).await {
                Ok(()) => {}
                Err(BodyFault::Timeout) => {
                    self.timed_out().await;
                    return Err(None);
                }
                Err(_) => return Err(None),
            }
        }
    }

    /// The 408 of a request not received in time (the connection then closes).
    async fn timed_out(&mut self) {
        let refusal = self.timeout_answer().response(&self.app.stats);
        let _ = self.write_response(refusal, false, true, false).await;
    }

    fn timeout_answer(&self) -> ErrorAnswer {
        let seconds = py_g(self.read_timeout.as_secs_f64());
        ErrorAnswer::new(Reason::RequestTimeout, format!("the request was not received within {seconds}s"))
    }

    /// Serve one request and write its answer.
    async fn serve(&mut self, head: Head, deadline: Instant) -> Next {
        let app = self.app.clone();
        let start = Instant::now();
        app.stats.request();
        self.served += 1;
        let others = app.in_progress.fetch_add(1, Relaxed);
        let _busy = InProgress(&app);
        let table = app.table();
        let limits = app.limits_of(table.as_ref());
        let quota = limits.max_requests_per_connection;
        let max_body = limits.max_body_bytes;
        let mut decoder = BodyDecoder::new(&head, self.max_header_bytes);
        let request = Request {
            keep_alive: head.keep_alive && self.served < quota,
            http10: head.http10,
            head_method: head.method == Method::HEAD,
            expect_continue: head.expect_continue && !head.http10,
        };
        let response = if app.connections.load(Relaxed) >= limits.limit_concurrency
            || others >= limits.limit_concurrency
        {
            let error = ErrorAnswer::new(Reason::Overloaded, "the router is at its concurrency limit; retry later");
            Some(error.response(&app.stats))
        } else {
            let fast = match (&table, head.method == Method::POST) {
                (Some(table), true) => proxy::match_infer(head.uri.path()).and_then(|(model, version)| {
                    let route = table.routes.get(model.as_ref()).filter(|_| model != table.spec.pipeline.as_str())?;
                    Some((route.clone(), version))
                }),
                _ => None,
            };
            match (fast, &table) {
                (Some((route, version)), Some(table)) => {
                    let prepared = proxy::prepare(table, &head.headers, head.declared());
                    match prepared {
                        Err(error) => Some(error.response(&app.stats)),
                        Ok(prepared) => match self.read_body(&request, &mut decoder, max_body, deadline).await {
                            Ok(body) => {
                                let serving = proxy::serve(&app, table, &route, prepared, body, version, start);
                                tokio::select! {
                                    response = serving => Some(response),
                                    _ = self.gone() => None,
                                }
                            }
                            Err(fault) => self.body_fault(fault, max_body, true),
                        },
                    }
                }
                _ => self.pass(&app, head, &request, &mut decoder, table.as_ref(), deadline).await,
            }
        };
        let Some(response) = response else { return Next::Close };
        self.finish(response, &request, &mut decoder, max_body, deadline).await
    }

    /// Write `response`, then read and drop what is left of the request body (or close).
    async fn finish(
        &mut self,
        response: Response<OutBody>,
        request: &Request,
        decoder: &mut BodyDecoder,
        max_body: u64,
        deadline: Instant,
    ) -> Next {
        let close = !request.keep_alive || self.app.draining() || says_close(response.headers());
        let written = self.write_response(response, request.head_method, close, request.http10).await;
        self.feed = None; // a body still being relayed is cut: the connection behind closes
        if close || written.is_err() {
            return Next::Close;
        }
        if decoder.is_done() {
            return Next::KeepAlive;
        }
        match self.consume(decoder, max_body, deadline, false).await {
            Ok(()) => Next::KeepAlive,
            Err(BodyFault::Timeout) => {
                self.timed_out().await; // as `http_guard`: the read timer fires after the answer too
                Next::Close
            }
            Err(BodyFault::Refused(fault)) => {
                let refusal = parser_refusal(fault, self.max_header_bytes).response(&self.app.stats);
                let _ = self.write_response(refusal, false, true, false).await;
                Next::Close
            }
            Err(_) => Next::Close,
        }
    }

    /// The answer to a body that could not be read (`None`: nobody to answer).
    fn body_fault(&self, fault: BodyFault, max_body: u64, fast: bool) -> Option<Response<OutBody>> {
        let error = match fault {
            BodyFault::Gone | BodyFault::Behind => return None,
            BodyFault::Timeout => self.timeout_answer(),
            BodyFault::Refused(fault) => parser_refusal(fault, self.max_header_bytes),
            BodyFault::OverLimit => {
                let message = format!("the request body is over the limit of {max_body} bytes");
                let error = ErrorAnswer::new(Reason::PayloadTooLarge, message);
                if fast {
                    error.at_proxy()
                } else {
                    error
                }
            }
        };
        Some(error.response(&self.app.stats))
    }

    async fn continue_if_expected(&mut self, request: &Request) -> Result<(), BodyFault> {
        if request.expect_continue && self.buf.is_empty() {
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(|_| BodyFault::Gone)?;
        }
        Ok(())
    }

    /// The whole body of a fast-path request, at most `limit` bytes.
    async fn read_body(
        &mut self,
        request: &Request,
        decoder: &mut BodyDecoder,
        limit: u64,
        deadline: Instant,
    ) -> Result<Bytes, BodyFault> {
        if decoder.is_done() {
            return Ok(Bytes::new());
        }
        self.continue_if_expected(request).await?;
        let mut single: Option<Bytes> = None;
        let mut data = BytesMut::new();
        let mut size: u64 = 0;
        loop {
            match decoder.next(&mut self.buf).map_err(BodyFault::Refused)? {
                Piece::Data(chunk) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        return Err(BodyFault::OverLimit);
                    }
                    match single.take() {
                        None if data.is_empty() => single = Some(chunk),
                        first => {
                            if data.is_empty() {
                                data.reserve(decoder.remaining().map_or(0, |n| size + n).min(limit) as usize);
                            }
                            if let Some(first) = first {
                                data.extend_from_slice(&first);
                            }
                            data.extend_from_slice(&chunk);
                        }
                    }
                }
                Piece::More => self.read_until(deadline).await?,
                Piece::End => return Ok(single.unwrap_or_else(|| data.freeze())),
            }
        }
    }

    /// Read what is left of a request body, at most `limit` bytes: fed to the router behind as it arrives
    /// (`forward`), or dropped.
    async fn consume(
        &mut self,
        decoder: &mut BodyDecoder,
        limit: u64,
        deadline: Instant,
        forward: bool,
    ) -> Result<(), BodyFault> {
        let mut size: u64 = 0;
        loop {
            match decoder.next(&mut self.buf).map_err(BodyFault::Refused)? {
                Piece::Data(chunk) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        return Err(BodyFault::OverLimit);
                    }
                    if forward {
                        let Some(feed) = &self.feed else { return Err(BodyFault::Behind) };
                        feed.sender.send(chunk).await.map_err(|_| BodyFault::Behind)?;
                    }
                }
                Piece::More => self.read_until(deadline).await?,
                Piece::End => {
                    if let Some(feed) = self.feed.take() {
                        feed.finish();
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Pass a request to the router behind and return its answer.
    async fn pass(
        &mut self,
        app: &Arc<App>,
        head: Head,
        request: &Request,
        decoder: &mut BodyDecoder,
        table: Option<&Arc<Table>>,
        deadline: Instant,
    ) -> Option<Response<OutBody>> {
        let limits = app.limits_of(table);
        let max_body = limits.max_body_bytes;
        if let Some(n) = head.declared().filter(|n| *n > max_body) {
            let message = format!("the request body ({n} bytes) is over the limit of {max_body} bytes");
            return Some(ErrorAnswer::new(Reason::PayloadTooLarge, message).response(&app.stats));
        }
        let passed = Passed { method: head.method, uri: head.uri, headers: head.headers };
        let whole = decoder.remaining().filter(|n| *n <= self.buf.len() as u64);
        let body = match whole {
            Some(0) => RequestBody::whole(Bytes::new()),
            Some(_) => match decoder.next(&mut self.buf) {
                Ok(Piece::Data(bytes)) => RequestBody::whole(bytes),
                _ => RequestBody::whole(Bytes::new()), // not reached: the buffer holds the whole body
            },
            None => {
                if let Err(fault) = self.continue_if_expected(request).await {
                    return self.body_fault(fault, max_body, false);
                }
                let (body, feed) = RequestBody::fed(decoder.remaining());
                self.feed = Some(feed);
                body
            }
        };
        let relay = app.fallback.serve(passed, body, limits.max_requests_per_connection, &app.stats);
        tokio::pin!(relay);
        if self.feed.is_some() {
            let pumped = tokio::select! {
                response = &mut relay => return Some(response), // answered early: `finish` drops the rest
                pumped = self.consume(decoder, max_body, deadline, true) => pumped,
            };
            match pumped {
                Ok(()) | Err(BodyFault::Behind) => {}
                Err(fault) => return self.body_fault(fault, max_body, false), // the relay is dropped: cut behind
            }
        }
        tokio::select! {
            response = relay => Some(response),
            _ = self.gone() => None,
        }
    }

    /// Write one answer: its head (with `connection: close` when `close`), then its body, whole or relayed
    /// as it comes (chunked when its length is unknown, or up to the close for an HTTP/1.0 client).
    async fn write_response(
        &mut self,
        response: Response<OutBody>,
        head_method: bool,
        close: bool,
        http10: bool,
    ) -> io::Result<()> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        http1::status_line(&mut out, status);
        let (mut length, mut dated) = (false, false);
        for (name, value) in parts.headers.iter() {
            if name == CONNECTION || name == TRANSFER_ENCODING {
                continue;
            }
            length |= name == CONTENT_LENGTH;
            dated |= name == DATE;
            http1::header_line(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
        let bodyless = head_method || status.is_informational() || matches!(status.as_u16(), 204 | 304);
        let full = body.as_full().map(<[u8]>::len);
        let chunked = full.is_none() && !length && !bodyless && !http10;
        let close = close || (full.is_none() && !length && !bodyless && http10);
        if let Some(n) = full {
            if !length && status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED {
                let _ = write!(out, "content-length: {n}\r\n");
            }
        }
        if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        if !dated {
            http1::date_line(&mut out);
        }
        out.extend_from_slice(b"\r\n");
        let result = match body.as_full() {
            Some(data) if bodyless || data.len() <= COPY_MOST => {
                if !bodyless {
                    out.extend_from_slice(data);
                }
                self.stream.write_all(&out).await
            }
            Some(data) => match self.stream.write_all(&out).await {
                Ok(()) => self.stream.write_all(data).await,
                error => error,
            },
            None => match self.stream.write_all(&out).await {
                Ok(()) => self.relay(&mut body, chunked, bodyless, &mut out).await,
                error => error,
            },
        };
        if out.capacity() <= 4 * COPY_MOST {
            self.out = out; // kept for the next answer, unless a large one grew it
        }
        result
    }

    /// Relay a streamed answer's body frame by frame (each written as soon as it comes).
    async fn relay(&mut self, body: &mut OutBody, chunked: bool, bodyless: bool, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            match body.frame().await {
                None => break,
                Some(Err(e)) => return Err(io::Error::other(e)),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue }; // trailers are not relayed
                    if bodyless || data.is_empty() {
                        continue;
                    }
                    if chunked {
                        out.clear();
                        let _ = write!(out, "{:x}\r\n", data.len());
                        if data.len() <= COPY_MOST {
                            out.extend_from_slice(&data);
                            out.extend_from_slice(b"\r\n");
                            self.stream.write_all(out).await?;
                        } else {
                            self.stream.write_all(out).await?;
                            self.stream.write_all(&data).await?;
                            self.stream.write_all(b"\r\n").await?;
                        }
                    } else {
                        self.stream.write_all(&data).await?;
                    }
                }
            }
        }
        if chunked {
            self.stream.write_all(b"0\r\n\r\n").await?;
        }
        Ok(())
    }

    /// End our side, then read what the client still sends for a moment (see the module notes).
    async fn linger(mut self) {
        if self.eof || self.stream.shutdown().await.is_err() {
            return;
        }
        let until = Instant::now() + LINGER;
        let mut scratch = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match timeout_at(until, self.stream.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => total += n,
                _ => return,
            }
        }
    }
}

/// Serve one accepted connection until it closes.
async fn connection(app: Arc<App>, stream: TcpStream) {
    let connected = Connected(app.clone());
    let _ = stream.set_nodelay(true);
    let limits = app.limits();
    let close_idle = app.close_idle_watch();
    let mut conn = Conn {
        app,
        stream,
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(1024),
        read_timeout: limits.read_timeout,
        keep_alive: limits.keep_alive,
        max_header_bytes: limits.max_header_bytes,
        served: 0,
        eof: false,
        feed: None,
    };
    conn.run(close_idle).await;
    drop(connected);
    conn.linger().await;
}

/// Accept connections until `shutdown` turns true.
pub async fn accept(app: Arc<App>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                app.connections.fetch_add(1, Relaxed);
                tokio::spawn(connection(app.clone(), stream));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await, // e.g. out of file descriptors
        }
    }
}
