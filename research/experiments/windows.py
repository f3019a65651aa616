"""`--windows auto[:N]`: evaluation windows of the Twitter trace chosen by a fixed rule, not by hand.

Design decisions were made on the first 14 days of the trace (the predictors' training split); these
windows come from the rest, so they test whether the decisions generalise. The rule:

- Candidates are windows of the experiment's length that start on or after day 14 and contain no second
  without requests (the trace has gaps where collection stopped).
- A rise at second t is the mean load of the 30 s from t over the mean of the 60 s before t. Bursty
  windows: the ceil(N/2) steepest rises, steepest first, each placed so the rise comes a third of the way
  in, none overlapping another.
- Calm windows: the remaining N - ceil(N/2), drawn with `seed` from the non-overlapping candidates whose
  steepest rise is below 1.2 (no rise of more than 20 %).

The rule reads the raw trace only, never a simulation, so it cannot pick windows that suit ParetoServe.
`design_windows` applies the same rule to days 0-14, for the windows design decisions are made on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paretoserve.planner.sim.workload import FloatArray

EVALUATION_START_S = 14 * 86400
BEFORE_S = 60
AFTER_S = 30
CALM_RISE = 1.2
DEFAULT_COUNT = 6
SEED = 20240601


@dataclass(frozen=True, slots=True)
class Window:
    kind: str
    """'bursty' or 'calm'."""
    start: int
    end: int
    rise: float
    """The steepest 60 s -> 30 s rise inside the window."""

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.start}"


def parse_windows(text: str) -> int:
    """`auto` or `auto:N` (1 <= N <= 40) -> N."""
    if text == "auto":
        return DEFAULT_COUNT
    head, _, count = text.partition(":")
    if head != "auto" or not count.isdigit() or not 1 <= int(count) <= 40:
        raise ValueError(f"--windows must be auto or auto:N with 1 <= N <= 40, got {text!r}")
    return int(count)


def rises(counts: FloatArray) -> FloatArray:
    """rise[t] = mean(counts[t:t+30]) / mean(counts[t-60:t]) (0 where either span leaves the trace)."""
    total = np.concatenate([[0.0], np.cumsum(counts)])
    t = np.arange(len(counts))
    ok = (t >= BEFORE_S) & (t + AFTER_S <= len(counts))
    out = np.zeros(len(counts))
    tt = t[ok]
    before = (total[tt] - total[tt - BEFORE_S]) / BEFORE_S
    after = (total[tt + AFTER_S] - total[tt]) / AFTER_S
    out[ok] = np.divide(after, before, out=np.zeros(len(tt)), where=before > 0)
    return out


def _clear(counts: FloatArray, start: int, end: int, first: int = EVALUATION_START_S) -> bool:
    return start >= first and end <= len(counts) and bool(np.all(counts[start:end] > 0))


def _overlaps(start: int, end: int, taken: list[Window]) -> bool:
    return any(start < w.end and w.start < end for w in taken)


def auto_windows(counts: FloatArray, length: int, count: int, *, seed: int = SEED,
                 first: int = EVALUATION_START_S) -> list[Window]:
    """`count` windows of `length` seconds starting at or after `first` (default: the evaluation split), by
    the module's rule."""
    rise = rises(counts)
    rise[:first] = 0.0
    chosen: list[Window] = []
    for t in np.argsort(-rise, kind="stable"):
        if len(chosen) >= math.ceil(count / 2) or rise[t] <= CALM_RISE:
            break
        start = int(t) - length // 3
        end = start + length
        if _clear(counts, start, end, first) and not _overlaps(start, end, chosen):
            chosen.append(Window("bursty", start, end, float(rise[t])))
    calm: list[Window] = []
    for start in range(first, len(counts) - length + 1, length):
        steepest = float(rise[start:start + length].max())
        if steepest < CALM_RISE and _clear(counts, start, start + length, first) \
                and not _overlaps(start, start + length, chosen):
            calm.append(Window("calm", start, start + length, steepest))
    rng = np.random.default_rng(seed)
    wanted = min(count - len(chosen), len(calm))
    picks = sorted(rng.choice(len(calm), size=wanted, replace=False).tolist()) if wanted > 0 else []
    return chosen + [calm[i] for i in picks]


