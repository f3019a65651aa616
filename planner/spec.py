"""Typed model of the ServingPipeline custom resource, parsed once at the edge.

The CRD in `crds/servingpipeline.yaml` is the contract with the API server; this module is the same
contract for Python. Every entry point (CLI, simulator, local runtime, operator) parses a manifest with
`parse_pipeline`, so an invalid manifest fails the same way everywhere: a `SpecError` whose message
names the field path (``spec.stages[1].cascade.light: ...``). Field names are the CR's camelCase; the
attributes are snake_case. Cross-field rules mirror the CEL rules of the CRD.

Every field is bounded (lengths, list sizes, map sizes, numeric maxima; docs/api.md lists the bounds), and
so is the planner's option space: a stage may declare at most `MAX_OPTIONS_PER_STAGE` options and a
pipeline `MAX_OPTIONS_PER_PIPELINE` (`option_count`), so no accepted manifest can make the planner's
build step unbounded. `load_pipeline_text` bounds the YAML itself (size, nesting, alias expansion).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum, StrEnum
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from paretoserve.planner import bounds as lim
from paretoserve.planner.bounds import check_resource_keys, whole_gpus

API_GROUP = "paretoserve.io"
API_VERSION = "v1alpha1"
KIND = "ServingPipeline"
DNS_LABEL = lim.DNS_LABEL  # the contract's name patterns, public here too (bounds.py has the numbers)
TRITON_MODEL_NAME = lim.TRITON_MODEL_NAME
DEADLINE_HEADER_NAME = lim.DEADLINE_HEADER_NAME
RESOURCE_NAME = lim.RESOURCE_NAME

class SpecError(ValueError):
    """An invalid ServingPipeline; `path` is the offending field, e.g. ``spec.slo.latencyMs``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def field_error(subpath: str, message: str) -> ValueError:
    """A cross-field error that names a field below the validating model (decoded by `spec_error`)."""
    return ValueError(f"@{subpath}@ {message}")


_at = field_error  # the short name the validators below use


class StrictModel(BaseModel):
    # Strict like the API server: "750" is not a number and "yes" is not a boolean; enums stay lax
    # because YAML gives strings.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, strict=True,
        allow_inf_nan=False,
    )


