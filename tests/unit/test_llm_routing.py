"""The query-aware router's difficulty score and f(t) rows (`paretoserve.workers.llm.routing`): pure logic."""

from __future__ import annotations

import numpy as np
import pytest

from paretoserve.workers.llm.routing import fit_difficulty, prompt_features, split_rows
from paretoserve.workers.llm.tasks import Problem


def test_features_read_the_prompt_text_only() -> None:
    assert list(prompt_features("483+219=")) == [1.0, 3.0, 3.0, 0.0, 0.0, 2.0]  # 3+9 and 8+1+1 carry
    assert list(prompt_features("7-25=")) == [1.0, 1.0, 2.0, 1.0, 0.0, 1.0]  # 25 - 7 borrows once
    assert list(prompt_features("46*8=")) == [1.0, 2.0, 1.0, 0.0, 1.0, 2.0]  # 6x8 and 4x8 carry
    with pytest.raises(ValueError, match="not an arithmetic prompt"):
        prompt_features("483=")


def test_the_score_ranks_the_prompts_the_small_model_fails_above_the_others() -> None:
    rng = np.random.default_rng(0)
    problems = [Problem(int(a), "+", int(b)) for a, b in rng.integers(0, 1000, size=(400, 2))]
    wrong = [p.carries >= 2 for p in problems]  # a small model that fails exactly on two or more carries
    score = fit_difficulty([p.prompt for p in problems], wrong)
    hard = [score(p.prompt) for p, w in zip(problems, wrong, strict=True) if w]
    easy = [score(p.prompt) for p, w in zip(problems, wrong, strict=True) if not w]
    assert min(hard) > max(easy)


def test_rows_send_the_prompts_at_or_above_the_threshold_to_the_large_model() -> None:
    rows = split_rows([0.1, 0.5, 0.9, 0.95], [True, True, False, False], [True, False, True, True],
                      [0.0, 0.5, 0.92, 1.01])
    assert [(r.heavy_fraction, r.exact_match) for r in rows] == [(1.0, 0.75), (0.75, 0.75), (0.25, 0.75),
                                                                 (0.0, 0.5)]
