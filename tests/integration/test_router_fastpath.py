"""The compiled fast path (``native/fastpath``) on the router's data port, driven end to end.

The real binary serves the plain model proxy in front of the real Python router and a real Triton; these
tests check what only the fast path does or could get wrong: that it, not Python, served the proxied
requests and that they count in the router's ``/metrics`` as if Python had served them; that live updates
reach it before Python swaps (retries over a dead replica stop once the update drops it); and its EDF
admission (backpressure, deadlines while queued, earliest deadline first), against a stub upstream that
holds answers until the test lets them go, so nothing depends on timing. The whole KServe conformance suite
(``test_router_kserve.py``) also runs through it.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from paretoserve.workers.models import load_split
from paretoserve.workers.router.app import RouterApps, build_router
from paretoserve.workers.router.config import parse_config
from paretoserve.workers.router.serve import ServerThread
from paretoserve.workers.triton.server import TritonServer

pytestmark = pytest.mark.triton

MODEL = "tiny_linear"
TOKEN = "fastpath-token"
DEADLINE = "x-paretoserve-deadline-ms"


def body(index: int) -> dict[str, Any]:
    image = load_split().x_test[index]
    return {"inputs": [{"name": "IMAGE", "shape": [1, 8, 8], "datatype": "FP32",
                        "data": [float(v) for v in image.ravel()]}]}


def router(upstreams: dict[str, list[str]], **extra: Any) -> RouterApps:
    config = parse_config({"pipeline": "digits", "stages": [{"name": "classify", "variants": {MODEL: 1}}],
                           "upstreams": upstreams, **extra})
    return build_router(config, registry=CollectorRegistry(), admin_token=TOKEN)


def samples(admin_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{admin_url}/metrics", timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def series(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(value for (sample, have), value in values.items()
               if sample == name and labels.items() <= dict(have).items())


def fastpath_stats(apps: RouterApps) -> dict[str, Any]:
    """The fast path's own counters, from its control socket."""
    front = apps.service.fastpath
    assert front is not None
    transport = httpx.HTTPTransport(uds=str(front.control_path))
    with httpx.Client(transport=transport, base_url="http://fastpath", timeout=5) as control:
        stats: dict[str, Any] = control.get("/stats").json()
    return stats


def dead_url() -> str:
    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_the_fast_path_serves_the_proxy_and_counts_in_the_routers_metrics(
        triton_server: TritonServer, fastpath_binary: Path) -> None:
    triton = f"http://{triton_server.http_url}"
    apps = router({MODEL: [triton]})
    with ServerThread(apps, fastpath=fastpath_binary) as server, httpx.Client(timeout=30) as client:
        assert server.url != server.python_url
        for index in range(30):
            via = client.post(f"{server.url}/v2/models/{MODEL}/infer", json=body(index))
            direct = client.post(f"{triton}/v2/models/{MODEL}/infer", json=body(index))
            assert via.status_code == 200 and via.json()["outputs"] == direct.json()["outputs"]
        versioned = client.post(f"{server.url}/v2/models/{MODEL}/versions/1/infer", json=body(0))
        assert versioned.status_code == 200 and versioned.json()["model_version"] == "1"
        bad = client.post(f"{server.url}/v2/models/{MODEL}/infer", json=body(0), headers={DEADLINE: "soon"})
        assert bad.status_code == 400 and bad.json()["reason"] == "bad_request" and DEADLINE in bad.json()["error"]
        pipeline = client.post(f"{server.url}/v2/pipelines/digits/infer", json=body(0))  # passed to Python
        assert pipeline.status_code == 200 and pipeline.json()["parameters"]["routes"]
        assert fastpath_stats(apps)["proxied"][MODEL]["rows"] == 31  # served there, not by Python
        values = samples(server.admin_url)
    proxy = {"stage": "proxy", "model": MODEL}
    assert series(values, "paretoserve_router_requests_total", route="direct", **proxy) == 31
    assert series(values, "paretoserve_router_request_duration_seconds_count", **proxy) == 31
    assert series(values, "paretoserve_router_request_duration_seconds_bucket", le="+Inf", **proxy) == 31
    assert series(values, "paretoserve_router_errors_total", stage="proxy", reason="bad_request") == 1
    assert series(values, "paretoserve_pipeline_requests_total") == 1


