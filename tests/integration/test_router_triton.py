"""The router in front of the REAL Triton server (the session fixture), not a mock.

Covers: cascade routing at a fixed threshold splits a fixed input set exactly as the offline torch
models' confidences say (confidence and discriminator routers); a live threshold update through
``/admin/config`` changes the split; queued upstream calls are served in deadline order and an
expired one gets an explicit 504; a killed Triton replica is retried on the other one, an unloaded
heavy model falls back to the light one, and with fallback off every request still gets an answer
or an explicit error (sent = answered + errors); the upstream transport's keep-alive, timeout and
refusal handling against plain sockets; one smoke test with real uvicorn on a port.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import CollectorRegistry

from paretoserve.workers.models import ModelCatalog, load_split, load_variant, predict
from paretoserve.workers.router.app import RouterApps, build_router
from paretoserve.workers.router.config import LimitsConfig, RouterConfig, TimeoutConfig, parse_config
from paretoserve.workers.router.errors import UpstreamTimeout, UpstreamUnavailable
from paretoserve.workers.router.serve import ServerThread
from paretoserve.workers.router.upstream import UpstreamPool
from paretoserve.workers.router.worker_knobs import TritonTarget
from paretoserve.workers.triton.control import TritonControl
from paretoserve.workers.triton.repository import TritonModelSpec, write_repository
from paretoserve.workers.triton.server import TritonInstallation, TritonServer, TritonServerConfig

pytestmark = pytest.mark.triton
TOKEN = "integration-token"

ROWS = 96
BATCH = 32
THRESHOLD = 0.9


@dataclass(frozen=True)
class Offline:
    """What the torch models say about the fixed input set (no Triton involved)."""

    images: npt.NDArray[np.float32]
    light_label: npt.NDArray[np.int64]
    light_confidence: npt.NDArray[np.float32]
    heavy_label: npt.NDArray[np.int64]
    p_light_wrong: npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def offline(catalog: ModelCatalog) -> Offline:
    images = load_split().x_test[:ROWS]
    light = predict(load_variant(catalog.variant_dir("tiny_linear")), images)
    heavy = predict(load_variant(catalog.variant_dir("cnn_large")), images)
    judge = predict(load_variant(catalog.variant_dir("discriminator")), images)
    return Offline(images, light.label, light.confidence, heavy.label, judge.probs[:, 1])


def config_for(url: str, *, top: dict[str, Any] | None = None, **stage: Any) -> RouterConfig:
    """One stage ``classify``: the default confidence cascade, another ``cascade``, or (``cascade=None``) ``stage``."""
    cascade = stage.pop("cascade", {"light": "tiny_linear", "heavy": "cnn_large", "threshold": THRESHOLD})
    raw: dict[str, Any] = {
        "pipeline": "digits",
        "stages": [{"name": "classify", "cascade": cascade} if cascade else {"name": "classify", **stage}],
        "upstreams": {m: [url] for m in ("tiny_linear", "cnn_small", "cnn_large", "discriminator")},
        **(top or {}),
    }
    return parse_config(raw)


@asynccontextmanager
async def routed(config: RouterConfig, triton: TritonTarget | None = None,
                 ) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, RouterApps, CollectorRegistry]]:
    """Data client, admin client (with the token), the apps and their registry."""
    registry = CollectorRegistry()
    apps = build_router(config, registry=registry, admin_token=TOKEN, triton=triton)  # the real upstream transport
    async with apps.running(), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=apps.data), base_url="http://router", timeout=120.0
    ) as client, httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.admin), base_url="http://admin",
                                   timeout=180.0, headers={"authorization": f"Bearer {TOKEN}"}) as admin:
        yield client, admin, apps, registry


def body(images: npt.NDArray[np.float32], **extra: Any) -> dict[str, Any]:
    tensor = {"name": "IMAGE", "shape": [len(images), 8, 8], "datatype": "FP32", "data": images.reshape(-1).tolist()}
    return {"inputs": [tensor], **extra}


async def classify(client: httpx.AsyncClient, images: npt.NDArray[np.float32]) -> tuple[list[int], list[str]]:
    labels: list[int] = []
    routes: list[str] = []
    for start in range(0, len(images), BATCH):
        answer = await client.post("/v2/pipelines/digits/infer", json=body(images[start : start + BATCH]))
        assert answer.status_code == 200, answer.text
        labels += next(t for t in answer.json()["outputs"] if t["name"] == "LABEL")["data"]
        routes += answer.json()["parameters"]["routes"].split(",")
    return labels, routes


def expected_split(scores: npt.NDArray[np.float32], threshold: float) -> npt.NDArray[np.bool_]:
    assert np.min(np.abs(scores - threshold)) > 1e-4, "a score sits on the threshold: pick another threshold"
    return scores < threshold


async def test_confidence_cascade_splits_as_the_offline_confidences_say(
    triton_server: TritonServer, offline: Offline
) -> None:
    deferred = expected_split(offline.light_confidence, THRESHOLD)
    async with routed(config_for(f"http://{triton_server.http_url}")) as (client, _, _, registry):
        labels, routes = await classify(client, offline.images)

    assert routes == ["heavy" if d else "light" for d in deferred]
    assert labels == np.where(deferred, offline.heavy_label, offline.light_label).tolist()
    assert 0 < deferred.sum() < ROWS
    assert registry.get_sample_value("paretoserve_router_deferrals_total",
                                     {"pipeline": "digits", "stage": "classify"}) == deferred.sum()


async def test_discriminator_cascade_splits_as_the_offline_discriminator_says(
    triton_server: TritonServer, control: TritonControl, offline: Offline
) -> None:
    threshold = 0.95
    deferred = expected_split(1.0 - offline.p_light_wrong, threshold)
    cascade = {"light": "tiny_linear", "heavy": "cnn_large", "router": "discriminator", "threshold": threshold,
               "discriminator": "discriminator"}
    control.load_model("discriminator")
    try:
        async with routed(config_for(f"http://{triton_server.http_url}", cascade=cascade)) as (client, _, _, _):
            labels, routes = await classify(client, offline.images)
    finally:
        control.unload_model("discriminator")

    assert routes == ["heavy" if d else "light" for d in deferred]
    assert labels == np.where(deferred, offline.heavy_label, offline.light_label).tolist()


async def test_live_threshold_update_changes_the_split(triton_server: TritonServer, offline: Offline) -> None:
    shares = []
    async with routed(config_for(f"http://{triton_server.http_url}")) as (client, admin, _, _):
        for threshold in (0.5, 0.8, 0.97):
            update = {"stages": [{"name": "classify", "cascade": {"threshold": threshold}}]}
            assert (await admin.post("/admin/config", json=update)).status_code == 200
            _, routes = await classify(client, offline.images)
            assert routes == ["heavy" if d else "light" for d in expected_split(offline.light_confidence, threshold)]
            shares.append(routes.count("heavy"))
        refused = await admin.post("/admin/config", json={"stages": [{"name": "classify",
                                                                        "cascade": {"threshold": -1}}]})

    assert shares == sorted(shares) and shares[0] < shares[-1]
    assert refused.status_code == 400 and refused.json()["field"] == "stages[0].cascade.threshold"


async def test_queued_calls_reach_triton_in_deadline_order(triton_server: TritonServer, offline: Offline) -> None:
    config = config_for(f"http://{triton_server.http_url}", cascade=None, variants={"cnn_small": 1},
                        top={"queue": {"concurrency": 1, "maxSize": 16}})
    budgets_ms = {"a": 50_000, "b": 10_000, "c": 40_000, "d": 20_000, "e": 30_000}
    finished: list[str] = []
    async with routed(config) as (client, _, apps, _):
        admission = apps.service.admission
        await admission.acquire(math.inf)  # hold the only upstream slot while the requests queue up

        async def send(name: str, budget_ms: int) -> httpx.Response:
            answer = await client.post("/v2/pipelines/digits/infer", json=body(offline.images[:2], id=name),
                                       headers={"x-paretoserve-deadline-ms": str(budget_ms)})
            finished.append(name)
            return answer

        tasks = [asyncio.create_task(send(name, budget)) for name, budget in budgets_ms.items()]
        while admission.queue_length < len(tasks):
            await asyncio.sleep(0.001)
        admission.release()
        answers = await asyncio.gather(*tasks)

        await admission.acquire(math.inf)
        expired = await client.post("/v2/pipelines/digits/infer", json=body(offline.images[:1]),
                                    headers={"x-paretoserve-deadline-ms": "30"})
        admission.release()

    assert finished == sorted(budgets_ms, key=lambda name: budgets_ms[name])
    assert all(a.status_code == 200 for a in answers)
    assert (expired.status_code, expired.json()["reason"]) == (504, "deadline_exceeded")


@pytest.fixture()
def second_triton(tmp_path: Path, triton_installation: TritonInstallation,
                  served_specs: dict[str, TritonModelSpec]) -> Iterator[TritonServer]:
    """A second, independent Triton serving the heavy model: the replica the test kills."""
    repository = write_repository(tmp_path / "repository", [served_specs["cnn_large"]])
    config = TritonServerConfig(model_repository=repository, models=("cnn_large",), work_dir=tmp_path / "work",
                                backend_cache_dir=tmp_path / "backends")
    with TritonServer(config, triton_installation) as server:
        yield server


async def test_killed_replica_unloaded_model_and_disabled_fallback(
    triton_server: TritonServer, second_triton: TritonServer, control: TritonControl, offline: Offline
) -> None:
    cascade = {"light": "tiny_linear", "heavy": "cnn_large", "threshold": 1.0}  # every row goes to the heavy model
    config = config_for(f"http://{triton_server.http_url}", cascade=cascade)
    config = replace(config, upstreams={**config.upstreams,
                                        "cnn_large": (f"http://{second_triton.http_url}",
                                                      f"http://{triton_server.http_url}")})
    images = offline.images[:4]
    outcomes: list[httpx.Response] = []
    async with routed(config) as (client, admin, _, registry):

        async def send(count: int) -> list[httpx.Response]:
            async def one(i: int) -> httpx.Response:
                await asyncio.sleep(0.002 * i)
                return await client.post("/v2/pipelines/digits/infer", json=body(images))

            answers = list(await asyncio.gather(*(one(i) for i in range(count))))
            outcomes.extend(answers)
            return answers

        both_up = await send(8)
        killing = asyncio.create_task(send(30))
        await asyncio.sleep(0.02)
        assert second_triton.pid is not None
        os.killpg(second_triton.pid, signal.SIGKILL)  # mid-stream, no drain
        replica_killed = await killing
        control.unload_model("cnn_large")
        try:
            heavy_gone = await send(8)
            update = await admin.post("/admin/config", json={"fallback": {"heavyToLight": False}})
            assert update.status_code == 200
            no_fallback = await send(8)
        finally:
            control.load_model("cnn_large")
        failures = registry.get_sample_value("paretoserve_router_upstream_failures_total",
                                             {"pipeline": "digits", "model": "cnn_large",
                                              "reason": "upstream_unavailable"})

    light_labels = offline.light_label[:4].tolist()
    heavy_labels = offline.heavy_label[:4].tolist()
    for answer in both_up + replica_killed:  # the surviving replica answered everything
        assert answer.status_code == 200, answer.text
        assert answer.json()["parameters"]["routes"] == "heavy,heavy,heavy,heavy"
        assert next(t for t in answer.json()["outputs"] if t["name"] == "LABEL")["data"] == heavy_labels
    for answer in heavy_gone:  # heavy model unloaded everywhere: the light answer stands
        assert answer.status_code == 200
        assert answer.json()["parameters"]["routes"] == "fallback,fallback,fallback,fallback"
        assert next(t for t in answer.json()["outputs"] if t["name"] == "LABEL")["data"] == light_labels
    for answer in no_fallback:
        assert answer.status_code == 503
        assert (answer.json()["reason"], answer.json()["model"]) == ("upstream_unavailable", "cnn_large")
    answered = [a for a in outcomes if a.status_code == 200]
    errors = [a for a in outcomes if a.status_code != 200 and a.json().get("reason")]
    assert len(outcomes) == 8 + 30 + 8 + 8 == len(answered) + len(errors)
    assert failures is not None and failures > 0
    assert control.is_model_ready("cnn_large")


def test_real_uvicorn_on_a_port(triton_server: TritonServer, offline: Offline) -> None:
    config = config_for(f"http://{triton_server.http_url}")
    apps = build_router(config, registry=CollectorRegistry(), admin_token=TOKEN)
    with ServerThread(apps) as server, httpx.Client(base_url=server.url, timeout=60.0) as client, \
            httpx.Client(base_url=server.admin_url, timeout=60.0) as admin:
        ready = client.get("/v2/health/ready")
        answer = client.post("/v2/pipelines/digits/infer", json=body(offline.images[:3]),
                             headers={"x-paretoserve-deadline-ms": "30000"})
        proxied = client.post("/v2/models/tiny_linear/infer", json=body(offline.images[:3]))
        not_here = client.get("/admin/config")
        metrics = admin.get("/metrics").text
        anonymous = admin.get("/admin/config")
        current = admin.get("/admin/config", headers={"authorization": f"Bearer {TOKEN}"}).json()

    assert ready.status_code == 200
    assert answer.status_code == 200 and answer.json()["model_name"] == "digits"
    assert proxied.status_code == 200 and proxied.json()["model_name"] == "tiny_linear"
    assert 'paretoserve_pipeline_requests_total{pipeline="digits"} 1.0' in metrics
    assert not_here.status_code == 404 and anonymous.status_code == 401
    assert current["pipeline"] == "digits"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Server:
    """A plain TCP server answering every HTTP request with ``mode``'s behaviour, in a thread."""

    ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self.connections += 1
            with connection:
                connection.recv(65536)
                if self.mode == "silent":
                    connection.recv(65536)  # never answers; returns when the client gives up
                    continue
                connection.sendall(self.ANSWER)  # keep-alive promised, then closed: a stale connection

    def __enter__(self) -> _Server:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._socket.close()


