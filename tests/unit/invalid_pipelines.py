"""Broken ServingPipeline manifests, as data: each is a valid example plus one mutation.

Both copies of the API contract must reject every case: the CRD in ``crds/servingpipeline.yaml``
(OpenAPI schema or CEL rule, i.e. the API server) and ``paretoserve.planner.spec.parse_pipeline``.
The unit tests check the schema part with ``jsonschema`` and the parser; the e2e suite can replay the
same list against a real API server (``build()`` gives the manifest, ``server_path`` and ``rule`` say
what the server's error should name): ``from tests.unit.invalid_pipelines import INVALID_PIPELINES``.
It imports nothing from the project (only PyYAML) and finds the examples relative to its own file.

Fields of `InvalidPipeline`:
- ``id``: a stable test id.
- ``mutate``: edits a deep copy of the base example in place.
- ``path``: the field path both the parser's ``SpecError.path`` and the API server's error start with
  (``spec.stages[1]`` covers ``spec.stages[1]`` and ``spec.stages[1].cascade.light``, not ``spec.stages[10]``).
- ``layer``: who rejects it on the API server: ``schema`` (OpenAPI: types, bounds, enums, patterns,
  required, unknown fields under strict field validation), ``cel`` (an ``x-kubernetes-validations``
  rule) or ``parser`` (neither: only spec.py, i.e. the CLI and the operator, catch it).
- ``server_path``: the more precise path the API server reports (CEL ``fieldPath``); defaults to ``path``.
- ``rule``: for ``cel`` cases, the message of the CEL rule that fires.
- ``base``: the example under ``manifests/examples/`` that is mutated.

The list covers the security review's spec fuzz cases (Appendix A) that a manifest can carry, and every
bound of the contract (string patterns and lengths, list and map sizes, numeric maxima, the planner's
option-space caps, the router's cross-field rules). Cases that are not a manifest (invalid UTF-8, YAML
nested 20,000 deep, a billion laughs, NaN) are tested on the YAML loader and the CLI (test_cli.py).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"

Manifest = dict[str, Any]
Mutation = Callable[[Manifest], None]

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _steps(path: str) -> list[str | int]:
    return [int(index) if index else key for key, index in _STEP.findall(path)]


def _parent(doc: Manifest, path: str) -> tuple[Any, str | int]:
    *head, last = _steps(path)
    node: Any = doc
    for step in head:
        node = node[step]
    return node, last


def set_(path: str, value: Any) -> Mutation:
    """Set the field at ``path`` (``spec.stages[0].name``) to ``value``."""

    def mutate(doc: Manifest) -> None:
        node, last = _parent(doc, path)
        node[last] = copy.deepcopy(value)

    return mutate


def del_(path: str) -> Mutation:
    """Delete the field at ``path``."""

    def mutate(doc: Manifest) -> None:
        node, last = _parent(doc, path)
        del node[last]

    return mutate


class InvalidPipeline(NamedTuple):
    id: str
    mutate: Mutation
    path: str
    layer: str = "schema"
    server_path: str | None = None
    rule: str | None = None
    base: str = "agent-workflow.yaml"

    def build(self) -> Manifest:
        doc = load_example(self.base)
        self.mutate(doc)
        return doc

    @property
    def api_server_path(self) -> str:
        return self.server_path or self.path


def load_example(name: str) -> Manifest:
    doc: Manifest = yaml.safe_load((EXAMPLES / name).read_text())
    return doc


def path_under(actual: str, prefix: str) -> bool:
    """True if ``actual`` is ``prefix`` or a field below it."""
    return actual == prefix or (actual.startswith(prefix) and actual[len(prefix)] in ".[")


# agent-workflow.yaml: stages are router(0), retriever(1), web-search(2), code-tool(3), reranker(4),
# answer(5, a cascade llama3-8b -> llama3-70b), critic(6).
ANSWER = "spec.stages[5]"
STAGE_NAMES_UNIQUE = "stage names (stages[].name) must be unique"
DEPENDS_ON_KNOWN = "every stages[].dependsOn entry must name a stage of this pipeline"
NO_TWO_CYCLE = "stages[].dependsOn forms a cycle (two stages depend on each other)"
VARIANT_NAMES_UNIQUE = "variant names (variants[].name) must be unique within a stage"
NO_SELF_DEPENDENCY = "dependsOn must not name the stage itself"
LIGHT_IS_VARIANT = "cascade.light must name a variant of this stage"
HEAVY_IS_VARIANT = "cascade.heavy must name a variant of this stage"
CASCADE_XOR_MULTI = "a stage is either a cascade or multiVariant, not both"
LIGHT_NE_HEAVY = "cascade.light and cascade.heavy must differ"
ONE_PROFILE_KIND = "give exactly one of profile.points, profile.sponge, profile.linearCapacity, profile.tokens"
MIN_REPLICAS_LE_MAX = "bounds.minReplicas must be <= bounds.maxReplicas"
MIN_CPU_LE_MAX = "bounds.minCpu must be <= bounds.maxCpu"
PRE_ROUTED_LE_HEAVY = "rows[].preRoutedFraction must be <= rows[].heavyFraction"
DISCRIMINATOR_MODEL = "cascade.discriminatorModel is required by the discriminator and hybrid routers"
DISCRIMINATOR_MODEL_UNUSED = "cascade.discriminatorModel is used only by the discriminator and hybrid routers"
PROMPT_THRESHOLD_NEEDED = "the prompt and hybrid routers need rows[].promptThreshold on every row"
PROMPT_THRESHOLD_UNUSED = "rows[].promptThreshold is used only by the prompt and hybrid routers"
STAGE_OPTIONS = ("the stage declares more than 2048 options (profile points, batchSizes x sponge.cpus, "
                 "linearCapacity.cpus)")
PIPELINE_OPTIONS = ("the pipeline declares more than 16384 options in all (profile points, batchSizes x "
                    "sponge.cpus, linearCapacity.cpus)")
SPONGE_POSITIVE = "a sponge profile must give a positive latency at every batch size and listed core count"
LINEAR_POSITIVE = ("linearCapacity must give a positive throughput (slope x cores + intercept) at every listed "
                   "core count")
PRICE_KEYS = "prices keys must be cpu, memory or an extended-resource name like nvidia.com/gpu"
GPU_KEYS = "gpus keys must be extended-resource names like nvidia.com/gpu (not cpu or memory)"
ACCURACY_WITHOUT_TASKS = "every variant gives accuracy (taskAccuracy only in a stage with tasks)"
TASK_ACCURACY_WITH_TASKS = "in a stage with tasks every variant gives taskAccuracy for exactly its tasks (not accuracy)"
TASK_NAMES_UNIQUE = "task names (tasks[].name) must be unique within a stage"
TASK_WEIGHT_POSITIVE = "at least one task needs a weight > 0"
TASKS_NOT_CASCADE = "a multi-task stage (tasks) cannot be a cascade"
INPUTS_FROM_PARENTS = "every stage an input reads (inputs[]) must be in dependsOn"
SCORER_MODEL = "cascade.scorerModel is required by the prompt router on a stage with generation"
SCORER_MODEL_UNUSED = "cascade.scorerModel is used only by the prompt router on a stage with generation"
TOKENS_WITH_GENERATION = ("a stage with generation needs a tokens profile on every variant, and a tokens profile "
                          "needs the stage's generation")
LLM = "spec.stages[0]"
# digits-fused.yaml: one multi-task stage (digit, parity, at_least_5, loops); variants[0] runs the separate
# task models, the others are fused variants.
FUSED = "spec.stages[0]"

SPONGE = {"gamma": 1.0, "delta": 2.0, "epsilon": 3.0, "eta": 4.0, "cpus": [1, 2]}

def _sponge_stage(name: str, variants: int, cpus: int, batch_sizes: list[int]) -> dict[str, Any]:
    fit = {"gamma": 40.0, "delta": 1.0, "epsilon": 60.0, "eta": 10.0, "cpus": [1 + i / 8 for i in range(cpus)]}
    return {"name": name, "batchSizes": batch_sizes,
            "variants": [{"name": f"v{i}", "tritonModel": f"m{i}", "accuracy": 0.9, "profile": {"sponge": fit}}
                         for i in range(variants)]}


def _prompt_router_with_scorer(stage: str) -> Mutation:
    """Make the cascade of ``stage`` (a stage without generation) a prompt router that names a scorer model."""

    def mutate(doc: Manifest) -> None:
        node, last = _parent(doc, stage)
        cascade = node[last]["cascade"]
        cascade.update({"router": "prompt", "scorerModel": "scorer"})
        for row in cascade["rows"]:
            row["promptThreshold"] = row["threshold"]

    return mutate


def _stages(*stages: dict[str, Any]) -> Mutation:
    """Replace the pipeline's stages (a fresh pipeline of independent stages)."""

    def mutate(doc: Manifest) -> None:
        doc["spec"]["stages"] = [copy.deepcopy(s) for s in stages]

    return mutate


