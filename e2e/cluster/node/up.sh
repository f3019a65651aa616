#!/usr/bin/env bash
# Why this exists: kwok nodes fake their pods, so nothing on them shows that an image starts, a probe
# passes, a resize changes a cgroup or a request crosses a Service. This script adds ONE real node to
# the running e2e cluster (started by e2e/cluster/up.sh with PARETOSERVE_REAL_NODE=1): containerd
# (engine.sh), a veth holding the node IP, a CNI bridge network, the locally built pause/probe images,
# certificates from the cluster's CA, and kubelet, kube-proxy (iptables) and CoreDNS as host processes
# with pid files and logs under ~/.cache/paretoserve/node/. It waits until the Node is Ready and
# CoreDNS answers. Nothing is downloaded (build.sh built everything).
#
# Idempotent: running processes whose configuration is unchanged are kept; changed ones (e.g. after the
# cluster was recreated with a new CA) are restarted. Tear down with node/down.sh (or e2e/cluster/down.sh).
# The node is tainted paretoserve.io/real-node=true:NoSchedule and labelled paretoserve.io/node=real.
# Env: PARETOSERVE_CACHE, PARETOSERVE_CLUSTER_NAME, PARETOSERVE_REAL_NODE_NAME, NODE_TIMEOUT (s, default 120).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TIMEOUT="${NODE_TIMEOUT:-120}"
start="$(date +%s)"

# ---------------------------------------------------------------- preconditions
for name in kubelet kube-proxy coredns crictl; do
  [[ -x "$BIN/$name" ]] || die "missing $BIN/$name -- run e2e/cluster/build.sh first"
done
for name in pause probe; do
  [[ -f "$IMAGES/$name.tar" ]] || die "missing $IMAGES/$name.tar -- run e2e/cluster/build.sh first"
done
for tool in openssl iptables ip; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
[[ "$(id -u)" == 0 ]] || die "the real node needs root (kubelet, CNI, iptables)"
[[ -f "$KUBECONFIG_OUT" ]] || die "no cluster kubeconfig at $KUBECONFIG_OUT -- run PARETOSERVE_REAL_NODE=1 e2e/cluster/up.sh"
[[ -f "$KWOK_PKI/ca.crt" && -f "$KWOK_PKI/ca.key" ]] || die "no cluster CA in $KWOK_PKI -- is the cluster up?"
kc get --raw /readyz --request-timeout=5s >/dev/null 2>&1 || die "kube-apiserver is not ready ($KUBECONFIG_OUT)"
API_SERVER="$(kc config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
API_PORT="${API_SERVER##*:}"
[[ "$API_PORT" =~ ^[0-9]+$ ]] || die "cannot read the apiserver port from $API_SERVER"
# Pods reach the apiserver through the `kubernetes` Service, whose endpoint is the advertise address.
endpoint="$(kc -n default get endpointslices -l kubernetes.io/service-name=kubernetes \
  -o jsonpath='{.items[0].endpoints[0].addresses[0]}' 2>/dev/null || true)"
[[ "$endpoint" == "$NODE_IP" ]] || die "the kubernetes Service points at '${endpoint:-nothing}', not $NODE_IP:" \
  "the cluster was started without the real node; restart it: e2e/cluster/down.sh && PARETOSERVE_REAL_NODE=1 e2e/cluster/up.sh"

mkdir -p "$NODE_DIR" "$NODE_PKI" "$NODE_LOGS" "$NODE_PIDS"

# write_if_changed FILE [MODE] < content -> replaces FILE only when the content differs. kube-proxy
# watches its config file and exits on any write, even one with identical content.
write_if_changed() {
  local file="$1" mode="${2:-644}" tmp
  tmp="$(mktemp "$file.XXXXXX")"
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if cmp -s "$tmp" "$file"; then rm -f "$tmp"; else mv -f "$tmp" "$file"; fi
}