async def test_transport_retries_stale_keepalive_and_maps_timeouts_and_refusals() -> None:
    timeouts = TimeoutConfig(connect_ms=1000, read_ms=200)
    with _Server("close") as closing, _Server("silent") as silent:
        refused = socket.create_server(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{refused.getsockname()[1]}"
        refused.close()
        upstreams = {"closing": [closing.url], "silent": [silent.url], "dead": [dead]}
        async with UpstreamPool(upstreams, timeouts=timeouts, limits=LimitsConfig()) as pool:
            first = await pool.infer("closing", b"{}")
            second = await pool.infer("closing", b"{}")  # the kept connection is dead: a fresh one, no error
            with pytest.raises(UpstreamTimeout, match="ReadTimeout"):
                await pool.infer("silent", b"{}")
            with pytest.raises(UpstreamUnavailable, match="ConnectError"):
                await pool.infer("dead", b"{}")

    assert first == second == b'{"ok":true}'
    assert closing.connections == 2


async def test_the_buffered_proxy_passes_on_to_the_next_replica_and_relays_the_answer() -> None:
    refused = socket.create_server(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{refused.getsockname()[1]}"
    refused.close()
    with _Server("close") as live:
        timeouts = TimeoutConfig(connect_ms=1000, read_ms=2000)
        upstreams = {"m": [dead, live.url], "dead": [dead]}
        async with UpstreamPool(upstreams, timeouts=timeouts, limits=LimitsConfig()) as pool:
            assert pool.forwards_fast("m")
            answers = [await pool.forward("m", b"{}", {"content-type": "application/json"}) for _ in range(2)]
            with pytest.raises(UpstreamUnavailable, match="ConnectError"):
                await pool.forward("dead", b"{}", {})
    for status, raw, content in answers:  # the first call starts at the dead replica and goes on to the live one
        assert status == 200 and content == b'{"ok":true}'
        assert (b"Content-Type", b"application/json") in raw


async def test_worker_knobs_change_triton_instances_while_serving(triton_server: TritonServer,
                                                                   offline: Offline) -> None:
    """`POST /admin/worker` (what the operator sends each pod's sidecar) changes the real Triton's config."""
    base = f"http://{triton_server.http_url}"
    target = TritonTarget(base, triton_server.grpc_url)  # the default: gRPC loads
    async with routed(config_for(base), target) as (client, admin, _, _), httpx.AsyncClient(timeout=30) as triton:
        try:
            knobs = {"models": {"tiny_linear": {"instanceCount": 2, "maxQueueDelayMicroseconds": 300}}}
            answer = await admin.post("/admin/worker", json=knobs)
            assert answer.status_code == 200 and answer.json()["applied"] == ["tiny_linear"]
            config = (await triton.get(f"{base}/v2/models/tiny_linear/config")).json()
            assert config["instance_group"][0]["count"] == 2
            assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 300
            labels, _ = await classify(client, offline.images)  # still serving after the change
            assert len(labels) == len(offline.images)
        finally:
            await admin.post("/admin/worker", json={"models": {"tiny_linear": {"instanceCount": 1}}})


async def test_sidecar_applies_its_configmap_knobs_at_start_and_on_change(triton_server: TritonServer,
                                                                          tmp_path: Path) -> None:
    """`paretoserve router --worker-knobs FILE`, as in every worker pod: no operator push needed."""
    base = f"http://{triton_server.http_url}"
    config = tmp_path / "router.json"
    stages = [{"name": "classify", "variants": {"tiny_linear": 1}}]
    config.write_text(json.dumps({"pipeline": "digits", "stages": stages, "upstreams": {"tiny_linear": [base]}}))
    knobs = tmp_path / "worker.json"

    def write(count: int) -> None:
        knobs.write_text(json.dumps({"models": {"tiny_linear": {"instanceCount": count}}}))

    async def instances(triton: httpx.AsyncClient) -> int:
        count: int = (await triton.get(f"{base}/v2/models/tiny_linear/config")).json()["instance_group"][0]["count"]
        return count

    async def wait_for_instances(triton: httpx.AsyncClient, want: int) -> None:
        deadline = asyncio.get_running_loop().time() + 120
        while await instances(triton) != want:
            assert asyncio.get_running_loop().time() < deadline, f"Triton never reached {want} instances"
            await asyncio.sleep(0.5)

    write(2)
    port, admin_port = free_port(), free_port()
    command = [sys.executable, "-I", "-m", "paretoserve", "router", "--config", str(config), "--port", str(port),
               "--admin-port", str(admin_port), "--triton-url", base, "--triton-grpc-url", triton_server.grpc_url,
               "--worker-knobs", str(knobs), "--log-level", "info"]
    log = (tmp_path / "router.log").open("wb")
    router = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(timeout=30) as triton:
            assert await instances(triton) == 1
            await wait_for_instances(triton, 2)
            write(1)  # the kubelet updating the mounted ConfigMap
            await wait_for_instances(triton, 1)
        assert router.poll() is None, (tmp_path / "router.log").read_text()
    finally:
        router.send_signal(signal.SIGINT)
        router.wait(timeout=30)
        log.close()
