"""`paretoserve bench router`: the latency the router adds, and its throughput on one core.

Measured in one run against one real Triton server serving the light model (``tiny_linear``):

1. **Added latency at 1,000 requests/s.** A load generator in its own process
   (:mod:`.loadgen`) sends single-image KServe v2 requests at a fixed open-loop rate of 1,000/s,
   alternating one-second windows between Triton's own endpoint (*direct*) and the router's
   pipeline endpoint (*router*, a one-stage pipeline forwarding to the same Triton, with a
   deadline header so the EDF path runs), so both see the same background load of a shared
   machine. ``added_p99_ms = router_p99_ms - direct_p99_ms`` over all samples (and the same for
   p50); ``added_p99_ms_paired_windows`` is the median, over each router window and the direct
   window just before it, of the difference of their p99s (robust to bursts of others' work).
2. **Maximum throughput on one core.** The router is pointed at a stub upstream that answers
   instantly (:func:`.loadgen.stub`), and driven closed-loop; ``router_rps_one_core`` is requests
   per CPU-second of the router process -- what one fully used core sustains -- and
   ``router_rps_measured`` what it achieved with the CPU share it got.

Placement: the router runs as ``paretoserve router`` pinned to the last CPU (``os.sched_setaffinity``
on every thread); the load generator and the stub are pinned to the others; Triton is left to the
scheduler at normal priority (pinned next to the load generator it starved it, which hurt both
paths). On a shared machine other people's processes also compete for those CPUs, so the router,
the load generator and the stub run at ``nice -10`` when permitted (reported as ``priority``),
which approximates a dedicated router core without hiding anything the router itself does.
Latency is taken from the moment a request is written to its complete response;
``loadgen_send_lag_p99_ms`` says how late the generator was against its schedule.

3. **NVIDIA's perf_analyzer**, unchanged in its native Triton mode over HTTP (:mod:`.perf_analyzer` sets it
   up beside the project where the system's C library is too old): Triton direct, the light model through
   the router's proxy and the pipeline addressed as a model, open loop at 200/500/1,000 requests/s and
   closed loop at 1/4/16 requests in flight; where it cannot run, the report says why.

4. **The plain model proxy through each front** (``model_proxy``): the router's data port served by Python alone
   and by the compiled fast path (``native/fastpath``, ``paretoserve router --fastpath``) in front of it; for
   each, ``/v2/models/{light}/infer`` at 200/500/1,000 requests/s against Triton in alternating windows (added
   p50/p99, CPU per request of the process serving the port) and its closed-loop ceiling on one core against
   the stub (requests per CPU-second of that process); for the fast path also perf_analyzer through it, on
   the model (served there) and on the pipeline addressed as a model (passed behind it to Python). ``bench
   fastpath`` repeats this measurement five times for its stability.
5. **The cascade path** (``cascade_pipeline``): a confidence cascade (the light model, then ``cnn_small`` for
   rows under the threshold) on the Python router's pipeline endpoint at 200/500/1,000 requests/s against the
   light model direct, with the share of rows deferred to the heavy model.

Where the router's time goes (py-spy on the pinned router at 1,000 requests/s, ~0.35 ms of CPU
per request): about 40% in uvloop's own loop (epoll, reads), about 15% in the two socket writes
(to Triton, to the client), the rest in Python (uvicorn's protocol, Starlette, the pipeline, httpx
request/response objects, JSON).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from paretoserve.research.benchmarks import perf_analyzer
from paretoserve.workers.models import ensure_trained, load_split
from paretoserve.workers.router.fastpath import BINARY_NAME as FASTPATH_BINARY
from paretoserve.workers.triton.repository import spec_from_cached_variant, write_repository
from paretoserve.workers.triton.server import TritonServer, TritonServerConfig

RATE_RPS = 1000.0
PROXY_RATES = (200.0, 500.0, 1000.0)
FRONTS = ("python", "fastpath")
"""The data port served by the Python router alone, or by the compiled fast path in front of it."""
TARGET_RPS_PER_CORE = 10_000
NICE = -10
TARGET_ADDED_P99_MS = 1.0
LIGHT_MODEL = "tiny_linear"
HEAVY_MODEL = "cnn_small"
"""The cascade path's heavy model (``cascade_pipeline``): rows the light model is not confident about go there."""
CASCADE_THRESHOLD = 0.9
DEADLINE_HEADER = "x-paretoserve-deadline-ms"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _placement() -> tuple[set[int] | None, set[int] | None]:
    """(router CPUs, everything else's CPUs); ``None`` where pinning is impossible."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {cpus[0]}, {cpus[0]}
    return {cpus[-1]}, set(cpus[:-1])


def _can_raise_priority() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def group_members(pid: int) -> Iterator[Path]:
    """``/proc/<pid>`` of every process in ``pid``'s process group (one that exits meanwhile is skipped)."""
    group = os.getpgid(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == group:
                yield entry
        except (OSError, ProcessLookupError):
            continue


def _tune(pid: int, cpus: set[int] | None, nice: int | None) -> None:
    """Pin every thread of every process in ``pid``'s process group, and set its niceness."""
    for entry in group_members(pid):
        try:
            threads = [int(task.name) for task in (entry / "task").iterdir()]
        except OSError:
            continue
        for tid in threads:
            try:
                if cpus is not None:
                    os.sched_setaffinity(tid, cpus)
                if nice is not None:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
            except OSError:
                continue


@contextmanager
def run_process(command: Sequence[str], cpus: set[int] | None, nice: int | None, log: Path) -> Iterator[int]:
    """Run ``command`` in its own session, pinned and reniced; SIGINT then SIGKILL on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _tune(process.pid, cpus, nice)
        yield process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def wait_ready(url: str, pid: int, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready; log: {log}\n{log.read_text(errors='replace')[-2000:]}")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _loadgen(args: Sequence[str], cpus: set[int] | None, nice: int | None) -> Any:
    command = [sys.executable, "-I", "-m", "paretoserve.research.benchmarks.router_loadgen", *args]

    def prepare() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, nice)

    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=prepare, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _samples(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(window index, latency in ms) of every successful request the load generator recorded."""
    raw = array("d")
    raw.frombytes(path.read_bytes())
    pairs = np.asarray(raw).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1] * 1e3


