"""The cluster benchmarks borrow the e2e tier's helpers by module (``tests.worker_pods``, ``real.pod_ready``), and
nothing runs them in CI: a helper renamed or moved in the e2e modules broke `bench real-node` silently (it called
``test_real_node.ready`` after the helper had moved to ``real_tier.pod_ready``; found on 2026-12-06 by running the
benchmark). This checks, without a cluster, that every such name a benchmark uses exists in the module it names."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parents[2] / "e2e"
BENCHMARKS = ("bench_real_node.py", "bench_operator.py")


def _module_aliases(tree: ast.AST) -> dict[str, str]:
    """``import x as y`` (anywhere in the script, function bodies included): alias -> module."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for name in node.names:
                aliases[name.asname or name.name] = name.name
    return aliases


def _used_names(tree: ast.AST, aliases: dict[str, str]) -> set[tuple[str, str]]:
    """(module, attribute) for every ``alias.attribute`` read in the script."""
    return {(aliases[node.value.id], node.attr) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases}


@pytest.mark.parametrize("script", BENCHMARKS)
def test_every_e2e_helper_a_benchmark_uses_exists(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(E2E))
    tree = ast.parse((E2E / script).read_text())
    aliases = _module_aliases(tree)
    local = {alias: module for alias, module in aliases.items() if (E2E / f"{module}.py").is_file()}
    assert local, f"{script} no longer imports an e2e module: update this test"
    missing = [f"{module}.{attribute}" for module, attribute in sorted(_used_names(tree, local))
               if not hasattr(importlib.import_module(module), attribute)]
    assert not missing, f"{script} uses names its e2e modules do not have: {missing}"


def test_the_check_finds_a_missing_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(E2E))
    tree = ast.parse("def f():\n    import real_tier as real\n    return real.pod_ready, real.no_such_helper\n")
    used = _used_names(tree, _module_aliases(tree))
    assert used == {("real_tier", "pod_ready"), ("real_tier", "no_such_helper")}
    assert not hasattr(importlib.import_module("real_tier"), "no_such_helper")
