"""`paretoserve up`: a ServingPipeline on one machine, with the real Triton, the router and the one loop.

What a cluster does with pods, this does with processes: one ``tritonserver`` serving every model of the
pipeline (cached digits models or repository entries, token-generating models and their prompt scorer, each
loaded by config override: `serving.model_specs`), the router as a subprocess in front of it
(``paretoserve router``, configured from the pipeline), and the adaptation loop — the planner's
`ControlLoop`, not a copy — fed by `LocalMetricsSource` (or `PrometheusSource`, as on a cluster) and acting through
`LocalActuator`. `LocalRuntime` owns all of it as one context manager: leaving the ``with`` block (normally,
on an exception, or on Ctrl-C/SIGTERM turned into `KeyboardInterrupt` by the CLI) stops the loop, the
metrics sampler, the router and Triton, in that order, and leaves no process behind.

The run's applied plans and loop decisions are also written to a state directory
(``$TMPDIR/paretoserve-up-<port>`` by default) so that a separate `paretoserve load` can report cost and
reconfigurations of the run it drove.

The router serves inference on ``--port`` and its admin API (live config, metrics) on a second,
loopback-only listener; `RouterProcess` gives it a fresh random bearer token (a 0600 file in the work
directory, never in the state directory) that only this process's `RouterAdmin` knows, and the metrics
scrape goes to the admin listener.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from paretoserve.planner.control import ControlLoop, MetricsSource, StepResult, check_interval, pareto_loop
from paretoserve.planner.policy import PolicyState
from paretoserve.planner.spec import ServingPipeline
from paretoserve.workers.models import ensure_trained
from paretoserve.workers.observe.prometheus import PrometheusSource
from paretoserve.workers.plan_rendering import router_config, stage_models
from paretoserve.workers.runtime.actuator import AppliedRecord, LocalActuator, LocalLimits, RouterAdmin
from paretoserve.workers.runtime.completions import generation_slo
from paretoserve.workers.runtime.metrics import LocalMetricsSource, PrometheusWarmup
from paretoserve.workers.runtime.report import AppliedEvent, LoopStep
from paretoserve.workers.runtime.served import ServedSpec
from paretoserve.workers.runtime.serving import (
    GrpcModelControl,
    dedicated_cores,
    max_batch_size,
    model_specs,
    pipeline_models,
    running_triton,
)
from paretoserve.workers.triton.cpu_quota import (
    LOCAL_PERIOD_US,
    CpuQuotaGroup,
    CpuQuotaUnavailable,
    cpu_quota_group,
)

RUNTIME_FILE = "runtime.json"
APPLIED_FILE = "applied.jsonl"
STEPS_FILE = "steps.jsonl"


def default_state_dir(port: int) -> Path:
    """Where `up` on ``port`` records its run for `paretoserve load`."""
    return Path(tempfile.gettempdir()) / f"paretoserve-up-{port}"


@dataclass(frozen=True)
class UpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    """The router's port: the pipeline's public endpoint."""
    prometheus: str | None = None
    """Read observations from this Prometheus server instead of scraping router and Triton."""
    cores: int = field(default_factory=dedicated_cores)
    max_instances_per_model: int | None = None
    """Defaults to ``cores``: more instances than cores only adds context switches."""
    work_dir: Path | None = None
    """Model repository and logs; a fresh temporary directory when unset (kept for the logs)."""
    state_dir: Path | None = None
    router_start_timeout_s: float = 60.0
    stop_timeout_s: float = 15.0
    router_command: tuple[str, ...] | None = None
    """The router's command line before ``--config FILE --host H --port P ...``; default ``paretoserve router``."""
    admin_port: int | None = None
    """The router's admin listener on 127.0.0.1 (live config, metrics); a free port when unset."""
    model_repository: Path | None = None
    """Models the pipeline names that are not cached digits variants come from here (e.g. ``paretoserve
    fuse``'s ``repository/``)."""
    cpu_quota: bool = True
    """Run Triton in a cgroup whose CFS quota is the applied plan's cores (needs root or a delegated cgroup;
    without one `up` says so and Triton may use every core)."""
    queue_order: str = "slack"
    """The router's order of upstream calls waiting for a slot (``slack``, ``deadline``, ``fifo``)."""
    router_concurrency: int | None = None
    """Upstream calls the router lets run at once (default: the router's 64). Set it near the Triton instances
    for the router's queue, and so its order, to decide which call runs next (agent workflows)."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the router if `up` dies without cleaning up (e.g. SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


ADMIN_HOST = "127.0.0.1"
TOKEN_FILE = "router-admin.token"


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _check_free(host: str, port: int, flag: str) -> None:
    with socket.socket() as probe:  # else the readiness check could be answered by someone else's server
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError:
            raise RuntimeError(f"{host}:{port} is already in use (choose another {flag})") from None


def write_token(path: Path) -> str:
    """A fresh random admin token in ``path``, readable by this user only (0600 from creation)."""
    token = secrets.token_urlsafe(32)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(token + "\n")
    return token


class RouterProcess:
    """``paretoserve router`` as a subprocess in its own session, stopped with SIGTERM then SIGKILL.

    Its admin listener is on 127.0.0.1 (:attr:`admin_url`) behind a fresh token (:attr:`admin_token`).
    """

    def __init__(self, config: dict[str, Any], settings: UpSettings, work_dir: Path) -> None:
        self._config_path = work_dir / "router.json"
        self._config_path.write_text(json.dumps(config, indent=2))
        self._token_path = work_dir / TOKEN_FILE
        self.log_path = work_dir / "router.log"
        self._settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self.admin_token = ""
        self.admin_url = ""

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __enter__(self) -> RouterProcess:
        _check_free(self._settings.host, self._settings.port, "--port")
        admin_port = self._settings.admin_port or _free_port(ADMIN_HOST)
        _check_free(ADMIN_HOST, admin_port, "admin port")
        self.admin_url = f"http://{ADMIN_HOST}:{admin_port}"
        self.admin_token = write_token(self._token_path)
        base = self._settings.router_command or (sys.executable, "-I", "-m", "paretoserve", "router")
        command = [*base, "--config", str(self._config_path), "--host", self._settings.host,
                   "--port", str(self._settings.port), "--admin-host", ADMIN_HOST, "--admin-port", str(admin_port),
                   "--admin-token-file", str(self._token_path)]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._settings.router_start_timeout_s
        pipeline = json.loads(self._config_path.read_text())["pipeline"]
        auth = {"authorization": f"Bearer {self.admin_token}"}
        with httpx.Client(timeout=httpx.Timeout(2.0), headers=auth) as client:
            while True:
                assert self._process is not None
                code = self._process.poll()
                if code is not None:
                    raise RuntimeError(f"the router exited with code {code} during startup (log: {self.log_path}):\n"
                                       + _tail(self.log_path))
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    answer = client.get(f"{self.admin_url}/admin/config")
                    if answer.status_code == 200 and answer.json()["pipeline"] == pipeline:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the router was not ready after {self._settings.router_start_timeout_s:.0f}s "
                                       f"(log: {self.log_path}):\n" + _tail(self.log_path))
                time.sleep(0.1)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self._settings.stop_timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=10)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"<cannot read {path}: {error}>"


def applied_event(record: AppliedRecord) -> AppliedEvent:
    """The summary/plot form of an actuation (also the line written to ``applied.jsonl``)."""
    return AppliedEvent(
        time=record.time, cores=float(record.plan.cpu or 0.0), instances=record.instances,
        thresholds={sp.stage: sp.threshold for sp in record.plan.stages if sp.threshold is not None},
        triton_changes=list(record.triton_changes), error=record.error,
        batch={m: batch for m, s in record.settings.items() if (batch := s.batch) is not None},
        cpu_quota=record.cpu_quota)


class LoopRunner:
    """Ticks the `ControlLoop` every ``interval_s`` in a thread; a failed tick is logged, not fatal."""

    def __init__(self, loop: ControlLoop[PolicyState], interval_s: float, log: Callable[[str], None],
                 on_step: Callable[[LoopStep], None], *, observed_rate: Callable[[], float | None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self._loop = loop
        self._observed_rate = observed_rate
        self._interval_s = interval_s
        self._log = log
        self._on_step = on_step
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paretoserve-loop", daemon=True)
        self.errors = 0

    def tick(self) -> StepResult[PolicyState] | None:
        now = self._clock()
        try:
            result = self._loop.tick(now)
        except Exception as exc:  # keep serving with the plan in force; the next tick retries
            self.errors += 1
            self._log(f"loop tick failed: {type(exc).__name__}: {exc}")
            return None
        step = LoopStep(now, result.predicted_load, self._observed_rate(), result.decision.reason,
                        result.decision.apply, result.planned)
        self._on_step(step)
        if result.decision.apply:
            plan = result.decision.plan
            self._log(f"applied plan: {result.decision.reason}; predicted {result.predicted_load:.1f} rps, "
                      f"cores {f'{plan.cpu:.3g}' if plan and plan.cpu is not None else '?'}, "
                      f"accuracy {plan.accuracy if plan else '?'}")
        return result

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.tick()

    def __enter__(self) -> LoopRunner:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=120)  # a tick in progress may be waiting on a Triton reload


class LocalRuntime:
    """Triton + router + control loop for one pipeline; a context manager that owns every process."""

    def __init__(self, pipeline: ServingPipeline, settings: UpSettings,
                 log: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self._log = log
        self._stack = ExitStack()
        self.events: list[AppliedEvent] = []
        self.steps: list[LoopStep] = []
        self.state_dir = settings.state_dir or default_state_dir(settings.port)
        self.router_pid: int | None = None
        self.router_admin_url: str | None = None
        """The router's admin listener (live config, ``/metrics``); its token stays with this process."""
        self.triton_pid: int | None = None
        self.model_specs: dict[str, ServedSpec] = {}
        """The Triton models served, as started (the plan then changes their knobs)."""
        self.triton_metrics_url: str | None = None
        self.metrics: LocalMetricsSource | None = None
        self.actuator: LocalActuator | None = None
        self.loop_runner: LoopRunner | None = None
        self.cpu_quota_period_ms: float | None = None
        """The CFS period of Triton's CPU quota, or None when the plan's cores are not enforced."""

    @property
    def url(self) -> str:
        return self.settings.url

    def __enter__(self) -> LocalRuntime:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._log("stopping: control loop, metrics, router, Triton")
        main = threading.current_thread() is threading.main_thread()
        blocked = {signal.SIGINT, signal.SIGTERM}
        if main:  # a second Ctrl-C must not interrupt the cleanup half-way and orphan a process
            signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self._stack.close()
        finally:
            if main:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)

    def _start(self) -> None:
        pipeline, settings = self.pipeline, self.settings
        uses = pipeline_models(pipeline)
        catalog = ensure_trained() if any(use.kind == "classifier" for use in uses) else None
        specs = model_specs(uses, catalog, max_batch=max_batch_size(pipeline), repository=settings.model_repository,
                            max_queue_delay_us=0)
        work_dir = settings.work_dir or Path(tempfile.mkdtemp(prefix="paretoserve-up-work-"))
        work_dir.mkdir(parents=True, exist_ok=True)
        self._reset_state_dir()
        cores = self._cpu_group()
        self._log(f"starting Triton with {', '.join(specs)} (work dir {work_dir})")
        server = self._stack.enter_context(running_triton(specs, work_dir, progress=self._log, cpu_group=cores))
        self.triton_pid = server.pid
        self.model_specs = dict(specs)
        self.triton_metrics_url = server.metrics_url
        self._log(f"Triton ready (pid {server.pid}, metrics {server.metrics_url}, log {server.log_path})")
        upstreams = {model: [f"http://{server.http_url}"] for model in specs}
        config = router_config(pipeline.metadata.name, pipeline.spec, upstreams, None)
        config["queue"] = {"order": settings.queue_order, **({"concurrency": settings.router_concurrency}
                                                            if settings.router_concurrency is not None else {})}
        router = self._stack.enter_context(RouterProcess(config, settings, work_dir))
        self.router_pid = router.pid
        self.router_admin_url = router.admin_url
        self._log(f"router ready at {settings.url} (admin {router.admin_url}, pid {router.pid}, log {router.log_path})")
        control = self._stack.enter_context(GrpcModelControl(server.grpc_url))
        admin = self._stack.enter_context(RouterAdmin(router.admin_url, token=router.admin_token))
        limits = LocalLimits(settings.cores, settings.max_instances_per_model or settings.cores)
        self.actuator = LocalActuator(pipeline, specs, control, admin, limits, cores=cores,
                                      on_apply=self._record_applied)
        models_of_stage = stage_models(pipeline.spec)
        adaptation = pipeline.spec.adaptation
        window = adaptation.predictor.window_seconds
        source: MetricsSource
        if settings.prometheus:
            # per-second steps of rate() over 5 s: needs a scrape interval of 2 s or less (and the static
            # `pipeline` label on the router and Triton targets: paretoserve.workers.observe.contract)
            source = PrometheusWarmup(self._stack.enter_context(PrometheusSource(
                settings.prometheus, pipeline.metadata.name, stage_models=models_of_stage, window_s=window, step_s=1,
                rate_window_s=5, batching_delay_ms=self.actuator.batching_delay_ms)), self._log)
        else:
            self.metrics = self._stack.enter_context(LocalMetricsSource(
                pipeline.metadata.name, f"{router.admin_url}/metrics", server.metrics_url, models_of_stage,
                window_s=window, batching_delay_ms=self.actuator.batching_delay_ms))
            source = self.metrics
        loop = pareto_loop(pipeline, source, self.actuator, resize_in_place=True)  # cores: Triton's CPU quota
        self.loop_runner = LoopRunner(loop, check_interval(pipeline), self._log, self._record_step,
                                      observed_rate=self._last_rate)
        if self.loop_runner.tick() is None:  # the first plan is in force before any traffic
            raise RuntimeError("the first control-loop tick failed; see the message above")
        self._stack.enter_context(self.loop_runner)
        self._write_runtime()
        name = pipeline.metadata.name
        generating = generation_slo(pipeline, self.model_specs)
        endpoint = (f"POST {settings.url}/v2/pipelines/{name}/infer" if generating is None
                    else f'POST {settings.url}/v2/models/{name}/generate_stream {{"PROMPT": ..., "IMAGE": [...]}}'
                    if generating["imageValues"] else f'POST {settings.url}/v1/completions {{"model": "{name}", ...}}')
        self._log(f"ready: {endpoint} (plans every {adaptation.interval_seconds:g}s, checks the load every "
                  f"{check_interval(pipeline):g}s, state {self.state_dir})")

    def _cpu_group(self) -> CpuQuotaGroup | None:
        """Triton's cgroup (no limit beyond the machine until the first plan), or None where none can be made."""
        if not self.settings.cpu_quota:
            return None
        try:
            group = self._stack.enter_context(cpu_quota_group(float(self.settings.cores), prefix="paretoserve-up",
                                                              period_us=LOCAL_PERIOD_US))
        except CpuQuotaUnavailable as exc:
            self._log(f"planned cores are not enforced: {exc}")
            return None
        self.cpu_quota_period_ms = LOCAL_PERIOD_US / 1000
        self._log(f"Triton's CPU quota follows the plan's cores (cgroup {group.path}, period "
                  f"{self.cpu_quota_period_ms:g} ms)")
        return group

    def _last_rate(self) -> float | None:
        rates = self.metrics.history.rates() if self.metrics is not None else ()
        return rates[-1] if rates else None

    def _reset_state_dir(self) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def _write_runtime(self) -> None:
        spec = self.pipeline.spec
        dynamic = spec.slo.dynamic
        info = {"pipeline": self.pipeline.metadata.name, "url": self.url, "sloMs": spec.slo.latency_ms,
                "percentile": int(spec.slo.percentile.value),
                "deadlineHeader": dynamic.header if dynamic is not None else None,  # sent only with a dynamic SLO
                "routerPid": self.router_pid, "tritonPid": self.triton_pid, "startedAt": time.time(),
                "routerAdminUrl": self.router_admin_url, "routerMetricsUrl": f"{self.router_admin_url}/metrics",
                "tritonMetricsUrl": self.triton_metrics_url, "cpuQuotaPeriodMs": self.cpu_quota_period_ms,
                "generation": generation_slo(self.pipeline, self.model_specs)}
        (self.state_dir / RUNTIME_FILE).write_text(json.dumps(info, indent=2))

    def _record_applied(self, record: AppliedRecord) -> None:
        event = applied_event(record)
        self.events.append(event)
        if record.error is not None:
            self._log(f"applying a plan failed: {record.error}")
        elif record.triton_changes:
            self._log("triton: " + ", ".join(f"{m} {k} ({s:.1f}s)" for m, k, s in record.triton_changes))
        with (self.state_dir / APPLIED_FILE).open("a") as out:
            out.write(json.dumps(event.to_json()) + "\n")

    def _record_step(self, step: LoopStep) -> None:
        self.steps.append(step)
        with (self.state_dir / STEPS_FILE).open("a") as out:
            out.write(json.dumps(vars(step)) + "\n")

    def wait(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set (signals arrive as `KeyboardInterrupt` in the main thread)."""
        while not stop.wait(0.5):
            pass


def read_state(state_dir: Path) -> tuple[dict[str, Any], list[AppliedEvent], list[LoopStep]]:
    """What an `up` run recorded: its runtime info, applied plans and loop steps (for `paretoserve load`)."""
    info = json.loads((state_dir / RUNTIME_FILE).read_text())
    events = [AppliedEvent.from_json(json.loads(line)) for line in _lines(state_dir / APPLIED_FILE)]
    steps = [LoopStep(**json.loads(line)) for line in _lines(state_dir / STEPS_FILE)]
    return info, events, steps


def _lines(path: Path) -> Iterator[str]:
    if path.exists():
        yield from (line for line in path.read_text().splitlines() if line.strip())