def _window_pairs_p99(direct: Path, routed: Path) -> float:
    """Median over consecutive (direct, router) window pairs of the difference of their p99s.

    A burst of someone else's work on the shared machine lands in one window and inflates a pooled
    p99; pairing each router window with the direct window just before it cancels most of that.
    """
    d_window, d_ms = _samples(direct)
    r_window, r_ms = _samples(routed)
    differences = []
    for window in np.unique(r_window):
        before = d_ms[d_window == window - 1]
        after = r_ms[r_window == window]
        if len(before) >= 100 and len(after) >= 100:
            differences.append(float(np.percentile(after, 99) - np.percentile(before, 99)))
    return float(np.median(differences)) if differences else float("nan")


def _percentiles(path: Path) -> tuple[float, float, int]:
    values = _samples(path)[1]
    return float(np.percentile(values, 50)), float(np.percentile(values, 99)), len(values)


def router_command(config: dict[str, Any], directory: Path, port: int, *, fastpath: bool = False,
                   admin_port: int | None = None) -> list[str]:
    """The sidecar's command line as on a pod: the data listener on ``port``, the admin one on ``admin_port``
    or a free port (its API stays off: no token file; only its open ``/metrics`` is read here); ``fastpath``:
    the compiled front on ``port``."""
    path = directory / f"router-{port}.json"
    path.write_text(json.dumps(config))
    return [sys.executable, "-I", "-m", "paretoserve", "router", "--config", str(path), "--port", str(port),
            "--admin-port", str(admin_port or free_port()), *(("--fastpath", "auto") if fastpath else ())]


def serving_pid(router_pid: int, fastpath: bool) -> int:
    """The process that serves the data port: the router itself, or its fast-path child."""
    if not fastpath:
        return router_pid
    seen = []
    for entry in group_members(router_pid):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        seen.append(f"{entry.name} {name} ppid {fields[1]}")
        if int(fields[1]) == router_pid and FASTPATH_BINARY.startswith(name):
            return int(entry.name)
    raise RuntimeError(f"router {router_pid} has no {FASTPATH_BINARY} child (its process group: {seen})")



def write_bodies(path: Path) -> Path:
    """256 single-image KServe v2 JSON bodies (held-out digits), one per line, for the load generator."""
    with path.open("w") as out:
        for image in load_split().x_test[:256]:
            tensor = {"name": "IMAGE", "shape": [1, 8, 8], "datatype": "FP32",
                      "data": [round(float(v), 4) for v in image.ravel()]}
            out.write(json.dumps({"inputs": [tensor]}) + "\n")
    return path


