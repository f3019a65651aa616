"""Human and JSON renderings of a `Plan`, shared by the CLI, the runtime and the operator status."""

from __future__ import annotations

from typing import Any

from paretoserve.planner.model import Plan


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def plan_json(plan: Plan) -> dict[str, Any]:
    """A JSON-safe dict; also the shape stored in a ServingPipeline's `status.plan`."""
    return {
        "status": plan.status.value,
        "objective": _round(plan.objective, 6),
        "accuracy": _round(plan.accuracy, 6),
        "cost": _round(plan.cost, 4),
        "cpu": _round(plan.cpu, 3),
        "gpus": dict(plan.gpus),
        "latencyMs": _round(plan.latency_ms),
        "solver": plan.solver,
        "solveMs": _round(plan.solve_ms),
        "message": plan.message,
        "reason": None if plan.reason is None else {
            "binding": plan.reason.binding.value, "message": plan.reason.message, "stage": plan.reason.stage,
        },
        "stages": [
            {
                "name": sp.stage,
                "startMs": _round(sp.start_ms),
                "latencyMs": _round(sp.latency_ms),
                "accuracy": _round(sp.accuracy, 6),
                "threshold": sp.threshold,
                "heavyFraction": sp.heavy_fraction,
                "allocations": [
                    {
                        "variant": a.variant, "role": a.role, "batch": a.batch, "cpu": a.cpu,
                        "instances": a.instances, "replicas": a.replicas, "loadRps": _round(a.load_rps),
                        "latencyMs": _round(a.latency_ms), "queueDelayMs": _round(a.queue_delay_ms),
                        "gpus": dict(a.gpus),
                    }
                    for a in sp.allocations
                ],
            }
            for sp in plan.stages
        ],
    }


def plan_table(plan: Plan) -> str:
    header = ("stage", "variant", "batch", "replicas", "cores", "threshold", "latency ms", "accuracy")
    rows: list[tuple[str, ...]] = []
    for sp in plan.stages:
        for a in sp.allocations:
            variant = a.variant if a.role == "main" else f"{a.variant} ({a.role})"
            rows.append((
                sp.stage, variant, str(a.batch), str(a.replicas), f"{a.cpu:g}",
                "" if sp.threshold is None else f"{sp.threshold:g}",
                f"{a.latency_ms + a.queue_delay_ms:.1f}", f"{sp.accuracy:.4f}",
            ))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    summary = f"status: {plan.status.value}"
    if plan.status.has_plan:
        summary += (f"  accuracy: {plan.accuracy:.4f}  cost: {plan.cost:.3f}  cores: {plan.cpu:g}"
                    f"  latency: {plan.latency_ms:.1f} ms  objective: {plan.objective:.6f}")
        if plan.gpus:
            summary += "  " + "  ".join(f"{k}: {v:g}" for k, v in plan.gpus)
    if plan.reason is not None:
        summary += f"  binding: {plan.reason.binding.value}"
    if plan.message:
        summary += f"  ({plan.message})"
    if plan.solve_ms is not None:
        summary += f"  solve: {plan.solve_ms:.1f} ms ({plan.solver})"
    return "\n".join(lines + [summary])
