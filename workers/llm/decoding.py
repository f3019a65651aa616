"""Greedy decoding with a KV cache, once for every engine (torch text, torch multimodal, numpy).

Each engine prefills its prompts and hands the first tokens here with a ``step`` that runs one batched decode step
for the sequences still running; this loop owns the stop rule -- a sequence ends at ``EOS`` (not returned), after
``max_new_tokens`` tokens (``EOS`` counted) or when its cache reaches the model's ``max_len`` -- so every path
stops where the others do. Pure Python: no torch, no numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from paretoserve.workers.llm.tokenizer import EOS

Step = Callable[[list[int], list[int]], Sequence[int]]
"""``step(running, last_tokens)``: one decode step of the sequences ``running`` (their indices) fed their last
tokens; returns each one's next (greedy) token, in the same order."""


def continues(generated: int, cache_length: int, *, max_new_tokens: int, max_len: int) -> bool:
    """Whether a sequence that has just emitted its ``generated``-th token (not ``EOS``) decodes another: the stop
    rule every path shares (the streaming batcher of :mod:`.serving` too)."""
    return generated < max_new_tokens and cache_length < max_len


def greedy_decode(first_tokens: Sequence[int], step: Step, cache_length: Callable[[int], int], *,
                  max_new_tokens: int, max_len: int) -> list[list[int]]:
    """Each sequence's generated tokens (without ``EOS``), from its prefill's token onwards."""
    outputs: list[list[int]] = [[] for _ in first_tokens]
    running = list(range(len(first_tokens)))
    chosen = list(first_tokens)
    while running:
        still: list[int] = []
        for index, token in zip(running, chosen, strict=True):
            if token == EOS:
                continue
            outputs[index].append(token)
            if continues(len(outputs[index]), cache_length(index), max_new_tokens=max_new_tokens, max_len=max_len):
                still.append(index)
        running = still
        if running:
            chosen = list(step(running, [outputs[i][-1] for i in running]))
    return outputs