def light_triton(work: Path, models: tuple[str, ...] = (LIGHT_MODEL,)) -> TritonServerConfig:
    """A Triton serving ``models`` (the light one alone by default; batching up to 32, no queue delay), from
    the cached catalog."""
    catalog = ensure_trained()
    specs = [spec_from_cached_variant(catalog.variant_dir(model), max_batch_size=32, max_queue_delay_us=0)
             for model in models]
    repository = write_repository(work / "repository", specs)
    return TritonServerConfig(model_repository=repository, models=models, work_dir=work / "triton")


def bench_router(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark (``quick``: shorter windows) and return the JSON report."""
    duration = 10.0 if quick else 30.0
    router_cpus, other_cpus = _placement()
    nice = NICE if _can_raise_priority() else None
    with tempfile.TemporaryDirectory(prefix="paretoserve-bench-router-") as tmp:
        work = Path(tmp)
        bodies = write_bodies(work / "bodies.jsonl")
        with TritonServer(light_triton(work, (LIGHT_MODEL, HEAVY_MODEL))) as triton:
            # Triton is neither pinned nor reniced: it needs more than what the load generator leaves on
            # one core, and at the router's priority its threads would delay the router's wake-ups.
            direct_url = f"http://{triton.http_url}/v2/models/{LIGHT_MODEL}/infer"
            port = free_port()
            config = {"pipeline": "bench", "stages": [{"name": "classify", "variants": {LIGHT_MODEL: 1}}],
                      "upstreams": {LIGHT_MODEL: [f"http://{triton.http_url}"]}}
            log = work / "router.log"
            with run_process(router_command(config, work, port), router_cpus, nice, log) as router_pid:
                base = f"http://127.0.0.1:{port}"
                wait_ready(f"{base}/v2/health/ready", router_pid, log)
                router_url = f"{base}/v2/pipelines/bench/infer"
                common = ["--bodies", str(bodies), "--rate", str(RATE_RPS), "--header", f"{DEADLINE_HEADER}:1000"]
                _loadgen(["open", "--url", direct_url, "--url", router_url, "--duration", "4", *common],
                         other_cpus, nice)  # warm-up: connections, caches, Triton's batcher
                cpu_before = cpu_seconds(router_pid)
                summaries = _loadgen(
                    ["open", "--url", direct_url, "--url", router_url, "--duration", str(duration),
                     "--out", str(work / "direct.bin"), "--out", str(work / "router.bin"), *common],
                    other_cpus, nice,
                )
                router_cpu_s = cpu_seconds(router_pid) - cpu_before
                native = _perf_analyzer_runs(triton.http_url, f"127.0.0.1:{port}", other_cpus, quick)
            proxied = model_proxy(triton.http_url, work, bodies, router_cpus, other_cpus, nice, quick)
            cascade = _cascade_pipeline(triton.http_url, work, bodies, router_cpus, other_cpus, nice, quick)
            direct = _percentiles(work / "direct.bin")
            routed = _percentiles(work / "router.bin")
            paired_p99 = _window_pairs_p99(work / "direct.bin", work / "router.bin")
            ceiling = _ceiling(work, bodies, router_cpus, other_cpus, nice, quick)
    direct_p50, direct_p99, direct_n = direct
    router_p50, router_p99, router_n = routed
    added_p99 = router_p99 - direct_p99
    per_cpu_second = ceiling["completed"] / ceiling["router_cpu_s"] if ceiling["router_cpu_s"] else 0.0
    return {
        "direct_p50_ms": round(direct_p50, 3),
        "direct_p99_ms": round(direct_p99, 3),
        "router_p50_ms": round(router_p50, 3),
        "router_p99_ms": round(router_p99, 3),
        "added_p50_ms": round(router_p50 - direct_p50, 3),
        "added_p99_ms": round(added_p99, 3),
        "added_p99_ms_paired_windows": round(paired_p99, 3),
        "router_rps_one_core": round(per_cpu_second),
        "router_rps_measured": ceiling["achieved_rps"],
        "target_added_p99_ms": TARGET_ADDED_P99_MS,
        "meets_target": added_p99 <= TARGET_ADDED_P99_MS,
        "rate_rps": RATE_RPS,
        "samples": {"direct": direct_n, "router": router_n},
        "errors": {"direct": summaries[0]["errors"], "router": summaries[1]["errors"]},
        "router_cpu_ms_per_request_at_rate": round(router_cpu_s * 1e3 / router_n, 3) if router_n else None,
        "ceiling": ceiling,
        "loadgen_send_lag_p99_ms": max(s["send_lag_p99_ms"] for s in summaries),
        "placement": {"router_cpus": sorted(router_cpus) if router_cpus else None,
                      "other_cpus": sorted(other_cpus) if other_cpus else None},
        "priority": f"nice {nice} for router, load generator and stub; Triton default" if nice is not None
        else "default",
        "windows": f"1 s windows alternating direct/router, {duration:g} s in all",
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
        "load_generators": "the figures above: the project's own (router_loadgen, JSON bodies); perf_analyzer: "
                           + ("NVIDIA's, in its native Triton mode over HTTP" if "error" not in native
                              else "not available here (see its error)"),
        "perf_analyzer": native,
        "model_proxy": proxied,
        "cascade_pipeline": cascade,
    }


def _perf_analyzer_runs(direct: str, routed: str, cpus: set[int] | None, quick: bool) -> dict[str, Any]:
    """NVIDIA's perf_analyzer, unchanged, against Triton and the router (the light model through the proxy,
    and the pipeline addressed as a model): open loop at 200/500/1,000 requests/s, closed loop at 1/4/16."""
    try:
        pa = perf_analyzer.prepare()
    except perf_analyzer.Unavailable as exc:
        return {"error": str(exc)}
    interval = 1000 if quick else 2000

    def three(**load: Any) -> dict[str, Any]:
        runs: dict[str, Any] = {
            "direct": perf_analyzer.measure(pa, direct, LIGHT_MODEL, interval_ms=interval, cpus=cpus, **load),
            "router_model": perf_analyzer.measure(pa, routed, LIGHT_MODEL, interval_ms=interval, cpus=cpus, **load),
            "router_pipeline": perf_analyzer.measure(pa, routed, "bench", interval_ms=interval, cpus=cpus, **load)}
        base, through = runs["direct"].get("p99_ms"), runs["router_model"].get("p99_ms")
        runs["added_p99_ms"] = None if base is None or through is None else round(through - base, 3)
        return runs

    return {"how": pa.how,
            "open_loop": {str(rate): three(rate=float(rate)) for rate in (200, 500, 1000)},
            "closed_loop": {str(c): three(concurrency=c) for c in (1, 4, 16)},
            "bodies": "perf_analyzer's own (random FP32 IMAGE [1, 8, 8], binary tensor data)"}


def _rate_sweep(common: Sequence[str], serving: int, prefix: Path, duration: float, cpus: set[int] | None,
                nice: int | None) -> dict[str, Any]:
    """Open-loop runs at each of :data:`PROXY_RATES` alternating the two ``--url``s of ``common`` (direct, then
    routed), after a 3-s warm-up: :func:`_added` per rate, the CPU being process ``serving``'s."""
    _loadgen(["open", *common, "--rate", str(RATE_RPS), "--duration", "3"], cpus, nice)
    rates: dict[str, Any] = {}
    for rate in PROXY_RATES:
        outs = [prefix.with_name(f"{prefix.name}-{rate:g}-{side}.bin") for side in ("direct", "router")]
        cpu_before = cpu_seconds(serving)
        summaries = _loadgen(["open", *common, "--rate", str(rate), "--duration", str(duration),
                              "--out", str(outs[0]), "--out", str(outs[1])], cpus, nice)
        rates[f"{rate:g}"] = _added(outs[0], outs[1], summaries, cpu_seconds(serving) - cpu_before)
    return rates