Name = Annotated[str, Field(pattern=DNS_LABEL, min_length=1, max_length=63)]
TritonModel = Annotated[str, Field(pattern=TRITON_MODEL_NAME, min_length=1, max_length=64)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Latency = Annotated[float, Field(gt=0, le=lim.MAX_LATENCY_MS)]
Cores = Annotated[float, Field(gt=0, le=lim.MAX_CPU)]
Weight = Annotated[float, Field(ge=0, le=lim.MAX_WEIGHT)]
SignedScore = Annotated[float, Field(ge=-lim.MAX_WEIGHT, le=lim.MAX_WEIGHT)]
GpuCount = Annotated[int, BeforeValidator(whole_gpus), Field(ge=0, le=lim.MAX_GPUS_PER_REPLICA)]
GpuBudget = Annotated[int, BeforeValidator(whole_gpus), Field(ge=0, le=lim.MAX_GPU_BUDGET)]


def _extended_resource_keys(gpus: dict[str, int]) -> dict[str, int]:
    check_resource_keys(gpus)
    return gpus


ResourceKeys = AfterValidator(_extended_resource_keys)
"""GPU maps are keyed by extended-resource names (`nvidia.com/gpu`), never `cpu` or `memory`."""


class Percentile(int, Enum):
    P50 = 50
    P90 = 90
    P95 = 95
    P99 = 99


class DynamicSLO(StrictModel):
    """Per-request deadlines (Sponge): each request carries its own remaining budget."""

    header: Annotated[str, Field(pattern=DEADLINE_HEADER_NAME, min_length=1, max_length=64)] = (
        "x-paretoserve-deadline-ms")
    safety_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    """Share of the base SLO kept free when draining the queue in EDF order (Sponge uses 0.1)."""


class LateRequests(StrEnum):
    """What a pool does with a request that has waited so long that its own batch would end past the SLO."""

    SERVE = "serve"
    """Serve it late (Triton's default: no queue timeout)."""
    REFUSE = "refuse"
    """Refuse it at once (Triton's queue policy ``REJECT`` with that wait as its timeout), so that the capacity it
    would have taken serves requests that can still be on time."""


class SLO(StrictModel):
    latency_ms: Latency
    percentile: Annotated[Percentile, Field(strict=False)] = Percentile.P99
    dynamic: DynamicSLO | None = None
    late_requests: Annotated[LateRequests, Field(strict=False)] = LateRequests.SERVE


class AccuracyAggregation(StrEnum):
    PRODUCT = "product"
    SUM = "sum"
    NORMALIZED_SUM = "normalizedSum"
    RANK_SUM = "rankSum"


class Goal(StrEnum):
    FRONTIER = "frontier"
    LATENCY = "latency"


class Objective(StrictModel):
    """Weights of α·accuracy − β·cost − γ·batch − δ·reconfiguration (IPA, InfAdapter), or (goal ``latency``) the
    shortest end-to-end latency first and those weights among the plans that reach it; ``minAccuracy`` is a
    floor on the aggregated accuracy under either goal."""

    accuracy: Weight = 1.0
    cost: Weight = 0.01
    batch: Weight = 0.0
    reconfiguration: Weight = 0.0
    accuracy_aggregation: Annotated[AccuracyAggregation, Field(strict=False)] = AccuracyAggregation.PRODUCT
    normalize_cost: bool = False
    """Divide cost by the budget's total price (InfAdapter's Σn/C_max)."""
    goal: Annotated[Goal, Field(strict=False)] = Goal.FRONTIER
    min_accuracy: Weight | None = None
    """The least aggregated accuracy (under ``accuracyAggregation``) a plan may have."""
    prices: dict[str, Weight] = Field(default_factory=lambda: {"cpu": 1.0}, max_length=lim.MAX_MAP_KEYS)
    """Price per unit and replica of `cpu` (cores), `memory` (GiB) and GPU resources; absent ones cost 0."""

    @field_validator("prices")
    @classmethod
    def _price_keys(cls, prices: dict[str, float]) -> dict[str, float]:
        check_resource_keys(prices, lim.PRICED_RESOURCES)
        return prices


class Budget(StrictModel):
    cpu: Annotated[float, Field(ge=0, le=lim.MAX_CPU_BUDGET)] | None = None
    """Cores for the whole pipeline; unset means unbounded."""
    gpus: Annotated[dict[str, GpuBudget], ResourceKeys] = Field(default_factory=dict, max_length=lim.MAX_MAP_KEYS)
    """GPUs by resource name, e.g. ``{"nvidia.com/gpu": 8}``."""


class PredictorKind(StrEnum):
    LAST_VALUE = "lastValue"
    MOVING_MAX = "movingMax"
    EWMA = "ewma"
    LSTM = "lstm"


class Predictor(StrictModel):
    kind: Annotated[PredictorKind, Field(strict=False)] = PredictorKind.MOVING_MAX
    window_seconds: Annotated[int, Field(ge=1, le=86400)] = 120
    headroom: Annotated[float, Field(ge=0, le=10)] = 0.1


class QueueingModel(StrEnum):
    NONE = "none"
    ERLANG_C = "erlangC"


class Adaptation(StrictModel):
    interval_seconds: Annotated[float, Field(ge=1, le=3600)] = 10.0
    check_seconds: Annotated[float, Field(ge=1, le=3600)] = 2.0
    """Seconds between load checks: a load the running plan no longer covers re-plans at once instead of
    waiting for the interval (the fast path); a value at or above `interval_seconds` turns it off."""
    predictor: Predictor = Field(default_factory=Predictor)
    scale_down_stabilization: Annotated[int, Field(ge=0, le=100)] = 3
    """Consecutive lower plans required before resources are released (InfAdapter uses 4)."""
    target_utilization: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Share of a replica's profiled throughput the planner may use (InfAdapter's κ = 0.8)."""
    queueing_model: Annotated[QueueingModel, Field(strict=False)] = QueueingModel.NONE
    """none: an option carries throughput × targetUtilization, as IPA and InfAdapter plan; erlangC: also no
    more than where its queue's wait at the SLO percentile still fits in the SLO (`planner.queueing`)."""
    solver_time_limit_seconds: Annotated[float, Field(gt=0, le=lim.MAX_SOLVER_TIME_LIMIT_S)] = 5.0
    """Wall-clock limit of one whole solve: building the program, the solver and the diagnosis."""


