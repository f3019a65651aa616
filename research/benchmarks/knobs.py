"""`paretoserve bench knobs`: what a client sees while the plan changes a running Triton's knobs under load.

On a pod the operator changes Triton through the router sidecar (``POST /admin/worker``, :mod:`~paretoserve.
workers.router.worker_knobs`): the sidecar reads the model's config from Triton and loads it back with the new
``instance_group`` count and dynamic batching through the repository API's config override. The benchmark sets
that up as on a pod -- one real Triton started with ``--load-model`` (the model's own ``config.pbtxt``, as the
worker image's repository has it), the router as its own process with its admin API on and ``--triton-url`` /
``--triton-grpc-url`` pointing at that Triton -- sends an open-loop load of single-image requests through the
router's pipeline endpoint (at each of `RATES`, a fresh pod per rate), and while it runs applies, one after the
other, the changes a plan makes:

1. instances 1 -> 2 (the first change; as on a pod, the router has the knobs file ``worker.json`` with the
   model's own knobs and applied it before it reported ready: the sidecar's adoption of a model Triton loaded from
   its ``config.pbtxt``, which Triton reloads on its first override whatever it changes),
2. instances 2 -> 1 (in place too: Triton stops the instance's stub, which takes it ~1.2 s),
3. instances 1 -> 2 again (now a model loaded by override),
4. a batching change (preferred batch 4, queue delay 200 µs), which Triton applies by loading a new copy of the
   model beside the serving one (0.4 s since Triton serves configs as written: no auto-complete stub first),

each between two controls (below).

Per change it reports how long the admin call took (the sidecar returns when Triton has the new config) and the
latency of the requests scheduled while it ran and in the second after (p50 / p99 / max), against the requests of
the quiet seconds before the first change (and, as a check on the machine's noise, after the last one).
``invisible`` is True when no request of a change's window failed and every change window's p99 is within
``VISIBLE_P99_MS`` of the quiet p99. Two control "changes" (`CONTROL`: the knobs in force, posted again, first and
last) get windows of their own, judged the same way (``controls_within_margin``) but not counted in ``invisible``:
where a control misses the margin too, the run's noise is as large as the margin. A third control, after the
batching change (`PROCESS_START`), changes nothing in Triton: the benchmark starts a process that does what a new
instance's Python-backend stub does before it serves, and waits for it (``process_start_within_margin``). Every
instance the Python implementation of the ``paretoserve_onnx`` backend adds is such a process, so where this window
misses the margin too, a process start alone is visible on this machine at this rate, whatever Triton does around it.
Each rate runs with both implementations (``onnx_backend`` per run): the native one, the default when built, adds an
instance as an ONNX Runtime session inside the server, with no process (``workers/triton/onnx_backend.py``).
A window's ``over_margin`` counts its requests slower than that (quiet p99 + ``VISIBLE_P99_MS``): a change that
Triton finishes sooner has a shorter window, whose p99 rests on fewer requests. Failed requests are listed with
their time (``load.failed``: window index, status; 0 = the connection failed). The load generator opens a new
connection after an answer that says ``Connection: close`` (the router recycles one after
``--max-requests-per-connection`` answers), so a failure is the server's.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from paretoserve.research.benchmarks.router import (
    LIGHT_MODEL,
    free_port,
    router_command,
    run_process,
    wait_ready,
)
from paretoserve.workers.models import DigitsSplit, ModelCatalog, ensure_trained, load_split
from paretoserve.workers.triton.onnx_backend import resolve as resolve_onnx_backend
from paretoserve.workers.triton.repository import ONNX_FILE, spec_from_cached_variant, write_repository
from paretoserve.workers.triton.server import TritonServer, TritonServerConfig

RATES = (500.0, 1000.0)
"""Requests/s of the load, one fresh pod per rate (on the 2-core dev VM at 1,000 through the Python pipeline endpoint,
load generator, router and Triton keep about 55 % of the two cores busy, by vmstat, and ~70 % during a change)."""
QUIET_S = 4.0
"""Seconds of load before the first change: the reference latency."""
SETTLE_S = 3.0
"""Seconds between the end of one change and the start of the next."""
AFTER_S = 1.0
"""A change's window: from its admin call to this long after the call returned."""
VISIBLE_P99_MS = 5.0
CONTROL = "control: the same knobs again"
"""The name of a no-op change: the sidecar reads the model's config from Triton, finds the knobs in force and loads
nothing. Its window measures the admin call and the machine's own noise over a window of the same length, so a
change window beyond the margin can be told from a noisy stretch of the run."""
PROCESS_START = "control: a process start the size of a new instance's, not Triton's"
"""A window with no knob change: the benchmark starts a Python process that does what a new instance's stub does
before it serves (imports numpy and ONNX Runtime, opens an ONNX Runtime session on the model's graph) and waits for
it. Each new instance is such a process (Triton's Python backend); this window shows what a process start of that
size alone costs the clients on this machine, so a change window beyond the margin can be told apart from it."""
PROCESS_START_CODE = ("import sys, numpy, onnxruntime; "
                      "onnxruntime.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])")
