"""Which ``paretoserve_onnx`` implementation a server gets (``workers/triton/onnx_backend.py``): the choices, the
errors that name what is missing, and what each installs into the backends directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from paretoserve.workers.triton import onnx_backend
from paretoserve.workers.triton.onnx_backend import LIBRARY_NAME, OnnxBackend, OnnxBackendError, resolve
from paretoserve.workers.triton.repository import backend_model_source


@pytest.fixture()
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    library = tmp_path / "release" / LIBRARY_NAME
    library.parent.mkdir()
    library.write_bytes(b"\x7fELF not really")
    monkeypatch.setattr(onnx_backend, "_REPO_BUILD", library)
    return library


@pytest.fixture()
def not_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_backend, "_REPO_BUILD", tmp_path / "missing" / LIBRARY_NAME)


def test_auto_takes_the_native_library_when_built(built: Path) -> None:
    assert resolve("auto") == OnnxBackend(library=built) == resolve("native")
    assert resolve("python") == OnnxBackend(library=None)


@pytest.mark.usefixtures("not_built")
def test_auto_falls_back_to_python_and_native_says_how_to_build() -> None:
    assert resolve("auto").kind == "python"
    with pytest.raises(OnnxBackendError, match=r"not built .*cargo build --release --manifest-path native/onnx"):
        resolve("native")


def test_an_explicit_path_must_be_the_library(built: Path, tmp_path: Path) -> None:
    assert resolve(str(built)).library == built
    with pytest.raises(OnnxBackendError, match=r"expected one of auto, native, python or the path of a built"):
        resolve(str(tmp_path / "libsomething.so"))
    with pytest.raises(OnnxBackendError, match="got 'fast'"):
        resolve("fast")


def test_each_implementation_installs_its_own_files_under_its_own_key(built: Path, tmp_path: Path) -> None:
    native, python = OnnxBackend(library=built), OnnxBackend(library=None)
    native.install(tmp_path / "n")
    python.install(tmp_path / "p")
    assert [p.name for p in (tmp_path / "n").iterdir()] == [LIBRARY_NAME]
    assert (tmp_path / "p" / "model.py").read_text() == backend_model_source()
    assert native.cache_key().startswith("native-") and python.cache_key().startswith("python-")
    assert native.cache_key() != OnnxBackend(library=tmp_path / "n" / LIBRARY_NAME).cache_key()


def test_only_the_native_one_needs_onnx_runtimes_library(built: Path) -> None:
    assert OnnxBackend(library=None).environment({}) == {}
    assert OnnxBackend(library=built).environment({"ORT_DYLIB_PATH": "/given"}) == {}
    found = OnnxBackend(library=built).environment({})["ORT_DYLIB_PATH"]
    assert Path(found).name.startswith("libonnxruntime.so") and Path(found).is_file()
