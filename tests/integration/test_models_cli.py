"""`paretoserve models export`: a self-contained Triton repository of the trained variants, or one clear line.

Covers: the JSON summary names every exported model with its held-out accuracy and the entry's files; an
unknown variant, a non-empty --out without --force and an invalid --max-batch-size each exit 2 with one
line naming the flag, writing nothing.
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
