"""IPA's LSTM load predictor in torch, trained on the Twitter trace and cached on disk.

IPA (prediction-modules/lstm-module) feeds an LSTM with 25 units the maxima of twelve 10-second bins over
the last 2 minutes and predicts the maximum load of the next 20 s; it trains on the first 14 days of the
Twitter trace and tests on the rest. InfAdapter uses the same idea with ten 1-minute maxima predicting
the next minute. Both are `LstmSpec`s here. The planner stays free of torch: it receives the trained
model as a plain `Forecaster` callable (history → predicted peak), and falls back to a moving maximum
when there is none.

Inputs and target are divided by the mean of the inputs, so one model serves any load scale (IPA damps
the trace by 8 in its experiments). Training is seeded and single-threaded, so a given trace and spec
give the same weights; they are cached under ``$PARETOSERVE_CACHE`` or ``~/.cache/paretoserve``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from numpy.lib.stride_tricks import sliding_window_view

from paretoserve.planner.predict import bin_maxima

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LstmSpec:
    name: str = "ipa"
    bin_seconds: int = 10
    bins: int = 12
    horizon_s: int = 20
    hidden: int = 25
    train_days: float = 14.0
    stride_s: int = 10
    epochs: int = 6
    batch_size: int = 512
    learning_rate: float = 3e-3
    seed: int = 0

    @property
    def history_s(self) -> int:
        return self.bin_seconds * self.bins

    def key(self, series_digest: str) -> str:
        blob = json.dumps({**asdict(self), "data": series_digest}, sort_keys=True).encode()
        return f"lstm-{self.name}-{hashlib.sha256(blob).hexdigest()[:12]}"


IPA_LSTM = LstmSpec()
INFADAPTER_LSTM = LstmSpec(name="infadapter", bin_seconds=60, bins=10, horizon_s=60, stride_s=30, epochs=10)


def cache_dir() -> Path:
    root = os.environ.get("PARETOSERVE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "paretoserve"


def windows(series: FloatArray, spec: LstmSpec, start: int, end: int, stride: int | None = None,
            ) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
    """Feature rows (bin maxima before t), targets (max of [t, t + horizon)) and the times t, in [start, end)."""
    step = stride or spec.stride_s
    first = max(start, spec.history_s)
    times = np.arange(first, end - spec.horizon_s + 1, step, dtype=np.int64)
    if len(times) == 0:
        return np.zeros((0, spec.bins)), np.zeros(0), times
    bins = sliding_window_view(series, spec.bin_seconds).max(axis=1)  # bins[i] = max(series[i : i + b])
    offsets = np.arange(spec.bins, 0, -1, dtype=np.int64) * spec.bin_seconds  # oldest bin first
    x = bins[times[:, None] - offsets[None, :]]
    ahead = sliding_window_view(series, spec.horizon_s).max(axis=1)
    return x.astype(np.float64), ahead[times].astype(np.float64), times


class LstmNet(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(input_size=1, hidden_size=hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.unsqueeze(-1))
        return self.head(out[:, -1, :]).squeeze(-1)  # type: ignore[no-any-return]


def _scaled(x: FloatArray) -> tuple[torch.Tensor, FloatArray]:
    scale = np.maximum(x.mean(axis=1), 1.0)  # the trace has outage seconds with no requests
    return torch.as_tensor(x / scale[:, None], dtype=torch.float32), scale


@dataclass
class LstmForecaster:
    """A trained model as the planner's `Forecaster`: per-second history → predicted peak of the horizon."""

    spec: LstmSpec
    net: LstmNet

    def predict_features(self, x: FloatArray) -> FloatArray:
        if len(x) == 0:
            return np.zeros(0)
        inputs, scale = _scaled(x)
        with torch.no_grad():
            out = self.net(inputs).numpy().astype(np.float64)
        return np.asarray(np.maximum(out * scale, 0.0), dtype=np.float64)

    def __call__(self, history: Sequence[float]) -> float:
        features = bin_maxima(history, self.spec.bin_seconds, self.spec.bins)
        return float(self.predict_features(np.asarray([features], dtype=np.float64))[0])


def train(series: FloatArray, spec: LstmSpec, progress: Callable[[float], None] | None = None) -> LstmForecaster:
    """Fit on the first `train_days` of a per-second series (Huber loss on the scaled peak), deterministically."""
    torch.manual_seed(spec.seed)
    end = min(len(series), int(spec.train_days * 86400))
    x, y, _ = windows(series, spec, 0, end)
    if len(x) == 0:
        raise ValueError("the training span is shorter than one window")
    inputs, scale = _scaled(x)
    target = torch.as_tensor(y / scale, dtype=torch.float32)
    net = LstmNet(spec.hidden)
    optimiser = torch.optim.Adam(net.parameters(), lr=spec.learning_rate)
    generator = torch.Generator().manual_seed(spec.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for epoch in range(spec.epochs):
            order = torch.randperm(len(inputs), generator=generator)
            for lo in range(0, len(order), spec.batch_size):
                idx = order[lo:lo + spec.batch_size]
                optimiser.zero_grad()
                loss = torch.nn.functional.smooth_l1_loss(net(inputs[idx]), target[idx], beta=0.1)
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
            if progress is not None:
                progress((epoch + 1) / spec.epochs)
    finally:
        torch.set_num_threads(threads)
    net.eval()
    return LstmForecaster(spec, net)


def digest(series: FloatArray) -> str:
    return hashlib.sha256(np.ascontiguousarray(series, dtype=np.float64).tobytes()).hexdigest()[:16]


def load_or_train(series: FloatArray, spec: LstmSpec = IPA_LSTM, *, directory: Path | None = None,
                  progress: Callable[[float], None] | None = None) -> tuple[LstmForecaster, bool]:
    """The cached model for this series and spec, training (and caching) it first if needed.

    Returns the forecaster and whether it came from the cache.
    """
    folder = (directory or cache_dir()) / "predictors"
    path = folder / f"{spec.key(digest(series))}.pt"
    net = LstmNet(spec.hidden)
    if path.exists():
        net.load_state_dict(torch.load(path, weights_only=True))
        net.eval()
        return LstmForecaster(spec, net), True
    model = train(series, spec, progress)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.net.state_dict(), tmp)
    tmp.replace(path)
    (folder / f"{path.stem}.json").write_text(json.dumps(asdict(spec), indent=2))
    return model, False
