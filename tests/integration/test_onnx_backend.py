"""The ``paretoserve_onnx`` backend's two implementations against each other, in the real Triton.

The native library (``native/onnx_backend``, built by ``.ci/run``; missing is a failure) and the Python one
(``backend_model.py`` as a Python-based backend) serve the same repository in two servers: a single-task
variant and a two-task graph (outputs ``logits_<task>``). They must answer alike (probabilities to float32
rounding, the same labels and confidences), send only the outputs a request names, fail a model whose graph is
missing with the path named, and report Triton's statistics. The native one must change instance counts and
reload batching without starting a process: that is why it exists (docs/data-plane.md).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from paretoserve.workers.models import ModelCatalog
from paretoserve.workers.triton.onnx_backend import OnnxBackendError, resolve
from paretoserve.workers.triton.repository import (
    ONNX_FILE,
    TritonModelSpec,
    render_override_json,
    spec_from_cached_variant,
    task_output,
    write_repository,
)
from paretoserve.workers.triton.server import TritonInstallation, TritonServer, TritonServerConfig

SINGLE = "tiny_linear"
MULTI = "two_tasks"
TASKS = (("even", 2), ("digit", 10))
OUTPUTS = ("PROBS", "CONFIDENCE", "LABEL")


class _TwoTasks(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.trunk = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU())
        self.heads = torch.nn.ModuleList(torch.nn.Linear(16, classes) for _, classes in TASKS)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.trunk(images)
        return tuple(head(features) for head in self.heads)


def _two_task_graph(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    outputs = [f"logits_{task}" for task, _ in TASKS]
    torch.onnx.export(_TwoTasks().eval(), (torch.zeros((1, 8, 8)),), str(directory / ONNX_FILE), dynamo=False,
                      input_names=["images"], output_names=outputs,
                      dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]}, opset_version=17)
    return directory


@pytest.fixture(scope="module")
def specs(catalog: ModelCatalog, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TritonModelSpec]:
    graph_dir = _two_task_graph(tmp_path_factory.mktemp("two-tasks"))
    return {
        SINGLE: spec_from_cached_variant(catalog.variant_dir(SINGLE), max_batch_size=16, max_queue_delay_us=2000),
        MULTI: TritonModelSpec(name=MULTI, variant=MULTI, weights_dir=str(graph_dir), input_shape=(8, 8),
                               max_batch_size=16, max_queue_delay_us=2000, tasks=TASKS),
    }


@pytest.fixture(scope="module", params=["native", "python"])
def implementation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def server(implementation: str, specs: dict[str, TritonModelSpec], triton_installation: TritonInstallation,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    if implementation == "native":
        try:
            resolve("native")
        except OnnxBackendError as error:
            pytest.fail(str(error), pytrace=False)
    work = tmp_path_factory.mktemp(f"onnx-backend-{implementation}")
    repository = write_repository(work / "repository", list(specs.values()))
    config = TritonServerConfig(model_repository=repository, models=tuple(specs), work_dir=work,
                                backend_cache_dir=work / "backends", onnx_backend=implementation)
    with TritonServer(config, triton_installation) as running:
        yield running


@pytest.fixture(scope="module")
def python_answers(specs: dict[str, TritonModelSpec], triton_installation: TritonInstallation,
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, npt.NDArray[Any]]]:
    """What the Python implementation answers to :func:`_images` (one request per model)."""
    work = tmp_path_factory.mktemp("onnx-backend-reference")
    config = TritonServerConfig(model_repository=write_repository(work / "repository", list(specs.values())),
                                models=tuple(specs), work_dir=work, backend_cache_dir=work / "backends",
                                onnx_backend="python")
    with TritonServer(config, triton_installation) as reference:
        client = triton_http.InferenceServerClient(reference.http_url)
        return {model: _infer(client, model, _images(11)) for model in specs}


def _images(rows: int, seed: int = 0) -> npt.NDArray[np.float32]:
    return (np.random.default_rng(seed).random((rows, 8, 8), dtype=np.float32) * 16).astype(np.float32)


def _names(model: str) -> list[str]:
    tasks = [task for task, _ in TASKS] if model == MULTI else [""]
    return [task_output(output, task) for task in tasks for output in OUTPUTS]


def _infer(client: triton_http.InferenceServerClient, model: str, images: npt.NDArray[np.float32],
           outputs: list[str] | None = None) -> dict[str, npt.NDArray[Any]]:
    tensor = triton_http.InferInput("IMAGE", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    names = outputs or _names(model)
    result = client.infer(model, [tensor], outputs=[triton_http.InferRequestedOutput(n) for n in names])
    return {output["name"]: result.as_numpy(output["name"]) for output in result.get_response()["outputs"]}


def _assert_alike(got: dict[str, npt.NDArray[Any]], want: dict[str, npt.NDArray[Any]]) -> None:
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        assert got[name].shape == expected.shape and got[name].dtype == expected.dtype, name
        if name.startswith("LABEL"):
            np.testing.assert_array_equal(got[name], expected)
        else:
            np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("model", [SINGLE, MULTI])
def test_both_implementations_answer_alike(server: TritonServer, model: str,
                                           python_answers: dict[str, dict[str, npt.NDArray[Any]]]) -> None:
    client = triton_http.InferenceServerClient(server.http_url)
    _assert_alike(_infer(client, model, _images(11)), python_answers[model])
    # Concurrent requests of different sizes are batched together and cut back apart per request.
    sizes = [1, 3, 2, 5, 1, 4, 2, 1]
    with concurrent.futures.ThreadPoolExecutor(len(sizes)) as pool:
        clients = [triton_http.InferenceServerClient(server.http_url) for _ in sizes]
        answers = list(pool.map(lambda i: _infer(clients[i], model, _images(sizes[i], seed=i)), range(len(sizes))))
    for i, answer in enumerate(answers):
        alone = _infer(client, model, _images(sizes[i], seed=i))
        _assert_alike(answer, alone)
        assert answer[_names(model)[0]].shape[0] == sizes[i]


def test_a_request_gets_only_the_outputs_it_names(server: TritonServer) -> None:
    client = triton_http.InferenceServerClient(server.http_url)
    assert sorted(_infer(client, SINGLE, _images(2), outputs=["LABEL"])) == ["LABEL"]
    assert sorted(_infer(client, MULTI, _images(2), outputs=["CONFIDENCE_digit", "LABEL_even"])) == [
        "CONFIDENCE_digit", "LABEL_even"]


def test_a_missing_graph_fails_the_load_with_its_path(server: TritonServer, specs: dict[str, TritonModelSpec],
                                                      tmp_path: Path) -> None:
    client = triton_http.InferenceServerClient(server.http_url)
    broken = replace(specs[SINGLE], name=SINGLE, weights_dir=str(tmp_path / "nowhere"))
    with pytest.raises(InferenceServerException, match="no ONNX graph at"):
        client.load_model(SINGLE, config=render_override_json(broken))
    # The serving copy is kept: a failed reload does not take the model down.
    assert client.is_model_ready(SINGLE)
    assert _infer(client, SINGLE, _images(1))["LABEL"].shape == (1, 1)


def test_statistics_count_each_request_and_batch(server: TritonServer) -> None:
    client = triton_http.InferenceServerClient(server.http_url)

    def stats() -> dict[str, Any]:
        return dict(client.get_inference_statistics(SINGLE)["model_stats"][0])

    before = stats()
    for rows in (1, 2, 3):
        _infer(client, SINGLE, _images(rows))
    after = stats()
    success = int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"])
    assert success == 3
    assert int(after["inference_count"]) - int(before["inference_count"]) == 6  # rows
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > int(before["inference_stats"]["compute_infer"]["ns"])


def _stub_processes(server: TritonServer) -> int:
    assert server.pid is not None
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    return sum(1 for pid in children if "stub" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))


def test_instance_and_batching_changes_start_a_process_only_in_the_python_implementation(
        implementation: str, server: TritonServer, specs: dict[str, TritonModelSpec]) -> None:
    client = triton_http.InferenceServerClient(server.http_url)
    before = _stub_processes(server)
    spec = specs[SINGLE]
    try:
        client.load_model(SINGLE, config=render_override_json(spec.with_instance_count(3)))
        assert client.get_model_config(SINGLE)["instance_group"][0]["count"] == 3
        client.load_model(SINGLE, config=render_override_json(replace(spec, instance_count=3, max_batch_size=8)))
        assert client.get_model_config(SINGLE)["max_batch_size"] == 8
        grown = _stub_processes(server)
        assert _infer(client, SINGLE, _images(4))["LABEL"].shape == (4, 1)
    finally:
        client.load_model(SINGLE, config=render_override_json(spec))
    if implementation == "native":
        assert before == grown == 0
    else:  # the contrast: each Python instance is a stub process (old copies may still be stopping)
        assert grown >= before + 2
