"""Load predictors the control loop plans with: pure functions of a history of per-second rates.

IPA and InfAdapter plan for a predicted peak rather than the last observation: a moving maximum, an EWMA
(DiffServe uses com=2.1 over 20 samples) or an LSTM (IPA: 12 maxima of 10-second bins over 2 minutes
predict the maximum of the next 20 s; that model needs torch and lives in `paretoserve.workers`). Every
prediction gets the spec's headroom on top.

A forecast is never lower than the load observed over the last adaptation interval (`floor_seconds`): a
model trained on calm days tends to predict a fall right after a step up, and a plan below what is
already arriving overloads the pipeline until the next decision. Releasing capacity waits for the load
itself to fall (and for `scaleDownStabilization`).

Once the load has outgrown the running plan (a burst), the loop plans for `surge_load` instead: capacity
ordered now is ready only after a model loads (6-9 s for InfAdapter's ResNets), so a plan for the load of
this second is already too small when it arrives if the load is still rising. `surge_load` extends the
newest peak by the current upward trend over that lead time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from paretoserve.planner.spec import Predictor, PredictorKind

Forecaster = Callable[[Sequence[float]], float]


def last_value(history: Sequence[float]) -> float:
    return float(history[-1]) if history else 0.0


def moving_max(history: Sequence[float], window: int) -> float:
    return float(max(history[-window:])) if history else 0.0


def ewma(history: Sequence[float], com: float = 2.1, window: int = 20) -> float:
    """Exponentially weighted mean with pandas' `com` convention (alpha = 1 / (1 + com))."""
    if not history:
        return 0.0
    alpha = 1.0 / (1.0 + com)
    value = float(history[-window:][0])
    for sample in history[-window:][1:]:
        value = alpha * float(sample) + (1 - alpha) * value
    return value


def bin_maxima(history: Sequence[float], bin_seconds: int, bins: int) -> list[float]:
    """Maxima of consecutive `bin_seconds` bins ending at the newest sample (IPA's LSTM features)."""
    out: list[float] = []
    end = len(history)
    for _ in range(bins):
        start = max(0, end - bin_seconds)
        out.append(float(max(history[start:end])) if end > start else 0.0)
        end = start
    return out[::-1]


def predict(history: Sequence[float], predictor: Predictor, *, lstm: Forecaster | None = None,
            floor_seconds: int = 0) -> float:
    """Predicted load with headroom, never below the peak of the newest `floor_seconds` samples. Without an
    LSTM model (or history), LSTM falls back to moving max."""
    window = predictor.window_seconds
    if predictor.kind is PredictorKind.LAST_VALUE:
        base = last_value(history)
    elif predictor.kind is PredictorKind.EWMA:
        base = ewma(history, window=window)
    elif predictor.kind is PredictorKind.LSTM and lstm is not None and len(history) >= window:
        base = max(0.0, lstm(history))
    else:
        base = moving_max(history, window)
    floor = moving_max(history, floor_seconds) if floor_seconds > 0 else 0.0
    return max(base, floor) * (1.0 + predictor.headroom)


TREND_SECONDS = 6
"""Samples behind the trend `surge_load` extends: three load checks at the default two seconds."""


def trend(history: Sequence[float], window: int = TREND_SECONDS) -> float:
    """Least-squares slope (load per second) of the newest `window` samples; 0 with fewer than two."""
    tail = [float(x) for x in history[-window:]]
    n = len(tail)
    if n < 2:
        return 0.0
    mean_t = (n - 1) / 2.0
    mean_y = sum(tail) / n
    var = sum((t - mean_t) ** 2 for t in range(n))
    return sum((t - mean_t) * (y - mean_y) for t, y in enumerate(tail)) / var


def surge_load(history: Sequence[float], predictor: Predictor, *, lead_seconds: float, peak_seconds: int,
               lstm: Forecaster | None = None, floor_seconds: int = 0) -> float:
    """What to plan for when the load outgrew the running plan: the forecast (`predict`) or, when higher, the
    peak of the newest `peak_seconds` plus the rising trend (`trend`, never negative) over `lead_seconds`
    (how long new capacity takes to be ready), with the predictor's headroom."""
    forecast = predict(history, predictor, lstm=lstm, floor_seconds=floor_seconds)
    if not history:
        return forecast
    ahead = moving_max(history, max(1, peak_seconds)) + max(0.0, trend(history)) * max(0.0, lead_seconds)
    return max(forecast, ahead * (1.0 + predictor.headroom))
