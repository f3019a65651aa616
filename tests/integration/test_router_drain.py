"""SIGTERM drains a REAL ``paretoserve router`` process: it serves on, each connection closed after its answer.

A terminating worker pod's endpoint removal takes a moment to reach every node's proxy, and clients hold
kept-alive connections to the pod. The router therefore answers SIGTERM by draining for
``--drain-seconds`` (``paretoserve.workers.router.serve``): readiness 503, and every request -- already in
flight, on a connection kept alive from before, or on a new connection -- answered normally with
``Connection: close`` and its connection closed after it, so clients reconnect through their Service
instead of meeting a close under a request they just sent. Each test runs with the compiled fast path in
front (``--fastpath``) too: its own answers (the plain model proxy) close their connections as well. The
drain here is long (the test ends it with a second SIGTERM), so nothing depends on how fast this machine
is; a short drain must end by itself.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_router_hostile import GOOD, INFER, _free_port, _stop, _wait, exchange, post, request

PIPELINE = "p"
MODEL_INFER = "/v2/models/light/infer"
STOP_TIMEOUT_S = 30.0


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    port: int
    stub_port: int
    log: Path


def _start_router(work: Path, stub_url: str, drain_s: float, fastpath: Path | None = None) -> Running:
    port, admin_port = _free_port(), _free_port()
    (work / "router.json").write_text(json.dumps({
        "pipeline": PIPELINE,
        "stages": [{"name": "classify", "cascade": {"light": "light", "heavy": "heavy", "threshold": 0.5}}],
        "upstreams": {"light": [stub_url], "heavy": [stub_url]},
    }))
    log = work / f"router-{drain_s:g}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([
            sys.executable, "-I", "-m", "paretoserve", "router", "--config", str(work / "router.json"),
            "--port", str(port), "--admin-port", str(admin_port),
            # no Triton of its own: readiness depends only on the router (and its drain)
            "--triton-url", "http://127.0.0.1:9", "--drain-seconds", f"{drain_s:g}",
            *(("--fastpath", str(fastpath)) if fastpath else ()),
        ], stdout=out, stderr=subprocess.STDOUT)
    _wait(port, "/v2/health/live", process, log)
    return Running(process, port, int(stub_url.rsplit(":", 1)[1]), log)


@pytest.fixture(scope="module")
def stub_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("drain-stub")
    port = _free_port()
    log = work / "stub.log"
    with log.open("wb") as out:
        stub = subprocess.Popen([sys.executable, "-I", "-m", "paretoserve.research.benchmarks.router_loadgen", "stub",
                                 "--port", str(port), "--control"], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(port, "/stub/log", stub, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(stub)


def _infer(connection: http.client.HTTPConnection, path: str = INFER) -> tuple[int, str, dict[str, object]]:
    connection.request("POST", path, body=GOOD, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    body = json.loads(response.read())
    return response.status, (response.getheader("connection") or "").lower(), body


def _behave(stub_port: int, behaviour: dict[str, object]) -> None:
    reply = exchange(stub_port, post("/stub/behaviour/light", json.dumps(behaviour).encode()))
    assert reply.status == 200


def _ready(port: int) -> tuple[int | None, bytes]:
    reply = exchange(port, [(request("GET", "/v2/health/ready"), 0.0)])
    return reply.status, reply.body


@pytest.fixture(params=["python", "fastpath"])
def front(request: pytest.FixtureRequest) -> Path | None:
    """The data port served by Python alone, or by the compiled fast path (``--fastpath``) in front of it."""
    return request.getfixturevalue("fastpath_binary") if request.param == "fastpath" else None


def test_sigterm_drains_then_a_second_sigterm_stops(tmp_path: Path, stub_url: str, front: Path | None) -> None:
    router = _start_router(tmp_path, stub_url, drain_s=600, fastpath=front)
    try:
        assert _ready(router.port)[0] == 200
        kept = http.client.HTTPConnection("127.0.0.1", router.port, timeout=15)  # kept alive across the SIGTERM
        assert _infer(kept)[:2] == (200, "")
        kept_proxy = http.client.HTTPConnection("127.0.0.1", router.port, timeout=15)  # the plain model proxy
        assert _infer(kept_proxy, MODEL_INFER)[:2] == (200, "")
        _behave(router.stub_port, {"kind": "echo", "delayS": 1.5})
        in_flight: list[tuple[int, str, dict[str, object]]] = []
        slow = threading.Thread(target=lambda: in_flight.append(
            _infer(http.client.HTTPConnection("127.0.0.1", router.port, timeout=15))))
        slow.start()

        router.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while (ready := _ready(router.port))[0] != 503:  # the signal is handled in the router's event loop
            assert time.monotonic() < deadline, f"readiness never turned 503: {ready}"
            time.sleep(0.05)
        assert json.loads(ready[1])["draining"] is True
        slow.join(timeout=STOP_TIMEOUT_S)
        _behave(router.stub_port, {"kind": "echo"})

        # whenever it arrived, the slow request is answered, and its connection is closed after it
        assert [(status, header) for status, header, _ in in_flight] == [(200, "close")]
        status, header, body = _infer(kept)  # the connection kept alive from before the signal
        assert (status, header) == (200, "close") and body["outputs"]
        status, header, body = _infer(kept_proxy, MODEL_INFER)  # served by the fast path where there is one
        assert (status, header) == (200, "close") and body["outputs"]
        fresh = http.client.HTTPConnection("127.0.0.1", router.port, timeout=15)
        assert _infer(fresh)[:2] == (200, "close")
        live = exchange(router.port, [(request("GET", "/v2/health/live"), 0.0)])
        assert live.status == 200 and live.headers.get("connection") == "close"
        assert router.process.poll() is None  # still draining: 600 s

        router.process.send_signal(signal.SIGTERM)  # a second SIGTERM stops at once
        assert router.process.wait(timeout=STOP_TIMEOUT_S) == 0
    finally:
        _stop(router.process)
    assert "Traceback" not in router.log.read_text()


@pytest.mark.parametrize(("drain_s", "logged"), [(0.5, "draining for 0.5s"), (0.0, None)])
def test_a_drain_ends_by_itself_and_without_one_sigterm_stops_at_once(
    tmp_path: Path, stub_url: str, drain_s: float, logged: str | None, front: Path | None,
) -> None:
    router = _start_router(tmp_path, stub_url, drain_s=drain_s, fastpath=front)
    try:
        router.process.send_signal(signal.SIGTERM)
        assert router.process.wait(timeout=STOP_TIMEOUT_S) == 0
    finally:
        _stop(router.process)
    log = router.log.read_text()
    assert logged in log if logged else "draining" not in log

