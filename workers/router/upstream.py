"""The model servers behind the router: one long-lived ``httpx.AsyncClient`` per upstream replica.

Each base URL gets one client, created when the app starts (lifespan) or when a live update adds
the replica, with explicit ``httpx.Timeout``/``httpx.Limits`` and keep-alive connections reused
across requests; none is ever created per request. A call to a model tries its replicas in
round-robin order and moves on to the next replica on a backend failure (connection refused or
reset, timeout, 5xx, or 404/429 -- the model is missing or overloaded there). A 4xx about the input
itself is not retried, nor is Triton's 503 for a request its queue timeout refused (``slo.lateRequests:
refuse``, :class:`~.errors.LateRefused`): it waited too long to be on time anywhere. httpx's exceptions are
mapped into the router's tree in one place, :func:`map_transport_errors`. Replicas removed by a live update are
closed after a grace period (their in-flight calls finish first); :meth:`UpstreamPool.aclose` closes everything.

An answer is read up to ``max_response_bytes`` (a larger one is a 502 ``upstream_error``), and the
errors a client sees name the model, never a replica's address: the URL and the transport's own
words go to the error's ``url``/``detail`` for the log (an upstream's 4xx explanation of the input is
passed on with any address in it blanked out).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import orjson

from paretoserve.workers.router.config import LimitsConfig, TimeoutConfig
from paretoserve.workers.router.errors import (
    LateRefused,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    is_backend_failure,
)
from paretoserve.workers.router.transport import (
    DEFAULT_MAX_BODY,
    FastTransport,
    ResponseTooLarge,
    make_transport,
    post_prefix,
)

FailureHook = Callable[[str, str, UpstreamError], None]
T = TypeVar("T")
"""Called with ``(model, base_url, error)`` for every failed attempt, retried or not."""

_RETRYABLE_STATUS = frozenset({404, 408, 429})
TRITON_QUEUE_TIMEOUT = "Request timeout expired"
"""Triton's error (with a 503) for a request its queue policy refused after the queue timeout: a
:class:`LateRefused`, not retried."""
_JSON = {"content-type": "application/json"}
PROXY_REQUEST_HEADERS = ("content-type", "inference-header-content-length", "content-encoding", "accept-encoding")


_ADDRESS = re.compile(
    r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]*"  # URLs
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"  # IPv4[:port]
    r"|\[[0-9a-fA-F:]+\](?::\d+)?"  # [IPv6][:port]
    r"|\b[\w-]+(?:\.[\w-]+)+:\d+\b"  # host.name:port
)


def scrub(text: str) -> str:
    """``text`` with URLs, IP addresses and ``host:port`` blanked out (upstream words passed on to a client)."""
    return _ADDRESS.sub("<address>", text)


@contextmanager
def map_transport_errors(model: str, url: str) -> Iterator[None]:
    """Turn httpx's transport errors into :class:`UpstreamTimeout` / :class:`UpstreamUnavailable`
    (and an answer over the size limit into a plain :class:`UpstreamError`, 502)."""
    try:
        yield
    except ResponseTooLarge as exc:
        raise UpstreamError(f"a replica of model {model!r} answered more than the router accepts", model=model,
                            url=url, detail=str(exc)) from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"{type(exc).__name__}: a replica of model {model!r} did not answer in time",
                              model=model, url=url, detail=str(exc)) from exc
    except httpx.TransportError as exc:
        raise UpstreamUnavailable(f"{type(exc).__name__}: a replica of model {model!r} could not be reached",
                                  model=model, url=url, detail=str(exc)) from exc


def status_error(model: str, url: str, status: int, content: bytes) -> UpstreamError:
    """The error for a non-2xx answer: retryable (unavailable/timeout) or a rejection of the input."""
    try:
        decoded = orjson.loads(content)
        detail = str(decoded.get("error", decoded)) if isinstance(decoded, dict) else content[:200].decode()
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        detail = content[:200].decode(errors="replace")
    detail = detail[:300]
    message = f"a replica of model {model!r} answered {status}: {scrub(detail)}"
    if status == 503 and detail == TRITON_QUEUE_TIMEOUT:
        return LateRefused(message, model=model, url=url, detail=detail)
    if status == 504:
        return UpstreamTimeout(message, model=model, url=url, detail=detail)
    if status >= 500 or status in _RETRYABLE_STATUS:
        return UpstreamUnavailable(message, model=model, url=url, detail=detail)
    return UpstreamRejected(message, model=model, url=url, status=status, detail=detail)


async def read_capped(response: httpx.Response, limit: int, request: httpx.Request) -> bytes:
    """The (decoded) body of ``response`` to ``request``, or :class:`ResponseTooLarge` past ``limit`` bytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ResponseTooLarge(f"the answer declares {declared} bytes, over the limit of {limit}",
                               request=request)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(f"the answer is over the limit of {limit} bytes", request=request)
        chunks.append(chunk)
    return b"".join(chunks)


