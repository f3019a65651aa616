#!/usr/bin/env bash
# Why this exists: up.sh returns as soon as the processes run; tests need a cluster that actually
# answers. This waits (default 180 s) until kube-apiserver's /readyz is ok, every fake node from
# manifests/kwok/gpu-nodes.yaml is Ready, and the controller-manager has created the `default`
# ServiceAccount (pods are rejected before it exists). With PARETOSERVE_REAL_NODE=1 it then runs
# node/health.sh (real node Ready, pod network, Services, DNS, API from a pod, in-place resize).
# Exits non-zero with a reason on timeout.
#
# Usage: e2e/cluster/health.sh [KUBECONFIG]   (default: the path up.sh prints)
# Env:   HEALTH_TIMEOUT seconds (default 180), KUBECTL, PARETOSERVE_REAL_NODE.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KUBECONFIG_OUT="${1:-$KUBECONFIG_OUT}"
[[ -f "$KUBECONFIG_OUT" ]] || die "kubeconfig $KUBECONFIG_OUT not found; run e2e/cluster/up.sh first"
TIMEOUT="${HEALTH_TIMEOUT:-180}"
deadline=$(($(date +%s) + TIMEOUT))
start="$(date +%s)"

# wait_for DESCRIPTION CMD... -> polls CMD every second until it succeeds or the deadline passes.
wait_for() {
  local what="$1"; shift
  log "waiting for $what"
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) >= deadline)); then
      log "last attempt output:"
      "$@" >&2 || true
      die "timed out after ${TIMEOUT}s waiting for $what"
    fi
    sleep 1
  done
}

readyz() { kc get --raw '/readyz' --request-timeout=5s; }
wait_for "kube-apiserver /readyz" readyz

mapfile -t nodes < <(sed -n 's/^  name: \(.*\)$/\1/p' "$MANIFESTS_KWOK/gpu-nodes.yaml")
((${#nodes[@]})) || die "no node names found in $MANIFESTS_KWOK/gpu-nodes.yaml"
nodes_ready() {
  local n status
  for n in "${nodes[@]}"; do
    status="$(kc get node "$n" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')"
    [[ "$status" == True ]] || { echo "node $n Ready=$status"; return 1; }
  done
}
wait_for "fake nodes Ready: ${nodes[*]}" nodes_ready

wait_for "ServiceAccount default/default (kube-controller-manager)" kc -n default get serviceaccount default

log "cluster healthy after $(($(date +%s) - start))s: $(kc version -o json 2>/dev/null \
  | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -1) with nodes ${nodes[*]}"

if [[ "${PARETOSERVE_REAL_NODE:-0}" == 1 ]]; then
  "$CLUSTER_DIR/node/health.sh" "$KUBECONFIG_OUT"
fi
