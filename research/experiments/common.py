"""Pieces the experiments share: trace windows as workloads, the LSTM forecasters, simulator settings.

Every controller plans for min(predicted load, the most its constrained program can carry) (`cap_for`),
so a baseline that cannot serve the peak runs at its capacity and sheds load instead of keeping an
undersized plan or deploying nothing.

Quick runs (`--quick`) never import torch: they plan with the moving maximum that IPA uses as its backup
predictor and say so in their notes, so a quick run's numbers do not depend on what is cached locally.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from paretoserve.planner.model import Baseline
from paretoserve.planner.predict import Forecaster
from paretoserve.planner.sim.controllers import capacity_limit
from paretoserve.planner.sim.engine import SimConfig
from paretoserve.planner.sim.workload import FloatArray, Workload, arrivals_from_counts
from paretoserve.planner.spec import ServingPipeline
from paretoserve.research.experiments import data

SEED = 20240601
NOISE_CV = 0.05
"""Every simulated batch takes its profiled latency times lognormal noise with this coefficient of variation."""
TIMEOUT_SLOS = 2.0
"""A request that waits this many SLOs in one queue is abandoned (counted as a violation)."""


def sim_config(slo_ms: float, **overrides: object) -> SimConfig:
    base: dict[str, object] = {"seed": SEED, "noise_cv": NOISE_CV, "timeout_s": TIMEOUT_SLOS * slo_ms / 1000.0}
    base.update(overrides)
    return SimConfig(**base)  # type: ignore[arg-type]


def parse_window(text: str | None) -> tuple[int, int] | None:
    """`START:END` in seconds; None when not given."""
    if text is None:
        return None
    try:
        start_text, end_text = text.split(":", 1)
        start, end = int(float(start_text)), int(float(end_text))
    except ValueError:
        raise ValueError(f"--trace-window must be START:END in seconds, got {text!r}") from None
    if not 0 <= start < end:
        raise ValueError(f"--trace-window needs 0 <= START < END, got {text!r}")
    return start, end


def workload_from_counts(counts: FloatArray, *, prelude: FloatArray | None = None, seed: int = SEED,
                         slo_ms: FloatArray | None = None, confidence: FloatArray | None = None) -> Workload:
    rng = np.random.default_rng(seed)
    arrivals = arrivals_from_counts(counts, rng)
    return Workload(arrivals, float(len(counts)), slo_ms=slo_ms, confidence=confidence,
                    prelude_counts=np.zeros(0) if prelude is None else prelude)


def twitter_workload(segments: Sequence[tuple[int, int]], damping: int, *, prelude_s: int = 600,
                     seed: int = SEED) -> Workload:
    """Twitter-trace segments back to back, damped; the `prelude_s` before the first one is the history."""
    counts = np.concatenate([data.twitter_window(a, b, damping) for a, b in segments])
    first = segments[0][0]
    prelude = data.twitter_window(max(0, first - prelude_s), first, damping) if first > 0 else np.zeros(0)
    return workload_from_counts(counts, prelude=prelude, seed=seed)


def lstm_forecaster(kind: str, quick: bool, notes: list[str]) -> Forecaster | None:
    """IPA's ('ipa') or InfAdapter's ('infadapter') LSTM trained on the first 14 days of the Twitter trace."""
    if quick:
        notes.append("--quick: the LSTM predictor is replaced by the moving maximum over its window "
                     "(IPA's backup predictor); full runs use the trained LSTM.")
        return None
    try:
        from paretoserve.workers.predictors import INFADAPTER_LSTM, IPA_LSTM, load_or_train
    except ImportError as exc:  # torch is in the workers extra
        notes.append(f"LSTM unavailable ({exc}); planned with the moving maximum instead.")
        return None
    spec = IPA_LSTM if kind == "ipa" else INFADAPTER_LSTM

    def progress(fraction: float) -> None:
        sys.stderr.write(f"\rtraining the {spec.name} LSTM on days 0-14 of the Twitter trace: {fraction:5.0%}")
        sys.stderr.flush()

    model, cached = load_or_train(data.twitter_counts(), spec, progress=progress)
    if not cached:
        sys.stderr.write("\n")
    notes.append(f"LSTM `{spec.name}` ({spec.bins} maxima of {spec.bin_seconds}-s bins -> peak of the next "
                 f"{spec.horizon_s} s), trained on the first 14 days of the Twitter trace"
                 f" ({'loaded from the cache' if cached else 'trained for this run'}).")
    return model


def cap_for(pipelines: Sequence[ServingPipeline], peak_rps: float, *,
            baseline: Baseline = Baseline.NONE) -> float | None:
    """None when the pipelines can carry the window's peak (with headroom); else the most they can carry."""
    headroom = pipelines[0].spec.adaptation.predictor.headroom
    upper = peak_rps * (1.0 + headroom)
    cap = capacity_limit(pipelines, upper, baseline=baseline)
    return None if cap >= upper else cap
