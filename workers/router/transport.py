"""A lean HTTP/1.1 keep-alive transport for httpx, for the router's hot path.

The router must add well under a millisecond at 1,000 requests/s on one core. Measured on the
2-core dev machine against a real Triton (sequential requests, CPU time of the client process):
``httpx.AsyncClient`` with its default ``httpcore`` transport costs ~650 us of CPU per request
(~850 us while ``sniffio`` is missing, since httpcore then retries a failing import per request),
a raw asyncio socket ~60 us, and ``httpx.AsyncClient`` over this transport ~170 us. So the router
keeps one ``httpx.AsyncClient`` per upstream (timeouts, limits and the exception types stay
httpx's, and tests still inject ``httpx.MockTransport``) but gives it this transport: an
``asyncio.Protocol`` per connection, the C ``httptools`` response parser, request head and body
written in one ``write``, ``TCP_NODELAY``.

The router's own calls skip even httpx's request and response objects (:meth:`FastTransport.post`: a
cached request head plus the body in, status and body out; building an ``httpx.Request`` alone costs
~10 us); ``handle_async_request`` serves everything else (the streamed proxy, tests).

It honours ``httpx.Timeout`` (``connect``, ``read``, ``pool``; writes are buffered by asyncio) and
``httpx.Limits`` (``max_connections``, ``max_keepalive_connections``, ``keepalive_expiry``), raises
httpx's own exceptions (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``PoolTimeout``,
``ReadError``, ``RemoteProtocolError``), and retries a request once on a fresh connection when a
*reused* keep-alive connection turns out to have been closed by the server before answering.
Responses are read whole (inference responses are small), but never more than ``max_body`` bytes: a
larger answer (declared or received) fails the call with :class:`ResponseTooLarge` and closes the
connection, so a broken or hostile upstream cannot make the router buffer without bound.
``"transport": "httpx"`` in the config selects httpx's streaming transport instead (bounded by the
reader in :mod:`.upstream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import cast

import httptools
import httpx

_HOP_BY_HOP = frozenset({b"transfer-encoding", b"connection", b"keep-alive"})
DEFAULT_MAX_BODY = 64 * 1024 * 1024
Timeouts = Mapping[str, float | None]
"""``httpx.Timeout.as_dict()``: ``connect``, ``read``, ``write``, ``pool`` seconds."""
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
"""Status, headers and body of a complete response."""


class ResponseTooLarge(httpx.TransportError):
    """The upstream's answer is over the size limit (declared in Content-Length, or as received)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: write a request, collect the response (at most ``max_body`` bytes)."""

    def __init__(self, max_body: int = DEFAULT_MAX_BODY) -> None:
        self._max_body = max_body
        self._size = 0
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._request: httpx.Request | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.closed = False
        self.received = False
        self.keep_alive = True
        self.idle_since = 0.0

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted any more
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}", request=self._request))
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        message = "the server closed the connection" + (f": {exc}" if exc else "")
        self._fail(httpx.ReadError(message, request=self._request))

    # --- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            if name.lower() == b"content-length" and value.strip().isdigit() and int(value) > self._max_body:
                self._too_large()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            self._too_large()
            return
        self._body.append(body)

    def _too_large(self) -> None:
        self._body = []
        self._fail(ResponseTooLarge(f"the answer is over the limit of {self._max_body} bytes", request=self._request))
        self.close()

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- use ---------------------------------------------------------------------------------

    def _read_timed_out(self, seconds: float) -> None:
        self._fail(httpx.ReadTimeout(f"no complete response within {seconds:.3f}s", request=self._request))

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    async def exchange(self, data: bytes, read_timeout: float | None, request: httpx.Request | None) -> Answer:
        """Write one request (``data``: head and body) and wait for its complete answer."""
        if self._transport is None or self.closed:
            raise httpx.ReadError("connection already closed", request=request)
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._request = request
        self._headers = []
        self._body = []
        self._size = 0
        self.received = False
        self._transport.write(data)
        # A plain timer rather than asyncio.timeout(): one handle, no task cancellation machinery.
        timer = None if read_timeout is None else loop.call_later(read_timeout, self._read_timed_out, read_timeout)
        try:
            await waiter
        except BaseException:
            self.close()  # timed out, cancelled or failed mid-response: the connection's state is unknown
            raise
        finally:
            if timer is not None:
                timer.cancel()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        return self._parser.get_status_code(), self._headers, body


