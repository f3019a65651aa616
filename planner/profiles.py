"""Latency and throughput models built from measured points.

Three forms appear in the seed systems and in our manifests: a table of measured (batch, CPU, Triton
instances) points (IPA, DiffServe, our profiler); Sponge's fitted l(b, c) = γ·b/c + δ·b + ε/c + η; and
InfAdapter's linear capacity-versus-cores model. This module turns any of them into `Option`s for the
planner and fits the two parametric models from measurements (least squares, no I/O).

Every option a parsed manifest declares becomes an option here: the parser has already refused fits
that give a non-positive latency or capacity on the grid (a variant is never dropped silently), and
`Stage.option_count` bounds what this module enumerates (points at batch sizes the stage does not allow
and cores outside its CPU bounds are skipped; nothing else is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from paretoserve.planner.model import Option
from paretoserve.planner.spec import Generation, SpecError, Stage, TokenProfile, Variant


@dataclass(frozen=True, slots=True)
class Measurement:
    batch: int
    cpu: float
    latency_ms: float
    throughput_rps: float | None = None


@dataclass(frozen=True, slots=True)
class SpongeCoefficients:
    gamma: float
    delta: float
    epsilon: float
    eta: float

    def latency_ms(self, batch: int, cpu: float) -> float:
        return self.gamma * batch / cpu + self.delta * batch + self.epsilon / cpu + self.eta


@dataclass(frozen=True, slots=True)
class LinearCapacityModel:
    slope: float
    intercept: float

    def capacity(self, cpu: float) -> float:
        return max(0.0, self.slope * cpu + self.intercept)


def fit_sponge(points: Sequence[Measurement]) -> SpongeCoefficients:
    """Least-squares fit of Sponge's l(b, c) = γ·b/c + δ·b + ε/c + η (needs ≥ 4 distinct points)."""
    if len({(p.batch, p.cpu) for p in points}) < 4:
        raise ValueError("fitting l(b, c) needs at least 4 distinct (batch, cpu) points")
    a = np.array([[p.batch / p.cpu, p.batch, 1.0 / p.cpu, 1.0] for p in points])
    y = np.array([p.latency_ms for p in points])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return SpongeCoefficients(*(float(c) for c in coef))


