"""The local CPU quota is the kernel's CFS quota, as a pod's CPU limit: set, changed live, read back, removed.

Covers: a process started with the group's ``join`` runs inside it (and so do its children); changing the
quota while it runs is what the kernel reports; the group is gone after the block; bad cores are refused.
Needs root (CI runs as root), like the profiler's ``--cpu-quotas``.
"""

from __future__ import annotations

import subprocess

import pytest

from paretoserve.workers.triton.cpu_quota import cpu_quota_group


def test_a_process_runs_under_the_quota_and_the_quota_changes_live() -> None:
    with cpu_quota_group(0.25) as group:
        process = subprocess.Popen(["sh", "-c", "sleep 30 & echo started; wait"], preexec_fn=group.join,
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None and process.stdout.readline() == "started\n"  # the child runs
            assert group.cores() == pytest.approx(0.25)
            group.set_cores(1.5)  # an in-place resize, locally
            assert group.cores() == pytest.approx(1.5)
            members = group.pids()
            assert process.pid in members and len(members) == 2  # the shell and its child sleep
        finally:
            subprocess.run(["pkill", "-P", str(process.pid)], check=False)
            process.wait(timeout=10)
            process.stdout.close()
        path = group.path
    assert not path.exists()


@pytest.mark.parametrize("cores", [0.0, -1.0])
def test_a_quota_must_be_positive(cores: float) -> None:
    with cpu_quota_group(0.5) as group, pytest.raises(ValueError, match="cores must be > 0"):
        group.set_cores(cores)
