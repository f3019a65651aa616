"""Unit tests are pure: no network, no cluster. An autouse fixture makes any attempt an immediate failure.

Every socket connection (loopback included) and every name lookup raises `UnitTestIsolationError`, and the
Kubernetes client finds no kubeconfig and no in-cluster service account, so a test that would quietly reach a
developer's cluster or a server left running fails instead. Tests that need a real server (Triton, the
router over HTTP, Prometheus) belong in tests/integration or e2e/; HTTP edges are unit-tested through
`httpx.MockTransport` or Starlette's in-process test client.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


class UnitTestIsolationError(RuntimeError):
    """A unit test tried to reach the network or a cluster."""


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise UnitTestIsolationError(f"unit tests must not open network connections (attempted: {args[1:]!r})")


@pytest.fixture(autouse=True)
def _no_network_and_no_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.kube/config too
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    yield


def test_the_isolation_fixture_refuses_connections_and_kubeconfigs() -> None:
    with pytest.raises(UnitTestIsolationError):
        socket.create_connection(("127.0.0.1", 9))
    with socket.socket() as sock, pytest.raises(UnitTestIsolationError):
        sock.connect(("127.0.0.1", 9))
    from kubernetes import config

    with pytest.raises(config.ConfigException):
        config.load_kube_config()