# ---------------------------------------------------------------- engine, network, images
"$CLUSTER_DIR/engine.sh"
"$NODE_SCRIPTS/net.sh" up

mkdir -p "$(dirname "$CNI_CONF")"
# bridge -> firewall -> portmap. `firewall` matters: dockerd sets the FORWARD policy to DROP and
# br_netfilter is on, so without its accept rules pod-to-pod traffic over the bridge is dropped.
cni_conf="$(cat <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "firewall"},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
)"
if [[ "$(cat "$CNI_CONF" 2>/dev/null)" != "$cni_conf" ]]; then
  log "writing CNI config $CNI_CONF (bridge $CNI_BRIDGE, pods $POD_CIDR)"
  printf '%s\n' "$cni_conf" >"$CNI_CONF"
fi
for plugin in bridge host-local firewall portmap; do
  [[ -x "$CNI_BIN_DIR/$plugin" ]] || die "CNI plugin $CNI_BIN_DIR/$plugin missing (Debian package containernetworking-plugins)"
done
others="$(find "$(dirname "$CNI_CONF")" -maxdepth 1 -type f \( -name '*.conf' -o -name '*.conflist' -o -name '*.json' \) \
  ! -path "$CNI_CONF" | sort)"
[[ -z "$others" ]] || log "WARNING: other CNI configs in $(dirname "$CNI_CONF") sort before/after ours: $others"

# Images: pods and sandboxes use them with imagePullPolicy Never; nothing is ever pulled.
for name in pause probe; do
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$IMAGES/$name.tar" >"$NODE_LOGS/import-$name.log" 2>&1 \
    || { cat "$NODE_LOGS/import-$name.log" >&2; die "importing $IMAGES/$name.tar into containerd failed"; }
done
log "images in containerd (k8s.io): $PAUSE_IMAGE, $PROBE_IMAGE"

