"""Binary tensor data and content encodings of KServe v2 bodies (workers/router/wire.py): pure functions."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import orjson
import pytest

from paretoserve.workers.router.errors import BadRequest, PayloadTooLarge
from paretoserve.workers.router.wire import (
    OutputWishes,
    binary_request_to_json,
    binary_response,
    compress,
    decompress,
    take_output_wishes,
)


def test_decompress_gzip_deflate_and_identity_within_the_limit() -> None:
    body = b'{"inputs": []}' * 10
    assert decompress(gzip.compress(body), "gzip", 1000) == body
    assert decompress(zlib.compress(body), "Deflate", 1000) == body
    assert decompress(body, None, 10) == body and decompress(body, "identity", 10) == body


@pytest.mark.parametrize(("body", "encoding", "error", "match"), [
    (gzip.compress(b"0" * 100_000), "gzip", PayloadTooLarge, "exceeds 1000 bytes"),  # a small bomb
    (b"not gzip", "gzip", BadRequest, "not valid gzip"),
    (gzip.compress(b"x" * 100)[:-8], "gzip", BadRequest, "truncated"),
    (b"{}", "br", BadRequest, "Content-Encoding: 'br' is not supported"),
])
def test_decompress_refuses_what_it_cannot_or_may_not_expand(body: bytes, encoding: str, error: type[Exception],
                                                             match: str) -> None:
    with pytest.raises(error, match=match):
        decompress(body, encoding, 1000)


def test_compress_follows_accept_encoding() -> None:
    body = b"a" * 2000
    packed, name = compress(body, "br;q=1, gzip;q=0.5")
    assert name == "gzip" and gzip.decompress(packed) == body
    packed, name = compress(body, "deflate")
    assert name == "deflate" and zlib.decompress(packed) == body
    assert compress(body, "gzip;q=0") == (body, None)
    assert compress(body, None) == (body, None)


def _binary_body(header: dict[str, object], *tensors: bytes) -> tuple[bytes, str]:
    head = orjson.dumps(header)
    return head + b"".join(tensors), str(len(head))


def test_binary_inputs_become_json_data() -> None:
    image = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    words = b"".join(len(w).to_bytes(4, "little") + w for w in (b"hi", "é".encode()))
    body, length = _binary_body({"id": "x", "inputs": [
        {"name": "IMAGE", "shape": [1, 2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
        {"name": "TEXT", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(words)}},
        {"name": "FLAG", "shape": [1], "datatype": "BOOL", "data": [True]},
    ]}, image.tobytes(), words)
    message = orjson.loads(binary_request_to_json(body, length))
    assert message["id"] == "x"
    assert message["inputs"][0] == {"name": "IMAGE", "shape": [1, 2, 3], "datatype": "FP32",
                                    "data": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}
    assert message["inputs"][1]["data"] == ["hi", "é"] and message["inputs"][2]["data"] == [True]


@pytest.mark.parametrize(("header", "tail", "length", "match"), [
    ({"inputs": [{"name": "A", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]},
     b"\0" * 4, None, "4 bytes do not fill shape"),
    ({"inputs": [{"name": "A", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]},
     b"\0" * 4, None, "binary_data_size: must be a byte count"),
    ({"inputs": [{"name": "A", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]},
     b"\0" * 6, None, "2 bytes of binary data no input claims"),
    ({"inputs": [{"name": "A", "shape": [1], "datatype": "BF16", "parameters": {"binary_data_size": 2}}]},
     b"\0" * 2, None, "BF16.* is not supported"),
    ({"inputs": [{"name": "A", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]},
     b"\x09\0\0\0ab", None, "shorter than its length prefix"),
    ({"inputs": []}, b"", "99999", "Inference-Header-Content-Length"),
    ({"inputs": []}, b"", "-1", "Inference-Header-Content-Length"),
])
def test_malformed_binary_requests_are_400s_naming_the_field(header: dict[str, object], tail: bytes,
                                                              length: str | None, match: str) -> None:
    body, measured = _binary_body(header, tail)
    with pytest.raises(BadRequest, match=match):
        binary_request_to_json(body, length or measured)


def test_output_wishes_are_taken_off_the_request() -> None:
    message = {"inputs": [], "parameters": {"binary_data_output": True, "priority": 1},
               "outputs": [{"name": "LABEL", "parameters": {"binary_data": False}}, {"name": "PROBS"}]}
    wishes = take_output_wishes(message)
    assert message == {"inputs": [], "parameters": {"priority": 1},
                       "outputs": [{"name": "LABEL", "parameters": {}}, {"name": "PROBS"}]}
    assert wishes is not None and wishes.binary("PROBS") and not wishes.binary("LABEL") and wishes.any
    plain = {"inputs": [], "outputs": [{"name": "LABEL"}]}
    assert take_output_wishes(plain) is None and plain == {"inputs": [], "outputs": [{"name": "LABEL"}]}
    off = {"inputs": [], "parameters": {"binary_data_output": False}}
    assert take_output_wishes(off) == OutputWishes() and off == {"inputs": [], "parameters": {}}
    with pytest.raises(BadRequest, match=r"outputs\[0\].parameters.binary_data: must be true or false"):
        take_output_wishes({"outputs": [{"name": "A", "parameters": {"binary_data": "yes"}}]})


def test_binary_response_round_trips_and_json_stays_json() -> None:
    response = {"model_name": "p", "outputs": [
        {"name": "LABEL", "datatype": "INT64", "shape": [2, 1], "data": [3, 7]},
        {"name": "CONFIDENCE", "datatype": "FP32", "shape": [2, 1], "data": [0.5, 0.25]}]}
    body, length = binary_response(response, OutputWishes(names={"LABEL": True}))
    assert length is not None
    head = orjson.loads(body[:length])
    assert head["outputs"][0] == {"name": "LABEL", "datatype": "INT64", "shape": [2, 1],
                                  "parameters": {"binary_data_size": 16}}
    assert head["outputs"][1]["data"] == [0.5, 0.25]
    assert np.frombuffer(body[length:], dtype="<i8").tolist() == [3, 7]
    assert binary_response(response, OutputWishes()) == (orjson.dumps(response), None)
