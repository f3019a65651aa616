"""`bench knobs` judges a knob change by the latencies of the requests scheduled in its window: the window's cut,
its count of requests over the margin and the run's verdicts are pure and checked here (the benchmark itself needs
Triton)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from paretoserve.research.benchmarks.knobs import CONTROL, PROCESS_START, WINDOW_S, _window, verdicts


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


def _change(name: str, within: bool, failed: int = 0, *, control: bool = False,
            process: bool = False) -> dict[str, Any]:
    return {"change": name, "control": control or process, "process_start": process, "p99_within_margin": within,
            "window": {"failed": failed}}


def test_only_knob_changes_decide_invisible_and_each_control_kind_gets_its_own_verdict() -> None:
    quiet_changes = [_change(CONTROL, True, control=True), _change("instances 1->2", True),
                     _change("batching", True), _change(PROCESS_START, False, process=True),
                     _change(CONTROL, True, control=True)]

    assert verdicts(quiet_changes) == {"invisible": True, "controls_within_margin": True,
                                       "process_start_within_margin": False}  # a slow process start is not a change

    slow_change = [*quiet_changes[:2], _change("batching", False), *quiet_changes[3:]]
    assert verdicts(slow_change)["invisible"] is False
    failed_request = [*quiet_changes[:1], _change("instances 1->2", True, failed=1), *quiet_changes[2:]]
    assert verdicts(failed_request)["invisible"] is False  # a failed request is visible whatever the p99
    noisy_control = [*quiet_changes[:4], _change(CONTROL, False, control=True)]
    assert verdicts(noisy_control) == {"invisible": True, "controls_within_margin": False,
                                       "process_start_within_margin": False}
