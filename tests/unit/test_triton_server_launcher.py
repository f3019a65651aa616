"""The pure parts of the Triton launcher: command line, environment, ports, error messages.

Starting the real server is covered by ``tests/integration/test_triton_server.py``; these tests pin
the recipe of ``shared/reference/triton-local.md`` (explicit model control, the wheel's libraries on
``LD_LIBRARY_PATH``, the venv first on ``PATH``) without starting anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from paretoserve.workers.triton.server import (
    TritonInstallation,
    TritonNotFoundError,
    TritonPorts,
    TritonServer,
    TritonServerConfig,
    TritonStartupError,
    build_command,
    build_environment,
)

INSTALL = TritonInstallation(
    server_binary=Path("/w/pytriton/tritonserver/bin/tritonserver"),
    python_backend=Path("/w/pytriton/tritonserver/backends/python"),
    stub=Path("/w/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub"),
    library_dir=Path("/w/nvidia_pytriton.libs"),
)


def test_command_runs_explicit_model_control_on_the_chosen_ports() -> None:
    config = TritonServerConfig(model_repository=Path("/repo"), models=("a", "b"), extra_args=("--foo=1",))
    command = build_command(INSTALL, Path("/work/backends"), config, TritonPorts(http=1, grpc=2, metrics=3))

    assert command[0] == "/w/pytriton/tritonserver/bin/tritonserver"
    assert "--model-repository=/repo" in command
    assert "--backend-directory=/work/backends" in command
    assert "--model-control-mode=explicit" in command
    assert "--disable-auto-complete-config" in command  # strict by default: no auto-complete stub per load
    assert {"--http-port=1", "--grpc-port=2", "--metrics-port=3"} <= set(command)
    assert [arg for arg in command if arg.startswith("--load-model=")] == ["--load-model=a", "--load-model=b"]
    assert command[-1] == "--foo=1"


def test_auto_completion_can_be_turned_back_on() -> None:
    config = TritonServerConfig(model_repository=Path("/repo"), strict_model_config=False)
    command = build_command(INSTALL, Path("/work/backends"), config, TritonPorts(http=1, grpc=2, metrics=3))

    assert "--disable-auto-complete-config" not in command


def test_environment_puts_wheel_libraries_and_venv_first() -> None:
    env = build_environment(INSTALL, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib", "X": "1"}, Path("/venv/bin"))

    assert env["LD_LIBRARY_PATH"] == "/w/nvidia_pytriton.libs:/opt/lib"
    assert env["PATH"] == "/venv/bin:/usr/bin"
    assert env["X"] == "1"
    assert build_environment(INSTALL, {}, Path("/venv/bin"))["LD_LIBRARY_PATH"] == "/w/nvidia_pytriton.libs"


def test_stubs_get_one_blas_thread_unless_the_caller_chose() -> None:
    """Each instance's stub imports numpy; OpenBLAS's thread per core nearly doubled a new instance's CPU."""
    assert build_environment(INSTALL, {}, Path("/venv/bin"))["OPENBLAS_NUM_THREADS"] == "1"
    assert build_environment(INSTALL, {"OPENBLAS_NUM_THREADS": "4"}, Path("/venv/bin"))["OPENBLAS_NUM_THREADS"] == "4"


def test_free_ports_are_distinct() -> None:
    ports = TritonPorts.pick_free()

    assert len({ports.http, ports.grpc, ports.metrics}) == 3


def test_missing_stub_for_a_python_version_is_a_clear_error() -> None:
    with pytest.raises(TritonNotFoundError, match=r"3\.99.*pip install"):
        TritonInstallation.locate(python_version=(3, 99))


def test_startup_error_names_the_log_and_quotes_its_tail(tmp_path: Path) -> None:
    log = tmp_path / "tritonserver.log"
    log.write_text("line 1\nE1125 failed to load 'broken'\n")

    error = TritonStartupError("tritonserver exited with code 1 during startup", log)

    assert str(log) in str(error)
    assert "failed to load 'broken'" in str(error)
    assert error.log_path == log


def test_unstarted_server_has_no_ports_and_stop_is_a_no_op(tmp_path: Path) -> None:
    server = TritonServer(TritonServerConfig(model_repository=tmp_path))

    with pytest.raises(RuntimeError, match="not been started"):
        _ = server.http_url
    server.stop()
    assert not server.is_running()
