"""How experiments are judged: the three-axis dominance check, claims held to the SLO, and auto windows."""

from __future__ import annotations

import numpy as np
import pytest

from paretoserve.research.experiments.frontier import dominating, frontier_claims, with_slo
from paretoserve.research.experiments.harness import Claim
from paretoserve.research.experiments.plots import label_offsets
from paretoserve.research.experiments.windows import EVALUATION_START_S, auto_windows, parse_windows, rises


def m(slo: float, accuracy: float, cost: float) -> dict[str, float]:
    return {"slo_attainment": slo, "accuracy": accuracy, "cost": cost}


def test_a_baseline_dominates_only_if_as_good_on_all_three_axes_and_better_on_one() -> None:
    systems = {
        "paretoserve": m(0.995, 0.80, 10.0),
        "cheaper-same": m(0.995, 0.80, 9.0),  # dominates: cheaper, equal otherwise
        "safer-worse": m(1.0, 0.70, 9.0),  # less accurate: no
        "within-noise": m(0.9952, 0.8005, 9.95),  # differences inside the tolerances: equal, not better
        "better-slo": m(0.999, 0.80, 10.05),  # 0.5 % more cost is within tolerance; SLO better
    }
    assert dominating(systems) == ["cheaper-same", "better-slo"]
    goal, frontier = frontier_claims(systems)
    assert goal.reproduced is True and frontier.reproduced is False and "cheaper-same" in frontier.ours


def test_a_papers_claim_fails_when_paretoserve_misses_the_slo() -> None:
    claim = Claim("accuracy up", "+21 %", "+10 %", True)
    ok = with_slo([claim], {"paretoserve": m(0.995, 0.8, 1.0)})
    assert ok == [claim]
    (held,) = with_slo([claim], {"paretoserve": m(0.95, 0.8, 1.0)})
    assert held.reproduced is False and "95.00%" in held.ours
    goal, _ = frontier_claims({"paretoserve": m(0.95, 0.8, 1.0)})
    assert goal.reproduced is False


def test_auto_windows_follow_the_rule_on_a_synthetic_trace() -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(50, EVALUATION_START_S + 40_000).astype(np.float64) + 1
    steps = {EVALUATION_START_S + 5_000: 4.0, EVALUATION_START_S + 20_000: 3.0, 100: 9.0}  # the last is too early
    for t, factor in steps.items():
        counts[t:t + 200] *= factor
    assert rises(counts)[EVALUATION_START_S + 5_000] == pytest.approx(4.0, rel=0.1)
    windows = auto_windows(counts, 1200, 4, seed=1)
    bursty = [w for w in windows if w.kind == "bursty"]
    calm = [w for w in windows if w.kind == "calm"]
    assert [w.start + 1200 // 3 for w in bursty] == [EVALUATION_START_S + 5_000, EVALUATION_START_S + 20_000]
    assert len(calm) == 2 and all(w.rise < 1.2 for w in calm)
    assert all(w.start >= EVALUATION_START_S and w.end - w.start == 1200 for w in windows)
    spans = sorted((w.start, w.end) for w in windows)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))  # no overlaps
    assert auto_windows(counts, 1200, 4, seed=1) == windows  # deterministic by seed


def test_windows_flag_values() -> None:
    assert parse_windows("auto") == 6 and parse_windows("auto:3") == 3
    for bad in ("auto:0", "auto:x", "some", "auto:41"):
        with pytest.raises(ValueError, match="--windows"):
            parse_windows(bad)


def test_pareto_labels_of_points_on_the_right_edge_point_left() -> None:
    """A label to the right of the rightmost point ran under the colour bar ("static-max-accur" in E1's picture):
    points in the right quarter of the cost axis take leftward offsets first, the others rightward."""
    points = [("cheap", 2.0, 0.32), ("ours", 2.03, 0.38), ("mid", 4.0, 0.45), ("dear", 28.0, 0.54)]
    offsets = dict(zip([p[0] for p in points], label_offsets(points), strict=True))
    assert offsets["dear"][0] < 0
    assert offsets["cheap"][0] > 0 and offsets["mid"][0] > 0
