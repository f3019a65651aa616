"""`bench knobs` judges a knob change by the latencies of the requests scheduled in its window: the window's cut
and its count of requests over the margin are pure and checked here (the benchmark itself needs Triton)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from paretoserve.research.benchmarks.knobs import WINDOW_S, _window


def _samples(latencies_ms: list[float], first_window: int) -> npt.NDArray[np.float64]:
    """Rows of (load-generator window index, latency in s), one request per window from ``first_window``."""
    return np.array([(first_window + i, ms / 1e3) for i, ms in enumerate(latencies_ms)], dtype=np.float64)


def test_a_window_takes_the_requests_scheduled_in_it_and_counts_those_over_the_margin() -> None:
    samples = _samples([1.0, 2.0, 30.0, 3.0, 40.0, 1.0], first_window=0)
    start, end = 2 * WINDOW_S, 5 * WINDOW_S  # windows 1..4: one before start is kept (a request may straddle it)

    window = _window(samples, start, end, slow_ms=7.0)

    assert window["requests_ok"] == 4
    assert window["over_margin"] == 2
    assert window["max_ms"] == 40.0


def test_without_a_margin_there_is_no_count_and_an_empty_window_has_no_percentiles() -> None:
    samples = _samples([1.0, 2.0], first_window=0)

    assert "over_margin" not in _window(samples, 0.0, 10.0)
    empty = _window(samples, 100.0, 101.0, slow_ms=5.0)
    assert empty == {"requests_ok": 0, "over_margin": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
