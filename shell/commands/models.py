"""`paretoserve models export --out DIR`: write the digits variants as a self-contained Triton model repository.

The worker image bakes this repository in at ``/models`` (``images/build.sh`` runs the command on the host,
where the models are trained once from data that ships with scikit-learn); a user can also put it on a
volume or an object store and point the chart's ``workers.modelRepository`` at it. Each entry is the
variant's ONNX graph, its metadata and the shared Python-backend ``model.py`` with a ``config.pbtxt``
that needs no path outside the entry, so the repository can be copied anywhere. The router sidecar's
knob changes (instances, batching) are load-API overrides on top of it.

Prints one JSON object: the repository path, and per model its variant, held-out accuracy and bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from paretoserve.shell.errors import CliError


def cmd_export(args: argparse.Namespace) -> int:
    from paretoserve.workers.models import ensure_trained
    from paretoserve.workers.triton.repository import InvalidSpecError, export_model, spec_from_cached_variant

    catalog = ensure_trained()
    names = list(args.variant or catalog.variants)
    unknown = sorted(set(names) - set(catalog.variants))
    if unknown:
        raise CliError(f"--variant: unknown {unknown}; the catalog has {sorted(catalog.variants)}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.force:
            raise CliError(f"--out: {out} is not empty (pass --force to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, Any] = {}
    for name in names:
        variant_dir = catalog.variant_dir(name)
        try:
            spec = spec_from_cached_variant(variant_dir, max_batch_size=args.max_batch_size)
        except InvalidSpecError as error:
            raise CliError(f"--max-batch-size: {error}") from None
        model_dir = export_model(out, spec, variant_dir)
        models[name] = {"variant": name, "heldoutAccuracy": catalog[name].heldout_accuracy,
                        "bytes": sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())}
    print(json.dumps({"repository": str(out.resolve()), "catalogVersion": catalog.version, "models": models},
                     sort_keys=True))
    return 0


def register(sub: Any) -> None:
    models = sub.add_parser("models", help="the trained digits variants")
    commands = models.add_subparsers(dest="models_command", required=True)
    export = commands.add_parser("export", help="write them as a self-contained Triton model repository (ONNX)")
    export.add_argument("--out", required=True, help="repository directory to write")
    export.add_argument("--variant", action="append", help="a variant to export (repeatable; default: all)")
    export.add_argument("--max-batch-size", type=int, default=32, help="each model's max_batch_size (default 32)")
    export.add_argument("--force", action="store_true", help="replace a non-empty --out")
    export.set_defaults(func=cmd_export)
