"""What a replay achieved: SLO attainment, accuracy, cost from the applied plans, reconfigurations, plots.

A run is judged on the three axes ParetoServe trades off, from raw records rather than from the
system's own gauges: latency and errors from the load generator's per-request records, accuracy from the
held-out labels (for a token-generating pipeline: exact match of the answers served), cost as the integral of
the applied plans' cores over the replay (core-seconds), and how often the loop changed what runs. A
token-generating pipeline's summary adds the client's TTFT and inter-token gaps, SLO attainment against the
end-to-end SLO and the stage's ``ttftMs`` / ``itlMs`` together (`generation_summary`), and the share each model
served. `summarize` is pure; `write_plots` draws load, latency and the applied configuration (instances per
model, cascade thresholds, planned cores) over time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from paretoserve.workers.runtime.loadgen import RequestRecord


@dataclass(frozen=True)
class AppliedEvent:
    """One applied (or failed) plan, in the form the summary and plots need."""

    time: float
    cores: float
    """The plan's cores (Σ replicas × cores per replica): what a cluster would pay for."""
    instances: Mapping[str, int] = field(default_factory=dict)
    thresholds: Mapping[str, float | None] = field(default_factory=dict)
    triton_changes: Sequence[tuple[str, str, float]] = ()
    error: str | None = None
    batch: Mapping[str, int] = field(default_factory=dict)
    """Triton's preferred batch size per model (1: no dynamic batching)."""
    cpu_quota: float | None = None
    """Triton's CPU quota in force after it (cores); ``None`` when the plan's cores were not enforced."""

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "cores": self.cores, "instances": dict(self.instances),
                "thresholds": dict(self.thresholds), "tritonChanges": [list(c) for c in self.triton_changes],
                "error": self.error, "batch": dict(self.batch), "cpuQuota": self.cpu_quota}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AppliedEvent:
        return cls(float(data["time"]), float(data["cores"]), dict(data.get("instances", {})),
                   dict(data.get("thresholds", {})),
                   [(str(m), str(k), float(s)) for m, k, s in data.get("tritonChanges", [])], data.get("error"),
                   dict(data.get("batch", {})), data.get("cpuQuota"))


@dataclass(frozen=True)
class LoopStep:
    """One control-loop tick: when, what it predicted and what it decided."""

    time: float
    predicted_rps: float
    observed_rps: float | None
    decision: str
    applied: bool
    planned: bool = True
    """A planning round (its prediction has the headroom); False: a load check that held the plan, whose
    figure is the peak of the last seconds it checked against the running plan."""


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _differences(before: AppliedEvent, after: AppliedEvent) -> list[str]:
    """What an applied plan changed, in words a reader of the summary follows (``cores 0.4 -> 0.7``)."""
    same_cores = round(before.cores, 6) == round(after.cores, 6)  # sums of 0.2s: 0.6000000000000001 is 0.6
    out = [] if same_cores else [f"cores {before.cores:.6g} -> {after.cores:.6g}"]
    for stage in sorted(set(before.thresholds) | set(after.thresholds)):
        old, new = before.thresholds.get(stage), after.thresholds.get(stage)
        if old != new:
            out.append(f"{stage} threshold {_value(old)} -> {_value(new)}")
    for label, old_map, new_map in (("instances", before.instances, after.instances),
                                    ("batch", before.batch, after.batch)):
        for model in sorted(set(old_map) | set(new_map)):
            if old_map.get(model) != new_map.get(model):
                out.append(f"{model} {label} {old_map.get(model, '-')} -> {new_map.get(model, '-')}")
    return out


