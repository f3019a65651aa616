"""Which Triton models a ServingPipeline needs, and one real Triton server serving them.

The profiler and `paretoserve up` both start the real ``tritonserver`` with a pipeline's models; they share this
module so that they resolve a manifest the same way. `pipeline_models` says what each model is from where the
manifest names it, and `model_specs` finds it (`served` says how each kind is written, loaded and changed):

- a variant of a stage without ``generation``, or a cascade's ``discriminatorModel``: a fixed-cost classifier, a
  cached digits variant of the model catalog (``paretoserve.workers.models``) or else an ONNX entry of
  ``--model-repository``;
- a variant of a stage with ``generation``: a token-generating model trained here, of the text family
  (``paretoserve.workers.llm.cache.ensure_llms``) or the multimodal one
  (``paretoserve.workers.llm.multimodal.ensure_multimodal``), each trained and cached on first use, served by
  the decoupled Python backend (a multimodal model with its ``IMAGE`` input);
- a cascade's ``scorerModel``: the prompt scorer of its family (``arith-scorer`` or ``mm-scorer``) fitted on the
  cascade's light model (``paretoserve.workers.llm.cache.ensure_scorer`` / ``ensure_mm_scorer``, fitted and cached
  on first use).

The Triton model name is the ``tritonModel`` itself. A name that resolves to nothing is a `SpecError` naming the
field, as everywhere else.

Models are loaded through the load API's config override, never with ``--load-model``: a model first
loaded from its ``config.pbtxt`` pays a full reload (8-14 s on 2 cores) on its first change, while a model
loaded by override later changes its instance count in place (~2 s). The load call goes over **gRPC**
(`GrpcModelControl`): over HTTP the blocking load request holds one of Triton's HTTP worker threads for
the whole load, and every inference request on a connection served by that thread waits with it
(measured with Triton 2.51: requests to *any* model stalled 2-10 s per change; over gRPC, none did).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from paretoserve.planner.spec import ServingPipeline, SpecError
from paretoserve.workers.llm.scorer import MM_SCORER_MODEL, SCORER_MODEL, scorer_spec
from paretoserve.workers.llm.serving import spec_from_cached_llm
from paretoserve.workers.plan_rendering import discriminator_model, scorer_model
from paretoserve.workers.runtime.served import GenerationModel, ScorerModel, ServedSpec, served_config, write_served
from paretoserve.workers.triton.cpu_quota import CpuQuotaGroup
from paretoserve.workers.triton.repository import ONNX_FILE, TritonModelSpec, spec_from_cached_variant
from paretoserve.workers.triton.server import TritonServer, TritonServerConfig

if TYPE_CHECKING:  # torch and tritonclient load only where a model catalog or a server is used
    from paretoserve.workers.llm.cache import CachedFit
    from paretoserve.workers.llm.config import CachedModels
    from paretoserve.workers.models import ModelCatalog


DEFAULT_MAX_BATCH = 32
"""Triton's ``max_batch_size`` for every model; changing it is a full reload, so it is fixed per run."""


ModelKind = Literal["classifier", "generation", "scorer"]
"""What a model is (see the module notes): it decides where `model_specs` looks for it and how it is served."""


@dataclass(frozen=True)
class ModelUse:
    """One Triton model of a pipeline: its name, what it is and where the manifest names it."""

    model: str
    path: str
    """The first field that names it, e.g. ``spec.stages[0].variants[1].tritonModel``."""
    kind: ModelKind = "classifier"
    light: str | None = None
    """A scorer's: the Triton model of the cascade's light variant, whose failures it predicts."""


def pipeline_models(pipeline: ServingPipeline) -> list[ModelUse]:
    """The distinct Triton models the pipeline serves, in manifest order (discriminators and scorers last)."""
    uses: dict[str, ModelUse] = {}
    for i, stage in enumerate(pipeline.spec.stages):
        kind: ModelKind = "generation" if stage.generation is not None else "classifier"
        for j, variant in enumerate(stage.variants):
            path = f"spec.stages[{i}].variants[{j}].tritonModel"
            uses.setdefault(variant.triton_model, ModelUse(variant.triton_model, path, kind))
    for i, stage in enumerate(pipeline.spec.stages):
        extra = discriminator_model(stage)
        if extra is not None:
            uses.setdefault(extra, ModelUse(extra, f"spec.stages[{i}].cascade.discriminatorModel"))
        scorer = scorer_model(stage)
        if scorer is not None and stage.cascade is not None:
            light = {v.name: v.triton_model for v in stage.variants}[stage.cascade.light]
            uses.setdefault(scorer, ModelUse(scorer, f"spec.stages[{i}].cascade.scorerModel", "scorer", light))
    return list(uses.values())


def max_batch_size(pipeline: ServingPipeline, extra: Sequence[int] = ()) -> int:
    """One ``max_batch_size`` for every model: the largest batch any stage (or ``extra``) may use."""
    largest = max([DEFAULT_MAX_BATCH, *extra, *(b for s in pipeline.spec.stages for b in s.batch_sizes)])
    return int(largest)


def _generation_catalog(model: str) -> CachedModels:
    """The cached family holding ``model`` (trained on first use): the multimodal one for its models' names, the
    text one for the text models'. Raises `LookupError` with the names of both families for any other name
    (without training either)."""
    from paretoserve.workers.llm.cache import ensure_llms  # torch: only where a generation model is served
    from paretoserve.workers.llm.multimodal import RECIPES as MM_RECIPES
    from paretoserve.workers.llm.multimodal import ensure_multimodal
    from paretoserve.workers.llm.training import RECIPES

    if model in {recipe.name for recipe in MM_RECIPES}:
        return ensure_multimodal()
    if model in {recipe.name for recipe in RECIPES}:
        return ensure_llms()
    raise LookupError(", ".join(sorted([recipe.name for recipe in RECIPES] + [recipe.name for recipe in MM_RECIPES])))


