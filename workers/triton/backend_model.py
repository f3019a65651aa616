"""The Python implementation of the ``paretoserve_onnx`` backend: every ParetoServe digits variant, fused or agent
model served by Triton's Python backend (installed as ``<backends>/paretoserve_onnx/model.py``, a Python-based
backend, when the native library is not built: :mod:`paretoserve.workers.triton.onnx_backend`). The native
implementation (``native/onnx_backend``) answers alike.

One static file serves all variants: the model config's ``parameters`` say where the variant's ONNX graph
is (``weights_dir``: absolute, or relative to the model's version directory, ``.`` in an exported
repository) and how many CPU threads the instance's ONNX Runtime session may use (``cpu_threads``). Each
Triton instance is its own stub process, so threads are per instance: CPU threads per instance are the
local form of vertical scaling. ``execute`` runs the whole dynamic batch Triton hands over in one pass and
splits the result back per request.

Neither torch nor Triton's stub utilities are imported at module level: the worker image has no torch, and
``triton_python_backend_utils`` exists only inside the stub (imported in :meth:`TritonPythonModel.initialize`),
so this module stays importable and type-checkable outside.
"""

from __future__ import annotations

import gc
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from paretoserve.workers.triton.repository import (
    INPUT_NAME,
    OUTPUT_CONFIDENCE,
    OUTPUT_LABEL,
    OUTPUT_PROBS,
    PARAM_CPU_THREADS,
    PARAM_TASKS,
    PARAM_VARIANT,
    PARAM_WEIGHTS_DIR,
    task_output,
)
from paretoserve.workers.triton.variant_engine import OnnxVariant, Prediction, variant_graph


def config_parameters(model_config: dict[str, Any]) -> dict[str, str]:
    """The ``parameters`` map of a Triton model config as plain strings."""
    raw = model_config.get("parameters", {})
    return {key: str(value.get("string_value", "")) for key, value in raw.items()}


def split_outputs(prediction: Prediction | Mapping[str, Prediction],
                  sizes: list[int]) -> list[dict[str, npt.NDArray[Any]]]:
    """Cut a batched prediction back into per-request output arrays, in request order. A multi-task
    prediction (task -> prediction) gives each task's outputs under :func:`task_output` names."""
    by_task = {"": prediction} if isinstance(prediction, Prediction) else dict(prediction)
    outputs: list[dict[str, npt.NDArray[Any]]] = []
    start = 0
    for size in sizes:
        stop = start + size
        request: dict[str, npt.NDArray[Any]] = {}
        for task, part in by_task.items():
            request[task_output(OUTPUT_PROBS, task)] = part.probs[start:stop]
            request[task_output(OUTPUT_CONFIDENCE, task)] = part.confidence[start:stop].reshape(-1, 1)
            request[task_output(OUTPUT_LABEL, task)] = part.label[start:stop].reshape(-1, 1)
        outputs.append(request)
        start = stop
    return outputs


class TritonPythonModel:
    """The interface the Triton Python backend calls: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        self._pb: Any = importlib.import_module("triton_python_backend_utils")
        params = config_parameters(json.loads(args["model_config"]))
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        graph = variant_graph(params.get(PARAM_WEIGHTS_DIR, "."), version_dir)
        self._engine = OnnxVariant(graph, threads=int(params.get(PARAM_CPU_THREADS, "1")))
        self._variant = params.get(PARAM_VARIANT, "")
        self._multi_task = bool(params.get(PARAM_TASKS, ""))
        gc.collect()  # the stub's imports and session, out of the cyclic collector's walks while it serves
        gc.freeze()  # (a full collection of them: ~6 ms, inside some request's execute)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        try:
            images = [pb.get_input_tensor_by_name(request, INPUT_NAME).as_numpy() for request in requests]
            batch = np.concatenate(images, axis=0)
            prediction = self._engine.predict_tasks(batch) if self._multi_task else self._engine.predict(batch)
            per_request = split_outputs(prediction, [len(batch) for batch in images])
        except Exception as error:  # a failed batch must fail its requests, not the stub
            message = f"variant {self._variant!r}: {type(error).__name__}: {error}"
            return [pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message)) for _ in requests]
        return [
            pb.InferenceResponse(output_tensors=[pb.Tensor(name, array) for name, array in outputs.items()])
            for outputs in per_request
        ]

    def finalize(self) -> None:
        """Nothing to release: the stub process exits with the instance."""