def fit_linear_capacity(points: Sequence[Measurement]) -> LinearCapacityModel:
    """InfAdapter's linear capacity model: throughput ≈ slope·cores + intercept."""
    usable = [p for p in points if p.throughput_rps is not None]
    if len({p.cpu for p in usable}) < 2:
        raise ValueError("fitting capacity needs throughput at two or more core counts")
    x = np.array([p.cpu for p in usable])
    y = np.array([p.throughput_rps for p in usable], dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    return LinearCapacityModel(float(slope), float(intercept))


def _within(cpu: float, stage: Stage) -> bool:
    low, high = stage.bounds.min_cpu, stage.bounds.max_cpu
    return (low is None or cpu >= low - 1e-9) and (high is None or cpu <= high + 1e-9)


def token_options(tokens: TokenProfile, generation: Generation, batch_sizes: Sequence[int],
                  cpu: float) -> list[tuple[int, float, int, float, float]]:
    """(batch, cpu, instances, latency, throughput) of a token-generating variant at each most-sequences-at-once
    ``B`` that its KV cache holds and that meets the stage's TTFT and ITL SLOs.

    A replica runs iterations: it prefills the newcomers (``prefill(P)`` each: a request's first token), then
    takes one decode step for every running sequence, newcomers included (``step(B)``). A request of O tokens
    holds a slot for O − 1 iterations, so a full replica admits ``n = B / (O − 1)`` newcomers per iteration
    and an iteration, the gap between two tokens of a running sequence, lasts ``ITL = step(B) + max(1, n)·
    prefill(P)``: newcomers' prefills stall the batch. A request waits for the iteration under way, then for
    its round's prefills: ``TTFT = ITL + max(1, n)·prefill(P)``; its latency is ``TTFT + (O − 1)·ITL``. Both
    are taken at a full batch, the worst case. A replica carries ``n`` requests per iteration, i.e.
    ``1 / (prefill(P) + (O − 1)·step(B) / B)`` per unit of time. prefill(P) here is what a request costs the
    replica as served: the engine's prefill plus the profile's ``requestOverheadMs`` (the server's front end
    and its response per token, which on the Python backend cost more than the engine). The simulator's token pools
    (`sim/tokens.py`) run the iterations themselves and check this model."""
    out = []
    prompt, output = generation.prompt_tokens, generation.output_tokens
    prefill = tokens.served_prefill_ms(prompt)  # the engine's prefill and the server's per-request overhead
    decoded = max(0.0, output - 1)  # tokens after the first, one per iteration
    for b in batch_sizes:
        if b * (prompt + output) * tokens.kv_bytes_per_token > tokens.kv_budget_bytes:
            continue
        step = tokens.decode_step.at(b)
        newcomers = max(1.0, b / decoded) if decoded > 0 else float(b)
        itl = step + newcomers * prefill
        ttft = itl + newcomers * prefill
        if generation.ttft_ms is not None and ttft > generation.ttft_ms:
            continue
        if generation.itl_ms is not None and decoded > 0 and itl > generation.itl_ms:
            continue
        latency = ttft + decoded * itl
        if not latency > 0:
            continue
        out.append((b, cpu, 1, latency, 1000.0 / (prefill + decoded * step / b)))
    return out


def variant_options(variant: Variant, stage: Stage, *, utilization: float = 1.0) -> list[Option]:
    """Every option the planner may choose for a variant; capacity scaled by the target utilization."""
    res = variant.resources
    gpus = tuple(sorted(res.gpus.items()))
    profile = variant.profile
    raw: list[tuple[int, float, int, float, float]] = []  # batch, cpu, instances, latency, throughput
    if profile.points:
        for p in profile.points:
            if p.batch not in stage.batch_sizes:
                continue
            cpu = p.cpu if p.cpu is not None else res.cpu
            tput = p.throughput_rps if p.throughput_rps is not None else p.instances * p.batch * 1000.0 / p.latency_ms
            raw.append((p.batch, cpu, p.instances, p.latency_ms, tput))
    elif profile.sponge is not None:
        fit = SpongeCoefficients(profile.sponge.gamma, profile.sponge.delta, profile.sponge.epsilon,
                                 profile.sponge.eta)
        for b in stage.batch_sizes:
            for c in profile.sponge.cpus:
                lat = fit.latency_ms(b, c)
                if not lat > 0:  # refused by parse_pipeline; reached only by an unvalidated Variant
                    raise SpecError(f"{stage.name}/{variant.name}.profile.sponge",
                                    f"non-positive latency {lat:g} ms at batch {b}, {c:g} cores")
                raw.append((b, c, 1, lat, b * 1000.0 / lat))
    elif profile.linear_capacity is not None:
        lin = profile.linear_capacity
        model = LinearCapacityModel(lin.slope, lin.intercept)
        for c in lin.cpus:
            if not model.capacity(c) > 0:  # refused by parse_pipeline, as above
                raise SpecError(f"{stage.name}/{variant.name}.profile.linearCapacity",
                                f"non-positive throughput at {c:g} cores")
            raw.append((1, c, 1, lin.latency_ms, model.capacity(c)))
    elif profile.tokens is not None and stage.generation is not None:
        raw += token_options(profile.tokens, stage.generation, stage.batch_sizes, res.cpu)
    return [
        Option(
            variant=variant.name,
            accuracy=stage.accuracy_of(variant),
            batch=b,
            cpu=cpu,
            instances=inst,
            latency_ms=lat,
            capacity_rps=tput * utilization,
            memory_gib=res.memory_gib,
            gpus=gpus,
            load_time_s=variant.load_time_seconds,
        )
        for b, cpu, inst, lat, tput in raw
        if _within(cpu, stage)
    ]
