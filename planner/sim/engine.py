"""The trace-driven discrete-event simulator: a `MetricsSource` and an `Actuator` for `ControlLoop`.

It simulates a ServingPipeline's stages in simulated time, one *epoch* (the span between two controller
ticks) at a time. Within an epoch the stages are processed in topological order: a stage's arrivals in
the epoch are all known once its parents have been processed, because a request reaches a stage only
after every parent has finished it (fan-in), and a batch's finish time is known when it starts. So each
pool runs its batch loop (`pools.py`) once per epoch, and results flow downstream as arrays.

At a tick, `observe(now)` reports what a real metrics pipeline would (per-second load, queueing delay by
Little's law, the tightest per-request deadline) and `apply(plan, now)` changes the pools the way a
cluster would: added replicas start after the variant's load time (cold start), a variant switch routes
traffic to the new pool only when it is ready (the old one drains, and removed replicas serve the old split
until then), and a change of cores is either a new pool (surge), an in-place resize after a delay (Sponge),
or a restart (a recreate-style VPA). An in-place resize that lowers a pool's cores waits, like a removal,
until the new pools and replicas of the same plan are ready (make before break, as the operator resizes):
lowered at once, ResNet-18 went from 19 to 4 cores while the ResNet-34 pool meant to carry the rest was still
loading, and InfAdapter's bursty training windows fell to 95.6-98.4 %. With ``slo.lateRequests: refuse`` a
pool refuses a request that has waited longer than the SLO minus the pool's planned batch latency
(`queueing.late_request_timeout_us`, the queue timeout the served Triton gets), kept through a resize while within
the tolerance of `queueing.timeout_to_load`, as the sidecar keeps it. Nothing here re-implements planning: the
plan comes from whatever drives it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from paretoserve.planner.compile import Observation, compile_problem
from paretoserve.planner.control import Observed
from paretoserve.planner.evaluate import topological_order
from paretoserve.planner.model import Allocation, Plan, Problem, Stage, StagePlan
from paretoserve.planner.queueing import late_request_timeout_us, timeout_to_load
from paretoserve.planner.sim.pools import Dispatched, Pool, PoolConfig, concurrency, service_table
from paretoserve.planner.sim.records import (
    COMPLETED,
    DROPPED,
    IN_FLIGHT,
    TIMED_OUT,
    SimResult,
    aggregate_accuracy,
)
from paretoserve.planner.sim.tokens import TokenConfig, TokenPool, TokenRecords
from paretoserve.planner.sim.workload import (
    ConfidenceCalibration,
    FloatArray,
    Inbox,
    IntArray,
    Workload,
    counts_per_second,
    take_before,
)
from paretoserve.planner.spec import SLO, Generation, ServingPipeline, TokenProfile

INF = math.inf
RESIZE_MODES = ("surge", "in-place", "recreate")


@dataclass(frozen=True)
class SimConfig:
    seed: int = 0
    noise_cv: float = 0.0
    """Coefficient of variation of multiplicative lognormal noise on batch service times (0: deterministic)."""
    timeout_s: float = INF
    """A request that waits longer than this in one queue is abandoned (counted as timed out)."""
    warm_start: bool = True
    """The first plan's replicas are ready at once (the system was running before the trace starts)."""
    resize: str = "surge"
    """How a change of cores per replica happens: a new pool (surge), in place, or by restarting (recreate)."""
    resize_delay_s: float = 1.0
    cold_start_s: float = 0.0
    """Added to a variant's loadTimeSeconds whenever a replica starts."""
    edf: bool = False
    """Earliest-deadline-first queues (Sponge) instead of FIFO."""
    queue_delay_factor: float = 0.0
    """Report factor × L/λ per stage as queueing delay (DiffServe 1, HADIS 1.2); 0 reports nothing."""
    history_s: int = 3600
    window_s: float = 10.0
    """Window for the arrival rate behind the queueing delay and for the tightest recent deadline."""

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")


PoolKey = tuple[str, str, float, int]  # variant, role, cores (or -1 when resized in place), instances
AnyPool = Pool | TokenPool


