#!/usr/bin/env bash
# Why this exists: proves that the real node (node/up.sh) runs real pods end to end, which kwok cannot:
# the node is Ready; two probe pods (localhost/paretoserve/e2e-probe, FROM scratch, never pulled) start
# on it; and from inside a pod: pod->pod over the CNI bridge, pod->Service ClusterIP (kube-proxy),
# cluster DNS (CoreDNS: kubernetes.default.svc.cluster.local, a Service's short and full names), the
# API server through the `kubernetes` Service with the pod's ServiceAccount token, and host->pod.
# Finally an in-place resize (kubectl patch --subresource resize) of the client pod's CPU limit must
# change its container's cgroup cpu.cfs_quota_us on the host without a restart. Prints the timings.
# Called by e2e/cluster/health.sh when PARETOSERVE_REAL_NODE=1; also usable alone.
#
# Usage: e2e/cluster/node/health.sh [KUBECONFIG]   (default: the path up.sh prints)
# Env:   NODE_HEALTH_TIMEOUT seconds per wait (default 90), NODE_HEALTH_KEEP=1 keeps the test namespace,
#        KUBECTL.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KUBECONFIG_OUT="${1:-$KUBECONFIG_OUT}"
[[ -f "$KUBECONFIG_OUT" ]] || die "kubeconfig $KUBECONFIG_OUT not found; run PARETOSERVE_REAL_NODE=1 e2e/cluster/up.sh first"
TIMEOUT="${NODE_HEALTH_TIMEOUT:-90}"
NS=paretoserve-node-health
start="$(date +%s.%N)"
since() { printf '%.1f' "$(echo "$(date +%s.%N) - $1" | bc)"; }
command -v bc >/dev/null || since() { echo "$(($(date +%s) - ${1%.*}))"; }

# wait_for WHAT CMD... -> polls CMD every 0.25 s until it succeeds; dies after TIMEOUT with its output.
wait_for() {
  local what="$1"; shift
  local deadline=$(($(date +%s) + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) >= deadline)); then
      "$@" >&2 || true
      diagnose
      die "timed out after ${TIMEOUT}s waiting for $what"
    fi
    sleep 0.25
  done
}
# diagnose -> what helps most when a check fails in CI: pod states, events, the node's logs.
diagnose() {
  log "---- diagnostics"
  kc -n "$NS" get pods -o wide >&2 2>&1 || true
  kc -n "$NS" get events --sort-by=.lastTimestamp 2>&1 | tail -n 15 >&2 || true
  for f in kubelet kube-proxy coredns; do
    printf -- '--- %s (last 10 lines)\n' "$NODE_LOGS/$f.log" >&2
    tail -n 10 "$NODE_LOGS/$f.log" >&2 2>/dev/null || true
  done
}
# in_pod POD ARGS... -> runs the probe binary inside POD; on failure prints its output and dies.
in_pod() {
  local pod="$1" out; shift
  if ! out="$(kc -n "$NS" exec "$pod" -- /probe "$@" 2>&1)"; then
    printf '%s\n' "$out" >&2
    diagnose
    die "in pod $pod: probe $* failed"
  fi
  printf '%s\n' "$out"
}

