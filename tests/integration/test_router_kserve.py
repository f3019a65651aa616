"""KServe v2 conformance: NVIDIA's own `tritonclient` (HTTP) against the router, with the REAL Triton behind it.

Every answer the router gives for a proxied model is compared with what the same client gets from Triton
directly (metadata, config, readiness, statistics, JSON and binary inference, versioned paths, compressed
requests and answers); the pipeline is driven both as a model (``/v2/models/digits/...``) and on its own
endpoint with the body `tritonclient` builds (binary tensors, binary outputs), and must answer exactly
what the JSON pipeline endpoint answers. Errors are protocol JSON with the right status.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http as triton_http
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from paretoserve.workers.models import load_split
from paretoserve.workers.router.app import build_router
from paretoserve.workers.router.config import parse_config
from paretoserve.workers.router.serve import ServerThread
from paretoserve.workers.triton.server import TritonServer

pytestmark = pytest.mark.triton

PIPELINE = "digits"
MODEL = "tiny_linear"


@pytest.fixture(scope="module")
def images() -> npt.NDArray[np.float32]:
    return np.ascontiguousarray(load_split().x_test[:40], dtype=np.float32)


@pytest.fixture(scope="module", params=["python", "fastpath"])
def router_url(request: pytest.FixtureRequest, triton_server: TritonServer) -> Iterator[str]:
    """The router's data port, served by Python alone or through the compiled fast path in front of it (every
    test of this module runs against both)."""
    fastpath = request.getfixturevalue("fastpath_binary") if request.param == "fastpath" else None
    url = f"http://{triton_server.http_url}"
    config = parse_config({
        "pipeline": PIPELINE,
        "stages": [{"name": "classify", "cascade": {"light": "tiny_linear", "heavy": "cnn_large", "threshold": 0.9}}],
        "upstreams": {m: [url] for m in ("tiny_linear", "cnn_large")},
    })
    apps = build_router(config, registry=CollectorRegistry(), admin_token="kserve-token")
    with ServerThread(apps, fastpath=fastpath) as server:
        yield server.url


def client_for(url: str) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(url.removeprefix("http://"), connection_timeout=30, network_timeout=60)


@pytest.fixture(scope="module")
def via_router(router_url: str) -> Iterator[triton_http.InferenceServerClient]:
    client = client_for(router_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def direct(triton_server: TritonServer) -> Iterator[triton_http.InferenceServerClient]:
    client = client_for(f"http://{triton_server.http_url}")
    yield client
    client.close()


def image_input(images: npt.NDArray[np.float32], *, binary: bool = True) -> triton_http.InferInput:
    tensor = triton_http.InferInput("IMAGE", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    return tensor


def outputs(*, binary: bool) -> list[triton_http.InferRequestedOutput]:
    return [triton_http.InferRequestedOutput(name, binary_data=binary) for name in ("LABEL", "CONFIDENCE")]


def test_server_and_model_metadata_config_readiness_match_triton(
        via_router: triton_http.InferenceServerClient, direct: triton_http.InferenceServerClient) -> None:
    assert via_router.is_server_live() and via_router.is_server_ready()
    server = via_router.get_server_metadata()
    assert server["name"] == "paretoserve-router" and "binary_tensor_data" in server["extensions"]
    assert via_router.get_model_metadata(MODEL) == direct.get_model_metadata(MODEL)
    assert via_router.get_model_metadata(MODEL, model_version="1") == direct.get_model_metadata(MODEL, "1")
    assert via_router.get_model_config(MODEL) == direct.get_model_config(MODEL)
    assert via_router.is_model_ready(MODEL) and via_router.is_model_ready(MODEL, model_version="1")
    stats = via_router.get_inference_statistics(MODEL)["model_stats"]
    assert [s["name"] for s in stats] == [MODEL]


def test_the_pipeline_is_a_model_too(via_router: triton_http.InferenceServerClient,
                                     direct: triton_http.InferenceServerClient) -> None:
    meta = via_router.get_model_metadata(PIPELINE)
    light, heavy = direct.get_model_metadata("tiny_linear"), direct.get_model_metadata("cnn_large")
    assert meta["name"] == PIPELINE and meta["versions"] == ["1"]
    assert meta["inputs"] == light["inputs"] and meta["outputs"] == heavy["outputs"]
    config = via_router.get_model_config(PIPELINE)
    assert config["name"] == PIPELINE and config["max_batch_size"] == direct.get_model_config("tiny_linear")[
        "max_batch_size"] and config["input"][0]["name"] == "IMAGE"
    assert via_router.is_model_ready(PIPELINE) and via_router.is_model_ready(PIPELINE, model_version="1")
    assert not via_router.is_model_ready(PIPELINE, model_version="2")


def _labels(result: Any) -> list[int]:
    return [int(v) for v in result.as_numpy("LABEL").reshape(-1)]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_model_inference_through_the_router_equals_triton(
        via_router: triton_http.InferenceServerClient, direct: triton_http.InferenceServerClient,
        images: npt.NDArray[np.float32], binary: bool) -> None:
    batch = images[:8].reshape(8, 8, 8)
    expected = direct.infer(MODEL, [image_input(batch, binary=binary)], outputs=outputs(binary=binary))
    got = via_router.infer(MODEL, [image_input(batch, binary=binary)], outputs=outputs(binary=binary))
    versioned = via_router.infer(MODEL, [image_input(batch, binary=binary)], model_version="1",
                                 outputs=outputs(binary=binary))
    assert _labels(got) == _labels(expected) == _labels(versioned)
    np.testing.assert_allclose(got.as_numpy("CONFIDENCE"), expected.as_numpy("CONFIDENCE"))


def _json_pipeline_labels(router_url: str, batch: npt.NDArray[np.float32]) -> list[int]:
    body = {"inputs": [{"name": "IMAGE", "shape": list(batch.shape), "datatype": "FP32",
                        "data": batch.reshape(-1).tolist()}]}
    answer = httpx.post(f"{router_url}/v2/pipelines/{PIPELINE}/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return [int(v) for v in next(t for t in answer.json()["outputs"] if t["name"] == "LABEL")["data"]]


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_the_pipeline_answers_tritonclient_with_binary_tensors_and_compression(
        via_router: triton_http.InferenceServerClient, router_url: str, images: npt.NDArray[np.float32],
        compression: str | None) -> None:
    batch = images[:32].reshape(32, 8, 8)
    expected = _json_pipeline_labels(router_url, batch)
    result = via_router.infer(PIPELINE, [image_input(batch)], outputs=outputs(binary=True),
                              request_compression_algorithm=compression, response_compression_algorithm=compression)
    assert _labels(result) == expected
    assert result.get_response()["model_name"] == PIPELINE
    # tritonclient's default body (binary inputs; no outputs named: binary_data_output) on the pipeline's endpoint
    body, header_length = triton_http.InferenceServerClient.generate_request_body([image_input(batch)])
    assert b'"binary_data_output":true' in body
    headers = {"inference-header-content-length": str(header_length), "accept-encoding": "gzip"}
    answer = httpx.post(f"{router_url}/v2/pipelines/{PIPELINE}/infer", content=body, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-encoding"] == "gzip"  # 32 rows of outputs are worth compressing
    parsed = triton_http.InferResult.from_response_body(
        answer.content, header_length=int(answer.headers["inference-header-content-length"]))
    assert _labels(parsed) == expected
    assert parsed.as_numpy("PROBS").shape == (32, 10)


def test_compressed_requests_to_a_proxied_model(router_url: str, direct: triton_http.InferenceServerClient,
                                                images: npt.NDArray[np.float32]) -> None:
    batch = images[:4].reshape(4, 8, 8)
    body = (b'{"inputs":[{"name":"IMAGE","shape":[4,8,8],"datatype":"FP32","data":'
            + str(batch.reshape(-1).tolist()).encode() + b"}]}")
    expected = _labels(direct.infer(MODEL, [image_input(batch)], outputs=outputs(binary=False)))
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        answer = httpx.post(f"{router_url}/v2/models/{MODEL}/infer", content=packed,
                            headers={"content-encoding": encoding, "content-type": "application/json"}, timeout=60)
        assert answer.status_code == 200, (encoding, answer.text)
        labels = next(t for t in answer.json()["outputs"] if t["name"] == "LABEL")["data"]
        assert [int(v) for v in np.asarray(labels).reshape(-1)] == expected


def test_statistics_count_the_pipeline_and_list_every_model(via_router: triton_http.InferenceServerClient,
                                                            images: npt.NDArray[np.float32]) -> None:
    before = via_router.get_inference_statistics(PIPELINE)["model_stats"][0]
    via_router.infer(PIPELINE, [image_input(images[:5].reshape(5, 8, 8))])
    after = via_router.get_inference_statistics(PIPELINE)["model_stats"][0]
    assert after["name"] == PIPELINE and after["version"] == "1"
    assert int(after["inference_stats"]["success"]["count"]) == int(before["inference_stats"]["success"]["count"]) + 1
    assert int(after["inference_count"]) == int(before["inference_count"]) + 5
    # perf_analyzer finds the version whose queue count grew and needs equal compute counts
    stats = after["inference_stats"]
    assert int(stats["queue"]["count"]) == int(before["inference_stats"]["queue"]["count"]) + 1
    assert int(stats["compute_infer"]["ns"]) > int(before["inference_stats"]["compute_infer"]["ns"])
    assert len({int(stats[k]["count"]) for k in ("compute_input", "compute_infer", "compute_output")}) == 1
    everything = {s["name"] for s in via_router.get_inference_statistics()["model_stats"]}
    assert everything == {PIPELINE, "tiny_linear", "cnn_large"}


def test_errors_are_protocol_json_with_the_right_status(via_router: triton_http.InferenceServerClient,
                                                        router_url: str) -> None:
    with pytest.raises(InferenceServerException, match="no model or pipeline 'nope'"):
        via_router.get_model_metadata("nope")
    assert not via_router.is_model_ready("nope")
    cases = [
        ("GET", "/v2/models/nope/config", {}, b"", 404),
        ("GET", f"/v2/models/{PIPELINE}/versions/2", {}, b"", 404),
        ("POST", f"/v2/models/{PIPELINE}/versions/3/infer", {}, b"{}", 404),
        ("POST", f"/v2/pipelines/{PIPELINE}/infer", {"content-encoding": "gzip"}, b"not gzip", 400),
        ("POST", f"/v2/pipelines/{PIPELINE}/infer", {"content-encoding": "br"}, b"{}", 415),
        ("POST", f"/v2/pipelines/{PIPELINE}/infer", {"inference-header-content-length": "999"}, b"{}", 400),
        ("DELETE", "/v2", {}, b"", 405),
    ]
    for method, path, headers, content, status in cases:
        answer = httpx.request(method, f"{router_url}{path}", headers=headers, content=content, timeout=30)
        assert answer.status_code == status, (path, answer.text)
        assert answer.headers["content-type"] == "application/json" and "error" in answer.json(), path
