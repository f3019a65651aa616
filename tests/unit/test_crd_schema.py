"""The CRD (`crds/servingpipeline.yaml`) and `paretoserve.planner.spec` are one contract in two copies.

These tests hold the copies together without an API server:
(a) the CRD is a structurally valid apiextensions.k8s.io/v1 CRD (the rules the API server enforces on
    `openAPIV3Schema`), and it mirrors spec.py field by field: names, required fields, defaults, types,
    enums, patterns and bounds;
(b) every example in `manifests/examples/` validates against the CRD schema (with `jsonschema`) and parses
    with `parse_pipeline`, which also evaluates the equivalent of the CRD's CEL rules;
(c) every broken manifest in `invalid_pipelines.py` is rejected by both, at the expected field path;
(d) the printer columns point at fields the schema declares.
The CEL rules themselves run only on a real API server (the e2e suite replays `INVALID_PIPELINES`).
"""

from __future__ import annotations

import copy
import importlib.util
import re
import types
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types as at
import jsonschema
import pytest
import yaml
from pydantic import BaseModel
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

from paretoserve.planner import spec as specmod
from paretoserve.planner.spec import SpecError, parse_pipeline

from .invalid_pipelines import INVALID_PIPELINES, InvalidPipeline, path_under

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "servingpipeline.yaml"
EXAMPLES_DIR = REPO / "manifests" / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))

CRD: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
VERSION: dict[str, Any] = CRD["spec"]["versions"][0]
SCHEMA: dict[str, Any] = VERSION["schema"]["openAPIV3Schema"]

JUNCTORS = ("anyOf", "allOf", "oneOf")
# Keys a structural schema may not use (apiextensions v1 validation / "Specifying a structural schema").
FORBIDDEN_KEYS = {"$ref", "$schema", "id", "definitions", "dependencies", "additionalItems", "patternProperties"}
# Keys the API server forbids inside anyOf/allOf/oneOf/not.
FORBIDDEN_IN_JUNCTORS = {"type", "default", "description", "additionalProperties", "nullable"}
CEL_REASONS = {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"}


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------


def walk(node: dict[str, Any], path: str = "", in_junctor: bool = False) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """Every schema node as (path, node, inside anyOf/allOf/oneOf/not)."""
    yield path, node, in_junctor
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}", in_junctor)
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]", in_junctor)
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}", in_junctor)
    for key in JUNCTORS:
        for i, child in enumerate(node.get(key, [])):
            yield from walk(child, f"{path}<{key}{i}>", True)
    if isinstance(node.get("not"), dict):
        yield from walk(node["not"], f"{path}<not>", True)


