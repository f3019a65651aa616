"""Torch architectures of the digits model variants, from a linear model to a wide CNN.

ParetoServe needs several models for the same task that sit at different points of the
accuracy-cost-latency frontier, so the planner has a real trade-off to optimise and the cascade
router has a light model to try first and a heavy one to escalate to. This module defines those
networks, one name per architecture, and the "discriminator" that predicts from the input whether
the light model is wrong. Every network maps a batch of ``(N, 8, 8)`` float images (pixel / 16)
to logits; turning logits into the served outputs (probabilities, confidence, label) lives in
:mod:`paretoserve.workers.models.runtime`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import nn

IMAGE_SHAPE: tuple[int, int] = (8, 8)
NUM_DIGIT_CLASSES = 10


class TinyLinear(nn.Module):
    """Logistic regression on the 2x2-average-pooled 4x4 image: cheap and visibly weaker."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.linear = nn.Linear(16, NUM_DIGIT_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(images.unsqueeze(1)).flatten(1)
        logits: torch.Tensor = self.linear(pooled)
        return logits


class SmallMLP(nn.Module):
    """One hidden layer of 16 units on the full 64 pixels."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, hidden)
        self.out = nn.Linear(hidden, NUM_DIGIT_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.out(torch.relu(self.hidden(images.flatten(1))))
        return logits


class ConvNet(nn.Module):
    """3x3 convolutions (``0`` in ``channels`` means a 2x2 max-pool) and a two-layer head."""

    def __init__(self, channels: tuple[int, ...], fc_width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels, side = 1, IMAGE_SHAPE[0]
        for width in channels:
            if width == 0:
                layers.append(nn.MaxPool2d(2))
                side //= 2
                continue
            layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels * side * side, fc_width)
        self.out = nn.Linear(fc_width, NUM_DIGIT_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images.unsqueeze(1)).flatten(1)
        logits: torch.Tensor = self.out(torch.relu(self.fc(features)))
        return logits


class ErrorDiscriminator(nn.Module):
    """Predicts whether ``light`` mislabels an image: logits over (light right, light wrong).

    The frozen light model is part of the module (and of its state dict), so the discriminator is
    served from the same ``IMAGE`` input as every other variant. Its features are the pixels plus
    the light model's class probabilities.
    """

    def __init__(self, light: nn.Module, hidden: int = 32) -> None:
        super().__init__()
        self.light = light
        for parameter in self.light.parameters():
            parameter.requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(64 + NUM_DIGIT_CLASSES, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            light_probs = torch.softmax(self.light(images), dim=1)
        logits: torch.Tensor = self.head(torch.cat([images.flatten(1), light_probs], dim=1))
        return logits


def _cnn_small() -> nn.Module:
    return ConvNet(channels=(16, 0, 32, 0), fc_width=64)


def _cnn_large() -> nn.Module:
    return ConvNet(channels=(32, 64, 0, 128, 128, 0), fc_width=256)


def _discriminator() -> nn.Module:
    return ErrorDiscriminator(TinyLinear())


ARCHITECTURES: Mapping[str, Callable[[], nn.Module]] = MappingProxyType(
    {
        "tiny_linear": TinyLinear,
        "mlp_small": SmallMLP,
        "cnn_small": _cnn_small,
        "cnn_large": _cnn_large,
        "discriminator": _discriminator,
    }
)
"""Architecture name -> factory of an untrained module (read-only)."""


def build_module(arch: str) -> nn.Module:
    """A fresh, untrained module of architecture ``arch``."""
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}") from None
    return factory()


def count_parameters(module: nn.Module) -> int:
    """All parameters, trainable or frozen (the frozen light model counts: it is served too)."""
    return sum(parameter.numel() for parameter in module.parameters())


def estimate_macs(module: nn.Module, input_shape: tuple[int, ...] = IMAGE_SHAPE) -> int:
    """Multiply-accumulates of one forward pass on one sample, counted for Conv2d and Linear.

    A hardware-independent cost figure for the planner; pooling and activations are ignored.
    """
    total = 0

    def count(layer: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Linear):
            total += layer.in_features * layer.out_features
        elif isinstance(layer, nn.Conv2d):
            kernel = layer.kernel_size[0] * layer.kernel_size[1]
            per_output = (layer.in_channels // layer.groups) * kernel
            total += per_output * output[0].numel()

    handles = [
        layer.register_forward_hook(count) for layer in module.modules() if isinstance(layer, nn.Linear | nn.Conv2d)
    ]
    try:
        was_training = module.training
        module.eval()
        with torch.no_grad():
            module(torch.zeros((1, *input_shape)))
        module.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return total
