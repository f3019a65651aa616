"""Launcher for the real ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel (CPU, no container).

ParetoServe's workers are Triton servers; locally and in CI they run from the binary inside the
``nvidia-pytriton`` wheel, following ``shared/reference/triton-local.md``: the Python backend is
copied with the matching backend stub into a work directory (never modified inside site-packages),
the wheel's ``nvidia_pytriton.libs`` goes on ``LD_LIBRARY_PATH`` and the venv's ``bin`` first on
``PATH`` (that is how the embedded interpreter finds the venv's torch), and the server runs in
``explicit`` model-control mode so ParetoServe loads, reloads and unloads models itself.
:class:`TritonServer` picks free ports, waits for readiness with a deadline, captures the server's
output in a log file named by every error, and stops the process (and only its own process group)
on ``stop()``, on leaving its ``with`` block, or at interpreter exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType

import httpx

from paretoserve.workers.triton.cpu_quota import CpuQuotaGroup
from paretoserve.workers.triton.onnx_backend import OnnxBackend
from paretoserve.workers.triton.onnx_backend import resolve as resolve_onnx_backend
from paretoserve.workers.triton.repository import ONNX_BACKEND

INSTALL_HINT = "install the workers extra: pip install 'paretoserve[workers]' (nvidia-pytriton ships tritonserver)"


class TritonNotFoundError(RuntimeError):
    """The ``tritonserver`` binary, its Python backend or the stub for this Python is missing."""


class TritonStartupError(RuntimeError):
    """The server exited or did not become ready in time; the message names the log file."""

    def __init__(self, message: str, log_path: Path) -> None:
        super().__init__(f"{message} (log: {log_path})\n--- last lines of {log_path} ---\n{_tail(log_path)}")
        self.log_path = log_path


@dataclass(frozen=True)
class TritonInstallation:
    """Where the wheel keeps the server binary, the Python backend, its stub and shared libraries."""

    server_binary: Path
    python_backend: Path
    stub: Path
    library_dir: Path

    @classmethod
    def locate(cls, python_version: tuple[int, int] | None = None) -> TritonInstallation:
        """Find the installation in the current environment, or raise :class:`TritonNotFoundError`."""
        major, minor = python_version or (sys.version_info.major, sys.version_info.minor)
        spec = find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise TritonNotFoundError(f"the 'pytriton' package is not installed; {INSTALL_HINT}")
        package = Path(next(iter(spec.submodule_search_locations)))
        root = package / "tritonserver"
        installation = cls(
            server_binary=root / "bin" / "tritonserver",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / f"{major}.{minor}" / "triton_python_backend_stub",
            library_dir=package.parent / "nvidia_pytriton.libs",
        )
        missing = [str(path) for path in installation._required_paths() if not path.exists()]
        if missing:
            raise TritonNotFoundError(f"incomplete Triton installation, missing {missing}; {INSTALL_HINT}")
        return installation

    def _required_paths(self) -> tuple[Path, ...]:
        return (self.server_binary, self.python_backend, self.stub, self.library_dir)

    def prepare_backends(self, destination: Path, onnx: OnnxBackend) -> Path:
        """A ``backends/`` directory with the Python backend and its stub side by side, and ``onnx``'s
        implementation of the ``paretoserve_onnx`` backend (:mod:`.onnx_backend`).

        Reused when already prepared (keyed by the stub's size and mtime and the ONNX backend's bytes); built
        under a temporary name and renamed, so concurrent launchers never see a partial copy.
        """
        stat = self.stub.stat()
        backends = destination / f"backends-{stat.st_size}-{int(stat.st_mtime)}-{onnx.cache_key()}"
        if (backends / "python" / "triton_python_backend_stub").is_file():
            return backends
        destination.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=destination))
        try:
            onnx.install(staging / ONNX_BACKEND)
            shutil.copytree(self.python_backend, staging / "python", ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy2(self.stub, staging / "python" / "triton_python_backend_stub")
            try:
                staging.rename(backends)
            except OSError:
                if not (backends / "python" / "triton_python_backend_stub").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return backends


@dataclass(frozen=True)
class TritonPorts:
    """The three ports one server listens on."""

    http: int
    grpc: int
    metrics: int

    @classmethod
    def pick_free(cls, host: str = "127.0.0.1") -> TritonPorts:
        """Three ports the OS reports free right now (a start retries if one gets taken)."""
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(3)]
        try:
            for sock in sockets:
                sock.bind((host, 0))
            http, grpc, metrics = (sock.getsockname()[1] for sock in sockets)
        finally:
            for sock in sockets:
                sock.close()
        return cls(http=http, grpc=grpc, metrics=metrics)


@dataclass(frozen=True)
class TritonServerConfig:
    """How to run one server. ``work_dir`` holds the log (a fresh temp dir when ``None``).

    ``bind_address`` is where all three endpoints listen: loopback locally, ``0.0.0.0`` in a pod.
    """

    model_repository: Path
    models: tuple[str, ...] = ()
    bind_address: str = "127.0.0.1"
    work_dir: Path | None = None
    backend_cache_dir: Path | None = None
    startup_timeout_s: float = 180.0
    stop_timeout_s: float = 30.0
    start_attempts: int = 3
    log_verbose: int = 0
    metrics_interval_ms: int = 1000
    extra_args: tuple[str, ...] = ()
    cpu_group: CpuQuotaGroup | None = None
    """Start the server (and so its stub processes) inside this cgroup: a pod's CPU limit, locally."""
    onnx_backend: str = "auto"
    """Which implementation of the ``paretoserve_onnx`` backend serves the ONNX variants: ``auto`` (native when
    built, else Python), ``native``, ``python``, or a library's path (:func:`.onnx_backend.resolve`)."""
    strict_model_config: bool = True
    """Serve each model's config as written (``--disable-auto-complete-config``). Every config this project
    renders is complete, and with auto-completion on, the Python backend starts one more stub process per model
    load just to ask the model for additions: ~1.3 s and a process's start-up CPU on every reload a knob change
    makes (`paretoserve bench knobs`). Turn it off for a repository whose configs leave out what Triton can
    fill in."""


