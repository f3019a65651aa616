"""The prompt scorer behind a query-aware router: Triton serves P(the light model fails) from a prompt's text.

A ``router: prompt`` cascade on a generation stage decides per request, before either model runs, whether the
prompt goes to the heavy model: the router sidecar asks a *prompt scorer* (the Triton model the cascade's
``scorerModel`` names) for the prompt's score and sends the prompt to the heavy model when the score is at least
the plan's threshold. Any Triton model with this wire format can be the scorer (a user's own prompt classifier,
RouteLLM-style); this module serves the arithmetic family's, ``arith-scorer``: the
:class:`~paretoserve.workers.llm.routing.DifficultyScore` that
:func:`~paretoserve.workers.llm.cache.ensure_scorer` fitted, read from a weights file in the model's version
directory (``1/scorer.json``), so the entry is self-contained like a baked worker image's.

Wire format (:func:`render_scorer_config`): input ``PROMPT`` BYTES ``[1]`` per row, output ``SCORE`` FP32 ``[1]``
per row; ``max_batch_size`` > 0 and Triton's dynamic batching gathers concurrent requests into one ``execute``.
A prompt the score cannot read fails its own request, never the others of its batch (:mod:`.scorer_backend`).

The multimodal family's scorer, ``mm-scorer``, is the same model serving another score: the
:class:`~paretoserve.workers.llm.mm_routing.MultimodalDifficulty` that
:func:`~paretoserve.workers.llm.cache.ensure_mm_scorer` fitted, which reads the image as well as the question. Its
entry has one more input, ``IMAGE`` FP32 ``[64]`` per row (the pixels the generation models take, row-major in
0..1; :attr:`ScorerServingSpec.image_values`); a bad image (non-finite pixels) fails its own request with an
error naming ``IMAGE``. Which score a weights file holds its ``features`` say (:func:`load_served_score`), and
:func:`score_inputs` reads whichever inputs that score needs, so one backend serves both. numpy only: the worker
image has no torch.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from paretoserve.workers.llm.mm_engine import IMAGE_SIZE, INPUT_IMAGE
from paretoserve.workers.llm.mm_routing import FEATURES as MM_FEATURES
from paretoserve.workers.llm.mm_routing import QUESTION_FEATURES, MultimodalDifficulty
from paretoserve.workers.llm.routing import DifficultyScore
from paretoserve.workers.llm.serving import INPUT_PROMPT
from paretoserve.workers.triton.repository import ProtoEnum, model_warmup, to_pbtxt

SCORER_MODEL = "arith-scorer"
"""The arithmetic family's scorer, as a manifest's ``scorerModel`` names it."""
OUTPUT_SCORE = "SCORE"
SCORER_FILE = "scorer.json"
"""The weights file, in the model's version directory (and in the cache, :func:`~.cache.ensure_scorer`)."""
SCORER_BACKEND_FILE = Path(__file__).with_name("scorer_backend.py")
MM_SCORER_MODEL = "mm-scorer"
"""The multimodal family's scorer (``IMAGE`` and ``PROMPT`` in), as ``mm-llm.yaml``'s ``scorerModel`` names it."""
ServedScore = DifficultyScore | MultimodalDifficulty
"""A score a scorer model serves: the text family's (``PROMPT``) or the multimodal family's (``IMAGE`` too)."""


@dataclass(frozen=True)
class ScorerServingSpec:
    """One scorer entry: its Triton name and how Triton batches its requests."""

    name: str = SCORER_MODEL
    max_batch_size: int = 64
    max_queue_delay_us: int = 100
    """How long Triton may hold a request to batch it with others (a score costs microseconds)."""
    instances: int = 1
    image_values: int = 0
    """0: a text scorer (input ``PROMPT`` only); else a multimodal one whose rows carry ``IMAGE`` FP32
    ``[image_values]`` too (:func:`scorer_spec` sets it from the weights)."""

    def __post_init__(self) -> None:
        if not self.name or not all(ch.isascii() and (ch.isalnum() or ch in "_.-") for ch in self.name):
            raise ValueError(f"name must match [A-Za-z0-9_.-]+, got {self.name!r}")
        if self.max_batch_size < 1 or self.max_queue_delay_us < 0 or self.instances < 1 or self.image_values < 0:
            raise ValueError(f"invalid limits in {self}")


