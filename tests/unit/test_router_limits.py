"""The router's pure guards: deadline headers, tensor checks, the bearer check, limits, refusals in JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from paretoserve.shell.main import main
from paretoserve.workers.router.admin import bearer_matches
from paretoserve.workers.router.errors import BadRequest, HeadersTooLarge, Overloaded, UpstreamError
from paretoserve.workers.router.http_guard import error_bytes
from paretoserve.workers.router.limits import RequestLimits, parse_deadline_ms
from paretoserve.workers.router.protocol import assemble, parse_infer_response
from paretoserve.workers.router.tensors import TensorError, check_tensor

HEADER = "x-paretoserve-deadline-ms"


@pytest.mark.parametrize(("raw", "ms"), [
    ("0", 0.0), ("250", 250.0), ("12.5", 12.5), ("0.001", 0.001), ("999999999", 600_000.0),
    ("599999.999", 599_999.999), ("000250", 250.0),
])
def test_deadline_headers_within_the_grammar_are_clamped(raw: str, ms: float) -> None:
    assert parse_deadline_ms(raw, HEADER, 600_000.0) == ms


@pytest.mark.parametrize("raw", [
    "", "-100", "-0", "+5", "1e308", "1E3", "1_000", "nan", "NaN", "inf", "-inf", "0x10", " 250", "250 ", "1.2345",
    "1234567890", "5.", ".5", "1,5", "abc", "１２", "250ms", "1.5.5", "\t1",
])
def test_deadline_headers_outside_the_grammar_are_a_400_naming_the_header(raw: str) -> None:
    with pytest.raises(BadRequest, match=HEADER):
        parse_deadline_ms(raw, HEADER, 600_000.0)


def test_request_limits_refuse_nonsense() -> None:
    assert RequestLimits().max_body_bytes == 16 * 1024 * 1024
    for bad in ({"max_body_bytes": 0}, {"read_timeout_s": 0.0}, {"read_timeout_s": math.nan},
                {"max_deadline_ms": 0.0}, {"max_deadline_ms": 1e12}, {"limit_concurrency": 0},
                {"max_requests_per_connection": 0}, {"keep_alive_s": 0}):
        with pytest.raises(ValueError):
            RequestLimits(**bad)


@pytest.mark.parametrize(("header", "ok"), [
    ("Bearer tok", True), ("bearer tok", True), ("BEARER  tok ", True), ("Bearer tok2", False), ("Bearer to", False),
    ("Bearer", False), ("", False), (None, False), ("Basic tok", False), ("tok", False), ("Bearer tok tok", False),
])
def test_bearer_check(header: str | None, ok: bool) -> None:
    assert bearer_matches(header, b"tok") is ok


def _tensor(**overrides: Any) -> dict[str, Any]:
    return {"name": "PROBS", "datatype": "FP32", "shape": [2, 2], "data": [0.1, 0.9, 0.8, 0.2], **overrides}


@pytest.mark.parametrize(("overrides", "field"), [
    ({"data": [0.1, 0.9, 0.8]}, "data"),
    ({"data": [[0.1, 0.9], [0.8]]}, "data"),
    ({"data": [[0.1, 0.9], 0.8, 0.2]}, "data"),
    ({"data": [[[0.1, 0.9]], [[0.8, 0.2]]]}, "data"),
    ({"data": [0.1, 0.9, 0.8, "0.2"]}, "data"),
    ({"data": [0.1, 0.9, 0.8, None]}, "data"),
    ({"data": [0.1, 0.9, 0.8, True]}, "data"),
    ({"data": [0.1, 0.9, 0.8, {}]}, "data"),
    ({"data": "0.1"}, "data"),
    ({"datatype": "INT64"}, "data"),
    ({"datatype": "FP8"}, "datatype"),
    ({"datatype": None}, "datatype"),
    ({"shape": [2, -2]}, "shape"),
    ({"shape": [2, 2.0]}, "shape"),
    ({"shape": []}, "shape"),
    ({"shape": [1] * 40}, "shape"),
    ({"shape": [3, 2]}, "shape"),  # 3 rows where 2 were sent
    ({"name": ""}, "name"),
    ({"name": 7}, "name"),
])
def test_malformed_tensors_are_named(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(TensorError) as raised:
        check_tensor(_tensor(**overrides), rows=2)
    assert raised.value.field == field


def test_well_formed_tensors_flatten_nested_data_along_the_shape() -> None:
    assert check_tensor(_tensor(data=[[0.1, 0.9], [0.8, 0.2]]), rows=2).data == [0.1, 0.9, 0.8, 0.2]
    nested = check_tensor({"name": "X", "datatype": "INT8", "shape": [1, 2, 2], "data": [[[1, 2], [3, 4]]]})
    assert nested.data == [1, 2, 3, 4] and nested.width == 4
    partly = check_tensor({"name": "X", "datatype": "INT8", "shape": [2, 2, 2], "data": [[1, 2, 3, 4], [5, 6, 7, 8]]})
    assert partly.data == list(range(1, 9))
    assert check_tensor({"name": "B", "datatype": "BYTES", "shape": [1], "data": ["a"]}).data == ["a"]
    assert check_tensor({"name": "B", "datatype": "BOOL", "shape": [2], "data": [True, False]}).rows == 2
    assert check_tensor({"name": "E", "datatype": "FP32", "shape": [0, 3], "data": []}).rows == 0


def test_model_answers_are_checked_against_the_rows_sent() -> None:
    good = orjson.dumps({"outputs": [_tensor()], "parameters": {"leak": 1}, "padding": "x"})
    assert parse_infer_response(good, "m", 2) == {"outputs": [_tensor()]}
    for body, words in [
        (orjson.dumps({"outputs": [_tensor()]}), "where 1 were sent"),
        (b"<html>", "not JSON"),
        (b"[1]", "no outputs"),
        (orjson.dumps({"outputs": []}), "no outputs"),
        (orjson.dumps({"outputs": [_tensor(), _tensor()]}), "twice"),
        (orjson.dumps({"outputs": [_tensor(data=[1, 2, 3, 4, 5])]}), "do not fill"),
    ]:
        with pytest.raises(UpstreamError, match=words) as raised:
            parse_infer_response(body, "m", 1 if "where 1" in words else 2)
        assert raised.value.status == 502


def test_assemble_refuses_parts_that_disagree() -> None:
    light = {"outputs": [{"name": "LABEL", "datatype": "INT64", "shape": [2, 1], "data": [1, 2]}]}
    heavy = {"outputs": [{"name": "LABEL", "datatype": "FP32", "shape": [1, 1], "data": [3.0]}]}
    wide = {"outputs": [{"name": "LABEL", "datatype": "INT64", "shape": [1, 2], "data": [3, 3]}]}
    for other in (heavy, wide, {"outputs": [{"name": "PROBS", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}):
        with pytest.raises(UpstreamError):
            assemble(2, [(light, [0, 1], "light"), (other, [1], "heavy")])


def test_protocol_level_refusals_are_json() -> None:
    raw = error_bytes(HeadersTooLarge("too big"))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and b"connection: close" in head
    assert json.loads(body) == {"error": "too big", "reason": "headers_too_large", "status": 431}
    busy = error_bytes(Overloaded("busy"))
    assert b"retry-after: 1" in busy and busy.count(b"connection: close") == 1


@pytest.mark.parametrize(("content", "words"), [
    ("", "is empty"), ("  \n", "is empty"), ("two words", "without spaces"),
])
def test_cli_refuses_a_bad_token_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  content: str, words: str) -> None:
    token = tmp_path / "token"
    token.write_text(content)
    config = tmp_path / "router.json"
    config.write_text(json.dumps({"pipeline": "p", "stages": [{"name": "s", "variants": {"m": 1}}],
                                  "upstreams": {"m": ["http://127.0.0.1:8000"]}}))

    code = main(["router", "--config", str(config), "--admin-token-file", str(token)])

    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("paretoserve: error: --admin-token-file:") and words in err


@pytest.mark.parametrize(("flags", "words"), [
    (["--admin-port", "70000"], "--admin-port"), (["--port", "9000", "--admin-port", "9000"], "must differ"),
    (["--max-body-bytes", "0"], "max_body_bytes"), (["--triton-url", "ftp://x"], "--triton-url"),
    (["--triton-url", "http://u:p@127.0.0.1:8000"], "credentials"),
])
def test_cli_refuses_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                               words: str) -> None:
    config = tmp_path / "router.json"
    config.write_text(json.dumps({"pipeline": "p", "stages": [{"name": "s", "variants": {"m": 1}}],
                                  "upstreams": {"m": ["http://127.0.0.1:8000"]}}))
    assert main(["router", "--config", str(config), *flags]) == 2
    assert words in capsys.readouterr().err


def test_the_local_runtime_holds_the_admin_token(tmp_path: Path) -> None:
    """`paretoserve up`: a fresh 0600 token file, and its `RouterAdmin` sends the token on every call."""
    import httpx

    from paretoserve.workers.runtime.actuator import RouterAdmin
    from paretoserve.workers.runtime.local import write_token

    path = tmp_path / "router-admin.token"
    token = write_token(path)
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text().strip() == token and len(token) >= 32
    assert write_token(path) != token  # a new one each start
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"pipeline": "p"})

    with RouterAdmin("http://127.0.0.1:8081", token="abc", transport=httpx.MockTransport(handler)) as admin:
        admin.get_config()
        admin.update({"stages": []})
    assert seen == ["Bearer abc", "Bearer abc"]
