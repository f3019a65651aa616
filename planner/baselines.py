"""Published baselines as constraints on the same program, never as separate planners.

IPA implements FA2 (scale only, variant pinned) and RIM (switch only, replicas pinned) as modes of its
ILP; this module does the same for every baseline the experiments compare against, so that ParetoServe
and the baselines differ only in the constraints they run under.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from paretoserve.planner.model import Baseline, Problem, Stage
from paretoserve.planner.spec import ServingPipeline, parse_pipeline


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



# -- Baselines as edits of the manifest ---------------------------------------------------------------
#
# `control.ParetoPolicy` compiles the ServingPipeline it is given, so a baseline that pins variants, replicas, cores
# or a cascade threshold for a whole run is most simply the same manifest with narrower choices: the
# program, the predictor and the policy stay the same, only the feasible set shrinks. Every edit goes
# through `parse_pipeline` again, so an edited manifest is validated like a user's.

SpecEdit = Callable[[dict[str, Any]], None]


def derive(pipeline: ServingPipeline, edit: SpecEdit) -> ServingPipeline:
    """A copy of the pipeline whose `spec` (camelCase dict) `edit` changed in place, re-validated."""
    doc = pipeline.model_dump(by_alias=True, mode="json", exclude_none=True)
    edit(doc["spec"])
    return parse_pipeline(doc)


def _stages(spec: dict[str, Any], names: Iterable[str] | None) -> list[dict[str, Any]]:
    wanted = None if names is None else set(names)
    stages: list[dict[str, Any]] = spec["stages"]
    return [s for s in stages if wanted is None or s["name"] in wanted]


def pin_variants(pipeline: ServingPipeline, pins: Mapping[str, Sequence[str]]) -> ServingPipeline:
    """Only the pinned variants remain (FA2, Clipper, all-light/all-heavy); a broken cascade is dropped."""

    def edit(spec: dict[str, Any]) -> None:
        for stage in _stages(spec, pins):
            keep = set(pins[stage["name"]])
            stage["variants"] = [v for v in stage["variants"] if v["name"] in keep]
            if not stage["variants"]:
                raise ValueError(f"stage {stage['name']}: no variant named {sorted(keep)}")
            cascade = stage.get("cascade")
            if cascade is not None and not {cascade["light"], cascade["heavy"]} <= keep:
                del stage["cascade"]
            if len(stage["variants"]) == 1:
                stage["multiVariant"] = False

    return derive(pipeline, edit)


def pin_replicas(pipeline: ServingPipeline, replicas: Mapping[str, int]) -> ServingPipeline:
    """Replica counts fixed per stage (RIM: switch-only)."""

    def edit(spec: dict[str, Any]) -> None:
        for stage in _stages(spec, replicas):
            n = replicas[stage["name"]]
            stage["bounds"] = {**stage.get("bounds", {}), "minReplicas": n, "maxReplicas": n}

    return derive(pipeline, edit)


def pin_cpu(pipeline: ServingPipeline, cpu: Mapping[str, float]) -> ServingPipeline:
    """Cores per replica fixed per stage (FA2's 1-core replicas, a static allocation)."""

    def edit(spec: dict[str, Any]) -> None:
        for stage in _stages(spec, cpu):
            c = cpu[stage["name"]]
            stage["bounds"] = {**stage.get("bounds", {}), "minCpu": c, "maxCpu": c}

    return derive(pipeline, edit)


def fix_threshold(pipeline: ServingPipeline, threshold: float, stages: Iterable[str] | None = None) -> ServingPipeline:
    """A cascade whose threshold never adapts (DiffServe's static cascade)."""

    def edit(spec: dict[str, Any]) -> None:
        for stage in _stages(spec, stages):
            if "cascade" in stage:
                stage["cascade"]["threshold"] = threshold

    return derive(pipeline, edit)


def without_cascade(pipeline: ServingPipeline, *, mix: bool, stages: Iterable[str] | None = None) -> ServingPipeline:
    """Drop the cascades; with `mix` the variants share traffic blindly (a Proteus-style accuracy mix)."""

    def edit(spec: dict[str, Any]) -> None:
        for stage in _stages(spec, stages):
            stage.pop("cascade", None)
            stage["multiVariant"] = mix and len(stage["variants"]) > 1

    return derive(pipeline, edit)


def single_variant(pipeline: ServingPipeline) -> ServingPipeline:
    """One variant per stage at a time (InfAdapter's MS+ model switching)."""

    def edit(spec: dict[str, Any]) -> None:
        for stage in spec["stages"]:
            stage["multiVariant"] = False

    return derive(pipeline, edit)


def with_adaptation(pipeline: ServingPipeline, **fields: Any) -> ServingPipeline:
    """Override `spec.adaptation` fields (camelCase), e.g. intervalSeconds=30, predictor={...}."""
    return _with_section(pipeline, "adaptation", fields)


def with_slo(pipeline: ServingPipeline, **fields: Any) -> ServingPipeline:
    """Override `spec.slo` fields (camelCase), e.g. lateRequests="refuse"."""
    return _with_section(pipeline, "slo", fields)


def _with_section(pipeline: ServingPipeline, section: str, fields: dict[str, Any]) -> ServingPipeline:
    def edit(spec: dict[str, Any]) -> None:
        spec[section] = {**spec.get(section, {}), **fields}

    return derive(pipeline, edit)

