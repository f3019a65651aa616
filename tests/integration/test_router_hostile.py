"""Hostile HTTP against a REAL ``paretoserve router`` process, in front of a scriptable stub upstream.

The security review's router fuzz (findings F1, F2, F6, F7, F13-F15, F20, F21, F23), kept as a
regression suite: every case is raw bytes on a fresh TCP connection to 127.0.0.1 (so smuggling,
oversized heads, slow clients and broken framing reach the router as written), with the exact status
expected. Every answer must be protocol JSON (``{"error": ...}`` for refusals) without the address of
an upstream, and after every case ``GET /v2/health/live`` must still answer 200. The upstream is
``router_loadgen stub --control`` (a fake Triton whose answers are bent on demand: short rows, bad
shapes, wrong datatypes, oversized or non-JSON answers, dropped connections, slowness).

Every test runs against two fronts (the ``router`` fixture's params): the Python router alone, and the
router with its compiled fast path on the data port (``--fastpath``, ``native/fastpath``), which must refuse
malformed or oversized HTTP itself, exactly as the Python guard does, for the requests it serves and for
those it passes behind alike, so the expectations are the same for both.

The router runs with small limits so the suite stays fast: 64 KiB bodies, 256 KiB upstream answers,
8 KiB heads, a 1 s read timeout, 2 s idle connections and 64 concurrent connections. Counts by
outcome, per front, are printed at the end (``-s``) and written to ``hostile-outcomes.json`` in the
front's temporary directory.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import pytest

TOKEN = "hostile-suite-token-0123456789"
PIPELINE = "p"
MAX_BODY = 64 * 1024
MAX_UPSTREAM = 256 * 1024
MAX_HEAD = 8 * 1024
READ_TIMEOUT_S = 1.0
KEEP_ALIVE_S = 2
RECYCLE_AFTER = 25
IO_TIMEOUT_S = 5.0
DEADLINE = "x-paretoserve-deadline-ms"
ROW = [round(0.01 * i, 2) for i in range(64)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Reply:
    status: int | None
    """``None``: the connection ended without an answer."""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _Parsed:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


def exchange(port: int, steps: list[tuple[bytes, float]], *, shut: bool = False) -> Reply:
    """Send ``(bytes, pause after)`` steps on a fresh connection; the first answer (or ``None``)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
    parsed = _Parsed()
    parser = httptools.HttpResponseParser(parsed)
    try:
        try:
            for data, pause in steps:
                if data:
                    sock.sendall(data)
                if pause:
                    time.sleep(pause)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the router may close first (a refusal); its answer is read below
        while not parsed.done:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            parser.feed_data(chunk)
    finally:
        sock.close()
    if not parsed.headers and not parsed.done:
        return Reply(None)
    return Reply(parser.get_status_code(), parsed.headers, b"".join(parsed.body))


def request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            *, length: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None and length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def tensor(rows: int = 1, **overrides: Any) -> dict[str, Any]:
    return {"name": "IMAGE", "shape": [rows, 8, 8], "datatype": "FP32", "data": ROW * rows, **overrides}


def infer(rows: int = 1, **extra: Any) -> bytes:
    return json.dumps({"inputs": [tensor(rows)], **extra}).encode()


GOOD = infer()
INFER = f"/v2/pipelines/{PIPELINE}/infer"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Case:
    name: str
    status: int | None
    steps: list[tuple[bytes, float]]
    admin: bool = False
    behaviours: dict[str, dict[str, Any]] = field(default_factory=dict)
    shut: bool = False
    json_body: bool = True
    topology: bool = False
    """The answer legitimately names upstreams (the authenticated ``GET /admin/config``)."""
    expect: dict[str, Any] = field(default_factory=dict)
    """Header or ``parameters`` values the answer must have."""


def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> list[tuple[bytes, float]]:
    return [(request("POST", path, body, headers), 0.0)]


def data(name: str, body: bytes, status: int = 400, headers: dict[str, str] | None = None, **kw: Any) -> Case:
    return Case(name, status, post(INFER, body, headers), **kw)


def raw(name: str, data_: bytes, status: int | None, **kw: Any) -> Case:
    return Case(name, status, [(data_, 0.0)], **kw)


