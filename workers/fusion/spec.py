"""The ``FusionSpec`` document that ``paretoserve fuse`` reads: the task models to fuse and how to search.

A fusion spec names several tasks on the same input (the digits images, upscaled), each with its own
architecture and training recipe, and the search's parameters (accuracy bound θ, seed, budget). The tasks
are trained separately first, exactly as users would have trained them; fusion starts from their weights.
Parsing is strict, like the ServingPipeline's: an invalid document raises :class:`SpecError` naming the
field (``spec.tasks[1].channels: ...``), which the CLI prints as one line with exit status 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from paretoserve.planner.bounds import TASK_NAME
from paretoserve.planner.spec import (
    DNS_LABEL,
    SpecError,
    StrictModel,
    field_error,
    load_yaml_documents,
    spec_error,
)

KIND = "FusionSpec"
THETAS = (0.0, 0.01, 0.02)
"""GMorph's accuracy-drop bounds (its ``b*_t0``, ``t001``, ``t002`` scripts)."""


class TaskLabels(StrEnum):
    """What a task predicts from a digit image (its labels derive from the digit)."""

    DIGIT = "digit"
    """The digit, 10 classes."""
    PARITY = "parity"
    """Even or odd, 2 classes."""
    AT_LEAST_5 = "atLeast5"
    """Digit ≥ 5, 2 classes."""
    LOOPS = "loops"
    """Closed loops in the written digit: none (1 2 3 5 7), one (0 4 6 9), two (8); 3 classes."""


class Training(StrictModel):
    epochs: Annotated[int, Field(ge=1, le=200)] = 20
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 64
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 3e-3
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0


class Task(StrictModel):
    name: Annotated[str, Field(pattern=TASK_NAME)]
    """Names the task's outputs (``PROBS_<name>`` ...) in the fused Triton model."""
    labels: Annotated[TaskLabels, Field(strict=False)]
    channels: Annotated[list[Annotated[int, Field(ge=0, le=512)]], Field(min_length=1, max_length=32)]
    """3x3 convolutions of these widths; 0 is a 2x2 max-pool after the convolution before it."""
    hidden: Annotated[int, Field(ge=1, le=4096)] = 64
    training: Training = Field(default_factory=Training)

    @field_validator("channels")
    @classmethod
    def _pools_follow_convolutions(cls, channels: list[int]) -> list[int]:
        if channels[0] == 0:
            raise ValueError("must start with a convolution (a width > 0), not a pool (0)")
        for before, after in zip(channels, channels[1:], strict=False):
            if before == 0 and after == 0:
                raise ValueError("two pools (0, 0) in a row: a pool follows a convolution")
        return channels


class Data(StrictModel):
    image_size: Annotated[int, Field(ge=8, le=128)] = 32
    """The 8x8 digits are upscaled (bilinear) to this side, so the convolutions have work worth sharing."""
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    """Seed of the stratified 60/20/20 train/validation/test split."""


class Search(StrictModel):
    theta: Annotated[float, Field(ge=0, le=0.5)] = 0.01
    """Largest accuracy drop any task may have on the validation split (GMorph: 0, 0.01, 0.02)."""
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    budget_minutes: Annotated[float, Field(gt=0, le=24 * 60)] = 10.0
    max_candidates: Annotated[int, Field(ge=1, le=10_000)] = 60
    """Fused graphs to fine-tune at most (the search also ends when the budget or the temperature runs out)."""
    elites: Annotated[int, Field(ge=1, le=100)] = 5
    merges_per_step: Annotated[int, Field(ge=1, le=16)] = 1
    fine_tune_epochs: Annotated[int, Field(ge=1, le=100)] = 8
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 1e-3
    initial_temperature: Annotated[float, Field(gt=0, le=1e6)] = 10.0
    cooling: Annotated[float, Field(gt=0, lt=1)] = 0.9
    """Exponential cooling: the temperature of step k is initialTemperature · cooling^k."""
    min_temperature: Annotated[float, Field(gt=0, le=1e6)] = 0.01
    learning_curve_filter: bool = True
    """GMorph's predictive filtering: stop fine-tuning a graph whose extrapolated drop cannot meet θ."""
    batch_sizes: Annotated[list[Annotated[int, Field(ge=1, le=1024)]], Field(min_length=1, max_length=8)] = [1, 8]
    """Batch sizes at which the fused variants are profiled (the first one is what the search minimises)."""


class FusionSpecBody(StrictModel):
    data: Data = Field(default_factory=Data)
    tasks: Annotated[list[Task], Field(min_length=2, max_length=8)]
    search: Search = Field(default_factory=Search)

    @model_validator(mode="after")
    def _unique_names(self) -> FusionSpecBody:
        names = [task.name for task in self.tasks]
        if len(set(names)) != len(names):
            raise field_error("tasks", f"task names must be unique, got {names}")
        return self


class Metadata(StrictModel):
    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, Field(pattern=DNS_LABEL, min_length=1, max_length=63)]


class FusionSpec(StrictModel):
    api_version: Literal["paretoserve.io/v1alpha1"]
    kind: Literal["FusionSpec"]
    metadata: Metadata
    spec: FusionSpecBody


def parse_fusion_spec(document: Mapping[str, Any]) -> FusionSpec:
    """Validate a FusionSpec document; raise :class:`SpecError` naming the first bad field."""
    if not isinstance(document, Mapping):
        raise SpecError("<root>", "a FusionSpec must be a mapping")
    try:
        return FusionSpec.model_validate(document)
    except ValidationError as exc:
        raise spec_error(exc) from None


def load_fusion_spec(text: str) -> FusionSpec:
    """The first FusionSpec document of a YAML text."""
    docs = load_yaml_documents(text)
    chosen = next((doc for doc in docs if isinstance(doc, Mapping) and doc.get("kind") == KIND), None)
    if chosen is None:
        raise SpecError("kind", f"no document of kind {KIND} in the text")
    return parse_fusion_spec(chosen)