class Resources(StrictModel):
    cpu: Cores = 1.0
    memory_gib: Annotated[float, Field(ge=0, le=lim.MAX_MEMORY_GIB)] = 1.0
    gpus: Annotated[dict[str, GpuCount], ResourceKeys] = Field(default_factory=dict, max_length=lim.MAX_MAP_KEYS)


class ProfilePoint(StrictModel):
    batch: Annotated[int, Field(ge=1, le=4096)]
    cpu: Cores | None = None
    """Cores per replica for this point; unset means the variant's `resources.cpu`."""
    instances: Annotated[int, Field(ge=1, le=64)] = 1
    latency_ms: Latency
    """Latency of one batch at the SLO percentile."""
    throughput_rps: Annotated[float, Field(gt=0, le=lim.MAX_THROUGHPUT_RPS)] | None = None
    """Sustained requests/s of one replica; unset means instances × batch / latency."""


class SpongeFit(StrictModel):
    """Sponge's l(b, c) = γ·b/c + δ·b + ε/c + η in milliseconds, evaluated on a grid."""

    gamma: SignedScore
    delta: SignedScore
    epsilon: SignedScore
    eta: SignedScore
    cpus: list[Cores] = Field(min_length=1, max_length=128)

    def latency_ms(self, batch: int, cpu: float) -> float:
        return self.gamma * batch / cpu + self.delta * batch + self.epsilon / cpu + self.eta


class LinearCapacity(StrictModel):
    """InfAdapter's capacity model: throughput = slope·cores + intercept at batch 1."""

    slope: SignedScore
    intercept: SignedScore
    latency_ms: Latency
    cpus: list[Cores] = Field(min_length=1, max_length=128)

    @model_validator(mode="after")
    def _positive_capacity(self) -> LinearCapacity:
        for c in self.cpus:
            if self.slope * c + self.intercept <= 0:
                raise ValueError(f"slope x cores + intercept must be a positive throughput at every listed core "
                                 f"count; it is {self.slope * c + self.intercept:g} at {c:g} cores")
        return self


class LinearMs(StrictModel):
    """A time in milliseconds linear in one count: ``interceptMs + slope × count``."""

    intercept_ms: Annotated[float, Field(ge=0, le=lim.MAX_LATENCY_MS)]
    slope_ms: Annotated[float, Field(ge=0, le=lim.MAX_LATENCY_MS)]

    def at(self, count: float) -> float:
        return self.intercept_ms + self.slope_ms * count


class TokenProfile(StrictModel):
    """A token-generating variant served with iteration-level batching (`bench llm` measures one): prefill time
    against prompt tokens, one decode step's time against the sequences in the batch, and its KV cache."""

    prefill: LinearMs
    """Prefill of one prompt: interceptMs + slopeMs × prompt tokens (visual tokens included)."""
    decode_step: LinearMs
    """One decode step of the running batch: interceptMs + slopeMs × sequences (the inter-token latency)."""
    kv_bytes_per_token: Annotated[int, Field(ge=1, le=2**40)]
    kv_budget_bytes: Annotated[float, Field(gt=0, le=2**50)]
    """KV-cache memory of one replica: it holds batch × (prompt + output tokens) × kvBytesPerToken at most."""
    request_overhead_ms: Annotated[float, Field(ge=0, le=lim.MAX_LATENCY_MS)] = 0.0
    """CPU a served request costs the replica beyond the engine's prefill and steps (the server's front end and
    its response per token), measured through the server; the planner counts it like prefill time."""

    def served_prefill_ms(self, prompt_tokens: float) -> float:
        """What one request's prefill costs the replica as served: the engine's prefill and the overhead."""
        return self.prefill.at(prompt_tokens) + self.request_overhead_ms


class Profile(StrictModel):
    points: list[ProfilePoint] = Field(default_factory=list, max_length=512)
    sponge: SpongeFit | None = None
    linear_capacity: LinearCapacity | None = None
    tokens: TokenProfile | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Profile:
        given = sum([bool(self.points), self.sponge is not None, self.linear_capacity is not None,
                     self.tokens is not None])
        if given != 1:
            raise ValueError("give exactly one of points, sponge, linearCapacity, tokens")
        return self


