# Why this exists: shared settings for e2e/cluster/{up,health,down}.sh (sourced, not executed):
# where the cache, the binaries, the kwok work dir and the kubeconfig live, and small helpers.
# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this file

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_DIR/../.." && pwd)"
# shellcheck source=SCRIPTDIR/versions.env
source "$CLUSTER_DIR/versions.env"

CACHE="${PARETOSERVE_CACHE:-$HOME/.cache/paretoserve}"
BIN="$CACHE/k8s/$K8S_VERSION/bin"
CLUSTER_NAME="${PARETOSERVE_CLUSTER_NAME:-paretoserve-e2e}"
# kwokctl keeps each cluster (pki, etcd data, logs, pids) under $KWOK_WORKDIR/clusters/<name>.
export KWOK_WORKDIR="$CACHE/kwok"
KWOK_CLUSTER_DIR="$KWOK_WORKDIR/clusters/$CLUSTER_NAME"
# The kubeconfig handed to tests (a copy of kwokctl's, at a stable path). A non-default cluster
# name gets its own file, so several clusters can run side by side.
if [[ "$CLUSTER_NAME" == paretoserve-e2e ]]; then
  KUBECONFIG_OUT="${PARETOSERVE_KUBECONFIG:-$CACHE/cluster/kubeconfig}"
else
  KUBECONFIG_OUT="${PARETOSERVE_KUBECONFIG:-$CACHE/cluster/$CLUSTER_NAME/kubeconfig}"
fi
MANIFESTS_KWOK="$REPO_ROOT/manifests/kwok"

_tag="$(basename "${BASH_SOURCE[1]:-$0}" .sh)"
log() { printf '[%s] %s\n' "$_tag" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$_tag" "$*" >&2; exit 1; }

# Our kwokctl (built by build.sh) first; kubectl from PATH.
KWOKCTL="$BIN/kwokctl"
KUBECTL="${KUBECTL:-kubectl}"

kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_OUT" "$@"; }

require_binaries() {
  local missing=()
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler kwok kwokctl; do
    [[ -x "$BIN/$name" ]] || missing+=("$name")
  done
  if ((${#missing[@]})); then
    die "missing binaries in $BIN: ${missing[*]} -- run e2e/cluster/build.sh first"
  fi
  command -v "$KUBECTL" >/dev/null || die "kubectl not found (set KUBECTL=/path/to/kubectl)"
}