def to_jsonschema(node: dict[str, Any], *, strict: bool = True, path: str = "") -> dict[str, Any]:
    """Translate the CRD's OpenAPI v3.0 subset into JSON Schema 2020-12 for `jsonschema`.

    `x-kubernetes-*` keys are dropped (CEL rules are spec.py's job here), boolean exclusive bounds become
    numeric ones, and with `strict` every object with declared properties forbids others -- what the API
    server does under strict field validation (kubectl's default), except under preserve-unknown-fields
    and for `metadata`, whose other fields the API server validates itself.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("exclusiveMinimum", "exclusiveMaximum", "nullable"):
            continue
        if key == "properties":
            out[key] = {k: to_jsonschema(v, strict=strict, path=f"{path}.{k}") for k, v in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = to_jsonschema(value, strict=strict, path=path)
        elif key in JUNCTORS:
            out[key] = [to_jsonschema(v, strict=strict, path=path) for v in value]
        else:
            out[key] = value
    if node.get("exclusiveMinimum"):
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("exclusiveMaximum"):
        out["exclusiveMaximum"] = out.pop("maximum")
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (strict and node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields") and path != ".metadata"):
        out["additionalProperties"] = False
    return out


VALIDATOR = jsonschema.Draft202012Validator(to_jsonschema(SCHEMA))


def _format_path(steps: Any) -> str:
    out = ""
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else ("." if out else "") + str(step)
    return out


def schema_error_paths(document: dict[str, Any]) -> list[str]:
    """Field paths of the JSON-schema errors, named like the API server names them.

    A missing required field or an unknown field is reported at the field itself, not at its parent.
    """
    paths = []
    for error in VALIDATOR.iter_errors(document):
        where = _format_path(error.absolute_path)
        prefix = f"{where}." if where else ""
        if error.validator == "required":
            paths += [prefix + name for name in error.validator_value if name not in error.instance]
        elif error.validator == "additionalProperties" and error.validator_value is False:
            paths += [prefix + name for name in error.instance if name not in error.schema.get("properties", {})]
        else:
            paths.append(where)
    return paths


def load(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: one ServingPipeline per file"
    doc: dict[str, Any] = docs[0]
    return doc


def cel_rules() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(path, node, rule) for path, node, _ in walk(SCHEMA) for rule in node.get("x-kubernetes-validations", [])]


# ---------------------------------------------------------------------------------------------------
# (a) a structurally valid apiextensions v1 CRD
# ---------------------------------------------------------------------------------------------------


def test_crd_identity() -> None:
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1"
    assert CRD["kind"] == "CustomResourceDefinition"
    names = CRD["spec"]["names"]
    assert CRD["spec"]["group"] == specmod.API_GROUP
    assert CRD["metadata"]["name"] == f"{names['plural']}.{CRD['spec']['group']}"
    assert names["kind"] == specmod.KIND
    assert (names["plural"], names["singular"], names["listKind"]) == (
        "servingpipelines", "servingpipeline", "ServingPipelineList")
    assert names["shortNames"] == ["sp", "spipe"]
    assert CRD["spec"]["scope"] == "Namespaced"
    assert [v["name"] for v in CRD["spec"]["versions"]] == [specmod.API_VERSION]
    assert VERSION["served"] is True and VERSION["storage"] is True
    assert VERSION["subresources"] == {"status": {}}


def test_schema_is_structural() -> None:
    assert SCHEMA["type"] == "object"
    for path, node, in_junctor in walk(SCHEMA):
        where = path or "<root>"
        assert not FORBIDDEN_KEYS & node.keys(), f"{where}: forbidden keys {FORBIDDEN_KEYS & node.keys()}"
        assert node.get("uniqueItems") is not True, f"{where}: uniqueItems is forbidden"
        if in_junctor:
            bad = FORBIDDEN_IN_JUNCTORS & node.keys()
            assert not bad, f"{where}: {bad} not allowed inside anyOf/allOf/oneOf/not"
            continue
        untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        assert "type" in node or untyped_ok, f"{where}: every node needs a type"
        assert not ("properties" in node and "additionalProperties" in node), f"{where}: both kinds of properties"
        assert node.get("additionalProperties") is not False, f"{where}: additionalProperties: false is forbidden"
        for name in node.get("required", []):
            assert name in node.get("properties", {}), f"{where}: required field {name} is not declared"
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), f"{where}: list-map keys must be required"


def test_metadata_restricts_only_name() -> None:
    metadata = SCHEMA["properties"]["metadata"]
    assert set(metadata["properties"]) <= {"name", "generateName"}
    assert metadata["properties"]["name"]["pattern"] == specmod.DNS_LABEL
    assert metadata["properties"]["name"]["maxLength"] == 63


def test_defaults_are_valid_for_their_own_schema() -> None:
    # The API server rejects a CRD whose defaults do not validate (after pruning) against their node.
    seen = 0
    for path, node, in_junctor in walk(SCHEMA):
        if "default" not in node:
            continue
        assert not in_junctor and not path.startswith(".metadata"), path
        jsonschema.Draft202012Validator(to_jsonschema(node, strict=True)).validate(node["default"])
        seen += 1
    assert seen >= 20


def test_cel_rules_are_well_formed() -> None:
    rules = cel_rules()
    assert len(rules) >= 12
    for path, node, rule in rules:
        where = path or "<root>"
        assert rule["rule"].strip() and rule["message"].strip(), where
        assert set(rule) <= {"rule", "message", "messageExpression", "fieldPath", "reason",
                             "optionalOldSelf"}, where
        # FieldValueDuplicate makes the API server drop the message; the rules use Invalid/Forbidden.
        assert rule.get("reason", "FieldValueInvalid") in CEL_REASONS - {"FieldValueDuplicate"}, where
        if "fieldPath" in rule:
            target = node
            steps = rule["fieldPath"].split(".")
            assert steps[0] == "", f"{where}: fieldPath must start with '.'"
            for step in steps[1:]:
                assert step in target.get("properties", {}), f"{where}: fieldPath {rule['fieldPath']} not in schema"
                target = target["properties"][step]
        # every variable the rule reads through self.<field> must be a declared property of the node
        # (self.all(...) on a map is a macro, not a field)
        for field in re.findall(r"\bself\.(\w+)\b(?!\s*\()", rule["rule"]):
            assert field in node.get("properties", {}), f"{where}: rule reads undeclared self.{field}"


def test_cel_inputs_are_bounded() -> None:
    # CEL cost estimation needs maxItems on every list a rule iterates (or sits under) and maxLength on
    # every string it compares. All spec lists are bounded; every name-like string is a DNS label <= 63.
    for path, node, _ in walk(SCHEMA["properties"]["spec"], ".spec"):
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: arrays need maxItems"
        if node.get("pattern") == specmod.DNS_LABEL:
            assert node.get("maxLength") == 63, f"{path}: names need maxLength"


# ---------------------------------------------------------------------------------------------------
# (a') the CRD mirrors spec.py: field names, required fields, defaults, types, enums and bounds
# ---------------------------------------------------------------------------------------------------

# Bounds only the CRD has (none today: spec.py mirrors the CRD's list limits, which bound CEL cost).
# An entry that stops being a difference fails the test.
CRD_ONLY_BOUNDS: dict[tuple[str, str], Any] = {}
BOUND_KEYS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "minLength", "maxLength", "pattern",
              "minItems", "maxItems", "minProperties", "maxProperties")
LENGTH_KEYS = {"array": ("minItems", "maxItems"), "map": ("minProperties", "maxProperties")}


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """Strip Annotated[...] and Optional[...]: the base type and the constraint metadata."""
    metadata: list[Any] = []
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            base, *extra = get_args(annotation)
            for item in extra:
                metadata += item.metadata if isinstance(item, FieldInfo) else [item]
            annotation = base
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation, metadata
            annotation = args[0]
        else:
            return annotation, metadata


def _bounds(metadata: list[Any], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, at.Gt):
            out |= {"minimum": m.gt, "exclusiveMinimum": True}
        elif isinstance(m, at.Ge):
            out["minimum"] = m.ge
        elif isinstance(m, at.Lt):
            out |= {"maximum": m.lt, "exclusiveMaximum": True}
        elif isinstance(m, at.Le):
            out["maximum"] = m.le
        elif isinstance(m, at.MinLen):
            out[LENGTH_KEYS.get(kind, ("minLength",))[0]] = m.min_length
        elif isinstance(m, at.MaxLen):
            out[LENGTH_KEYS.get(kind, ("", "maxLength"))[1]] = m.max_length
        elif getattr(m, "pattern", None):
            out["pattern"] = m.pattern
    return out


class Mirror:
    """Walks a pydantic model and the CRD node for it side by side, collecting differences."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.used_crd_only: set[tuple[str, str]] = set()

    def model(self, node: dict[str, Any], cls: type[BaseModel], path: str) -> None:
        if node.get("type") != "object":
            self.problems.append(f"{path}: expected an object for {cls.__name__}")
            return
        fields = {(f.alias or to_camel(name)): f for name, f in cls.model_fields.items()}
        props = node.get("properties", {})
        if set(fields) != set(props):
            self.problems.append(f"{path}: fields {sorted(fields)} != CRD properties {sorted(props)}")
        required = sorted(a for a, f in fields.items() if f.is_required())
        if sorted(node.get("required", [])) != required:
            self.problems.append(f"{path}: required {sorted(node.get('required', []))} != spec.py {required}")
        for alias, f in fields.items():
            if alias not in props:
                continue
            child, child_path = props[alias], f"{path}.{alias}"
            if not f.is_required():
                self.default(child, f.get_default(call_default_factory=True), child_path)
            self.value(child, f.annotation, list(f.metadata), child_path)

    def default(self, node: dict[str, Any], value: Any, path: str) -> None:
        if value is None:
            if "default" in node:
                self.problems.append(f"{path}: spec.py has no default, the CRD has {node['default']!r}")
            return
        if isinstance(value, BaseModel):
            ok = node.get("default") == {} and value == type(value)()
        else:
            expected = value.value if isinstance(value, Enum) else value
            ok = ("default" in node and node["default"] == expected
                  and isinstance(node["default"], bool) == isinstance(expected, bool))
        if not ok:
            self.problems.append(f"{path}: default {node.get('default')!r} != spec.py {value!r}")

    def value(self, node: dict[str, Any], annotation: Any, metadata: list[Any], path: str) -> None:
        base, inner = _unwrap(annotation)
        metadata = metadata + inner
        if get_origin(base) in (Union, types.UnionType):  # cascade.threshold: "auto" | float in [0, 1]
            self.threshold(node, base, path)
            return
        origin = get_origin(base)
        if isinstance(base, type) and issubclass(base, BaseModel):
            self.model(node, base, path)
            kind = "object"
        elif origin is list:
            kind = "array"
            self.type(node, "array", path)
            if "items" in node:
                self.value(node["items"], get_args(base)[0], [], f"{path}[]")
        elif origin is dict:
            kind = "map"
            self.type(node, "object", path)
            self.value(node.get("additionalProperties", {}), get_args(base)[1], [], f"{path}{{}}")
        elif isinstance(base, type) and issubclass(base, Enum):
            kind = "integer" if issubclass(base, int) else "string"
            self.type(node, kind, path)
            if node.get("enum") != [e.value for e in base]:
                self.problems.append(f"{path}: enum {node.get('enum')} != spec.py {[e.value for e in base]}")
        else:
            kind = {float: "number", int: "integer", bool: "boolean", str: "string"}[base]
            self.type(node, kind, path)
        self.bounds(node, _bounds(metadata, kind), path)

    def type(self, node: dict[str, Any], kind: str, path: str) -> None:
        if node.get("type") != kind:
            self.problems.append(f"{path}: type {node.get('type')} != spec.py {kind}")

    def bounds(self, node: dict[str, Any], expected: dict[str, Any], path: str) -> None:
        for key in BOUND_KEYS:
            want = expected.get(key)
            if (path, key) in CRD_ONLY_BOUNDS:
                self.used_crd_only.add((path, key))
                want = CRD_ONLY_BOUNDS[(path, key)]
                if expected.get(key) == want:
                    self.problems.append(f"{path}: {key} is no longer CRD-only; drop it from CRD_ONLY_BOUNDS")
            if node.get(key) != want:
                self.problems.append(f"{path}: {key} = {node.get(key)!r}, expected {want!r}")

    def threshold(self, node: dict[str, Any], union: Any, path: str) -> None:
        literals = [a for a in get_args(union) if get_origin(a) is not Annotated]
        numbers = [a for a in get_args(union) if get_origin(a) is Annotated]
        assert [get_args(a) for a in literals] == [("auto",)], path
        number = _bounds(_unwrap(numbers[0])[1], "number")
        alternatives = node.get("anyOf", [])
        if not node.get("x-kubernetes-preserve-unknown-fields") or "type" in node:
            self.problems.append(f"{path}: a string-or-number field must be untyped with preserve-unknown-fields")
        if alternatives[:1] != [{"enum": ["auto"]}]:
            self.problems.append(f"{path}: first anyOf alternative must be enum [auto]")
        got = {k: v for k, v in alternatives[1].items() if k in ("minimum", "maximum")} if len(alternatives) > 1 else {}
        if got != number:
            self.problems.append(f"{path}: numeric alternative {got} != spec.py {number}")


