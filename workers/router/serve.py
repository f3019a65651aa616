"""Running the router under uvicorn: two listeners in one event loop, as the sidecar or in a thread for tests.

The sidecar process is ``paretoserve router --config FILE`` (``paretoserve.shell.commands.router``), which
lands in :func:`serve`. It serves the data app on ``--host/--port`` and the admin app on
``--admin-host/--admin-port`` (:mod:`.app`, :mod:`.admin`): two ``uvicorn.Server`` instances run
concurrently on one event loop, so the admin listener costs the data path nothing but a socket, and
signals stop both (handled once here, not by each server). The data server runs the data app's
lifespan (the upstream clients); the admin server runs none.

SIGTERM first drains for ``drain_s`` seconds (``--drain-seconds``; the operator passes its
``drainSeconds``): readiness answers 503 ``draining``, every answer carries ``Connection: close`` and its
connection is closed after it (:func:`~.http_guard.drain_connections`), and the listeners keep accepting,
so requests still routed here while the endpoint removal reaches every node are served and their clients
reconnect elsewhere. Then both servers stop as on SIGINT: in-flight requests finish, idle connections
close. A connection left idle through the whole drain can still meet that close (its client resends); a
busy one cannot. A second SIGTERM, or SIGINT, stops at once (a second SIGINT forces).

uvicorn is tuned for the router's latency budget: uvloop when installed (``loop="auto"``), the
httptools parser through :class:`~.http_guard.GuardedHttpToolsProtocol` (uvicorn's own protocol plus
bounds on request heads, a read timeout and JSON refusals), access logging off (a log line per request
costs more than the routing itself), no proxy-header rewriting and no ``server`` header, WebSockets off,
and keep-alive long enough for clients that reuse connections (``keep_alive_s``, 75 s by default). The data listener has
``limit_concurrency`` (connections plus requests in progress; more are answered 503 at once), the admin
listener a small one of its own.
With ``fastpath`` (``--fastpath``) the compiled front of :mod:`.fastpath` takes the data address and the data
listener moves to a free loopback port behind it; the data app's lifespan starts and stops the front.
:class:`ServerThread` runs both listeners in a background thread of the current process -- the
integration smoke test and in-process tools use it -- and always stops them on leaving its block.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import threading
import time
from collections.abc import Coroutine, Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from paretoserve.workers.router.app import RouterApps
from paretoserve.workers.router.config import RouterConfig, load_config_text
from paretoserve.workers.router.errors import ConfigError
from paretoserve.workers.router.fastpath import FastPathError, FastPathFront
from paretoserve.workers.router.http_guard import GuardedHttpToolsProtocol, drain_connections, guarded_protocol
from paretoserve.workers.router.limits import RequestLimits

DEFAULT_HOST = "127.0.0.1"
INTERNAL_HOST = "127.0.0.1"
"""Where the data app listens behind a fast path."""
DEFAULT_PORT = 8080
DEFAULT_ADMIN_PORT = 8081
ADMIN_CONCURRENCY = 64
"""Connections plus requests in progress on the admin listener (the operator and Prometheus)."""


@dataclass(frozen=True, slots=True)
class Listeners:
    """Where the two apps listen (port 0: a free port chosen by the OS)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    admin_host: str = DEFAULT_HOST
    admin_port: int = DEFAULT_ADMIN_PORT


def load_config_file(path: Path, *, default_upstreams: Sequence[str] = ()) -> RouterConfig:
    """Read and validate a JSON config file; errors are :class:`ConfigError` naming the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    return load_config_text(text, default_upstreams=default_upstreams)


def uvicorn_config(app: Starlette, *, host: str, port: int, limits: RequestLimits, admin: bool = False,
                   log_level: str = "warning") -> uvicorn.Config:
    """The uvicorn settings of one listener (see the module notes)."""
    concurrency = ADMIN_CONCURRENCY if admin else limits.limit_concurrency
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="auto",
        http=guarded_protocol(max_head_bytes=limits.max_header_bytes, read_timeout_s=limits.read_timeout_s,
                              limit_concurrency=concurrency,
                              max_requests_per_connection=None if admin else limits.max_requests_per_connection),
        ws="none",
        lifespan="off" if admin else "on",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        log_level=log_level,
        timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=concurrency,
        backlog=2048,
    )


class _Listener(uvicorn.Server):
    """One of the router's two servers: signals are handled once for both (:func:`serve`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _servers(apps: RouterApps, listeners: Listeners, limits: RequestLimits, log_level: str) -> list[_Listener]:
    return [
        _Listener(uvicorn_config(apps.data, host=listeners.host, port=listeners.port, limits=limits,
                                 log_level=log_level)),
        _Listener(uvicorn_config(apps.admin, host=listeners.admin_host, port=listeners.admin_port, limits=limits,
                                 admin=True, log_level=log_level)),
    ]


def _bind(servers: Sequence[_Listener]) -> list[socket.socket]:
    """Both listening sockets, bound before anything starts (a port in use is one log line, exit 3)."""
    return [server.config.bind_socket() for server in servers]


