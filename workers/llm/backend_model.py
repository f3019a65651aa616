"""Triton Python-backend model of one token-generating model, decoupled (copied as ``<model>/1/model.py``).

``execute`` only parses each request and queues it on the instance's
:class:`~paretoserve.workers.llm.serving.ContinuousBatcher`; it returns ``None`` at once (decoupled mode), and the
scheduler thread streams the request's responses through its response sender: one per generated token, then a
final one with the request's timings, flagged ``TRITONSERVER_RESPONSE_COMPLETE_FINAL`` (wire format in
:mod:`paretoserve.workers.llm.serving`). The config's ``parameters`` say where ``weights.npz`` is (absolute, or
relative to the version directory), how many sequences may hold a KV cache at once (``max_sequences``), the
default token limit, an optional KV budget in tokens (``max_kv_tokens``) and an optional pause per iteration
(``step_delay_us``, for tests). The same file serves the multimodal family: when ``weights.npz`` holds a
multimodal model (:func:`~paretoserve.workers.llm.mm_engine.load_engine`), each request's ``IMAGE`` is read too
and checked (:func:`~paretoserve.workers.llm.mm_engine.image_pixels`), a bad one failing its request alone.

No torch (the worker image has none); ``triton_python_backend_utils`` exists only inside the stub, so it is
imported in :meth:`TritonPythonModel.initialize` and this module stays importable and type-checkable outside.
"""

from __future__ import annotations

import gc
import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from paretoserve.workers.llm.engine import Floats
from paretoserve.workers.llm.mm_engine import INPUT_IMAGE, MultimodalEngine, image_pixels, load_engine
from paretoserve.workers.llm.serving import (
    INPUT_MAX_TOKENS,
    INPUT_PROMPT,
    OUTPUT_BATCH,
    OUTPUT_GENERATED,
    OUTPUT_MAX_BATCH,
    OUTPUT_PREFILL_US,
    OUTPUT_QUEUE_US,
    OUTPUT_TOKEN,
    OUTPUT_TOKEN_ID,
    OUTPUT_TTFT_US,
    PARAM_MAX_KV_TOKENS,
    PARAM_MAX_NEW_TOKENS,
    PARAM_MAX_SEQUENCES,
    PARAM_MODEL,
    PARAM_STEP_DELAY_US,
    PARAM_WEIGHTS,
    ContinuousBatcher,
    SequenceSummary,
    TokenEvent,
    prompt_request,
)


def config_parameters(model_config: dict[str, Any]) -> dict[str, str]:
    """The ``parameters`` map of a Triton model config as plain strings."""
    raw = model_config.get("parameters", {})
    return {key: str(value.get("string_value", "")) for key, value in raw.items()}


def _scalar_bytes(array: Any) -> str:
    value = np.asarray(array).reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    """The interface the Triton Python backend calls: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        self._pb: Any = importlib.import_module("triton_python_backend_utils")
        # One BLAS thread per instance (instances are the parallelism): OpenBLAS's idle pool threads spin, and
        # with the machine's cores as its pool they cost Triton 4x the CPU per request (bench generation).
        self._blas = threadpool_limits(limits=1, user_api="blas")
        params = config_parameters(json.loads(args["model_config"]))
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        weights = Path(params[PARAM_WEIGHTS])
        engine = self._engine = load_engine(weights if weights.is_absolute() else version_dir / weights)
        self._model = params.get(PARAM_MODEL, engine.config.name)
        self._default_max_tokens = int(params.get(PARAM_MAX_NEW_TOKENS, str(engine.config.max_len)))
        self._batcher = ContinuousBatcher(
            engine,
            max_sequences=int(params.get(PARAM_MAX_SEQUENCES, "8")),
            max_new_tokens=self._default_max_tokens,
            step_delay_s=int(params.get(PARAM_STEP_DELAY_US, "0")) / 1e6,
            max_kv_tokens=int(params.get(PARAM_MAX_KV_TOKENS, "0")) or None,
        ).start()
        gc.collect()  # the stub's imports and weights, out of the cyclic collector's walks while it generates
        gc.freeze()  # (as the classifiers' stub does)

    def execute(self, requests: list[Any]) -> None:
        pb = self._pb
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt = _scalar_bytes(pb.get_input_tensor_by_name(request, INPUT_PROMPT).as_numpy())
                limit = pb.get_input_tensor_by_name(request, INPUT_MAX_TOKENS)
                max_tokens = int(limit.as_numpy().reshape(-1)[0]) if limit is not None else self._default_max_tokens
                self._batcher.submit(prompt_request(prompt, max_tokens, self._token_sender(sender),
                                                    self._finisher(sender), image=self._image(request)))
            except Exception as error:  # a bad request fails alone
                message = f"{self._model}: {type(error).__name__}: {error}"
                sender.send(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message)),
                            flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _image(self, request: Any) -> Floats | None:
        """A multimodal model's ``IMAGE`` of ``request``, checked (``ValueError`` naming it); None for text."""
        if not isinstance(self._engine, MultimodalEngine):
            return None
        tensor = self._pb.get_input_tensor_by_name(request, INPUT_IMAGE)
        if tensor is None:
            raise ValueError(f"{INPUT_IMAGE} is required")
        return image_pixels(tensor.as_numpy(), self._engine.mm_config.image_size)

    def _token_sender(self, sender: Any) -> Any:
        pb = self._pb

        def send(event: TokenEvent) -> None:
            sender.send(pb.InferenceResponse(output_tensors=[
                pb.Tensor(OUTPUT_TOKEN, np.array([event.text.encode()], dtype=np.object_)),
                pb.Tensor(OUTPUT_TOKEN_ID, np.array([event.token_id], dtype=np.int32)),
                pb.Tensor(OUTPUT_BATCH, np.array([event.batch], dtype=np.int32)),
            ]))

        return send

    def _finisher(self, sender: Any) -> Any:
        pb = self._pb

        def finish(summary: SequenceSummary) -> None:
            final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            if summary.error is not None:
                sender.send(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(summary.error)), flags=final)
                return
            sender.send(pb.InferenceResponse(output_tensors=[
                pb.Tensor(OUTPUT_GENERATED, np.array([summary.generated], dtype=np.int32)),
                pb.Tensor(OUTPUT_TTFT_US, np.array([summary.ttft_us], dtype=np.int64)),
                pb.Tensor(OUTPUT_PREFILL_US, np.array([summary.prefill_us], dtype=np.int64)),
                pb.Tensor(OUTPUT_QUEUE_US, np.array([summary.queue_us], dtype=np.int64)),
                pb.Tensor(OUTPUT_MAX_BATCH, np.array([summary.max_batch], dtype=np.int32)),
            ]), flags=final)

        return finish

    def finalize(self) -> None:
        """Stop the scheduler; requests still in it end with an error response."""
        self._batcher.stop()
