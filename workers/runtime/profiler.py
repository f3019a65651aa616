"""Measure a pipeline's variants through the real Triton and write the profiles the planner reads.

The planner chooses among (variant, batch, cores, instances) options whose latency and throughput come
from ``profile.points``; made-up numbers give made-up plans. `paretoserve profile` measures them on the
machine that will serve: per variant × CPU threads per instance × Triton instances × batch size,
through ``tritonserver`` and ``tritonclient`` like real traffic.

- Latency: sequential requests carrying ``batch`` images (one in flight, so no queueing: the service time
  of one batch), after a warm-up, with enough samples for a stable tail; p50/p90/p95/p99 are recorded
  and ``latencyMs`` is the pipeline's SLO percentile.
- Throughput: a closed loop of ``clients_per_instance × instances`` clients for a fixed time; images per
  second completed. The load generator shares the machine's cores with the server, as the router will.
- Models are loaded without dynamic batching while profiling, so Triton executes exactly the batch a
  request carries (checked against its ``exec_count``); threads change by reload, instances in place.
- A confidence cascade's rows are measured too: f(t) is the share of held-out digits whose light-model
  confidence is below t (the router escalates those) and ``quality`` the cascade's held-out accuracy.

Output: a YAML document with, per stage and variant, ``profile: {points: [...]}`` (the CRD's form) and
the full percentiles; `pipeline_document` writes the input manifest with these profiles in place.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from paretoserve.planner.spec import RouterKind, ServingPipeline, SpecError, parse_pipeline
from paretoserve.workers.models import ensure_trained, load_split
from paretoserve.workers.runtime.served import ServedSpec
from paretoserve.workers.runtime.serving import (
    GrpcModelControl,
    dedicated_cores,
    max_batch_size,
    model_specs,
    pipeline_models,
    running_triton,
)
from paretoserve.workers.triton.control import TritonControl
from paretoserve.workers.triton.cpu_quota import PERIOD_US, check_period, cpu_quota_group
from paretoserve.workers.triton.repository import TritonModelSpec, render_config

PERCENTILES = (50, 90, 95, 99)
DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(21))


@dataclass(frozen=True)
class ProfileGrid:
    """What to measure and how hard. `configurations` drops thread × instance products above the cores."""

    batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    threads: tuple[int, ...] = (1, 2)
    instances: tuple[int, ...] = (1, 2)
    cores: int = field(default_factory=dedicated_cores)
    warmup: int = 30
    latency_samples: int = 500
    """Sequential requests per point; 500 puts five samples above the p99."""
    throughput_seconds: float = 4.0
    clients_per_instance: int = 2
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    cpu_quotas: tuple[float, ...] = ()
    """CPU limits to measure under (cores, e.g. 0.25): Triton runs in a cgroup with that CFS quota, as in a pod
    with that limit. Empty: no quota, cores per replica = threads × instances."""
    cpu_period_us: int = PERIOD_US
    """The CFS period of those quotas: the kubelet's 100 ms for pods, `LOCAL_PERIOD_US` for `paretoserve up`."""

    def __post_init__(self) -> None:
        for name in ("batches", "threads", "instances"):
            values = getattr(self, name)
            if not values or any(v < 1 for v in values):
                raise ValueError(f"--{name}: give positive integers, got {list(values)}")
        try:
            check_period(self.cpu_period_us)
        except ValueError as exc:
            raise ValueError(f"--cpu-period-ms: {exc}") from None
        if any(not 0.01 <= q <= self.cores for q in self.cpu_quotas):
            raise ValueError(f"--cpu-quotas: give cores in [0.01, {self.cores}], got {list(self.cpu_quotas)}")
        if not self.configurations():
            raise ValueError(f"--threads/--instances: every threads × instances product exceeds {self.cores} cores")

    @classmethod
    def quick(cls, **overrides: Any) -> ProfileGrid:
        """Fewer samples and shorter loops (about a third of the time); noisier tails."""
        return cls(**{"warmup": 10, "latency_samples": 150, "throughput_seconds": 1.5, **overrides})

    def configurations(self) -> list[tuple[int, int, float | None]]:
        """(threads per instance, instances, CPU quota) that fit: threads × instances within the dedicated cores;
        under a quota, threads per instance within the quota rounded up (more threads than the quota's cores
        only contend), while instances, separate processes sharing the quota, are measured as asked."""
        if not self.cpu_quotas:
            return [(t, i, None) for t in self.threads for i in self.instances if t * i <= self.cores]
        return [(t, i, q) for q in self.cpu_quotas for t in self.threads for i in self.instances
                if t <= max(1, math.ceil(q)) and t * i <= self.cores]


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p90: float
    p95: float
    p99: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Percentiles:
        values = np.percentile(np.asarray(samples_ms, dtype=float), PERCENTILES)
        return cls(*(round(float(v), 3) for v in values))

    def at(self, percentile: int) -> float:
        return float(getattr(self, f"p{percentile}"))