def test_crd_mirrors_spec_py() -> None:
    mirror = Mirror()
    mirror.model(SCHEMA["properties"]["spec"], specmod.ServingPipelineSpec, ".spec")
    assert mirror.problems == []
    assert mirror.used_crd_only == set(CRD_ONLY_BOUNDS), "stale CRD_ONLY_BOUNDS entries"


def test_the_crd_carries_the_name_patterns_of_spec_py_character_for_character() -> None:
    spec = SCHEMA["properties"]["spec"]["properties"]
    stage = spec["stages"]["items"]["properties"]
    assert stage["variants"]["items"]["properties"]["tritonModel"]["pattern"] == specmod.TRITON_MODEL_NAME
    assert stage["cascade"]["properties"]["discriminatorModel"]["pattern"] == specmod.TRITON_MODEL_NAME
    assert spec["slo"]["properties"]["dynamic"]["properties"]["header"]["pattern"] == specmod.DEADLINE_HEADER_NAME
    key_rules = [(path, rule["rule"]) for path, _, rule in cel_rules() if "keys must be" in rule["message"]]
    assert [path for path, _ in key_rules] == [".spec.objective.prices", ".spec.budget.gpus",
                                               ".spec.stages[].variants[].resources.gpus"]
    assert all(f".matches('{specmod.RESOURCE_NAME}')" in rule for _, rule in key_rules)
    assert "k == 'cpu' || k == 'memory'" in key_rules[0][1]


