//! The bodies of the data listener: answers going out, and request bodies relayed to the router.
//!
//! An answer is either whole (`Full`: every answer of the fast path and every error) or the Python
//! router's answer relayed as it arrives (`Relay`, Server-Sent Events included); the connection loop
//! (`server.rs`) writes either. A request passed behind carries its body as [`RequestBody`]: whole when it
//! had already arrived with its head, else fed chunk by chunk by the connection loop as it reads the
//! client's socket; a body that ends before the client sent all of it (the answer came first, or the client
//! vanished) ends in an error, so that the connection behind is closed rather than reused.

use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::mpsc;

use crate::fallback::Lease;

enum Inner {
    Full(Option<Bytes>),
    Relay(Incoming, Option<Lease>),
}

/// The body of every answer on the data listener (and on the control socket).
pub struct OutBody {
    inner: Inner,
}

impl OutBody {
    pub fn full(bytes: Bytes) -> Self {
        let data = if bytes.is_empty() { None } else { Some(bytes) };
        OutBody { inner: Inner::Full(data) }
    }

    /// The router's answer, streamed; `lease` goes back to the pool once the stream has ended.
    pub fn relay(body: Incoming, lease: Lease) -> Self {
        OutBody { inner: Inner::Relay(body, Some(lease)) }
    }

    /// The whole body, when it is not a stream.
    pub fn as_full(&self) -> Option<&[u8]> {
        match &self.inner {
            Inner::Full(data) => Some(data.as_deref().unwrap_or(&[])),
            Inner::Relay(..) => None,
        }
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.inner {
            Inner::Full(data) => Poll::Ready(data.take().map(|bytes| Ok(Frame::data(bytes)))),
            Inner::Relay(body, lease) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                // A writer may stop polling once `is_end_stream` says so: the connection is free at either sign.
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if ended {
                    if let Some(lease) = lease.take() {
                        lease.give_back();
                    }
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(data) => data.is_none(),
            Inner::Relay(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Relay(body, _) => body.size_hint(),
        }
    }
}

/// A request body cut short: the connection behind must not carry another request.
#[derive(Debug)]
pub struct Unfinished;

impl fmt::Display for Unfinished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the client's request body was not relayed whole")
    }
}

impl Error for Unfinished {}

/// The feeding end of a streamed [`RequestBody`] (held by the connection loop).
pub struct BodyFeed {
    pub sender: mpsc::Sender<Bytes>,
    /// Set once the last byte was fed: only then does the stream end cleanly.
    pub finished: Arc<AtomicBool>,
}

impl BodyFeed {
    /// The body is whole: the stream ends cleanly once what was fed has been read.
    pub fn finish(self) {
        self.finished.store(true, Relaxed);
    }
}

enum Source {
    Whole(Option<Bytes>),
    Fed { receiver: mpsc::Receiver<Bytes>, finished: Arc<AtomicBool>, length: Option<u64> },
}

/// The body of a request relayed to the router.
pub struct RequestBody {
    source: Source,
    /// Whether it was read to its clean end (the relayed connection may then be reused).
    pub complete: Arc<AtomicBool>,
}

impl RequestBody {
    pub fn whole(bytes: Bytes) -> Self {
        let data = if bytes.is_empty() { None } else { Some(bytes) };
        RequestBody { source: Source::Whole(data), complete: Arc::new(AtomicBool::new(true)) }
    }

    /// A body fed as it arrives (`length`: its declared size, `None` when chunked).
    pub fn fed(length: Option<u64>) -> (Self, BodyFeed) {
        let (sender, receiver) = mpsc::channel(2);
        let finished = Arc::new(AtomicBool::new(false));
        let body = RequestBody {
            source: Source::Fed { receiver, finished: finished.clone(), length },
            complete: Arc::new(AtomicBool::new(false)),
        };
        (body, BodyFeed { sender, finished })
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Unfinished;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Unfinished>>> {
        let this = &mut *self;
        match &mut this.source {
            Source::Whole(data) => Poll::Ready(data.take().map(|bytes| Ok(Frame::data(bytes)))),
            Source::Fed { receiver, finished, .. } => match receiver.poll_recv(cx) {
                Poll::Ready(Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Poll::Ready(None) if finished.load(Relaxed) => {
                    this.complete.store(true, Relaxed);
                    Poll::Ready(None)
                }
                Poll::Ready(None) => Poll::Ready(Some(Err(Unfinished))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.source, Source::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Whole(data) => SizeHint::with_exact(data.as_ref().map_or(0, |b| b.len() as u64)),
            Source::Fed { length: Some(n), .. } => SizeHint::with_exact(*n),
            Source::Fed { length: None, .. } => SizeHint::default(),
        }
    }
}
