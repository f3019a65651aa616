"""Runtime control of a Triton server and a pure parser of its Prometheus metrics.

The autoscaler changes a running variant without restarting its pod: instance count (Triton
*updates* the model in place when only ``instance_group`` changes) and dynamic batching (a
zero-downtime reload), both through the load API's config override in explicit model-control mode
(``shared/reference/anchors.md`` §2). :class:`TritonControl` owns the long-lived HTTP clients for
that and for inference, with explicit timeouts. :func:`parse_metrics` turns the text of Triton's
``/metrics`` endpoint into one frozen :class:`ModelMetrics` per model, the signal the planner's
profiler and the autoscaler read (throughput, average batch, queue time, pending requests).

Measured with Triton 2.51 (nvidia-pytriton 0.7.0): the *first* override of a model that was loaded
from its ``config.pbtxt`` (``--load-model``) is a full reload (every instance restarts, ~8-14 s on
2 busy cores), even when only the count changes; once a model has been loaded through an override,
instance-count changes are in-place updates (~2 s to add a stub, ~2 s to remove one). Both keep
serving. A worker that wants cheap scaling should therefore load its models with
:meth:`TritonControl.apply_spec` rather than ``--load-model``.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import tritonclient.http as triton_http
from prometheus_client.parser import text_string_to_metric_families

from paretoserve.workers.observe import contract
from paretoserve.workers.triton.repository import (
    INPUT_NAME,
    OUTPUT_CONFIDENCE,
    OUTPUT_LABEL,
    OUTPUT_PROBS,
    TritonModelSpec,
    render_config,
    task_output,
)

_COUNTERS: Mapping[str, str] = MappingProxyType(
    {
        "nv_inference_count": "inference_count",
        "nv_inference_exec_count": "exec_count",
        contract.TRITON_REQUEST_SUCCESS: "request_success",
        "nv_inference_request_failure": "request_failure",
        "nv_inference_request_duration_us": "request_duration_us",
        contract.TRITON_QUEUE_DURATION: "queue_duration_us",
        "nv_inference_compute_input_duration_us": "compute_input_duration_us",
        "nv_inference_compute_infer_duration_us": "compute_infer_duration_us",
        "nv_inference_compute_output_duration_us": "compute_output_duration_us",
        "nv_inference_pending_request_count": "pending_requests",
    }
)
"""Triton metric family -> :class:`ModelMetrics` field (read-only)."""


@dataclass(frozen=True)
class ModelMetrics:
    """Cumulative Triton counters of one model (summed over versions and failure reasons).

    ``pending_requests`` is a gauge (requests queued or executing right now); everything else
    only grows, so rates come from the difference of two snapshots (:meth:`since`).
    """

    model: str
    inference_count: float = 0.0
    exec_count: float = 0.0
    request_success: float = 0.0
    request_failure: float = 0.0
    request_duration_us: float = 0.0
    queue_duration_us: float = 0.0
    compute_input_duration_us: float = 0.0
    compute_infer_duration_us: float = 0.0
    compute_output_duration_us: float = 0.0
    pending_requests: float = 0.0

    @property
    def average_batch_size(self) -> float:
        """Inferences per model execution (0 before the first execution)."""
        return self.inference_count / self.exec_count if self.exec_count else 0.0

    @property
    def average_queue_us(self) -> float:
        """Mean queue time per successful request."""
        return self.queue_duration_us / self.request_success if self.request_success else 0.0

    def since(self, earlier: ModelMetrics) -> ModelMetrics:
        """Counter increments from ``earlier`` to this snapshot (the gauge keeps its current value)."""
        fields = {
            name: getattr(self, name) - getattr(earlier, name)
            for name in _COUNTERS.values()
            if name != "pending_requests"
        }
        return ModelMetrics(model=self.model, pending_requests=self.pending_requests, **fields)


def parse_metrics(text: str) -> dict[str, ModelMetrics]:
    """Per-model metrics from Prometheus exposition text (pure; unknown families are ignored)."""
    totals: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        field_name = _COUNTERS.get(family.name)
        if field_name is None:
            continue
        for sample in family.samples:
            if sample.name not in (family.name, f"{family.name}_total"):
                continue  # e.g. _created samples
            model = sample.labels.get("model")
            if model is None:
                continue
            per_model = totals.setdefault(model, {})
            per_model[field_name] = per_model.get(field_name, 0.0) + float(sample.value)
    return {model: ModelMetrics(model=model, **values) for model, values in sorted(totals.items())}


@dataclass(frozen=True)
class InferenceOutputs:
    """What a variant returns for ``N`` images."""

    probs: npt.NDArray[np.float32]
    confidence: npt.NDArray[np.float32]
    label: npt.NDArray[np.int64]


class TritonControl:
    """Model control, inference and metrics for one Triton server, as a context manager.

    Not thread-safe (neither is ``tritonclient``'s client): give each thread its own instance.
    ``control_timeout_s`` bounds loads and reloads (a Python-backend instance imports torch);
    ``request_timeout_s`` bounds inference and metrics calls.
    """

    def __init__(
        self,
        http_url: str,
        metrics_url: str | None = None,
        *,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 30.0,
        control_timeout_s: float = 180.0,
    ) -> None:
        self._http_url = http_url
        self._metrics_url = metrics_url
        self._request_timeout_s = request_timeout_s
        self._client = triton_http.InferenceServerClient(
            http_url, connection_timeout=connect_timeout_s, network_timeout=request_timeout_s
        )
        self._control_client = triton_http.InferenceServerClient(
            http_url, connection_timeout=connect_timeout_s, network_timeout=control_timeout_s
        )
        self._metrics_client = httpx.Client(timeout=httpx.Timeout(request_timeout_s, connect=connect_timeout_s))

    def close(self) -> None:
        self._client.close()
        self._control_client.close()
        self._metrics_client.close()

    def __enter__(self) -> TritonControl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- model control -------------------------------------------------------------------------

    def load_model(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        """Load ``name`` (or re-load it with ``config`` replacing its config.pbtxt); blocks until done.

        If the new config fails to load, Triton keeps serving the old one and this raises.
        """
        override = json.dumps(config) if config is not None else None
        self._control_client.load_model(name, config=override)

    def apply_spec(self, spec: TritonModelSpec) -> None:
        """Load or change ``spec.name`` to match ``spec`` exactly."""
        self.load_model(spec.name, render_config(spec))

    def unload_model(self, name: str, *, wait_s: float = 60.0) -> None:
        """Unload ``name`` and wait (up to ``wait_s``) until it no longer reports ready."""
        self._control_client.unload_model(name)
        deadline = time.monotonic() + wait_s
        while self.is_model_ready(name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {name!r} still ready {wait_s:.0f}s after unload")
            time.sleep(0.05)

    def is_model_ready(self, name: str) -> bool:
        return bool(self._client.is_model_ready(name))

    def model_config(self, name: str) -> dict[str, Any]:
        """The config Triton is serving ``name`` with (JSON form, auto-completed fields included)."""
        config = self._client.get_model_config(name)
        if not isinstance(config, dict):
            raise TypeError(f"unexpected model config of type {type(config).__name__}")
        return config

    def set_instance_count(self, name: str, count: int) -> dict[str, Any]:
        """Change the instance count of every instance group of ``name`` (see the module notes on cost)."""
        if count < 1:
            raise ValueError(f"instance count must be >= 1, got {count}")
        config = copy.deepcopy(self.model_config(name))
        for group in config.get("instance_group", []):
            group["count"] = count
        self.load_model(name, config)
        return self.model_config(name)

    def set_dynamic_batching(
        self, name: str, *, preferred_batch_sizes: Sequence[int], max_queue_delay_us: int
    ) -> dict[str, Any]:
        """Change dynamic-batching parameters of ``name`` (a reload without loss of availability)."""
        config = copy.deepcopy(self.model_config(name))
        batching = config.setdefault("dynamic_batching", {})
        batching["preferred_batch_size"] = list(preferred_batch_sizes)
        batching["max_queue_delay_microseconds"] = max_queue_delay_us
        self.load_model(name, config)
        return self.model_config(name)

    # --- inference and metrics ---------------------------------------------------------------

    def infer(self, name: str, images: npt.NDArray[np.floating[Any]]) -> InferenceOutputs:
        """One request carrying ``images`` (shape ``(N, 8, 8)``, ``N <= max_batch_size``)."""
        batch = np.ascontiguousarray(images, dtype=np.float32)
        tensor = triton_http.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        outputs = [triton_http.InferRequestedOutput(n) for n in (OUTPUT_PROBS, OUTPUT_CONFIDENCE, OUTPUT_LABEL)]
        result = self._client.infer(name, [tensor], outputs=outputs)
        return InferenceOutputs(
            probs=result.as_numpy(OUTPUT_PROBS),
            confidence=result.as_numpy(OUTPUT_CONFIDENCE).reshape(-1),
            label=result.as_numpy(OUTPUT_LABEL).reshape(-1),
        )

    def infer_tasks(self, name: str, images: npt.NDArray[np.floating[Any]],
                    tasks: Sequence[str]) -> dict[str, InferenceOutputs]:
        """One request to a fused multi-task model: each task's outputs (``PROBS_<task>`` ...), by task."""
        batch = np.ascontiguousarray(images, dtype=np.float32)
        tensor = triton_http.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        outputs = [triton_http.InferRequestedOutput(task_output(n, task), binary_data=True)
                   for task in tasks for n in (OUTPUT_PROBS, OUTPUT_CONFIDENCE, OUTPUT_LABEL)]
        result = self._client.infer(name, [tensor], outputs=outputs)
        return {task: InferenceOutputs(
            probs=result.as_numpy(task_output(OUTPUT_PROBS, task)),
            confidence=result.as_numpy(task_output(OUTPUT_CONFIDENCE, task)).reshape(-1),
            label=result.as_numpy(task_output(OUTPUT_LABEL, task)).reshape(-1),
        ) for task in tasks}

    def metrics_text(self) -> str:
        """The raw Prometheus text of the server's metrics endpoint."""
        if self._metrics_url is None:
            raise ValueError("TritonControl was created without a metrics_url")
        response = self._metrics_client.get(self._metrics_url)
        response.raise_for_status()
        return response.text

    def metrics(self) -> dict[str, ModelMetrics]:
        """Scrape and parse the metrics endpoint."""
        return parse_metrics(self.metrics_text())
