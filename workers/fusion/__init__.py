"""Model fusion (GMorph): several task models that read the same input, fused into one multi-task model.

Offline and torch-based, so it lives with the workers that train and export models, and writes what the
serving side reads: Triton model-repository entries (ONNX, one set of outputs per task) and ServingPipeline
variants with measured profiles. :func:`fuse` runs the whole flow of ``paretoserve fuse``: train the task
models (:mod:`.training`), search fusion graphs (:mod:`.graph`, :mod:`.search`) within the accuracy bound,
and export the Pareto set beside the unfused models (each alone, and all of them as one model: the "separate"
option of a multi-task stage) and the all-shared MTL baseline (:mod:`.export`,
:mod:`.mtl`). See docs/fusion.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from paretoserve.workers.fusion.export import (
    ServedVariant,
    fused_net,
    write_separate,
    write_served,
    write_variants,
)
from paretoserve.workers.fusion.graph import FusionGraph
from paretoserve.workers.fusion.nets import FusedNet
from paretoserve.workers.fusion.search import Progress, SearchResult, pareto, search
from paretoserve.workers.fusion.session import FusionSession
from paretoserve.workers.fusion.spec import FusionSpec, load_fusion_spec

__all__ = ["FusionSession", "FusionSpec", "SearchResult", "fuse", "load_fusion_spec", "search"]


def fuse(spec: FusionSpec, out: Path, *, theta: float | None = None, budget_s: float | None = None,
         cache_root: Path | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Search, export and measure (see the module doc); returns the report also written to ``fusion.json``."""
    settings = spec.spec.search
    theta = settings.theta if theta is None else theta
    session = FusionSession(spec, cache_root)
    progress = Progress(settings.max_candidates, f"fuse θ={theta:g}") if show_progress else None
    result = search(session, theta, budget_s=budget_s, progress=progress)
    kept = pareto(result.candidates)
    repository = out / "repository"
    if repository.exists():
        shutil.rmtree(repository)
    repository.mkdir(parents=True)
    served: list[ServedVariant] = []
    for chain in session.chains:
        single = FusionGraph.unfused([chain])
        served.append(write_served(session, FusedNet(single, session.original_states), f"task_{chain.task}",
                                   "unfused", "unfused", repository,
                                   estimated_ms=session.estimate_ms(single)))
    separate = write_separate(session, repository)
    fused = [write_served(session, fused_net(session, candidate, theta), f"fused_{candidate.key}", "fused",
                          candidate.describe, repository, estimated_ms=candidate.estimated_ms)
             for candidate in kept]
    mtl = session.all_shared()
    served_mtl = write_served(session, mtl.net, "mtl_all_shared", "mtl", "all-shared MTL (trained jointly)",
                              repository, estimated_ms=None)
    shutil.rmtree(repository / ".staging", ignore_errors=True)
    write_variants(out, spec.metadata.name, [separate, *fused], settings.batch_sizes)
    report = {
        "spec": spec.metadata.name, "theta": theta, "cache": str(session.root),
        "tasks": [{"name": t.task.name, "valAccuracy": t.val_accuracy, "testAccuracy": t.test_accuracy,
                   "trainSeconds": t.seconds} for t in session.trained],
        "search": {"candidates": len(result.candidates), "skipped": result.skipped, "seconds": result.seconds,
                   "ended": result.ended, "met": sum(c.meets for c in result.candidates),
                   "filtered": sum(c.stop == "filtered" for c in result.candidates),
                   "fineTuneSeconds": sum(c.seconds for c in result.candidates)},
        "unfusedEstimatedMs": session.estimate_ms(session.unfused),
        "candidates": [{**c.__dict__} for c in result.candidates],
        "served": [s.report() for s in [*served, separate, *fused, served_mtl]],
        "mtlTrainSeconds": mtl.seconds,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "fusion.json").write_text(json.dumps(report, indent=1, default=list))
    return report
