"""The operator's own /metrics: decisions, solver outcomes and solve time per pipeline.

Metrics are registered in an explicit registry (tests pass a fresh one) and served by
prometheus_client's HTTP server started from the kopf startup handler.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from paretoserve.operator.naming import Owner
from paretoserve.planner.model import Plan, SolveStatus
from paretoserve.workers.observe import contract as metric

REGISTRY = CollectorRegistry(auto_describe=True)

DECISIONS = Counter(
    metric.OPERATOR_DECISIONS, "Planning decisions by outcome",
    [metric.NAMESPACE, metric.PIPELINE, metric.SOLVER_STATUS, metric.APPLIED], registry=REGISTRY,
)
SOLVE_SECONDS = Histogram(
    metric.OPERATOR_SOLVE_SECONDS, "Time to build and solve the integer program",
    [metric.NAMESPACE, metric.PIPELINE], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def record_decision(owner: Owner, candidate: Plan, *, applied: bool) -> None:
    DECISIONS.labels(owner.namespace, owner.name, candidate.status.value, str(applied).lower()).inc()
    if candidate.solve_ms is not None:
        SOLVE_SECONDS.labels(owner.namespace, owner.name).observe(candidate.solve_ms / 1000.0)


def forget(namespace: str, name: str) -> None:
    """Drop a deleted pipeline's series, so that churn does not grow the operator's /metrics forever."""
    for status in SolveStatus:
        for applied in ("true", "false"):
            with contextlib.suppress(KeyError):
                DECISIONS.remove(namespace, name, status.value, applied)
    with contextlib.suppress(KeyError):
        SOLVE_SECONDS.remove(namespace, name)


def start_metrics_server(port: int) -> None:
    start_http_server(port, registry=REGISTRY)
