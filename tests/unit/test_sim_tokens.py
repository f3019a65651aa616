"""The simulator's token-generating pools: iteration-level batching, KV admission, TTFT and inter-token gaps,
checked against hand-worked timelines; and the engine routing a prompt cascade by each request's own score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from paretoserve.planner.sim.tokens import TokenConfig, TokenPool, TokenRecords, concat_records

INF = math.inf
# prefill = 1 ms + 0.5 ms/token; decode step = 2 ms + 1 ms/sequence
PREFILL = (0.001, 0.0005)
STEP = (0.002, 0.001)


def pool(prompt: list[int], output: list[int], *, batch: int = 8, kv_tokens: int = 10_000, replicas: int = 1,
         timeout_s: float = INF, ttft_slo_s: float = INF, itl_slo_s: float = INF) -> TokenPool:
    records = TokenRecords(np.array(prompt, dtype=np.int64), np.array(output, dtype=np.int64))
    config = TokenConfig(batch=batch, kv_tokens=kv_tokens, prefill_s=PREFILL, step_s=STEP, cpu=1.0, gpus=0.0,
                         accuracy=0.5, ttft_slo_s=ttft_slo_s, itl_slo_s=itl_slo_s)
    p = TokenPool("s", "v", "main", 1, config, timeout_s, records)
    p.add_replicas(replicas, 0.0)
    return p


def offer(p: TokenPool, times: list[float]) -> None:
    p.offer(np.array(times), np.arange(len(times), dtype=np.int64))


def test_one_request_is_a_prefill_then_one_step_per_further_token() -> None:
    p = pool([4], [3])
    offer(p, [0.010])
    d = p.run(INF, None, 0.0)
    prefill, step1 = 0.001 + 0.0005 * 4, 0.002 + 0.001
    assert d.ids.tolist() == [0] and not d.timed_out.any()
    assert d.done[0] == pytest.approx(0.010 + prefill + 2 * step1)
    assert p.records.ttft_s[0] == pytest.approx(prefill)
    assert p.records.tpot_s[0] == pytest.approx(step1) and p.records.itl_max_s[0] == pytest.approx(step1)


def test_a_newcomer_joins_at_the_next_iteration_and_its_prefill_stalls_the_running_sequence() -> None:
    p = pool([2, 2], [4, 2])
    offer(p, [0.0, 0.0021])  # the second arrives during the first's first decode step
    p.run(INF, None, 0.0)
    prefill = 0.001 + 0.0005 * 2  # 2 ms
    # iteration 1 at 0: prefill A (first token at 2 ms), step(1) = 3 ms -> A's 2nd token at 5 ms
    # iteration 2 at 5 ms: prefill B (B's first token at 7 ms), step(2) = 4 ms -> A's 3rd, B's 2nd (last) at 11 ms
    # iteration 3 at 11 ms: step(1) = 3 ms -> A's 4th (last) at 14 ms
    rec = p.records
    assert rec.ttft_s[0] == pytest.approx(prefill)
    assert rec.ttft_s[1] == pytest.approx(0.007 - 0.0021)
    assert rec.tpot_s[1] == pytest.approx(0.004)  # 7 -> 11 ms
    assert rec.itl_max_s[0] == pytest.approx(0.006)  # 5 -> 11 ms: B's prefill and a step of two
    assert rec.tpot_s[0] == pytest.approx((0.014 - 0.002) / 3)


def test_the_kv_budget_and_the_batch_hold_back_requests_until_a_sequence_leaves() -> None:
    # each request reserves 2 + 2 = 4 tokens; a budget of 6 holds one at a time
    p = pool([2, 2], [2, 2], kv_tokens=6)
    offer(p, [0.0, 0.0])
    d = p.run(INF, None, 0.0)
    done = dict(zip(d.ids.tolist(), d.done.tolist(), strict=True))
    assert done[0] == pytest.approx(0.002 + 0.003)
    assert p.records.ttft_s[1] == pytest.approx(0.005 + 0.002)  # waits for the first to free its reservation
    q = pool([2, 2], [2, 2], batch=1)
    offer(q, [0.0, 0.0])
    q.run(INF, None, 0.0)
    assert q.records.ttft_s[1] == pytest.approx(p.records.ttft_s[1])  # batch 1: the same serial timeline


def test_replicas_share_one_queue() -> None:
    p = pool([2, 2], [2, 2], batch=1, replicas=2)
    offer(p, [0.0, 0.0])
    p.run(INF, None, 0.0)
    assert p.records.ttft_s.tolist() == pytest.approx([0.002, 0.002])  # each replica takes one at once


def test_abandoned_refused_and_late_requests_are_reported() -> None:
    p = pool([2, 2, 50], [2, 2, 2], batch=1, timeout_s=0.004, kv_tokens=20)
    offer(p, [0.0, 0.0, 0.0])
    d = p.run(INF, None, 0.0)
    abandoned = dict(zip(d.ids.tolist(), d.timed_out.tolist(), strict=True))
    # the second waits 5 ms > 4 ms for the only sequence slot; the third never fits 20 KV tokens
    assert abandoned == {0: False, 1: True, 2: True}
    late = pool([2, 2], [3, 3], ttft_slo_s=0.0025, itl_slo_s=0.0035)
    offer(late, [0.0, 0.0])
    late.run(INF, None, 0.0)
    # A: TTFT 2 ms, then steps of two (4 ms) -> TPOT 4 ms > 3.5; B: TTFT 4 ms > 2.5
    assert late.records.late.tolist() == [True, True]
    ok = pool([2], [3], ttft_slo_s=0.0025, itl_slo_s=0.0035)
    offer(ok, [0.0])
    ok.run(INF, None, 0.0)
    assert ok.records.late.tolist() == [False]


def test_running_in_epochs_gives_the_same_timeline_as_running_at_once() -> None:
    rng = np.random.default_rng(3)
    n = 400
    times = np.sort(rng.uniform(0.0, 1.0, n)).tolist()
    prompts, outputs = rng.integers(2, 12, n).tolist(), rng.integers(1, 6, n).tolist()
    whole, pieces = pool(prompts, outputs, batch=4, kv_tokens=40, replicas=2), \
        pool(prompts, outputs, batch=4, kv_tokens=40, replicas=2)
    offer(whole, times)
    a = whole.run(INF, None, 0.0)
    done_pieces: dict[int, float] = {}
    for k, t_end in enumerate(np.arange(0.05, 1.05, 0.05)):
        sel = [(t, i) for i, t in enumerate(times) if k * 0.05 <= t < t_end]
        pieces.offer(np.array([t for t, _ in sel]), np.array([i for _, i in sel], dtype=np.int64))
        d = pieces.run(float(t_end), None, 0.0)
        done_pieces.update(zip(d.ids.tolist(), d.done.tolist(), strict=True))
    d = pieces.run(INF, None, 0.0)
    done_pieces.update(zip(d.ids.tolist(), d.done.tolist(), strict=True))
    assert dict(zip(a.ids.tolist(), a.done.tolist(), strict=True)) == pytest.approx(done_pieces)
    np.testing.assert_allclose(whole.records.ttft_s, pieces.records.ttft_s)
    assert not whole.has_work() and not pieces.has_work()
    joined = concat_records([whole.records, pieces.records])
    assert len(joined.ttft_s) == 2 * n and joined.late.dtype == bool


def test_a_retired_replica_finishes_its_sequences_and_takes_no_new_ones() -> None:
    p = pool([2, 2, 2], [3, 3, 3], batch=1, replicas=2)
    offer(p, [0.0, 0.0, 0.0])
    p.run(0.001, None, 0.0)  # both replicas took a request
    p.remove_replicas(1)
    d = p.run(INF, None, 0.0)
    assert sorted(d.ids.tolist()) == [0, 1, 2] and p.replicas == 1
    assert p.records.ttft_s[2] > 0.002 + 2 * 0.003 - 1e-9  # waited for a replica to free its only slot


def test_the_engine_routes_each_prompt_by_its_score_and_scores_the_answer_it_got() -> None:
    from pathlib import Path

    from paretoserve.planner import baselines
    from paretoserve.planner.sim import controllers as ctl
    from paretoserve.planner.sim.records import summarize
    from paretoserve.planner.sim.workload import Prompts, Workload, arrivals_from_counts
    from paretoserve.planner.spec import load_pipeline_text

    example = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "arith-llm.yaml"
    pipeline = load_pipeline_text(example.read_text())
    fixed = baselines.fix_threshold(pipeline, 0.3836)  # a measured row: prompts scored >= 0.3836 go to large
    arrivals = arrivals_from_counts(np.full(20, 300.0))
    n = len(arrivals)
    difficulty = np.tile([0.1, 0.5, 0.9, 0.3], n // 4)
    small_right = difficulty < 0.4  # the small model gets exactly the easy ones right
    large_right = np.tile([True, True, False, True], n // 4)
    prompts = Prompts(np.full(n, 8), np.full(n, 4), difficulty, {"arith-small": small_right,
                                                                 "arith-large": large_right})
    workload = Workload(arrivals, 20.0, prelude_counts=np.full(10, 300.0), prompts=prompts)
    result = ctl.run(pipeline, workload, ctl.loop("static", fixed))
    served = result.status == 1
    assert served.all()
    np.testing.assert_array_equal(result.heavy, difficulty >= 0.3836)
    expected = np.where(result.heavy, large_right, small_right)
    np.testing.assert_array_equal(result.accuracy, expected.astype(float))
    summary = summarize(result)
    assert summary.accuracy == pytest.approx(expected.mean())
    assert summary.tokens is not None and summary.tokens.ttft_p50_ms > 0
    assert result.tokens is not None and np.isfinite(result.tokens.tpot_s).all()  # 4 tokens each: 3 gaps
