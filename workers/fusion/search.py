"""GMorph's search: simulated annealing over fusion graphs, for the lowest latency within an accuracy bound.

Each step starts from the unfused graph or, with probability ``p``, from one of the elite candidates (graphs
already fine-tuned within θ; drawn with Boltzmann weights on their latency, so a hot search picks any of them as
GMorph does and a cool one builds on the fastest), applies ``mergesPerStep`` random
:class:`~paretoserve.workers.fusion.graph.Share` mutations, skips graphs it has seen, and fine-tunes the result
from its starting point's weights (with the learning-curve filter, GMorph "w P"). A graph within θ joins the
elites (the oldest leaves a full set). The temperature cools exponentially; ``p`` grows as the elites fill and
the temperature falls (GMorph's ``get_probability``), so the search moves from broad single merges to deeper
fusions of good graphs. It ends at ``maxCandidates`` fine-tuned graphs, the time budget or the minimum
temperature.

Every random choice comes from one ``random.Random(seed)`` and every fine-tuning is seeded by the graph, so a
search is deterministic; candidates are cached by the session, so running it again resumes it.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from paretoserve.workers.fusion.graph import FusionGraph
from paretoserve.workers.fusion.session import Candidate, FusionSession


@dataclass
class SearchResult:
    theta: float
    candidates: list[Candidate] = field(default_factory=list)
    """Every graph fine-tuned (or read from the cache), in the order the search visited them."""
    steps: int = 0
    skipped: int = 0
    seconds: float = 0.0
    ended: str = ""
    """``candidates``, ``budget``, ``temperature`` or ``exhausted`` (:data:`EXHAUSTED_AFTER` misses in a row)."""

    def best(self, session: FusionSession) -> Candidate:
        """The fastest graph within θ (the unfused graph if none is)."""
        within = [c for c in self.candidates if c.meets]
        return min(within, key=lambda c: c.estimated_ms) if within else unfused_candidate(session)


def unfused_candidate(session: FusionSession) -> Candidate:
    return Candidate(key=session.unfused.key, describe="unfused", base="", val_accuracy=session.baseline,
                     drops=(0.0,), stop="met", epochs=0, seconds=0.0,
                     estimated_ms=session.estimate_ms(session.unfused), meets=True)


class Progress:
    """A one-line progress bar on stderr (rewritten in place on a terminal, one line per update otherwise)."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total, self.label = total, label
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()

    def update(self, done: int, note: str) -> None:
        width = 24
        filled = min(width, round(width * done / max(1, self.total)))
        line = (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                f"{time.monotonic() - self.started:5.0f}s  {note}")
        tty = self.stream.isatty()
        self.stream.write(("\r" + line[:160]) if tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream.isatty():
            self.stream.write("\n")


def probability(drop: float, temperature: float, initial: float, elites: int, capacity: int) -> float:
    """GMorph's chance of starting a step from an elite instead of the unfused graph."""
    return (1.0 - math.exp(-(1.0 - drop) / temperature * initial)) * math.sqrt(elites / capacity)


def search(session: FusionSession, theta: float, *, budget_s: float | None = None,
           progress: Progress | None = None, clock: Callable[[], float] = time.monotonic) -> SearchResult:
    """Run the search of ``session.spec`` at bound ``theta`` (see the module doc)."""
    settings = session.spec.spec.search
    budget = settings.budget_minutes * 60.0 if budget_s is None else budget_s
    rng = random.Random(settings.seed)
    started = clock()
    result = SearchResult(theta=theta)
    elites: list[tuple[FusionGraph, Candidate]] = []
    seen = {session.unfused.key}
    temperature, p = settings.initial_temperature, 0.0
    misses = 0
    base_unfused = unfused_candidate(session)
    while True:
        if len(result.candidates) >= settings.max_candidates:
            result.ended = "candidates"
            break
        if clock() - started >= budget:
            result.ended = "budget"
            break
        if temperature < settings.min_temperature:
            result.ended = "temperature"
            break
        if misses >= EXHAUSTED_AFTER:
            result.ended = "exhausted"
            break
        base_graph, base = (session.unfused, base_unfused)
        if elites and rng.random() < p:
            base_graph, base = elites[_pick_elite(elites, temperature / settings.initial_temperature,
                                                  base_unfused.estimated_ms, rng)]
        graph = _mutate(base_graph, rng, settings.merges_per_step)
        if graph is None or graph.key in seen:
            result.skipped += 1
            misses += 1
            continue
        seen.add(graph.key)
        misses = 0
        candidate = session.evaluate(graph, base, theta)
        result.candidates.append(candidate)
        result.steps += 1
        temperature = settings.initial_temperature * settings.cooling ** result.steps
        p = probability(candidate.max_drop, temperature, settings.initial_temperature, len(elites), settings.elites)
        if candidate.meets:
            if len(elites) >= settings.elites:
                elites.pop(0)
            elites.append((graph, candidate))
        if progress is not None:
            best = result.best(session)
            progress.update(len(result.candidates), f"best {best.estimated_ms:.3f} ms "
                            f"({base_unfused.estimated_ms / best.estimated_ms:.2f}x) {best.describe}"[:100])
    result.seconds = clock() - started
    if progress is not None:
        progress.close()
    return result


EXHAUSTED_AFTER = 300
"""Mutations in a row that give only graphs already seen: the search has run out of new graphs near its
elites and ends (``exhausted``)."""
ELITE_GREED = 10.0
"""How strongly a cool search prefers fast elites: weight exp(-GREED · Δ(latency / unfused latency) / (T/T0))."""


def _pick_elite(elites: Sequence[tuple[FusionGraph, Candidate]], relative_temperature: float, unfused_ms: float,
                rng: random.Random) -> int:
    """An elite drawn with Boltzmann weights on its latency: uniform while hot (as GMorph), the fastest once cold."""
    relative = [candidate.estimated_ms / unfused_ms for _, candidate in elites]
    fastest = min(relative)
    weights = [math.exp(-ELITE_GREED * (r - fastest) / max(relative_temperature, 1e-9)) for r in relative]
    return rng.choices(range(len(elites)), weights=weights)[0]


def _mutate(graph: FusionGraph, rng: random.Random, merges: int) -> FusionGraph | None:
    for _ in range(merges):
        moves = graph.share_moves()
        if not moves:
            return None
        graph = graph.apply(moves[rng.randrange(len(moves))])
    return graph


def pareto(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates within θ that no other beats on latency and every task's accuracy, fastest first."""
    within = sorted({c.key: c for c in candidates if c.meets}.values(), key=lambda c: (c.estimated_ms, c.key))
    kept: list[Candidate] = []
    for candidate in within:
        dominated = any(
            other.estimated_ms <= candidate.estimated_ms
            and all(o >= c for o, c in zip(other.val_accuracy, candidate.val_accuracy, strict=True))
            and (other.estimated_ms < candidate.estimated_ms
                 or any(o > c for o, c in zip(other.val_accuracy, candidate.val_accuracy, strict=True)))
            for other in within if other is not candidate)
        if not dominated:
            kept.append(candidate)
    return kept
