"""Generate docs/results.md from full experiment runs: our numbers beside the papers' headlines.

    paretoserve experiment ipa-video --out runs/ipa-video     # … and the other five
    paretoserve experiment ipa-video --windows auto:8 --out runs/ipa-video-windows   # and infadapter
    paretoserve bench simulator --json > runs/bench-simulator.json
    python -m paretoserve.research.experiments.report runs --out docs/results.md

Every table comes from a results.json and names the command that produced it; every "direction
reproduced" verdict is the experiment's own claim check, so the document cannot say more than the runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paretoserve.research.experiments import EXPERIMENTS
from paretoserve.research.experiments.tables import claims_table, system_table
from paretoserve.research.experiments.windows import TWITTER_EXPERIMENTS, window_summary

HEADLINES = {
    "ipa-video": "IPA (JSys 2024): accuracy up to +21 % at minimal cost increase (earlier version: +35 % normalised "
                 "accuracy, cost < +5 %), vs FA2 / RIM baselines.",
    "infadapter": "InfAdapter (EuroMLSys '23): SLO violations down up to 65 % and cost down up to 33 % vs the "
                  "Kubernetes VPA.",
    "sponge": "Sponge (EuroMLSys '24): no number in the abstract (a third-party summary claims > 15x fewer SLO "
              "violations than horizontal autoscalers, unverified); trend only.",
    "diffserve": "DiffServe (MLSys 2025): response quality up to +24 %, latency-violation rates 19-70 % lower than "
                 "state-of-the-art baselines.",
    "hadis": "HADIS (arXiv 2509.00642): response quality up to +35 %, latency-violation rates 2.7-45x lower.",
    "agents": "Critical-path-aware agent serving (Kairos, LAMaS, Teola, Parrot, Autellix; anchors-2026.md): "
              "shorter end-to-end latency of multi-agent DAGs at comparable quality; no common benchmark.",
    "llm": "Token generation with a query-aware split (issue 15; DiffServe's threshold-in-the-program, the "
           "production LLM planners of anchors-2026.md): TTFT/ITL SLOs, quality and cost against all-small, "
           "all-large and a fixed threshold; target: within 1 point of all-large at well under half its cost.",
    "llm-mm": "Query-aware serving of multimodal LLMs (the seed thesis's extension): the same comparison with a "
              "split on text and image features; visual tokens in the prefill and the KV cache.",
    "predictors": "IPA trains its LSTM on 14 days of the Twitter trace and tests on the rest; no error figure in "
                  "the abstract.",
}


def load_runs(root: Path) -> dict[str, dict[str, Any]]:
    runs = {}
    for name in EXPERIMENTS:
        path = root / name / "results.json"
        if path.exists():
            runs[name] = json.loads(path.read_text())
    return runs


def load_window_runs(root: Path) -> dict[str, dict[str, Any]]:
    """`paretoserve experiment NAME --windows auto:N --out DIR/NAME-windows` runs, by experiment."""
    runs = {}
    for name in TWITTER_EXPERIMENTS:
        path = root / f"{name}-windows" / "results.json"
        if path.exists():
            runs[name] = json.loads(path.read_text())
    return runs


DESIGN_WINDOWS = {
    "infadapter": "The surge load, the hold for a starting change, the release rule (docs/planner.md, "
                  "\"Between rounds\") and queue-aware capacity at utilisation 1 instead of InfAdapter's κ = 0.8 "
                  "were decided on the same rule applied to days 0-14 (each window with "
                  "900 s of history before it): bursty 1184104:1185364, 836783:838043, 62734:63994, "
                  "147303:148563 and calm 160920:162180, 169740:171000, 687600:688860, 944640:945900.",
}
"""Training-split windows behind an experiment's latest design decisions, where recorded."""


def windows_section(name: str, doc: dict[str, Any]) -> list[str]:
    design = f" {DESIGN_WINDOWS[name]}" if name in DESIGN_WINDOWS else ""
    return [f"## Generalisation: {name} on windows chosen by rule", "",
            f"**Command.** `{doc['config']['command']}`", "",
            "Design decisions were made on days 1-14 of the Twitter trace only; these windows come from the rest "
            "(`research/experiments/windows.py`): the ceil(N/2) steepest rises (mean of the 30 s after over the "
            "60 s before), each a third of the way into its window, and a seeded sample of calm windows (no rise "
            "above 1.2x); none overlap, none has a second without requests. Each window is a separate run (static "
            f"baselines sized for its own peak).{design}", "", window_summary(doc), ""]


