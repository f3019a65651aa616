"""Token-level serving in the simulator: iteration-level (continuous) batching with KV-cache admission.

A token-generating stage is not served in batches of fixed cost: its engine admits new sequences between
decode steps, every step serves all running sequences, and what limits a replica is the number of sequences
it runs at once and the KV cache they occupy. `pools.Pool` (Triton's dynamic batcher) cannot express that,
so a stage that declares `generation` gets a `TokenPool`, which the engine drives through the same methods.

Per replica, what `workers/llm/serving.py`'s `ContinuousBatcher` does, one *iteration* at a time:

- admit waiting requests (arrived by the iteration's start) while the replica runs fewer than `batch`
  sequences and their KV reservation (prompt + output tokens) fits its budget; prefill each in turn, its
  first token coming out of its prefill (``prefill(P) = a + b·P``);
- then one decode step for every running sequence (``step(n) = c + d·n`` for n sequences), each getting its
  next token at the step's end; a sequence leaves with its last token and frees its reservation.

The replicas of a pool take requests from one FIFO queue (work-conserving dispatch: a replica with room takes
the head), and a request that has waited longer than the timeout is abandoned. Per request the pool records
TTFT (first token − arrival), the mean gap between its later tokens (TPOT) and the longest gap: newcomers'
prefills stall the running batch, which the planner's ITL (``step(B)``) does not model and this does.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from paretoserve.planner.sim.pools import Dispatched
from paretoserve.planner.sim.workload import FloatArray, Inbox, IntArray, take_before

INF = math.inf
_NOISE_BLOCK = 4096


@dataclass(frozen=True)
class TokenConfig:
    """One token-generating pool's engine: what a replica holds and what its prefills and steps cost."""

    batch: int
    """Most sequences one replica runs at once."""
    kv_tokens: int
    """Tokens one replica's KV-cache budget holds."""
    prefill_s: tuple[float, float]
    """Prefill seconds = intercept + slope × prompt tokens."""
    step_s: tuple[float, float]
    """Decode-step seconds = intercept + slope × running sequences."""
    cpu: float
    gpus: float
    accuracy: float
    ttft_slo_s: float = INF
    itl_slo_s: float = INF
    servers_per_replica: int = 1


