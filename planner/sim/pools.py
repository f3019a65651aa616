"""One pool of identical replicas with a Triton-style dynamic batcher, simulated one batch at a time.

Speed is the point of this module. A pool's queue is a sorted array of arrival times; the servers are a
heap of the times at which each (replica × Triton instance) is next free. Dispatching a batch is a few
bisections on that array and one heap operation, so the Python loop runs once per *batch*, never once
per request; the per-request results (start, finish, timed out) are expanded afterwards with numpy.

Batching rule (Triton's dynamic batcher): when a server is free and requests wait, it dispatches as soon
as `batch` requests are queued, or when the oldest has waited `max_queue_delay`, whichever comes first,
taking at most `batch` requests. A request that has waited longer than the timeout (the engine's, or the
pool's own when the SLO refuses late requests) is abandoned. With
EDF ordering (Sponge) the queue is a deadline heap instead, which costs one heap operation per request.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from paretoserve.planner.queueing import servers
from paretoserve.planner.sim.workload import FloatArray, Inbox, IntArray, take_before

INF = math.inf


def service_table(latency_ms_by_batch: dict[int, float], max_batch: int) -> list[float]:
    """Seconds to serve a batch of k = 0..max_batch, interpolated between the profiled batch sizes."""
    sizes = sorted(latency_ms_by_batch)
    if not sizes:
        raise ValueError("a pool needs at least one profiled batch size")
    xs = np.array(sizes, dtype=np.float64)
    ys = np.array([latency_ms_by_batch[b] for b in sizes], dtype=np.float64) / 1000.0
    ks = np.arange(max_batch + 1, dtype=np.float64)
    table = np.interp(ks, xs, ys)  # flat below the smallest and above the largest profiled size
    if len(xs) >= 2:  # extrapolate linearly above the largest profiled batch
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        above = ks > xs[-1]
        table[above] = ys[-1] + slope * (ks[above] - xs[-1])
    return [float(v) for v in table]


@dataclass
class Dispatched:
    """What one call to `Pool.run` decided, per request (aligned arrays)."""

    ids: IntArray
    start: FloatArray
    done: FloatArray
    timed_out: npt.NDArray[np.bool_]


@dataclass
class PoolConfig:
    batch: int
    delay_s: float
    svc: list[float]
    cpu: float
    gpus: float
    accuracy: float
    """Per-request accuracy contribution of this pool (already normalised for the pipeline's aggregation)."""
    servers_per_replica: int = 1
    """Concurrent batches one replica serves: Triton instances, or more when the profile's throughput says so."""
    queue_timeout_us: int = 0
    """A request that has waited longer is refused (``slo.lateRequests: refuse``; 0: never; the engine's own
    timeout, if shorter, still applies)."""

    @property
    def queue_timeout_s(self) -> float:
        return self.queue_timeout_us / 1e6 if self.queue_timeout_us > 0 else INF


def concurrency(batch: int, latency_ms: float, throughput_rps: float, instances: int) -> tuple[int, float]:
    """Servers per replica and the factor on profiled latency that make c·b/s equal the profiled throughput.

    A profile point gives a batch latency l (at the SLO percentile) and a replica throughput h. When
    h = instances·b/l (the default), a replica is `instances` servers of service time l. When the
    measured throughput is higher (InfAdapter's capacity table: a TF-Serving replica on n cores overlaps
    many requests), a replica becomes an M/D/c station: c = ⌊h·l/b⌋ servers, each taking c·b/h ≤ l per
    batch, so it sustains exactly h and a request never takes longer than its measured p99 unless queued.
    """
    c, service = servers(batch, latency_ms, throughput_rps, instances)  # the planner's queueing model uses the same c
    return c, service / (latency_ms / 1000.0)


@dataclass
class Pool:
    """Replicas of one variant at one size; `servers` holds replicas × Triton instances free times."""

    stage: str
    variant: str
    role: str
    instances: int
    config: PoolConfig
    timeout_s: float
    edf: bool = False
    servers: list[float] = field(default_factory=list)
    replicas: int = 0
    q_t: FloatArray = field(default_factory=lambda: np.zeros(0))
    q_id: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    q_deadline: FloatArray = field(default_factory=lambda: np.zeros(0))
    head: int = 0
    inbox: Inbox = field(default_factory=list)
    pending_config: tuple[float, PoolConfig] | None = None
    _edf_heap: list[tuple[float, float, int]] = field(default_factory=list)

    # -- replicas -------------------------------------------------------------------------------------
    def add_replicas(self, count: int, ready_at: float) -> None:
        for _ in range(count * self.config.servers_per_replica):
            heapq.heappush(self.servers, ready_at)
        self.replicas += count

    def remove_replicas(self, count: int) -> None:
        """Stop `count` replicas: idle ones first, then those that finish their batch soonest."""
        for _ in range(min(count * self.config.servers_per_replica, len(self.servers))):
            heapq.heappop(self.servers)
        self.replicas = max(0, self.replicas - count)

    def set_config(self, new: PoolConfig, at: float) -> None:
        """Switch to `new` at time `at`, growing or shrinking the servers if its concurrency differs."""
        want = self.replicas * new.servers_per_replica
        while len(self.servers) > want:
            heapq.heappop(self.servers)
        while len(self.servers) < want:
            heapq.heappush(self.servers, at)
        self.config = new

    def block_until(self, t: float) -> None:
        """Every server restarts and is unavailable until `t` (a recreate-style resize)."""
        self.servers = [max(s, t) for s in self.servers]
        heapq.heapify(self.servers)

    def busy_until(self) -> float:
        return max(self.servers, default=-INF)

    # -- queue ----------------------------------------------------------------------------------------
    def offer(self, times: FloatArray, ids: IntArray) -> None:
        if len(ids):
            self.inbox.append((times, ids))

    def queued(self) -> int:
        if self.edf:
            return len(self._edf_heap) + len(self.q_t) - self.head
        return len(self.q_t) - self.head

    def queued_ids(self) -> IntArray:
        waiting = self.q_id[self.head:]
        if self.edf and self._edf_heap:
            return np.concatenate([np.array([e[2] for e in self._edf_heap], dtype=np.int64), waiting])
        return waiting

    def has_work(self) -> bool:
        return self.queued() > 0 or bool(self.inbox)

    def _admit(self, t_end: float, deadlines: FloatArray | None) -> None:
        """Move inbox arrivals before `t_end` into the queue (they are all later than what it holds)."""
        if not self.inbox:
            return
        times, ids, self.inbox = take_before(self.inbox, t_end)
        rest_t, rest_id = self.q_t[self.head:], self.q_id[self.head:]
        self.q_t = np.concatenate([rest_t, times])
        self.q_id = np.concatenate([rest_id, ids])
        if deadlines is not None:
            self.q_deadline = np.concatenate([self.q_deadline[self.head:], deadlines[ids]])
        self.head = 0

    def run(self, t_end: float, rng: np.random.Generator | None, noise_cv: float,
            deadlines: FloatArray | None = None) -> Dispatched:
        """Dispatch every batch that starts before `t_end` (later arrivals may still join later batches)."""
        self._admit(t_end, deadlines if self.edf else None)
        parts: list[Dispatched] = []
        if self.pending_config is not None and self.pending_config[0] < t_end:
            at, new = self.pending_config
            parts.append(self._run_until(min(at, t_end), rng, noise_cv))
            self.set_config(new, at)
            self.pending_config = None
        parts.append(self._run_until(t_end, rng, noise_cv))
        if len(parts) == 1:
            return parts[0]
        return Dispatched(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ids", "start", "done",
                                                                                     "timed_out")))

    def _run_until(self, t_end: float, rng: np.random.Generator | None, noise_cv: float) -> Dispatched:
        cfg = self.config
        noise: list[float] | None = None
        pending = self.queued()
        if noise_cv > 0 and rng is not None and pending:
            sigma = math.sqrt(math.log1p(noise_cv * noise_cv))
            noise = rng.lognormal(-0.5 * sigma * sigma, sigma, size=pending + 1).tolist()
        sizes: list[int] = []
        starts: list[float] = []
        dones: list[float] = []
        first = self.head
        if self.edf:
            ids_out: list[int] = []
            self._edf_loop(t_end, cfg, noise, sizes, starts, dones, ids_out)
            ids = np.asarray(ids_out, dtype=np.int64)
        else:
            times = self.q_t.tolist()
            self.head = fifo_dispatch(times, self.head, self.servers, t_end, cfg.batch, cfg.delay_s, cfg.svc,
                                      min(self.timeout_s, cfg.queue_timeout_s), noise, sizes, starts, dones)
            ids = self.q_id[first:self.head]
        sz = np.asarray(sizes, dtype=np.int64)
        counts = np.abs(sz)
        return Dispatched(ids=ids, start=np.repeat(np.asarray(starts), counts),
                          done=np.repeat(np.asarray(dones), counts), timed_out=np.repeat(sz < 0, counts))

    def _edf_loop(self, t_end: float, cfg: PoolConfig, noise: Sequence[float] | None, sizes: list[int],
                  starts: list[float], dones: list[float], ids_out: list[int]) -> None:
        """Earliest-deadline-first: like `fifo_dispatch`, but the batch takes the tightest deadlines."""
        heap = self._edf_heap
        timeout = min(self.timeout_s, cfg.queue_timeout_s)
        times = self.q_t.tolist()
        deadlines = self.q_deadline.tolist()
        ids = self.q_id.tolist()
        n, nxt, nb = len(times), self.head, 0
        servers = self.servers
        while servers and (heap or nxt < n):
            free = servers[0]
            oldest = min((e[1] for e in heap), default=times[nxt] if nxt < n else INF)
            t = max(free, oldest)
            while nxt < n and times[nxt] <= t:  # everything arrived by t joins the heap
                heapq.heappush(heap, (deadlines[nxt], times[nxt], ids[nxt]))
                nxt += 1
            if len(heap) < cfg.batch:
                d = oldest + cfg.delay_s
                fill = nxt + cfg.batch - len(heap) - 1
                if fill < n and times[fill] < d:
                    d = times[fill]
                if d > t:
                    t = d
                    while nxt < n and times[nxt] <= t:
                        heapq.heappush(heap, (deadlines[nxt], times[nxt], ids[nxt]))
                        nxt += 1
            if t >= t_end:
                break
            expired = [e for e in heap if t - e[1] > timeout]
            if expired:
                heap[:] = [e for e in heap if t - e[1] <= timeout]
                heapq.heapify(heap)
                sizes.append(-len(expired))
                starts.append(t)
                dones.append(t)
                ids_out.extend(e[2] for e in expired)
                continue
            k = min(cfg.batch, len(heap))
            batch = [heapq.heappop(heap) for _ in range(k)]
            s = cfg.svc[k] * (noise[nb] if noise is not None and nb < len(noise) else 1.0)
            heapq.heapreplace(servers, t + s)
            sizes.append(k)
            starts.append(t)
            dones.append(t + s)
            ids_out.extend(e[2] for e in batch)
            nb += 1
        self.head = nxt