@dataclass(frozen=True)
class PointMeasurement:
    """One measured (model, batch, threads, instances) point."""

    model: str
    batch: int
    threads: int
    instances: int
    latency: Percentiles
    """Sequential (unloaded) latency of one batch, ms."""
    loaded: Percentiles
    """Latency under the closed-loop throughput run (queueing included), ms."""
    throughput_rps: float
    """Images per second one replica (all its instances) completed."""
    samples: int
    executed_batch: float
    """Triton's inferences per execution during the run (should equal ``batch``)."""
    cpu_quota: float | None = None
    """The CFS quota Triton ran under (cores), or ``None``."""

    @property
    def cpu(self) -> float:
        """Cores per replica: the quota it ran under, else threads per instance × instances."""
        return self.cpu_quota if self.cpu_quota is not None else self.threads * self.instances

    def point(self, percentile: int) -> dict[str, Any]:
        """The CRD's ``profile.points`` entry."""
        return {"batch": self.batch, "cpu": self.cpu, "instances": self.instances,
                "latencyMs": self.latency.at(percentile), "throughputRps": self.throughput_rps}


@dataclass(frozen=True)
class ProfileResult:
    pipeline: str
    percentile: int
    measurements: Mapping[str, tuple[PointMeasurement, ...]]
    """Per Triton model."""
    cascade_rows: Mapping[str, tuple[dict[str, float], ...]]
    """Per stage with a confidence cascade: measured ``{threshold, heavyFraction, quality}`` rows."""
    machine: Mapping[str, Any]


def profiling_config(spec: TritonModelSpec) -> dict[str, Any]:
    """The model config used while profiling: no dynamic batcher, so a request's batch is the executed one."""
    config = render_config(spec)
    del config["dynamic_batching"]
    return config


def _slice(images: npt.NDArray[np.float32], index: int, batch: int) -> npt.NDArray[np.float32]:
    start = (index * batch) % max(1, len(images) - batch)
    return images[start:start + batch]


def measure_latency(control: TritonControl, model: str, images: npt.NDArray[np.float32], batch: int,
                    *, samples: int, warmup: int) -> Percentiles:
    """Sequential requests of ``batch`` images: the latency of one batch without queueing."""
    for i in range(warmup):
        control.infer(model, _slice(images, i, batch))
    latencies: list[float] = []
    for i in range(samples):
        started = time.perf_counter()
        control.infer(model, _slice(images, i, batch))
        latencies.append((time.perf_counter() - started) * 1e3)
    return Percentiles.of(latencies)


def measure_throughput(connect: Callable[[], TritonControl], model: str, images: npt.NDArray[np.float32],
                       batch: int, *, clients: int, seconds: float) -> tuple[float, Percentiles]:
    """A closed loop of ``clients`` threads for ``seconds``: (images/s, latency percentiles under load)."""
    barrier = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    stop_at: list[float] = []

    def client(slot: int) -> None:
        try:
            with connect() as control:
                barrier.wait(timeout=60)
                i = slot
                while time.perf_counter() < stop_at[0]:
                    started = time.perf_counter()
                    control.infer(model, _slice(images, i, batch))
                    latencies[slot].append((time.perf_counter() - started) * 1e3)
                    i += clients
        except BaseException as error:  # reported below; a thread must not die silently
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(slot,), daemon=True) for slot in range(clients)]
    for thread in threads:
        thread.start()
    stop_at.append(time.perf_counter() + seconds + 60.0)  # replaced once every client is connected
    with contextlib.suppress(threading.BrokenBarrierError):  # a failed client is reported below
        barrier.wait(timeout=60)
    started = time.perf_counter()
    stop_at[0] = started + seconds
    for thread in threads:
        thread.join(timeout=seconds + 120)
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{model} batch {batch}: a profiling client failed: {errors[0]!r}") from errors[0]
    done = [ms for per_client in latencies for ms in per_client]
    if not done:
        raise RuntimeError(f"{model} batch {batch}: no request completed in {seconds:.1f}s")
    return round(len(done) * batch / elapsed, 2), Percentiles.of(done)


