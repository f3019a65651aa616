#!/usr/bin/env bash
# Why this exists: on machines with Docker, the e2e suite runs against kind instead of the local
# kwokctl cluster (e2e/cluster/up.sh). kind has no GPUs, so this script gives a kind cluster the
# same fake GPU nodes the local cluster has: it installs the kwok controller inside the cluster
# (release manifest kwok.yaml, pinned to KWOK_VERSION from e2e/cluster/versions.env), applies our
# kwok Stages (manifests/kwok/stages.yaml, incl. in-place-resize support) and the fake GPU nodes
# (manifests/kwok/gpu-nodes.yaml), then waits until the nodes are Ready.
#
# Usage:
#   kind create cluster --config e2e/kind/cluster.yaml
#   kind get kubeconfig --name paretoserve-e2e > ~/.kube/paretoserve-e2e.kubeconfig
#   e2e/kind/setup.sh ~/.kube/paretoserve-e2e.kubeconfig
#   E2E_KUBECONFIG=~/.kube/paretoserve-e2e.kubeconfig pytest e2e
# Re-running is safe (everything is `kubectl apply`). Needs network access to github.com (the
# kwok manifest) and registry.k8s.io (the kwok image) from the machine and the kind node.
# Env: KWOK_MANIFEST_URL (override the kwok.yaml location, e.g. a local file), KUBECTL,
#      SETUP_TIMEOUT seconds (default 300).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=SCRIPTDIR/../cluster/versions.env
source "$REPO_ROOT/e2e/cluster/versions.env"

log() { printf '[kind-setup] %s\n' "$*" >&2; }
die() { printf '[kind-setup] ERROR: %s\n' "$*" >&2; exit 1; }

KUBECTL="${KUBECTL:-kubectl}"
command -v "$KUBECTL" >/dev/null || die "kubectl not found (set KUBECTL)"
KUBECONFIG_PATH="${1:-${E2E_KUBECONFIG:-${KUBECONFIG:-$HOME/.kube/config}}}"
[[ -f "$KUBECONFIG_PATH" ]] || die "kubeconfig $KUBECONFIG_PATH not found (pass it as the first argument)"
kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
TIMEOUT="${SETUP_TIMEOUT:-300}"
KWOK_MANIFEST_URL="${KWOK_MANIFEST_URL:-https://github.com/kubernetes-sigs/kwok/releases/download/${KWOK_VERSION}/kwok.yaml}"

context="$(kc config current-context 2>/dev/null || true)"
log "cluster context: ${context:-<none>} ($KUBECONFIG_PATH)"
[[ "$context" == kind-* ]] || log "WARNING: context '$context' does not look like a kind cluster; continuing anyway"
kc get --raw /readyz >/dev/null || die "the cluster's apiserver is not ready"

server_version="$(kc version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -1)"
log "server version $server_version (local e2e clusters use $K8S_VERSION)"
case "$server_version" in
  v1.3[3-9].*|v1.[4-9][0-9].*) ;;
  *) log "WARNING: in-place pod resize needs Kubernetes >= 1.33 (beta, on by default); resize tests will fail" ;;
esac

# 1. kwok controller (Deployment kube-system/kwok-controller, CRDs, RBAC). Its config watches
#    only nodes annotated kwok.x-k8s.io/node=fake and reads Stages from Stage custom resources.
log "installing kwok controller $KWOK_VERSION from $KWOK_MANIFEST_URL"
kc apply -f "$KWOK_MANIFEST_URL" >&2
kc wait --for=condition=Established --timeout="${TIMEOUT}s" crd/stages.kwok.x-k8s.io >&2

# 2. Stages. We apply our complete set instead of kwok's stage-fast.yaml: same node/pod stages,
#    plus resources in pod-ready and the pod-resources-sync stage for in-place resize.
log "applying kwok stages from manifests/kwok/stages.yaml"
kc apply -f "$REPO_ROOT/manifests/kwok/stages.yaml" >&2

log "waiting for deployment kube-system/kwok-controller"
kc -n kube-system rollout status deployment/kwok-controller --timeout="${TIMEOUT}s" >&2

# 3. Fake GPU nodes.
log "creating fake GPU nodes from manifests/kwok/gpu-nodes.yaml"
kc apply -f "$REPO_ROOT/manifests/kwok/gpu-nodes.yaml" >&2
mapfile -t nodes < <(sed -n 's/^  name: \(.*\)$/\1/p' "$REPO_ROOT/manifests/kwok/gpu-nodes.yaml")
for n in "${nodes[@]}"; do
  kc wait --for=condition=Ready --timeout="${TIMEOUT}s" "node/$n" >&2
done

log "ready: fake GPU nodes ${nodes[*]}"
log "run the suite with: E2E_KUBECONFIG=$KUBECONFIG_PATH pytest e2e"