class _Shutdown:
    """What a signal does to the listeners (module notes): SIGTERM drains first, SIGINT stops at once."""

    def __init__(self, servers: Sequence[_Listener], apps: RouterApps, drain_s: float) -> None:
        self._servers = servers
        self._apps = apps
        self._drain_s = drain_s
        self._draining = False
        self._front_drain: asyncio.Task[None] | None = None

    def stop(self, *, force: bool = False) -> None:
        for server in self._servers:
            server.force_exit = server.force_exit or force
            server.should_exit = True

    def on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGINT:
            self.stop(force=any(server.should_exit for server in self._servers))
        elif self._draining or self._drain_s <= 0:
            self.stop()
        else:
            self.drain()

    def drain(self) -> None:
        """Serve on for ``drain_s`` with readiness 503 and every connection closed after its answer; then stop."""
        logging.getLogger(__name__).warning("SIGTERM: draining for %gs, then stopping", self._drain_s)
        self._draining = True
        self._apps.service.draining = True
        for server in self._servers:
            protocol = server.config.http_protocol_class
            if isinstance(protocol, type) and issubclass(protocol, GuardedHttpToolsProtocol):
                drain_connections(protocol, server.server_state.connections)
        loop = asyncio.get_running_loop()
        if self._apps.service.fastpath is not None:
            self._front_drain = loop.create_task(self._drain_front(self._apps.service.fastpath))
        loop.call_later(self._drain_s, self.stop)

    @staticmethod
    async def _drain_front(front: FastPathFront) -> None:
        try:
            await front.drain()
        except FastPathError as exc:
            logging.getLogger(__name__).error("the fast path did not start draining: %s", exc)


async def _serve_all(servers: Sequence[_Listener], sockets: Sequence[socket.socket], *,
                     shutdown: _Shutdown | None) -> None:
    """Serve until a server exits or, with ``shutdown``, a signal asks all of them to."""
    if shutdown is not None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shutdown.on_signal, sig)
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in zip(servers, sockets, strict=True)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for server in servers:  # one stopped (or failed to start): stop the other too
            server.should_exit = True
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def freeze_heap() -> None:
    """Move everything allocated so far out of the cyclic garbage collector's reach (``gc.freeze``).

    The router's imports and apps leave ~66,000 long-lived objects; a full collection walks them all and took
    35 ms on the dev VM, on the event loop that serves requests. It runs whenever enough younger objects have
    survived, at no particular moment (an admin call allocating more makes one likelier): the 30-45 ms answers
    `bench knobs` still saw around knob changes once the sidecar's other stalls were gone. Frozen, a full
    collection walks only what serving allocated since."""
    gc.collect()
    gc.freeze()


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with the router extra
        asyncio.run(main)
        return
    uvloop.run(main)


def _front(apps: RouterApps, binary: Path | None, host: str, port: int, data_socket: socket.socket) -> None:
    """With ``binary``, put the compiled fast path on ``host:port`` in front of the bound data socket
    (:mod:`.fastpath`); the data app's lifespan starts and stops it."""
    if binary is not None:
        behind = data_socket.getsockname()[1]
        apps.service.fastpath = FastPathFront(binary, host=host, port=port, fallback_url=f"http://{INTERNAL_HOST}:{behind}")


def serve(apps: RouterApps, listeners: Listeners, *, log_level: str = "warning", drain_s: float = 0.0,
          fastpath: Path | None = None) -> None:
    """Serve ``apps`` on ``listeners`` until SIGINT, or SIGTERM and ``drain_s`` seconds of drain (blocks).

    With ``fastpath`` (the ``paretoserve-fastpath`` binary) that binary serves ``listeners.host:port`` and the
    data app listens on a free loopback port behind it."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = listeners if fastpath is None else replace(listeners, host=INTERNAL_HOST, port=0)
    servers = _servers(apps, data, apps.service.limits, log_level)
    sockets = _bind(servers)
    _front(apps, fastpath, listeners.host, listeners.port, sockets[0])
    freeze_heap()
    try:
        _run(_serve_all(servers, sockets, shutdown=_Shutdown(servers, apps, drain_s)))
    finally:
        for sock in sockets:
            sock.close()


class ServerThread:
    """Both listeners of ``apps`` in a background thread: ``with ServerThread(apps) as s:``.

    Ports 0 (the default) let the OS pick free ports; :attr:`url` and :attr:`admin_url` are the base
    URLs once started.
    """

    def __init__(self, apps: RouterApps, *, host: str = DEFAULT_HOST, startup_timeout_s: float = 30.0,
                 fastpath: Path | None = None) -> None:
        self._servers = _servers(apps, Listeners(host, 0, host, 0), apps.service.limits, "warning")
        self._thread = threading.Thread(target=self._main, name="paretoserve-router", daemon=True)
        self._host = host
        self._startup_timeout_s = startup_timeout_s
        self._apps = apps
        self._fastpath = fastpath

    def _main(self) -> None:
        sockets = _bind(self._servers)
        _front(self._apps, self._fastpath, self._host, 0, sockets[0])
        try:
            asyncio.run(_serve_all(self._servers, sockets, shutdown=None))
        finally:
            for sock in sockets:
                sock.close()

    def _url(self, server: uvicorn.Server) -> str:
        for listening in getattr(server, "servers", []):
            for sock in listening.sockets:
                return f"http://{self._host}:{sock.getsockname()[1]}"
        raise RuntimeError("the server is not listening yet")

    @property
    def url(self) -> str:
        """The data port (the fast path's, when there is one)."""
        front = self._apps.service.fastpath
        return front.url if front is not None else self._url(self._servers[0])

    @property
    def python_url(self) -> str:
        """The Python data listener (behind the fast path, when there is one)."""
        return self._url(self._servers[0])

    @property
    def admin_url(self) -> str:
        return self._url(self._servers[1])

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout_s
        while not all(server.started for server in self._servers):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the router did not start (see the uvicorn log above)")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
