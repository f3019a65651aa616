"""Per-second request traces: read a bz2 tarball, cut a window, scale it, spread arrivals in each second.

The seed systems (InfAdapter, IPA, Sponge) replay the April 2018 Twitter trace: one line of
space-separated integers, requests per second, in a ``.tbz2`` tarball. `paretoserve load` and
`paretoserve up --replay` replay a window of it, scaled to what one machine can serve. The file is read
where it lies (never copied); everything but `read_trace` is pure, so windowing, scaling and the arrival
schedule are unit-tested on tiny synthetic traces.
"""

from __future__ import annotations

import math
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class TraceError(ValueError):
    """A trace file or a window/scale argument is unusable; the message names the argument."""


@dataclass(frozen=True)
class Window:
    """Seconds ``start`` (inclusive) to ``end`` (exclusive) of a trace."""

    start: int
    end: int

    @property
    def seconds(self) -> int:
        return self.end - self.start


def parse_window(text: str) -> Window:
    """``START:END`` in seconds, ``0 <= START < END``."""
    parts = text.split(":")
    if len(parts) != 2:
        raise TraceError(f"--window: expected START:END in seconds, got {text!r}")
    try:
        start, end = int(parts[0]), int(parts[1])
    except ValueError:
        raise TraceError(f"--window: START and END must be integers, got {text!r}") from None
    if start < 0 or end <= start:
        raise TraceError(f"--window: need 0 <= START < END, got {text!r}")
    return Window(start, end)


def parse_counts(text: str) -> list[int]:
    """Space-separated non-negative integers (one per second)."""
    counts: list[int] = []
    for index, token in enumerate(text.split()):
        try:
            value = int(token)
        except ValueError:
            raise TraceError(f"trace: second {index} is not an integer: {token[:20]!r}") from None
        if value < 0:
            raise TraceError(f"trace: second {index} is negative ({value})")
        counts.append(value)
    return counts


def read_trace(path: Path, *, flag: str = "--trace") -> list[int]:
    """The per-second counts of the first regular file in a bz2 tarball (``.tbz2``); errors name ``flag``."""
    try:
        with tarfile.open(path, "r:bz2") as archive:
            member = next((m for m in archive.getmembers() if m.isfile()), None)
            if member is None:
                raise TraceError(f"{flag}: {path} holds no regular file")
            handle = archive.extractfile(member)
            if handle is None:
                raise TraceError(f"{flag}: cannot read {member.name} in {path}")
            with handle:
                text = handle.read().decode("ascii", errors="strict")
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise TraceError(f"{flag}: cannot read {path} as a bz2 tarball: {exc}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{flag}: {path} is not a text trace of integers") from None
    return parse_counts(text)


def scale_window(counts: Sequence[int], window: Window, scale: float) -> list[int]:
    """Counts of ``window`` × ``scale``, rounded with carry so the total matches the scaled total."""
    if not (scale > 0 and math.isfinite(scale)):
        raise TraceError(f"--scale: must be a positive number, got {scale}")
    if window.end > len(counts):
        raise TraceError(f"--window: ends at {window.end} but the trace has {len(counts)} seconds")
    out: list[int] = []
    exact = 0.0
    emitted = 0
    for value in counts[window.start:window.end]:
        exact += value * scale
        now = math.floor(exact + 0.5)
        out.append(now - emitted)
        emitted = now
    return out


def arrival_offsets(per_second: Sequence[int], *, seed: int = 0) -> list[float]:
    """Send times in seconds from the start: ``k`` arrivals of a second evenly spaced, randomly phased.

    Even spacing keeps the offered rate within a second flat (the trace has no finer resolution); the
    seeded phase avoids every second starting with a request at exactly ``.000``.
    """
    rng = random.Random(seed)
    offsets: list[float] = []
    for second, count in enumerate(per_second):
        if count <= 0:
            continue
        phase = rng.random()
        offsets.extend(second + (i + phase) / count for i in range(count))
    return offsets


def describe(per_second: Sequence[int]) -> dict[str, float]:
    """Total, mean and peak of a scaled window (for summaries and `--dry-run` style output)."""
    if not per_second:
        return {"seconds": 0, "requests": 0, "meanRps": 0.0, "peakRps": 0}
    total = sum(per_second)
    return {"seconds": len(per_second), "requests": total, "meanRps": round(total / len(per_second), 3),
            "peakRps": max(per_second)}
