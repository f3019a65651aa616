"""Measure the variants through a real Triton server: start-up, latency, and instance-count changes.

The planner needs per-variant latency and the cost of reconfiguration; this module produces those
numbers on the current machine (``python -m paretoserve.research.benchmarks.triton``) and, with
``--metrics-out``, saves the server's Prometheus text (the unit-test fixture of the metrics parser
was captured this way). Latency is client-observed (HTTP round trip included) and, separately,
Triton's own per-execution compute time taken from the metrics counters.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tritonclient.utils import InferenceServerException

from paretoserve.workers.models import ensure_trained, load_split
from paretoserve.workers.triton.control import TritonControl
from paretoserve.workers.triton.repository import (
    QueuePolicy,
    TritonModelSpec,
    spec_from_cached_variant,
    write_repository,
)
from paretoserve.workers.triton.server import TritonServer, TritonServerConfig

DEFAULT_VARIANTS = ("tiny_linear", "mlp_small", "cnn_small", "cnn_large", "discriminator")


@dataclass(frozen=True)
class LatencyStats:
    """Client-observed latency of ``requests`` sequential requests of ``batch_size`` images."""

    model: str
    batch_size: int
    requests: int
    p50_ms: float
    p95_ms: float
    server_compute_ms: float
    """Triton's compute-infer time per execution over the same requests (model code only)."""


@dataclass(frozen=True)
class TimedChange:
    description: str
    seconds: float


def _percentile(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def measure_latency(
    control: TritonControl,
    model: str,
    images: npt.NDArray[np.float32],
    *,
    batch_size: int = 1,
    requests: int = 200,
    warmup: int = 20,
) -> LatencyStats:
    """Sequential requests (one in flight), so no queueing: the latency floor of ``model``."""
    rows = len(images)
    for i in range(warmup):
        control.infer(model, images[(i * batch_size) % (rows - batch_size) :][:batch_size])
    before = control.metrics()[model]
    samples: list[float] = []
    for i in range(requests):
        batch = images[(i * batch_size) % (rows - batch_size) :][:batch_size]
        started = time.perf_counter()
        control.infer(model, batch)
        samples.append((time.perf_counter() - started) * 1e3)
    delta = control.metrics()[model].since(before)
    compute_ms = delta.compute_infer_duration_us / delta.exec_count / 1e3 if delta.exec_count else 0.0
    return LatencyStats(
        model=model,
        batch_size=batch_size,
        requests=requests,
        p50_ms=round(statistics.median(samples), 3),
        p95_ms=round(_percentile(samples, 95), 3),
        server_compute_ms=round(compute_ms, 3),
    )


def _timed(description: str, action: Callable[[], object]) -> TimedChange:
    started = time.perf_counter()
    action()
    return TimedChange(description, round(time.perf_counter() - started, 3))


def provoke_queue_timeouts(
    control: TritonControl, spec: TritonModelSpec, image: npt.NDArray[np.float32], requests: int = 3
) -> int:
    """Serve ``spec`` with a 1 µs queue timeout behind a 50 ms batching delay, send ``requests``.

    Each request times out in the queue and is rejected (Triton counts it under
    ``nv_inference_request_failure{reason="REJECTED"}``); the original spec is restored after.
    Returns how many requests were rejected.
    """
    strict = replace(spec, max_queue_delay_us=50_000, queue_policy=QueuePolicy(timeout_us=1, timeout_action="REJECT"))
    control.apply_spec(strict)
    rejected = 0
    try:
        for _ in range(requests):
            try:
                control.infer(spec.name, image)
            except InferenceServerException:
                rejected += 1
    finally:
        control.apply_spec(spec)
    return rejected


def measure_threads(
    control: TritonControl, spec: TritonModelSpec, images: npt.NDArray[np.float32], counts: Sequence[int] = (1, 2)
) -> list[LatencyStats]:
    """Batch-32 latency of ``spec`` at each CPU-thread count per instance (vertical scaling)."""
    stats = []
    try:
        for threads in counts:
            control.apply_spec(replace(spec, cpu_threads_per_instance=threads))
            measured = measure_latency(control, spec.name, images, batch_size=32, requests=100)
            stats.append(replace(measured, model=f"{spec.name}@{threads}threads"))
    finally:
        control.apply_spec(spec)
    return stats


def run(variants: Sequence[str], work_dir: Path, scale_model: str, metrics_out: Path | None) -> dict[str, object]:
    """Start a server with ``variants``, measure, stop it; return a JSON-able report."""
    catalog = ensure_trained()
    specs: list[TritonModelSpec] = [spec_from_cached_variant(catalog.variant_dir(v)) for v in variants]
    repository = write_repository(work_dir / "repository", specs)
    split = load_split()
    started = time.perf_counter()
    config = TritonServerConfig(model_repository=repository, models=tuple(variants), work_dir=work_dir)
    with TritonServer(config) as server:
        startup_s = round(time.perf_counter() - started, 3)
        with TritonControl(server.http_url, server.metrics_url) as control:
            latency = [
                measure_latency(control, variant, split.x_test, batch_size=batch)
                for batch in (1, 32)
                for variant in variants
            ]
            changes = [
                _timed(
                    f"{scale_model} 1->2 (first override after file load)",
                    lambda: control.set_instance_count(scale_model, 2),
                ),
                _timed(f"{scale_model} 2->1", lambda: control.set_instance_count(scale_model, 1)),
                _timed(f"{scale_model} 1->2", lambda: control.set_instance_count(scale_model, 2)),
                _timed(f"{scale_model} 2->1 again", lambda: control.set_instance_count(scale_model, 1)),
            ]
            threads = measure_threads(control, specs[variants.index(scale_model)], split.x_test)
            rejected = provoke_queue_timeouts(control, specs[0], split.x_test[:1])
            metrics_text = control.metrics_text()
    if metrics_out is not None:
        metrics_out.write_text(metrics_text)
    return {
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "startup_s": startup_s,
        "accuracy": {v: catalog[v].heldout_accuracy for v in variants},
        "latency": [asdict(stats) for stats in latency],
        "instance_changes": [asdict(change) for change in changes],
        "cpu_threads_batch32": [asdict(stats) for stats in threads],
        "queue_timeouts_rejected": rejected,
        "log": str(server.log_path),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--scale-model", default="cnn_large")
    parser.add_argument("--metrics-out", type=Path)
    parser.add_argument("--work-dir", type=Path)
    args = parser.parse_args(argv)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="paretoserve-bench-"))
    report = run(args.variants, work_dir, args.scale_model, args.metrics_out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
