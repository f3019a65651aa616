"""A constant-load metrics source and a recording actuator for control-loop tests (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

from paretoserve.planner.control import Observed
from paretoserve.planner.model import Plan


@dataclass
class FakeSource:
    load: float
    samples: int = 30

    def observe(self, now: float) -> Observed:
        return Observed(load_history=(self.load,) * self.samples)


@dataclass
class FakeActuator:
    plan: Plan | None = None
    applied_at: list[float] = field(default_factory=list)

    def applied(self) -> Plan | None:
        return self.plan

    held: list[float] = field(default_factory=list)

    def apply(self, plan: Plan, *, now: float) -> None:
        self.plan = plan
        self.applied_at.append(now)

    def hold(self, plan: Plan | None, *, now: float) -> None:
        self.held.append(now)
