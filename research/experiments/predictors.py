"""`paretoserve experiment predictors`: how well each load predictor forecasts held-out Twitter days.

IPA's LSTM (12 ten-second maxima → peak of the next 20 s) and InfAdapter's (10 one-minute maxima → the next
minute) are trained on the first 14 days of the trace and scored on the remaining ~8 days against the
planner's own last-value, moving-maximum and EWMA predictors: MAE, RMSE, the under-prediction rate with
and without the loop's 10 % headroom (under-prediction is what turns into SLO violations) and the mean
over-provisioning. `--quick` trains a small model on 2 days and scores one held-out day.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from paretoserve.planner.sim.workload import FloatArray
from paretoserve.research.experiments import data
from paretoserve.research.experiments.harness import clean

DAY = 86400
HEADROOM = 0.1


def run(out: Path, *, quick: bool, window: tuple[int, int] | None, command: str) -> dict[str, Any]:
    from paretoserve.workers.predictors import INFADAPTER_LSTM, IPA_LSTM, load_or_train, score_predictors, windows

    started = time.monotonic()

    series = data.twitter_counts()
    start, end = window or ((14 * DAY, 15 * DAY) if quick else (14 * DAY, len(series)))
    if start < 14 * DAY:
        raise ValueError("the evaluation window must lie after the 14 training days (start >= 1209600)")
    end = min(end, len(series))
    systems: dict[str, dict[str, Any]] = {}
    examples: dict[str, tuple[FloatArray, dict[str, FloatArray]]] = {}
    notes = [f"Trained on days 0-{2 if quick else 14} of the Twitter trace; scored on seconds {start}-{end} "
             f"({(end - start) / DAY:.2f} days). Raw (undamped) requests per second."]
    for base in (IPA_LSTM, INFADAPTER_LSTM):
        spec = replace(base, train_days=2.0, epochs=2, name=f"{base.name}-quick") if quick else base
        model, cached = load_or_train(series, spec, progress=_progress(spec.name))
        sys.stderr.write("\n" if not cached else "")
        stride = 60 if quick else base.stride_s
        for score in score_predictors(series, spec, model, start=start, end=end, stride=stride, headroom=HEADROOM):
            systems[f"{base.name}:{score.name}"] = score.to_dict() | {"horizon_s": spec.horizon_s}
        notes.append(f"`{base.name}`: {spec.bins} maxima of {spec.bin_seconds}-s bins -> peak of the next "
                     f"{spec.horizon_s} s, every {stride} s; LSTM {'loaded from' if cached else 'trained into'} "
                     "the cache" + (" (quick: 2 training days, 2 epochs)" if quick else ""))
        x, y, times = windows(series, spec, start, min(end, start + 3600), stride=spec.bin_seconds)
        examples[base.name] = (times.astype(np.float64), {"actual": y, "lstm": model.predict_features(x)})
    doc = {"experiment": "predictors", "title": "Load predictors on held-out Twitter days", "systems": systems,
           "notes": notes, "config": {"window": [start, end], "headroom": HEADROOM, "command": command, "quick": quick},
           "wall_s": round(time.monotonic() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(clean(doc), indent=2, allow_nan=False) + "\n")
    (out / "results.md").write_text(_markdown(doc))
    _plot(examples, out)
    return doc


def _progress(name: str) -> Any:
    def update(fraction: float) -> None:
        sys.stderr.write(f"\rtraining the {name} LSTM: {fraction:5.0%}")
        sys.stderr.flush()
    return update


def _markdown(doc: dict[str, Any]) -> str:
    lines = [f"# {doc['title']}", "", f"Produced by `{doc['config']['command']}`.", "",
             "| predictor | samples | MAE | RMSE | under-predicted | under, with +10 % | mean over-provision |",
             "|---|---|---|---|---|---|---|"]
    for name, s in doc["systems"].items():
        lines.append(f"| `{name}` | {s['samples']} | {s['mae']:.2f} | {s['rmse']:.2f} | {s['under_rate']:.1%} | "
                     f"{s['under_rate_with_headroom']:.1%} | {s['mean_over_provision']:.1%} |")
    return "\n".join(lines + ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]] + [""])


def _plot(examples: dict[str, tuple[FloatArray, dict[str, FloatArray]]], out: Path) -> None:
    from paretoserve.research.experiments.plots import plt  # the Agg backend is selected there

    fig, axes = plt.subplots(len(examples), 1, figsize=(10, 3.2 * len(examples)))
    for ax, (name, (times, series)) in zip(np.atleast_1d(axes), examples.items(), strict=True):
        ax.plot(times, series["actual"], color="black", linewidth=0.8, label="actual peak")
        ax.plot(times, series["lstm"], color="tab:red", linewidth=0.8, label="LSTM")
        ax.set_title(f"{name}: first held-out hour")
        ax.set_ylabel("req/s")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "predictions.png", dpi=110)
    plt.close(fig)
