"""`paretoserve bench mm`: the token-level profile of each multimodal model and its query-aware split.

What `paretoserve bench llm` measures for the text family (:mod:`.llm`, whose measuring this reuses), for
``mm-low`` and ``mm-high`` (`paretoserve.workers.llm.multimodal`, trained here and cached) on the torch-free
engine a worker serves (:class:`~paretoserve.workers.llm.mm_engine.MultimodalEngine`), on one BLAS thread:

- **prefill** time against prompt tokens, *visual tokens included* (a request's image is encoded and its visual
  tokens prefilled with its text; the text lengths run from ``BOS`` alone to the model's ``max_len``, padded with
  digits, so the fit spans more than the task's two question lengths) and its fit ``a + b·tokens``; the vision
  encoder's own time; the same fit re-based on *text* tokens (``a + b·V`` + ``b·text``), which is what a stage
  whose ``generation.promptTokens`` counts the text alone declares, since the two variants have different ``V``;
- **decode step** time against the batch (1 to 32 held-out requests of mixed lengths) and its fit;
- **KV cache**: bytes per token, per request (visual tokens included) and the bytes per *text* token that hold
  the same memory for a stage counting text tokens only;
- the held-out exact match of the numpy engine (equal to the recorded torch one) and the **query-aware split**
  (`paretoserve.workers.llm.mm_routing`): a difficulty score on the question's text and the image, fitted on
  training problems to predict that ``mm-low`` fails (the served ``mm-scorer``'s cached fit,
  `paretoserve.workers.llm.cache.ensure_mm_scorer`), its ROC AUC with and without the image features, and its
  f(t) rows on the test split with each row's engine cost relative to all-``mm-high``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from paretoserve.research.benchmarks.llm import (
    Prefill,
    median_ms,
    profile_steps,
    quantile_thresholds,
    request_cost_ms,
    split_summary,
)
from paretoserve.workers.llm.cache import ensure_mm_scorer
from paretoserve.workers.llm.mm_engine import MultimodalEngine
from paretoserve.workers.llm.mm_routing import (
    FEATURES,
    SCORER_TRAIN_PROBLEMS,
    fit_mm_difficulty,
    fit_mm_scorer,
    roc_auc,
)
from paretoserve.workers.llm.multimodal import (
    MultimodalCatalog,
    MultimodalSplits,
    VisualProblem,
    engine_answers,
    ensure_multimodal,
    make_multimodal_splits,
)
from paretoserve.workers.llm.routing import split_rows
from paretoserve.workers.llm.tokenizer import BOS, encode, encode_prompt

LIGHT, HEAVY = "mm-low", "mm-high"
FILLER = encode("7")[0]
"""The text token that pads the synthetic prompts of the prefill sweep (any token costs the same)."""


def profile_mm_model(engine: MultimodalEngine, splits: MultimodalSplits, problems: Sequence[VisualProblem],
                     repeats: int) -> dict[str, Any]:
    """Prefill by prompt tokens (visual included), decode step by batch, vision encoder and KV sizes of one model."""
    visual, max_len = engine.visual_tokens, engine.config.max_len
    images = splits.pixels(problems)

    def request(index: int) -> Prefill:
        ids = encode_prompt(problems[index].prompt)
        return lambda: engine.prefill_image(images[index], ids)

    def sweep(text_tokens: int) -> Prefill:
        ids = [BOS, *([FILLER] * (text_tokens - 1))]
        return lambda: engine.prefill_image(images[0], ids)

    report = profile_steps(engine, {visual + n: sweep(n) for n in range(1, max_len - visual)},
                           [request(index) for index in range(len(problems))], repeats)
    text_prompt = float(np.mean([len(encode_prompt(problem.prompt)) for problem in splits.test]))
    output = float(np.mean([len(problem.answer) + 1 for problem in splits.test]))
    per_token = int(report["kvBytesPerToken"])
    fit = report["prefillFit"]
    report.update({
        "visualTokens": visual,
        "visionEncodeMs": median_ms(lambda: engine.encode_image(images[0]), repeats),
        "meanTextPromptTokens": round(text_prompt, 3),
        "meanPromptTokens": round(visual + text_prompt, 3),
        "meanOutputTokens": round(output, 3),
        "prefillFitTextTokens": {"interceptMs": round(fit["interceptMs"] + fit["slopeMs"] * visual, 4),
                                 "slopeMs": fit["slopeMs"]},
        "kvBytesVisual": visual * per_token,
        "kvBytesPerRequestMean": round((visual + text_prompt + output) * per_token, 1),
        "kvBytesPerTextToken": math.ceil(per_token * (visual + text_prompt + output) / (text_prompt + output)),
    })
    return report


def mm_split(catalog: MultimodalCatalog, splits: MultimodalSplits, costs: dict[str, float],
             correct: dict[str, list[bool]], quick: bool) -> dict[str, Any]:
    """The difficulty score's f(t) rows on the test split (fitted on training problems) and what the image adds."""
    train = list(splits.train[: 1000 if quick else SCORER_TRAIN_PROBLEMS])
    train_images, test_images = list(splits.pixels(train)), list(splits.pixels(splits.test))
    train_questions, questions = [problem.prompt for problem in train], [problem.prompt for problem in splits.test]
    low, max_new = catalog.engine(LIGHT), int(catalog.metadata[LIGHT]["max_new_tokens"])
    # the served scorer (what the router asks: mm-scorer, fitted on 4,000 training problems, cached); quick runs fit
    # on 1,000 with the same function
    score = (fit_mm_scorer(low, train_images, train_questions, [problem.answer for problem in train], max_new)
             if quick else ensure_mm_scorer().score())
    low_wrong = [answer != problem.answer for answer, problem in zip(engine_answers(low, splits, train), train,
                                                                      strict=True)]
    text_only = fit_mm_difficulty(train_images, train_questions, low_wrong, use_image=False)
    scores = score.scores(test_images, questions)
    light_wrong = [not right for right in correct[LIGHT]]
    rows = split_rows(scores, correct[LIGHT], correct[HEAVY], quantile_thresholds(scores))
    return {
        "features": list(FEATURES), "weights": [round(w, 4) for w in score.weights],
        "fittedOn": f"{len(train)} training problems ({LIGHT}'s greedy answers, numpy engine)",
        "measuredOn": f"{len(splits.test)} test problems",
        "rocAuc": round(roc_auc(scores, light_wrong), 4),
        "rocAucQuestionOnly": round(roc_auc(text_only.scores(test_images, questions), light_wrong), 4),
        **split_summary(rows, correct[LIGHT], correct[HEAVY], costs[LIGHT], costs[HEAVY]),
    }


