"""`paretoserve bench grpc-front`: could the router serve KServe v2 gRPC within its latency bar? The cheapest form.

The router speaks KServe v2 over HTTP; ``tritonclient.grpc`` and ``perf_analyzer -i grpc`` speak the same protocol
over gRPC. Before building a gRPC front, this measures the least any Python front could cost: a ``grpc.aio``
server with the KServe v2 service (the stubs ``tritonclient`` ships) whose ``ModelInfer`` only forwards the request
to Triton's own gRPC endpoint over one ``grpc.aio`` channel and returns Triton's answer -- no routing, no checks,
no metrics, nothing the router does. A real front adds all of that.

One real Triton serves the light digits model; the front runs in its own process. A ``grpc.aio`` client in the
benchmark's process sends single-image ``ModelInfer`` requests open loop at ``RATE_RPS``, alternating one-second
windows between Triton directly and the front, so both see the same background. Reported: p50/p99 of each, the
added p50/p99 (pooled and over paired windows, as ``bench router`` does) and the front's CPU per request, whence
the requests/s one front core could carry. The router's own bar (issue 13): added p99 <= 1 ms at 1,000
requests/s and >= 10,000 requests/s per core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from paretoserve.research.benchmarks.router import LIGHT_MODEL, cpu_seconds, free_port, run_process
from paretoserve.research.benchmarks.router_loadgen import on_schedule
from paretoserve.workers.models import ensure_trained, load_split
from paretoserve.workers.triton.repository import spec_from_cached_variant, write_repository
from paretoserve.workers.triton.server import TritonServer, TritonServerConfig

RATE_RPS = 1000.0
TARGET_ADDED_P99_MS = 1.0
TARGET_RPS_PER_CORE = 10_000


async def _serve(port: int, upstream: str) -> None:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.aio.insecure_channel(upstream)
    triton = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    class Front(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802 (the service's name)
            return await triton.ModelInfer(request)

    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Front(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _request(image: Any) -> Any:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=LIGHT_MODEL)
    tensor = request.inputs.add(name="IMAGE", datatype="FP32", shape=[1, 8, 8])
    tensor.contents.fp32_contents.extend(float(v) for v in image.ravel())
    request.outputs.add(name="LABEL")
    return request


async def _wait_ready(target: str, timeout_s: float = 60.0) -> None:
    import grpc

    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout_s)


async def _open_loop(targets: Sequence[str], requests: Sequence[Any], rate: float,
                     duration: float) -> list[list[tuple[int, float]]]:
    """Open loop at ``rate``, the k-th second to ``targets[k % len]``: (window, latency s) per answered request."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    channels = [grpc.aio.insecure_channel(t) for t in targets]
    stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in channels]
    samples: list[list[tuple[int, float]]] = [[] for _ in targets]
    errors = [0] * len(targets)
    for stub in stubs:  # warm each path
        await asyncio.gather(*(stub.ModelInfer(requests[i]) for i in range(32)))
    async def one(window: int, index: int) -> None:
        target = window % len(targets)
        sent = time.perf_counter()
        try:
            await stubs[target].ModelInfer(requests[index % len(requests)])
        except grpc.aio.AioRpcError:
            errors[target] += 1
            return
        samples[target].append((window, time.perf_counter() - sent))

    await on_schedule(lambda index: one(int(index / rate), index), rate, int(rate * duration),
                      time.perf_counter() + 0.01)
    for channel in channels:
        await channel.close()
    if any(errors):
        raise RuntimeError(f"gRPC errors per target: {dict(zip(targets, errors, strict=True))}")
    return samples


def _paired_p99(direct: list[tuple[int, float]], front: list[tuple[int, float]]) -> float:
    d, f = np.asarray(direct), np.asarray(front)
    differences = []
    for window in np.unique(f[:, 0]):
        before, after = d[d[:, 0] == window - 1, 1], f[f[:, 0] == window, 1]
        if len(before) >= 100 and len(after) >= 100:
            differences.append(float(np.percentile(after, 99) - np.percentile(before, 99)) * 1e3)
    return float(np.median(differences)) if differences else float("nan")


def bench_grpc_front(quick: bool = False) -> dict[str, Any]:
    duration = 10.0 if quick else 30.0
    catalog = ensure_trained()
    requests = [_request(image) for image in load_split().x_test[:256]]
    with tempfile.TemporaryDirectory(prefix="paretoserve-bench-grpc-") as tmp:
        work = Path(tmp)
        spec = spec_from_cached_variant(catalog.variant_dir(LIGHT_MODEL), max_batch_size=32, max_queue_delay_us=0)
        config = TritonServerConfig(model_repository=write_repository(work / "repository", [spec]),
                                    models=(LIGHT_MODEL,), work_dir=work / "triton")
        with TritonServer(config) as triton:
            port = free_port()
            command = [sys.executable, "-I", "-m", "paretoserve.research.benchmarks.grpc_front", "--port", str(port),
                       "--upstream", triton.grpc_url]
            with run_process(command, None, None, work / "front.log") as front_pid:
                front = f"127.0.0.1:{port}"
                asyncio.run(_wait_ready(front))
                cpu_before = cpu_seconds(front_pid)
                direct, proxied = asyncio.run(_open_loop([triton.grpc_url, front], requests, RATE_RPS, duration))
                front_cpu_s = cpu_seconds(front_pid) - cpu_before

    def pct(samples: list[tuple[int, float]], q: float) -> float:
        return round(float(np.percentile([s[1] for s in samples], q)) * 1e3, 3)

    cpu_ms = 1e3 * front_cpu_s / max(1, len(proxied))
    added_p99 = round(pct(proxied, 99) - pct(direct, 99), 3)
    return {
        "rate_rps": RATE_RPS,
        "front": "grpc.aio KServe v2 server forwarding ModelInfer to Triton's gRPC (nothing else)",
        "direct_p50_ms": pct(direct, 50), "direct_p99_ms": pct(direct, 99),
        "front_p50_ms": pct(proxied, 50), "front_p99_ms": pct(proxied, 99),
        "added_p50_ms": round(pct(proxied, 50) - pct(direct, 50), 3), "added_p99_ms": added_p99,
        "added_p99_ms_paired_windows": round(_paired_p99(direct, proxied), 3),
        "front_cpu_ms_per_request": round(cpu_ms, 3),
        "front_rps_per_core": round(1e3 / cpu_ms) if cpu_ms else None,
        "samples": {"direct": len(direct), "front": len(proxied)},
        "targets": {"added_p99_ms": TARGET_ADDED_P99_MS, "rps_per_core": TARGET_RPS_PER_CORE},
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paretoserve.research.benchmarks.grpc_front",
                                     description="the forwarding gRPC front the benchmark measures")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="Triton's gRPC address, host:port")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
