"""Controllers: every way of producing plans at each tick, behind one interface, plus the run driver.

Every controller is the one `control.ControlLoop` (observe → predict → plan → decide → actuate) with the
`Simulator` as both metrics source and actuator; only the policy differs. ParetoServe and most baselines
are `control.ParetoPolicy` on a differently constrained manifest (`baselines.pin_variants`, `pin_replicas`,
`fix_threshold`, …) or with a `Baseline` pin; the static baselines are that policy fed the trace's peak
once; HPA and VPA are `autoscalers.AutoscalerPolicy` with their rule; HADIS is `selection.SelectingPolicy`.
`simulate` ticks a controller at its adaptation interval and lets the simulator advance in between.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol, TypeVar

from paretoserve.planner.autoscalers import (
    AutoscalerPolicy,
    HpaSettings,
    HpaState,
    VpaSettings,
    VpaState,
    hpa_decide,
    vpa_decide,
)
from paretoserve.planner.baselines import with_adaptation
from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.control import ControlLoop, MetricsSource, Observed, check_interval, pareto_loop
from paretoserve.planner.model import Baseline, SolveLimits
from paretoserve.planner.policy import PolicyState
from paretoserve.planner.predict import Forecaster
from paretoserve.planner.selection import SelectingPolicy
from paretoserve.planner.sim.engine import SimConfig, Simulator
from paretoserve.planner.sim.records import SimResult
from paretoserve.planner.sim.workload import Workload
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import ServingPipeline

S = TypeVar("S")


class Ticker(Protocol):
    def tick(self, now: float) -> object: ...


@dataclass
class Controller:
    name: str
    ticker: Ticker
    interval_s: float
    """Seconds between ticks; `math.inf` ticks once (a static plan)."""
    first_tick_s: float = 0.0


ControllerFactory = Callable[[Simulator], Controller]


@dataclass
class PinnedLoad:
    """A metrics source that reports a fixed load: the static baselines plan once for the trace's peak."""

    source: MetricsSource
    load_rps: float

    def observe(self, now: float) -> Observed:
        return replace(self.source.observe(now), load_history=(self.load_rps,))


@dataclass
class CappedLoad:
    """Reports load history clipped so that the prediction (with headroom) never exceeds `cap_rps`.

    Above the most its feasible set can carry, a program is infeasible and the loop keeps its last plan,
    which may be far smaller; a real deployment would run at capacity and shed the excess. Clipping the
    observation makes every controller plan for min(predicted load, its capacity) instead.
    """

    source: MetricsSource
    cap_rps: float
    headroom: float

    def observe(self, now: float) -> Observed:
        observed = self.source.observe(now)
        limit = self.cap_rps / (1.0 + self.headroom)
        return replace(observed, load_history=tuple(min(x, limit) for x in observed.load_history))