def _fitted_scorer(model: str, light: str) -> CachedFit:
    """The fit behind the scorer ``model`` (``arith-scorer`` or ``mm-scorer``) for the cascade's ``light`` model;
    `LookupError` for another name."""
    from paretoserve.workers.llm.cache import ensure_mm_scorer, ensure_scorer

    if model == SCORER_MODEL:
        return ensure_scorer(light=light)
    if model == MM_SCORER_MODEL:
        return ensure_mm_scorer(light=light)
    raise LookupError(model)


def model_specs(
    uses: Sequence[ModelUse], catalog: ModelCatalog | None, *, max_batch: int, repository: Path | None = None,
    llms: Callable[[str], CachedModels] = _generation_catalog,
    scorer: Callable[[str, str], CachedFit] = _fitted_scorer,
    **knobs: Any,
) -> dict[str, ServedSpec]:
    """A spec per model, by its kind (`ModelUse.kind`; one instance, one thread unless ``knobs`` say otherwise):

    - a classifier: a cached digits variant of ``catalog``, else an entry of the model ``repository`` that
      ``paretoserve fuse`` (or ``models export``) wrote; ``knobs`` are its `TritonModelSpec` fields;
    - a generation model: the token-generating model of the family ``llms(model)`` returns (trained on first use);
    - a scorer: ``arith-scorer`` or ``mm-scorer``, the fit ``scorer(model, light)`` returns for the cascade's light
      model.

    Raises `SpecError` naming the field at the first model that resolves to nothing."""
    families = functools.cache(llms)  # each family read (or trained) once, and only when one of its models is served
    specs: dict[str, ServedSpec] = {}
    for use in uses:
        if use.kind == "generation":
            specs[use.model] = _generation_model(use, families)
        elif use.kind == "scorer":
            specs[use.model] = _scorer_model(use, scorer)
        else:
            specs[use.model] = _classifier(use, catalog, repository, max_batch=max_batch, **knobs)
    return specs


def _generation_model(use: ModelUse, llms: Callable[[str], CachedModels]) -> GenerationModel:
    try:
        family = llms(use.model)
    except LookupError as known:
        raise SpecError(use.path, f"{use.model!r} is not a token-generating model trained here (have: "
                                  f"{known.args[0]})") from None
    return GenerationModel(spec_from_cached_llm(family.model_dir(use.model), name=use.model))


def _scorer_model(use: ModelUse, scorer: Callable[[str, str], CachedFit]) -> ScorerModel:
    try:
        fitted = scorer(use.model, use.light or "")
    except LookupError:
        raise SpecError(use.path, f"{use.model!r} is not a prompt scorer `paretoserve up` can serve (it serves "
                                  f"{SCORER_MODEL!r} and {MM_SCORER_MODEL!r}, fitted here on the light model's "
                                  "answers)") from None
    return ScorerModel(scorer_spec(fitted.weights_file, name=use.model), fitted.weights_file)


def _classifier(use: ModelUse, catalog: ModelCatalog | None, repository: Path | None, *, max_batch: int,
                **knobs: Any) -> TritonModelSpec:
    if catalog is not None and use.model in catalog.variants:
        folder = catalog.variant_dir(use.model)
    elif repository is not None and (repository / use.model / "1" / ONNX_FILE).is_file():
        folder = repository / use.model / "1"
    else:
        have = f" (have: {', '.join(sorted(catalog.variants))})" if catalog is not None else ""
        where = f" nor an entry of {repository}" if repository is not None else ""
        raise SpecError(use.path, f"{use.model!r} is neither a cached digits variant{have}{where}")
    return spec_from_cached_variant(folder, name=use.model, max_batch_size=max_batch, **knobs)


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

    def apply_spec(self, spec: ServedSpec) -> None:
        """Load or change ``spec.name`` to match ``spec`` (an in-place update if only the count changed and the
        kind allows it: `served.change_kind`)."""
        self.load_config(spec.name, served_config(spec))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> GrpcModelControl:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


@contextmanager
def running_triton(
    specs: Mapping[str, ServedSpec],
    work_dir: Path,
    *,
    load: Callable[[GrpcModelControl, ServedSpec], None] | None = None,
    progress: Callable[[str], None] | None = None,
    startup_timeout_s: float = 180.0,
    cpu_group: CpuQuotaGroup | None = None,
) -> Iterator[TritonServer]:
    """Write the repository, start ``tritonserver`` with no model, load each spec by config override.

    ``load`` replaces `GrpcModelControl.apply_spec` (the profiler loads a config without dynamic batching).
    The server stops when the block exits, whatever happens inside it.
    """
    repository = write_served(work_dir / "repository", specs)
    config = TritonServerConfig(model_repository=repository, models=(), work_dir=work_dir,
                                startup_timeout_s=startup_timeout_s, cpu_group=cpu_group)
    with TritonServer(config) as server, GrpcModelControl(server.grpc_url) as control:
        for spec in specs.values():
            started = time.monotonic()
            (load or GrpcModelControl.apply_spec)(control, spec)
            if progress is not None:
                progress(f"loaded {spec.name} in {time.monotonic() - started:.1f}s")
        yield server
