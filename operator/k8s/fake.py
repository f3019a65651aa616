"""A recording, in-memory stand-in for the gateway, for unit tests of pure operator logic.

It keeps applied objects by (kind, name), lists them by label selector, records every call in
`actions`, and can be told to fail. End-to-end behaviour is tested against a real API server instead.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from paretoserve.operator.k8s.gateway import GatewayError


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


@dataclass
class FakeGateway:
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    actions: list[tuple[str, ...]] = field(default_factory=list)
    fail_on: set[str] = field(default_factory=set)
    statuses: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def _check(self, action: str) -> None:
        if action in self.fail_on:
            raise GatewayError(f"{action}: injected failure", 500)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        self._check("apply")
        self.actions.append(("apply", obj["kind"], meta["name"]))
        key = (obj["kind"], meta["namespace"], meta["name"])
        stored = copy.deepcopy(obj)
        previous = self.objects.get(key, {}).get("metadata", {})
        stored["metadata"]["uid"] = previous.get("uid") or meta.get("uid") or f"uid-{obj['kind']}-{meta['name']}"
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self._check("get")
        obj = self.objects.get((kind, namespace, name))
        return None if obj is None else copy.deepcopy(obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self._check("delete")
        self.actions.append(("delete", kind, name))
        self.objects.pop((kind, namespace, name), None)

    def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        self._check("list")
        return [copy.deepcopy(o) for (k, ns, _), o in self.objects.items()
                if k == kind and ns == namespace and _matches(o["metadata"].get("labels", {}), selector)]

    def resize_cpu(self, namespace: str, pod: str, container: str, cpu: str) -> dict[str, Any]:
        self._check("resize")
        self.actions.append(("resize", pod, cpu))
        obj = self.objects[("Pod", namespace, pod)]
        for c in obj["spec"]["containers"]:
            if c["name"] == container:
                c["resources"]["requests"]["cpu"] = cpu
                c["resources"]["limits"]["cpu"] = cpu
        return obj

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._check("patch_status")
        self.actions.append(("patch_status", name))
        self.statuses[(namespace, name)] = {**self.statuses.get((namespace, name), {}), **status}

    def post_event(self, involved: dict[str, Any], reason: str, message: str) -> None:
        self.actions.append(("event", involved["metadata"]["name"], reason))

    def get_cluster_object(self, kind: str, name: str) -> dict[str, Any]:
        self._check("get")
        return copy.deepcopy(self.objects[(kind, "", name)])
