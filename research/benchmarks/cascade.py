"""`paretoserve bench cascade`: the cascade's accuracy-cost curve on the held-out digits, measured.

The planner chooses a cascade threshold from a table of operating points: f(t), the share of
requests the heavy model also serves at threshold ``t``, and the accuracy reached (DiffServe's
f(t), HADIS' Pareto rows). This benchmark measures that table with the real thing: a real Triton
server serving ``tiny_linear`` (light), ``cnn_large`` (heavy) and the ``discriminator``, and the
router itself (in process, over its real upstream transport), sweeping the threshold through
``POST /admin/config`` (the admin app, with its bearer token) exactly as the operator would. Every
held-out image is classified at every threshold (batched requests, routed row by row), for three
routers: ``confidence`` (defer when the light model's max softmax < t), ``discriminator`` (defer
when 1 - P(light wrong) < t) and ``hybrid`` (pre-route rows with request hardness >= 0.35 straight
to the heavy model, the discriminator check on the rest). The all-light and all-heavy end points are
measured through the router too. Each curve is cross-checked against the same decision recomputed
offline from the models' raw outputs (``matches_offline``).

Reported: the rows (threshold, heavyFraction, accuracy) per router, the best operating point --
the smallest heavy fraction whose accuracy is within 0.5 percentage points of all-heavy -- the
rows in the CRD's ``CascadeRow`` form (``threshold``, ``heavyFraction``, ``quality`` = accuracy)
ready for a ServingPipeline, and a PNG of accuracy against heavy fraction. The PNG and a JSON copy
go to ``$PARETOSERVE_BENCH_OUT`` or ``--out DIR`` (``python -m
paretoserve.research.benchmarks.cascade``), else to a fresh temporary directory named in the
output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from paretoserve.workers.models import ensure_trained, load_split
from paretoserve.workers.router.app import build_router
from paretoserve.workers.router.config import parse_config
from paretoserve.workers.router.decisions import hardness
from paretoserve.workers.triton.repository import spec_from_cached_variant, write_repository
from paretoserve.workers.triton.server import TritonServer, TritonServerConfig

OUT_ENV = "PARETOSERVE_BENCH_OUT"
LIGHT, HEAVY, DISCRIMINATOR = "tiny_linear", "cnn_large", "discriminator"
HYBRID_PRE_ROUTE = 0.35
TOLERANCE = 0.005
"""Best point: accuracy within 0.5 percentage points of all-heavy."""
ROWS_PER_REQUEST = 30


def thresholds(quick: bool) -> list[float]:
    """The sweep: 0..1 by 0.05 (quick) or 0.02, then finer towards 1 where scores crowd.

    Both scores pile up just below 1 (a confident light model; a discriminator sure the light
    model is right), so 0.91..0.99 by 0.01, 0.991..0.999 by 0.001 and 0.9995, 0.9999 are added.
    """
    step = 0.05 if quick else 0.02
    grid = {round(i * step, 4) for i in range(int(round(1 / step)) + 1)}
    grid |= {round(0.9 + i * 0.01, 4) for i in range(1, 10)}
    grid |= {round(0.99 + i * 0.001, 4) for i in range(1, 10)} | {0.9995, 0.9999}
    return sorted(grid)


def _configs(upstream: str) -> dict[str, dict[str, Any]]:
    def cascade(router: str, **extra: Any) -> dict[str, Any]:
        return {"light": LIGHT, "heavy": HEAVY, "router": router, "threshold": 0.0, **extra}

    upstreams = {model: [upstream] for model in (LIGHT, HEAVY, DISCRIMINATOR)}
    stages: dict[str, dict[str, Any]] = {
        "light": {"variants": {LIGHT: 1}},
        "heavy": {"variants": {HEAVY: 1}},
        "confidence": {"cascade": cascade("confidence")},
        "discriminator": {"cascade": cascade("discriminator", discriminator=DISCRIMINATOR)},
        "hybrid": {"cascade": cascade("hybrid", discriminator=DISCRIMINATOR, preRouteThreshold=HYBRID_PRE_ROUTE)},
    }
    return {name: {"pipeline": name, "stages": [{"name": "classify", **stage}], "upstreams": upstreams,
                   "queue": {"concurrency": 8}} for name, stage in stages.items()}


def _request(images: npt.NDArray[np.float32]) -> dict[str, Any]:
    tensor = {"name": "IMAGE", "shape": [len(images), 8, 8], "datatype": "FP32",
              "data": images.reshape(-1).tolist()}
    return {"inputs": [tensor], "outputs": [{"name": "LABEL"}]}


async def _classify(client: httpx.AsyncClient, path: str, images: npt.NDArray[np.float32]) -> tuple[list[int], int]:
    """Labels for every image and how many rows the heavy model served."""
    chunks = [images[i : i + ROWS_PER_REQUEST] for i in range(0, len(images), ROWS_PER_REQUEST)]
    answers = await asyncio.gather(*(client.post(path, json=_request(chunk)) for chunk in chunks))
    labels: list[int] = []
    heavy = 0
    for answer in answers:
        answer.raise_for_status()
        body = answer.json()
        labels += [int(v) for v in body["outputs"][0]["data"]]
        heavy += int(body["parameters"]["deferred"]) + int(body["parameters"]["prerouted"])
    return labels, heavy


async def _raw(client: httpx.AsyncClient, model: str, images: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[Any]]:
    """A model's raw outputs through the router's transparent proxy."""
    outputs: dict[str, list[npt.NDArray[Any]]] = {}
    for i in range(0, len(images), ROWS_PER_REQUEST):
        chunk = images[i : i + ROWS_PER_REQUEST]
        body = {"inputs": _request(chunk)["inputs"]}
        answer = await client.post(f"/v2/models/{model}/infer", json=body)
        answer.raise_for_status()
        for tensor in answer.json()["outputs"]:
            outputs.setdefault(tensor["name"], []).append(np.asarray(tensor["data"]).reshape(tensor["shape"]))
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def _best(rows: Sequence[dict[str, float]], target: float) -> dict[str, float] | None:
    eligible = [row for row in rows if row["accuracy"] >= target - 1e-12]
    return min(eligible, key=lambda row: (row["heavyFraction"], row["threshold"])) if eligible else None


async def _sweep(upstream: str, images: npt.NDArray[np.float32], labels: npt.NDArray[np.int64],
                 grid: Sequence[float]) -> dict[str, Any]:
    results: dict[str, Any] = {"routers": {}}
    offline: dict[str, npt.NDArray[Any]] = {}
    for name, raw in _configs(upstream).items():
        token = secrets.token_urlsafe(16)
        apps = build_router(parse_config(raw), admin_token=token)
        async with apps.running(), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=apps.data), base_url="http://router", timeout=120.0
        ) as client, httpx.AsyncClient(transport=httpx.ASGITransport(app=apps.admin), base_url="http://admin",
                                       headers={"authorization": f"Bearer {token}"}) as admin:
            path = f"/v2/pipelines/{name}/infer"
            if name in ("light", "heavy"):
                predicted, _ = await _classify(client, path, images)
                results[f"all_{name}"] = {"model": LIGHT if name == "light" else HEAVY,
                                          "accuracy": float(np.mean(np.asarray(predicted) == labels))}
                offline[name] = np.asarray(predicted)
                if name == "light":
                    offline["confidence"] = _raw_confidence(await _raw(client, LIGHT, images))
                    offline["score"] = 1.0 - (await _raw(client, DISCRIMINATOR, images))["PROBS"][:, 1]
                continue
            rows = []
            for t in grid:
                update = await admin.post("/admin/config", json={"stages": [{"name": "classify",
                                                                             "cascade": {"threshold": t}}]})
                update.raise_for_status()
                predicted, heavy_rows = await _classify(client, path, images)
                rows.append({"threshold": t, "heavyFraction": heavy_rows / len(images),
                             "accuracy": float(np.mean(np.asarray(predicted) == labels)),
                             "_expected": _expected(name, t, offline, images, labels)})
            results["routers"][name] = rows
    return results


def _raw_confidence(outputs: dict[str, npt.NDArray[Any]]) -> npt.NDArray[Any]:
    return np.asarray(outputs["CONFIDENCE"]).reshape(-1)


def _expected(router: str, t: float, offline: dict[str, npt.NDArray[Any]], images: npt.NDArray[np.float32],
              labels: npt.NDArray[np.int64]) -> tuple[float, float]:
    """(heavy fraction, accuracy) of ``router`` at ``t`` recomputed from the raw model outputs."""
    if router == "confidence":
        heavy = offline["confidence"] < t
    else:
        heavy = offline["score"] < t
        if router == "hybrid":
            hard = np.asarray([hardness(image.reshape(-1).tolist()) for image in images]) >= HYBRID_PRE_ROUTE
            heavy = heavy | hard
    predicted = np.where(heavy, offline["heavy"], offline["light"])
    return float(heavy.mean()), float(np.mean(predicted == labels))


def _plot(results: dict[str, Any], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, rows in results["routers"].items():
        axes.plot([r["heavyFraction"] for r in rows], [100 * r["accuracy"] for r in rows], marker=".", label=name)
    light, heavy = results["all_light"]["accuracy"], results["all_heavy"]["accuracy"]
    axes.scatter([0.0, 1.0], [100 * light, 100 * heavy], color="black", zorder=3, label="all-light / all-heavy")
    axes.axhline(100 * target, color="grey", linestyle="--", linewidth=1, label="all-heavy - 0.5 pp")
    axes.set_xlabel("fraction of requests served by the heavy model (cost)")
    axes.set_ylabel("held-out accuracy (%)")
    axes.set_title(f"Cascade {LIGHT} -> {HEAVY} on held-out digits (n={results['heldout_size']})")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def bench_cascade(quick: bool = False, out_dir: Path | None = None) -> dict[str, Any]:
    """Run the sweep and return the JSON report (see the module notes)."""
    configured = out_dir or (Path(os.environ[OUT_ENV]) if os.environ.get(OUT_ENV) else None)
    out = configured or Path(tempfile.mkdtemp(prefix="paretoserve-cascade-"))
    out.mkdir(parents=True, exist_ok=True)
    catalog = ensure_trained()
    split = load_split()
    with tempfile.TemporaryDirectory(prefix="paretoserve-cascade-triton-") as tmp:
        specs = [spec_from_cached_variant(catalog.variant_dir(v), max_batch_size=32, max_queue_delay_us=0)
                 for v in (LIGHT, HEAVY, DISCRIMINATOR)]
        repository = write_repository(Path(tmp) / "repository", specs)
        config = TritonServerConfig(model_repository=repository, models=(LIGHT, HEAVY, DISCRIMINATOR),
                                    work_dir=Path(tmp) / "triton")
        with TritonServer(config) as triton:
            results = asyncio.run(_sweep(f"http://{triton.http_url}", split.x_test, split.y_test, thresholds(quick)))
    results["heldout_size"] = len(split.y_test)
    target = results["all_heavy"]["accuracy"] - TOLERANCE
    results["target_accuracy"] = target
    mismatches = 0
    for rows in results["routers"].values():
        for row in rows:
            expected_fraction, expected_accuracy = row.pop("_expected")
            mismatches += abs(expected_fraction - row["heavyFraction"]) > 1e-9
            mismatches += abs(expected_accuracy - row["accuracy"]) > 1e-9
    results["matches_offline"] = mismatches == 0
    best = {name: _best(rows, target) for name, rows in results["routers"].items()}
    results["best_by_router"] = best
    candidates = [{"router": name, **row} for name, row in best.items() if row is not None]
    results["best"] = min(candidates, key=lambda c: c["heavyFraction"]) if candidates else None
    results["cascade_rows"] = {
        name: [{"threshold": r["threshold"], "heavyFraction": round(r["heavyFraction"], 6),
                "quality": round(r["accuracy"], 6)} for r in rows]
        for name, rows in results["routers"].items()
    }
    png = out / "cascade_accuracy_cost.png"
    _plot(results, target, png)
    results["png"] = str(png)
    results["out_dir"] = str(out)
    (out / "cascade.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, help="directory for the PNG and cascade.json")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="compact JSON on one line")
    args = parser.parse_args(argv)
    print(json.dumps(bench_cascade(args.quick, args.out), indent=None if args.json else 2))


if __name__ == "__main__":
    main()
