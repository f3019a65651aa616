"""A CPU quota for a local Triton server: the same CFS quota a Kubernetes pod's CPU limit sets.

On Kubernetes a worker pod gets a fractional CPU (``500m``) as a CFS quota on its container's cgroup, and
an in-place resize changes that quota while the server runs. To profile variants at the CPU a pod will
really have, `paretoserve profile --cpu-quotas 0.25,0.5,1` starts Triton inside a cgroup of its own and
changes the quota between measurements, exactly what the kubelet does. cgroup v1 (``cpu`` controller at
``/sys/fs/cgroup/cpu``) and v2 (``cpu.max``) are supported; creating a cgroup needs root (or a delegated
subtree). The group is removed when the block exits (after the server has stopped).

`paretoserve up` runs its Triton in such a group too, with the applied plan's cores as the quota (the local
form of a pod's CPU limit and of an in-place resize), but with a 10 ms period (`LOCAL_PERIOD_US`): one
Triton carries every variant of the pipeline at a fraction of a core, and a 100 ms period would stall it for
up to 100 ms × (1 − quota), longer than a tight SLO. Profiles for `up` are measured at that period
(``paretoserve profile --cpu-period-ms 10``); pods keep the kubelet's 100 ms.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000
"""The kubelet's CFS period (100 ms): a quota of ``cores × period`` microseconds per period."""
LOCAL_PERIOD_US = 10_000
"""The period `paretoserve up` enforces its plan's cores with (see the module notes)."""


class CpuQuotaUnavailable(RuntimeError):
    """No writable cgroup CPU controller here (not root, no delegation, or no cgroup filesystem)."""


@dataclass(frozen=True)
class CpuQuotaGroup:
    """A cgroup whose processes share ``cores`` CPUs' worth of time per period."""

    path: Path
    version: int
    period_us: int = PERIOD_US

    def set_cores(self, cores: float) -> None:
        if not cores > 0:
            raise ValueError(f"cores must be > 0, got {cores}")
        quota = max(1000, round(cores * self.period_us))  # the kernel's minimum quota is 1 ms
        if self.version == 1:
            (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (self.path / "cpu.max").write_text(f"{quota} {self.period_us}")

    def cores(self) -> float:
        """The quota in force, read back from the kernel."""
        if self.version == 1:
            quota = int((self.path / "cpu.cfs_quota_us").read_text())
            period = int((self.path / "cpu.cfs_period_us").read_text())
        else:
            raw_quota, raw_period = (self.path / "cpu.max").read_text().split()
            if raw_quota == "max":
                return float("inf")
            quota, period = int(raw_quota), int(raw_period)
        return float("inf") if quota < 0 else quota / period

    def join(self) -> None:
        """Move the calling process into the group (a ``preexec_fn``: children inherit it)."""
        (self.path / "cgroup.procs").write_text("0")

    def pids(self) -> list[int]:
        return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]


def check_period(period_us: int) -> None:
    """A CFS period the kernel takes (1 ms to 1 s), or ValueError."""
    if not 1000 <= period_us <= 1_000_000:
        raise ValueError(f"give 1 to 1000 ms, got {period_us / 1000:g} ms")


def _controller_dir() -> tuple[Path, int]:
    v1 = CGROUP_ROOT / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists() or (v1 / "tasks").exists():
        return v1, 1
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        if "cpu" not in (CGROUP_ROOT / "cgroup.controllers").read_text().split():
            raise CpuQuotaUnavailable("cgroup v2 without the cpu controller")
        return CGROUP_ROOT, 2
    raise CpuQuotaUnavailable(f"no cgroup cpu controller under {CGROUP_ROOT}")


@contextlib.contextmanager
def cpu_quota_group(cores: float, *, prefix: str = "paretoserve-profile",
                    period_us: int = PERIOD_US) -> Iterator[CpuQuotaGroup]:
    """A fresh cgroup limited to ``cores`` per ``period_us``; removed on exit once its processes are gone (waits
    up to 10 s)."""
    check_period(period_us)
    parent, version = _controller_dir()
    path = parent / f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        if version == 2:
            with contextlib.suppress(OSError):  # may already be enabled
                (parent / "cgroup.subtree_control").write_text("+cpu")
        path.mkdir()
    except OSError as error:
        raise CpuQuotaUnavailable(f"cannot create {path}: {error.strerror or error} (profiling at CPU quotas "
                                  "needs root or a delegated cgroup)") from None
    group = CpuQuotaGroup(path, version, period_us)
    try:
        group.set_cores(cores)
        yield group
    finally:
        deadline = time.monotonic() + 10.0
        while True:
            try:
                path.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    break  # a stray process still in it: leave the empty-able group rather than hang
                time.sleep(0.1)
