"""The `paretoserve experiment NAME [--quick] --out DIR [--trace-window START:END | --windows auto[:N]]` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from paretoserve.shell.errors import CliError

NAMES = ("ipa-video", "infadapter", "sponge", "diffserve", "hadis", "agents", "llm", "llm-mm", "predictors")
"""The experiments of `paretoserve.research.experiments.EXPERIMENTS` (a unit test keeps the two equal)."""


def register(sub: Any) -> None:
    parser = sub.add_parser("experiment", help="reproduce a paper's comparison in the simulator (E1-E5, predictors)",
                            description="Reproduce a paper's comparison in the simulator with the data in "
                                        "../shared/data; writes DIR/results.json, DIR/results.md and PNG plots.")
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help="a short window and fewer systems (< 60 s)")
    parser.add_argument("--trace-window", metavar="START:END", default=None,
                        help="seconds of the experiment's trace: absolute Twitter-trace seconds for ipa-video, "
                             "infadapter, agents, llm, llm-mm and predictors (evaluation span); seconds from the "
                             "start of the trace for sponge, diffserve and hadis")
    parser.add_argument("--windows", metavar="auto[:N]", default=None,
                        help="ipa-video and infadapter: N windows (default 6) of the Twitter trace after day 14 "
                             "chosen by a fixed rule (the steepest rises and a seeded sample of calm windows); "
                             "reports every window and what dominates ParetoServe in each")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=cmd_experiment)


def cmd_experiment(args: argparse.Namespace) -> int:
    try:
        from paretoserve.research.experiments import run_experiment
        from paretoserve.research.experiments.data import DataMissing
    except ImportError:
        raise CliError("experiment: this installation has no research package (the sidecar image leaves it "
                       "out)") from None

    out = Path(args.out)
    try:
        doc = run_experiment(args.name, out, quick=args.quick, window=args.trace_window, windows=args.windows,
                             show_progress=not args.no_progress)
    except (DataMissing, ValueError) as exc:
        raise CliError(f"experiment {args.name}: {exc}") from None
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and plots", file=sys.stderr)
    return 0 if doc.get("systems") or doc.get("windows") else 1
