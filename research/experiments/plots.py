"""PNG figures of an experiment (matplotlib, Agg backend: no display needed).

- ``timeline.png``: over the first scenario, the offered load; every system's p99 latency per second (a
  dropped or timed-out request counts as infinitely late) against the SLO; its share of requests that miss
  the SLO per second; and what it allocates (cores or GPUs);
- ``systems.png``: SLO attainment, accuracy and cost per system, each bar labelled with its value, the
  attainment axis zoomed to the range the systems span so that 94 % and 100 % look different;
- ``pareto.png``: accuracy against cost, each point labelled with its system and SLO attainment and
  coloured on a scale from the worst attainment to 100 %, with the non-dominated systems joined.

ParetoServe is drawn last, thicker and in its own colour, so no baseline hides it.
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


OURS = "paretoserve"
OUR_COLOR = "crimson"
BASELINE_COLORS = [plt.get_cmap("tab20")(i) for i in range(20) if i not in (6, 7)]  # no reds


def _styles(names: list[str]) -> dict[str, dict[str, Any]]:
    """Plot styles: ParetoServe thick and red, drawn last; each baseline its own thin colour."""
    others = [n for n in names if n != OURS]
    styles = {n: {"color": BASELINE_COLORS[i % len(BASELINE_COLORS)], "linewidth": 0.9, "alpha": 0.85,
                  "zorder": 2} for i, n in enumerate(others)}
    if OURS in names:
        styles[OURS] = {"color": OUR_COLOR, "linewidth": 2.0, "alpha": 1.0, "zorder": 5}
    return styles


def _ordered(names: list[str]) -> list[str]:
    return [n for n in names if n != OURS] + ([OURS] if OURS in names else [])


def _timeline(doc: dict[str, Any], timelines: dict[str, dict[str, Any]], out: Path) -> Path:
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True,
                             gridspec_kw={"height_ratios": [1.0, 1.3, 1.0, 1.2]})
    first = next(iter(timelines.values()), None)
    if first is not None:
        axes[0].plot(first["time_s"], first["load_rps"], color="black", linewidth=0.8)
    axes[0].set_ylabel("offered load (req/s)")
    resource = "gpus" if doc.get("cost_unit") == "gpus" else "cores"
    styles = _styles(list(timelines))
    slo_ms = doc.get("config", {}).get("slo_ms")
    for name in _ordered(list(timelines)):
        series, style = timelines[name], styles[name]
        if "p99_latency_ms" in series:
            latency = [min(v, 1e6) for v in series["p99_latency_ms"]]  # infinitely late: off the top
            axes[1].plot(series["time_s"], latency, label=name, **style)
        violating = [100.0 * (1.0 - v) for v in series["slo_attainment"]]
        axes[2].plot(series["time_s"], violating, label=name, **style)
        axes[3].step(series["time_s"], series[resource], where="post", label=name, **style)
    if slo_ms:
        axes[1].axhline(float(slo_ms), color="black", linestyle="--", linewidth=1.0, label=f"SLO {slo_ms:g} ms")
    axes[1].set_yscale("log")
    top = 10 * float(slo_ms) if slo_ms else None
    if top:
        axes[1].set_ylim(top=top)
    axes[1].set_ylabel("p99 latency per second (ms)")
    axes[2].set_ylabel("requests missing\nthe SLO (%)")
    axes[2].set_ylim(-2, 102)
    axes[3].set_ylabel(f"allocated {resource}")
    axes[3].set_xlabel("time (s)")
    axes[1].legend(fontsize=7, ncol=4, loc="upper left")
    fig.suptitle(f"{doc.get('title', doc['experiment'])}\nload, latency, SLO misses and allocation over time "
                 f"(ParetoServe in red)")
    fig.tight_layout()
    path = out / "timeline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(doc: dict[str, Any], out: Path) -> Path:
    names = list(doc["systems"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    panels = (("slo_attainment", "SLO attainment (%)", 100.0, "{:.2f}"),
              ("accuracy", doc.get("accuracy_label", "accuracy"), 1.0, "{:.4g}"),
              ("cost", f"cost (mean {doc['cost_unit']})", 1.0, "{:.2f}"))
    colors = [OUR_COLOR if n == OURS else "steelblue" for n in names]
    for ax, (key, label, factor, fmt) in zip(axes, panels, strict=True):
        values = [(doc["systems"][n].get(key) or 0.0) * factor for n in names]
        bars = ax.bar(range(len(names)), values, color=colors)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(label)
        if values:
            lo, hi = min(values), max(values)
            # a difference below 1 % of the values (or 1 point of attainment) is not blown up to the full axis
            span = max(hi - lo, 1.0 if key == "slo_attainment" else 0.01 * max(abs(lo), abs(hi))) or 1.0
            if key == "slo_attainment":
                ax.set_ylim(max(0.0, lo - 0.5 * span), min(100.0, hi) + 0.15 * span)
            elif lo < 0:
                ax.set_ylim(lo - 0.1 * span, min(0.0, hi + 0.1 * span))
            else:
                ax.set_ylim(0.0 if key == "cost" else max(0.0, lo - 0.2 * span), hi + 0.15 * span)
            for bar, value in zip(bars, values, strict=True):
                ax.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, value), ha="center",
                            va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    fig.suptitle(f"{doc.get('title', doc['experiment'])}: per system (ParetoServe in red)")
    fig.tight_layout()
    path = out / "systems.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def label_offsets(points: list[tuple[str, float, float]]) -> list[tuple[int, int]]:
    """Label offsets (points) that keep labels of nearby points apart: each label takes the first of eight
    directions whose spot, in axis-normalised units, is far enough from the labels placed before it; a point in
    the right quarter tries the leftward directions first, so its label stays inside the axes."""
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    width, height = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    directions = [(8, 10), (8, -22), (-8, 10), (-8, -22), (8, 30), (-8, 30), (8, -42), (-8, -42)]
    placed: list[tuple[float, float]] = []
    out = []
    for _, x, y in points:
        nx, ny = (x - min(xs)) / width, (y - min(ys)) / height
        order = directions if nx <= 0.75 else sorted(directions, key=lambda d: d[0] > 0)
        for dx, dy in order:
            spot = (nx + dx / 400.0, ny + dy / 300.0)
            if all(abs(spot[0] - a) > 0.25 or abs(spot[1] - b) > 0.08 for a, b in placed):
                break
        placed.append(spot)
        out.append((dx, dy))
    return out


def _pareto(doc: dict[str, Any], out: Path) -> Path:
    points = [(n, m["cost"], m["accuracy"]) for n, m in doc["systems"].items()
              if m.get("cost") is not None and m.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(9, 6.5))
    if points:
        attainment = [100.0 * (doc["systems"][n].get("slo_attainment") or 0.0) for n, _, _ in points]
        worst = min(attainment)
        sc = ax.scatter([p[1] for p in points], [p[2] for p in points], c=attainment, cmap="RdYlGn",
                        vmin=min(worst, 99.0), vmax=100.0, s=[200 if n == OURS else 70 for n, _, _ in points],
                        marker="o", edgecolors=["black" if n != OURS else OUR_COLOR for n, _, _ in points],
                        linewidths=[2.5 if n == OURS else 0.8 for n, _, _ in points], zorder=3)
        fig.colorbar(sc, ax=ax, label="SLO attainment (%)")
        for (name, cost, acc), slo, offset in zip(points, attainment, label_offsets(points), strict=True):
            ax.annotate(f"{name}\n{slo:.2f} %", (cost, acc), fontsize=8,
                        fontweight="bold" if name == OURS else "normal", xytext=offset,
                        textcoords="offset points", ha="left" if offset[0] >= 0 else "right",
                        arrowprops={"arrowstyle": "-", "color": "gray", "linewidth": 0.5})
        meeting = [pt for pt, slo in zip(points, attainment, strict=True) if slo >= 99.0]
        front = pareto_front(meeting)
        ax.plot([p[1] for p in front], [p[2] for p in front], "--", color="gray",
                label="Pareto front of the systems with >= 99 % SLO attainment", zorder=1)
        ax.legend(fontsize=8, loc="lower right")
        ax.margins(0.12)
        accuracies = [p[2] for p in points]
        low, high = min(accuracies), max(accuracies)
        least = 0.01 * max(abs(low), abs(high))  # as in the bars: sub-1 % differences keep their scale
        if high - low < least:
            middle = (low + high) / 2
            ax.set_ylim(middle - least, middle + least)
        ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel(f"cost (mean {doc['cost_unit']})")
    ax.set_ylabel(doc.get("accuracy_label", "accuracy"))
    ax.set_title(f"{doc.get('title', doc['experiment'])}\naccuracy vs cost, coloured by SLO attainment")
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(doc: dict[str, Any], timelines: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    return [_timeline(doc, timelines, out), _bars(doc, out), _pareto(doc, out)]
