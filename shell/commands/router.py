"""`paretoserve router --config FILE`: run the router sidecar (KServe v2 over HTTP, Starlette + uvicorn).

The operator starts this as the second container of every worker pod, with the router's JSON config
(``paretoserve.workers.router.config``) mounted from the pipeline's ConfigMap; locally it fronts one or
more Triton servers. ``--upstream URL`` (repeatable) serves every model the config's ``upstreams`` leave
out -- the sidecar's own Triton on localhost. Live changes go to ``POST /admin/config``; metrics are at
``GET /metrics``. ``--worker-knobs FILE`` applies the pod's Triton knobs from its ConfigMap at start and on
every change, so a pod started after the operator's last push still gets them.

Starlette, uvicorn and httpx are imported inside the command function so the rest of the CLI stays
fast. A bad config is one line naming the file and the field, exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from paretoserve.shell.errors import CliError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def cmd_router(args: argparse.Namespace) -> int:
    from paretoserve.workers.router.errors import ConfigError
    from paretoserve.workers.router.serve import load_config_file, serve

    if not 0 <= args.port <= 65535:
        raise CliError(f"--port: must be in 0..65535, got {args.port}")
    try:
        config = load_config_file(Path(args.config), default_upstreams=tuple(args.upstream or ()))
    except ConfigError as exc:
        raise CliError(f"{args.config}: {exc}") from None
    knobs = Path(args.worker_knobs) if args.worker_knobs else None
    serve(config, host=args.host, port=args.port, log_level=args.log_level, knobs_file=knobs)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``router`` command to the ``paretoserve`` parser's subcommands."""
    parser = subparsers.add_parser(
        "router", help="run the router sidecar (cascades, weighted splits, EDF queue) in front of Triton"
    )
    parser.add_argument("--config", required=True, help="router config JSON (pipeline, stages, upstreams, ...)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument("--upstream", action="append", metavar="URL",
                        help="base URL serving every model the config's upstreams omit (repeatable: replicas)")
    parser.add_argument("--worker-knobs", metavar="FILE",
                        help="Triton knobs JSON (the body of POST /admin/worker) applied to the pod's Triton at "
                             "start and whenever the file changes (the pod's ConfigMap worker.json)")
    parser.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    parser.set_defaults(func=cmd_router)
