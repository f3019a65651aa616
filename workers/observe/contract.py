"""The metric contract: every metric name and label ParetoServe exposes or reads, in one place.

Why a module of constants: the router exposes these series, Triton exposes its own, the operator and
``paretoserve up`` read them back (through Prometheus, or by scraping directly), and the Grafana dashboard
(``charts/paretoserve/files/grafana-dashboard.json``) queries them. A name spelled differently in one of
those places fails silently (an empty PromQL answer), so the code imports the names from here and
``tests/unit/test_observe.py`` checks the dashboard against them.

Names are *family* names as registered with ``prometheus_client``: a counter ``X`` is exposed (and must be
queried) as ``X_total`` (see `total`); a histogram ``X`` as ``X_bucket``/``X_sum``/``X_count``.

Who exposes what, with which labels of its own:

- the router sidecar (``workers/router/metrics.py``), per pipeline:
  `PIPELINE_REQUESTS` {pipeline}, `PIPELINE_REQUEST_DURATION` {pipeline},
  `ROUTER_REQUESTS` {pipeline, stage, model, route}, `ROUTER_DEFERRALS` {pipeline, stage},
  `ROUTER_FALLBACKS` {pipeline, stage}, `ROUTER_ERRORS` {pipeline, stage, reason},
  `ROUTER_REQUEST_DURATION` {pipeline, stage, model}, `ROUTER_UPSTREAM_FAILURES` {pipeline, model, reason},
  the scrape-time gauges `ROUTER_QUEUE_LENGTH` {pipeline} and `MIN_DEADLINE_REMAINING` {pipeline}, and for
  token generation `ROUTER_TTFT` and `ROUTER_INTER_TOKEN` {pipeline, model};
- Triton (its own ``/metrics``): `TRITON_QUEUE_DURATION` and `TRITON_REQUEST_SUCCESS` {model, version},
  both counters whose names carry no ``_total`` suffix;
- the operator (``operator/telemetry.py``): `OPERATOR_DECISIONS` {namespace, pipeline, solver_status,
  applied} and `OPERATOR_SOLVE_SECONDS` {namespace, pipeline}.

Labels the scrape adds, which the queries in `paretoserve.workers.observe.queries` select on:

- on Kubernetes, the Prometheus job scraping the worker pods maps the pods' ``paretoserve.io/pipeline``
  and ``paretoserve.io/stage`` labels to `PIPELINE` and `STAGE` and the pod's namespace to `NAMESPACE`
  (the chart's README, "Metrics the operator expects in Prometheus"; the chart itself ships no scrape
  job for worker pods). Triton's series thereby get ``pipeline``; the router's already have it;
- locally (``paretoserve up --prometheus URL``) there is no namespace: the Prometheus scrape config must
  add a static ``pipeline`` label to the router and Triton targets (``static_configs: [{targets: [...],
  labels: {pipeline: NAME}}]``), since Triton's series carry only ``model``/``version``.
"""

from __future__ import annotations

from typing import Final

# --- router sidecar ---------------------------------------------------------------------------------
PIPELINE_REQUESTS: Final = "paretoserve_pipeline_requests"
"""Counter: HTTP requests entering the pipeline. The load signal."""
PIPELINE_REQUEST_DURATION: Final = "paretoserve_pipeline_request_duration_seconds"
"""Histogram: end-to-end duration, errors included."""
ROUTER_REQUESTS: Final = "paretoserve_router_requests"
"""Counter: rows answered per stage, model and route."""
ROUTER_DEFERRALS: Final = "paretoserve_router_deferrals"
"""Counter: rows the cascade deferred from the light to the heavy model."""
ROUTER_FALLBACKS: Final = "paretoserve_router_fallbacks"
"""Counter: rows answered by a fallback model after a backend failure."""
ROUTER_ERRORS: Final = "paretoserve_router_errors"
"""Counter: requests answered with an explicit error."""
ROUTER_REQUEST_DURATION: Final = "paretoserve_router_request_duration_seconds"
"""Histogram: one upstream call, EDF queueing included."""
ROUTER_UPSTREAM_FAILURES: Final = "paretoserve_router_upstream_failures"
"""Counter: failed upstream attempts, retried or not."""
ROUTER_QUEUE_LENGTH: Final = "paretoserve_router_queue_length"
"""Gauge: upstream calls waiting in the EDF queue."""
MIN_DEADLINE_REMAINING: Final = "paretoserve_router_min_deadline_remaining_ms"
"""Gauge: milliseconds left to the tightest deadline the router is serving; absent when none has one."""
ROUTER_TTFT: Final = "paretoserve_router_ttft_seconds"
"""Histogram: a streamed generation's time from the request received to its first token sent to the client."""
ROUTER_INTER_TOKEN: Final = "paretoserve_router_inter_token_seconds"
"""Histogram: a streamed generation's time between two consecutive tokens sent to the client."""

# --- Triton -----------------------------------------------------------------------------------------
TRITON_QUEUE_DURATION: Final = "nv_inference_queue_duration_us"
"""Counter (no ``_total``): cumulative microseconds requests waited in the scheduler, batching wait included."""
TRITON_REQUEST_SUCCESS: Final = "nv_inference_request_success"
"""Counter (no ``_total``): successful inference requests."""

# --- operator ---------------------------------------------------------------------------------------
OPERATOR_DECISIONS: Final = "paretoserve_operator_decisions"
"""Counter: planning decisions by solver status and whether they were applied."""
OPERATOR_SOLVE_SECONDS: Final = "paretoserve_operator_solve_seconds"
"""Histogram: time to build and solve the integer program."""

# --- labels -----------------------------------------------------------------------------------------
NAMESPACE: Final = "namespace"
"""Added by the Kubernetes scrape; set by the operator on its own metrics."""
PIPELINE: Final = "pipeline"
"""Set by the router; added by the scrape for Triton (pod label on Kubernetes, static label locally)."""
STAGE: Final = "stage"
"""Set by the router; added by the Kubernetes scrape for Triton (pod label)."""
MODEL: Final = "model"
"""The Triton model name (a variant's ``tritonModel``), on the router's and Triton's series."""
VERSION: Final = "version"
"""Triton's model version."""
ROUTE: Final = "route"
REASON: Final = "reason"
SOLVER_STATUS: Final = "solver_status"
APPLIED: Final = "applied"

NO_STAGE: Final = "-"
"""`STAGE` value of router errors not tied to a stage."""
PROXY_STAGE: Final = "proxy"
"""`STAGE` value of the router's transparent model proxy."""


def total(counter: str) -> str:
    """The exposed (and queried) sample name of a ``prometheus_client`` counter family."""
    return f"{counter}_total"
