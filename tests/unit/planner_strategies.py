"""Hypothesis strategies that generate small planner problems of every program kind."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import strategies as st

from paretoserve.planner.model import (
    Aggregation,
    Budget,
    Cascade,
    CascadeRow,
    CurrentAllocation,
    Goal,
    Objective,
    Option,
    Problem,
    Stage,
)


@st.composite
def options(draw: st.DrawFn, variant: str, accuracy: float, max_batches: int = 3) -> list[Option]:
    base = draw(st.integers(5, 120))
    cpus = draw(st.lists(st.sampled_from([1.0, 2.0, 4.0]), min_size=1, max_size=2, unique=True))
    batches = draw(st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=max_batches, unique=True))
    gpu = draw(st.sampled_from([0.0, 0.0, 1.0]))
    load_time = draw(st.sampled_from([0.0, 5.0, 8.0]))
    out = []
    for cpu in cpus:
        for b in batches:
            latency = round(base * (0.6 + 0.4 * b) / cpu ** 0.5, 3)
            out.append(Option(
                variant=variant, accuracy=accuracy, batch=b, cpu=cpu, latency_ms=latency,
                capacity_rps=round(b * 1000.0 / latency, 3),
                gpus=(("nvidia.com/gpu", gpu),) if gpu else (),
                load_time_s=load_time,
            ))
    return out


def accuracies(n: int) -> st.SearchStrategy[list[float]]:
    return st.lists(st.integers(30, 99).map(lambda v: v / 100), min_size=n, max_size=n)


@st.composite
def objective(draw: st.DrawFn, allow_product: bool = True) -> Objective:
    aggs = list(Aggregation) if allow_product else [Aggregation.SUM, Aggregation.NORMALIZED_SUM, Aggregation.RANK_SUM]
    # every weight times one scale: tiny (1e-7: 'optimal' must not hide behind the solver's absolute
    # tolerances) to huge (the schema allows 1e6)
    scale = draw(st.sampled_from([1.0, 1.0, 1.0, 1e-7, 1e-5, 1e5]))
    return Objective(
        accuracy=scale * draw(st.sampled_from([0.0, 1.0, 2.0, 10.0])),
        cost=scale * draw(st.sampled_from([0.0, 0.001, 0.01, 0.1, 1.0])),
        batch=scale * draw(st.sampled_from([0.0, 1e-6, 0.01])),
        reconfiguration=scale * draw(st.sampled_from([0.0, 0.0, 0.05])),
        aggregation=draw(st.sampled_from(aggs)),
        prices=(("cpu", 1.0), ("nvidia.com/gpu", draw(st.sampled_from([0.0, 3.0])))),
    )


@st.composite
def budget(draw: st.DrawFn) -> Budget:
    cpu = draw(st.one_of(st.none(), st.integers(0, 40).map(float)))
    gpus = draw(st.sampled_from([(), (("nvidia.com/gpu", 4.0),), (("nvidia.com/gpu", 1.0),)]))
    return Budget(cpu=cpu, gpus=gpus)


@st.composite
def dag_problem(draw: st.DrawFn) -> Problem:
    """IPA-style: one variant per stage, chain or DAG, optional pins (FA2, RIM) and Sponge drain."""
    n_stages = draw(st.integers(1, 4))
    load = float(draw(st.integers(0, 60)))
    stages = []
    for i in range(n_stages):
        n_var = draw(st.integers(1, 3))
        accs = draw(accuracies(n_var))
        opts: list[Option] = []
        for v, acc in enumerate(accs):
            opts += draw(options(f"v{i}{v}", acc))
        deps = tuple(sorted(draw(st.sets(st.sampled_from([f"s{j}" for j in range(i)]), max_size=2)))) if i else ()
        pins = draw(st.sampled_from([(), (), (f"v{i}0",)]))
        stages.append(Stage(
            name=f"s{i}", options=tuple(opts), load_rps=load * draw(st.sampled_from([1.0, 1.0, 2.0])),
            depends_on=deps, min_replicas=(lo := draw(st.integers(0, 2))),
            max_replicas=max(1, lo) + draw(st.integers(0, 10)),
            max_queue_delay_ms=float(draw(st.sampled_from([0, 5, 20]))),
            pinned_variants=pins, pinned_replicas=draw(st.sampled_from([None, None, None, 3])),
        ))
    drain = draw(st.sampled_from([None, None, 150.0, 400.0])) if n_stages == 1 else None
    current = ()
    if draw(st.booleans()):
        first = stages[0].options[0]
        current = (CurrentAllocation("s0", first.variant, first.batch, first.cpu, first.instances, 2),)
    return Problem(
        name="dag", stages=tuple(stages), slo_ms=float(draw(st.integers(40, 600))),
        objective=draw(objective()), budget=draw(budget()), drain_budget_ms=drain, current=current,
    )


@st.composite
def cascade_problem(draw: st.DrawFn) -> Problem:
    """DiffServe/HADIS-style: threshold rows, light and heavy pools, optionally after another stage."""
    light_acc, heavy_acc = sorted(draw(accuracies(2)))
    opts = draw(options("light", light_acc)) + draw(options("heavy", heavy_acc))
    n_rows = draw(st.integers(1, 6))
    router = draw(st.sampled_from(["confidence", "prompt", "hybrid"]))  # the last two pre-route to heavy
    rows = []
    for j in range(n_rows):
        f = round(j / max(1, n_rows - 1), 3) if n_rows > 1 else draw(st.sampled_from([0.0, 0.5, 1.0]))
        quality = draw(st.one_of(st.just(light_acc + f * (heavy_acc - light_acc)),
                                 st.integers(30, 99).map(lambda v: v / 100)))
        pre = draw(st.sampled_from([None, 0.0, 0.2, 0.5, 1.0])) if router != "confidence" else None
        rows.append(CascadeRow(threshold=j / 10, heavy_fraction=f, quality=quality,
                               pre_routed_fraction=None if pre is None else min(pre, f)))
    load = float(draw(st.integers(0, 40)))
    stage = Stage(name="gen", options=tuple(opts), load_rps=load,
                  cascade=Cascade("light", "heavy", tuple(rows), router=router),
                  min_replicas=(lo := draw(st.integers(0, 2))), max_replicas=max(1, lo) + draw(st.integers(0, 8)),
                  max_queue_delay_ms=float(draw(st.sampled_from([0, 10]))),
                  queue_delay_ms=float(draw(st.sampled_from([0, 15]))))
    stages = [stage]
    if draw(st.booleans()):
        pre = Stage(name="pre", options=tuple(draw(options("p", draw(accuracies(1))[0])))
                    , load_rps=load, max_replicas=10)
        stages = [pre, Stage(**{**{f: getattr(stage, f) for f in stage.__slots__}, "depends_on": ("pre",)})]
    current = ()
    if draw(st.booleans()):
        h = [o for o in opts if o.variant == "heavy"][0]
        current = (CurrentAllocation("gen", "heavy", h.batch, h.cpu, h.instances, 1),)
    return Problem(
        name="cascade", stages=tuple(stages), slo_ms=float(draw(st.integers(60, 800))),
        objective=draw(objective()), budget=draw(budget()), current=current,
    )


@st.composite
def split_problem(draw: st.DrawFn) -> Problem:
    """InfAdapter-style: several variants at once with a traffic split and a loading-cost penalty."""
    n_var = draw(st.integers(1, 3))
    accs = draw(accuracies(n_var))
    opts: list[Option] = []
    for v, acc in enumerate(accs):
        opts += draw(options(f"r{v}", acc, max_batches=1))[:2]
    load = float(draw(st.integers(0, 50)))
    stage = Stage(name="cls", options=tuple(opts), load_rps=load, multi_variant=True,
                  min_replicas=(lo := draw(st.integers(0, 2))), max_replicas=max(1, lo) + draw(st.integers(0, 2)),
                  max_queue_delay_ms=5.0)
    current = ()
    if draw(st.booleans()):
        o = opts[0]
        current = (CurrentAllocation("cls", o.variant, o.batch, o.cpu, o.instances, draw(st.integers(1, 3))),)
    return Problem(
        name="split", stages=(stage,), slo_ms=float(draw(st.integers(20, 500))),
        objective=draw(objective()), budget=draw(budget()), current=current,
    )


@st.composite
def workflow_problem(draw: st.DrawFn) -> Problem:
    """Agent workflows: a DAG of 3-6 stages with fan-out and fan-in, two or three variants each, the latency
    goal (or the frontier goal) and, often, a floor on the aggregated accuracy."""
    n_stages = draw(st.integers(3, 6))
    load = float(draw(st.integers(0, 40)))
    stages = []
    for i in range(n_stages):
        accs = draw(accuracies(draw(st.integers(2, 3))))
        opts: list[Option] = []
        for v, acc in enumerate(accs):
            opts += draw(options(f"v{i}{v}", acc, max_batches=2))
        parents = [f"s{j}" for j in range(i)]
        deps = tuple(sorted(draw(st.sets(st.sampled_from(parents), min_size=1, max_size=3)))) if i else ()
        stages.append(Stage(name=f"s{i}", options=tuple(opts), load_rps=load * draw(st.sampled_from([1.0, 2.5])),
                            depends_on=deps, max_replicas=draw(st.integers(1, 8)),
                            max_queue_delay_ms=float(draw(st.sampled_from([0, 5])))))
    base = draw(objective())
    floor = draw(st.sampled_from([None, None, 0.4, 0.6, 0.75, 0.9]))
    goal = draw(st.sampled_from([Goal.LATENCY, Goal.LATENCY, Goal.FRONTIER]))
    return Problem(
        name="workflow", stages=tuple(stages), slo_ms=float(draw(st.integers(100, 1200))),
        objective=replace(base, goal=goal, min_accuracy=floor), budget=draw(budget()),
    )
