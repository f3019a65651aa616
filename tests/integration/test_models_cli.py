"""`paretoserve models export`: a self-contained Triton repository of the trained variants, or one clear line.

Covers: the JSON summary names every exported model with its held-out accuracy and the entry's files; an
unknown variant, a non-empty --out without --force and an invalid --max-batch-size each exit 2 with one
line naming the flag, writing nothing; the token-generating models and their prompt scorer (``--family llm``)
and the multimodal models and their scorer (``--family mm``: IMAGE and PROMPT in) are self-contained entries
whose weights answer like the cached models; with no ``--family`` every family is exported.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paretoserve.shell.main import main
from paretoserve.workers.models import ensure_trained


def test_export_writes_the_chosen_variants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "repo"
    assert main(["models", "export", "--out", str(out), "--variant", "tiny_linear", "--variant", "cnn_large",
                 "--max-batch-size", "16"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(summary["models"]) == ["cnn_large", "tiny_linear"]
    catalog = ensure_trained()
    assert summary["models"]["cnn_large"]["heldoutAccuracy"] == catalog["cnn_large"].heldout_accuracy
    assert sorted(p.name for p in out.iterdir()) == ["cnn_large", "tiny_linear"]
    assert "max_batch_size: 16" in (out / "tiny_linear" / "config.pbtxt").read_text()
    assert (out / "cnn_large" / "1" / "model.onnx").stat().st_size == summary["models"]["cnn_large"]["bytes"] - sum(
        p.stat().st_size for p in (out / "cnn_large").rglob("*") if p.is_file() and p.name != "model.onnx")


@pytest.mark.parametrize(("args", "flag"), [
    (["--variant", "resnet9000"], "--variant: unknown ['resnet9000']"),
    (["--max-batch-size", "0"], "--max-batch-size:"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                        flag: str) -> None:
    assert main(["models", "export", "--out", str(tmp_path / "repo"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"paretoserve: error: {flag}") and "\n" not in err


def test_non_empty_out_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["models", "export", "--out", str(tmp_path), "--variant", "tiny_linear"]) == 2
    assert "--out:" in capsys.readouterr().err and (tmp_path / "keep.txt").read_text() == "mine"
    assert main(["models", "export", "--out", str(tmp_path), "--variant", "tiny_linear", "--force"]) == 0
    assert not (tmp_path / "keep.txt").exists()


def test_the_token_generating_models_and_their_scorer_are_self_contained_entries(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--family llm`: arith-small and arith-large as decoupled Python-backend entries with their weights (the
    numpy engine the worker image serves answers like the cached model) and arith-scorer with its fit, each
    needing no path outside its entry."""
    from paretoserve.workers.llm.cache import ensure_llms, ensure_scorer
    from paretoserve.workers.llm.mm_engine import load_engine
    from paretoserve.workers.llm.scorer import load_scorer
    from paretoserve.workers.llm.tokenizer import encode_prompt

    out = tmp_path / "repo"
    assert main(["models", "export", "--out", str(out), "--family", "llm"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(summary["models"]) == ["arith-large", "arith-scorer", "arith-small"]
    assert sorted(p.name for p in out.iterdir()) == ["arith-large", "arith-scorer", "arith-small"]
    catalog = ensure_llms()
    for model in ("arith-small", "arith-large"):
        config = (out / model / "config.pbtxt").read_text()
        assert "decoupled: true" in config and 'string_value: "weights.npz"' in config  # relative: self-contained
        assert sorted(p.name for p in (out / model / "1").iterdir()) == ["metadata.json", "model.py", "weights.npz"]
        assert summary["models"][model]["heldoutExactMatch"] == catalog.exact_match(model)
        prompt = [encode_prompt("483+219=")]
        assert load_engine(out / model / "1" / "weights.npz").generate(prompt, 5) == catalog.engine(model).generate(
            prompt, 5)
    assert sorted(p.name for p in (out / "arith-scorer" / "1").iterdir()) == ["model.py", "scorer.json"]
    assert load_scorer(out / "arith-scorer" / "1" / "scorer.json") == ensure_scorer().score()
    total = sum(m["bytes"] for m in summary["models"].values())
    assert total < 4_000_000, total  # what the worker image pays for them (~1.8 MB)


def test_variant_names_either_family_and_an_unknown_name_lists_both(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "export", "--out", str(tmp_path / "a"), "--variant", "arith-scorer",
                 "--variant", "tiny_linear"]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["models"]) == ["arith-scorer", "tiny_linear"]
    assert main(["models", "export", "--out", str(tmp_path / "b"), "--variant", "gpt"]) == 2
    err = capsys.readouterr().err
    assert "--variant: unknown ['gpt']" in err and "arith-large" in err and "cnn_large" in err


def test_the_multimodal_models_and_their_scorer_are_self_contained_entries(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--family mm`: mm-low and mm-high as decoupled Python-backend entries taking an ``IMAGE`` FP32 [64] beside
    the ``PROMPT`` (their exported weights answer a question about an image like the cached models) and mm-scorer,
    the score of the question and the image, each needing no path outside its entry."""
    import numpy as np

    from paretoserve.workers.llm.cache import ensure_mm_scorer
    from paretoserve.workers.llm.mm_engine import MultimodalEngine, load_engine
    from paretoserve.workers.llm.multimodal import ensure_multimodal, make_multimodal_splits
    from paretoserve.workers.llm.scorer import load_mm_scorer
    from paretoserve.workers.llm.tokenizer import encode_prompt

    out = tmp_path / "repo"
    assert main(["models", "export", "--out", str(out), "--family", "mm"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(summary["models"]) == ["mm-high", "mm-low", "mm-scorer"]
    assert sorted(p.name for p in out.iterdir()) == ["mm-high", "mm-low", "mm-scorer"]
    assert {m["family"] for m in summary["models"].values()} == {"mm"}
    catalog = ensure_multimodal()
    splits = make_multimodal_splits()
    problems = splits.test[:8]
    images = [np.asarray(p, dtype=np.float32) for p in splits.pixels(problems)]
    prompts = [encode_prompt(p.prompt) for p in problems]
    for model in ("mm-low", "mm-high"):
        config = (out / model / "config.pbtxt").read_text()
        assert "decoupled: true" in config and 'string_value: "weights.npz"' in config
        assert 'name: "IMAGE"' in config and "dims: [ 64 ]" in config
        assert sorted(p.name for p in (out / model / "1").iterdir()) == ["metadata.json", "model.py", "weights.npz"]
        assert summary["models"][model]["heldoutExactMatch"] == catalog.exact_match(model)
        exported = load_engine(out / model / "1" / "weights.npz")
        assert isinstance(exported, MultimodalEngine)
        assert exported.generate_multimodal(images, prompts, 4) == catalog.engine(model).generate_multimodal(
            images, prompts, 4)
    scorer_config = (out / "mm-scorer" / "config.pbtxt").read_text()
    assert 'name: "IMAGE"' in scorer_config and 'name: "PROMPT"' in scorer_config
    assert summary["models"]["mm-scorer"]["scorerOf"] == "mm-low"
    assert load_mm_scorer(out / "mm-scorer" / "1" / "scorer.json") == ensure_mm_scorer().score()
    total = sum(m["bytes"] for m in summary["models"].values())
    assert total < 1_000_000, total  # what the worker image pays for them (~0.6 MB)


def test_every_family_is_exported_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No --family: the digits variants, the text family and the multimodal family (what the worker image bakes)."""
    out = tmp_path / "repo"
    assert main(["models", "export", "--out", str(out)]) == 0
    families = {name: m["family"] for name, m in json.loads(capsys.readouterr().out)["models"].items()}
    assert {n for n, f in families.items() if f == "mm"} == {"mm-low", "mm-high", "mm-scorer"}
    assert {n for n, f in families.items() if f == "llm"} == {"arith-small", "arith-large", "arith-scorer"}
    assert set(ensure_trained().variants) <= {n for n, f in families.items() if f == "digits"}
    assert sorted(p.name for p in out.iterdir()) == sorted(families)
