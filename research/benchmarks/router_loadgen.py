"""Load generator and stub upstream for the router benchmark, each run as its own process.

``bench router`` compares the latency of requests sent straight to Triton with requests sent
through the router, at a fixed *open-loop* rate: request ``i`` is sent at ``t0 + i / rate``
whatever happened to the earlier ones, so a slow server cannot slow the load down (no coordinated
omission). The generator must cost far less than what it measures, so it avoids httpx: a raw
HTTP/1.1 client on ``asyncio.Protocol`` (uvloop when installed) with the ``httptools`` parser,
pre-opened keep-alive connections and pre-encoded requests. Latency runs from the moment a request
is written to the moment its response is complete; how late each send was against its schedule is
reported too (the event loop's timers have millisecond resolution).

Modes (``python -m paretoserve.research.benchmarks.router_loadgen MODE ...``):

- ``open --url URL [--url URL2 --window S] --rate R --duration S --bodies FILE [--out FILE ...]``:
  open loop, alternating windows between the URLs; prints a JSON summary per URL and writes
  ``(window index, latency seconds)`` float64 pairs per URL to the ``--out`` files;
- ``closed --url URL --concurrency K --duration S --bodies FILE``: K clients back to back (maximum
  throughput); prints a JSON summary;
- ``stub --port P --response FILE``: an upstream answering every request with one canned response,
  to measure the router's own ceiling without the model server's cost;
- ``stub --port P --control``: a scriptable fake Triton for hostile-input tests. It answers
  ``/v2/models/{m}/infer`` by the behaviour last posted to ``/stub/behaviour/{m}`` (default: a
  well-formed answer with as many rows as the request), and Triton's knob API
  (``GET /v2/models/{m}/config``, ``POST /v2/repository/models/{m}/load``); ``GET /stub/log`` lists the
  requests it received. A behaviour (JSON) is ``{"kind": "echo", ...}`` with optional
  ``confidence``, ``rowsDelta`` (answer that many rows more or fewer), ``shapeRows`` (declare a
  different row count than the data holds), ``drop`` (output names to leave out), ``datatypes``
  (name -> declared datatype), ``strings`` (name of an output whose values become strings),
  ``padBytes`` (an extra top-level field of that size), ``parameters`` (the answer's own
  ``parameters``) and ``delayS``; or ``{"kind": "raw", "status": S, "body": TEXT}`` (any answer),
  ``{"kind": "close"}`` (drop the connection) or ``{"kind": "garbage"}`` (not HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from array import array
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httptools


class _ClientConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.reusable = True
        """False once an answer said ``Connection: close`` (the router recycles a connection after
        ``--max-requests-per-connection`` answers): reusing it would race the server's close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def request(self, payload: bytes) -> int:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self.waiter


class Client:
    """Keep-alive connections to one URL; :meth:`send` returns ``(status, seconds)``."""

    def __init__(self, url: str, bodies: Sequence[bytes], headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        head = f"POST {parts.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.payloads = [f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body for body in bodies]
        self.idle: list[_ClientConnection] = []

    async def connect(self) -> _ClientConnection:
        _, connection = await asyncio.get_running_loop().create_connection(_ClientConnection, self.host, self.port)
        return connection

    async def warm(self, connections: int) -> None:
        self.idle.extend(await asyncio.gather(*(self.connect() for _ in range(connections))))

    async def send(self, index: int) -> tuple[int, float, float]:
        """Send payload ``index`` (cyclic); ``(status, sent_at, latency_s)``; status 0 on a failure."""
        connection = self.idle.pop() if self.idle else await self.connect()
        sent = time.perf_counter()
        try:
            status = await connection.request(self.payloads[index % len(self.payloads)])
        except ConnectionError:
            return 0, sent, time.perf_counter() - sent
        latency = time.perf_counter() - sent
        if connection.reusable:
            self.idle.append(connection)
        elif connection.transport is not None:
            connection.transport.close()
        return status, sent, latency


def _summary(latencies: Sequence[float], errors: int, seconds: float) -> dict[str, Any]:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3) if ordered else float("nan")

    return {"completed": len(ordered), "errors": errors, "seconds": round(seconds, 3),
            "achieved_rps": round(len(ordered) / seconds, 1) if seconds else 0.0,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
            "max_ms": pct(1.0)}