def build_command(
    installation: TritonInstallation,
    backends: Path,
    config: TritonServerConfig,
    ports: TritonPorts,
) -> list[str]:
    """The ``tritonserver`` command line (pure)."""
    exit_timeout = max(1, int(config.stop_timeout_s) - 5)
    command = [
        str(installation.server_binary),
        f"--model-repository={config.model_repository}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        *(("--disable-auto-complete-config",) if config.strict_model_config else ()),
        f"--http-address={config.bind_address}",
        f"--http-port={ports.http}",
        f"--grpc-address={config.bind_address}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-address={config.bind_address}",
        f"--metrics-port={ports.metrics}",
        "--allow-gpu-metrics=false",
        f"--metrics-interval-ms={config.metrics_interval_ms}",
        f"--exit-timeout-secs={exit_timeout}",
        f"--log-verbose={config.log_verbose}",
    ]
    command += [f"--load-model={name}" for name in config.models]
    return command + list(config.extra_args)


STUB_BLAS_THREADS = "1"
"""``OPENBLAS_NUM_THREADS`` for Triton and so for every Python-backend stub, unless the caller's environment sets
it. Each model instance is its own stub process, which imports numpy (Triton's ``triton_python_backend_utils``
does, before the model's ``initialize``); with a thread per core OpenBLAS's start-up took a new instance from
0.16-0.21 to 0.27-0.31 CPU-seconds (measured per new stub on the 2-core VM), CPU that a knob change under load
takes from serving. No stub needs BLAS threads: the classifiers compute in ONNX Runtime (its own threads) and the
token engines run one BLAS thread per instance anyway (``workers/llm/backend_model.py``). The worker image's
``tritonserver`` wrapper sets the same."""


def build_environment(installation: TritonInstallation, base: Mapping[str, str], venv_bin: Path) -> dict[str, str]:
    """The server's environment: wheel libraries on ``LD_LIBRARY_PATH``, the venv first on ``PATH``, one BLAS
    thread per stub (`STUB_BLAS_THREADS`) unless ``base`` says otherwise."""
    env = dict(base)
    env.setdefault("OPENBLAS_NUM_THREADS", STUB_BLAS_THREADS)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        part for part in (str(installation.library_dir), base.get("LD_LIBRARY_PATH", "")) if part
    )
    env["PATH"] = os.pathsep.join(part for part in (str(venv_bin), base.get("PATH", "")) if part)
    return env


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"<cannot read log: {error}>"


