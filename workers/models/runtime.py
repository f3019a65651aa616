"""Loading a cached variant and turning its logits into the outputs ParetoServe serves.

The Triton Python backend (``paretoserve/workers/triton/backend_model.py``), the tests and the
offline evaluation all go through these two functions, so the served probabilities, confidence
and labels are computed exactly the same way everywhere. The confidence (max softmax) is what the
cascade router compares with its threshold to decide whether to escalate light -> heavy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from paretoserve.workers.models.architectures import build_module

METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "weights.pt"


@dataclass(frozen=True)
class Prediction:
    """Served outputs for a batch of ``N`` images."""

    probs: npt.NDArray[np.float32]
    """``(N, num_classes)`` class probabilities (softmax of the logits)."""
    confidence: npt.NDArray[np.float32]
    """``(N,)`` max probability: the cascade router's escalation signal."""
    label: npt.NDArray[np.int64]
    """``(N,)`` argmax class."""


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
        probs = torch.softmax(module(batch.to(torch.float32)), dim=1)
        confidence, label = probs.max(dim=1)
    return Prediction(
        probs=probs.numpy().astype(np.float32, copy=False),
        confidence=confidence.numpy().astype(np.float32, copy=False),
        label=label.numpy().astype(np.int64, copy=False),
    )
