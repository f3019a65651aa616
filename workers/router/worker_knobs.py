"""Triton knobs applied by the sidecar to its own Triton: instance count and dynamic batching.

On Kubernetes the operator cannot reach into a pod's Triton; the router sidecar next to it can. The operator
posts the plan's knobs for the pod's models to `POST /admin/worker`; the sidecar reads each model's current
config from Triton, changes `instance_group[].count` and `dynamic_batching` and loads it back through the
repository API with a config override (over gRPC by default: an HTTP load stalls inference on Triton 2.51).
An instance-count-only change is an in-place update in Triton (no
reload); a batching change is a reload that keeps the old model serving until the new one is ready, and so is
a change of ``queueTimeoutMicroseconds`` (the queue policy's timeout with action ``REJECT``: a request that has
waited that long is refused with a 503, sent when the pipeline's SLO refuses late requests). The timeout follows
the pool's planned latency, which moves with every resize, so a loaded timeout within 10 % of the new one is kept
unless the model reloads anyway (`planner.queueing.timeout_to_load`, the rule the simulator applies).
Triton reloads a model loaded from its ``config.pbtxt`` on the first override whatever it changes, so every
override carries a marker parameter (`PARAM_ADOPTED`) and the knobs file's first application, before the router
reports ready, loads it: the pod's one such reload happens as the sidecar adopts the model, not at the plan's
first instance change under load. `override_config` is pure; `apply_knobs` does the two HTTP calls.

A token-generating model (decoupled, ``workers/llm/serving.py``) has one more knob, ``maxSequences``: the most
sequences one instance's scheduler runs at once (the plan's batch), its config parameter ``max_sequences``; it
has no dynamic batching. Every change of such a model is a full reload, never Triton's in-place instance update
(measured with Triton 2.51: removing an instance in place under running streams stalled a stream and every
later load; ``workers/runtime/served.py``). So the override also writes the instance count into the model's
parameters (``instances``, read by nobody), as `paretoserve up` does: Triton then sees more than an
``instance_group`` change and reloads, the old instances finishing their streams beside the new ones.

A config override loads whatever it says into Triton, so the body is held to exactly the knobs: only
`models`, only names matching the spec's `TRITON_MODEL_NAME` that this router serves from its own Triton
(`KnobsApplier`'s `served`), each knob within bounds (`KNOB_BOUNDS`: at most 64 instances, as the CRD).
Where Triton is and how to load are the sidecar's flags (`TritonTarget`), never the body's.

The same knobs are also in the pod's ConfigMap (`worker.json`, mounted next to `router.json`), so a pod that
starts after the operator's last push, or a push that failed, still converges: `watch_knobs_file` applies the
file once the pod's Triton answers and again whenever the kubelet updates the mounted file.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from tritonclient.grpc import aio as triton_grpc  # imported with the router (0.1 s), not at its first knob change
from tritonclient.utils import InferenceServerException

from paretoserve.planner.queueing import timeout_to_load
from paretoserve.planner.spec import TRITON_MODEL_NAME
from paretoserve.workers.router.errors import ConfigError, RouterError, UpstreamUnavailable

logger = logging.getLogger(__name__)


_MODEL_NAME = re.compile(TRITON_MODEL_NAME)
KNOB_BOUNDS: Mapping[str, tuple[int, int]] = {
    "instanceCount": (1, 64),
    "preferredBatchSize": (1, 4096),
    "maxQueueDelayMicroseconds": (0, 60_000_000),
    "maxSequences": (1, 4096),
    "queueTimeoutMicroseconds": (0, 3_600_000_000),
}
"""Inclusive bounds of each knob (instances as the CRD's ``instances``; a queue delay of at most 60 s; sequences
as batch sizes; a queue timeout within the CRD's longest SLO, an hour)."""
PARAM_MAX_SEQUENCES = "max_sequences"
"""A generation model's parameter for ``maxSequences`` (``workers/llm/serving.py``'s ``PARAM_MAX_SEQUENCES``)."""
PARAM_ADOPTED = "paretoserve.adopted"
"""A marker parameter every override of a non-generation model carries (read by nobody). Triton reloads a model
loaded from its ``config.pbtxt`` on its first config override, whatever the override changes, and only then
updates instance counts in place (measured with Triton 2.51: 1.4 s and a p99 of 86 ms under 500 requests/s for
that first change, 0.13-0.16 s for later ones). A config without the marker was not loaded by an override, so the
sidecar's first application loads it even where the knobs are unchanged: the pod's one reload happens when the
sidecar adopts the model at start (the knobs file), not at the first change of the plan under load."""
PARAM_INSTANCES = "instances"
"""A generation model's instance count repeated in its parameters, so that a change of it is a reload
(``workers/runtime/served.py``'s ``PARAM_INSTANCES``)."""
LoadProtocol = Literal["grpc", "http"]


@dataclass(frozen=True, slots=True)
class TritonTarget:
    """The pod's own Triton: where knobs are read and loaded (``--triton-url``, ``--triton-grpc-url``)."""

    url: str = "http://127.0.0.1:8000"
    grpc_url: str = "127.0.0.1:8001"
    load_protocol: LoadProtocol = "grpc"


@dataclass(frozen=True, slots=True)
class Knobs:
    instance_count: int
    preferred_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    max_sequences: int | None = None
    """A token-generating model's most sequences at once per instance; None keeps the served value."""
    queue_timeout_us: int | None = None
    """Refuse a request that has waited this long (the queue policy's timeout, action ``REJECT``; 0: never); None
    keeps the served policy."""


def _int(raw: Mapping[str, Any], key: str, path: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    low, high = KNOB_BOUNDS[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{path}.{key}", f"must be an integer in [{low}, {high}], got {value!r}")
    return value


def _model(name: object, served: Collection[str] | None) -> str:
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        shown = repr(name)[:80]
        raise ConfigError("models", f"model names must match {_MODEL_NAME.pattern}, got {shown}")
    if served is not None and name not in served:
        known = ", ".join(sorted(served)) or "none"
        raise ConfigError(f"models.{name}", f"not a model this router serves from its own Triton ({known})")
    return name


def parse_knobs(raw: object, served: Collection[str] | None = None) -> dict[str, Knobs]:
    """`{"models": {name: {"instanceCount", "preferredBatchSize"?, "maxQueueDelayMicroseconds"?,
    "queueTimeoutMicroseconds"?, "maxSequences"?}}}`.

    Nothing else is accepted (a `tritonUrl` is an unknown field); with ``served``, only those models.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError("models", "the worker update must be an object")
    for key in raw:
        if key != "models":
            raise ConfigError(str(key)[:80], "unknown field (allowed: models)")
    if not isinstance(raw.get("models"), Mapping):
        raise ConfigError("models", "must be an object of Triton model name to knobs")
    out: dict[str, Knobs] = {}
    for name, knobs in raw["models"].items():
        model = _model(name, served)
        path = f"models.{model}"
        if not isinstance(knobs, Mapping):
            raise ConfigError(path, "must be an object")
        unknown = set(knobs) - set(KNOB_BOUNDS)
        if unknown:
            raise ConfigError(f"{path}.{str(sorted(map(str, unknown))[0])[:80]}", "unknown field")
        count = _int(knobs, "instanceCount", path)
        if count is None:
            raise ConfigError(f"{path}.instanceCount", "is required")
        sequences = _int(knobs, "maxSequences", path)
        batching = (_int(knobs, "preferredBatchSize", path), _int(knobs, "maxQueueDelayMicroseconds", path),
                    _int(knobs, "queueTimeoutMicroseconds", path))
        if sequences is not None and batching != (None, None, None):
            raise ConfigError(f"{path}.maxSequences", "a token-generating model has no dynamic batching: send it "
                                                      "without preferredBatchSize, maxQueueDelayMicroseconds and "
                                                      "queueTimeoutMicroseconds")
        out[model] = Knobs(count, *batching[:2], max_sequences=sequences, queue_timeout_us=batching[2])
    return out


def is_generation(config: Mapping[str, Any]) -> bool:
    """A decoupled model with a ``max_sequences`` parameter: a token-generating model of
    ``workers/llm/serving.py``."""
    decoupled = bool((config.get("model_transaction_policy") or {}).get("decoupled"))
    return decoupled and PARAM_MAX_SEQUENCES in (config.get("parameters") or {})


def override_config(current: Mapping[str, Any], knobs: Knobs) -> dict[str, Any]:
    """Triton's model config with the knobs applied (the load API's override body).

    ``maxSequences`` for a model that is not a token-generating one (`is_generation`) is a `ConfigError`: Triton
    would load the parameter and nothing would read it."""
    config = copy.deepcopy(dict(current))
    groups = config.get("instance_group") or [{"kind": "KIND_CPU"}]
    running = groups[0].get("count")
    groups[0] = {**groups[0], "count": knobs.instance_count}
    config["instance_group"] = groups
    if is_generation(config):
        parameters = dict(config.get("parameters") or {})
        if PARAM_INSTANCES in parameters or running != knobs.instance_count:  # unchanged: no reload
            parameters[PARAM_INSTANCES] = {"string_value": str(knobs.instance_count)}
        if knobs.max_sequences is not None:
            parameters[PARAM_MAX_SEQUENCES] = {"string_value": str(knobs.max_sequences)}
        config["parameters"] = parameters
        if knobs.queue_timeout_us is not None:
            raise ConfigError(f"models.{config.get('name', '?')}.queueTimeoutMicroseconds",
                              "a token-generating model has no dynamic batching, so no queue policy")
    elif knobs.max_sequences is not None:
        raise ConfigError(f"models.{config.get('name', '?')}.maxSequences",
                          "only a token-generating (decoupled) model has maxSequences")
    else:
        config["parameters"] = {**(config.get("parameters") or {}), PARAM_ADOPTED: {"string_value": "1"}}
    if knobs.queue_timeout_us is not None and "dynamic_batching" not in config:
        raise ConfigError(f"models.{config.get('name', '?')}.queueTimeoutMicroseconds",
                          "the model has no dynamic batching, so no queue policy")
    if (knobs.preferred_batch_size is not None or knobs.max_queue_delay_us is not None
            or knobs.queue_timeout_us is not None):
        served = dict(config.get("dynamic_batching") or {})
        batching = dict(served)
        if knobs.preferred_batch_size is not None:
            if knobs.preferred_batch_size > 1:
                batching["preferred_batch_size"] = [knobs.preferred_batch_size]
            else:
                batching.pop("preferred_batch_size", None)
        if knobs.max_queue_delay_us is not None:
            batching["max_queue_delay_microseconds"] = knobs.max_queue_delay_us
        if knobs.queue_timeout_us is not None:
            policy = dict(batching.get("default_queue_policy") or {})
            refusing = policy.get("timeout_action", "REJECT") == "REJECT"
            loaded = int(policy.get("default_timeout_microseconds", 0)) if refusing else 0
            timeout = timeout_to_load(loaded, knobs.queue_timeout_us, reloads=batching != served)
            if timeout != loaded or not refusing:
                batching["default_queue_policy"] = {**policy, "timeout_action": "REJECT",
                                                    "default_timeout_microseconds": timeout}
        config["dynamic_batching"] = batching
    return config


Loader = Callable[[str, str], Awaitable[None]]
"""Loads `model` with a JSON config override."""


def http_loader(client: httpx.AsyncClient, triton_url: str) -> Loader:
    async def load(model: str, config_json: str) -> None:
        response = await client.post(f"{triton_url}/v2/repository/models/{model}/load",
                                     json={"parameters": {"config": config_json}})
        response.raise_for_status()

    return load


class GrpcLoader:
    """Loads over gRPC: measured on Triton 2.51, an HTTP load stalls inference on every model for the
    whole change (2-10 s), a gRPC load does not. One channel for the router's life (`KnobsApplier.open`)."""

    def __init__(self, grpc_url: str, timeout_s: float = 120.0) -> None:
        self._url = grpc_url
        self._timeout_s = timeout_s
        self._client = triton_grpc.InferenceServerClient(url=grpc_url)

    async def __call__(self, model: str, config_json: str) -> None:
        try:
            await self._client.load_model(model, config=config_json, client_timeout=self._timeout_s)
        except InferenceServerException as exc:
            raise UpstreamUnavailable(f"loading {model!r} over gRPC failed", model=model, url=self._url,
                                      detail=str(exc)) from exc

    async def aclose(self) -> None:
        await self._client.close()


async def apply_knobs(client: httpx.AsyncClient, triton_url: str, model: str, knobs: Knobs,
                      load: Loader | None = None) -> bool:
    """Apply `knobs` to `model` on the Triton at `triton_url`; False when it already had them.

    The current config is read over HTTP; the change is loaded with `load` (default: the HTTP load API).
    """
    loader = load or http_loader(client, triton_url)
    try:
        response = await client.get(f"{triton_url}/v2/models/{model}/config")
        response.raise_for_status()
        current = response.json()
        wanted = override_config(current, knobs)
        if wanted == current:
            return False
        await loader(model, json.dumps(wanted))
    except ConfigError:  # the body asks for a knob this model does not have: the caller's error
        raise
    except (httpx.HTTPError, ValueError) as exc:  # ValueError: an answer that is not JSON
        raise UpstreamUnavailable(f"applying knobs to {model!r}: {type(exc).__name__}", model=model,
                                  url=triton_url, detail=str(exc)) from exc
    return True


class KnobsApplier:
    """Applies `/admin/worker` bodies to the pod's own Triton, one change at a time.

    ``served`` gives the models this router serves from that Triton (read at each call: a live config
    update may change them); operator pushes and the knobs file share the one lock. Its clients are made once,
    in `open` (the router's start, before it reports ready): building an httpx client (an SSL context, its
    certificate store read) takes 20-35 ms of CPU and importing the gRPC client 0.1 s, and a client built per
    change did that on the event loop that serves requests, so every change stalled the data plane that long
    (a timeline at 500 requests/s alternating the router and Triton itself, 2026-12-06: answers of 28-43 ms
    through the router at each change, under 7 ms straight to Triton in the same windows).
    """

    def __init__(self, target: TritonTarget, served: Callable[[], Collection[str]], *,
                 transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 120.0) -> None:
        self._target = target
        self._served = served
        self._transport = transport
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None
        self._grpc: GrpcLoader | None = None

    async def open(self) -> None:
        """Make the clients (idempotent)."""
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport,
                                             timeout=httpx.Timeout(self._timeout_s, connect=2.0))
        if self._grpc is None and self._target.load_protocol == "grpc":
            self._grpc = GrpcLoader(self._target.grpc_url, self._timeout_s)

    async def aclose(self) -> None:
        client, grpc, self._client, self._grpc = self._client, self._grpc, None, None
        if client is not None:
            await client.aclose()
        if grpc is not None:
            await grpc.aclose()

    async def apply(self, raw: Mapping[str, Any]) -> dict[str, list[str]]:
        """Validate ``raw`` and apply it; ``{"applied": [...], "unchanged": [...]}``."""
        knobs = parse_knobs(raw, self._served())
        applied: list[str] = []
        unchanged: list[str] = []
        async with self._lock:
            await self.open()  # a call before the router's start (its admin app is up first) opens them itself
            assert self._client is not None
            url = self._target.url.rstrip("/")
            for model, wanted in knobs.items():
                changed = await apply_knobs(self._client, url, model, wanted, self._grpc)
                (applied if changed else unchanged).append(model)
        logger.info("worker knobs applied to %s, unchanged %s", applied, unchanged)
        return {"applied": applied, "unchanged": unchanged}


WorkerUpdate = Callable[[Mapping[str, Any]], Awaitable[Mapping[str, Any]]]
"""Applies a `/admin/worker` body (the router's own handler, so pushes and the file share one lock)."""


FIRST_POLL_S = 0.5
"""How often the knobs file is retried until its first application concludes (Triton still starting)."""


async def watch_knobs_file(path: Path, apply: WorkerUpdate, poll_s: float = 5.0,
                           on_settled: Callable[[], None] | None = None) -> None:
    """Apply the knobs in `path` until cancelled: at start, and whenever the file's content changes.

    A content that cannot be applied yet (Triton still loading: `UpstreamUnavailable`) is retried every
    `poll_s` (every `FIRST_POLL_S` until the first application); one that is invalid is logged with the field
    named and skipped until the file changes. `on_settled` is called once, when the first content was applied,
    found invalid, or failed unexpectedly, or the file cannot be read: the router holds its readiness until then,
    so the model's adoption (`PARAM_ADOPTED`) happens before the pod takes traffic.
    """
    settled: str | None = None
    pending = on_settled

    def conclude() -> None:
        nonlocal pending
        done, pending = pending, None
        if done is not None:
            done()

    while True:
        try:
            text: str | None = path.read_text(encoding="utf-8")
        except OSError as exc:
            logger.warning("cannot read worker knobs %s: %s", path, exc.strerror or exc)
            text = None
            conclude()
        if text is not None and text != settled:
            try:
                raw = json.loads(text)
                if not isinstance(raw, Mapping):
                    raise ConfigError("models", "the knobs file must hold a JSON object")
                result = await apply(raw)
                settled = text
                logger.info("worker knobs from %s: applied %s, unchanged %s", path, result.get("applied"),
                            result.get("unchanged"))
                conclude()
            except ValueError as exc:  # invalid JSON, or a ConfigError naming the field
                settled = text
                logger.error("worker knobs %s are invalid, skipped until the file changes: %s", path, exc)
                conclude()
            except RouterError as exc:
                logger.info("worker knobs %s not applied yet (retrying in %gs): %s", path, poll_s, exc)
            except Exception:  # a bug must not end the watch silently (or hold readiness): log it and retry
                logger.exception("applying worker knobs %s failed (retrying in %gs)", path, poll_s)
                conclude()
        await asyncio.sleep(poll_s if pending is None else min(poll_s, FIRST_POLL_S))
