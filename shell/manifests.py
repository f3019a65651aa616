"""Reading a ServingPipeline file for a command: one place that turns a bad path or spec into a CliError
naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from paretoserve.planner.spec import KIND, ServingPipeline, SpecError, load_pipeline_text
from paretoserve.shell.errors import CliError


def read_manifest(path: str) -> tuple[ServingPipeline, dict[str, Any]]:
    """(parsed pipeline, its raw YAML document) or a CliError naming the file and the field."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        pipeline = load_pipeline_text(text)
    except SpecError as exc:
        raise CliError(f"{path}: {exc}") from None
    docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    raw = next((d for d in docs if d.get("kind") == KIND), docs[0])
    return pipeline, raw


def read_pipeline(path: str) -> ServingPipeline:
    return read_manifest(path)[0]
