"""Training the task models, and fine-tuning fused graphs by distillation with learning-curve filtering.

Task models are trained on their own labels, each with its own recipe, single-threaded and seeded, so the
same spec gives the same weights. A fused graph starts from the task models' (or an earlier fused graph's)
weights and is fine-tuned by distillation, as GMorph does: an L1 loss between each task's fused logits and
the original task model's logits on the training images, summed over tasks. After every epoch the
validation accuracy of each task is measured; fine-tuning stops as soon as every task's drop is within θ
(early stop), and, with GMorph's predictive filtering on, as soon as the learning curve of the largest drop,
extrapolated from its last four points, cannot reach θ by the last epoch (:func:`extrapolate_drop`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from paretoserve.workers.fusion.data import FusionData, Split
from paretoserve.workers.fusion.nets import FusedNet, TaskNet, chain_of
from paretoserve.workers.fusion.spec import Task
from paretoserve.workers.models.training import single_thread


def batches(size: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(size, generator=generator)
    for start in range(0, size, batch_size):
        yield order[start:start + batch_size]


def shift_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random shift of up to 1/16 of the side (the same for the whole batch): cheap augmentation."""
    reach = max(1, images.shape[-1] // 16)
    dy, dx = (int(v) for v in torch.randint(-reach, reach + 1, (2,), generator=generator))
    return torch.roll(images, shifts=(dy, dx), dims=(2, 3))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


@torch.inference_mode()
def task_accuracies(net: FusedNet, split: Split, tasks: Sequence[Task], batch: int = 512) -> list[float]:
    """Each task's accuracy of ``net`` on ``split`` (tasks in the graph's order)."""
    net.eval()
    outputs = [torch.cat(parts) for parts in zip(*(net(split.images[i:i + batch])
                                                   for i in range(0, len(split), batch)), strict=True)]
    return [accuracy(logits, split.labels(task.labels)) for logits, task in zip(outputs, tasks, strict=True)]


@dataclass(frozen=True)
class TrainedTask:
    task: Task
    net: TaskNet
    val_accuracy: float
    test_accuracy: float
    seconds: float


def supervised_fit(net: nn.Module, outputs: Callable[[torch.Tensor], Sequence[torch.Tensor]],
                   labels: Sequence[torch.Tensor], data: FusionData, *, epochs: int, learning_rate: float,
                   seed: int, batch_size: int) -> None:
    """Train ``net`` on ``labels`` (one per output of ``outputs``; the sum of their cross-entropies) over the
    training split with shift augmentation, Adam, one thread. How the task models and the MTL baseline learn."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    for _ in range(epochs):
        net.train()
        for rows in batches(len(data.train), batch_size, generator):
            predicted = outputs(shift_augment(data.train.images[rows], generator))
            loss = sum((F.cross_entropy(out, y[rows]) for out, y in zip(predicted, labels, strict=True)),
                       torch.zeros(()))
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            optimizer.step()
    net.eval()


def train_task(task: Task, data: FusionData) -> TrainedTask:
    """Train ``task``'s own model on its labels (its recipe)."""
    started = time.perf_counter()
    recipe = task.training
    with single_thread():
        torch.manual_seed(recipe.seed)
        net = TaskNet(chain_of(task, data.input_shape))
        supervised_fit(net, lambda images: (net(images),), [data.train.labels(task.labels)], data,
                       epochs=recipe.epochs, learning_rate=recipe.learning_rate, seed=recipe.seed,
                       batch_size=recipe.batch_size)
        with torch.inference_mode():
            val = accuracy(net(data.val.images), data.val.labels(task.labels))
            test = accuracy(net(data.test.images), data.test.labels(task.labels))
    return TrainedTask(task=task, net=net, val_accuracy=val, test_accuracy=test,
                       seconds=time.perf_counter() - started)


def extrapolate_drop(drops: Sequence[float], epochs_left: int) -> float:
    """GMorph's learning-curve extrapolation of the largest accuracy drop ``epochs_left`` epochs on.

    The differences of the last four points are assumed to shrink geometrically in log space (their
    ratio of log-differences ``alpha``); the drop keeps falling by the extrapolated differences. A curve
    that does not fall (last difference ≥ 0) is extrapolated flat."""
    if len(drops) < 4:
        raise ValueError("the extrapolation needs four points")
    a, b, c, d = drops[-4:]
    if d <= 0:
        return d
    steps = [b - a, c - b, d - c]
    if steps[-1] >= 0:
        return d
    logs = [math.log(abs(step)) if step != 0 else -30.0 for step in steps]
    denominator = logs[1] - logs[0]
    alpha = (logs[2] - logs[1]) / denominator if denominator != 0 else 1.0
    alpha = min(max(alpha, -2.0), 1.0)  # a curve that speeds up is extrapolated as a constant pace
    previous, current, value = logs[1], logs[2], d
    for _ in range(epochs_left):
        previous, current = current, alpha * (current - previous) + current
        value -= math.exp(min(current, 0.0))
        if value <= 0:
            break
    return value


@dataclass(frozen=True)
class FineTuneResult:
    net: FusedNet
    val_accuracy: tuple[float, ...]
    epochs: int
    stop: str
    """``met`` (every drop within θ), ``filtered`` (the learning curve cannot reach θ), ``epochs`` (ran out)."""
    drops: tuple[float, ...]
    """The largest drop after each epoch (the learning curve)."""
    seconds: float


def fine_tune(net: FusedNet, teachers: Sequence[torch.Tensor], data: FusionData, tasks: Sequence[Task],
              baseline: Sequence[float], *, theta: float, epochs: int, learning_rate: float, seed: int,
              learning_curve_filter: bool, batch_size: int = 64) -> FineTuneResult:
    """Distil the task models' logits ``teachers`` (on ``data.train``) into ``net``; see the module doc."""
    started = time.perf_counter()
    curve: list[float] = []
    with single_thread():
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
        l1 = nn.L1Loss()
        val = task_accuracies(net, data.val, tasks)
        curve.append(max(b - v for b, v in zip(baseline, val, strict=True)))
        stop = "met" if curve[-1] <= theta + 1e-9 else "epochs"
        epoch = 0
        while stop == "epochs" and epoch < epochs:
            epoch += 1
            net.train()
            for rows in batches(len(data.train), batch_size, generator):
                outputs = net(data.train.images[rows])
                loss = sum((l1(out, teacher[rows]) for out, teacher in zip(outputs, teachers, strict=True)),
                           torch.zeros(()))
                optimizer.zero_grad()
                torch.autograd.backward(loss)
                optimizer.step()
            val = task_accuracies(net, data.val, tasks)
            curve.append(max(b - v for b, v in zip(baseline, val, strict=True)))
            if curve[-1] <= theta + 1e-9:
                stop = "met"
            elif learning_curve_filter and len(curve) >= 4 and extrapolate_drop(curve, epochs - epoch) > theta:
                stop = "filtered"
    net.eval()
    return FineTuneResult(net=net, val_accuracy=tuple(val), epochs=epoch, stop=stop, drops=tuple(curve),
                          seconds=time.perf_counter() - started)


@torch.inference_mode()
def teacher_logits(trained: Sequence[TrainedTask], split: Split) -> list[torch.Tensor]:
    """Each task model's logits on ``split`` (the distillation targets)."""
    with single_thread():
        return [t.net.eval()(split.images).detach() for t in trained]


def seed_for(seed: int, key: str) -> int:
    """A per-graph seed: the same graph is fine-tuned the same way whatever order the search visits it in."""
    return int(np.uint32(seed) ^ np.uint32(int(key[:8], 16)))
