"""PromQL for the control loop's three signals, and the parsing of Prometheus's answers into an `Observed`.

Why pure: the operator (one source per pipeline on a cluster) and ``paretoserve up --prometheus`` read the
same signals through `paretoserve.workers.observe.prometheus.PrometheusSource`, and the query text, the
NaN rule and the stage mapping are where they could drift apart. Here they are functions of strings and
decoded JSON, tested without a server.

The signals (names from `paretoserve.workers.observe.contract`):

- load: ``sum(rate(paretoserve_pipeline_requests_total{sel}[W]))`` as a range query, one step every
  ``step_s`` seconds over the predictor's window;
- queue delay: the mean Triton queue time per request of each model over ``W``, in ms
  (``sum by (model)`` of the queue-duration rate over ``sum by (model)`` of the success rate, / 1000),
  then per stage the *worst* of its models (`worst_per_stage`, shared with the local scraper), minus the
  model's configured dynamic-batching wait when the caller knows it (Triton counts that wait as queueing,
  the planner charges it already as batch formation; the operator passes none, as it always has);
- deadline: ``min(paretoserve_router_min_deadline_remaining_ms{sel})`` (dynamic SLOs).

The one NaN rule: Prometheus encodes values as strings and answers ``NaN`` where a rate has nothing to
divide (``0/0``: nothing served in the window) and ``±Inf`` where only the divisor is zero. A non-finite
value in the load *range* is a step with no load (0.0); a non-finite *instant* value is absent (no queue
delay for that model, no deadline). Each range step's value is repeated ``step_s`` times to make
per-second samples, oldest first, and the result is trimmed to the newest ``window_s``; steps missing from
the answer (no series at that time) are not samples. An error answer, a malformed one, or a load answer
without samples raises `MetricsUnavailable` (`NoLoadSamples` for the last).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from paretoserve.planner.control import Observed
from paretoserve.workers.observe import contract as c

BatchingDelay = Callable[[str], float]
"""Triton model name -> its configured dynamic-batching wait in ms (0 when it does not batch)."""


class MetricsUnavailable(RuntimeError):
    """Prometheus could not be read, answered an error, or has no data for the pipeline yet."""


class NoLoadSamples(MetricsUnavailable):
    """Prometheus answered, but has no request-rate samples for the pipeline in the window."""


@dataclass(frozen=True, slots=True)
class Selector:
    """The label matchers of one pipeline's series: ``pipeline`` always, ``namespace`` on Kubernetes."""

    pipeline: str
    namespace: str | None = None

    def __str__(self) -> str:
        labels = ((c.NAMESPACE, self.namespace), (c.PIPELINE, self.pipeline))
        return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels if value is not None) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# --- PromQL -----------------------------------------------------------------------------------------


def load_query(selector: Selector, rate_window_s: int) -> str:
    """Requests per second entering the pipeline (a range query: see `range_params`)."""
    return f"sum(rate({c.total(c.PIPELINE_REQUESTS)}{selector}[{rate_window_s}s]))"


def queue_delay_query(selector: Selector, rate_window_s: int) -> str:
    """Mean Triton queue time per request of each model, in ms (an instant query)."""
    queued = f"sum by ({c.MODEL}) (rate({c.TRITON_QUEUE_DURATION}{selector}[{rate_window_s}s]))"
    served = f"sum by ({c.MODEL}) (rate({c.TRITON_REQUEST_SUCCESS}{selector}[{rate_window_s}s]))"
    return f"{queued} / {served} / 1000"


def deadline_query(selector: Selector) -> str:
    """The tightest remaining deadline (ms) among the pipeline's routers (an instant query)."""
    return f"min({c.MIN_DEADLINE_REMAINING}{selector})"


def range_params(now: float, *, window_s: int, step_s: int) -> dict[str, str]:
    """``start``/``end``/``step`` of the load range query: the window (at least one step) ending at ``now``."""
    return {"start": _timestamp(now - max(window_s, step_s)), "end": _timestamp(now), "step": f"{step_s}s"}


