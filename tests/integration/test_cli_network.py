"""The command line against real sockets on this machine (unit tests may open none)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.unit.test_runtime_cli import _run, _trace


def test_load_refuses_a_url_where_no_router_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, err = _run(["load", "--trace", str(_trace(tmp_path)), "--window", "0:2", "--scale", "1",
                      "--url", f"http://127.0.0.1:{port}", "--pipeline", "digits", "--slo-ms", "50"], capsys)
    assert code == 2 and "--url: no ready router" in err
