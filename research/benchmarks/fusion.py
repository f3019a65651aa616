"""`paretoserve bench fusion`: GMorph's experiment on our task models, measured through the real Triton.

For θ ∈ {0, 0.01, 0.02} it runs the fusion search of ``manifests/fusion/digits-tasks.yaml`` (cached: a second
run resumes), takes the fastest fused variant of each Pareto set, and serves in one Triton: the four task
models, the three fused variants and the all-shared MTL baseline. Then, over the held-out test images, one
request at a time (batch 1): the latency of the separate models called one after the other, of the same
models as one served model (``tasks_separate``: one request, the same computation), of each fused model, and of the MTL
model, with every task's accuracy computed from Triton's answers. Speedup is the separate models' median
latency over the fused model's; ``onnxSpeedup`` is the same ratio for the compute alone (the ONNX graphs in
ONNX Runtime on one thread, no serving overhead). Target (issue 14): ≥ 1.5× at θ = 0.01 with every
task's validation drop within θ. ``--quick`` gives each search 1 minute instead of the spec's budget.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from paretoserve.workers.fusion import FusionSession, fuse, load_fusion_spec
from paretoserve.workers.fusion.export import SEPARATE_MODEL, fused_net, write_served
from paretoserve.workers.fusion.graph import FusionGraph
from paretoserve.workers.fusion.nets import FusedNet
from paretoserve.workers.fusion.session import candidate_from_json
from paretoserve.workers.fusion.spec import THETAS
from paretoserve.workers.triton.control import TritonControl
from paretoserve.workers.triton.server import TritonServer, TritonServerConfig

SPEC = Path(__file__).resolve().parents[2] / "manifests" / "fusion" / "digits-tasks.yaml"


OUT_ENV = "PARETOSERVE_BENCH_OUT"


def _point(served: dict[str, Any]) -> tuple[float, float, str]:
    accuracies = list(served["testAccuracy"].values())
    return served["medianMs"]["1"], sum(accuracies) / len(accuracies), served["describe"]


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50Ms": statistics.median(ordered), "p99Ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "meanMs": statistics.fmean(ordered)}


def _serve_and_measure(repository: Path, models: dict[str, tuple[str, ...]], separate: list[str],
                       images: npt.NDArray[np.float32], labels: dict[str, npt.NDArray[np.int64]],
                       rounds: int) -> dict[str, Any]:
    config = TritonServerConfig(model_repository=repository, models=tuple(models))
    with TritonServer(config) as triton, TritonControl(triton.http_url) as control:

        def call(model: str, image: npt.NDArray[np.float32]) -> dict[str, int]:
            answers = control.infer_tasks(model, image, models[model])
            return {task: int(answer.label[0]) for task, answer in answers.items()}

        for model in models:  # warm every model
            for _ in range(20):
                call(model, images[:1])
        measured: dict[str, Any] = {}
        routes = {"separate": separate, **{model: [model] for model in models if model not in separate}}
        for route, chain in routes.items():
            times: list[float] = []
            answers: dict[str, list[int]] = {task: [] for task in labels}
            for repeat in range(rounds):
                for row in range(len(images)):
                    image = images[row:row + 1]
                    started = time.perf_counter()
                    got: dict[str, int] = {}
                    for model in chain:
                        got.update(call(model, image))
                    times.append((time.perf_counter() - started) * 1000.0)
                    if repeat == 0:
                        for task, label in got.items():
                            answers[task].append(label)
            measured[route] = {**_stats(times), "requests": len(times),
                               "testAccuracy": {task: float(np.mean(np.array(got) == labels[task]))
                                                for task, got in answers.items() if got}}
    return measured


def _plot(points: dict[str, list[tuple[float, float, str]]], path: Path) -> None:
    """ONNX latency (batch 1, one thread) against the mean of the tasks' test accuracies, per θ's Pareto set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    styles = {"separate": ("black", "s"), "mtl": ("tab:red", "D")}
    for label, rows in points.items():
        color, marker = styles.get(label, (None, "o"))
        axes.scatter([r[0] for r in rows], [100 * r[1] for r in rows], label=label, color=color, marker=marker,
                     zorder=3 if label in styles else 2)
    axes.set_xlabel("latency of one request, ONNX Runtime on one thread (ms, median)")
    axes.set_ylabel("mean of the four tasks' held-out accuracy (%)")
    axes.set_title("Fused variants (Pareto set per θ), separate models, all-shared MTL", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def bench_fusion(quick: bool = False) -> dict[str, Any]:
    spec = load_fusion_spec(SPEC.read_text())
    budget_s = 60.0 if quick else None
    work = Path(tempfile.mkdtemp(prefix="paretoserve-bench-fusion-"))
    try:
        session = FusionSession(spec)
        repository = work / "repository"
        models: dict[str, tuple[str, ...]] = {}
        for chain in session.chains:
            single = FusionGraph.unfused([chain])
            write_served(session, FusedNet(single, session.original_states), f"task_{chain.task}", "unfused",
                         "unfused", repository, estimated_ms=None, repeats=20)
            models[f"task_{chain.task}"] = (chain.task,)
        separate = list(models)
        per_theta: dict[str, Any] = {}
        points: dict[str, list[tuple[float, float, str]]] = {}
        for theta in THETAS:
            report = fuse(spec, work / f"theta-{theta:g}", theta=theta, budget_s=budget_s, show_progress=True)
            fused = [s for s in report["served"] if s["kind"] == "fused"]
            points[f"fused, θ = {theta:g}"] = [_point(s) for s in fused]
            best = min(fused, key=lambda s: s["estimatedMs"]) if fused else None  # the search's pick: stable
            name = f"fused_theta_{str(theta).replace('.', '')}"
            entry: dict[str, Any] = {"search": report["search"], "paretoSize": len(fused)}
            if best is not None:
                key = best["name"].removeprefix("fused_")
                candidate = next(candidate_from_json(c) for c in report["candidates"] if c["key"] == key)
                write_served(session, fused_net(session, candidate, theta), name, "fused", candidate.describe,
                             repository, estimated_ms=candidate.estimated_ms, repeats=20)
                models[name] = session.unfused.tasks
                entry.update({"model": name, "describe": candidate.describe,
                              "valDrop": dict(zip(session.unfused.tasks,
                                                  (b - v for b, v in zip(session.baseline, candidate.val_accuracy,
                                                                         strict=True)), strict=True)),
                              "withinBound": all(b - v <= theta + 1e-9 for b, v in
                                                 zip(session.baseline, candidate.val_accuracy, strict=True)),
                              "onnxMedianMs": best["medianMs"]})
            per_theta[f"{theta:g}"] = entry
        for kind in ("mtl", "separate"):  # the all-shared baseline; the task models as one model
            served = next(s for s in report["served"] if s["kind"] == kind)
            points[kind] = [_point(served)]
            shutil.copytree(Path(served["modelDir"]), repository / served["name"])
            models[served["name"]] = session.unfused.tasks
        shutil.rmtree(repository / ".staging", ignore_errors=True)
        images = session.data.test.images.numpy()
        labels = {task.name: session.data.test.labels(task.labels).numpy() for task in session.tasks}
        measured = _serve_and_measure(repository, models, separate, images, labels, rounds=1 if quick else 3)
        base = measured["separate"]
        for entry in per_theta.values():
            if "model" in entry:
                route = measured[entry["model"]]
                entry["triton"] = route
                entry["speedup"] = base["p50Ms"] / route["p50Ms"]
                entry["speedupOverOneModel"] = measured[SEPARATE_MODEL]["p50Ms"] / route["p50Ms"]
                entry["testDrop"] = {task: base["testAccuracy"][task] - route["testAccuracy"][task]
                                     for task in base["testAccuracy"]}
        mtl_route = measured["mtl_all_shared"]
        onnx_separate = sum(s["medianMs"]["1"] for s in report["served"] if s["kind"] == "unfused")
        for entry in per_theta.values():
            if "onnxMedianMs" in entry:
                entry["onnxSpeedup"] = onnx_separate / entry["onnxMedianMs"]["1"]
        plot = None
        if os.environ.get(OUT_ENV):
            plot = Path(os.environ[OUT_ENV]) / "fusion.png"
            plot.parent.mkdir(parents=True, exist_ok=True)
            _plot(points, plot)
        return {
            "plot": str(plot) if plot else None,
            "paretoPoints": {label: [{"onnxMedianMs": r[0], "meanTestAccuracy": r[1], "describe": r[2]}
                                     for r in rows] for label, rows in points.items()},
            "spec": spec.metadata.name, "quick": quick, "device": f"CPU, one thread per model, {os.cpu_count()} cores",
            "taskModels": {t.task.name: {"valAccuracy": t.val_accuracy, "testAccuracy": t.test_accuracy}
                           for t in session.trained},
            "separate": base, "separateAsOneModel": measured[SEPARATE_MODEL], "thetas": per_theta,
            "onnxSeparateMedianMs": onnx_separate,
            "mtlAllShared": {**mtl_route, "speedup": base["p50Ms"] / mtl_route["p50Ms"],
                             "testDrop": {task: base["testAccuracy"][task] - mtl_route["testAccuracy"][task]
                                          for task in base["testAccuracy"]}},
            "target": {"theta": 0.01, "speedup": 1.5,
                       "met": bool(per_theta.get("0.01", {}).get("withinBound"))
                       and per_theta["0.01"].get("speedup", 0.0) >= 1.5},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

