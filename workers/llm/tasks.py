"""The text task of the token-generating models: integer arithmetic written out, with exact answers.

No model can be downloaded, so the token-generating stages are small transformers trained here, on a task
whose quality is measured exactly: ``483+219=`` must be answered ``702`` (exact match of the whole answer).
Prompts differ in difficulty (operator, operand digits, carries or borrows) and in output length (``7``,
``-333``, ``1998``), which is what a serving system for generation must cope with. ``+`` and ``-`` take
operands of 1 to 3 digits (a difference may be negative), ``*`` smaller ones (1 or 2 digits times 1 digit).

Everything derives from one seed: a fixed hash of each prompt reserves 5 % of the prompt space for the test
split and 5 % for validation (every bucket alike, even ``add-1d`` with its 100 prompts), and
:func:`make_splits` draws problems from one seeded stream into the split their prompt belongs to, so the
three splits are fixed and their prompts disjoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

OPERATOR_NAMES: Mapping[str, str] = {"+": "add", "-": "sub", "*": "mul"}
MAX_PROMPT_CHARS = 8
"""``999+999=``."""
MAX_ANSWER_CHARS = 4
"""``1998``, ``-998`` (``*`` at most ``99*9=891``)."""


def _digits(number: int) -> list[int]:
    """Decimal digits of ``number`` >= 0, least significant first."""
    return [int(character) for character in reversed(str(number))]


def carries(left: int, operator: str, right: int) -> int:
    """Carries of column addition (``+``), borrows of the larger minus the smaller operand (``-``), or digit
    pairs whose product is at least 10 and so carries into the next column (``*``)."""
    if operator == "*":
        return sum(1 for a in _digits(left) for b in _digits(right) if a * b >= 10)
    if operator == "-":
        left, right = max(left, right), min(left, right)
    top, bottom = _digits(left), _digits(right)
    count = carry = 0
    for column in range(len(top)):
        b = bottom[column] if column < len(bottom) else 0
        total = top[column] + b + carry if operator == "+" else top[column] - b - carry
        carry = int(total >= 10) if operator == "+" else int(total < 0)
        count += carry
    if operator == "+":
        for column in range(len(top), len(bottom)):  # only when ``right`` is the longer operand
            carry = int(bottom[column] + carry >= 10)
            count += carry
    return count


@dataclass(frozen=True)
class Problem:
    """One prompt, e.g. ``Problem(483, "+", 219)``: ``483+219=`` -> ``702``."""

    left: int
    operator: str
    right: int

    @property
    def prompt(self) -> str:
        return f"{self.left}{self.operator}{self.right}="

    @property
    def result(self) -> int:
        if self.operator == "+":
            return self.left + self.right
        if self.operator == "-":
            return self.left - self.right
        return self.left * self.right

    @property
    def answer(self) -> str:
        return str(self.result)

    @property
    def digits(self) -> int:
        """Digits of the longer operand."""
        return max(len(str(self.left)), len(str(self.right)))

    @property
    def carries(self) -> int:
        return carries(self.left, self.operator, self.right)

    @property
    def bucket(self) -> str:
        """The difficulty bucket by operator and operand digits, e.g. ``add-3d``, ``mul-2d``."""
        return f"{OPERATOR_NAMES[self.operator]}-{self.digits}d"

    @property
    def carry_bucket(self) -> str:
        """The difficulty bucket by carries (borrows, carrying digit products): ``carries-0`` .. ``carries-3+``."""
        return f"carries-{self.carries}" if self.carries < 3 else "carries-3+"

    @property
    def answer_bucket(self) -> str:
        """The output-length bucket: ``answer-1`` .. ``answer-4`` characters."""
        return f"answer-{len(self.answer)}"


@dataclass(frozen=True)
class TaskSpec:
    """Everything that determines the three splits."""

    seed: int = 0
    train_size: int = 48_000
    validation_size: int = 2_000
    test_size: int = 2_000
    digit_weights: tuple[float, ...] = (0.2, 0.3, 0.5)
    """Relative odds of an operand of ``+`` or ``-`` having 1, 2, 3 digits."""
    mul_digit_weights: tuple[float, ...] = (0.3, 0.7)
    """The same for one operand of ``*``; the other has one digit (on a side drawn at random)."""
    operator_weights: tuple[tuple[str, float], ...] = (("+", 0.4), ("-", 0.4), ("*", 0.2))
    test_percent: int = 5
    """Hundredths of the prompt space (by :func:`region`) reserved for the test split..."""
    validation_percent: int = 5
    """... and the next ones for validation; the rest is for training."""


@dataclass(frozen=True)
class TaskSplits:
    """Disjoint problems: ``train`` for teacher forcing, ``validation`` and ``test`` held out."""

    spec: TaskSpec
    train: tuple[Problem, ...]
    validation: tuple[Problem, ...]
    test: tuple[Problem, ...]


DEFAULT_TASK = TaskSpec()


_OPERATOR_CODES: Mapping[str, int] = {"+": 0, "-": 1, "*": 2}
_MASK64 = (1 << 64) - 1


def region(problem: Problem, seed: int) -> int:
    """Which hundredth (0..99) of the prompt space ``problem`` falls in: a fixed hash (splitmix64) of the prompt
    and the seed. Regions decide the split, so each bucket, however small its prompt space, is split alike."""
    state = (((problem.left * 1000 + problem.right) * 3 + _OPERATOR_CODES[problem.operator]) ^ (seed << 32)) & _MASK64
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (state ^ (state >> 31)) % 100


def split_of(problem: Problem, spec: TaskSpec = DEFAULT_TASK) -> str:
    """``test``, ``validation`` or ``train``: the split a prompt may belong to (by :func:`region`)."""
    where = region(problem, spec.seed)
    if where < spec.test_percent:
        return "test"
    return "validation" if where < spec.test_percent + spec.validation_percent else "train"


def sample_problems(rng: np.random.Generator, count: int, spec: TaskSpec = DEFAULT_TASK) -> list[Problem]:
    """``count`` problems: the operator by :attr:`TaskSpec.operator_weights`, each operand's digit count by
    :attr:`TaskSpec.digit_weights` (``*``: :attr:`TaskSpec.mul_digit_weights`), then the operand uniform among
    the numbers of that many digits (one digit: 0..9); one operand of ``*`` is a single digit."""
    operators = [operator for operator, _ in spec.operator_weights]
    weights = np.array([weight for _, weight in spec.operator_weights], dtype=np.float64)
    picks = rng.choice(len(operators), size=count, p=weights / weights.sum())
    cumulative = [np.cumsum(spec.mul_digit_weights if op == "*" else spec.digit_weights) for op in operators]
    operands = []
    for _ in range(2):
        draws = rng.random(count)
        digits = np.ones(count, dtype=np.int64)
        for code, bounds in enumerate(cumulative):
            rows = picks == code
            digits[rows] = 1 + np.searchsorted(bounds / bounds[-1], draws[rows], side="right")
        low = np.where(digits == 1, 0, 10 ** (digits - 1))
        operands.append(low + np.floor(rng.random(count) * (10**digits - low)).astype(np.int64))
    left, right = operands
    multiply = picks == operators.index("*") if "*" in operators else np.zeros(count, dtype=bool)
    swap = rng.random(count) < 0.5
    right = np.where(multiply, right % 10, right)  # the single-digit operand of ``*``...
    left, right = np.where(multiply & swap, right, left), np.where(multiply & swap, left, right)  # ...on either side
    return [Problem(int(a), operators[int(op)], int(b)) for op, a, b in zip(picks, left, right, strict=True)]


def make_splits(spec: TaskSpec = DEFAULT_TASK) -> TaskSplits:
    """The fixed test, validation and training problems of ``spec``: drawn in chunks from one seeded stream,
    each kept by the split its prompt's :func:`split_of` names until that split is full. Held-out prompts are
    unique (each counts once); training keeps repeats, so it follows the sampling distribution (the 100
    prompts of ``add-1d`` are a ninth of the additions drawn, not a ninth of a percent)."""
    if len(spec.digit_weights) > 3 or len(spec.mul_digit_weights) > 2:
        raise ValueError("operands are limited to 3 digits (+, -) and 2 digits (*): answers fit 4 characters")
    rng = np.random.default_rng(spec.seed)
    wanted = {"test": spec.test_size, "validation": spec.validation_size, "train": spec.train_size}
    kept: dict[str, list[Problem]] = {name: [] for name in wanted}
    seen: set[str] = set()
    for _ in range(1000):
        if all(len(kept[name]) >= size for name, size in wanted.items()):
            break
        for problem in sample_problems(rng, 16_384, spec):
            name = split_of(problem, spec)
            if len(kept[name]) < wanted[name] and (name == "train" or problem.prompt not in seen):
                seen.add(problem.prompt)
                kept[name].append(problem)
    else:
        raise ValueError(f"{spec} asks for more distinct prompts than its operands allow")
    return TaskSplits(spec=spec, train=tuple(kept["train"]), validation=tuple(kept["validation"]),
                      test=tuple(kept["test"]))


def accuracy_by(problems: Sequence[Problem], correct: Sequence[bool],
                key: Callable[[Problem], str]) -> dict[str, float]:
    """Exact-match accuracy per bucket ``key(problem)``, buckets sorted by name."""
    totals: dict[str, list[int]] = {}
    for problem, right in zip(problems, correct, strict=True):
        counts = totals.setdefault(key(problem), [0, 0])
        counts[0] += int(right)
        counts[1] += 1
    return {bucket: round(hits / count, 4) for bucket, (hits, count) in sorted(totals.items())}


def bucket_sizes(problems: Sequence[Problem], key: Callable[[Problem], str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for problem in problems:
        sizes[key(problem)] = sizes.get(key(problem), 0) + 1
    return dict(sorted(sizes.items()))
