"""Per-request records of a simulated run and the numbers the experiments report from them.

A run's outcome is a handful of aligned numpy arrays (arrival, finish, status, SLO, accuracy), never one
Python object per request, plus the log of resource changes from which cost is integrated. Every request
ends in exactly one of COMPLETED, DROPPED (nothing could serve it) or TIMED_OUT (it waited longer than
the timeout in some queue); `summarize` turns the arrays into SLO attainment, latency percentiles,
accuracy, core- and GPU-seconds and the reconfiguration count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from paretoserve.planner.evaluate import normalized
from paretoserve.planner.model import Aggregation, Stage
from paretoserve.planner.sim.tokens import TokenRecords
from paretoserve.planner.sim.workload import FloatArray

IN_FLIGHT, COMPLETED, DROPPED, TIMED_OUT = 0, 1, 2, 3


def aggregate_accuracy(stage_accuracy: FloatArray, stages: Sequence[Stage], aggregation: Aggregation) -> FloatArray:
    """Per-request pipeline accuracy from the raw per-stage accuracies (rows in `stages`' order).

    The rule of `evaluate.aggregate`, vectorised: a product of stage accuracies, or the mean of the stage
    values — min–max rescaled or ranked by `evaluate.normalized` for `normalizedSum` and `rankSum` (each
    request got one variant, so a split's score is its variants' mean). A stage has a handful of distinct
    values (its variants, its cascade rows), so each is normalised once and mapped back.
    """
    if stage_accuracy.shape[0] == 0:
        return np.zeros(stage_accuracy.shape[1])
    if aggregation is Aggregation.PRODUCT:
        return np.asarray(np.prod(stage_accuracy, axis=0), dtype=np.float64)
    rows = []
    for stage, values in zip(stages, stage_accuracy, strict=True):
        unique, inverse = np.unique(values, return_inverse=True)
        mapped = np.array([normalized(stage, float(u), aggregation) if np.isfinite(u) else np.nan for u in unique])
        rows.append(mapped[inverse] if len(unique) else values)
    return np.asarray(np.mean(np.vstack(rows), axis=0), dtype=np.float64)


@dataclass(frozen=True)
class SimResult:
    arrival_s: FloatArray
    finish_s: FloatArray
    status: npt.NDArray[np.int8]
    slo_ms: FloatArray
    accuracy: FloatArray
    """Per-request pipeline accuracy under the pipeline's own aggregation."""
    stage_accuracy: FloatArray
    """Raw accuracy (or cascade quality) each stage gave each request, stages × requests."""
    heavy: npt.NDArray[np.bool_]
    """Requests a cascade's heavy model served."""
    duration_s: float
    stage_names: tuple[str, ...]
    resource_events: FloatArray
    """Rows of (time s, stage index, Δreplicas, Δcores, ΔGPUs)."""
    reconfigurations: int
    applied_at_s: tuple[float, ...]
    tokens: TokenRecords | None = None
    """TTFT and inter-token gaps per request, when the pipeline generates tokens."""

    @property
    def latency_ms(self) -> FloatArray:
        return (self.finish_s - self.arrival_s) * 1000.0

    def met_slo(self) -> npt.NDArray[np.bool_]:
        """Completed within the end-to-end SLO and, for token generation, within the TTFT and ITL SLOs."""
        lat = self.latency_ms
        met = (self.status == COMPLETED) & (lat <= self.slo_ms + 1e-9)
        if self.tokens is not None:
            met &= ~self.tokens.late
        return np.asarray(met, dtype=np.bool_)


@dataclass(frozen=True)
class Summary:
    requests: int
    completed: int
    dropped: int
    timed_out: int
    slo_attainment: float
    p50_latency_ms: float
    p99_latency_ms: float
    mean_latency_ms: float
    accuracy: float
    heavy_share: float
    core_seconds: float
    gpu_seconds: float
    mean_cores: float
    mean_gpus: float
    reconfigurations: int
    seconds_over_slo: float
    """Share of seconds whose p99 latency (timeouts and drops count as infinite) exceeds the SLO (InfAdapter)."""
    tokens: TokenSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items() if k != "tokens"}
        if self.tokens is not None:
            out["tokens"] = {k: round(v, 6) for k, v in asdict(self.tokens).items()}
        return out


@dataclass(frozen=True)
class TokenSummary:
    """TTFT and TPOT (mean inter-token gap) of the completed requests, in ms, and the share within their SLOs."""

    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    tpot_p99_ms: float
    itl_max_p99_ms: float
    """p99 over requests of each one's longest gap between two tokens (newcomers' prefills stall a batch)."""
    token_slo_attainment: float
    """Share of all requests completed within the TTFT and ITL SLOs (ignoring the end-to-end one)."""


def summarize_tokens(result: SimResult) -> TokenSummary | None:
    records = result.tokens
    if records is None:
        return None
    done = result.status == COMPLETED

    def pct(values: FloatArray, q: float) -> float:
        kept = values[done & np.isfinite(values)] * 1000.0
        return float(np.percentile(kept, q)) if len(kept) else float("nan")

    n = len(result.status)
    return TokenSummary(pct(records.ttft_s, 50), pct(records.ttft_s, 99), pct(records.tpot_s, 50),
                        pct(records.tpot_s, 99), pct(records.itl_max_s, 99),
                        float((done & ~records.late).mean()) if n else 1.0)