def fifo_dispatch(times: list[float], head: int, servers: list[float], t_end: float, batch: int, delay: float,
                  svc: list[float], timeout: float, noise: list[float] | None, sizes: list[int],
                  starts: list[float], dones: list[float]) -> int:
    """The hot loop: FIFO dynamic batching over sorted arrival `times[head:]`; returns the new head.

    Appends one entry per batch to `sizes`/`starts`/`dones`; a negative size marks requests abandoned
    after waiting longer than `timeout`. Stops at the first batch that would start at or after `t_end`,
    because requests arriving after `t_end` are not known yet and might have joined it.
    """
    n = len(times)
    nb = 0
    heapreplace = heapq.heapreplace
    while head < n and servers:
        free = servers[0]
        a0 = times[head]
        t = free if free > a0 else a0
        if t >= t_end:
            break
        limit = t - timeout  # requests that arrived before it have waited too long; one expression for both
        if a0 < limit:       # the test and the cut, so that rounding cannot leave the head where it is
            cut = bisect_left(times, limit, head, n)
            sizes.append(head - cut)
            starts.append(t)
            dones.append(t)
            head = cut
            continue
        last = head + batch - 1
        if last < n and times[last] <= t:
            k = batch
        else:
            hi = last + 1 if last < n else n
            k = bisect_right(times, t, head, hi) - head
            if k < batch:
                d = a0 + delay
                if last < n and times[last] < d:
                    d = times[last]
                if d > t:
                    t = d
                    if t >= t_end:
                        break
                    k = bisect_right(times, t, head, hi) - head
        s = svc[k] if noise is None else svc[k] * noise[nb]
        done = t + s
        heapreplace(servers, done)
        sizes.append(k)
        starts.append(t)
        dones.append(done)
        head += k
        nb += 1
    return head