class Variant(StrictModel):
    name: Name
    triton_model: TritonModel
    accuracy: SignedScore | None = None
    """Accuracy or quality score; higher is better (use −WER, −FID). Required, except in a multi-task stage,
    where ``taskAccuracy`` gives it per task (read it through :meth:`Stage.accuracy_of`)."""
    task_accuracy: dict[str, SignedScore] | None = Field(default=None, max_length=lim.MAX_TASKS)
    """Multi-task stages only: the accuracy of each of the stage's tasks (a fused model, or the separate models)."""
    resources: Resources = Field(default_factory=Resources)
    profile: Profile
    load_time_seconds: Annotated[float, Field(ge=0, le=lim.MAX_LOAD_TIME_S)] = 0.0


class RouterKind(StrEnum):
    CONFIDENCE = "confidence"
    DISCRIMINATOR = "discriminator"
    PROMPT = "prompt"
    HYBRID = "hybrid"


PROMPT_ROUTERS = (RouterKind.PROMPT, RouterKind.HYBRID)
"""Routers that pre-route by a prompt score: every cascade row needs a `promptThreshold`, others none."""
DISCRIMINATOR_ROUTERS = (RouterKind.DISCRIMINATOR, RouterKind.HYBRID)
"""Routers that score the light model's output with `discriminatorModel`; the others take none."""


class CascadeRow(StrictModel):
    """One operating point of a cascade: f(t) for DiffServe, a Pareto row for HADIS."""

    threshold: Annotated[float, Field(ge=0, le=1)]
    heavy_fraction: Annotated[float, Field(ge=0, le=1)]
    """Share of the stage's requests the heavy model also serves (f(t), route ratio)."""
    quality: SignedScore | None = None
    """Quality of the cascade at this row; unset interpolates light→heavy accuracy by heavyFraction."""
    prompt_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    """The prompt router's threshold at this row (``preRouteThreshold`` of the router sidecar)."""
    pre_routed_fraction: Annotated[float, Field(ge=0, le=1)] | None = None
    """Share of the stage's requests the prompt router sends straight to the heavy model (part of
    heavyFraction); the light model serves only the rest. Unset: all of heavyFraction for the prompt router,
    none for the others."""

    @model_validator(mode="after")
    def _pre_routed_within_heavy(self) -> CascadeRow:
        if self.pre_routed_fraction is not None and self.pre_routed_fraction > self.heavy_fraction:
            raise _at("preRoutedFraction", "must be <= heavyFraction (pre-routed requests are heavy requests)")
        return self


class Cascade(StrictModel):
    light: Name
    heavy: Name
    router: Annotated[RouterKind, Field(strict=False)] = RouterKind.CONFIDENCE
    discriminator_model: TritonModel | None = None
    """Triton model that scores the light model's output (discriminator and hybrid routers); the light
    variant's workers serve it next to the light model."""
    scorer_model: TritonModel | None = None
    """Triton model that scores a generation stage's prompt (``PROMPT`` in, ``SCORE`` = P(light model wrong) out):
    required by the prompt router on a stage with ``generation``, refused otherwise; the light variant's workers
    serve it next to the light model."""
    threshold: Literal["auto"] | Annotated[float, Field(ge=0, le=1)] = "auto"
    rows: list[CascadeRow] = Field(min_length=1, max_length=256)

    @model_validator(mode="after")
    def _router_fields(self) -> Cascade:
        # What the router sidecar requires of the config the operator renders (workers/router/config.py).
        prompt = self.router in PROMPT_ROUTERS
        for k, row in enumerate(self.rows):
            if prompt and row.prompt_threshold is None:
                raise _at(f"rows[{k}].promptThreshold", f"the {self.router.value} router needs a promptThreshold "
                                                        "on every row")
            if not prompt and row.prompt_threshold is not None:
                raise _at(f"rows[{k}].promptThreshold", f"not used by the {self.router.value} router (only by "
                                                        "prompt and hybrid); remove it")
        if self.discriminator_model is not None and self.router not in DISCRIMINATOR_ROUTERS:
            raise _at("discriminatorModel", f"not used by the {self.router.value} router (only by discriminator "
                                            "and hybrid); remove it")
        return self


class StageBounds(StrictModel):
    min_replicas: Annotated[int, Field(ge=0, le=10000)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=10000)] = 100
    min_cpu: Annotated[float, Field(ge=0, le=lim.MAX_CPU)] | None = None
    max_cpu: Cores | None = None

    @model_validator(mode="after")
    def _ordered(self) -> StageBounds:
        if self.min_replicas > self.max_replicas:
            raise _at("minReplicas", "must be <= maxReplicas")
        if self.min_cpu is not None and self.max_cpu is not None and self.min_cpu > self.max_cpu:
            raise _at("minCpu", "must be <= maxCpu")
        return self