def _timestamp(t: float) -> str:
    return f"{t:.3f}"


# --- answers ----------------------------------------------------------------------------------------


def result_of(answer: Any) -> list[dict[str, Any]]:
    """``data.result`` of a decoded ``/api/v1/query`` or ``/api/v1/query_range`` answer."""
    if not isinstance(answer, dict):
        raise MetricsUnavailable(f"not a Prometheus API answer: {type(answer).__name__}")
    if answer.get("status") != "success":
        reason = [str(answer.get("errorType", answer.get("status"))), str(answer.get("error", ""))]
        raise MetricsUnavailable("query failed: " + ": ".join(part for part in reason if part))
    data = answer.get("data")
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, list) or not all(isinstance(series, dict) for series in result):
        raise MetricsUnavailable("malformed Prometheus answer: no data.result list")
    return result


def finite(raw: Any) -> float | None:
    """A sample value (Prometheus sends strings) as a float; None when it is NaN or infinite."""
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise MetricsUnavailable(f"malformed sample value {raw!r}") from exc
    return value if math.isfinite(value) else None


def _pair_value(pair: Any) -> Any:
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        raise MetricsUnavailable(f"malformed sample {pair!r}")
    return pair[1]


def load_history(answer: Any, *, step_s: int, window_s: int) -> tuple[float, ...]:
    """Per-second load from the range answer of `load_query`: non-finite steps are 0.0 (no load)."""
    result = result_of(answer)
    if not result:
        return ()
    values = result[0].get("values", [])  # `sum(...)`: one series
    if not isinstance(values, list):
        raise MetricsUnavailable("malformed range answer: values is not a list")
    samples: list[float] = []
    for pair in values:
        samples.extend([finite(_pair_value(pair)) or 0.0] * step_s)
    return tuple(samples[-window_s:]) if window_s > 0 else ()


def by_label(answer: Any, label: str) -> dict[str, float]:
    """An instant-vector answer keyed by ``label``; non-finite values and unlabelled series are absent."""
    out: dict[str, float] = {}
    for series in result_of(answer):
        metric = series.get("metric", {})
        key = metric.get(label) if isinstance(metric, dict) else None
        value = finite(_pair_value(series.get("value")))
        if isinstance(key, str) and value is not None:
            out[key] = value
    return out


def scalar(answer: Any) -> float | None:
    """The value of a one-series instant answer (e.g. ``min(...)``); None when empty or non-finite."""
    result = result_of(answer)
    return finite(_pair_value(result[0].get("value"))) if result else None


def worst_per_stage(per_model_ms: Mapping[str, float], stage_models: Mapping[str, Sequence[str]],
                    batching_delay_ms: BatchingDelay | None = None) -> dict[str, float]:
    """Per stage, the worst queue delay (ms) among its models that have one, less each model's batching wait.

    Stages none of whose models has a value are left out (no evidence of queueing). Used by both the
    Prometheus path and the local scraper (`paretoserve.workers.runtime.metrics`).
    """
    delays: dict[str, float] = {}
    for stage, models in stage_models.items():
        values = [max(0.0, per_model_ms[m] - (batching_delay_ms(m) if batching_delay_ms else 0.0))
                  for m in models if m in per_model_ms]
        if values:
            delays[stage] = round(max(values), 3)
    return delays


def observation(load: Any, queue: Any, deadline: Any, *, selector: Selector, stage_models: Mapping[str, Sequence[str]],
                step_s: int, window_s: int, batching_delay_ms: BatchingDelay | None = None) -> Observed:
    """The `Observed` from the answers to `load_query`, `queue_delay_query` and `deadline_query`."""
    history = load_history(load, step_s=step_s, window_s=window_s)
    if not history:
        raise NoLoadSamples(f"no request-rate samples for {c.total(c.PIPELINE_REQUESTS)}{selector} yet")
    return Observed(load_history=history,
                    queue_delay_ms=worst_per_stage(by_label(queue, c.MODEL), stage_models, batching_delay_ms),
                    min_remaining_budget_ms=scalar(deadline))
