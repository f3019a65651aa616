"""kubectl-based helpers for the ParetoServe e2e suite (imported by conftest.py and the tests).

A separate module (not conftest.py) so tests can import it; the name is unique enough not to
clash with other directories' conftest/helpers modules on sys.path.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

# Taint carried by the fake nodes in manifests/kwok/gpu-nodes.yaml.
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}

T = TypeVar("T")


class KubectlError(RuntimeError):
    """A kubectl command exited non-zero; carries the command and its stderr."""

    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {returncode}: {stderr.strip() or stdout.strip()}")
        self.args_ = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


@dataclass(frozen=True)
class Cluster:
    """Handle on the cluster under test."""

    kubeconfig: Path
    #: True when this session started the cluster (and will tear it down unless --keep-cluster).
    managed: bool
    #: Default timeout (seconds) for :meth:`wait_for`.
    timeout: float = 90.0
    kubectl_bin: str = "kubectl"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl --kubeconfig <ours> ARGS``; raise :class:`KubectlError` if ``check``."""
        cmd = [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(list(args), proc.returncode, proc.stdout, proc.stderr)
        return proc

    def get_json(self, *args: str) -> Any:
        """``kubectl get ARGS -o json`` parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]], namespace: str | None = None) -> None:
        """``kubectl apply`` a manifest given as a dict (or a list of dicts)."""
        items = manifest if isinstance(manifest, list) else [manifest]
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input=body)

    def resize(self, namespace: str, pod: str, patch: dict[str, Any]) -> Any:
        """Strategic-merge ``patch`` through the pod's ``resize`` subresource; return the new pod."""
        out = self.kubectl(
            "-n", namespace, "patch", "pod", pod, "--subresource", "resize",
            "--patch", json.dumps(patch), "-o", "json",
        )  # fmt: skip
        return json.loads(out.stdout)

    def wait_for(
        self,
        probe: Callable[[], T | None],
        description: str,
        timeout: float | None = None,
        interval: float = 0.5,
    ) -> T:
        """Poll ``probe`` until it returns a truthy value and return that value.

        Fails the test with ``description`` and the last observed value (or exception) on timeout.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        last: Any = None
        while True:
            try:
                value = probe()
            except (KubectlError, subprocess.TimeoutExpired) as exc:
                value, last = None, exc
            else:
                last = value
            if value:
                return value
            if time.monotonic() >= deadline:
                pytest.fail(f"timed out waiting for {description}; last observed: {last!r}")
            time.sleep(interval)
