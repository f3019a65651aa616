"""Session fixtures for the integration tests: the trained catalog and one real Triton server.

The server (the real ``tritonserver`` from the nvidia-pytriton wheel, not a mock) starts once per
session with three variants, because each start costs seconds per model (every instance is a
Python-backend stub that opens an ONNX Runtime session). A missing installation is a test failure with the install
hint, never a skip: CI installs the workers extra. Tests that reconfigure a model restore it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from paretoserve.workers.models import ModelCatalog, ensure_trained
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


@pytest.fixture(scope="session")
def catalog() -> ModelCatalog:
    """The default catalog (``$PARETOSERVE_CACHE`` or ``~/.cache/paretoserve``); trained once if absent."""
    return ensure_trained()


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
