"""Fixtures for the ParetoServe end-to-end suite (run explicitly: ``pytest e2e``).

The suite needs a Kubernetes cluster with fake GPU nodes (kwok):

* ``E2E_KUBECONFIG=/path/to/kubeconfig pytest e2e`` uses that cluster unchanged (e.g. kind set up
  with ``e2e/kind/setup.sh``). Nothing is created or torn down except per-test namespaces.
* Otherwise the session builds (cached), starts and health-checks a local control plane with
  ``e2e/cluster/{build,up,health}.sh`` and tears it down with ``down.sh`` at the end of the
  session -- unless ``--keep-cluster`` is given, in which case the next run reuses it.

Everything talks to the cluster through ``kubectl`` subprocesses, so the Python ``kubernetes``
client is not needed. This file is deliberately not at the repository root: a root conftest.py
would put the repository root on ``sys.path`` (and shadow the stdlib ``operator`` module).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_kube import Cluster

E2E_DIR = Path(__file__).resolve().parent
CLUSTER_SCRIPTS = E2E_DIR / "cluster"
REPO_ROOT = E2E_DIR.parent
KWOK_MANIFESTS = REPO_ROOT / "manifests" / "kwok"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("paretoserve-e2e", "ParetoServe end-to-end tests")
    group.addoption(
        "--keep-cluster",
        action="store_true",
        default=False,
        help="do not tear down the locally started e2e cluster at the end of the session "
        "(the next run reuses it); ignored when E2E_KUBECONFIG is set",
    )
    group.addoption(
        "--e2e-timeout",
        type=float,
        default=float(os.environ.get("E2E_TIMEOUT", "90")),
        help="seconds to wait for each asynchronous cluster condition (default 90, env E2E_TIMEOUT)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: needs a Kubernetes cluster with kwok fake GPU nodes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under e2e/ is an e2e test; the marker makes that selectable (-m e2e / -m "not e2e").
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failed test's report gets what its module's ``failure_context()`` says (e.g. the operator's log), so
    a failure on CI can be diagnosed from its output alone."""
    report: pytest.TestReport = yield
    context = getattr(getattr(item, "module", None), "failure_context", None)
    if report.when == "call" and report.failed and callable(context):
        try:
            text = str(context())
        except Exception as exc:  # the context is a diagnosis: never turn it into a second failure
            text = f"(could not gather it: {type(exc).__name__}: {exc})"
        report.sections.append(("failure context", text))
    return report


def _run_script(config: pytest.Config, name: str, *args: str, live: bool = False) -> str:
    """Run e2e/cluster/<name> and return its stdout.

    Its stderr (progress messages) is captured like test output and shown if the fixture fails;
    with ``live=True`` it goes straight to the terminal (the first build takes ~15 minutes).
    """
    script = CLUSTER_SCRIPTS / name
    capman = config.pluginmanager.getplugin("capturemanager")
    ctx = capman.global_and_fixture_disabled() if live and capman else contextlib.nullcontext()
    with ctx:
        proc = subprocess.run(["bash", str(script), *args], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} exited {proc.returncode}; see its messages (captured stderr)")
    return proc.stdout


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The cluster under test (see the module docstring)."""
    timeout = float(request.config.getoption("--e2e-timeout"))
    kubectl_bin = os.environ.get("KUBECTL", "kubectl")
    if shutil.which(kubectl_bin) is None:
        pytest.fail(f"kubectl not found ({kubectl_bin!r}); install it or set KUBECTL")

    external = os.environ.get("E2E_KUBECONFIG")
    if external:
        path = Path(external).expanduser()
        if not path.is_file():
            pytest.fail(f"E2E_KUBECONFIG={external} is not a file")
        yield Cluster(kubeconfig=path, managed=False, timeout=timeout, kubectl_bin=kubectl_bin)
        return

    keep = bool(request.config.getoption("--keep-cluster"))
    try:
        # Seconds when the binaries are cached; prints one line then.
        _run_script(request.config, "build.sh", "--quiet", live=True)
        kubeconfig = Path(_run_script(request.config, "up.sh").strip().splitlines()[-1])
        _run_script(request.config, "health.sh", str(kubeconfig))
        yield Cluster(kubeconfig=kubeconfig, managed=True, timeout=timeout, kubectl_bin=kubectl_bin)
    finally:
        if not keep:
            _run_script(request.config, "down.sh")


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace ``e2e-<uuid>`` per test, deleted (without waiting) afterwards. It enforces
    PodSecurity "restricted", so the API server itself proves that every pod the operator creates meets it."""
    name = f"e2e-{uuid.uuid4().hex[:12]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
    # Pods are rejected until the ServiceAccount controller has created `default`.
    cluster.wait_for(
        lambda: cluster.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode == 0,
        f"ServiceAccount {name}/default",
    )
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
