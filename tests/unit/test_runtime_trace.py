"""Trace reading, windowing, scaling and the arrival schedule, on tiny synthetic bz2 tarballs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from paretoserve.workers.runtime.trace import (
    TraceError,
    Window,
    arrival_offsets,
    describe,
    parse_window,
    read_trace,
    scale_window,
)


def make_trace(path: Path, text: str, *, name: str = "workload.txt") -> Path:
    data = text.encode()
    with tarfile.open(path, "w:bz2") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def test_read_trace_reads_the_first_file_of_a_bz2_tarball(tmp_path: Path) -> None:
    trace = make_trace(tmp_path / "t.tbz2", "5 7 0 12\n")
    assert read_trace(trace) == [5, 7, 0, 12]


def test_read_trace_skips_directories(tmp_path: Path) -> None:
    path = tmp_path / "t.tbz2"
    with tarfile.open(path, "w:bz2") as archive:
        folder = tarfile.TarInfo("data")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        info = tarfile.TarInfo("data/workload.txt")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"1 2"))
    assert read_trace(path) == [1, 2]


@pytest.mark.parametrize(("content", "message"), [
    (b"not a tarball", "cannot read"),
    (None, "holds no regular file"),
])
def test_read_trace_errors_name_the_argument(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.tbz2"
    if content is None:
        with tarfile.open(path, "w:bz2"):
            pass
    else:
        path.write_bytes(content)
    with pytest.raises(TraceError, match=f"--trace: .*{message}"):
        read_trace(path)


def test_read_trace_rejects_non_integers(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="second 2 is not an integer"):
        read_trace(make_trace(tmp_path / "t.tbz2", "1 2 x 4"))


def test_missing_trace_file_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="--trace"):
        read_trace(tmp_path / "absent.tbz2")


@pytest.mark.parametrize("text", ["10", "10:5", "5:5", "-1:3", "a:b", "1:2:3"])
def test_bad_windows(text: str) -> None:
    with pytest.raises(TraceError, match="--window"):
        parse_window(text)


def test_window() -> None:
    assert parse_window("1296000:1296120") == Window(1296000, 1296120)
    assert parse_window("3:5").seconds == 2


def test_scale_window_keeps_the_scaled_total() -> None:
    counts = [0, 10, 20, 30, 40, 50]
    out = scale_window(counts, Window(1, 5), 0.25)
    assert len(out) == 4
    assert sum(out) == round(sum(counts[1:5]) * 0.25)
    # 2.5, 5, 7.5, 10 per second; cumulative 2.5, 7.5, 15, 25 rounds to 3, 8, 15, 25
    assert out == [3, 5, 7, 10]


def test_scale_window_small_scales_carry_fractions_forward() -> None:
    out = scale_window([1] * 100, Window(0, 100), 0.02)
    assert sum(out) == 2
    assert set(out) <= {0, 1}


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_scale_must_be_positive(scale: float) -> None:
    with pytest.raises(TraceError, match="--scale"):
        scale_window([1, 2, 3], Window(0, 2), scale)


def test_window_beyond_the_trace() -> None:
    with pytest.raises(TraceError, match="the trace has 3 seconds"):
        scale_window([1, 2, 3], Window(1, 4), 1.0)


def test_arrivals_are_spread_within_their_second_and_deterministic() -> None:
    per_second = [4, 0, 1, 3]
    offsets = arrival_offsets(per_second, seed=7)
    assert len(offsets) == 8
    assert offsets == sorted(offsets)
    buckets = [int(o) for o in offsets]
    assert [buckets.count(s) for s in range(4)] == per_second
    first = [o for o in offsets if int(o) == 0]
    gaps = {round(b - a, 9) for a, b in zip(first, first[1:], strict=False)}
    assert gaps == {0.25}  # evenly spaced: the trace has no finer resolution
    assert offsets == arrival_offsets(per_second, seed=7)
    assert offsets != arrival_offsets(per_second, seed=8)


def test_describe() -> None:
    assert describe([2, 4, 0]) == {"seconds": 3, "requests": 6, "meanRps": 2.0, "peakRps": 4}
    assert describe([])["requests"] == 0