def design_windows(counts: FloatArray, length: int, count: int, *, history_s: int = 900,
                   seed: int = SEED) -> list[Window]:
    """The same rule on the training split (days 0-14) only, each window with `history_s` of trace before it:
    the windows to make design decisions on. The trace after day 14 is cut off first, so no rise or window
    reads the evaluation split."""
    return auto_windows(counts[:EVALUATION_START_S], length, count, seed=seed, first=history_s)


TWITTER_EXPERIMENTS = {"ipa-video": 1200, "infadapter": 1260}
"""Experiments on the Twitter trace, with the length of their published windows (seconds)."""


def window_summary(doc: dict[str, Any]) -> str:
    """Markdown: ParetoServe per window (with what dominates it), then every system over all windows."""
    from paretoserve.research.experiments.frontier import OURS, describe, dominating

    lines = ["| window (trace s) | kind | steepest rise | ParetoServe | dominated by |", "|---|---|---|---|---|"]
    for w in doc["windows"]:
        over = dominating(w["systems"]) if OURS in w["systems"] else []
        lines.append(f"| {w['start']}:{w['end']} | {w['kind']} | {w['rise']:.2f}x | "
                     f"{describe(w['systems'][OURS])} | {', '.join(over) or 'none'} |")
    names = list(doc["windows"][0]["systems"]) if doc["windows"] else []
    lines += ["", "| system | worst SLO | mean SLO | mean accuracy | mean cost | windows where it dominates "
              "ParetoServe |", "|---|---|---|---|---|---|"]
    for name in names:
        rows = [w["systems"][name] for w in doc["windows"]]
        wins = sum(name in dominating(w["systems"]) for w in doc["windows"] if OURS in w["systems"])
        accuracy = [r["accuracy"] for r in rows if r.get("accuracy") is not None]
        lines.append(f"| `{name}` | {min(r['slo_attainment'] for r in rows):.2%} | "
                     f"{float(np.mean([r['slo_attainment'] for r in rows])):.2%} | "
                     f"{float(np.mean(accuracy)) if accuracy else float('nan'):.4f} | "
                     f"{float(np.mean([r['cost'] for r in rows])):.2f} | {wins} |")
    return "\n".join(lines)


def run_windows(name: str, out: Path, count: int, *, command: str, show_progress: bool = True) -> dict[str, Any]:
    """Every system of a Twitter-trace experiment on each `auto_windows` window, each run on its own
    (static baselines are sized for that window's peak); writes DIR/results.json and DIR/results.md."""
    import importlib

    from paretoserve.research.experiments import EXPERIMENTS, data
    from paretoserve.research.experiments.harness import clean, run_setup

    if name not in TWITTER_EXPERIMENTS:
        raise ValueError(f"--windows applies to the Twitter-trace experiments ({', '.join(TWITTER_EXPERIMENTS)}), "
                         f"not {name}")
    module = importlib.import_module(EXPERIMENTS[name])
    chosen = auto_windows(data.twitter_counts(), TWITTER_EXPERIMENTS[name], count)
    windows = []
    title, notes = name, []
    for w in chosen:
        setup = module.setup(False, (w.start, w.end))
        doc, _ = run_setup(setup, show_progress=show_progress)
        title, notes = doc["title"], doc["notes"]
        windows.append({"name": w.name, "kind": w.kind, "start": w.start, "end": w.end, "rise": w.rise,
                        "systems": doc["systems"], "claims": doc["claims"]})
    result = {"experiment": name, "title": f"{title}: --windows auto:{count}", "windows": windows, "notes": notes,
              "config": {"command": command, "rule": (__doc__ or "").strip()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(clean(result), indent=2, allow_nan=False) + "\n")
    body = [f"# {result['title']}", "", f"Produced by `{command}`.", "", window_summary(result), ""]
    body += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    (out / "results.md").write_text("\n".join(body))
    return result