def plan_changes(events: Sequence[AppliedEvent], steps: Sequence[LoopStep], *, start: float,
                 end: float) -> list[dict[str, Any]]:
    """Every plan applied in [start, end] that changed something: when (seconds into the replay), what (from
    the plan in force before it) and why (the loop's reason, the load it saw and the load it planned for).

    An event and the loop step that applied it share their time (the step's clock reading)."""
    ok = sorted((e for e in events if e.error is None), key=lambda e: e.time)
    why = {s.time: s for s in steps if s.applied}
    out: list[dict[str, Any]] = []
    for before, after in zip(ok, ok[1:], strict=False):
        if not start <= after.time <= end:
            continue
        changed = _differences(before, after)
        if not changed:
            continue
        step = why.get(after.time)
        out.append({"atSeconds": round(after.time - start, 1), "changed": changed,
                    "why": None if step is None else step.decision,
                    "observedRps": None if step is None or step.observed_rps is None else round(step.observed_rps, 1),
                    "plannedForRps": None if step is None else round(step.predicted_rps, 1)})
    return out


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p95": None, "p99": None, "max": None}
    array = np.asarray(values, dtype=float)
    p50, p90, p95, p99 = (round(float(v), 2) for v in np.percentile(array, [50, 90, 95, 99]))
    return {"p50": p50, "p90": p90, "p95": p95, "p99": p99, "max": round(float(array.max()), 2)}


def core_seconds(events: Sequence[AppliedEvent], start: float, end: float) -> float:
    """∫ planned cores dt over [start, end]: the plan in force before ``start`` counts from ``start``."""
    ok = sorted((e for e in events if e.error is None), key=lambda e: e.time)
    total = 0.0
    cores = 0.0
    at = start
    for event in ok:
        if event.time <= start:
            cores = event.cores
            continue
        if event.time >= end:
            break
        total += cores * (event.time - at)
        at, cores = event.time, event.cores
    return total + cores * max(0.0, end - at)


def node_timing(records: Sequence[RequestRecord]) -> dict[str, dict[str, float]]:
    """Per stage of a multi-stage pipeline (the router's ``parameters.nodes`` of the answered requests): the
    median start and the p50/p99 of the duration, in ms since the router received the request."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if r.error is None and r.nodes is not None:
            for stage, span in r.nodes.items():
                spans.setdefault(stage, []).append(span)
    out: dict[str, dict[str, float]] = {}
    for stage, pairs in spans.items():
        starts = np.array([begin for begin, _ in pairs])
        durations = np.array([end - begin for begin, end in pairs])
        out[stage] = {"startP50Ms": round(float(np.percentile(starts, 50)), 3),
                      "durationP50Ms": round(float(np.percentile(durations, 50)), 3),
                      "durationP99Ms": round(float(np.percentile(durations, 99)), 3)}
    return out


def _tpot(record: RequestRecord) -> float:
    """A streamed answer's mean gap between its tokens (0 for a one-token answer): its time per output token."""
    gaps = record.gaps_ms or ()
    return float(np.mean(gaps)) if gaps else 0.0


def generation_summary(records: Sequence[RequestRecord], *, slo_ms: float, ttft_ms: float | None,
                       itl_ms: float | None) -> dict[str, Any]:
    """A token-generating pipeline's replay, from the client's records (pure).

    A request meets the SLO when it was served within the end-to-end ``slo_ms``, its TTFT within ``ttft_ms``
    and its mean inter-token gap (TPOT) within ``itl_ms`` (an unset one is not checked): the rule of the
    simulator's token pools. Attainments are shares of every request sent (a failure misses). ``itlMs`` pools
    every gap of every served answer; ``routed`` is per model that served answers (its share of them and their
    exact match)."""
    served = [r for r in records if r.error is None and r.latency_ms is not None]
    gaps = [g for r in served for g in (r.gaps_ms or ())]
    first = [r.ttft_ms is not None and (ttft_ms is None or r.ttft_ms <= ttft_ms) for r in served]
    pace = [itl_ms is None or _tpot(r) <= itl_ms for r in served]
    met = sum(1 for r, f, p in zip(served, first, pace, strict=True)
              if f and p and r.latency_ms is not None and r.latency_ms <= slo_ms)
    sent = len(records)
    by_model: dict[str, list[RequestRecord]] = {}
    for r in served:
        by_model.setdefault(r.variant or "unknown", []).append(r)

    def share(count: int, of: int) -> float | None:
        return round(count / of, 4) if of else None

    return {
        "ttftMs": _percentiles([r.ttft_ms for r in served if r.ttft_ms is not None]),
        "itlMs": _percentiles(gaps),
        "tpotMs": _percentiles([_tpot(r) for r in served]),
        "tokens": {"served": sum(len(r.gaps_ms or ()) + 1 for r in served if r.ttft_ms is not None),
                   "meanPerAnswer": round(float(np.mean([len(r.gaps_ms or ()) + 1 for r in served])), 3)
                   if served else None},
        "slo": {"latencyMs": slo_ms, "ttftMs": ttft_ms, "itlMs": itl_ms,
                "attainment": share(met, sent), "ttftAttainment": share(sum(first), sent),
                "itlAttainment": share(sum(pace), sent)},
        "routed": {model: {"requests": len(rs), "share": share(len(rs), len(served)),
                           "exactMatch": share(sum(1 for r in rs if r.predicted == r.label), len(rs))}
                   for model, rs in sorted(by_model.items())},
    }