# ---------------------------------------------------------------- certificates (cluster CA)
# kwokctl makes a new CA per cluster; certificates from an older cluster are re-issued.
if ! cmp -s "$KWOK_PKI/ca.crt" "$NODE_PKI/ca.crt"; then
  log "issuing node certificates from the cluster CA ($KWOK_PKI/ca.crt)"
  rm -f "$NODE_PKI"/*.crt "$NODE_PKI"/*.key
  cp "$KWOK_PKI/ca.crt" "$NODE_PKI/ca.crt"
fi
# issue NAME SUBJECT EXTENSIONS -> $NODE_PKI/NAME.{crt,key}, signed by the cluster CA, valid one year.
issue() {
  local name="$1" subject="$2" ext="$3"
  [[ -f "$NODE_PKI/$name.crt" && -f "$NODE_PKI/$name.key" ]] && return
  openssl req -new -newkey rsa:2048 -nodes -keyout "$NODE_PKI/$name.key" -subj "$subject" \
    -out "$NODE_PKI/$name.csr" 2>"$NODE_LOGS/openssl.log" || die "openssl req for $name failed (see $NODE_LOGS/openssl.log)"
  openssl x509 -req -in "$NODE_PKI/$name.csr" -CA "$KWOK_PKI/ca.crt" -CAkey "$KWOK_PKI/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 -out "$NODE_PKI/$name.crt" \
    -extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n%s\n' "$ext") \
    2>>"$NODE_LOGS/openssl.log" || die "openssl x509 for $name failed (see $NODE_LOGS/openssl.log)"
  rm -f "$NODE_PKI/$name.csr"
  chmod 600 "$NODE_PKI/$name.key"
}
issue kubelet-client "/O=system:nodes/CN=system:node:$REAL_NODE_NAME" "extendedKeyUsage=clientAuth"
issue kubelet-serving "/O=system:nodes/CN=system:node:$REAL_NODE_NAME" \
  "extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,DNS:$REAL_NODE_NAME"
# system:kube-proxy is bound to the system:node-proxier ClusterRole by the default RBAC policy.
issue kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
# Bound below to paretoserve:coredns (read access to what the kubernetes plugin watches).
issue coredns "/CN=paretoserve:coredns" "extendedKeyUsage=clientAuth"

# write_kubeconfig NAME -> $NODE_DIR/NAME.kubeconfig using $NODE_PKI/NAME.{crt,key}; loopback server.
write_kubeconfig() {
  write_if_changed "$NODE_DIR/$1.kubeconfig" 600 <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $CLUSTER_NAME
  cluster:
    server: $API_SERVER
    certificate-authority: $NODE_PKI/ca.crt
users:
- name: $1
  user:
    client-certificate: $NODE_PKI/$1.crt
    client-key: $NODE_PKI/$1.key
contexts:
- name: $1
  context: {cluster: $CLUSTER_NAME, user: $1}
current-context: $1
EOF
}
write_kubeconfig kubelet-client
write_kubeconfig kube-proxy
write_kubeconfig coredns

kc apply -f - >"$NODE_LOGS/rbac.log" 2>&1 <<'EOF' || { cat "$NODE_LOGS/rbac.log" >&2; die "applying CoreDNS RBAC failed"; }
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: paretoserve:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: paretoserve:coredns
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "paretoserve:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "paretoserve:coredns"}
EOF

# ---------------------------------------------------------------- configs
write_if_changed "$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Our VMs run cgroup v1 (hybrid); kubelet 1.35 refuses it unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true, cacheTTL: 30s}
  x509: {clientCAFile: $NODE_PKI/ca.crt}
authorization:
  mode: Webhook
  webhook: {cacheAuthorizedTTL: 30s, cacheUnauthorizedTTL: 5s}
tlsCertFile: $NODE_PKI/kubelet-serving.crt
tlsPrivateKeyFile: $NODE_PKI/kubelet-serving.key
serverTLSBootstrap: false
rotateCertificates: false
clusterDNS: [$NODE_IP]
clusterDomain: $CLUSTER_DOMAIN
registerNode: true
registerWithTaints:
- {key: $REAL_NODE_TAINT_KEY, value: "$REAL_NODE_TAINT_VALUE", effect: NoSchedule}
maxPods: 110
# These VMs drop CAP_SYS_RESOURCE even for root: lowering oom_score_adj fails, so leave it alone.
oomScoreAdj: 0
failSwapOn: false
# A busy shared disk must not evict test pods or delete the locally imported (unpullable) images.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 24h
nodeStatusUpdateFrequency: 10s
nodeStatusReportFrequency: 1m
syncFrequency: 10s
fileCheckFrequency: 10s
serializeImagePulls: false
containerLogMaxSize: 10Mi
containerLogMaxFiles: 2
EOF

write_if_changed "$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $NODE_DIR/kube-proxy.kubeconfig}
hostnameOverride: $REAL_NODE_NAME
mode: iptables
clusterCIDR: $CLUSTER_CIDR
detectLocalMode: ClusterCIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts only on the node IP, not on the machine's real interfaces.
nodePortAddresses: [$NODE_IP/32]
# Leave host sysctls alone (conntrack sizes need CAP_SYS_RESOURCE-free writes we may not have;
# localhost NodePorts would set route_localnet); oomScoreAdj as for kubelet.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, syncPeriod: 30s, minSyncPeriod: 1s}
oomScoreAdj: 0
EOF

COREDNS_READY=127.0.0.1:18181
write_if_changed "$NODE_DIR/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    ready $COREDNS_READY
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $NODE_DIR/coredns.kubeconfig coredns
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    forward . /etc/resolv.conf
    cache 30
    loop
    loadbalance
}
EOF

# ---------------------------------------------------------------- processes
# fingerprint FILE... -> hash of the files that define a process; a change restarts it.
fingerprint() { cat "$@" | sha256sum | cut -c1-16; }

# ensure NAME FINGERPRINT CMD... -> keeps a live NAME whose fingerprint matches, else (re)starts it
# detached (own session, stdin /dev/null, output to $NODE_LOGS/NAME.log; the previous run's log is kept
# as NAME.log.1) and records its pid.
ensure() {
  local name="$1" fp="$2"; shift 2
  if pid_alive "$name" && [[ "$(cat "$NODE_DIR/$name.fingerprint" 2>/dev/null)" == "$fp" ]]; then
    log "$name already running (pid $(cat "$NODE_PIDS/$name.pid"))"
    return
  fi
  stop_process "$name"
  log "starting $name (log: $NODE_LOGS/$name.log)"
  [[ -f "$NODE_LOGS/$name.log" ]] && mv -f "$NODE_LOGS/$name.log" "$NODE_LOGS/$name.log.1"
  setsid "$@" </dev/null >"$NODE_LOGS/$name.log" 2>&1 &
  echo $! >"$NODE_PIDS/$name.pid"
  echo "$fp" >"$NODE_DIR/$name.fingerprint"
}

ensure kubelet "$(fingerprint "$NODE_DIR/kubelet.yaml" "$NODE_DIR/kubelet-client.kubeconfig" "$NODE_PKI/kubelet-client.crt" \
    "$NODE_PKI/kubelet-serving.crt" "$BIN/.stamps/kubelet")" \
  "$BIN/kubelet" --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/kubelet-client.kubeconfig" \
  --hostname-override "$REAL_NODE_NAME" --node-ip "$NODE_IP" \
  --node-labels "$REAL_NODE_LABEL_KEY=$REAL_NODE_LABEL_VALUE" --root-dir "$KUBELET_ROOT" --v 1
ensure kube-proxy "$(fingerprint "$NODE_DIR/kube-proxy.yaml" "$NODE_DIR/kube-proxy.kubeconfig" "$NODE_PKI/kube-proxy.crt" \
    "$BIN/.stamps/kube-proxy")" \
  "$BIN/kube-proxy" --config "$NODE_DIR/kube-proxy.yaml"
ensure coredns "$(fingerprint "$NODE_DIR/Corefile" "$NODE_DIR/coredns.kubeconfig" "$NODE_PKI/coredns.crt" \
    "$BIN/.stamps/coredns")" \
  "$BIN/coredns" -conf "$NODE_DIR/Corefile"

# ---------------------------------------------------------------- wait
deadline=$(($(date +%s) + TIMEOUT))
# wait_for WHAT PROCESS CMD... -> polls CMD until it succeeds; dies early if PROCESS exited.
wait_for() {
  local what="$1" proc="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "$proc"; then
      tail -n 25 "$NODE_LOGS/$proc.log" >&2
      die "$proc exited while waiting for $what (log: $NODE_LOGS/$proc.log)"
    fi
    if (($(date +%s) >= deadline)); then
      tail -n 25 "$NODE_LOGS/$proc.log" >&2
      die "timed out after ${TIMEOUT}s waiting for $what (log: $NODE_LOGS/$proc.log)"
    fi
    sleep 0.5
  done
}
node_ready() {
  [[ "$(kc get node "$REAL_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
# http_ok HOST:PORT PATH -> 0 when GET answers 200 (bash /dev/tcp: no curl needed on the host).
http_ok() {
  local line
  exec 3<>"/dev/tcp/${1%%:*}/${1##*:}" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$1" >&3
  read -r -t 5 line <&3 || true
  exec 3<&-
  [[ "$line" == *" 200 "* ]]
}
wait_for "node $REAL_NODE_NAME Ready" kubelet node_ready
log "node $REAL_NODE_NAME Ready after $(($(date +%s) - start))s"
wait_for "kube-proxy healthz" kube-proxy http_ok 127.0.0.1:10256 /healthz
wait_for "CoreDNS ready ($COREDNS_READY)" coredns http_ok "$COREDNS_READY" /ready
log "real node $REAL_NODE_NAME up ($NODE_IP: kubelet, kube-proxy, CoreDNS) after $(($(date +%s) - start))s"
