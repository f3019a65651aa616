"""The human rendering of a `Plan` (the JSON form lives in `paretoserve.planner.serialize`)."""

from __future__ import annotations

from paretoserve.planner.model import Plan
from paretoserve.planner.serialize import plan_json

__all__ = ["plan_json", "plan_table"]


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