def variant_option_count(variant: Variant, batch_sizes: list[int]) -> int:
    """Options a variant declares: its points, batch sizes × cores (Sponge), or its core counts (linear)."""
    profile = variant.profile
    if profile.sponge is not None:
        return len(batch_sizes) * len(profile.sponge.cpus)
    if profile.linear_capacity is not None:
        return len(profile.linear_capacity.cpus)
    if profile.tokens is not None:
        return len(batch_sizes)
    return len(profile.points)


class Generation(StrictModel):
    """A token-generating stage: what a request costs in tokens, and its token-level SLOs."""

    prompt_tokens: Annotated[float, Field(gt=0, le=1e6)]
    """Mean prompt tokens per request (visual tokens included)."""
    output_tokens: Annotated[float, Field(gt=0, le=1e6)]
    """Mean generated tokens per request."""
    ttft_ms: Latency | None = None
    """Time to first token (the prefill) at most this; unset: only the end-to-end SLO bounds it."""
    itl_ms: Latency | None = None
    """Inter-token latency (one decode step of the running batch) at most this."""


class StageTask(StrictModel):
    """One task of a multi-task stage (several task models that read the same input, or a fused model)."""

    name: Annotated[str, Field(pattern=lim.TASK_NAME, min_length=1, max_length=31)]
    weight: Weight = 1.0
    """The task's share of the stage's accuracy: the stage scores a variant Σ weight · accuracy / Σ weight."""


