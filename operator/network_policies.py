"""The NetworkPolicy that fences a pipeline's worker pods (pure).

What may reach a worker pod, and nothing else (the policy selects the pods, so every other ingress is
denied):
- the router's inference port: the pipeline's own pods (cross-stage calls go router to router) and the
  declared clients (chart value `networkPolicy.clients`; by default every pod of the pipeline's namespace);
- the router's admin port (`/admin/*`, which also needs the pipeline's bearer token, and `/metrics`): the
  operator's pods and Prometheus;
- Triton's metrics port: Prometheus. Triton's HTTP and gRPC ports listen on loopback only and are not
  reachable from outside the pod at all.
A rule is left out when it has no peers: an empty `from` would allow every source.
Egress is not restricted: a model repository may live in any object store. Enforcement needs a CNI that
implements NetworkPolicy (Calico, Cilium, ...); kind's default CNI and kwok's fake pods do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from paretoserve.operator.naming import (
    ROUTER_ADMIN_PORT,
    ROUTER_PORT,
    TRITON_METRICS_PORT,
    Owner,
    metadata,
    pipeline_labels,
)

Peer = dict[str, Any]


def _rule(port: int, peers: Sequence[Peer]) -> dict[str, Any]:
    return {"ports": [{"protocol": "TCP", "port": port}], "from": [dict(p) for p in peers]}


def render_network_policy(owner: Owner, *, client_peers: Sequence[Peer] = (), operator_peers: Sequence[Peer] = (),
                          prometheus_peers: Sequence[Peer] = ()) -> dict[str, Any]:
    own_pods: Peer = {"podSelector": {"matchLabels": pipeline_labels(owner)}}
    clients = list(client_peers) or [{"podSelector": {}}]  # default: the pipeline's namespace
    rules = [_rule(ROUTER_PORT, [own_pods, *clients])]
    if operator_peers or prometheus_peers:
        rules.append(_rule(ROUTER_ADMIN_PORT, [*operator_peers, *prometheus_peers]))
    if prometheus_peers:
        rules.append(_rule(TRITON_METRICS_PORT, prometheus_peers))
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {**metadata(owner, f"{owner.name}-workers", "", ""), "labels": pipeline_labels(owner)},
        "spec": {"podSelector": {"matchLabels": pipeline_labels(owner)}, "policyTypes": ["Ingress"],
                 "ingress": rules},
    }
