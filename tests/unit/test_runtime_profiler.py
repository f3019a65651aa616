"""The profiler's pure parts: grid, percentiles, f(t) rows, the profile and pipeline documents."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import numpy as np
import pytest
import yaml

from paretoserve.planner.spec import SpecError, load_pipeline_text, parse_pipeline
from paretoserve.workers.runtime.profiler import (
    Percentiles,
    PointMeasurement,
    ProfileGrid,
    ProfileResult,
    cascade_rows,
    dump_yaml,
    kept_comments,
    measure_latency,
    measure_throughput,
    pipeline_document,
    profile_document,
    profiling_config,
)
from paretoserve.workers.triton.repository import TritonModelSpec

DOC: dict[str, Any] = {
    "apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline", "metadata": {"name": "digits"},
    "spec": {"slo": {"latencyMs": 50, "percentile": 95}, "stages": [{
        "name": "classify", "batchSizes": [1, 4],
        "variants": [
            {"name": "tiny", "tritonModel": "tiny_linear", "accuracy": 0.88,
             "profile": {"points": [{"batch": 1, "latencyMs": 99}]}},
            {"name": "large", "tritonModel": "cnn_large", "accuracy": 0.99,
             "profile": {"sponge": {"gamma": 1, "delta": 1, "epsilon": 1, "eta": 1, "cpus": [1]}}}],
        "cascade": {"light": "tiny", "heavy": "large", "rows": [{"threshold": 0.5, "heavyFraction": 0.5}]},
    }]},
}


def point(model: str, batch: int, *, threads: int = 1, instances: int = 1, p: float = 2.0) -> PointMeasurement:
    latency = Percentiles(p / 2, p * 0.8, p * 0.9, p)
    return PointMeasurement(model, batch, threads, instances, latency, latency, 100.0 * batch, 500, float(batch))


RESULT = ProfileResult(
    pipeline="digits", percentile=95,
    measurements={"tiny_linear": (point("tiny_linear", 1), point("tiny_linear", 4, instances=2)),
                  "cnn_large": (point("cnn_large", 1, threads=2, p=5.0),)},
    cascade_rows={"classify": ({"threshold": 0.0, "heavyFraction": 0.0, "quality": 0.88},
                               {"threshold": 0.9, "heavyFraction": 0.6, "quality": 0.99})},
    machine={"cores": 2},
)


def test_grid_drops_configurations_above_the_cores() -> None:
    grid = ProfileGrid(threads=(1, 2), instances=(1, 2), cores=2)
    assert grid.configurations() == [(1, 1, None), (1, 2, None), (2, 1, None)]
    assert ProfileGrid.quick(cores=2).latency_samples < ProfileGrid(cores=2).latency_samples


def test_grid_under_cpu_quotas_keeps_threads_within_the_quota() -> None:
    """Under a quota, cores per replica is the quota; more threads than its cores (rounded up) only contend,
    instances share it as separate processes."""
    grid = ProfileGrid(threads=(1, 2), instances=(1, 2), cores=2, cpu_quotas=(0.25, 1.5))
    assert grid.configurations() == [(1, 1, 0.25), (1, 2, 0.25), (1, 1, 1.5), (1, 2, 1.5), (2, 1, 1.5)]
    with pytest.raises(ValueError, match="--cpu-quotas"):
        ProfileGrid(cores=2, cpu_quotas=(3.0,))
    with pytest.raises(ValueError, match="--cpu-quotas"):
        ProfileGrid(cores=2, cpu_quotas=(0.0,))
    with pytest.raises(ValueError, match="--cpu-period-ms"):
        ProfileGrid(cores=2, cpu_quotas=(0.5,), cpu_period_us=500)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batches": ()}, "--batches"), ({"threads": (0,)}, "--threads"), ({"instances": (-1,)}, "--instances"),
    ({"threads": (4,), "instances": (1,), "cores": 2}, "exceeds 2 cores"),
])
def test_grid_validation_names_the_flag(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProfileGrid(**kwargs)


def test_percentiles() -> None:
    stats = Percentiles.of([float(v) for v in range(1, 101)])
    assert stats.p50 == pytest.approx(50.5) and stats.p99 == pytest.approx(99.01)
    assert stats.at(99) == stats.p99 and stats.at(90) == stats.p90


def test_point_is_the_crd_form_at_the_slo_percentile() -> None:
    assert point("m", 4, threads=1, instances=2, p=3.0).point(95) == {
        "batch": 4, "cpu": 2, "instances": 2, "latencyMs": 2.7, "throughputRps": 400.0}


def test_cascade_rows_defer_below_the_threshold() -> None:
    confidence = np.array([0.2, 0.6, 0.95, 0.99], dtype=np.float32)
    light = np.array([1, 2, 3, 4])
    heavy = np.array([0, 2, 3, 5])
    labels = np.array([0, 2, 3, 4])
    rows = cascade_rows(confidence, light, heavy, labels, [0.0, 0.5, 0.97, 1.0])
    assert [r["heavyFraction"] for r in rows] == [0.0, 0.25, 0.75, 1.0]
    assert [r["quality"] for r in rows] == [0.75, 1.0, 1.0, 0.75]


def test_profiling_config_has_no_dynamic_batcher() -> None:
    config = profiling_config(TritonModelSpec("m", "tiny_linear", "/w", instance_count=2))
    assert "dynamic_batching" not in config and config["instance_group"][0]["count"] == 2


def test_profile_document() -> None:
    document = profile_document(parse_pipeline(DOC), RESULT)
    variants = document["stages"]["classify"]["variants"]
    assert variants["tiny"]["profile"]["points"][1] == {"batch": 4, "cpu": 2, "instances": 2, "latencyMs": 1.8,
                                                        "throughputRps": 400.0}
    assert variants["large"]["measured"][0]["threads"] == 2
    assert document["stages"]["classify"]["cascadeRows"][1]["quality"] == 0.99
    assert yaml.safe_load(dump_yaml(document, "header\nline two")) == document


def test_pipeline_document_replaces_profiles_and_rows_and_still_parses() -> None:
    out = pipeline_document(DOC, RESULT)
    assert DOC["spec"]["stages"][0]["variants"][0]["profile"]["points"][0]["latencyMs"] == 99  # input untouched
    text = dump_yaml(out, "Measured by a test")
    assert text.startswith("# Measured by a test\n")
    stage = load_pipeline_text(text).spec.stages[0]
    assert [p.latency_ms for p in stage.variants[0].profile.points] == [1.8, 1.8]
    assert stage.variants[1].profile.sponge is None and stage.variants[1].profile.points[0].cpu == 2
    assert stage.cascade is not None and [r.heavy_fraction for r in stage.cascade.rows] == [0.0, 0.6]


def test_pipeline_document_is_validated() -> None:
    bad = ProfileResult("digits", 95, {"tiny_linear": (point("tiny_linear", 1, p=0.0),)}, {}, {})
    with pytest.raises(SpecError, match="latencyMs"):
        pipeline_document(DOC, bad)


class FakeControl:
    """Stands in for `TritonControl`: counts calls, thread-safe, no server."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def infer(self, model: str, images: Any) -> None:
        with self.lock:
            self.calls += 1

    def __enter__(self) -> FakeControl:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        return None


