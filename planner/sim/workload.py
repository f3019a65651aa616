"""What the simulator replays: arrival times, per-request SLOs and discriminator confidences.

Traces come in two shapes — per-second request counts (the Twitter trace of InfAdapter, IPA and Sponge)
and explicit timestamps (DiffServe's MAF traces) — and both become one sorted array of arrival times, so
the engine never sees the difference. Randomness only enters through a `numpy.random.Generator` that the
caller passes in (or a seed), never through a global generator: the same seed replays the same run.
Reading the files is the edges' job (`paretoserve.research.experiments.data`); this module is pure arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _empty() -> FloatArray:
    return np.zeros(0, dtype=np.float64)


@dataclass(frozen=True)
class Prompts:
    """Per-request facts of token-generating requests, aligned with the workload's arrivals."""

    prompt_tokens: IntArray
    output_tokens: IntArray
    difficulty: FloatArray | None = None
    """The prompt router's score of each request: a `prompt` cascade sends it to the heavy model when the
    score is at least the planned threshold (without it, a random share f(t) goes there)."""
    correct: Mapping[str, npt.NDArray[np.bool_]] = field(default_factory=dict)
    """Variant -> whether its answer to each request is right: a request's quality is that of the variant
    that served it, instead of the variant's (or cascade row's) mean."""

    def __len__(self) -> int:
        return len(self.prompt_tokens)


@dataclass(frozen=True)
class Workload:
    """The requests of one simulated run, in arrival order."""

    arrivals_s: FloatArray
    """Arrival time of every request in seconds from the start of the run, sorted ascending."""
    duration_s: float
    """End of the arrival window; the controller stops ticking here and the queues drain."""
    slo_ms: FloatArray | None = None
    """Per-request latency budget (Sponge's dynamic SLO); None means the pipeline's static SLO."""
    confidence: FloatArray | None = None
    """Per-request discriminator confidence of the light model's output, replayed by cascades."""
    prelude_counts: FloatArray = field(default_factory=_empty)
    """Requests per second before t = 0, oldest first: the predictors' history at the first tick."""
    prompts: Prompts | None = None
    """Token counts (and optionally router scores and correctness) of token-generating requests."""

    def __post_init__(self) -> None:
        n = len(self.arrivals_s)
        if n and (np.any(np.diff(self.arrivals_s) < 0) or self.arrivals_s[0] < 0):
            raise ValueError("arrivals must be sorted and non-negative")
        if n and self.arrivals_s[-1] > self.duration_s:
            raise ValueError("the last arrival lies beyond duration_s")
        for name in ("slo_ms", "confidence", "prompts"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"{name} needs one value per request ({n}), got {len(values)}")
        if self.prompts is not None:
            lengths = [len(v) for v in (self.prompts.output_tokens, self.prompts.difficulty,
                                        *self.prompts.correct.values()) if v is not None]
            if any(length != n for length in lengths):
                raise ValueError(f"prompts needs one value per request ({n}) in every array")

    @property
    def requests(self) -> int:
        return len(self.arrivals_s)



Inbox = list[tuple[FloatArray, IntArray]]
"""Arrivals handed to a stage or pool in pieces (times, request ids), each piece sorted, not yet queued."""


def take_before(inbox: Inbox, t_end: float) -> tuple[FloatArray, IntArray, Inbox]:
    """The inbox's arrivals before `t_end` in time order (ties keep their order), and the inbox left after."""
    times = np.concatenate([t for t, _ in inbox])
    ids = np.concatenate([i for _, i in inbox])
    order = np.argsort(times, kind="stable")
    times, ids = times[order], ids[order]
    cut = int(np.searchsorted(times, t_end, side="left"))
    return times[:cut], ids[:cut], ([(times[cut:], ids[cut:])] if cut < len(times) else [])


