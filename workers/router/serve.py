"""Running the router under uvicorn: as the sidecar's main process, or in a thread for tests.

The sidecar process is ``paretoserve router --config FILE`` (``paretoserve.shell.commands.router``), which
lands in :func:`serve`. uvicorn is tuned for the router's latency budget: its C-accelerated
pieces are used when installed (``loop="auto"`` picks uvloop, ``http="auto"`` picks httptools;
both come with the ``workers`` extra), access logging is off (a log line per request costs more
than the routing itself), so are proxy-header rewriting and the ``server`` header (the sidecar is
reached on the pod network or loopback), and keep-alive is long enough for clients that reuse
connections.
:class:`ServerThread` runs the same server in a background thread of the current process -- the
integration smoke test and in-process tools use it -- and always stops it on leaving its block.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from paretoserve.workers.router.app import build_router
from paretoserve.workers.router.config import RouterConfig, load_config_text
from paretoserve.workers.router.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def load_config_file(path: Path, *, default_upstreams: Sequence[str] = ()) -> RouterConfig:
    """Read and validate a JSON config file; errors are :class:`ConfigError` naming the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    return load_config_text(text, default_upstreams=default_upstreams)


def uvicorn_config(app: Starlette, *, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    """The uvicorn settings the router runs with (see the module notes)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="auto",
        http="auto",
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        log_level=log_level,
        timeout_keep_alive=75,
        backlog=2048,
    )


def serve(config: RouterConfig, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          log_level: str = "warning", knobs_file: Path | None = None) -> None:
    """Serve ``config`` until SIGINT/SIGTERM (blocks; uvicorn handles the signals)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_router(config, knobs_file=knobs_file)
    uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level)).run()


class ServerThread:
    """A real uvicorn server for ``app`` in a background thread: ``with ServerThread(app) as s:``.

    ``port=0`` lets the OS pick a free port; :attr:`url` is the base URL once started.
    """

    def __init__(self, app: Starlette, *, host: str = DEFAULT_HOST, port: int = 0,
                 startup_timeout_s: float = 30.0) -> None:
        self._server = uvicorn.Server(uvicorn_config(app, host=host, port=port))
        self._thread = threading.Thread(target=self._server.run, name="paretoserve-router", daemon=True)
        self._host = host
        self._startup_timeout_s = startup_timeout_s

    @property
    def url(self) -> str:
        servers = getattr(self._server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                return f"http://{self._host}:{sock.getsockname()[1]}"
        raise RuntimeError("the server is not listening yet")

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the router did not start (see the uvicorn log above)")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def serve_in_thread(config: RouterConfig, *, registry: CollectorRegistry | None = None) -> ServerThread:
    """A :class:`ServerThread` running the router for ``config`` on a free port."""
    return ServerThread(build_router(config, registry=registry))
