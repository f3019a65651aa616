"""The multimodal scorer a Triton model serves (`paretoserve.workers.llm.scorer` serving
`paretoserve.workers.llm.mm_routing.MultimodalDifficulty`): pure logic, no Triton, no trained models.

Covers: the weights file round-trips and tells the two families' scores apart by their features; the entry of a
multimodal score declares ``IMAGE`` (FP32 [64]) beside ``PROMPT`` and refuses a spec that does not match its
weights, while the text scorer's entry is unchanged; rows are scored from ``IMAGE`` and ``PROMPT`` with errors
naming ``IMAGE``; the one backend answers each request of a batch on its own (a bad ``IMAGE`` fails only its
request, as INVALID_ARG naming it); the served fit is the logistic fit on the light engine's greedy answers; the
cached fit is built once and read after.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from paretoserve.workers.llm import cache
from paretoserve.workers.llm.mm_engine import MultimodalEngine
from paretoserve.workers.llm.mm_routing import (
    FEATURES,
    QUESTION_FEATURES,
    MultimodalDifficulty,
    fit_mm_difficulty,
    fit_mm_scorer,
    greedy_answers,
)
from paretoserve.workers.llm.routing import DifficultyScore
from paretoserve.workers.llm.scorer import (
    MM_SCORER_MODEL,
    SCORER_BACKEND_FILE,
    SCORER_FILE,
    ScorerServingSpec,
    load_mm_scorer,
    load_served_score,
    render_scorer_config,
    score_image_rows,
    score_inputs,
    scorer_inputs,
    scorer_spec,
    write_scorer_model,
)
from paretoserve.workers.llm.scorer_backend import TritonPythonModel
from paretoserve.workers.triton.repository import to_pbtxt
from tests.unit.test_mm_engine_unit import QUESTIONS, TINY, random_weights

MM_WEIGHTS = (-1.0, -1.5, -2.0, 0.5, 0.7, 2.0, 1.5, -1.5)
TEXT_WEIGHTS = (-7.9, 2.4, 0.9, 1.3, 2.1, 0.8)


def pictures(count: int, seed: int = 0) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).random((count, 64), dtype=np.float32)


def weights_file(tmp_path: Path, score: MultimodalDifficulty | DifficultyScore, name: str = "fitted.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(score.to_json()))
    return path


def test_the_weights_file_round_trips_and_names_its_family(tmp_path: Path) -> None:
    both, question_only = MultimodalDifficulty(MM_WEIGHTS), MultimodalDifficulty(MM_WEIGHTS[:5], QUESTION_FEATURES)
    for score in (both, question_only):
        assert MultimodalDifficulty.from_json(json.loads(json.dumps(score.to_json()))) == score
        assert load_served_score(weights_file(tmp_path, score)) == score
        assert load_mm_scorer(weights_file(tmp_path, score)) == score
    text = weights_file(tmp_path, DifficultyScore(TEXT_WEIGHTS), "text.json")
    assert load_served_score(text) == DifficultyScore(TEXT_WEIGHTS)
    with pytest.raises(ValueError, match="a text scorer's weights, not a multimodal one's"):
        load_mm_scorer(text)
    for raw in ({"features": list(FEATURES), "weights": [1.0] * 5},
                {"features": list(FEATURES), "weights": [1.0] * 7 + [float("nan")]},
                {"features": ["bias", "minus"], "weights": [1.0, 2.0]}):
        with pytest.raises(ValueError, match="scorer"):
            MultimodalDifficulty.from_json(raw)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"features": list(FEATURES), "weights": [1.0]}))
    with pytest.raises(ValueError, match="not a scorer weights file: scorer weights must be 8 finite numbers"):
        load_served_score(broken)


def test_the_multimodal_entry_takes_the_image_and_the_text_entry_is_unchanged(tmp_path: Path) -> None:
    mm = weights_file(tmp_path, MultimodalDifficulty(MM_WEIGHTS))
    text = weights_file(tmp_path, DifficultyScore(TEXT_WEIGHTS), "text.json")
    spec = scorer_spec(mm, max_batch_size=16)
    assert (spec.name, spec.image_values, spec.max_batch_size) == (MM_SCORER_MODEL, 64, 16)
    assert scorer_spec(text) == ScorerServingSpec()  # arith-scorer, no IMAGE
    config = render_scorer_config(spec)
    assert [(t["name"], str(t["data_type"]), t["dims"]) for t in (*config["input"], *config["output"])] == [
        ("IMAGE", "TYPE_FP32", [64]), ("PROMPT", "TYPE_STRING", [1]), ("SCORE", "TYPE_FP32", [1])]
    assert config["max_batch_size"] == 16 and "dynamic_batching" in config
    assert [t["name"] for t in render_scorer_config(ScorerServingSpec())["input"]] == ["PROMPT"]
    entry = write_scorer_model(tmp_path / "repository", mm, spec)
    assert entry.name == MM_SCORER_MODEL and (entry / "config.pbtxt").read_text() == to_pbtxt(config)
    assert (entry / "1" / "model.py").read_text() == SCORER_BACKEND_FILE.read_text()  # one backend for both
    assert load_mm_scorer(entry / "1" / SCORER_FILE) == MultimodalDifficulty(MM_WEIGHTS)
    with pytest.raises(ValueError, match="reads an IMAGE of 64 values, but the spec of 'mm-scorer' has image_values 0"):
        write_scorer_model(tmp_path / "other", mm, ScorerServingSpec(name=MM_SCORER_MODEL))
    with pytest.raises(ValueError, match="reads no IMAGE, but the spec of 'arith-scorer' has image_values 64"):
        write_scorer_model(tmp_path / "other", text, ScorerServingSpec(image_values=64))
    with pytest.raises(ValueError, match="invalid limits"):
        ScorerServingSpec(image_values=-1)


def test_rows_are_scored_from_the_image_and_the_question_with_errors_naming_them() -> None:
    score = MultimodalDifficulty(MM_WEIGHTS)
    images, questions = pictures(3), np.array([b"+37=", b"-5=", b"*6="], dtype=np.object_)
    rows = score_image_rows(score, images, questions)
    assert rows.dtype == np.float32 and rows.shape == (3, 1)
    assert rows[:, 0].tolist() == pytest.approx([score(i, q.decode()) for i, q in zip(images, questions,
                                                                                          strict=True)], rel=1e-6)
    assert scorer_inputs(score) == ("IMAGE", "PROMPT") and scorer_inputs(DifficultyScore(TEXT_WEIGHTS)) == ("PROMPT",)
    assert score_inputs(score, {"IMAGE": images, "PROMPT": questions.reshape(3, 1)}).tolist() == rows.tolist()
    infinite = images.copy()
    infinite[1, 7] = np.inf
    for bad_images, bad_questions, words in ((images[:, :63], questions, "IMAGE must hold 64 values per row"),
                                             (images[:2], questions, "IMAGE must hold 64 values per row"),
                                             (infinite, questions, "IMAGE holds non-finite values"),
                                             (images, [b"+37=", b"hello", b"*6="], "not a question about the image")):
        with pytest.raises(ValueError, match=words):
            score_image_rows(score, bad_images, bad_questions)
    with pytest.raises(ValueError, match=r"IMAGE: missing \(the score reads IMAGE, PROMPT\)"):
        score_inputs(score, {"PROMPT": questions})
    text = DifficultyScore(TEXT_WEIGHTS)  # the text score reads PROMPT alone
    assert score_inputs(text, {"PROMPT": np.array([[b"1+1="]], dtype=np.object_)})[0, 0] == pytest.approx(
        text("1+1="), rel=1e-6)


class _Tensor:
    def __init__(self, name: str, array: npt.NDArray[Any]) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> npt.NDArray[Any]:
        return self.array


class _Error:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str) -> None:
        self.message, self.code = message, code


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: _Error | None = None) -> None:
        self.outputs, self.error = output_tensors, error


class _FakeUtils:
    """What the backend uses of ``triton_python_backend_utils``: a request is a dict of input arrays."""

    Tensor, TritonError, InferenceResponse = _Tensor, _Error, _Response

    @staticmethod
    def get_input_tensor_by_name(request: Mapping[str, npt.NDArray[Any]], name: str) -> _Tensor | None:
        return _Tensor(name, request[name]) if name in request else None


def backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, score: MultimodalDifficulty | DifficultyScore,
            ) -> TritonPythonModel:
    version = tmp_path / "entry" / "1"
    version.mkdir(parents=True)
    weights_file(version.parent, score, f"1/{SCORER_FILE}")
    real_import = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda name: _FakeUtils if name == "triton_python_backend_utils" else real_import(name))
    model = TritonPythonModel()
    model.initialize({"model_repository": str(version.parent), "model_version": "1", "model_name": "mm-scorer"})
    return model


def test_the_backend_fails_only_the_request_with_a_bad_image(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    score = MultimodalDifficulty(MM_WEIGHTS)
    model = backend(monkeypatch, tmp_path, score)
    images = pictures(4)
    infinite = images[2:3].copy()
    infinite[0, 0] = np.inf

    def request(image: npt.NDArray[np.float32], question: bytes) -> dict[str, npt.NDArray[Any]]:
        return {"IMAGE": image, "PROMPT": np.array([[question]], dtype=np.object_)}

    batch = [request(images[0:1], b"+37="), request(images[1:2], b"-5="), request(infinite, b"*6="),
             {"PROMPT": np.array([[b"+1="]], dtype=np.object_)}, request(images[3:4], b"+9=")]
    responses = model.execute(batch)
    assert [r.error is None for r in responses] == [True, True, False, False, True]
    assert [r.error.code for r in responses if r.error is not None] == ["INVALID_ARG"] * 2
    assert responses[2].error.message == "mm-scorer: ValueError: IMAGE holds non-finite values"
    assert responses[3].error.message.startswith("mm-scorer: ValueError: IMAGE: missing")
    for response, image, question in zip((responses[0], responses[1], responses[4]), (0, 1, 3), ("+37=", "-5=", "+9="),
                                         strict=True):
        (output,) = response.outputs
        assert output.name == "SCORE" and output.array.shape == (1, 1)
        assert float(output.array[0, 0]) == pytest.approx(score(images[image], question), rel=1e-6)


def test_the_backend_serves_the_text_score_as_before(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = DifficultyScore(TEXT_WEIGHTS)
    model = backend(monkeypatch, tmp_path, text)
    responses = model.execute([{"PROMPT": np.array([[b"483+219="], [b"1+1="]], dtype=np.object_)},
                               {"PROMPT": np.array([[b"hello"]], dtype=np.object_)}])
    assert responses[0].outputs[0].array[:, 0].tolist() == pytest.approx([text("483+219="), text("1+1=")], rel=1e-6)
    assert responses[1].error is not None and "not an arithmetic prompt" in responses[1].error.message


def test_the_served_fit_is_the_logistic_fit_on_the_light_engines_greedy_answers() -> None:
    engine = MultimodalEngine(TINY, random_weights(TINY))
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(48)]
    images = list(pictures(48, seed=1).reshape(48, 8, 8))
    given = greedy_answers(engine, images, questions, 4)
    assert given == [greedy_answers(engine, [image], [q], 4)[0] for image, q in zip(images, questions, strict=True)]
    truth = [given[i] if i % 3 else "x" for i in range(48)]  # the engine is "wrong" on every third request
    fitted = fit_mm_scorer(engine, images, questions, truth, 4)
    assert fitted == fit_mm_difficulty(images, questions, [i % 3 == 0 for i in range(48)])


def test_a_scorer_fit_is_cached_once_and_read_after(tmp_path: Path) -> None:
    calls: list[int] = []

    def fit() -> tuple[Mapping[str, Any], str]:
        calls.append(1)
        return MultimodalDifficulty(MM_WEIGHTS).to_json(), "48 problems"

    identity = {"code": 1, "light": "mm-low"}
    first = cache.CachedMMScorer(*cache._fit_once(tmp_path / "llm-mm-scorer", identity, fit))
    again = cache.CachedMMScorer(*cache._fit_once(tmp_path / "llm-mm-scorer", identity, fit))
    assert (first.trained, again.trained, len(calls)) == (True, False, 1)
    assert first.directory == again.directory and again.score() == MultimodalDifficulty(MM_WEIGHTS)
    assert again.metadata["fittedOn"] == "48 problems" and again.metadata["light"] == "mm-low"
    assert json.loads((again.directory / "manifest.json").read_text()) == {"key": again.key, **identity}
    other = cache._fit_once(tmp_path / "llm-mm-scorer", {**identity, "light": "other"}, fit)
    assert other[0] != first.directory and len(calls) == 2
