"""The one observation path: the metric contract, the PromQL, the NaN rule and `PrometheusSource` (no sockets)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from paretoserve.planner.control import Observed
from paretoserve.workers.observe import contract
from paretoserve.workers.observe.prometheus import PrometheusSource
from paretoserve.workers.observe.queries import (
    MetricsUnavailable,
    NoLoadSamples,
    Selector,
    by_label,
    deadline_query,
    load_history,
    load_query,
    observation,
    queue_delay_query,
    range_params,
    result_of,
    scalar,
    worst_per_stage,
)
from paretoserve.workers.router.metrics import RouterMetrics

REPO = Path(__file__).resolve().parents[2]
NS_P = Selector("p", "ns")
STAGES = {"detect": ["yolo_s", "yolo_l"], "classify": ["cnn_large"], "idle": ["mlp_small"]}


def matrix(*values: tuple[float, str]) -> dict[str, Any]:
    """A `/api/v1/query_range` answer as Prometheus sends it (values are strings)."""
    return {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {}, "values": [[t, v] for t, v in values]}]}}


def vector(*series: tuple[dict[str, str], str], at: float = 1700000000.5) -> dict[str, Any]:
    """A `/api/v1/query` answer (instant vector)."""
    return {"status": "success", "data": {"resultType": "vector",
                                          "result": [{"metric": m, "value": [at, v]} for m, v in series]}}


EMPTY_MATRIX: dict[str, Any] = {"status": "success", "data": {"resultType": "matrix", "result": []}}
BAD_DATA = {"status": "error", "errorType": "bad_data", "error": '1:10: parse error: unexpected "}"'}


# --- the contract -----------------------------------------------------------------------------------


def _contract_names() -> set[str]:
    return {value for name, value in vars(contract).items()
            if name.isupper() and isinstance(value, str) and value.startswith(("paretoserve_", "nv_"))}


def test_the_router_exposes_exactly_the_contracts_router_families() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics("digits", registry, lambda: (2, 40.0))
    metrics.request_started()
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
                if not f.name.endswith("_created")}
    router = {n for n in _contract_names() if n.startswith("paretoserve_") and "operator" not in n}
    assert set(families) == router
    assert {contract.PIPELINE} <= set(families[contract.PIPELINE_REQUESTS].samples[0].labels)
    labels = {label for f in families.values() for s in f.samples for label in s.labels if label != "le"}
    assert labels <= {contract.PIPELINE, contract.STAGE, contract.MODEL, contract.ROUTE, contract.REASON}


def test_the_dashboard_queries_only_contract_metrics() -> None:
    dashboard = json.loads((REPO / "charts/paretoserve/files/grafana-dashboard.json").read_text())
    exprs = re.findall(r'"expr":\s*"((?:[^"\\]|\\.)*)"', json.dumps(dashboard))
    used = {m for e in exprs for m in re.findall(r"\b(?:paretoserve|nv)_[a-z_]+", e)}
    known = _contract_names()
    suffixed = {f"{n}{s}" for n in known for s in ("", "_total", "_bucket", "_sum", "_count")}
    assert exprs and used and used <= suffixed, used - suffixed


# --- PromQL -----------------------------------------------------------------------------------------


def test_queries_for_a_pipeline_in_a_namespace() -> None:
    assert str(NS_P) == '{namespace="ns",pipeline="p"}'
    assert load_query(NS_P, 30) == 'sum(rate(paretoserve_pipeline_requests_total{namespace="ns",pipeline="p"}[30s]))'
    assert queue_delay_query(NS_P, 30) == (
        'sum by (model) (rate(nv_inference_queue_duration_us{namespace="ns",pipeline="p"}[30s])) / '
        'sum by (model) (rate(nv_inference_request_success{namespace="ns",pipeline="p"}[30s])) / 1000')
    assert deadline_query(NS_P) == 'min(paretoserve_router_min_deadline_remaining_ms{namespace="ns",pipeline="p"})'


def test_local_selector_has_no_namespace_and_label_values_are_escaped() -> None:
    assert load_query(Selector("digits"), 5) == 'sum(rate(paretoserve_pipeline_requests_total{pipeline="digits"}[5s]))'
    assert str(Selector('a"b\\c')) == r'{pipeline="a\"b\\c"}'


def test_range_covers_the_window_and_at_least_one_step() -> None:
    assert range_params(1000.0, window_s=60, step_s=5) == {"start": "940.000", "end": "1000.000", "step": "5s"}
    assert range_params(1000.25, window_s=2, step_s=5)["start"] == "995.250"


# --- the one NaN rule -------------------------------------------------------------------------------


def test_range_steps_become_per_second_samples_and_non_finite_is_no_load() -> None:
    answer = matrix((0, "2.5"), (5, "NaN"), (10, "+Inf"), (15, "-Inf"), (20, "4"))
    assert load_history(answer, step_s=5, window_s=100) == (2.5,) * 5 + (0.0,) * 15 + (4.0,) * 5
    assert load_history(answer, step_s=5, window_s=7) == (0.0, 0.0) + (4.0,) * 5  # newest `window_s`
    assert load_history(matrix((0, "1"), (1, "2")), step_s=1, window_s=60) == (1.0, 2.0)
    assert load_history(EMPTY_MATRIX, step_s=5, window_s=60) == ()


def test_non_finite_instant_values_are_absent() -> None:
    answer = vector(({"model": "a"}, "1.5"), ({"model": "b"}, "NaN"), ({"model": "c"}, "+Inf"), ({}, "3"))
    assert by_label(answer, "model") == {"a": 1.5}
    assert scalar(vector(({}, "NaN"))) is None
    assert scalar(vector(({}, "-Inf"))) is None
    assert scalar(vector(({}, "80.5"))) == 80.5
    assert scalar(vector()) is None


# --- answers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "message"), [
    (BAD_DATA, "bad_data: 1:10: parse error"),
    ({"status": "error", "errorType": "timeout", "error": "query timed out"}, "timeout: query timed out"),
    ({"status": "success", "data": {"resultType": "matrix"}}, "malformed"),
    ({"status": "success"}, "malformed"),
    ([1, 2], "not a Prometheus API answer"),
    (vector(({}, "many")), "malformed sample value 'many'"),
    ({"status": "success", "data": {"result": [{"metric": {}, "value": [1]}]}}, "malformed sample"),
])
def test_error_and_malformed_answers_are_unavailable_metrics(answer: Any, message: str) -> None:
    with pytest.raises(MetricsUnavailable, match=re.escape(message)):
        scalar(answer)


def test_range_answer_with_a_malformed_values_list() -> None:
    with pytest.raises(MetricsUnavailable, match="values"):
        load_history({"status": "success", "data": {"result": [{"metric": {}, "values": "x"}]}}, step_s=1, window_s=5)
    assert result_of({"status": "success", "warnings": ["w"], "data": {"result": []}}) == []


def test_stage_delay_is_the_worst_model_less_its_batching_wait() -> None:
    per_model = {"yolo_s": 2.0, "yolo_l": 7.5, "cnn_large": 1.0, "other": 99.0}
    assert worst_per_stage(per_model, STAGES) == {"detect": 7.5, "classify": 1.0}  # idle: no evidence
    wait = {"yolo_l": 6.0, "cnn_large": 3.0}
    assert worst_per_stage(per_model, STAGES, lambda m: wait.get(m, 0.0)) == {"detect": 2.0, "classify": 0.0}
    assert worst_per_stage({"m": 1.23456}, {"a": ["m"], "b": ["m"]}) == {"a": 1.235, "b": 1.235}


def test_observation_from_three_answers() -> None:
    observed = observation(
        matrix((0, "3"), (5, "NaN")),
        vector(({"model": "yolo_l"}, "4.25"), ({"model": "yolo_s"}, "NaN"), ({"model": "cnn_large"}, "0.5")),
        vector(({}, "120")), selector=NS_P, stage_models=STAGES, step_s=5, window_s=10)
    assert observed == Observed(load_history=(3.0,) * 5 + (0.0,) * 5,
                                queue_delay_ms={"detect": 4.25, "classify": 0.5}, min_remaining_budget_ms=120.0)


def test_no_load_samples_is_its_own_unavailability() -> None:
    series = 'paretoserve_pipeline_requests_total{namespace="ns",pipeline="p"}'
    with pytest.raises(NoLoadSamples, match=re.escape(series)):
        observation(EMPTY_MATRIX, vector(), vector(), selector=NS_P, stage_models=STAGES, step_s=5, window_s=10)
    assert issubclass(NoLoadSamples, MetricsUnavailable)


# --- PrometheusSource -------------------------------------------------------------------------------


class FakePrometheus:
    """A MockTransport handler answering the three queries and recording every request."""

    def __init__(self, load: Any = None, queue: Any = None, deadline: Any = None, status: int = 200) -> None:
        self.load = matrix((940, "1"), (945, "2")) if load is None else load
        self.queue = vector(({"model": "yolo_l"}, "2.5")) if queue is None else queue
        self.deadline = vector(({}, "80")) if deadline is None else deadline
        self.status = status
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        query = request.url.params["query"]
        body = (self.load if request.url.path.endswith("query_range")
                else self.queue if contract.TRITON_QUEUE_DURATION in query else self.deadline)
        return httpx.Response(self.status, json=body)


def test_source_sends_the_three_queries_and_builds_the_observation() -> None:
    prom = FakePrometheus()
    with PrometheusSource("http://prom:9090/", "p", namespace="ns", stage_models=STAGES, window_s=60, step_s=5,
                          rate_window_s=30, transport=httpx.MockTransport(prom)) as source:
        observed = source.observe(1000.0)
    assert observed == Observed(load_history=(1.0,) * 5 + (2.0,) * 5, queue_delay_ms={"detect": 2.5},
                                min_remaining_budget_ms=80.0)
    sent = [(r.method, r.url.path, dict(r.url.params)) for r in prom.requests]
    assert sent == [
        ("GET", "/api/v1/query_range", {"query": load_query(NS_P, 30), "start": "940.000", "end": "1000.000",
                                        "step": "5s"}),
        ("GET", "/api/v1/query", {"query": queue_delay_query(NS_P, 30), "time": "1000.000"}),
        ("GET", "/api/v1/query", {"query": deadline_query(NS_P), "time": "1000.000"}),
    ]
    assert all(r.url.host == "prom" and r.url.port == 9090 for r in prom.requests)


def test_local_settings_per_second_steps_and_batching_wait() -> None:
    prom = FakePrometheus(load=matrix((95, "1"), (96, "NaN"), (97, "3")))
    source = PrometheusSource("http://127.0.0.1:9090/prefix", "digits", stage_models=STAGES, window_s=2, step_s=1,
                              rate_window_s=5, batching_delay_ms=lambda m: 0.5, transport=httpx.MockTransport(prom))
    with source:
        assert source.observe(100.0) == Observed(load_history=(0.0, 3.0), queue_delay_ms={"detect": 2.0},
                                                 min_remaining_budget_ms=80.0)
    assert prom.requests[0].url.path == "/prefix/api/v1/query_range"
    assert prom.requests[0].url.params["query"] == load_query(Selector("digits"), 5)
    assert prom.requests[0].url.params["start"] == "98.000"


def test_an_error_answer_keeps_prometheus_message_and_names_the_server() -> None:
    source = PrometheusSource("http://prom:9090", "p", stage_models={}, window_s=10,
                              transport=httpx.MockTransport(FakePrometheus(load=BAD_DATA, status=400)))
    with source, pytest.raises(MetricsUnavailable, match=r"http://prom:9090/api/v1/query_range: HTTP 400: bad_data"):
        source.observe(1000.0)


@pytest.mark.parametrize(("handler", "cause"), [
    (lambda r: httpx.Response(502, text="<html>bad gateway</html>"), "HTTP 502"),
    (lambda r: httpx.Response(200, text="not json"), "JSONDecodeError"),
    (lambda r: httpx.Response(200, json=EMPTY_MATRIX), "no request-rate samples"),
    (lambda r: httpx.Response(200, json={"status": "success", "data": {}}), "malformed"),
])
def test_http_and_json_failures_are_unavailable_metrics(handler: Any, cause: str) -> None:
    with PrometheusSource("http://prom:9090", "p", stage_models={}, window_s=10,
                          transport=httpx.MockTransport(handler)) as source, \
            pytest.raises(MetricsUnavailable, match=re.escape(cause)) as raised:
        source.observe(1000.0)
    assert "Prometheus at http://prom:9090" in str(raised.value)


def test_credentials_are_sent_but_never_shown() -> None:
    seen: list[httpx.Request] = []

    def down(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise httpx.ConnectError("refused by https://admin:s3cret@prom.example", request=request)

    source = PrometheusSource("https://admin:s3cret@prom.example/", "p", stage_models={}, window_s=10,
                              transport=httpx.MockTransport(down))
    assert source.url == "https://prom.example"
    with source, pytest.raises(MetricsUnavailable) as raised:
        source.observe(1000.0)
    assert "s3cret" not in str(raised.value)
    assert "Prometheus at https://prom.example/api/v1/query_range: ConnectError" in str(raised.value)
    assert seen[0].headers["authorization"].startswith("Basic ")


def test_a_shared_client_stays_open_and_an_owned_one_is_closed() -> None:
    shared = httpx.Client(transport=httpx.MockTransport(FakePrometheus()))
    for pipeline in ("a", "b"):
        with PrometheusSource("http://prom", pipeline, namespace="ns", stage_models={}, window_s=10,
                              client=shared) as source:
            assert source.observe(1000.0).load_history
    assert not shared.is_closed
    shared.close()
    owned = PrometheusSource("http://prom", "p", stage_models={}, window_s=10,
                             transport=httpx.MockTransport(FakePrometheus()))
    with owned:
        pass
    assert owned._client.is_closed


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="either"):
        PrometheusSource("http://prom", "p", stage_models={}, window_s=10, client=httpx.Client(),
                         transport=httpx.MockTransport(FakePrometheus()))
    with pytest.raises(ValueError, match="step_s"):
        PrometheusSource("http://prom", "p", stage_models={}, window_s=10, step_s=0)
    PrometheusSource("https://prom", "p", stage_models={}, window_s=10, verify=certifi.where()).close()
    PrometheusSource("https://prom", "p", stage_models={}, window_s=10, verify=False).close()