class UpstreamPool:
    """Replica lists per model and one client per replica; use ``async with`` (or :meth:`aclose`)."""

    def __init__(
        self,
        upstreams: Mapping[str, Sequence[str]],
        *,
        timeouts: TimeoutConfig,
        limits: LimitsConfig,
        transport_kind: str = "fast",
        transport: httpx.AsyncBaseTransport | None = None,
        on_failure: FailureHook | None = None,
        max_response_bytes: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.max_response_bytes = max_response_bytes
        self._timeout = httpx.Timeout(
            timeouts.read_ms / 1000.0,
            connect=timeouts.connect_ms / 1000.0,
            write=timeouts.write_ms / 1000.0,
            pool=timeouts.pool_ms / 1000.0,
        )
        self._timeouts = self._timeout.as_dict()
        self._extensions: dict[str, Any] = {"timeout": self._timeouts}
        self._grace_s = timeouts.read_ms / 1000.0
        self._limits = httpx.Limits(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry_s,
        )
        self._transport_kind = transport_kind
        self._injected = transport
        self._on_failure = on_failure
        self._replicas: dict[str, tuple[str, ...]] = {}
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._live_clients: dict[str, httpx.AsyncClient] = {}
        """Per replica reached over :class:`FastTransport` (which reads answers whole): an httpx client over httpx's
        own transport for answers relayed as they arrive (token streams, :meth:`open_stream` with ``live``)."""
        self._transports: dict[str, httpx.AsyncBaseTransport] = {}
        self._targets: dict[tuple[str, str], tuple[httpx.URL, bytes]] = {}
        self._turn: dict[str, int] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._pending = {model: tuple(urls) for model, urls in upstreams.items()}
        self._open = False

    async def __aenter__(self) -> UpstreamPool:
        self.update(self._pending)
        self._open = True
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def update(self, upstreams: Mapping[str, Sequence[str]]) -> None:
        """Serve ``upstreams`` from now on: clients for new replicas, removed ones closed after a grace."""
        wanted = {base for urls in upstreams.values() for base in urls}
        for base in wanted - self._clients.keys():
            transport = self._injected or make_transport(self._transport_kind, self._limits, self.max_response_bytes)
            self._transports[base] = transport
            self._clients[base] = httpx.AsyncClient(
                base_url=base, transport=transport, timeout=self._timeout, limits=self._limits
            )
        for base in set(self._clients) - wanted:
            self._retire(self._clients.pop(base))
            if base in self._live_clients:
                self._retire(self._live_clients.pop(base))
            self._transports.pop(base, None)
            self._targets = {key: target for key, target in self._targets.items() if key[0] != base}
        self._replicas = {model: tuple(urls) for model, urls in upstreams.items()}

    def _retire(self, client: httpx.AsyncClient) -> None:
        async def close_later() -> None:
            try:
                await asyncio.sleep(self._grace_s)
            finally:
                await client.aclose()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def aclose(self) -> None:
        """Close every client now (retiring ones included)."""
        self._open = False
        for task in list(self._retiring):
            task.cancel()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        clients = [*self._clients.values(), *self._live_clients.values()]
        self._clients, self._live_clients, self._transports = {}, {}, {}
        await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)

    async def model_ready(self, base: str, model: str, timeout_s: float = 1.0) -> bool:
        """Whether the replica at ``base`` answers ``model``'s KServe v2 readiness with 200 within ``timeout_s``."""
        client = self._clients.get(base)
        if client is None:
            return False
        try:
            response = await client.get(f"/v2/models/{model}/ready", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def replicas(self, model: str) -> tuple[str, ...]:
        return self._replicas.get(model, ())

    def _rotation(self, model: str) -> list[str]:
        replicas = self._replicas.get(model)
        if not replicas or not self._open:
            raise UpstreamUnavailable(f"no upstream replica serves model {model!r}", model=model)
        turn = self._turn.get(model, 0)
        self._turn[model] = turn + 1
        start = turn % len(replicas)
        return list(replicas[start:] + replicas[:start])

    def _target(self, base: str, model: str) -> tuple[httpx.URL, bytes]:
        """The infer URL of ``model`` at ``base`` and its request head for :meth:`FastTransport.post`."""
        target = self._targets.get((base, model))
        if target is None:
            url = httpx.URL(f"{base}/v2/models/{model}/infer")
            target = self._targets[(base, model)] = (url, post_prefix(url, _JSON))
        return target

    def _url(self, base: str, model: str) -> httpx.URL:
        return self._target(base, model)[0]

    async def _post(self, base: str, model: str, body: bytes) -> tuple[int, bytes]:
        """One POST of ``body`` to ``model`` at ``base``: status and (size-capped) answer.

        The client's own transport is called directly: ``AsyncClient.send`` adds ~80 us per request (auth
        and redirect flows, a cookie jar run through urllib) that inference never uses.
        """
        url, prefix = self._target(base, model)
        transport = self._transports[base]
        if isinstance(transport, FastTransport):  # capped by the transport itself
            return await transport.post(url, prefix, body, self._timeouts)
        request = httpx.Request("POST", url, content=body, headers=_JSON, extensions=self._extensions)
        response = await transport.handle_async_request(request)
        try:
            return response.status_code, await read_capped(response, self.max_response_bytes, request)
        finally:
            await response.aclose()

    def _failed(self, model: str, base: str, error: UpstreamError) -> None:
        if self._on_failure is not None:
            self._on_failure(model, base, error)

    @staticmethod
    def _exhausted(model: str, errors: list[UpstreamError]) -> UpstreamError:
        last = errors[-1]
        if len(errors) == 1:
            return last
        summary = "; ".join(error.message for error in errors)
        details = "; ".join(f"{error.url}: {error.detail}" for error in errors)
        return type(last)(f"all {len(errors)} replicas of {model!r} failed: {summary}", model=model, url=last.url,
                          detail=details)

    async def infer(self, model: str, body: bytes) -> bytes:
        """POST ``body`` to ``model``'s infer endpoint; the 2xx response body, trying each replica."""
        errors: list[UpstreamError] = []
        for base in self._rotation(model):
            try:
                with map_transport_errors(model, base):
                    status, content = await self._post(base, model, body)
            except UpstreamError as exc:
                self._failed(model, base, exc)
                if not is_backend_failure(exc):
                    raise
                errors.append(exc)
                continue
            if status < 300:
                return content
            error = status_error(model, base, status, content)
            self._failed(model, base, error)
            if not is_backend_failure(error):  # the input refused, or a late request: no other replica helps
                raise error
            errors.append(error)
        raise self._exhausted(model, errors)

    async def _transparent(self, model: str, send: Callable[[str], Awaitable[tuple[int, T]]],
                           discard: Callable[[T], Awaitable[bytes]]) -> T:
        """The answer of ``model``'s replicas a transparent call passes on: replicas are tried in turn while
        they fail before answering or answer a retryable status (5xx, 404, 408, 429; ``discard`` closes such
        an answer and gives its body for the error); the last replica's answer is returned whatever its
        status. A replica's late refusal (:class:`LateRefused`) before the last is raised, not retried.
        ``send(base)`` gives (status, answer)."""
        errors: list[UpstreamError] = []
        rotation = self._rotation(model)
        for attempt, base in enumerate(rotation):
            try:
                with map_transport_errors(model, base):
                    status, answer = await send(base)
            except UpstreamError as exc:
                self._failed(model, base, exc)
                if not is_backend_failure(exc):
                    raise
                errors.append(exc)
                continue
            if status < 300 or attempt == len(rotation) - 1 or not (status >= 500 or status in _RETRYABLE_STATUS):
                return answer
            error = status_error(model, base, status, await discard(answer))
            self._failed(model, base, error)
            if not is_backend_failure(error):  # a late request refused: another replica cannot make it on time
                raise error
            errors.append(error)
        raise self._exhausted(model, errors)

    async def fetch(self, model: str, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """GET ``path`` (``/v2/models/...``) from one of ``model``'s replicas: its status and (size-capped) body,
        as Triton gave them (metadata, config and statistics are Triton's own), with the proxy's retries."""

        async def send(base: str) -> tuple[int, tuple[int, bytes]]:
            client = self._clients[base]
            request = client.build_request("GET", path, timeout=timeout_s)
            response = await client.send(request, stream=True)
            try:
                content = await read_capped(response, self.max_response_bytes, request)
            finally:
                await response.aclose()
            return response.status_code, (response.status_code, content)

        return await self._transparent(model, send, _body_of)

    def forwards_fast(self, model: str) -> bool:
        """Whether every replica of ``model`` is reached over :class:`FastTransport` (see :meth:`forward`)."""
        return all(isinstance(self._transports.get(base), FastTransport) for base in self._replicas.get(model, ()))

    async def forward(self, model: str, body: bytes, headers: Mapping[str, str], *,
                      path: str | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The proxy's request, buffered (the answer is capped at ``max_response_bytes`` like every answer):
        status, raw headers and body of the replica that answered, with the proxy's retries but no httpx
        objects and no streaming. Only where :meth:`forwards_fast`."""
        items = list(headers.items())

        async def send(base: str) -> tuple[int, tuple[int, list[tuple[bytes, bytes]], bytes]]:
            transport = self._transports[base]
            assert isinstance(transport, FastTransport)
            url = self._url(base, model) if path is None else httpx.URL(f"{base}{path}")
            answer = await transport.forward(url, items, body, self._timeouts)
            return answer[0], answer

        return await self._transparent(model, send, _body_of)

    def _live_client(self, base: str) -> httpx.AsyncClient:
        """A client of ``base`` whose answers arrive as the replica sends them (see ``_live_clients``)."""
        if not isinstance(self._transports.get(base), FastTransport):
            return self._clients[base]
        client = self._live_clients.get(base)
        if client is None:
            client = self._live_clients[base] = httpx.AsyncClient(
                base_url=base, transport=httpx.AsyncHTTPTransport(limits=self._limits, retries=0),
                timeout=self._timeout, limits=self._limits)
        return client

    async def open_stream(self, model: str, body: bytes, headers: Mapping[str, str], *,
                          path: str | None = None, live: bool = False) -> httpx.Response:
        """Send a proxied request with a streamed response; the caller must ``aclose()`` it.

        ``path`` replaces the model's infer path (a versioned one, ``/v2/models/m/versions/1/infer``, or a
        generate path); the proxy's retries (`_transparent`). ``live``: the answer's bytes are readable as the
        replica sends them, whatever the configured transport (token streams).
        """

        async def send(base: str) -> tuple[int, httpx.Response]:
            url = self._url(base, model) if path is None else httpx.URL(f"{base}{path}")
            request = httpx.Request("POST", url, content=body, headers=dict(headers), extensions=self._extensions)
            client = self._live_client(base) if live else self._clients[base]
            response = await client.send(request, stream=True)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_response_bytes:
                await response.aclose()
                raise ResponseTooLarge(f"the answer declares {declared} bytes", request=request)
            return response.status_code, response

        async def discard(response: httpx.Response) -> bytes:
            await response.aread()
            await response.aclose()
            return response.content

        return await self._transparent(model, send, discard)


async def _body_of(answer: tuple[Any, ...]) -> bytes:
    """A buffered answer's body (its last field): nothing to close."""
    body: bytes = answer[-1]
    return body
