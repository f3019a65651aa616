"""The training-split windows design decisions are made on: the evaluation rule, on days 0-14 only."""

from __future__ import annotations

import numpy as np

from paretoserve.research.experiments.windows import EVALUATION_START_S, auto_windows, design_windows


def test_design_windows_apply_the_rule_to_the_training_split_only() -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(50, EVALUATION_START_S + 40_000).astype(np.float64) + 1
    steps = {5_000: 4.0, 300: 6.0, EVALUATION_START_S + 5_000: 9.0}  # too little history; evaluation split
    for t, factor in steps.items():
        counts[t:t + 200] *= factor
    windows = design_windows(counts, 1200, 4, seed=1)
    bursty = [w for w in windows if w.kind == "bursty"]
    assert bursty and bursty[0].start + 1200 // 3 == 5_000  # the 6x rise at 300 s has no 900 s of history
    assert all(w.start >= 900 and w.end <= EVALUATION_START_S for w in windows)
    assert len(windows) == 4 and all(w.rise < 1.2 for w in windows if w.kind == "calm")
    evaluation = auto_windows(counts, 1200, 4, seed=1)
    assert all(w.start >= EVALUATION_START_S for w in evaluation)
    assert not {(w.start, w.end) for w in windows} & {(w.start, w.end) for w in evaluation}