def measure_cascade_rows(control: TritonControl, light: str, heavy: str, images: npt.NDArray[np.float32],
                         labels: npt.NDArray[np.int64], thresholds: Sequence[float]) -> tuple[dict[str, float], ...]:
    """f(t) and held-out accuracy of a confidence cascade: escalate when light confidence < t."""
    light_out = [control.infer(light, images[i:i + 32]) for i in range(0, len(images), 32)]
    heavy_out = [control.infer(heavy, images[i:i + 32]) for i in range(0, len(images), 32)]
    confidence = np.concatenate([o.confidence for o in light_out])
    light_label = np.concatenate([o.label for o in light_out])
    heavy_label = np.concatenate([o.label for o in heavy_out])
    return cascade_rows(confidence, light_label, heavy_label, labels, thresholds)


def cascade_rows(confidence: npt.NDArray[np.float32], light_label: npt.NDArray[np.int64],
                 heavy_label: npt.NDArray[np.int64], labels: npt.NDArray[np.int64],
                 thresholds: Sequence[float]) -> tuple[dict[str, float], ...]:
    """Rows ``{threshold, heavyFraction, quality}`` from per-image outputs (pure)."""
    rows = []
    for t in thresholds:
        escalate = confidence < t
        answer = np.where(escalate, heavy_label, light_label)
        rows.append({"threshold": float(t), "heavyFraction": round(float(escalate.mean()), 4),
                     "quality": round(float((answer == labels).mean()), 4)})
    return tuple(rows)