def arrivals_from_counts(counts: Sequence[float] | npt.NDArray[np.generic], rng: np.random.Generator | None = None,
                         *, even: bool = False) -> FloatArray:
    """Spread per-second counts inside their second: uniformly at random, or evenly (`even`, or no rng)."""
    per_second = np.asarray(counts, dtype=np.float64)
    if np.any(per_second < 0):
        raise ValueError("counts must be non-negative")
    whole = np.floor(per_second).astype(np.int64)
    seconds = np.repeat(np.arange(len(whole), dtype=np.float64), whole)
    if even or rng is None:
        starts = np.cumsum(whole) - whole
        rank = np.arange(len(seconds), dtype=np.float64) - np.repeat(starts, whole)
        offsets = (rank + 0.5) / np.repeat(np.maximum(whole, 1), whole)
        return np.asarray(seconds + offsets, dtype=np.float64)
    return np.sort(seconds + rng.random(len(seconds)))


def arrivals_from_timestamps(timestamps_s: Sequence[float] | FloatArray, *, origin: float | None = None) -> FloatArray:
    """Explicit timestamps, shifted so that `origin` (default: the first one) is t = 0, and sorted."""
    ts = np.sort(np.asarray(timestamps_s, dtype=np.float64))
    if len(ts) == 0:
        return ts
    return ts - (ts[0] if origin is None else origin)


def counts_per_second(arrivals_s: FloatArray, duration_s: float) -> FloatArray:
    """Requests per second over [0, duration): the load history a metrics source reports."""
    bins = max(0, int(np.ceil(duration_s)))
    idx = np.floor(arrivals_s).astype(np.int64)
    idx = idx[(idx >= 0) & (idx < bins)]
    return np.bincount(idx, minlength=bins).astype(np.float64)


def dynamic_slos(arrivals_s: FloatArray, base_slo_ms: float, bandwidth_bytes_per_ms: Sequence[float] | FloatArray,
                 payload_bytes: float, *, sample_period_s: float = 1.0, floor_ms: float = 1.0) -> FloatArray:
    """Sponge's per-request SLO: base − payload / bandwidth at the request's arrival (log replayed cyclically).

    `floor_ms` keeps a budget positive when the link is slower than the base SLO allows; such requests
    are hopeless either way and count as violations.
    """
    bw = np.asarray(bandwidth_bytes_per_ms, dtype=np.float64)
    if len(bw) == 0 or np.any(bw <= 0):
        raise ValueError("bandwidth samples must be positive")
    slot = np.floor(arrivals_s / sample_period_s).astype(np.int64) % len(bw)
    return np.asarray(np.maximum(base_slo_ms - payload_bytes / bw[slot], floor_ms), dtype=np.float64)


def replay_confidences(n: int, reference: Sequence[float] | FloatArray, rng: np.random.Generator | None = None,
                       ) -> FloatArray:
    """Confidence of each request's light-model output: the reference replayed in order, or resampled."""
    ref = np.asarray(reference, dtype=np.float64)
    if len(ref) == 0:
        raise ValueError("the confidence reference is empty")
    if rng is None:
        return np.asarray(ref[np.arange(n) % len(ref)], dtype=np.float64)
    return np.asarray(ref[rng.integers(0, len(ref), size=n)], dtype=np.float64)


@dataclass(frozen=True)
class ConfidenceCalibration:
    """Maps a cascade row's deferred share f(t) to a cut on the replayed confidences.

    DiffServe measured f(t) offline with its own discriminator; the replayed scores come from another
    sample. Deferring the requests whose confidence falls below the f-quantile of the replayed scores
    makes the simulated deferred share match f(t) in expectation, whatever the scores' scale.
    """

    sorted_scores: FloatArray

    @classmethod
    def of(cls, scores: FloatArray | None) -> ConfidenceCalibration:
        if scores is None or len(scores) == 0:
            return cls(np.zeros(0, dtype=np.float64))
        return cls(np.sort(np.asarray(scores, dtype=np.float64)))

    def cut(self, deferred_fraction: float) -> float:
        """Confidence below which a request is deferred so that `deferred_fraction` of them are."""
        f = min(max(deferred_fraction, 0.0), 1.0)
        if f <= 0.0:
            return -np.inf
        if f >= 1.0:
            return np.inf
        if len(self.sorted_scores) == 0:  # uniform scores in [0, 1): the cut is f itself
            return f
        k = int(round(f * len(self.sorted_scores)))
        if k <= 0:
            return -np.inf
        if k >= len(self.sorted_scores):
            return np.inf
        # between the k-th and (k+1)-th smallest score, so that exactly k reference scores fall below
        return float(0.5 * (self.sorted_scores[k - 1] + self.sorted_scores[k]))