def _cascade_pipeline(triton_http_url: str, work: Path, bodies: Path, router_cpus: set[int] | None,
                      other_cpus: set[int] | None, nice: int | None, quick: bool) -> dict[str, Any]:
    """The cascade path on its own: a confidence cascade (light -> heavy at :data:`CASCADE_THRESHOLD`) on the
    pipeline endpoint of the Python router, at 200/500/1,000 requests/s against the light model direct in
    alternating windows. What it adds over one light-model call includes the heavy call of deferred rows, so
    the deferred share (from the router's own metrics) is reported beside it."""
    duration = 6.0 if quick else 20.0
    triton = f"http://{triton_http_url}"
    config = {"pipeline": "bench", "stages": [{"name": "classify", "cascade": {
        "light": LIGHT_MODEL, "heavy": HEAVY_MODEL, "threshold": CASCADE_THRESHOLD}}],
        "upstreams": {LIGHT_MODEL: [triton], HEAVY_MODEL: [triton]}}
    port, admin_port, log = free_port(), free_port(), work / "router-cascade.log"
    command = router_command(config, work, port, admin_port=admin_port)
    report: dict[str, Any] = {"threshold": CASCADE_THRESHOLD, "light": LIGHT_MODEL, "heavy": HEAVY_MODEL}
    with run_process(command, router_cpus, nice, log) as pid:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", pid, log)
        common = ["--url", f"{triton}/v2/models/{LIGHT_MODEL}/infer", "--url",
                  f"http://127.0.0.1:{port}/v2/pipelines/bench/infer", "--bodies", str(bodies),
                  "--header", f"{DEADLINE_HEADER}:1000"]
        report.update(_rate_sweep(common, pid, work / "cascade", duration, other_cpus, nice))
        metrics = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).text
    rows = {route: sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                       if line.startswith("paretoserve_router_requests_total{") and f'route="{route}"' in line)
            for route in ("light", "heavy")}
    answered = rows["light"] + rows["heavy"]  # rows the light model kept, rows deferred to the heavy one
    report["deferred_share"] = round(rows["heavy"] / answered, 4) if answered else None
    return report


