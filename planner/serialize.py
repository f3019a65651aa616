"""Plans as JSON-safe dicts and back: the shape of `status.plan` and of `paretoserve plan --json`.

The operator persists the applied plan in the CR status and reads it back after a restart, so the
round trip must be lossless for everything an actuator uses (allocations, thresholds, totals). Whoever
may patch the status subresource may write anything there, so `plan_from_json` trusts nothing: every
field must have its type and lie within the bounds a planned plan can have, or it raises
`PlanFormatError` (a ValueError) naming the field -- never an OverflowError, never an absurd replica count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from paretoserve.planner.model import (
    Allocation,
    Binding,
    InfeasibleReason,
    Plan,
    SolveStatus,
    StagePlan,
)

MAX_REPLICAS = 10000
MAX_RATE = 1e15
MAX_MS = 1e12
MAX_MESSAGE = 32768
ROLES = ("main", "light", "heavy")


class PlanFormatError(ValueError):
    """A stored plan that is not one the planner could have made."""


def _number(value: Any, where: str, low: float = 0.0, high: float = MAX_MS) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanFormatError(f"{where}: must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise PlanFormatError(f"{where}: must lie in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _optional(value: Any, where: str, low: float = -MAX_MS, high: float = MAX_MS) -> float | None:
    return None if value is None else _number(value, where, low, high)


def _integer(value: Any, where: str, low: int, high: int) -> int:
    number = _number(value, where, low, high)
    if not number.is_integer():
        raise PlanFormatError(f"{where}: must be an integer, got {value!r}")
    return int(number)


def _text(value: Any, where: str, limit: int = 253) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise PlanFormatError(f"{where}: must be a string of at most {limit} characters")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PlanFormatError(f"{where}: must be an object")
    return value


def _list(value: Any, where: str, limit: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise PlanFormatError(f"{where}: must be a list of at most {limit} items")
    return value


def _gpus(value: Any, where: str, high: float) -> tuple[tuple[str, float], ...]:
    items = _mapping(value or {}, where)
    if len(items) > 16:
        raise PlanFormatError(f"{where}: at most 16 resources")
    return tuple(sorted((_text(k, where), _number(v, f"{where}.{k}", 0.0, high)) for k, v in items.items()))


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
        "message": plan.message[:MAX_MESSAGE],
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


def plan_from_json(data: Mapping[str, Any]) -> Plan:
    """Inverse of `plan_json` (rounding aside); raises `PlanFormatError` for anything a planner cannot have
    written (wrong types, non-finite numbers, values outside the API's bounds)."""
    data = _mapping(data, "plan")
    reason = data.get("reason")
    stages = []
    for i, s in enumerate(_list(data.get("stages", []), "plan.stages", 64)):
        at = f"plan.stages[{i}]"
        s = _mapping(s, at)
        allocations = []
        for j, a in enumerate(_list(s["allocations"], f"{at}.allocations", 64)):
            where = f"{at}.allocations[{j}]"
            a = _mapping(a, where)
            role = a["role"]
            if role not in ROLES:
                raise PlanFormatError(f"{where}.role: must be one of {', '.join(ROLES)}, got {role!r}")
            allocations.append(Allocation(
                variant=_text(a["variant"], f"{where}.variant"), batch=_integer(a["batch"], f"{where}.batch", 1, 4096),
                cpu=_number(a["cpu"], f"{where}.cpu", 0.0, 1024.0),
                instances=_integer(a["instances"], f"{where}.instances", 1, 64),
                replicas=_integer(a["replicas"], f"{where}.replicas", 0, MAX_REPLICAS),
                load_rps=_number(a["loadRps"], f"{where}.loadRps", 0.0, MAX_RATE),
                latency_ms=_number(a["latencyMs"], f"{where}.latencyMs"),
                queue_delay_ms=_number(a["queueDelayMs"], f"{where}.queueDelayMs"), role=role,
                gpus=_gpus(a.get("gpus"), f"{where}.gpus", 64.0),
            ))
        row = s.get("cascadeRow")
        stages.append(StagePlan(
            stage=_text(s["name"], f"{at}.name"),
            allocations=tuple(allocations),
            start_ms=_number(s["startMs"], f"{at}.startMs"),
            latency_ms=_number(s["latencyMs"], f"{at}.latencyMs"),
            accuracy=_number(s["accuracy"], f"{at}.accuracy", -math.inf, math.inf),
            threshold=_optional(s.get("threshold"), f"{at}.threshold", 0.0, 1.0),
            heavy_fraction=_optional(s.get("heavyFraction"), f"{at}.heavyFraction", 0.0, 1.0),
            cascade_row=None if row is None else _integer(row, f"{at}.cascadeRow", 0, 255),
        ))
    binding = None
    if reason:
        reason = _mapping(reason, "plan.reason")
        stage = reason.get("stage")
        binding = InfeasibleReason(Binding(reason["binding"]),
                                   _text(reason["message"], "plan.reason.message", MAX_MESSAGE),
                                   None if stage is None else _text(stage, "plan.reason.stage"))
    solver = data.get("solver", "")
    return Plan(
        status=SolveStatus(data["status"]),
        stages=tuple(stages),
        objective=_optional(data.get("objective"), "plan.objective", -math.inf, math.inf),
        accuracy=_optional(data.get("accuracy"), "plan.accuracy", -math.inf, math.inf),
        cost=_optional(data.get("cost"), "plan.cost", 0.0, math.inf),
        cpu=_optional(data.get("cpu"), "plan.cpu", 0.0, MAX_RATE),
        gpus=_gpus(data.get("gpus"), "plan.gpus", MAX_RATE),
        latency_ms=_optional(data.get("latencyMs"), "plan.latencyMs", 0.0),
        solver=_text(solver, "plan.solver", 64),
        reason=binding,
        message=_text(data.get("message", ""), "plan.message", MAX_MESSAGE),
        solve_ms=_optional(data.get("solveMs"), "plan.solveMs", 0.0),
    )
