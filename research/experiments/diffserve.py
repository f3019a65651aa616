"""E4: DiffServe's query-aware cascade (SD-Turbo → SD-v1.5) on its MAF testbed trace, 15 GPUs + sink.

Every input is DiffServe's own: batch latencies, f(t), the discriminator confidences replayed per request
(`models/dist_sdturbo.txt`, calibrated so the deferred share equals f(t)), the 5 s SLO and the
`trace_4to32qps` arrivals. `paretoserve` is DiffServe's MILP (`manifests/examples/diffserve-cascade.yaml`:
threshold, batch sizes and GPUs per model every second, EWMA demand × 1.2, Little's-law queueing delay);
`all-light` / `all-heavy` serve only SD-Turbo / SD-v1.5 (GPUs still planned); `static-cascade` keeps the
threshold the MILP picks for the mean load (GPUs still planned); `proteus-style` mixes the two models
blindly (accuracy scaling without a discriminator). Quality is −FID from DiffServe's offline
FID-vs-light-share curve (derived, as in the artifact).
"""

from __future__ import annotations

import numpy as np

from paretoserve.planner import baselines
from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.sim import controllers as ctl
from paretoserve.planner.sim.workload import Workload, counts_per_second, replay_confidences
from paretoserve.planner.solve import solve
from paretoserve.planner.spec import ServingPipeline
from paretoserve.research.experiments import data
from paretoserve.research.experiments.common import cap_for, sim_config
from paretoserve.research.experiments.harness import Claim, Metrics, Scenario, Setup, System

TRACE = "trace_4to32qps"
QUICK_SECONDS = 120


def workload(start: float, end: float | None) -> Workload:
    times = data.maf_trace(TRACE)
    times = times - times[0]
    stop = end if end is not None else float(np.ceil(times[-1]))
    arrivals = times[(times >= start) & (times < stop)] - start
    duration = stop - start
    counts = counts_per_second(arrivals, duration)
    confidence = replay_confidences(len(arrivals), data.confidences("sdturbo"))
    # the system ran at the trace's initial rate before t = 0: 20 s of history for the EWMA
    prelude = np.full(20, float(counts[:20].mean()) if len(counts) else 0.0)
    return Workload(arrivals, float(duration), confidence=confidence, prelude_counts=prelude)


def setup(quick: bool, window: tuple[int, int] | None) -> Setup:
    pipeline = data.example("diffserve-cascade")
    start, end = (float(window[0]), float(window[1])) if window else (0.0, QUICK_SECONDS if quick else None)
    scenario = Scenario(TRACE, workload(start, end))
    counts = counts_per_second(scenario.workload.arrivals_s, scenario.workload.duration_s)
    config = sim_config(pipeline.spec.slo.latency_ms, queue_delay_factor=1.0)
    stage = pipeline.spec.stages[0].name
    top = float(counts.max())
    light = baselines.pin_variants(pipeline, {stage: ["sdturbo"]})
    heavy = baselines.pin_variants(pipeline, {stage: ["sdv15"]})
    mix = baselines.without_cascade(pipeline, mix=True)
    mean = float(counts.mean()) * (1 + pipeline.spec.adaptation.predictor.headroom)
    threshold = solve(compile_problem(pipeline, Observation(load_rps=mean))).stages[0].threshold or 0.0
    fixed = baselines.fix_threshold(pipeline, threshold)

    def loop(name: str, p: ServingPipeline) -> ctl.ControllerFactory:
        return ctl.loop(name, p, cap_rps=cap_for([p], top))

    systems = [
        System("paretoserve", pipeline, loop("paretoserve", pipeline), config,
               note="DiffServe's MILP (threshold, batch, GPUs per model), every 1 s"),
        System("all-light", pipeline, loop("all-light", light), config, note="SD-Turbo only"),
        System("all-heavy", pipeline, loop("all-heavy", heavy), config,
               note="SD-v1.5 only (sized for at most what 15 GPUs carry)"),
        System("static-cascade", pipeline, loop("static-cascade", fixed), config,
               note=f"threshold fixed at {threshold:g} (the MILP's choice at the trace's mean load); batch sizes "
                    "and GPUs still planned every second"),
        System("proteus-style", pipeline, loop("proteus-style", mix), config,
               note="query-agnostic mix of the two models (accuracy scaling without a discriminator); its "
                    "quality is the traffic-weighted mean of the two models' FIDs"),
    ]
    notes = [
        "Batch latencies, f(t), confidences and the trace are DiffServe's; FID per operating point is derived "
        "from its offline FID-vs-light-share curve (the artifact does the same), so quality = −FID.",
        "Confidences replayed in order from models/dist_sdturbo.txt; the deferral cut is the f(t)-quantile of "
        "the replayed scores, so the deferred share matches f(t).",
        "16 workers = 15 GPUs for the models + 1 reserved for the sink (the manifest's budget).",
    ]
    return Setup(
        experiment="diffserve", title="E4: DiffServe cascade on the MAF testbed trace (simulated)", cost_unit="gpus",
        scenarios=[scenario], systems=systems, notes=notes, accuracy_label="quality (−FID)", claims=claims,
        extra=lambda system, result: {"fid": round(-float(result.accuracy[result.status == 1].mean()), 4)
                                      if (result.status == 1).any() else None,
                                      "slo_violations": round(1.0 - float(result.met_slo().mean()), 6)},
        config={"trace": TRACE, "window": [start, scenario.workload.duration_s + start], "slo_ms": 5000,
                "peak_qps": float(counts.max())},
    )


def claims(systems: dict[str, Metrics]) -> list[Claim]:
    ours = systems["paretoserve"]
    out = []
    light = systems["all-light"]
    gain = (light["fid"] - ours["fid"]) / light["fid"]
    out.append(Claim("response quality up (FID down) vs all-light", "up to +24 %",
                     f"FID {ours['fid']:.2f} vs {light['fid']:.2f} ({gain:+.1%})", gain > 0))
    for name in ("all-heavy", "static-cascade", "proteus-style"):
        other = systems[name]
        change = (ours["slo_violations"] / other["slo_violations"] - 1) if other["slo_violations"] > 0 else 0.0
        out.append(Claim(
            f"fewer SLO violations than {name}", "19-70 % lower",
            f"{ours['slo_violations']:.2%} vs {other['slo_violations']:.2%} ({change:+.0%}); FID "
            f"{ours['fid']:.2f} vs {other['fid']:.2f}",
            ours["slo_violations"] < other["slo_violations"]))
    return out