@dataclass(frozen=True)
class Regime:
    """How a stage routes the requests that arrive from `t_from` on."""

    t_from: float
    main: tuple[PoolKey, ...] = ()
    cumulative: tuple[float, ...] = ()
    light: PoolKey | None = None
    heavy: PoolKey | None = None
    cut: float = -INF
    direct: float = 0.0
    quality: float = 0.0
    prompt_cut: float | None = None
    """The planned prompt-router threshold: requests whose difficulty is at least it go to `heavy`."""


@dataclass
class StageState:
    stage: Stage
    index: int
    children: list[int] = field(default_factory=list)
    pools: dict[PoolKey, AnyPool] = field(default_factory=dict)
    regimes: list[Regime] = field(default_factory=list)
    inbox: Inbox = field(default_factory=list)
    retiring: set[PoolKey] = field(default_factory=set)
    shrinking: dict[PoolKey, int] = field(default_factory=dict)
    """Replicas a kept pool gives up once the new traffic split starts (make before break)."""
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (epoch end, arrivals in the epoch)


class Simulator:
    """Simulates one pipeline under one workload; drive it with `ControlLoop.tick` (see `runner.py`)."""

    def __init__(self, pipeline: ServingPipeline, workload: Workload, config: SimConfig | None = None, *,
                 catalog: Sequence[ServingPipeline] = ()) -> None:
        self.config = config or SimConfig()
        self.workload = workload
        self.rng = np.random.default_rng(self.config.seed)
        self.problem: Problem = compile_problem(pipeline, Observation(load_rps=0.0))
        self.slo: SLO = pipeline.spec.slo
        self._latency: dict[tuple[str, str, float, int], dict[int, tuple[float, float]]] = {}
        self._load_time: dict[tuple[str, str], float] = {}
        self._accuracy: dict[tuple[str, str], float] = {}
        self._pre_routed: dict[tuple[str, str, str, float, float, float], float] = {}  # cascade row -> its share
        self._prompt_cut: dict[tuple[str, str, str, float, float, float], float] = {}  # row -> prompt threshold
        self._tokens: dict[tuple[str, str], tuple[TokenProfile, Generation]] = {}
        for pipe in (pipeline, *catalog):
            self._learn(compile_problem(pipe, Observation(load_rps=0.0)), pipe.spec.adaptation.target_utilization)
            self._tokens.update({(s.name, v.name): (v.profile.tokens, s.generation) for s in pipe.spec.stages
                                 for v in s.variants if s.generation is not None and v.profile.tokens is not None})
        self.order = topological_order(self.problem.stages)
        self.states = [StageState(s, i) for i, s in enumerate(self.order)]
        index = {s.name: i for i, s in enumerate(self.order)}
        for st in self.states:
            for dep in st.stage.depends_on:
                self.states[index[dep]].children.append(st.index)
        self.sinks = [st.index for st in self.states if not st.children]
        n = workload.requests
        self.arrival = workload.arrivals_s
        slo = workload.slo_ms if workload.slo_ms is not None else np.full(n, self.slo.latency_ms)
        self.request_slo_ms = np.asarray(slo, dtype=np.float64)
        self.deadline = self.arrival + self.request_slo_ms / 1000.0
        self.status = np.zeros(n, dtype=np.int8)
        self.finish_at = np.full(n, np.nan)
        self.stage_done = np.full((len(self.states), n), np.nan)
        self.stage_acc = np.full((len(self.states), n), np.nan)
        self.stage_cut = np.full((len(self.states), n), -INF)
        self.heavy = np.zeros(n, dtype=bool)
        fan_in = np.array([len(st.stage.depends_on) for st in self.states], dtype=np.int16)
        self.parents_left = np.repeat(fan_in[:, None], n, axis=1)
        self.sinks_left = np.full(n, len(self.sinks), dtype=np.int16)
        has_cascade = any(s.cascade is not None for s in self.order)
        self.confidence = workload.confidence if workload.confidence is not None else (
            self.rng.random(n) if has_cascade else np.zeros(n))
        self.calibration = ConfidenceCalibration.of(workload.confidence)
        self.prompt_score = self.rng.random(n) if has_cascade else np.zeros(n)
        self.token_records = _token_records(pipeline, workload)
        self.counts = counts_per_second(self.arrival, workload.duration_s)
        self.now = 0.0
        self._next = 0
        self._applied: Plan | None = None
        self.applies = 0
        self.events: list[tuple[float, int, float, float, float]] = []  # t, stage, Δreplicas, Δcores, ΔGPUs
        self.applied_at: list[float] = []

    # -- catalog --------------------------------------------------------------------------------------
    def _learn(self, problem: Problem, utilization: float) -> None:
        for s in problem.stages:
            for o in s.options:
                raw = o.capacity_rps / utilization  # the profiled throughput, before the planner's headroom
                self._latency.setdefault((s.name, o.variant, o.cpu, o.instances), {})[o.batch] = (o.latency_ms, raw)
                self._load_time[(s.name, o.variant)] = o.load_time_s
                self._accuracy.setdefault((s.name, o.variant), o.accuracy)
            if s.cascade is not None:
                for r in s.cascade.rows:
                    key = (s.name, s.cascade.light, s.cascade.heavy, r.threshold, r.heavy_fraction, r.quality)
                    self._pre_routed[key] = s.cascade.pre_routed_fraction(r)
                    if r.prompt_threshold is not None:
                        self._prompt_cut[key] = r.prompt_threshold

    def _key(self, a: Allocation) -> PoolKey:
        cpu = -1.0 if self.config.resize != "surge" else a.cpu
        return (a.variant, a.role, cpu, a.instances)

    def _pool_config(self, st: StageState, a: Allocation, accuracy: float) -> PoolConfig | TokenConfig:
        tokens = self._tokens.get((st.stage.name, a.variant))
        if tokens is not None:
            return _token_config(*tokens, a, accuracy)
        table = self._latency.get((st.stage.name, a.variant, a.cpu, a.instances))
        if not table:
            raise KeyError(f"stage {st.stage.name}: no profile for {a.variant} at {a.cpu} cores")
        gpus = sum(amount for _, amount in a.gpus)
        latency_ms, throughput = table.get(a.batch, table[min(table, key=lambda b: abs(b - a.batch))])
        servers, scale = concurrency(a.batch, latency_ms, throughput, a.instances)
        svc = [s * scale for s in service_table({b: lat for b, (lat, _) in table.items()}, a.batch)]
        return PoolConfig(batch=a.batch, delay_s=st.stage.max_queue_delay_ms / 1000.0, svc=svc, cpu=a.cpu,
                          gpus=gpus, accuracy=accuracy, servers_per_replica=servers,
                          queue_timeout_us=late_request_timeout_us(self.slo, a.latency_ms))

    # -- Actuator -------------------------------------------------------------------------------------
    def applied(self) -> Plan | None:
        return self._applied

    def hold(self, plan: Plan | None, *, now: float) -> None:
        """Simulated pools run exactly what they were told: nothing drifts, nothing to converge."""

    def apply(self, plan: Plan, *, now: float) -> None:
        first = self._applied is None
        by_name = {st.stage.name: st for st in self.states}
        for sp in plan.stages:
            st = by_name.get(sp.stage)
            if st is not None:
                self._apply_stage(st, sp, now, warm=first and self.config.warm_start)
        self._applied = plan
        self.applies += 1
        self.applied_at.append(now)

    def _apply_stage(self, st: StageState, sp: StagePlan, now: float, *, warm: bool) -> None:
        cfg = self.config
        ready = now
        desired: dict[PoolKey, Allocation] = {}
        for a in sp.allocations:
            if a.replicas > 0:
                desired[self._key(a)] = a
        shrink: dict[PoolKey, int] = {}
        resized: list[tuple[AnyPool, PoolConfig | TokenConfig, PoolConfig | TokenConfig]] = []
        for key, a in desired.items():
            accuracy = self._accuracy[(st.stage.name, a.variant)]
            new_cfg = self._pool_config(st, a, accuracy)
            startup = 0.0 if warm else self._load_time.get((st.stage.name, a.variant), 0.0) + cfg.cold_start_s
            pool = st.pools.get(key)
            if pool is None:
                pool = self._new_pool(st, a, new_cfg)
                st.pools[key] = pool
                self._resources(now, st, pool, a.replicas, new_cfg)
                pool.add_replicas(a.replicas, now + startup)
                ready = max(ready, now + startup)
                continue
            st.retiring.discard(key)
            old = pool.pending_config[1] if pool.pending_config else pool.config
            new_cfg = _served_timeout(new_cfg, old, restarts=cfg.resize == "recreate" and new_cfg.cpu != old.cpu)
            if new_cfg.cpu != old.cpu:
                if cfg.resize == "in-place":  # timed below, once the plan's new capacity is known
                    resized.append((pool, new_cfg, old))
                else:  # recreate: the pods restart with the new size and load the model again
                    pool.pending_config = None
                    _reconfigure(pool, new_cfg, now + startup, pending=False)
                    pool.block_until(now + startup)
                    self._resources(now, st, pool, 0, new_cfg, old)
            elif pool.pending_config is not None:
                _reconfigure(pool, new_cfg, pool.pending_config[0], pending=True)
            else:
                _reconfigure(pool, new_cfg, now, pending=False)
            diff = a.replicas - pool.replicas
            if diff > 0:
                pool.add_replicas(diff, now + startup)
                ready = max(ready, now + startup)  # a new traffic split waits for the replicas it counts on
                self._resources(now, st, pool, diff, new_cfg)
            elif diff < 0:
                shrink[key] = -diff
        for pool, new_cfg, old in resized:  # raised after the delay; lowered once the new capacity is ready
            at = now + cfg.resize_delay_s if new_cfg.cpu > old.cpu else max(now + cfg.resize_delay_s, ready)
            _reconfigure(pool, new_cfg, at, pending=True)
            self._resources(at, st, pool, 0, new_cfg, old)
        for key in st.pools:
            if key not in desired:
                st.retiring.add(key)
        st.shrinking = shrink  # the old split serves until the new one starts, with the replicas it counted on
        regime = self._regime(st, sp, desired, ready)
        st.regimes = [r for r in st.regimes if r.t_from < now] + [regime]

    def _regime(self, st: StageState, sp: StagePlan, desired: dict[PoolKey, Allocation], t_from: float) -> Regime:
        roles = {a.role: key for key, a in desired.items()}
        if "light" in roles or "heavy" in roles:
            light, heavy = roles.get("light"), roles.get("heavy")
            f = (sp.heavy_fraction or 0.0) if heavy is not None else 0.0
            direct, prompt_cut = 0.0, None
            if light is not None and heavy is not None:
                row = (st.stage.name, light[0], heavy[0], sp.threshold or 0.0, sp.heavy_fraction or 0.0, sp.accuracy)
                direct = min(self._pre_routed.get(row, 0.0), f)
                prompt_cut = self._prompt_cut.get(row)
            if light is None:
                direct = 1.0
            rest = (f - direct) / (1.0 - direct) if direct < 1.0 else 0.0
            return Regime(t_from, light=light, heavy=heavy, cut=self.calibration.cut(rest), direct=direct,
                          quality=sp.accuracy, prompt_cut=prompt_cut)
        keys = tuple(desired)
        weights = np.array([max(desired[k].load_rps, 0.0) for k in keys], dtype=np.float64)
        if weights.sum() <= 0:
            weights = np.array([float(desired[k].replicas) for k in keys])
        cumulative = tuple(float(c) for c in np.cumsum(weights) / weights.sum()) if len(keys) else ()
        return Regime(t_from, main=keys, cumulative=cumulative)

    def _new_pool(self, st: StageState, a: Allocation, config: PoolConfig | TokenConfig) -> AnyPool:
        if isinstance(config, TokenConfig):
            if self.token_records is None:
                raise ValueError(f"stage {st.stage.name}: a token-generating pool in a pipeline without generation")
            return TokenPool(st.stage.name, a.variant, a.role, a.instances, config, self.config.timeout_s,
                             self.token_records)
        return Pool(st.stage.name, a.variant, a.role, a.instances, config, self.config.timeout_s, edf=self.config.edf)

    def _resources(self, t: float, st: StageState, pool: AnyPool, replicas: int, cfg: PoolConfig | TokenConfig,
                   old: PoolConfig | TokenConfig | None = None) -> None:
        if old is not None:  # a resize of the pool's current replicas
            self.events.append((t, st.index, 0.0, pool.replicas * (cfg.cpu - old.cpu),
                                pool.replicas * (cfg.gpus - old.gpus)))
        else:
            self.events.append((t, st.index, float(replicas), replicas * cfg.cpu, replicas * cfg.gpus))

    # -- MetricsSource --------------------------------------------------------------------------------
    def observe(self, now: float) -> Observed:
        self.advance_to(now)
        upto = int(min(max(math.floor(now), 0), len(self.counts)))
        history = np.concatenate([self.workload.prelude_counts, self.counts[:upto]])[-self.config.history_s:]
        delays: dict[str, float] = {}
        if self.config.queue_delay_factor > 0:
            for st in self.states:
                delays[st.stage.name] = self._littles_law_ms(st, now)
        return Observed(load_history=tuple(float(x) for x in history), queue_delay_ms=delays,
                        min_remaining_budget_ms=self._tightest_budget_ms(now))

    def _littles_law_ms(self, st: StageState, now: float) -> float:
        queued = sum(p.queued() for p in st.pools.values())
        recent = sum(c for t, c in st.arrivals if t > now - self.config.window_s)
        rate = recent / self.config.window_s
        return 0.0 if rate <= 0 else self.config.queue_delay_factor * queued / rate * 1000.0

    def _tightest_budget_ms(self, now: float) -> float | None:
        if self.workload.slo_ms is None:
            return None
        roots = [st for st in self.states if not st.stage.depends_on]
        queued = [p.queued_ids() for st in roots for p in st.pools.values()]
        ids = np.concatenate(queued) if queued else np.zeros(0, dtype=np.int64)
        lo = int(np.searchsorted(self.arrival, now - self.config.window_s))
        hi = int(np.searchsorted(self.arrival, now))
        budgets = [(self.deadline[ids] - now) * 1000.0] if len(ids) else []
        if hi > lo:
            budgets.append(self.request_slo_ms[lo:hi])
        if not budgets:
            return None
        return float(np.min(np.concatenate(budgets)))

    # -- simulation -----------------------------------------------------------------------------------
    def advance_to(self, t_end: float) -> None:
        """Simulate every batch that starts before `t_end`."""
        if t_end <= self.now:
            return
        hi = int(np.searchsorted(self.arrival, t_end, side="left"))
        if hi > self._next:
            ids = np.arange(self._next, hi, dtype=np.int64)
            for st in self.states:
                if not st.stage.depends_on:
                    st.inbox.append((self.arrival[self._next:hi], ids))
            self._next = hi
        for st in self.states:
            self._process(st, t_end)
        self.now = t_end
        self._retire(t_end)

    def finish(self) -> SimResult:
        """Stop the arrivals, drain every queue, and return the per-request records."""
        self.advance_to(self.workload.duration_s)
        self.advance_to(INF)
        self.status[self.status == IN_FLIGHT] = DROPPED  # stuck behind a pool with no replicas
        accuracy = aggregate_accuracy(self.stage_acc, [st.stage for st in self.states],
                                      self.problem.objective.aggregation)
        events = np.array(self.events, dtype=np.float64).reshape(-1, 5)
        return SimResult(
            arrival_s=self.arrival, finish_s=self.finish_at, status=self.status, slo_ms=self.request_slo_ms,
            accuracy=accuracy, stage_accuracy=self.stage_acc, heavy=self.heavy, duration_s=self.workload.duration_s,
            stage_names=tuple(st.stage.name for st in self.states), resource_events=events,
            reconfigurations=max(0, self.applies - 1), applied_at_s=tuple(self.applied_at),
            tokens=self.token_records,
        )

    def _process(self, st: StageState, t_end: float) -> None:
        if st.inbox:
            times, ids, st.inbox = take_before(st.inbox, t_end)
            if len(ids):
                st.arrivals.append((t_end, len(ids)))
                del st.arrivals[:-64]
                self._route(st, times, ids)
        deadlines = self.deadline if self.config.edf else None
        for key, pool in list(st.pools.items()):
            if key[1] != "heavy":
                self._collect(st, pool, pool.run(t_end, self.rng, self.config.noise_cv, deadlines))
        for key, pool in list(st.pools.items()):
            if key[1] == "heavy":
                self._collect(st, pool, pool.run(t_end, self.rng, self.config.noise_cv, deadlines))

    def _route(self, st: StageState, times: FloatArray, ids: IntArray) -> None:
        starts = [r.t_from for r in st.regimes]
        bounds = np.searchsorted(times, starts, side="left") if starts else np.zeros(0, dtype=np.int64)
        if len(ids) and (not st.regimes or bounds[0] > 0):  # arrivals before any plan: nothing serves them
            n0 = int(bounds[0]) if st.regimes else len(ids)
            self._fail(ids[:n0], DROPPED)
        for j, regime in enumerate(st.regimes):
            lo = int(bounds[j])
            hi = int(bounds[j + 1]) if j + 1 < len(st.regimes) else len(ids)
            if hi > lo:
                self._route_regime(st, regime, times[lo:hi], ids[lo:hi])

    def _route_regime(self, st: StageState, r: Regime, times: FloatArray, ids: IntArray) -> None:
        s = st.index
        if r.light is not None or r.heavy is not None:
            self.stage_cut[s, ids] = r.cut
            self.stage_acc[s, ids] = r.quality
            difficulty = self.workload.prompts.difficulty if self.workload.prompts is not None else None
            if difficulty is not None and r.prompt_cut is not None and r.light is not None:
                direct = difficulty[ids] >= r.prompt_cut  # the router's own score of each prompt
            else:
                direct = self.prompt_score[ids] < r.direct
            if r.heavy is not None and direct.any():
                self.heavy[ids[direct]] = True
                st.pools[r.heavy].offer(times[direct], ids[direct])
            if r.light is not None:
                st.pools[r.light].offer(times[~direct], ids[~direct])
            return
        if not r.main:
            self._fail(ids, DROPPED)
            return
        if len(r.main) == 1:
            pool = st.pools[r.main[0]]
            self.stage_acc[s, ids] = pool.config.accuracy
            pool.offer(times, ids)
            return
        which = np.searchsorted(np.asarray(r.cumulative), self.rng.random(len(ids)), side="right")
        which = np.minimum(which, len(r.main) - 1)
        for k, key in enumerate(r.main):
            mask = which == k
            if mask.any():
                pool = st.pools[key]
                self.stage_acc[s, ids[mask]] = pool.config.accuracy
                pool.offer(times[mask], ids[mask])

    def _collect(self, st: StageState, pool: AnyPool, d: Dispatched) -> None:
        if len(d.ids) == 0:
            return
        if d.timed_out.any():
            self._fail(d.ids[d.timed_out], TIMED_OUT)
        ok = ~d.timed_out
        ids, done = d.ids[ok], d.done[ok]
        correct = self.workload.prompts.correct.get(pool.variant) if self.workload.prompts is not None else None
        if correct is not None:  # the quality of this variant's own answer to each request
            self.stage_acc[st.index, ids] = correct[ids]
        if pool.role == "light":
            deferred = self.confidence[ids] < self.stage_cut[st.index, ids]
            if deferred.any():
                self._defer(st, ids[deferred], done[deferred])
                ids, done = ids[~deferred], done[~deferred]
        self._stage_done(st, ids, done)

    def _defer(self, st: StageState, ids: IntArray, done: FloatArray) -> None:
        """Send light-served requests the discriminator rejected to the heavy pool in force when they finish."""
        stay = np.ones(len(ids), dtype=bool)
        for j, r in enumerate(st.regimes):
            upper = st.regimes[j + 1].t_from if j + 1 < len(st.regimes) else INF
            sel = (done >= (r.t_from if j else -INF)) & (done < upper)
            if r.heavy is not None and sel.any() and r.heavy in st.pools:
                st.pools[r.heavy].offer(done[sel], ids[sel])
                self.heavy[ids[sel]] = True
                stay &= ~sel
        if stay.any():
            self._stage_done(st, ids[stay], done[stay])

    def _stage_done(self, st: StageState, ids: IntArray, done: FloatArray) -> None:
        if len(ids) == 0:
            return
        s = st.index
        self.stage_done[s, ids] = done
        for c in st.children:
            child = self.states[c]
            self.parents_left[c, ids] -= 1
            ready = ids[self.parents_left[c, ids] == 0]
            if len(ready):
                parents = [self.states[i].index for i in self._parent_indices(child)]
                at = np.max(self.stage_done[parents][:, ready], axis=0)
                child.inbox.append((at, ready))
        if not st.children:
            self.sinks_left[ids] -= 1
            fin = ids[self.sinks_left[ids] == 0]
            if len(fin):
                self.finish_at[fin] = np.max(self.stage_done[self.sinks][:, fin], axis=0)
                live = fin[self.status[fin] == IN_FLIGHT]
                self.status[live] = COMPLETED

    def _parent_indices(self, st: StageState) -> list[int]:
        names = set(st.stage.depends_on)
        return [o.index for o in self.states if o.stage.name in names]

    def _fail(self, ids: IntArray, status: int) -> None:
        live = ids[self.status[ids] == IN_FLIGHT]
        self.status[live] = status

    def _retire(self, now: float) -> None:
        for st in self.states:
            if not st.retiring and not st.shrinking:
                continue
            switched = st.regimes[-1].t_from if st.regimes else -INF
            if now < switched:
                continue
            for key, count in sorted(st.shrinking.items()):
                pool = st.pools[key]
                pool.remove_replicas(count)
                self.events.append((switched, st.index, -float(count), -count * pool.config.cpu,
                                    -count * pool.config.gpus))
            st.shrinking = {}
            for key in sorted(st.retiring):
                pool = st.pools[key]
                if pool.has_work():
                    continue
                at = max(switched, min(pool.busy_until(), now))
                self.events.append((at, st.index, -float(pool.replicas), -pool.replicas * pool.config.cpu,
                                    -pool.replicas * pool.config.gpus))
                del st.pools[key]
                st.retiring.discard(key)


