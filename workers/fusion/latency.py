"""Latency of blocks and fused models on one CPU thread: what the search minimises and what is reported.

The search needs the latency of hundreds of graphs and must be deterministic with a seed, so it does not
time each candidate: it times every block of the task models once, as it is served (exported to ONNX, in
ONNX Runtime on one thread, the median of repeated runs at batch size ``b``), and estimates a graph as the
sum of its nodes' block times, which is exact in structure for one CPU stream that computes every node once
in turn (:meth:`FusionGraph.cost`). The block profile is cached with the search's state, so a resumed search
sees the same numbers. The variants the search keeps are then timed end to end as what is served (their
ONNX graph, :func:`onnx_latency_ms`) and through the real Triton by ``paretoserve bench fusion``; the
estimate's error is reported next to them.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from paretoserve.workers.fusion.graph import FusionGraph, NodeId
from paretoserve.workers.fusion.nets import build_block
from paretoserve.workers.models.training import single_thread


def _times_ms(run: Callable[[], object], repeats: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000.0)
    return sorted(times)


def block_latencies(graph: FusionGraph, batch: int, repeats: int = 200) -> dict[NodeId, float]:
    """Median milliseconds of each node's block at batch ``batch``, as served: the block alone exported to
    ONNX and run in ONNX Runtime on one thread (its weights do not change its time)."""
    costs: dict[NodeId, float] = {}
    with tempfile.TemporaryDirectory(prefix="paretoserve-blocks-") as folder, single_thread():
        torch.manual_seed(0)
        for node in graph.nodes():
            sig = graph.block(node)
            path = Path(folder) / f"{node[0]}.{node[1]}.onnx"
            torch.onnx.export(build_block(sig).eval(), (torch.zeros((1, *sig.in_shape)),), str(path), dynamo=False,
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
                              opset_version=17)
            costs[node] = onnx_latency_ms(path, sig.in_shape, batch, repeats)[1]
    return costs


def onnx_latency_ms(path: Path, input_shape: tuple[int, ...], batch: int, repeats: int = 100) -> tuple[float, float]:
    """(p99, median) milliseconds of the ONNX graph at ``path`` in ONNX Runtime on one thread (as Triton runs
    it), over ``repeats`` runs on one fixed batch of ``batch`` inputs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    sample = np.random.default_rng(0).random((batch, *input_shape), dtype=np.float32)
    times = _times_ms(lambda: session.run(None, {name: sample}), repeats)
    return times[min(len(times) - 1, int(0.99 * len(times)))], statistics.median(times)