@dataclass
class TokenRecords:
    """Per-request inputs (token counts) and outcomes (TTFT, inter-token gaps) shared by a run's token pools."""

    prompt_tokens: IntArray
    output_tokens: IntArray
    ttft_s: FloatArray = field(init=False)
    tpot_s: FloatArray = field(init=False)
    """Mean gap between a request's consecutive tokens after its first (NaN for one-token answers)."""
    itl_max_s: FloatArray = field(init=False)
    late: npt.NDArray[np.bool_] = field(init=False)
    """Missed its stage's TTFT SLO or its ITL SLO (on TPOT)."""

    def __post_init__(self) -> None:
        n = len(self.prompt_tokens)
        if len(self.output_tokens) != n:
            raise ValueError("prompt_tokens and output_tokens need one value per request")
        if n and (self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise ValueError("every request needs at least one prompt token and one output token")
        self.ttft_s = np.full(n, np.nan)
        self.tpot_s = np.full(n, np.nan)
        self.itl_max_s = np.full(n, np.nan)
        self.late = np.zeros(n, dtype=bool)


def concat_records(parts: Sequence[TokenRecords]) -> TokenRecords:
    """Runs' records back to back (their requests in order), as `harness.concat` pools scenarios."""
    out = TokenRecords(np.concatenate([p.prompt_tokens for p in parts]),
                       np.concatenate([p.output_tokens for p in parts]))
    for name in ("ttft_s", "tpot_s", "itl_max_s", "late"):
        setattr(out, name, np.concatenate([getattr(p, name) for p in parts]))
    return out


class _Sequence:
    __slots__ = ("id", "left", "kv", "began", "last", "gaps", "longest", "count")

    def __init__(self, rid: int, left: int, kv: int, began: float, first: float) -> None:
        self.id, self.left, self.kv, self.began, self.last = rid, left, kv, began, first
        self.gaps, self.longest, self.count = 0.0, 0.0, 0


class _Outcomes:
    """What one `TokenPool.run` reports, request by request (aligned lists)."""

    __slots__ = ("ids", "start", "done", "abandoned")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.start: list[float] = []
        self.done: list[float] = []
        self.abandoned: list[bool] = []

    def add(self, rid: int, start: float, done: float, *, abandoned: bool = False) -> None:
        self.ids.append(rid)
        self.start.append(start)
        self.done.append(done)
        self.abandoned.append(abandoned)

    def dispatched(self) -> Dispatched:
        return Dispatched(np.asarray(self.ids, dtype=np.int64), np.asarray(self.start, dtype=np.float64),
                          np.asarray(self.done, dtype=np.float64), np.asarray(self.abandoned, dtype=bool))


@dataclass
class _Replica:
    free_at: float
    running: list[_Sequence] = field(default_factory=list)
    kv_used: int = 0
    retiring: bool = False


@dataclass
class TokenPool:
    """Replicas of one token-generating variant; the engine drives it like a `pools.Pool`."""

    stage: str
    variant: str
    role: str
    instances: int
    config: TokenConfig
    timeout_s: float
    records: TokenRecords
    replicas: int = 0
    pending_config: tuple[float, TokenConfig] | None = None
    _reps: list[_Replica] = field(default_factory=list)
    _queue: deque[tuple[float, int]] = field(default_factory=deque)
    _inbox: Inbox = field(default_factory=list)
    _noise: list[float] = field(default_factory=list)

    # -- replicas -------------------------------------------------------------------------------------
    def add_replicas(self, count: int, ready_at: float) -> None:
        self._reps.extend(_Replica(ready_at) for _ in range(count))
        self.replicas += count

    def remove_replicas(self, count: int) -> None:
        """Stop `count` replicas, the least busy first; a busy one finishes its sequences and admits none."""
        active = sorted((r for r in self._reps if not r.retiring), key=lambda r: len(r.running))
        for r in active[:count]:
            r.retiring = True
        self._reps = [r for r in self._reps if not (r.retiring and not r.running)]
        self.replicas = max(0, self.replicas - count)

    def set_config(self, new: TokenConfig, at: float) -> None:
        self.config = new

    def block_until(self, t: float) -> None:
        """Every replica restarts and is unavailable until `t`; running sequences resume after it."""
        for r in self._reps:
            r.free_at = max(r.free_at, t)

    def busy_until(self) -> float:
        return max((r.free_at for r in self._reps if r.running), default=-INF)

    # -- queue ----------------------------------------------------------------------------------------
    def offer(self, times: FloatArray, ids: IntArray) -> None:
        if len(ids):
            self._inbox.append((times, ids))

    def queued(self) -> int:
        return len(self._queue)

    def queued_ids(self) -> IntArray:
        return np.fromiter((i for _, i in self._queue), dtype=np.int64, count=len(self._queue))

    def has_work(self) -> bool:
        return bool(self._queue) or bool(self._inbox) or any(r.running for r in self._reps)

    def _admit(self, t_end: float) -> None:
        if not self._inbox:
            return
        times, ids, self._inbox = take_before(self._inbox, t_end)
        self._queue.extend(zip(times.tolist(), ids.tolist(), strict=True))

    # -- simulation -----------------------------------------------------------------------------------
    def run(self, t_end: float, rng: np.random.Generator | None, noise_cv: float,
            deadlines: FloatArray | None = None) -> Dispatched:
        """Every iteration that starts before `t_end`; reports the requests that finished or were abandoned."""
        self._admit(t_end)
        out = _Outcomes()
        if self.pending_config is not None and self.pending_config[0] < t_end:
            at, new = self.pending_config
            self._run_until(min(at, t_end), rng, noise_cv, out)
            self.set_config(new, at)
            self.pending_config = None
        self._run_until(t_end, rng, noise_cv, out)
        self._reps = [r for r in self._reps if not (r.retiring and not r.running)]
        return out.dispatched()

    def _factor(self, rng: np.random.Generator | None, noise_cv: float) -> float:
        if noise_cv <= 0 or rng is None:
            return 1.0
        if not self._noise:
            sigma = math.sqrt(math.log1p(noise_cv * noise_cv))
            self._noise = rng.lognormal(-0.5 * sigma * sigma, sigma, size=_NOISE_BLOCK).tolist()
        return self._noise.pop()

    def _run_until(self, t_end: float, rng: np.random.Generator | None, noise_cv: float,
                   out: _Outcomes) -> None:
        queue = self._queue
        while True:
            head = queue[0][0] if queue else INF
            best: _Replica | None = None
            at = INF
            for r in self._reps:
                if r.running:
                    t = r.free_at
                elif queue and not r.retiring:
                    t = r.free_at if r.free_at > head else head
                else:
                    continue
                if t < at:
                    best, at = r, t
            if best is None or at >= t_end:
                return
            self._iterate(best, at, self._factor(rng, noise_cv), out)

    def _iterate(self, r: _Replica, t: float, noise: float,
                 out: _Outcomes) -> None:
        cfg, rec, queue = self.config, self.records, self._queue
        while queue and t - queue[0][0] > self.timeout_s:
            out.add(queue.popleft()[1], t, t, abandoned=True)
        clock = t
        a, b = cfg.prefill_s
        while queue and queue[0][0] <= t and not r.retiring and len(r.running) < cfg.batch:
            arrived, rid = queue[0]
            prompt, output = int(rec.prompt_tokens[rid]), int(rec.output_tokens[rid])
            need = prompt + output
            if need > cfg.kv_tokens:  # never fits this replica's cache: refused, not served
                queue.popleft()
                out.add(rid, t, t, abandoned=True)
                continue
            if r.kv_used + need > cfg.kv_tokens:
                break  # waits for running sequences to free their reservation
            queue.popleft()
            clock += (a + b * prompt) * noise
            ttft = clock - arrived
            rec.ttft_s[rid] = ttft
            if ttft > cfg.ttft_slo_s:
                rec.late[rid] = True
            if output == 1:
                out.add(rid, t, clock)
                continue
            r.kv_used += need
            r.running.append(_Sequence(rid, output - 1, need, t, clock))
        if r.running:
            c, d = cfg.step_s
            clock += (c + d * len(r.running)) * noise
            still: list[_Sequence] = []
            for s in r.running:
                gap = clock - s.last
                s.gaps += gap
                s.count += 1
                if gap > s.longest:
                    s.longest = gap
                s.last = clock
                s.left -= 1
                if s.left:
                    still.append(s)
                    continue
                r.kv_used -= s.kv
                tpot = s.gaps / s.count
                rec.tpot_s[s.id], rec.itl_max_s[s.id] = tpot, s.longest
                if tpot > cfg.itl_slo_s:
                    rec.late[s.id] = True
                out.add(s.id, s.began, clock)
            r.running = still
        r.free_at = clock
