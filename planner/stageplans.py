"""Turn per-stage choices into `StagePlan`s, and enumerate every valid choice of a stage.

Both the MILP (when it decodes a solution) and the brute-force oracle (when it enumerates) go through
these builders, so a stage's latency, load split and accuracy are computed one way only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from paretoserve.planner.evaluate import (
    batch_delay_ms,
    effective_capacity,
    fixed_pool_replicas,
    replicas_for,
    split_batch_delay_ms,
)
from paretoserve.planner.model import Allocation, Option, Problem, Stage, StagePlan


def allowed_options(stage: Stage, variants: Sequence[str] | None = None) -> list[Option]:
    """Options of the stage after pins (scale-only baselines) and an optional variant filter."""
    options = list(stage.options)
    if stage.pinned_variants and stage.cascade is None:
        options = [o for o in options if o.variant in stage.pinned_variants]
    if variants is not None:
        options = [o for o in options if o.variant in variants]
    return options


def allocation(option: Option, replicas: int, load: float, queue_ms: float, role: str) -> Allocation:
    return Allocation(
        variant=option.variant,
        batch=option.batch,
        cpu=option.cpu,
        instances=option.instances,
        replicas=replicas,
        load_rps=load,
        latency_ms=option.latency_ms,
        queue_delay_ms=queue_ms,
        role=role,
        gpus=option.gpus,
        memory_gib=option.memory_gib,
    )


def single_plan(stage: Stage, option: Option, replicas: int) -> StagePlan:
    queue = batch_delay_ms(option.batch, stage.load_rps, stage.max_queue_delay_ms)
    alloc = allocation(option, replicas, stage.load_rps, queue, "main")
    latency = option.latency_ms + queue + stage.queue_delay_ms
    return StagePlan(stage.name, (alloc,), 0.0, latency, option.accuracy)


def cascade_plan(
    stage: Stage,
    row_index: int,
    light: Option,
    light_replicas: int,
    heavy: Option | None,
    heavy_replicas: int,
) -> StagePlan:
    if stage.cascade is None:
        raise ValueError(f"stage {stage.name} has no cascade")
    row = stage.cascade.rows[row_index]
    light_load = stage.load_rps * stage.cascade.light_fraction(row)
    light_queue = batch_delay_ms(light.batch, light_load, stage.max_queue_delay_ms)
    allocs = [allocation(light, light_replicas, light_load, light_queue, "light")]
    latency = light.latency_ms + light_queue + stage.queue_delay_ms
    if heavy is not None:
        heavy_load = stage.load_rps * row.heavy_fraction
        heavy_queue = batch_delay_ms(heavy.batch, heavy_load, stage.max_queue_delay_ms)
        allocs.append(allocation(heavy, heavy_replicas, heavy_load, heavy_queue, "heavy"))
        latency += heavy.latency_ms + heavy_queue
    return StagePlan(
        stage.name, tuple(allocs), 0.0, latency, row.quality,
        threshold=row.threshold, heavy_fraction=row.heavy_fraction, cascade_row=row_index,
    )


def fill_most_accurate_first(
    stage: Stage, chosen: Sequence[tuple[Option, int]], problem: Problem
) -> list[float] | None:
    """InfAdapter's split: route load to the most accurate variants first; None if it does not fit."""
    remaining = stage.load_rps
    loads = [0.0] * len(chosen)
    order = sorted(range(len(chosen)), key=lambda i: -chosen[i][0].accuracy)
    for i in order:
        option, replicas = chosen[i]
        take = min(remaining, effective_capacity(option, problem) * replicas)
        loads[i] = take
        remaining -= take
    return loads if remaining <= 1e-9 * max(1.0, stage.load_rps) else None


def split_plan(stage: Stage, chosen: Sequence[tuple[Option, int]], loads: Sequence[float]) -> StagePlan:
    allocs = []
    latency = 0.0
    for (option, replicas), load in zip(chosen, loads, strict=True):
        queue = split_batch_delay_ms(option.batch, stage.max_queue_delay_ms)
        allocs.append(allocation(option, replicas, load, queue, "main"))
        latency = max(latency, option.latency_ms + queue)
    if stage.load_rps > 0:
        accuracy = sum(o.accuracy * load for (o, _), load in zip(chosen, loads, strict=True)) / stage.load_rps
    else:
        accuracy = chosen[0][0].accuracy
    return StagePlan(stage.name, tuple(allocs), 0.0, latency + stage.queue_delay_ms, accuracy)


def enumerate_stage(problem: Problem, stage: Stage) -> Iterator[StagePlan]:
    """Every valid plan of one stage at its fewest replicas (more replicas only add cost)."""
    if stage.cascade is not None:
        yield from _enumerate_cascade(problem, stage)
    elif stage.multi_variant:
        yield from _enumerate_split(problem, stage)
    else:
        for option in allowed_options(stage):
            n = fixed_pool_replicas(stage, option, stage.load_rps, problem)
            if n is not None:
                yield single_plan(stage, option, n)


def _enumerate_cascade(problem: Problem, stage: Stage) -> Iterator[StagePlan]:
    assert stage.cascade is not None  # guarded by the caller
    lights = allowed_options(stage, [stage.cascade.light])
    heavies = allowed_options(stage, [stage.cascade.heavy])
    for j, row in enumerate(stage.cascade.rows):
        for light in lights:
            n_light = fixed_pool_replicas(stage, light, stage.load_rps * stage.cascade.light_fraction(row), problem)
            if n_light is None:
                continue
            if row.heavy_fraction <= 0:
                yield cascade_plan(stage, j, light, n_light, None, 0)
                continue
            for heavy in heavies:
                n_heavy = replicas_for(stage.load_rps * row.heavy_fraction, effective_capacity(heavy, problem))
                if n_heavy is None:
                    continue
                n_heavy = max(n_heavy, 1)
                if n_heavy <= stage.max_replicas:
                    yield cascade_plan(stage, j, light, n_light, heavy, n_heavy)


def _enumerate_split(problem: Problem, stage: Stage) -> Iterator[StagePlan]:
    """All subsets (one option per variant) × replica vectors; exponential, for small tests only."""
    by_variant: dict[str, list[Option]] = {}
    for o in allowed_options(stage):
        by_variant.setdefault(o.variant, []).append(o)
    choices_per_variant = [[None, *opts] for opts in by_variant.values()]
    for combo in itertools.product(*choices_per_variant):
        picked = [o for o in combo if o is not None]
        if not picked:
            continue
        if stage.load_rps <= 0 and len(picked) != 1:
            continue
        for reps in itertools.product(range(1, stage.max_replicas + 1), repeat=len(picked)):
            total = sum(reps)
            if total > stage.max_replicas or total < stage.min_replicas:
                continue
            if stage.pinned_replicas is not None and total != stage.pinned_replicas:
                continue
            chosen = list(zip(picked, reps, strict=True))
            loads = fill_most_accurate_first(stage, chosen, problem)
            if loads is not None:
                yield split_plan(stage, chosen, loads)
