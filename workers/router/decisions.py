"""Pure routing decisions: variant split, cascade deferral, request-feature pre-routing, stage order.

Everything the router *decides* is a pure function here, so it is unit-tested without sockets and
the planner's offline curves (f(t), the HADIS rows) can be recomputed with exactly the code that
serves traffic. The I/O around these decisions lives in :mod:`.pipeline`.

- **Weighted split** (several variants of one stage): the request id is hashed to a point in
  [0, 1) and mapped onto the cumulative weights, so a given id always lands on the same variant and
  a large population splits in proportion to the weights.
- **Cascade deferral** (DiffServe): after the light model answered, a row is deferred to the heavy
  model when its score is below the threshold ``t``. The ``confidence`` router scores a row by the
  light model's max softmax; the ``discriminator`` router by ``1 − P(light wrong)`` from the
  discriminator model. Either way the deferred share f(t) grows with ``t``: 0 at ``t = 0``,
  (almost) everything at ``t = 1``.
- **Pre-routing** (HADIS ``prompt``/``hybrid``): a cheap hardness score computed from the request
  itself (:func:`~paretoserve.workers.digit_hardness.hardness`, re-exported here) sends rows predicted to be hard
  straight to the heavy model, skipping the light pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from enum import StrEnum

from paretoserve.workers.digit_hardness import hardness as hardness


class Route(StrEnum):
    """How a row of a stage was answered (the ``route`` label of ``paretoserve_router_requests_total``)."""

    DIRECT = "direct"
    """A stage without a cascade: the chosen variant answered."""
    LIGHT = "light"
    """Cascade: the light model answered and its score passed the threshold."""
    HEAVY = "heavy"
    """Cascade: deferred after the light model, the heavy model answered."""
    PREROUTED = "prerouted"
    """Cascade: predicted hard from the request features, sent straight to the heavy model."""
    FALLBACK = "fallback"
    """The intended model failed; another model (or variant) answered instead."""


def request_point(request_id: str) -> float:
    """A uniform, deterministic point in [0, 1) for ``request_id`` (BLAKE2b, 64 bits)."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def choose_variant(variants: Sequence[tuple[str, float]], request_id: str) -> str:
    """The variant a request goes to under a weighted split, deterministic in ``request_id``.

    ``variants`` are ``(model, weight)`` pairs with non-negative weights and a positive total;
    zero-weight variants are never chosen (they remain fallbacks).
    """
    if len(variants) == 1:
        return variants[0][0]
    total = sum(weight for _, weight in variants)
    if total <= 0:
        raise ValueError("variant weights must have a positive total")
    point = request_point(request_id) * total
    cumulative = 0.0
    for model, weight in variants:
        cumulative += weight
        if point < cumulative and weight > 0:
            return model
    return next(model for model, weight in reversed(variants) if weight > 0)


def fallback_variants(variants: Sequence[tuple[str, float]], failed: str) -> list[str]:
    """The other variants of a stage to try after ``failed``: heaviest weight first, then by name."""
    others = [(model, weight) for model, weight in variants if model != failed]
    return [model for model, _ in sorted(others, key=lambda pair: (-pair[1], pair[0]))]


def defer_by_confidence(confidence: Sequence[float], threshold: float) -> list[bool]:
    """Confidence router: defer a row when the light model's max softmax is below ``threshold``."""
    return [value < threshold for value in confidence]


def discriminator_score(p_light_wrong: float) -> float:
    """The discriminator router's score of a row: ``1 − P(light model wrong)``."""
    return 1.0 - p_light_wrong


def defer_by_discriminator(p_light_wrong: Sequence[float], threshold: float) -> list[bool]:
    """Discriminator router: defer a row when ``1 − P(light wrong)`` is below ``threshold``."""
    return [discriminator_score(value) < threshold for value in p_light_wrong]


def preroute(hardness_values: Sequence[float], pre_route_threshold: float) -> list[bool]:
    """Prompt/hybrid pre-router: send a row straight to the heavy model when hardness >= threshold."""
    return [value >= pre_route_threshold for value in hardness_values]


def topological_order(depends_on: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """Stages ordered so each comes after everything it depends on (ties keep declaration order).

    Raises ``ValueError`` naming a stage on a cycle, or one that depends on an unknown stage.
    """
    for stage, deps in depends_on.items():
        for dep in deps:
            if dep not in depends_on:
                raise ValueError(f"stage {stage!r} depends on unknown stage {dep!r}")
    order: list[str] = []
    placed: set[str] = set()
    remaining = list(depends_on)
    while remaining:
        ready = [stage for stage in remaining if all(dep in placed for dep in depends_on[stage])]
        if not ready:
            raise ValueError(f"stage {remaining[0]!r} is on a dependency cycle")
        order.extend(ready)
        placed.update(ready)
        remaining = [stage for stage in remaining if stage not in placed]
    return tuple(order)