# ---------------------------------------------------------------- node
node_ready() {
  [[ "$(kc get node "$REAL_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
wait_for "node $REAL_NODE_NAME Ready" node_ready
# kwok must leave the real node alone: it manages only nodes annotated kwok.x-k8s.io/node=fake.
[[ -z "$(kc get node "$REAL_NODE_NAME" -o jsonpath='{.metadata.annotations.kwok\.x-k8s\.io/node}')" ]] \
  || die "node $REAL_NODE_NAME carries the kwok annotation; kwok would fake its status"
[[ "$(kc get node "$REAL_NODE_NAME" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}')" == containerd://* ]] \
  || die "node $REAL_NODE_NAME does not report containerd; is kwok managing it?"

# ---------------------------------------------------------------- pods
kc delete namespace "$NS" --ignore-not-found --wait=true --timeout=60s >/dev/null
kc create namespace "$NS" >/dev/null
wait_for "ServiceAccount $NS/default" kc -n "$NS" get serviceaccount default
t_pods="$(date +%s.%N)"
pod() { # NAME CPU_LIMIT
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  labels: {app: $1}
spec:
  nodeSelector: {$REAL_NODE_LABEL_KEY: $REAL_NODE_LABEL_VALUE}
  tolerations:
  - {key: $REAL_NODE_TAINT_KEY, operator: Equal, value: "$REAL_NODE_TAINT_VALUE", effect: NoSchedule}
  terminationGracePeriodSeconds: 1
  containers:
  - name: probe
    image: $PROBE_IMAGE
    imagePullPolicy: Never
    args: [serve, ":8080"]
    ports: [{containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
    resources:
      requests: {cpu: 100m, memory: 32Mi}
      limits: {cpu: $2, memory: 64Mi}
    resizePolicy:
    - {resourceName: cpu, restartPolicy: NotRequired}
---
EOF
}
{
  pod server 500m
  pod client 250m
  cat <<EOF
apiVersion: v1
kind: Service
metadata:
  name: probe
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
EOF
} | kc -n "$NS" apply -f - >/dev/null
pods_ready() {
  local p
  for p in server client; do
    [[ "$(kc -n "$NS" get pod "$p" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]] || return 1
  done
}
wait_for "probe pods Ready on $REAL_NODE_NAME" pods_ready
pods_ready_s="$(since "$t_pods")"
log "pods Ready ${pods_ready_s}s after apply"
server_ip="$(kc -n "$NS" get pod server -o jsonpath='{.status.podIP}')"
svc_ip="$(kc -n "$NS" get service probe -o jsonpath='{.spec.clusterIP}')"
node_of_server="$(kc -n "$NS" get pod server -o jsonpath='{.spec.nodeName}')"
[[ "$node_of_server" == "$REAL_NODE_NAME" ]] || die "pod server landed on $node_of_server"

# ---------------------------------------------------------------- network, Services, DNS, API
t_net="$(date +%s.%N)"
# host -> pod (bash /dev/tcp: no curl needed on the host)
exec 3<>"/dev/tcp/$server_ip/8080" || die "host cannot connect to pod $server_ip:8080"
printf 'GET / HTTP/1.0\r\n\r\n' >&3
read -r line <&3 || true
exec 3<&-
[[ "$line" == *" 200 "* ]] || die "host -> pod $server_ip:8080 answered '$line'"
log "host -> pod $server_ip: $line"
log "pod -> pod:       $(in_pod client get "http://$server_ip:8080/" | tr '\n' ' ')"
# kube-proxy programs the Service a moment after its endpoints appear.
wait_for "Service probe ($svc_ip) answering from the client pod" \
  kc -n "$NS" exec client -- /probe get "http://$svc_ip/"
log "pod -> Service:   $(in_pod client get "http://$svc_ip/" | tr '\n' ' ')"
wait_for "DNS for probe.$NS.svc.$CLUSTER_DOMAIN" \
  kc -n "$NS" exec client -- /probe resolve "probe.$NS.svc.$CLUSTER_DOMAIN"
log "DNS:              $(in_pod client resolve "kubernetes.default.svc.$CLUSTER_DOMAIN" probe "probe.$NS" | tr '\n' ' ')"
log "pod -> Service by name: $(in_pod client get "http://probe.$NS.svc/" | tr '\n' ' ')"
log "pod -> API server (in-cluster config): $(in_pod client apiserver "https://kubernetes.default.svc/version" \
  | tr -d ' \n' | sed 's/.*"gitVersion":"\([^"]*\)".*/\1/')"
in_pod client apiserver "https://$KUBERNETES_SERVICE_IP/version" >/dev/null
net_s="$(since "$t_net")"

# ---------------------------------------------------------------- in-place resize
# cgroupfs driver, cgroup v1: /sys/fs/cgroup/cpu/kubepods/<qos>/pod<uid>/<container id>/cpu.cfs_quota_us
uid="$(kc -n "$NS" get pod client -o jsonpath='{.metadata.uid}')"
cid="$(kc -n "$NS" get pod client -o jsonpath='{.status.containerStatuses[0].containerID}')"
cid="${cid#containerd://}"
quota_file="$(find /sys/fs/cgroup/cpu/kubepods -maxdepth 3 -type d -path "*/pod$uid/$cid" 2>/dev/null | head -1)"
[[ -n "$quota_file" ]] || die "no cgroup for container $cid of pod $uid under /sys/fs/cgroup/cpu/kubepods"
quota_file+=/cpu.cfs_quota_us
before="$(cat "$quota_file")"
[[ "$before" == 25000 ]] || die "client's cpu.cfs_quota_us is $before, expected 25000 (limit 250m)"
t_resize="$(date +%s.%N)"
kc -n "$NS" patch pod client --subresource resize --patch \
  '{"spec":{"containers":[{"name":"probe","resources":{"limits":{"cpu":"500m"}}}]}}' >/dev/null
quota_is() { [[ "$(cat "$quota_file")" == "$1" ]]; }
status_cpu_is() {
  [[ "$(kc -n "$NS" get pod client -o jsonpath='{.status.containerStatuses[0].resources.limits.cpu}')" == "$1" ]]
}
wait_for "cpu.cfs_quota_us 50000 after the resize" quota_is 50000
wait_for "status.containerStatuses[0].resources.limits.cpu = 500m" status_cpu_is 500m
resize_s="$(since "$t_resize")"
restarts="$(kc -n "$NS" get pod client -o jsonpath='{.status.containerStatuses[0].restartCount}')"
[[ "$restarts" == 0 ]] || die "the resize restarted the container ($restarts restarts)"
log "in-place resize cpu limit 250m -> 500m: cpu.cfs_quota_us $before -> $(cat "$quota_file") in ${resize_s}s, 0 restarts"

if [[ "${NODE_HEALTH_KEEP:-0}" != 1 ]]; then
  kc delete namespace "$NS" --wait=false >/dev/null
fi
log "real node healthy after $(since "$start")s (pods Ready ${pods_ready_s}s, network/DNS/API checks ${net_s}s, resize ${resize_s}s)"
