"""Run every system of an experiment through the simulator and write results.json, a table and plots.

An experiment module only *describes* its comparison — the workloads (scenarios), the systems (a
pipeline, a controller factory and simulator settings each), extra metrics and the papers' claims to
check. This module runs each system on each scenario with the same simulator, pools the scenarios
(requests, latencies and core-seconds add up; the p99 is taken over all requests), and writes:

    DIR/results.json   {"experiment", "systems": {NAME: {slo_attainment, p99_latency_ms, accuracy, cost, ...}}, ...}
    DIR/results.md     the table, the claims checked against the papers, and the notes
    DIR/*.png          load and replicas over time, per-system bars, the accuracy-cost Pareto front
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from paretoserve.planner.sim.controllers import ControllerFactory, run
from paretoserve.planner.sim.engine import SimConfig
from paretoserve.planner.sim.records import SimResult, summarize, timeline
from paretoserve.planner.sim.tokens import concat_records
from paretoserve.planner.sim.workload import Workload
from paretoserve.planner.spec import ServingPipeline

Metrics = dict[str, Any]


@dataclass
class System:
    name: str
    pipeline: ServingPipeline
    """The manifest the simulator models (variants, profiles, SLO); the controller may plan a narrower one."""
    factory: ControllerFactory
    config: SimConfig = field(default_factory=SimConfig)
    catalog: tuple[ServingPipeline, ...] = ()
    note: str = ""


@dataclass
class Scenario:
    name: str
    workload: Workload


@dataclass(frozen=True)
class Claim:
    claim: str
    paper: str
    ours: str
    reproduced: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "paper": self.paper, "ours": self.ours, "reproduced": self.reproduced}


@dataclass
class Setup:
    experiment: str
    title: str
    cost_unit: str
    """'cores' (mean allocated cores) or 'gpus' (mean allocated GPUs)."""
    scenarios: list[Scenario]
    systems: list[System]
    notes: list[str] = field(default_factory=list)
    accuracy_label: str = "accuracy"
    extra: Callable[[System, SimResult], Metrics] | None = None
    claims: Callable[[dict[str, Metrics]], list[Claim]] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    pooled: tuple[str, ...] | None = None
    """Scenarios whose results are pooled into `systems` (default: all); the others are reported apart."""


class Progress:
    """A progress bar on stderr: one line per system, redrawn in place on a terminal."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done, self.enabled = max(total, 1), 0, enabled
        self.tty = sys.stderr.isatty()
        self.label = ""
        self.started = time.monotonic()

    def step(self, label: str) -> Callable[[float], None]:
        self.label = label

        def update(fraction: float) -> None:
            if not self.enabled or not self.tty:
                return
            overall = (self.done + fraction) / self.total
            bar = "#" * int(30 * overall)
            sys.stderr.write(f"\r[{bar:<30}] {overall:6.1%} {self.label[:50]:<50}")
            sys.stderr.flush()

        return update

    def finish_step(self) -> None:
        self.done += 1
        if self.enabled and not self.tty:
            elapsed = time.monotonic() - self.started
            sys.stderr.write(f"[{self.done}/{self.total}] {self.label} ({elapsed:.0f} s)\n")
        if self.enabled and self.tty and self.done == self.total:
            sys.stderr.write("\n")


def times_fewer(ours: float, theirs: float) -> str:
    """'3.2x fewer', or what to say when a ratio is undefined."""
    if ours <= 0 and theirs <= 0:
        return "none on either"
    if ours <= 0:
        return "none vs some"
    return f"{theirs / ours:.1f}x fewer"


def concat(results: Sequence[SimResult]) -> SimResult:
    """Scenarios back to back: arrivals and resource events shifted by the earlier scenarios' durations."""
    if len(results) == 1:
        return results[0]
    offsets = np.cumsum([0.0] + [r.duration_s for r in results[:-1]])
    events = [_closed(r) + np.array([off, 0, 0, 0, 0]) for r, off in zip(results, offsets, strict=True)]
    return SimResult(
        arrival_s=np.concatenate([r.arrival_s + off for r, off in zip(results, offsets, strict=True)]),
        finish_s=np.concatenate([r.finish_s + off for r, off in zip(results, offsets, strict=True)]),
        status=np.concatenate([r.status for r in results]),
        slo_ms=np.concatenate([r.slo_ms for r in results]),
        accuracy=np.concatenate([r.accuracy for r in results]),
        stage_accuracy=np.concatenate([r.stage_accuracy for r in results], axis=1),
        heavy=np.concatenate([r.heavy for r in results]),
        duration_s=float(sum(r.duration_s for r in results)),
        stage_names=results[0].stage_names,
        resource_events=np.concatenate(events) if events else np.zeros((0, 5)),
        reconfigurations=sum(r.reconfigurations for r in results),
        applied_at_s=tuple(t + off for r, off in zip(results, offsets, strict=True) for t in r.applied_at_s),
        tokens=concat_records([r.tokens for r in results if r.tokens is not None]) if results[0].tokens else None,
    )


