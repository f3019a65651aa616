"""`paretoserve profile | up | load`: bad input is one line naming the field, exit status 2."""

from __future__ import annotations

import io
import json
import socket
import tarfile
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

from paretoserve.planner.spec import SpecError, parse_pipeline
from paretoserve.shell.main import main
from paretoserve.workers.models.cache import ModelCatalog
from paretoserve.workers.runtime.serving import max_batch_size, model_specs, pipeline_models

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "digits-local.yaml"


def _trace(tmp_path: Path) -> Path:
    path = tmp_path / "t.tbz2"
    data = b"3 4 5 6"
    with tarfile.open(path, "w:bz2") as archive:
        info = tarfile.TarInfo("workload.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(("argv", "message"), [
    (["profile", "absent.yaml", "--out", "p.yaml"], "absent.yaml: cannot read"),
    (["profile", str(EXAMPLE), "--out", "p.yaml", "--batches", "1,x"], "--batches: expected comma-separated"),
    (["profile", str(EXAMPLE), "--out", "p.yaml", "--instances", "0"], "--instances: expected positive"),
    (["profile", str(EXAMPLE), "--out", "p.yaml", "--threads", "512", "--instances", "1"], "exceeds"),
    (["profile", str(EXAMPLE), "--out", "p.yaml", "--cpu-quotas", "0.5,x"], "--cpu-quotas: expected comma-"),
    (["profile", str(EXAMPLE), "--out", "p.yaml", "--cpu-quotas", "nan"], "--cpu-quotas: expected positive"),
    (["profile", str(EXAMPLE), "--out", "p.yaml", "--cpu-quotas", "64"], "--cpu-quotas: give cores in"),
    (["up", str(EXAMPLE), "--port", "0"], "--port: must be in 1..65535"),
    (["up", str(EXAMPLE), "--port", "18999", "--cores", "0"], "--cores: must be >= 1"),
    (["up", str(EXAMPLE), "--port", "18999", "--router-concurrency", "0"], "--router-concurrency: must be >= 1"),
    (["up", str(EXAMPLE), "--port", "18999", "--queue-order", "random"], "--queue-order: invalid choice"),
    (["up", str(EXAMPLE), "--port", "18999", "--window", "1:2"], "--window: only used with --replay"),
    (["up", str(EXAMPLE), "--port", "18999", "--replay", "TRACE", "--scale", "1"], "--window: required with --replay"),
    (["up", str(EXAMPLE), "--port", "18999", "--replay", "absent.tbz2", "--window", "0:2", "--scale", "1"],
     "--replay: cannot read absent.tbz2"),
    (["up", str(EXAMPLE), "--port", "18999", "--replay", "TRACE", "--window", "2:1", "--scale", "1"], "--window"),
    (["up", str(EXAMPLE), "--port", "18999", "--replay", "TRACE", "--window", "0:9", "--scale", "1"],
     "--window: ends at 9 but the trace has 4 seconds"),
    (["up", str(EXAMPLE), "--port", "18999", "--replay", "TRACE", "--window", "0:2", "--scale", "-1"], "--scale"),
    (["load", "--trace", "TRACE", "--window", "0:2", "--scale", "1", "--url", "ftp://x"], "--url: expected"),
    (["load", "--trace", "TRACE", "--window", "0:2", "--scale", "1", "--url", "http://127.0.0.1:9",
      "--state", "STATE"], "--pipeline/--slo-ms: no `paretoserve up` state"),
])
def test_bad_input_is_one_line_exit_2(argv: list[str], message: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    trace = str(_trace(tmp_path))
    argv = [trace if a == "TRACE" else str(tmp_path / "state") if a == "STATE" else a for a in argv]
    code, err = _run(argv, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and message in err, err


def test_bad_manifest_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["stages"][0]["cascade"]["light"] = "nope"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, err = _run(["up", str(path), "--port", "18999"], capsys)
    assert code == 2 and "spec.stages[0].cascade.light" in err


def test_a_port_in_use_is_refused_before_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code, err = _run(["up", str(EXAMPLE), "--port", str(port)], capsys)
    assert code == 2 and f"--port: 127.0.0.1:{port} is already in use" in err


def _catalog(*variants: str) -> ModelCatalog:
    return ModelCatalog(Path("/nowhere"), "v", MappingProxyType(dict.fromkeys(variants)))  # type: ignore[arg-type]


def test_every_triton_model_must_be_a_cached_variant_or_a_repository_entry(tmp_path: Path) -> None:
    pipeline = parse_pipeline(yaml.safe_load(EXAMPLE.read_text()))
    uses = pipeline_models(pipeline)
    assert [u.model for u in uses] == ["tiny_linear", "cnn_large"]
    with pytest.raises(SpecError, match=r"spec\.stages\[0\]\.variants\[0\]\.tritonModel: 'tiny_linear' is neither"):
        model_specs(uses, _catalog("mlp_small"), max_batch=32)
    for name in ("tiny_linear", "cnn_large"):  # entries of a repository written by `paretoserve fuse`
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.onnx").write_bytes(b"")
        (tmp_path / name / "1" / "metadata.json").write_text(json.dumps(
            {"variant": name, "input_shape": [1, 32, 32], "tasks": {"digit": 10, "parity": 2}}))
    specs = model_specs(uses, _catalog("mlp_small"), max_batch=64, repository=tmp_path)
    assert specs["cnn_large"].tasks == (("digit", 10), ("parity", 2))
    assert specs["cnn_large"].input_shape == (1, 32, 32) and specs["cnn_large"].max_batch_size == 64
    (tmp_path / "cnn_large" / "1" / "model.onnx").unlink()
    with pytest.raises(SpecError, match=r"variants\[1\]\.tritonModel: 'cnn_large' is neither .* nor an entry of"):
        model_specs(uses, _catalog("mlp_small"), max_batch=32, repository=tmp_path)
    assert max_batch_size(pipeline) >= 16


def test_a_discriminator_cascade_needs_the_discriminator_model() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["stages"][0]["cascade"]["router"] = "discriminator"
    doc["spec"]["stages"][0]["cascade"]["discriminatorModel"] = "discriminator"
    uses = pipeline_models(parse_pipeline(doc))
    assert uses[-1].model == "discriminator" and uses[-1].path == "spec.stages[0].cascade.discriminatorModel"
