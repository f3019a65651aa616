"""The query-aware router's difficulty score and f(t) rows (`paretoserve.workers.llm.routing`), and the scorer a
Triton model serves from it (`paretoserve.workers.llm.scorer`): pure logic, no Triton."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from paretoserve.workers.llm.mm_routing import QUESTION_FEATURES, question_features
from paretoserve.workers.llm.routing import FEATURES, DifficultyScore, fit_difficulty, prompt_features, split_rows
from paretoserve.workers.llm.scorer import (
    SCORER_BACKEND_FILE,
    SCORER_FILE,
    SCORER_MODEL,
    WARMUP_DIR,
    ScorerServingSpec,
    load_scorer,
    render_scorer_config,
    score_rows,
    warmup_prompt_bytes,
    write_scorer_model,
)
from paretoserve.workers.llm.tasks import Problem
from paretoserve.workers.triton.repository import to_pbtxt


def test_features_read_the_prompt_text_only() -> None:
    assert list(prompt_features("483+219=")) == [1.0, 3.0, 3.0, 0.0, 0.0, 2.0]  # 3+9 and 8+1+1 carry
    assert list(prompt_features("7-25=")) == [1.0, 1.0, 2.0, 1.0, 0.0, 1.0]  # 25 - 7 borrows once
    assert list(prompt_features("46*8=")) == [1.0, 2.0, 1.0, 0.0, 1.0, 2.0]  # 6x8 and 4x8 carry
    with pytest.raises(ValueError, match="not an arithmetic prompt"):
        prompt_features("483=")


def test_the_score_ranks_the_prompts_the_small_model_fails_above_the_others() -> None:
    rng = np.random.default_rng(0)
    problems = [Problem(int(a), "+", int(b)) for a, b in rng.integers(0, 1000, size=(400, 2))]
    wrong = [p.carries >= 2 for p in problems]  # a small model that fails exactly on two or more carries
    score = fit_difficulty([p.prompt for p in problems], wrong)
    hard = [score(p.prompt) for p, w in zip(problems, wrong, strict=True) if w]
    easy = [score(p.prompt) for p, w in zip(problems, wrong, strict=True) if not w]
    assert min(hard) > max(easy)


def test_rows_send_the_prompts_at_or_above_the_threshold_to_the_large_model() -> None:
    rows = split_rows([0.1, 0.5, 0.9, 0.95], [True, True, False, False], [True, False, True, True],
                      [0.0, 0.5, 0.92, 1.01])
    assert [(r.heavy_fraction, r.exact_match) for r in rows] == [(1.0, 0.75), (0.75, 0.75), (0.25, 0.75),
                                                                 (0.0, 0.5)]


# --- the served scorer (`paretoserve.workers.llm.scorer`): weights file, rows, repository entry ---------------

WEIGHTS = (-7.9, 2.4, 0.9, 1.3, 2.1, 0.8)


def test_the_weights_file_round_trips_and_refuses_what_does_not_fit(tmp_path: Path) -> None:
    score = DifficultyScore(WEIGHTS)
    assert DifficultyScore.from_json(json.loads(json.dumps(score.to_json()))) == score
    for raw in ({"features": ["bias"], "weights": [1.0]}, {"features": list(FEATURES), "weights": [1.0] * 5},
                {"features": list(FEATURES), "weights": [1.0, "x", 1, 1, 1, 1]},
                {"features": list(FEATURES), "weights": [float("nan")] * 6}):
        with pytest.raises(ValueError, match="scorer"):
            DifficultyScore.from_json(raw)
    broken = tmp_path / "scorer.json"
    broken.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a scorer weights file"):
        load_scorer(broken)


def test_score_rows_answer_one_fp32_score_per_row_and_refuse_a_foreign_prompt() -> None:
    score = DifficultyScore(WEIGHTS)
    rows = score_rows(score, np.array([b"483+219=", b"1+1="], dtype=np.object_))
    assert rows.dtype == np.float32 and rows.shape == (2, 1)
    assert rows[:, 0].tolist() == pytest.approx([score("483+219="), score("1+1=")], rel=1e-6)
    assert rows[0, 0] > rows[1, 0]  # two carries and three digits: harder than 1+1
    for bad in ([b"hello"], [b"\xff+1="], [b"5--3="]):
        with pytest.raises(ValueError):
            score_rows(score, bad)


def test_the_scorer_entry_is_a_batching_python_model_with_its_weights_beside_it(tmp_path: Path) -> None:
    weights = tmp_path / "fitted.json"
    weights.write_text(json.dumps(DifficultyScore(WEIGHTS).to_json()))
    entry = write_scorer_model(tmp_path / "repository", weights, ScorerServingSpec(max_batch_size=16))
    assert entry.name == SCORER_MODEL
    config = render_scorer_config(ScorerServingSpec(max_batch_size=16))
    assert config["max_batch_size"] == 16 and "dynamic_batching" in config and config["backend"] == "python"
    assert [(t["name"], t["data_type"], t["dims"]) for t in (*config["input"], *config["output"])] == [
        ("PROMPT", "TYPE_STRING", [1]), ("SCORE", "TYPE_FP32", [1])]
    assert (entry / "config.pbtxt").read_text() == to_pbtxt(config)
    assert load_scorer(entry / "1" / SCORER_FILE) == DifficultyScore(WEIGHTS)
    assert (entry / "1" / "model.py").read_text() == SCORER_BACKEND_FILE.read_text()
    weights.write_text("{}")
    with pytest.raises(ValueError, match="not a scorer weights file"):
        write_scorer_model(tmp_path / "other", weights)
    with pytest.raises(ValueError, match="name"):
        ScorerServingSpec(name="../x")


@pytest.mark.parametrize(("image_values", "inputs"), [(0, ["PROMPT"]), (64, ["IMAGE", "PROMPT"])])
def test_every_scorer_instance_is_warmed_with_a_row_its_score_reads(tmp_path: Path, image_values: int,
                                                                    inputs: list[str]) -> None:
    """Triton runs the warm-up on each new instance before it counts as ready; its ``PROMPT`` comes from a file of
    raw string data (a 4-byte length, then the bytes) that must hold a prompt the score can read, not the empty
    string ``zero_data`` would give."""
    weights = tmp_path / "fitted.json"
    weights.write_text(json.dumps(DifficultyScore(WEIGHTS).to_json()))
    spec = ScorerServingSpec(max_batch_size=16, image_values=image_values)
    config = model_config_pb2.ModelConfig()
    text_format.Parse(to_pbtxt(render_scorer_config(spec)), config)  # Triton's own schema

    assert [(w.name, w.batch_size) for w in config.model_warmup] == [("prompt_batch_1", 1), ("prompt_batch_16", 16)]
    for sample in config.model_warmup:
        assert sorted(sample.inputs) == inputs
        assert sample.inputs["PROMPT"].input_data_file == "PROMPT"
        assert model_config_pb2.DataType.Name(sample.inputs["PROMPT"].data_type) == "TYPE_STRING"
        if image_values:
            assert sample.inputs["IMAGE"].zero_data and list(sample.inputs["IMAGE"].dims) == [64]
    raw = warmup_prompt_bytes(spec)
    assert int.from_bytes(raw[:4], "little") == len(raw) - 4
    if image_values:  # a question about the image the multimodal score reads
        assert question_features(raw[4:].decode()).shape == (len(QUESTION_FEATURES),)
        return
    assert score_rows(DifficultyScore(WEIGHTS), [raw[4:]]).shape == (1, 1)  # a prompt the text score reads
    assert (write_scorer_model(tmp_path / "repository", weights, spec) / WARMUP_DIR / "PROMPT").read_bytes() == raw