def _perf_analyzer_front(url: str, cpus: set[int] | None, quick: bool) -> dict[str, Any]:
    """perf_analyzer through the fast path at ``url``: the light model (served there) and the pipeline addressed
    as a model (passed to the Python router behind it), open loop at 200/500/1,000 requests/s, closed at 1/4/16."""
    try:
        pa = perf_analyzer.prepare()
    except perf_analyzer.Unavailable as exc:
        return {"error": str(exc)}
    interval = 1000 if quick else 2000

    def runs(model: str) -> dict[str, Any]:
        return {"open_loop": {f"{rate:g}": perf_analyzer.measure(pa, url, model, interval_ms=interval, cpus=cpus,
                                                                   rate=rate) for rate in PROXY_RATES},
                "closed_loop": {str(c): perf_analyzer.measure(pa, url, model, interval_ms=interval, cpus=cpus,
                                                              concurrency=c) for c in (1, 4, 16)}}

    return {"router_model": runs(LIGHT_MODEL), "router_pipeline": runs("bench")}


def _ceiling(work: Path, bodies: Path, router_cpus: set[int] | None, other_cpus: set[int] | None,
             nice: int | None, quick: bool, *, fastpath: bool = False, model_proxy: bool = False) -> dict[str, Any]:
    """Closed-loop throughput of the router against an instant stub upstream: its pipeline endpoint, or
    (``model_proxy``) the plain proxy of the light model, served by Python or (``fastpath``) the fast path;
    the CPU is the serving process's."""
    response = {"id": "", "model_name": LIGHT_MODEL, "model_version": "1", "outputs": [
        {"name": "PROBS", "datatype": "FP32", "shape": [1, 10], "data": [0.1] * 10},
        {"name": "CONFIDENCE", "datatype": "FP32", "shape": [1, 1], "data": [0.1]},
        {"name": "LABEL", "datatype": "INT64", "shape": [1, 1], "data": [0]}]}
    canned = work / "stub-response.json"
    canned.write_text(json.dumps(response))
    stub_port, port = free_port(), free_port()
    stub = [sys.executable, "-I", "-m", "paretoserve.research.benchmarks.router_loadgen", "stub",
            "--port", str(stub_port), "--response", str(canned)]
    config = {"pipeline": "bench", "stages": [{"name": "classify", "variants": {LIGHT_MODEL: 1}}],
              "upstreams": {LIGHT_MODEL: [f"http://127.0.0.1:{stub_port}"]}}
    log = work / f"router-ceiling-{port}.log"
    with run_process(stub, other_cpus, nice, work / f"stub-{stub_port}.log"), \
            run_process(router_command(config, work, port, fastpath=fastpath), router_cpus, nice, log) as router_pid:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", router_pid, log)
        _tune(router_pid, router_cpus, nice)  # again: the fast path starts after the router
        serving = serving_pid(router_pid, fastpath)
        path = f"/v2/models/{LIGHT_MODEL}/infer" if model_proxy else "/v2/pipelines/bench/infer"
        args = ["closed", "--url", f"http://127.0.0.1:{port}{path}", "--bodies", str(bodies), "--concurrency", "16"]
        _loadgen([*args, "--duration", "2"], other_cpus, nice)
        cpu_before, started = cpu_seconds(serving), time.monotonic()
        summary = _loadgen([*args, "--duration", "4" if quick else "8"], other_cpus, nice)
        cpu_s, wall_s = cpu_seconds(serving) - cpu_before, time.monotonic() - started
    if not isinstance(summary, dict):
        raise RuntimeError(f"unexpected load generator output: {summary!r}")
    summary["router_cpu_s"] = round(cpu_s, 3)
    summary["router_cpu_utilisation"] = round(cpu_s / wall_s, 3) if wall_s else 0.0
    summary["rps_one_core"] = round(summary["completed"] / cpu_s) if cpu_s else None
    summary["cpu_us_per_request"] = round(cpu_s * 1e6 / summary["completed"], 1) if summary["completed"] else None
    return summary


