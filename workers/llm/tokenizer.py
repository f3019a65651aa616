"""Character-level vocabulary of the arithmetic task: what both the torch model and the numpy engine read.

A token-generating stage needs one fixed mapping between text and ids that the trainer, the offline torch
model and the served numpy engine share, with no download (no pretrained tokenizer). The task's text uses
digits and ``+ - * =`` only, so one id per character plus the three specials is enough: ``PAD`` (id 0,
padding in training batches, never predicted), ``BOS`` (opens every sequence) and ``EOS`` (ends an answer).
A sequence is ``BOS prompt answer EOS``, e.g. ``BOS 4 8 3 + 2 1 9 = 7 0 2 EOS``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PAD, BOS, EOS = 0, 1, 2
SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>")
CHARACTERS = "0123456789+-*="
VOCAB: tuple[str, ...] = (*SPECIALS, *CHARACTERS)
VOCAB_SIZE = len(VOCAB)
_IDS: dict[str, int] = {character: index for index, character in enumerate(VOCAB) if index >= len(SPECIALS)}


def encode(text: str) -> list[int]:
    """The ids of ``text``'s characters (no specials added); an unknown character is a ``ValueError``."""
    try:
        return [_IDS[character] for character in text]
    except KeyError as error:
        raise ValueError(f"character {error.args[0]!r} is not in the vocabulary {CHARACTERS!r}") from None


def decode(ids: Iterable[int]) -> str:
    """The text of ``ids`` up to the first ``EOS``; ``PAD`` and ``BOS`` are dropped."""
    characters: list[str] = []
    for token in ids:
        if token == EOS:
            break
        if token in (PAD, BOS):
            continue
        if not 0 <= token < VOCAB_SIZE:
            raise ValueError(f"token id {token} is outside the vocabulary (size {VOCAB_SIZE})")
        characters.append(VOCAB[token])
    return "".join(characters)


def encode_prompt(prompt: str) -> list[int]:
    """``BOS`` followed by the prompt's ids: what a model is prefilled with."""
    return [BOS, *encode(prompt)]


def encode_example(prompt: str, answer: str) -> list[int]:
    """``BOS prompt answer EOS``: one teacher-forcing sequence."""
    return [BOS, *encode(prompt), *encode(answer), EOS]


def answer_span(prompt: str, answer: str) -> tuple[int, int]:
    """The ``[start, end)`` positions in :func:`encode_example` of the tokens the loss is on: answer and ``EOS``."""
    start = 1 + len(prompt)
    return start, start + len(answer) + 1


def pad_batch(sequences: Sequence[Sequence[int]], length: int | None = None) -> list[list[int]]:
    """Right-pad ``sequences`` with ``PAD`` to ``length`` (default: the longest)."""
    width = max((len(sequence) for sequence in sequences), default=0) if length is None else length
    if any(len(sequence) > width for sequence in sequences):
        raise ValueError(f"a sequence is longer than the padded length {width}")
    return [[*sequence, *([PAD] * (width - len(sequence)))] for sequence in sequences]
