"""Apply plans on one machine: Triton instances, threads and batching, router weights and thresholds.

On a cluster a plan becomes pods (replicas) with CPU requests; locally the same plan becomes settings of
one ``tritonserver`` and of the router, so the one `ControlLoop` drives both worlds unchanged:

| plan | local form |
|---|---|
| replicas × instances of a variant | Triton ``instance_group.count`` of its model (capped at the cores) |
| cores per replica | CPU threads per instance = cores / instances (never more threads than cores) |
| batch size | dynamic batching ``preferred_batch_size`` and the stage's max queue delay |
| batch size of a generation stage | the model's ``max_sequences`` (sequences one instance runs at once; a reload) |
| cascade threshold, traffic split | router ``POST /admin/config`` (threshold, variant weights) |
| the plan's cores (Σ replicas × cores) | the CFS quota of Triton's cgroup, when `up` could make one |

`model_settings` and the router rendering (workers/router/plan_rendering.py) are pure (unit-tested);
`LocalActuator` applies their result in an order that never drops requests: models that grow first, then the
router, then models that shrink; the CPU quota is raised before all of it and lowered after. Every
variant stays loaded with at least one instance, and a cascade's discriminator or prompt scorer with it, so a
routing change never meets an unloaded model. An instance-count-only change of a classifier is an in-place
Triton update (~2 s); anything else, and every change of a generation model (`served`), is a reload that keeps
serving until the new instances are ready.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import httpx

from paretoserve.planner.model import Plan
from paretoserve.planner.spec import LateRequests, ServingPipeline
from paretoserve.workers.plan_rendering import (
    discriminator_model,
    router_config,
    router_stages,
    router_update,
    scorer_model,
    triton_knobs,
    variant_models,
)
from paretoserve.workers.runtime.served import ModelSettings, ServedSpec, change_kind, with_settings
from paretoserve.workers.triton.repository import TritonModelSpec


@dataclass(frozen=True)
class LocalLimits:
    """What one machine can give: cores for all instances, and an instance cap per model."""

    cores: int
    max_instances_per_model: int

    def __post_init__(self) -> None:
        if self.cores < 1:
            raise ValueError(f"cores: must be >= 1, got {self.cores}")
        if self.max_instances_per_model < 1:
            raise ValueError(f"max_instances_per_model: must be >= 1, got {self.max_instances_per_model}")


def model_settings(pipeline: ServingPipeline, plan: Plan, limits: LocalLimits) -> dict[str, ModelSettings]:
    """Per Triton model, the plan's per-pod knobs (`plan_rendering.triton_knobs`, the same rule a Kubernetes
    pod gets) on one machine: one Triton serves every replica, so instances = Σ replicas × instances, and a
    queue timeout (``slo.lateRequests: refuse``) is the loosest of its allocations'.

    A generation stage's model batches sequences itself: its replicas become instances (one scheduler each) and
    the batch of its allocations that run replicas becomes its ``max_sequences`` (kept while it runs none); it has
    no threads or dynamic batching to set."""
    wanted: dict[str, dict[str, Any]] = {}
    stages = {s.name: s for s in pipeline.spec.stages}
    for sp in plan.stages:
        stage = stages[sp.stage]
        variants = {v.name: v for v in stage.variants}
        for a in sp.allocations:
            variant = variants[a.variant]
            knobs = triton_knobs(pipeline.spec.slo, stage, variant, a)
            entry = wanted.setdefault(variant.triton_model, {"instances": 0, "threads": 1, "batch": None, "delay": 0,
                                                             "generation": stage.generation is not None,
                                                             "sequences": None, "timeouts": []})
            entry["instances"] += a.replicas * knobs.instances
            entry["threads"] = max(entry["threads"], knobs.threads)
            if knobs.preferred_batch is not None:
                entry["batch"] = max(entry["batch"] or 1, knobs.preferred_batch)
            entry["delay"] = max(entry["delay"], knobs.max_queue_delay_us)
            if a.replicas > 0:
                entry["sequences"] = max(entry["sequences"] or 1, a.batch)
                entry["timeouts"].append(knobs.queue_timeout_us)
    refuse = pipeline.spec.slo.late_requests is LateRequests.REFUSE
    out: dict[str, ModelSettings] = {}
    for stage in pipeline.spec.stages:
        for model in variant_models(stage).values():
            out.setdefault(model, ModelSettings(model, instances=1))
        for extra in (discriminator_model(stage), scorer_model(stage)):
            if extra is not None:
                out.setdefault(extra, ModelSettings(extra, instances=1))
    for model, entry in wanted.items():
        instances = max(1, min(int(entry["instances"]), limits.max_instances_per_model))
        if entry["generation"]:
            out[model] = ModelSettings(model, instances=instances, max_sequences=entry["sequences"],
                                       capped=instances < entry["instances"])
            continue
        threads = max(1, min(int(entry["threads"]), limits.cores // instances))
        out[model] = ModelSettings(
            model, instances=instances, threads=threads,
            preferred_batch=(entry["batch"],) if entry["batch"] is not None else (),
            max_queue_delay_us=int(entry["delay"]),
            capped=instances < entry["instances"] or threads < entry["threads"],
            queue_timeout_us=_loosest(entry["timeouts"]) if refuse else None,
        )
    return out


def _loosest(timeouts: Sequence[int]) -> int | None:
    """One Triton model serving several allocations waits as long as the most patient of them (0: never refuses);
    None (keep the running value) when none runs replicas."""
    if not timeouts:
        return None
    return 0 if 0 in timeouts else max(timeouts)


def desired_spec(spec: ServedSpec, settings: ModelSettings) -> ServedSpec:
    """``spec`` with the settings applied (``None`` fields keep the running value; `served.with_settings`)."""
    return with_settings(spec, settings)


class RouterAdmin:
    """The router's admin API (``/admin/config``) with one long-lived client and explicit timeouts.

    ``base_url`` is the router's *admin* listener; ``token`` the bearer token of its ``--admin-token-file``.
    """

    def __init__(self, base_url: str, *, token: str | None = None, timeout_s: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token is not None else None
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 2.0)), transport=transport,
                                    headers=headers)

    def get_config(self) -> dict[str, Any]:
        response = self._client.get(f"{self.base_url}/admin/config")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def update(self, partial: Mapping[str, Any]) -> None:
        response = self._client.post(f"{self.base_url}/admin/config", json=dict(partial))
        if response.status_code >= 400:
            raise RuntimeError(f"router rejected the config update ({response.status_code}): {response.text[:300]}")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RouterAdmin:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class AppliedRecord:
    """One actuation: when, which plan, what changed and how long it took (the run's reconfiguration log)."""

    time: float
    plan: Plan
    settings: Mapping[str, ModelSettings]
    router: dict[str, Any]
    """The live update sent to the router."""
    triton_changes: list[tuple[str, str, float]] = field(default_factory=list)
    """(model, ``instances``/``reload``, seconds)."""
    router_seconds: float = 0.0
    error: str | None = None
    cpu_quota: float | None = None
    """Triton's CPU quota after this actuation (cores), or ``None`` when none is enforced."""

    @property
    def instances(self) -> dict[str, int]:
        return {m: s.instances for m, s in self.settings.items()}

    @property
    def threads(self) -> dict[str, int | None]:
        return {m: s.threads for m, s in self.settings.items()}


class ModelLoader(Protocol):
    """What the actuator needs from Triton (`GrpcModelControl`: any kind of model, `served.served_config`)."""

    def apply_spec(self, spec: ServedSpec) -> None: ...


class CoreLimit(Protocol):
    """Triton's CPU quota (`CpuQuotaGroup`): the local form of a pod's CPU limit."""

    def set_cores(self, cores: float) -> None: ...


class LocalActuator:
    """The `Actuator` of `paretoserve up`. Used from the control-loop thread only (clients are not thread-safe)."""

    def __init__(self, pipeline: ServingPipeline, specs: Mapping[str, ServedSpec], control: ModelLoader,
                 router: RouterAdmin, limits: LocalLimits, *, cores: CoreLimit | None = None,
                 on_apply: Callable[[AppliedRecord], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._pipeline = pipeline
        self._specs = dict(specs)
        self._control = control
        self._router = router
        self._limits = limits
        self._on_apply = on_apply
        self._clock = clock
        self._cores = cores
        self._quota: float | None = None
        self._applied: Plan | None = None
        self.records: list[AppliedRecord] = []

    def applied(self) -> Plan | None:
        return self._applied

    def running_specs(self) -> dict[str, ServedSpec]:
        return dict(self._specs)

    def batching_delay_ms(self, model: str) -> float:
        """The dynamic-batching wait configured for ``model`` (part of Triton's queue time by design)."""
        spec = self._specs.get(model)
        if not isinstance(spec, TritonModelSpec) or not spec.preferred_batch_sizes:
            return 0.0  # a generation model's requests wait in its own scheduler, not in a batching delay
        return spec.max_queue_delay_us / 1000.0

    def hold(self, plan: Plan | None, *, now: float) -> None:
        """One Triton and one router that this process started: their settings change only through `apply`."""

    def apply(self, plan: Plan, *, now: float) -> None:
        """Grow models, update the router, shrink models; the plan counts as applied only if all succeed.

        Triton's CPU quota becomes the plan's cores, as a pod's limit would: raised before anything moves and
        lowered last. While Triton models change it is the old plus the new cores, as on a cluster where new
        pods start on their own CPU beside the old ones (loading a Python-backend instance costs about a
        CPU-second: under the old quota alone it would starve the instances that serve)."""
        settings = model_settings(self._pipeline, plan, self._limits)
        desired = {m: desired_spec(self._specs[m], s) for m, s in settings.items() if m in self._specs}
        grow = [m for m in desired if desired[m].instance_count >= self._specs[m].instance_count]
        shrink = [m for m in desired if m not in grow]
        update = router_update(self._pipeline.spec, plan)
        changes: list[tuple[str, str, float]] = []
        router_s = 0.0
        error: str | None = None
        quota = plan.cpu if self._cores is not None and plan.cpu else None
        try:
            if quota is not None:  # both the running and the new instances have their cores while models change
                moving = any(change_kind(self._specs[m], desired[m]) != "none" for m in desired)
                self._set_quota(quota + (self._quota or 0.0) if moving else max(quota, self._quota or 0.0))
            for model in grow:
                changes += self._change(model, desired[model])
            started = self._clock()
            self._router.update(update)
            router_s = self._clock() - started
            for model in shrink:
                changes += self._change(model, desired[model])
            if quota is not None:
                self._set_quota(quota)
            self._applied = plan
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            record = AppliedRecord(now, plan, settings, update, changes, round(router_s, 3), error, self._quota)
            self.records.append(record)
            if self._on_apply is not None:
                self._on_apply(record)

    def _set_quota(self, cores: float) -> None:
        if cores != self._quota:
            assert self._cores is not None
            self._cores.set_cores(cores)
            self._quota = cores

    def _change(self, model: str, spec: ServedSpec) -> list[tuple[str, str, float]]:
        kind = change_kind(self._specs[model], spec)
        if kind == "none":
            return []
        started = self._clock()
        self._control.apply_spec(spec)
        self._specs[model] = spec
        return [(model, kind, round(self._clock() - started, 3))]


__all__ = ["CoreLimit", "LocalActuator", "LocalLimits", "ModelSettings", "change_kind", "desired_spec",
           "model_settings", "router_config", "router_stages", "router_update"]
