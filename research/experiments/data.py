"""Readers for the seed systems' published data in ``<repo>/../shared/data`` (never copied into the repo).

Each reader returns plain numpy arrays or tables and caches them for the process, because several
experiments replay the same trace. See ``shared/data/README.md`` for every file's origin and commit.
``$PARETOSERVE_DATA`` points elsewhere when the checkout is not next to the shared data.
"""

from __future__ import annotations

import csv
import functools
import os
import tarfile
from pathlib import Path

import numpy as np

from paretoserve.planner.sim.workload import FloatArray
from paretoserve.planner.spec import ServingPipeline, load_pipeline_text

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"


class DataMissing(FileNotFoundError):
    """The shared reference data is not where the experiments look for it."""


def data_root() -> Path:
    env = os.environ.get("PARETOSERVE_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for path in candidates:
        if (path / "README.md").exists():
            return path
    raise DataMissing(f"shared reference data not found (looked in {', '.join(map(str, candidates))}); "
                      "set PARETOSERVE_DATA")


def path(relative: str) -> Path:
    target = data_root() / relative
    if not target.exists():
        raise DataMissing(f"{target} is missing")
    return target


@functools.lru_cache(maxsize=1)
def twitter_counts() -> FloatArray:
    """The Twitter trace: requests per second over 1,899,061 s (InfAdapter/IPA's workload.tbz2)."""
    with tarfile.open(path("traces/twitter-2018-04-workload.tbz2")) as archive:
        member = archive.extractfile("workload.txt")
        if member is None:
            raise DataMissing("workload.txt is not a file in the Twitter archive")
        values = np.array(member.read().split(), dtype=np.float64)
    return values


def twitter_window(start: int, end: int, damping: int = 1) -> FloatArray:
    """Counts in [start, end), divided by `damping` and floored (IPA damps the trace by 8)."""
    counts = twitter_counts()
    if not 0 <= start < end <= len(counts):
        raise ValueError(f"trace window {start}:{end} lies outside the Twitter trace (0:{len(counts)})")
    return np.asarray(np.floor(counts[start:end] / damping), dtype=np.float64)


@functools.lru_cache(maxsize=8)
def maf_trace(name: str) -> FloatArray:
    """Arrival times in seconds of a DiffServe MAF trace (first column: arrival in ms; second: prompt id)."""
    relative = f"diffserve/traces/maf/dynamic_testbed/{name}.txt"
    rows = np.loadtxt(path(relative), delimiter=",", ndmin=2)
    return np.sort(rows[:, 0] / 1000.0)


@functools.lru_cache(maxsize=4)
def confidences(light: str = "sdturbo") -> FloatArray:
    """DiffServe's replayable discriminator confidences of the light model's images (`models/dist_*.txt`)."""
    return np.loadtxt(path(f"diffserve/models/dist_{light}.txt"), dtype=np.float64)


@functools.lru_cache(maxsize=1)
def bandwidth_bytes_per_ms() -> FloatArray:
    """Sponge's 4G/LTE log: bytes received / elapsed ms of each (≈1 s) sample, as Sponge's loader reads it."""
    rows = np.loadtxt(path("sponge/report_bus_0001.log"), ndmin=2)
    return np.asarray(rows[:, 4] / rows[:, 5], dtype=np.float64)


def hadis_tables() -> tuple[list[dict[str, str]], dict[str, float]]:
    """HADIS's Pareto rows (light, heavy, thresholds, route ratio, FID) and per-image latency (s) per model."""
    with path("hadis/pareto-hybrid.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with path("hadis/latency.csv").open(newline="") as f:
        latency = {r["model"]: float(r["base_latency_s_per_image_L40S"]) for r in csv.DictReader(f)}
    return rows, latency


def example(name: str) -> ServingPipeline:
    """One of the committed example manifests (`manifests/examples/<name>.yaml`)."""
    return load_pipeline_text((EXAMPLES / f"{name}.yaml").read_text(encoding="utf-8"))
