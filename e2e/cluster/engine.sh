#!/usr/bin/env bash
# Why this exists: the real node and the image builds need a container engine, and CI machines have none
# running (no systemd either). This installs Debian's containerd, runc, CNI plugins, docker.io, iptables and
# mmdebstrap when missing, writes containerd's config and starts containerd and dockerd as plain
# processes. Idempotent: a running, answering engine is kept.
#
# containerd: the CRI plugin for the kubelet (namespace k8s.io), `restrict_oom_score_adj = true` (these VMs
# drop CAP_SYS_RESOURCE even for root: without it runc cannot write oom_score_adj and no sandbox starts),
# cgroupfs, and the locally built pause image as the sandbox image (node/pause). dockerd uses the same
# containerd (its own image store, though: images reach the kubelet through `ctr -n k8s.io images import`).
# openssl and iproute2 come along for the real node (certificates, the node IP's veth).
#
# Usage: e2e/cluster/engine.sh                 # install what is missing, start what is not running
#        e2e/cluster/engine.sh --install-only  # only install the packages (build.sh: no downloads at start)
# Env: PARETOSERVE_CACHE.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ENGINE_DIR="$CACHE/engine"
CONTAINERD_SOCK=/run/containerd/containerd.sock
# PAUSE_IMAGE (versions.env): built by build.sh, imported by node/up.sh; never pulled.
mkdir -p "$ENGINE_DIR/logs"

INSTALL_ONLY=0
case "${1:-}" in
  --install-only) INSTALL_ONLY=1 ;;
  "") ;;
  *) die "unknown argument: $1 (usage: engine.sh [--install-only])" ;;
esac

packages=(containerd runc containernetworking-plugins docker.io iptables mmdebstrap openssl iproute2)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]] \
    || die "missing Debian packages ${missing[*]}; install them as root (apt-get install ${missing[*]})"
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
fi
if ((INSTALL_ONLY)); then exit 0; fi
# the CRI `containerd.sock` and dockerd must not be started by the packages' init scripts on a box that has
# systemd; here there is none, so nothing runs yet.

cat >"$ENGINE_DIR/containerd.toml" <<EOF
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
EOF

containerd_up() { ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; }
docker_up() { docker -H unix:///var/run/docker.sock info >/dev/null 2>&1; }

wait_for() {  # wait_for <what> <seconds> <command...>
  local what="$1" seconds="$2"; shift 2
  for _ in $(seq $((seconds * 10))); do "$@" && return 0; sleep 0.1; done
  die "$what did not come up in ${seconds}s; see $ENGINE_DIR/logs"
}

if containerd_up; then
  log "containerd already running"
else
  log "starting containerd"
  nohup containerd --config "$ENGINE_DIR/containerd.toml" >"$ENGINE_DIR/logs/containerd.log" 2>&1 &
  echo $! >"$ENGINE_DIR/containerd.pid"
  wait_for containerd 30 containerd_up
fi

if docker_up; then
  log "dockerd already running"
else
  log "starting dockerd"
  nohup dockerd --containerd "$CONTAINERD_SOCK" --storage-driver overlay2 --exec-opt native.cgroupdriver=cgroupfs \
    >"$ENGINE_DIR/logs/dockerd.log" 2>&1 &
  echo $! >"$ENGINE_DIR/dockerd.pid"
  wait_for dockerd 60 docker_up
fi
log "engine ready (containerd $CONTAINERD_SOCK, dockerd /var/run/docker.sock)"
