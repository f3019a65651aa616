# Why this exists: shared settings for the real node's scripts (e2e/cluster/node/{net,up,health,down}.sh;
# sourced, not executed): names, addresses and paths of the one real kubelet node that lives next to the
# kwok fake nodes, plus small helpers. Sources ../common.sh (cache, binaries, kubeconfig, log/die, kc).
# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this file

NODE_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/../common.sh
source "$NODE_SCRIPTS/../common.sh"
# ../common.sh names log lines after the script that sourced *it* (this file); use the caller's name,
# prefixed with node/ for the scripts in this folder.
_caller="${BASH_SOURCE[1]:-$0}"
if [[ "$(cd "$(dirname "$_caller")" && pwd)" == "$NODE_SCRIPTS" ]]; then
  _tag="node/$(basename "$_caller" .sh)"
else
  _tag="$(basename "$_caller" .sh)"
fi

REAL_NODE_NAME="${PARETOSERVE_REAL_NODE_NAME:-paretoserve-real-0}"
# The node IP lives on a veth pair (kubelet refuses a loopback node IP, and these kernels have no
# `dummy` link type). kube-apiserver also listens here, so pods can reach it as the `kubernetes` Service.
NODE_IP=10.250.0.1
NODE_VETH=ps-node0          # holds NODE_IP/32
NODE_VETH_PEER=ps-node0-p   # the other end; unused, but a veth needs one
# Pod network: one bridge, host-local IPAM on this node's slice of the cluster CIDR.
CNI_BRIDGE=ps-cni0
CNI_NETWORK=paretoserve
POD_CIDR=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
CNI_CONF=/etc/cni/net.d/10-paretoserve.conflist
CNI_BIN_DIR=/usr/lib/cni
# kube-apiserver's default --service-cluster-ip-range (kwokctl sets none; up.sh passes it explicitly when
# the real node is on); the `kubernetes` Service gets the first address.
SERVICE_CIDR=10.0.0.0/24
KUBERNETES_SERVICE_IP=10.0.0.1
CLUSTER_DOMAIN=cluster.local
CONTAINERD_SOCK=/run/containerd/containerd.sock
CRICTL=("$BIN/crictl" --runtime-endpoint "unix://$CONTAINERD_SOCK" --image-endpoint "unix://$CONTAINERD_SOCK")
# Our own kubelet root dir (not /var/lib/kubelet): node/down.sh deletes it whole, and a kubelet of the
# machine's own, if any, is never touched. kubelet bind-mounts it onto itself (rshared); down.sh undoes that.
KUBELET_ROOT=/var/lib/paretoserve/kubelet

# Placement: kwok-tier pods tolerate only the kwok taint, so they never land on the real node; pods meant
# for it select REAL_NODE_LABEL and tolerate REAL_NODE_TAINT.
REAL_NODE_LABEL_KEY=paretoserve.io/node
REAL_NODE_LABEL_VALUE=real
REAL_NODE_TAINT_KEY=paretoserve.io/real-node
REAL_NODE_TAINT_VALUE=true

NODE_DIR="$CACHE/node"             # certs, configs, pid files, logs of the node's host processes
NODE_PKI="$NODE_DIR/pki"
NODE_LOGS="$NODE_DIR/logs"
NODE_PIDS="$NODE_DIR/pids"
IMAGES="$CACHE/node-images"        # pause.tar, probe.tar (built by build.sh)
KWOK_PKI="$KWOK_CLUSTER_DIR/pki"   # kwokctl's cluster CA (ca.crt/ca.key) and admin cert

real_node_enabled() { [[ "${PARETOSERVE_REAL_NODE:-0}" == 1 ]]; }

# pid_alive NAME -> 0 when $NODE_PIDS/NAME.pid names a live process.
pid_alive() {
  local pid
  pid="$(cat "$NODE_PIDS/$1.pid" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# stop_process NAME -> SIGTERM the process in $NODE_PIDS/NAME.pid, SIGKILL after 10 s; removes the pid file.
stop_process() {
  local name="$1" pid
  pid="$(cat "$NODE_PIDS/$name.pid" 2>/dev/null)" || return 0
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$NODE_PIDS/$name.pid"
}
