"""Content-addressed cache of the trained variants and their metadata.

Triton workers, the router and the planner's profiler all need the same trained weights and the
same measured accuracy, and training must happen at most once per recipe set (never a download).
The cache lives at ``${PARETOSERVE_CACHE:-~/.cache/paretoserve}/models/<version>/`` where
``<version>`` hashes everything that determines the weights (recipes, split, training-code
version, torch minor version). Each variant gets
``<version>/<variant>/{weights.pt,model.onnx,metadata.json}`` (``model.onnx``, its ONNX export, is what
Triton serves); ``<version>/manifest.json`` is written last, so a directory with a manifest is complete. A
version directory is built under a temporary name and renamed into place, so concurrent
processes never see a half-written cache (the loser of a race discards its copy).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch

from paretoserve.workers.models.architectures import IMAGE_SHAPE, count_parameters, estimate_macs
from paretoserve.workers.models.runtime import METADATA_FILE, WEIGHTS_FILE, export_onnx
from paretoserve.workers.models.training import (
    DEFAULT_SPLIT,
    RECIPES,
    SplitSpec,
    TrainedVariant,
    TrainingRecipe,
    train_all,
)
from paretoserve.workers.triton.repository import ONNX_FILE

CACHE_ENV = "PARETOSERVE_CACHE"
MANIFEST_FILE = "manifest.json"
TRAINING_CODE_VERSION = 2
"""Bump when training code changes in a way the recipes do not capture (2: each variant also carries its
ONNX export, which is what Triton serves)."""

DIGIT_LABELS: tuple[str, ...] = tuple(str(digit) for digit in range(10))
DISCRIMINATOR_LABELS: tuple[str, ...] = ("light_right", "light_wrong")


@dataclass(frozen=True)
class VariantMetadata:
    """What ``metadata.json`` records about one cached variant."""

    variant: str
    arch: str
    task: str
    """``digits`` for classifiers, ``light_error`` for the discriminator."""
    version: str
    class_labels: tuple[str, ...]
    input_shape: tuple[int, ...]
    params: int
    macs_per_sample: int
    heldout_accuracy: float
    heldout_correct: int
    heldout_size: int
    train_size: int
    training_seconds: float
    torch_version: str
    weights_sha256: str
    recipe: Mapping[str, object]
    split: Mapping[str, object]
    light_variant: str | None = None
    extra_metrics: Mapping[str, float] = field(default_factory=dict)
    input_dtype: str = "float32"
    input_scaling: str = "pixel / 16, values in [0, 1]"

    @property
    def num_classes(self) -> int:
        return len(self.class_labels)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VariantMetadata:
        raw = json.loads(text)
        raw["class_labels"] = tuple(raw["class_labels"])
        raw["input_shape"] = tuple(raw["input_shape"])
        return cls(**raw)


@dataclass(frozen=True)
class ModelCatalog:
    """The cached variants of one version: where they are and what they measured."""

    directory: Path
    version: str
    variants: Mapping[str, VariantMetadata]

    def variant_dir(self, variant: str) -> Path:
        if variant not in self.variants:
            raise KeyError(f"variant {variant!r} not in catalog {self.directory}; has {sorted(self.variants)}")
        return self.directory / variant

    def __getitem__(self, variant: str) -> VariantMetadata:
        self.variant_dir(variant)
        return self.variants[variant]


def default_cache_root() -> Path:
    """``$PARETOSERVE_CACHE`` if set, else ``~/.cache/paretoserve``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "paretoserve"


def catalog_version(recipes: tuple[TrainingRecipe, ...] = RECIPES, split: SplitSpec = DEFAULT_SPLIT) -> str:
    """Short hash of everything that determines the trained weights."""
    torch_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    identity = {
        "code": TRAINING_CODE_VERSION,
        "recipes": [asdict(recipe) for recipe in recipes],
        "split": asdict(split),
        "torch": torch_minor,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def open_catalog(directory: Path) -> ModelCatalog:
    """Read a complete version directory (one with a manifest)."""
    manifest_path = directory / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    variants = {
        name: VariantMetadata.from_json((directory / name / METADATA_FILE).read_text()) for name in manifest["variants"]
    }
    return ModelCatalog(directory=directory, version=manifest["version"], variants=MappingProxyType(variants))


def _metadata(trained: TrainedVariant, version: str, split: SplitSpec, weights: Path) -> VariantMetadata:
    recipe = trained.recipe
    is_discriminator = recipe.light_variant is not None
    return VariantMetadata(
        variant=recipe.variant,
        arch=recipe.arch,
        task="light_error" if is_discriminator else "digits",
        version=version,
        class_labels=DISCRIMINATOR_LABELS if is_discriminator else DIGIT_LABELS,
        input_shape=IMAGE_SHAPE,
        params=count_parameters(trained.module),
        macs_per_sample=estimate_macs(trained.module),
        heldout_accuracy=trained.heldout_accuracy,
        heldout_correct=trained.heldout_correct,
        heldout_size=trained.heldout_size,
        train_size=trained.train_size,
        training_seconds=round(trained.training_seconds, 3),
        torch_version=torch.__version__,
        weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
        recipe=asdict(recipe),
        split=asdict(split),
        light_variant=recipe.light_variant,
        extra_metrics=dict(trained.extra_metrics),
    )


def _write_version(staging: Path, version: str, trained: tuple[TrainedVariant, ...], split: SplitSpec) -> None:
    for variant in trained:
        variant_dir = staging / variant.recipe.variant
        variant_dir.mkdir()
        weights = variant_dir / WEIGHTS_FILE
        torch.save(variant.module.state_dict(), weights)
        export_onnx(variant.module, variant_dir / ONNX_FILE)
        metadata = _metadata(variant, version, split, weights)
        (variant_dir / METADATA_FILE).write_text(metadata.to_json())
    manifest = {"version": version, "variants": [variant.recipe.variant for variant in trained]}
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def build_into_place(final: Path, build: Callable[[Path], None]) -> bool:
    """Make the cache folder ``final`` with ``build(staging)``, which must write ``manifest.json`` last, in a
    temporary sibling renamed into place: readers see a complete folder or none, and of two builders racing the
    second's rename fails harmlessly. A leftover without a manifest (a crash mid-build) is replaced. Returns whether
    this call built it (False: it was there already)."""
    if (final / MANIFEST_FILE).is_file():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(staging)
        if final.exists() and not (final / MANIFEST_FILE).is_file():
            shutil.rmtree(final)  # an incomplete leftover (a crash before the manifest was written)
        try:
            staging.rename(final)
        except OSError:
            if not (final / MANIFEST_FILE).is_file():
                raise  # not a lost race with another builder: a real error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def ensure_trained(
    cache_root: Path | None = None,
    *,
    recipes: tuple[TrainingRecipe, ...] = RECIPES,
    split: SplitSpec = DEFAULT_SPLIT,
) -> ModelCatalog:
    """The catalog for ``recipes``: read from the cache, or trained (once) and cached."""
    version = catalog_version(recipes, split)
    models_dir = (cache_root or default_cache_root()) / "models"
    final = models_dir / version
    build_into_place(final, lambda staging: _write_version(staging, version, train_all(recipes, split), split))
    return open_catalog(final)
