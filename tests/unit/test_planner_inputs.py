"""Hostile inputs to the planner get a clear error or a guarded value, never a crash or a hang.

- The exact reductions: `pareto_front` (sort and sweep) keeps exactly the undominated vectors, with any
  number of criteria and with ties; `pareto_rows` drops only cascade rows another row dominates.
- Observations (metrics a client can influence, F7): a load that is not a finite number in range is
  refused naming `load`; a remaining budget that is not a number is ignored, one outside [0, SLO] clamped;
  `effective_capacity` never overflows.
- Stored plans (the status subresource, F19): `plan_from_json` refuses anything a planner cannot have
  written with a ValueError naming the field.
- The YAML loader bounds size, nesting and alias expansion; Sponge and linear profiles that would give a
  non-positive latency or capacity anywhere on their grid are refused (the CRD's four-corner rule is
  checked against the full grid).
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paretoserve.planner.bounds import MAX_YAML_DEPTH
from paretoserve.planner.compile import Observation, compile_problem, remaining_budget_ms
from paretoserve.planner.evaluate import batch_delay_ms, effective_capacity
from paretoserve.planner.model import Cascade, CascadeRow, Option, Problem, SolveStatus, Stage
from paretoserve.planner.profiles import variant_options
from paretoserve.planner.serialize import PlanFormatError, plan_from_json, plan_json
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import SpecError, SpongeFit, load_pipeline_text, parse_pipeline
from paretoserve.planner.stageplans import pareto_front, pareto_rows

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True)


def _dominated(vectors: list[tuple[float, ...]], i: int) -> bool:
    """The definition: some other vector is no worse anywhere, and better somewhere or listed earlier."""
    v = vectors[i]
    return any(all(a <= b for a, b in zip(w, v, strict=True)) and (w != v or j < i)
               for j, w in enumerate(vectors) if j != i)


@PROPERTY
@given(st.integers(0, 6).flatmap(lambda d: st.lists(st.tuples(*[st.integers(0, 4).map(float)] * d), max_size=40)))
def test_pareto_front_keeps_exactly_the_undominated_vectors(vectors: list[tuple[float, ...]]) -> None:
    kept = pareto_front(vectors)
    assert kept == sorted(kept)
    assert kept == [i for i in range(len(vectors)) if not _dominated(vectors, i)]


def test_pareto_front_is_a_sweep_not_a_quadratic_scan() -> None:
    # 200,000 points on an anti-diagonal (all undominated) and 200,000 dominated ones: a quadratic filter
    # would compare 1.6e11 pairs.
    n = 200_000
    vectors = [(float(i), float(n - i), 0.0) for i in range(n)] + [(float(i) + 0.5, float(n - i) + 0.5, 1.0)
                                                                   for i in range(n)]
    assert pareto_front(vectors) == list(range(n))


def _cascade_stage(rows: list[tuple[float, float, float | None]], load: float, batches: list[int]) -> Stage:
    options = [Option("light", 0.5, b, 1.0, 10.0 * b, 100.0) for b in batches]
    options += [Option("heavy", 0.9, b, 1.0, 40.0 * b, 25.0) for b in batches]
    cascade = Cascade("light", "heavy", tuple(CascadeRow(t, f, q, 0.5, p) for t, (f, q, p) in
                                              zip(itertools.count(), rows)), "hybrid")
    return Stage("gen", tuple(options), load, cascade=cascade, max_queue_delay_ms=50.0)


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]), st.sampled_from([0.5, 0.6, 0.7, 0.9]),
                          st.sampled_from([None, 0.0, 0.05, 0.1])), min_size=1, max_size=12),
       st.sampled_from([0.0, 5.0, 40.0, 400.0]), st.sampled_from([[1], [1, 4], [2, 8]]))
def test_pareto_rows_drops_only_dominated_rows(rows: list[tuple[float, float, float | None]], load: float,
                                               batches: list[int]) -> None:
    rows = [(f, q, None if p is None else min(p, f)) for f, q, p in rows]
    stage = _cascade_stage(rows, load, batches)
    cascade = stage.cascade
    assert cascade is not None
    heavy = [o for o in stage.options if o.variant == "heavy"]
    light = [o for o in stage.options if o.variant == "light"]
    kept = pareto_rows(stage, heavy, light)

    def facts(j: int) -> tuple[float, float, float, tuple[float, ...]]:
        r = cascade.rows[j]
        light_load = load * cascade.light_fraction(r)
        waits = tuple(batch_delay_ms(o.batch, load * r.heavy_fraction, 50.0) for o in heavy)
        waits += tuple(batch_delay_ms(o.batch, light_load, 50.0) for o in light)
        return r.quality, r.heavy_fraction, light_load, waits

    def dominates(a: int, b: int) -> bool:
        qa, fa, la, wa = facts(a)
        qb, fb, lb, wb = facts(b)
        no_worse = qa >= qb and fa <= fb and la <= lb and all(x <= y for x, y in zip(wa, wb, strict=True))
        return no_worse and ((qa, fa, la, wa) != (qb, fb, lb, wb) or a < b)

    for j in range(len(rows)):
        if j not in kept:
            assert any(dominates(a, j) for a in kept), (j, kept)
    for a in kept:
        assert not any(dominates(b, a) for b in range(len(rows)) if b != a), (a, kept)


# -- observations ---------------------------------------------------------------------------------------------


def _pipeline(dynamic: bool = True) -> Any:
    slo: dict[str, Any] = {"latencyMs": 1000}
    if dynamic:
        slo["dynamic"] = {"safetyFraction": 0.1}
    return parse_pipeline({
        "apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline", "metadata": {"name": "s"},
        "spec": {"slo": slo, "stages": [{"name": "d", "batchSizes": [1, 2, 4], "variants": [
            {"name": "v", "tritonModel": "v", "accuracy": 0.5,
             "profile": {"sponge": {"gamma": 40.0, "delta": 1.0, "epsilon": 60.0, "eta": 10.0, "cpus": [1, 2]}}}]}]},
    })


@pytest.mark.parametrize("load", [math.nan, math.inf, -math.inf, -1.0, 1e308, 2e9])
def test_a_load_that_is_not_a_finite_number_in_range_is_refused_naming_it(load: float) -> None:
    with pytest.raises(SpecError) as info:
        compile_problem(_pipeline(), Observation(load_rps=load))
    assert info.value.path == "load" and "finite number of requests/s in [0, 1e+09]" in info.value.message


@pytest.mark.parametrize(("reading", "used"), [
    (None, None), (math.nan, None), (-100000.0, 0.0), (-math.inf, 0.0), (250.0, 250.0), (1.7e308, 1000.0),
    (math.inf, 1000.0),
])
def test_the_remaining_budget_is_ignored_when_not_a_number_and_clamped_to_the_slo(reading: float | None,
                                                                                  used: float | None) -> None:
    assert remaining_budget_ms(reading, 1000.0) == used
    problem = compile_problem(_pipeline(), Observation(load_rps=10.0, min_remaining_budget_ms=reading))
    fastest = min(o.latency_ms for o in problem.stages[0].options)
    meetable = used is not None and used - 100.0 >= fastest
    assert problem.drain_budget_ms == (used - 100.0 if meetable and used is not None else None)
    plan = solve(problem)  # was an OverflowError for 1.7e308 and inf, a ValueError for nan
    assert plan.status is SolveStatus.OPTIMAL  # a deadline no plan can meet does not freeze the plan


def test_a_deadline_no_plan_can_meet_is_not_planned_for_but_a_tight_one_is() -> None:
    """A client sets the deadline header: requests already past saving get 504s from the router, and must not
    make the program infeasible (which would freeze the plan in force). A meetable one still binds."""
    loose = compile_problem(_pipeline(), Observation(load_rps=10.0))
    fastest = min(o.latency_ms for o in loose.stages[0].options)
    hopeless = compile_problem(_pipeline(), Observation(load_rps=10.0, min_remaining_budget_ms=100.0 + fastest / 2))
    assert hopeless.drain_budget_ms is None and solve(hopeless).status is SolveStatus.OPTIMAL
    tight = compile_problem(_pipeline(), Observation(load_rps=10.0, min_remaining_budget_ms=100.0 + fastest))
    assert tight.drain_budget_ms == pytest.approx(fastest)


@pytest.mark.parametrize("delay", [math.nan, math.inf, -5.0])
def test_queue_delays_that_are_not_finite_and_positive_count_as_zero(delay: float) -> None:
    problem = compile_problem(_pipeline(False), Observation(load_rps=10.0, queue_delay_ms={"d": delay}))
    assert problem.stages[0].queue_delay_ms == 0.0
    assert solve(problem).status is SolveStatus.OPTIMAL


@pytest.mark.parametrize("drain", [1.7e308, math.inf, 1e300])
def test_effective_capacity_never_overflows(drain: float) -> None:
    option = Option("v", 0.5, 4, 1.0, 1e-300, 50.0, instances=2)
    stage = Stage("s", (option,), 10.0)
    assert effective_capacity(option, Problem("p", (stage,), 100.0, drain_budget_ms=drain)) == 50.0


# -- stored plans ---------------------------------------------------------------------------------------------


def _stored() -> dict[str, Any]:
    plan = solve(compile_problem(_pipeline(False), Observation(load_rps=30.0)))
    assert plan.status is SolveStatus.OPTIMAL
    return plan_json(plan)


def test_a_stored_plan_round_trips() -> None:
    stored = _stored()
    assert plan_json(plan_from_json(stored)) == stored


@pytest.mark.parametrize(("field", "value"), [
    ("replicas", 1e308), ("replicas", -1), ("replicas", 10001), ("replicas", "3"), ("replicas", math.nan),
    ("replicas", True), ("replicas", 2.5), ("cpu", math.inf), ("cpu", 5000.0), ("batch", 0), ("instances", 65),
    ("loadRps", -1.0), ("role", "boss"), ("variant", 7), ("gpus", {"nvidia.com/gpu": math.nan}),
])
def test_a_stored_plan_with_a_bad_allocation_is_refused_naming_the_field(field: str, value: Any) -> None:
    stored = copy.deepcopy(_stored())
    stored["stages"][0]["allocations"][0][field] = value
    with pytest.raises(PlanFormatError, match=rf"plan\.stages\[0\]\.allocations\[0\]\.{field}"):
        plan_from_json(stored)


@pytest.mark.parametrize("mutate", [
    lambda p: p.__setitem__("stages", "everything"),
    lambda p: p.__setitem__("stages", [7]),
    lambda p: p["stages"][0].__setitem__("heavyFraction", 2.0),
    lambda p: p["stages"][0].__setitem__("cascadeRow", 1e308),
    lambda p: p.__setitem__("solveMs", math.inf),
    lambda p: p.__setitem__("status", "great"),
    lambda p: p.__setitem__("reason", {"binding": "luck", "message": "x"}),
])
def test_a_stored_plan_that_no_planner_writes_is_a_value_error(mutate: Any) -> None:
    stored = copy.deepcopy(_stored())
    mutate(stored)
    with pytest.raises(ValueError):  # what the operator catches: never OverflowError or TypeError
        plan_from_json(stored)


# -- the YAML text --------------------------------------------------------------------------------------------


def test_a_billion_laughs_is_refused_before_it_expands() -> None:
    text = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, 10):
        text += f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]\n"
    with pytest.raises(SpecError, match="expands to more than") as info:
        load_pipeline_text(text)
    assert info.value.path == "<yaml>"


@pytest.mark.parametrize(("text", "message"), [
    ("[" * 20000 + "]" * 20000, "nest"),  # libyaml's own limit (the pure-Python loader: RecursionError)
    ("a: " + "[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1), "nested more than"),
    ("&a [*a]\n", "nested more than"),
    ("spec: [unclosed\n", "not valid YAML"),
    ("x" * (3 * 1024 * 1024 + 1), "larger than"),
])
def test_hostile_yaml_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        load_pipeline_text(text)
    assert info.value.path == "<yaml>"


# -- profiles -------------------------------------------------------------------------------------------------


coefficient = st.integers(-50, 50).map(float)


@PROPERTY
@given(coefficient, coefficient, coefficient, coefficient,
       st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0, 8.0]), min_size=1, max_size=4, unique=True),
       st.lists(st.integers(1, 64), min_size=1, max_size=5, unique=True))
def test_the_four_corners_of_a_sponge_grid_decide_like_the_whole_grid(
        gamma: float, delta: float, epsilon: float, eta: float, cpus: list[float], batches: list[int]) -> None:
    """The CRD's CEL rule checks the corners (min/max batch x min/max cores); spec.py checks every point."""
    fit = SpongeFit(gamma=gamma, delta=delta, epsilon=epsilon, eta=eta, cpus=cpus)
    grid = all(fit.latency_ms(b, c) > 0 for b in batches for c in cpus)
    corners = all(fit.latency_ms(b, c) > 0 for b in (min(batches), max(batches)) for c in (min(cpus), max(cpus)))
    assert grid == corners


def test_every_declared_sponge_and_linear_option_becomes_an_option() -> None:
    pipeline = _pipeline(False)
    stage = pipeline.spec.stages[0]
    assert len(variant_options(stage.variants[0], stage)) == stage.option_count == 3 * 2