class Stage(StrictModel):
    name: Name
    depends_on: list[Name] = Field(default_factory=list, max_length=32)
    inputs: list[Annotated[str, Field(pattern=lim.STAGE_INPUT, max_length=128)]] = Field(
        default_factory=lambda: [lim.REQUEST_INPUT], min_length=1, max_length=lim.MAX_STAGE_INPUTS)
    """What the stage's model reads, concatenated per row in this order: ``$request`` (the request's input),
    ``<stage>`` (that parent's ``PROBS``) or ``<stage>.<OUTPUT>``; every stage named is in ``dependsOn``."""
    variants: list[Variant] = Field(min_length=1, max_length=16)
    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default_factory=lambda: [1], min_length=1,
                                                                    max_length=32)
    max_queue_delay_ms: Annotated[float, Field(ge=0, le=lim.MAX_QUEUE_DELAY_MS)] = 10.0
    """Triton's dynamic-batching max queue delay; bounds the batch-formation wait."""
    load_multiplier: Annotated[float, Field(gt=0, le=lim.MAX_LOAD_MULTIPLIER)] = 1.0
    """Requests this stage receives per pipeline request (fan-out, repeated agent calls)."""
    multi_variant: bool = False
    """Serve several variants at once with a traffic split (InfAdapter)."""
    cascade: Cascade | None = None
    bounds: StageBounds = Field(default_factory=StageBounds)
    generation: Generation | None = None
    """A token-generating stage (every variant has a ``tokens`` profile); ``batchSizes`` are then the most
    sequences a replica runs at once (iteration-level batching: no waiting for a batch to fill)."""
    tasks: list[StageTask] | None = Field(default=None, min_length=1, max_length=lim.MAX_TASKS)
    """A multi-task stage: every request is answered for each task; each variant serves all of them (one fused
    model, or the separate task models as one Triton ensemble) and gives ``taskAccuracy`` instead of ``accuracy``."""

    @property
    def option_count(self) -> int:
        return sum(variant_option_count(v, self.batch_sizes) for v in self.variants)

    def _scorer_consistent(self, cascade: Cascade) -> None:
        """A prompt router on a generation stage scores each prompt with ``scorerModel``; nothing else uses one."""
        scored = cascade.router is RouterKind.PROMPT and self.generation is not None
        if scored and cascade.scorer_model is None:
            raise _at("cascade.scorerModel", "the prompt router on a stage with generation needs one (the Triton "
                                             "model scoring each prompt)")
        if not scored and cascade.scorer_model is not None:
            raise _at("cascade.scorerModel", "used only by the prompt router on a stage with generation; remove it")

    def accuracy_of(self, variant: Variant) -> float:
        """The score the planner maximises for ``variant``: its accuracy, or in a multi-task stage the weighted
        mean of its task accuracies."""
        if self.tasks is None or variant.task_accuracy is None:
            if variant.accuracy is None:
                raise ValueError(f"variant {variant.name!r} has no accuracy")  # refused by _consistent
            return variant.accuracy
        total = sum(task.weight for task in self.tasks)
        return sum(task.weight * variant.task_accuracy[task.name] for task in self.tasks) / total

    @model_validator(mode="after")
    def _consistent(self) -> Stage:
        names = [v.name for v in self.variants]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _at(f"variants[{i}].name", f"duplicate variant name {name!r}")
        if self.cascade is not None:
            for role in ("light", "heavy"):
                if getattr(self.cascade, role) not in names:
                    raise _at(f"cascade.{role}", f"must name a variant of this stage ({', '.join(names)})")
            if self.cascade.light == self.cascade.heavy:
                raise _at("cascade.heavy", "must differ from cascade.light")
            needs_model = self.cascade.router in DISCRIMINATOR_ROUTERS
            if needs_model and self.cascade.discriminator_model is None:
                raise _at("cascade.discriminatorModel", f"the {self.cascade.router.value} router needs one")
            self._scorer_consistent(self.cascade)
            if self.multi_variant:
                raise _at("multiVariant", "a stage is either a cascade or multiVariant, not both")
        self._tasks_consistent()
        for i, variant in enumerate(self.variants):
            if (variant.profile.tokens is None) != (self.generation is None):
                raise _at(f"variants[{i}].profile", "a stage with generation needs a tokens profile on every variant, "
                                                    "and a tokens profile needs the stage's generation")
        if self.name in self.depends_on:
            raise _at(f"dependsOn[{self.depends_on.index(self.name)}]", "a stage cannot depend on itself")
        for i, piece in enumerate(self.inputs):
            parent = piece.split(".", 1)[0]
            if piece != lim.REQUEST_INPUT and parent not in self.depends_on:
                raise _at(f"inputs[{i}]", f"reads stage {parent!r}, which is not in dependsOn")
        if self.option_count > lim.MAX_OPTIONS_PER_STAGE:
            raise _at("variants", f"the stage declares {self.option_count} options (profile points, batchSizes x "
                                  f"sponge.cpus, linearCapacity.cpus over its variants); at most "
                                  f"{lim.MAX_OPTIONS_PER_STAGE} per stage")
        for i, variant in enumerate(self.variants):
            fit = variant.profile.sponge
            if fit is None:
                continue
            for b, c in ((b, c) for b in self.batch_sizes for c in fit.cpus):
                if fit.latency_ms(b, c) <= 0:
                    raise _at(f"variants[{i}].profile.sponge",
                              "the fit must give a positive latency at every batch size and listed core count; "
                              f"it gives {fit.latency_ms(b, c):g} ms at batch {b}, {c:g} cores")
        return self


    def _tasks_consistent(self) -> None:
        if self.tasks is None:
            for i, variant in enumerate(self.variants):
                if variant.accuracy is None:
                    raise _at(f"variants[{i}].accuracy", "is required (taskAccuracy only in a stage with tasks)")
                if variant.task_accuracy is not None:
                    raise _at(f"variants[{i}].taskAccuracy", "needs the stage's tasks; give accuracy instead")
            return
        names = [task.name for task in self.tasks]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _at(f"tasks[{i}].name", f"duplicate task name {name!r}")
        if not any(task.weight > 0 for task in self.tasks):
            raise _at("tasks", "at least one task needs a weight > 0")
        if self.cascade is not None:
            raise _at("cascade", "a multi-task stage (tasks) cannot be a cascade")
        for i, variant in enumerate(self.variants):
            if variant.accuracy is not None:
                raise _at(f"variants[{i}].accuracy", "a stage with tasks scores variants by taskAccuracy; remove it")
            if variant.task_accuracy is None or set(variant.task_accuracy) != set(names):
                raise _at(f"variants[{i}].taskAccuracy", f"must give the accuracy of exactly the stage's tasks "
                                                         f"({', '.join(names)})")


