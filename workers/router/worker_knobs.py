"""Triton knobs applied by the sidecar to its own Triton: instance count and dynamic batching.

On Kubernetes the operator cannot reach into a pod's Triton; the router sidecar next to it can. The operator
posts the plan's knobs for the pod's models to `POST /admin/worker`; the sidecar reads each model's current
config from Triton, changes `instance_group[].count` and `dynamic_batching` and loads it back through the
repository API with a config override. An instance-count-only change is an in-place update in Triton (no
reload); a batching change is a reload that keeps the old model serving until the new one is ready.
`override_config` is pure; `apply_knobs` does the two HTTP calls.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from paretoserve.workers.router.errors import ConfigError, UpstreamUnavailable


@dataclass(frozen=True, slots=True)
class Knobs:
    instance_count: int
    preferred_batch_size: int | None = None
    max_queue_delay_us: int | None = None


def _int(raw: Mapping[str, Any], key: str, path: str, low: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{path}.{key}", f"must be an integer >= {low}, got {value!r}")
    return value


def parse_knobs(raw: object) -> dict[str, Knobs]:
    """`{"models": {name: {"instanceCount", "preferredBatchSize"?, "maxQueueDelayMicroseconds"?}}}`."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("models"), Mapping):
        raise ConfigError("models", "must be an object of Triton model name to knobs")
    out: dict[str, Knobs] = {}
    for name, knobs in raw["models"].items():
        path = f"models.{name}"
        if not isinstance(knobs, Mapping):
            raise ConfigError(path, "must be an object")
        unknown = set(knobs) - {"instanceCount", "preferredBatchSize", "maxQueueDelayMicroseconds"}
        if unknown:
            raise ConfigError(f"{path}.{sorted(unknown)[0]}", "unknown field")
        count = _int(knobs, "instanceCount", path, 1)
        if count is None:
            raise ConfigError(f"{path}.instanceCount", "is required")
        out[str(name)] = Knobs(count, _int(knobs, "preferredBatchSize", path, 1),
                               _int(knobs, "maxQueueDelayMicroseconds", path, 0))
    return out


def override_config(current: Mapping[str, Any], knobs: Knobs) -> dict[str, Any]:
    """Triton's model config with the knobs applied (the load API's override body)."""
    config = copy.deepcopy(dict(current))
    groups = config.get("instance_group") or [{"kind": "KIND_CPU"}]
    groups[0] = {**groups[0], "count": knobs.instance_count}
    config["instance_group"] = groups
    if knobs.preferred_batch_size is not None or knobs.max_queue_delay_us is not None:
        batching = dict(config.get("dynamic_batching") or {})
        if knobs.preferred_batch_size is not None:
            if knobs.preferred_batch_size > 1:
                batching["preferred_batch_size"] = [knobs.preferred_batch_size]
            else:
                batching.pop("preferred_batch_size", None)
        if knobs.max_queue_delay_us is not None:
            batching["max_queue_delay_microseconds"] = knobs.max_queue_delay_us
        config["dynamic_batching"] = batching
    return config


async def apply_knobs(client: httpx.AsyncClient, triton_url: str, model: str, knobs: Knobs) -> bool:
    """Apply `knobs` to `model` on the Triton at `triton_url`; False when it already had them."""
    try:
        response = await client.get(f"{triton_url}/v2/models/{model}/config")
        response.raise_for_status()
        current = response.json()
        wanted = override_config(current, knobs)
        if wanted == current:
            return False
        body = {"parameters": {"config": json.dumps(wanted)}}
        loaded = await client.post(f"{triton_url}/v2/repository/models/{model}/load", json=body)
        loaded.raise_for_status()
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"applying knobs to {model}: {type(exc).__name__}: {exc}", model=model,
                                  url=triton_url) from exc
    return True