def integrate(events: FloatArray, column: int, duration_s: float) -> float:
    """∫₀^D of the step function whose jumps are `events[:, column]` at `events[:, 0]`."""
    if len(events) == 0 or duration_s <= 0:
        return 0.0
    t = np.clip(events[:, 0], 0.0, duration_s)
    return float(np.sum(events[:, column] * (duration_s - t)))


def step_series(events: FloatArray, column: int, times: FloatArray, stage: int | None = None) -> FloatArray:
    """Value of the step function at each of `times` (optionally for one stage's events)."""
    rows = events if stage is None else events[events[:, 1] == stage]
    if len(rows) == 0:
        return np.zeros(len(times))
    order = np.argsort(rows[:, 0], kind="stable")
    t, cum = rows[order, 0], np.cumsum(rows[order, column])
    idx = np.searchsorted(t, times, side="right") - 1
    return np.where(idx >= 0, cum[np.maximum(idx, 0)], 0.0)


def per_second_p99_over(result: SimResult) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """For every second with arrivals: its index and whether its p99 of latency − SLO is positive."""
    if len(result.arrival_s) == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    slack = np.where(result.status == COMPLETED, result.latency_ms - result.slo_ms, np.inf)
    sec = np.floor(result.arrival_s)
    order = np.lexsort((slack, sec))
    sec_sorted, slack_sorted = sec[order], slack[order]
    seconds, starts, counts = np.unique(sec_sorted, return_index=True, return_counts=True)
    pick = starts + np.ceil(0.99 * counts).astype(np.int64) - 1
    return seconds, np.asarray(slack_sorted[pick] > 1e-9, dtype=np.bool_)


def summarize(result: SimResult) -> Summary:
    n = len(result.status)
    done = result.status == COMPLETED
    lat = result.latency_ms[done]
    duration = result.duration_s
    core_s = integrate(result.resource_events, 3, duration)
    gpu_s = integrate(result.resource_events, 4, duration)
    _, over = per_second_p99_over(result)
    return Summary(
        requests=n,
        completed=int(done.sum()),
        dropped=int((result.status == DROPPED).sum()),
        timed_out=int((result.status == TIMED_OUT).sum()),
        slo_attainment=float(result.met_slo().mean()) if n else 1.0,
        p50_latency_ms=float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        p99_latency_ms=float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        mean_latency_ms=float(lat.mean()) if len(lat) else float("nan"),
        accuracy=float(np.mean(result.accuracy[done])) if done.any() else float("nan"),
        heavy_share=float(result.heavy[done].mean()) if done.any() else 0.0,
        core_seconds=core_s,
        gpu_seconds=gpu_s,
        mean_cores=core_s / duration if duration > 0 else 0.0,
        mean_gpus=gpu_s / duration if duration > 0 else 0.0,
        reconfigurations=result.reconfigurations,
        seconds_over_slo=float(over.mean()) if len(over) else 0.0,
        tokens=summarize_tokens(result),
    )


def _p99_per_bin(result: SimResult, sec: npt.NDArray[np.int64], bins: int) -> FloatArray:
    """p99 latency of each bin's requests by arrival; a dropped or timed-out request counts as infinitely late
    (NaN for a bin without requests)."""
    latency = np.where(result.status == COMPLETED, result.latency_ms, np.inf)
    out = np.full(bins, np.nan)
    if len(sec) == 0:
        return out
    order = np.lexsort((latency, sec))
    sorted_sec, sorted_lat = sec[order], latency[order]
    seconds, starts, counts = np.unique(sorted_sec, return_index=True, return_counts=True)
    out[seconds] = sorted_lat[starts + np.ceil(0.99 * counts).astype(np.int64) - 1]
    return out


def timeline(result: SimResult, step_s: float = 1.0) -> dict[str, FloatArray]:
    """Per-step series for plots: arrivals, cores, GPUs, SLO attainment, p99 latency and replicas per stage."""
    bins = max(1, int(np.ceil(result.duration_s / step_s)))
    times = np.arange(bins, dtype=np.float64) * step_s
    sec = np.clip((result.arrival_s // step_s).astype(np.int64), 0, bins - 1)
    arrivals = np.bincount(sec, minlength=bins).astype(np.float64)
    met = np.bincount(sec, weights=result.met_slo().astype(np.float64), minlength=bins)
    out: dict[str, FloatArray] = {
        "time_s": times,
        "load_rps": arrivals / step_s,
        "cores": step_series(result.resource_events, 3, times),
        "gpus": step_series(result.resource_events, 4, times),
        "slo_attainment": np.divide(met, arrivals, out=np.ones(bins), where=arrivals > 0),
        "p99_latency_ms": _p99_per_bin(result, sec, bins),
    }
    for i, name in enumerate(result.stage_names):
        out[f"replicas:{name}"] = step_series(result.resource_events, 2, times, stage=i)
    return out
