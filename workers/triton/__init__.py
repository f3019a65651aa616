"""Triton-backed model-variant workers: repository rendering, the server launcher, runtime control.

``repository`` is pure and cheap to import (the Python-backend stub imports it); ``server`` and
``control`` pull in process management and ``tritonclient``, so import them from their modules:
``from paretoserve.workers.triton.server import TritonServer``,
``from paretoserve.workers.triton.control import TritonControl, parse_metrics``.
"""

from paretoserve.workers.triton.repository import (
    InvalidSpecError,
    QueuePolicy,
    TritonModelSpec,
    render_config,
    render_config_pbtxt,
    render_override_json,
    spec_from_cached_variant,
    write_model,
    write_repository,
)

__all__ = [
    "InvalidSpecError",
    "QueuePolicy",
    "TritonModelSpec",
    "render_config",
    "render_config_pbtxt",
    "render_override_json",
    "spec_from_cached_variant",
    "write_model",
    "write_repository",
]
