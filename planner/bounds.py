"""The numbers and patterns of the ServingPipeline contract, in one place.

`spec.py` (the parser), `crds/servingpipeline.yaml` (the API server; tests/unit/test_crd_schema.py checks
that every bound and pattern there is the one here), the CLI and docs/api.md all use these. Each bound is
a realistic maximum: large enough for any real pipeline, small enough that no accepted value can overflow
the planner's arithmetic or the operator's rendering, or make the planner's build step unbounded. The
bounds of the YAML text itself (size, nesting, alias expansion) are here too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
TRITON_MODEL_NAME = r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])?$"
"""A Triton model name as ParetoServe accepts it everywhere (spec, CRD, router config, `/admin/worker`):
1-64 characters, safe in a URL path segment and a command-line argument (no leading dot or dash)."""
DEADLINE_HEADER_NAME = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
"""An HTTP header name for per-request deadlines: lower-case token characters, 1-64 long."""
RESOURCE_NAME = r"^[a-z0-9.-]+/[a-z0-9.-]+$"
"""An extended-resource name (``vendor/resource``, e.g. ``nvidia.com/gpu``): the keys of the GPU maps and,
besides ``cpu`` and ``memory``, of ``objective.prices``. Never ``cpu`` or ``memory`` themselves."""
PRICED_RESOURCES = ("cpu", "memory")

MAX_LATENCY_MS = 3_600_000.0
"""Any latency (SLO, profile point, linear profile): one hour."""
MAX_CPU = 1024.0
"""Cores of one replica (resources, profile points, Sponge and linear core lists, stage bounds)."""
MAX_MEMORY_GIB = 16384.0
MAX_GPUS_PER_REPLICA = 64
MAX_GPU_BUDGET = 100_000
MAX_CPU_BUDGET = 1_000_000.0
MAX_WEIGHT = 1e6
"""Objective weights, prices, accuracy and quality scores, and profile coefficients (in magnitude)."""
MAX_THROUGHPUT_RPS = 1e6
MAX_LOAD_MULTIPLIER = 1e6
MAX_QUEUE_DELAY_MS = 60_000.0
MAX_LOAD_TIME_S = 3600.0
MAX_SOLVER_TIME_LIMIT_S = 60.0
MAX_MAP_KEYS = 16
MAX_TASKS = 8
"""Tasks of a multi-task stage."""
TASK_NAME = r"^[a-z][a-z0-9_]{0,30}$"
"""A task's name: also the suffix of its outputs in a fused Triton model (``PROBS_<task>``)."""
REQUEST_INPUT = "$request"
STAGE_INPUT = r"^(\$request|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[A-Za-z_][A-Za-z0-9_]{0,63})?)$"
"""One piece of a stage's input: the request's own input (``$request``), a parent stage's ``PROBS`` output
(``<stage>``) or a named output of it (``<stage>.<OUTPUT>``)."""
MAX_STAGE_INPUTS = 32
MAX_OPTIONS_PER_STAGE = 2048
"""Options a stage may declare (`Stage.option_count`): its variants' profile points, batchSizes × cpus of
a Sponge profile, and the cpus of a linear profile, summed."""
MAX_OPTIONS_PER_PIPELINE = 16384
MAX_MANIFEST_BYTES = 3 * 1024 * 1024
"""The API server's request limit; a larger YAML text is refused before parsing."""
MAX_YAML_DEPTH = 32
MAX_YAML_VALUES = 500_000
"""Values a YAML document may expand to, counting every use of an alias (a billion laughs stops here)."""

_RESOURCE = re.compile(RESOURCE_NAME[1:-1])


def whole_gpus(value: Any) -> Any:
    """GPU counts: an integral number (``2.0``) becomes an int, a fraction is refused with the reason."""
    if isinstance(value, float) and math.isfinite(value):
        if not value.is_integer():
            raise ValueError(f"GPUs are whole devices: give an integer count, not {value:g} (a pod cannot "
                             "request a fraction of an extended resource)")
        return int(value)
    return value


def check_resource_keys(keys: Iterable[str], allowed: tuple[str, ...] = ()) -> None:
    """Refuse a map key that is neither in `allowed` nor an extended-resource name."""
    for key in keys:
        if key not in allowed and not _RESOURCE.fullmatch(key):
            kinds = " or ".join([*(repr(a) for a in allowed), "an extended-resource name like nvidia.com/gpu"])
            raise ValueError(f"unknown resource {key!r}: keys must be {kinds}")


def check_expansion(doc: Any) -> None:
    """Refuse (ValueError) a loaded YAML document nested deeper than MAX_YAML_DEPTH or expanding, through
    aliases, to more than MAX_YAML_VALUES values; a self-referential document is caught by the depth."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            raise ValueError(f"the document expands to more than {MAX_YAML_VALUES} values (YAML aliases?)")
        if depth > MAX_YAML_DEPTH:
            raise ValueError(f"the document is nested more than {MAX_YAML_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