def capacity_limit(pipelines: Sequence[ServingPipeline], upper: float, *, baseline: Baseline = Baseline.NONE,
                   iterations: int = 14) -> float:
    """The highest load (within [0, upper]) at which some pipeline still has a feasible plan (bisection)."""

    def feasible(load: float) -> bool:
        return any(solve(compile_problem(p, Observation(load_rps=load), baseline=baseline)).status.has_plan
                   for p in pipelines)

    if feasible(upper):
        return upper
    lo, hi = 0.0, upper
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if feasible(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _source(sim: Simulator, pipeline: ServingPipeline, cap_rps: float | None) -> MetricsSource:
    if cap_rps is None:
        return sim
    return CappedLoad(sim, cap_rps, pipeline.spec.adaptation.predictor.headroom)


def loop(name: str, pipeline: ServingPipeline, *, baseline: Baseline = Baseline.NONE, lstm: Forecaster | None = None,
         limits: SolveLimits | None = None, cap_rps: float | None = None) -> ControllerFactory:
    """ParetoServe (and every pinned baseline): the control loop at the manifest's adaptation interval."""

    def make(sim: Simulator) -> Controller:
        source = _source(sim, pipeline, cap_rps)
        ticker = pareto_loop(pipeline, source, sim, baseline=baseline, lstm=lstm, limits=limits,
                             resize_in_place=sim.config.resize == "in-place")
        return Controller(name, ticker, check_interval(pipeline))

    return make


def static(name: str, pipeline: ServingPipeline, peak_rps: float, *, baseline: Baseline = Baseline.NONE,
           limits: SolveLimits | None = None, cap_rps: float | None = None) -> ControllerFactory:
    """Planned once, at t = 0, for `peak_rps` (or the capacity if lower); never changed."""
    fixed = with_adaptation(pipeline, predictor={"kind": "lastValue", "windowSeconds": 1, "headroom": 0.0})
    load = peak_rps if cap_rps is None else min(peak_rps, cap_rps)

    def make(sim: Simulator) -> Controller:
        ticker = pareto_loop(fixed, PinnedLoad(sim, load), sim, baseline=baseline, limits=limits)
        return Controller(name, ticker, math.inf)

    return make


def _autoscaler(name: str, policy: AutoscalerPolicy[S], state: S, interval_s: float) -> ControllerFactory:
    def make(sim: Simulator) -> Controller:
        return Controller(name, ControlLoop(policy, sim, sim, state), interval_s)

    return make


def hpa(name: str, pipeline: ServingPipeline, settings: HpaSettings | None = None,
        interval_s: float = 15.0) -> ControllerFactory:
    """Kubernetes HPA on each stage's (most accurate or given) variant, synced every `interval_s`."""
    chosen = settings or HpaSettings()
    policy = AutoscalerPolicy(pipeline, partial(hpa_decide, settings=chosen), metric_window_s=chosen.metric_window_s)
    return _autoscaler(name, policy, HpaState(), interval_s)


def vpa(name: str, pipeline: ServingPipeline, settings: VpaSettings | None = None,
        interval_s: float = 60.0) -> ControllerFactory:
    """A VPA-like vertical scaler of one variant (compiled at unit load: multipliers only), every `interval_s`."""
    policy = AutoscalerPolicy(pipeline, partial(vpa_decide, settings=settings or VpaSettings()), unit_load=True)
    return _autoscaler(name, policy, VpaState(), interval_s)


def selecting(name: str, pipelines: Sequence[ServingPipeline], *, lstm: Forecaster | None = None,
              limits: SolveLimits | None = None, cap_rps: float | None = None) -> ControllerFactory:
    """HADIS-style: the best of several manifests (model pairs) at every tick."""

    def make(sim: Simulator) -> Controller:
        policy = SelectingPolicy(pipelines, limits=limits, lstm=lstm)
        ticker = ControlLoop(policy, _source(sim, pipelines[0], cap_rps), sim, PolicyState())
        return Controller(name, ticker, check_interval(pipelines[0]))

    return make


def simulate(sim: Simulator, controller: Controller, progress: Callable[[float], None] | None = None) -> SimResult:
    """Tick the controller at its interval over the workload, then drain the queues."""
    duration = sim.workload.duration_s
    t = controller.first_tick_s
    while t < duration:
        controller.ticker.tick(t)
        if progress is not None:
            progress(min(1.0, t / duration) if duration > 0 else 1.0)
        t += controller.interval_s
    result = sim.finish()
    if progress is not None:
        progress(1.0)
    return result


def run(pipeline: ServingPipeline, workload: Workload, factory: ControllerFactory, config: SimConfig | None = None,
        *, catalog: Sequence[ServingPipeline] = (), progress: Callable[[float], None] | None = None) -> SimResult:
    """Build a simulator for `pipeline` and `workload`, attach the controller, and simulate."""
    sim = Simulator(pipeline, workload, config, catalog=catalog)
    return simulate(sim, factory(sim), progress)
