"""`paretoserve router --config FILE`: run the router sidecar (KServe v2 over HTTP, Starlette + uvicorn).

The operator starts this as the second container of every worker pod, with the router's JSON config
(``paretoserve.workers.router.config``) mounted from the pipeline's ConfigMap; locally it fronts one or
more Triton servers. ``--upstream URL`` (repeatable) serves every model the config's ``upstreams`` leave
out -- the sidecar's own Triton on localhost.

Two listeners: ``--host/--port`` serves only the KServe v2 data plane (``/v2/...``);
``--admin-host/--admin-port`` serves ``/admin/config``, ``/admin/worker`` (both need
``Authorization: Bearer`` with the token in ``--admin-token-file``; without the file they answer 403)
and ``/metrics``. ``--triton-url``/``--triton-grpc-url``/``--triton-load-protocol`` say where and how
``/admin/worker`` and ``--worker-knobs FILE`` (the pod's ConfigMap, applied at start and on every change)
change the pod's Triton. The limit flags bound what one client may make the router hold (see
``docs/data-plane.md``). ``--drain-seconds`` is how long SIGTERM drains before stopping
(``paretoserve.workers.router.serve``).

Starlette, uvicorn and httpx are imported inside the command function so the rest of the CLI stays
fast. A bad config, flag or token file is one line naming it, exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from paretoserve.shell.errors import CliError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_ADMIN_PORT = 8081
DEFAULT_TRITON_URL = "http://127.0.0.1:8000"
DEFAULT_TRITON_GRPC_URL = "127.0.0.1:8001"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
MIB = 1024 * 1024
MAX_DRAIN_S = 600.0


def _read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--admin-token-file: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise CliError(f"--admin-token-file: {path} is empty")
    if not token.isprintable() or any(c.isspace() for c in token):
        raise CliError(f"--admin-token-file: {path} must hold one token without spaces or control characters")
    return token


def cmd_router(args: argparse.Namespace) -> int:
    from paretoserve.workers.router.app import build_router
    from paretoserve.workers.router.config import base_url
    from paretoserve.workers.router.errors import ConfigError
    from paretoserve.workers.router.limits import RequestLimits
    from paretoserve.workers.router.serve import Listeners, load_config_file, serve
    from paretoserve.workers.router.worker_knobs import TritonTarget

    if not 0 <= args.drain_seconds <= MAX_DRAIN_S:
        raise CliError(f"--drain-seconds: must be in 0..{MAX_DRAIN_S:g}, got {args.drain_seconds:g}")
    for flag in ("port", "admin_port"):
        value = getattr(args, flag)
        if not 0 <= value <= 65535:
            raise CliError(f"--{flag.replace('_', '-')}: must be in 0..65535, got {value}")
    if (args.host, args.port) == (args.admin_host, args.admin_port) and args.port != 0:
        raise CliError(f"--admin-port: must differ from --port ({args.port}) on the same host")
    token = _read_token(args.admin_token_file) if args.admin_token_file else None
    try:
        limits = RequestLimits(max_body_bytes=args.max_body_bytes, max_upstream_bytes=args.max_upstream_bytes,
                               max_header_bytes=args.max_header_bytes, read_timeout_s=args.read_timeout_s,
                               keep_alive_s=args.keep_alive_s,
                               limit_concurrency=args.limit_concurrency, max_deadline_ms=args.max_deadline_ms,
                               max_requests_per_connection=args.max_requests_per_connection)
    except ValueError as exc:
        raise CliError(f"limits: {exc}") from None
    try:
        triton_url = base_url(args.triton_url, "--triton-url")
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    try:
        config = load_config_file(Path(args.config), default_upstreams=tuple(args.upstream or ()))
    except ConfigError as exc:
        raise CliError(f"{args.config}: {exc}") from None
    apps = build_router(config, knobs_file=Path(args.worker_knobs) if args.worker_knobs else None,
                        admin_token=token, limits=limits,
                        triton=TritonTarget(triton_url, args.triton_grpc_url, args.triton_load_protocol))
    fastpath = None
    if args.fastpath:
        from paretoserve.workers.router.fastpath import FastPathError, find_binary
        try:
            fastpath = find_binary(None if args.fastpath == "auto" else args.fastpath)
        except FastPathError as exc:
            raise CliError(f"--fastpath: {exc}") from None
    serve(apps, Listeners(args.host, args.port, args.admin_host, args.admin_port), log_level=args.log_level,
          drain_s=args.drain_seconds, fastpath=fastpath)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``router`` command to the ``paretoserve`` parser's subcommands."""
    parser = subparsers.add_parser(
        "router", help="run the router sidecar (cascades, weighted splits, EDF queue) in front of Triton"
    )
    parser.add_argument("--config", required=True, help="router config JSON (pipeline, stages, upstreams, ...)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"data listener address (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"data listener port: /v2/... only (default {DEFAULT_PORT})")
    parser.add_argument("--admin-host", default=DEFAULT_HOST, help=f"admin listener address (default {DEFAULT_HOST})")
    parser.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT,
                        help=f"admin listener port: /admin/*, /metrics (default {DEFAULT_ADMIN_PORT})")
    parser.add_argument("--admin-token-file", metavar="PATH",
                        help="file holding the bearer token /admin/* requires (without it /admin/* answers 403)")
    parser.add_argument("--upstream", action="append", metavar="URL",
                        help="base URL serving every model the config's upstreams omit (repeatable: replicas)")
    parser.add_argument("--triton-url", default=DEFAULT_TRITON_URL,
                        help=f"the pod's own Triton (HTTP), whose models /admin/worker may change "
                             f"(default {DEFAULT_TRITON_URL})")
    parser.add_argument("--triton-grpc-url", default=DEFAULT_TRITON_GRPC_URL,
                        help=f"the same Triton's gRPC address, for knob loads (default {DEFAULT_TRITON_GRPC_URL})")
    parser.add_argument("--triton-load-protocol", choices=("grpc", "http"), default="grpc",
                        help="how knob changes are loaded (default grpc: an HTTP load stalls inference on Triton 2.51)")
    parser.add_argument("--worker-knobs", metavar="FILE",
                        help="Triton knobs JSON (the body of POST /admin/worker) applied to the pod's Triton at "
                             "start and whenever the file changes (the pod's ConfigMap worker.json)")
    parser.add_argument("--max-body-bytes", type=int, default=16 * MIB,
                        help="largest request body (413 beyond; default 16 MiB)")
    parser.add_argument("--max-upstream-bytes", type=int, default=64 * MIB,
                        help="largest upstream answer read (502 beyond; default 64 MiB)")
    parser.add_argument("--max-header-bytes", type=int, default=16 * 1024,
                        help="largest request line plus headers (431 beyond; default 16 KiB)")
    parser.add_argument("--read-timeout-s", type=float, default=10.0,
                        help="time a client may take to send a whole request, head and body (408; default 10)")
    parser.add_argument("--max-requests-per-connection", type=int, default=1000,
                        help="answer a keep-alive connection's Nth request with Connection: close, so clients "
                             "reconnect and new replicas get their share (default 1000)")
    parser.add_argument("--keep-alive-s", type=int, default=75,
                        help="seconds a connection may stay idle, before its first request or between two "
                             "(default 75)")
    parser.add_argument("--limit-concurrency", type=int, default=1024,
                        help="connections plus requests in progress on the data listener (503 beyond; default 1024)")
    parser.add_argument("--max-deadline-ms", type=float, default=600_000.0,
                        help="cap on the deadline header when the config has no sloMs (default 600000)")
    parser.add_argument("--drain-seconds", type=float, default=0.0,
                        help="on SIGTERM, keep serving this long with readiness 503 and every connection closed "
                             "after its answer, then stop (a second SIGTERM stops at once; default 0)")
    parser.add_argument("--fastpath", metavar="BIN|auto",
                        help="serve the data port through the compiled fast path (native/fastpath): the binary, or "
                             "auto (paretoserve-fastpath on PATH, else the repository's release build); the plain "
                             "model proxy runs there, everything else passes to this process behind it")
    parser.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    parser.set_defaults(func=cmd_router)
