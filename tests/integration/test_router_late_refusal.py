"""Late requests refused end to end (``slo.lateRequests: refuse``), with the REAL Triton behind the router.

The operator sends each pod's sidecar a ``queueTimeoutMicroseconds`` knob; the sidecar loads it into its own
Triton as the queue policy (action ``REJECT``), and Triton answers a request that waited longer with a 503
``Request timeout expired``. The router must pass that on as a 503, never as a 200, and must not retry it on
another replica or fall back to another variant: it has waited too long to be on time anywhere. Both fronts
(Python alone, and the compiled fast path in front of it) are driven.

Determinism without timing: the knob body also sets a 50 ms batching delay with a preferred batch of 8, so a
lone request always waits in Triton's queue for its batch; with a 1 µs queue timeout every lone request is
refused, and with the timeout back at 0 every one is served. Two replica URLs name the same Triton, so a retry
would show as a second failure in Triton's own counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from paretoserve.workers.models import load_split
from paretoserve.workers.router.app import build_router
from paretoserve.workers.router.config import parse_config
from paretoserve.workers.router.serve import ServerThread
from paretoserve.workers.router.worker_knobs import TritonTarget
from paretoserve.workers.triton.control import ModelMetrics, TritonControl
from paretoserve.workers.triton.server import TritonServer

pytestmark = pytest.mark.triton

MODEL = "cnn_small"
TOKEN = "late-token"
REQUESTS = 6


@pytest.fixture(scope="module", params=["python", "fastpath"])
def router(request: pytest.FixtureRequest, triton_server: TritonServer) -> Iterator[tuple[str, str]]:
    """(data URL, admin URL) of a sidecar router whose own Triton is the test server."""
    fastpath = request.getfixturevalue("fastpath_binary") if request.param == "fastpath" else None
    port = triton_server.http_url.rsplit(":", 1)[1]
    own, alias = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
    config = parse_config({
        "pipeline": "digits",
        "stages": [{"name": "classify", "variants": {MODEL: 1, "tiny_linear": 0}}],  # tiny_linear: a fallback only
        "upstreams": {MODEL: [own, alias], "tiny_linear": [own]},
        "fallback": {"otherVariants": True},
    })
    apps = build_router(config, registry=CollectorRegistry(), admin_token=TOKEN,
                        triton=TritonTarget(own, grpc_url=triton_server.grpc_url))
    with ServerThread(apps, fastpath=fastpath) as server:
        yield server.url, server.admin_url


def _knobs(admin_url: str, timeout_us: int | None) -> None:
    knobs: dict[str, Any] = {"instanceCount": 1, "preferredBatchSize": 8, "maxQueueDelayMicroseconds": 50_000}
    if timeout_us is not None:
        knobs["queueTimeoutMicroseconds"] = timeout_us
    answer = httpx.post(f"{admin_url}/admin/worker", json={"models": {MODEL: knobs}},
                        headers={"authorization": f"Bearer {TOKEN}"}, timeout=180.0)
    assert answer.status_code == 200, answer.text


def _body() -> dict[str, Any]:
    image = np.asarray(load_split().x_test[:1], dtype=np.float32)
    return {"inputs": [{"name": "IMAGE", "shape": [1, 8, 8], "datatype": "FP32", "data": image.ravel().tolist()}]}


def test_a_request_past_its_queue_timeout_is_a_503_tried_once_on_both_paths(
        router: tuple[str, str], triton_server: TritonServer, control: TritonControl) -> None:
    data_url, admin_url = router
    body = _body()
    try:
        _knobs(admin_url, 1)
        policy = httpx.get(f"http://{triton_server.http_url}/v2/models/{MODEL}/config").json()[
            "dynamic_batching"]["default_queue_policy"]
        assert (policy["timeout_action"], int(policy["default_timeout_microseconds"])) == ("REJECT", 1)
        before = control.metrics()
        with httpx.Client(base_url=data_url, timeout=60.0) as client:
            proxied = [client.post(f"/v2/models/{MODEL}/infer", json=body) for _ in range(REQUESTS)]
            pipelined = [client.post("/v2/pipelines/digits/infer", json=body) for _ in range(REQUESTS)]
        for answer in proxied + pipelined:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == f"a replica of model '{MODEL}' answered 503: Request timeout expired"
            assert answer.json()["reason"] == "late_refused"
        assert all(a.json()["stage"] == "classify" for a in pipelined)  # named, and no fallback answered it
        failures = _settled(control, before, 2 * REQUESTS)
        assert failures == 2 * REQUESTS  # one Triton attempt per request: never retried on the alias
        assert control.metrics()["tiny_linear"].since(before["tiny_linear"]).request_success == 0

        _knobs(admin_url, 0)
        with httpx.Client(base_url=data_url, timeout=60.0) as client:
            served = [client.post(f"/v2/models/{MODEL}/infer", json=body) for _ in range(3)]
        assert [a.status_code for a in served] == [200, 200, 200]
    finally:
        _knobs(admin_url, 0)


def _settled(control: TritonControl, before: dict[str, ModelMetrics], expected: int) -> float:
    """``MODEL``'s failures since ``before``, read until they reach ``expected`` (Triton may count a request just
    after answering it) or 10 s pass; a count above ``expected`` shows at once."""
    deadline = time.monotonic() + 10.0
    while True:
        failures = control.metrics()[MODEL].since(before[MODEL]).request_failure
        if failures >= expected or time.monotonic() > deadline:
            return failures
        time.sleep(0.05)
