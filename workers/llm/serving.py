"""Serving a token-generating model behind Triton: iteration-level batching and the repository entry.

:class:`ContinuousBatcher` is the scheduler a decoupled Triton Python-backend instance runs
(:mod:`.backend_model`): one thread owns the :class:`~paretoserve.workers.llm.engine.NumpyLM` and the KV caches.
Each iteration it admits waiting requests while fewer than ``max_sequences`` sequences hold a cache (the KV-cache
capacity; the rest keep waiting), prefills each admitted prompt (its first token), then runs ONE batched decode
step over every running sequence; a sequence that emits ``EOS``, reaches its token limit or the model's
``max_len`` leaves the batch at once, freeing its cache for a waiting request. So new sequences join a running
batch between decode steps (continuous batching). Greedy decoding: each request's tokens equal
:meth:`NumpyLM.generate`'s for its prompt. Tokens are handed to callbacks, so the scheduler knows nothing of Triton.

The same scheduler serves the multimodal family (:class:`~paretoserve.workers.llm.mm_engine.MultimodalEngine`): a
request then carries its image, whose visual tokens the prefill places ahead of the prompt, and every KV count
(the prompt that must fit ``max_len``, the optional token budget ``max_kv_tokens``) includes them. With
``max_kv_tokens`` a request is admitted only while the running sequences' reservations, each its prompt positions
(visual tokens included) plus its token limit, capped at ``max_len``, fit the budget as well as ``max_sequences``:
what a paged KV cache of that many tokens could hold.

The served model's wire format (:func:`render_llm_config`, decoupled):

* input ``PROMPT``: BYTES ``[1]``, the prompt text as the task writes it (``483+219=``); the server adds ``BOS``;
* input ``MAX_TOKENS``: INT32 ``[1]``, optional, at most this many tokens (``EOS`` counted); default the model's;
* input ``IMAGE`` (multimodal models only, required there): FP32 ``[S*S]``, the image's pixels row-major in 0..1,
  and ``PROMPT`` is then the question about it (``+37=``);
* one response per generated token: ``TOKEN`` (BYTES, the token's text), ``TOKEN_ID`` (INT32) and ``BATCH``
  (INT32, how many sequences the decode step that produced the token ran over; 0 for the first token, which
  comes from the prompt's prefill);
* then a last response flagged final, without ``TOKEN``: ``GENERATED`` (INT32, tokens sent), ``TTFT_US`` (INT64,
  request arrival to first token, in the server), ``PREFILL_US`` (INT64, the prompt's prefill), ``QUEUE_US``
  (INT64, arrival to admission) and ``MAX_BATCH`` (INT32, the largest decode batch the sequence was part of).

Only stdlib and numpy here: the worker image has no torch.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from paretoserve.workers.llm.decoding import continues
from paretoserve.workers.llm.engine import Floats, KVCache, NumpyLM
from paretoserve.workers.llm.mm_engine import INPUT_IMAGE, MultimodalEngine
from paretoserve.workers.llm.tokenizer import EOS, VOCAB, encode_prompt
from paretoserve.workers.triton.repository import ProtoEnum, ProtoMap, to_pbtxt

LOG = logging.getLogger(__name__)

INPUT_PROMPT = "PROMPT"
INPUT_MAX_TOKENS = "MAX_TOKENS"
OUTPUT_TOKEN = "TOKEN"
OUTPUT_TOKEN_ID = "TOKEN_ID"
OUTPUT_BATCH = "BATCH"
OUTPUT_GENERATED = "GENERATED"
OUTPUT_TTFT_US = "TTFT_US"
OUTPUT_PREFILL_US = "PREFILL_US"
OUTPUT_QUEUE_US = "QUEUE_US"
OUTPUT_MAX_BATCH = "MAX_BATCH"
PARAM_MODEL = "model"
PARAM_WEIGHTS = "weights"
PARAM_MAX_SEQUENCES = "max_sequences"
PARAM_MAX_NEW_TOKENS = "max_new_tokens"
PARAM_STEP_DELAY_US = "step_delay_us"
PARAM_MAX_KV_TOKENS = "max_kv_tokens"
WEIGHTS_FILE = "weights.npz"
METADATA_FILE = "metadata.json"
BACKEND_MODEL_FILE = Path(__file__).with_name("backend_model.py")


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of one request."""

    token_id: int
    text: str
    index: int
    """0 for the first token of the sequence."""
    batch: int
    """Sequences in the decode step that produced it; 0 when it came from the prefill."""


@dataclass(frozen=True)
class SequenceSummary:
    """What a finished request measured (all times in microseconds, taken by the scheduler)."""

    generated: int
    ttft_us: int
    prefill_us: int
    queue_us: int
    max_batch: int
    error: str | None = None


