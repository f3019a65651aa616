"""NVIDIA's `perf_analyzer` as the router benchmark's load generator, set up beside the project, never system-wide.

`perf_analyzer` is what Triton users measure with, in its native mode (it reads a model's metadata, config
and statistics before it sends), so running it unchanged against the router shows both that the router is a
drop-in KServe v2 endpoint and what it costs. Its binary ships in the `tritonclient` wheel (2.60.0, the last
with it inside); that build needs glibc >= 2.38 and libstdc++ from GCC 13+, newer than Debian 12's. So
`prepare` caches, under ``~/.cache/paretoserve/perf_analyzer``:

1. the binary, from the wheel (``pip download``, unzip);
2. where the system's C library is too old, Debian 13's ``libc6``, ``libstdc++6`` and ``libgcc-s1``
   (``apt-get download`` with a private sources list and state directory, ``dpkg-deb -x``), and runs the
   binary through that glibc's own loader (``ld-linux-x86-64.so.2 --library-path ...``).

Nothing is installed; a machine without PyPI or Debian's archive gets a reason instead (`Unavailable`), and
the benchmark falls back to the project's own load generator and says so. `measure` runs one
measurement and reads perf_analyzer's CSV.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WHEEL = "tritonclient==2.60.0"
VERSION = "2.60.0"
DEBIAN_SUITE = "trixie"
LIBRARIES = ("libc6", "libstdc++6", "libgcc-s1")
LOADER = "ld-linux-x86-64.so.2"
MULTIARCH = "usr/lib/x86_64-linux-gnu"


class Unavailable(RuntimeError):
    """perf_analyzer cannot run here; the message says which step failed."""


@dataclass(frozen=True)
class PerfAnalyzer:
    command: tuple[str, ...]
    """What runs perf_analyzer (the binary, or the newer loader with its library path and the binary)."""
    how: str
    """For the report: where the binary and its libraries come from."""


def cache_dir() -> Path:
    return Path(os.environ.get("PARETOSERVE_CACHE", Path.home() / ".cache" / "paretoserve")) / "perf_analyzer"


def _run(command: Sequence[str], what: str, timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise Unavailable(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
    return done


def _binary(root: Path) -> Path:
    binary = root / f"tritonclient-{VERSION}" / "perf_analyzer"
    if binary.exists():
        return binary
    with tempfile.TemporaryDirectory(prefix="pa-wheel-") as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", WHEEL, "-d", tmp],
             f"pip download {WHEEL}")
        wheels = list(Path(tmp).glob("tritonclient-*.whl"))
        if not wheels:
            raise Unavailable(f"pip download {WHEEL} gave no wheel")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith("/bin/perf_analyzer")), None)
            if member is None:
                raise Unavailable(f"{wheels[0].name} has no bin/perf_analyzer")
            binary.parent.mkdir(parents=True, exist_ok=True)
            partial = binary.with_suffix(".partial")
            partial.write_bytes(wheel.read(member))
    partial.chmod(0o755)
    partial.replace(binary)
    return binary


def _debian_libraries(root: Path) -> Path:
    """Debian 13's C and C++ runtime unpacked under ``root`` (downloaded once)."""
    sysroot = root / f"debian-{DEBIAN_SUITE}"
    if (sysroot / MULTIARCH / LOADER).exists():
        return sysroot
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise Unavailable("the system glibc is older than 2.38 and apt-get/dpkg-deb are not here to fetch a newer one")
    apt = root / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    sources = apt / "sources.list"
    sources.write_text(f"deb http://deb.debian.org/debian {DEBIAN_SUITE} main\n")
    options = [f"-o=Dir::Etc::sourcelist={sources}", "-o=Dir::Etc::sourceparts=/nonexistent",
               f"-o=Dir::State::Lists={apt / 'lists'}", f"-o=Dir::Cache={apt / 'cache'}",
               "-o=APT::Get::List-Cleanup=0", "-o=APT::Sandbox::User=root"]
    _run(["apt-get", *options, "update"], f"apt-get update ({DEBIAN_SUITE} index, private state)")
    debs = apt / "debs"
    debs.mkdir(exist_ok=True)
    done = subprocess.run(["apt-get", *options, "download", *LIBRARIES], cwd=debs, capture_output=True, text=True,
                          timeout=600, check=False)
    if done.returncode != 0:
        raise Unavailable(f"apt-get download {' '.join(LIBRARIES)} failed: {done.stderr.strip()[-300:]}")
    partial = root / "sysroot.partial"
    shutil.rmtree(partial, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(partial)], f"dpkg-deb -x {deb.name}")
    partial.replace(sysroot)
    return sysroot