CHANGES: tuple[tuple[str, dict[str, int] | None], ...] = (
    (CONTROL, {"instanceCount": 1}),
    ("instances 1->2 (first change: model adopted at start from worker.json)", {"instanceCount": 2}),
    ("instances 2->1", {"instanceCount": 1}),
    ("instances 1->2 (model loaded by override)", {"instanceCount": 2}),
    ("batching: preferred batch 4, queue delay 200 us", {"instanceCount": 2, "preferredBatchSize": 4,
                                                         "maxQueueDelayMicroseconds": 200}),
    (PROCESS_START, None),
    (CONTROL, {"instanceCount": 2, "preferredBatchSize": 4, "maxQueueDelayMicroseconds": 200}),
)


WINDOW_S = 0.25
"""The load generator's window: request latencies are placed in time to this resolution."""


def _loadgen(url: str, bodies: Path, rate: float, duration: float, work: Path) -> subprocess.Popen[str]:
    """The project's open-loop generator (:mod:`.router_loadgen`) in its own process, as `bench router` runs it."""
    command = [sys.executable, "-I", "-m", "paretoserve.research.benchmarks.router_loadgen", "open", "--url", url,
               "--bodies", str(bodies), "--rate", str(rate), "--duration", str(duration), "--window", str(WINDOW_S),
               "--out", str(work / "latencies.bin"), "--started", str(work / "started")]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _window(samples: npt.NDArray[np.float64], start: float, end: float,
            slow_ms: float | None = None) -> dict[str, Any]:
    """Latencies (ms) of the requests scheduled in [start, end), seconds from the load's start; with ``slow_ms``
    also how many took longer (a count that, unlike a p99, does not depend on how long the window is)."""
    inside = samples[(samples[:, 0] * WINDOW_S >= start - WINDOW_S) & (samples[:, 0] * WINDOW_S < end), 1] * 1e3
    return {"requests_ok": len(inside),
            **({"over_margin": int((inside > slow_ms).sum())} if slow_ms is not None else {}),
            "p50_ms": round(float(np.percentile(inside, 50)), 3) if len(inside) else None,
            "p99_ms": round(float(np.percentile(inside, 99)), 3) if len(inside) else None,
            "max_ms": round(float(inside.max()), 3) if len(inside) else None}


def _start_process(graph: Path) -> tuple[int, str]:
    """`PROCESS_START`: run the process and wait for it; (200, "") when it succeeded, else (500, its stderr)."""
    done = subprocess.run([sys.executable, "-I", "-c", PROCESS_START_CODE, str(graph)], capture_output=True, text=True,
                          timeout=120)
    return (200, "") if done.returncode == 0 else (500, done.stderr[-300:])


def _measure(router_url: str, admin_url: str, token: str, bodies: Path, rate: float, work: Path,
             graph: Path) -> dict[str, Any]:
    duration = QUIET_S + len(CHANGES) * (SETTLE_S + 3.0) + 2.0
    generator = _loadgen(router_url, bodies, rate, duration, work)
    started = work / "started"
    deadline = time.monotonic() + 60
    while not started.exists() or not started.read_text():
        if generator.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"load generator did not start: {generator.communicate()[1][-2000:]}")
        time.sleep(0.05)
    begin = float(started.read_text())
    time.sleep(max(0.0, begin + QUIET_S - time.time()))
    changes = []
    with httpx.Client(timeout=120.0, headers={"authorization": f"Bearer {token}"}) as admin:
        for name, knobs in CHANGES:
            at = time.time() - begin
            if knobs is None:
                status, text = _start_process(graph)
            else:
                answer = admin.post(f"{admin_url}/admin/worker", json={"models": {LIGHT_MODEL: knobs}})
                status, text = answer.status_code, answer.text[:300]
            changes.append((name, knobs, status, text, at, time.time() - begin))
            time.sleep(SETTLE_S)
    out, err = generator.communicate(timeout=duration + 120)
    if generator.returncode != 0:
        raise RuntimeError(f"load generator failed ({generator.returncode}): {err[-2000:]}")
    summary = json.loads(out.strip().splitlines()[-1])
    raw = array("d")
    raw.frombytes((work / "latencies.bin").read_bytes())
    samples = np.asarray(raw).reshape(-1, 2)
    failed = [window * WINDOW_S for window, _ in summary["failed"]]
    reference = _window(samples, 1.0, QUIET_S)  # the first second warms connections and Triton
    last = changes[-1][5] + AFTER_S
    report = []
    for name, knobs, status, text, at, returned in changes:
        slow_ms = None if reference["p99_ms"] is None else reference["p99_ms"] + VISIBLE_P99_MS
        window = _window(samples, at, returned + AFTER_S, slow_ms)
        window["failed"] = sum(1 for t in failed if at - WINDOW_S <= t < returned + AFTER_S)
        visible = (status != 200 or window["p99_ms"] is None or reference["p99_ms"] is None
                   or window["p99_ms"] > reference["p99_ms"] + VISIBLE_P99_MS)
        report.append({"change": name, "knobs": knobs, "control": name in (CONTROL, PROCESS_START),
                       "process_start": name == PROCESS_START, "at_s": round(at, 2),
                       "admin_status": status,
                       **({"admin_answer": text} if status != 200 else {}),
                       "admin_call_s": round(returned - at, 3), "window": window, "p99_within_margin": not visible})
    return {"quiet": reference, "quiet_after": _window(samples, last, duration), "changes": report, "load": summary}


