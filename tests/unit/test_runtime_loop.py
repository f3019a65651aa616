"""The local runtime's glue without processes: the loop runner, the run's state files, the router launcher."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from paretoserve.planner.control import Observed, pareto_loop
from paretoserve.planner.model import Plan
from paretoserve.workers.runtime.actuator import AppliedRecord, ModelSettings
from paretoserve.workers.runtime.local import (
    APPLIED_FILE,
    RUNTIME_FILE,
    STEPS_FILE,
    LocalRuntime,
    LoopRunner,
    RouterProcess,
    UpSettings,
    applied_event,
    read_state,
)
from paretoserve.workers.runtime.report import AppliedEvent, LoopStep

from .test_runtime_actuator import cascade_plan, pipeline


class Source:
    def __init__(self, history: tuple[float, ...], fail: bool = False) -> None:
        self.history = history
        self.fail = fail

    def observe(self, now: float) -> Observed:
        if self.fail:
            raise ConnectionError("metrics down")
        return Observed(load_history=self.history)


class Actuator:
    def __init__(self) -> None:
        self.plans: list[Plan] = []

    def applied(self) -> Plan | None:
        return self.plans[-1] if self.plans else None

    def apply(self, plan: Plan, *, now: float) -> None:
        self.plans.append(plan)

    def hold(self, plan: Plan | None, *, now: float) -> None:
        pass


def test_the_runner_ticks_the_one_control_loop_and_records_steps() -> None:
    actuator, steps, logs = Actuator(), [], []
    loop = pareto_loop(pipeline(), Source((5.0, 8.0)), actuator)
    runner = LoopRunner(loop, 1.0, logs.append, steps.append, observed_rate=lambda: 8.0, clock=lambda: 42.0)
    result = runner.tick()
    assert result is not None and result.decision.apply and len(actuator.plans) == 1
    assert steps == [LoopStep(42.0, result.predicted_load, 8.0, "first plan", True)]
    assert logs and logs[0].startswith("applied plan: first plan")
    assert runner.tick() is not None and len(actuator.plans) == 1  # same load: unchanged


def test_a_failed_tick_is_logged_and_the_runner_carries_on() -> None:
    logs: list[str] = []
    runner = LoopRunner(pareto_loop(pipeline(), Source((), fail=True), Actuator()), 0.01, logs.append,
                        lambda step: None)
    assert runner.tick() is None and runner.errors == 1
    assert logs == ["loop tick failed: ConnectionError: metrics down"]
    with runner:  # the thread ticks (and fails) until the block ends; it must not raise
        for _ in range(2000):  # a guard against hanging, not a timing assertion
            if runner.errors >= 3:
                break
            time.sleep(0.005)
    assert runner.errors >= 3
    assert not runner._thread.is_alive()


def test_state_files_round_trip(tmp_path: Path) -> None:
    record = AppliedRecord(7.0, cascade_plan(), {"tiny_linear": ModelSettings("tiny_linear", 2, 1)}, {},
                           [("tiny_linear", "instances", 2.1)])
    event = applied_event(record)
    assert event == AppliedEvent(7.0, 5.0, {"tiny_linear": 2}, {"classify": 0.9}, [("tiny_linear", "instances", 2.1)])
    (tmp_path / RUNTIME_FILE).write_text(json.dumps({"pipeline": "digits", "sloMs": 50}))
    (tmp_path / APPLIED_FILE).write_text(json.dumps(event.to_json()) + "\n\n")
    step = LoopStep(8.0, 12.0, 10.0, "unchanged", False)
    (tmp_path / STEPS_FILE).write_text(json.dumps(vars(step)) + "\n")
    info, events, steps = read_state(tmp_path)
    assert info["pipeline"] == "digits" and events == [event] and steps == [step]


def test_the_router_is_not_started_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        router = RouterProcess({"pipeline": "digits"}, UpSettings(port=port), tmp_path)
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{port} is already in use"), router:
            pass
    assert router.pid is None
    assert json.loads((tmp_path / "router.json").read_text()) == {"pipeline": "digits"}


def test_without_cgroup_permission_up_says_the_plans_cores_are_not_enforced(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    from paretoserve.workers.runtime import local
    from paretoserve.workers.triton.cpu_quota import CpuQuotaUnavailable

    def refused(*_: object, **__: object) -> None:
        raise CpuQuotaUnavailable("cannot create /sys/fs/cgroup/cpu/x: Permission denied")

    monkeypatch.setattr(local, "cpu_quota_group", refused)
    said: list[str] = []
    runtime = LocalRuntime(pipeline(), UpSettings(state_dir=tmp_path), log=said.append)
    assert runtime._cpu_group() is None and runtime.cpu_quota_period_ms is None
    assert said == ["planned cores are not enforced: cannot create /sys/fs/cgroup/cpu/x: Permission denied"]
    runtime = LocalRuntime(pipeline(), UpSettings(state_dir=tmp_path, cpu_quota=False), log=said.append)
    assert runtime._cpu_group() is None and len(said) == 1  # asked not to: nothing to say
