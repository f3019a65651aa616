"""`paretoserve models export --out DIR`: write the served models as a self-contained Triton model repository.

The worker image bakes this repository in at ``/models`` (``images/build.sh`` runs the command on the host,
where the models are trained once and cached); a user can also put it on a volume or an object store and point
the chart's ``workers.modelRepository`` at it. Every entry needs no path outside itself, so the repository can
be copied anywhere, and nothing in it needs torch (the worker image has none):

- the digits variants (family ``digits``): the variant's ONNX graph, its metadata and the shared Python-backend
  ``model.py`` (ONNX Runtime);
- the token-generating models and their prompt scorer (family ``llm``): ``arith-small`` and ``arith-large`` as
  decoupled Python-backend models with their ``weights.npz`` (the numpy engine; ``export_llm_model``), and
  ``arith-scorer``, the prompt scorer a ``router: prompt`` cascade asks (``scorer.json``; fitted on arith-small's
  answers). Together about 2 MB: they are exported by default, so the worker image serves ``arith-llm*.yaml`` on
  Kubernetes too.

The router sidecar's knob changes (instances, batching, a generation model's ``max_sequences``) are load-API
overrides on top of it. Prints one JSON object: the repository path, and per model its family, held-out
accuracy (exact match for a generation model) and bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from paretoserve.shell.errors import CliError

FAMILIES = ("digits", "llm")
LLM_MODELS = ("arith-small", "arith-large")
"""The token-generating models (``paretoserve.workers.llm.training.RECIPES``), named here so that choosing only
digits variants never imports torch's training code or trains them."""
SCORER = "arith-scorer"
SCORER_LIGHT = "arith-small"
"""The scorer predicts that this model fails a prompt (``ensure_scorer``'s default, the rows' light model)."""


def _entry_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())


def _chosen(args: argparse.Namespace, digits: tuple[str, ...]) -> list[str]:
    """The models to export, in catalog order: ``--variant`` names (any family), else every model of ``--family``."""
    llm = (*LLM_MODELS, SCORER)
    if args.variant:
        unknown = sorted(set(args.variant) - set(digits) - set(llm))
        if unknown:
            raise CliError(f"--variant: unknown {unknown}; the catalogs have {sorted(digits)} and {list(llm)}")
        return [m for m in (*digits, *llm) if m in args.variant]
    families = set(args.family or FAMILIES)
    return [*(digits if "digits" in families else ()), *(llm if "llm" in families else ())]


def _export_digits(out: Path, names: list[str], max_batch_size: int) -> dict[str, Any]:
    from paretoserve.workers.models import ensure_trained
    from paretoserve.workers.triton.repository import InvalidSpecError, export_model, spec_from_cached_variant

    catalog = ensure_trained()
    models: dict[str, Any] = {}
    for name in names:
        variant_dir = catalog.variant_dir(name)
        try:
            spec = spec_from_cached_variant(variant_dir, max_batch_size=max_batch_size)
        except InvalidSpecError as error:
            raise CliError(f"--max-batch-size: {error}") from None
        model_dir = export_model(out, spec, variant_dir)
        models[name] = {"family": "digits", "variant": name, "heldoutAccuracy": catalog[name].heldout_accuracy,
                        "bytes": _entry_bytes(model_dir)}
    return models


def _export_llm(out: Path, names: list[str]) -> dict[str, Any]:
    """The generation models (their ``weights.npz`` and metadata copied in) and the prompt scorer, trained and
    fitted on first use (cached: ``ensure_llms``, ``ensure_scorer``)."""
    from paretoserve.workers.llm.cache import ensure_llms, ensure_scorer
    from paretoserve.workers.llm.scorer import ScorerServingSpec, write_scorer_model
    from paretoserve.workers.llm.serving import export_llm_model, spec_from_cached_llm

    catalog = ensure_llms()
    models: dict[str, Any] = {}
    for name in names:
        if name == SCORER:
            scorer = ensure_scorer(light=SCORER_LIGHT)
            model_dir = write_scorer_model(out, scorer.weights_file, ScorerServingSpec(name=SCORER))
            models[name] = {"family": "llm", "scorerOf": SCORER_LIGHT, "bytes": _entry_bytes(model_dir)}
            continue
        source = catalog.model_dir(name)
        model_dir = export_llm_model(out, spec_from_cached_llm(source, name=name), source)
        models[name] = {"family": "llm", "heldoutExactMatch": catalog.exact_match(name),
                        "bytes": _entry_bytes(model_dir)}
    return models


def cmd_export(args: argparse.Namespace) -> int:
    from paretoserve.workers.models import ensure_trained

    if args.max_batch_size < 1:  # checked before anything is trained or written
        raise CliError(f"--max-batch-size: must be >= 1, got {args.max_batch_size}")
    catalog = ensure_trained()
    names = _chosen(args, tuple(catalog.variants))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.force:
            raise CliError(f"--out: {out} is not empty (pass --force to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    models = _export_digits(out, [n for n in names if n in catalog.variants], args.max_batch_size)
    llm = [n for n in names if n not in catalog.variants]
    if llm:
        models.update(_export_llm(out, llm))
    print(json.dumps({"repository": str(out.resolve()), "catalogVersion": catalog.version, "models": models},
                     sort_keys=True))
    return 0


def register(sub: Any) -> None:
    models = sub.add_parser("models", help="the trained models (digits variants, token-generating models)")
    commands = models.add_subparsers(dest="models_command", required=True)
    export = commands.add_parser("export", help="write them as a self-contained Triton model repository")
    export.add_argument("--out", required=True, help="repository directory to write")
    export.add_argument("--variant", action="append",
                        help="a model to export, of either family (repeatable; default: every model of --family)")
    export.add_argument("--family", action="append", choices=FAMILIES,
                        help="export every model of this family (repeatable; default: both). llm: arith-small, "
                             "arith-large and their prompt scorer arith-scorer (trained on first use, ~2 MB)")
    export.add_argument("--max-batch-size", type=int, default=32,
                        help="each digits model's max_batch_size (default 32)")
    export.add_argument("--force", action="store_true", help="replace a non-empty --out")
    export.set_defaults(func=cmd_export)
