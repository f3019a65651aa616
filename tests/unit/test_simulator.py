"""The discrete-event simulator: conservation, queueing theory, batching, determinism, cascades, rollouts,
and the controller contract (every controller yields valid plans on a small pipeline)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from paretoserve.planner import baselines
from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.control import ControlLoop, Observed
from paretoserve.planner.evaluate import check_plan
from paretoserve.planner.model import Baseline, Plan
from paretoserve.planner.policy import PolicyState
from paretoserve.planner.selection import SelectingPolicy
from paretoserve.planner.sim import COMPLETED, DROPPED, TIMED_OUT, SimConfig, Simulator, Workload, summarize
from paretoserve.planner.sim import controllers as ctl
from paretoserve.planner.sim.pools import fifo_dispatch
from paretoserve.planner.sim.workload import (
    ConfidenceCalibration,
    arrivals_from_counts,
    counts_per_second,
    dynamic_slos,
)
from paretoserve.planner.spec import ServingPipeline, load_pipeline_text, parse_pipeline

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"


def variant(name: str, accuracy: float, latency_ms: dict[int, float], **extra: Any) -> dict[str, Any]:
    points = [{"batch": b, "latencyMs": ms} for b, ms in latency_ms.items()]
    return {"name": name, "tritonModel": name, "accuracy": accuracy, "profile": {"points": points}, **extra}


def stage(name: str, variants: list[dict[str, Any]], deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    batches = sorted({p["batch"] for v in variants for p in v["profile"]["points"]})
    return {"name": name, "dependsOn": list(deps), "batchSizes": batches, "variants": variants, **extra}


def pipeline(stages: list[dict[str, Any]], slo_ms: float = 1000.0, **spec: Any) -> ServingPipeline:
    return parse_pipeline({"apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline",
                           "metadata": {"name": "t"}, "spec": {"slo": {"latencyMs": slo_ms}, "stages": stages, **spec}})


def single(latency_ms: float = 10.0, batch: int = 1, delay_ms: float = 0.0, replicas: int = 1) -> ServingPipeline:
    return pipeline([stage("s", [variant("v", 0.5, {batch: latency_ms})], maxQueueDelayMs=delay_ms,
                           bounds={"minReplicas": replicas, "maxReplicas": replicas})])


def poisson(rate: float, n: int, seed: int = 3) -> Workload:
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))
    return Workload(arrivals, float(math.ceil(arrivals[-1])) + 1.0)


def example(name: str) -> ServingPipeline:
    return load_pipeline_text((EXAMPLES / f"{name}.yaml").read_text())


# -- queueing -----------------------------------------------------------------------------------------


def test_single_server_deterministic_service_matches_md1_mean_wait() -> None:
    rate, service = 70.0, 0.010  # rho = 0.7
    p = single(latency_ms=service * 1000)
    result = ctl.run(p, poisson(rate, 200_000), ctl.static("s", p, rate))
    wait = (result.finish_s - result.arrival_s - service).mean()
    rho = rate * service
    assert wait == pytest.approx(rho * service / (2 * (1 - rho)), rel=0.03)


def test_idle_system_serves_at_the_profiled_latency_and_counts_cost() -> None:
    p = single(latency_ms=40.0, replicas=2)
    workload = Workload(np.array([0.5, 3.5]), 10.0)
    result = ctl.run(p, workload, ctl.static("s", p, 1.0))
    assert np.allclose(result.latency_ms, 40.0)
    summary = summarize(result)
    assert summary.core_seconds == pytest.approx(2 * 1.0 * 10.0)  # 2 replicas × 1 core × 10 s
    assert summary.slo_attainment == 1.0 and summary.reconfigurations == 0


# -- conservation and the DAG -------------------------------------------------------------------------


def diamond() -> ServingPipeline:
    return pipeline([
        stage("a", [variant("a1", 0.9, {1: 10.0})], bounds={"minReplicas": 1, "maxReplicas": 1}),
        stage("b", [variant("b1", 0.8, {1: 30.0})], deps=("a",), bounds={"minReplicas": 1, "maxReplicas": 1}),
        stage("c", [variant("c1", 0.7, {1: 5.0})], deps=("a",), bounds={"minReplicas": 1, "maxReplicas": 1}),
        stage("d", [variant("d1", 0.6, {1: 7.0})], deps=("b", "c"), bounds={"minReplicas": 1, "maxReplicas": 1}),
    ])


def test_every_request_ends_exactly_once_and_fan_in_waits_for_all_parents() -> None:
    p = diamond()
    counts = np.r_[np.full(10, 20.0), np.full(10, 60.0), np.full(20, 5.0)]  # b saturates at 33 rps
    workload = Workload(arrivals_from_counts(counts, np.random.default_rng(1)), 40.0)
    sim = Simulator(p, workload, SimConfig(timeout_s=0.5))
    controller = ctl.loop("ps", p)(sim)
    controller.first_tick_s = 2.0  # nothing runs for 2 s: those requests are dropped
    result = ctl.simulate(sim, controller)
    status = result.status
    assert set(np.unique(status)) == {COMPLETED, DROPPED, TIMED_OUT}
    n = len(status)
    assert (status == COMPLETED).sum() + (status == DROPPED).sum() + (status == TIMED_OUT).sum() == n
    assert np.all(status[result.arrival_s < 2.0] == DROPPED)
    done = status == COMPLETED
    assert np.all(np.isnan(result.finish_s[~done]))
    # a request leaves only after a, the slower of b and c, then d: at least 10 + 30 + 7 ms
    assert np.all(result.latency_ms[done] >= 47.0 - 1e-6)
    assert result.accuracy[done] == pytest.approx(np.full(done.sum(), 0.9 * 0.8 * 0.7 * 0.6))


# -- batching -----------------------------------------------------------------------------------------


def test_dynamic_batching_never_exceeds_the_max_batch_and_waits_at_most_the_queue_delay() -> None:
    rng = np.random.default_rng(5)
    times = np.sort(rng.uniform(0, 20, 4000)).tolist()
    servers = [0.0, 0.0]
    batch, delay = 4, 0.02
    svc = [0.0, 0.012, 0.016, 0.020, 0.024]
    sizes: list[int] = []
    starts: list[float] = []
    dones: list[float] = []
    head = fifo_dispatch(times, 0, servers, math.inf, batch, delay, svc, math.inf, None, sizes, starts, dones)
    assert head == len(times) and sum(sizes) == len(times)
    assert max(sizes) == batch and min(sizes) >= 1
    first = np.cumsum([0] + sizes[:-1])
    for k, start, i in zip(sizes, starts, first, strict=True):
        assert start >= times[i + k - 1] - 1e-12  # never starts before its last request arrived
        if k < batch:  # a partial batch waited for the delay (or for a busy server)
            assert start >= times[i] + delay - 1e-12
    assert np.allclose(np.array(dones) - np.array(starts), [svc[k] for k in sizes])


def test_full_batches_form_under_load_and_throughput_matches_capacity() -> None:
    p = single(latency_ms=80.0, batch=8, delay_ms=50.0)  # 100 req/s at full batches
    result = ctl.run(p, poisson(90.0, 20_000), ctl.static("s", p, 90.0))
    summary = summarize(result)
    assert summary.completed == summary.requests
    assert summary.p99_latency_ms < 2000.0  # stable: the queue does not grow without bound


# -- determinism --------------------------------------------------------------------------------------


def split_pipeline() -> ServingPipeline:
    v1 = variant("small", 0.6, {1: 20.0})
    v2 = variant("large", 0.8, {1: 50.0})
    return pipeline([stage("s", [v1, v2], multiVariant=True, bounds={"minReplicas": 1, "maxReplicas": 10})],
                    objective={"accuracy": 1.0, "cost": 0.01, "accuracyAggregation": "sum"},
                    budget={"cpu": 3})  # 3 large replicas carry 60 rps: 90 rps needs a split


def test_runs_are_deterministic_given_a_seed() -> None:
    p = split_pipeline()
    counts = np.r_[np.full(30, 40.0), np.full(30, 90.0)]

    def once(seed: int) -> Any:
        workload = Workload(arrivals_from_counts(counts, np.random.default_rng(seed)), 60.0)
        return ctl.run(p, workload, ctl.loop("ps", p), SimConfig(seed=seed, noise_cv=0.2))

    a, b, c = once(1), once(1), once(2)
    for field in ("arrival_s", "finish_s", "status", "accuracy"):
        assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True)
    assert np.array_equal(a.resource_events, b.resource_events)
    assert not np.array_equal(a.finish_s, c.finish_s, equal_nan=True)
    assert len(np.unique(a.accuracy)) == 2  # traffic really is split between the two variants


# -- cascades -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "deferred"), [(0.05, 0.36), (0.25, 0.69)])
def test_cascade_defers_the_share_f_of_the_threshold(threshold: float, deferred: float) -> None:
    p = baselines.fix_threshold(example("diffserve-cascade"), threshold)
    rng = np.random.default_rng(11)
    arrivals = arrivals_from_counts(np.full(600, 3.0), rng)
    confidence = rng.beta(5.0, 1.0, len(arrivals))  # skewed: the cut must be calibrated, not t itself
    workload = Workload(arrivals, 600.0, confidence=confidence)
    result = ctl.run(p, workload, ctl.static("cascade", p, 3.0))
    assert summarize(result).completed == len(arrivals)
    assert result.heavy.mean() == pytest.approx(deferred, abs=0.03)
    (row,) = compile_problem(p, Observation(load_rps=3.0)).stages[0].cascade.rows  # type: ignore[union-attr]
    assert row.heavy_fraction == deferred and np.allclose(result.accuracy, row.quality)


def test_calibration_cut_hits_the_share_exactly_on_the_reference() -> None:
    scores = np.random.default_rng(2).normal(size=1000)
    cal = ConfidenceCalibration.of(scores)
    for f in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert (scores < cal.cut(f)).mean() == pytest.approx(f, abs=1e-3)


# -- rollouts: cold starts, recreate, in place --------------------------------------------------------


def two_variants(load_time: float) -> ServingPipeline:
    return pipeline([stage("s", [variant("old", 0.5, {1: 10.0}, loadTimeSeconds=load_time),
                                  variant("new", 0.9, {1: 10.0}, loadTimeSeconds=load_time)])])


def plan_for(p: ServingPipeline, variant_name: str, load: float = 10.0) -> Plan:
    from paretoserve.planner.solve import solve

    pinned = baselines.pin_variants(p, {"s": [variant_name]})
    return solve(compile_problem(pinned, Observation(load_rps=load)))


def test_a_variant_switch_routes_to_the_new_pool_only_once_it_has_loaded() -> None:
    p = two_variants(load_time=5.0)
    workload = Workload(arrivals_from_counts(np.full(30, 10.0)), 30.0)
    sim = Simulator(p, workload)
    sim.apply(plan_for(p, "old"), now=0.0)  # warm start: ready at once
    sim.advance_to(10.0)
    sim.apply(plan_for(p, "new"), now=10.0)
    result = sim.finish()
    arrival, acc = result.arrival_s, result.stage_accuracy[0]
    assert np.all(acc[arrival < 15.0] == 0.5) and np.all(acc[arrival >= 15.0] == 0.9)
    assert summarize(result).slo_attainment == 1.0
    assert result.reconfigurations == 1
    # both pools are paid for while the new one loads: 1 core for 30 s plus 1 more from 10 s to 15 s
    assert summarize(result).core_seconds == pytest.approx(35.0, abs=0.2)


def test_a_kept_pool_gives_up_replicas_only_once_the_new_split_starts() -> None:
    p = two_variants(load_time=5.0)
    workload = Workload(arrivals_from_counts(np.full(30, 250.0)), 30.0)
    sim = Simulator(p, workload, SimConfig(timeout_s=1.0))
    before = plan_for(p, "old", load=250.0)
    (kept,) = before.stages[0].allocations
    assert kept.replicas == 3  # 100 rps per replica
    after = replace(before, stages=(replace(before.stages[0], allocations=(
        replace(kept, replicas=1, load_rps=100.0), replace(kept, variant="new", replicas=2, load_rps=150.0))),))
    sim.apply(before, now=0.0)
    sim.advance_to(10.0)
    sim.apply(after, now=10.0)
    result = sim.finish()
    assert summarize(result).slo_attainment == 1.0  # the old split keeps its three replicas while 'new' loads
    shrink = result.resource_events[result.resource_events[:, 2] < 0]
    assert shrink[:, 0].tolist() == [15.0] and shrink[:, 2].tolist() == [-2.0]


def resizable() -> ServingPipeline:
    sponge = {"gamma": 0.0, "delta": 0.0, "epsilon": 100.0, "eta": 0.0, "cpus": [1.0, 2.0]}
    v = {"name": "v", "tritonModel": "v", "accuracy": 0.5, "loadTimeSeconds": 4.0, "profile": {"sponge": sponge}}
    return pipeline([{"name": "s", "batchSizes": [1], "variants": [v]}])


def sized(p: ServingPipeline, cpu: float) -> Plan:
    from paretoserve.planner.solve import solve

    return solve(compile_problem(baselines.pin_cpu(p, {"s": cpu}), Observation(load_rps=1.0)))


@pytest.mark.parametrize(("mode", "expected"), [
    ("in-place", {5.5: 100.0, 11.5: 50.0}),  # 100 ms at 1 core; 50 ms at 2 cores once resized (1 s)
    ("recreate", {5.5: 100.0, 11.5: 2500.0 + 50.0}),  # restarting (4 s load): nothing serves until 14 s
])
def test_resizing_cores_in_place_or_by_restarting(mode: str, expected: dict[float, float]) -> None:
    p = resizable()
    arrivals = np.array(sorted(expected))
    sim = Simulator(p, Workload(arrivals, 30.0), SimConfig(resize=mode, resize_delay_s=1.0))
    sim.apply(sized(p, 1.0), now=0.0)
    sim.advance_to(10.0)
    sim.apply(sized(p, 2.0), now=10.0)
    result = sim.finish()
    assert result.latency_ms == pytest.approx([expected[a] for a in arrivals])


def resizable_pair() -> ServingPipeline:
    sponge = {"gamma": 0.0, "delta": 0.0, "epsilon": 100.0, "eta": 0.0, "cpus": [1.0, 2.0]}
    return pipeline([{"name": "s", "batchSizes": [1], "variants": [
        {"name": name, "tritonModel": name, "accuracy": accuracy, "loadTimeSeconds": 6.0, "profile": {"sponge": sponge}}
        for name, accuracy in (("old", 0.5), ("new", 0.9))]}])


@pytest.mark.parametrize(("starts_new", "lowered_at"), [(True, 16.0), (False, 11.0)])
def test_an_in_place_resize_down_waits_for_the_new_pools_of_its_plan(starts_new: bool, lowered_at: float) -> None:
    """Make before break: lowering a running pool's cores while the plan's new pool still loads (6 s) would
    leave neither carrying the load; a plain release lands after the resize delay (1 s)."""
    p = resizable_pair()
    sim = Simulator(p, Workload(np.array([1.0]), 30.0), SimConfig(resize="in-place", resize_delay_s=1.0))
    from paretoserve.planner.solve import solve

    before = solve(compile_problem(baselines.pin_cpu(baselines.pin_variants(p, {"s": ["old"]}), {"s": 2.0}),
                                   Observation(load_rps=1.0)))
    (kept,) = before.stages[0].allocations
    assert kept.cpu == 2.0
    allocations = (replace(kept, cpu=1.0),) + ((replace(kept, variant="new"),) if starts_new else ())
    after = replace(before, stages=(replace(before.stages[0], allocations=allocations),))
    sim.apply(before, now=0.0)
    sim.advance_to(10.0)
    sim.apply(after, now=10.0)
    events = sim.finish().resource_events
    lowered = events[(events[:, 2] == 0) & (events[:, 3] < 0)]
    assert lowered[:, 0].tolist() == [lowered_at] and lowered[:, 3].tolist() == [-1.0]


# -- late requests -----------------------------------------------------------------------------------


def test_a_pool_that_refuses_late_requests_serves_the_rest_of_an_overload_on_time() -> None:
    """100 ms per request, 250 ms SLO: with ``lateRequests: refuse`` the pool refuses a request once it has
    waited 150 ms. Two seconds at twice its capacity, then a calm stretch: serving everyone, request i of the
    overload ends at 0.1·(i + 1) s, 0.1 + 0.05·i s after it came (on time for i <= 3), and the backlog, gone only
    at 4 s, makes 14 of the 20 calm requests late too; refusing, every request it serves is on time, the calm
    stretch entirely."""
    overload = np.arange(0.0, 2.0, 0.05)
    calm = np.arange(2.5, 6.5, 0.2)
    workload = Workload(np.concatenate([overload, calm]), 8.0)
    results = {}
    for late in ("serve", "refuse"):
        p = pipeline([stage("s", [variant("v", 0.5, {1: 100.0})], bounds={"minReplicas": 1, "maxReplicas": 1})],
                     slo_ms=250.0)
        p = baselines.with_slo(p, lateRequests=late)
        results[late] = ctl.run(p, workload, ctl.static("s", p, 10.0))
    serve, refuse = results["serve"], results["refuse"]
    assert (serve.status == COMPLETED).all()
    assert serve.met_slo()[:len(overload)].sum() == 4 and serve.met_slo()[len(overload):].sum() == 6
    refused = refuse.status == TIMED_OUT
    assert 0 < refused.sum() < len(overload)
    assert refuse.met_slo()[~refused].all()  # served ones are on time
    assert refuse.met_slo()[len(overload):].all()
    assert refuse.met_slo().sum() > len(overload) > serve.met_slo().sum()


@pytest.mark.parametrize(("slo_ms", "second_waits_ms"), [
    (1000.0, 900.0),  # 100 ms -> 50 ms per request: 900 -> 950 ms of waiting is within 10 %, the loaded 900 stays
    (200.0, 150.0),  # 100 -> 150 ms of waiting is not: the pool's Triton reloads with the new timeout
])
def test_a_resize_in_place_keeps_a_queue_timeout_within_the_tolerance(slo_ms: float, second_waits_ms: float) -> None:
    """A resize in place moves the pool's latency and so its timeout; the sidecar keeps the loaded timeout (a
    change reloads the model) while within 10 % of the new one, and the simulator does the same."""
    p = baselines.with_slo(resizable(), latencyMs=slo_ms, lateRequests="refuse")
    sim = Simulator(p, Workload(np.array([1.0]), 30.0), SimConfig(resize="in-place", resize_delay_s=1.0))
    sim.apply(sized(p, 1.0), now=0.0)
    sim.advance_to(5.0)
    (pool,) = sim.states[0].pools.values()
    assert pool.config.queue_timeout_s == pytest.approx((slo_ms - 100.0) / 1000.0)
    sim.apply(sized(p, 2.0), now=5.0)
    sim.advance_to(10.0)
    assert pool.config.queue_timeout_s == pytest.approx(second_waits_ms / 1000.0)


# -- dynamic SLOs and EDF -----------------------------------------------------------------------------


def test_edf_serves_tight_deadlines_first() -> None:
    p = single(latency_ms=10.0)
    arrivals = np.linspace(0.0, 0.01, 20)
    slos = np.where(np.arange(20) % 2 == 0, 1000.0, 120.0)  # every other request is in a hurry
    workload = Workload(arrivals, 2.0, slo_ms=slos)
    fifo = ctl.run(p, workload, ctl.static("s", p, 20.0))
    edf = ctl.run(p, workload, ctl.static("s", p, 20.0), SimConfig(edf=True))
    tight = slos < 500
    assert edf.met_slo()[tight].sum() > fifo.met_slo()[tight].sum()
    assert edf.met_slo().all()


def test_dynamic_slos_follow_the_bandwidth_log() -> None:
    arrivals = np.array([0.2, 1.5, 2.7])
    slos = dynamic_slos(arrivals, 1000.0, [1000.0, 500.0, 100.0], payload_bytes=50_000.0)
    assert slos == pytest.approx([950.0, 900.0, 500.0])


def test_arrivals_from_counts_keep_every_request_in_its_second() -> None:
    counts = np.array([3.0, 0.0, 5.0, 1.0])
    arrivals = arrivals_from_counts(counts, np.random.default_rng(0))
    assert np.array_equal(counts_per_second(arrivals, 4.0), counts)
    assert np.all(np.diff(arrivals) >= 0)


# -- the controller contract --------------------------------------------------------------------------


class Recording(Simulator):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plans: list[Plan] = []

    def apply(self, plan: Plan, *, now: float) -> None:
        self.plans.append(plan)
        super().apply(plan, now=now)


def contract_pipeline() -> ServingPipeline:
    detector = stage("detector", [variant("small", 0.6, {1: 10.0, 2: 15.0}), variant("large", 0.8, {1: 50.0, 2: 80.0})],
                     bounds={"minReplicas": 1, "maxReplicas": 8})
    classifier = stage("classifier", [variant("r18", 0.7, {1: 20.0}), variant("r50", 0.76, {1: 35.0})],
                       deps=("detector",), bounds={"minReplicas": 1, "maxReplicas": 8})
    return pipeline([detector, classifier], slo_ms=300.0,
                    adaptation={"intervalSeconds": 5, "predictor": {"kind": "movingMax", "windowSeconds": 10}})


def controllers(p: ServingPipeline) -> dict[str, ctl.ControllerFactory]:
    from paretoserve.planner.autoscalers import HpaSettings, VpaSettings

    low = baselines.pin_variants(p, {"detector": ["small"], "classifier": ["r18"]})
    return {
        "paretoserve": ctl.loop("paretoserve", p),
        "fa2": ctl.loop("fa2", low),
        "rim": ctl.loop("rim", baselines.pin_replicas(p, {"detector": 3, "classifier": 2})),
        "ms-plus": ctl.loop("ms-plus", baselines.single_variant(p)),
        "static-max-accuracy": ctl.static("max", p, 40.0, baseline=Baseline.MAX_ACCURACY),
        "static-min-cost": ctl.static("min", p, 40.0, baseline=Baseline.MIN_COST),
        "capped": ctl.loop("capped", low, cap_rps=30.0),
        "hpa": ctl.hpa("hpa", low, HpaSettings(variants={"detector": "small", "classifier": "r18"}), interval_s=5),
        "vpa": ctl.vpa("vpa", low, VpaSettings(replicas=2), interval_s=5),
        "selecting": ctl.selecting("selecting", [low, p]),
    }


@pytest.mark.parametrize("name", list(controllers(contract_pipeline())))
def test_every_controller_produces_valid_plans(name: str) -> None:
    p = contract_pipeline()
    counts = np.r_[np.full(20, 10.0), np.full(20, 45.0), np.full(20, 15.0)]
    workload = Workload(arrivals_from_counts(counts, np.random.default_rng(4)), 60.0, prelude_counts=np.full(10, 10.0))
    sim = Recording(p, workload, SimConfig(seed=1))
    controller = controllers(p)[name](sim)
    if isinstance(controller.ticker, ControlLoop):
        controller.ticker.keep_history = 100
    result = ctl.simulate(sim, controller)
    assert sim.plans, f"{name} never applied a plan"
    options = {s.name: {o.key for o in s.options} for s in compile_problem(p, Observation(load_rps=0.0)).stages}
    bounds = {s.name: s.bounds for s in p.spec.stages}
    for plan in sim.plans:
        assert plan.status.has_plan
        assert [sp.stage for sp in plan.stages] == ["detector", "classifier"]
        for sp in plan.stages:
            replicas = sum(a.replicas for a in sp.allocations)
            assert bounds[sp.stage].min_replicas <= replicas <= bounds[sp.stage].max_replicas
            for a in sp.allocations:
                assert (a.variant, a.batch, a.cpu, a.instances) in options[sp.stage]
    if isinstance(controller.ticker, ControlLoop):
        for step in controller.ticker.history:
            if step.planned and step.candidate.status.has_plan:
                assert check_plan(step.problem, step.candidate) == []
    assert summarize(result).completed > 0


class _Loads:
    """Pipeline load per 5 s tick (a fake metrics source: the selection logic is what is under test)."""

    def __init__(self, per_tick: list[float]) -> None:
        self.per_tick = per_tick

    def observe(self, now: float) -> Observed:
        return Observed(load_history=(self.per_tick[int(now // 5)],) * 10)


class _Applied:
    def __init__(self) -> None:
        self.plan: Plan | None = None
        self.variants: list[str] = []

    def applied(self) -> Plan | None:
        return self.plan

    def hold(self, plan: Plan | None, *, now: float) -> None:
        pass

    def apply(self, plan: Plan, *, now: float) -> None:
        self.plan = plan
        self.variants.append(next(a.variant for sp in plan.stages for a in sp.allocations if a.replicas > 0))


def test_selecting_leaves_an_infeasible_pair_at_once_and_upgrades_only_after_stabilization() -> None:
    adaptation = {"intervalSeconds": 5, "scaleDownStabilization": 3,
                  "predictor": {"kind": "lastValue", "windowSeconds": 1, "headroom": 0.0}}
    cheap = pipeline([stage("s", [variant("a", 0.6, {1: 10.0})], bounds={"maxReplicas": 8})], adaptation=adaptation)
    good = pipeline([stage("s", [variant("b", 0.9, {1: 100.0})], bounds={"maxReplicas": 2})], adaptation=adaptation)
    # `good` carries at most 2 replicas x 10 rps: 30 rps needs `cheap`, 10 rps fits either.
    loads = [10.0, 30.0, 10.0, 30.0, 10.0, 10.0, 10.0, 10.0]
    actuator = _Applied()
    state = PolicyState()
    pending: list[tuple[int, int] | None] = []
    for tick in range(len(loads)):  # a fresh loop every tick, its state read back from the status form
        restored = PolicyState.from_dict(state.to_dict())
        loop = ControlLoop(SelectingPolicy([cheap, good]), _Loads(loads), actuator, restored)
        state = loop.tick(5.0 * tick).state
        pending.append(state.pending_switch)
    # good; down to cheap at once; no flap back at ticks 2 and 4; back to good after 3 ticks as the best
    assert actuator.variants[0] == "b"
    switches = [v for i, v in enumerate(actuator.variants) if i == 0 or v != actuator.variants[i - 1]]
    assert switches == ["b", "a", "b"]
    assert pending[2] == (1, 1) and pending[5] == (1, 2) and pending[6] is None  # persisted between ticks
    assert actuator.plan is not None and actuator.plan.stages[0].allocations[0].variant == "b"
