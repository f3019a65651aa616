"""Bursts and calm load: the surge load, the hold while a change starts, and releases that pay for their switch."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from paretoserve.planner.compile import MAX_LOAD_RPS, Observation, compile_problem
from paretoserve.planner.control import Observed, lead_seconds, pareto_loop
from paretoserve.planner.model import Plan
from paretoserve.planner.policy import (
    PolicyContext,
    PolicyState,
    decide,
    release_gain,
    resources,
    switch_cost,
)
from paretoserve.planner.predict import predict, surge_load, trend
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import Predictor, PredictorKind, ServingPipeline, parse_pipeline

from .loop_fakes import FakeActuator

LAST = Predictor(kind=PredictorKind.LAST_VALUE, headroom=0.1)


def two_variants(budget: float = 20, **adaptation: Any) -> ServingPipeline:
    """A fast variant (20 rps per core) and a more accurate one (8 rps per core), 6 s and 7 s to load."""
    def variant(name: str, accuracy: float, per_core: float, load_s: float) -> dict[str, Any]:
        return {"name": name, "tritonModel": name, "accuracy": accuracy, "loadTimeSeconds": load_s,
                "profile": {"points": [{"batch": 1, "cpu": c, "latencyMs": 300, "throughputRps": per_core * c}
                                       for c in (1, 2, 4, 8)]}}

    return parse_pipeline({
        "apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline", "metadata": {"name": "v"},
        "spec": {"slo": {"latencyMs": 750}, "objective": {"accuracy": 1, "cost": 0.05, "normalizeCost": True},
                 "budget": {"cpu": budget},
                 "adaptation": {"intervalSeconds": 10, "checkSeconds": 2, "scaleDownStabilization": 1,
                                "targetUtilization": 0.8, "predictor": {"kind": "lastValue", "headroom": 0},
                                **adaptation},
                 "stages": [{"name": "c", "multiVariant": True, "variants": [
                     variant("fast", 0.70, 20, 6), variant("good", 0.76, 8, 7)]}]}})


def plan_at(pipeline: ServingPipeline, load: float) -> Plan:
    plan = solve(compile_problem(pipeline, Observation(load_rps=load)))
    assert plan.status.has_plan
    return plan


def carried(plan: Plan) -> float:
    return sum(a.load_rps for sp in plan.stages for a in sp.allocations)


@dataclass
class History:
    samples: tuple[float, ...]

    def observe(self, now: float) -> Observed:
        return Observed(load_history=self.samples)


def test_trend_is_the_least_squares_slope_of_the_newest_samples() -> None:
    assert trend([5.0, 10.0, 15.0, 20.0]) == pytest.approx(5.0)
    assert trend([100.0] * 3 + [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], window=6) == pytest.approx(1.0)
    assert trend([50.0, 50.0, 50.0]) == 0.0
    assert trend([7.0]) == 0.0 and trend([]) == 0.0
    assert trend([30.0, 20.0, 10.0]) < 0


def test_surge_load_extends_a_rising_peak_over_the_lead_time_and_never_goes_below_the_forecast() -> None:
    flat = [40.0] * 30
    assert surge_load(flat, LAST, lead_seconds=9, peak_seconds=2) == pytest.approx(predict(flat, LAST))
    rising = [40.0] * 24 + [50.0, 60.0, 70.0, 80.0, 90.0, 100.0]  # +10 per second
    assert surge_load(rising, LAST, lead_seconds=9, peak_seconds=2) == pytest.approx((100 + 10 * 9) * 1.1)
    falling = rising[::-1]
    assert surge_load(falling, LAST, lead_seconds=9, peak_seconds=2) == pytest.approx(predict(falling, LAST))
    # a forecast above the extension wins
    assert surge_load(rising, LAST, lead_seconds=9, peak_seconds=2, lstm=None) <= \
        surge_load(rising, LAST, lead_seconds=90, peak_seconds=2)
    assert lead_seconds(two_variants()) == pytest.approx(7 + 2)  # slowest load time plus one check period


def test_a_release_that_starts_new_pools_must_save_more_than_it_spends_while_they_load() -> None:
    pipeline = two_variants()
    big, small = plan_at(pipeline, 100.0), plan_at(pipeline, 60.0)
    load_time = {("c", "fast"): 6.0, ("c", "good"): 7.0}
    assert resources(big) > resources(small)
    # the same pools with fewer replicas: nothing new loads
    assert switch_cost(big, small, load_time) == 0.0
    other = plan_at(pipeline, 150.0)  # adds a fast pool
    assert switch_cost(small, other, load_time) == pytest.approx(
        sum(a.cpu * a.replicas * 6.0 for sp in other.stages for a in sp.allocations if a.variant == "fast"))
    assert release_gain(big, small, 30.0) == pytest.approx((resources(big) - resources(small)) * 30.0)

    def ctx(cost: float, gain: float, streak: int = 0) -> PolicyContext:
        return PolicyContext(now=10.0, candidate=small, applied=big, state=PolicyState(lower_streak=streak),
                             scale_down_stabilization=2, switch_cost=cost, release_gain=gain)

    kept, state = decide(ctx(cost=500.0, gain=100.0, streak=1))
    assert not kept.apply and kept.plan is big and "not worth its switch" in kept.reason
    assert state.lower_streak == 2  # still waiting: a later, larger saving goes through at once
    done, state = decide(ctx(cost=500.0, gain=600.0, streak=1))
    assert done.apply and done.plan is small and state.lower_streak == 0
    deferred, _ = decide(ctx(cost=0.0, gain=600.0, streak=0))
    assert not deferred.apply and "deferred" in deferred.reason  # stabilisation still comes first
    # adding resources never waits for a saving
    up, _ = decide(PolicyContext(now=10.0, candidate=big, applied=small, state=PolicyState(),
                                 scale_down_stabilization=2, switch_cost=1e9, release_gain=-1e9))
    assert up.apply


def test_the_loop_keeps_a_cheaper_plan_out_when_its_switch_costs_more_than_it_saves() -> None:
    pipeline = two_variants(scaleDownStabilization=1)
    source, actuator = History((150.0,) * 30), FakeActuator()
    loop = pareto_loop(pipeline, source, actuator)
    loop.tick(0.0)  # fast + good pools
    source.samples = (149.0,) * 30  # a plan one replica smaller would restart nothing, so it goes through
    assert "fast" in {a.variant for sp in loop.tick(10.0).decision.plan.stages  # type: ignore[union-attr]
                      for a in sp.allocations}
    before = actuator.applied_at[:]
    source.samples = (60.0,) * 30  # the cheaper plan drops the fast pool: nothing new, the saving is applied
    released = loop.tick(20.0)
    assert released.decision.apply and actuator.applied_at == [*before, 20.0]


def test_a_load_check_holds_for_a_starting_change_that_carries_the_load_at_full_utilisation() -> None:
    pipeline = two_variants(budget=10, intervalSeconds=30)
    source, actuator = History((60.0,) * 30), FakeActuator()
    loop = pareto_loop(pipeline, source, actuator)
    loop.tick(0.0)
    loop.state = PolicyState(last_change_at=0.0, last_planned_at=0.0, decisions=1)  # its pools are loading
    source.samples = (70.0,) * 30  # above 0.8 x capacity, below capacity; no replica fits the budget
    held = loop.tick(2.0)
    assert not held.decision.apply and "still starting" in held.decision.reason
    source.samples = (90.0,) * 30  # beyond what the starting plan carries even at full utilisation
    replanned = loop.tick(4.0)
    assert replanned.planned and replanned.decision.apply
    assert carried(replanned.decision.plan) >= 90.0 * 1.0 - 1e-6  # type: ignore[arg-type]


def test_once_the_load_outgrew_the_plan_a_decision_plans_for_where_the_burst_is_going() -> None:
    pipeline = two_variants()
    source, actuator = History((20.0,) * 30), FakeActuator()
    loop = pareto_loop(pipeline, source, actuator)
    loop.tick(0.0)
    source.samples = (20.0,) * 24 + (30.0, 35.0, 40.0, 45.0, 50.0, 55.0)  # +5 rps per second
    burst = loop.tick(10.0)  # the interval: a full decision, and the running plan no longer covers 55 rps
    assert burst.decision.apply
    assert burst.predicted_load == pytest.approx(55.0 + 5.0 * lead_seconds(pipeline))
    assert carried(burst.decision.plan) == pytest.approx(burst.predicted_load)  # type: ignore[arg-type]
    calm = pareto_loop(pipeline, History((20.0,) * 24 + (21.0, 22.0, 23.0, 24.0, 25.0, 26.0)), FakeActuator())
    calm.tick(0.0)
    assert calm.tick(10.0).predicted_load == pytest.approx(26.0)  # the plan still covers it: the plain forecast


def test_a_surge_beyond_the_budget_plans_for_the_most_that_can_be_carried() -> None:
    pipeline = two_variants()  # at most 20 cores x 16 rps of the fast variant
    source, actuator = History((20.0,) * 30), FakeActuator()
    loop = pareto_loop(pipeline, source, actuator)
    loop.tick(0.0)
    source.samples = (20.0,) * 25 + (50.0, 100.0, 150.0, 200.0, 250.0)  # heading for 250 + 50 x 9 rps
    burst = loop.tick(10.0)
    assert burst.decision.apply and burst.decision.plan is not None and burst.decision.plan.status.has_plan
    assert 250.0 < burst.predicted_load <= 320.0
    assert carried(burst.decision.plan) == pytest.approx(burst.predicted_load)


def test_a_resize_in_place_starts_no_pool() -> None:
    pipeline = two_variants()
    small = plan_at(pipeline, 60.0)
    resized = replace(small, stages=tuple(replace(sp, allocations=tuple(replace(a, cpu=2.0) for a in sp.allocations))
                                          for sp in small.stages))
    load_time = {("c", "fast"): 6.0, ("c", "good"): 7.0}
    assert switch_cost(small, resized, load_time) == pytest.approx(resources(resized) * 7.0)  # new pods load
    assert switch_cost(small, resized, load_time, in_place=True) == 0.0
    rebatched = replace(small, stages=tuple(replace(sp, allocations=tuple(replace(a, batch=4) for a in sp.allocations))
                                            for sp in small.stages))
    assert switch_cost(small, rebatched, load_time) == 0.0  # the running model takes the new batch size


def test_without_load_checks_a_round_plans_for_the_forecast() -> None:
    pipeline = two_variants(intervalSeconds=2, checkSeconds=2)  # the fast path is off
    source = History((20.0,) * 30)
    loop = pareto_loop(pipeline, source, FakeActuator())
    loop.tick(0.0)
    source.samples = (20.0,) * 24 + (30.0, 35.0, 40.0, 45.0, 50.0, 55.0)
    assert loop.tick(2.0).predicted_load == pytest.approx(55.0)


def test_a_steep_but_valid_burst_never_plans_beyond_the_accepted_load_range() -> None:
    pipeline = two_variants()
    source = History((20.0,) * 30)
    loop = pareto_loop(pipeline, source, FakeActuator())
    loop.tick(0.0)
    source.samples = (20.0,) * 25 + (1e6, 1e7, 1e8, 5e8, 9e8)  # each a load the program accepts
    burst = loop.tick(2.0)  # the trend would run far past 1e9 within the lead time
    assert burst.planned and burst.predicted_load <= MAX_LOAD_RPS
    assert not burst.decision.apply and "kept the current plan" in burst.decision.reason  # 20 cores carry 320


def test_a_scale_out_for_a_peak_that_did_not_last_is_released_at_the_next_round() -> None:
    """A load check scales the running pools out for one second's peak; the next round, which no longer sees
    the peak, releases the extra replicas at once instead of after `scaleDownStabilization` rounds (nothing
    reloads). A release that starts new pools, or one from a plan of a full round, still waits."""
    pipeline = two_variants(scaleDownStabilization=3)
    source, actuator = History((60.0,) * 30), FakeActuator()
    loop = pareto_loop(pipeline, source, actuator)
    first = loop.tick(0.0)
    source.samples = (60.0,) * 29 + (70.0,)  # one noisy second above what the plan covers
    spike = loop.tick(2.0)
    assert spike.decision.apply and spike.decision.plan is not None and spike.decision.plan.solver == "scale-out"
    assert resources(spike.decision.plan) > resources(first.decision.plan)  # type: ignore[arg-type]
    source.samples = (60.0,) * 30  # the next round: the peak is older than the interval
    released = loop.tick(12.0)
    assert released.decision.apply and "released the load check's scale-out" in released.decision.reason
    assert released.decision.plan is not None
    assert resources(released.decision.plan) == pytest.approx(resources(first.decision.plan))  # type: ignore[arg-type]

    grown, full = spike.decision.plan, first.decision.plan
    def ctx(applied: Plan, cost: float) -> PolicyContext:
        return PolicyContext(now=20.0, candidate=full, applied=applied, state=PolicyState(),  # type: ignore[arg-type]
                             scale_down_stabilization=3, switch_cost=cost, release_gain=1e9)
    assert "deferred (1/3)" in decide(ctx(grown, cost=50.0))[0].reason  # new pools: the usual wait
    bigger = plan_at(pipeline, 100.0)
    assert bigger.solver != "scale-out" and "deferred (1/3)" in decide(ctx(bigger, cost=0.0))[0].reason