def test_latency_and_throughput_loops_against_a_fake_server() -> None:
    images = np.zeros((10, 8, 8), dtype=np.float32)
    control = FakeControl()
    stats = measure_latency(control, "m", images, 2, samples=20, warmup=3)  # type: ignore[arg-type]
    assert control.calls == 23 and stats.p50 <= stats.p99
    shared = FakeControl()
    rps, loaded = measure_throughput(lambda: shared, "m", images, 4, clients=3, seconds=0.05)  # type: ignore[arg-type,return-value]
    assert rps > 0 and shared.calls > 0 and loaded.p50 <= loaded.p99


def test_a_failing_client_fails_the_measurement() -> None:
    class Broken(FakeControl):
        def infer(self, model: str, images: Any) -> None:
            raise ConnectionError("refused")

    with pytest.raises(RuntimeError, match="profiling client failed"):
        measure_throughput(lambda: Broken(), "m", np.zeros((4, 8, 8), np.float32), 1,  # type: ignore[arg-type,return-value]
                           clients=2, seconds=0.05)


def test_short_scalar_lists_are_written_in_flow_style() -> None:
    text = dump_yaml({"batchSizes": [1, 2, 4], "stages": [{"name": "a"}]})
    assert "batchSizes: [1, 2, 4]\n" in text and "- name: a" in text


def test_rewriting_a_manifest_keeps_its_description_but_not_the_old_measurement_header() -> None:
    text = ("# Measured by `paretoserve profile x`\n# on this machine (2 cores) at noon; latencyMs is p99\n"
            "# What this example shows.\n#\n# More.\napiVersion: v1\n# not leading\n")
    assert kept_comments(text) == "What this example shows.\n\nMore."
