"""Pure rendering of a Triton model repository entry from a small, validated spec.

The planner decides per variant how many Triton instances to run, how many CPU threads each gets
(the local form of vertical scaling), and how dynamic batching and queueing behave. This module
turns such a decision, a frozen :class:`TritonModelSpec`, into the two forms Triton accepts: the
``config.pbtxt`` text written into the repository at start-up, and the JSON ``ModelConfig`` used
as a load-API override to change a running model (instance count changes are applied by Triton as
an in-place update, anything else as a zero-downtime reload). Both forms come from one dict, so
they cannot drift apart. Rendering is pure; :func:`write_model` is the only function touching disk.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

INPUT_NAME = "IMAGE"
OUTPUT_PROBS = "PROBS"
OUTPUT_CONFIDENCE = "CONFIDENCE"
OUTPUT_LABEL = "LABEL"
PARAM_VARIANT = "variant"
PARAM_WEIGHTS_DIR = "weights_dir"
PARAM_CPU_THREADS = "cpu_threads"
PARAM_TASKS = "tasks"
BACKEND_MODEL_RESOURCE = "backend_model.py"
ONNX_BACKEND = "paretoserve_onnx"
"""The Triton backend every ONNX variant's config names; the server's backend directory provides it, native or
in Python (:mod:`paretoserve.workers.triton.onnx_backend`)."""
ONNX_FILE = "model.onnx"
"""A variant's ONNX graph (what the backend serves), in its cache directory and in an exported entry."""


class InvalidSpecError(ValueError):
    """A spec field holds a value Triton would reject or ParetoServe cannot serve."""

    def __init__(self, owner: str, field_name: str, message: str) -> None:
        super().__init__(f"{owner}.{field_name}: {message}")
        self.field = field_name


class ProtoEnum(str):
    """A protobuf enum value: a string in JSON, a bare identifier in text format."""

    __slots__ = ()


class ProtoMap(dict[str | int, Any]):
    """A protobuf ``map<>`` field: an object in JSON, repeated key/value entries in text format."""


@dataclass(frozen=True)
class QueuePolicy:
    """Triton's ``ModelQueuePolicy``: what happens to requests that wait too long or find it full.

    ``timeout_us == 0`` means requests never time out; ``max_queue_size == 0`` means unbounded.
    """

    timeout_us: int = 0
    timeout_action: Literal["REJECT", "DELAY"] = "REJECT"
    allow_timeout_override: bool = False
    max_queue_size: int = 0

    def __post_init__(self) -> None:
        _require(self.timeout_us >= 0, self, "timeout_us", f"must be >= 0, got {self.timeout_us}")
        _require(
            self.timeout_action in ("REJECT", "DELAY"),
            self,
            "timeout_action",
            f"must be 'REJECT' or 'DELAY', got {self.timeout_action!r}",
        )
        _require(self.max_queue_size >= 0, self, "max_queue_size", f"must be >= 0, got {self.max_queue_size}")

    def to_config(self) -> dict[str, Any]:
        return {
            "timeout_action": ProtoEnum(self.timeout_action),
            "default_timeout_microseconds": self.timeout_us,
            "allow_timeout_override": self.allow_timeout_override,
            "max_queue_size": self.max_queue_size,
        }


