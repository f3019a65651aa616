"""Triton model-repository rendering and the Prometheus metrics parser, without a server.

The rendered config must mean the same thing in both forms Triton accepts (``config.pbtxt`` at
start-up, JSON as a load-API override): both are parsed here with Triton's own ``ModelConfig``
protobuf schema and compared. Invalid specs must fail at construction, naming the field. The
metrics parser runs on text captured from the real server (Triton 2.51 from nvidia-pytriton 0.7.0,
via ``python -m paretoserve.research.benchmarks.triton --metrics-out``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from paretoserve.workers.triton.backend_model import config_parameters, split_outputs
from paretoserve.workers.triton.control import ModelMetrics, parse_metrics
from paretoserve.workers.triton.repository import (
    InvalidSpecError,
    QueuePolicy,
    TritonModelSpec,
    backend_model_source,
    render_config,
    render_config_pbtxt,
    render_override_json,
    spec_from_cached_variant,
    write_model,
    write_repository,
)
from paretoserve.workers.triton.variant_engine import Prediction

FIXTURE = Path(__file__).parent / "fixtures" / "triton_metrics_2.51.txt"

SPEC = TritonModelSpec(
    name="cnn_large",
    variant="cnn_large",
    weights_dir="/cache/models/abc/cnn_large",
    max_batch_size=16,
    preferred_batch_sizes=(4, 8),
    max_queue_delay_us=250,
    instance_count=2,
    cpu_threads_per_instance=3,
    queue_policy=QueuePolicy(timeout_us=5000, timeout_action="DELAY", max_queue_size=64),
)


def _parse_pbtxt(text: str) -> Any:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _parse_json(text: str) -> Any:
    return json_format.Parse(text, model_config_pb2.ModelConfig())


def test_pbtxt_carries_every_knob_of_the_spec() -> None:
    config = _parse_pbtxt(render_config_pbtxt(SPEC))

    assert config.name == "cnn_large"
    assert config.backend == "paretoserve_onnx"
    assert config.max_batch_size == 16
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("IMAGE", "TYPE_FP32", [8, 8])
    ]
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.output] == [
        ("PROBS", "TYPE_FP32", [10]),
        ("CONFIDENCE", "TYPE_FP32", [1]),
        ("LABEL", "TYPE_INT64", [1]),
    ]
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [4, 8]
    assert batching.max_queue_delay_microseconds == 250
    policy = batching.default_queue_policy
    assert (policy.default_timeout_microseconds, policy.max_queue_size) == (5000, 64)
    assert model_config_pb2.ModelQueuePolicy.TimeoutAction.Name(policy.timeout_action) == "DELAY"
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [
        (2, "KIND_CPU")
    ]
    assert {key: value.string_value for key, value in config.parameters.items()} == {
        "variant": "cnn_large",
        "weights_dir": "/cache/models/abc/cnn_large",
        "cpu_threads": "3",
    }


def test_every_instance_is_warmed_with_zero_images_at_batch_one_and_at_the_largest_batch() -> None:
    """A new instance's first request must not pay ONNX Runtime's first run: Triton runs these samples on each
    instance before it counts as ready, at load and when a knob change adds one in place."""
    config = _parse_pbtxt(render_config_pbtxt(SPEC))

    samples = [(w.name, w.batch_size, {name: (model_config_pb2.DataType.Name(i.data_type), list(i.dims), i.zero_data)
                                       for name, i in w.inputs.items()}) for w in config.model_warmup]
    assert samples == [("zeros_batch_1", 1, {"IMAGE": ("TYPE_FP32", [8, 8], True)}),
                       ("zeros_batch_16", 16, {"IMAGE": ("TYPE_FP32", [8, 8], True)})]
    single = _parse_pbtxt(render_config_pbtxt(replace(SPEC, max_batch_size=1, preferred_batch_sizes=())))
    assert [w.batch_size for w in single.model_warmup] == [1]


def test_pbtxt_text_uses_bare_enums_and_quoted_strings() -> None:
    text = render_config_pbtxt(SPEC)

    assert 'backend: "paretoserve_onnx"\n' in text
    assert "kind: KIND_CPU\n" in text
    assert "data_type: TYPE_FP32\n" in text
    assert "timeout_action: DELAY\n" in text
    assert "preferred_batch_size: [ 4, 8 ]\n" in text
    assert 'key: "cpu_threads"\n' in text


def test_json_override_is_the_same_config_as_the_pbtxt() -> None:
    override = render_override_json(SPEC)

    assert json.loads(override) == render_config(SPEC)
    assert _parse_json(override) == _parse_pbtxt(render_config_pbtxt(SPEC))


def test_json_override_shape() -> None:
    config = json.loads(render_override_json(SPEC))

    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert config["dynamic_batching"] == {
        "preferred_batch_size": [4, 8],
        "max_queue_delay_microseconds": 250,
        "default_queue_policy": {
            "timeout_action": "DELAY",
            "default_timeout_microseconds": 5000,
            "allow_timeout_override": False,
            "max_queue_size": 64,
        },
    }
    assert config["parameters"]["cpu_threads"] == {"string_value": "3"}


def test_priority_levels_render_as_a_map_in_both_forms() -> None:
    spec = replace(
        SPEC,
        priority_levels=2,
        default_priority_level=2,
        priority_queue_policies=((1, QueuePolicy(max_queue_size=8)),),
    )
    config = _parse_pbtxt(render_config_pbtxt(spec))

    assert config.dynamic_batching.priority_levels == 2
    assert config.dynamic_batching.default_priority_level == 2
    assert config.dynamic_batching.priority_queue_policy[1].max_queue_size == 8
    assert _parse_json(render_override_json(spec)) == config


def test_with_instance_count_changes_only_the_count() -> None:
    scaled = render_config(SPEC.with_instance_count(5))
    original = render_config(SPEC)

    assert scaled["instance_group"] == [{"count": 5, "kind": "KIND_CPU"}]
    assert {k: v for k, v in scaled.items() if k != "instance_group"} == {
        k: v for k, v in original.items() if k != "instance_group"
    }


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("name", {"name": "has space"}),
        ("name", {"name": ""}),
        ("variant", {"variant": ""}),
        ("weights_dir", {"weights_dir": ""}),
        ("num_classes", {"num_classes": 1}),
        ("input_shape", {"input_shape": (8, 0)}),
        ("max_batch_size", {"max_batch_size": 0}),
        ("preferred_batch_sizes", {"preferred_batch_sizes": (4, 32)}),
        ("preferred_batch_sizes", {"preferred_batch_sizes": (0,)}),
        ("max_queue_delay_us", {"max_queue_delay_us": -1}),
        ("instance_count", {"instance_count": 0}),
        ("cpu_threads_per_instance", {"cpu_threads_per_instance": 0}),
        ("priority_levels", {"priority_levels": -1}),
        ("priority_levels", {"default_priority_level": 1}),
        ("default_priority_level", {"priority_levels": 2, "default_priority_level": 3}),
        (
            "priority_queue_policies",
            {"priority_levels": 2, "default_priority_level": 1, "priority_queue_policies": ((3, QueuePolicy()),)},
        ),
    ],
)
def test_invalid_spec_names_the_field(field: str, changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpecError, match=rf"^TritonModelSpec\.{field}: ") as raised:
        replace(SPEC, **changes)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("timeout_us", {"timeout_us": -5}),
        ("timeout_action", {"timeout_action": "DROP"}),
        ("max_queue_size", {"max_queue_size": -1}),
    ],
)
def test_invalid_queue_policy_names_the_field(field: str, changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpecError, match=rf"^QueuePolicy\.{field}: ") as raised:
        QueuePolicy(**changes)
    assert raised.value.field == field


def test_write_model_lays_out_a_triton_model_directory(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, SPEC)

    assert model_dir == tmp_path / "cnn_large"
    assert (model_dir / "config.pbtxt").read_text() == render_config_pbtxt(SPEC)
    assert sorted(p.name for p in model_dir.rglob("*")) == ["1", "config.pbtxt"]  # the backend serves it
    assert "class TritonPythonModel" in backend_model_source()


def test_write_repository_rejects_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpecError, match="duplicate model names"):
        write_repository(tmp_path, [SPEC, SPEC.with_instance_count(1)])


def test_spec_from_cached_variant_reads_shape_and_classes(tmp_path: Path) -> None:
    variant_dir = tmp_path / "discriminator"
    variant_dir.mkdir()
    metadata = {"variant": "discriminator", "class_labels": ["light_right", "light_wrong"], "input_shape": [8, 8]}
    (variant_dir / "metadata.json").write_text(json.dumps(metadata))

    spec = spec_from_cached_variant(variant_dir, name="disc", instance_count=2)

    assert (spec.name, spec.variant, spec.num_classes, spec.input_shape) == ("disc", "discriminator", 2, (8, 8))
    assert spec.weights_dir == str(variant_dir.resolve())
    assert spec.instance_count == 2


# --- the Python backend's pure helpers --------------------------------------------------------


def test_backend_reads_string_parameters_from_the_model_config() -> None:
    assert config_parameters(render_config(SPEC)) == {
        "variant": "cnn_large",
        "weights_dir": "/cache/models/abc/cnn_large",
        "cpu_threads": "3",
    }


def test_backend_splits_a_dynamic_batch_back_per_request() -> None:
    probs = np.arange(12, dtype=np.float32).reshape(6, 2)
    prediction = Prediction(probs=probs, confidence=probs.max(axis=1), label=probs.argmax(axis=1))

    parts = split_outputs(prediction, [1, 3, 2])

    assert [part["PROBS"].shape for part in parts] == [(1, 2), (3, 2), (2, 2)]
    assert [part["CONFIDENCE"].shape for part in parts] == [(1, 1), (3, 1), (2, 1)]
    np.testing.assert_array_equal(np.concatenate([part["PROBS"] for part in parts]), probs)
    np.testing.assert_array_equal(parts[1]["LABEL"].ravel(), [1, 1, 1])


def test_a_fused_model_has_each_tasks_outputs_and_names_its_tasks() -> None:
    fused = TritonModelSpec(name="fused_abc", variant="fused_abc", weights_dir=".", input_shape=(1, 32, 32),
                            tasks=(("digit", 10), ("parity", 2)))
    config = render_config(fused)
    assert [(o["name"], o["dims"]) for o in config["output"]] == [
        ("PROBS_digit", [10]), ("CONFIDENCE_digit", [1]), ("LABEL_digit", [1]),
        ("PROBS_parity", [2]), ("CONFIDENCE_parity", [1]), ("LABEL_parity", [1]),
    ]
    assert config_parameters(config)["tasks"] == "digit,parity"
    assert "tasks" not in config_parameters(render_config(SPEC))
    assert 'name: "PROBS_parity"' in render_config_pbtxt(fused)


@pytest.mark.parametrize("tasks", [(("digit", 1),), (("a.b", 2),), (("x", 2), ("x", 3))])
def test_invalid_tasks_name_the_field(tasks: tuple[tuple[str, int], ...]) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        TritonModelSpec(name="m", variant="m", weights_dir=".", tasks=tasks)
    assert caught.value.field == "tasks"


def test_backend_splits_a_multi_task_batch_per_request_and_task() -> None:
    def prediction(classes: int) -> Prediction:
        probs = np.full((3, classes), 1.0 / classes, dtype=np.float32)
        return Prediction(probs=probs, confidence=probs.max(axis=1), label=np.arange(3, dtype=np.int64))

    parts = split_outputs({"digit": prediction(10), "parity": prediction(2)}, [2, 1])
    assert sorted(parts[0]) == ["CONFIDENCE_digit", "CONFIDENCE_parity", "LABEL_digit", "LABEL_parity",
                                "PROBS_digit", "PROBS_parity"]
    assert parts[0]["PROBS_digit"].shape == (2, 10) and parts[1]["PROBS_parity"].shape == (1, 2)
    np.testing.assert_array_equal(parts[1]["LABEL_digit"].ravel(), [2])


# --- metrics parser ------------------------------------------------------------------------------


def test_metrics_parser_on_text_captured_from_triton() -> None:
    metrics = parse_metrics(FIXTURE.read_text())

    assert set(metrics) == {"cnn_large", "tiny_linear"}
    large = metrics["cnn_large"]
    assert large.inference_count == 7260
    assert large.exec_count == 440
    assert large.request_success == 440
    assert large.request_failure == 0
    assert large.average_batch_size == pytest.approx(7260 / 440)
    assert large.queue_duration_us > 0
    assert large.compute_infer_duration_us > 0
    assert large.request_duration_us >= large.queue_duration_us + large.compute_infer_duration_us
    assert large.pending_requests == 0


def test_metrics_parser_sums_failures_over_reasons() -> None:
    tiny = parse_metrics(FIXTURE.read_text())["tiny_linear"]

    assert tiny.request_failure == 3  # three queue-timeout rejections, reason="REJECTED"
    assert tiny.request_success == 440


def test_metrics_parser_ignores_other_families_and_sums_versions() -> None:
    text = (
        "# TYPE nv_inference_count counter\n"
        'nv_inference_count{model="m",version="1"} 3\n'
        'nv_inference_count{model="m",version="2"} 4\n'
        "# TYPE nv_cpu_utilization gauge\n"
        "nv_cpu_utilization 0.5\n"
        "# TYPE nv_inference_pending_request_count gauge\n"
        'nv_inference_pending_request_count{model="m",version="2"} 2\n'
    )

    assert parse_metrics(text) == {"m": ModelMetrics(model="m", inference_count=7, pending_requests=2)}
    assert parse_metrics("") == {}


def test_metrics_difference_between_snapshots() -> None:
    earlier = ModelMetrics(model="m", inference_count=10, exec_count=5, queue_duration_us=100, pending_requests=3)
    later = ModelMetrics(model="m", inference_count=30, exec_count=7, queue_duration_us=160, pending_requests=1)

    delta = later.since(earlier)

    assert (delta.inference_count, delta.exec_count, delta.queue_duration_us) == (20, 2, 60)
    assert delta.pending_requests == 1
    assert delta.average_batch_size == 10
