"""The KServe v2 endpoints around inference, so that Triton's own clients work against the router unchanged.

`tritonclient`, `perf_analyzer` and Open Inference Protocol clients ask a server what it serves before
they infer: server metadata (``GET /v2``), a model's metadata, configuration, readiness and statistics,
with or without a version in the path. The router answers them for two kinds of names:

- **a model it proxies** (``/v2/models/{model}/...``): the answer is Triton's own, fetched from one of the
  model's replicas (a model's metadata and config are the same on every replica), status and body as Triton
  gave them; a model's readiness is "some replica is ready";
- **its pipeline**, addressed like a model (``/v2/models/{pipeline}/...``, only version ``1``): metadata and
  config take the inputs of the entry stage's model and the outputs of the final stage's, readiness is
  "every stage has a ready replica of each of its models", and statistics are the router's own figures for
  the pipeline in Triton's statistics format: requests, rows and their time; ``queue`` is the time its
  upstream calls waited for the router's EDF queue and ``compute_infer`` the time of those calls (summed over
  a request's calls, as Triton sums an ensemble's composing models). Inference on
  ``/v2/models/{pipeline}/infer`` is the pipeline endpoint.

``GET /v2/models/stats`` lists the pipeline's figures and every proxied model's (from one replica each).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from paretoserve import __version__
from paretoserve.workers.router.errors import NotFound, RouterError, UpstreamError
from paretoserve.workers.router.protocol import JSON, json_response

if TYPE_CHECKING:
    from paretoserve.workers.router.app import RouterService
    from paretoserve.workers.router.config import RouterConfig
    from paretoserve.workers.router.upstream import UpstreamPool

PIPELINE_VERSION = "1"
PIPELINE_PLATFORM = "paretoserve_pipeline"
SERVER_NAME = "paretoserve-router"
EXTENSIONS = ("binary_tensor_data", "statistics", "model_configuration")


@dataclass
class PipelineStats:
    """The router's running figures for its pipeline (Triton's statistics fields it can fill truthfully)."""

    success: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    rows: int = 0
    last_inference_ms: int = 0
    queue_ns: int = 0
    """Time the pipeline's upstream calls waited for a slot of the router's EDF queue."""
    infer_ns: int = 0
    """Time of the pipeline's upstream calls (the models' answers, network included)."""

    def call(self, wait_s: float, call_s: float) -> None:
        self.queue_ns += int(wait_s * 1e9)
        self.infer_ns += int(call_s * 1e9)

    def record(self, ok: bool, seconds: float, rows: int) -> None:
        ns = int(seconds * 1e9)
        if ok:
            self.success, self.success_ns, self.rows = self.success + 1, self.success_ns + ns, self.rows + rows
        else:
            self.fail, self.fail_ns = self.fail + 1, self.fail_ns + ns
        self.last_inference_ms = int(time.time() * 1000)

    def to_json(self, name: str) -> dict[str, Any]:
        zero = {"count": 0, "ns": 0}
        return {
            "name": name, "version": PIPELINE_VERSION, "last_inference": self.last_inference_ms,
            "inference_count": self.rows, "execution_count": self.success,
            "inference_stats": {
                "success": {"count": self.success, "ns": self.success_ns},
                "fail": {"count": self.fail, "ns": self.fail_ns},
                # every answered request queued and was computed once, as Triton counts them (perf_analyzer
                # finds the model's version by its queue count growing); the times are the calls' sums
                # (input and output handling are inside the calls: their own times are 0, their counts equal)
                "queue": {"count": self.success, "ns": self.queue_ns},
                "compute_input": {"count": self.success, "ns": 0},
                "compute_infer": {"count": self.success, "ns": self.infer_ns},
                "compute_output": {"count": self.success, "ns": 0},
                "cache_hit": zero, "cache_miss": zero,
            },
            "batch_stats": [], "memory_usage": [],
        }


def _entry_and_exit(config: RouterConfig) -> tuple[str, str]:
    """The model whose inputs the pipeline takes and the one whose outputs it answers."""

    def first_model(stage_name: str) -> str:
        stage = config.stage(stage_name)
        return stage.cascade.light if stage.cascade is not None else stage.variants[0][0]

    return first_model(config.order[0]), first_model(config.order[-1])


def _models(config: RouterConfig) -> list[str]:
    return sorted(config.upstreams)


async def _fetch_json(pool: UpstreamPool, model: str, path: str) -> dict[str, Any]:
    status, content = await pool.fetch(model, path)
    if status != 200:
        raise UpstreamError(f"model {model!r} did not answer {path.rsplit('/', 1)[-1]} ({status})", model=model,
                            status=502)
    try:
        decoded = orjson.loads(content)
    except orjson.JSONDecodeError:
        decoded = None
    if not isinstance(decoded, dict):
        raise UpstreamError(f"model {model!r} answered {path.rsplit('/', 1)[-1]} with something not a JSON object",
                            model=model, status=502)
    return decoded


class KServeEndpoints:
    """The metadata, config, readiness and statistics endpoints of one router (see the module notes)."""

    def __init__(self, service: RouterService) -> None:
        self._service = service
        self.stats = PipelineStats()

    def _target(self, request: Request) -> tuple[RouterConfig, str, str | None]:
        """(config, name, version) of the request; raises 404 for a name the router does not serve."""
        config = self._service.config
        name = request.path_params["model"]
        version = request.path_params.get("version")
        if name == config.pipeline and name not in config.upstreams:
            if version is not None and version != PIPELINE_VERSION:
                raise NotFound(f"pipeline {name!r} has no version {version!r} (only {PIPELINE_VERSION!r})")
        elif name not in config.upstreams:
            raise NotFound(f"no model or pipeline {name!r} here (the pipeline is {config.pipeline!r})")
        return config, name, version

    def check_version(self, request: Request) -> None:
        """404 unless the request's name and version are served (the pipeline has version 1 only)."""
        self._target(request)

    def is_pipeline(self, name: str) -> bool:
        config = self._service.config
        return name == config.pipeline and name not in config.upstreams

    async def _proxy_get(self, request: Request, model: str) -> Response:
        pool, _ = self._service.require_running()
        status, content = await pool.fetch(model, request.url.path)
        return Response(content, status_code=status, media_type=JSON)

    async def server_metadata(self, _: Request) -> Response:
        return json_response({"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)})

    async def _entry_and_exit_json(self, suffix: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Triton's ``/v2/models/{model}{suffix}`` answer for the pipeline's entry model and for its exit model."""
        pool, _ = self._service.require_running()
        entry, exit_ = _entry_and_exit(self._service.config)
        first, last = await asyncio.gather(_fetch_json(pool, entry, f"/v2/models/{entry}{suffix}"),
                                           _fetch_json(pool, exit_, f"/v2/models/{exit_}{suffix}"))
        return first, last

    async def metadata(self, request: Request) -> Response:
        _, name, _ = self._target(request)
        if not self.is_pipeline(name):
            return await self._proxy_get(request, name)
        first, last = await self._entry_and_exit_json("")
        return json_response({"name": name, "versions": [PIPELINE_VERSION], "platform": PIPELINE_PLATFORM,
                              "inputs": first.get("inputs", []), "outputs": last.get("outputs", [])})

    async def config(self, request: Request) -> Response:
        _, name, _ = self._target(request)
        if not self.is_pipeline(name):
            return await self._proxy_get(request, name)
        first, last = await self._entry_and_exit_json("/config")
        batches = [int(c.get("max_batch_size", 0) or 0) for c in (first, last)]
        return json_response({"name": name, "platform": PIPELINE_PLATFORM, "backend": "",
                              "version_policy": {"latest": {"num_versions": 1}},
                              "max_batch_size": min(batches) if all(batches) else 0,
                              "input": first.get("input", []), "output": last.get("output", [])})

    async def ready(self, request: Request) -> Response:
        config, name, _ = self._target(request)
        pool, _ = self._service.require_running()
        models = _models(config) if self.is_pipeline(name) else [name]
        ready = await asyncio.gather(*(self._any_replica_ready(pool, model) for model in models))
        if all(ready):
            return Response(b"", status_code=200)
        unready = [m for m, ok in zip(models, ready, strict=True) if not ok]
        raise RouterError(f"{name!r} is not ready: no ready replica of {', '.join(map(repr, unready))}", status=503)

    @staticmethod
    async def _any_replica_ready(pool: UpstreamPool, model: str) -> bool:
        answers = await asyncio.gather(*(pool.model_ready(url, model) for url in pool.replicas(model)))
        return any(answers)

    async def model_stats(self, request: Request) -> Response:
        config, name, _ = self._target(request)
        if not self.is_pipeline(name):
            return await self._proxy_get(request, name)
        return json_response({"model_stats": [self.stats.to_json(config.pipeline)]})

    async def all_stats(self, _: Request) -> Response:
        config = self._service.config
        pool = self._service.require_running()[0]
        answers = await asyncio.gather(*(_fetch_json(pool, m, f"/v2/models/{m}/stats") for m in _models(config)))
        listed = [self.stats.to_json(config.pipeline)] if config.pipeline not in config.upstreams else []
        for answer in answers:
            listed.extend(s for s in answer.get("model_stats", []) if isinstance(s, dict))
        return json_response({"model_stats": listed})