def bench_mm(quick: bool = False) -> dict[str, Any]:
    """Profile both multimodal models (trained first if absent) and their query-aware split."""
    catalog = ensure_multimodal()
    splits = make_multimodal_splits()
    problems = list(splits.test[:64])
    repeats = 10 if quick else 50
    report: dict[str, Any] = {"repeats": repeats, "threads": 1, "models": {}}
    costs: dict[str, float] = {}
    correct: dict[str, list[bool]] = {}
    with threadpool_limits(limits=1):  # one thread, as the worker's backend runs it
        for model in (LIGHT, HEAVY):
            engine = catalog.engine(model)
            given = engine_answers(engine, splits, splits.test)
            correct[model] = [answer == problem.answer for answer, problem in zip(given, splits.test, strict=True)]
            metadata = catalog.metadata[model]
            profile = profile_mm_model(engine, splits, problems, repeats)
            report["models"][model] = {
                "exactMatch": round(float(np.mean(correct[model])), 4),
                "recordedExactMatch": catalog.exact_match(model),
                "exactMatchByOperator": metadata["heldout_by_operator"],
                "parameters": metadata["params"],
                **profile,
            }
            costs[model] = request_cost_ms(profile, profile["meanPromptTokens"], profile["meanOutputTokens"])
        report["split"] = mm_split(catalog, splits, costs, correct, quick)
    return report
