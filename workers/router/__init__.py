"""The router sidecar: query-aware cascades, weighted variant splits and EDF queueing over KServe v2.

Each ParetoServe worker pod runs this router next to Triton. It serves a pipeline's stages in DAG
order, splitting traffic across variants by weight, cascading light -> heavy per row (confidence,
discriminator, prompt-feature or hybrid routing, DiffServe/HADIS style), ordering queued upstream
calls by each request's deadline (Sponge), retrying replicas and falling back between models, and
exporting the metrics the operator's control loop reads. Modules, top-down:

- ``app`` -- the data-plane app and the service behind both apps (:func:`build_router`), the one error
  boundary; ``admin`` -- the admin app (live config, Triton knobs, metrics) behind a bearer token;
- ``pipeline`` -- a request through the stages; ``decisions`` -- the pure routing decisions;
- ``edf`` -- EDF admission; ``upstream`` / ``transport`` -- the long-lived httpx clients;
- ``config`` -- the JSON config and live updates; ``protocol`` / ``tensors`` -- KServe v2 messages
  and the one check of every tensor; ``worker_knobs`` -- the pod's Triton knobs;
- ``limits`` -- body sizes, read times, deadline headers; ``http_guard`` -- bounds below the app
  (request heads, concurrency);
- ``errors`` -- the exception tree; ``metrics`` -- the Prometheus contract;
- ``serve`` -- the two uvicorn listeners. (Benchmarks and load generators live in
  ``paretoserve.research.benchmarks``.)

Import the app from its module (``from paretoserve.workers.router.app import build_router``); this
package only re-exports the light, pure pieces.
"""

from paretoserve.workers.router.config import RouterConfig, apply_update, config_to_json, parse_config
from paretoserve.workers.router.decisions import Route
from paretoserve.workers.router.errors import (
    BadRequest,
    ConfigError,
    DeadlineExceeded,
    LateRefused,
    NotFound,
    QueueFull,
    RouterError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = [
    "BadRequest",
    "ConfigError",
    "DeadlineExceeded",
    "LateRefused",
    "NotFound",
    "QueueFull",
    "Route",
    "RouterConfig",
    "RouterError",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "apply_update",
    "config_to_json",
    "parse_config",
]