def prepare(root: Path | None = None) -> PerfAnalyzer:
    """perf_analyzer ready to run (see the module notes), or `Unavailable` saying why not."""
    root = root or cache_dir()
    binary = _binary(root)
    direct = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60, check=False)
    if "GLIBC" not in direct.stderr and "GLIBCXX" not in direct.stderr:
        return PerfAnalyzer((str(binary),), f"perf_analyzer {VERSION} from the tritonclient wheel")
    sysroot = _debian_libraries(root)
    libraries = f"{sysroot / MULTIARCH}:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"
    command = (str(sysroot / MULTIARCH / LOADER), "--library-path", libraries, str(binary))
    check = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60, check=False)
    if "GLIBC" in check.stderr:
        raise Unavailable(f"perf_analyzer still cannot load: {check.stderr.strip()[-300:]}")
    return PerfAnalyzer(command, f"perf_analyzer {VERSION} from the tritonclient wheel, run by Debian "
                                 f"{DEBIAN_SUITE}'s glibc loader unpacked beside it ({sysroot})")


def _float(row: dict[str, str], key: str) -> float | None:
    value = row.get(key)
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def measure(pa: PerfAnalyzer, url: str, model: str, *, concurrency: int | None = None, rate: float | None = None,
            interval_ms: int = 2000, cpus: set[int] | None = None, timeout_s: float = 180.0) -> dict[str, Any]:
    """One measurement (closed loop at ``concurrency`` or open loop at ``rate``) of ``model`` at ``url``
    (``host:port``): throughput and client-side latency percentiles in ms from perf_analyzer's CSV."""
    if (concurrency is None) == (rate is None):
        raise ValueError("give exactly one of concurrency and rate")
    load = ["--concurrency-range", str(concurrency)] if concurrency is not None else \
        ["--request-rate-range", f"{rate:g}", "--request-distribution", "constant"]
    with tempfile.TemporaryDirectory(prefix="pa-run-") as tmp:
        report = Path(tmp) / "report.csv"
        command = [*pa.command, "-m", model, "-u", url, "-i", "http", "--measurement-interval", str(interval_ms),
                   "--stability-percentage", "25", "--max-trials", "6", *load, "-f", str(report)]

        def pin() -> None:  # pragma: no cover - runs in the child
            if cpus:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(0, cpus)

        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False,
                              preexec_fn=pin)
        if done.returncode != 0 or not report.exists():
            return {"error": (done.stderr or done.stdout).strip()[-400:] or f"exit {done.returncode}"}
        return read_report(report.read_text())


def read_report(text: str) -> dict[str, Any]:
    """Throughput and latency percentiles (ms) of the last measurement in perf_analyzer's ``-f`` CSV (µs)."""
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        return {"error": "perf_analyzer wrote no measurement"}
    row = rows[-1]
    out: dict[str, Any] = {"throughput_rps": _float(row, "Inferences/Second")}
    for key, name in (("p50 latency", "p50_ms"), ("p90 latency", "p90_ms"), ("p99 latency", "p99_ms")):
        value = _float(row, key)
        out[name] = None if value is None else round(value / 1000.0, 3)
    return out
