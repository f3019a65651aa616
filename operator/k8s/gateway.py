"""The one module that talks to the Kubernetes API.

Handlers compute what the cluster should look like with pure functions, then call this gateway to make
it so: server-side apply of child objects, deletion of orphans, in-place CPU resize of pods through the
`pods/resize` subresource, and listing. Unit tests replace it with `FakeGateway` (same methods, records
calls); e2e tests run it against a real API server. Client errors are mapped to `GatewayError` so callers
never see the client library's exception types.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "paretoserve"


@dataclass(frozen=True, slots=True)
class Kind:
    group_version: str
    plural: str

    @property
    def prefix(self) -> str:
        return f"/api/{self.group_version}" if "/" not in self.group_version else f"/apis/{self.group_version}"


KINDS: dict[str, Kind] = {
    "ConfigMap": Kind("v1", "configmaps"),
    "Service": Kind("v1", "services"),
    "Pod": Kind("v1", "pods"),
    "Secret": Kind("v1", "secrets"),
    "Deployment": Kind("apps/v1", "deployments"),
    "ReplicaSet": Kind("apps/v1", "replicasets"),
    "NetworkPolicy": Kind("networking.k8s.io/v1", "networkpolicies"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "ServingPipeline": Kind("paretoserve.io/v1alpha1", "servingpipelines"),
    "Event": Kind("v1", "events"),
    "ClusterKopfPeering": Kind("kopf.dev/v1", "clusterkopfpeerings"),
}
CHILD_KINDS = ("ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy")
"""Kinds whose orphans are found by label and deleted. The admin-token Secret is one per pipeline and never
orphaned (garbage collection deletes it with the pipeline), so the operator never needs to list Secrets."""


class GatewayError(RuntimeError):
    """A Kubernetes API call failed; `status` is the HTTP status (0 when there was no response)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Gateway(Protocol):
    def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    def delete(self, kind: str, namespace: str, name: str) -> None: ...
    def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def resize_cpu(self, namespace: str, pod: str, container: str, cpu: str) -> dict[str, Any]: ...
    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...
    def get_cluster_object(self, kind: str, name: str) -> dict[str, Any]: ...
    def post_event(self, involved: dict[str, Any], reason: str, message: str) -> None: ...


@contextmanager
def _mapped(action: str) -> Iterator[None]:
    try:
        yield
    except ApiException as exc:
        raise GatewayError(f"{action}: {exc.status} {exc.reason}: {(exc.body or '')[:300]}", exc.status or 0) from exc
    except GatewayError as exc:
        raise GatewayError(f"{action}: {exc}", exc.status) from exc
    except (OSError, ValueError) as exc:  # connection refused, bad kubeconfig, ...
        raise GatewayError(f"{action}: {exc}") from exc


class KubernetesGateway:
    """Gateway over the official client; one `ApiClient` for the operator's lifetime."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api = api_client
        self._core = client.CoreV1Api(api_client)

    @classmethod
    def from_environment(cls) -> KubernetesGateway:
        """In-cluster service account, else the kubeconfig (KUBECONFIG) — as kopf itself does."""
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        return cls(client.ApiClient())

    def _call(self, method: str, path: str, *, body: Any = None, query: list[tuple[str, Any]] | None = None,
              content_type: str = "application/json") -> dict[str, Any]:
        request = self._api.param_serialize(
            method, path, query_params=query or [], body=body, auth_settings=["BearerToken"],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
        )
        response = self._api.call_api(*request)
        data: bytes = response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise GatewayError(f"{response.status} {response.reason}: {data[:300].decode(errors='replace')}",
                               response.status)
        decoded = json.loads(data) if data else {}
        return decoded if isinstance(decoded, dict) else {}

    def _path(self, kind: str, namespace: str, name: str | None = None) -> str:
        k = KINDS[kind]
        path = f"{k.prefix}/namespaces/{namespace}/{k.plural}"
        return f"{path}/{name}" if name else path

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply without `force`: a field another manager owns is a 409 conflict, not a takeover."""
        meta = obj["metadata"]
        with _mapped(f"apply {obj['kind']} {meta['namespace']}/{meta['name']}"):
            return self._call("PATCH", self._path(obj["kind"], meta["namespace"], meta["name"]), body=obj,
                              query=[("fieldManager", FIELD_MANAGER)],
                              content_type="application/apply-patch+yaml")

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            with _mapped(f"get {kind} {namespace}/{name}"):
                return self._call("GET", self._path(kind, namespace, name))
        except GatewayError as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            with _mapped(f"delete {kind} {namespace}/{name}"):
                self._call("DELETE", self._path(kind, namespace, name),
                           body={"propagationPolicy": "Background"})
        except GatewayError as exc:
            if exc.status != 404:
                raise

    def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        with _mapped(f"list {kind} in {namespace}"):
            items = self._call("GET", self._path(kind, namespace), query=[("labelSelector", selector)])
        return list(items.get("items", []))

    def resize_cpu(self, namespace: str, pod: str, container: str, cpu: str) -> dict[str, Any]:
        body = {"spec": {"containers": [{"name": container, "resources": {
            "requests": {"cpu": cpu}, "limits": {"cpu": cpu}}}]}}
        with _mapped(f"resize {namespace}/{pod} to {cpu}"):
            result = self._core.patch_namespaced_pod_resize(pod, namespace, body)
        return dict(result.to_dict())

    def get_cluster_object(self, kind: str, name: str) -> dict[str, Any]:
        k = KINDS[kind]
        with _mapped(f"get {kind} {name}"):
            return self._call("GET", f"{k.prefix}/{k.plural}/{name}")

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch a ServingPipeline's status subresource."""
        with _mapped(f"patch status of {namespace}/{name}"):
            self._call("PATCH", self._path("ServingPipeline", namespace, name) + "/status",
                       body={"status": status}, content_type="application/merge-patch+json")

    def post_event(self, involved: dict[str, Any], reason: str, message: str) -> None:
        """A Normal Event on the object, like kopf's own (best effort: events are advisory)."""
        meta = involved["metadata"]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}-", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason, "message": message[:1024], "type": "Normal",
            "source": {"component": FIELD_MANAGER}, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            with _mapped(f"post event on {meta['namespace']}/{meta['name']}"):
                self._call("POST", self._path("Event", meta["namespace"]), body=event)
        except GatewayError:
            pass