def test_the_option_caps_in_cel_are_spec_pys() -> None:
    from paretoserve.planner import bounds

    caps = {path: rule["rule"] for path, _, rule in cel_rules() if "options" in rule["message"]}
    assert caps[".spec"].endswith(f".sum()).sum() <= {bounds.MAX_OPTIONS_PER_PIPELINE}")
    assert caps[".spec.stages[]"].endswith(f".sum() <= {bounds.MAX_OPTIONS_PER_STAGE}")
    # both count like Stage.option_count: points, batchSizes x sponge.cpus, linearCapacity.cpus
    for rule in caps.values():
        assert "size(v.profile.points)" in rule and "size(v.profile.sponge.cpus)" in rule
        assert "size(v.profile.linearCapacity.cpus)" in rule


def test_the_maps_are_bounded_and_gpus_are_whole() -> None:
    spec = SCHEMA["properties"]["spec"]["properties"]
    resources = spec["stages"]["items"]["properties"]["variants"]["items"]["properties"]["resources"]
    for node in (spec["objective"]["properties"]["prices"], spec["budget"]["properties"]["gpus"],
                 resources["properties"]["gpus"]):
        assert node["maxProperties"] == 16
    assert spec["budget"]["properties"]["gpus"]["additionalProperties"]["type"] == "integer"
    assert resources["properties"]["gpus"]["additionalProperties"]["type"] == "integer"