class _Pool:
    """Connections to one origin: idle ones reused LIFO, at most ``max_connections`` in use."""

    def __init__(self, host: str, port: int, tls: bool, limits: httpx.Limits, max_body: int) -> None:
        self.host, self.port, self.tls = host, port, tls
        self._limits = limits
        self._factory = functools.partial(_Connection, max_body)
        self._slots = asyncio.Semaphore(limits.max_connections or 1_000_000)
        self._idle: list[_Connection] = []

    async def _connect(self, timeout: float | None, request: httpx.Request | None) -> _Connection:
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if self.tls else None
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await loop.create_connection(
                    self._factory, self.host, self.port, ssl=context, server_hostname=self.host if self.tls else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {self.host}:{self.port} timed out", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}", request=request) from exc
        return protocol

    def _take_idle(self) -> _Connection | None:
        expiry = self._limits.keepalive_expiry
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.closed or (expiry is not None and now - connection.idle_since > expiry):
                connection.close()
                continue
            return connection
        return None

    def _put_back(self, connection: _Connection) -> None:
        keep = self._limits.max_keepalive_connections
        if connection.closed or not connection.keep_alive or (keep is not None and len(self._idle) >= keep):
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    async def send(self, data: bytes, timeouts: Timeouts, request: httpx.Request | None = None) -> Answer:
        if self._slots.locked():
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection to the upstream in time", request=request) from None
        else:
            await self._slots.acquire()
        try:
            connection = self._take_idle()
            reused = connection is not None
            if connection is None:
                connection = await self._connect(timeouts.get("connect"), request)
            try:
                answer = await connection.exchange(data, timeouts.get("read"), request)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                if not reused or connection.received:
                    raise
                connection = await self._connect(timeouts.get("connect"), request)  # stale keep-alive: once more
                answer = await connection.exchange(data, timeouts.get("read"), request)
            self._put_back(connection)
            return answer
        finally:
            self._slots.release()

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


class FastTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` for plain request/response HTTP/1.1 (see the module notes)."""

    def __init__(self, limits: httpx.Limits | None = None, max_body: int = DEFAULT_MAX_BODY) -> None:
        self._limits = limits or httpx.Limits()
        self._max_body = max_body
        self._pools: dict[tuple[bytes, bytes, int], _Pool] = {}
        self._closed = False

    def _pool(self, url: httpx.URL) -> _Pool:
        scheme = url.raw_scheme
        port = url.port or (443 if scheme == b"https" else 80)
        key = (scheme, url.raw_host, port)
        pool = self._pools.get(key)
        if pool is None:
            if scheme not in (b"http", b"https"):
                raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
            pool = self._pools[key] = _Pool(url.host, port, scheme == b"https", self._limits, self._max_body)
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        try:
            body = request.content  # already read for the usual bytes content
        except httpx.RequestNotRead:
            body = await request.aread()
        head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), request.url.raw_path)]
        head.extend(b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw)
        head.append(b"\r\n")
        head.append(body)
        timeouts: Timeouts = request.extensions.get("timeout", {})
        status, headers, content = await self._pool(request.url).send(b"".join(head), timeouts, request)
        return httpx.Response(
            status,
            headers=[(name, value) for name, value in headers if name.lower() not in _HOP_BY_HOP],
            stream=httpx.ByteStream(content),  # not ``content=``: that marks it consumed
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def post(self, url: httpx.URL, prefix: bytes, body: bytes, timeouts: Timeouts) -> tuple[int, bytes]:
        """POST ``body`` to ``url`` with no httpx objects: ``prefix`` is :func:`post_prefix`'s for ``url``."""
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        status, _, content = await self._pool(url).send(b"%s%d\r\n\r\n%s" % (prefix, len(body), body), timeouts)
        return status, content

    async def forward(self, url: httpx.URL, headers: Sequence[tuple[str, str]], body: bytes,
                      timeouts: Timeouts) -> Answer:
        """POST ``body`` with ``headers`` (a proxied client's) to ``url``; status, raw headers and body, with no
        httpx objects (the proxy's path, as :meth:`post` is the pipeline's)."""
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        head = [b"POST %s HTTP/1.1\r\nHost: %s\r\n" % (url.raw_path, url.netloc)]
        head.extend(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers)
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        head.append(body)
        return await self._pool(url).send(b"".join(head), timeouts)

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def post_prefix(url: httpx.URL, headers: Mapping[str, str]) -> bytes:
    """The head of a POST to ``url`` up to the Content-Length value (computed once per target)."""
    lines = [b"POST %s HTTP/1.1\r\n" % url.raw_path, b"Host: %s\r\n" % url.netloc]
    lines.extend(b"%s: %s\r\n" % (name.encode(), value.encode()) for name, value in headers.items())
    lines.append(b"Content-Length: ")
    return b"".join(lines)


def make_transport(kind: str, limits: httpx.Limits, max_body: int = DEFAULT_MAX_BODY) -> httpx.AsyncBaseTransport:
    """``fast`` (:class:`FastTransport`, answers capped at ``max_body``) or ``httpx`` (httpx's own, streaming)."""
    if kind == "fast":
        return FastTransport(limits, max_body)
    return httpx.AsyncHTTPTransport(limits=limits, retries=0)