def _added(direct: Path, routed: Path, summaries: Sequence[dict[str, Any]], cpu_s: float) -> dict[str, Any]:
    """Direct and routed latency of one alternating open-loop run, what the router added, and its CPU."""
    direct_p50, direct_p99, direct_n = _percentiles(direct)
    router_p50, router_p99, router_n = _percentiles(routed)
    return {"direct_p50_ms": round(direct_p50, 3), "direct_p99_ms": round(direct_p99, 3),
            "router_p50_ms": round(router_p50, 3), "router_p99_ms": round(router_p99, 3),
            "added_p50_ms": round(router_p50 - direct_p50, 3), "added_p99_ms": round(router_p99 - direct_p99, 3),
            "added_p99_ms_paired_windows": round(_window_pairs_p99(direct, routed), 3),
            "samples": {"direct": direct_n, "router": router_n},
            "errors": {"direct": summaries[0]["errors"], "router": summaries[1]["errors"]},
            "cpu_us_per_request": round(cpu_s * 1e6 / router_n, 1) if router_n else None}


def model_proxy(triton_http_url: str, work: Path, bodies: Path, router_cpus: set[int] | None,
                other_cpus: set[int] | None, nice: int | None, quick: bool, *, duration: float | None = None,
                with_perf_analyzer: bool = True) -> dict[str, Any]:
    """The plain proxy of the light model (``/v2/models/{m}/infer``) through each front (:data:`FRONTS`):
    latency added over Triton at 200/500/1,000 requests/s (the project's generator, alternating one-second
    windows direct/router, the deadline header set so the EDF admission runs), CPU per request, the closed-loop
    ceiling on one core against an instant stub and, for the fast path, perf_analyzer's figures."""
    duration = duration or (6.0 if quick else 20.0)
    config = {"pipeline": "bench", "stages": [{"name": "classify", "variants": {LIGHT_MODEL: 1}}],
              "upstreams": {LIGHT_MODEL: [f"http://{triton_http_url}"]}}
    direct_url = f"http://{triton_http_url}/v2/models/{LIGHT_MODEL}/infer"
    report: dict[str, Any] = {}
    for front in FRONTS:
        port, log = free_port(), work / f"router-{front}.log"
        fastpath = front == "fastpath"
        with run_process(router_command(config, work, port, fastpath=fastpath), router_cpus, nice, log) as pid:
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", pid, log)
            _tune(pid, router_cpus, nice)
            serving = serving_pid(pid, fastpath)
            url = f"http://127.0.0.1:{port}/v2/models/{LIGHT_MODEL}/infer"
            common = ["--url", direct_url, "--url", url, "--bodies", str(bodies), "--header", f"{DEADLINE_HEADER}:1000"]
            report[front] = {"open_loop": _rate_sweep(common, serving, work / front, duration, other_cpus, nice)}
            if fastpath and with_perf_analyzer:  # the Python front's: the report's "perf_analyzer.router_model"
                report[front]["perf_analyzer"] = _perf_analyzer_front(f"127.0.0.1:{port}", other_cpus, quick)
        report[front]["ceiling_one_core"] = _ceiling(work, bodies, router_cpus, other_cpus, nice, quick,
                                                     fastpath=fastpath, model_proxy=True)
    fast = report["fastpath"]
    at_rate = fast["open_loop"][f"{RATE_RPS:g}"]
    report["targets"] = {
        "added_p99_ms_at_1000": TARGET_ADDED_P99_MS, "rps_per_core": TARGET_RPS_PER_CORE,
        "fastpath_meets_added_p99": at_rate["added_p99_ms"] <= TARGET_ADDED_P99_MS,
        "fastpath_meets_rps_per_core": (fast["ceiling_one_core"]["rps_one_core"] or 0) >= TARGET_RPS_PER_CORE}
    report["windows"] = f"1 s windows alternating direct/router, {duration:g} s per rate"
    return report
