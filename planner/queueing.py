"""How much of a replica's profiled throughput a plan may use before its queue breaks the SLO.

A profile gives each option a batch latency and a throughput, and a plan that keeps the load under the
summed throughput is stable; it is not on time. Requests queue in front of a pool, and a pool whose batch
latency leaves little of the SLO free (InfAdapter's ResNet-101 on 1 core answers in 750 ms against a
750 ms SLO) misses the SLO with the first request that waits. IPA and InfAdapter leave this to a fixed
utilisation target κ; in the simulator on bursty windows that alone lost 3-5 % of requests, all in such
pools.

`queueing_utilization` is the utilisation at which the pool's waiting time at the SLO percentile still
fits in the time the SLO leaves after the batch itself and the fastest path through the other stages. The
pool is modelled as M/M/c with c servers per replica (`servers`: Triton instances, or more where the
profile's throughput says a replica overlaps more batches; the simulator uses the same c), which
overstates the wait of deterministic service (about twice, for M/D/c), so the bound is conservative. One
replica is assumed: pooled replicas wait less, so the bound holds for any count. The compiled option's
capacity becomes throughput × min(κ, this utilisation), a constant per option, so the programs stay linear.

`late_request_timeout_us` is the other side of the same budget: with ``slo.lateRequests: refuse`` a pool refuses
a request that has waited longer than the SLO minus its own batch latency (it could no longer be on time, even
with no other stage in its way), Triton's queue policy ``REJECT`` with that timeout. Under a burst that
capacity lags, the pool then serves the requests that can still make the SLO instead of serving every one late.
The simulator, `paretoserve up` and the operator's pods take the timeout from here. Changing a loaded timeout
reloads the model in Triton (only an instance count changes in place), and the timeout moves with every change
of a pool's cores or instances, so `timeout_to_load` keeps a loaded timeout within `TIMEOUT_TOLERANCE` of the new
one unless the model reloads anyway (measured with `paretoserve up` on the digits pipeline: following every
change, a core or instance change reloaded a model 11 times in 3 minutes, each stalling it for 1.5-1.7 s).
"""

from __future__ import annotations

import math

from paretoserve.planner.spec import SLO, LateRequests

TAIL_ITERATIONS = 40
TIMEOUT_TOLERANCE = 0.1
"""A loaded queue timeout within this share of the wanted one is kept (`timeout_to_load`)."""


def servers(batch: int, latency_ms: float, throughput_rps: float, instances: int) -> tuple[int, float]:
    """(servers c, seconds per batch) of one replica: c·batch/service equals the profiled throughput."""
    per_batch_s = latency_ms / 1000.0
    c = max(instances, int(math.floor(throughput_rps * per_batch_s / batch + 1e-9)))
    service = c * batch / throughput_rps if throughput_rps > 0 else per_batch_s
    return c, service


def erlang_c(c: int, offered: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with `offered` = λ/μ Erlangs (1 when unstable)."""
    if offered >= c:
        return 1.0
    term, total = 1.0, 1.0
    for k in range(1, c):
        term *= offered / k
        total += term
    last = term * offered / c * c / (c - offered)
    return last / (total + last)


def wait_quantile_s(c: int, service_s: float, utilization: float, quantile: float) -> float:
    """Waiting time at `quantile` in M/M/c: P(W > t) = C·exp(-(c/s)(1-ρ)t)."""
    if utilization >= 1.0:
        return math.inf
    if utilization <= 0.0:
        return 0.0
    tail = 1.0 - quantile
    waiting = erlang_c(c, utilization * c)
    if waiting <= tail:
        return 0.0
    return math.log(waiting / tail) / (c / service_s * (1.0 - utilization))


def queueing_utilization(c: int, service_s: float, slack_s: float, quantile: float, target: float) -> float:
    """The highest utilisation ≤ `target` whose wait at `quantile` fits in `slack_s` (0 if none does)."""
    if slack_s <= 0.0:
        return 0.0
    if wait_quantile_s(c, service_s, target, quantile) <= slack_s:
        return target
    lo, hi = 0.0, target
    for _ in range(TAIL_ITERATIONS):
        mid = 0.5 * (lo + hi)
        if wait_quantile_s(c, service_s, mid, quantile) <= slack_s:
            lo = mid
        else:
            hi = mid
    return lo


def late_request_timeout_us(slo: SLO, latency_ms: float) -> int:
    """Triton's queue timeout (µs) for a pool of batch latency `latency_ms`: 0 (none) unless the SLO refuses late
    requests, and 0 too when the batch alone takes the whole SLO (refusing would then refuse every request)."""
    if slo.late_requests is not LateRequests.REFUSE:
        return 0
    return max(0, int(math.floor((slo.latency_ms - latency_ms) * 1000.0)))


def timeout_to_load(loaded_us: int, wanted_us: int, *, reloads: bool = False) -> int:
    """The queue timeout a model should run with when the plan wants `wanted_us` and `loaded_us` runs: the loaded
    one while both refuse and it is within `TIMEOUT_TOLERANCE` of the wanted one (a change that small is not worth a
    reload), unless the model `reloads` anyway; the wanted one otherwise (and always to turn refusing on or off)."""
    if reloads or loaded_us <= 0 or wanted_us <= 0:
        return wanted_us
    return loaded_us if abs(wanted_us - loaded_us) <= TIMEOUT_TOLERANCE * max(loaded_us, wanted_us) else wanted_us