def test_live_updates_reach_the_fast_path_before_the_python_side(triton_server: TritonServer,
                                                                 fastpath_binary: Path) -> None:
    triton, dead = f"http://{triton_server.http_url}", dead_url()
    with ServerThread(router({MODEL: [dead, triton]}), fastpath=fastpath_binary) as server, \
            httpx.Client(timeout=30) as client:
        answers = [client.post(f"{server.url}/v2/models/{MODEL}/infer", json=body(i)).status_code for i in range(10)]
        assert answers == [200] * 10  # every request whose turn began at the dead replica was retried
        failures = series(samples(server.admin_url), "paretoserve_router_upstream_failures_total", model=MODEL)
        assert failures == 5  # one rotation start per request: half of them at the dead replica
        update = client.post(f"{server.admin_url}/admin/config", json={"upstreams": {MODEL: [triton]}},
                             headers={"authorization": f"Bearer {TOKEN}"})
        assert update.status_code == 200, update.text
        answers = [client.post(f"{server.url}/v2/models/{MODEL}/infer", json=body(i)).status_code for i in range(10)]
        assert answers == [200] * 10
        assert series(samples(server.admin_url), "paretoserve_router_upstream_failures_total", model=MODEL) == 5


class HeldUpstream:
    """A stub Triton that records each request's ``id`` on arrival and answers only once released."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.release = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                request = json.loads(self.rfile.read(int(self.headers["content-length"])))
                upstream.arrived.append(request["id"])
                upstream.release.wait(30)
                answer = json.dumps({"id": request["id"], "model_name": MODEL, "outputs": []}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HeldUpstream:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def held() -> Iterator[HeldUpstream]:
    with HeldUpstream() as upstream:
        yield upstream


def wait_for(apps: RouterApps, in_flight: int, queued: int) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for _ in range(3000):  # polled, bounded: the state is reached by the requests sent, not by time
        stats = fastpath_stats(apps)
        if (stats["in_flight"], stats["queue_length"]) == (in_flight, queued):
            return stats
        threading.Event().wait(0.01)
    raise AssertionError(f"the fast path never had {in_flight} in flight and {queued} queued: {stats}")


def test_edf_admission_backpressure_and_deadlines(held: HeldUpstream, fastpath_binary: Path) -> None:
    apps = router({MODEL: [held.url]}, queue={"concurrency": 1, "maxSize": 2})
    with ServerThread(apps, fastpath=fastpath_binary) as server, ThreadPoolExecutor(4) as pool:
        def send(name: str, deadline_ms: str | None = None) -> Future[httpx.Response]:
            headers = {DEADLINE: deadline_ms} if deadline_ms else {}
            return pool.submit(httpx.post, f"{server.url}/v2/models/{MODEL}/infer", json={"id": name, "inputs": []},
                               headers=headers, timeout=60)

        first = send("first")
        wait_for(apps, 1, 0)
        late, soon = send("late", "60000"), None
        wait_for(apps, 1, 1)
        soon = send("soon", "30000")
        stats = wait_for(apps, 1, 2)
        assert stats["min_deadline_remaining_ms"] <= 30000
        refused = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json={"id": "refused", "inputs": []}, timeout=30)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["reason"] == "queue_full" and refused.json()["stage"] == "proxy"
        held.release.set()
        assert [f.result().status_code for f in (first, late, soon)] == [200, 200, 200]
    assert held.arrived == ["first", "soon", "late"]  # the queue let the earlier deadline overtake


def test_a_deadline_that_passes_in_the_queue_is_answered_504(held: HeldUpstream, fastpath_binary: Path) -> None:
    apps = router({MODEL: [held.url]}, queue={"concurrency": 1, "maxSize": 4})
    with ServerThread(apps, fastpath=fastpath_binary) as server, ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, f"{server.url}/v2/models/{MODEL}/infer", json={"id": "first", "inputs": []},
                            timeout=60)
        wait_for(apps, 1, 0)
        expired = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json={"id": "expired", "inputs": []},
                             headers={DEADLINE: "50"}, timeout=30)  # waits its 50 ms behind the held call
        assert expired.status_code == 504 and expired.json()["reason"] == "deadline_exceeded"
        assert "queued" in expired.json()["error"]
        held.release.set()
        assert first.result().status_code == 200
        values = samples(server.admin_url)
    assert held.arrived == ["first"]  # the expired request never went upstream
    assert series(values, "paretoserve_router_errors_total", stage="proxy", reason="deadline_exceeded") == 1


def test_the_fast_path_ends_with_the_router(fastpath_binary: Path, held: HeldUpstream) -> None:
    apps = router({MODEL: [held.url]})
    with ServerThread(apps, fastpath=fastpath_binary) as server:
        url = server.url
        front = apps.service.fastpath
        assert front is not None and front.control_path.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v2/health/live", timeout=5)
    assert not front.control_path.parent.exists()
