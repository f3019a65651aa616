"""Training is deterministic, cached by content, and the shipped variants form a real frontier.

Integration rather than unit: these tests train torch models (a few seconds; the full catalog is
trained once per cache and shared with the Triton tests through the ``catalog`` fixture).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from paretoserve.workers.models import (
    RECIPES,
    ModelCatalog,
    catalog_version,
    ensure_trained,
    load_split,
    load_variant,
    predict,
)
from paretoserve.workers.models.cache import MANIFEST_FILE

TINY = tuple(recipe for recipe in RECIPES if recipe.variant == "tiny_linear")


def test_training_is_deterministic_across_cache_roots(tmp_path: Path) -> None:
    first = ensure_trained(tmp_path / "a", recipes=TINY)
    second = ensure_trained(tmp_path / "b", recipes=TINY)

    assert first.version == second.version
    assert first["tiny_linear"].weights_sha256 == second["tiny_linear"].weights_sha256
    assert first["tiny_linear"].heldout_correct == second["tiny_linear"].heldout_correct


def test_second_call_reads_the_cache_without_retraining(tmp_path: Path) -> None:
    trained = ensure_trained(tmp_path, recipes=TINY)
    weights = trained.variant_dir("tiny_linear") / "weights.pt"
    stamp = weights.stat().st_mtime_ns

    cached = ensure_trained(tmp_path, recipes=TINY)

    assert cached == trained
    assert weights.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [trained.version]  # no staging leftovers


def test_cache_layout_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARETOSERVE_CACHE", str(tmp_path))

    trained = ensure_trained(recipes=TINY)

    directory = tmp_path / "models" / catalog_version(TINY)
    assert trained.directory == directory
    assert json.loads((directory / MANIFEST_FILE).read_text()) == {
        "version": trained.version,
        "variants": ["tiny_linear"],
    }
    metadata = json.loads((directory / "tiny_linear" / "metadata.json").read_text())
    assert metadata["input_shape"] == [8, 8]
    assert metadata["params"] == 170
    assert 0 < metadata["heldout_accuracy"] < 1


def test_version_changes_with_the_recipe() -> None:
    changed = (replace(TINY[0], epochs=TINY[0].epochs + 1),)

    assert catalog_version(changed) != catalog_version(TINY)


def test_cached_weights_reproduce_the_recorded_accuracy(catalog: ModelCatalog) -> None:
    split = load_split()
    for variant, metadata in catalog.variants.items():
        if metadata.task != "digits":
            continue
        labels = predict(load_variant(catalog.variant_dir(variant)), split.x_test).label
        assert int((labels == split.y_test).sum()) == metadata.heldout_correct, variant


def test_shipped_variants_trade_cost_for_accuracy(catalog: ModelCatalog) -> None:
    ladder = [catalog[name] for name in ("tiny_linear", "mlp_small", "cnn_small", "cnn_large")]

    assert [m.macs_per_sample for m in ladder] == sorted(m.macs_per_sample for m in ladder)
    assert [m.heldout_accuracy for m in ladder] == sorted(m.heldout_accuracy for m in ladder)
    assert ladder[-1].heldout_accuracy - ladder[0].heldout_accuracy > 0.05


def test_discriminator_flags_light_model_errors(catalog: ModelCatalog) -> None:
    disc = catalog["discriminator"]
    split = load_split()
    light = predict(load_variant(catalog.variant_dir("tiny_linear")), split.x_test)
    p_wrong = predict(load_variant(catalog.variant_dir("discriminator")), split.x_test).probs[:, 1]
    light_wrong = light.label != split.y_test

    assert disc.task == "light_error" and disc.light_variant == "tiny_linear"
    assert disc.class_labels == ("light_right", "light_wrong")
    assert p_wrong[light_wrong].mean() > p_wrong[~light_wrong].mean() + 0.3
    assert disc.extra_metrics["heldout_auc"] > disc.extra_metrics["baseline_auc_light_confidence"]
    assert np.isclose(disc.extra_metrics["heldout_light_error_rate"], light_wrong.mean())
