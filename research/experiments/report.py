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
    "infadapter": "The surge load, the hold for a starting change and the release rule (docs/planner.md, "
                  "\"Between rounds\") were decided on the same rule applied to days 0-14 (each window with "
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

- **InfAdapter's bursty windows (E2): 98.4-99.3 % SLO attainment, under the 99 % goal on two of four
  (98.97 % and 98.44 %).** At the steepest rise the load goes from about 45 to 160-170 requests/s within
  1-2 s, and a new ResNet replica loads for 6.4-8.5 s. A pool short of capacity serves every queued request
  late (FIFO, abandoned after two SLOs), so a policy that reacts to the load loses about every request of the
  7.4 s after the onset (one 2-s load check on average plus ResNet-18's 6.44 s load): by the trace alone
  0.75-1.23 % of these windows' requests, so 1349716:1350976 (1.23 %) can hardly reach 99 % without
  capacity held before the burst. Planning for where the burst is going once the load outgrew the plan (the newest
  peak plus the rising trend over the load time; the most the 20 cores carry, i.e. ResNet-18, when nothing
  carries that) and replacing a starting change that will fall short instead of waiting for it took the
  training windows (days 0-14, same rule: 1184104, 836783, 62734, 147303) from 98.10/98.68/99.49/99.09 % to
  99.17/99.16/100.00/99.18 %, the published window from 99.02 % to 99.31 %, and these windows from
  98.89/98.84/99.22/97.63 % to 98.97/99.21/99.29/98.44 %. Where it still misses, the first second of the
  burst (1.5x) gives a trend far short of where the load goes, so the first order is too small and the
  second waits another load time (1349716: capacity 11 s after the onset). `static-min-cost` (ResNet-18
  sized once for the window's peak) keeps 99.86-100 % at 15-18 cores for 0.03-0.04 less accuracy: it holds
  the peak's capacity all the time. No baseline dominates ParetoServe on a bursty window.
- **InfAdapter's calm windows (E2): dominated on cost in three of four.** All end up on ResNet-50 (0.7613)
  at 100 %. Releases that start new pools now wait until the cores they save over three rounds exceed what
  the new pool costs while it loads (ParetoServe had moved ResNet-50 from 9 to 8 cores by running both
  pools for 6.8 s), which cut ParetoServe from 12.1-15.8 to 11.8-14.9 cores, but a one-pod ResNet-50 VPA
  holds 100 % at 10-13 cores (it cannot carry any bursty window: 36-57 %) and MS+ is cheaper on two
  windows (11.53 against 11.81; 12.58 against 13.72, where ParetoServe also has 0.0005 less accuracy and a
  12-core ResNet-50 HPA dominates it too). ParetoServe plans ResNet-50 for 1.1x the last interval's peak at
  80 % utilisation (InfAdapter's κ) with queue-aware capacity; the VPA sizes for the p90 load + 15 % and the
  simulator's pools meet the SLO up to the measured capacity, so running that hot costs it nothing here.
  κ = 1 alone (training window 160920) gave 10.95 against 11.40 cores, still above the VPA's 10.00.
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