def _served_timeout(new: PoolConfig | TokenConfig, old: PoolConfig | TokenConfig, *,
                    restarts: bool) -> PoolConfig | TokenConfig:
    """`new` with the queue timeout its pool's Triton would run (`queueing.timeout_to_load`): the loaded one while
    within the tolerance, unless the model reloads anyway (another batch size, or pods restarted to resize)."""
    if not (isinstance(new, PoolConfig) and isinstance(old, PoolConfig)):
        return new
    reloads = restarts or new.batch != old.batch
    return replace(new, queue_timeout_us=timeout_to_load(old.queue_timeout_us, new.queue_timeout_us, reloads=reloads))


def _reconfigure(pool: AnyPool, new: PoolConfig | TokenConfig, at: float, *, pending: bool) -> None:
    """Give `pool` its new config at `at`: now, or pending (an in-place resize that lands later). The two
    branches read alike but narrow the pool and its config types together, which one `or` cannot."""
    if isinstance(pool, TokenPool) and isinstance(new, TokenConfig):  # noqa: SIM114
        if pending:
            pool.pending_config = (at, new)
        else:
            pool.set_config(new, at)
    elif isinstance(pool, Pool) and isinstance(new, PoolConfig):
        if pending:
            pool.pending_config = (at, new)
        else:
            pool.set_config(new, at)
    else:
        raise TypeError(f"{type(pool).__name__} cannot run a {type(new).__name__}")