def predictor_table(doc: dict[str, Any]) -> str:
    lines = ["| predictor | MAE | RMSE | under-predicted | under, with +10 % |", "|---|---|---|---|---|"]
    for name, s in doc["systems"].items():
        lines.append(f"| `{name}` | {s['mae']:.2f} | {s['rmse']:.2f} | {s['under_rate']:.1%} | "
                     f"{s['under_rate_with_headroom']:.1%} |")
    return "\n".join(lines)


def section(name: str, doc: dict[str, Any]) -> list[str]:
    out = [f"## {doc.get('title', name)}", "", f"**Paper.** {HEADLINES.get(name, '')}", ""]
    command = doc.get("config", {}).get("command", "")
    if command:
        out += [f"**Command.** `{command}` (wall time {doc.get('wall_s', '?')} s)", ""]
    if name == "predictors":
        out += [predictor_table(doc), ""]
    else:
        out += [system_table(doc), ""]
        claims = claims_table(doc.get("claims", []))
        if claims:
            out += ["**Against the paper.**", "", claims, ""]
    notes = doc.get("notes", [])
    if notes:
        out += ["**Setup.**", ""] + [f"- {n}" for n in notes] + [""]
    return out


WHERE_WE_DO_WORSE = """## Where we do worse, and the trade-off made

- **InfAdapter's bursty windows (E2): 98.4-99.3 % SLO attainment, under the 99 % goal on one of four
  (1349716:1350976, 98.39 %).** At the steepest rise the load goes from about 45 to 160-170 requests/s within
  1-2 s, and a new ResNet replica loads for 6.4-8.5 s. A pool short of capacity serves every queued request
  late (FIFO, abandoned after two SLOs), so a policy that reacts to the load loses about every request of the
  7.4 s after the onset (one 2-s load check on average plus ResNet-18's 6.44 s load): by the trace alone
  0.75-1.23 % of these windows' requests, so 1349716 (1.23 %) can hardly reach 99 % without capacity held
  before the burst or a data plane that refuses the requests it can no longer serve in time. Measured with a
  throwaway change to the simulator (not in the repository), not built: pools that refuse a request once it
  has waited longer than the SLO minus their latency (what Triton's queue policy `REJECT` does with that
  timeout) keep the short pool's capacity serving
  on time instead of serving everyone late, and take these four windows to 99.50/99.13/99.56/99.64 % (the
  training windows to 99.59/99.61/99.58/99.69 %) at the same cost; the data plane does not set that timeout
  yet. The timeout has to follow each pool's own latency: one per variant (the SLO minus its fastest size's
  latency, which would not need a Triton reload when cores change) leaves 1349716 at 98.39 %. Planning for
  where the burst is going once the load outgrew the plan (the newest peak plus the rising trend over the load
  time; the most the 20 cores carry, i.e. ResNet-18, when nothing carries that) and replacing a starting change
  that will fall short instead of waiting for it took the training windows (days 0-14, same rule: 1184104,
  836783, 62734, 147303) from 98.10/98.68/99.49/99.09 % to 99.17/99.16/100.00/99.18 %. Dropping κ = 0.8 on top
  of queue-aware capacity (decided on the same eight training windows: 3-15 % fewer cores on every one,
  +0.004-0.005 accuracy on the bursty ones, all still >= 99 %: 99.17/99.11/99.10/99.20 %) took these windows
  from 98.97/99.21/99.29/98.44 % at 17.45/18.73/21.11/16.02 cores to 99.01/99.13/99.27/98.39 % at
  16.75/18.31/19.42/15.56 cores, each with 0.004-0.007 more accuracy (the published window: 99.31 % at 17.08
  cores to 99.27 % at 16.63, accuracy 0.7322 to 0.7361). Where it still misses, the first second of
  the burst (1.5x) gives a trend far short of where the load goes, so the first order is too small and the
  second waits another load time (1349716: capacity 11 s after the onset). `static-min-cost` (ResNet-18
  sized once for the window's peak) keeps 99.86-100 % at 15-18 cores for 0.03-0.04 less accuracy: it holds
  the peak's capacity all the time. No baseline dominates ParetoServe on a bursty window.
- **InfAdapter's calm windows (E2): dominated on cost in two of four, by a one-pod ResNet-50 VPA.** All end
  up on ResNet-50 (0.7613) at 100 %. Without κ ParetoServe went from 14.04/14.86/11.81/13.72 to
  13.89/14.88/10.80/11.85 cores, so MS+ and the HPA no longer dominate it anywhere, but the VPA holds 100 % at
  10-13 cores (it cannot carry any bursty window: 36-57 %). ParetoServe plans ResNet-50 for the last
  interval's peak (or the forecast) + 10 % with queue-aware capacity and moves between pool sizes as the
  forecast moves; the VPA sizes one pod for the p90 load + 15 % and never changes, and the simulator's pools
  meet the SLO up to the measured capacity, so running that hot costs it nothing here. No headroom on the
  measured peak (only on the forecast) cut the calm training windows by up to 6 % more but cost the IPA
  video pipeline (E1) its "< +5 % cores" claim (+5.5 %) and HADIS (E5) one claim, so it was not kept.
- **InfAdapter vs the ResNet-18/34/50 VPAs (E2 claim rows).** InfAdapter has far fewer violating seconds but
  spends more cores: those VPAs hold one lighter variant on at most 20 cores and cannot carry the window's
  peak, so they are cheap because they violate. Against the VPAs of the accurate variants (ResNet-101/152)
  InfAdapter is both cheaper and better, the direction of the paper.
- **Sponge (E3): FA2 is 17 % cheaper for 0.04 points less SLO attainment.** Within the 0.05-point tolerance
  that counts as equal, so FA2 dominates (1.00 against 1.20 cores, 99.96 % against 100 %): Sponge's program
  buys cores to drain the EDF queue within each request's remaining deadline.
- **One calm IPA window (E1).** 2.025 against 2.00 cores for the same accuracy and 100 % SLO as RIM-high and
  HPA (1.25 %, just over the 1 % tolerance): a burst of replicas for a noisy second, released after
  `scaleDownStabilization` rounds.
- **HADIS vs DiffServe (E5).** FID 24.32 against 23.68 at the same attainment (100 %) and 14 % fewer GPUs
  (12.0 against 14.0): the pair selector moves to the lighter pair when its pair has no feasible plan at the
  peak. Not dominated, but the paper's "better quality" direction does not hold here.
- **HADIS vs Clipper-Heavy (E5).** Clipper-Heavy has the better FID (18.49) but violates the SLO for 99.7 % of
  requests; HADIS trades quality for latency.
"""


