"""Streamed completions from a pod in the cluster (the e2e real-node tier's generation client runs this).

Sends each request of a JSON list to a pipeline's Service as a client would: ``POST /v1/completions`` with
``stream: true`` (OpenAI chunks, then ``[DONE]``) or ``POST /v2/models/{pipeline}/generate_stream`` (Triton's
generate extension), in turn over ``--endpoints``, a few at a time; with ``--seconds``, round the list again until
that long has passed (a steady stream of requests while something else happens). A request is a prompt (text) or
``{"prompt": ..., "image": [64 floats]}``, a multimodal pipeline's question about an image: its generate body
carries the ``IMAGE`` beside the ``PROMPT`` (a completion is text only, so such a pipeline is sent
``--endpoints generate_stream``). Reads every Server-Sent Event as it arrives and prints one JSON object: per
request its index in the list, the endpoint, the HTTP status, the model that answered (the router's
``x-paretoserve-variant`` header), the route (``x-paretoserve-route``), the text streamed, whether the stream
ended properly (``[DONE]``; a generate stream: closed with no error event) and any error event; plus the epoch
times the first request started and the last one ended. Standard library only: the test reads exactly what a
pod got.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _events(answer: http.client.HTTPResponse) -> list[str]:
    """The ``data:`` payloads of an SSE stream, read line by line as they arrive."""
    events = []
    for raw in answer:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            events.append(line[6:])
    return events


def complete(url: str, pipeline: str, request: str | dict[str, Any], endpoint: str, timeout_s: float,
             index: int = 0) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    prompt = request if isinstance(request, str) else str(request["prompt"])
    image = None if isinstance(request, str) else request.get("image")
    if endpoint == "completions":
        path, body = "/v1/completions", {"model": pipeline, "prompt": prompt, "stream": True}
    else:
        path, body = f"/v2/models/{pipeline}/generate_stream", {"PROMPT": prompt}
        if image is not None:
            body["IMAGE"] = image
    result: dict[str, Any] = {"index": index, "prompt": prompt, "endpoint": endpoint}
    started = time.monotonic()
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout_s)
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
        answer = connection.getresponse()
        result.update(status=answer.status, variant=answer.getheader("x-paretoserve-variant"),
                      route=answer.getheader("x-paretoserve-route"))
        if answer.status != 200:
            result["error"] = answer.read().decode(errors="replace")[:500]
            return result
        events = _events(answer)
    except OSError as error:
        result.update(status=f"error:{type(error).__name__}", error=str(error)[:300])
        return result
    finally:
        connection.close()
    # a completion stream ends with [DONE]; a generate stream with the connection closed after its last event
    text, ended, errors = [], endpoint != "completions", []
    for event in events:
        if event == "[DONE]":
            ended = True
            continue
        data = json.loads(event)
        if "error" in data:
            errors.append(data)
        elif endpoint == "completions":
            text.append(data["choices"][0]["text"])
        else:
            text.append(data.get("TOKEN", ""))
    result.update(text="".join(text), ended=ended and not errors, errors=errors, events=len(events),
                  seconds=round(time.monotonic() - started, 4))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the pipeline's Service, e.g. http://p.ns.svc.cluster.local:8080")
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--prompts", required=True,
                        help='JSON file: a list of prompts, or of {"prompt": ..., "image": [floats]}')
    parser.add_argument("--endpoints", default="completions,generate_stream",
                        help="comma-separated, used in turn (default: completions,generate_stream)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="keep sending (the list over again) until this many seconds passed; 0: the list once")
    args = parser.parse_args()
    with open(args.prompts) as file:
        prompts: list[str | dict[str, Any]] = json.load(file)
    endpoints = args.endpoints.split(",")
    started, clock = time.time(), time.monotonic()

    def worker(first: int) -> list[dict[str, Any]]:
        done = []
        i = first
        while (i < len(prompts)) if args.seconds <= 0 else (time.monotonic() - clock < args.seconds):
            done.append(complete(args.url, args.pipeline, prompts[i % len(prompts)], endpoints[i % len(endpoints)],
                                 args.timeout, index=i % len(prompts)))
            i += args.concurrency
        return done

    with ThreadPoolExecutor(args.concurrency) as pool:
        answers = [a for done in pool.map(worker, range(args.concurrency)) for a in done]
    print(json.dumps({"answers": answers, "started": started, "ended": time.time(),
                      "seconds": round(time.monotonic() - clock, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