def model_inputs(spec: TritonModelSpec, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """What to send ``spec``'s model: the held-out digits when it reads images, else as many deterministic
    uniform rows of its input shape (an agent that reads its parents' outputs; its latency does not depend
    on the values)."""
    if tuple(spec.input_shape) == images.shape[1:]:
        return images
    rows = np.random.default_rng(0).random((len(images), *spec.input_shape))
    return np.ascontiguousarray(rows, dtype=np.float32)


def profile_pipeline(pipeline: ServingPipeline, grid: ProfileGrid, work_dir: Path,
                     progress: Callable[[str], None] = lambda _: None,
                     model_repository: Path | None = None) -> ProfileResult:
    """Start Triton with the pipeline's models (digits variants, or entries of ``model_repository``), measure
    every grid point of each, stop it. A stage that generates tokens is refused (`SpecError`): its profile is
    ``profile.tokens``, prefill and decode-step fits that ``paretoserve bench llm`` measures."""
    for i, stage in enumerate(pipeline.spec.stages):
        if stage.generation is not None:
            raise SpecError(f"spec.stages[{i}].generation", "profile measures fixed-cost models; a stage that "
                                                            "generates tokens takes profile.tokens from "
                                                            "`paretoserve bench llm`")
    catalog = ensure_trained()
    uses = pipeline_models(pipeline)
    split = load_split()
    images = np.ascontiguousarray(split.x_test, dtype=np.float32)
    served = model_specs(uses, catalog, max_batch=max_batch_size(pipeline, grid.batches), repository=model_repository)
    specs = {name: spec for name, spec in served.items() if isinstance(spec, TritonModelSpec)}
    percentile = int(pipeline.spec.slo.percentile.value)
    measurements: dict[str, tuple[PointMeasurement, ...]] = {}
    rows: dict[str, tuple[dict[str, float], ...]] = {}
    load_average = os.getloadavg()

    def load_plain(loader: GrpcModelControl, spec: ServedSpec) -> None:
        assert isinstance(spec, TritonModelSpec)  # only classifiers are profiled (checked above)
        loader.load_config(spec.name, profiling_config(spec))

    with contextlib.ExitStack() as stack:
        group = (stack.enter_context(cpu_quota_group(grid.cpu_quotas[0], period_us=grid.cpu_period_us))
                 if grid.cpu_quotas else None)
        server = stack.enter_context(running_triton(specs, work_dir, load=load_plain, progress=progress,
                                                    cpu_group=group))
        control = stack.enter_context(TritonControl(server.http_url, server.metrics_url))
        loader = stack.enter_context(GrpcModelControl(server.grpc_url))
        for stage in pipeline.spec.stages:
            cascade = stage.cascade
            if cascade is not None and cascade.router is RouterKind.CONFIDENCE:
                names = {v.name: v.triton_model for v in stage.variants}
                rows[stage.name] = measure_cascade_rows(control, names[cascade.light], names[cascade.heavy],
                                                        images, split.y_test, grid.thresholds)
                progress(f"{stage.name}: measured f(t) of {cascade.light} -> {cascade.heavy}")
        for use in uses:
            inputs = model_inputs(specs[use.model], images)
            points: list[PointMeasurement] = []
            for threads, instances, quota in grid.configurations():
                if group is not None and quota is not None:
                    group.set_cores(quota)  # what an in-place resize does to a pod's container
                spec = replace(specs[use.model], cpu_threads_per_instance=threads, instance_count=instances)
                load_plain(loader, spec)
                for batch in grid.batches:
                    latency = measure_latency(control, use.model, inputs, batch,
                                              samples=grid.latency_samples, warmup=grid.warmup)
                    before = control.metrics()[use.model]
                    rps, loaded = measure_throughput(
                        lambda: TritonControl(server.http_url), use.model, inputs, batch,
                        clients=grid.clients_per_instance * instances, seconds=grid.throughput_seconds)
                    delta = control.metrics()[use.model].since(before)
                    point = PointMeasurement(use.model, batch, threads, instances, latency, loaded, rps,
                                             grid.latency_samples, round(delta.average_batch_size, 3), quota)
                    points.append(point)
                    under = f" quota={quota:g}" if quota is not None else ""
                    progress(f"{use.model} b={batch} threads={threads} instances={instances}{under}: "
                             f"p{percentile} {latency.at(percentile):.2f} ms, {rps:.0f} img/s")
            measurements[use.model] = tuple(points)
    machine = {"cores": grid.cores, "cpuCount": os.cpu_count(), "loadAverageAtStart": [round(x, 2) for x in
                                                                                         load_average],
               **({"cpuQuotas": list(grid.cpu_quotas), "cpuPeriodMs": grid.cpu_period_us / 1000} if grid.cpu_quotas
                  else {})}
    return ProfileResult(pipeline.metadata.name, percentile, measurements, rows, machine)


def profile_document(pipeline: ServingPipeline, result: ProfileResult) -> dict[str, Any]:
    """The profile YAML: per stage and variant, ``profile.points`` plus the full measurements."""
    stages: dict[str, Any] = {}
    for stage in pipeline.spec.stages:
        variants: dict[str, Any] = {}
        for variant in stage.variants:
            measured = result.measurements.get(variant.triton_model, ())
            variants[variant.name] = {
                "tritonModel": variant.triton_model,
                "profile": {"points": [FlowMap(m.point(result.percentile)) for m in measured]},
                "measured": [FlowMap({"batch": m.batch, "threads": m.threads, "instances": m.instances,
                                      "latencyMs": FlowMap(vars(m.latency)), "loadedMs": FlowMap(vars(m.loaded)),
                                      "throughputRps": m.throughput_rps, "samples": m.samples,
                                      "executedBatch": m.executed_batch}) for m in measured],
            }
        entry: dict[str, Any] = {"variants": variants}
        if stage.name in result.cascade_rows:
            entry["cascadeRows"] = [FlowMap(r) for r in result.cascade_rows[stage.name]]
        stages[stage.name] = entry
    return {"pipeline": result.pipeline, "percentile": result.percentile, "machine": dict(result.machine),
            "stages": stages}


def pipeline_document(document: Mapping[str, Any], result: ProfileResult) -> dict[str, Any]:
    """The input manifest with measured profiles (and measured confidence-cascade rows) in place.

    Pure; the result is checked with `parse_pipeline` so a written pipeline always parses.
    """
    out = copy.deepcopy(dict(document))
    for stage in out["spec"]["stages"]:
        for variant in stage["variants"]:
            measured = result.measurements.get(variant["tritonModel"])
            if measured:
                variant["profile"] = {"points": [FlowMap(m.point(result.percentile)) for m in measured]}
        rows = result.cascade_rows.get(stage["name"])
        if rows and stage.get("cascade"):
            stage["cascade"]["rows"] = [FlowMap(r) for r in rows]
    parse_pipeline(out)
    return out


class FlowMap(dict[str, Any]):
    """A mapping written in YAML flow style (``{batch: 1, latencyMs: 1.2}``)."""


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


_Dumper.add_representer(FlowMap, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
_Dumper.add_representer(list, lambda d, v: d.represent_sequence(
    "tag:yaml.org,2002:seq", v, flow_style=bool(v) and all(isinstance(x, int | float | str) for x in v)))

GENERATED_HEADER = ("Measured by `", "on this machine (")
"""How the first two lines of a header written by `paretoserve profile` begin (see `kept_comments`)."""


def kept_comments(text: str) -> str:
    """The leading ``#`` comment block of a manifest, without a previous profiler header (pure)."""
    kept = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line[1:].strip()
        if not body.startswith(GENERATED_HEADER):
            kept.append(body)
    return "\n".join(kept)


def dump_yaml(document: Mapping[str, Any], header: str = "") -> str:
    """YAML text with a ``#`` comment header; points and measurements one per line."""
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.strip("\n").splitlines())
    return comment + yaml.dump(dict(document), Dumper=_Dumper, sort_keys=False, width=140, allow_unicode=True)
