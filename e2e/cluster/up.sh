#!/usr/bin/env bash
# Why this exists: starts the local e2e Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and the kwok controller) from the binaries that
# build.sh put in the cache, using `kwokctl create cluster --runtime binary`. It loads our kwok
# Stages (manifests/kwok/stages.yaml: adds in-place-resize support to kwok pods) and creates the
# fake GPU nodes (manifests/kwok/gpu-nodes.yaml). Nothing is downloaded here.
#
# With PARETOSERVE_REAL_NODE=1 it also adds one real node (kubelet, containerd, CNI, kube-proxy,
# CoreDNS; see node/up.sh): the node IP's veth is created first and kube-apiserver additionally
# listens on it and advertises it, so pods reach the apiserver through the `kubernetes` Service.
#
# stdout: exactly one line, the kubeconfig path (default ~/.cache/paretoserve/cluster/kubeconfig).
# stderr: progress messages. Safe to re-run: a healthy running cluster is reused; a broken or
# stopped one is deleted and recreated. Follow with health.sh; tear down with down.sh.
# Env: PARETOSERVE_CACHE, PARETOSERVE_CLUSTER_NAME (default paretoserve-e2e),
#      PARETOSERVE_KUBECONFIG (where to write the kubeconfig), KUBECTL,
#      PARETOSERVE_REAL_NODE=1 (add the real node; default off).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# shellcheck source=SCRIPTDIR/node/common.sh
source "$CLUSTER_DIR/node/common.sh"

require_binaries

# The real node needs kube-apiserver on the node IP (bound to 0.0.0.0, advertised as $NODE_IP: the
# `kubernetes` Service's endpoint), the cluster's service range pinned (kube-apiserver's default,
# $SERVICE_CIDR), and kubelet-facing client credentials for exec/logs (the admin cert; kubelet
# authorizes it through the apiserver). The serving cert covers $NODE_IP and $KUBERNETES_SERVICE_IP
# (kwokctl.yaml kubeApiserverCertSANs). etcd and the controllers stay on loopback.
real_node_args=()
if real_node_enabled; then
  real_node_args=(
    --extra-args "kube-apiserver=bind-address=0.0.0.0"
    --extra-args "kube-apiserver=advertise-address=$NODE_IP"
    --extra-args "kube-apiserver=service-cluster-ip-range=$SERVICE_CIDR"
    --extra-args "kube-apiserver=kubelet-client-certificate=$KWOK_PKI/admin.crt"
    --extra-args "kube-apiserver=kubelet-client-key=$KWOK_PKI/admin.key"
    --extra-args "kube-apiserver=kubelet-preferred-address-types=InternalIP,Hostname"
  )
fi
kubernetes_endpoint() {
  kc -n default get endpointslices -l kubernetes.io/service-name=kubernetes --request-timeout=5s \
    -o jsonpath='{.items[0].endpoints[0].addresses[0]}' 2>/dev/null
}
start_real_node() {
  real_node_enabled || return 0
  "$CLUSTER_DIR/node/up.sh" >&2 || die "the real node did not come up (logs: $NODE_LOGS)"
}

api_ready() {
  [[ -f "$KUBECONFIG_OUT" ]] && kc get --raw /readyz --request-timeout=5s >/dev/null 2>&1
}

server_version() {
  kc get --raw /version --request-timeout=5s 2>/dev/null | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p'
}

if [[ -d "$KWOK_CLUSTER_DIR" ]]; then
  if api_ready; then
    running="$(server_version)"
    if [[ "$running" != "$K8S_VERSION" ]]; then
      log "cluster $CLUSTER_NAME runs Kubernetes ${running:-<unknown>}, versions.env wants $K8S_VERSION; recreating it"
    elif real_node_enabled && [[ "$(kubernetes_endpoint)" != "$NODE_IP" ]]; then
      log "cluster $CLUSTER_NAME was started without the real node (kube-apiserver not on $NODE_IP); recreating it"
    else
      log "cluster $CLUSTER_NAME ($running) is already running; reusing it"
      kc apply -f "$MANIFESTS_KWOK/gpu-nodes.yaml" >&2
      start_real_node
      echo "$KUBECONFIG_OUT"
      exit 0
    fi
  else
    log "cluster $CLUSTER_NAME exists but its apiserver is not ready; deleting and recreating it"
  fi
  # A real node from the old cluster holds certificates of the old CA and the old cluster's pods.
  "$CLUSTER_DIR/node/down.sh" >&2 || log "WARNING: node/down.sh failed; continuing"
  "$KWOKCTL" delete cluster --name "$CLUSTER_NAME" >&2 || true
  rm -rf "$KWOK_CLUSTER_DIR"
fi
if real_node_enabled; then
  # The node IP must exist before kube-apiserver starts (it is advertised and put in the serving cert).
  "$CLUSTER_DIR/node/net.sh" up >&2
fi

mkdir -p "$(dirname "$KUBECONFIG_OUT")"
rm -f "$KUBECONFIG_OUT"

log "creating cluster $CLUSTER_NAME (kwokctl binary runtime, Kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION)"
start="$(date +%s)"
# Notes on the flags:
#  --*-binary: local paths are symlinked into the cluster dir; no download happens.
#  --config kwokctl.yaml: loopback-only listeners; kwok manages only annotated (fake) nodes.
#  --config stages.yaml: the complete stage set (kwokctl drops its defaults once any Stage is given).
#  --kubeconfig "": don't merge a context into ~/.kube/config; we copy the cluster's own kubeconfig.
#  KWOK_KUBE_VERSION: only affects kwokctl's defaults (image/URL names); flags are chosen from
#  each binary's --version, which build.sh stamps.
if ! KWOK_KUBE_VERSION="$K8S_VERSION" "$KWOKCTL" create cluster \
    --name "$CLUSTER_NAME" \
    --runtime binary \
    --etcd-binary "$BIN/etcd" \
    --kube-apiserver-binary "$BIN/kube-apiserver" \
    --kube-controller-manager-binary "$BIN/kube-controller-manager" \
    --kube-scheduler-binary "$BIN/kube-scheduler" \
    --kwok-controller-binary "$BIN/kwok" \
    --config "$CLUSTER_DIR/kwokctl.yaml" \
    --config "$MANIFESTS_KWOK/stages.yaml" \
    --kubeconfig "" \
    --wait 120s \
    "${real_node_args[@]}" \
    >&2; then
  log "kwokctl create cluster failed; component logs are in $KWOK_CLUSTER_DIR/logs:"
  for f in "$KWOK_CLUSTER_DIR"/logs/*.log; do
    [[ -f "$f" ]] || continue
    printf -- '--- %s (last 15 lines)\n' "$f" >&2
    tail -n 15 "$f" >&2
  done
  die "could not create cluster $CLUSTER_NAME (run e2e/cluster/down.sh to clean up)"
fi

cp "$KWOK_CLUSTER_DIR/kubeconfig.yaml" "$KUBECONFIG_OUT"
chmod 600 "$KUBECONFIG_OUT"

log "creating fake GPU nodes from manifests/kwok/gpu-nodes.yaml"
kc apply -f "$MANIFESTS_KWOK/gpu-nodes.yaml" >&2

start_real_node

log "cluster $CLUSTER_NAME is up after $(($(date +%s) - start))s (run health.sh to wait for readiness)"
log "component logs: $KWOK_CLUSTER_DIR/logs"
echo "$KUBECONFIG_OUT"
