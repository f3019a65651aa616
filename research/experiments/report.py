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
                  "\"Between rounds\"), queue-aware capacity at utilisation 1 instead of InfAdapter's κ = 0.8, "
                  "refusing late requests, resizing cores in place and the early release of a load check's "
                  "scale-out were decided on the same rule applied to days 0-14 (each window with "
                  "900 s of history before it): bursty 1184104:1185364, 836783:838043, 62734:63994, "
                  "147303:148563 and calm 160920:162180, 169740:171000, 687600:688860, 944640:945900.",
    "ipa-video": "The early release of a load check's scale-out (docs/planner.md, \"Between rounds\") was decided "
                 "on the same eight training windows, 1200 s each (calm 944640:945840 had been dominated by HPA: "
                 "2.05 against 2.00 cores at the same accuracy and 100 %).",
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

- **InfAdapter's bursty windows (E2): 99.3-99.5 % SLO attainment, the steepest rises cost about half a percent.**
  At the steepest rise the load goes from about 45 to 160-220 requests/s within a few seconds, and a new ResNet
  replica loads for 6.4-8.5 s, so for several seconds the capacity that will carry the burst is not there
  (1349716:1350976: 41-71 requests/s, 117 the next second, 221 seven seconds later). Three changes, each decided
  on the training windows of days 0-14 (same rule: 1184104, 836783, 62734, 147303) and then run once on these:
  planning for where the burst is going once the load outgrew the plan (the newest peak plus the rising trend over
  the load time; the most the 20 cores carry, i.e. ResNet-18, when nothing carries that) and replacing a starting
  change that will fall short (training 98.10/98.68/99.49/99.09 % -> 99.17/99.16/100.00/99.18 %); queue-aware
  capacity at utilisation 1 instead of InfAdapter's κ = 0.8 (3-15 % fewer cores); and now **refusing late requests
  and resizing cores in place** (`slo.lateRequests: refuse`: a pool refuses a request that has waited longer than
  the SLO minus its batch latency, which Triton's queue policy `REJECT` does on the served pods, instead of
  serving every queued request late; and cores changed in place, make before break, as the operator does, where
  the simulation had started a new pool per size). On the training windows these took the bursty ones from
  99.17/99.11/99.10/99.20 % at 14.9-19.7 cores to 99.77/99.23/99.73/99.44 % at 13.4-16.6 cores; on the held-out
  windows here from 99.01/99.13/99.27/98.39 % at 15.6-19.4 cores to the figures in the table below. Refusing alone
  (surge mode) took these to 99.42/99.50/99.58/98.91 %; a timeout per variant (the SLO minus its fastest size's
  latency: no Triton reload when cores change) did worse on the training windows (99.61/99.13/98.87/99.15 %, in
  place), so each pool's timeout follows its own planned latency; a change of it reloads the model in Triton
  (1.5-1.8 s, docs/data-plane.md; the simulator does not charge for it), so a move within 10 % keeps the loaded
  timeout (`queueing.timeout_to_load`, in the simulator as on the pods: training windows unchanged to the second
  decimal but one, 99.23 -> 99.22 %). A refused request is a violation too: what it buys is the requests that
  would otherwise have waited behind it. `static-min-cost` (ResNet-18 sized once for the window's peak) keeps
  99.86-100 % at 15-18 cores for 0.04 less accuracy: it holds the peak's capacity all the time. No baseline
  dominates ParetoServe on a bursty window.
- **InfAdapter's calm windows (E2): a few requests refused.** All end up on ResNet-50 (0.7613). A pool whose
  latency leaves little of the SLO (ResNet-50 at 657 of 750 ms: a 93 ms timeout) refuses now and then, on a
  one-second spike, a request whose actual service (shorter than the profiled p99) would have made it:
  99.98-100 % where the one-pod ResNet-50 VPA holds 99.4-100 %. In place, ParetoServe's cores fell below that
  VPA's (12.43/13.50/9.87/11.19 against 13.0/14.95/10.0/12.0), which dominated it on two of these windows
  before at 13.89 and 10.80 cores (the VPA cannot carry any bursty window: 36-57 %); no baseline dominates it
  now, on 1626660 by a margin of 1.3 % of cost (the tolerance is 1 %). No headroom on the measured peak (only
  on the forecast) cut the calm training windows by up to 6 % more but cost the IPA video pipeline (E1) its
  "< +5 % cores" claim (+5.5 %) and HADIS (E5) one claim, so it was not kept.
- **InfAdapter vs the ResNet-18/34/50 VPAs (E2 claim rows).** InfAdapter has far fewer violating seconds but
  spends more cores: those VPAs hold one lighter variant on at most 20 cores and cannot carry the window's
  peak, so they are cheap because they violate. Against the VPAs of the accurate variants (ResNet-101/152)
  InfAdapter is both cheaper and better, the direction of the paper.
- **Sponge's program (E3) is dominated by FA2; ParetoServe's loop is not.** Sponge's dynainf asks a whole
  second of arrivals to drain within the tightest request's remaining budget, as if they had all arrived at
  once, and buys cores for it: 1.20 against FA2's one 1-core replica at 1.00 for the same attainment within
  the 0.05-point tolerance (100 % against 99.96 %). ParetoServe's own loop on the same problem (last second's
  load + 5 %, decided on four training windows: 1.001-1.007 cores at 99.97-100 %, where Sponge's program took
  1.16-1.17) ties FA2 on cost and keeps 100 %; under the doubled-load stress scenario it takes 1.67 cores
  against Sponge's 1.79 (both 100 %; FA2 82 %).
- **One calm IPA window (E1), 0.4 % dearer.** 2.008 against 2.00 cores for the same accuracy and 100 % SLO as
  RIM-high and HPA (within the 1 % tolerance, so not dominated): a load check scaled YOLOv5s out for a noisy
  second and the next round released it. Before the early release of such a scale-out (decided on the training
  windows, where calm 944640 had the same pattern) the replica stayed for three rounds: 2.025 cores, dominated.
- **HADIS vs DiffServe (E5).** FID 24.32 against 23.70 at the same attainment (100 %) and 15 % fewer GPUs
  (11.85 against 13.97): the pair selector moves to the lighter pair when its pair has no feasible plan at the
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
        "under another name (IPA, InfAdapter, DiffServe's MILP, HADIS), the row is labelled "
        "`paretoserve` and the notes say so; Sponge's dynainf program, run through the planner, is the row "
        "`sponge` beside ParetoServe's own loop. SLO attainment counts dropped and timed-out requests as violations; "
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
