"""Fusion end to end on a small instance: the search keeps its bound, is deterministic and resumable, and a
fused variant is served by the real Triton with one set of outputs per task that match the torch model."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml

from paretoserve.planner.spec import load_pipeline_text
from paretoserve.workers.fusion import FusionSession, fuse, search
from paretoserve.workers.fusion.export import fused_net
from paretoserve.workers.fusion.nets import FusedNet
from paretoserve.workers.fusion.spec import parse_fusion_spec
from paretoserve.workers.fusion.training import task_accuracies
from paretoserve.workers.runtime.local import default_state_dir
from paretoserve.workers.triton.control import TritonControl
from paretoserve.workers.triton.server import TritonServer, TritonServerConfig

THETA = 0.02
SMALL = {
    "apiVersion": "paretoserve.io/v1alpha1", "kind": "FusionSpec", "metadata": {"name": "small"},
    "spec": {
        "data": {"imageSize": 8},
        "tasks": [
            {"name": "digit", "labels": "digit", "channels": [8, 8, 0, 16, 0], "training": {"epochs": 6}},
            {"name": "parity", "labels": "parity", "channels": [8, 8, 0, 16, 0], "training": {"epochs": 6}},
            {"name": "at_least_5", "labels": "atLeast5", "channels": [8, 0, 16, 0], "training": {"epochs": 6}},
        ],
        "search": {"theta": THETA, "seed": 3, "maxCandidates": 5, "fineTuneEpochs": 4, "batchSizes": [1, 4]},
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fusion-cache")


def test_the_search_keeps_every_kept_graph_within_the_bound_and_replays_from_its_cache(cache: Path) -> None:
    spec = parse_fusion_spec(SMALL)
    session = FusionSession(spec, cache)
    first = search(session, THETA)
    assert len(first.candidates) == 5 and first.ended == "candidates"
    assert any(c.meets for c in first.candidates), "nothing met a 2-point bound on the small instance"
    for candidate in first.candidates:
        if candidate.meets:  # rebuilt from the cached weights, measured again on the validation split
            net = fused_net(session, candidate, THETA)
            accuracy = task_accuracies(net, session.data.val, session.tasks)
            assert max(b - a for b, a in zip(session.baseline, accuracy, strict=True)) <= THETA + 1e-9
            assert tuple(accuracy) == pytest.approx(candidate.val_accuracy)
        else:
            assert candidate.stop in ("filtered", "epochs") and candidate.max_drop > THETA
    resumed = search(FusionSession(spec, cache), THETA)  # a second run: the same graphs, from the cache
    assert [c.key for c in resumed.candidates] == [c.key for c in first.candidates]
    assert resumed.candidates == first.candidates
    assert resumed.seconds < sum(c.seconds for c in first.candidates)


def test_the_search_is_deterministic_with_its_seed(cache: Path, tmp_path: Path) -> None:
    spec = parse_fusion_spec(SMALL)
    settings = {**SMALL["spec"]["search"], "maxCandidates": 2}
    short = parse_fusion_spec({**SMALL, "spec": {**SMALL["spec"], "search": settings}})
    fresh = search(FusionSession(short, tmp_path / "fresh"), THETA)
    cached = search(FusionSession(spec, cache), THETA)
    assert [(c.key, c.val_accuracy, c.drops) for c in fresh.candidates] == \
        [(c.key, c.val_accuracy, c.drops) for c in cached.candidates[:2]]


@pytest.mark.triton
def test_a_fused_variant_is_served_by_triton_with_each_tasks_outputs(cache: Path, tmp_path: Path) -> None:
    spec = parse_fusion_spec(SMALL)
    report = fuse(spec, tmp_path / "out", cache_root=cache, show_progress=False)
    fused = [s for s in report["served"] if s["kind"] == "fused"]
    assert fused and {s["kind"] for s in report["served"]} == {"unfused", "separate", "fused", "mtl"}
    variants = yaml.safe_load((tmp_path / "out" / "variants.yaml").read_text())["variants"]
    assert [v["tritonModel"] for v in variants] == ["tasks_separate", *(s["name"] for s in fused)]
    pipeline = load_pipeline_text((tmp_path / "out" / "pipeline.yaml").read_text())
    stage = pipeline.spec.stages[0]
    assert [task.name for task in stage.tasks or []] == ["digit", "parity", "at_least_5"]
    assert [v.triton_model for v in stage.variants] == [v["tritonModel"] for v in variants]
    for variant in stage.variants:
        assert variant.task_accuracy is not None and set(variant.task_accuracy) == {"digit", "parity", "at_least_5"}
    session = FusionSession(spec, cache)
    model = fused[0]["name"]
    candidate = next(c for c in search(session, THETA).candidates if f"fused_{c.key}" == model)
    net = fused_net(session, candidate, THETA)
    images = session.data.test.images[:16]
    with torch.inference_mode():
        expected = [logits.argmax(dim=1).numpy() for logits in net(images)]
    config = TritonServerConfig(model_repository=tmp_path / "out" / "repository",
                                models=(model, "task_parity", "mtl_all_shared", "tasks_separate"))
    with TritonServer(config) as triton, TritonControl(triton.http_url) as control:
        answers = control.infer_tasks(model, images.numpy(), net.graph.tasks)
        for task, labels in zip(net.graph.tasks, expected, strict=True):
            assert np.array_equal(answers[task].label, labels)
            classes = net.graph.block(net.graph.head(task)).out_shape[0]
            assert answers[task].probs.shape == (16, classes)
            assert np.allclose(answers[task].probs.sum(axis=1), 1.0, atol=1e-5)
        single = control.infer_tasks("task_parity", images.numpy(), ["parity"])["parity"]
        assert single.label.shape == (16,) and set(np.unique(single.label)) <= {0, 1}
        separate = control.infer_tasks("tasks_separate", images.numpy(), net.graph.tasks)  # all task models
        assert np.array_equal(separate["parity"].label, single.label)
        for task in net.graph.tasks:
            assert separate[task].probs.shape == answers[task].probs.shape
        with pytest.raises(Exception, match="unexpected inference output"):
            control.infer_tasks(model, images.numpy(), ["no_such_task"])


@pytest.mark.triton
@pytest.mark.slow
def test_up_serves_a_multi_task_pipeline_from_the_fusion_repository(cache: Path, tmp_path: Path) -> None:
    """`paretoserve up pipeline.yaml --model-repository repository/`: one request to the pipeline endpoint is
    answered for every task by the variant the planner chose, with the labels the torch model gives."""
    spec = parse_fusion_spec(SMALL)
    out = tmp_path / "out"
    fuse(spec, out, cache_root=cache, show_progress=False)
    pipeline = load_pipeline_text((out / "pipeline.yaml").read_text())
    stage = pipeline.spec.stages[0]
    chosen = max(stage.variants, key=stage.accuracy_of)  # no load: the most accurate variant fits the budget
    session = FusionSession(spec, cache)
    if chosen.triton_model == "tasks_separate":
        net = FusedNet(session.unfused, session.original_states)
    else:
        candidate = next(c for c in search(session, THETA).candidates if f"fused_{c.key}" == chosen.triton_model)
        net = fused_net(session, candidate, THETA)
    images = session.data.test.images[:3]
    with torch.inference_mode():
        expected = {task: logits.argmax(dim=1).tolist() for task, logits in zip(net.graph.tasks, net(images),
                                                                                 strict=True)}
    port = free_port()
    command = [sys.executable, "-m", "paretoserve", "up", str(out / "pipeline.yaml"), "--model-repository",
               str(out / "repository"), "--port", str(port), "--work-dir", str(tmp_path / "w"), "--no-cpu-quota"]
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        state = default_state_dir(port) / "runtime.json"
        deadline = time.monotonic() + 240  # bounds a hang; not a performance assertion
        while not state.exists():
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "up did not become ready"
            time.sleep(0.2)
        body = {"inputs": [{"name": "IMAGE", "shape": list(images.shape), "datatype": "FP32",
                            "data": images.flatten().tolist()}]}
        answer = httpx.post(f"http://127.0.0.1:{port}/v2/pipelines/{pipeline.metadata.name}/infer", json=body,
                            timeout=30)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o for o in answer.json()["outputs"]}
        for task, labels in expected.items():
            assert [int(x) for x in np.asarray(outputs[f"LABEL_{task}"]["data"]).reshape(-1)] == labels
            assert outputs[f"PROBS_{task}"]["shape"][0] == 3
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=120)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    trace = tmp_path / "trace.tbz2"
    with tarfile.open(trace, "w:bz2") as archive:
        info = tarfile.TarInfo("workload.txt")
        info.size = len(b"1 1")
        archive.addfile(info, io.BytesIO(b"1 1"))
    refused = subprocess.run([*command[:7], "--port", str(free_port()), "--work-dir", str(tmp_path / "w2"),
                              "--no-cpu-quota", "--replay", str(trace), "--window", "0:2", "--scale", "1"],
                             capture_output=True, text=True, timeout=300, check=False)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "--replay: model" in refused.stderr and "serve it without --replay" in refused.stderr