class ServingPipelineSpec(StrictModel):
    slo: SLO
    objective: Objective = Field(default_factory=Objective)
    budget: Budget = Field(default_factory=Budget)
    adaptation: Adaptation = Field(default_factory=Adaptation)
    stages: list[Stage] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _dag(self) -> ServingPipelineSpec:
        names = [s.name for s in self.stages]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _at(f"stages[{i}].name", f"duplicate stage name {name!r}")
        known = set(names)
        for i, s in enumerate(self.stages):
            for j, d in enumerate(s.depends_on):
                if d not in known:
                    raise _at(f"stages[{i}].dependsOn[{j}]", f"unknown stage {d!r}")
        cycle = find_cycle({s.name: list(s.depends_on) for s in self.stages})
        if cycle:
            first = names.index(cycle[0])
            raise _at(f"stages[{first}].dependsOn", "dependsOn forms a cycle: " + " -> ".join(cycle))
        total = sum(s.option_count for s in self.stages)
        if total > lim.MAX_OPTIONS_PER_PIPELINE:
            raise _at("stages", f"the pipeline declares {total} options in all; "
                                f"at most {lim.MAX_OPTIONS_PER_PIPELINE}")
        return self


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: Name
    namespace: str | None = None


class ServingPipeline(StrictModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True
    )
    api_version: Literal["paretoserve.io/v1alpha1"]
    kind: Literal["ServingPipeline"]
    metadata: Metadata
    spec: ServingPipelineSpec


def find_cycle(edges: Mapping[str, list[str]]) -> list[str]:
    """Return one cycle of the dependsOn graph as a list of names, or [] if it is acyclic."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in edges:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


# Exact tags only: a prefix test would also drop fields such as `intervalSeconds` and `intercept`.
_UNION_TAGS = frozenset({"function-after", "function-before", "float", "int", "constrained-float", "constrained-int"})


def _field_path(loc: tuple[int | str, ...], root: ServingPipeline | dict[str, Any] | None) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in _UNION_TAGS or item.startswith("literal["):  # pydantic's union-member tags, not fields
            continue
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "<root>"


def parse_pipeline(document: Mapping[str, Any]) -> ServingPipeline:
    """Validate a ServingPipeline manifest; raise `SpecError` naming the first bad field."""
    if not isinstance(document, Mapping):
        raise SpecError("<root>", "a ServingPipeline must be a mapping")
    try:
        return ServingPipeline.model_validate(document)
    except ValidationError as exc:
        raise spec_error(exc) from None
    except RecursionError:  # a self-referential structure (YAML aliases) that load_yaml_documents did not see
        raise SpecError("<root>", "the document refers to itself") from None


def spec_error(exc: ValidationError) -> SpecError:
    """The first error of a strict model's validation as a `SpecError` naming the field (camelCase path; a
    validator may name a field below its own with a ``@sub.path@ message``)."""
    err = exc.errors()[0]
    path = _field_path(tuple(err["loc"]), None)
    message = str(err["msg"]).removeprefix("Value error, ")
    if message.startswith("@") and "@ " in message[1:]:
        subpath, message = message[1:].split("@ ", 1)
        path = f"{subpath}" if path == "<root>" else f"{path}{'' if subpath.startswith('[') else '.'}{subpath}"
    return SpecError(path, message)


_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: faster, nesting <= 1000


def load_yaml_documents(text: str) -> list[Any]:
    """The non-empty documents of a YAML text, bounded in size, nesting and alias expansion."""
    if len(text) > lim.MAX_MANIFEST_BYTES:
        raise SpecError("<yaml>", f"the text is larger than {lim.MAX_MANIFEST_BYTES} bytes")
    try:
        docs = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]  # noqa: S506 - a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SpecError("<yaml>", f"not valid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.YAMLError as exc:
        raise SpecError("<yaml>", f"not valid YAML: {exc}".splitlines()[0]) from None
    except RecursionError:
        raise SpecError("<yaml>", "not valid YAML: nested too deeply") from None
    try:
        for doc in docs:
            lim.check_expansion(doc)
    except ValueError as exc:
        raise SpecError("<yaml>", str(exc)) from None
    return docs


def pipeline_document(docs: list[Any]) -> Any:
    """The first ServingPipeline among YAML documents (else the first document); SpecError if none."""
    for doc in docs:
        if isinstance(doc, Mapping) and doc.get("kind") == KIND:
            return doc
    if docs:
        return docs[0]
    raise SpecError("<root>", "the document is empty")


def load_pipeline_text(text: str) -> ServingPipeline:
    """Parse the first ServingPipeline document of a YAML text."""
    return parse_pipeline(pipeline_document(load_yaml_documents(text)))
