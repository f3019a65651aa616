"""Which implementation of the ``paretoserve_onnx`` Triton backend a server gets, and how it is installed.

Every digits variant (and every fused or agent model built from them) is served by one Triton backend,
``paretoserve_onnx``: the model config names it (:data:`~paretoserve.workers.triton.repository.ONNX_BACKEND`),
the backend directory Triton starts with provides it. It comes in two implementations with one contract
(inputs, outputs, errors; ``tests/integration/test_onnx_backend.py`` checks they answer alike):

- **native** (``native/onnx_backend``, Rust): ``libtriton_paretoserve_onnx.so`` runs ONNX Runtime inside
  tritonserver. An instance is a session made on one of Triton's threads, so a knob change that adds
  instances or reloads a model starts no process (`paretoserve bench knobs --onnx-backend`).
- **python**: ``model.py`` (:mod:`paretoserve.workers.triton.backend_model`) in the backend's directory, which
  Triton runs as a *Python-based backend*: each instance is a Python-backend stub process.

``auto`` (the default) takes the native library when one is built (``cargo build --release --manifest-path
native/onnx_backend/Cargo.toml``) and the Python one otherwise; the worker image carries the native one. The
native library loads ONNX Runtime from the onnxruntime wheel (``ORT_DYLIB_PATH``), the same runtime the
Python implementation imports.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from paretoserve.workers.triton.repository import ONNX_BACKEND, backend_model_source

LIBRARY_NAME = f"libtriton_{ONNX_BACKEND}.so"
CHOICES = ("auto", "native", "python")
_REPO_BUILD = Path(__file__).resolve().parents[2] / "native" / "onnx_backend" / "target" / "release" / LIBRARY_NAME
BUILD_HINT = "build it with: cargo build --release --manifest-path native/onnx_backend/Cargo.toml"


class OnnxBackendError(RuntimeError):
    """The chosen implementation is not available (the message says how to get it)."""


@dataclass(frozen=True)
class OnnxBackend:
    """The implementation a server gets: the native library, or ``None`` for the Python one."""

    library: Path | None

    @property
    def kind(self) -> str:
        return "native" if self.library is not None else "python"

    def cache_key(self) -> str:
        """A short key that changes with the implementation's bytes (the prepared directory is reused)."""
        if self.library is None:
            payload = backend_model_source().encode()
        else:
            stat = self.library.stat()
            payload = f"{self.library.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
        return f"{self.kind}-{hashlib.sha256(payload).hexdigest()[:12]}"

    def install(self, backend_dir: Path) -> None:
        """Write the implementation into ``<backends>/paretoserve_onnx/`` (``backend_dir``)."""
        backend_dir.mkdir(parents=True, exist_ok=True)
        if self.library is None:
            (backend_dir / "model.py").write_text(backend_model_source())
        else:
            shutil.copy2(self.library, backend_dir / LIBRARY_NAME)

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """What the server's environment needs for this implementation: ``ORT_DYLIB_PATH`` for the native
        one (unless ``base`` sets it), nothing for the Python one."""
        if self.library is None or base.get("ORT_DYLIB_PATH"):
            return {}
        return {"ORT_DYLIB_PATH": str(onnxruntime_library())}


def resolve(choice: str) -> OnnxBackend:
    """``auto``, ``native``, ``python``, or the path of a built library."""
    if choice == "python":
        return OnnxBackend(library=None)
    if choice in ("auto", "native"):
        if _REPO_BUILD.is_file():
            return OnnxBackend(library=_REPO_BUILD)
        if choice == "native":
            raise OnnxBackendError(f"the native {ONNX_BACKEND} backend is not built ({_REPO_BUILD}); {BUILD_HINT}")
        return OnnxBackend(library=None)
    path = Path(choice)
    if path.name != LIBRARY_NAME or not path.is_file():
        raise OnnxBackendError(f"onnx_backend: expected one of {', '.join(CHOICES)} or the path of a built "
                               f"{LIBRARY_NAME}, got {choice!r}")
    return OnnxBackend(library=path)


def onnxruntime_library() -> Path:
    """The onnxruntime wheel's ``libonnxruntime.so`` (what the native backend loads), found without importing
    onnxruntime."""
    spec = find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise OnnxBackendError("the native backend needs the onnxruntime wheel: pip install 'paretoserve[workers]'")
    capi = Path(next(iter(spec.submodule_search_locations))) / "capi"
    candidates = sorted(p for p in capi.glob("libonnxruntime.so*") if p.is_file() and not p.is_symlink())
    if not candidates:
        raise OnnxBackendError(f"no libonnxruntime.so in {capi}: this onnxruntime wheel does not ship ONNX Runtime's "
                               "C library; set ORT_DYLIB_PATH")
    return candidates[-1]

