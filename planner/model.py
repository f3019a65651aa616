"""The planner's numeric contract: frozen `Problem` in, frozen `Plan` out.

A `Problem` is what the integer program sees after the manifest has been compiled against an observed
load (see `compile.py`): per stage the concrete options (variant × batch × CPU × Triton instances, each
with a latency and a per-replica capacity), the stage's arrival rate, its DAG edges and its bounds.
A `Plan` is what actuators apply. Both are plain data so that the simulator, the local runtime and the
operator exchange exactly the same values, and so that tests can build them by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class Aggregation(StrEnum):
    """How stage accuracies combine into the pipeline accuracy score (IPA's PAS)."""

    PRODUCT = "product"
    SUM = "sum"
    NORMALIZED_SUM = "normalizedSum"
    """Mean of stage accuracies min–max rescaled to [0, 1] over the stage's variants and cascade rows."""
    RANK_SUM = "rankSum"
    """Mean of stage accuracy ranks rescaled to [0, 1] (IPA's code: three variants score 0, 0.5, 1)."""


class Goal(StrEnum):
    """What the plan optimises; every goal keeps the SLO, the budget and the accuracy floor as constraints."""

    FRONTIER = "frontier"
    """Maximise α·accuracy − β·cost − γ·batch − δ·reconfiguration (IPA, InfAdapter)."""
    LATENCY = "latency"
    """Minimise the end-to-end latency (the DAG's critical path), then maximise the weighted objective among
    the plans that reach it: the critical path gets the fast variants, the branches with slack the cheap ones."""


class Baseline(StrEnum):
    """Published baselines expressed as constraints on the same program."""

    NONE = "none"
    SCALE_ONLY = "scale-only"  # FA2-low / FA2-high: variants pinned, replicas free
    SWITCH_ONLY = "switch-only"  # RIM: replicas pinned, variants free
    MAX_ACCURACY = "max-accuracy"  # the most accurate variant of every stage
    MIN_COST = "min-cost"  # cheapest plan that meets the SLO, accuracy ignored


@dataclass(frozen=True, slots=True)
class Option:
    """One way to run a variant: a batch size, cores per replica and Triton instances."""

    variant: str
    accuracy: float
    batch: int
    cpu: float
    latency_ms: float
    capacity_rps: float
    instances: int = 1
    memory_gib: float = 0.0
    gpus: tuple[tuple[str, float], ...] = ()
    load_time_s: float = 0.0

    @property
    def key(self) -> tuple[str, int, float, int]:
        return (self.variant, self.batch, self.cpu, self.instances)


@dataclass(frozen=True, slots=True)
class CascadeRow:
    threshold: float
    heavy_fraction: float
    quality: float
    prompt_threshold: float | None = None
    pre_routed_fraction: float | None = None


@dataclass(frozen=True, slots=True)
class Cascade:
    light: str
    heavy: str
    rows: tuple[CascadeRow, ...]
    router: str = "confidence"

    def pre_routed_fraction(self, row: CascadeRow) -> float:
        """Share of the stage's requests sent straight to the heavy model, skipping the light one.

        The row's measured ``pre_routed_fraction`` when given (a hybrid router pre-routes part of what it
        defers, the discriminator the rest); otherwise everything a prompt router defers, and nothing for
        the others (confidence and discriminator cascades send every request through the light model).
        """
        if self.router not in ("prompt", "hybrid"):
            return 0.0
        if row.pre_routed_fraction is not None:
            return min(row.pre_routed_fraction, row.heavy_fraction)
        return row.heavy_fraction if self.router == "prompt" else 0.0

    def light_fraction(self, row: CascadeRow) -> float:
        """Share of the stage's requests the light model serves at ``row``."""
        return 1.0 - self.pre_routed_fraction(row)


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    options: tuple[Option, ...]
    load_rps: float
    depends_on: tuple[str, ...] = ()
    multi_variant: bool = False
    cascade: Cascade | None = None
    min_replicas: int = 1
    max_replicas: int = 100
    max_queue_delay_ms: float = 10.0
    queue_delay_ms: float = 0.0
    """Observed queueing delay added to the stage latency (DiffServe's Little's-law term)."""
    pinned_variants: tuple[str, ...] = ()
    pinned_replicas: int | None = None


@dataclass(frozen=True, slots=True)
class Objective:
    accuracy: float = 1.0
    cost: float = 0.01
    batch: float = 0.0
    reconfiguration: float = 0.0
    aggregation: Aggregation = Aggregation.PRODUCT
    normalize_cost: bool = False
    prices: tuple[tuple[str, float], ...] = (("cpu", 1.0),)
    goal: Goal = Goal.FRONTIER
    min_accuracy: float | None = None
    """The least aggregated accuracy a plan may have (a constraint, under either goal)."""

    def price(self, resource: str) -> float:
        return dict(self.prices).get(resource, 0.0)


@dataclass(frozen=True, slots=True)
class Budget:
    cpu: float | None = None
    gpus: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class CurrentAllocation:
    """What runs now; the reconfiguration penalty charges changes against it."""

    stage: str
    variant: str
    batch: int
    cpu: float
    instances: int
    replicas: int


@dataclass(frozen=True, slots=True)
class Problem:
    name: str
    stages: tuple[Stage, ...]
    slo_ms: float
    objective: Objective = field(default_factory=Objective)
    budget: Budget = field(default_factory=Budget)
    baseline: Baseline = Baseline.NONE
    drain_budget_ms: float | None = None
    """Sponge: every second of arrivals must drain in EDF order within this many ms."""
    current: tuple[CurrentAllocation, ...] = ()


@dataclass(frozen=True, slots=True)
class SolveLimits:
    time_limit_s: float = 5.0
    """Wall-clock limit of the whole solve (building, solving, diagnosing) when `solve` gets a clock; of the
    solver calls alone without one."""
    solver: str = "highs"  # "highs" or "cbc"
    threads: int = 1
    relative_gap: float = 1e-9


class OutOfTime(Exception):
    """The solve's time budget ran out in `phase` (raised by `Deadline.check`, reported as a status)."""

    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


@dataclass(frozen=True, slots=True)
class Deadline:
    """The end of a solve's time budget on an injected clock (the planner reads no clock of its own).

    Without a clock (`Deadline.none()`) it never expires: then only the solver's own limit bounds time.
    """

    clock: Callable[[], float] | None
    at: float

    @staticmethod
    def none() -> Deadline:
        return Deadline(None, 0.0)

    @staticmethod
    def after(seconds: float, clock: Callable[[], float] | None) -> Deadline:
        return Deadline(clock, (clock() + seconds) if clock is not None else 0.0)

    def remaining(self) -> float | None:
        """Seconds left, or None without a clock."""
        return None if self.clock is None else self.at - self.clock()

    def check(self, phase: str) -> None:
        """Raise `OutOfTime(phase)` if the budget is spent."""
        if self.clock is not None and self.clock() >= self.at:
            raise OutOfTime(phase)


class SolveStatus(StrEnum):
    OPTIMAL = "optimal"
    FEASIBLE_AT_TIME_LIMIT = "feasible-at-time-limit"
    INFEASIBLE = "infeasible"
    TIME_LIMIT_NO_SOLUTION = "time-limit-no-solution"
    ERROR = "error"

    @property
    def has_plan(self) -> bool:
        return self in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE_AT_TIME_LIMIT)


