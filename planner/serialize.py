"""Plans as JSON-safe dicts and back: the shape of `status.plan` and of `paretoserve plan --json`.

The operator persists the applied plan in the CR status and reads it back after a restart, so the
round trip must be lossless for everything an actuator uses (allocations, thresholds, totals).
"""

from __future__ import annotations

from typing import Any

from paretoserve.planner.model import (
    Allocation,
    Binding,
    InfeasibleReason,
    Plan,
    SolveStatus,
    StagePlan,
)


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
                "cascadeRow": sp.cascade_row,
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


def plan_from_json(data: dict[str, Any]) -> Plan:
    """Inverse of `plan_json` (rounding aside)."""
    reason = data.get("reason")
    return Plan(
        status=SolveStatus(data["status"]),
        stages=tuple(
            StagePlan(
                stage=s["name"],
                allocations=tuple(
                    Allocation(
                        variant=a["variant"], batch=int(a["batch"]), cpu=float(a["cpu"]),
                        instances=int(a["instances"]), replicas=int(a["replicas"]), load_rps=float(a["loadRps"]),
                        latency_ms=float(a["latencyMs"]), queue_delay_ms=float(a["queueDelayMs"]), role=a["role"],
                        gpus=tuple(sorted((k, float(v)) for k, v in a.get("gpus", {}).items())),
                    )
                    for a in s["allocations"]
                ),
                start_ms=float(s["startMs"]),
                latency_ms=float(s["latencyMs"]),
                accuracy=float(s["accuracy"]),
                threshold=s.get("threshold"),
                heavy_fraction=s.get("heavyFraction"),
                cascade_row=s.get("cascadeRow"),
            )
            for s in data.get("stages", [])
        ),
        objective=data.get("objective"),
        accuracy=data.get("accuracy"),
        cost=data.get("cost"),
        cpu=data.get("cpu"),
        gpus=tuple(sorted((k, float(v)) for k, v in (data.get("gpus") or {}).items())),
        latency_ms=data.get("latencyMs"),
        solver=data.get("solver", ""),
        reason=None if not reason else InfeasibleReason(Binding(reason["binding"]), reason["message"],
                                                        reason.get("stage")),
        message=data.get("message", ""),
        solve_ms=data.get("solveMs"),
    )
