"""`paretoserve fuse SPEC --out DIR [--theta θ] [--budget-minutes M]`: fuse a FusionSpec's task models (GMorph).

Trains the spec's task models (cached), searches fusion graphs for the lowest latency with every task's
validation-accuracy drop within θ, and writes the Pareto set of fused variants to DIR: ``repository/`` (Triton
model-repository entries, one set of outputs per task), ``variants.yaml`` (variants of a multi-task stage
with measured profiles), ``pipeline.yaml`` (a ServingPipeline using them) and ``fusion.json`` (the report).
A search run again resumes from its cache. Prints a summary as one JSON object; the progress bar goes to
stderr. See docs/fusion.md.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paretoserve.planner.spec import SpecError
from paretoserve.shell.errors import CliError


def _number(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a number in [low, high] ((low, high] with ``low_open``), else a one-line refusal."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (low < value if low_open else low <= value) or not value <= high:
            raise argparse.ArgumentTypeError(f"must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value:g}")
        return value

    return parse


def cmd_fuse(args: argparse.Namespace) -> int:
    try:
        from paretoserve.workers.fusion import fuse, load_fusion_spec
    except ImportError as exc:
        raise CliError(f"fuse: needs the workers extra (torch, onnx): {exc}") from None
    path = Path(args.spec)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"SPEC: cannot read {path}: {exc.strerror}") from None
    try:
        spec = load_fusion_spec(text)
    except SpecError as exc:
        raise CliError(f"{path}: {exc}") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out: {out} exists and is not a folder")
    budget_s = None if args.budget_minutes is None else args.budget_minutes * 60.0
    report = fuse(spec, out, theta=args.theta, budget_s=budget_s,
                  cache_root=Path(args.cache) if args.cache else None, show_progress=not args.quiet)
    fused = [s for s in report["served"] if s["kind"] == "fused"]
    print(json.dumps({"out": str(out.resolve()), "theta": report["theta"], "search": report["search"],
                      "paretoVariants": [{k: s[k] for k in ("name", "describe", "testAccuracy", "p99Ms")}
                                         for s in fused]}, sort_keys=True))
    return 0


def register(sub: Any) -> None:
    fuse = sub.add_parser("fuse", help="fuse task models that read the same input (GMorph)")
    fuse.add_argument("spec", help="a FusionSpec YAML file (e.g. manifests/fusion/digits-tasks.yaml)")
    fuse.add_argument("--out", required=True, help="folder for repository/, variants.yaml, pipeline.yaml, fusion.json")
    fuse.add_argument("--theta", type=_number(0.0, 0.5), default=None,
                      help="largest per-task accuracy drop (default: spec)")
    fuse.add_argument("--budget-minutes", type=_number(0.0, 24 * 60, low_open=True), default=None,
                      help="search time (default: spec)")
    fuse.add_argument("--cache", default=None, help="cache folder (default ~/.cache/paretoserve/fusion)")
    fuse.add_argument("--quiet", action="store_true", help="no progress bar")
    fuse.set_defaults(func=cmd_fuse)
