"""Session fixtures for the integration tests: the trained catalogs and real Triton servers.

The server (the real ``tritonserver`` from the nvidia-pytriton wheel, not a mock) starts once per
session with three variants, because each start costs seconds per model (with the Python implementation of
the ``paretoserve_onnx`` backend every instance is a stub process that opens an ONNX Runtime session). A
missing installation is a test failure with the install hint, never a skip: CI installs the workers extra.
Tests that reconfigure a model restore it.

The token-generating models have their own session server (``llm_triton_url``): the decoupled ``arith-small`` and
``arith-large`` and the prompt scorer ``arith-scorer`` (:mod:`paretoserve.workers.llm.scorer`), from the cached
catalog (``llm_catalog``) and the cached scorer fit (``llm_scorer``). The multimodal family has one too
(``mm_triton_url``): ``mm-low``, ``mm-high`` and their scorer ``mm-scorer`` (``IMAGE`` and ``PROMPT`` in), from
``multimodal_catalog`` and ``mm_scorer``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from paretoserve.workers.llm.cache import (
    CachedMMScorer,
    CachedScorer,
    LLMCatalog,
    ensure_llms,
    ensure_mm_scorer,
    ensure_scorer,
)
from paretoserve.workers.llm.multimodal import MultimodalCatalog, ensure_multimodal
from paretoserve.workers.llm.scorer import MM_SCORER_MODEL, SCORER_MODEL, scorer_spec, write_scorer_model
from paretoserve.workers.llm.serving import spec_from_cached_llm, write_llm_model
from paretoserve.workers.models import ModelCatalog, ensure_trained
from paretoserve.workers.router.fastpath import FastPathError, find_binary
from paretoserve.workers.triton.control import TritonControl
from paretoserve.workers.triton.repository import TritonModelSpec, spec_from_cached_variant, write_repository
from paretoserve.workers.triton.server import (
    TritonInstallation,
    TritonNotFoundError,
    TritonServer,
    TritonServerConfig,
)

SERVED_VARIANTS = ("tiny_linear", "cnn_small", "cnn_large")
EXTRA_VARIANTS = ("discriminator",)
"""Written into the session server's repository but not loaded at start; a test loads one on demand
(``TritonControl.load_model``) and unloads it afterwards."""
LLM_MODELS = ("arith-small", "arith-large")
"""The token-generating models ``llm_triton_url`` serves (with the prompt scorer)."""
MM_MODELS = ("mm-low", "mm-high")
"""The multimodal models ``mm_triton_url`` serves (with their scorer)."""


@pytest.fixture(scope="session")
def fastpath_binary() -> Path:
    """The router's compiled fast path (``native/fastpath``; ``.ci/run`` builds it); missing is a failure."""
    try:
        return find_binary()
    except FastPathError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def catalog() -> ModelCatalog:
    """The default catalog (``$PARETOSERVE_CACHE`` or ``~/.cache/paretoserve``); trained once if absent."""
    return ensure_trained()


@pytest.fixture(scope="session")
def llm_catalog() -> LLMCatalog:
    """The token-generating models (trained once if absent)."""
    return ensure_llms()


@pytest.fixture(scope="session")
def llm_scorer(llm_catalog: LLMCatalog) -> CachedScorer:
    """The prompt scorer fitted on ``arith-small``'s answers (fitted once if absent)."""
    return ensure_scorer()


@pytest.fixture(scope="session")
def multimodal_catalog() -> MultimodalCatalog:
    """The multimodal models (trained once if absent)."""
    return ensure_multimodal()


@pytest.fixture(scope="session")
def mm_scorer(multimodal_catalog: MultimodalCatalog) -> CachedMMScorer:
    """The multimodal scorer fitted on ``mm-low``'s answers (fitted once if absent)."""
    return ensure_mm_scorer()


@pytest.fixture(scope="session")
def triton_installation() -> TritonInstallation:
    try:
        return TritonInstallation.locate()
    except TritonNotFoundError as error:
        pytest.fail(f"the real Triton server is required for these tests: {error}", pytrace=False)


@pytest.fixture(scope="session")
def served_specs(catalog: ModelCatalog) -> dict[str, TritonModelSpec]:
    return {
        variant: spec_from_cached_variant(catalog.variant_dir(variant), max_batch_size=32, max_queue_delay_us=200)
        for variant in SERVED_VARIANTS
    }


@pytest.fixture(scope="session")
def extra_specs(catalog: ModelCatalog) -> dict[str, TritonModelSpec]:
    return {
        variant: spec_from_cached_variant(catalog.variant_dir(variant), max_batch_size=32, max_queue_delay_us=200)
        for variant in EXTRA_VARIANTS
    }


@pytest.fixture(scope="session")
def triton_server(
    tmp_path_factory: pytest.TempPathFactory,
    triton_installation: TritonInstallation,
    served_specs: dict[str, TritonModelSpec],
    extra_specs: dict[str, TritonModelSpec],
) -> Iterator[TritonServer]:
    work = tmp_path_factory.mktemp("triton")
    repository = write_repository(work / "repository", [*served_specs.values(), *extra_specs.values()])
    config = TritonServerConfig(
        model_repository=repository,
        models=tuple(served_specs),
        work_dir=work,
        backend_cache_dir=work / "backends",
    )
    with TritonServer(config, triton_installation) as server:
        yield server
    assert not server.is_running()


@pytest.fixture()
def control(triton_server: TritonServer) -> Iterator[TritonControl]:
    with TritonControl(triton_server.http_url, triton_server.metrics_url) as client:
        yield client


@pytest.fixture(scope="session")
def llm_triton_url(tmp_path_factory: pytest.TempPathFactory, triton_installation: TritonInstallation,
                   llm_catalog: LLMCatalog, llm_scorer: CachedScorer) -> Iterator[str]:
    """``http://host:port`` of a real Triton serving the LLM family (8 sequences each) and ``arith-scorer``."""
    work = tmp_path_factory.mktemp("triton-llm-family")
    repository = work / "repository"
    for model in LLM_MODELS:
        write_llm_model(repository, spec_from_cached_llm(llm_catalog.model_dir(model), max_sequences=8))
    write_scorer_model(repository, llm_scorer.weights_file)
    config = TritonServerConfig(model_repository=repository, models=(*LLM_MODELS, SCORER_MODEL), work_dir=work,
                                backend_cache_dir=work / "backends")
    with TritonServer(config, triton_installation) as server:
        yield f"http://{server.http_url}"


@pytest.fixture(scope="session")
def mm_triton_url(tmp_path_factory: pytest.TempPathFactory, triton_installation: TritonInstallation,
                  multimodal_catalog: MultimodalCatalog, mm_scorer: CachedMMScorer) -> Iterator[str]:
    """``http://host:port`` of a real Triton serving the multimodal family (8 sequences each) and ``mm-scorer``."""
    work = tmp_path_factory.mktemp("triton-mm-family")
    repository = work / "repository"
    for model in MM_MODELS:
        write_llm_model(repository, spec_from_cached_llm(multimodal_catalog.model_dir(model), max_sequences=8))
    write_scorer_model(repository, mm_scorer.weights_file, scorer_spec(mm_scorer.weights_file))
    config = TritonServerConfig(model_repository=repository, models=(*MM_MODELS, MM_SCORER_MODEL), work_dir=work,
                                backend_cache_dir=work / "backends")
    with TritonServer(config, triton_installation) as server:
        yield f"http://{server.http_url}"
