"""HADIS-style selection among alternative manifests (one per model pair), as a pure policy.

HADIS chooses per load which pair of models a hybrid cascade runs. Each alternative is a complete
ServingPipeline; `SelectingPolicy` lets ParetoServe's policy propose a plan for every alternative at the
same observation and `choose` keeps one. Switching pairs loads new models while the old pool drains, so it
is treated like a release: leaving an alternative that has no feasible plan happens at once, but moving from
a feasible alternative to a better one waits until that one has been the best for `scaleDownStabilization`
consecutive steps. Without that, at a peak near the better pair's capacity the two alternate step after
step and each switch runs two pools at once. The pending move lives in `PolicyState.pending_switch`, so it
is persisted with the rest of the policy state (the CR status on a cluster) and survives a restart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from paretoserve.planner.control import (
    Observed,
    ParetoPolicy,
    StepResult,
    decision_due,
)
from paretoserve.planner.model import Plan, SolveLimits
from paretoserve.planner.policy import PolicyState
from paretoserve.planner.predict import Forecaster
from paretoserve.planner.spec import ServingPipeline


def running_alternative(pipelines: Sequence[ServingPipeline], applied: Plan | None) -> int | None:
    """Index of the alternative whose variants the applied plan runs (the tightest match)."""
    if applied is None:
        return None
    used = {a.variant for sp in applied.stages for a in sp.allocations if a.replicas > 0}
    matches = [(len(names), i) for i, pipeline in enumerate(pipelines)
               if used and used <= (names := {v.name for st in pipeline.spec.stages for v in st.variants})]
    return min(matches)[1] if matches else None


def choose(candidates: Sequence[StepResult[PolicyState]], running: int | None, state: PolicyState,
           waits: Sequence[int]) -> tuple[int, PolicyState]:
    """(index of the candidate to follow, its state with the pending switch updated).

    `waits[i]`: consecutive steps alternative i must be the best before the running one is left for it.
    """
    feasible = [i for i, r in enumerate(candidates)
                if r.candidate.status.has_plan and r.candidate.objective is not None]
    best = max(feasible, key=lambda i: candidates[i].candidate.objective or -math.inf) if feasible else 0
    pending: tuple[int, int] | None = None
    if running is not None and running in feasible and best != running:
        pending_streak = state.pending_switch[1] if state.pending_switch and state.pending_switch[0] == best else 0
        streak = pending_streak + 1
        if streak < max(1, waits[best]):
            pending, best = (best, streak), running
    return best, replace(candidates[best].state, pending_switch=pending)


@dataclass(frozen=True)
class SelectingPolicy:
    """ParetoServe's policy on every alternative manifest, then `choose`."""

    pipelines: Sequence[ServingPipeline]
    limits: SolveLimits | None = None
    lstm: Forecaster | None = None
    clock: Callable[[], float] | None = None

    def propose(self, observed: Observed, applied: Plan | None, state: PolicyState, *, now: float,
                replan: bool = False) -> StepResult[PolicyState]:
        running = running_alternative(self.pipelines, applied)
        if running is not None and applied is not None \
                and not decision_due(self.pipelines[running], applied, state, now=now, replan=replan):
            mine = ParetoPolicy(self.pipelines[running], self.limits, self.lstm, clock=self.clock)
            between = mine.between_decisions(observed, applied, state, now=now)
            if between is not None:
                return between
        results = [ParetoPolicy(p, self.limits, self.lstm, clock=self.clock).decide_now(
            observed, applied, state, now=now, replan=replan) for p in self.pipelines]
        waits = [p.spec.adaptation.scale_down_stabilization for p in self.pipelines]
        index, new_state = choose(results, running, state, waits)
        return replace(results[index], state=new_state)