class Binding(StrEnum):
    """The resource that makes a problem infeasible."""

    SLO = "slo"
    BUDGET = "budget"
    CAPACITY = "capacity"
    ACCURACY = "accuracy"
    """No plan within the SLO and the budget reaches the objective's accuracy floor."""
    UNKNOWN = "unknown"
    """Infeasible, but the time limit ran out before the binding family was found."""


@dataclass(frozen=True, slots=True)
class InfeasibleReason:
    binding: Binding
    message: str
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class Allocation:
    variant: str
    batch: int
    cpu: float
    instances: int
    replicas: int
    load_rps: float
    latency_ms: float
    queue_delay_ms: float
    role: str = "main"  # "main", "light" or "heavy"
    gpus: tuple[tuple[str, float], ...] = ()
    memory_gib: float = 0.0


@dataclass(frozen=True, slots=True)
class StagePlan:
    stage: str
    allocations: tuple[Allocation, ...]
    start_ms: float
    latency_ms: float
    accuracy: float
    threshold: float | None = None
    heavy_fraction: float | None = None
    cascade_row: int | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    status: SolveStatus
    stages: tuple[StagePlan, ...] = ()
    objective: float | None = None
    accuracy: float | None = None
    cost: float | None = None
    cpu: float | None = None
    gpus: tuple[tuple[str, float], ...] = ()
    latency_ms: float | None = None
    solver: str = ""
    reason: InfeasibleReason | None = None
    message: str = ""
    solve_ms: float | None = None

    def stage(self, name: str) -> StagePlan:
        for s in self.stages:
            if s.stage == name:
                return s
        raise KeyError(name)
