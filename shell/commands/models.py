"""`paretoserve models export --out DIR`: write the served models as a self-contained Triton model repository.

The worker image bakes this repository in at ``/models`` (``images/build.sh`` runs the command on the host,
where the models are trained once and cached); a user can also put it on a volume or an object store and point
the chart's ``workers.modelRepository`` at it. Every entry needs no path outside itself, so the repository can
be copied anywhere, and nothing in it needs torch (the worker image has none):

- the digits variants (family ``digits``): the variant's ONNX graph and its metadata, served by the
  ``paretoserve_onnx`` backend its config names (the worker image carries it; :mod:`.onnx_backend`);
- the token-generating models and their prompt scorer (family ``llm``): ``arith-small`` and ``arith-large`` as
  decoupled Python-backend models with their ``weights.npz`` (the numpy engine; ``export_llm_model``), and
  ``arith-scorer``, the prompt scorer a ``router: prompt`` cascade asks (``scorer.json``; fitted on arith-small's
  answers). Together about 2 MB: they are exported by default, so the worker image serves ``arith-llm*.yaml`` on
  Kubernetes too;
- the multimodal models and their scorer (family ``mm``): ``mm-low`` and ``mm-high`` as decoupled Python-backend
  models that take an ``IMAGE`` FP32 ``[64]`` beside the ``PROMPT`` (the same backend and numpy engine, their
  ``weights.npz``; ``ensure_multimodal``), and ``mm-scorer``, the score a ``router: prompt`` cascade of
  ``mm-llm*.yaml`` asks (``IMAGE`` and ``PROMPT`` in; fitted on mm-low's answers, ``ensure_mm_scorer``). A family
  of its own (its models and training are not the text family's), exported by default too.

The router sidecar's knob changes (instances, batching, a generation model's ``max_sequences``) are load-API
overrides on top of it. Prints one JSON object: the repository path, and per model its family, held-out
accuracy (exact match for a generation model) and bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paretoserve.shell.errors import CliError

if TYPE_CHECKING:
    from paretoserve.workers.llm.config import CachedModels

FAMILIES = ("digits", "llm", "mm")
LLM_MODELS = ("arith-small", "arith-large")
"""The token-generating models (``paretoserve.workers.llm.training.RECIPES``), named here so that choosing only
digits variants never imports torch's training code or trains them."""
SCORER = "arith-scorer"
SCORER_LIGHT = "arith-small"
"""The scorer predicts that this model fails a prompt (``ensure_scorer``'s default, the rows' light model)."""
MM_MODELS = ("mm-low", "mm-high")
"""The multimodal models (``paretoserve.workers.llm.multimodal.RECIPES``), named here for the same reason."""
MM_SCORER = "mm-scorer"
MM_SCORER_LIGHT = "mm-low"
"""The multimodal scorer predicts that this model fails a request (``ensure_mm_scorer``'s default)."""
GENERATION_FAMILIES = {"llm": (*LLM_MODELS, SCORER), "mm": (*MM_MODELS, MM_SCORER)}
"""Each generation family's models, its scorer last."""


def _entry_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())


def _chosen(args: argparse.Namespace, digits: tuple[str, ...]) -> list[str]:
    """The models to export, in catalog order: ``--variant`` names (any family), else every model of ``--family``."""
    catalogs = {"digits": digits, **GENERATION_FAMILIES}
    every = [m for family in FAMILIES for m in catalogs[family]]
    if args.variant:
        unknown = sorted(set(args.variant) - set(every))
        if unknown:
            have = " and ".join(str(sorted(digits) if f == "digits" else list(catalogs[f])) for f in FAMILIES)
            raise CliError(f"--variant: unknown {unknown}; the catalogs have {have}")
        return [m for m in every if m in args.variant]
    families = set(args.family or FAMILIES)
    return [m for family in FAMILIES if family in families for m in catalogs[family]]


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


def _generation_family(family: str) -> tuple[CachedModels, str, Callable[[], Path]]:
    """A generation family's cached models, its scorer's light model and how to get the scorer's weights file
    (fitted on first use): ``ensure_llms``/``ensure_scorer`` or ``ensure_multimodal``/``ensure_mm_scorer``."""
    if family == "llm":
        from paretoserve.workers.llm.cache import ensure_llms, ensure_scorer

        return ensure_llms(), SCORER_LIGHT, lambda: ensure_scorer(light=SCORER_LIGHT).weights_file
    from paretoserve.workers.llm.cache import ensure_mm_scorer
    from paretoserve.workers.llm.multimodal import ensure_multimodal

    return ensure_multimodal(), MM_SCORER_LIGHT, lambda: ensure_mm_scorer(light=MM_SCORER_LIGHT).weights_file


def _export_llm(out: Path, names: list[str]) -> dict[str, Any]:
    """The generation models of both families (their ``weights.npz`` and metadata copied in; a multimodal one
    with its ``IMAGE`` input, ``spec_from_cached_llm``) and their prompt scorers (``scorer_spec``: the
    multimodal one reads ``IMAGE`` too), trained and fitted on first use, then cached; a family is loaded only
    when one of its models is chosen."""
    from paretoserve.workers.llm.scorer import scorer_spec, write_scorer_model
    from paretoserve.workers.llm.serving import export_llm_model, spec_from_cached_llm

    models: dict[str, Any] = {}
    for family, members in GENERATION_FAMILIES.items():
        chosen = [n for n in names if n in members]
        if not chosen:
            continue
        catalog, light, scorer_weights = _generation_family(family)
        for name in chosen:
            if name == members[-1]:  # the family's scorer
                weights_file = scorer_weights()
                model_dir = write_scorer_model(out, weights_file, scorer_spec(weights_file, name=name))
                models[name] = {"family": family, "scorerOf": light, "bytes": _entry_bytes(model_dir)}
                continue
            source = catalog.model_dir(name)
            model_dir = export_llm_model(out, spec_from_cached_llm(source, name=name), source)
            models[name] = {"family": family, "heldoutExactMatch": catalog.exact_match(name),
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
    models = sub.add_parser("models", help="the trained models (digits variants, token-generating and multimodal "
                                           "models)")
    commands = models.add_subparsers(dest="models_command", required=True)
    export = commands.add_parser("export", help="write them as a self-contained Triton model repository")
    export.add_argument("--out", required=True, help="repository directory to write")
    export.add_argument("--variant", action="append",
                        help="a model to export, of any family (repeatable; default: every model of --family)")
    export.add_argument("--family", action="append", choices=FAMILIES,
                        help="export every model of this family (repeatable; default: all three). llm: "
                             "arith-small, arith-large and their prompt scorer arith-scorer (trained on first use, "
                             "~2 MB); mm: mm-low, mm-high (IMAGE + PROMPT in) and their scorer mm-scorer")
    export.add_argument("--max-batch-size", type=int, default=32,
                        help="each digits model's max_batch_size (default 32)")
    export.add_argument("--force", action="store_true", help="replace a non-empty --out")
    export.set_defaults(func=cmd_export)
