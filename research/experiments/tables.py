"""Markdown renderings of an experiment's results: the per-system table, the claims, the notes."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    ("slo_attainment", "SLO attainment", "{:.2%}"),
    ("p99_latency_ms", "p99 ms", "{:.0f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("cost", "cost", "{:.2f}"),
    ("reconfigurations", "reconfig.", "{}"),
    ("seconds_over_slo", "s with p99>SLO", "{:.1%}"),
)


def fmt(value: Any, pattern: str) -> str:
    if value is None:
        return "—"
    try:
        return pattern.format(value)
    except (TypeError, ValueError):
        return str(value)


def system_table(doc: dict[str, Any], extra_columns: tuple[tuple[str, str, str], ...] = ()) -> str:
    columns = COLUMNS + extra_columns
    cost_label = f"cost (mean {doc.get('cost_unit', 'cores')})"
    accuracy_label = doc.get("accuracy_label", "accuracy")
    header = ["system"] + [cost_label if k == "cost" else accuracy_label if k == "accuracy" else label
                           for k, label, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in doc["systems"].items():
        lines.append("| " + " | ".join([f"`{name}`"] + [fmt(m.get(k), p) for k, _, p in columns]) + " |")
    return "\n".join(lines)


def claims_table(claims: list[dict[str, Any]]) -> str:
    if not claims:
        return ""
    lines = ["| claim | paper | ours | direction reproduced |", "|---|---|---|---|"]
    for c in claims:
        verdict = {True: "yes", False: "**no**", None: "n/a"}[c["reproduced"]]
        lines.append(f"| {c['claim']} | {c['paper']} | {c['ours']} | {verdict} |")
    return "\n".join(lines)


def extra_columns(doc: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """Experiment-specific metrics present for every system (e.g. PAS forms, FID)."""
    known = {k for k, _, _ in COLUMNS} | {
        "cost_unit", "core_seconds", "gpu_seconds", "requests", "completed", "dropped", "timed_out",
        "heavy_share", "p50_latency_ms", "note",
    }
    systems = list(doc["systems"].values())
    if not systems:
        return ()
    keys = [k for k in systems[0] if k not in known and all(k in m for m in systems)]
    return tuple((k, k, "{:.4g}") for k in keys)


def results_markdown(doc: dict[str, Any]) -> str:
    parts = [f"# {doc.get('title', doc['experiment'])}", ""]
    command = doc.get("config", {}).get("command")
    if command:
        parts += [f"Produced by `{command}`.", ""]
    parts += [system_table(doc, extra_columns(doc)), ""]
    for name, systems in doc.get("scenarios", {}).items():
        parts += [f"### Scenario `{name}`", "", system_table({**doc, "systems": systems}), ""]
    claims = claims_table(doc.get("claims", []))
    if claims:
        parts += ["## Against the paper", "", claims, ""]
    notes = list(doc.get("notes", []))
    notes += [f"`{k}`: {m['note']}" for k, m in doc["systems"].items() if m.get("note")]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)