def render(runs: dict[str, dict[str, Any]], bench: dict[str, Any] | None,
           window_runs: dict[str, dict[str, Any]] | None = None) -> str:
    parts = [
        "# Results: ParetoServe beside the papers (trace-driven simulation)",
        "",
        "<!-- GENERATED by `python -m paretoserve.research.experiments.report` from full runs; "
        "do not edit by hand. -->",
        "",
        "All numbers come from ParetoServe's discrete-event simulator (`paretoserve.planner.sim`) driven by the "
        "same control loop the operator runs, with the seed systems' published data in `../shared/data`. "
        "The papers measured on Kubernetes clusters and GPU testbeds; compare **directions and ratios** against "
        "the same baselines in the same simulator, not absolute values. Where a system is ParetoServe's program "
        "under another name (IPA, InfAdapter, dynainf, DiffServe's MILP, HADIS), the row is labelled "
        "`paretoserve` and the notes say so. SLO attainment counts dropped and timed-out requests as violations; "
        "cost is mean allocated cores (CPU experiments) or GPUs (diffusion experiments).",
        "",
    ]
    if bench is not None:
        parts += ["## Simulator speed", "", "`paretoserve bench simulator --json`: "
                  f"**{bench.get('requests_per_s', 0):,} simulated requests/s** on one core "
                  f"({bench.get('requests', 0):,} requests over three pipelines; with the control loop solving every "
                  f"10 s: {bench.get('with_control_loop', {}).get('requests_per_s', 0):,} requests/s).", ""]
    summary = ["## Summary", "", "Every claim is held to ParetoServe's SLO attainment as well (a claim about accuracy "
               "and cost is **no** when ParetoServe keeps the SLO for fewer than 99 % of requests), and every "
               "experiment adds two project goals: >= 99 % SLO attainment, and no baseline at least as good on "
               "SLO attainment, accuracy and cost and better on one.", "",
               "| experiment | claim | ours | direction reproduced |", "|---|---|---|---|"]
    for name, doc in runs.items():
        for c in doc.get("claims", []):
            verdict = {True: "yes", False: "**no**", None: "n/a"}[c["reproduced"]]
            summary.append(f"| {name} | {c['claim']} | {c['ours']} | {verdict} |")
    parts += summary + ["", WHERE_WE_DO_WORSE]
    for name, doc in (window_runs or {}).items():
        parts += windows_section(name, doc)
    for name, doc in runs.items():
        parts += section(name, doc)
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paretoserve.research.experiments.report", description=__doc__)
    parser.add_argument("runs", help="directory holding one sub-directory per experiment (DIR/NAME/results.json)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--bench", default=None, help="JSON printed by `paretoserve bench simulator --json`")
    args = parser.parse_args(argv)
    runs = load_runs(Path(args.runs))
    bench = json.loads(Path(args.bench).read_text()) if args.bench else None
    Path(args.out).write_text(render(runs, bench, load_window_runs(Path(args.runs))) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
