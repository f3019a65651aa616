"""Hand-checked plans built from the seed papers' parameters, and degenerate inputs.

Each expected value below is worked out in the comment above its assertion from the published numbers
(InfAdapter's capacity table, DiffServe's f(t) and sdturbo/sdv15 profiles, a Sponge l(b, c) fit).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from paretoserve.planner import milp
from paretoserve.planner.bruteforce import brute_force
from paretoserve.planner.evaluate import check_plan, rank_score
from paretoserve.planner.model import (
    Aggregation,
    Baseline,
    Binding,
    Budget,
    Cascade,
    CascadeRow,
    Goal,
    Objective,
    Option,
    Problem,
    SolveLimits,
    SolveStatus,
    Stage,
)
from paretoserve.planner.profiles import Measurement, SpongeCoefficients, fit_linear_capacity, fit_sponge
from paretoserve.planner.solve import solve

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def option(variant: str, acc: float, batch: int, latency: float, cpu: float = 1.0, **kw: object) -> Option:
    return Option(variant, acc, batch, cpu, latency, batch * 1000.0 / latency, **kw)  # type: ignore[arg-type]


def test_ipa_two_stage_chain_by_hand() -> None:
    # Detector: n (acc .46, 20 ms/batch-1) or x (acc .69, 80 ms); classifier: r18 (.70, 10 ms) or r152 (.78, 60 ms).
    # Load 40 rps, SLO 120 ms: x+r152 = 140 ms is too slow; x+r18 = 90 ms and n+r152 = 80 ms fit.
    # Replicas = ceil(40 / (1000/latency)): x -> ceil(40/12.5)=4, r18 -> 1, n -> 1, r152 -> ceil(40/16.7)=3.
    # Product accuracy: x+r18 = .69*.70 = .483 (5 cores), n+r152 = .46*.78 = .3588 (4 cores).
    # With α=1, β=0.01: .483-.05 = .433 beats .3588-.04 = .3188.
    det = Stage("det", (option("n", .46, 1, 20), option("x", .69, 1, 80)), 40.0)
    cls = Stage("cls", (option("r18", .70, 1, 10), option("r152", .78, 1, 60)), 40.0, depends_on=("det",))
    problem = Problem("ipa", (det, cls), slo_ms=120, objective=Objective(accuracy=1, cost=0.01))
    plan = solve(problem)
    assert plan.status is SolveStatus.OPTIMAL
    assert [(a.variant, a.replicas) for sp in plan.stages for a in sp.allocations] == [("x", 4), ("r18", 1)]
    assert plan.accuracy == pytest.approx(0.483)
    assert plan.latency_ms == pytest.approx(90.0)
    assert plan.stage("cls").start_ms == pytest.approx(80.0)
    assert plan.objective == pytest.approx(0.433)


@pytest.mark.parametrize(("aggregation", "chosen", "objective"), [
    # One stage, variants at .70/.89/.90 accuracy on 1/2/4 cores, α = 1, β = 0.1, one replica each.
    # rankSum (IPA's code normalises ranks): scores 0/0.5/1 -> 0-0.1, 0.5-0.2, 1-0.4: the 4-core variant, 0.6.
    (Aggregation.RANK_SUM, "c", 0.6),
    # normalizedSum rescales the values: 0/0.95/1 -> -0.1, 0.95-0.2 = 0.75, 0.6: the 2-core variant.
    (Aggregation.NORMALIZED_SUM, "b", 0.75),
])
def test_ipas_rank_normalisation_and_min_max_normalisation_choose_differently(
        aggregation: Aggregation, chosen: str, objective: float) -> None:
    stage = Stage("s", (option("a", .70, 1, 10, cpu=1), option("b", .89, 1, 10, cpu=2), option("c", .90, 1, 10, cpu=4)),
                  1.0)
    problem = Problem("ipa-rank", (stage,), slo_ms=100, objective=Objective(accuracy=1, cost=0.1,
                                                                           aggregation=aggregation))
    plan = solve(problem)
    assert plan.status is SolveStatus.OPTIMAL
    assert [a.variant for a in plan.stages[0].allocations] == [chosen]
    assert plan.objective == pytest.approx(objective)
    oracle = brute_force(problem)
    assert [a.variant for a in oracle.stages[0].allocations] == [chosen]


def test_batch_formation_delay_is_part_of_latency() -> None:
    # One stage, batch 4 at 20 ms and 10 rps: the batch needs (4-1)/10 s = 300 ms to fill, capped by
    # Triton's max queue delay of 50 ms -> 70 ms; with a 60 ms SLO only batch 1 (20 ms... 25 ms) fits.
    stage = Stage("s", (option("m", .9, 1, 25), option("m", .9, 4, 20)), 10.0, max_queue_delay_ms=50)
    plan = solve(Problem("b", (stage,), slo_ms=60, objective=Objective(cost=0.0)))
    assert plan.stages[0].allocations[0].batch == 1
    plan = solve(Problem("b", (stage,), slo_ms=80, objective=Objective(cost=0.0, batch=-0.0)))
    assert plan.latency_ms is not None and plan.latency_ms <= 80


def _infadapter_options() -> list[Option]:
    rows = list(csv.DictReader((DATA / "profiles" / "infadapter-resnet-cpu-capacity.csv").open()))
    acc = {"18": 0.69758, "152": 0.78312}
    out = []
    for r in rows:
        if r["SLA"] == "750" and r["ARCH"] in acc and int(r["capacity"]) > 0:
            latency = float(r["p99_latency"] or r["SLA"])  # a few rows have no p99: use the SLA bound
            out.append(Option(f"resnet{r['ARCH']}", acc[r["ARCH"]], 1, float(r["CPU"]), latency,
                              float(r["capacity"])))
    return out


def test_infadapter_capacity_table_by_hand() -> None:
    # ResNet-152's measured capacity at SLA 750 ms: 59 rps on 16-17 cores, 55 on 18, 61 on 19, 67 on 20.
    # At 60 rps and a 20-core budget the most accurate plan serves everything on ResNet-152, and the
    # cheapest such allocation is a single 19-core replica.
    stage = Stage("cls", tuple(_infadapter_options()), 60.0, multi_variant=True, max_replicas=2)
    problem = Problem("infadapter", (stage,), slo_ms=750, budget=Budget(cpu=20),
                      objective=Objective(accuracy=1.0, cost=1e-4, aggregation=Aggregation.SUM))
    plan = solve(problem)
    assert plan.status is SolveStatus.OPTIMAL
    assert [(a.variant, a.cpu, a.replicas, a.load_rps) for a in plan.stages[0].allocations] == [
        ("resnet152", 19.0, 1, 60.0)
    ]
    # At 100 rps ResNet-152 alone cannot keep up within 20 cores: the plan splits, filling ResNet-152 first,
    # and matches the exhaustive search.
    busy = dataclasses.replace(problem, stages=(dataclasses.replace(stage, load_rps=100.0),))
    plan = solve(busy)
    variants = {a.variant for a in plan.stages[0].allocations}
    assert variants == {"resnet18", "resnet152"}
    heavy = next(a for a in plan.stages[0].allocations if a.variant == "resnet152")
    assert heavy.load_rps == pytest.approx(next(o.capacity_rps for o in stage.options
                                                if o.variant == "resnet152" and o.cpu == heavy.cpu))
    assert plan.objective == pytest.approx(brute_force(busy).objective, abs=1e-9)
    assert check_plan(busy, plan) == []


def _diffserve_rows() -> tuple[CascadeRow, ...]:
    path = DATA / "diffserve" / "traces" / "apps" / "sdturbo_sdv15" / "f_t_sdturbo_sdv15.csv"
    rows = []
    for r in csv.DictReader(path.open()):
        f = float(r["f_t"])
        rows.append(CascadeRow(float(r["t"]), f, 0.5 + 0.4 * f))  # quality grows with deferrals
    return tuple(rows)


def test_diffserve_threshold_under_a_gpu_budget_by_hand() -> None:
    # sdturbo b=1: 100 ms (10 rps per GPU); sdv15 b=2: 2160 ms (0.926 rps), b=4: 3680 ms (1.087 rps),
    # b=8: 6790 ms (> the 5 s SLO). Load 2 rps, 2 GPUs: 1 for the light model, so the heavy model has one
    # GPU: 2·f(t) <= 1.087 -> f(t) <= 0.543 -> t = 0.15 (f = 0.514), which needs sdv15 at batch 4.
    gpu = (("nvidia.com/gpu", 1.0),)
    light = [Option("sdturbo", 0.5, b, 4, ms, b * 1000 / ms, gpus=gpu) for b, ms in [(1, 100), (2, 150)]]
    heavy = [Option("sdv15", 0.9, b, 4, ms, b * 1000 / ms, gpus=gpu)
             for b, ms in [(1, 1780), (2, 2160), (4, 3680), (8, 6790)]]
    stage = Stage("gen", tuple(light + heavy), 2.0, cascade=Cascade("sdturbo", "sdv15", _diffserve_rows()),
                  max_queue_delay_ms=500, max_replicas=15)
    problem = Problem("diffserve", (stage,), slo_ms=5000, budget=Budget(gpus=(("nvidia.com/gpu", 2.0),)),
                      objective=Objective(accuracy=1, cost=0.001, batch=1e-6, aggregation=Aggregation.SUM,
                                          prices=(("nvidia.com/gpu", 1.0),)))
    plan = solve(problem)
    sp = plan.stages[0]
    assert plan.status is SolveStatus.OPTIMAL
    assert sp.threshold == pytest.approx(0.15) and sp.heavy_fraction == pytest.approx(0.514)
    assert [(a.variant, a.role, a.batch, a.replicas) for a in sp.allocations] == [
        ("sdturbo", "light", 1, 1), ("sdv15", "heavy", 4, 1)]
    # Latency: 100 (light) + 3680 + min(3 / (2·0.514) s, 500 ms) = 4280 ms.
    assert plan.latency_ms == pytest.approx(4280.0)
    # With 15 GPUs everything can be deferred (f = 1 from t = 0.6 on).
    roomy = dataclasses.replace(problem, budget=Budget(gpus=(("nvidia.com/gpu", 15.0),)))
    assert solve(roomy).stages[0].heavy_fraction == pytest.approx(1.0)


def test_hybrid_rows_charge_the_light_model_only_for_what_it_serves_by_hand() -> None:
    # 100 rps. Light b=1: 40 ms -> 25 rps per GPU; heavy b=1: 100 ms -> 10 rps per GPU. 12 GPUs.
    # Row A (confidence only): heavy 0.6 -> 4 light + 6 heavy = 10 GPUs.
    # Row B (same quality, hybrid): the prompt router sends the hardest 50 % straight to heavy, the
    # discriminator 10 % more -> light serves 50 rps (2 GPUs) + heavy 60 rps (6 GPUs) = 8 GPUs.
    # Charged as if the light model saw every request, B would cost as much as A.
    gpu = (("nvidia.com/gpu", 1.0),)
    options = (Option("light", 0.5, 1, 1.0, 40.0, 25.0, gpus=gpu), Option("heavy", 0.9, 1, 1.0, 100.0, 10.0, gpus=gpu))
    rows = (CascadeRow(0.5, 0.6, 0.8), CascadeRow(0.3, 0.6, 0.8, prompt_threshold=0.7, pre_routed_fraction=0.5))
    stage = Stage("gen", options, 100.0, cascade=Cascade("light", "heavy", rows, router="hybrid"), max_replicas=20)
    problem = Problem("hadis", (stage,), slo_ms=1000, budget=Budget(gpus=(("nvidia.com/gpu", 12.0),)),
                      objective=Objective(accuracy=1, cost=0.01, aggregation=Aggregation.SUM,
                                          prices=(("nvidia.com/gpu", 1.0),)))
    plan = solve(problem)
    assert plan.status is SolveStatus.OPTIMAL and plan.stages[0].cascade_row == 1
    assert [(a.variant, a.replicas, a.load_rps) for a in plan.stages[0].allocations] == [
        ("light", 2, 50.0), ("heavy", 6, 60.0)]
    assert plan.gpus == (("nvidia.com/gpu", 8.0),) and check_plan(problem, plan) == []
    assert brute_force(problem).objective == pytest.approx(plan.objective)
    # A confidence cascade sends every request through the light model: the rows cost the same.
    plain = dataclasses.replace(stage, cascade=Cascade("light", "heavy", rows, router="confidence"))
    assert solve(dataclasses.replace(problem, stages=(plain,))).gpus == (("nvidia.com/gpu", 10.0),)


def test_sponge_fit_and_edf_drain_by_hand() -> None:
    truth = SpongeCoefficients(gamma=20, delta=5, epsilon=30, eta=10)
    points = [Measurement(b, c, truth.latency_ms(b, c)) for b in (1, 2, 4, 8) for c in (1.0, 2.0, 4.0)]
    fit = fit_sponge(points)
    assert (fit.gamma, fit.delta, fit.epsilon, fit.eta) == pytest.approx((20, 5, 30, 10))
    # l(b, 1 core): b=1 65 ms, b=2 90 ms. 10 rps, base SLO 1000 ms, tightest remaining budget 600 ms:
    # drain budget 600 - 0.1·1000 = 500 ms. b=1 needs 10 sequential batches = 650 ms (too slow);
    # b=2 needs 5 × 90 = 450 ms. Sponge's lexicographic (cores, batch) minimum: 1 core, batch 2.
    opts = tuple(Option("yolo", 0.5, b, c, fit.latency_ms(b, c), b * 1000 / fit.latency_ms(b, c))
                 for b in (1, 2, 4, 8) for c in (1.0, 2.0, 4.0))
    stage = Stage("det", opts, 10.0, max_replicas=16, max_queue_delay_ms=200)
    problem = Problem("sponge", (stage,), slo_ms=1000, drain_budget_ms=500,
                      objective=Objective(accuracy=0, cost=1, batch=1e-3))
    alloc = solve(problem).stages[0].allocations[0]
    assert (alloc.cpu, alloc.batch, alloc.replicas) == (1.0, 2, 1)


def test_linear_capacity_fit_matches_infadapter_table() -> None:
    points = [Measurement(1, o.cpu, o.latency_ms, o.capacity_rps) for o in _infadapter_options()
              if o.variant == "resnet18"]
    model = fit_linear_capacity(points)
    assert 20 < model.slope < 28  # ResNet-18 adds ~23 rps per core at SLA 750 ms
    assert model.capacity(20) == pytest.approx(473, rel=0.1)


def simple_stage(load: float, **kw: object) -> Stage:
    return Stage("only", (option("small", .7, 1, 10), option("big", .9, 1, 40)), load, **kw)  # type: ignore[arg-type]


def test_zero_load_keeps_min_replicas_of_the_best_variant() -> None:
    plan = solve(Problem("z", (simple_stage(0.0, min_replicas=1),), slo_ms=100))
    assert plan.status is SolveStatus.OPTIMAL
    assert [(a.variant, a.replicas) for a in plan.stages[0].allocations] == [("big", 1)]


def test_slo_below_the_fastest_variant_is_infeasible_on_slo() -> None:
    plan = solve(Problem("z", (simple_stage(5.0),), slo_ms=5))
    assert plan.status is SolveStatus.INFEASIBLE
    assert plan.reason is not None and plan.reason.binding is Binding.SLO and plan.reason.stage == "only"


def test_zero_budget_is_infeasible_on_budget() -> None:
    plan = solve(Problem("z", (simple_stage(5.0),), slo_ms=100, budget=Budget(cpu=0)))
    assert plan.status is SolveStatus.INFEASIBLE and plan.reason is not None
    assert plan.reason.binding is Binding.BUDGET


def test_budget_that_only_the_combination_breaks_is_diagnosed_by_relaxation() -> None:
    stages = (simple_stage(150.0), dataclasses.replace(simple_stage(150.0), name="two", depends_on=("only",)))
    plan = solve(Problem("z", stages, slo_ms=100, budget=Budget(cpu=2)))
    assert plan.status is SolveStatus.INFEASIBLE and plan.reason is not None
    assert plan.reason.binding is Binding.BUDGET


def test_empty_stage_is_infeasible_on_capacity() -> None:
    plan = solve(Problem("z", (Stage("empty", (), 1.0),), slo_ms=100))
    assert plan.status is SolveStatus.INFEASIBLE and plan.reason is not None
    assert plan.reason.binding is Binding.CAPACITY and plan.reason.stage == "empty"


def test_load_beyond_max_replicas_is_infeasible_on_capacity() -> None:
    plan = solve(Problem("z", (simple_stage(1000.0, max_replicas=2),), slo_ms=100))
    assert plan.status is SolveStatus.INFEASIBLE and plan.reason is not None
    assert plan.reason.binding is Binding.CAPACITY


def test_malformed_problem_is_an_error_not_a_crash() -> None:
    a = Stage("a", (option("m", .5, 1, 10),), 1.0, depends_on=("b",))
    b = Stage("b", (option("m", .5, 1, 10),), 1.0, depends_on=("a",))
    plan = solve(Problem("cycle", (a, b), slo_ms=100))
    assert plan.status is SolveStatus.ERROR and "cycle" in plan.message
    plan = solve(Problem("acc", (simple_stage(1.0),), slo_ms=-1))
    assert plan.status is SolveStatus.ERROR and "slo_ms" in plan.message


def test_a_time_limit_is_never_reported_as_infeasible() -> None:
    from paretoserve.research.benchmarks.planner import dag30_instance

    plan = solve(dag30_instance(12.0), limits=SolveLimits(time_limit_s=1e-4))
    assert plan.status is not SolveStatus.INFEASIBLE
    assert plan.status.has_plan == bool(plan.stages)


def test_solver_status_mapping_is_honest() -> None:
    import pulp

    class FakeLp:
        def __init__(self, status: int, sol_status: int) -> None:
            self.status, self.sol_status = status, sol_status

    assert milp._status(FakeLp(1, pulp.LpSolutionOptimal)) is SolveStatus.OPTIMAL
    assert milp._status(FakeLp(1, pulp.LpSolutionIntegerFeasible)) is SolveStatus.FEASIBLE_AT_TIME_LIMIT
    assert milp._status(FakeLp(-1, pulp.LpSolutionInfeasible)) is SolveStatus.INFEASIBLE
    assert milp._status(FakeLp(0, pulp.LpSolutionNoSolutionFound)) is SolveStatus.TIME_LIMIT_NO_SOLUTION
    assert milp._status(FakeLp(-3, pulp.LpSolutionNoSolutionFound)) is SolveStatus.ERROR


def test_cbc_fallback_agrees_with_highs() -> None:
    stages = (simple_stage(30.0), dataclasses.replace(simple_stage(30.0), name="two", depends_on=("only",)))
    problem = Problem("cbc", stages, slo_ms=60)
    # agreement, not speed: the limit covers CBC's process start too, which a busy machine stretched past 5 s
    highs, cbc = solve(problem), solve(problem, limits=SolveLimits(solver="cbc", time_limit_s=60.0))
    assert cbc.status is SolveStatus.OPTIMAL and cbc.solver == "cbc"
    assert cbc.objective == pytest.approx(highs.objective)


@pytest.mark.parametrize("baseline", [Baseline.MAX_ACCURACY, Baseline.MIN_COST])
def test_static_baselines_are_constraints_on_the_same_program(baseline: Baseline) -> None:
    problem = Problem("b", (simple_stage(50.0),), slo_ms=100, baseline=baseline)
    plan = solve(problem)
    expected = "big" if baseline is Baseline.MAX_ACCURACY else "small"
    assert plan.stages[0].allocations[0].variant == expected


def test_scale_only_and_switch_only_pins() -> None:
    fa2 = Problem("fa2", (dataclasses.replace(simple_stage(50.0), pinned_variants=("small",)),), slo_ms=100,
                  baseline=Baseline.SCALE_ONLY)
    assert solve(fa2).stages[0].allocations[0].variant == "small"
    rim = Problem("rim", (dataclasses.replace(simple_stage(50.0), pinned_replicas=1),), slo_ms=100,
                  baseline=Baseline.SWITCH_ONLY)
    alloc = solve(rim).stages[0].allocations[0]
    assert alloc.replicas == 1 and alloc.variant == "small"  # big: 25 rps per replica < 50


@pytest.mark.parametrize(("accuracy", "score"), [
    (0.70, 0.0), (0.89, 0.5), (0.90, 1.0),  # the levels themselves: ranks 0, 1, 2 of 3
    (0.895, 0.75),  # half-way between the 2nd and 3rd level: half-way between their ranks
    (0.5, 0.0), (0.99, 1.0),  # outside the levels: clamped
])
def test_rank_scores_interpolate_between_levels(accuracy: float, score: float) -> None:
    assert rank_score([0.70, 0.89, 0.90], accuracy) == pytest.approx(score)
    assert rank_score([0.8], accuracy) == 1.0  # one level: every variant is the best


def _diamond(goal: Goal, floor: float | None = None) -> Problem:
    """a -> {b, c} -> d at 10 rps; b and c each have a fast 4-core and a slow 1-core variant."""
    def stage(name: str, fast: float, slow: float, deps: tuple[str, ...] = (), acc: tuple[float, float] = (0.9, 0.9)
              ) -> Stage:
        return Stage(name, (option(f"{name}-fast", acc[0], 1, fast, cpu=4.0), option(f"{name}-slow", acc[1], 1, slow)),
                     10.0, depends_on=deps, max_queue_delay_ms=0.0)
    return Problem("diamond", (stage("a", 5, 5), stage("b", 10, 15, ("a",)), stage("c", 20, 50, ("a",)),
                               stage("d", 5, 5, ("b", "c"), acc=(0.95, 0.6))),
                   slo_ms=200.0, objective=Objective(accuracy=1.0, cost=0.01, aggregation=Aggregation.SUM,
                                                     goal=goal, min_accuracy=floor))


def test_latency_goal_speeds_up_the_critical_path_and_keeps_the_slack_branch_cheap() -> None:
    # The critical path is a -> c -> d. Frontier: every stage takes its 1-core variant except d (its fast
    # variant is more accurate: +0.35/4 accuracy beats 0.03 of cost): 5 + 50 + 5 = 60 ms.
    frontier = solve(_diamond(Goal.FRONTIER))
    assert frontier.status is SolveStatus.OPTIMAL and frontier.latency_ms == pytest.approx(60.0)
    assert [frontier.stage(n).allocations[0].variant for n in "abcd"] == ["a-slow", "b-slow", "c-slow", "d-fast"]
    # Latency: c's fast variant shortens the critical path to 5 + 20 + 5 = 30 ms; b's branch (15 ms) still has
    # 5 ms of slack, so b keeps its cheap variant, as do a and d where both variants are equally fast.
    fastest = solve(_diamond(Goal.LATENCY))
    assert fastest.status is SolveStatus.OPTIMAL and fastest.latency_ms == pytest.approx(30.0)
    assert [fastest.stage(n).allocations[0].variant for n in "abcd"] == ["a-slow", "b-slow", "c-fast", "d-fast"]
    assert fastest.objective == pytest.approx(brute_force(_diamond(Goal.LATENCY)).objective)


def test_accuracy_floor_binds_and_an_unreachable_floor_is_diagnosed() -> None:
    # With d's accuracy weighted at nothing but a floor of 0.9 (mean of 0.9, 0.9, 0.9 and d's), d must run
    # its 0.95 variant: 0.9125 >= 0.9, while 0.6 gives 0.825.
    problem = _diamond(Goal.LATENCY, floor=0.9)
    problem = dataclasses.replace(problem, objective=dataclasses.replace(problem.objective, accuracy=0.0))
    plan = solve(problem)
    assert plan.status is SolveStatus.OPTIMAL and plan.stage("d").allocations[0].variant == "d-fast"
    assert plan.accuracy == pytest.approx(0.9125)
    unreachable = solve(_diamond(Goal.FRONTIER, floor=0.95))
    assert unreachable.status is SolveStatus.INFEASIBLE and unreachable.reason is not None
    assert unreachable.reason.binding is Binding.ACCURACY


def test_token_profiles_compile_to_options_under_the_ttft_itl_and_kv_limits_by_hand() -> None:
    from paretoserve.planner.compile import Observation, compile_problem
    from paretoserve.planner.spec import load_pipeline_text

    example = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "arith-llm.yaml"
    pipeline = load_pipeline_text(example.read_text())
    problem = compile_problem(pipeline, Observation(load_rps=2000.0))
    options = {(o.variant, o.batch): o for o in problem.stages[0].options}
    # arith-small: a request costs the replica prefill(8) = 0.1215 + 0.0599 x 8 = 0.6007 ms plus the served
    # overhead 3.026 ms (p = 3.6267 ms); step(B) = 0.1673 + 0.08 B. A request of 4 tokens holds a slot for 3
    # iterations, so a full replica admits n = max(1, B / 3) newcomers per iteration: ITL = step(B) + n p,
    # TTFT = ITL + n p, latency = TTFT + 3 ITL. B = 8: ITL 0.8073 + 8/3 x 3.6267 = 10.5 ms > the 10 ms ITL SLO.
    # arith-large: p = 1.2942 + 2.748 = 4.0422 ms; B = 8: ITL 1.6034 + 8/3 x 4.0422 = 12.4 ms; and its KV budget
    # holds at most 9 sequences (9 x 12 x 2304 = 248,832 B): B = 16 and 32 dropped.
    assert sorted(options) == [("arith-large", 1), ("arith-large", 4), ("arith-small", 1), ("arith-small", 4)]
    small4 = options[("arith-small", 4)]
    prefill, step, n = 0.6007 + 3.026, 0.1673 + 0.08 * 4, 4 / 3
    itl = step + n * prefill
    latency = itl + n * prefill + 3 * itl
    assert small4.latency_ms == pytest.approx(latency)
    # capacity: n requests per iteration = 1000 / (p + 3 step / 4) per second, x targetUtilization 1
    assert small4.capacity_rps == pytest.approx(1000 / (prefill + 3 * step / 4))
    # the SLOs drop what misses them: with a 5 ms ITL SLO, B = 4 goes (5.3 and 6.3 ms)
    stage = pipeline.spec.stages[0]
    assert stage.generation is not None
    tighter = stage.model_copy(update={"generation": stage.generation.model_copy(update={"itl_ms": 5.0})})
    strict = pipeline.model_copy(update={"spec": pipeline.spec.model_copy(update={"stages": [tighter]})})
    kept = {(o.variant, o.batch) for o in compile_problem(strict, Observation(load_rps=2000.0)).stages[0].options}
    assert kept == {("arith-large", 1), ("arith-small", 1)}
    assert problem.stages[0].max_queue_delay_ms == 0.0  # continuous batching waits for no batch to fill
    # the prompt router's threshold in the same program: every prompt to arith-large while the 8-core budget
    # carries it, then more and more to arith-small as the load rises; brute force agrees
    thresholds = []
    for load in (1000.0, 1700.0, 1800.0):
        at_load = compile_problem(pipeline, Observation(load_rps=load))
        plan = solve(at_load)
        assert plan.status is SolveStatus.OPTIMAL and plan.cpu is not None and plan.cpu <= 8.0
        assert plan.objective == pytest.approx(brute_force(at_load).objective, abs=1e-7)
        thresholds.append(plan.stage("answer").threshold)
    assert thresholds[0] == 0.0 and 0.0 < thresholds[1] < thresholds[2] < 1.0


def test_a_prompt_router_stage_takes_the_slower_model_not_both() -> None:
    """A prompt router sends each request to one model; a confidence cascade runs the deferred ones on both."""
    from paretoserve.planner.model import Baseline, Budget, Cascade, CascadeRow, Option, Problem, Stage

    def option(variant: str, batch: int, latency: float, capacity: float) -> Option:
        return Option(variant=variant, accuracy=0.3, batch=batch, cpu=1.0, latency_ms=latency, capacity_rps=capacity,
                      instances=1, memory_gib=0.0, gpus=(), load_time_s=0.0)

    rows = (CascadeRow(threshold=0.0, heavy_fraction=0.0, quality=0.3),
            CascadeRow(threshold=0.4, heavy_fraction=1.0, quality=0.31))

    def problem(router: str) -> Problem:
        stage = Stage(name="gen", options=(option("light", 1, 5.0, 200.0), option("heavy", 4, 246.4, 16.234)),
                      load_rps=18.0, depends_on=(), multi_variant=False,
                      cascade=Cascade(light="light", heavy="heavy", rows=rows, router=router), min_replicas=0,
                      max_replicas=2, max_queue_delay_ms=0.0, queue_delay_ms=0.0, pinned_variants=(),
                      pinned_replicas=None)
        return Problem(name="cascade", stages=(stage,), slo_ms=247.0,
                       objective=Objective(accuracy=10.0, cost=0.001, aggregation=Aggregation.PRODUCT),
                       budget=Budget(), baseline=Baseline.NONE)

    prompt = solve(problem("prompt"))
    assert prompt.status is SolveStatus.OPTIMAL and prompt.stage("gen").threshold == 0.4
    assert prompt.latency_ms == pytest.approx(246.4)  # max(5, 246.4): every request visits one model
    assert prompt.objective == pytest.approx(brute_force(problem("prompt")).objective, abs=1e-9)
    confidence = solve(problem("confidence"))  # 5 + 246.4 > 247: the deferred rows cannot meet the SLO
    assert confidence.status is SolveStatus.OPTIMAL and confidence.stage("gen").threshold == 0.0
