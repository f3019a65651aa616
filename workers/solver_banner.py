"""Keep HiGHS's copyright banner out of our output.

highspy prints a banner to the process's stdout (from C, so Python-level redirection misses it) the
first time a `Highs` object is created. Edges that print machine-readable output (`--json`) call
`silence_solver_banner()` once at start-up; the planner itself stays free of I/O.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

_done = False


@contextlib.contextmanager
def _stdout_to_devnull() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def silence_solver_banner() -> None:
    global _done
    if _done:
        return
    try:
        import highspy
    except ImportError:
        return
    with _stdout_to_devnull():
        highspy.Highs()  # type: ignore[no-untyped-call]
    _done = True
