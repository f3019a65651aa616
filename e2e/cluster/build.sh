#!/usr/bin/env bash
# Why this exists: the e2e suite needs a real Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) plus kwok for fake GPU nodes, on machines without
# Docker or release downloads, and optionally one real node (kubelet, kube-proxy, CoreDNS, crictl,
# a pause image and a probe image; see node/up.sh). This script builds all of it from Go modules
# (the Go module proxy) into a per-version cache dir, and installs Debian's prometheus package and
# the container engine packages (engine.sh --install-only). Everything that is already built for
# the versions in versions.env is skipped, so re-running is cheap.
#
# Usage: e2e/cluster/build.sh            # build what is missing/outdated
#        e2e/cluster/build.sh --force    # rebuild everything
#        e2e/cluster/build.sh --quiet    # only report what gets built (used by e2e/conftest.py)
#        e2e/cluster/build.sh --print-bin-dir
# Env:   PARETOSERVE_CACHE (default ~/.cache/paretoserve), GO_BUILD_PARALLELISM (default: nproc),
#        SKIP_PROMETHEUS=1 (don't apt-get install prometheus), SKIP_ENGINE=1 (don't apt-get install the
#        container engine packages of engine.sh; only the real node needs them).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/versions.env
source "$HERE/versions.env"

CACHE="${PARETOSERVE_CACHE:-$HOME/.cache/paretoserve}"
BIN="$CACHE/k8s/$K8S_VERSION/bin"
LOGDIR="$CACHE/k8s/$K8S_VERSION/build-logs"
STAMPS="$BIN/.stamps"

log() { printf '[build] %s\n' "$*" >&2; }
die() { printf '[build] ERROR: %s\n' "$*" >&2; exit 1; }
vlog() { [[ "$QUIET" == 1 ]] || log "$@"; }

FORCE=0
QUIET=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --quiet) QUIET=1 ;;
    --print-bin-dir) echo "$BIN"; exit 0 ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $arg" ;;
  esac
done

command -v go >/dev/null || die "go is not installed (need Go >= 1.26 for kwok $KWOK_VERSION)"
mkdir -p "$BIN" "$STAMPS" "$LOGDIR"

GO_VERSION="$(go env GOVERSION)"
# -trimpath: reproducible, path-independent binaries. -mod=readonly: the committed go.sum is the
# source of truth; a wrapper go.mod that needs changes is an error (run gen-gomods.sh).
export GOFLAGS="-trimpath -mod=readonly -buildvcs=false"
export CGO_ENABLED=0
PAR="${GO_BUILD_PARALLELISM:-$(nproc)}"

