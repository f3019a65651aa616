"""Open-loop load from a pod in the cluster against a pipeline's Service (the e2e real-node tier runs this).

Mounted from a ConfigMap into a pod of the operator/router image, which carries ParetoServe's own open-loop
load generator (`paretoserve.workers.runtime.loadgen`) and its dependencies; the held-out digits come in the
same ConfigMap as JSON. Phases are ``RATExSECONDS`` (requests/s for that long). Prints one JSON object:
counts per outcome (every request sent is answered or counted as an explicit error), accuracy of the
answers, latency percentiles and per-second counts, so the test can see when errors happened.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

from paretoserve.workers.runtime.loadgen import LoadSettings, run_replay


def offsets(phases: str) -> list[float]:
    times: list[float] = []
    start = 0.0
    for phase in phases.split(","):
        rate, seconds = (float(x) for x in phase.split("x"))
        count = int(rate * seconds)
        times += [start + i / rate for i in range(count)]
        start += seconds
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--phases", required=True, help="RATExSECONDS[,RATExSECONDS...]")
    parser.add_argument("--data", required=True, help="JSON {images: [[...64 floats]], labels: [...]}")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    data = json.loads(Path(args.data).read_text())
    images = np.asarray(data["images"], dtype=np.float32).reshape(-1, 8, 8)
    labels = np.asarray(data["labels"], dtype=np.int64)
    settings = LoadSettings(url=args.url, pipeline=args.pipeline, request_timeout_s=args.timeout,
                            max_in_flight=512, drain_timeout_s=args.timeout + 5)
    records = run_replay(settings, offsets(args.phases), images, labels)
    outcomes = collections.Counter(r.error or "ok" for r in records)
    answered = [r for r in records if r.error is None]
    latencies = [r.latency_ms for r in answered if r.latency_ms is not None]
    per_second: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in records:
        per_second[int(r.offset_s)][r.error or "ok"] += 1
    print(json.dumps({
        "sent": len(records),
        "retried": sum(r.retried for r in records),
        "outcomes": dict(outcomes),
        "accuracy": (sum(r.predicted == r.label for r in answered) / len(answered)) if answered else None,
        "latencyMs": {f"p{p}": float(np.percentile(latencies, p)) for p in (50, 90, 99)} if latencies else {},
        "perSecond": {str(s): dict(c) for s, c in sorted(per_second.items())},
    }, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
