"""The Helm chart ships the CRD source unchanged, and its values and templates stay consistent."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "paretoserve"


def test_chart_crd_copy_is_byte_identical_to_the_source() -> None:
    source = (REPO / "crds" / "servingpipeline.yaml").read_bytes()
    copy = (CHART / "files" / "servingpipeline.crd.yaml").read_bytes()
    assert copy == source, "run: cp crds/servingpipeline.yaml charts/paretoserve/files/servingpipeline.crd.yaml"


def test_every_value_is_documented_in_the_chart_readme() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()

    def leaves(node: object, prefix: str = "") -> list[str]:
        if isinstance(node, dict) and node:
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{prefix}{k}.")]
        return [prefix.rstrip(".")]

    def documented(key: str) -> bool:  # the key itself or one of its parents, in backticks
        parts = key.split(".")
        return any(f"`{'.'.join(parts[:n])}`" in readme or f"`{'.'.join(parts[:n])}." in readme
                   for n in range(len(parts), 1, -1))

    assert [key for key in leaves(values) if not documented(key)] == []


def test_rbac_grants_pod_resize_and_no_wildcards() -> None:
    text = (CHART / "templates" / "rbac.yaml").read_text()
    assert "pods/resize" in text
    assert "'*'" not in text and '"*"' not in text and "[*]" not in text