def bad_input(case: str, /, **overrides: Any) -> Case:
    return data(case, json.dumps({"inputs": [tensor(**overrides)]}).encode())


def worker(name: str, payload: Any, status: int = 400, auth: bool = True) -> Case:
    return Case(name, status, post("/admin/worker", json.dumps(payload).encode(), AUTH if auth else None), admin=True)


def config(name: str, payload: Any, status: int = 400, auth: bool = True) -> Case:
    return Case(name, status, post("/admin/config", json.dumps(payload).encode(), AUTH if auth else None), admin=True,
                topology=status == 200)  # an accepted update answers the whole config


def upstream(name: str, status: int, behaviours: dict[str, dict[str, Any]], body: bytes = GOOD,
             headers: dict[str, str] | None = None, **kw: Any) -> Case:
    return data(name, body, status, headers, behaviours=behaviours, **kw)


def deadline(value: str, status: int = 400) -> Case:
    return data(f"deadline_{value.encode('unicode_escape').decode() or 'empty'}", GOOD, status, {DEADLINE: value})


def knobs(**values: Any) -> dict[str, Any]:
    return {"models": {"light": {"instanceCount": 1, **values}}}


def cases() -> list[Case]:
    head = b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n"
    big_header = "a" * (MAX_HEAD + 2048)
    return [
        # --- malformed bodies (F20): 400, never 500 -------------------------------------------------
        data("body_not_json", b"{not json"),
        data("body_empty", b""),
        data("body_array", b"[]"),
        data("body_string", b'"inputs"'),
        data("body_null", b"null"),
        data("body_number", b"5"),
        data("body_no_inputs", b"{}"),
        data("inputs_empty", b'{"inputs": []}'),
        data("inputs_object", b'{"inputs": {}}'),
        data("inputs_scalar_item", b'{"inputs": [1]}'),
        data("body_deep_nesting", b"[" * 5000 + b"]" * 5000),
        data("body_invalid_utf8", b'{"inputs": "\xff\xfe"}'),
        data("body_trailing_garbage", GOOD + b"xx"),
        bad_input("input_no_name", name=None),
        bad_input("input_name_number", name=5),
        bad_input("input_name_empty", name=""),
        bad_input("shape_missing", shape=None),
        bad_input("shape_empty", shape=[]),
        bad_input("shape_strings", shape=["1", "8", "8"]),
        bad_input("shape_negative", shape=[-1, 8, 8]),
        bad_input("shape_bool", shape=[True, 8, 8]),
        bad_input("shape_float", shape=[1.0, 8, 8]),
        bad_input("shape_40_dims", shape=[1] * 40, data=[1.0]),
        bad_input("shape_huge", shape=[10**12, 8, 8]),
        bad_input("data_missing", data=None),
        bad_input("data_string", data="abc"),
        bad_input("data_short", data=ROW[:63]),
        bad_input("data_long", data=[*ROW, 1.0]),
        bad_input("data_ragged_mixed", shape=[1, 4], data=[[1, 2], 3, 4]),
        bad_input("data_ragged_rows", shape=[2, 2], data=[[1, 2], [3]]),
        bad_input("data_nested_too_deep", shape=[1, 1], data=[[[1.0]]]),
        bad_input("data_strings", data=["0.1"] * 64),
        bad_input("data_nulls", data=[None] * 64),
        bad_input("data_bools", data=[True] * 64),
        bad_input("data_objects", data=[{}] * 64),
        bad_input("datatype_missing", datatype=None),
        bad_input("datatype_unknown", datatype="FP128"),
        bad_input("datatype_number", datatype=32),
        bad_input("int_tensor_with_floats", datatype="INT32"),
        bad_input("bytes_tensor_with_numbers", datatype="BYTES"),
        bad_input("binary_data_parameters", data=None, parameters={"binary_data_size": 256}),
        bad_input("batch_zero", shape=[0, 8, 8], data=[]),
        data("batch_mismatch", json.dumps({"inputs": [tensor(1), {**tensor(2), "name": "B"}]}).encode()),
        data("outputs_not_a_list", infer(outputs="LABEL")),
        data("outputs_item_without_name", infer(outputs=[{"nam": "LABEL"}])),
        data("outputs_name_number", infer(outputs=[{"name": 5}])),
        data("id_not_a_string", infer(id={"x": 1})),
        data("outputs_unknown_name", infer(outputs=[{"name": "NOPE"}])),
        # --- deadline headers (F7, F21) ----------------------------------------------------------
        *[deadline(value) for value in ("abc", "-100", "-0", "1e308", "1_000", "nan", "inf", "0x10", "",
                                        "1.2345", "1234567890", "+5", "5.", ".5", "12ms", "1,5")],
        data("deadline_twice", GOOD, 400, {DEADLINE: "250", DEADLINE.upper(): "abc"}),
        raw("deadline_utf8_digits", request("POST", INFER, GOOD).replace(
            b"Host: 127.0.0.1\r\n", f"Host: 127.0.0.1\r\n{DEADLINE}: ".encode() + "１２".encode() + b"\r\n"), 400),
        deadline("0", 504),
        deadline("999999999", 200),
        deadline("250", 200),
        deadline("12.5", 200),
        # --- sizes, framing, slow clients (F6, F15) --------------------------------------------------
        raw("content_length_1e12", head + b"Content-Length: 1000000000000\r\n\r\n", 413,
            expect={"connection": "close"}),
        raw("content_length_over_limit", head + f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode(), 413),
        raw("expect_100_continue_over_limit",
            head + f"Expect: 100-continue\r\nContent-Length: {MAX_BODY * 4}\r\n\r\n".encode(), 413),
        raw("chunked_body_over_limit",
            head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % (MAX_BODY + 1) + b" " * (MAX_BODY + 1), 413),
        raw("content_length_overflow", head + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
        raw("content_length_negative", head + b"Content-Length: -1\r\n\r\n", 400),
        raw("content_length_alpha", head + b"Content-Length: abc\r\n\r\n", 400),
        raw("content_length_plus", head + b"Content-Length: +2\r\n\r\n{}", 400),
        raw("content_length_twice_differing", head + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x", 400),
        raw("smuggling_cl_and_te", head + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        raw("smuggling_te_gzip", head + b"Transfer-Encoding: gzip\r\n\r\nabc", 400),
        raw("smuggling_te_identity", head + b"Transfer-Encoding: identity\r\nContent-Length: 2\r\n\r\n{}", 400),
        raw("chunk_size_not_hex", head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
        raw("obsolete_line_folding", head + b"X-A: a\r\n b\r\nContent-Length: 2\r\n\r\n{}", 400),
        raw("nul_in_header", head + b"X-A: a\x00b\r\nContent-Length: 2\r\n\r\n{}", 400),
        raw("bare_lf_line_endings", b"GET /v2/health/live HTTP/1.1\nHost: x\n\n", 400),
        raw("space_before_colon", b"GET /v2/health/live HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        raw("garbage_request_line", b"GARBAGE\r\n\r\n", 400),
        raw("http2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        raw("unknown_method", b"FOO /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        raw("non_ascii_path", "GET /v2/health/lïve HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400),
        raw("header_over_limit", head + f"X-Big: {big_header}\r\nContent-Length: 2\r\n\r\n{{}}".encode(), 431),
        raw("many_headers", head + "".join(f"X-H{i}: {'v' * 16}\r\n" for i in range(600)).encode()
            + b"Content-Length: 2\r\n\r\n{}", 431),
        raw("url_over_limit", b"GET /v2/" + b"a" * (MAX_HEAD + 100) + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
        Case("endless_header_line", 431, [(head + b"X-Endless: ", 0.0)]
             + [(b"a" * 2048, 0.002) for _ in range(2 * MAX_HEAD // 2048)]),
        Case("slow_body", 408, [(head + b"Content-Length: 100\r\n\r\n{\"in", 0.0)]),
        Case("slow_head", 408, [(head, 0.0)]),
        Case("idle_connection_closed_silently", None, [(b"", 0.0)]),
        Case("trickled_head", 408, [(head[:i + 1][-1:], 0.3) for i in range(4)]),
        Case("body_shorter_than_declared_then_close", None, [(head + b"Content-Length: 1000\r\n\r\n{\"inp", 0.0)],
             shut=True),
        # --- routing and the data listener (F1, F23) ----------------------------------------------
        Case("unknown_pipeline", 404, post("/v2/pipelines/nope/infer", GOOD)),
        Case("unknown_model", 404, post("/v2/models/nope/infer", GOOD)),
        Case("proxy_bad_deadline", 400, post("/v2/models/light/infer", GOOD, {DEADLINE: "-1"})),
        raw("proxy_content_length_over_limit",
            f"POST /v2/models/light/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode(), 413),
        raw("path_traversal", b"GET /v2/../admin/config HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        Case("encoded_path_traversal", 404, post("/v2/models/..%2F..%2Fadmin/infer", GOOD)),
        Case("dot_segments_model", 404, post("/v2/models/../../admin/worker/infer", GOOD)),
        raw("nul_in_path", b"GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        raw("admin_config_on_data_port", b"GET /admin/config HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        Case("admin_config_post_on_data_port_with_token", 404,
             post("/admin/config", b'{"upstreams": {"light": ["http://attacker.example"]}}', AUTH)),
        Case("admin_worker_on_data_port", 404, post("/admin/worker", json.dumps(knobs()).encode(), AUTH)),
        raw("metrics_on_data_port", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        Case("triton_load_api_on_data_port", 404, post("/v2/repository/models/light/load", b"{}")),
        # --- compressed and binary bodies (KServe v2 wire forms) ---------------------------------------
        data("gzip_bomb", gzip.compress(b"0" * (16 * MAX_BODY)), 413, {"content-encoding": "gzip"}),
        data("gzip_not_gzip", b"{not gzip", 400, {"content-encoding": "gzip"}),
        data("encoding_unknown", GOOD, 415, {"content-encoding": "compress"}),
        data("binary_header_length_past_the_body", GOOD, 400, {"inference-header-content-length": "99999"}),
        data("binary_size_past_the_body", b'{"inputs":[{"name":"IMAGE","shape":[1,8,8],"datatype":"FP32",'
             b'"parameters":{"binary_data_size":1000000}}]}', 400, {"inference-header-content-length": "105"}),
        raw("model_name_with_dot_segments", b"GET /v2/models/..%2F..%2Fadmin/config HTTP/1.1\r\nHost: x\r\n\r\n",
            404),
        # a model's config is readable (KServe v2 model configuration, as Triton serves it) but not writable
        Case("triton_config_write_on_data_port", 405, post("/v2/models/light/config", b"{}")),
        Case("triton_unload_api_on_data_port", 404, post("/v2/repository/models/light/unload", b"{}")),
        raw("triton_repository_index_on_data_port", b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 0\r\n\r\n", 404),
        raw("get_on_infer", f"GET {INFER} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 405, expect={"allow": "POST"}),
        raw("put_on_health", b"PUT /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        raw("absolute_form_target_is_served_locally",
            b"GET http://attacker.example/v2/health/live HTTP/1.1\r\nHost: attacker.example\r\n\r\n", 200),
        # --- the admin listener (F1, F2) ---------------------------------------------------------------
        Case("admin_get_config_without_token", 401, [(request("GET", "/admin/config"), 0.0)], admin=True,
             expect={"www-authenticate": "Bearer"}),
        Case("admin_wrong_token", 401, [(request("GET", "/admin/config", None, {"Authorization": "Bearer x"}), 0.0)],
             admin=True),
        Case("admin_basic_auth", 401,
             [(request("GET", "/admin/config", None, {"Authorization": f"Basic {TOKEN}"}), 0.0)], admin=True),
        Case("admin_empty_bearer", 401,
             [(request("GET", "/admin/config", None, {"Authorization": "Bearer "}), 0.0)], admin=True),
        Case("admin_token_with_suffix", 401,
             [(request("GET", "/admin/config", None, {"Authorization": f"Bearer {TOKEN}x"}), 0.0)], admin=True),
        Case("admin_token_truncated", 401,
             [(request("GET", "/admin/config", None, {"Authorization": f"Bearer {TOKEN[:-1]}"}), 0.0)], admin=True),
        config("admin_redirect_without_token", {"upstreams": {"heavy": ["http://127.0.0.1:18011"]}}, 401, auth=False),
        worker("admin_worker_without_token", knobs(), 401, auth=False),
        worker("worker_triton_url_in_body", {**knobs(), "tritonUrl": "http://127.0.0.1:18011"}),
        worker("worker_grpc_url_in_body", {**knobs(), "tritonGrpcUrl": "127.0.0.1:18012"}),
        worker("worker_load_protocol_in_body", {**knobs(), "loadProtocol": "http"}),
        worker("worker_unknown_model", {"models": {"nope": {"instanceCount": 1}}}),
        worker("worker_model_not_on_own_triton", {"models": {"remote": {"instanceCount": 1}}}),
        worker("worker_model_path_injection", {"models": {"../../repository/index?x=": {"instanceCount": 1}}}),
        worker("worker_model_with_slash", {"models": {"light/../heavy": {"instanceCount": 1}}}),
        worker("worker_model_name_65_chars", {"models": {"l" * 65: {"instanceCount": 1}}}),
        worker("worker_instances_1e6", knobs(instanceCount=1_000_000)),
        worker("worker_instances_65", knobs(instanceCount=65)),
        worker("worker_instances_0", knobs(instanceCount=0)),
        worker("worker_instances_string", knobs(instanceCount="2")),
        worker("worker_batch_5000", knobs(preferredBatchSize=5000)),
        worker("worker_queue_delay_1e9", knobs(maxQueueDelayMicroseconds=10**9)),
        worker("worker_queue_delay_negative", knobs(maxQueueDelayMicroseconds=-1)),
        worker("worker_models_a_list", {"models": ["light"]}),
        worker("worker_unknown_knob", knobs(threads=4)),
        worker("worker_body_array", [1]),
        Case("admin_body_over_1mib", 413, [(request("POST", "/admin/config", None, {
            **AUTH, "Content-Length": str(1024 * 1024 + 1)}), 0.0)], admin=True),
        Case("admin_body_not_json", 400, post("/admin/config", b"{nope", AUTH), admin=True),
        config("config_ftp_upstream", {"upstreams": {"light": ["ftp://127.0.0.1:21"]}}),
        config("config_upstream_with_userinfo", {"upstreams": {"light": ["http://user:pw@127.0.0.1:80"]}}),
        config("config_upstream_with_query", {"upstreams": {"light": ["http://127.0.0.1:80/?x=1"]}}),
        config("config_upstream_with_fragment", {"upstreams": {"light": ["http://127.0.0.1:80#x"]}}),
        config("config_upstream_new_port", {"upstreams": {"light": ["http://127.0.0.1:18011"]}}),
        config("config_upstream_attacker_host", {"upstreams": {"heavy": ["http://attacker.example"]}}),
        config("config_upstream_without_host", {"upstreams": {"light": ["http://"]}}),
        config("config_upstream_crlf", {"upstreams": {"light": ["http://127.0.0.1:80\r\nX: y"]}}),
        config("config_upstreams_not_an_object", {"upstreams": ["http://127.0.0.1:80"]}),
        config("config_pipeline_rename", {"pipeline": "other"}),
        config("config_threshold_3", {"stages": [{"name": "classify", "cascade": {"threshold": 3}}]}),
        config("config_unknown_stage", {"stages": [{"name": "nope", "cascade": {"threshold": 0.5}}]}),
        Case("admin_unknown_path", 404, [(request("GET", "/admin/secrets", None, AUTH), 0.0)], admin=True),
        Case("inference_on_admin_port", 404, post(INFER, GOOD, AUTH), admin=True),
        Case("admin_worker_get", 405, [(request("GET", "/admin/worker", None, AUTH), 0.0)], admin=True),
        worker("worker_valid_knobs_with_token", knobs(instanceCount=2), 200),
        config("config_valid_threshold_with_token", {"stages": [{"name": "classify", "cascade": {"threshold": 0.5}}]},
               200),
        Case("admin_get_config_with_token", 200, [(request("GET", "/admin/config", None, AUTH), 0.0)], admin=True,
             topology=True),
        Case("metrics_without_token", 200, [(request("GET", "/metrics"), 0.0)], admin=True, json_body=False),
        # --- malformed upstream answers (F13, F14, F20, F23) ------------------------------------------
        upstream("light_short_rows", 502, {"light": {"rowsDelta": -1}}, infer(2)),
        upstream("light_extra_rows", 502, {"light": {"rowsDelta": 1}}, infer(2)),
        upstream("light_shape_does_not_match_data", 502, {"light": {"shapeRows": 3}}, infer(2)),
        upstream("light_no_outputs", 502, {"light": {"drop": ["PROBS", "CONFIDENCE", "LABEL"]}}),
        upstream("light_not_json", 502, {"light": {"kind": "raw", "status": 200, "body": "<html>oops"}}),
        upstream("light_json_array", 502, {"light": {"kind": "raw", "status": 200, "body": "[]"}}),
        upstream("light_outputs_not_a_list", 502, {"light": {"kind": "raw", "status": 200,
                                                             "body": '{"outputs": {"PROBS": 1}}'}}),
        upstream("light_strings_as_scores", 502, {"light": {"strings": "CONFIDENCE"}}),
        upstream("light_unknown_datatype", 502, {"light": {"datatypes": {"PROBS": "FP128"}}}),
        upstream("light_answer_over_limit", 502, {"light": {"padBytes": MAX_UPSTREAM + 1024}}),
        upstream("light_rejects_input", 400, {"light": {"kind": "raw", "status": 400,
                                                        "body": '{"error": "bad input at 10.9.8.7:8000"}'}}),
        upstream("light_and_heavy_500_naming_hosts", 503, {
            "light": {"kind": "raw", "status": 500, "body": '{"error": "http://10.1.2.3:8000/x crashed"}'},
            "heavy": {"kind": "raw", "status": 500, "body": '{"error": "db-1.internal.svc:5432 down"}'}}),
        upstream("light_drops_connection_fallback_heavy", 200, {"light": {"kind": "close"}},
                 expect={"fallback": True}),
        upstream("light_not_http_fallback_heavy", 200, {"light": {"kind": "garbage"}}, expect={"fallback": True}),
        upstream("light_429_fallback_heavy", 200, {"light": {"kind": "raw", "status": 429, "body": "{}"}},
                 expect={"fallback": True}),
        upstream("heavy_short_rows", 502, {"light": {"confidence": 0.1}, "heavy": {"rowsDelta": -1}}, infer(2)),
        upstream("heavy_label_datatype_differs", 502, {"light": {"confidence": 0.1},
                                                       "heavy": {"datatypes": {"LABEL": "FP32"}}}),
        upstream("heavy_lacks_an_output", 502, {"light": {"confidence": 0.1}, "heavy": {"drop": ["LABEL"]}}),
        upstream("heavy_answer_over_limit", 502, {"light": {"confidence": 0.1},
                                                  "heavy": {"padBytes": MAX_UPSTREAM + 1024}}),
        upstream("upstream_parameters_not_relayed", 200, {"light": {"parameters": {"secret": "upstream-secret"},
                                                                    "padBytes": 1000}}),
        upstream("slow_upstream_past_deadline", 504, {"light": {"delayS": 1.0}}, headers={DEADLINE: "200"}),
    ]


CASES = cases()
FRONTS = ("python", "fastpath")
OUTCOMES: dict[str, Counter[str]] = {front: Counter() for front in FRONTS}
"""Counts by outcome, per front."""


@dataclass
class Router:
    port: int
    admin_port: int
    stub_port: int
    log: Path
    front: str = "python"

    @property
    def outcomes(self) -> Counter[str]:
        return OUTCOMES[self.front]

    def hosts(self) -> list[str]:
        """Internal addresses no client-facing answer may name."""
        return [f"127.0.0.1:{self.stub_port}", f"localhost:{self.stub_port}", "10.1.2.3", "db-1.internal",
                "10.9.8.7"]


def _wait(port: int, path: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if exchange(port, [(request("GET", path), 0.0)]).status is not None:
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"nothing answered on {port}{path}: {log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module", params=FRONTS)
def router(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """The router with the Python data listener alone, or with the compiled fast path in front of it."""
    front: str = request.param
    fastpath: list[str] = []
    if front == "fastpath":
        fastpath = ["--fastpath", str(request.getfixturevalue("fastpath_binary"))]
    work = tmp_path_factory.mktemp(f"hostile-{front}")
    stub_port, port, admin_port = _free_port(), _free_port(), _free_port()
    stub_url = f"http://127.0.0.1:{stub_port}"
    (work / "router.json").write_text(json.dumps({
        "pipeline": PIPELINE,
        "stages": [{"name": "classify", "cascade": {"light": "light", "heavy": "heavy", "threshold": 0.5}}],
        "upstreams": {"light": [stub_url], "heavy": [stub_url], "remote": ["http://127.0.0.1:9"]},
        "timeouts": {"readMs": 3000, "connectMs": 500},
    }))
    token = work / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    stub_log, router_log = work / "stub.log", work / "router.log"
    with stub_log.open("wb") as out:
        stub = subprocess.Popen([sys.executable, "-I", "-m", "paretoserve.research.benchmarks.router_loadgen", "stub",
                                 "--port", str(stub_port), "--control"], stdout=out, stderr=subprocess.STDOUT)
    with router_log.open("wb") as out:
        process = subprocess.Popen([
            sys.executable, "-I", "-m", "paretoserve", "router", "--config", str(work / "router.json"),
            "--port", str(port), "--admin-port", str(admin_port), "--admin-token-file", str(token),
            "--triton-url", stub_url, "--triton-load-protocol", "http",
            "--max-body-bytes", str(MAX_BODY), "--max-upstream-bytes", str(MAX_UPSTREAM),
            "--max-header-bytes", str(MAX_HEAD), "--read-timeout-s", str(READ_TIMEOUT_S),
            "--keep-alive-s", str(KEEP_ALIVE_S), "--limit-concurrency", "64", "--max-deadline-ms", "60000",
            "--max-requests-per-connection", str(RECYCLE_AFTER), "--log-level", "warning", *fastpath,
        ], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(stub_port, "/stub/log", stub, stub_log)
        _wait(port, "/v2/health/live", process, router_log)
        yield Router(port, admin_port, stub_port, router_log, front)
        assert process.poll() is None, router_log.read_text()[-3000:]
    finally:
        _stop(process)
        _stop(stub)
        (work / "hostile-outcomes.json").write_text(json.dumps(dict(OUTCOMES[front]), indent=2, sort_keys=True))


def _behave(router: Router, model: str, behaviour: dict[str, Any]) -> None:
    reply = exchange(router.stub_port, post(f"/stub/behaviour/{model}", json.dumps(behaviour).encode()))
    assert reply.status == 200


def _outcome(status: int | None) -> str:
    if status is None:
        return "closed without an answer"
    return {2: "2xx", 4: "4xx", 5: "5xx"}.get(status // 100, "other") + f" ({status})"


def test_the_suite_has_enough_distinct_cases() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) and len(names) >= 100


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_request(router: Router, case: Case) -> None:
    for model, behaviour in case.behaviours.items():
        _behave(router, model, {"kind": "echo", **behaviour})
    try:
        reply = exchange(router.admin_port if case.admin else router.port, case.steps, shut=case.shut)
    finally:
        for model in case.behaviours:
            _behave(router, model, {"kind": "echo"})
    router.outcomes[_outcome(reply.status)] += 1
    assert reply.status == case.status, (reply.status, reply.body[:300])
    if reply.status is not None and case.json_body:
        assert reply.headers.get("content-type") == "application/json", reply.headers
        body = json.loads(reply.body)
        assert isinstance(body, dict)
        if reply.status >= 400:
            assert isinstance(body.get("error"), str) and body["error"] and body.get("status") == reply.status
        if "fallback" in case.expect:
            assert body["parameters"]["fallback"] is case.expect["fallback"]
        if reply.status == 200 and case.name.startswith(("deadline", "upstream_parameters", "light_")):
            assert set(body) == {"model_name", "outputs", "parameters"}, body.keys()
    text = reply.body.decode("utf-8", "replace")
    if not case.topology:
        for host in router.hosts():
            assert host not in text, (host, text[:300])
    assert "upstream-secret" not in text
    for name, value in case.expect.items():
        if name != "fallback":
            assert reply.headers.get(name) == value, reply.headers
    live = exchange(router.port, [(request("GET", "/v2/health/live"), 0.0)])
    assert live.status == 200, f"the router stopped answering after {case.name}"


def test_a_long_lived_connection_is_recycled_after_its_quota_of_requests(router: Router) -> None:
    """A Service balances connections: the router closes a keep-alive connection after RECYCLE_AFTER requests
    (with ``Connection: close`` on the last answer), so a long-lived client also reaches replicas added later."""
    connection = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    try:
        answers = []
        for _ in range(RECYCLE_AFTER + 2):
            connection.request("GET", "/v2/health/live")
            response = connection.getresponse()
            response.read()
            answers.append((response.status, (response.getheader("connection") or "").lower()))
    finally:
        connection.close()
    assert [status for status, _ in answers] == [200] * (RECYCLE_AFTER + 2)
    closing = [i + 1 for i, (_, header) in enumerate(answers) if header == "close"]
    assert closing == [RECYCLE_AFTER]  # the next connection starts counting afresh


def test_unauthenticated_changes_were_not_applied(router: Router) -> None:
    reply = exchange(router.admin_port, [(request("GET", "/admin/config", None, AUTH), 0.0)])
    current = json.loads(reply.body)
    stub = f"http://127.0.0.1:{router.stub_port}"
    assert current["upstreams"] == {"light": [stub], "heavy": [stub], "remote": ["http://127.0.0.1:9"]}
    log = json.loads(exchange(router.stub_port, [(request("GET", "/stub/log"), 0.0)]).body)
    loads = [line for line in log if "/repository/" in line]
    assert loads == ["POST /v2/repository/models/light/load"]  # only the authenticated, valid one


def test_a_flood_gets_answers_or_explicit_refusals(router: Router) -> None:
    _behave(router, "light", {"kind": "echo", "delayS": 0.3})
    replies: list[Reply] = []
    lock = threading.Lock()

    def one() -> None:
        reply = exchange(router.port, post(INFER, GOOD))
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=one) for _ in range(150)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        _behave(router, "light", {"kind": "echo"})
    statuses = Counter(reply.status for reply in replies)
    for status, count in statuses.items():
        router.outcomes[f"flood: {_outcome(status)}"] += count
    assert len(replies) == 150 and set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0 and statuses[200] >= 32, statuses
    refusals = [json.loads(r.body) for r in replies if r.status == 503]
    assert all(body["reason"] == "overloaded" for body in refusals)
    assert exchange(router.port, [(request("GET", "/v2/health/live"), 0.0)]).status == 200


def test_slowloris_clients_do_not_move_the_deadline_gauge(router: Router) -> None:
    socks = []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", router.port), timeout=IO_TIMEOUT_S)
            sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\n{DEADLINE}: 1\r\nContent-Length: 500\r\n\r\n{{".encode())
            socks.append(sock)
        time.sleep(0.3)
        metrics = exchange(router.admin_port, [(request("GET", "/metrics"), 0.0)]).body.decode()
        gauge = [line for line in metrics.splitlines()
                 if line.startswith("paretoserve_router_min_deadline_remaining_ms{")]
        assert gauge == [], gauge
        answers = []
        for sock in socks:
            sock.settimeout(READ_TIMEOUT_S * 4)
            answers.append(sock.recv(4096).split(b"\r\n", 1)[0])
        router.outcomes["slowloris: 4xx (408)"] += answers.count(b"HTTP/1.1 408 Request Timeout")
        assert set(answers) == {b"HTTP/1.1 408 Request Timeout"}
    finally:
        for sock in socks:
            sock.close()


def test_zz_counts_by_outcome(router: Router, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last for each front (the module's tests are grouped by the ``router`` param): its own totals."""
    outcomes = router.outcomes
    with capsys.disabled():
        print(f"\nhostile router suite ({router.front} front), counts by outcome:")
        for outcome, count in sorted(outcomes.items()):
            print(f"  {outcome:40s} {count}")
    assert sum(count for outcome, count in outcomes.items() if ":" not in outcome) >= 100
