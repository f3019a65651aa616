"""What ``paretoserve agents build`` writes: the aggregators as served models, and the example workflow as a
ServingPipeline with measured variants.

The planner needs each variant's accuracy and latency profile, and ``paretoserve up --model-repository`` needs
a Triton entry for every model a stage names that is not a catalog classifier. :func:`build` trains (or reads
from the cache, :func:`~.models.ensure_agents`) the four aggregators and writes to its output folder

- ``repository/<model>/``: a self-contained Triton entry per aggregator (a ``paretoserve_onnx`` config, the ONNX
  graph, its metadata; input ``IMAGE`` of 74 or 50 features), as ``paretoserve fuse`` and ``models export`` write
  them;
- ``pipeline.yaml``: :data:`~.workflow.WORKFLOW` as a ServingPipeline (each stage's ``dependsOn`` and
  ``inputs``, two variants per stage) with held-out accuracy and profile points measured as fusion measures
  its variants (``onnx_latency_ms``): each model's ONNX graph in ONNX Runtime on one thread, p99 latency and
  throughput from the median, at batch sizes :data:`BATCH_SIZES`, the catalog's classifiers included, so that
  all profiles are comparable. These are model times alone: a served stage adds Triton's and the router's;
- ``agents.json``: the report (accuracies, latencies, the offline accuracy of the whole workflow with every node
  on its cheapest and on its largest variant).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from paretoserve.planner.spec import parse_pipeline
from paretoserve.workers.agents.models import AGGREGATORS, AgentModels, ensure_agents, workflow_accuracy
from paretoserve.workers.agents.workflow import WORKFLOW, cheapest, largest
from paretoserve.workers.fusion.latency import onnx_latency_ms
from paretoserve.workers.triton.repository import ONNX_FILE, export_model, spec_from_cached_variant

PIPELINE_NAME = "digits-agents"
BATCH_SIZES = (1, 4)
RESOURCES: Mapping[str, float] = {"cpu": 1.0, "memoryGib": 0.5}
PIPELINE_SPEC: Mapping[str, Any] = {
    "slo": {"latencyMs": 60, "percentile": 99},
    "objective": {"accuracy": 1.0, "cost": 0.01, "accuracyAggregation": "sum"},
    "budget": {"cpu": 4},
    "adaptation": {"intervalSeconds": 5, "solverTimeLimitSeconds": 1, "scaleDownStabilization": 3,
                   "targetUtilization": 0.6, "predictor": {"kind": "movingMax", "windowSeconds": 15, "headroom": 0.2}},
}
"""Everything of the pipeline but its stages (the settings of manifests/examples/digits-local.yaml)."""


def write_repository(models: AgentModels, repository: Path) -> dict[str, Path]:
    """A Triton entry per aggregator under ``repository``; returns each entry's served ONNX graph."""
    graphs: dict[str, Path] = {}
    for model in AGGREGATORS:
        spec = spec_from_cached_variant(models.model_dir(model), max_batch_size=max(32, *BATCH_SIZES))
        graphs[model] = export_model(repository, spec, models.model_dir(model)) / "1" / ONNX_FILE
    return graphs


def measure_latency(models: AgentModels, graphs: Mapping[str, Path], repeats: int) -> dict[str, dict[str, Any]]:
    """(p99, median) milliseconds per batch size of every model the workflow runs, one thread each; an
    aggregator's served graph, a classifier's cached one."""
    measured: dict[str, dict[str, Any]] = {}
    for model in dict.fromkeys(m for current in WORKFLOW for m in current.variants):
        graph = graphs.get(model, models.model_dir(model) / ONNX_FILE)
        times = {batch: onnx_latency_ms(graph, models.input_shape(model), batch, repeats) for batch in BATCH_SIZES}
        measured[model] = {"p99Ms": {b: round(t[0], 4) for b, t in times.items()},
                           "medianMs": {b: round(t[1], 4) for b, t in times.items()}}
    return measured


def as_variant(model: str, accuracy: float, latency: Mapping[str, Any]) -> dict[str, Any]:
    """``model`` as a stage's variant: held-out accuracy, profile points as fusion writes them (p99 latency,
    throughput from the median, one core, one instance)."""
    points = [{"batch": batch, "cpu": RESOURCES["cpu"], "instances": 1, "latencyMs": latency["p99Ms"][batch],
               "throughputRps": round(batch * 1000.0 / latency["medianMs"][batch], 2)} for batch in BATCH_SIZES]
    return {"name": model.replace("_", "-"), "tritonModel": model, "accuracy": round(accuracy, 4),
            "resources": dict(RESOURCES), "profile": {"points": points}}


def pipeline_document(models: AgentModels, latency: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The example workflow as a ServingPipeline, checked by the planner's parser (``inputs`` included)."""
    stages = [{"name": current.name, "dependsOn": list(current.depends_on), "inputs": list(current.inputs),
               "batchSizes": list(BATCH_SIZES),
               "variants": [as_variant(m, models.heldout_accuracy(m), latency[m]) for m in current.variants]}
              for current in WORKFLOW]
    document = {"apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline",
                "metadata": {"name": PIPELINE_NAME}, "spec": {**PIPELINE_SPEC, "stages": stages}}
    parse_pipeline(document)
    return document


HEADER = ("# Written by paretoserve agents build: the example agent workflow (issue 16). accuracy is held-out\n"
          "# (test split; an aggregator's with its parents' variants drawn at random, as in training); profile\n"
          "# points are p99 latency and throughput (from the median) of each model's ONNX graph in ONNX Runtime\n"
          "# on one thread. Serve it with: paretoserve up pipeline.yaml --model-repository repository\n")


def build(out: Path, *, cache_root: Path | None = None, repeats: int = 1000,
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train or read the aggregators, write ``out`` (see the module doc); returns the report in ``agents.json``."""
    started = time.perf_counter()
    models = ensure_agents(cache_root, progress=progress)
    trained_at = time.perf_counter()
    repository = out / "repository"
    if repository.exists():
        shutil.rmtree(repository)
    repository.mkdir(parents=True)
    graphs = write_repository(models, repository)
    if progress is not None:
        progress(f"measuring the workflow's models at batch sizes {list(BATCH_SIZES)}")
    latency = measure_latency(models, graphs, repeats)
    measured_at = time.perf_counter()
    document = pipeline_document(models, latency)
    (out / "pipeline.yaml").write_text(HEADER + yaml.safe_dump(document, sort_keys=False))
    workflow = {label: {"assignment": assignment, "accuracy": workflow_accuracy(assignment, models)}
                for label, assignment in (("cheapest", cheapest()), ("largest", largest()))}
    report = {
        "fingerprint": models.fingerprint, "cache": str(models.directory), "trained": models.trained,
        "catalogVersion": models.catalog.version,
        "models": {model: {"kind": models.metadata[model]["kind"] if model in models.metadata else "classifier",
                           "inputShape": list(models.input_shape(model)),
                           "heldoutAccuracy": models.heldout_accuracy(model), **latency[model],
                           **({"trainingSeconds": models.metadata[model]["training_seconds"]}
                              if model in models.metadata else {})}
                   for model in latency},
        "workflow": [{"name": n.name, "dependsOn": list(n.depends_on), "inputs": list(n.inputs),
                      "variants": list(n.variants)} for n in WORKFLOW],
        "workflowAccuracy": workflow,
        "seconds": {"models": round(trained_at - started, 3), "measure": round(measured_at - trained_at, 3),
                    "total": round(time.perf_counter() - started, 3)},
    }
    (out / "agents.json").write_text(json.dumps(report, indent=1))
    return report
