"""Live settings for the worker pods, through their router sidecars' admin API.

Thresholds and traffic splits go to `POST /admin/config`; the pod's Triton knobs (instance count, dynamic
batching) to `POST /admin/worker`, which the sidecar applies to its own Triton. The ConfigMap holds each
router's full config for its next start; a running router gets the parts that may change live from the
operator after every actuation.

The admin API listens on its own port and wants the pipeline's bearer token (`children.admin_token`).
Pushes are best effort and bounded: pods are pushed concurrently, each call has a short timeout, and the
caller waits at most `budget_s` for all of them; a push still running then (a Triton reload can take
seconds) finishes in the background and is reported as pending, and a pod with a push in flight is not
pushed again. So a slow or hostile pod costs the adaptation loop at most the budget, never a tick per pod.
A router that misses a push gets the next one, and its ConfigMap's `worker.json` is what it converges to.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import httpx

from paretoserve.operator.naming import ROUTER_ADMIN_PORT


@dataclass(frozen=True, slots=True)
class PushReport:
    pushed: int
    failed: tuple[str, ...]
    pending: tuple[str, ...] = ()


class RouterPusher:
    """One HTTP client and one small thread pool for the operator's lifetime."""

    def __init__(self, *, timeout_s: float = 1.0, worker_timeout_s: float = 30.0, budget_s: float = 2.0,
                 max_workers: int = 16, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 0.5)),
                                    transport=transport)
        self._worker_timeout = httpx.Timeout(worker_timeout_s, connect=min(timeout_s, 0.5))
        self._budget_s = budget_s
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="paretoserve-push")
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()

    def _push_one(self, ip: str, update: dict[str, Any], knobs: dict[str, Any], token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        base = f"http://{ip}:{ROUTER_ADMIN_PORT}"
        try:
            self._client.post(f"{base}/admin/config", json=update, headers=headers).raise_for_status()
            if knobs:
                self._client.post(f"{base}/admin/worker", json=knobs, headers=headers,
                                  timeout=self._worker_timeout).raise_for_status()
        finally:
            with self._lock:
                self._in_flight.discard(ip)

    def push(self, targets: Iterable[tuple[str, dict[str, Any]]], update: dict[str, Any], *,
             token: str) -> PushReport:
        """Per (pod IP, worker knobs): the live router settings, then the pod's Triton knobs."""
        futures: dict[Future[None], str] = {}
        skipped: list[str] = []
        for ip, knobs in targets:
            with self._lock:
                if ip in self._in_flight:
                    skipped.append(ip)
                    continue
                self._in_flight.add(ip)
            futures[self._pool.submit(self._push_one, ip, update, knobs, token)] = ip
        done, _ = wait(futures, timeout=self._budget_s, return_when=ALL_COMPLETED)
        pushed, failed = 0, []
        for future, ip in futures.items():
            if future not in done:
                continue
            error = future.exception()
            if error is None:
                pushed += 1
            else:
                failed.append(f"{ip}: {type(error).__name__}")
        pending = [ip for future, ip in futures.items() if future not in done] + skipped
        return PushReport(pushed, tuple(failed), tuple(pending))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
