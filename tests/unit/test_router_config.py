"""Router config: parsing, errors that name the field, JSON round trip, live partial updates, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from paretoserve.planner.spec import RouterKind
from paretoserve.shell.main import main
from paretoserve.workers.router.config import (
    apply_update,
    config_to_json,
    load_config_text,
    origin,
    origins,
    parse_config,
)
from paretoserve.workers.router.errors import ConfigError

UP = "http://127.0.0.1:8000"


def full() -> dict[str, Any]:
    return {
        "pipeline": "digits",
        "stages": [
            {"name": "detect", "dependsOn": [], "variants": {"mlp_small": 3, "cnn_small": 1}, "cascade": None},
            {"name": "classify", "dependsOn": ["detect"], "variants": {},
             "cascade": {"light": "tiny_linear", "heavy": "cnn_large", "router": "hybrid", "threshold": 0.8,
                         "discriminator": "discriminator", "preRouteThreshold": 0.4}},
        ],
        "upstreams": {m: [UP, "http://127.0.0.1:8001/"] for m in
                      ("mlp_small", "cnn_small", "tiny_linear", "cnn_large", "discriminator")},
        "deadlineHeader": "x-paretoserve-deadline-ms",
        "queue": {"maxSize": 10, "concurrency": 2},
        "fallback": {"heavyToLight": False, "lightToHeavy": True},
        "timeouts": {"connectMs": 100, "readMs": 2000, "defaultDeadlineMs": 500},
        "limits": {"maxConnections": 8},
        "transport": "httpx",
    }


def test_full_config_parses_into_frozen_dataclasses() -> None:
    config = parse_config(full())

    assert config.pipeline == "digits"
    assert config.order == ("detect", "classify")
    detect, classify = config.stages
    assert detect.variants == (("mlp_small", 3.0), ("cnn_small", 1.0))
    assert classify.depends_on == ("detect",)
    assert classify.cascade is not None
    assert classify.cascade.router is RouterKind.HYBRID
    assert (classify.cascade.threshold, classify.cascade.pre_route_threshold) == (0.8, 0.4)
    assert classify.cascade.check == "discriminator"
    assert config.upstreams["cnn_large"] == (UP, "http://127.0.0.1:8001")  # trailing slash dropped
    assert (config.queue.max_size, config.queue.concurrency) == (10, 2)
    assert (config.fallback.heavy_to_light, config.fallback.light_to_heavy) == (False, True)
    assert config.timeouts.default_deadline_ms == 500
    assert config.limits.max_connections == 8
    with pytest.raises(AttributeError):
        config.pipeline = "other"  # type: ignore[misc]


def test_defaults_and_default_upstreams() -> None:
    config = parse_config({"pipeline": "p", "stages": [{"name": "s", "variants": {"m": 1}}]},
                          default_upstreams=[UP])

    assert config.upstreams == {"m": (UP,)}
    assert config.deadline_header == "x-paretoserve-deadline-ms"
    assert (config.queue.max_size, config.queue.concurrency) == (1024, 64)
    assert config.fallback.heavy_to_light and config.fallback.light_to_heavy and config.fallback.other_variants
    assert config.timeouts.default_deadline_ms is None
    assert config.transport == "fast"


def test_json_round_trip() -> None:
    config = parse_config(full())

    again = parse_config(json.loads(json.dumps(config_to_json(config))))

    assert again == config


def _set(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    target: Any = raw
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        ("pipeline", "has space", "pipeline", "must be a string"),
        ("stages", [], "stages", "non-empty list"),
        ("stages.0.name", 3, "stages[0].name", "must be a string"),
        ("stages.1.name", "detect", "stages[1].name", "duplicate"),
        ("stages.1.dependsOn", ["nope"], "stages[1].dependsOn", "unknown stage 'nope'"),
        ("stages.0.dependsOn", ["classify"], "stages[0].dependsOn", "cycle"),
        ("stages.0.variants", {}, "stages[0].variants", "at least one variant"),
        ("stages.0.variants", {"mlp_small": 0}, "stages[0].variants", "positive total"),
        ("stages.0.variants", {"mlp_small": -1}, "stages[0].variants.mlp_small", ">= 0"),
        ("stages.0.variants", {"mlp_small": True}, "stages[0].variants.mlp_small", "must be a number"),
        ("stages.0.weights", 1, "stages[0].weights", "unknown field"),
        ("stages.1.cascade.threshold", 1.5, "stages[1].cascade.threshold", "in [0, 1]"),
        ("stages.1.cascade.threshold", "0.5", "stages[1].cascade.threshold", "must be a number"),
        ("stages.1.cascade.router", "magic", "stages[1].cascade.router", "one of confidence"),
        ("stages.1.cascade.heavy", "tiny_linear", "stages[1].cascade.heavy", "must differ"),
        ("stages.1.cascade.preRouteThreshold", None, "stages[1].cascade.preRouteThreshold", "needs a"),
        ("stages.1.cascade.preRouteThreshold", -0.1, "stages[1].cascade.preRouteThreshold", "in [0, 1]"),
        ("stages.1.variants", {"mlp_small": 1}, "stages[1].variants.mlp_small", "cascade's models"),
        ("upstreams.cnn_large", [], "upstreams.cnn_large", "non-empty list"),
        ("upstreams.cnn_large", ["ftp://x"], "upstreams.cnn_large[0]", "http(s) base URL"),
        ("upstreams.cnn_large", ["http://h:notaport"], "upstreams.cnn_large[0]", "malformed port"),
        ("upstreams.cnn_large", _DELETE, "upstreams.cnn_large", "no upstream"),
        ("upstreams.cnn_large", ["http://u:p@127.0.0.1:8000"], "upstreams.cnn_large[0]", "credentials"),
        ("upstreams.cnn_large", ["http://127.0.0.1:8000/?"], "upstreams.cnn_large[0]", "http(s) base URL"),
        ("upstreams.cnn_large", ["http://127.0.0.1:8000#x"], "upstreams.cnn_large[0]", "http(s) base URL"),
        ("upstreams.cnn_large", ["http://127.0.0.1:8000/a b"], "upstreams.cnn_large[0]", "http(s) base URL"),
        ("upstreams.cnn_large", ["http:///v2"], "upstreams.cnn_large[0]", "http(s) base URL"),
        ("upstreams.cnn_large", ["http://127.0.0.1:8000\r\nX: y"], "upstreams.cnn_large[0]", "http(s) base URL"),
        ("upstreams.cnn_large", [5], "upstreams.cnn_large[0]", "http(s) base URL"),
        ("stages.0.variants", {"../etc": 1}, "stages[0].variants.../etc", "model names must match"),
        ("stages.0.variants", {"-flag": 1}, "stages[0].variants.-flag", "model names must match"),
        ("stages.0.variants", {"x" * 65: 1}, f"stages[0].variants.{'x' * 65}", "model names must match"),
        ("deadlineHeader", "X Deadline", "deadlineHeader", "must be a string"),
        ("deadlineHeader", "x-deadline\r\ninjected: 1", "deadlineHeader", "must be a string"),
        ("deadlineHeader", "x" * 65, "deadlineHeader", "must be a string"),
        ("deadlineHeader", "-x", "deadlineHeader", "must be a string"),
        ("sloMs", 0, "sloMs", "> 0"),
        ("sloMs", "50", "sloMs", "must be a number"),
        ("queue.maxSize", 0, "queue.maxSize", "integer >= 1"),
        ("queue.concurrency", 1.5, "queue.concurrency", "integer >= 1"),
        ("queue.depth", 3, "queue.depth", "unknown field"),
        ("fallback.heavyToLight", "yes", "fallback.heavyToLight", "true or false"),
        ("timeouts.readMs", 0, "timeouts.readMs", "> 0"),
        ("timeouts.defaultDeadlineMs", -5, "timeouts.defaultDeadlineMs", "> 0"),
        ("limits.maxConnections", 0, "limits.maxConnections", "integer >= 1"),
        ("transport", "h3", "transport", "'fast' or 'httpx'"),
        ("colour", "blue", "colour", "unknown field"),
    ],
)
def test_errors_name_the_field(path: str, value: Any, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(_set(full(), path, value))

    assert raised.value.field == field
    assert words in str(raised.value)
    assert str(raised.value).startswith(f"{field}: ")
    assert raised.value.status == 400


@pytest.mark.parametrize(
    ("cascade", "field", "words"),
    [
        ({"router": "discriminator"}, "discriminator", "needs a discriminator"),
        ({"router": "confidence", "discriminator": "discriminator"}, "discriminator", "not used"),
        ({"router": "prompt", "discriminator": "discriminator", "preRouteThreshold": 0.3}, "discriminator",
         "not used"),
        ({"router": "confidence", "preRouteThreshold": 0.3}, "preRouteThreshold", "not used"),
    ],
)
def test_router_kinds_check_their_fields(cascade: dict[str, Any], field: str, words: str) -> None:
    raw = {"pipeline": "p", "stages": [{"name": "s", "cascade": {"light": "a", "heavy": "b", "threshold": 0.5,
                                                                 **cascade}}]}

    with pytest.raises(ConfigError) as raised:
        parse_config(raw, default_upstreams=[UP])

    assert raised.value.field == f"stages[0].cascade.{field}"
    assert words in raised.value.detail


def test_not_json_and_not_an_object() -> None:
    with pytest.raises(ConfigError, match="^config: not valid JSON"):
        load_config_text("{")
    with pytest.raises(ConfigError, match="^config: must be an object"):
        load_config_text("[]")


def test_live_update_of_threshold_weights_upstreams_and_fallback() -> None:
    config = parse_config(full())
    patch = {
        "stages": [{"name": "classify", "cascade": {"threshold": 0.95, "preRouteThreshold": 0.2}},
                   {"name": "detect", "variants": {"mlp_small": 1, "cnn_small": 1}}],
        "upstreams": {"cnn_large": ["http://10.0.0.9:8000"], "spare": [UP]},
        "fallback": {"heavyToLight": True},
    }

    updated = apply_update(config, patch)

    cascade = updated.stage("classify").cascade
    assert cascade is not None and (cascade.threshold, cascade.pre_route_threshold) == (0.95, 0.2)
    assert updated.stage("detect").variants == (("mlp_small", 1.0), ("cnn_small", 1.0))
    assert updated.upstreams["cnn_large"] == ("http://10.0.0.9:8000",)
    assert updated.upstreams["spare"] == (UP,)
    assert updated.fallback.heavy_to_light
    assert config == parse_config(full())  # the old config is untouched


def test_live_updates_may_only_use_the_configured_origins() -> None:
    config = parse_config(full())
    allowed = origins(config)
    assert allowed == {"http://127.0.0.1:8000", "http://127.0.0.1:8001"}

    moved = apply_update(config, {"upstreams": {"cnn_large": ["http://127.0.0.1:8001/"]}}, allowed_origins=allowed)

    assert moved.upstreams["cnn_large"] == ("http://127.0.0.1:8001",)
    for url in ("http://attacker.example", "http://127.0.0.1:8002", "https://127.0.0.1:8000", "http://localhost:8000"):
        with pytest.raises(ConfigError, match="not an upstream origin") as raised:
            apply_update(config, {"upstreams": {"cnn_large": [UP, url]}}, allowed_origins=allowed)
        assert raised.value.field == "upstreams.cnn_large[1]"
    assert origin("HTTP://Example.COM/x") == "http://example.com:80" and origin("https://[::1]") == "https://[::1]:443"


def test_slo_caps_round_trip() -> None:
    config = parse_config({**full(), "sloMs": 50})
    assert config.slo_ms == 50.0 and parse_config(config_to_json(config)) == config
    with pytest.raises(ConfigError, match="cannot be changed live"):
        apply_update(config, {"sloMs": 10})


def test_live_update_can_drop_an_unused_upstream_but_not_a_used_one() -> None:
    config = apply_update(parse_config(full()), {"upstreams": {"spare": [UP]}})

    assert "spare" not in apply_update(config, {"upstreams": {"spare": None}}).upstreams
    with pytest.raises(ConfigError) as raised:
        apply_update(config, {"upstreams": {"cnn_large": None}})
    assert raised.value.field == "upstreams.cnn_large"


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"pipeline": "x"}, "pipeline", "cannot be changed live"),
        ({"queue": {"concurrency": 3}}, "queue", "cannot be changed live"),
        ({"stages": [{"name": "classify", "dependsOn": []}]}, "stages[0].dependsOn", "cannot be changed live"),
        ({"stages": [{"name": "classify", "cascade": {"light": "x"}}]}, "stages[0].cascade.light",
         "cannot be changed live"),
        ({"stages": [{"name": "nope"}]}, "stages[0].name", "no stage named 'nope'"),
        ({"stages": [{"name": "detect", "cascade": {"threshold": 0.5}}]}, "stages[0].cascade", "has no cascade"),
        ({"stages": [{"name": "detect"}, {"name": "classify", "cascade": {"threshold": 2}}]},
         "stages[1].cascade.threshold", "in [0, 1]"),
        ({"stages": [{"name": "detect", "variants": {"unknown_model": 1}}]}, "upstreams.unknown_model",
         "no upstream"),
        ({"stages": {"classify": {}}}, "stages", "list of stage updates"),
        ({"upstreams": {"cnn_large": "http://x"}}, "upstreams.cnn_large", "non-empty list"),
        ({"fallback": {"heavyToLight": 1}}, "fallback.heavyToLight", "true or false"),
        ([], "config", "must be an object"),
    ],
)
def test_bad_live_updates_name_the_field_and_change_nothing(patch: Any, field: str, words: str) -> None:
    config = parse_config(full())

    with pytest.raises(ConfigError) as raised:
        apply_update(config, patch)

    assert raised.value.field == field
    assert words in raised.value.detail
    assert config == parse_config(full())


def test_cli_rejects_a_bad_config_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.json"
    path.write_text(json.dumps(_set(full(), "stages.1.cascade.threshold", 7)))

    code = main(["router", "--config", str(path)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"paretoserve: error: {path}: stages[1].cascade.threshold: must be in [0, 1], got 7"


def test_cli_names_an_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["router", "--config", str(tmp_path / "missing.json")]) == 2
    assert "config: cannot read" in capsys.readouterr().err
