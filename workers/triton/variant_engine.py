"""What a Triton instance runs for a digits variant: its ONNX graph in ONNX Runtime, and the served outputs.

Variants are trained in torch, but they are served from an ONNX export (``model.onnx`` next to the
weights in the model cache, and inside each entry of an exported model repository). That keeps torch
(several GB) out of the worker image, lets GPU users serve the same repository with Triton's native
onnxruntime backend, and gives the local runtime and the Kubernetes workers one serving path.

The turn from logits to what is served (probabilities, the confidence the cascade router compares with
its threshold, the label) is :func:`prediction_from_logits`, used by the backend and by the offline torch
path alike, so served and offline outputs agree. This module imports neither torch nor Triton's stub
utilities: the worker image has neither torch nor (outside the stub) ``triton_python_backend_utils``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from paretoserve.workers.triton.repository import ONNX_FILE

ONNX_INPUT = "images"
ONNX_OUTPUT = "logits"
TASK_OUTPUT_PREFIX = "logits_"
"""A fused multi-task graph has one output per task: ``logits_<task>``."""


@dataclass(frozen=True)
class Prediction:
    """Served outputs for a batch of ``N`` images."""

    probs: npt.NDArray[np.float32]
    """``(N, num_classes)`` class probabilities (softmax of the logits)."""
    confidence: npt.NDArray[np.float32]
    """``(N,)`` max probability: the cascade router's escalation signal."""
    label: npt.NDArray[np.int64]
    """``(N,)`` argmax class."""


def prediction_from_logits(logits: npt.NDArray[np.floating[Any]]) -> Prediction:
    """Softmax, confidence and label of ``(N, num_classes)`` logits, in float32."""
    values = np.asarray(logits, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, classes >= 2), got {values.shape}")
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    probs = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32, copy=False)
    label = probs.argmax(axis=1).astype(np.int64, copy=False)
    confidence = probs[np.arange(len(probs)), label].astype(np.float32, copy=False)
    return Prediction(probs=probs, confidence=confidence, label=label)


class OnnxVariant:
    """One variant's ONNX graph in an ONNX Runtime session limited to ``threads`` intra-op threads.

    Each Triton instance is its own stub process with its own session, so threads per instance are the
    local form of vertical scaling, as they were with torch.
    """

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX graph at {path}: export the variant first (paretoserve models export)")
        import onnxruntime  # the worker image's and the workers extra's runtime; imported where it is used

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(str(path), sess_options=options,
                                                     providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{path}: expected one input, the graph has {[i.name for i in inputs]}")
        self._input = inputs[0].name

        self._outputs = [output.name for output in self._session.get_outputs()]

    def predict(self, images: npt.NDArray[np.floating[Any]]) -> Prediction:
        """The prediction of a one-output graph (a single-task variant)."""
        if len(self._outputs) != 1:
            raise ValueError(f"the graph has outputs {self._outputs}: use predict_tasks")
        batch = np.ascontiguousarray(images, dtype=np.float32)
        (logits,) = self._session.run(None, {self._input: batch})
        return prediction_from_logits(logits)

    def predict_tasks(self, images: npt.NDArray[np.floating[Any]]) -> dict[str, Prediction]:
        """Each task's prediction of a fused multi-task graph, by task (outputs ``logits_<task>``)."""
        batch = np.ascontiguousarray(images, dtype=np.float32)
        results = self._session.run(None, {self._input: batch})
        return {name.removeprefix(TASK_OUTPUT_PREFIX): prediction_from_logits(logits)
                for name, logits in zip(self._outputs, results, strict=True)}


def variant_graph(weights_dir: str, model_dir: Path) -> Path:
    """The ONNX file of a model: ``weights_dir`` (a model-config parameter) is absolute, or relative to the
    model's version directory (``.`` in an exported repository, which carries its graph with it)."""
    base = Path(weights_dir)
    return (base if base.is_absolute() else model_dir / base) / ONNX_FILE
