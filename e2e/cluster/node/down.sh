#!/usr/bin/env bash
# Why this exists: tears down the real node started by node/up.sh and leaves the machine as it was,
# minus the cached binaries and images: deletes the node's pods through the API while kubelet can still
# stop them cleanly (CNI DEL, unmounts), stops kubelet, kube-proxy and CoreDNS, removes what is left of
# pod sandboxes/containers in containerd (crictl), unmounts kubelet's leftovers, removes the CNI config,
# the bridge, the IPAM state, kube-proxy's iptables rules and the node IP's veth. containerd and dockerd
# keep running (other work uses them). Idempotent; safe when nothing runs or the cluster is gone.
# Env: PARETOSERVE_CACHE, PARETOSERVE_CLUSTER_NAME, PARETOSERVE_REAL_NODE_NAME.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

mkdir -p "$NODE_LOGS"
did=0

# 1. While the API and kubelet are up: delete the node's pods so kubelet tears them down properly.
if pid_alive kubelet && [[ -f "$KUBECONFIG_OUT" ]] && kc get --raw /readyz --request-timeout=3s >/dev/null 2>&1; then
  did=1
  log "deleting pods on node $REAL_NODE_NAME"
  kc delete pods --all-namespaces --field-selector "spec.nodeName=$REAL_NODE_NAME" --grace-period=1 \
    --wait=false >"$NODE_LOGS/down-delete-pods.log" 2>&1 || true
  for _ in $(seq 60); do
    [[ -z "$(kc get pods -A --field-selector "spec.nodeName=$REAL_NODE_NAME" -o name 2>/dev/null)" ]] && break
    sleep 0.5
  done
  kc delete node "$REAL_NODE_NAME" --wait=false >/dev/null 2>&1 || true
fi

# 2. Host processes.
for name in coredns kube-proxy kubelet; do
  [[ -f "$NODE_PIDS/$name.pid" ]] && did=1
  stop_process "$name"
done

# 3. Whatever kubelet left in containerd's CRI namespace (only when containerd runs; crictl needs it).
if [[ -S "$CONTAINERD_SOCK" && -x "$BIN/crictl" ]] && "${CRICTL[@]}" --timeout 5s version >/dev/null 2>&1; then
  mapfile -t sandboxes < <("${CRICTL[@]}" pods -q 2>/dev/null || true)
  if ((${#sandboxes[@]})); then
    did=1
    log "removing ${#sandboxes[@]} pod sandbox(es) left in containerd"
    "${CRICTL[@]}" stopp "${sandboxes[@]}" >>"$NODE_LOGS/down-crictl.log" 2>&1 || true
    "${CRICTL[@]}" rmp -f "${sandboxes[@]}" >>"$NODE_LOGS/down-crictl.log" 2>&1 || true
  fi
fi

# 4. kubelet's mounts (projected ServiceAccount tokens are tmpfs mounts under the pod dirs, and kubelet
#    bind-mounts its root dir onto itself), deepest first; then the root dir itself (ours alone).
if [[ -d "$KUBELET_ROOT" ]]; then
  while read -r mnt; do
    did=1
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || log "WARNING: cannot unmount $mnt"
  done < <(awk -v root="$KUBELET_ROOT" '$2 == root || index($2, root "/") == 1 {print $2}' /proc/self/mounts | sort -r)
  if awk -v root="$KUBELET_ROOT" '$2 == root || index($2, root "/") == 1 {found=1} END {exit !found}' /proc/self/mounts; then
    log "WARNING: mounts remain under $KUBELET_ROOT; not deleting it"
  else
    rm -rf "${KUBELET_ROOT:?}"
  fi
fi

# 5. Network: CNI config and state, the bridge, kube-proxy's and the CNI plugins' iptables chains, the veth.
if [[ -f "$CNI_CONF" ]]; then did=1; rm -f "$CNI_CONF"; fi
rm -rf "/var/lib/cni/networks/$CNI_NETWORK" "/var/lib/cni/results/$CNI_NETWORK"-* 2>/dev/null || true
if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
  did=1
  log "removing bridge $CNI_BRIDGE"
  ip link del "$CNI_BRIDGE" || true
fi
if [[ -x "$BIN/kube-proxy" ]] && iptables -t nat -S KUBE-SERVICES >/dev/null 2>&1; then
  did=1
  log "removing kube-proxy's iptables rules"
  "$BIN/kube-proxy" --cleanup >"$NODE_LOGS/down-kube-proxy-cleanup.log" 2>&1 || true
fi
# kubelet's own chains (KUBE-FIREWALL blocks non-local sources to 127/8; canaries and hints) and the
# CNI firewall plugin's CNI-FORWARD/CNI-ADMIN, in iptables and ip6tables.
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null || continue
  "$ipt" -S KUBE-FIREWALL >/dev/null 2>&1 || "$ipt" -S CNI-FORWARD >/dev/null 2>&1 || continue
  did=1
  log "removing kubelet's and the CNI firewall plugin's $ipt chains"
  while "$ipt" -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
  while "$ipt" -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
  while "$ipt" -D FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD 2>/dev/null; do :; done
  for tc in filter:KUBE-FIREWALL filter:KUBE-KUBELET-CANARY filter:CNI-FORWARD filter:CNI-ADMIN \
      nat:KUBE-KUBELET-CANARY mangle:KUBE-KUBELET-CANARY mangle:KUBE-IPTABLES-HINT; do
    "$ipt" -t "${tc%%:*}" -F "${tc#*:}" 2>/dev/null && "$ipt" -t "${tc%%:*}" -X "${tc#*:}" 2>/dev/null || true
  done
done
"$NODE_SCRIPTS/net.sh" down

rm -f "$NODE_DIR"/*.fingerprint
if ((did)); then log "real node $REAL_NODE_NAME is down"; else log "no real node running; nothing to do"; fi
