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
numpy only: the worker image has no torch.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from paretoserve.workers.llm.routing import DifficultyScore
from paretoserve.workers.llm.serving import INPUT_PROMPT
from paretoserve.workers.triton.repository import ProtoEnum, to_pbtxt

SCORER_MODEL = "arith-scorer"
"""The arithmetic family's scorer, as a manifest's ``scorerModel`` names it."""
OUTPUT_SCORE = "SCORE"
SCORER_FILE = "scorer.json"
"""The weights file, in the model's version directory (and in the cache, :func:`~.cache.ensure_scorer`)."""
SCORER_BACKEND_FILE = Path(__file__).with_name("scorer_backend.py")


@dataclass(frozen=True)
class ScorerServingSpec:
    """One scorer entry: its Triton name and how Triton batches its requests."""

    name: str = SCORER_MODEL
    max_batch_size: int = 64
    max_queue_delay_us: int = 100
    """How long Triton may hold a request to batch it with others (a score costs microseconds)."""
    instances: int = 1

    def __post_init__(self) -> None:
        if not self.name or not all(ch.isascii() and (ch.isalnum() or ch in "_.-") for ch in self.name):
            raise ValueError(f"name must match [A-Za-z0-9_.-]+, got {self.name!r}")
        if self.max_batch_size < 1 or self.max_queue_delay_us < 0 or self.instances < 1:
            raise ValueError(f"invalid limits in {self}")


def render_scorer_config(spec: ScorerServingSpec) -> dict[str, Any]:
    """The scorer's ``ModelConfig`` (protobuf JSON names; :func:`to_pbtxt` renders it)."""
    return {
        "name": spec.name,
        "backend": "python",
        "max_batch_size": spec.max_batch_size,
        "input": [{"name": INPUT_PROMPT, "data_type": ProtoEnum("TYPE_STRING"), "dims": [1]}],
        "output": [{"name": OUTPUT_SCORE, "data_type": ProtoEnum("TYPE_FP32"), "dims": [1]}],
        "dynamic_batching": {"max_queue_delay_microseconds": spec.max_queue_delay_us},
        "instance_group": [{"count": spec.instances, "kind": ProtoEnum("KIND_CPU")}],
    }


def write_scorer_model(repository: Path, weights_file: Path, spec: ScorerServingSpec = ScorerServingSpec()) -> Path:
    """Write ``<repository>/<name>/config.pbtxt``, ``1/model.py`` and ``1/scorer.json`` (copied from
    ``weights_file``, checked first); return the model directory."""
    load_scorer(weights_file)  # a broken file fails here, not when Triton loads the model
    model_dir = repository / spec.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(to_pbtxt(render_scorer_config(spec)))
    shutil.copyfile(SCORER_BACKEND_FILE, model_dir / "1" / "model.py")
    shutil.copyfile(weights_file, model_dir / "1" / SCORER_FILE)
    return model_dir


def load_scorer(weights_file: Path) -> DifficultyScore:
    """The score a weights file holds (``ValueError`` naming the file when it is not one)."""
    try:
        return DifficultyScore.from_json(json.loads(weights_file.read_text()))
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{weights_file}: not a scorer weights file: {error}") from None


def score_rows(score: DifficultyScore, prompts: Iterable[object]) -> npt.NDArray[np.float32]:
    """``SCORE`` for one request's rows of ``PROMPT`` (bytes as Triton gives them, or text): ``[rows, 1]`` FP32.
    Raises ``ValueError`` (a ``UnicodeDecodeError`` too) for a row that is no prompt the score can read."""
    values = [score(value.decode() if isinstance(value, bytes) else str(value)) for value in prompts]
    return np.asarray(values, dtype=np.float32).reshape(-1, 1)
