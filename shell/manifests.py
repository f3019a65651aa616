"""Reading a ServingPipeline file for a command: one place that turns a bad path, bad bytes, bad YAML or a
bad spec into a CliError naming the file and the field (never a traceback).

The file is read up to the API server's request limit, decoded as UTF-8 and parsed with the planner's
bounded YAML loader (size, nesting and alias expansion are limited before anything is validated)."""

from __future__ import annotations

from typing import Any

from paretoserve.planner.bounds import MAX_MANIFEST_BYTES
from paretoserve.planner.spec import ServingPipeline, SpecError, load_yaml_documents, parse_pipeline, pipeline_document
from paretoserve.shell.errors import CliError


def read_text(path: str) -> str:
    """The file's text, or a CliError: unreadable, larger than MAX_MANIFEST_BYTES, or not UTF-8."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise CliError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes, the API server's request limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None


def read_manifest(path: str) -> tuple[ServingPipeline, dict[str, Any]]:
    """(parsed pipeline, its raw YAML document) or a CliError naming the file and the field."""
    text = read_text(path)
    try:
        raw = pipeline_document(load_yaml_documents(text))
        pipeline = parse_pipeline(raw)
    except SpecError as exc:
        raise CliError(f"{path}: {exc}") from None
    return pipeline, raw


def read_pipeline(path: str) -> ServingPipeline:
    return read_manifest(path)[0]