@dataclass(frozen=True)
class TritonModelSpec:
    """One variant served by Triton's ``paretoserve_onnx`` backend, with the knobs the planner controls.

    ``weights_dir`` is the directory holding the variant's ``model.onnx`` as seen by the server process:
    the cached variant directory, or ``.`` (the model's own version directory) in an exported repository.
    ``priority_levels == 0`` disables priorities; otherwise ``default_priority_level`` must lie in
    ``1..priority_levels`` and ``priority_queue_policies`` may override the queue policy of individual levels.
    """

    name: str
    variant: str
    weights_dir: str
    num_classes: int = 10
    input_shape: tuple[int, ...] = (8, 8)
    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 100
    instance_count: int = 1
    cpu_threads_per_instance: int = 1
    queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    priority_levels: int = 0
    default_priority_level: int = 0
    priority_queue_policies: tuple[tuple[int, QueuePolicy], ...] = ()
    tasks: tuple[tuple[str, int], ...] = ()
    """A fused multi-task model's (task, classes): each task gets its own outputs (:func:`task_output`);
    empty for a single-task variant (``num_classes`` applies)."""

    def __post_init__(self) -> None:
        _require(_is_model_name(self.name), self, "name", f"must match [A-Za-z0-9_.-]+, got {self.name!r}")
        _require(bool(self.variant), self, "variant", "must not be empty")
        _require(bool(self.weights_dir), self, "weights_dir", "must not be empty")
        _require(self.num_classes >= 2, self, "num_classes", f"must be >= 2, got {self.num_classes}")
        _require(
            len(self.input_shape) > 0 and all(d >= 1 for d in self.input_shape),
            self,
            "input_shape",
            f"must be non-empty positive dims, got {self.input_shape}",
        )
        _require(self.max_batch_size >= 1, self, "max_batch_size", f"must be >= 1, got {self.max_batch_size}")
        for size in self.preferred_batch_sizes:
            _require(
                1 <= size <= self.max_batch_size,
                self,
                "preferred_batch_sizes",
                f"{size} is outside 1..max_batch_size={self.max_batch_size}",
            )
        _require(
            self.max_queue_delay_us >= 0,
            self,
            "max_queue_delay_us",
            f"must be >= 0, got {self.max_queue_delay_us}",
        )
        _require(self.instance_count >= 1, self, "instance_count", f"must be >= 1, got {self.instance_count}")
        _require(
            self.cpu_threads_per_instance >= 1,
            self,
            "cpu_threads_per_instance",
            f"must be >= 1, got {self.cpu_threads_per_instance}",
        )
        _require(self.priority_levels >= 0, self, "priority_levels", f"must be >= 0, got {self.priority_levels}")
        if self.priority_levels == 0:
            _require(
                self.default_priority_level == 0 and not self.priority_queue_policies,
                self,
                "priority_levels",
                "is 0 (no priorities) but default_priority_level or priority_queue_policies is set",
            )
        else:
            _require(
                1 <= self.default_priority_level <= self.priority_levels,
                self,
                "default_priority_level",
                f"must be in 1..{self.priority_levels}, got {self.default_priority_level}",
            )
        for task, classes in self.tasks:
            _require(_is_model_name(task) and "." not in task, self, "tasks",
                     f"task names must match [A-Za-z0-9_-]+, got {task!r}")
            _require(classes >= 2, self, "tasks", f"task {task!r} needs >= 2 classes, got {classes}")
        _require(len({task for task, _ in self.tasks}) == len(self.tasks), self, "tasks", "task names must be unique")
        for level, _ in self.priority_queue_policies:
            _require(
                1 <= level <= self.priority_levels,
                self,
                "priority_queue_policies",
                f"level {level} is outside 1..priority_levels={self.priority_levels}",
            )

    def with_instance_count(self, count: int) -> TritonModelSpec:
        """The same spec with another instance count (what the autoscaler changes most)."""
        return replace(self, instance_count=count)


def _is_model_name(name: str) -> bool:
    return bool(name) and all(ch.isascii() and (ch.isalnum() or ch in "_.-") for ch in name)


def _require(condition: bool, owner: object, field_name: str, message: str) -> None:
    if not condition:
        raise InvalidSpecError(type(owner).__name__, field_name, message)


def spec_from_cached_variant(variant_dir: Path, *, name: str | None = None, **knobs: Any) -> TritonModelSpec:
    """A spec for a variant cached by :mod:`paretoserve.workers.models`, or a model exported by ``paretoserve
    fuse`` (its entry's ``1/`` folder; ``tasks`` in its metadata.json make it multi-task).

    ``name`` defaults to the variant name; ``knobs`` are the remaining spec fields.
    """
    metadata = json.loads((variant_dir / "metadata.json").read_text())
    tasks = tuple((str(task), int(classes)) for task, classes in metadata.get("tasks", {}).items())
    return TritonModelSpec(
        name=name or metadata["variant"],
        variant=metadata["variant"],
        weights_dir=str(variant_dir.resolve()),
        num_classes=len(metadata["class_labels"]) if "class_labels" in metadata else 2,
        input_shape=tuple(metadata["input_shape"]),
        tasks=tasks,
        **knobs,
    )


def render_config(spec: TritonModelSpec) -> dict[str, Any]:
    """The model's ``ModelConfig`` as a dict (protobuf JSON field names)."""
    batching: dict[str, Any] = {
        "preferred_batch_size": list(spec.preferred_batch_sizes),
        "max_queue_delay_microseconds": spec.max_queue_delay_us,
        "default_queue_policy": spec.queue_policy.to_config(),
    }
    if spec.priority_levels:
        batching["priority_levels"] = spec.priority_levels
        batching["default_priority_level"] = spec.default_priority_level
        if spec.priority_queue_policies:
            batching["priority_queue_policy"] = ProtoMap(
                {level: policy.to_config() for level, policy in spec.priority_queue_policies}
            )
    return {
        "name": spec.name,
        "backend": ONNX_BACKEND,
        "max_batch_size": spec.max_batch_size,
        "input": [_tensor(INPUT_NAME, "TYPE_FP32", spec.input_shape)],
        "output": [
            tensor
            for task, classes in (spec.tasks or (("", spec.num_classes),))
            for tensor in (
                _tensor(task_output(OUTPUT_PROBS, task), "TYPE_FP32", (classes,)),
                _tensor(task_output(OUTPUT_CONFIDENCE, task), "TYPE_FP32", (1,)),
                _tensor(task_output(OUTPUT_LABEL, task), "TYPE_INT64", (1,)),
            )
        ],
        "dynamic_batching": batching,
        "instance_group": [{"count": spec.instance_count, "kind": ProtoEnum("KIND_CPU")}],
        "model_warmup": warmup_samples(spec),
        "parameters": ProtoMap(
            {
                PARAM_VARIANT: {"string_value": spec.variant},
                PARAM_WEIGHTS_DIR: {"string_value": spec.weights_dir},
                PARAM_CPU_THREADS: {"string_value": str(spec.cpu_threads_per_instance)},
                **({PARAM_TASKS: {"string_value": ",".join(task for task, _ in spec.tasks)}} if spec.tasks else {}),
            }
        ),
    }


