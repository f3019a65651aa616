"""One replay, end to end: read the trace window, send it open-loop, summarise, plot.

`paretoserve load` (against a running `up`) and `paretoserve up --replay` (both in one process) do the
same thing; this module is that thing, so the two commands cannot report differently. The applied plans
come from a callable: `up` passes its live list, `load` reads what `up` recorded in its state directory.
What is sent depends on the pipeline: held-out digits to ``/v2/pipelines/{p}/infer`` (`loadgen.DigitsRequests`),
or, for a pipeline that generates tokens (`Target.generation`), streamed requests naming the pipeline: completions
of held-out arithmetic prompts (`completions.CompletionRequests`), or held-out questions about digits images to the
generate endpoint for a multimodal one (`completions.GenerateRequests`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from paretoserve.planner.bounds import REQUEST_INPUT
from paretoserve.planner.spec import ServingPipeline
from paretoserve.workers.models import load_split
from paretoserve.workers.plan_rendering import stage_models
from paretoserve.workers.runtime.completions import (
    CompletionRequests,
    draw_problems,
    generation_stage,
    multimodal_requests,
)
from paretoserve.workers.runtime.loadgen import DigitsRequests, LoadSettings, ProgressBar, Requests, run_requests
from paretoserve.workers.runtime.metrics import RouterSnapshot, parse_router_metrics
from paretoserve.workers.runtime.report import AppliedEvent, LoopStep, format_summary, summarize, write_plots
from paretoserve.workers.runtime.served import ServedSpec
from paretoserve.workers.runtime.trace import Window, arrival_offsets, describe, parse_window, read_trace, scale_window
from paretoserve.workers.triton.repository import TritonModelSpec


@dataclass(frozen=True)
class ReplayPlan:
    """A scaled window of a trace, ready to send."""

    trace: Path
    window: Window
    scale: float
    per_second: tuple[int, ...]
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        return {"file": str(self.trace), "window": f"{self.window.start}:{self.window.end}", "scale": self.scale,
                **describe(self.per_second)}


def prepare_replay(trace: Path, window: str, scale: float, *, seed: int = 0, flag: str = "--trace") -> ReplayPlan:
    """Validate the arguments and read the window (raises `TraceError` naming the argument)."""
    parsed = parse_window(window)
    per_second = scale_window(read_trace(trace, flag=flag), parsed, scale)
    return ReplayPlan(trace, parsed, scale, tuple(per_second), seed)


@dataclass(frozen=True)
class Target:
    """Where and what to send: the router URL and the pipeline's name and SLO."""

    url: str
    pipeline: str
    slo_ms: float
    percentile: int
    deadline_header: str | None = None
    metrics_url: str | None = None
    """The router's /metrics (on its admin listener); None: the summary omits the router's counters."""
    generation: Mapping[str, Any] | None = None
    """A token-generating pipeline's stage SLOs (`completions.generation_slo`): send completions, not digits."""


def _router_snapshot(target: Target) -> RouterSnapshot | None:
    """The router's counters now (None if its metrics cannot be read: the summary then omits them)."""
    if target.metrics_url is None:
        return None
    try:
        response = httpx.get(target.metrics_url, timeout=5.0)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    return parse_router_metrics(response.text, target.pipeline)


def router_delta(before: RouterSnapshot | None, after: RouterSnapshot | None) -> dict[str, Any]:
    """What the router did during the replay: rows per stage/model/route, deferrals, errors (pure)."""
    if before is None or after is None:
        return {}
    rows = {"/".join(key): int(value - before.routes.get(key, 0.0)) for key, value in sorted(after.routes.items())}
    deferred = int(after.deferrals - before.deferrals)
    # Rows answered in cascade stages, by any route (a deferred row is answered once, by the heavy model).
    cascade_stages = {stage for stage, _, route in after.routes if route in ("light", "heavy", "prerouted")}
    total = sum(v for k, v in rows.items() if k.split("/")[0] in cascade_stages)
    return {
        "rows": {k: v for k, v in rows.items() if v},
        "deferrals": deferred,
        "deferredShare": round(deferred / total, 4) if total else None,
        "errors": {k: int(v - before.errors.get(k, 0.0)) for k, v in after.errors.items()
                   if v - before.errors.get(k, 0.0)},
    }


REPLAY_INPUT_SHAPE = (8, 8)
"""What a replay sends: the held-out digits as they are (one ``LABEL`` checked per answer)."""


