"""Turn per-stage choices into `StagePlan`s, enumerate every valid choice of a stage, and drop dominated ones.

Both the MILP (when it decodes a solution) and the brute-force oracle (when it enumerates) go through
these builders, so a stage's latency, load split and accuracy are computed one way only. The MILP also
uses the exact reductions here (`pareto_pool`, `pareto_rows`): a choice that another choice matches or
beats on every criterion the objective and the constraints can see is never needed. `pareto_front` is a
sort and sweep, O(n log n) for up to three criteria.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from paretoserve.planner.evaluate import (
    EPS,
    allocation_price,
    batch_delay_ms,
    changed,
    effective_capacity,
    fixed_pool_replicas,
    load_times,
    max_load_time,
    pool_replicas_many,
    replicas_for,
    split_batch_delay_ms,
)
from paretoserve.planner.model import Allocation, Deadline, Option, Problem, Stage, StagePlan

CHECK_EVERY = 64
"""Options between two looks at the deadline in the loops that scale with the option count."""


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
    path = light.latency_ms + light_queue
    if heavy is not None:
        heavy_load = stage.load_rps * row.heavy_fraction
        heavy_queue = batch_delay_ms(heavy.batch, heavy_load, stage.max_queue_delay_ms)
        allocs.append(allocation(heavy, heavy_replicas, heavy_load, heavy_queue, "heavy"))
        heavy_path = heavy.latency_ms + heavy_queue
        # a prompt router sends each request to one model; the others defer some after the light one answered
        path = max(path, heavy_path) if stage.cascade.router == "prompt" else path + heavy_path
    latency = path + stage.queue_delay_ms
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


# -- exact reductions ---------------------------------------------------------------------------------------


def pareto_front(vectors: Sequence[Sequence[float]] | npt.NDArray[np.float64]) -> list[int]:
    """Indices (ascending) of the vectors no other vector dominates (smaller is better in every coordinate);
    of identical vectors only the first is kept.

    Sort and sweep: in lexicographic order every dominating vector comes before the ones it dominates, so
    each vector is compared only with the kept ones before it. Coordinates every vector shares are dropped
    first (they decide nothing). With up to three left, the kept vectors form a staircase (second
    coordinate ascending, third strictly descending) and one binary search decides: O(n log n) in all.
    With more, the comparison with the kept vectors is one vectorised test per vector (O(n·k) numpy work,
    k the front's size); the option caps keep n ≤ 2,048 per stage.
    """
    if not len(vectors):
        return []
    table = np.asarray(vectors, dtype=float).reshape(len(vectors), -1)
    table = table[:, np.any(table != table[0], axis=0)]
    order = np.lexsort((np.arange(len(table)), *table.T[::-1])).tolist()
    kept: list[int] = []
    if table.shape[1] <= 3:
        padded = np.zeros((len(table), 3))
        padded[:, :table.shape[1]] = table
        second, third = padded[:, 1].tolist(), padded[:, 2].tolist()
        xs: list[float] = []  # second coordinate, ascending
        ys: list[float] = []  # third coordinate, strictly descending
        for i in order:
            a, b = second[i], third[i]
            j = bisect_right(xs, a)
            if j and ys[j - 1] <= b:  # an earlier vector is no worse anywhere
                continue
            kept.append(i)
            lo = hi = bisect_left(xs, a)
            while hi < len(xs) and ys[hi] >= b:
                hi += 1
            xs[lo:hi], ys[lo:hi] = [a], [b]
        return sorted(kept)
    front = np.empty_like(table)
    size = 0
    for i in order:
        row = table[i]
        if size and bool(np.any(np.all(front[:size] <= row, axis=1))):
            continue
        front[size] = row
        size += 1
        kept.append(i)
    return sorted(kept)


def fixed_changes(problem: Problem, stage: Stage, option: Option, replicas: int) -> bool:
    """Whether running `replicas` of `option` changes what runs now (the loading-cost indicator)."""
    alloc = Allocation(option.variant, option.batch, option.cpu, option.instances, replicas, 0.0, 0.0, 0.0)
    return changed(problem, stage.name, alloc)


@dataclass(frozen=True, slots=True)
class PoolFacts:
    """What `pareto_pool` needs of each option that does not depend on the pool's load (computed once for
    the many light-model pools of a cascade)."""

    options: list[Option]
    capacity: npt.NDArray[np.float64]
    """Effective capacity of one replica."""
    latency: npt.NDArray[np.float64]
    batch: npt.NDArray[np.int64]
    per_replica: npt.NDArray[np.float64]
    """Per option: price, cores and each budgeted GPU resource of one replica (0 where nothing weighs it)."""
    fixed: npt.NDArray[np.float64]
    """Per option: -accuracy (0 when unweighted) and the batch term (0 when unweighted)."""
    load_time: dict[str, float]

    @staticmethod
    def of(problem: Problem, stage: Stage, options: list[Option]) -> PoolFacts:
        obj = problem.objective
        gpus = [name for name, _ in problem.budget.gpus]
        per_replica = [
            [allocation_price(problem, o, 1) if obj.cost > 0 else 0.0,
             o.cpu if problem.budget.cpu is not None else 0.0,
             *(dict(o.gpus).get(name, 0.0) for name in gpus)]
            for o in options
        ]
        weighs_accuracy = obj.accuracy > 0 or obj.min_accuracy is not None
        fixed = [[-o.accuracy if weighs_accuracy else 0.0, float(o.batch) if obj.batch > 0 else 0.0]
                 for o in options]
        loading = obj.reconfiguration > 0 and max_load_time(problem) > EPS
        return PoolFacts(
            options,
            np.array([effective_capacity(o, problem) for o in options], dtype=np.float64),
            np.array([o.latency_ms for o in options], dtype=np.float64),
            np.array([o.batch for o in options], dtype=np.int64),
            np.asarray(per_replica, dtype=np.float64).reshape(len(options), 2 + len(gpus)),
            np.asarray(fixed, dtype=np.float64).reshape(len(options), 2),
            load_times(stage) if loading else {},
        )


def pareto_pool(problem: Problem, stage: Stage, options: list[Option], load_rps: float | None = None,
                deadline: Deadline | None = None, facts: PoolFacts | None = None) -> list[tuple[Option, int]]:
    """Options of a fixed-load pool (default load: the stage's) with their replicas, minus dominated ones.

    An option is dropped when another is no worse on every criterion the program can see: accuracy (when
    the objective weighs it or floors it), latency with the batch-formation wait, price (when cost is weighed), cores
    (under a CPU budget), each budgeted GPU resource, the batch term and the loading-cost penalty (when
    weighed): it can never be strictly better, whatever the other stages do. Ties keep the earlier option.
    This keeps only the stage's Pareto front and is what makes IPA-size products fast.
    """
    load = stage.load_rps if load_rps is None else load_rps
    facts = facts or PoolFacts.of(problem, stage, options)
    if deadline is not None:
        deadline.check(f"filtering the options of stage {stage.name!r}")
    replicas = pool_replicas_many(stage, facts.capacity, load)
    rows = np.flatnonzero(~np.isnan(replicas))
    if not len(rows):
        return []
    n = replicas[rows]
    waits = {b: batch_delay_ms(int(b), load, stage.max_queue_delay_ms) for b in np.unique(facts.batch[rows])}
    latency = facts.latency[rows] + np.array([waits[b] for b in facts.batch[rows]])
    penalty = np.zeros(len(rows))
    if facts.load_time:
        for i, k in enumerate(rows.tolist()):
            option = facts.options[k]
            if facts.load_time.get(option.variant) and fixed_changes(problem, stage, option, int(n[i])):
                penalty[i] = facts.load_time[option.variant]
    vectors = np.column_stack([facts.fixed[rows, 0], latency, facts.per_replica[rows] * n[:, None],
                               facts.fixed[rows, 1], penalty])
    return [(facts.options[rows[i]], int(n[i])) for i in pareto_front(vectors)]


def pareto_rows(stage: Stage, heavy_options: list[Option], light_options: list[Option]) -> list[int]:
    """Indices of cascade rows no other row dominates.

    Row a dominates row b when it is at least as good in quality, defers no more traffic, leaves the light
    model no more traffic (pre-routing), and makes no batch wait longer to form. A batch fills no faster
    at a lower rate, so the last condition holds only between rows whose waits are equal (capped by the
    max queue delay, or batch 1): rows are grouped by their waits, and each group is a three-criterion
    front. Ties keep the earlier row.
    """
    cascade = stage.cascade
    assert cascade is not None
    heavy_batches = sorted({o.batch for o in heavy_options})
    light_batches = sorted({o.batch for o in light_options})
    groups: dict[tuple[float, ...], list[int]] = {}
    vectors: list[tuple[float, ...]] = []
    for j, row in enumerate(cascade.rows):
        light = stage.load_rps * cascade.light_fraction(row)
        waits = tuple(batch_delay_ms(b, stage.load_rps * row.heavy_fraction, stage.max_queue_delay_ms)
                      for b in heavy_batches)
        waits += tuple(batch_delay_ms(b, light, stage.max_queue_delay_ms) for b in light_batches)
        groups.setdefault(waits, []).append(j)
        vectors.append((-row.quality, row.heavy_fraction, light))
    kept: list[int] = []
    for members in groups.values():
        kept += [members[i] for i in pareto_front([vectors[j] for j in members])]
    return sorted(kept)
