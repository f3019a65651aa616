"""Query-aware routing of multimodal requests: a difficulty score read from the question's text AND the image.

A ``router: prompt`` cascade in front of ``mm-low`` and ``mm-high`` sends a request to ``mm-high`` when its
difficulty score is at least a threshold, before either model runs (as the text family's
:mod:`~paretoserve.workers.llm.routing` does). Here the request is an image and a question about it, so the score
reads both: the question's operator and operand digits (``+37=``: an addition, with carries, is the hard case),
and the image through the router's own rule-based :func:`~paretoserve.workers.digit_hardness.hardness` (faint
strokes, narrow glyph) plus two pixel statistics (mean intensity, share of inked pixels). A logistic regression
on them is fitted offline on training problems to predict that ``mm-low`` answers wrongly; it never looks at a
model's answer. The f(t) rows of the split are :func:`~paretoserve.workers.llm.routing.split_rows`'s, measured
on the test split where both models' answers are known.

:func:`fit_mm_scorer` is THE fit of the served score: ``mm-scorer`` (:mod:`.scorer`, cached by
:func:`~paretoserve.workers.llm.cache.ensure_mm_scorer`) serves it to the router, and ``bench mm``'s rows are
measured with it, so a threshold the planner picks means the same where the router applies it. numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from paretoserve.workers.digit_hardness import hardness
from paretoserve.workers.llm.mm_engine import IMAGE_SIZE, MultimodalEngine, image_pixels
from paretoserve.workers.llm.routing import fit_logistic, weights_of
from paretoserve.workers.llm.tokenizer import decode, encode_prompt

Floats = npt.NDArray[np.float64]
QUESTION_FEATURES = ("bias", "minus", "times", "two-digit operand", "operand units")
IMAGE_FEATURES = ("image hardness", "mean pixel", "inked share")
FEATURES = (*QUESTION_FEATURES, *IMAGE_FEATURES)
INK = 0.25
"""A pixel above this counts as inked (the threshold :func:`hardness` uses for its glyph width)."""
SCORER_TRAIN_PROBLEMS = 4000
"""Training problems the score is fitted on (the first of the training split)."""


def question_features(question: str) -> Floats:
    """The features of a question's text (``+37=``, ``-5=``, ``*6=``), in :data:`QUESTION_FEATURES` order."""
    body = question.removesuffix("=")
    if len(body) < 2 or body[0] not in "+-*" or not body[1:].isdigit():
        raise ValueError(f"not a question about the image (operator then operand, e.g. '+37='): {question!r}")
    operator, operand = body[0], int(body[1:])
    return np.array([1.0, operator == "-", operator == "*", operand >= 10, (operand % 10) / 9.0], dtype=np.float64)


def image_features(image: npt.ArrayLike) -> Floats:
    """The features of an image (``S*S`` pixel values in 0..1), in :data:`IMAGE_FEATURES` order."""
    pixels = image_pixels(image, IMAGE_SIZE)
    return np.array([hardness(pixels.reshape(-1).tolist(), IMAGE_SIZE), float(pixels.mean()),
                     float((pixels > INK).mean())], dtype=np.float64)


def request_features(image: npt.ArrayLike, question: str) -> Floats:
    """All of :data:`FEATURES` for one request."""
    return np.concatenate((question_features(question), image_features(image)))


@dataclass(frozen=True)
class MultimodalDifficulty:
    """P(``mm-low`` answers wrongly | question and image features): a logistic regression on ``features``
    (all of :data:`FEATURES`, or the question's alone)."""

    weights: tuple[float, ...]
    features: tuple[str, ...] = FEATURES

    def __post_init__(self) -> None:
        if self.features not in (FEATURES, QUESTION_FEATURES) or len(self.weights) != len(self.features):
            raise ValueError(f"{len(self.weights)} weights for features {self.features!r}")

    def row(self, image: npt.ArrayLike, question: str) -> Floats:
        if self.features == QUESTION_FEATURES:
            return question_features(question)
        return request_features(image, question)

    def __call__(self, image: npt.ArrayLike, question: str) -> float:
        z = float(self.row(image, question) @ np.asarray(self.weights))
        return float(1.0 / (1.0 + np.exp(-z)))

    def scores(self, images: Sequence[npt.ArrayLike], questions: Sequence[str]) -> list[float]:
        return [self(image, question) for image, question in zip(images, questions, strict=True)]

    def to_json(self) -> dict[str, Any]:
        """What a scorer's weights file holds (the features name the weights, in order)."""
        return {"features": list(self.features), "weights": list(self.weights)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> MultimodalDifficulty:
        """The score of a weights file written by :meth:`to_json`; ``ValueError`` when it does not fit."""
        features = QUESTION_FEATURES if raw.get("features") == list(QUESTION_FEATURES) else FEATURES
        return cls(weights_of(raw, features), features)


def fit_mm_difficulty(images: Sequence[npt.ArrayLike], questions: Sequence[str], low_wrong: Sequence[bool], *,
                      use_image: bool = True) -> MultimodalDifficulty:
    """The score fitted on requests whose ``mm-low`` answer is known to be wrong or right (``use_image=False``:
    on the question's features alone, to measure what the image adds)."""
    features = FEATURES if use_image else QUESTION_FEATURES
    probe = MultimodalDifficulty(tuple(0.0 for _ in features), features)
    x = np.stack([probe.row(image, question) for image, question in zip(images, questions, strict=True)])
    return MultimodalDifficulty(tuple(float(w) for w in fit_logistic(x, low_wrong)), features)


def greedy_answers(engine: MultimodalEngine, images: Sequence[npt.ArrayLike], questions: Sequence[str],
                   max_new_tokens: int) -> list[str]:
    """``engine``'s greedy answer text to each image and question (batched decode steps)."""
    generated = engine.generate_multimodal(list(images), [encode_prompt(q) for q in questions], max_new_tokens)
    return [decode(tokens) for tokens in generated]


def fit_mm_scorer(low: MultimodalEngine, images: Sequence[npt.ArrayLike], questions: Sequence[str],
                  answers: Sequence[str], max_new_tokens: int) -> MultimodalDifficulty:
    """The served score (see the module doc): :func:`fit_mm_difficulty` on whether ``low``'s greedy answer to each
    training request is wrong (``answers``: the right ones)."""
    given = greedy_answers(low, images, questions, max_new_tokens)
    wrong = [ours != right for ours, right in zip(given, answers, strict=True)]
    return fit_mm_difficulty(images, questions, wrong)


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """The area under the ROC curve of ``scores`` for ``positive`` (ties counted half)."""
    s, label = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    if label.all() or not label.any():
        raise ValueError("the ROC AUC needs both positive and negative rows")
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    for value in np.unique(s):  # ties share their mean rank
        tied = s == value
        ranks[tied] = ranks[tied].mean()
    positives = int(label.sum())
    return float((ranks[label].sum() - positives * (positives + 1) / 2) / (positives * (len(s) - positives)))
