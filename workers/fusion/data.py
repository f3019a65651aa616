"""The tasks' shared input and their labels: scikit-learn's digits, upscaled, split 60/20/20.

Fusion needs several tasks on the same input. They are derived from the digits dataset that ships with
scikit-learn (no download): the digit itself, its parity, whether it is at least 5, and how many closed loops
it has. The 8x8 images are upscaled bilinearly to ``image_size`` so that the convolutions do work worth
sharing. One stratified split serves everything: task models train on ``train``; the search checks the
accuracy bound and stops fine-tuning on ``val``; ``test`` is held out for the reported accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from paretoserve.workers.fusion.spec import Data, TaskLabels

_LOOPS = np.array([1, 0, 0, 0, 1, 0, 1, 0, 2, 1], dtype=np.int64)

NUM_CLASSES: dict[TaskLabels, int] = {
    TaskLabels.DIGIT: 10, TaskLabels.PARITY: 2, TaskLabels.AT_LEAST_5: 2, TaskLabels.LOOPS: 3,
}


def task_labels(kind: TaskLabels, digits: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The labels of task ``kind`` for an array of digits."""
    digits = np.asarray(digits, dtype=np.int64)
    if kind is TaskLabels.DIGIT:
        return digits
    if kind is TaskLabels.PARITY:
        return digits % 2
    if kind is TaskLabels.AT_LEAST_5:
        return (digits >= 5).astype(np.int64)
    loops: npt.NDArray[np.int64] = _LOOPS[digits]
    return loops


@dataclass(frozen=True)
class Split:
    """Images ``(N, 1, S, S)`` in [0, 1] and the digit of each."""

    images: torch.Tensor
    digits: npt.NDArray[np.int64]

    def labels(self, kind: TaskLabels) -> torch.Tensor:
        return torch.from_numpy(task_labels(kind, self.digits))

    def __len__(self) -> int:
        return len(self.digits)


@dataclass(frozen=True)
class FusionData:
    train: Split
    val: Split
    test: Split

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.images.shape[1:])


def load_fusion_data(data: Data) -> FusionData:
    """The upscaled digits, split by ``data.seed`` (stratified by digit)."""
    digits = load_digits()
    images = torch.from_numpy((np.asarray(digits.images, dtype=np.float64) / 16.0).astype(np.float32)).unsqueeze(1)
    if data.image_size != images.shape[-1]:
        images = F.interpolate(images, size=(data.image_size, data.image_size), mode="bilinear", align_corners=False)
    target = np.asarray(digits.target, dtype=np.int64)
    index = np.arange(len(target))
    train, rest = train_test_split(index, test_size=0.4, random_state=data.seed, stratify=target)
    val, test = train_test_split(rest, test_size=0.5, random_state=data.seed, stratify=target[rest])

    def split(rows: npt.NDArray[np.int64]) -> Split:
        rows = np.sort(rows)
        return Split(images=images[rows].contiguous(), digits=target[rows])

    return FusionData(train=split(train), val=split(val), test=split(test))
