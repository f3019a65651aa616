"""The aggregator agents of the example workflow (issue 16), and `paretoserve agents build`.

Covers: training is cached by its fingerprint (a second build trains nothing) and deterministic (the same recipe
trained again gives the same weights); every aggregator beats chance by far and refine-large is at least as
accurate as refine-small on the test split (held-out numbers as recorded, and measured again per parent here);
each exported ONNX graph answers [N, 74] / [N, 50] rows as its torch module does; the whole workflow offline is
at least as accurate on its largest variants as on its cheapest; the command writes a repository and a
pipeline.yaml the planner's parser accepts, and refuses a bad --out or --cache with one line and exit 2.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from paretoserve.planner.spec import load_pipeline_text
from paretoserve.shell.main import main
from paretoserve.workers.agents import (
    AGGREGATORS,
    RECIPES,
    WORKFLOW,
    AgentModels,
    cheapest,
    ensure_agents,
    fingerprint,
    largest,
    workflow_accuracy,
)
from paretoserve.workers.agents import models as agent_models
from paretoserve.workers.agents.models import AgentMlp
from paretoserve.workers.agents.workflow import CLASSIFIERS
from paretoserve.workers.triton.repository import ONNX_FILE, spec_from_cached_variant
from paretoserve.workers.triton.variant_engine import OnnxVariant

pytestmark = pytest.mark.slow

FEATURES = {"refine-small": 74, "refine-large": 74, "judge-small": 50, "judge-large": 50}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agents-cache")


@pytest.fixture(scope="module")
def models(cache: Path) -> AgentModels:
    """The four aggregators, trained once for the module (the catalog comes from the default cache)."""
    return ensure_agents(cache)


def test_a_second_build_reads_the_cache_by_its_fingerprint(models: AgentModels, cache: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert models.trained and models.directory == cache / models.fingerprint
    assert models.fingerprint == fingerprint(models.catalog)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("retrained although the fingerprint is cached")

    monkeypatch.setattr(agent_models, "_train_one", refuse)
    again = ensure_agents(cache)
    assert not again.trained and again.fingerprint == models.fingerprint and again.metadata == models.metadata
    changed = (replace(RECIPES[0], hidden=RECIPES[0].hidden + 1), *RECIPES[1:])
    assert fingerprint(models.catalog, changed) != models.fingerprint


def test_training_again_gives_the_same_weights(models: AgentModels, tmp_path: Path) -> None:
    alone = ensure_agents(tmp_path, catalog=models.catalog, recipes=RECIPES[:1])  # another fingerprint: trains
    assert alone.trained and alone.fingerprint != models.fingerprint
    name = RECIPES[0].name
    first = torch.load(models.model_dir(name) / "weights.pt", weights_only=True)
    second = torch.load(alone.model_dir(name) / "weights.pt", weights_only=True)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert alone.heldout_accuracy(name) == models.heldout_accuracy(name)


def _refine_accuracy_per_parent(models: AgentModels, model: str) -> list[float]:
    split = models.split()
    engines = models.engines()
    refine = engines[model]
    return [float((refine(np.concatenate([split.x_test.reshape(len(split.x_test), -1),
                                          engines[parent](split.x_test)], axis=1)).argmax(axis=1)
                   == split.y_test).mean()) for parent in CLASSIFIERS]


def test_the_aggregators_beat_chance_and_the_large_refine_is_at_least_as_accurate(models: AgentModels) -> None:
    chance = 1 / 10
    accuracy = {model: models.heldout_accuracy(model) for model in AGGREGATORS}
    assert all(value > 5 * chance for value in accuracy.values()), accuracy
    assert accuracy["refine-large"] >= accuracy["refine-small"], accuracy
    small, large = (_refine_accuracy_per_parent(models, m) for m in ("refine-small", "refine-large"))
    assert min(small + large) > 5 * chance
    assert np.mean(large) >= np.mean(small), (small, large)
    assert all(models.metadata[m]["heldout_size"] == RECIPES[0].draws * len(models.split().y_test) for m in AGGREGATORS)


@pytest.mark.parametrize("model", AGGREGATORS)
def test_each_onnx_graph_answers_its_rows_as_its_torch_module(models: AgentModels, model: str) -> None:
    features = FEATURES[model]
    folder = models.model_dir(model)
    spec = spec_from_cached_variant(folder)
    assert spec.input_shape == (features,) and spec.num_classes == 10 and spec.name == model
    torch_model = AgentMlp(features, next(r.hidden for r in RECIPES if r.name == model))
    torch_model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    graph = OnnxVariant(folder / ONNX_FILE)
    for batch in (1, 37):
        rows = np.random.default_rng(batch).random((batch, features), dtype=np.float32)
        prediction = graph.predict(rows)
        assert prediction.probs.shape == (batch, 10)
        np.testing.assert_allclose(prediction.probs.sum(axis=1), 1.0, rtol=1e-5)
        with torch.inference_mode():
            expected = torch.softmax(torch_model(torch.from_numpy(rows)), dim=1).numpy()
        np.testing.assert_allclose(prediction.probs, expected, atol=1e-5)


def test_the_workflow_is_at_least_as_accurate_on_its_largest_variants(models: AgentModels) -> None:
    low, high = workflow_accuracy(cheapest(), models), workflow_accuracy(largest(), models)
    assert 0.5 < low <= high <= 1.0
    with pytest.raises(ValueError, match="judge"):
        workflow_accuracy({**largest(), "judge": "cnn_large"}, models)
    with pytest.raises(ValueError, match="missing nodes"):
        workflow_accuracy({"triage": "tiny_linear"}, models)


def test_the_command_writes_the_repository_and_a_pipeline_the_planner_parses(
        models: AgentModels, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["agents", "build", "--out", str(out), "--cache", str(cache), "--quiet"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert captured.err == "" and summary["fingerprint"] == models.fingerprint and summary["trained"] is False
    assert sorted(p.name for p in (out / "repository").iterdir()) == sorted(AGGREGATORS)
    for model in AGGREGATORS:
        entry = out / "repository" / model
        assert f"dims: [ {FEATURES[model]} ]" in (entry / "config.pbtxt").read_text()
        assert spec_from_cached_variant(entry / "1").input_shape == (FEATURES[model],)
    pipeline = load_pipeline_text((out / "pipeline.yaml").read_text())
    stages = {stage.name: stage for stage in pipeline.spec.stages}
    assert list(stages) == [n.name for n in WORKFLOW]
    for node in WORKFLOW:
        stage = stages[node.name]
        assert stage.inputs == list(node.inputs) and stage.depends_on == list(node.depends_on)
        assert [v.triton_model for v in stage.variants] == list(node.variants)
        for variant in stage.variants:
            assert variant.accuracy == pytest.approx(models.heldout_accuracy(variant.triton_model), abs=1e-4)
            assert [p.batch for p in variant.profile.points] == [1, 4]
    report = json.loads((out / "agents.json").read_text())
    assert report["workflowAccuracy"]["largest"]["accuracy"] == workflow_accuracy(largest(), models)
    assert summary["workflowAccuracy"]["cheapest"] == round(workflow_accuracy(cheapest(), models), 4)


@pytest.mark.parametrize("flag", ["--out", "--cache"])
def test_a_bad_folder_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    for bad in (blocker, blocker / "below"):
        args = {"--out": str(tmp_path / "out"), flag: str(bad)}
        assert main(["agents", "build", *(part for item in args.items() for part in item), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"paretoserve: error: {flag}:") and "\n" not in err
    assert blocker.read_text() == "mine" and not (tmp_path / "out").exists()
