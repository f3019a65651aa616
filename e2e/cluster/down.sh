#!/usr/bin/env bash
# Why this exists: tears down the cluster started by up.sh -- stops etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok (via `kwokctl delete cluster`, which uses the
# pid files in the cluster dir), deletes the cluster's state (etcd data, pki, logs) and the
# kubeconfig copy. The real node (node/up.sh) is always stopped first, whether or not
# PARETOSERVE_REAL_NODE is set, so no kubelet outlives its cluster. Built binaries and images in the
# cache are kept. Idempotent: does nothing if there is nothing to tear down.
# Env: PARETOSERVE_CACHE, PARETOSERVE_CLUSTER_NAME, PARETOSERVE_KUBECONFIG.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# The real node first, while the apiserver can still tell kubelet to stop its pods cleanly.
"$CLUSTER_DIR/node/down.sh" || log "WARNING: node/down.sh failed; continuing with the control plane"

if [[ -d "$KWOK_CLUSTER_DIR" ]]; then
  log "deleting cluster $CLUSTER_NAME"
  if [[ -x "$KWOKCTL" ]]; then
    "$KWOKCTL" delete cluster --name "$CLUSTER_NAME" >&2 || log "kwokctl delete cluster failed; cleaning up by pid files"
  fi
  # Belt and braces: stop anything still listed in the cluster's pid files (only our processes).
  for pidfile in "$KWOK_CLUSTER_DIR"/pids/*.pid; do
    [[ -f "$pidfile" ]] || continue
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
      log "stopping $(basename "$pidfile" .pid) (pid $pid)"
      kill "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$KWOK_CLUSTER_DIR"
else
  log "no cluster $CLUSTER_NAME at $KWOK_CLUSTER_DIR; nothing to delete"
fi
rm -f "$KUBECONFIG_OUT"
log "done"
