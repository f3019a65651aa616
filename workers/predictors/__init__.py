"""Learned load predictors (torch) for the control loop; the planner sees them as plain callables.

`lstm.py` holds IPA's LSTM (12 ten-second maxima → peak of the next 20 s) and InfAdapter's variant
(10 one-minute maxima → next minute), trained on the first 14 days of the Twitter trace and cached under
``~/.cache/paretoserve``; `scoring.py` scores any predictor on held-out days (MAE, RMSE, under-prediction).
"""

from paretoserve.workers.predictors.lstm import (
    INFADAPTER_LSTM,
    IPA_LSTM,
    LstmForecaster,
    LstmSpec,
    load_or_train,
    train,
    windows,
)
from paretoserve.workers.predictors.scoring import PredictorScore, score_predictors

__all__ = [
    "INFADAPTER_LSTM", "IPA_LSTM", "LstmForecaster", "LstmSpec", "PredictorScore", "load_or_train",
    "score_predictors", "train", "windows",
]
