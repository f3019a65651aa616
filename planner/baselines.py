"""Published baselines as constraints on the same program, never as separate planners.

IPA implements FA2 (scale only, variant pinned) and RIM (switch only, replicas pinned) as modes of its
ILP; this module does the same for every baseline the experiments compare against, so that ParetoServe
and the baselines differ only in the constraints they run under.
"""

from __future__ import annotations

from dataclasses import replace

from paretoserve.planner.model import Baseline, Problem, Stage


def _most_accurate(stage: Stage) -> tuple[str, ...]:
    best = max(o.accuracy for o in stage.options)
    return tuple(sorted({o.variant for o in stage.options if o.accuracy == best}))


def apply_baseline(problem: Problem) -> Problem:
    """Return the problem with the baseline's pins and weights applied (NONE: unchanged)."""
    if problem.baseline is Baseline.MAX_ACCURACY:
        stages = []
        for s in problem.stages:
            if s.cascade is not None:
                top = max(r.quality for r in s.cascade.rows)
                rows = tuple(r for r in s.cascade.rows if r.quality == top)
                stages.append(replace(s, cascade=replace(s.cascade, rows=rows)))
            elif s.options:
                stages.append(replace(s, pinned_variants=_most_accurate(s), multi_variant=False))
            else:
                stages.append(s)
        return replace(problem, stages=tuple(stages))
    if problem.baseline is Baseline.MIN_COST:
        weights = replace(problem.objective, accuracy=0.0, cost=1.0, batch=0.0, reconfiguration=0.0)
        return replace(problem, objective=weights)
    return problem

