"""What ``paretoserve fuse`` writes: the Pareto set of fused variants as served models and as ModelVariants.

For every variant kept (the search's Pareto set on latency and per-task validation accuracy, plus the unfused
task models and the all-shared MTL baseline for comparison) this module measures what it will serve: each
task's accuracy on the held-out test split, and its ONNX graph's latency in ONNX Runtime on one thread at
the spec's batch sizes (p99 of repeated runs, and throughput from the median). It writes

- ``repository/<model>/``: a self-contained Triton model-repository entry (a ``paretoserve_onnx`` config, the ONNX
  graph, one set of outputs per task: ``PROBS_<task>``, ``CONFIDENCE_<task>``, ``LABEL_<task>``);
- ``repository/tasks_separate/``: the separate task models as one model (the unfused graph with every task's
  output: the same computation, one request);
- ``variants.yaml``: the separate models and each fused variant as variants of a multi-task stage
  (``taskAccuracy`` per task, profile points measured as above); ``pipeline.yaml``: a ServingPipeline that
  serves them from one multi-task stage;
- ``fusion.json``: the whole report (task models, search statistics, every candidate, the Pareto set).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from paretoserve.planner.spec import parse_pipeline
from paretoserve.workers.fusion.latency import onnx_latency_ms
from paretoserve.workers.fusion.nets import FusedNet, export_onnx
from paretoserve.workers.fusion.session import Candidate, FusionSession
from paretoserve.workers.fusion.training import task_accuracies
from paretoserve.workers.models.training import single_thread
from paretoserve.workers.triton.repository import ONNX_FILE, TritonModelSpec, export_model


@dataclass(frozen=True)
class ServedVariant:
    """A model as written to the repository, with what was measured of it."""

    name: str
    kind: str
    """``fused``, ``unfused`` (one task model), ``separate`` (all task models as one model, unfused) or ``mtl``
    (the all-shared baseline)."""
    tasks: tuple[str, ...]
    describe: str
    val_accuracy: tuple[float, ...]
    test_accuracy: tuple[float, ...]
    latency_ms: dict[int, float]
    """p99 milliseconds per batch size in ONNX Runtime, one thread."""
    median_ms: dict[int, float]
    estimated_ms: float | None
    model_dir: Path

    def report(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "tasks": list(self.tasks), "describe": self.describe,
                "valAccuracy": dict(zip(self.tasks, self.val_accuracy, strict=True)),
                "testAccuracy": dict(zip(self.tasks, self.test_accuracy, strict=True)),
                "p99Ms": {str(b): v for b, v in self.latency_ms.items()},
                "medianMs": {str(b): v for b, v in self.median_ms.items()},
                "estimatedMs": self.estimated_ms, "modelDir": str(self.model_dir)}


def write_served(session: FusionSession, net: FusedNet, name: str, kind: str, describe: str,
                 repository: Path, *, estimated_ms: float | None, repeats: int = 200) -> ServedVariant:
    """Export ``net`` as repository entry ``name`` and measure it (see the module doc)."""
    tasks = net.graph.tasks
    by_name = {task.name: task for task in session.tasks}
    chosen = tuple(by_name[task] for task in tasks)
    with single_thread():
        val = tuple(task_accuracies(net, session.data.val, chosen))
        test = tuple(task_accuracies(net, session.data.test, chosen))
    staging = repository / ".staging" / name
    staging.mkdir(parents=True, exist_ok=True)
    export_onnx(net, staging / ONNX_FILE)
    classes = tuple((task, net.graph.block(net.graph.head(task)).out_shape[0]) for task in tasks)
    (staging / "metadata.json").write_text(json.dumps({"variant": name, "kind": kind, "tasks": dict(classes),
                                                       "input_shape": list(session.data.input_shape),
                                                       "describe": describe}))
    spec = TritonModelSpec(name=name, variant=name, weights_dir=".", input_shape=session.data.input_shape,
                           tasks=classes, max_batch_size=max(32, *session.spec.spec.search.batch_sizes))
    model_dir = export_model(repository, spec, staging)
    p99: dict[int, float] = {}
    median: dict[int, float] = {}
    for batch in session.spec.spec.search.batch_sizes:
        p99[batch], median[batch] = onnx_latency_ms(model_dir / "1" / ONNX_FILE, session.data.input_shape, batch,
                                                     repeats)
    return ServedVariant(name=name, kind=kind, tasks=tasks, describe=describe, val_accuracy=val,
                         test_accuracy=test, latency_ms=p99, median_ms=median, estimated_ms=estimated_ms,
                         model_dir=model_dir)


SEPARATE_MODEL = "tasks_separate"


def write_separate(session: FusionSession, repository: Path) -> ServedVariant:
    """The unfused task models as one served model: the unfused graph with every task's output, which computes
    exactly what the separate models compute, one after the other on one request (what a multi-task stage
    runs when it does not fuse)."""
    return write_served(session, FusedNet(session.unfused, session.original_states), SEPARATE_MODEL, "separate",
                        "unfused", repository, estimated_ms=session.estimate_ms(session.unfused))


def fused_net(session: FusionSession, candidate: Candidate, theta: float) -> FusedNet:
    graph = session.graph_of(candidate, theta)
    return FusedNet(graph, {**session.original_states, **session.states(candidate, theta)})


def as_variant(served: ServedVariant) -> dict[str, Any]:
    """``served`` as a variant of a multi-task ServingPipeline stage: per-task accuracy on the held-out test
    split, profile points measured in ONNX Runtime on one thread (p99 latency; throughput from the median)."""
    points = [{"batch": batch, "cpu": 1.0, "instances": 1, "latencyMs": round(served.latency_ms[batch], 4),
               "throughputRps": round(batch * 1000.0 / served.median_ms[batch], 2)} for batch in served.latency_ms]
    return {"name": served.name.replace("_", "-"), "tritonModel": served.name,
            "taskAccuracy": {task: round(acc, 4) for task, acc in zip(served.tasks, served.test_accuracy,
                                                                       strict=True)},
            "resources": {"cpu": 1.0, "memoryGib": 0.5}, "profile": {"points": points}}


def pipeline_document(name: str, served: list[ServedVariant], batch_sizes: list[int]) -> dict[str, Any]:
    """A ServingPipeline with one multi-task stage whose variants are ``served`` (validated by the parser):
    a starting point that users edit (SLO, objective, budget) and the planner can run as is."""
    document = {
        "apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline", "metadata": {"name": name},
        "spec": {
            "slo": {"latencyMs": 50, "percentile": 99},
            "objective": {"accuracy": 1.0, "cost": 0.01},
            "budget": {"cpu": 2.0},
            "stages": [{"name": "tasks", "tasks": [{"name": task} for task in served[0].tasks],
                        "batchSizes": batch_sizes, "variants": [as_variant(s) for s in served]}],
        },
    }
    parse_pipeline(document)
    return document


def write_variants(out: Path, name: str, served: list[ServedVariant], batch_sizes: list[int]) -> None:
    """``variants.yaml`` (the variants alone) and ``pipeline.yaml`` (a ServingPipeline that uses them)."""
    document = pipeline_document(name, served, batch_sizes)
    header = ("# Written by paretoserve fuse: taskAccuracy on the held-out test split; profile points are p99 latency\n"
              "# and throughput (from the median) of each model's ONNX graph on one thread.\n")
    described = "".join(f"#   {s.name}: {s.describe}\n" for s in served)
    (out / "variants.yaml").write_text(header + described + yaml.safe_dump(
        {"variants": document["spec"]["stages"][0]["variants"]}, sort_keys=False))
    (out / "pipeline.yaml").write_text(header + described + yaml.safe_dump(document, sort_keys=False))
