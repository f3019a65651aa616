"""`paretoserve up`, `load` and `profile` against the real Triton and the real router (no mocks).

- `up --replay` on a one-variant pipeline whose profile says one Triton instance carries 8 requests/s: the
  replay offers 12/s, so the control loop must move from one instance to two *under load*; every request
  must succeed, and the run must leave no process behind.
- `up` without a replay serves until SIGTERM, then stops Triton and the router; `load` drives it meanwhile;
  the router's admin API is on its own loopback listener behind a token only `up` knows (a 0600 file in
  the work directory), and the data port serves no admin endpoint.
- `profile --write-pipeline` measures real points and writes a manifest that parses.

The profile of the first pipeline is synthetic on purpose (the digits models serve hundreds of images per
second per instance, far more than a test should send); the example manifest carries measured profiles.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from paretoserve.planner.spec import load_pipeline_text
from paretoserve.workers.models import ModelCatalog
from paretoserve.workers.runtime.local import default_state_dir
from paretoserve.workers.runtime.report import format_summary

pytestmark = [pytest.mark.triton, pytest.mark.slow]

STARTUP_GUARD_S = 240  # bounds a hang; not a performance assertion


INSTANCE_RPS = 4.0
"""What the test pipeline says one Triton instance carries: the replay offers 12 rps, so the loop must plan
more than one instance as soon as it observes a third of that load, however busy the machine is."""


def pipeline_doc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "paretoserve.io/v1alpha1", "kind": "ServingPipeline", "metadata": {"name": name},
        "spec": {
            "slo": {"latencyMs": 2000, "percentile": 99},
            "objective": {"accuracy": 1.0, "cost": 0.01},
            "adaptation": {"intervalSeconds": 1, "scaleDownStabilization": 30, "solverTimeLimitSeconds": 1,
                           "predictor": {"kind": "movingMax", "windowSeconds": 5, "headroom": 0.0}},
            "stages": [{
                "name": "classify", "batchSizes": [1],
                "bounds": {"minReplicas": 1, "maxReplicas": 8},
                "variants": [{"name": "tiny", "tritonModel": "tiny_linear", "accuracy": 0.8756,
                              "profile": {"points": [{"batch": 1, "cpu": 1, "latencyMs": 5,
                                                      "throughputRps": INSTANCE_RPS}]}}],
            }],
        },
    }


def write_trace(path: Path, per_second: list[int]) -> Path:
    data = " ".join(map(str, per_second)).encode()
    with tarfile.open(path, "w:bz2") as archive:
        info = tarfile.TarInfo("workload.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (e.g. the test's work directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def triton_quota_cores(pid: int) -> float:
    """The CFS quota of the cgroup ``pid`` runs in, in cores (cgroup v1 ``cpu`` or v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            group = Path("/sys/fs/cgroup/cpu") / path.lstrip("/")
            return int((group / "cpu.cfs_quota_us").read_text()) / int((group / "cpu.cfs_period_us").read_text())
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            quota, period = (Path("/sys/fs/cgroup") / path.lstrip("/") / "cpu.max").read_text().split()
            return float("inf") if quota == "max" else int(quota) / int(period)
    raise AssertionError(f"no cpu cgroup for pid {pid}")


def paretoserve(*args: str) -> list[str]:
    return [sys.executable, "-m", "paretoserve", *args]


def test_up_replay_scales_under_load_without_failures(tmp_path: Path, catalog: ModelCatalog) -> None:
    manifest = tmp_path / "scale.yaml"
    manifest.write_text(yaml.safe_dump(pipeline_doc("scale-test")))
    trace = write_trace(tmp_path / "trace.tbz2", [0, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12])
    out, work = tmp_path / "out", tmp_path / "work"
    result = subprocess.run(
        paretoserve("up", str(manifest), "--port", str(free_port()), "--work-dir", str(work),
                    "--replay", str(trace), "--window", "1:16", "--scale", "1", "--out", str(out), "--json",
                    "--no-progress"),
        capture_output=True, text=True, timeout=STARTUP_GUARD_S + 60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["requests"]["sent"] == 180
    assert summary["requests"]["failed"] == 0, summary["requests"]
    assert summary["accuracy"] is not None and summary["accuracy"] > 0.8
    applied = [json.loads(line) for line in (out / "applied.jsonl").read_text().splitlines()]
    assert applied[0]["instances"] == {"tiny_linear": 1}  # the first plan, at load 0
    # The loop's reaction, given what it observed (deterministic however busy the machine is): the first step
    # that predicted more than one instance carries applied a plan, and that plan runs more instances.
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    over = [s for s in steps if s["predicted_rps"] > INSTANCE_RPS + 1e-6]
    assert over, f"the loop never saw more than {INSTANCE_RPS} rps of the 12 offered: {steps}"
    assert over[0]["applied"], over[0]
    assert any(e["instances"]["tiny_linear"] >= 2 and e["error"] is None for e in applied), applied
    assert summary["reconfigurations"]["tritonInstanceUpdates"] >= 1
    assert summary["cost"]["coreSeconds"] > 0
    # what changed, when and why: the scale-out is listed with the loop's reason and the load it planned for
    growth = [c for c in summary["changes"] if any(t.startswith("tiny_linear instances 1 -> ") for t in c["changed"])]
    assert growth and growth[0]["why"] and growth[0]["plannedForRps"] > INSTANCE_RPS, summary["changes"]
    assert "what changed, when and why:" in format_summary(summary)
    if os.geteuid() == 0:  # root: Triton ran under a CPU quota that followed the plan's cores
        assert summary["coresEnforced"] is True
        assert all(e["cpuQuota"] == e["cores"] for e in applied if e["error"] is None), applied
    assert {Path(p).name for p in summary["plots"]} == {"load.png", "latency.png", "config.png"}
    assert processes_mentioning(str(tmp_path)) == []


def test_up_serves_until_sigterm_and_load_drives_it(tmp_path: Path, catalog: ModelCatalog) -> None:
    manifest = tmp_path / "serve.yaml"
    manifest.write_text(yaml.safe_dump(pipeline_doc("serve-test")))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(paretoserve("up", str(manifest), "--port", str(port), "--work-dir", str(tmp_path / "w")),
                          stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_GUARD_S
        state = default_state_dir(port) / "runtime.json"
        while not state.exists():
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "up did not become ready"
            time.sleep(0.2)
        info = json.loads(state.read_text())
        assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
        admin = info["routerAdminUrl"]
        assert admin.startswith("http://127.0.0.1:") and admin != url
        assert httpx.get(f"{url}/admin/config", timeout=5).status_code == 404
        assert httpx.get(f"{url}/metrics", timeout=5).status_code == 404
        assert httpx.get(f"{admin}/admin/config", timeout=5).status_code == 401
        token_file = tmp_path / "w" / "router-admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert token not in state.read_text()
        config = httpx.get(f"{admin}/admin/config", headers={"authorization": f"Bearer {token}"}, timeout=5)
        assert config.status_code == 200 and config.json()["pipeline"] == "serve-test"
        assert "paretoserve_pipeline_requests_total" in httpx.get(info["routerMetricsUrl"], timeout=5).text
        if os.geteuid() == 0:  # root: the kernel holds Triton to the plan's cores (one core: one instance)
            assert info["cpuQuotaPeriodMs"] == 10
            assert triton_quota_cores(info["tritonPid"]) == pytest.approx(1.0)
        trace = write_trace(tmp_path / "t.tbz2", [5, 5, 5])
        loaded = subprocess.run(paretoserve("load", "--trace", str(trace), "--window", "0:3", "--scale", "1",
                                            "--url", url, "--out", str(tmp_path / "load"), "--json", "--no-progress"),
                                capture_output=True, text=True, timeout=120, check=False)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        summary = json.loads(loaded.stdout)
        assert summary["pipeline"] == "serve-test" and summary["requests"]["ok"] == 15
        assert summary["cost"]["coreSeconds"] > 0  # read from the running `up`'s applied plans
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=120)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert "stopping" in (tmp_path / "up.log").read_text()
    for pid in (info["routerPid"], info["tritonPid"]):
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    assert processes_mentioning(str(tmp_path)) == []


def test_profile_writes_points_that_parse(tmp_path: Path, catalog: ModelCatalog,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from paretoserve.shell.main import main

    manifest = tmp_path / "p.yaml"
    manifest.write_text("# A test pipeline.\n" + yaml.safe_dump(pipeline_doc("profile-test")))
    profile, written = tmp_path / "profile.yaml", tmp_path / "measured.yaml"
    code = main(["profile", str(manifest), "--out", str(profile), "--write-pipeline", str(written), "--quick",
                 "--batches", "1,4", "--threads", "1", "--instances", "1", "--work-dir", str(tmp_path / "w")])
    assert code == 0, capsys.readouterr().err
    measured = yaml.safe_load(profile.read_text())["stages"]["classify"]["variants"]["tiny"]
    assert [p["batch"] for p in measured["profile"]["points"]] == [1, 4]
    assert all(m["executedBatch"] == m["batch"] for m in measured["measured"])  # no dynamic batching in profiles
    pipeline = load_pipeline_text(written.read_text())
    points = pipeline.spec.stages[0].variants[0].profile.points
    assert [(p.batch, p.cpu, p.instances) for p in points] == [(1, 1, 1), (4, 1, 1)]
    assert all(p.latency_ms > 0 and (p.throughput_rps or 0) > 0 for p in points)
    assert written.read_text().splitlines()[2] == "# A test pipeline."
    assert processes_mentioning(str(tmp_path)) == []


def test_profile_under_cpu_quotas_measures_at_the_quota(tmp_path: Path, catalog: ModelCatalog,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A pod's CPU limit is a CFS quota: profiling under one records points at that (fractional) CPU, and a
    tighter quota is measurably slower."""
    from paretoserve.shell.main import main

    manifest = tmp_path / "p.yaml"
    manifest.write_text(yaml.safe_dump(pipeline_doc("quota-test")))
    profile = tmp_path / "profile.yaml"
    code = main(["profile", str(manifest), "--out", str(profile), "--quick", "--batches", "8", "--threads", "1",
                 "--instances", "1", "--cpu-quotas", "0.1,1", "--work-dir", str(tmp_path / "w")])
    assert code == 0, capsys.readouterr().err
    document = yaml.safe_load(profile.read_text())
    points = document["stages"]["classify"]["variants"]["tiny"]["profile"]["points"]
    assert [(p["batch"], p["cpu"]) for p in points] == [(8, 0.1), (8, 1)]
    slow, fast = points
    assert slow["throughputRps"] < fast["throughputRps"]  # 0.1 core: at most ~a tenth of the time per period
    assert processes_mentioning(str(tmp_path)) == []
    assert not [p for p in Path("/sys/fs/cgroup/cpu").glob("paretoserve-profile-*")]  # the group is removed
