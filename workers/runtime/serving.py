"""Which Triton models a ServingPipeline needs, and one real Triton server serving them.

The profiler and `paretoserve up` both start the real ``tritonserver`` with a pipeline's variants; they
share this module so that they resolve a manifest the same way: every ``variant.tritonModel`` names a
cached digits variant of the model catalog (``paretoserve.workers.models``), a stage whose cascade uses
the ``discriminator`` router also needs the ``discriminator`` variant, and the Triton model name is the
``tritonModel`` itself. A wrong name is a `SpecError` naming the field, as everywhere else.

Models are loaded through the load API's config override, never with ``--load-model``: a model first
loaded from its ``config.pbtxt`` pays a full reload (8-14 s on 2 cores) on its first change, while a model
loaded by override later changes its instance count in place (~2 s). The load call goes over **gRPC**
(`GrpcModelControl`): over HTTP the blocking load request holds one of Triton's HTTP worker threads for
the whole load, and every inference request on a connection served by that thread waits with it
(measured with Triton 2.51: requests to *any* model stalled 2-10 s per change; over gRPC, none did).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from paretoserve.planner.spec import ServingPipeline, SpecError
from paretoserve.workers.plan_rendering import discriminator_model
from paretoserve.workers.triton.cpu_quota import CpuQuotaGroup
from paretoserve.workers.triton.repository import (
    ONNX_FILE,
    TritonModelSpec,
    render_config,
    spec_from_cached_variant,
    write_repository,
)
from paretoserve.workers.triton.server import TritonServer, TritonServerConfig

if TYPE_CHECKING:  # torch and tritonclient load only where a model catalog or a server is used
    from paretoserve.workers.models import ModelCatalog


DEFAULT_MAX_BATCH = 32
"""Triton's ``max_batch_size`` for every model; changing it is a full reload, so it is fixed per run."""


@dataclass(frozen=True)
class ModelUse:
    """One Triton model of a pipeline: its name (= catalog variant) and where the manifest names it."""

    model: str
    path: str
    """The first field that names it, e.g. ``spec.stages[0].variants[1].tritonModel``."""


def pipeline_models(pipeline: ServingPipeline) -> list[ModelUse]:
    """The distinct Triton models the pipeline serves, in manifest order (discriminators last)."""
    uses: dict[str, ModelUse] = {}
    for i, stage in enumerate(pipeline.spec.stages):
        for j, variant in enumerate(stage.variants):
            path = f"spec.stages[{i}].variants[{j}].tritonModel"
            uses.setdefault(variant.triton_model, ModelUse(variant.triton_model, path))
    for i, stage in enumerate(pipeline.spec.stages):
        extra = discriminator_model(stage)
        if extra is not None:
            uses.setdefault(extra, ModelUse(extra, f"spec.stages[{i}].cascade.discriminatorModel"))
    return list(uses.values())


def max_batch_size(pipeline: ServingPipeline, extra: Sequence[int] = ()) -> int:
    """One ``max_batch_size`` for every model: the largest batch any stage (or ``extra``) may use."""
    largest = max([DEFAULT_MAX_BATCH, *extra, *(b for s in pipeline.spec.stages for b in s.batch_sizes)])
    return int(largest)


def model_specs(
    uses: Sequence[ModelUse], catalog: ModelCatalog, *, max_batch: int, repository: Path | None = None,
    **knobs: Any,
) -> dict[str, TritonModelSpec]:
    """A `TritonModelSpec` per model (one instance, one thread unless ``knobs`` say otherwise): a cached digits
    variant of ``catalog``, else an entry of the model ``repository`` that ``paretoserve fuse`` (or ``models
    export``) wrote. Raises `SpecError` at the first model that is neither."""
    specs: dict[str, TritonModelSpec] = {}
    for use in uses:
        if use.model in catalog.variants:
            folder = catalog.variant_dir(use.model)
        elif repository is not None and (repository / use.model / "1" / ONNX_FILE).is_file():
            folder = repository / use.model / "1"
        else:
            where = f" nor an entry of {repository}" if repository is not None else ""
            raise SpecError(use.path, f"{use.model!r} is neither a cached digits variant "
                                      f"(have: {', '.join(sorted(catalog.variants))}){where}")
        specs[use.model] = spec_from_cached_variant(folder, name=use.model, max_batch_size=max_batch, **knobs)
    return specs


def dedicated_cores() -> int:
    """Cores this process may use (the affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class GrpcModelControl:
    """Model loads and changes through Triton's gRPC endpoint (see the module notes), with a timeout."""

    def __init__(self, grpc_url: str, *, timeout_s: float = 180.0) -> None:
        import tritonclient.grpc as triton_grpc

        self._client = triton_grpc.InferenceServerClient(grpc_url)
        self._timeout_s = timeout_s

    def load_config(self, name: str, config: Mapping[str, Any]) -> None:
        """Load ``name`` with ``config`` replacing its config.pbtxt; blocks until Triton answers."""
        self._client.load_model(name, config=json.dumps(config), client_timeout=self._timeout_s)

    def apply_spec(self, spec: TritonModelSpec) -> None:
        """Load or change ``spec.name`` to match ``spec`` (an in-place update if only the count changed)."""
        self.load_config(spec.name, render_config(spec))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> GrpcModelControl:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


@contextmanager
def running_triton(
    specs: Mapping[str, TritonModelSpec],
    work_dir: Path,
    *,
    load: Callable[[GrpcModelControl, TritonModelSpec], None] | None = None,
    progress: Callable[[str], None] | None = None,
    startup_timeout_s: float = 180.0,
    cpu_group: CpuQuotaGroup | None = None,
) -> Iterator[TritonServer]:
    """Write the repository, start ``tritonserver`` with no model, load each spec by config override.

    ``load`` replaces `GrpcModelControl.apply_spec` (the profiler loads a config without dynamic batching).
    The server stops when the block exits, whatever happens inside it.
    """
    repository = write_repository(work_dir / "repository", list(specs.values()))
    config = TritonServerConfig(model_repository=repository, models=(), work_dir=work_dir,
                                startup_timeout_s=startup_timeout_s, cpu_group=cpu_group)
    with TritonServer(config) as server, GrpcModelControl(server.grpc_url) as control:
        for spec in specs.values():
            started = time.monotonic()
            (load or GrpcModelControl.apply_spec)(control, spec)
            if progress is not None:
                progress(f"loaded {spec.name} in {time.monotonic() - started:.1f}s")
        yield server