def test_root_requires_spec_and_keeps_status() -> None:
    assert SCHEMA["required"] == ["spec"]
    assert set(SCHEMA["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}


# ---------------------------------------------------------------------------------------------------
# status: what the operator and kopf write
# ---------------------------------------------------------------------------------------------------

STATUS = SCHEMA["properties"]["status"]


def _status_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(to_jsonschema(STATUS))


def test_status_accepts_operator_and_kopf_writes() -> None:
    status = {
        "observedGeneration": 3,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "PlanApplied", "message": "",
             "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3},
            {"type": "MetricsUnavailable", "status": "False", "reason": "Scraped", "message": "ok",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ],
        "plan": {"accuracy": 0.44, "cost": 2.0, "stages": [{"stage": "detector", "allocations": []}],
                 "anything": {"the": "planner adds"}},
        "lastDecisionTime": "2026-01-01T00:00:10Z",
        "solveMs": 12.5,
        "solverStatus": "optimal",
        "observedLoadRps": 11.0,
        "predictedLoadRps": 12.1,
        "policyState": {"cooldownUntil": 1234.5, "lowerPlans": 2},
        "desiredCpu": {"detector": 1.0, "classifier/resnet101": 2.0},
        "kopf": {"progress": {"plan": {"retries": 1}}},
        "plan_handler": {"message": "a kopf handler's return value"},
    }
    assert list(_status_validator().iter_errors(status)) == []
    assert STATUS["x-kubernetes-preserve-unknown-fields"] is True
    conditions = STATUS["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["properties"]["type"]["enum"] == [
        "Ready", "Progressing", "Degraded", "Infeasible", "MetricsUnavailable"]


@pytest.mark.parametrize(("field", "value"), [
    ("conditions", [{"type": "Ready", "status": "Maybe", "reason": "R", "message": "",
                     "lastTransitionTime": "2026-01-01T00:00:00Z"}]),
    ("conditions", [{"type": "Ready", "status": "True", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]),
    ("conditions", [{"type": "Ready", "status": "True", "reason": "not a reason", "message": "",
                     "lastTransitionTime": "2026-01-01T00:00:00Z"}]),
    ("solverStatus", "probably"),
    ("observedLoadRps", "many"),
])
def test_status_rejects_malformed_fields(field: str, value: Any) -> None:
    assert list(_status_validator().iter_errors({field: value})) != []


def test_solver_status_enum_matches_planner() -> None:
    from paretoserve.planner.model import SolveStatus

    assert STATUS["properties"]["solverStatus"]["enum"] == [s.value for s in SolveStatus]


# ---------------------------------------------------------------------------------------------------
# (b) the examples: valid for the CRD schema and for spec.py (which also covers the CEL rules)
# ---------------------------------------------------------------------------------------------------


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "ipa-video.yaml", "infadapter-resnet.yaml", "diffserve-cascade.yaml", "agent-workflow.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path: Path) -> None:
    doc = load(path)
    assert schema_error_paths(doc) == []
    pipeline = parse_pipeline(doc)
    assert pipeline.metadata.name == path.stem
    assert doc["apiVersion"] == f"{specmod.API_GROUP}/{specmod.API_VERSION}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_compiles_to_a_valid_problem(path: Path) -> None:
    # Beyond the contract: the planner's own structural checks (e.g. accuracies in [0, 1] for product).
    from paretoserve.planner.compile import Observation, compile_problem
    from paretoserve.planner.validate import validate

    problem = compile_problem(parse_pipeline(load(path)), Observation(load_rps=5.0))
    validate(problem)
    for stage in problem.stages:
        assert {o.variant for o in stage.options}, f"{stage.name}: no option survives batchSizes and bounds"


def test_example_features() -> None:
    by_name = {p.stem: parse_pipeline(load(p)).spec for p in EXAMPLES}
    ipa, inf, diff, agent = (by_name[n] for n in ("ipa-video", "infadapter-resnet", "diffserve-cascade",
                                                  "agent-workflow"))
    assert [s.name for s in ipa.stages] == ["detector", "classifier"]
    assert ipa.stages[1].depends_on == ["detector"]
    assert inf.stages[0].multi_variant and len(inf.stages[0].variants) == 5
    cascade = diff.stages[0].cascade
    assert cascade is not None and (cascade.light, cascade.heavy) == ("sdturbo", "sdv15")
    assert diff.budget.gpus == {"nvidia.com/gpu": 15}
    # agent workflow: >= 6 nodes, fan-out, fan-in, a repeated node, GPUs on some variants
    deps = {s.name: s.depends_on for s in agent.stages}
    assert len(deps) >= 6
    assert any(sum(name in d for d in deps.values()) >= 2 for name in deps), "no fan-out"
    assert any(len(d) >= 2 for d in deps.values()), "no fan-in"
    assert any(s.load_multiplier > 1 for s in agent.stages)
    assert any(v.resources.gpus for s in agent.stages for v in s.variants)
    assert agent.objective.accuracy_aggregation.value == "product"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("paretoserve_examples_generate", EXAMPLES_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_examples_are_current() -> None:
    generate = _generator()
    if not generate.DATA.is_dir():
        pytest.skip(f"reference data not present at {generate.DATA}")
    for filename, make in generate.GENERATORS.items():
        assert (EXAMPLES_DIR / filename).read_text() == make(generate.DATA), (
            f"{filename} is stale: run .venv/bin/python manifests/examples/generate.py")


def test_diffserve_quality_curve() -> None:
    fid = _generator().fid_at
    assert fid(0.0) == pytest.approx(18.55) and fid(0.4) == pytest.approx(16.79)
    assert fid(1.0) == pytest.approx(22.77) and fid(0.2) == pytest.approx((18.55 + 16.79) / 2)


# ---------------------------------------------------------------------------------------------------
# (c) broken manifests: rejected by the CRD schema (or left to CEL) and by spec.py, at the right path
# ---------------------------------------------------------------------------------------------------


def test_enough_invalid_cases() -> None:
    assert len(INVALID_PIPELINES) >= 80
    ids = [c.id for c in INVALID_PIPELINES]
    assert len(ids) == len(set(ids))
    assert {c.layer for c in INVALID_PIPELINES} == {"schema", "cel", "parser"}


@pytest.mark.parametrize("case", INVALID_PIPELINES, ids=lambda c: c.id)
def test_invalid_manifest_is_rejected(case: InvalidPipeline) -> None:
    document = case.build()
    assert document != load(EXAMPLES_DIR / case.base), "the mutation changed nothing"
    errors = schema_error_paths(document)
    if case.layer == "schema":
        assert any(path_under(p, case.path) for p in errors), f"schema errors at {errors}, wanted {case.path}"
    else:  # CEL (API server) or nobody but the parser: the plain schema must accept it
        assert errors == [], f"expected only a {case.layer} rule to reject it, schema says {errors}"
    with pytest.raises(SpecError) as info:
        parse_pipeline(document)
    assert path_under(info.value.path, case.path), f"SpecError at {info.value.path}, wanted {case.path}"
    assert path_under(case.api_server_path, case.path)


def test_every_cel_rule_has_an_invalid_case() -> None:
    messages = {rule["message"] for _, _, rule in cel_rules()}
    named = {c.rule for c in INVALID_PIPELINES if c.layer == "cel"}
    assert named <= messages, f"cases name unknown rules: {named - messages}"
    assert messages <= named, f"CEL rules without a broken manifest: {messages - named}"


def test_invalid_cases_do_not_share_state() -> None:
    before = copy.deepcopy(load(EXAMPLES_DIR / "agent-workflow.yaml"))
    for case in INVALID_PIPELINES:
        case.build()
    assert load(EXAMPLES_DIR / "agent-workflow.yaml") == before


# ---------------------------------------------------------------------------------------------------
# (d) printer columns
# ---------------------------------------------------------------------------------------------------

COLUMN_TYPES = {"number": {"number", "integer"}, "integer": {"integer"}, "string": {"string"},
                "boolean": {"boolean"}, "date": {"string"}}
OBJECT_META = {"name", "namespace", "creationTimestamp", "generation", "uid", "labels", "annotations"}


def _column_node(json_path: str) -> dict[str, Any] | None:
    """Resolve a printer-column JSONPath through declared properties; None for ObjectMeta fields."""
    steps = re.findall(r"\.(\w+)|\[\?\(@\.(\w+)==\"[^\"]*\"\)\]", json_path)
    assert steps, json_path
    node = SCHEMA
    for i, (name, filter_field) in enumerate(steps):
        if i == 0 and name == "metadata":
            assert len(steps) == 2 and steps[1][0] in OBJECT_META, json_path
            return None
        if filter_field:
            assert node["type"] == "array", f"{json_path}: filter on a non-list"
            node = node["items"]
            assert filter_field in node["properties"], f"{json_path}: filter field {filter_field} not declared"
        else:
            assert name in node.get("properties", {}), f"{json_path}: {name} is not declared in the schema"
            node = node["properties"][name]
    return node


def test_printer_columns_refer_to_declared_fields() -> None:
    columns = VERSION["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == ["SLO", "Ready", "Solver", "Load", "Accuracy", "Cost", "Age"]
    for column in columns:
        node = _column_node(column["jsonPath"])
        if node is None:
            assert column["type"] == "date"
            continue
        assert node.get("type") in COLUMN_TYPES[column["type"]], f"{column['name']}: {node.get('type')}"


def test_printer_column_values_resolve_on_a_sample() -> None:
    # What kubectl would print for an example with a status the operator writes.
    doc = load(EXAMPLES_DIR / "ipa-video.yaml")
    doc["status"] = {"conditions": [{"type": "Progressing", "status": "False"}, {"type": "Ready", "status": "True"}],
                     "solverStatus": "optimal", "observedLoadRps": 12.0, "plan": {"accuracy": 0.43, "cost": 3.0}}
    values = {}
    for column in VERSION["additionalPrinterColumns"][:-1]:
        node: Any = doc
        expression = column["jsonPath"]
        match = re.fullmatch(r"\.status\.conditions\[\?\(@\.type==\"(\w+)\"\)\]\.status", expression)
        if match:
            node = next(c["status"] for c in doc["status"]["conditions"] if c["type"] == match.group(1))
        else:
            for name in expression.strip(".").split("."):
                node = node[name]
        values[column["name"]] = node
    assert values == {"SLO": 1930, "Ready": "True", "Solver": "optimal", "Load": 12.0, "Accuracy": 0.43, "Cost": 3.0}
