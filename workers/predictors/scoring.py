"""Score load predictors on held-out trace days: the error the control loop would plan with.

Each predictor sees the per-second history up to t and predicts the peak of [t, t + horizon); the score
is MAE, RMSE and the under-prediction rate (how often the plan would have been sized below the peak, the
failure that costs SLO violations), with and without the headroom the loop adds. The baselines are the
planner's own functions (`planner.predict`), so the numbers describe exactly what the loop uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from paretoserve.planner.predict import ewma, last_value, moving_max
from paretoserve.workers.predictors.lstm import LstmForecaster, LstmSpec, windows

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PredictorScore:
    name: str
    samples: int
    mae: float
    rmse: float
    under_rate: float
    under_rate_with_headroom: float
    mean_over_provision: float
    """Mean of max(prediction − actual, 0) / actual: capacity paid for and not used."""

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _score(name: str, predicted: FloatArray, actual: FloatArray, headroom: float) -> PredictorScore:
    err = predicted - actual
    positive = np.maximum(actual, 1.0)  # outage seconds (0 requests) would divide by zero
    return PredictorScore(
        name=name, samples=len(actual), mae=float(np.mean(np.abs(err))), rmse=float(np.sqrt(np.mean(err ** 2))),
        under_rate=float(np.mean(predicted < actual)),
        under_rate_with_headroom=float(np.mean(predicted * (1 + headroom) < actual)),
        mean_over_provision=float(np.mean(np.maximum(err, 0.0) / positive)),
    )


def classic_predictors(spec: LstmSpec) -> Mapping[str, Callable[[Sequence[float]], float]]:
    """The planner's built-in predictors over the LSTM's history window."""
    window = spec.history_s
    return {
        "last-value": last_value,
        f"moving-max-{window}s": lambda h: moving_max(h, window),
        "ewma": ewma,
    }


def score_predictors(series: FloatArray, spec: LstmSpec, lstm: LstmForecaster | None, *, start: int, end: int,
                     stride: int | None = None, headroom: float = 0.1) -> list[PredictorScore]:
    """Scores of the classic predictors and (if given) the LSTM on windows t ∈ [start, end)."""
    x, y, times = windows(series, spec, start, end, stride)
    scores = []
    for name, predictor in classic_predictors(spec).items():
        # every classic predictor needs at most the history window before t
        predicted = np.array([predictor(series[t - spec.history_s:t].tolist()) for t in times], dtype=np.float64)
        scores.append(_score(name, predicted, y, headroom))
    if lstm is not None:
        scores.append(_score(f"lstm-{spec.name}", lstm.predict_features(x), y, headroom))
    return scores