# stamp_ok NAME STAMP -> 0 when $BIN/NAME exists and was built with exactly STAMP.
stamp_ok() {
  [[ "$FORCE" == 0 && -x "$BIN/$1" && -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]
}

# timed NAME CMD... -> runs CMD, logs to $LOGDIR/NAME.log, prints elapsed seconds.
timed() {
  local name="$1"; shift
  local start end
  start="$(date +%s)"
  log "building $name ... (log: $LOGDIR/$name.log)"
  if ! "$@" >"$LOGDIR/$name.log" 2>&1; then
    tail -n 30 "$LOGDIR/$name.log" >&2
    die "building $name failed; command: $*"
  fi
  end="$(date +%s)"
  log "built $name in $((end - start))s"
  printf '%s %s %ss\n' "$(date -u +%FT%TZ)" "$name" "$((end - start))" >>"$LOGDIR/timings.txt"
}

sha() { sha256sum "$@" | sha256sum | cut -c1-16; }

# ------------------------------------------------------------ kube control plane
k8s_dir="$HERE/k8s-bins"
grep -Eq "^[[:space:]]*k8s\.io/kubernetes ${K8S_VERSION//./\\.}( |$)" "$k8s_dir/go.mod" \
  || die "$k8s_dir/go.mod does not pin k8s.io/kubernetes $K8S_VERSION (versions.env); run e2e/cluster/gen-gomods.sh"
k8s_minor="${K8S_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  K8S_LDFLAGS+=" -X $pkg.gitTreeState=clean"
done
k8s_stamp="k8s.io/kubernetes@$K8S_VERSION $GO_VERSION $(sha "$k8s_dir/go.mod" "$k8s_dir/go.sum")"
for name in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  if stamp_ok "$name" "$k8s_stamp"; then
    vlog "$name $K8S_VERSION already built"
    continue
  fi
  (cd "$k8s_dir" && timed "$name" go build -p "$PAR" -ldflags "$K8S_LDFLAGS" \
    -o "$BIN/$name.tmp" "k8s.io/kubernetes/cmd/$name")
  mv -f "$BIN/$name.tmp" "$BIN/$name"
  echo "$k8s_stamp" >"$STAMPS/$name"
done

# ------------------------------------------------------------ etcd
etcd_dir="$HERE/etcd-bin"
grep -Eq "^[[:space:]]*go\.etcd\.io/etcd/server/v3 ${ETCD_VERSION//./\\.}( |$)" "$etcd_dir/go.mod" \
  || die "$etcd_dir/go.mod does not pin go.etcd.io/etcd/server/v3 $ETCD_VERSION (versions.env); run e2e/cluster/gen-gomods.sh"
etcd_stamp="go.etcd.io/etcd/server/v3@$ETCD_VERSION $GO_VERSION $(sha "$etcd_dir/go.mod" "$etcd_dir/go.sum")"
if stamp_ok etcd "$etcd_stamp"; then
  vlog "etcd $ETCD_VERSION already built"
else
  (cd "$etcd_dir" && timed etcd go build -p "$PAR" -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv -f "$BIN/etcd.tmp" "$BIN/etcd"
  echo "$etcd_stamp" >"$STAMPS/etcd"
fi

# ------------------------------------------------------------ CoreDNS (the real node's cluster DNS)
coredns_dir="$HERE/coredns-bin"
grep -Eq "^(require)?[[:space:]]*github\.com/coredns/coredns ${COREDNS_VERSION//./\\.}( |$)" "$coredns_dir/go.mod" \
  || die "$coredns_dir/go.mod does not pin github.com/coredns/coredns $COREDNS_VERSION (versions.env); run e2e/cluster/gen-gomods.sh"
coredns_stamp="github.com/coredns/coredns@$COREDNS_VERSION $GO_VERSION $(sha "$coredns_dir/go.mod" "$coredns_dir/go.sum" "$coredns_dir/main.go")"
if stamp_ok coredns "$coredns_stamp"; then
  vlog "coredns $COREDNS_VERSION already built"
else
  (cd "$coredns_dir" && timed coredns go build -p "$PAR" \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" -o "$BIN/coredns.tmp" .)
  mv -f "$BIN/coredns.tmp" "$BIN/coredns"
  echo "$coredns_stamp" >"$STAMPS/coredns"
fi

# ------------------------------------------------------------ Prometheus with Kubernetes discovery
prometheus_dir="$HERE/prometheus-bin"
grep -Eq "^(require)?[[:space:]]*github\.com/prometheus/prometheus ${PROMETHEUS_VERSION//./\\.}( |$)" \
  "$prometheus_dir/go.mod" \
  || die "$prometheus_dir/go.mod does not pin github.com/prometheus/prometheus $PROMETHEUS_VERSION (versions.env); run e2e/cluster/gen-gomods.sh"
prometheus_stamp="github.com/prometheus/prometheus@$PROMETHEUS_VERSION $GO_VERSION $(sha "$prometheus_dir/go.mod" "$prometheus_dir/go.sum")"
if stamp_ok prometheus "$prometheus_stamp"; then
  vlog "prometheus $PROMETHEUS_VERSION already built"
else
  # the web UI's assets are not embedded (no builtinassets tag): the HTTP API is what the tests use
  minor="${PROMETHEUS_VERSION#v0.}"  # module v0.316.0 is release 3.16.0
  release="$((${minor%%.*} / 100)).$((${minor%%.*} % 100)).${minor#*.}"
  (cd "$prometheus_dir" && timed prometheus go build -p "$PAR" -ldflags "-s -w \
    -X github.com/prometheus/common/version.Version=$release" \
    -o "$BIN/prometheus.tmp" github.com/prometheus/prometheus/cmd/prometheus)
  mv -f "$BIN/prometheus.tmp" "$BIN/prometheus"
  echo "$prometheus_stamp" >"$STAMPS/prometheus"
fi

# ------------------------------------------------------------ the real node's images (pause, probe)
# Static Go programs packed FROM scratch into `docker save` archives by node/mkimage.sh (no dockerd,
# no registry); node/up.sh imports them into containerd. Names must match node/common.sh.
node_dir="$HERE/node"
IMAGES="$CACHE/node-images"
mkdir -p "$IMAGES"
build_image() { # NAME REF [ENTRYPOINT_ARG...]
  local name="$1" ref="$2"; shift 2
  local stamp
  stamp="$ref $GO_VERSION $(sha "$node_dir/go.mod" "$node_dir/$name/main.go" "$node_dir/mkimage.sh") $*"
  if [[ "$FORCE" == 0 && -f "$IMAGES/$name.tar" && -f "$STAMPS/image-$name" && "$(cat "$STAMPS/image-$name")" == "$stamp" ]]; then
    vlog "image $ref already built"
    return
  fi
  (cd "$node_dir" && timed "image-$name" go build -p "$PAR" -ldflags "-s -w" -o "$IMAGES/$name" "./$name")
  "$node_dir/mkimage.sh" "$IMAGES/$name" "$ref" "$IMAGES/$name.tar" "$@" >/dev/null
  rm -f "$IMAGES/$name"
  echo "$stamp" >"$STAMPS/image-$name"
}
build_image pause "$PAUSE_IMAGE"
build_image probe "$PROBE_IMAGE"

# ------------------------------------------------------------ kwok, kwokctl, helm, crictl (plain go install)
# `go install pkg@version` ignores any go.mod around it; GOFLAGS=-mod=readonly is not allowed there.
go_install() { # NAME MODULE_PKG VERSION [EXTRA_LDFLAGS]
  local name="$1" pkg="$2" version="$3" ldflags="-s -w ${4:-}"
  local stamp
  stamp="$pkg@$version $GO_VERSION $(printf '%s' "$ldflags" | sha256sum | cut -c1-8)"
  if stamp_ok "$name" "$stamp"; then
    vlog "$name $version already built"
    return
  fi
  timed "$name" env GOFLAGS="-trimpath -buildvcs=false" GOBIN="$BIN" \
    go install -p "$PAR" -ldflags "$ldflags" "$pkg@$version"
  echo "$stamp" >"$STAMPS/$name"
}
# kwok's own default version string is already right; helm's would say only "v3.22".
go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
go_install kwokctl sigs.k8s.io/kwok/cmd/kwokctl "$KWOK_VERSION"
go_install helm "$HELM_MODULE/cmd/helm" "$HELM_VERSION" \
  "-X $HELM_MODULE/internal/version.version=$HELM_VERSION -X $HELM_MODULE/internal/version.gitTreeState=clean"

go_install crictl sigs.k8s.io/cri-tools/cmd/crictl "$CRICTL_VERSION" \
  "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"

# ------------------------------------------------------------ container engine packages (real node)
# Debian's containerd, runc, CNI plugins, docker.io, iptables, openssl, iproute2: installed here so that
# starting the real node (node/up.sh -> engine.sh) downloads nothing.
if [[ "${SKIP_ENGINE:-0}" != 1 ]]; then
  if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    "$HERE/engine.sh" --install-only   # silent unless it installs something
  else
    log "WARNING: not root or no apt-get: skipping the container engine packages (needed only for the real node)"
  fi
fi

# ------------------------------------------------------------ prometheus (Debian package)
# Not started by our scripts; other suites start it. Installed here so one script provisions all.
if [[ "${SKIP_PROMETHEUS:-0}" != 1 ]]; then
  if command -v prometheus >/dev/null; then
    vlog "prometheus already installed: $(prometheus --version 2>&1 | head -1)"
  elif command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    log "installing Debian package prometheus"
    # Don't let the package start a system service (no systemd here anyway).
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends prometheus >&2 || die "apt-get install prometheus failed"
    log "installed $(prometheus --version 2>&1 | head -1)"
    if [[ -d /run/systemd/system ]]; then
      log "NOTE: on systemd hosts the package also enables prometheus.service on :9090;" \
        "stop it with 'systemctl disable --now prometheus' if your tests start their own"
    fi
  else
    log "WARNING: prometheus not installed and apt-get/root unavailable; install it yourself (Debian: apt-get install prometheus)"
  fi
fi

# ------------------------------------------------------------ report
for name in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns crictl \
    prometheus kwok kwokctl helm; do
  [[ -x "$BIN/$name" ]] || die "$BIN/$name missing after build"
done
for name in pause probe; do
  [[ -f "$IMAGES/$name.tar" ]] || die "$IMAGES/$name.tar missing after build"
done
log "up to date in $BIN: kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, helm $HELM_VERSION," \
  "coredns $COREDNS_VERSION, crictl $CRICTL_VERSION, prometheus $PROMETHEUS_VERSION; images in $IMAGES"
echo "$BIN"
