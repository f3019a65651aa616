"""Bounds below the ASGI app: request-head size and read time, concurrent connections, JSON errors.

uvicorn's httptools protocol (the fast one the router runs on) keeps every header a client sends, waits
for a request head forever (a client that connects and trickles bytes holds its connection and memory
as long as it likes), and answers its own refusals -- an unparsable request, its concurrency limit -- in
plain text. The ASGI app sees a request only once its head is complete, so these bounds must live in
the protocol itself. :func:`guarded_protocol` makes a subclass of uvicorn's ``HttpToolsProtocol`` that:

- counts the request line and headers as the parser delivers them and, past ``max_head_bytes``, answers
  431 and closes the connection; the parser itself buffers a header line until it ends, so the bytes
  received while a head is incomplete are counted too (at most one read of the socket is not), and a
  never-ending header line meets the same limit;
- gives a client ``read_timeout_s`` from the first byte of a request to send the whole request, head
  and body, then answers 408 and closes (one timer per request, armed and cancelled here: cheaper than
  a timeout around the app's body reading, and it also covers a client that never completes its head);
  a connection that has not sent a byte yet is idle, as one between keep-alive requests, and is closed
  silently after uvicorn's ``timeout_keep_alive`` (clients that open connections ahead of use keep them);
- applies uvicorn's ``limit_concurrency`` rule (connections or requests in progress at the limit) but
  answers 503 ``overloaded`` in the router's JSON;
- answers every parser refusal (malformed request line, Content-Length plus Transfer-Encoding, bad
  chunk sizes, ...) as a JSON 400;
- answers the ``max_requests_per_connection``-th request of a keep-alive connection with ``Connection:
  close``: a Service balances connections, not requests, so a long-lived client would otherwise stay on the
  replicas it first reached and never use the ones a scale-out adds;
- once :func:`drain_connections` is called (the sidecar got SIGTERM, :mod:`.serve`), answers every request
  -- in progress, on a kept-alive connection or on a new one -- with ``Connection: close`` and closes the
  connection after it, so clients reconnect through their Service (whose endpoints no longer include a
  terminating pod) instead of finding their idle connection closed under a request they just sent.

Every error body is the router's protocol JSON (``{"error", "reason", "status"}``), built from the
same exception classes as the app's (:mod:`.errors`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from paretoserve.workers.router.errors import BadRequest, HeadersTooLarge, Overloaded, RequestTimeout, RouterError


def error_bytes(error: RouterError) -> bytes:
    """A complete HTTP/1.1 response for ``error`` (JSON body, ``connection: close``)."""
    body = orjson.dumps(error.body())
    head = [STATUS_LINE[error.status], b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body), b"connection: close\r\n"]
    head.extend(b"%s: %s\r\n" % (name.encode(), value.encode())
                for name, value in error.headers.items() if name != "connection")
    return b"".join(head) + b"\r\n" + body


async def _overloaded(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app of a request over the concurrency limit (its body is never read)."""
    error = Overloaded("the router is at its concurrency limit; retry later")
    headers = [(b"content-type", b"application/json")]
    headers += [(name.encode(), value.encode()) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(error.body())})


@dataclass(slots=True)
class DrainFlag:
    """Shared by every connection of one listener: set once, when the process starts draining."""

    active: bool = False


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the limit."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of the module notes; made by :func:`guarded_protocol`."""

    max_head_bytes: ClassVar[int] = 16 * 1024
    read_timeout_s: ClassVar[float] = 10.0
    concurrency_limit: ClassVar[int | None] = None
    max_requests_per_connection: ClassVar[int | None] = None
    drain: ClassVar[DrainFlag] = DrainFlag()

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limit_concurrency = None  # uvicorn's plain-text 503 is replaced by the check in on_headers_complete
        self._head_bytes = 0
        self._head_received = 0
        self._head_open = True
        self._heads = 0
        self._read_timer: asyncio.TimerHandle | None = None
        self._refusal: RouterError | None = None

    # --- the request's read time -------------------------------------------------------------

    def _arm(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _idle_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.close()  # as uvicorn's keep-alive timeout: no request started, nothing to answer

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:  # never inside an answer
            self.transport.write(error_bytes(RequestTimeout(
                f"the request was not received within {self.read_timeout_s:g}s")))
        if cycle is not None and not cycle.response_complete:  # the app, waiting for the body, sees a disconnect
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # --- the head's size ---------------------------------------------------------------------

    def _too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(f"the request head is over the limit of {self.max_head_bytes} bytes")

    def _refuse_head(self) -> None:
        """Stop the parser (from its callback) and have :meth:`send_400_response` answer 431."""
        self._refusal = self._too_large()
        raise _HeadTooLarge

    def data_received(self, data: bytes) -> None:
        open_before, heads_before = self._head_open, self._heads
        super().data_received(data)
        if open_before and self._heads == heads_before and not self.transport.is_closing():
            # the whole read went into a head that is still incomplete (e.g. one endless header line)
            self._head_received += len(data)
            if self._head_received > self.max_head_bytes:
                self._refusal = self._too_large()
                self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._disarm()  # the idle timer of a fresh connection
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self.max_head_bytes:
            self._refuse_head()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.max_head_bytes:
            self._refuse_head()
        super().on_header(name, value)

    # --- refusals in JSON --------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        refusal, self._refusal = self._refusal, None
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(error_bytes(refusal or BadRequest("malformed HTTP request (refused by the parser)")))
            self.transport.close()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
        self._head_open = True  # what comes next is the next request's head

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._head_received = 0
        self._heads += 1
        limit = self.concurrency_limit
        if limit is None or (len(self.connections) < limit and len(self.tasks) < limit):
            super().on_headers_complete()
        else:
            self.logger.warning("concurrency limit (%d) reached: answering 503", limit)
            app, self.app = self.app, _overloaded
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        recycle = self.max_requests_per_connection
        if self.cycle is not None and (self.drain.active or (recycle is not None and self._heads >= recycle)):
            self.cycle.keep_alive = False  # uvicorn then answers with Connection: close and closes

    def close_after_current(self) -> None:
        """Answer the request in progress, if any, with ``Connection: close`` (the drain)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False


def drain_connections(protocol: type[GuardedHttpToolsProtocol], connections: Iterable[object]) -> None:
    """Start the drain of one listener: its open ``connections`` and every later request close after one answer.

    An idle kept-alive connection stays open (its client may still send on it, and gets ``Connection: close``);
    uvicorn closes what is left when the server stops.
    """
    protocol.drain.active = True
    for connection in connections:
        if isinstance(connection, GuardedHttpToolsProtocol):
            connection.close_after_current()


def guarded_protocol(*, max_head_bytes: int, read_timeout_s: float, limit_concurrency: int | None,
                     max_requests_per_connection: int | None = None) -> type[GuardedHttpToolsProtocol]:
    """A :class:`GuardedHttpToolsProtocol` subclass with these bounds (uvicorn's ``http=`` setting)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {
        "max_head_bytes": max_head_bytes, "read_timeout_s": read_timeout_s, "concurrency_limit": limit_concurrency,
        "max_requests_per_connection": max_requests_per_connection, "drain": DrainFlag(),
    })
