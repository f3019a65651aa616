"""E6: an agent workflow (8 agents, two levels of fan-out, a fan-in) planned for latency and scheduled by slack.

The workflow is `manifests/examples/digits-agents.yaml`: digits agents trained here (`paretoserve agents
build`) whose profiles were measured through the real Triton under CPU quotas on this machine (the file's
header says how). Four systems serve the same Twitter-trace windows in the simulator, all re-planned every
interval by the same control loop:

- ``fifo+frontier``: today's plan (maximise accuracy − cost under the SLO), FIFO queues;
- ``slack-scheduling``: the same plan, each queue served least slack first (by the request's deadline, so a
  request that its slower branch held back overtakes younger ones at the join and after it);
- ``latency-plan``: the latency goal (shortest critical path first, then accuracy − cost) with a floor on the
  aggregated accuracy: the frontier plan's accuracy at the window's mean load (comparable quality), FIFO;
- ``paretoserve``: both, the latency plan with slack scheduling (what a pipeline with ``goal: latency`` gets).

The simulator gives each stage its own pool (as each stage gets its own pods on a cluster), so within a queue
least-slack-first is earliest-deadline-first; the stage offsets of the router's slack key (the planned path
ahead) matter where calls of different stages share one queue, which `paretoserve bench agents` measures on
the real router and Triton.
"""

from __future__ import annotations

import math

from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.sim import controllers as ctl
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import Goal, ServingPipeline
from paretoserve.research.experiments import data
from paretoserve.research.experiments.common import cap_for, sim_config, twitter_workload
from paretoserve.research.experiments.harness import Claim, Metrics, Scenario, Setup, System

DAMPING = 1
WINDOWS: dict[str, list[tuple[int, int]]] = {  # the Twitter trace's seconds; IPA's bursty and steady windows
    "bursty": [(1301160, 1302360)],
    "steady-low": [(1299600, 1300800)],
}
QUICK = {"bursty": [(1301160, 1301460)]}
MATERIAL = 0.01
"""A claim of shorter latency holds only for a p99 at least this much (relative) shorter."""


def with_goal(pipeline: ServingPipeline, goal: Goal, floor: float | None) -> ServingPipeline:
    """``pipeline`` with its objective's goal and accuracy floor replaced."""
    objective = pipeline.spec.objective.model_copy(update={"goal": goal, "min_accuracy": floor})
    return pipeline.model_copy(update={"spec": pipeline.spec.model_copy(update={"objective": objective})})


def accuracy_floor(pipeline: ServingPipeline, load_rps: float) -> float:
    """The aggregated accuracy of today's plan at ``load_rps``, rounded down to 4 decimals: the latency plan's
    floor (comparable quality: at least as accurate as the plan it is compared with)."""
    plan = solve(compile_problem(pipeline, Observation(load_rps=load_rps)))
    if plan.accuracy is None:
        raise RuntimeError(f"the frontier plan is {plan.status.value} at {load_rps:g} rps: {plan.message}")
    return math.floor(plan.accuracy * 1e4) / 1e4


def setup(quick: bool, window: tuple[int, int] | None) -> Setup:
    pipeline = data.example("digits-agents")
    windows = {"window": [window]} if window else (QUICK if quick else WINDOWS)
    scenarios = [Scenario(name, twitter_workload(segments, DAMPING)) for name, segments in windows.items()]
    counts = [data.twitter_window(a, b, DAMPING) for s in windows.values() for a, b in s]
    peak = max(float(c.max()) for c in counts)
    mean = sum(float(c.sum()) for c in counts) / sum(len(c) for c in counts)
    floor = accuracy_floor(pipeline, mean)
    fastest = with_goal(pipeline, Goal.LATENCY, floor)
    fifo = sim_config(pipeline.spec.slo.latency_ms)
    slack = sim_config(pipeline.spec.slo.latency_ms, edf=True)

    def loop(name: str, p: ServingPipeline) -> ctl.ControllerFactory:
        return ctl.loop(name, p, cap_rps=cap_for([p], peak))

    systems = [
        System("fifo+frontier", pipeline, loop("fifo+frontier", pipeline), fifo,
               note="maximise accuracy - cost under the SLO; FIFO queues"),
        System("slack-scheduling", pipeline, loop("slack-scheduling", pipeline), slack,
               note="the same plan; every queue least slack first"),
        System("latency-plan", pipeline, loop("latency-plan", fastest), fifo,
               note=f"shortest critical path first, accuracy >= {floor:g} (the frontier plan's at the mean "
                    f"load, {mean:.0f} rps); FIFO queues"),
        System("paretoserve", pipeline, loop("paretoserve", fastest), slack,
               note="the latency plan, least slack first"),
    ]
    notes = [
        "Profiles MEASURED through the real Triton (CPU, CFS quotas of 0.25/0.5/1 core at a 10 ms period) on a "
        "shared 2-core machine; accuracies held out on the digits test split (see the manifest's header).",
        f"Twitter trace damped by {DAMPING} (floored); arrivals spread uniformly within each second.",
        "Accuracy is the mean of the 8 agents' held-out accuracies (accuracyAggregation: sum), what the planner "
        "sees; the workflow's end-to-end accuracy for a variant choice is measured by `paretoserve agents build`.",
        "Each stage has its own pool in the simulator, so least slack first equals earliest deadline first in each "
        "queue; the router's stage offsets act where stages share a queue (`paretoserve bench agents`).",
    ]
    return Setup(
        experiment="agents", title="E6: an 8-agent workflow, latency plan and slack scheduling (simulated)",
        cost_unit="cores", scenarios=scenarios, systems=systems, notes=notes,
        accuracy_label="accuracy (mean of agents)", claims=claims,
        config={"damping": DAMPING, "windows": {k: [list(s) for s in v] for k, v in windows.items()},
                "peak_rps": peak, "mean_rps": round(mean, 3), "accuracy_floor": floor,
                "slo_ms": pipeline.spec.slo.latency_ms},
    )


def claims(systems: dict[str, Metrics]) -> list[Claim]:
    base = systems["fifo+frontier"]
    out = []
    for name, what in (("latency-plan", "the latency plan"), ("slack-scheduling", "slack scheduling"),
                       ("paretoserve", "both together (ParetoServe with goal: latency)")):
        other = systems[name]
        p50 = other["p50_latency_ms"] / base["p50_latency_ms"] - 1
        p99 = other["p99_latency_ms"] / base["p99_latency_ms"] - 1
        accuracy = other["accuracy"] - base["accuracy"]
        cost = other["cost"] / base["cost"] - 1 if base["cost"] else 0.0
        holds = (p99 <= -MATERIAL and accuracy >= -0.005 and other["slo_attainment"] >= base["slo_attainment"])
        out.append(Claim(
            f"{what} shortens the p99 end-to-end latency by >= {MATERIAL:.0%} vs FIFO + the frontier plan, at "
            "comparable quality and SLO",
            "shorter critical path (Kairos, LAMaS, Teola)",
            f"p50 {other['p50_latency_ms']:.2f} vs {base['p50_latency_ms']:.2f} ms ({p50:+.1%}), p99 "
            f"{other['p99_latency_ms']:.2f} vs {base['p99_latency_ms']:.2f} ms ({p99:+.1%}); accuracy "
            f"{accuracy:+.4f}; SLO {other['slo_attainment']:.2%} vs {base['slo_attainment']:.2%}; cores {cost:+.0%}",
            holds))
    return out
