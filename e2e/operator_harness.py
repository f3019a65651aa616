"""Real components around the operator under test: Helm, Prometheus, a load exporter, the operator process.

- `helm()` finds the helm built by e2e/cluster/build.sh (or HELM / PATH, e.g. on kind).
- `LoadExporter` serves `paretoserve_pipeline_requests_total{namespace,pipeline}` as a counter that grows
  at a rate the test sets — what the router sidecars expose in production — so the test changes the load
  that Prometheus observes without running real inference pods (kwok runs no containers).
- `PrometheusServer` runs Debian's Prometheus binary scraping the exporter every second.
- `OperatorProcess` runs `python -m paretoserve.operator` as a separate process with a kubeconfig holding
  the Helm chart's ServiceAccount token, so the chart's RBAC is what the operator actually gets.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily

from paretoserve.workers.observe import contract

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def helm() -> str:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    versions = dict(
        line.split("=", 1) for line in (E2E_DIR / "cluster" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    cache = Path(os.environ.get("PARETOSERVE_CACHE", Path.home() / ".cache" / "paretoserve"))
    built = cache / "k8s" / versions["K8S_VERSION"].strip() / "bin" / "helm"
    if built.exists():
        return str(built)
    found = shutil.which("helm")
    if found is None:
        raise RuntimeError("helm not found: run e2e/cluster/build.sh or set HELM")
    return found


class LoadExporter:
    """A Prometheus target whose request counters grow at rates the test controls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], tuple[float, float, float]] = {}  # -> (base, rate, since)
        self.registry = CollectorRegistry()
        self.registry.register(self)  # type: ignore[arg-type]
        self.port = free_port()
        self._server, self._thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    def set_rate(self, namespace: str, pipeline: str, rps: float) -> None:
        now = time.time()
        with self._lock:
            base, rate, since = self._series.get((namespace, pipeline), (0.0, 0.0, now))
            self._series[(namespace, pipeline)] = (base + rate * (now - since), rps, now)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(contract.PIPELINE_REQUESTS, "Requests entering the pipeline",
                                     labels=[contract.NAMESPACE, contract.PIPELINE])
        now = time.time()
        with self._lock:
            for (ns, name), (base, rate, since) in self._series.items():
                family.add_metric([ns, name], base + rate * (now - since))
        yield family

    def close(self) -> None:
        self._server.shutdown()


class PrometheusServer:
    """Debian's prometheus binary with a 1 s scrape of the load exporter."""

    def __init__(self, target_port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus not found: apt-get install prometheus (.ci/run does)")
        self.dir = Path(tempfile.mkdtemp(prefix="paretoserve-prom-"))
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "load", "honor_labels": True,
                                      "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}]}
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.dir / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [self._binary, f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"prometheus did not start; log: {self.dir / 'prometheus.log'}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def service_account_kubeconfig(cluster: Any, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig authenticating as the chart's ServiceAccount (least-privilege RBAC under test)."""
    token = cluster.kubectl("-n", namespace, "create", "token", account, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    current = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = next(c for c in admin["clusters"] if c["name"] == current["cluster"])
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "e2e", "cluster": server["cluster"]}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "e2e", "user": "operator"}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


class OperatorProcess:
    """`python -m paretoserve.operator` in its own process group, restartable (crash tests)."""

    def __init__(self, kubeconfig: Path, env: dict[str, str], log: Path,
                 peering: tuple[str, int] | None = None, namespaces: tuple[str, ...] = ()) -> None:
        """`peering=(name, priority)` joins kopf peering; None runs `--standalone`. `namespaces`: watch only
        these (the chart's namespace-scoped mode), else the whole cluster."""
        self.kubeconfig, self.env, self.log, self.peering = kubeconfig, env, log, peering
        self.namespaces = namespaces
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig)}
        if self.peering:
            name, priority = self.peering
            env |= {"PARETOSERVE_PEERING": name, "PARETOSERVE_PRIORITY": str(priority)}
            mode = [f"--peering={name}", f"--priority={priority}"]
        else:
            mode = ["--standalone"]
        scope = [f"--namespace={n}" for n in self.namespaces] or ["--all-namespaces"]
        if self.namespaces:
            env["PARETOSERVE_WATCH_NAMESPACES"] = ",".join(self.namespaces)
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "paretoserve.operator", *mode, *scope,
             f"--liveness=http://127.0.0.1:{free_port()}/healthz"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL, as a crashed pod would die: no cleanup handlers run."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