def warmup_samples(spec: TritonModelSpec) -> list[dict[str, Any]]:
    """Triton's ``model_warmup``: zero images at batch 1 and at the largest batch, run on each instance before
    Triton marks it ready, at load and when an instance is added in place.

    Without it a new instance's first request pays the first ONNX Runtime run and the stub's first answer: a
    timeline of requests sent straight to Triton 2.51 at 500 requests/s (2026-12-06) showed exactly one request
    of 20-35 ms per instance added, the client-visible part of a knob change once the router stopped stalling."""
    return model_warmup("zeros", spec.max_batch_size,
                        {INPUT_NAME: {"data_type": ProtoEnum("TYPE_FP32"), "dims": list(spec.input_shape),
                                      "zero_data": True}})


def model_warmup(name: str, max_batch_size: int, inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``model_warmup`` samples ``<name>_batch_<size>`` of one row of ``inputs`` (Triton's ``ModelWarmup.Input``
    per input name; Triton repeats the row to the batch) at batch 1 and at ``max_batch_size``."""
    return [{"name": f"{name}_batch_{size}", "batch_size": size, "inputs": ProtoMap(inputs)}
            for size in sorted({1, max_batch_size})]


def task_output(output: str, task: str) -> str:
    """The name of a served output for ``task`` of a fused model (``PROBS_digit``); ``output`` when ``task``
    is empty (a single-task variant)."""
    return f"{output}_{task}" if task else output


def _tensor(name: str, data_type: str, dims: tuple[int, ...]) -> dict[str, Any]:
    return {"name": name, "data_type": ProtoEnum(data_type), "dims": list(dims)}


def render_override_json(spec: TritonModelSpec) -> str:
    """The JSON string for ``load_model(name, config=...)`` (the load API's config override)."""
    return json.dumps(render_config(spec), sort_keys=False)


def render_config_pbtxt(spec: TritonModelSpec) -> str:
    """The ``config.pbtxt`` text of the model (protobuf text format)."""
    return to_pbtxt(render_config(spec))


def to_pbtxt(message: Mapping[Any, Any], indent: int = 0) -> str:
    """Render a config dict as protobuf text format (see :class:`ProtoEnum`, :class:`ProtoMap`)."""
    lines: list[str] = []
    pad = "  " * indent
    for key, value in message.items():
        if isinstance(value, ProtoMap):
            for map_key, map_value in value.items():
                entry = {"key": map_key, "value": map_value}
                lines.append(f"{pad}{key} {{\n{to_pbtxt(entry, indent + 1)}{pad}}}\n")
        elif isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{\n{to_pbtxt(value, indent + 1)}{pad}}}\n")
        elif isinstance(value, Sequence) and not isinstance(value, str):
            if value and all(isinstance(item, Mapping) for item in value):
                blocks = ",\n".join(f"{pad}  {{\n{to_pbtxt(item, indent + 2)}{pad}  }}" for item in value)
                lines.append(f"{pad}{key} [\n{blocks}\n{pad}]\n")
            else:
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(item) for item in value)} ]\n")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}\n")
    return "".join(lines)


def _scalar(value: object) -> str:
    if isinstance(value, ProtoEnum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"cannot render {type(value).__name__} {value!r} in protobuf text format")


def backend_model_source() -> str:
    """The Python implementation of the ``paretoserve_onnx`` backend, ``model.py`` (a static file in this package;
    :mod:`.onnx_backend` installs it as a Python-based backend)."""
    return resources.files(__package__).joinpath(BACKEND_MODEL_RESOURCE).read_text()


def write_model(repository: Path, spec: TritonModelSpec) -> Path:
    """Write ``<repository>/<name>/config.pbtxt`` and the version directory ``<name>/1/``; return the model dir.
    The code that serves it is the backend's (:data:`ONNX_BACKEND`), not the repository's."""
    model_dir = repository / spec.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(render_config_pbtxt(spec))
    return model_dir


def export_model(repository: Path, spec: TritonModelSpec, variant_dir: Path) -> Path:
    """A self-contained repository entry (what a worker image bakes in): ``config.pbtxt`` whose
    ``weights_dir`` is ``.``, and the variant's ONNX graph and metadata copied into ``1/``. A server serving it
    needs the ``paretoserve_onnx`` backend (the worker image carries it)."""
    model_dir = write_model(repository, replace(spec, weights_dir="."))
    for name in (ONNX_FILE, "metadata.json"):
        source = variant_dir / name
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing: {variant_dir} is not a complete cached variant")
        shutil.copyfile(source, model_dir / "1" / name)
    return model_dir


def write_repository(repository: Path, specs: Sequence[TritonModelSpec]) -> Path:
    """Write every spec into ``repository`` (created if missing); model names must be unique."""
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidSpecError("TritonModelSpec", "name", f"duplicate model names {duplicates}")
    repository.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        write_model(repository, spec)
    return repository