def _points_variants(stage: str, variants: int, points: int) -> Mutation:
    """Give the stage ``variants`` variants of ``points`` profile points each."""

    def mutate(doc: Manifest) -> None:
        node, last = _parent(doc, stage)
        table = [{"batch": 1, "cpu": 1 + i / 4, "latencyMs": 100.0 / (1 + i / 4)} for i in range(points)]
        node[last]["variants"] = [{"name": f"x{i}", "tritonModel": f"x{i}", "accuracy": 0.9,
                                   "profile": {"points": table}} for i in range(variants)]

    return mutate


def _many(path: str, count: int) -> Mutation:
    """Replace the list at ``path`` by ``count`` renamed copies of its first element (no dependsOn in it)."""

    def mutate(doc: Manifest) -> None:
        node, last = _parent(doc, path)
        first = node[last][0]
        node[last] = [{**copy.deepcopy(first), "name": f"x{i}"} for i in range(count)]

    return mutate


INVALID_PIPELINES: list[InvalidPipeline] = [
    # --- required fields, types, bounds, enums, patterns: the OpenAPI schema ---------------------
    InvalidPipeline("missing-slo", del_("spec.slo"), "spec.slo"),
    InvalidPipeline("missing-stages", del_("spec.stages"), "spec.stages"),
    InvalidPipeline("missing-variant-profile", del_("spec.stages[0].variants[0].profile"),
                    "spec.stages[0].variants[0].profile"),
    InvalidPipeline("negative-latency", set_("spec.slo.latencyMs", -5), "spec.slo.latencyMs"),
    InvalidPipeline("zero-latency", set_("spec.slo.latencyMs", 0), "spec.slo.latencyMs"),
    InvalidPipeline("bad-percentile", set_("spec.slo.percentile", 97), "spec.slo.percentile"),
    InvalidPipeline("late-requests-drop", set_("spec.slo.lateRequests", "drop"), "spec.slo.lateRequests"),
    InvalidPipeline("safety-fraction-one", set_("spec.slo.dynamic", {"safetyFraction": 1.0}),
                    "spec.slo.dynamic.safetyFraction"),
    InvalidPipeline("bad-aggregation-enum", set_("spec.objective.accuracyAggregation", "mean"),
                    "spec.objective.accuracyAggregation"),
    InvalidPipeline("negative-price", set_("spec.objective.prices.cpu", -1.0), "spec.objective.prices.cpu"),
    InvalidPipeline("negative-budget-gpus", set_("spec.budget.gpus", {"nvidia.com/gpu": -2}),
                    "spec.budget.gpus.nvidia.com/gpu"),
    InvalidPipeline("linear-capacity-intercept-not-a-number",
                    set_("spec.stages[1].variants[0].profile",
                         {"linearCapacity": {"slope": 9.5, "intercept": "ten", "latencyMs": 300, "cpus": [1, 2]}}),
                    "spec.stages[1].variants[0].profile.linearCapacity.intercept"),
    InvalidPipeline("interval-below-one-second", set_("spec.adaptation.intervalSeconds", 0.5),
                    "spec.adaptation.intervalSeconds"),
    InvalidPipeline("zero-target-utilization", set_("spec.adaptation.targetUtilization", 0),
                    "spec.adaptation.targetUtilization"),
    InvalidPipeline("bad-predictor-kind", set_("spec.adaptation.predictor.kind", "arima"),
                    "spec.adaptation.predictor.kind"),
    InvalidPipeline("empty-stages", set_("spec.stages", []), "spec.stages"),
    InvalidPipeline("empty-variants", set_("spec.stages[1].variants", []), "spec.stages[1].variants"),
    InvalidPipeline("bad-stage-name", set_("spec.stages[0].name", "Router_1"), "spec.stages[0].name"),
    InvalidPipeline("bad-variant-name", set_("spec.stages[0].variants[0].name", "llama3.1b"),
                    "spec.stages[0].variants[0].name"),
    InvalidPipeline("bad-depends-on-name", set_("spec.stages[1].dependsOn", ["Router"]),
                    "spec.stages[1].dependsOn[0]"),
    InvalidPipeline("bad-metadata-name", set_("metadata.name", "Agent_Workflow"), "metadata.name"),
    InvalidPipeline("input-from-a-non-parent", set_("spec.stages[1].inputs", ["$request", "reranker"]),
                    "spec.stages[1]", "cel", "spec.stages[1].inputs", INPUTS_FROM_PARENTS),
    InvalidPipeline("input-output-of-a-non-parent", set_("spec.stages[4].inputs", ["router.PROBS"]),
                    "spec.stages[4]", "cel", "spec.stages[4].inputs", INPUTS_FROM_PARENTS),
    InvalidPipeline("source-reads-a-stage", set_("spec.stages[0].inputs", ["critic"]),
                    "spec.stages[0]", "cel", "spec.stages[0].inputs", INPUTS_FROM_PARENTS),
    InvalidPipeline("bad-input-reference", set_("spec.stages[1].inputs", ["router..PROBS"]),
                    "spec.stages[1].inputs[0]"),
    InvalidPipeline("input-not-request", set_("spec.stages[1].inputs", ["$input"]), "spec.stages[1].inputs[0]"),
    InvalidPipeline("no-inputs", set_("spec.stages[1].inputs", []), "spec.stages[1].inputs"),
    InvalidPipeline("tokens-profile-without-generation", del_(f"{LLM}.generation"), LLM, "cel",
                    f"{LLM}.variants", TOKENS_WITH_GENERATION, base="arith-llm.yaml"),
    InvalidPipeline("generation-with-a-points-profile",
                    set_(f"{LLM}.variants[1].profile", {"points": [{"batch": 1, "latencyMs": 3}]}), LLM, "cel",
                    f"{LLM}.variants", TOKENS_WITH_GENERATION, base="arith-llm.yaml"),
    InvalidPipeline("tokens-and-points", set_(f"{LLM}.variants[0].profile.points", [{"batch": 1, "latencyMs": 3}]),
                    f"{LLM}.variants[0].profile", "cel", rule=ONE_PROFILE_KIND, base="arith-llm.yaml"),
    InvalidPipeline("negative-prefill-slope", set_(f"{LLM}.variants[0].profile.tokens.prefill.slopeMs", -0.1),
                    f"{LLM}.variants[0].profile.tokens.prefill.slopeMs", base="arith-llm.yaml"),
    InvalidPipeline("kv-bytes-per-token-zero", set_(f"{LLM}.variants[0].profile.tokens.kvBytesPerToken", 0),
                    f"{LLM}.variants[0].profile.tokens.kvBytesPerToken", base="arith-llm.yaml"),
    InvalidPipeline("no-output-tokens", set_(f"{LLM}.generation.outputTokens", 0), f"{LLM}.generation.outputTokens",
                    base="arith-llm.yaml"),
    InvalidPipeline("itl-slo-zero", set_(f"{LLM}.generation.itlMs", 0), f"{LLM}.generation.itlMs",
                    base="arith-llm.yaml"),
    InvalidPipeline("unknown-goal", set_("spec.objective.goal", "throughput"), "spec.objective.goal"),
    InvalidPipeline("negative-min-accuracy", set_("spec.objective.minAccuracy", -0.1), "spec.objective.minAccuracy"),
    InvalidPipeline("accuracy-not-a-number", set_("spec.stages[0].variants[0].accuracy", "high"),
                    "spec.stages[0].variants[0].accuracy"),
    InvalidPipeline("batch-size-zero", set_("spec.stages[0].batchSizes", [0, 4]), "spec.stages[0].batchSizes[0]"),
    InvalidPipeline("zero-load-multiplier", set_("spec.stages[2].loadMultiplier", 0),
                    "spec.stages[2].loadMultiplier"),
    InvalidPipeline("negative-gpu-request",
                    set_("spec.stages[5].variants[0].resources.gpus", {"nvidia.com/gpu": -1}),
                    "spec.stages[5].variants[0].resources.gpus.nvidia.com/gpu"),
    InvalidPipeline("profile-point-negative-latency",
                    set_("spec.stages[0].variants[0].profile.points[0].latencyMs", -1),
                    "spec.stages[0].variants[0].profile.points[0].latencyMs"),
    InvalidPipeline("too-many-instances", set_("spec.stages[6].variants[0].profile.points[1].instances", 65),
                    "spec.stages[6].variants[0].profile.points[1].instances"),
    InvalidPipeline("bad-router-enum", set_(f"{ANSWER}.cascade.router", "oracle"), f"{ANSWER}.cascade.router"),
    InvalidPipeline("threshold-above-one", set_(f"{ANSWER}.cascade.threshold", 1.5),
                    f"{ANSWER}.cascade.threshold"),
    InvalidPipeline("threshold-bad-string", set_(f"{ANSWER}.cascade.threshold", "sometimes"),
                    f"{ANSWER}.cascade.threshold"),
    InvalidPipeline("row-heavy-fraction-above-one", set_(f"{ANSWER}.cascade.rows[1].heavyFraction", 1.2),
                    f"{ANSWER}.cascade.rows[1].heavyFraction"),
    InvalidPipeline("cascade-without-rows", set_(f"{ANSWER}.cascade.rows", []), f"{ANSWER}.cascade.rows"),
    InvalidPipeline("negative-min-replicas", set_("spec.stages[6].bounds.minReplicas", -1),
                    "spec.stages[6].bounds.minReplicas"),
    # Unknown fields: spec.py forbids them; the API server rejects them under strict field validation
    # (kubectl's default) and silently prunes them otherwise.
    InvalidPipeline("unknown-stage-field", set_("spec.stages[0].replicas", 3), "spec.stages[0].replicas"),
    InvalidPipeline("unknown-slo-field", set_("spec.slo.latencyMS", 500), "spec.slo.latencyMS"),
    # --- cross-field rules: CEL on the API server ------------------------------------------------
    InvalidPipeline("duplicate-stage-names", set_("spec.stages[3].name", "web-search"), "spec",
                    "cel", "spec.stages", STAGE_NAMES_UNIQUE),
    InvalidPipeline("depends-on-unknown-stage", set_("spec.stages[4].dependsOn", ["retriever", "nope"]), "spec",
                    "cel", "spec.stages", DEPENDS_ON_KNOWN),
    InvalidPipeline("two-stage-cycle", set_("spec.stages[0].dependsOn", ["retriever"]), "spec",
                    "cel", "spec.stages", NO_TWO_CYCLE),
    InvalidPipeline("self-dependency", set_("spec.stages[4].dependsOn", ["retriever", "reranker"]),
                    "spec.stages[4]", "cel", "spec.stages[4].dependsOn", NO_SELF_DEPENDENCY),
    InvalidPipeline("duplicate-variant-names", set_("spec.stages[1].variants[1].name", "bge-small"),
                    "spec.stages[1]", "cel", "spec.stages[1].variants", VARIANT_NAMES_UNIQUE),
    InvalidPipeline("cascade-light-unknown", set_(f"{ANSWER}.cascade.light", "llama3-13b"), ANSWER,
                    "cel", f"{ANSWER}.cascade.light", LIGHT_IS_VARIANT),
    InvalidPipeline("cascade-heavy-unknown", set_("spec.stages[0].cascade.heavy", "sdxl"), "spec.stages[0]",
                    "cel", "spec.stages[0].cascade.heavy", HEAVY_IS_VARIANT, base="diffserve-cascade.yaml"),
    InvalidPipeline("cascade-light-equals-heavy", set_("spec.stages[0].cascade.heavy", "sdturbo"),
                    "spec.stages[0]", "cel", "spec.stages[0].cascade.heavy", LIGHT_NE_HEAVY,
                    base="diffserve-cascade.yaml"),
    InvalidPipeline("discriminator-router-without-model", del_("spec.stages[0].cascade.discriminatorModel"),
                    "spec.stages[0]", "cel", "spec.stages[0].cascade.discriminatorModel", DISCRIMINATOR_MODEL,
                    base="diffserve-cascade.yaml"),
    InvalidPipeline("cascade-and-multivariant", set_("spec.stages[0].multiVariant", True), "spec.stages[0]",
                    "cel", "spec.stages[0].multiVariant", CASCADE_XOR_MULTI, base="diffserve-cascade.yaml"),
    InvalidPipeline("two-profile-kinds", set_("spec.stages[0].variants[0].profile.sponge", SPONGE),
                    "spec.stages[0].variants[0].profile", "cel", rule=ONE_PROFILE_KIND),
    InvalidPipeline("no-profile-kind", set_("spec.stages[0].variants[0].profile", {}),
                    "spec.stages[0].variants[0].profile", "cel", rule=ONE_PROFILE_KIND),
    InvalidPipeline("min-replicas-above-max", set_("spec.stages[6].bounds", {"minReplicas": 5, "maxReplicas": 2}),
                    "spec.stages[6].bounds", "cel", "spec.stages[6].bounds.minReplicas", MIN_REPLICAS_LE_MAX),
    InvalidPipeline("min-replicas-above-default-max", set_("spec.stages[0].bounds", {"minReplicas": 101}),
                    "spec.stages[0].bounds", "cel", "spec.stages[0].bounds.minReplicas", MIN_REPLICAS_LE_MAX),
    InvalidPipeline("pre-routed-above-heavy-fraction", set_(f"{ANSWER}.cascade.rows[1].preRoutedFraction", 0.99),
                    f"{ANSWER}.cascade.rows[1]", "cel", f"{ANSWER}.cascade.rows[1].preRoutedFraction",
                    PRE_ROUTED_LE_HEAVY),
    InvalidPipeline("min-cpu-above-max", set_("spec.stages[0].bounds", {"minCpu": 8, "maxCpu": 4}),
                    "spec.stages[0].bounds", "cel", "spec.stages[0].bounds.minCpu", MIN_CPU_LE_MAX),
    # --- only the parser: CEL cannot afford a reachability check over 64 stages -------------------
    InvalidPipeline("three-stage-cycle", set_("spec.stages[0].dependsOn", ["reranker"]), "spec", "parser"),
    InvalidPipeline("six-stage-cycle", set_("spec.stages[0].dependsOn", ["critic"]), "spec", "parser"),
    InvalidPipeline("two-stage-cycle-ipa", set_("spec.stages[0].dependsOn", ["classifier"]), "spec",
                    "cel", "spec.stages", NO_TWO_CYCLE, base="ipa-video.yaml"),
    # Strict scalars and list bounds, as the API server enforces them.
    InvalidPipeline("threshold-boolean", set_(f"{ANSWER}.cascade.threshold", True), f"{ANSWER}.cascade.threshold"),
    InvalidPipeline("threshold-numeric-string", set_(f"{ANSWER}.cascade.threshold", "0.5"),
                    f"{ANSWER}.cascade.threshold"),
    InvalidPipeline("latency-as-string", set_("spec.slo.latencyMs", "750"), "spec.slo.latencyMs"),
    InvalidPipeline("multivariant-as-string", set_("spec.stages[0].multiVariant", "yes"),
                    "spec.stages[0].multiVariant"),
    InvalidPipeline("65-stages", _many("spec.stages", 65), "spec.stages"),
    InvalidPipeline("17-variants", _many("spec.stages[0].variants", 17), "spec.stages[0].variants"),
    # --- the security review's spec fuzz cases (Appendix A), as manifests --------------------------------
    InvalidPipeline("10000-batch-sizes", set_("spec.stages[0].batchSizes", list(range(1, 10001))),
                    "spec.stages[0].batchSizes"),
    InvalidPipeline("batch-size-1e9", set_("spec.stages[0].batchSizes", [1, 10**9]), "spec.stages[0].batchSizes[1]"),
    InvalidPipeline("513-points", set_("spec.stages[0].variants[0].profile.points",
                                       [{"batch": 1, "latencyMs": 90 + i} for i in range(513)]),
                    "spec.stages[0].variants[0].profile.points"),
    InvalidPipeline("slo-boolean", set_("spec.slo.latencyMs", True), "spec.slo.latencyMs"),
    InvalidPipeline("slo-1e308", set_("spec.slo.latencyMs", 1e308), "spec.slo.latencyMs"),
    InvalidPipeline("unicode-stage-name", set_("spec.stages[6].name", "kritik\u00e9r"), "spec.stages[6].name"),
    InvalidPipeline("stage-name-64-chars", set_("spec.stages[6].name", "c" * 64), "spec.stages[6].name"),
    InvalidPipeline("accuracy-1e308", set_("spec.stages[0].variants[0].accuracy", 1e308),
                    "spec.stages[0].variants[0].accuracy"),
    InvalidPipeline("load-multiplier-1e308", set_("spec.stages[2].loadMultiplier", 1e308),
                    "spec.stages[2].loadMultiplier"),
    InvalidPipeline("throughput-1e308", set_("spec.stages[2].variants[0].profile.points[0].throughputRps", 1e308),
                    "spec.stages[2].variants[0].profile.points[0].throughputRps"),
    InvalidPipeline("solver-time-limit-600", set_("spec.adaptation.solverTimeLimitSeconds", 600),
                    "spec.adaptation.solverTimeLimitSeconds"),
    InvalidPipeline("prices-17-keys", set_("spec.objective.prices", {f"vendor{i}.com/gpu": 1.0 for i in range(17)}),
                    "spec.objective.prices"),
    InvalidPipeline("budget-gpus-17-keys", set_("spec.budget.gpus", {f"vendor{i}.com/gpu": 1 for i in range(17)}),
                    "spec.budget.gpus"),
    # F11: values the operator's renderer cannot turn into a pod (OverflowError before)
    InvalidPipeline("max-queue-delay-1e306", set_("spec.stages[5].maxQueueDelayMs", 1e306),
                    "spec.stages[5].maxQueueDelayMs"),
    InvalidPipeline("cpu-1e308", set_("spec.stages[0].variants[0].resources.cpu", 1e308),
                    "spec.stages[0].variants[0].resources.cpu"),
    InvalidPipeline("memory-1e308", set_("spec.stages[0].variants[0].resources.memoryGib", 1e308),
                    "spec.stages[0].variants[0].resources.memoryGib"),
    # F12: accepted before, then unusable (variants silently dropped, wrong resources, a router that refuses)
    InvalidPipeline("sponge-negative-coeffs",
                    set_("spec.stages[0].variants[0].profile",
                         {"sponge": {"gamma": -1.0, "delta": -2.0, "epsilon": -3.0, "eta": -4.0, "cpus": [1, 2]}}),
                    "spec.stages[0]", "cel", "spec.stages[0].variants", SPONGE_POSITIVE),
    InvalidPipeline("sponge-negative-at-one-corner",
                    set_("spec.stages[0].variants[0].profile",
                         {"sponge": {"gamma": 10.0, "delta": -30.0, "epsilon": 10.0, "eta": 100.0, "cpus": [1, 8]}}),
                    "spec.stages[0]", "cel", "spec.stages[0].variants", SPONGE_POSITIVE),
    InvalidPipeline("linear-negative-slope",
                    set_("spec.stages[1].variants[0].profile",
                         {"linearCapacity": {"slope": -9.5, "intercept": 10.0, "latencyMs": 300, "cpus": [1, 2]}}),
                    "spec.stages[1].variants[0].profile.linearCapacity", "cel", rule=LINEAR_POSITIVE),
    InvalidPipeline("gpu-fraction", set_("spec.stages[5].variants[0].resources.gpus", {"nvidia.com/gpu": 0.5}),
                    "spec.stages[5].variants[0].resources.gpus.nvidia.com/gpu"),
    InvalidPipeline("gpu-key-named-cpu", set_("spec.stages[5].variants[0].resources.gpus", {"cpu": 64, "memory": 0}),
                    "spec.stages[5].variants[0].resources.gpus", "cel", rule=GPU_KEYS),
    InvalidPipeline("cpu-zero", set_("spec.stages[0].variants[0].resources.cpu", 0),
                    "spec.stages[0].variants[0].resources.cpu"),
    InvalidPipeline("unicode-triton-model", set_("spec.stages[0].variants[0].tritonModel", "mod\u00e8le"),
                    "spec.stages[0].variants[0].tritonModel"),
    InvalidPipeline("triton-model-traversal", set_("spec.stages[0].variants[0].tritonModel", "../../etc/passwd"),
                    "spec.stages[0].variants[0].tritonModel"),
    InvalidPipeline("triton-model-flag-injection",
                    set_("spec.stages[0].variants[0].tritonModel", "x --model-control-mode=poll"),
                    "spec.stages[0].variants[0].tritonModel"),
    InvalidPipeline("triton-model-url-chars", set_("spec.stages[0].variants[0].tritonModel", "a?b#c/../d%2e"),
                    "spec.stages[0].variants[0].tritonModel"),
    InvalidPipeline("dynamic-header-crlf", set_("spec.slo.dynamic", {"header": "X-Deadline\r\nInjected: 1"}),
                    "spec.slo.dynamic.header"),
    InvalidPipeline("dynamic-header-10k", set_("spec.slo.dynamic", {"header": "x" * 10000}), "spec.slo.dynamic.header"),
    InvalidPipeline("cascade-prompt-no-prompt-threshold", set_(f"{ANSWER}.cascade.router", "prompt"),
                    f"{ANSWER}.cascade.rows", "cel", f"{ANSWER}.cascade.rows", PROMPT_THRESHOLD_NEEDED),
    InvalidPipeline("cascade-confidence-with-prompt-threshold", set_(f"{ANSWER}.cascade.rows[1].promptThreshold", 0.3),
                    f"{ANSWER}.cascade.rows", "cel", f"{ANSWER}.cascade.rows", PROMPT_THRESHOLD_UNUSED),
    # F8: the 65,536-option stage that hung the planner, and a pipeline above the total cap
    InvalidPipeline("sponge-options-65536", _stages(_sponge_stage("big", 16, 128, list(range(1, 33)))),
                    "spec.stages[0]", "cel", "spec.stages[0].variants", STAGE_OPTIONS),
    InvalidPipeline("points-options-2560", _points_variants("spec.stages[0]", 5, 512),
                    "spec.stages[0]", "cel", "spec.stages[0].variants", STAGE_OPTIONS),
    InvalidPipeline("pipeline-options-18432", _stages(*(_sponge_stage(f"s{i}", 16, 128, [1]) for i in range(9))),
                    "spec.stages", "cel", "spec.stages", PIPELINE_OPTIONS),
    # F26 and the other maps: known resource names only, whole GPUs
    InvalidPipeline("price-key-unknown", set_("spec.objective.prices.cpus", 1.0), "spec.objective.prices", "cel",
                    rule=PRICE_KEYS),
    InvalidPipeline("budget-gpus-key-cpu", set_("spec.budget.gpus", {"cpu": 8}), "spec.budget.gpus", "cel",
                    rule=GPU_KEYS),
    InvalidPipeline("budget-gpus-fraction", set_("spec.budget.gpus", {"nvidia.com/gpu": 7.5}),
                    "spec.budget.gpus.nvidia.com/gpu"),
    InvalidPipeline("gpus-per-replica-65", set_("spec.stages[5].variants[1].resources.gpus", {"nvidia.com/gpu": 65}),
                    "spec.stages[5].variants[1].resources.gpus.nvidia.com/gpu"),
    InvalidPipeline("price-above-max", set_("spec.objective.prices.memory", 2e6), "spec.objective.prices.memory"),
    InvalidPipeline("cost-weight-above-max", set_("spec.objective.cost", 1e7), "spec.objective.cost"),
    InvalidPipeline("budget-cpu-above-max", set_("spec.budget.cpu", 1e9), "spec.budget.cpu"),
    # --- every other new bound ----------------------------------------------------------------------------
    InvalidPipeline("discriminator-model-on-confidence-router",
                    set_(f"{ANSWER}.cascade.discriminatorModel", "judge"), ANSWER, "cel",
                    f"{ANSWER}.cascade.discriminatorModel", DISCRIMINATOR_MODEL_UNUSED),
    InvalidPipeline("discriminator-model-bad-name", set_("spec.stages[0].cascade.discriminatorModel", "../judge"),
                    "spec.stages[0].cascade.discriminatorModel", base="diffserve-cascade.yaml"),
    InvalidPipeline("triton-model-65-chars", set_("spec.stages[0].variants[0].tritonModel", "m" * 65),
                    "spec.stages[0].variants[0].tritonModel"),
    InvalidPipeline("triton-model-leading-dash", set_("spec.stages[0].variants[0].tritonModel", "-model"),
                    "spec.stages[0].variants[0].tritonModel"),
    InvalidPipeline("dynamic-header-upper-case", set_("spec.slo.dynamic", {"header": "X-Deadline-Ms"}),
                    "spec.slo.dynamic.header"),
    InvalidPipeline("empty-batch-sizes", set_("spec.stages[0].batchSizes", []), "spec.stages[0].batchSizes"),
    InvalidPipeline("max-queue-delay-above-one-minute", set_("spec.stages[5].maxQueueDelayMs", 60001),
                    "spec.stages[5].maxQueueDelayMs"),
    InvalidPipeline("cpu-above-1024", set_("spec.stages[0].variants[0].resources.cpu", 1025),
                    "spec.stages[0].variants[0].resources.cpu"),
    InvalidPipeline("memory-above-16384", set_("spec.stages[5].variants[1].resources.memoryGib", 16385),
                    "spec.stages[5].variants[1].resources.memoryGib"),
    InvalidPipeline("point-cpu-above-1024", set_("spec.stages[0].variants[0].profile.points[0].cpu", 2048),
                    "spec.stages[0].variants[0].profile.points[0].cpu"),
    InvalidPipeline("point-latency-above-one-hour",
                    set_("spec.stages[0].variants[0].profile.points[0].latencyMs", 3600001),
                    "spec.stages[0].variants[0].profile.points[0].latencyMs"),
    InvalidPipeline("sponge-coefficient-above-max",
                    set_("spec.stages[0].variants[0].profile", {"sponge": {**SPONGE, "eta": 1e7}}),
                    "spec.stages[0].variants[0].profile.sponge.eta"),
    InvalidPipeline("sponge-cpus-above-1024",
                    set_("spec.stages[0].variants[0].profile", {"sponge": {**SPONGE, "cpus": [1, 4096]}}),
                    "spec.stages[0].variants[0].profile.sponge.cpus[1]"),
    InvalidPipeline("linear-latency-above-one-hour",
                    set_("spec.stages[1].variants[0].profile",
                         {"linearCapacity": {"slope": 9.5, "intercept": 10.0, "latencyMs": 1e7, "cpus": [1, 2]}}),
                    "spec.stages[1].variants[0].profile.linearCapacity.latencyMs"),
    InvalidPipeline("row-quality-above-max", set_(f"{ANSWER}.cascade.rows[1].quality", 1e9),
                    f"{ANSWER}.cascade.rows[1].quality"),
    InvalidPipeline("load-time-above-one-hour", set_("spec.stages[5].variants[1].loadTimeSeconds", 3601),
                    "spec.stages[5].variants[1].loadTimeSeconds"),
    InvalidPipeline("max-cpu-above-1024", set_("spec.stages[0].bounds", {"maxCpu": 4096}),
                    "spec.stages[0].bounds.maxCpu"),
    # --- multi-task stages (fused variants) ----------------------------------------------------------
    InvalidPipeline("task-name-not-an-identifier", set_(f"{FUSED}.tasks[0].name", "Digit"), f"{FUSED}.tasks[0].name",
                    base="digits-fused.yaml"),
    InvalidPipeline("nine-tasks", set_(f"{FUSED}.tasks", [{"name": f"t{i}"} for i in range(9)]), f"{FUSED}.tasks",
                    base="digits-fused.yaml"),
    InvalidPipeline("negative-task-weight", set_(f"{FUSED}.tasks[1].weight", -1), f"{FUSED}.tasks[1].weight",
                    base="digits-fused.yaml"),
    InvalidPipeline("task-accuracy-above-max", set_(f"{FUSED}.variants[0].taskAccuracy.digit", 1e7),
                    f"{FUSED}.variants[0].taskAccuracy", base="digits-fused.yaml"),
    InvalidPipeline("task-accuracy-not-a-number", set_(f"{FUSED}.variants[1].taskAccuracy.parity", "high"),
                    f"{FUSED}.variants[1].taskAccuracy", base="digits-fused.yaml"),
    InvalidPipeline("task-accuracy-without-tasks", del_(f"{FUSED}.tasks"), FUSED, "cel", f"{FUSED}.variants",
                    ACCURACY_WITHOUT_TASKS, base="digits-fused.yaml"),
    InvalidPipeline("accuracy-in-a-multi-task-stage", set_(f"{FUSED}.variants[1].accuracy", 0.97), FUSED, "cel",
                    f"{FUSED}.variants", TASK_ACCURACY_WITH_TASKS, base="digits-fused.yaml"),
    InvalidPipeline("task-accuracy-missing-a-task", del_(f"{FUSED}.variants[1].taskAccuracy.loops"), FUSED, "cel",
                    f"{FUSED}.variants", TASK_ACCURACY_WITH_TASKS, base="digits-fused.yaml"),
    InvalidPipeline("task-accuracy-of-an-unknown-task", set_(f"{FUSED}.variants[0].taskAccuracy.colour", 0.5), FUSED,
                    "cel", f"{FUSED}.variants", TASK_ACCURACY_WITH_TASKS, base="digits-fused.yaml"),
    InvalidPipeline("duplicate-task-names", set_(f"{FUSED}.tasks[1].name", "digit"), FUSED, "cel", f"{FUSED}.tasks",
                    TASK_NAMES_UNIQUE, base="digits-fused.yaml"),
    InvalidPipeline("every-task-weight-zero", set_(f"{FUSED}.tasks", [{"name": t, "weight": 0} for t in
                                                                     ("digit", "parity", "at_least_5", "loops")]),
                    FUSED, "cel", f"{FUSED}.tasks", TASK_WEIGHT_POSITIVE, base="digits-fused.yaml"),
    # --- the prompt scorer of a generation stage (router: prompt) -----------------------------------
    InvalidPipeline("generation-prompt-router-without-scorer", del_(f"{LLM}.cascade.scorerModel"), LLM, "cel",
                    f"{LLM}.cascade.scorerModel", SCORER_MODEL, base="arith-llm.yaml"),
    InvalidPipeline("scorer-model-on-confidence-router", set_(f"{ANSWER}.cascade.scorerModel", "scorer"), ANSWER,
                    "cel", f"{ANSWER}.cascade.scorerModel", SCORER_MODEL_UNUSED),
    InvalidPipeline("scorer-model-without-generation", _prompt_router_with_scorer(ANSWER), ANSWER, "cel",
                    f"{ANSWER}.cascade.scorerModel", SCORER_MODEL_UNUSED),
    InvalidPipeline("scorer-model-bad-name", set_(f"{LLM}.cascade.scorerModel", "../scorer"),
                    f"{LLM}.cascade.scorerModel", base="arith-llm.yaml"),
    InvalidPipeline("multi-task-cascade",
                    lambda doc: doc["spec"]["stages"][0].__setitem__("cascade", {
                        "light": doc["spec"]["stages"][0]["variants"][1]["name"],
                        "heavy": doc["spec"]["stages"][0]["variants"][0]["name"],
                        "rows": [{"threshold": 0.5, "heavyFraction": 0.5}]}),
                    FUSED, "cel", f"{FUSED}.cascade", TASKS_NOT_CASCADE, base="digits-fused.yaml"),
]

