"""The sidecar image installs `.[operator,router]` only (no torch, no Triton server): nothing the router
sidecar can import may need more. This guards images/Dockerfile statically (its install is `.[operator,router]`);
the e2e real-node tier runs the built image."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from .test_layering import _imports

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {"paretoserve.planner": "planner", "paretoserve.operator": "operator",
                "paretoserve.workers": "workers", "paretoserve.shell": "shell", "paretoserve.research": "research",
                "paretoserve": "paretoserve"}
ENTRY = "paretoserve.shell.commands.router"  # `paretoserve router`, the sidecar's command


def _source(module: str) -> Path | None:
    for prefix, folder in PACKAGE_DIRS.items():  # longest prefixes first (dict order above)
        if module == prefix or module.startswith(prefix + "."):
            base = REPO / folder / Path(*module.removeprefix(prefix).lstrip(".").split(".")) if module != prefix \
                else REPO / folder
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
    return None


def _third_party_closure(entry: str) -> set[str]:
    """Top-level third-party modules reachable from `entry` through our own modules."""
    seen: set[str] = set()
    third: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _source(module)
        if path is None:
            continue
        for name in _imports(path, members=True):
            top = name.split(".")[0]
            if top == "paretoserve":
                todo.append(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
    return third


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_the_router_sidecar_needs_only_the_core_and_router_dependencies() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    allowed = _requirement_names(project["dependencies"] + project["optional-dependencies"]["router"])
    providers = packages_distributions()
    missing = {}
    for module in sorted(_third_party_closure(ENTRY)):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & allowed:
            missing[module] = sorted(dists)
    assert missing == {}, f"the router sidecar imports modules its image does not install: {missing}"


def test_the_router_closure_is_what_the_sidecar_runs() -> None:
    modules = _third_party_closure(ENTRY)
    assert {"starlette", "uvicorn", "httpx", "orjson", "httptools", "tritonclient"} <= modules
    assert not modules & {"torch", "sklearn", "matplotlib", "pytriton"}