WARMUP_PROMPTS = {False: "483+219=", True: "+37="}
"""The ``PROMPT`` Triton's warm-up sends a new scorer instance: an arithmetic prompt for the text scorer, a question
about the image (operator then operand) for the multimodal one, each a row its score reads: Triton fails the
model's load when a warm-up request fails (Triton 2.51), and the empty string ``zero_data`` gives a string input is
no prompt."""
WARMUP_DIR = "warmup"
"""Where Triton looks for a warm-up sample's ``input_data_file``, beside ``config.pbtxt``."""


def scorer_warmup(spec: ScorerServingSpec) -> list[dict[str, Any]]:
    """Triton's ``model_warmup`` for a scorer: one row at batch 1 and at its largest batch (Triton repeats the row),
    run on each instance before it counts as ready, as the classifiers' (`repository.model_warmup`). Its
    ``PROMPT`` is read from ``warmup/PROMPT`` (:func:`warmup_prompt_bytes`), its ``IMAGE`` is zeros."""
    inputs: dict[str, Any] = {INPUT_PROMPT: {"data_type": ProtoEnum("TYPE_STRING"), "dims": [1],
                                             "input_data_file": INPUT_PROMPT}}
    if spec.image_values:
        inputs = {INPUT_IMAGE: {"data_type": ProtoEnum("TYPE_FP32"), "dims": [spec.image_values], "zero_data": True},
                  **inputs}
    return model_warmup("prompt", spec.max_batch_size, inputs)


def warmup_prompt_bytes(spec: ScorerServingSpec) -> bytes:
    """The ``warmup/PROMPT`` file: one ``TYPE_STRING`` element as Triton reads raw string data (a 4-byte
    little-endian length, then the bytes)."""
    prompt = WARMUP_PROMPTS[bool(spec.image_values)].encode()
    return struct.pack("<I", len(prompt)) + prompt


def render_scorer_config(spec: ScorerServingSpec) -> dict[str, Any]:
    """The scorer's ``ModelConfig`` (protobuf JSON names; :func:`to_pbtxt` renders it)."""
    inputs = [{"name": INPUT_PROMPT, "data_type": ProtoEnum("TYPE_STRING"), "dims": [1]}]
    if spec.image_values:
        inputs.insert(0, {"name": INPUT_IMAGE, "data_type": ProtoEnum("TYPE_FP32"), "dims": [spec.image_values]})
    return {
        "name": spec.name,
        "backend": "python",
        "max_batch_size": spec.max_batch_size,
        "input": inputs,
        "output": [{"name": OUTPUT_SCORE, "data_type": ProtoEnum("TYPE_FP32"), "dims": [1]}],
        "dynamic_batching": {"max_queue_delay_microseconds": spec.max_queue_delay_us},
        "instance_group": [{"count": spec.instances, "kind": ProtoEnum("KIND_CPU")}],
        "model_warmup": scorer_warmup(spec),
    }


def scorer_spec(weights_file: Path, **knobs: Any) -> ScorerServingSpec:
    """The serving spec for the score ``weights_file`` holds: a multimodal one is named :data:`MM_SCORER_MODEL`
    and takes its ``IMAGE`` (unless ``knobs`` say otherwise), a text one :data:`SCORER_MODEL`."""
    if isinstance(load_served_score(weights_file), MultimodalDifficulty):
        knobs.setdefault("name", MM_SCORER_MODEL)
        knobs.setdefault("image_values", IMAGE_SIZE * IMAGE_SIZE)
    return ScorerServingSpec(**knobs)


def write_scorer_model(repository: Path, weights_file: Path, spec: ScorerServingSpec = ScorerServingSpec()) -> Path:
    """Write ``<repository>/<name>/config.pbtxt``, ``warmup/PROMPT``, ``1/model.py`` and ``1/scorer.json`` (copied from
    ``weights_file``, checked first, and against ``spec``: a multimodal score needs its ``IMAGE``, a text one
    takes none); return the model directory."""
    score = load_served_score(weights_file)  # a broken file fails here, not when Triton loads the model
    needs = IMAGE_SIZE * IMAGE_SIZE if isinstance(score, MultimodalDifficulty) else 0
    if spec.image_values != needs:
        what = f"an {INPUT_IMAGE} of {needs} values" if needs else f"no {INPUT_IMAGE}"
        raise ValueError(f"{weights_file}: its score reads {what}, but the spec of {spec.name!r} has image_values "
                         f"{spec.image_values} (scorer_spec() sets it from the weights)")
    model_dir = repository / spec.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(to_pbtxt(render_scorer_config(spec)))
    (model_dir / WARMUP_DIR).mkdir(exist_ok=True)
    (model_dir / WARMUP_DIR / INPUT_PROMPT).write_bytes(warmup_prompt_bytes(spec))
    shutil.copyfile(SCORER_BACKEND_FILE, model_dir / "1" / "model.py")
    shutil.copyfile(weights_file, model_dir / "1" / SCORER_FILE)
    return model_dir