def replayable(pipeline: ServingPipeline, specs: Mapping[str, ServedSpec]) -> str | None:
    """Why a replay cannot check the answers of ``pipeline`` served by ``specs`` (None if it can).

    A pipeline that generates tokens gets streamed requests of held-out problems, which the router routes for a
    pipeline of one stage only. Otherwise a replay sends the held-out 8x8 digits as the request and checks
    one ``LABEL``, so every model of a stage that reads the request alone must read 8x8 images, and every model
    of a stage no other reads (the answer) must answer one task. Stages that read their parents' outputs (agent
    workflows) may read anything."""
    generating = generation_stage(pipeline)
    if generating is not None:
        if len(pipeline.spec.stages) != 1:
            return (f"stage {generating.name!r} generates tokens in a pipeline of {len(pipeline.spec.stages)} "
                    "stages; the router serves generation through a pipeline of one stage only")
        return None
    read = {parent for stage in pipeline.spec.stages for parent in stage.depends_on}
    models = stage_models(pipeline.spec)
    for stage in pipeline.spec.stages:
        reads_request = list(stage.inputs) == [REQUEST_INPUT]
        for name in models[stage.name]:
            spec = specs[name]
            if not isinstance(spec, TritonModelSpec):
                return f"model {name!r} of stage {stage.name!r} is not a classifier a replay can check"
            if reads_request and spec.input_shape != REPLAY_INPUT_SHAPE:
                return (f"model {name!r} of stage {stage.name!r} reads {list(spec.input_shape)}; a replay sends the "
                        f"{REPLAY_INPUT_SHAPE[0]}x{REPLAY_INPUT_SHAPE[1]} digits (serve it without --replay and "
                        "send requests to it)")
            if stage.name not in read and spec.tasks:
                return (f"model {name!r} of stage {stage.name!r} answers tasks {[t for t, _ in spec.tasks]}; a replay "
                        "checks one LABEL (serve it without --replay and send requests to it)")
    return None


def requests_for(target: Target, count: int, *, seed: int) -> Requests:
    """What a replay of ``count`` requests sends to ``target``: for a token-generating pipeline held-out problems
    (drawn with ``seed``), questions about digits images if its models read one, else arithmetic prompts; for any
    other the held-out digits."""
    if target.generation is not None:
        if target.generation.get("imageValues"):
            return multimodal_requests(target.pipeline, max(1, count), seed)
        return CompletionRequests(target.pipeline, draw_problems(max(1, count), seed))
    split = load_split()
    return DigitsRequests(np.ascontiguousarray(split.x_test, dtype=np.float32), split.y_test, count)


def run_and_report(target: Target, replay: ReplayPlan, *, events: Callable[[], Sequence[AppliedEvent]],
                   steps: Callable[[], Sequence[LoopStep]], out_dir: Path | None, progress: bool = True,
                   max_in_flight: int = 256, request_timeout_s: float | None = None) -> dict[str, Any]:
    """Replay, then summarise (and plot into ``out_dir`` with ``summary.json`` and ``requests.jsonl``)."""
    offsets = arrival_offsets(replay.per_second, seed=replay.seed)
    timeout = request_timeout_s or max(10.0, 20 * target.slo_ms / 1000.0)
    settings = LoadSettings(url=target.url, pipeline=target.pipeline, deadline_header=target.deadline_header,
                            deadline_ms=target.slo_ms, request_timeout_s=timeout, max_in_flight=max_in_flight)
    requests = requests_for(target, min(len(offsets), settings.max_requests), seed=replay.seed)
    bar = ProgressBar(float(len(replay.per_second))) if progress else None
    before = _router_snapshot(target)
    start = time.time()
    records = run_requests(settings, offsets, requests, progress=bar)
    end = time.time()
    applied = list(events())
    loop_steps = list(steps())
    summary = summarize(records, applied, slo_ms=target.slo_ms, percentile=target.percentile,
                        start=start, end=end, trace=replay.describe(), pipeline=target.pipeline, steps=loop_steps,
                        generation=target.generation)
    summary["router"] = router_delta(before, _router_snapshot(target))
    if out_dir is not None:
        paths = write_plots(out_dir, records, applied, loop_steps, start=start, end=end, slo_ms=target.slo_ms)
        summary["plots"] = [str(p) for p in paths]
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        with (out_dir / "requests.jsonl").open("w") as out:
            for r in records:
                out.write(json.dumps(vars(r)) + "\n")
        with (out_dir / "applied.jsonl").open("w") as out:
            for e in applied:
                out.write(json.dumps(e.to_json()) + "\n")
        with (out_dir / "steps.jsonl").open("w") as out:  # what the loop saw and decided at every step
            for step in loop_steps:
                out.write(json.dumps(vars(step)) + "\n")
    summary["text"] = format_summary(summary)
    return summary