def _one_rate(rate: float, catalog: ModelCatalog, split: DigitsSplit, onnx_backend: str) -> dict[str, Any]:
    """A fresh pod (Triton with ``onnx_backend``'s implementation, and its router) under `rate` requests/s while the
    changes are applied."""
    with tempfile.TemporaryDirectory(prefix="paretoserve-bench-knobs-") as tmp:
        work = Path(tmp)
        bodies = work / "bodies.jsonl"
        bodies.write_text("".join(json.dumps({"inputs": [{"name": "IMAGE", "shape": [1, 8, 8], "datatype": "FP32",
                                                          "data": [round(float(v), 4) for v in image.ravel()]}]})
                                  + "\n" for image in split.x_test[:256]))
        spec = spec_from_cached_variant(catalog.variant_dir(LIGHT_MODEL), max_batch_size=32, max_queue_delay_us=0)
        repository = write_repository(work / "repository", [spec])
        triton_config = TritonServerConfig(model_repository=repository, models=(LIGHT_MODEL,), work_dir=work / "triton",
                                           onnx_backend=onnx_backend)
        with TritonServer(triton_config) as triton:
            port, admin_port = free_port(), free_port()
            token = secrets.token_urlsafe(16)
            (work / "token").write_text(token)
            config = {"pipeline": "bench", "stages": [{"name": "classify", "variants": {LIGHT_MODEL: 1}}],
                      "upstreams": {LIGHT_MODEL: [f"http://{triton.http_url}"]}}
            (work / "worker.json").write_text(json.dumps({"models": {LIGHT_MODEL: {"instanceCount": 1}}}))
            command = [*router_command(config, work, port)[:-2], "--admin-port", str(admin_port),
                       "--admin-token-file", str(work / "token"), "--triton-url", f"http://{triton.http_url}",
                       "--triton-grpc-url", triton.grpc_url, "--worker-knobs", str(work / "worker.json")]
            log = work / "router.log"
            with run_process(command, None, None, log) as router_pid:
                wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", router_pid, log)
                result = _measure(f"http://127.0.0.1:{port}/v2/pipelines/bench/infer",
                                  f"http://127.0.0.1:{admin_port}", token, bodies, rate, work,
                                  catalog.variant_dir(LIGHT_MODEL) / ONNX_FILE)
    return {"onnx_backend": onnx_backend, "rate_rps": rate, **result, "errors": int(result["load"]["errors"]),
            **verdicts(result["changes"])}


def verdicts(changes: list[dict[str, Any]]) -> dict[str, bool]:
    """A rate's verdicts from its windows: ``invisible`` (every knob change within the margin, none failed), and the
    same for the no-op controls and for the process start, which are not counted in ``invisible``."""
    def within(change: dict[str, Any]) -> bool:
        return bool(change["p99_within_margin"]) and change["window"]["failed"] == 0

    return {"invisible": all(within(c) for c in changes if not c["control"]),
            "controls_within_margin": all(within(c) for c in changes if c["change"] == CONTROL),
            "process_start_within_margin": all(within(c) for c in changes if c["process_start"])}


def bench_knobs(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark at each of `RATES` (``quick``: one lower rate) and return the JSON report.

    Each rate runs with the ``paretoserve_onnx`` backend a server gets by default (the native library when built)
    and, as the contrast on the same machine, with the Python implementation, whose every new instance is a
    process; ``invisible`` is the default's verdict, ``invisible_by_backend`` both."""
    catalog = ensure_trained()
    split = load_split()
    default = resolve_onnx_backend("auto").kind
    backends = list(dict.fromkeys((default, "python")))
    runs = [_one_rate(rate, catalog, split, backend) for backend in backends
            for rate in ((200.0,) if quick else RATES)]
    by_backend = {backend: all(run["invisible"] for run in runs if run["onnx_backend"] == backend)
                  for backend in backends}
    return {"model": LIGHT_MODEL, "p99_margin_ms": VISIBLE_P99_MS, "window_s": WINDOW_S,
            "load_generator": "the project's own (router_loadgen, open loop, JSON bodies), its own process",
            "onnx_backend": default, "runs": runs, "invisible": by_backend[default],
            "invisible_by_backend": by_backend}
