"""The sidecar's knobs for a token-generating model: the plan's batch becomes the decoupled model's
``max_sequences`` parameter, and every change of it is a reload (never Triton's in-place instance update, which
stalled running streams on Triton 2.51), while an unchanged model is not reloaded at pod start.

Checked on the exact config the export writes (``render_llm_config``) and against the names the backend and the
local runtime read (``serving.PARAM_MAX_SEQUENCES``, ``served.PARAM_INSTANCES``)."""

from __future__ import annotations

from typing import Any

import pytest

from paretoserve.workers.llm.serving import PARAM_MAX_SEQUENCES, LLMServingSpec, render_llm_config
from paretoserve.workers.router import worker_knobs
from paretoserve.workers.router.errors import ConfigError
from paretoserve.workers.router.worker_knobs import Knobs, is_generation, override_config, parse_knobs
from paretoserve.workers.runtime.served import PARAM_INSTANCES
from paretoserve.workers.triton.repository import to_pbtxt


def _served(max_sequences: int = 8) -> dict[str, Any]:
    """The generation model's config as Triton's ``GET /v2/models/{m}/config`` returns it (JSON names)."""
    config = render_llm_config(LLMServingSpec("arith-large", "arith-large", "weights.npz", max_sequences=max_sequences))
    to_pbtxt(config)  # the same object renders the exported config.pbtxt
    return {**config, "instance_group": [{"name": "arith-large", "count": 1, "kind": "KIND_CPU"}],
            "parameters": {k: dict(v) for k, v in config["parameters"].items()}}


def test_the_parameter_names_are_the_ones_the_backend_and_the_runtime_read() -> None:
    assert worker_knobs.PARAM_MAX_SEQUENCES == PARAM_MAX_SEQUENCES
    assert worker_knobs.PARAM_INSTANCES == PARAM_INSTANCES


def test_a_decoupled_model_with_max_sequences_is_a_generation_model() -> None:
    assert is_generation(_served())
    assert not is_generation({"instance_group": [{"count": 1}], "max_batch_size": 32})
    assert not is_generation({"model_transaction_policy": {"decoupled": True}, "parameters": {}})


def test_max_sequences_is_written_and_reloads() -> None:
    current = _served(8)
    out = override_config(current, Knobs(1, max_sequences=4))
    assert out["parameters"][PARAM_MAX_SEQUENCES] == {"string_value": "4"}
    assert "dynamic_batching" not in out and out["max_batch_size"] == 0
    assert out != current  # a parameter change: Triton reloads the model
    assert current["parameters"][PARAM_MAX_SEQUENCES] == {"string_value": "8"}  # input untouched


def test_unchanged_knobs_change_nothing_so_a_new_pod_does_not_reload() -> None:
    current = _served(8)
    assert override_config(current, Knobs(1, max_sequences=8)) == current
    assert override_config(current, Knobs(1)) == current


def test_an_instance_change_is_also_a_parameter_change_so_it_reloads() -> None:
    current = _served(4)
    out = override_config(current, Knobs(2, max_sequences=4))
    assert out["instance_group"][0]["count"] == 2
    assert out["parameters"][PARAM_INSTANCES] == {"string_value": "2"}
    back = override_config(out, Knobs(1, max_sequences=4))  # once written, kept in step
    assert back["parameters"][PARAM_INSTANCES] == {"string_value": "1"} and back != out


def test_max_sequences_for_a_classifier_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        override_config({"name": "cnn_large", "instance_group": [{"count": 1}], "max_batch_size": 32},
                        Knobs(1, max_sequences=4))
    assert info.value.field == "models.cnn_large.maxSequences"


@pytest.mark.parametrize(("knobs", "field"), [
    ({"instanceCount": 1, "maxSequences": 0}, "models.m.maxSequences"),
    ({"instanceCount": 1, "maxSequences": 4097}, "models.m.maxSequences"),
    ({"instanceCount": 1, "maxSequences": "4"}, "models.m.maxSequences"),
    ({"instanceCount": 1, "maxSequences": 4, "preferredBatchSize": 4}, "models.m.maxSequences"),
])
def test_bad_max_sequences_name_the_field(knobs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_knobs({"models": {"m": knobs}}, served={"m"})
    assert info.value.field == field


def test_max_sequences_is_parsed() -> None:
    assert parse_knobs({"models": {"m": {"instanceCount": 2, "maxSequences": 16}}}) == {
        "m": Knobs(2, max_sequences=16)}
