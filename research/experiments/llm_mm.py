"""E8: E7's comparison for the multimodal family (`manifests/examples/mm-llm.yaml`: mm-low and mm-high behind the
text-and-image split that `mm-scorer` serves), on the same windows: each simulated request is a held-out digit
image with its question, routed by its own score, and scored by each model's real answer (see `llm.py`)."""

from __future__ import annotations

from paretoserve.research.experiments.harness import Setup
from paretoserve.research.experiments.llm import MULTIMODAL, family_setup


def setup(quick: bool, window: tuple[int, int] | None) -> Setup:
    return family_setup(MULTIMODAL, quick, window)
