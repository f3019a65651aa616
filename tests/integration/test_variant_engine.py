"""The served outputs come from logits the same way everywhere, and the ONNX export predicts what torch does.

Covers: softmax/confidence/label of logits (shape checks, numerically stable for huge logits); the ONNX
graph of every cached variant gives torch's labels and probabilities on the held-out digits, for batch
sizes 1 and 37 (dynamic batch axis); a self-contained repository entry needs nothing outside itself;
the graph path of a model config is absolute or relative to the version directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from paretoserve.workers.models import ModelCatalog, ensure_trained, load_split, load_variant, predict
from paretoserve.workers.triton.repository import ONNX_FILE, export_model, spec_from_cached_variant
from paretoserve.workers.triton.variant_engine import (
    OnnxVariant,
    prediction_from_logits,
    variant_graph,
)


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return ensure_trained()


def test_prediction_from_logits_is_softmax_argmax_and_stable() -> None:
    logits = np.array([[1.0, 2.0, 0.5], [1000.0, -1000.0, 999.0]], dtype=np.float32)
    prediction = prediction_from_logits(logits)
    np.testing.assert_allclose(prediction.probs.sum(axis=1), 1.0, rtol=1e-6)
    assert prediction.label.tolist() == [1, 0]
    np.testing.assert_allclose(prediction.confidence, prediction.probs.max(axis=1))
    assert np.isfinite(prediction.probs).all()  # no overflow for logits of 1000
    assert prediction.probs.dtype == np.float32 and prediction.label.dtype == np.int64


@pytest.mark.parametrize("shape", [(3,), (2, 1), (1, 2, 3)])
def test_prediction_from_logits_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="logits must have shape"):
        prediction_from_logits(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("variant", ["tiny_linear", "mlp_small", "cnn_small", "cnn_large", "discriminator"])
@pytest.mark.parametrize("batch", [1, 37])
def test_onnx_export_predicts_what_torch_predicts(catalog: ModelCatalog, variant: str, batch: int) -> None:
    images = load_split().x_test[:batch * 3]
    engine = OnnxVariant(catalog.variant_dir(variant) / ONNX_FILE, threads=1)
    offline = predict(load_variant(catalog.variant_dir(variant)), images)
    served = [engine.predict(images[start:start + batch]) for start in range(0, len(images), batch)]
    np.testing.assert_array_equal(np.concatenate([s.label for s in served]), offline.label)
    np.testing.assert_allclose(np.concatenate([s.probs for s in served]), offline.probs, rtol=1e-4, atol=1e-6)


def test_onnx_variant_refuses_a_missing_graph_and_bad_threads(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no ONNX graph at"):
        OnnxVariant(tmp_path / ONNX_FILE)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        OnnxVariant(tmp_path / ONNX_FILE, threads=0)


def test_exported_entry_is_self_contained(catalog: ModelCatalog, tmp_path: Path) -> None:
    spec = spec_from_cached_variant(catalog.variant_dir("cnn_small"))
    model_dir = export_model(tmp_path / "repo", spec, catalog.variant_dir("cnn_small"))
    moved = shutil.move(str(model_dir), str(tmp_path / "elsewhere"))  # nothing points back at the cache
    config = (Path(moved) / "config.pbtxt").read_text()
    assert 'string_value: "."' in config and str(catalog.directory) not in config
    assert sorted(p.name for p in (Path(moved) / "1").iterdir()) == ["metadata.json", "model.onnx"]
    graph = variant_graph(".", Path(moved) / "1")
    images = load_split().x_test[:50]
    served = OnnxVariant(graph).predict(images)
    assert (served.label == predict(load_variant(catalog.variant_dir("cnn_small")), images).label).all()


def test_export_refuses_an_incomplete_variant(catalog: ModelCatalog, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(catalog.variant_dir("tiny_linear"), partial)
    (partial / ONNX_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="not a complete cached variant"):
        export_model(tmp_path / "repo", spec_from_cached_variant(partial), partial)


def test_graph_path_is_absolute_or_relative_to_the_version_dir(tmp_path: Path) -> None:
    assert variant_graph("/abs/dir", tmp_path) == Path("/abs/dir") / ONNX_FILE
    assert variant_graph(".", tmp_path) == tmp_path / ONNX_FILE
    assert variant_graph("sub", tmp_path) == tmp_path / "sub" / ONNX_FILE