def summarize(records: Sequence[RequestRecord], events: Sequence[AppliedEvent], *, slo_ms: float,
              percentile: int, start: float, end: float, trace: Mapping[str, Any] | None = None,
              pipeline: str = "", steps: Sequence[LoopStep] = (),
              generation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run summary as a JSON-able dict. ``generation`` (`completions.generation_slo`: the stage's ``ttftMs``
    and ``itlMs``) adds `generation_summary` for a token-generating pipeline."""
    ok = [r for r in records if r.error is None and r.latency_ms is not None]
    latencies = [r.latency_ms for r in ok if r.latency_ms is not None]
    errors: dict[str, int] = {}
    for r in records:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    within = sum(1 for v in latencies if v <= slo_ms)
    correct = sum(1 for r in ok if r.predicted == r.label)
    during = [e for e in events if start <= e.time <= end]
    in_force = [e for e in events if e.time < start and e.error is None]
    seconds = max(end - start, 1e-9)
    spent = core_seconds(events, start, end)
    stats = _percentiles(latencies)
    at_slo = stats.get(f"p{percentile}")
    return {
        "pipeline": pipeline,
        "trace": dict(trace or {}),
        "durationSeconds": round(end - start, 2),
        "requests": {"sent": len(records), "ok": len(ok), "failed": len(records) - len(ok), "errors": errors},
        "latencyMs": stats,
        "slo": {"latencyMs": slo_ms, "percentile": percentile,
                "attainment": round(within / len(records), 4) if records else None,
                "percentileMet": None if at_slo is None else at_slo <= slo_ms},
        "accuracy": round(correct / len(ok), 4) if ok else None,
        "cost": {"coreSeconds": round(spent, 2), "meanCores": round(spent / seconds, 3)},
        "planAtStart": None if not in_force else {
            "cores": in_force[-1].cores, "instances": dict(in_force[-1].instances),
            "thresholds": dict(in_force[-1].thresholds), "batch": dict(in_force[-1].batch)},
        "coresEnforced": any(e.cpu_quota is not None for e in events),
        "changes": plan_changes(events, steps, start=start, end=end),
        "reconfigurations": {
            "applied": sum(1 for e in during if e.error is None),
            "failed": sum(1 for e in during if e.error is not None),
            "tritonInstanceUpdates": sum(1 for e in during for c in e.triton_changes if c[1] == "instances"),
            "tritonReloads": sum(1 for e in during for c in e.triton_changes if c[1] == "reload"),
        },
        **({"nodes": nodes} if (nodes := node_timing(records)) else {}),
        **({"generation": generation_summary(records, slo_ms=slo_ms, ttft_ms=generation.get("ttftMs"),
                                             itl_ms=generation.get("itlMs"))} if generation is not None else {}),
    }


MAX_CHANGE_LINES = 12


def format_summary(summary: Mapping[str, Any]) -> str:
    """A short human rendering (the JSON is printed or written next to it)."""
    req, lat, slo, cost, rec = (summary[k] for k in ("requests", "latencyMs", "slo", "cost", "reconfigurations"))
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(req["errors"].items())) or "none"
    attainment = "n/a" if slo["attainment"] is None else f"{100 * slo['attainment']:.2f}%"
    accuracy = "n/a" if summary["accuracy"] is None else f"{100 * summary['accuracy']:.2f}%"
    generation = summary.get("generation")
    lines = [
        f"pipeline {summary['pipeline']}: {req['sent']} requests in {summary['durationSeconds']:.0f}s, "
        f"{req['ok']} ok, {req['failed']} failed ({errors})",
        f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}",
        f"SLO {slo['latencyMs']:g} ms at p{slo['percentile']}: attainment {attainment}, "
        f"p{slo['percentile']} met: {slo['percentileMet']}",
        *(_generation_lines(generation) if generation else []),
        f"{'exact match' if generation else 'accuracy'} {accuracy}; cost {cost['coreSeconds']} core-seconds (mean "
        f"{cost['meanCores']} cores"
        + ("; Triton held to them by a CPU quota)" if summary.get("coresEnforced") else ")"),
        f"reconfigurations: {rec['applied']} plans applied ({rec['tritonInstanceUpdates']} instance updates, "
        f"{rec['tritonReloads']} reloads), {rec['failed']} failed",
    ]
    start = summary.get("planAtStart")
    if start:
        instances = ", ".join(f"{m} x{n}" for m, n in sorted(start["instances"].items()))
        thresholds = "".join(f", {s} threshold {t:g}" for s, t in sorted(start["thresholds"].items()) if t is not None)
        lines.append(f"plan at start: {start['cores']:g} cores, Triton instances {instances}{thresholds}")
    changes = summary.get("changes") or []
    if changes:
        lines.append("what changed, when and why:")
    for change in changes[:MAX_CHANGE_LINES]:
        why = [] if change["observedRps"] is None else [f"saw {change['observedRps']:g} rps"]
        if change["plannedForRps"] is not None:
            why.append(f"planned for {change['plannedForRps']:g} rps")
        reason = f"{', '.join(why)}: {change['why']}" if why else change["why"] or "no loop step recorded"
        lines.append(f"  {change['atSeconds']:6.1f}s  {', '.join(change['changed'])}  ({reason})")
    if len(changes) > MAX_CHANGE_LINES:
        lines.append(f"  ... {len(changes) - MAX_CHANGE_LINES} more in summary.json")
    nodes = summary.get("nodes") or {}
    if nodes:
        lines.append("per stage (ms since the router got the request: median start, median / p99 duration):")
        lines += [f"  {stage:<16} start {n['startP50Ms']:8.2f}  took {n['durationP50Ms']:8.2f} / "
                  f"{n['durationP99Ms']:.2f}" for stage, n in nodes.items()]
    router = summary.get("router") or {}
    if router.get("deferredShare") is not None:
        lines.append(f"router: {router['deferrals']} rows deferred light -> heavy "
                     f"({100 * router['deferredShare']:.1f}% of cascade rows)")
    if "wallSeconds" in summary:
        lines.append(f"wall time {summary['wallSeconds']:.0f}s (startup {summary.get('startupSeconds', 0):.0f}s)")
    return "\n".join(lines)


def _generation_lines(generation: Mapping[str, Any]) -> list[str]:
    ttft, itl, slo = generation["ttftMs"], generation["itlMs"], generation["slo"]

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    checks = [f"{name} <= {slo[key]:g} ms" for name, key in (("TTFT", "ttftMs"), ("TPOT", "itlMs"))
              if slo[key] is not None]
    routed = ", ".join(f"{model} {pct(r['share'])} (exact match {pct(r['exactMatch'])})"
                       for model, r in generation["routed"].items()) or "none"
    return [
        f"TTFT ms: p50 {ttft['p50']}  p99 {ttft['p99']}; inter-token ms: p50 {itl['p50']}  p99 {itl['p99']} "
        f"(client side)",
        f"SLO end to end {slo['latencyMs']:g} ms{''.join(' and ' + c for c in checks)}: attainment "
        f"{pct(slo['attainment'])} (TTFT {pct(slo['ttftAttainment'])}, TPOT {pct(slo['itlAttainment'])})",
        f"served by: {routed}",
    ]


def _per_second(records: Sequence[RequestRecord],
                seconds: int) -> tuple[list[int], list[int], list[float], list[float]]:
    offered = [0] * seconds
    done = [0] * seconds
    buckets: list[list[float]] = [[] for _ in range(seconds)]
    for r in records:
        s = min(seconds - 1, max(0, int(r.offset_s)))
        offered[s] += 1
        if r.error is None and r.latency_ms is not None:
            done[s] += 1
            buckets[s].append(r.latency_ms)
    p50 = [float(np.percentile(b, 50)) if b else float("nan") for b in buckets]
    p99 = [float(np.percentile(b, 99)) if b else float("nan") for b in buckets]
    return offered, done, p50, p99


def write_plots(out_dir: Path, records: Sequence[RequestRecord], events: Sequence[AppliedEvent],
                steps: Sequence[LoopStep], *, start: float, end: float, slo_ms: float) -> list[Path]:
    """``load.png``, ``latency.png`` and ``config.png`` in ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    seconds = max(1, int(np.ceil(end - start)))
    offered, done, p50, p99 = _per_second(records, seconds)
    xs = list(range(seconds))
    paths = []

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.step(xs, offered, where="post", label="offered (trace × scale)")
    ax.step(xs, done, where="post", label="completed ok", alpha=0.7)
    rounds = [s for s in steps if start <= s.time <= end and s.planned]
    checks = [s for s in steps if start <= s.time <= end and not s.planned]
    if rounds:
        ax.plot([s.time - start for s in rounds], [s.predicted_rps for s in rounds], "o--",
                label="load the loop planned for (with headroom)")
    if checks:
        ax.plot([s.time - start for s in checks], [s.predicted_rps for s in checks], ".", color="gray",
                label="load checks between rounds (recent peak)")
    ax.set(xlabel="seconds", ylabel="requests/s", title="Load")
    ax.legend(loc="upper right", fontsize=8)
    paths.append(_save(fig, out_dir / "load.png"))

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(xs, p50, label="p50")
    ax.plot(xs, p99, label="p99")
    ax.axhline(slo_ms, color="red", linestyle=":", label=f"SLO {slo_ms:g} ms")
    failed = [int(r.offset_s) for r in records if r.error is not None]
    if failed:
        ax.plot(failed, [slo_ms] * len(failed), "x", color="black", label="failed requests")
    ax.set(xlabel="seconds", ylabel="latency ms (per second)", title="Latency", yscale="log")
    ax.legend(loc="upper left", fontsize=8)
    paths.append(_save(fig, out_dir / "latency.png"))

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ok_events = sorted((e for e in events if e.error is None), key=lambda e: e.time)
    models = sorted({m for e in ok_events for m in e.instances})
    threshold_stages = sorted({s for e in ok_events for s, t in e.thresholds.items() if t is not None})

    def series(values: list[float]) -> tuple[list[float], list[float]]:
        times = [max(0.0, e.time - start) for e in ok_events] + [end - start]
        return times, values + values[-1:]

    top = 1.0
    if ok_events:
        for i, model in enumerate(models):  # a small offset keeps equal counts of several models visible
            values = [float(e.instances.get(model, 0)) for e in ok_events]
            ax.step(*series([v + 0.04 * i for v in values]), where="post", linewidth=2, label=f"{model} instances")
            top = max(top, *values)
        cores = [e.cores for e in ok_events]
        ax.step(*series(cores), where="post", linestyle="--", color="gray", label="planned cores")
        top = max(top, *cores)
    ax.set(xlabel="seconds", ylabel="instances / cores", title="Applied configuration", xlim=(0, end - start),
           ylim=(0, top + 1))
    ax.legend(loc="upper left", fontsize=8)
    if threshold_stages and ok_events:
        twin = ax.twinx()
        for stage in threshold_stages:
            twin.step(*series([float(e.thresholds.get(stage) or 0.0) for e in ok_events]), where="post",
                      color="purple", label=f"{stage} threshold")
        twin.set(ylabel="cascade threshold", ylim=(0, 1.05))
        twin.legend(loc="upper right", fontsize=8)
    paths.append(_save(fig, out_dir / "config.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
