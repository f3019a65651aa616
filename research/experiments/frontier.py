"""Judging a run on all three axes at once: SLO attainment, accuracy and cost.

A paper's claim ("accuracy up at minimal cost", "fewer violations at lower cost") says nothing about the
requests that missed the SLO, so a claim row could read "reproduced" next to 6 % violations. Every claim
is therefore checked together with ParetoServe's SLO attainment (`with_slo`), and two claims are added to
every experiment that has a `paretoserve` row (`frontier_claims`): the SLO target holds, and no baseline
dominates it (at least as good on SLO attainment, accuracy and cost, and better on one).

Differences within the tolerances below count as equal: a simulator seed moves attainment by hundredths
of a percent and costs by a fraction of a percent, and "better" must mean more than that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from paretoserve.research.experiments.harness import Claim

OURS = "paretoserve"
SLO_TARGET = 0.99
SLO_TOLERANCE = 5e-4
"""Attainments closer than 0.05 percentage points count as equal."""
ACCURACY_TOLERANCE = 1e-3
COST_TOLERANCE = 0.01
"""Costs within 1 % (relative) count as equal."""


def _compare(ours: Mapping[str, Any], other: Mapping[str, Any]) -> tuple[bool, bool]:
    """(other is at least as good on every axis, other is better on one), within the tolerances."""
    slo = other["slo_attainment"] - ours["slo_attainment"]
    acc = other["accuracy"] - ours["accuracy"]
    scale = max(abs(ours["cost"]), 1e-9)
    cost = (ours["cost"] - other["cost"]) / scale  # positive: other is cheaper
    as_good = slo >= -SLO_TOLERANCE and acc >= -ACCURACY_TOLERANCE and cost >= -COST_TOLERANCE
    better = slo > SLO_TOLERANCE or acc > ACCURACY_TOLERANCE or cost > COST_TOLERANCE
    return as_good, better


def dominating(systems: Mapping[str, Mapping[str, Any]], ours: str = OURS) -> list[str]:
    """The systems that dominate `ours` on (SLO attainment, accuracy, cost)."""
    mine = systems[ours]
    if mine.get("accuracy") is None:
        return []
    out = []
    for name, other in systems.items():
        if name == ours or other.get("accuracy") is None:
            continue
        as_good, better = _compare(mine, other)
        if as_good and better:
            out.append(name)
    return out


def describe(metrics: Mapping[str, Any]) -> str:
    return (f"SLO {metrics['slo_attainment']:.2%}, accuracy {metrics['accuracy']:.4f}, "
            f"cost {metrics['cost']:.2f} {metrics.get('cost_unit', '')}").rstrip()


def frontier_claims(systems: Mapping[str, Mapping[str, Any]]) -> list[Claim]:
    if OURS not in systems or systems[OURS].get("accuracy") is None:
        return []
    mine = systems[OURS]
    over = dominating(systems)
    attained = mine["slo_attainment"] >= SLO_TARGET
    return [
        Claim(f"ParetoServe keeps the SLO for >= {SLO_TARGET:.0%} of requests", "(project goal)",
              f"{mine['slo_attainment']:.2%}", attained),
        Claim("no baseline dominates ParetoServe on SLO attainment, accuracy and cost", "(project goal)",
              describe(mine) + ("; dominated by " + ", ".join(
                  f"{n} ({describe(systems[n])})" for n in over) if over else "; not dominated"), not over),
    ]


def with_slo(claims: list[Claim], systems: Mapping[str, Mapping[str, Any]]) -> list[Claim]:
    """A paper's claim holds only if ParetoServe also keeps the SLO target; the row says when it does not."""
    if OURS not in systems:
        return claims
    attainment = systems[OURS]["slo_attainment"]
    if attainment >= SLO_TARGET:
        return claims
    return [Claim(c.claim, c.paper, f"{c.ours}; but ParetoServe's SLO attainment is {attainment:.2%} "
                  f"(< {SLO_TARGET:.0%})", False if c.reproduced else c.reproduced) for c in claims]
