"""Loading a cached variant in torch, predicting offline, and exporting it to the ONNX graph that is served.

Triton serves each variant's ONNX export (:mod:`paretoserve.workers.triton.variant_engine`); the tests and
the offline evaluation run the torch module. Both turn logits into the served outputs with the same
:func:`~paretoserve.workers.triton.variant_engine.prediction_from_logits`, so the probabilities, confidence
(what the cascade router compares with its threshold) and labels agree between the two.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from paretoserve.workers.models.architectures import IMAGE_SHAPE, build_module
from paretoserve.workers.triton.variant_engine import ONNX_INPUT, ONNX_OUTPUT, Prediction, prediction_from_logits

METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "weights.pt"


def read_metadata(variant_dir: Path) -> dict[str, object]:
    """The metadata JSON of a cached variant directory."""
    path = variant_dir / METADATA_FILE
    try:
        loaded = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no {METADATA_FILE} in {variant_dir}: not a cached variant") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return loaded


def load_variant(variant_dir: Path) -> nn.Module:
    """The trained module of a cached variant, in eval mode, weights loaded with ``weights_only``."""
    metadata = read_metadata(variant_dir)
    arch = metadata.get("arch")
    if not isinstance(arch, str):
        raise ValueError(f"{variant_dir / METADATA_FILE} has no string 'arch'")
    module = build_module(arch)
    state = torch.load(variant_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    module.eval()
    return module


def predict(module: nn.Module, images: npt.NDArray[np.floating[Any]] | torch.Tensor) -> Prediction:
    """Run ``module`` on ``(N, 8, 8)`` images and return probabilities, confidence and labels."""
    batch = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    with torch.inference_mode():
        logits = module(batch.to(torch.float32))
    return prediction_from_logits(logits.numpy())


def export_onnx(module: nn.Module, path: Path) -> Path:
    """Write ``module`` as an ONNX graph with a dynamic batch dimension (what Triton's instances run).

    Written to a temporary name and renamed, so a reader never sees half a graph."""
    example = torch.zeros((1, *IMAGE_SHAPE), dtype=torch.float32)
    partial = path.with_name(f".{path.name}.partial")
    torch.onnx.export(module.eval(), (example,), str(partial), dynamo=False, input_names=[ONNX_INPUT],
                      output_names=[ONNX_OUTPUT], dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                      opset_version=17)
    partial.replace(path)
    return path
