"""Live settings for the worker pods, through their router sidecars.

Thresholds and traffic splits go to `POST /admin/config`; the pod's Triton knobs (instance count, dynamic
batching) to `POST /admin/worker`, which the sidecar applies to its own Triton.
The ConfigMap holds each router's full config for its next start; a running router gets the parts that
may change live (cascade thresholds, pre-routing threshold, variant weights) from the operator after
every actuation. Pushes are best effort with a short timeout: a router that misses one gets the next,
and the result is reported in the pipeline's Progressing condition rather than failing the plan.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from paretoserve.operator.children import ROUTER_PORT


@dataclass(frozen=True, slots=True)
class PushReport:
    pushed: int
    failed: tuple[str, ...]


class RouterPusher:
    """One HTTP client for the operator's lifetime; `push` posts an update to each pod's router."""

    def __init__(self, *, timeout_s: float = 0.5, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), transport=transport)

    def push(self, targets: Iterable[tuple[str, dict[str, Any]]], update: dict[str, Any]) -> PushReport:
        """Per (pod IP, worker knobs): the live router settings, then the pod's Triton knobs."""
        pushed, failed = 0, []
        for ip, knobs in targets:
            try:
                response = self._client.post(f"http://{ip}:{ROUTER_PORT}/admin/config", json=update)
                response.raise_for_status()
                if knobs:
                    response = self._client.post(f"http://{ip}:{ROUTER_PORT}/admin/worker", json=knobs,
                                                 timeout=httpx.Timeout(120.0, connect=1.0))
                    response.raise_for_status()
                pushed += 1
            except httpx.HTTPError as exc:
                failed.append(f"{ip}: {type(exc).__name__}")
        return PushReport(pushed, tuple(failed))

    def close(self) -> None:
        self._client.close()
