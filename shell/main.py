"""The `paretoserve` command line: plan, serve locally, profile, replay traces, run experiments and benchmarks.

Bad input never produces a traceback: the CLI prints one line naming the field and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from paretoserve.shell.commands import agents, bench, experiment, fuse, models, plan, router, runtime
from paretoserve.shell.errors import EXIT_USAGE, CliError

COMMANDS = (plan, bench, experiment, runtime, router, models, fuse, agents)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its refusals on one line (no usage block): ``PROG: error: MESSAGE``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        if message.endswith("expected one argument"):  # e.g. --min-deadline-ms -1e9: argparse sees a flag
            message += " (a value that starts with '-' is written --flag=VALUE)"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="paretoserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed --help, or a one-line error (OneLineParser)
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"paretoserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def entrypoint() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `paretoserve plan ... | head`
        code = 0
    sys.exit(code)