def load_scorer(weights_file: Path) -> DifficultyScore:
    """The score a weights file holds (``ValueError`` naming the file when it is not one)."""
    try:
        return DifficultyScore.from_json(json.loads(weights_file.read_text()))
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{weights_file}: not a scorer weights file: {error}") from None


def load_served_score(weights_file: Path) -> ServedScore:
    """The score a weights file holds, text or multimodal by its ``features`` (``ValueError`` naming the file when
    it is neither)."""
    try:
        raw = json.loads(weights_file.read_text())
        if raw.get("features") in (list(MM_FEATURES), list(QUESTION_FEATURES)):
            return MultimodalDifficulty.from_json(raw)
        return DifficultyScore.from_json(raw)
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{weights_file}: not a scorer weights file: {error}") from None


def load_mm_scorer(weights_file: Path) -> MultimodalDifficulty:
    """The multimodal score a weights file holds (``ValueError`` naming the file when it holds another)."""
    score = load_served_score(weights_file)
    if not isinstance(score, MultimodalDifficulty):
        raise ValueError(f"{weights_file}: a text scorer's weights, not a multimodal one's")
    return score


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def score_rows(score: DifficultyScore, prompts: Iterable[object]) -> npt.NDArray[np.float32]:
    """``SCORE`` for one request's rows of ``PROMPT`` (bytes as Triton gives them, or text): ``[rows, 1]`` FP32.
    Raises ``ValueError`` (a ``UnicodeDecodeError`` too) for a row that is no prompt the score can read."""
    values = [score(_text(value)) for value in prompts]
    return np.asarray(values, dtype=np.float32).reshape(-1, 1)


def score_image_rows(score: MultimodalDifficulty, images: npt.ArrayLike,
                     questions: Iterable[object]) -> npt.NDArray[np.float32]:
    """``SCORE`` for one request's rows of ``IMAGE`` (``[rows, 64]``) and ``PROMPT`` (the questions): ``[rows, 1]``
    FP32. ``ValueError`` naming ``IMAGE`` for an image that is not one (a wrong count, non-finite pixels), or
    naming the question that is not one."""
    texts = [_text(value) for value in questions]
    pixels = np.asarray(images, dtype=np.float32)
    if pixels.ndim == 0 or pixels.size != len(texts) * IMAGE_SIZE * IMAGE_SIZE:
        raise ValueError(f"{INPUT_IMAGE} must hold {IMAGE_SIZE * IMAGE_SIZE} values per row ({len(texts)} rows), got "
                         f"shape {list(pixels.shape)}")
    rows = pixels.reshape(len(texts), -1)
    values = [score(image, text) for image, text in zip(rows, texts, strict=True)]
    return np.asarray(values, dtype=np.float32).reshape(-1, 1)


def scorer_inputs(score: ServedScore) -> tuple[str, ...]:
    """The inputs a request to the scorer serving ``score`` carries."""
    return (INPUT_IMAGE, INPUT_PROMPT) if isinstance(score, MultimodalDifficulty) else (INPUT_PROMPT,)


def score_inputs(score: ServedScore, inputs: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
    """``SCORE`` (``[rows, 1]`` FP32) for one request's input arrays by name (what the backend got of
    :func:`scorer_inputs`); ``ValueError`` naming an input that is missing or cannot be read."""
    for name in scorer_inputs(score):
        if name not in inputs:
            raise ValueError(f"{name}: missing (the score reads {', '.join(scorer_inputs(score))})")
    prompts = inputs[INPUT_PROMPT].reshape(-1)
    if isinstance(score, MultimodalDifficulty):
        return score_image_rows(score, inputs[INPUT_IMAGE], prompts)
    return score_rows(score, prompts)
