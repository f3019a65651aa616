"""Deterministic, CPU-only training of the digits variants on scikit-learn's bundled ``load_digits``.

Models must never be downloaded at run time, so ParetoServe trains its own small variants from a
dataset that ships inside scikit-learn. Everything is seeded and single-threaded (one intra-op
thread makes CPU reductions reproducible and avoids oversubscribing a 2-core machine), so the same
recipes give the same weights and the same held-out accuracy on every run; the whole set trains in
well under a minute. Caching the results is :mod:`paretoserve.workers.models.cache`'s job.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch import nn

from paretoserve.workers.models.architectures import ErrorDiscriminator, build_module


@dataclass(frozen=True)
class SplitSpec:
    """The fixed, stratified train/held-out split of the 1,797 digits."""

    test_fraction: float = 0.25
    seed: int = 0


@dataclass(frozen=True)
class DigitsSplit:
    """Images scaled to [0, 1] (pixel / 16) with shape ``(N, 8, 8)``, and int64 labels."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]


@dataclass(frozen=True)
class TrainingRecipe:
    """How one variant is trained. ``light_variant`` is set only for the error discriminator."""

    variant: str
    arch: str
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 1e-4
    shift_augment: bool = False
    seed: int = 0
    light_variant: str | None = None


@dataclass(frozen=True)
class TrainedVariant:
    """A trained module and what was measured on the held-out split."""

    recipe: TrainingRecipe
    module: nn.Module
    heldout_correct: int
    heldout_size: int
    train_size: int
    training_seconds: float
    extra_metrics: tuple[tuple[str, float], ...] = ()

    @property
    def heldout_accuracy(self) -> float:
        return self.heldout_correct / self.heldout_size


DEFAULT_SPLIT = SplitSpec()

RECIPES: tuple[TrainingRecipe, ...] = (
    TrainingRecipe("tiny_linear", "tiny_linear", epochs=40, batch_size=128, learning_rate=5e-2),
    TrainingRecipe("mlp_small", "mlp_small", epochs=30, batch_size=64, learning_rate=1e-2),
    TrainingRecipe("cnn_small", "cnn_small", epochs=20, batch_size=64, learning_rate=5e-3),
    TrainingRecipe("cnn_large", "cnn_large", epochs=20, batch_size=64, learning_rate=3e-3, shift_augment=True),
    TrainingRecipe(
        "discriminator",
        "discriminator",
        epochs=60,
        batch_size=64,
        learning_rate=1e-2,
        light_variant="tiny_linear",
    ),
)
"""The served variants, in training order (the discriminator needs its light model first)."""


