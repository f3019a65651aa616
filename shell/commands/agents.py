"""`paretoserve agents build --out DIR [--cache DIR] [--quiet]`: the models and the example of agent workflows.

Trains (once, then from the cache) the aggregator agents the example workflow runs on the digits (refine and
judge models, two sizes each) and writes to DIR: ``repository/`` (their Triton model-repository entries),
``pipeline.yaml`` (the example workflow, 8 agents with fan-out and fan-in, as a ServingPipeline whose variants
carry held-out accuracy and profiles measured in ONNX Runtime on one thread) and ``agents.json`` (the report).
Serve it with ``paretoserve up DIR/pipeline.yaml --model-repository DIR/repository``. Prints a summary as one
JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from paretoserve.shell.errors import CliError


def _folder(flag: str, text: str) -> Path:
    """``text`` as a folder to write, refused when it or the nearest existing folder above it is a file."""
    path = Path(text)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise CliError(f"{flag}: {existing} exists and is not a folder")
    return path


def _create(flag: str, path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{flag}: cannot create {path}: {exc.strerror}") from None


def cmd_build(args: argparse.Namespace) -> int:
    out = _folder("--out", args.out)
    cache = None if args.cache is None else _folder("--cache", args.cache)
    try:
        from paretoserve.workers.agents import build
    except ImportError as exc:
        raise CliError(f"agents: needs the workers extra (torch, onnx): {exc}") from None
    _create("--out", out)
    if cache is not None:
        _create("--cache", cache)

    def progress(line: str) -> None:
        print(f"agents: {line}", file=sys.stderr, flush=True)

    report = build(out, cache_root=cache, progress=None if args.quiet else progress)
    models = report["models"]
    print(json.dumps({"out": str(out.resolve()), "fingerprint": report["fingerprint"], "trained": report["trained"],
                      "heldoutAccuracy": {m: round(v["heldoutAccuracy"], 4) for m, v in models.items()},
                      "p99Ms": {m: v["p99Ms"] for m, v in models.items()},
                      "workflowAccuracy": {k: round(v["accuracy"], 4) for k, v in report["workflowAccuracy"].items()},
                      "seconds": report["seconds"]}, sort_keys=True))
    return 0


def register(sub: Any) -> None:
    agents = sub.add_parser("agents", help="the aggregator models and the example agent workflow")
    commands = agents.add_subparsers(dest="agents_command", required=True)
    build = commands.add_parser("build", help="train the aggregators, write their repository and pipeline.yaml")
    build.add_argument("--out", required=True, help="folder for repository/, pipeline.yaml, agents.json")
    build.add_argument("--cache", default=None, help="cache folder (default ~/.cache/paretoserve/agents)")
    build.add_argument("--quiet", action="store_true", help="no progress lines")
    build.set_defaults(func=cmd_build)
