"""What one Triton model of a pipeline is, and how `paretoserve up` writes, loads and changes it.

One ``tritonserver`` serves every model of a pipeline, and they come in three kinds that Triton configures
differently:

- a fixed-cost classifier (`TritonModelSpec`, the ONNX backend model of ``workers/triton``): a digits variant, a
  discriminator, or an entry ``paretoserve fuse`` / ``agents build`` wrote; the plan sets its instances, CPU
  threads per instance and dynamic batching;
- a token-generating model (`GenerationModel`, the decoupled Python backend of ``workers/llm/serving.py``): its
  scheduler batches sequences itself, so the plan's batch becomes the model's ``max_sequences`` (the most
  sequences one instance runs at once) and its replicas become instances (each instance one scheduler, one
  replica's worth of KV caches);
- a prompt scorer (`ScorerModel`, ``workers/llm/scorer.py``): the model a ``router: prompt`` cascade asks before
  choosing the model; it is not in the plan and stays loaded with its own settings while the cascade is.

`served_config`, `write_served` and `with_settings` are the one place that tells the kinds apart; the resolver
(`serving.model_specs`), the actuator and the Triton launcher call them and never look at the kind themselves.

**Every change of a generation model is a full reload.** Measured with Triton 2.51 and streams in flight: an
in-place instance *removal* (Triton's fast path when only ``instance_group`` changed) left a stream stalled
mid-answer and Triton's model control waiting for it forever (every later load timed out; 2 of 3 runs that
removed an instance after an in-place addition). A reload instead starts new instances beside the old
ones; the old instances finish the streams they run (every answer complete, measured with 8 streams and 0.7 s per
scheduler iteration) and take new requests until the new ones are ready, then retire. So the instance count is
also written into the model's ``parameters`` (`PARAM_INSTANCES`, read by nobody): Triton then sees more than an
``instance_group`` change and reloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from paretoserve.planner.queueing import timeout_to_load
from paretoserve.workers.llm.scorer import ScorerServingSpec, render_scorer_config, write_scorer_model
from paretoserve.workers.llm.serving import LLMServingSpec, render_llm_config, write_llm_model
from paretoserve.workers.triton.repository import (
    InvalidSpecError,
    ProtoMap,
    TritonModelSpec,
    render_config,
    write_model,
)

PARAM_INSTANCES = "instances"
"""A generation model's instance count, repeated in its parameters so that a change of it is a reload."""


@dataclass(frozen=True)
class GenerationModel:
    """A token-generating model served by the decoupled Python backend, with ``instance_count`` schedulers."""

    spec: LLMServingSpec
    instance_count: int = 1

    def __post_init__(self) -> None:
        if self.instance_count < 1:
            raise InvalidSpecError("GenerationModel", "instance_count", f"must be >= 1, got {self.instance_count}")

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class ScorerModel:
    """A prompt scorer served from the fitted weights in ``weights_file`` (copied into its repository entry)."""

    spec: ScorerServingSpec
    weights_file: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def instance_count(self) -> int:
        return self.spec.instances


ServedSpec = TritonModelSpec | GenerationModel | ScorerModel
"""One Triton model of a pipeline, of any kind."""


@dataclass(frozen=True)
class ModelSettings:
    """Desired settings of one Triton model; ``None`` keeps the running value (idle variants). A kind ignores the
    settings it has no knob for (a generation model has no threads or dynamic batching, a classifier no
    ``max_sequences``)."""

    model: str
    instances: int
    threads: int | None = None
    preferred_batch: tuple[int, ...] | None = None
    max_queue_delay_us: int | None = None
    capped: bool = False
    """True when the plan asked for more instances or threads than the machine allows."""
    max_sequences: int | None = None
    """A generation model's most sequences at once per instance (the plan's batch)."""
    queue_timeout_us: int | None = None
    """Refuse a request after waiting this long (Triton's queue policy ``REJECT``; 0: never)."""

    @property
    def batch(self) -> int | None:
        """The batch this model runs at (a generation model's ``max_sequences``, else the preferred batch)."""
        if self.max_sequences is not None:
            return self.max_sequences
        return None if self.preferred_batch is None else max(self.preferred_batch or (1,))


def served_config(spec: ServedSpec) -> dict[str, Any]:
    """The model's ``ModelConfig`` (protobuf JSON names): the load API's config override."""
    if isinstance(spec, GenerationModel):
        config = render_llm_config(spec.spec)
        config["instance_group"] = [{**group, "count": spec.instance_count} for group in config["instance_group"]]
        config["parameters"] = ProtoMap({**config["parameters"],
                                         PARAM_INSTANCES: {"string_value": str(spec.instance_count)}})
        return config
    if isinstance(spec, ScorerModel):
        return render_scorer_config(spec.spec)
    return render_config(spec)


def write_served(repository: Path, specs: Mapping[str, ServedSpec]) -> Path:
    """Write every model's entry into ``repository`` (created if missing). Its ``config.pbtxt`` is a placeholder:
    `paretoserve up` loads each model with `served_config` as the override."""
    names = [spec.name for spec in specs.values()]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidSpecError("ServedSpec", "name", f"duplicate model names {duplicates}")
    repository.mkdir(parents=True, exist_ok=True)
    for spec in specs.values():
        if isinstance(spec, GenerationModel):
            write_llm_model(repository, spec.spec)
        elif isinstance(spec, ScorerModel):
            write_scorer_model(repository, spec.weights_file, spec.spec)
        else:
            write_model(repository, spec)
    return repository


def with_settings(spec: ServedSpec, settings: ModelSettings) -> ServedSpec:
    """``spec`` with the settings its kind has knobs for (``None`` fields keep the running value)."""
    if isinstance(spec, GenerationModel):
        sequences = spec.spec.max_sequences if settings.max_sequences is None else settings.max_sequences
        return GenerationModel(replace(spec.spec, max_sequences=sequences), settings.instances)
    if isinstance(spec, ScorerModel):
        return ScorerModel(replace(spec.spec, instances=settings.instances), spec.weights_file)
    preferred = spec.preferred_batch_sizes if settings.preferred_batch is None else settings.preferred_batch
    desired = replace(
        spec,
        instance_count=settings.instances,
        cpu_threads_per_instance=spec.cpu_threads_per_instance if settings.threads is None else settings.threads,
        preferred_batch_sizes=tuple(b for b in preferred if b <= spec.max_batch_size),
        max_queue_delay_us=spec.max_queue_delay_us if settings.max_queue_delay_us is None
        else settings.max_queue_delay_us,
    )
    if settings.queue_timeout_us is None:
        return desired
    policy = spec.queue_policy
    loaded = policy.timeout_us if policy.timeout_action == "REJECT" else 0
    timeout = timeout_to_load(loaded, settings.queue_timeout_us, reloads=change_kind(spec, desired) == "reload")
    return replace(desired, queue_policy=replace(policy, timeout_us=timeout, timeout_action="REJECT"))


def change_kind(current: ServedSpec, desired: ServedSpec) -> str:
    """``none``, ``instances`` (an in-place Triton update) or ``reload``; a generation model always reloads (see the
    module notes)."""
    if current == desired:
        return "none"
    if isinstance(current, GenerationModel):
        return "reload"
    if isinstance(current, TritonModelSpec) and isinstance(desired, TritonModelSpec):
        same = replace(current, instance_count=desired.instance_count) == desired
    elif isinstance(current, ScorerModel) and isinstance(desired, ScorerModel):
        same = replace(current, spec=replace(current.spec, instances=desired.spec.instances)) == desired
    else:
        same = False
    return "instances" if same else "reload"
