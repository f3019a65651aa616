"""Deterministic CPU training of the token-generating models, and their held-out exact-match accuracy.

The planner needs each generation variant's measured quality, so every model is trained here from its
recipe: seeded initialisation and shuffling, one intra-op thread (the catalog's
:func:`~paretoserve.workers.models.training.single_thread`: reproducible reductions, no oversubscription),
AdamW under a one-cycle schedule, teacher forcing on ``BOS prompt answer EOS`` with the loss on the answer
and ``EOS`` only. Quality is exact match of the whole greedy answer on the held-out test split, overall and
per difficulty bucket (operator and operand digits, carries, answer length). Caching the results is
:mod:`paretoserve.workers.llm.cache`'s job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from paretoserve.workers.llm.config import ARITH_LARGE, ARITH_SMALL, MAX_SEQUENCE, ModelConfig
from paretoserve.workers.llm.model import ArithLM, generate_full
from paretoserve.workers.llm.tasks import MAX_ANSWER_CHARS, Problem, TaskSplits, accuracy_by, bucket_sizes
from paretoserve.workers.llm.tokenizer import PAD, VOCAB_SIZE, answer_span, decode, encode_example, encode_prompt
from paretoserve.workers.models.training import single_thread

IGNORE = -100
"""Target id of the positions the loss skips (prompt and padding)."""
MAX_NEW_TOKENS = MAX_ANSWER_CHARS + 1
"""The longest answer and its ``EOS``."""
DIFFICULTY_KEYS: dict[str, Callable[[Problem], str]] = {
    "bucket": lambda problem: problem.bucket,
    "carries": lambda problem: problem.carry_bucket,
    "answer_length": lambda problem: problem.answer_bucket,
}
"""The difficulty groupings accuracy is reported by (see :class:`~paretoserve.workers.llm.tasks.Problem`)."""


@dataclass(frozen=True)
class LMRecipe:
    """How one model is trained."""

    config: ModelConfig
    epochs: int
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    seed: int = 0

    @property
    def name(self) -> str:
        return self.config.name


RECIPES: tuple[LMRecipe, ...] = (
    LMRecipe(ARITH_SMALL, epochs=6, batch_size=64, learning_rate=3e-3),
    LMRecipe(ARITH_LARGE, epochs=12, batch_size=64, learning_rate=3e-3),
)
"""The family, small first; both take about 7.5 minutes on one busy CPU thread (1.5 for small). Sized to that
budget: a 4-layer, d=128 model costs ~60 s an epoch here and is far from converged in 5 epochs (13 % exact
match after 4), while 3 layers at d=96 for 12 epochs reaches ~79 % against ~28 % for 2 layers at d=64."""


@dataclass(frozen=True)
class Evaluation:
    """Exact match of greedy answers on one split, overall and per difficulty grouping."""

    exact_match: float
    correct: int
    size: int
    by: dict[str, dict[str, float]] = field(default_factory=dict)
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainedLM:
    recipe: LMRecipe
    model: ArithLM
    test: Evaluation
    validation: Evaluation
    train_size: int
    training_seconds: float
    final_loss: float


def teacher_forcing(problems: Sequence[Problem]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``[N, L-1]`` (``BOS prompt answer EOS`` padded to :data:`MAX_SEQUENCE`, less the last token) and
    targets ``[N, L-1]`` (the next token on answer and ``EOS`` positions, :data:`IGNORE` elsewhere)."""
    tokens = np.full((len(problems), MAX_SEQUENCE), PAD, dtype=np.int64)
    targets = np.full((len(problems), MAX_SEQUENCE - 1), IGNORE, dtype=np.int64)
    for row, problem in enumerate(problems):
        sequence = encode_example(problem.prompt, problem.answer)
        tokens[row, : len(sequence)] = sequence
        start, end = answer_span(problem.prompt, problem.answer)
        targets[row, start - 1 : end - 1] = sequence[start:end]
    return torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(targets)


class Schedule(Protocol):
    """What a training loop reads of a recipe (both families' recipes have it)."""

    @property
    def epochs(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def warmup_fraction(self) -> float: ...
    @property
    def seed(self) -> int: ...


Forward = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
"""Logits ``[rows, width, V]`` of the training rows ``rows``, truncated at ``width`` steps (the generator draws any
augmentation)."""


def train_loop(model: nn.Module, targets: torch.Tensor, recipe: Schedule, forward: Forward) -> float:
    """Mini-batch AdamW, one-cycle schedule, seeded shuffling over the rows of ``targets`` (teacher forcing,
    :data:`IGNORE` where no loss applies); returns the mean loss of the last epoch. Both families train here."""
    count = len(targets)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay,
                                  betas=(0.9, 0.98))
    steps_per_epoch = math.ceil(count / recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.learning_rate,
                                                   total_steps=recipe.epochs * steps_per_epoch,
                                                   pct_start=recipe.warmup_fraction)
    generator = torch.Generator().manual_seed(recipe.seed)
    model.train()
    epoch_loss = math.nan
    for _ in range(recipe.epochs):
        order = torch.randperm(count, generator=generator)
        total, batches = 0.0, 0
        for start in range(0, count, recipe.batch_size):
            rows = order[start : start + recipe.batch_size]
            batch_targets = targets[rows]
            width = int((batch_targets != IGNORE).nonzero()[:, 1].max()) + 1  # no step past the last target
            logits = forward(rows, width, generator)
            loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB_SIZE),
                                               batch_targets[:, :width].reshape(-1), ignore_index=IGNORE)
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
            batches += 1
        epoch_loss = total / batches
    model.eval()
    return epoch_loss


def fit(model: ArithLM, problems: Sequence[Problem], recipe: LMRecipe) -> float:
    """:func:`train_loop` over the problems' teacher-forcing sequences."""
    inputs, targets = teacher_forcing(problems)
    return train_loop(model, targets, recipe, lambda rows, width, _: model(inputs[rows, :width]))


def answers(model: ArithLM, problems: Sequence[Problem]) -> list[str]:
    """The model's greedy answers (full recomputation, batched by prompt length)."""
    generated = generate_full(model, [encode_prompt(problem.prompt) for problem in problems], MAX_NEW_TOKENS)
    return [decode(tokens) for tokens in generated]


def evaluate(model: ArithLM, problems: Sequence[Problem]) -> Evaluation:
    """Exact match of the whole answer, overall and per :data:`DIFFICULTY_KEYS` grouping."""
    correct = [given == problem.answer for given, problem in zip(answers(model, problems), problems, strict=True)]
    return Evaluation(
        exact_match=round(sum(correct) / len(problems), 4),
        correct=sum(correct),
        size=len(problems),
        by={name: accuracy_by(problems, correct, key) for name, key in DIFFICULTY_KEYS.items()},
        sizes={name: bucket_sizes(problems, key) for name, key in DIFFICULTY_KEYS.items()},
    )


def train_model(recipe: LMRecipe, splits: TaskSplits) -> TrainedLM:
    """Train ``recipe`` on ``splits.train`` (seeded, one thread) and evaluate it on the held-out splits."""
    with single_thread():
        started = time.perf_counter()
        torch.manual_seed(recipe.seed)
        model = ArithLM(recipe.config)
        final_loss = fit(model, splits.train, recipe)
        seconds = time.perf_counter() - started
        test, validation = evaluate(model, splits.test), evaluate(model, splits.validation)
    return TrainedLM(recipe=recipe, model=model, test=test, validation=validation, train_size=len(splits.train),
                     training_seconds=seconds, final_loss=final_loss)
