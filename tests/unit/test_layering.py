"""Architecture guards: a pure planner, and no `operator` package shadowing the standard library."""

from __future__ import annotations

import ast
import importlib
import operator
from pathlib import Path

import paretoserve.planner

REPO = Path(__file__).resolve().parents[2]
PLANNER = Path(paretoserve.planner.__file__).parent

# I/O, clocks and clients the planner must never touch.
FORBIDDEN = {
    "time", "datetime", "os", "io", "socket", "subprocess", "shutil", "tempfile", "pathlib", "logging",
    "random", "threading", "asyncio", "urllib", "http", "kopf", "kubernetes", "httpx", "requests",
    "prometheus_client", "prometheus_api_client", "tritonclient", "torch",
    "paretoserve.operator", "paretoserve.workers", "paretoserve.shell", "paretoserve.research",
}


def _imports(path: Path, *, members: bool = False) -> set[str]:
    """Absolute imports in the file, function-level ones included; with ``members``, also
    ``module.name`` for each ``from module import name`` (which may be a submodule)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if members:
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_planner_imports_no_io_clock_or_clients() -> None:
    offenders = {
        f"{path.name}: {name}"
        for path in PLANNER.rglob("*.py")
        for name in _imports(path)
        if _forbidden(name)
    }
    assert offenders == set()


def test_only_milp_imports_pulp() -> None:
    users = {path.name for path in PLANNER.rglob("*.py") if any(n.split(".")[0] == "pulp" for n in _imports(path))}
    assert users == {"milp.py"}


def test_operator_is_the_standard_library_and_ours_is_namespaced() -> None:
    assert REPO not in Path(operator.__file__).resolve().parents
    assert operator.add(2, 3) == 5
    ours = importlib.import_module("paretoserve.operator")
    assert Path(ours.__file__).resolve().parent == REPO / "operator"


def test_every_source_folder_is_declared_in_pyproject() -> None:
    """Non-editable installs only ship the packages pyproject lists."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    for package, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            name = ".".join([package, *relative.parts]) if relative.parts else package
            assert name in listed, f"{name} ({init.parent}) is missing from [tool.setuptools] packages"


def _calls(path: Path) -> set[str]:
    """Names of the functions and methods called in the file (`f(...)` -> f, `x.f(...)` -> f)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def test_the_control_step_exists_once() -> None:
    """Only planner/control.py decides and actuates; selection.py combines ParetoPolicy's decisions."""
    sources = [p for folder in ("planner", "workers", "operator", "shell", "research")
               for p in (REPO / folder).rglob("*.py")]
    deciders = {p.relative_to(REPO).as_posix() for p in sources if "decide" in _calls(p)}
    proposers = {p.relative_to(REPO).as_posix() for p in sources if "propose" in _calls(p)}
    assert deciders == {"planner/control.py"}
    assert proposers == {"planner/control.py"}