@dataclass
class GenerationRequest:
    """A prompt's ids (``BOS`` first) with where its tokens and its end go. Callbacks run on the scheduler thread."""

    prompt_ids: list[int]
    max_tokens: int
    on_token: Callable[[TokenEvent], None]
    on_finish: Callable[[SequenceSummary], None]
    arrived: float = field(default_factory=time.perf_counter)
    image: Floats | None = None
    """A multimodal request's image ``[S, S]``: its visual tokens are prefilled ahead of ``prompt_ids``."""


@dataclass
class _Sequence:
    request: GenerationRequest
    cache: KVCache
    admitted: float
    prefill_us: int
    first_token_at: float = 0.0
    generated: int = 0
    last_token: int = 0
    max_batch: int = 0


@dataclass(frozen=True)
class StepRecord:
    """One scheduler iteration: prompts admitted (prefilled) and the decode batch size (0: no decode step)."""

    admitted: int
    decode_batch: int
    waiting: int
    decode_us: int


class ContinuousBatcher:
    """Iteration-level batching over one engine (see the module doc). ``step_delay_s`` pauses after every
    iteration (0 in service; a test paces the scheduler with it so that requests sent together overlap).
    ``max_kv_tokens``: the KV-cache budget in tokens, visual tokens included (None: ``max_sequences`` only)."""

    def __init__(self, engine: NumpyLM, *, max_sequences: int = 8, max_new_tokens: int | None = None,
                 step_delay_s: float = 0.0, history: int = 10_000, max_kv_tokens: int | None = None) -> None:
        if max_sequences < 1:
            raise ValueError(f"max_sequences must be >= 1, got {max_sequences}")
        if max_kv_tokens is not None and max_kv_tokens < 1:
            raise ValueError(f"max_kv_tokens must be >= 1, got {max_kv_tokens}")
        self.engine = engine
        self.max_sequences = max_sequences
        self.max_kv_tokens = max_kv_tokens
        self.max_new_tokens = max_new_tokens or engine.config.max_len
        self.step_delay_s = step_delay_s
        self.steps: deque[StepRecord] = deque(maxlen=history)
        self._waiting: deque[GenerationRequest] = deque()
        self._running: list[_Sequence] = []
        self._admitting: list[GenerationRequest] = []
        self._condition = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> ContinuousBatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="llm-scheduler", daemon=True)
            self._thread.start()
        return self

    def prompt_positions(self, request: GenerationRequest) -> int:
        """KV positions a request's prefill fills: its prompt's tokens and, with an image, the visual tokens."""
        visual = self.engine.visual_tokens if isinstance(self.engine, MultimodalEngine) else 0
        return len(request.prompt_ids) + visual

    def kv_reservation(self, request: GenerationRequest) -> int:
        """The KV tokens a request may come to hold: prompt positions plus its token limit, at most ``max_len``."""
        return min(self.engine.config.max_len, self.prompt_positions(request) + request.max_tokens)

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; raises ``ValueError`` for a prompt the model cannot take."""
        multimodal = isinstance(self.engine, MultimodalEngine)
        if multimodal and request.image is None:
            raise ValueError(f"model {self.engine.config.name} needs an {INPUT_IMAGE}")
        if not multimodal and request.image is not None:
            raise ValueError(f"model {self.engine.config.name} takes no {INPUT_IMAGE}")
        positions = self.prompt_positions(request)
        if not request.prompt_ids or positions >= self.engine.config.max_len:
            visual = f" ({positions - len(request.prompt_ids)} of them visual)" if multimodal else ""
            raise ValueError(f"a prompt of {positions} tokens{visual} leaves no room in max_len "
                             f"{self.engine.config.max_len}")
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        if self.max_kv_tokens is not None and self.kv_reservation(request) > self.max_kv_tokens:
            raise ValueError(f"a request needing {self.kv_reservation(request)} KV tokens exceeds the budget of "
                             f"{self.max_kv_tokens}")
        with self._condition:
            if self._stopping:
                raise RuntimeError("the scheduler is stopping")
            self._waiting.append(request)
            self._condition.notify()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread; requests still queued or running are finished with an error."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._condition:
            left = [*self._waiting, *self._admitting, *(sequence.request for sequence in self._running)]
            self._waiting.clear()
            self._admitting, self._running = [], []
        for request in left:
            _finish_safely(request, SequenceSummary(0, 0, 0, 0, 0, error="the model is shutting down"))

    def _loop(self) -> None:
        while True:
            with self._condition:
                while not self._stopping and not self._waiting and not self._running:
                    self._condition.wait()
                if self._stopping:
                    return
                admitted: list[GenerationRequest] = []
                while self._waiting and len(self._running) + len(admitted) < self.max_sequences and self._fits(
                        self._waiting[0], admitted):
                    admitted.append(self._waiting.popleft())
                waiting = len(self._waiting)
            self._admitting = admitted
            try:
                self._iterate(waiting)
            except Exception as error:  # an engine failure fails the requests it held, not the thread
                LOG.exception("generation step failed")
                failed = [*self._admitting, *(sequence.request for sequence in self._running)]
                self._admitting, self._running = [], []
                for request in failed:
                    _finish_safely(request, SequenceSummary(0, 0, 0, 0, 0, error=f"{type(error).__name__}: {error}"))
            if self.step_delay_s:
                time.sleep(self.step_delay_s)

    def _fits(self, request: GenerationRequest, admitted: list[GenerationRequest]) -> bool:
        """Whether ``request`` fits the KV budget beside the running sequences and those just admitted."""
        if self.max_kv_tokens is None:
            return True
        held = sum(self.kv_reservation(other) for other in
                   (*admitted, *(sequence.request for sequence in self._running)))
        return held + self.kv_reservation(request) <= self.max_kv_tokens

    def _prefill(self, request: GenerationRequest) -> tuple[Floats, KVCache]:
        if request.image is not None and isinstance(self.engine, MultimodalEngine):
            return self.engine.prefill_image(request.image, request.prompt_ids)
        return self.engine.prefill(request.prompt_ids)

    def _iterate(self, waiting: int) -> None:
        """One iteration: prefill the admitted prompts (each one's first token), then one batched decode step."""
        admitted = len(self._admitting)
        while self._admitting:
            request = self._admitting[0]
            started = time.perf_counter()
            logits, cache = self._prefill(request)
            prefilled = time.perf_counter()
            sequence = _Sequence(request, cache, admitted=started, prefill_us=_us(prefilled - started))
            self._admitting.pop(0)
            if self._accept(sequence, int(np.argmax(logits)), batch=0):
                self._running.append(sequence)
        decode_batch = len(self._running)
        decode_us = 0
        if self._running:
            started = time.perf_counter()
            logits_batch, _ = self.engine.decode_step([sequence.last_token for sequence in self._running],
                                                      [sequence.cache for sequence in self._running])
            decode_us = _us(time.perf_counter() - started)
            chosen = [int(token) for token in logits_batch.argmax(axis=-1)]
            self._running = [sequence for sequence, token in zip(self._running, chosen, strict=True)
                             if self._accept(sequence, token, batch=decode_batch)]
        self.steps.append(StepRecord(admitted, decode_batch, waiting, decode_us))

    def _accept(self, sequence: _Sequence, token: int, batch: int) -> bool:
        """Hand ``token`` to its request (``EOS`` ends it unsent); whether the sequence keeps running."""
        sequence.max_batch = max(sequence.max_batch, batch)
        if token != EOS:
            now = time.perf_counter()
            if sequence.generated == 0:
                sequence.first_token_at = now
            sequence.request.on_token(TokenEvent(token, VOCAB[token], sequence.generated, batch))
            sequence.generated += 1
            sequence.last_token = token
            if continues(sequence.generated, sequence.cache.length, max_new_tokens=sequence.request.max_tokens,
                         max_len=self.engine.config.max_len):
                return True
        request = sequence.request
        first = sequence.first_token_at or time.perf_counter()
        _finish_safely(request, SequenceSummary(
            generated=sequence.generated, ttft_us=_us(first - request.arrived), prefill_us=sequence.prefill_us,
            queue_us=_us(sequence.admitted - request.arrived), max_batch=sequence.max_batch))
        return False


def _us(seconds: float) -> int:
    return int(round(seconds * 1e6))


def _finish_safely(request: GenerationRequest, summary: SequenceSummary) -> None:
    try:
        request.on_finish(summary)
    except Exception:  # a client gone away must not stop the scheduler
        LOG.exception("finishing a request failed")


def prompt_request(prompt: str, max_tokens: int, on_token: Callable[[TokenEvent], None],
                   on_finish: Callable[[SequenceSummary], None], image: Floats | None = None) -> GenerationRequest:
    """A request for the task's prompt text (``BOS`` added); for a multimodal model, the question about ``image``."""
    return GenerationRequest(encode_prompt(prompt), max_tokens, on_token, on_finish, image=image)


# --- the repository entry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMServingSpec:
    """One generation model served by the decoupled Python backend. ``weights`` is its ``weights.npz`` as the
    server sees it (absolute, or relative to the version directory: ``weights.npz`` in an exported entry)."""

    name: str
    model: str
    weights: str
    max_sequences: int = 8
    max_new_tokens: int = 16
    step_delay_us: int = 0
    image_values: int = 0
    """A multimodal model's ``IMAGE`` length (pixels per image); 0: a text model, no ``IMAGE`` input."""
    max_kv_tokens: int = 0
    """The scheduler's KV budget in tokens, visual tokens included; 0: ``max_sequences`` only."""

    def __post_init__(self) -> None:
        if not self.name or not all(ch.isascii() and (ch.isalnum() or ch in "_.-") for ch in self.name):
            raise ValueError(f"name must match [A-Za-z0-9_.-]+, got {self.name!r}")
        if (self.max_sequences < 1 or self.max_new_tokens < 1 or self.step_delay_us < 0 or self.image_values < 0
                or self.max_kv_tokens < 0):
            raise ValueError(f"invalid limits in {self}")


def spec_from_cached_llm(model_dir: Path, *, name: str | None = None, **knobs: Any) -> LLMServingSpec:
    """A spec for a model cached by :func:`~paretoserve.workers.llm.cache.ensure_llms` (``<fp>/<model>/``) or by
    :func:`~paretoserve.workers.llm.multimodal.ensure_multimodal` (then with its ``IMAGE`` input)."""
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    knobs.setdefault("max_new_tokens", int(metadata["max_new_tokens"]))
    if metadata.get("family") == "multimodal":
        knobs.setdefault("image_values", int(metadata["config"]["image_size"]) ** 2)
    return LLMServingSpec(name=name or metadata["model"], model=metadata["model"],
                          weights=str((model_dir / WEIGHTS_FILE).resolve()), **knobs)


def _tensor(name: str, data_type: str, optional: bool = False, length: int = 1) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": name, "data_type": ProtoEnum(data_type), "dims": [length]}
    if optional:
        tensor["optional"] = True
    return tensor


def render_llm_config(spec: LLMServingSpec) -> dict[str, Any]:
    """The model's ``ModelConfig`` (protobuf JSON names; :func:`to_pbtxt` renders it): decoupled, one instance
    (its scheduler holds the KV caches), no Triton batching (the scheduler batches). A multimodal model
    (``image_values`` > 0) has the ``IMAGE`` input too, whose shape Triton checks before the backend sees it."""
    inputs = [_tensor(INPUT_PROMPT, "TYPE_STRING"), _tensor(INPUT_MAX_TOKENS, "TYPE_INT32", optional=True)]
    if spec.image_values:
        inputs.insert(0, _tensor(INPUT_IMAGE, "TYPE_FP32", length=spec.image_values))
    parameters = {
        PARAM_MODEL: {"string_value": spec.model},
        PARAM_WEIGHTS: {"string_value": spec.weights},
        PARAM_MAX_SEQUENCES: {"string_value": str(spec.max_sequences)},
        PARAM_MAX_NEW_TOKENS: {"string_value": str(spec.max_new_tokens)},
        PARAM_STEP_DELAY_US: {"string_value": str(spec.step_delay_us)},
    }
    if spec.max_kv_tokens:
        parameters[PARAM_MAX_KV_TOKENS] = {"string_value": str(spec.max_kv_tokens)}
    return {
        "name": spec.name,
        "backend": "python",
        "max_batch_size": 0,
        "model_transaction_policy": {"decoupled": True},
        "input": inputs,
        "output": [
            _tensor(OUTPUT_TOKEN, "TYPE_STRING"),
            _tensor(OUTPUT_TOKEN_ID, "TYPE_INT32"),
            _tensor(OUTPUT_BATCH, "TYPE_INT32"),
            _tensor(OUTPUT_GENERATED, "TYPE_INT32"),
            _tensor(OUTPUT_TTFT_US, "TYPE_INT64"),
            _tensor(OUTPUT_PREFILL_US, "TYPE_INT64"),
            _tensor(OUTPUT_QUEUE_US, "TYPE_INT64"),
            _tensor(OUTPUT_MAX_BATCH, "TYPE_INT32"),
        ],
        "instance_group": [{"count": 1, "kind": ProtoEnum("KIND_CPU")}],
        "parameters": ProtoMap(parameters),
    }


def write_llm_model(repository: Path, spec: LLMServingSpec) -> Path:
    """Write ``<repository>/<name>/config.pbtxt`` and ``<name>/1/model.py``; return the model dir."""
    model_dir = repository / spec.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(to_pbtxt(render_llm_config(spec)))
    shutil.copyfile(BACKEND_MODEL_FILE, model_dir / "1" / "model.py")
    return model_dir


def export_llm_model(repository: Path, spec: LLMServingSpec, model_dir: Path) -> Path:
    """A self-contained entry (what a worker image bakes in): weights and metadata copied into ``1/``."""
    entry = write_llm_model(repository, LLMServingSpec(**{**spec.__dict__, "weights": WEIGHTS_FILE}))
    for name in (WEIGHTS_FILE, METADATA_FILE):
        source = model_dir / name
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing: {model_dir} is not a complete cached model")
        shutil.copyfile(source, entry / "1" / name)
    return entry