async def on_schedule(launch: Callable[[int], Coroutine[Any, Any, None]], rate: float, total: int,
                      start: float) -> int:
    """Start ``launch(i)`` for i = 0 .. total-1 at ``start + i / rate`` (``time.perf_counter()`` seconds), each as its
    own task whatever the others' latency (open loop), then wait up to 30 s for the last ones; returns how many were
    still unfinished."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while sent < due:
            task = loop.create_task(launch(sent))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    if pending:
        await asyncio.wait(pending, timeout=30)
    return len(pending)


async def open_loop(
    clients: Sequence[Client], rate: float, duration: float, window: float = 1.0, started: Path | None = None
) -> tuple[list[dict[str, Any]], list[list[tuple[int, float]]]]:
    """Send ``rate * duration`` requests on schedule, to ``clients[k]`` during the k-th window (cyclic).

    Alternating short windows between targets (e.g. Triton directly, then the router) exposes
    both to the same background noise of a shared machine. Returns one summary per client and,
    per client, ``(window index, latency in seconds)`` of every successful request. ``started``: a file that gets
    the wall-clock time (``time.time()``) of window 0's start, so that another process can place its own events
    in the windows.
    """
    for client in clients:
        await client.warm(32)
    total = int(rate * duration)
    latencies: list[list[tuple[int, float]]] = [[] for _ in clients]
    lags: list[list[float]] = [[] for _ in clients]
    errors = [0] * len(clients)
    failed: list[list[tuple[int, int]]] = [[] for _ in clients]

    async def one(target: int, window_index: int, index: int, intended: float) -> None:
        status, sent_at, latency = await clients[target].send(index)
        lags[target].append(sent_at - intended)
        if status == 200:
            latencies[target].append((window_index, latency))
        else:
            errors[target] += 1
            failed[target].append((window_index, status))

    start = time.perf_counter() + 0.01
    if started is not None:
        started.write_text(repr(time.time() + (start - time.perf_counter())))

    def launch(index: int) -> Coroutine[Any, Any, None]:
        intended = start + index / rate
        window_index = int((intended - start) / window)
        return one(window_index % len(clients), window_index, index, intended)

    unfinished = await on_schedule(launch, rate, total, start)
    elapsed = time.perf_counter() - start
    summaries = []
    for k in range(len(clients)):
        summary = _summary([latency for _, latency in latencies[k]], errors[k], elapsed / len(clients))
        ordered = sorted(lags[k])
        summary["offered_rps"] = rate
        summary["failed"] = [[window, status] for window, status in sorted(failed[k])[:100]]
        summary["send_lag_p99_ms"] = round(ordered[int(0.99 * (len(ordered) - 1))] * 1e3, 3) if ordered else 0.0
        summaries.append(summary)
    if unfinished:
        summaries[0]["unfinished"] = unfinished
    return summaries, latencies


async def closed_loop(client: Client, concurrency: int, duration: float) -> dict[str, Any]:
    """``concurrency`` clients sending back to back for ``duration`` seconds."""
    await client.warm(concurrency)
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def worker(offset: int) -> None:
        nonlocal errors
        index = offset
        while time.perf_counter() < stop_at:
            status, _, latency = await client.send(index)
            index += concurrency
            if status == 200:
                latencies.append(latency)
            else:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return _summary(latencies, errors, time.perf_counter() - start)


def _http(status: int, body: bytes) -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error"}.get(status, b"X")
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status, reason, len(body), body)


def _echo(request: dict[str, Any], behaviour: dict[str, Any]) -> bytes:
    """A well-formed digits answer for the request's rows, bent by ``behaviour`` (see the module notes)."""
    rows = max(0, int(request["inputs"][0]["shape"][0]) + int(behaviour.get("rowsDelta", 0)))
    conf = float(behaviour.get("confidence", 0.9))
    outputs: dict[str, tuple[int, list[Any], str]] = {
        "PROBS": (10, [conf if k == 3 else (1 - conf) / 9 for _ in range(rows) for k in range(10)], "FP32"),
        "CONFIDENCE": (1, [conf] * rows, "FP32"),
        "LABEL": (1, [3] * rows, "INT64"),
    }
    declared_rows = int(behaviour.get("shapeRows", rows))
    answer: dict[str, Any] = {"model_name": "stub", "model_version": "1", "outputs": []}
    for name, (width, data, datatype) in outputs.items():
        if name in behaviour.get("drop", ()):
            continue
        if name == behaviour.get("strings"):
            data = [str(value) for value in data]
        answer["outputs"].append({"name": name, "datatype": behaviour.get("datatypes", {}).get(name, datatype),
                                  "shape": [declared_rows, width], "data": data})
    if "parameters" in behaviour:
        answer["parameters"] = behaviour["parameters"]
    if behaviour.get("padBytes"):
        answer["padding"] = "x" * int(behaviour["padBytes"])
    return json.dumps(answer).encode()


