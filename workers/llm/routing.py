"""Query-aware routing of token-generating requests: a difficulty score read from the prompt's text, learned offline.

A router in front of a small and a large model sends a prompt to the large one when its difficulty score is at
least a threshold (a ``prompt`` cascade: the request never visits the small model). The score is a logistic
regression on features of the prompt's text alone -- the operand lengths, the operator, the carries (or borrows,
or carrying digit products) the written numbers imply -- fitted on training prompts to predict that the small
model answers wrongly; it never looks at a model's answer, so the router can decide before either model runs.

:func:`split_rows` measures, on held-out prompts where both models' answers are known, the share each threshold
sends to the large model and the exact match of the mixed answers: the ``f(t)`` rows a cascade stage declares
(``router: prompt``), with which the planner chooses the threshold, the replicas and the sequences per replica in
one program, DiffServe-style. :func:`fit_scorer` is THE fit: the cached scorer a Triton model serves to the router
(:mod:`.scorer`, :func:`~paretoserve.workers.llm.cache.ensure_scorer`) and the benchmark's rows come from it, so
the thresholds the planner picks mean the same thing where the router applies them. numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from paretoserve.workers.llm.engine import NumpyLM
from paretoserve.workers.llm.tasks import Problem, carries
from paretoserve.workers.llm.tokenizer import decode, encode_prompt

Floats = npt.NDArray[np.float64]
FEATURES = ("bias", "left digits", "right digits", "minus", "times", "carries")
SCORER_TRAIN_PROMPTS = 4000
"""Training prompts the served scorer is fitted on (the first of the training split)."""


def prompt_features(prompt: str) -> Floats:
    """The features of a prompt's text (``483+219=``): what the router sees before any model runs."""
    body = prompt.rstrip("=")
    operator = next((op for op in "+*" if op in body), "-" if "-" in body[1:] else None)
    if operator is None:
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    cut = body.index(operator, 1 if operator == "-" else 0)
    left, right = body[:cut], body[cut + 1:]
    return np.array([1.0, len(left), len(right), operator == "-", operator == "*",
                     carries(int(left), operator, int(right))], dtype=np.float64)


@dataclass(frozen=True)
class DifficultyScore:
    """P(the small model answers wrongly | prompt features): a logistic regression."""

    weights: tuple[float, ...]

    def __call__(self, prompt: str) -> float:
        z = float(prompt_features(prompt) @ np.asarray(self.weights))
        return float(1.0 / (1.0 + np.exp(-z)))

    def to_json(self) -> dict[str, Any]:
        """What a scorer's weights file holds (the features name the weights, in order)."""
        return {"features": list(FEATURES), "weights": list(self.weights)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DifficultyScore:
        """The score of a weights file written by :meth:`to_json`; ``ValueError`` when it does not fit."""
        return cls(weights_of(raw, FEATURES))


def weights_of(raw: Mapping[str, Any], features: Sequence[str]) -> tuple[float, ...]:
    """The weights of a scorer weights file (``{"features": [...], "weights": [...]}``) whose features must be
    ``features``, in order; ``ValueError`` saying what does not fit (every served score reads its file so)."""
    named, weights = raw.get("features"), raw.get("weights")
    if named != list(features):
        raise ValueError(f"scorer features {named!r} are not this code's {list(features)!r}")
    if not isinstance(weights, list) or len(weights) != len(features) or not all(
            isinstance(w, int | float) and not isinstance(w, bool) and np.isfinite(w) for w in weights):
        raise ValueError(f"scorer weights must be {len(features)} finite numbers, got {weights!r}")
    return tuple(float(w) for w in weights)


def fit_logistic(x: Floats, y: Sequence[bool], *, steps: int = 2000, learning_rate: float = 0.5) -> Floats:
    """Weights of a logistic regression of ``y`` on the rows of ``x`` (column 0 the bias, all ones), by full-batch
    gradient descent on standardised features (deterministic), folded back onto the raw features."""
    target = np.asarray(y, dtype=np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    mean[0], scale[0] = 0.0, 1.0
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    w = np.zeros(z.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        w -= learning_rate * z.T @ (p - target) / len(target)
    raw: Floats = w / scale
    raw[0] = w[0] - float((w[1:] * mean[1:] / scale[1:]).sum())
    return raw


def fit_difficulty(prompts: Sequence[str], small_wrong: Sequence[bool], *, steps: int = 2000,
                   learning_rate: float = 0.5) -> DifficultyScore:
    """The text difficulty score: :func:`fit_logistic` on the prompts' features."""
    x = np.stack([prompt_features(p) for p in prompts])
    raw = fit_logistic(x, small_wrong, steps=steps, learning_rate=learning_rate)
    return DifficultyScore(tuple(float(v) for v in raw))


def fit_scorer(small: NumpyLM, problems: Sequence[Problem], max_new_tokens: int) -> DifficultyScore:
    """The difficulty score fitted to predict that ``small`` answers ``problems`` wrongly (greedy, exact match)."""
    wrong = [not ok for ok in correct_answers(small, problems, max_new_tokens)]
    return fit_difficulty([problem.prompt for problem in problems], wrong)


def correct_answers(engine: NumpyLM, problems: Sequence[Problem], max_new_tokens: int) -> list[bool]:
    """Whether ``engine``'s greedy answer to each problem is exactly right."""
    generated = engine.generate([encode_prompt(p.prompt) for p in problems], max_new_tokens)
    return [decode(tokens) == p.answer for tokens, p in zip(generated, problems, strict=True)]


@dataclass(frozen=True)
class SplitRow:
    threshold: float
    heavy_fraction: float
    exact_match: float


def split_rows(scores: Sequence[float], small_correct: Sequence[bool], large_correct: Sequence[bool],
               thresholds: Sequence[float]) -> list[SplitRow]:
    """For each threshold, the share of prompts scored at least it (sent to the large model) and the exact
    match of the mixed answers, on prompts where both models' answers are known."""
    s = np.asarray(scores)
    small, large = np.asarray(small_correct, dtype=bool), np.asarray(large_correct, dtype=bool)
    rows = []
    for t in thresholds:
        heavy = s >= t
        rows.append(SplitRow(float(t), round(float(heavy.mean()), 4),
                             round(float(np.where(heavy, large, small).mean()), 4)))
    return rows
