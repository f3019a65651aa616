"""The open-loop load generator (against a mock transport) and the run summary and plots."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from paretoserve.workers.runtime.loadgen import (
    LoadSettings,
    ProgressBar,
    RequestRecord,
    infer_body,
    node_spans,
    predicted_label,
    replay,
)
from paretoserve.workers.runtime.report import (
    AppliedEvent,
    LoopStep,
    core_seconds,
    format_summary,
    plan_changes,
    summarize,
    write_plots,
)

IMAGES = np.arange(3 * 64, dtype=np.float32).reshape(3, 8, 8) / 200
LABELS = np.array([0, 1, 2], dtype=np.int64)


def kserve_answer(label: int) -> dict[str, object]:
    return {"model_name": "digits", "outputs": [
        {"name": "CONFIDENCE", "datatype": "FP32", "shape": [1, 1], "data": [0.9]},
        {"name": "LABEL", "datatype": "INT64", "shape": [1, 1], "data": [label]}]}


def test_body_and_label() -> None:
    body = infer_body(IMAGES[1])
    assert body["inputs"][0]["shape"] == [1, 8, 8] and len(body["inputs"][0]["data"]) == 64
    assert predicted_label(kserve_answer(7)) == 7
    assert predicted_label({"outputs": [{"name": "LABEL", "data": [[3]]}]}) == 3
    assert predicted_label({"outputs": []}) is None
    assert predicted_label(["not", "a", "dict"]) is None


def test_replay_sends_every_request_and_records_outcomes() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append({"path": request.url.path, "deadline": request.headers.get("x-deadline")})
        first_pixel = body["inputs"][0]["data"][0]
        if len(seen) == 3:
            return httpx.Response(503, json={"error": "down"})
        label = int(np.argmin([abs(first_pixel - float(img.ravel()[0])) for img in IMAGES]))
        return httpx.Response(200, json=kserve_answer(label if len(seen) != 2 else 9))

    settings = LoadSettings(url="http://router/", pipeline="digits", deadline_header="x-deadline", deadline_ms=50)
    records = asyncio.run(replay(settings, [0.0, 0.01, 0.02, 0.03], IMAGES, LABELS,
                                 transport=httpx.MockTransport(handler)))
    assert [r.error for r in records] == [None, None, "http_503", None]
    assert [r.predicted for r in records] == [0, 9, None, 0]
    assert [r.label for r in records] == [0, 1, 2, 0]
    assert all(s["path"] == "/v2/pipelines/digits/infer" and s["deadline"] == "50" for s in seen)
    assert all(r.latency_ms is not None and r.latency_ms >= 0 for r in records)


@pytest.mark.parametrize("offsets", [[0.0, 0.001, 0.002, 0.003, 0.004], [0.0] * 5],
                         ids=["on-schedule", "behind-schedule"])
def test_replay_is_open_loop_and_bounded(offsets: list[float]) -> None:
    """At most `max_in_flight` requests are outstanding, also when the generator is behind schedule and starts
    several requests before any of them runs (all offsets 0: what a busy machine makes of a burst)."""
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.2)
        return httpx.Response(200, json=kserve_answer(0))

    settings = LoadSettings(url="http://router", pipeline="digits", max_in_flight=1, max_requests=3)
    records = asyncio.run(replay(settings, offsets, IMAGES, LABELS, transport=httpx.MockTransport(slow)))
    assert len(records) == 3  # max_requests
    assert [r.error for r in records] == [None, "overload", "overload"]


def test_replay_maps_transport_errors_to_kinds() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("infer"):
            raise httpx.ReadTimeout("slow", request=request)
        raise AssertionError

    settings = LoadSettings(url="http://router", pipeline="digits")
    records = asyncio.run(replay(settings, [0.0], IMAGES, LABELS, transport=httpx.MockTransport(handler)))
    assert records[0].error == "timeout"


def test_progress_bar_writes_lines_when_not_a_terminal(tmp_path: Path) -> None:
    with (tmp_path / "progress.txt").open("w") as stream:
        bar = ProgressBar(20.0, stream=stream)
        bar.update(0.0, 1, 1, 0, 0, 3.0)
        bar.update(5.0, 2, 2, 0, 0, None)  # less than 10 s later: no new line
        bar.update(12.0, 3, 2, 1, 0, 4.0)
        bar.close()
    lines = (tmp_path / "progress.txt").read_text().splitlines()
    assert len(lines) == 2 and "sent 3 ok 2 failed 1" in lines[1]


def record(offset: float, latency: float | None, label: int = 1, predicted: int | None = 1,
           error: str | None = None) -> RequestRecord:
    return RequestRecord(offset, 1000.0 + offset, latency, error, label, predicted)


def test_core_seconds_integrate_the_plans_in_force() -> None:
    events = [AppliedEvent(990.0, 2.0), AppliedEvent(1005.0, 3.0), AppliedEvent(1007.0, 9.0, error="failed"),
              AppliedEvent(1020.0, 1.0)]
    assert core_seconds(events, 1000.0, 1010.0) == pytest.approx(5 * 2.0 + 5 * 3.0)
    assert core_seconds([], 0.0, 10.0) == 0.0
    assert core_seconds([AppliedEvent(5.0, 2.0)], 0.0, 10.0) == pytest.approx(10.0)  # from t=5 only


def test_summary() -> None:
    records = [record(0.1, 10.0), record(0.5, 80.0), record(1.2, 20.0, predicted=3),
               record(1.5, None, error="timeout"), record(1.9, 5.0)]
    events = [AppliedEvent(999.0, 2.0, {"tiny_linear": 1}, {"classify": 0.9}),
              AppliedEvent(1001.0, 3.0, {"tiny_linear": 2}, {"classify": 0.8}, [("tiny_linear", "instances", 2.0)])]
    summary = summarize(records, events, slo_ms=50.0, percentile=99, start=1000.0, end=1002.0, pipeline="digits")
    assert summary["requests"] == {"sent": 5, "ok": 4, "failed": 1, "errors": {"timeout": 1}}
    assert summary["slo"]["attainment"] == 0.6  # 3 of 5 within 50 ms (a failure never meets the SLO)
    assert summary["slo"]["percentileMet"] is False
    assert summary["accuracy"] == 0.75
    assert summary["cost"] == {"coreSeconds": 5.0, "meanCores": 2.5}
    assert summary["reconfigurations"] == {"applied": 1, "failed": 0, "tritonInstanceUpdates": 1, "tritonReloads": 0}
    text = format_summary(summary)
    assert "attainment 60.00%" in text and "accuracy 75.00%" in text and "timeout: 1" in text
    empty = summarize([], [], slo_ms=50.0, percentile=99, start=0.0, end=1.0)
    assert empty["accuracy"] is None and empty["slo"]["attainment"] is None
    assert "n/a" in format_summary(empty)


def test_applied_event_round_trips() -> None:
    event = AppliedEvent(1.5, 2.0, {"m": 2}, {"s": 0.5}, [("m", "reload", 8.0)], None)
    assert AppliedEvent.from_json(json.loads(json.dumps(event.to_json()))) == event


def test_plots_are_written(tmp_path: Path) -> None:
    records = [record(0.1, 10.0), record(1.5, None, error="timeout"), record(2.2, 30.0)]
    events = [AppliedEvent(1000.0, 2.0, {"tiny_linear": 1, "cnn_large": 1}, {"classify": 0.9}),
              AppliedEvent(1001.5, 3.0, {"tiny_linear": 1, "cnn_large": 2}, {"classify": 0.8})]
    steps = [LoopStep(1001.0, 5.0, 4.0, "unchanged", False)]
    paths = write_plots(tmp_path / "plots", records, events, steps, start=1000.0, end=1003.0, slo_ms=50.0)
    assert [p.name for p in paths] == ["load.png", "latency.png", "config.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_router_delta_counts_what_the_router_did_during_the_replay() -> None:
    from paretoserve.workers.runtime.metrics import RouterSnapshot
    from paretoserve.workers.runtime.replay import router_delta

    before = RouterSnapshot(10, None, 3, {"upstream_timeout": 1}, {("classify", "tiny_linear", "light"): 10})
    after = RouterSnapshot(30, None, 9, {"upstream_timeout": 1, "queue_full": 2},
                           {("classify", "tiny_linear", "light"): 30, ("classify", "cnn_large", "heavy"): 6})
    assert router_delta(before, after) == {
        "rows": {"classify/cnn_large/heavy": 6, "classify/tiny_linear/light": 20},
        "deferrals": 6, "deferredShare": round(6 / 26, 4), "errors": {"queue_full": 2}}
    assert router_delta(None, after) == {}


def test_summary_text_shows_the_plan_at_start_and_the_router() -> None:
    events = [AppliedEvent(990.0, 2.0, {"tiny_linear": 1, "cnn_large": 1}, {"classify": 0.9})]
    summary = summarize([record(0.1, 10.0)], events, slo_ms=50.0, percentile=99, start=1000.0, end=1001.0)
    summary["router"] = {"deferrals": 7, "deferredShare": 0.7}
    summary["wallSeconds"], summary["startupSeconds"] = 150.0, 20.0
    text = format_summary(summary)
    assert "plan at start: 2 cores, Triton instances cnn_large x1, tiny_linear x1, classify threshold 0.9" in text
    assert "7 rows deferred light -> heavy (70.0% of cascade rows)" in text
    assert "wall time 150s (startup 20s)" in text


def test_the_summary_says_what_each_applied_plan_changed_when_and_why() -> None:
    events = [AppliedEvent(990.0, 0.4, {"tiny_linear": 1, "cnn_large": 1}, {"classify": 0.9}, batch={"cnn_large": 1},
                           cpu_quota=0.4),
              AppliedEvent(1012.0, 0.7, {"tiny_linear": 1, "cnn_large": 2}, {"classify": 0.9}, batch={"cnn_large": 4},
                           cpu_quota=0.7),
              AppliedEvent(1020.0, 0.7, {"tiny_linear": 1, "cnn_large": 2}, {"classify": 0.9}, batch={"cnn_large": 4},
                           cpu_quota=0.7),  # changed nothing the summary shows: not listed
              AppliedEvent(1030.0, 0.5, {"tiny_linear": 1, "cnn_large": 2}, {"classify": 0.8}, error="boom"),
              AppliedEvent(1040.0, 0.4, {"tiny_linear": 1, "cnn_large": 1}, {"classify": 0.85},
                           batch={"cnn_large": 1}, cpu_quota=0.4)]
    steps = [LoopStep(1012.0, 180.0, 150.0, "scale up or reconfigure", True),
             LoopStep(1014.0, 180.0, 160.0, "unchanged", False),
             LoopStep(1040.0, 60.0, 55.0, "scale down after 3 cheaper plans", True)]
    changes = plan_changes(events, steps, start=1000.0, end=1100.0)
    assert changes == [
        {"atSeconds": 12.0, "changed": ["cores 0.4 -> 0.7", "cnn_large instances 1 -> 2", "cnn_large batch 1 -> 4"],
         "why": "scale up or reconfigure", "observedRps": 150.0, "plannedForRps": 180.0},
        {"atSeconds": 40.0, "changed": ["cores 0.7 -> 0.4", "classify threshold 0.9 -> 0.85",
                                        "cnn_large instances 2 -> 1", "cnn_large batch 4 -> 1"],
         "why": "scale down after 3 cheaper plans", "observedRps": 55.0, "plannedForRps": 60.0}]
    assert plan_changes(events, steps, start=1015.0, end=1035.0) == []  # only changes inside the replay
    summary = summarize([record(0.1, 10.0)], events, slo_ms=50.0, percentile=99, start=1000.0, end=1100.0,
                        steps=steps)
    assert summary["coresEnforced"] is True and summary["changes"] == changes
    text = format_summary(summary)
    assert "Triton held to them by a CPU quota" in text
    assert ("    12.0s  cores 0.4 -> 0.7, cnn_large instances 1 -> 2, cnn_large batch 1 -> 4  "
            "(saw 150 rps, planned for 180 rps: scale up or reconfigure)") in text


def test_node_spans_read_the_routers_per_stage_timing_and_refuse_malformed_ones() -> None:
    payload = {"parameters": {"nodes": '{"triage": [0.0, 1.5], "judge": [3.25, 4.0]}'}}
    assert node_spans(payload) == {"triage": (0.0, 1.5), "judge": (3.25, 4.0)}
    assert node_spans({"parameters": {}}) is None
    assert node_spans({"parameters": {"nodes": "not json"}}) is None
    assert node_spans({"parameters": {"nodes": '{"a": [1]}'}}) is None
    assert node_spans([]) is None


def test_a_replay_checks_the_request_readers_and_the_answer_only() -> None:
    from paretoserve.planner.spec import load_pipeline_text
    from paretoserve.workers.runtime.replay import replayable
    from paretoserve.workers.triton.repository import TritonModelSpec

    examples = Path(__file__).resolve().parents[2] / "manifests" / "examples"
    pipeline = load_pipeline_text((examples / "digits-agents.yaml").read_text())
    models = {v.triton_model for s in pipeline.spec.stages for v in s.variants}
    shapes = {"refine-small": (74,), "refine-large": (74,), "judge-small": (50,), "judge-large": (50,)}
    specs = {m: TritonModelSpec(name=m, variant=m, weights_dir=".", input_shape=shapes.get(m, (8, 8))) for m in models}
    assert replayable(pipeline, specs) is None  # the aggregators read their parents' outputs, not the request
    wide = {**specs, "mlp_small": TritonModelSpec(name="mlp_small", variant="m", weights_dir=".", input_shape=(64,))}
    refusal = replayable(pipeline, wide)
    assert refusal is not None and "'mlp_small' of stage 'triage' reads [64]" in refusal
    fused = {**specs, "judge-large": TritonModelSpec(name="judge-large", variant="j", weights_dir=".",
                                                     input_shape=(50,), tasks=(("digit", 10), ("parity", 2)))}
    refusal = replayable(pipeline, fused)
    assert refusal is not None and "stage 'judge' answers tasks ['digit', 'parity']" in refusal


def test_the_summary_times_each_stage_of_a_workflow() -> None:
    spans = [{"triage": (0.0, 1.0), "judge": (2.0, 2.5)}, {"triage": (0.0, 3.0), "judge": (4.0, 6.0)}]
    records = [RequestRecord(0.1 * i, 1000.0 + 0.1 * i, 7.0, None, 3, 3, nodes=n) for i, n in enumerate(spans)]
    summary = summarize(records, [], slo_ms=50.0, percentile=99, start=1000.0, end=1001.0)
    assert summary["nodes"]["judge"] == {"startP50Ms": 3.0, "durationP50Ms": 1.25, "durationP99Ms": 1.985}
    text = format_summary(summary)
    assert "per stage (ms since the router got the request" in text
    assert "  judge            start     3.00  took     1.25 / 1.99" in text
    assert "nodes" not in summarize([record(0.1, 10.0)], [], slo_ms=50.0, percentile=99, start=1000.0, end=1001.0)