def load_split(spec: SplitSpec = DEFAULT_SPLIT) -> DigitsSplit:
    """The digits dataset (bundled with scikit-learn, no download) split by ``spec``."""
    digits = load_digits()
    images = (np.asarray(digits.images, dtype=np.float64) / 16.0).astype(np.float32)
    labels = np.asarray(digits.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=spec.test_fraction, random_state=spec.seed, stratify=labels
    )
    return DigitsSplit(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


@contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: reproducible CPU reductions, and no oversubscription of a small machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixel in each direction (zero fill)."""
    padded = nn.functional.pad(images, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (images.shape[0], 2), generator=generator)
    shifted = torch.empty_like(images)
    for dy in range(3):
        for dx in range(3):
            rows = ((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).nonzero().flatten()
            shifted[rows] = padded[rows, dy : dy + 8, dx : dx + 8]
    return shifted


def fit(
    module: nn.Module,
    features: torch.Tensor,
    targets: torch.Tensor,
    recipe: TrainingRecipe,
    class_weights: torch.Tensor | None = None,
) -> None:
    """Mini-batch AdamW with a one-cycle schedule; shuffling from a seeded generator."""
    trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(features) / recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.learning_rate, total_steps=recipe.epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(recipe.seed)
    module.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), recipe.batch_size):
            rows = order[start : start + recipe.batch_size]
            batch = features[rows]
            if recipe.shift_augment:
                batch = _shift(batch, generator)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(module(batch), targets[rows], weight=class_weights)
            torch.autograd.backward(loss)
            optimizer.step()
            schedule.step()
    module.eval()


def _predict_labels(module: nn.Module, images: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    with torch.inference_mode():
        labels: npt.NDArray[np.int64] = module(torch.from_numpy(images)).argmax(dim=1).numpy().astype(np.int64)
    return labels


def train_classifier(recipe: TrainingRecipe, split: DigitsSplit) -> TrainedVariant:
    """Train a digit classifier and count its correct held-out predictions."""
    started = time.perf_counter()
    with single_thread():
        torch.manual_seed(recipe.seed)
        module = build_module(recipe.arch)
        fit(module, torch.from_numpy(split.x_train), torch.from_numpy(split.y_train), recipe)
        correct = int((_predict_labels(module, split.x_test) == split.y_test).sum())
    return TrainedVariant(
        recipe=recipe,
        module=module,
        heldout_correct=correct,
        heldout_size=len(split.y_test),
        train_size=len(split.y_train),
        training_seconds=time.perf_counter() - started,
    )


def train_discriminator(
    recipe: TrainingRecipe, light: TrainedVariant, split: DigitsSplit, folds: int = 5
) -> TrainedVariant:
    """Train the head that predicts whether ``light`` is wrong.

    Labels and light-model probabilities for training come out-of-fold (the light recipe retrained
    on 4/5 of the training set, predicting the other 1/5), because on its own training images the
    light model is right too often to teach anything. At serving time the head sees the final
    light model, exactly the one served as ``light.recipe.variant``.
    """
    started = time.perf_counter()
    with single_thread():
        oof_probs = np.zeros((len(split.y_train), 10), dtype=np.float32)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=recipe.seed)
        for fit_rows, held_rows in splitter.split(split.x_train, split.y_train):
            torch.manual_seed(light.recipe.seed)
            fold_model = build_module(light.recipe.arch)
            fit(
                fold_model,
                torch.from_numpy(split.x_train[fit_rows]),
                torch.from_numpy(split.y_train[fit_rows]),
                light.recipe,
            )
            with torch.inference_mode():
                logits = fold_model(torch.from_numpy(split.x_train[held_rows]))
                oof_probs[held_rows] = torch.softmax(logits, dim=1).numpy()
        wrong = (oof_probs.argmax(axis=1) != split.y_train).astype(np.int64)
        positives = max(int(wrong.sum()), 1)
        weights = torch.tensor([1.0, (len(wrong) - positives) / positives], dtype=torch.float32)

        torch.manual_seed(recipe.seed)
        discriminator = ErrorDiscriminator(copy.deepcopy(light.module))
        features = torch.cat([torch.from_numpy(split.x_train).flatten(1), torch.from_numpy(oof_probs)], dim=1)
        fit(discriminator.head, features, torch.from_numpy(wrong), recipe, class_weights=weights)
        discriminator.eval()

        light_test = _predict_labels(light.module, split.x_test)
        truth = (light_test != split.y_test).astype(np.int64)
        with torch.inference_mode():
            scores = torch.softmax(discriminator(torch.from_numpy(split.x_test)), dim=1)[:, 1].numpy()
            light_conf = torch.softmax(light.module(torch.from_numpy(split.x_test)), dim=1).max(1)
        correct = int(((scores >= 0.5).astype(np.int64) == truth).sum())
        extra = (
            ("heldout_auc", float(roc_auc_score(truth, scores))),
            ("baseline_auc_light_confidence", float(roc_auc_score(truth, -light_conf.values.numpy()))),
            ("heldout_light_error_rate", float(truth.mean())),
        )
    return TrainedVariant(
        recipe=recipe,
        module=discriminator,
        heldout_correct=correct,
        heldout_size=len(truth),
        train_size=len(split.y_train),
        training_seconds=time.perf_counter() - started,
        extra_metrics=extra,
    )


def train_all(
    recipes: tuple[TrainingRecipe, ...] = RECIPES, split_spec: SplitSpec = DEFAULT_SPLIT
) -> tuple[TrainedVariant, ...]:
    """Train ``recipes`` in order; a discriminator's light variant must come earlier."""
    split = load_split(split_spec)
    trained: dict[str, TrainedVariant] = {}
    for recipe in recipes:
        if recipe.light_variant is None:
            trained[recipe.variant] = train_classifier(recipe, split)
            continue
        light = trained.get(recipe.light_variant)
        if light is None:
            raise ValueError(f"recipe {recipe.variant!r} needs light variant {recipe.light_variant!r} trained first")
        trained[recipe.variant] = train_discriminator(recipe, light, split)
    return tuple(trained.values())