def _token_records(pipeline: ServingPipeline, workload: Workload) -> TokenRecords | None:
    """Per-request token counts of a pipeline with a token-generating stage: the workload's, or every request
    at the stage's declared means (rounded up)."""
    generation = next((s.generation for s in pipeline.spec.stages if s.generation is not None), None)
    if generation is None:
        return None
    if workload.prompts is not None:
        return TokenRecords(np.asarray(workload.prompts.prompt_tokens, dtype=np.int64),
                            np.asarray(workload.prompts.output_tokens, dtype=np.int64))
    n = workload.requests
    return TokenRecords(np.full(n, math.ceil(generation.prompt_tokens), dtype=np.int64),
                        np.full(n, math.ceil(generation.output_tokens), dtype=np.int64))


def _token_config(tokens: TokenProfile, generation: Generation, a: Allocation, accuracy: float) -> TokenConfig:
    """A token pool's engine at allocation `a`: `a.batch` sequences at once, the profile's fits and KV budget."""
    return TokenConfig(
        batch=a.batch, kv_tokens=int(tokens.kv_budget_bytes // tokens.kv_bytes_per_token),
        prefill_s=(tokens.served_prefill_ms(0.0) / 1000.0, tokens.prefill.slope_ms / 1000.0),
        step_s=(tokens.decode_step.intercept_ms / 1000.0, tokens.decode_step.slope_ms / 1000.0),
        cpu=a.cpu, gpus=sum(amount for _, amount in a.gpus), accuracy=accuracy,
        ttft_slo_s=generation.ttft_ms / 1000.0 if generation.ttft_ms is not None else INF,
        itl_slo_s=generation.itl_ms / 1000.0 if generation.itl_ms is not None else INF,
    )
