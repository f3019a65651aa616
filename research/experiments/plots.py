"""PNG figures of an experiment (matplotlib, Agg backend: no display needed).

- ``timeline.png``: the offered load and every system's allocation (replicas per stage summed, and cores
  or GPUs) over the first scenario;
- ``systems.png``: accuracy, cost and SLO attainment per system;
- ``pareto.png``: accuracy against cost, coloured by SLO attainment, with the non-dominated systems joined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

__all__ = ["pareto_front", "plot_all", "plt"]


def pareto_front(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Systems no other system beats on both cost (lower) and accuracy (higher), by increasing cost."""
    front = []
    for name, cost, acc in points:
        dominated = any((c <= cost and a >= acc) and (c < cost or a > acc) for _, c, a in points)
        if not dominated:
            front.append((name, cost, acc))
    return sorted(front, key=lambda p: p[1])


def _timeline(doc: dict[str, Any], timelines: dict[str, dict[str, Any]], out: Path) -> Path:
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    first = next(iter(timelines.values()), None)
    if first is not None:
        axes[0].plot(first["time_s"], first["load_rps"], color="black", linewidth=0.8)
    axes[0].set_ylabel("load (req/s)")
    resource = "gpus" if doc.get("cost_unit") == "gpus" else "cores"
    for name, series in timelines.items():
        replicas = sum(v for k, v in series.items() if k.startswith("replicas:"))
        axes[1].step(series["time_s"], replicas, where="post", label=name, linewidth=1)
        axes[2].step(series["time_s"], series[resource], where="post", label=name, linewidth=1)
    axes[1].set_ylabel("replicas (all stages)")
    axes[2].set_ylabel(resource)
    axes[2].set_xlabel("time (s)")
    axes[1].legend(fontsize=7, ncol=3)
    fig.suptitle(f"{doc.get('title', doc['experiment'])}: load and allocation over time")
    fig.tight_layout()
    path = out / "timeline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(doc: dict[str, Any], out: Path) -> Path:
    names = list(doc["systems"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = (("accuracy", doc.get("accuracy_label", "accuracy")), ("cost", f"cost (mean {doc['cost_unit']})"),
              ("slo_attainment", "SLO attainment"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        values = [doc["systems"][n].get(key) or 0.0 for n in names]
        ax.bar(range(len(names)), values, color="tab:blue")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(label)
        if key == "accuracy" and values and min(values) < 0:
            ax.set_ylim(min(values) * 1.05, 0)
    fig.tight_layout()
    path = out / "systems.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pareto(doc: dict[str, Any], out: Path) -> Path:
    points = [(n, m["cost"], m["accuracy"]) for n, m in doc["systems"].items()
              if m.get("cost") is not None and m.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(7, 5))
    if points:
        attainment = [doc["systems"][n].get("slo_attainment") or 0.0 for n, _, _ in points]
        sc = ax.scatter([p[1] for p in points], [p[2] for p in points], c=attainment, cmap="RdYlGn",
                        vmin=0.0, vmax=1.0, s=60, edgecolors="black")
        fig.colorbar(sc, ax=ax, label="SLO attainment")
        for name, cost, acc in points:
            ax.annotate(name, (cost, acc), fontsize=7, xytext=(4, 3), textcoords="offset points")
        front = pareto_front(points)
        ax.plot([p[1] for p in front], [p[2] for p in front], "--", color="gray", label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"cost (mean {doc['cost_unit']})")
    ax.set_ylabel(doc.get("accuracy_label", "accuracy"))
    ax.set_title("accuracy vs cost")
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(doc: dict[str, Any], timelines: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    return [_timeline(doc, timelines, out), _bars(doc, out), _pareto(doc, out)]