class _HttpStub(asyncio.Protocol):
    """One connection of a stub upstream: httptools parses, a subclass answers; a parse error closes."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()


class _StubConnection(_HttpStub):
    def __init__(self, response: bytes) -> None:
        super().__init__()
        self.response = response

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(self.response)


class _ControlledStub(_HttpStub):
    """One connection of ``stub --control``: answers by the posted behaviours (shared ``state``)."""

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__()
        self.state = state
        self.url = b""
        self.body: list[bytes] = []

    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        path = self.url.decode(errors="replace")
        self.state["log"].append(f"{method} {path}")
        body = b"".join(self.body)
        parts = path.strip("/").split("/")
        if method == "POST" and parts[:2] == ["stub", "behaviour"] and len(parts) == 3:
            self.state["behaviours"][parts[2]] = json.loads(body)
            self._send(_http(200, b"{}"))
        elif method == "GET" and path == "/stub/log":
            self._send(_http(200, json.dumps(self.state["log"]).encode()))
        elif method == "GET" and len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[3] == "config":
            config = {"name": parts[2], "max_batch_size": 32, "instance_group": [{"count": 1, "kind": "KIND_CPU"}]}
            self._send(_http(200, json.dumps(config).encode()))
        elif method == "POST" and parts[:3] == ["v2", "repository", "models"] and parts[-1] == "load":
            self._send(_http(200, b"{}"))
        elif method == "POST" and len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[3] == "infer":
            self._infer(self.state["behaviours"].get(parts[2], {"kind": "echo"}), body)
        else:
            self._send(_http(404, b'{"error": "no such stub path"}'))

    def _infer(self, behaviour: dict[str, Any], body: bytes) -> None:
        kind = behaviour.get("kind", "echo")
        if kind == "close":
            if self.transport is not None:
                self.transport.close()
        elif kind == "garbage":
            self._send(b"this is not HTTP\r\n\r\n", close=True)
        elif kind == "raw":
            self._send(_http(int(behaviour.get("status", 200)), str(behaviour.get("body", "")).encode()))
        else:
            answer = _http(200, _echo(json.loads(body), behaviour))
            delay = float(behaviour.get("delayS", 0))
            if delay:
                asyncio.get_running_loop().call_later(delay, self._send, answer)
            else:
                self._send(answer)

    def _send(self, data: bytes, close: bool = False) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            if close:
                self.transport.close()


async def stub(port: int, body: bytes | None) -> None:
    """Answer every request on ``port`` with ``body`` (``None``: the scriptable ``--control`` stub)
    until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    if body is None:
        state: dict[str, Any] = {"behaviours": {}, "log": []}
        server = await loop.create_server(lambda: _ControlledStub(state), "127.0.0.1", port, backlog=1024)
    else:
        response = _http(200, body)
        server = await loop.create_server(lambda: _StubConnection(response), "127.0.0.1", port, backlog=1024)
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    print(json.dumps({"listening": port}), flush=True)
    await stopped.wait()
    server.close()


def _run(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with the workers extra
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paretoserve.research.benchmarks.router_loadgen",
                                     description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("open", "closed"):
        p = sub.add_parser(mode)
        p.add_argument("--url", required=True, action="append", help="target (open: repeat to alternate windows)")
        p.add_argument("--bodies", type=Path, required=True, help="request bodies, one JSON document per line")
        p.add_argument("--duration", type=float, required=True)
        p.add_argument("--header", action="append", default=[], help="NAME:VALUE added to every request")
        if mode == "open":
            p.add_argument("--rate", type=float, required=True)
            p.add_argument("--window", type=float, default=1.0, help="seconds per target when alternating")
            p.add_argument("--out", type=Path, action="append",
                           help="per --url: float64 pairs (window index, latency in seconds)")
            p.add_argument("--started", type=Path, help="write the wall-clock time of window 0's start here")
        else:
            p.add_argument("--concurrency", type=int, default=32)
    s = sub.add_parser("stub")
    s.add_argument("--port", type=int, required=True)
    answer = s.add_mutually_exclusive_group(required=True)
    answer.add_argument("--response", type=Path, help="answer every request with this body")
    answer.add_argument("--control", action="store_true", help="the scriptable fake Triton (see the notes)")
    args = parser.parse_args(argv)
    if args.mode == "stub":
        _run(stub(args.port, None if args.control else args.response.read_bytes()))
        return 0
    bodies = [line.encode() for line in args.bodies.read_text().splitlines() if line.strip()]
    headers = dict(h.split(":", 1) for h in args.header)
    clients = [Client(url, bodies, headers) for url in args.url]
    if args.mode == "closed":
        print(json.dumps(_run(closed_loop(clients[0], args.concurrency, args.duration))), flush=True)
        return 0
    summaries, latencies = _run(open_loop(clients, args.rate, args.duration, args.window, args.started))
    for path, samples in zip(args.out or (), latencies, strict=False):
        with path.open("wb") as out:
            array("d", [value for pair in samples for value in pair]).tofile(out)
    print(json.dumps(summaries if len(summaries) > 1 else summaries[0]), flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