def _closed(result: SimResult) -> npt.NDArray[np.float64]:
    """A scenario's resource events within its window, plus one that releases everything at its end."""
    events = result.resource_events[result.resource_events[:, 0] < result.duration_s]
    release = np.zeros((1, 5))
    release[0, 0] = result.duration_s
    release[0, 2:] = -events[:, 2:].sum(axis=0)
    return np.vstack([events, release])


def metrics(setup: Setup, system: System, result: SimResult) -> Metrics:
    s = summarize(result)
    cost = s.mean_cores if setup.cost_unit == "cores" else s.mean_gpus
    out: Metrics = {
        "slo_attainment": round(s.slo_attainment, 6),
        "p99_latency_ms": round(s.p99_latency_ms, 3),
        "p50_latency_ms": round(s.p50_latency_ms, 3),
        "accuracy": round(s.accuracy, 6),
        "cost": round(cost, 4),
        "cost_unit": setup.cost_unit,
        "core_seconds": round(s.core_seconds, 2),
        "gpu_seconds": round(s.gpu_seconds, 2),
        "reconfigurations": s.reconfigurations,
        "requests": s.requests,
        "completed": s.completed,
        "dropped": s.dropped,
        "timed_out": s.timed_out,
        "seconds_over_slo": round(s.seconds_over_slo, 6),
        "heavy_share": round(s.heavy_share, 6),
    }
    if s.tokens is not None:
        out.update(ttft_p99_ms=round(s.tokens.ttft_p99_ms, 3), tpot_p99_ms=round(s.tokens.tpot_p99_ms, 3),
                   token_slo_attainment=round(s.tokens.token_slo_attainment, 6))
    if setup.extra is not None:
        out.update(setup.extra(system, result))
    notes = [system.note] if system.note else []
    if not result.applied_at_s:
        notes.append("the controller never produced a feasible plan, so nothing was deployed and every request "
                     "was dropped")
    if notes:
        out["note"] = "; ".join(notes)
    return out


def run_setup(setup: Setup, *, show_progress: bool = True) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Every system on every scenario; returns (results document, timelines by system for the plots)."""
    bar = Progress(len(setup.systems) * len(setup.scenarios), show_progress)
    systems: dict[str, Metrics] = {}
    per_scenario: dict[str, dict[str, Metrics]] = {sc.name: {} for sc in setup.scenarios}
    timelines: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for system in setup.systems:
        results = []
        for scenario in setup.scenarios:
            update = bar.step(f"{system.name} on {scenario.name}")
            result = run(system.pipeline, scenario.workload, system.factory, system.config,
                         catalog=system.catalog, progress=update)
            bar.finish_step()
            results.append(result)
            per_scenario[scenario.name][system.name] = metrics(setup, system, result)
            if scenario is setup.scenarios[0]:
                timelines[system.name] = timeline(result)
        pooled = [r for r, sc in zip(results, setup.scenarios, strict=True)
                  if setup.pooled is None or sc.name in setup.pooled]
        systems[system.name] = metrics(setup, system, concat(pooled))
    doc: dict[str, Any] = {
        "experiment": setup.experiment,
        "title": setup.title,
        "cost_unit": setup.cost_unit,
        "accuracy_label": setup.accuracy_label,
        "systems": systems,
        "scenarios": per_scenario if len(setup.scenarios) > 1 else {},
        "claims": [c.to_dict() for c in judged_claims(setup, systems)],
        "notes": setup.notes + ([f"`systems` pools the scenarios {', '.join(setup.pooled)} only."]
                                if setup.pooled is not None and len(setup.scenarios) > 1 else []),
        "config": setup.config,
        "wall_s": round(time.monotonic() - started, 1),
    }
    return doc, timelines


def judged_claims(setup: Setup, systems: dict[str, Metrics]) -> list[Claim]:
    """The experiment's claims, each held to ParetoServe's SLO too, plus the frontier claims (`frontier`)."""
    from paretoserve.research.experiments.frontier import frontier_claims, with_slo

    own = setup.claims(systems) if setup.claims else []
    return with_slo(own, systems) + frontier_claims(systems)


def write_outputs(doc: dict[str, Any], timelines: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    from paretoserve.research.experiments.plots import plot_all
    from paretoserve.research.experiments.tables import results_markdown

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(clean(doc), indent=2, allow_nan=False) + "\n")
    (out / "results.md").write_text(results_markdown(doc))
    return [out / "results.json", out / "results.md", *plot_all(doc, timelines, out)]


def clean(value: Any) -> Any:
    """JSON-safe: numpy scalars become Python numbers, NaN and infinities become null."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