def _die_with_parent(command: list[str]) -> list[str]:
    """Prefix ``setpriv --pdeathsig TERM`` so a SIGKILLed parent (``kill -9`` of ``paretoserve up``) does not
    leave Triton running, holding its ports and memory. The signal follows the *thread* that started the
    server, so it is set only from the main thread (a worker thread's exit would stop a healthy server)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return command
    return [setpriv, "--pdeathsig", "TERM", "--", *command]


def _terminate(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGINT (Triton drains and exits), then SIGKILL to the server's own process group."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class TritonServer:
    """A running ``tritonserver``; use as a context manager or call :meth:`start`/:meth:`stop`."""

    def __init__(self, config: TritonServerConfig, installation: TritonInstallation | None = None) -> None:
        self._config = config
        self._installation = installation
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: TritonPorts | None = None
        self._work_dir: Path | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes], float], TritonServer] | None = None

    @property
    def ports(self) -> TritonPorts:
        if self._ports is None:
            raise RuntimeError("the server has not been started")
        return self._ports

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint (the form ``tritonclient.http`` takes)."""
        return f"127.0.0.1:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    @property
    def log_path(self) -> Path:
        if self._work_dir is None:
            raise RuntimeError("the server has not been started")
        return self._work_dir / "tritonserver.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and block until it and every configured model are ready."""
        if self.is_running():
            raise RuntimeError(f"tritonserver already running (pid {self.pid})")
        installation = self._installation or TritonInstallation.locate()
        cache = self._config.backend_cache_dir or Path(tempfile.gettempdir()) / "paretoserve-triton"
        onnx = resolve_onnx_backend(self._config.onnx_backend)
        backends = installation.prepare_backends(cache, onnx)
        self._work_dir = self._config.work_dir or Path(tempfile.mkdtemp(prefix="paretoserve-triton-"))
        self._work_dir.mkdir(parents=True, exist_ok=True)
        env = build_environment(installation, os.environ, Path(sys.prefix) / "bin")
        env.update(onnx.environment(env))
        for attempt in range(1, self._config.start_attempts + 1):
            self._ports = TritonPorts.pick_free(self._config.bind_address)
            command = _die_with_parent(build_command(installation, backends, self._config, self._ports))
            with self.log_path.open("ab") as log:
                log.write(f"=== attempt {attempt}: {' '.join(command)}\n".encode())
                log.flush()
                attempt_offset = log.tell()
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                    preexec_fn=self._config.cpu_group.join if self._config.cpu_group else None,
                )
            self._process = process
            self._finalizer = weakref.finalize(self, _terminate, process, self._config.stop_timeout_s)
            try:
                self._wait_ready()
                return
            except TritonStartupError:
                self.stop()
                port_taken = "already in use" in self._log_since(attempt_offset)
                if attempt == self._config.start_attempts or not port_taken:
                    raise
            except BaseException:  # e.g. KeyboardInterrupt while waiting: never leave it running
                self.stop()
                raise

    def _log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._config.startup_timeout_s
        urls = [f"http://{self.http_url}/v2/health/ready"]
        urls += [f"http://{self.http_url}/v2/models/{name}/ready" for name in self._config.models]
        with httpx.Client(timeout=2.0) as client:
            while True:
                assert self._process is not None
                code = self._process.poll()
                if code is not None:
                    raise TritonStartupError(f"tritonserver exited with code {code} during startup", self.log_path)
                if all(self._is_ok(client, url) for url in urls):
                    return
                if time.monotonic() > deadline:
                    raise TritonStartupError(
                        f"tritonserver not ready after {self._config.startup_timeout_s:.0f}s", self.log_path
                    )
                time.sleep(0.1)

    @staticmethod
    def _is_ok(client: httpx.Client, url: str) -> bool:
        try:
            return client.get(url).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """Stop the server (graceful, then forced after ``stop_timeout_s``); idempotent."""
        if self._finalizer is not None:
            self._finalizer()  # runs _terminate once and detaches the at-exit hook
            self._finalizer = None

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
