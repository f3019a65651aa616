"""`paretoserve up` serving the multimodal example for real: the REAL Triton (mm-low, mm-high as decoupled
Python-backend models reading an ``IMAGE``, and mm-scorer), the REAL router subprocess and the REAL control loop.

The manifest is ``manifests/examples/mm-llm.yaml`` with this machine's 2 cores and planning rounds an hour apart, so
the loop ticks only when the test ticks it (it drives time and the load the loop sees, never asserts timing).
Covers what `test_up_generation` covers for the text family, through the path a multimodal client takes: each
request is ``POST /v2/models/mm-llm/generate_stream`` with the question and the digits image, which the runtime's
own replay sends (`completions.GenerateRequests`, drawn from the held-out test split):

- the runtime serves the three models the manifest names, each of the multimodal kind (its ``IMAGE`` input), and
  announces the generate endpoint; the first plan, at no load, sends every request to mm-high;
- a load at which the program splits the stage makes the loop apply a plan with a threshold strictly between 0
  and 1; a replay through `run_and_report` (what ``up --replay`` runs) is then served with no failure, each
  request by mm-high exactly when its score (text and image, as Triton's FP32 ``SCORE``) is at least the row's
  pre-route threshold, each answer token for token that model's offline greedy answer to that image and question,
  and the summary's exact match and per-model shares are those of the records.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from paretoserve.workers.llm.cache import CachedMMScorer
from paretoserve.workers.llm.multimodal import MultimodalCatalog
from paretoserve.workers.llm.scorer import MM_SCORER_MODEL
from paretoserve.workers.llm.tokenizer import decode, encode_prompt
from paretoserve.workers.runtime.completions import GenerateRequests, generation_slo
from paretoserve.workers.runtime.loadgen import RequestRecord
from paretoserve.workers.runtime.local import LocalRuntime, UpSettings
from paretoserve.workers.runtime.replay import Target, prepare_replay, requests_for, run_and_report
from paretoserve.workers.runtime.served import GenerationModel, ScorerModel

from .test_runtime_local import write_trace
from .test_up_generation import free_port, local_pipeline, split_by_the_loop, splitting_load

pytestmark = [pytest.mark.triton, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "mm-llm.yaml"
PIPELINE = "mm-llm"
LOW, HIGH = "mm-low", "mm-high"
PER_SECOND = (6, 6, 6, 6)
"""The replay: 24 requests over 4 s."""
SEED = 3


def test_up_serves_the_multimodal_pipeline_and_the_split_reads_the_image(
        tmp_path: Path, multimodal_catalog: MultimodalCatalog, mm_scorer: CachedMMScorer) -> None:
    pipeline = local_pipeline(EXAMPLE)
    load = splitting_load(pipeline)
    settings = UpSettings(port=free_port(), work_dir=tmp_path / "work", state_dir=tmp_path / "state")
    logs: list[str] = []
    with LocalRuntime(pipeline, settings, log=logs.append) as runtime:
        specs = runtime.model_specs
        assert {name: type(spec) for name, spec in specs.items()} == {
            LOW: GenerationModel, HIGH: GenerationModel, MM_SCORER_MODEL: ScorerModel}, logs
        assert all(spec.spec.image_values == 64 for spec in specs.values()), specs  # every model reads the image
        assert any(f"/v2/models/{PIPELINE}/generate_stream" in line for line in logs), logs
        assert runtime.events and runtime.events[-1].thresholds == {"answer": 0.0}, logs  # no load: all mm-high

        _, _, cut = split_by_the_loop(runtime, pipeline, load, logs)

        generation = generation_slo(pipeline, specs)
        assert generation is not None and generation["imageValues"] == 64
        target = Target(runtime.url, PIPELINE, pipeline.spec.slo.latency_ms, 99,
                        metrics_url=f"{runtime.router_admin_url}/metrics", generation=generation)
        trace = write_trace(tmp_path / "trace.tbz2", list(PER_SECOND))
        replay = prepare_replay(trace, f"0:{len(PER_SECOND)}", 1.0, seed=SEED)
        summary = run_and_report(target, replay, events=lambda: runtime.events, steps=lambda: runtime.steps,
                                 out_dir=tmp_path / "out", progress=False, request_timeout_s=60.0)
    count = sum(PER_SECOND)
    assert summary["requests"]["sent"] == count and summary["requests"]["failed"] == 0, summary["text"]
    lines = (tmp_path / "out" / "requests.jsonl").read_text().splitlines()
    records = [RequestRecord(**json.loads(line)) for line in lines if line]
    sent = requests_for(target, count, seed=SEED)
    assert isinstance(sent, GenerateRequests)  # what the replay sent, drawn again with its seed

    score = mm_scorer.score()
    engines = {model: multimodal_catalog.engine(model) for model in (LOW, HIGH)}
    routed = {LOW: 0, HIGH: 0}
    for i, record in enumerate(sorted(records, key=lambda r: r.offset_s)):
        body = sent.body(i)
        assert record.prompt == body["PROMPT"] and record.label == sent.label(i), (i, record)
        image = np.asarray(body["IMAGE"], dtype=np.float32)
        expected = HIGH if float(np.float32(score(image, body["PROMPT"]))) >= cut else LOW
        assert record.variant == expected, (i, record, cut)
        max_new = int(multimodal_catalog.metadata[expected]["max_new_tokens"])
        offline = decode(engines[expected].generate_multimodal([image], [encode_prompt(body["PROMPT"])], max_new)[0])
        assert record.predicted == offline, (i, record)
        routed[expected] += 1
    assert routed[LOW] and routed[HIGH], routed  # both sides of the split were exercised
    assert summary["accuracy"] == round(sum(r.predicted == r.label for r in records) / count, 4)
    shares = summary["generation"]["routed"]
    assert {model: row["requests"] for model, row in shares.items()} == {m: n for m, n in routed.items() if n}
    assert "served by:" in summary["text"] and "exact match" in summary["text"]
