#!/usr/bin/env bash
# Builds ParetoServe's two container images from this checkout with one command, cold or warm, with or
# without a container registry:
#   ghcr.io/paretoserve/paretoserve:<version>  operator + router sidecar   (images/Dockerfile)
#   ghcr.io/paretoserve/worker-cpu:<version>   Triton CPU worker + models  (images/Dockerfile.worker)
# Why a script and not a bare `docker build`: pip inside `docker build` may go through a proxy whose CA the
# image does not trust, and some machines (CI, the project's VMs) reach no registry at all. So:
#   1. dependency wheels are built on the host into a cache (reused while the requirements are unchanged),
#      plus a wheel of the project; the images install them with `pip --no-index`;
#   2. without --base and without a reachable registry, the base image is made with mmdebstrap from the
#      host's Debian mirror (cached; keyed by suite, packages and mirror);
#   3. `paretoserve models export` writes the model repository baked into the worker image (digits variants,
#      token-generating and multimodal models and their prompt scorers; trained on first use, then cached);
#   4. both images are built from contexts assembled under build/images/ (no network inside the build);
#   5. they are imported into the node's containerd (`ctr -n k8s.io images import`) when it runs;
#   6. one JSON line reports image names, sizes and build seconds.
# See images/README.md. Usage: images/build.sh --help
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGES="$ROOT/images"
CACHE="${PARETOSERVE_IMAGES_CACHE:-${PARETOSERVE_CACHE:-$HOME/.cache/paretoserve}/images}"
CONTEXTS="$ROOT/build/images"
VENV="${PARETOSERVE_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
PIP="$VENV/bin/pip"
DOCKER="${DOCKER:-docker}"
CTR="${CTR:-ctr}"
CONTAINERD_SOCK="${CONTAINERD_SOCK:-/run/containerd/containerd.sock}"
LOCAL_BASE="localhost/paretoserve/base-python:bookworm"
BASE_PACKAGES="python3.11,python3.11-venv,libpython3.11,ca-certificates"
REGISTRY="ghcr.io/paretoserve"

usage() {
  cat <<EOF
usage: images/build.sh [options]
  --base IMAGE|local   base image for both images. Default: the public bases (operator python:3.11-slim-bookworm,
                       worker debian:bookworm-slim) when the registry answers, else 'local': $LOCAL_BASE
                       made with mmdebstrap (cached). 'local' forces the mmdebstrap base.
  --models DIR         bake this Triton model repository instead of running 'paretoserve models export'
  --only operator|worker   build one image
  --tag VERSION        image tag (default: the version in pyproject.toml)
  --no-load            do not import the images into containerd (default: import when $CONTAINERD_SOCK exists)
  -h, --help           this help
environment: PARETOSERVE_IMAGES_CACHE (default ${PARETOSERVE_CACHE:-~/.cache/paretoserve}/images), PARETOSERVE_VENV (default ./.venv),
             DEBIAN_MIRROR (default: from /etc/apt/sources.list*), DOCKER, CTR, CONTAINERD_SOCK
EOF
}

die() { echo "images/build.sh: error: $*" >&2; exit 1; }
log() { echo "images/build.sh: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# Python from the project's venv, isolated (-I) and from /, so the repository's `operator/` folder can
# never shadow the standard library's `operator` module.
pyrun() { (cd / && "$PY" -I "$@"); }

base_arg="" models_dir="" only="" tag="" load=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base_arg="${2:?--base needs an image or 'local'}"; shift 2 ;;
    --base=*) base_arg="${1#*=}"; shift ;;
    --models) models_dir="${2:?--models needs a directory}"; shift 2 ;;
    --models=*) models_dir="${1#*=}"; shift ;;
    --only) only="${2:?--only needs operator or worker}"; shift 2 ;;
    --only=*) only="${1#*=}"; shift ;;
    --tag) tag="${2:?--tag needs a version}"; shift 2 ;;
    --tag=*) tag="${1#*=}"; shift ;;
    --no-load) load=no; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
case "$only" in ""|operator|worker) ;; *) die "--only takes operator or worker, not '$only'" ;; esac
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }

[ -x "$PY" ] && [ -x "$PIP" ] || die "no Python venv at $VENV (make it first; see README.md), or set PARETOSERVE_VENV"
command -v "$DOCKER" >/dev/null || die "'$DOCKER' not found (install Docker; on the project's VMs e2e/cluster/engine.sh does)"
"$DOCKER" info >/dev/null 2>&1 || die "'$DOCKER info' failed: is dockerd running and is its socket readable?"
# BuildKit when buildx is there; else the legacy builder (Debian's docker.io 20.10 has no buildx).
if "$DOCKER" buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=1; else export DOCKER_BUILDKIT=0; fi

t_start="$(now)"
version="$(pyrun -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  "$ROOT/pyproject.toml")"
tag="${tag:-$version}"
OPERATOR_IMAGE="$REGISTRY/paretoserve:$tag"
WORKER_IMAGE="$REGISTRY/worker-cpu:$tag"
mkdir -p "$CACHE" "$CONTEXTS"

# ---------------------------------------------------------------------------------------------------------
# 1. Wheelhouse. Versions are pinned to the project's venv (`pip freeze`), so the images carry what the
# tests ran against. Each image's dependency wheels live in $CACHE/wheelhouse/<image>/, rebuilt only when
# the key (requirements, pins, pip version, Python) changes; the project's wheel is rebuilt every run from
# the checkout's files (tracked and untracked, not ignored) with a fixed SOURCE_DATE_EPOCH, so the same
# sources give the same bytes (a commit alone changes nothing) and Docker's layer cache holds.
# ---------------------------------------------------------------------------------------------------------
t0="$(now)"
work="$(mktemp -d "$CONTEXTS/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT
"$PIP" freeze --exclude-editable --disable-pip-version-check 2>/dev/null \
  | grep -Ev '^(-e |paretoserve[= @])' | grep '==' > "$work/constraints.txt" || true
[ -s "$work/constraints.txt" ] || die "'$PIP freeze' gave no pins; is $VENV the project's venv (pip install -e '.[dev,workers]')?"
pip_version="$("$PIP" --version | awk '{print $2}')"
py_tag="$(pyrun -c 'import sys, sysconfig; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{sysconfig.get_platform()}")')"
[ "${py_tag%%-*}" = "cp311" ] || die "the venv runs $py_tag; the images run Python 3.11, so the wheels must be cp311"
# Requirements from pyproject.toml: operator image = core dependencies + extras operator,router;
# worker image = numpy + the 'serving' extra (onnxruntime) when the extra exists, + nvidia-pytriton (no deps).
pyrun - "$ROOT/pyproject.toml" "$work" <<'PYEOF'
import pathlib, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
out = pathlib.Path(sys.argv[2])
extras = project.get("optional-dependencies", {})
def ours(req: str) -> bool:
    return req.replace(" ", "").lower().startswith("paretoserve")
operator = [r for r in project["dependencies"] + extras["operator"] + extras["router"] if not ours(r)]
numpy = [r for r in project["dependencies"] if r.replace(" ", "").lower().startswith("numpy")]
serving = [r for r in extras.get("serving", ["onnxruntime"]) if not ours(r)]
(out / "operator.txt").write_text("\n".join(dict.fromkeys(operator)) + "\n")
(out / "worker.txt").write_text("\n".join(dict.fromkeys(numpy + serving)) + "\n")
(out / "worker-nodeps.txt").write_text("nvidia-pytriton\n")
(out / "operator-nodeps.txt").write_text("")
PYEOF

wheelhouse() {  # wheelhouse IMAGE -> fills $CACHE/wheelhouse/IMAGE unless its key is unchanged
  local image="$1" dir="$CACHE/wheelhouse/$1" key tmp
  key="$(cat "$work/$image.txt" "$work/$image-nodeps.txt" "$work/constraints.txt" \
         <(echo "pip=$pip_version python=$py_tag layout=1") | sha256sum | cut -c1-16)"
  if [ -f "$dir/.key" ] && [ "$(cat "$dir/.key")" = "$key" ]; then
    log "wheelhouse $image: cached ($dir, key $key)"
    return
  fi
  log "wheelhouse $image: building (key $key)"
  mkdir -p "$CACHE/wheelhouse"
  tmp="$(mktemp -d "$CACHE/wheelhouse/.$image.XXXXXX")"
  chmod 0755 "$tmp"
  "$PIP" wheel --disable-pip-version-check --quiet --wheel-dir "$tmp" --only-binary=:all: \
    -c "$work/constraints.txt" -r "$work/$image.txt" \
    || die "pip wheel failed for the $image image's requirements ($work/$image.txt)"
  if [ -s "$work/$image-nodeps.txt" ]; then
    "$PIP" wheel --disable-pip-version-check --quiet --wheel-dir "$tmp" --only-binary=:all: --no-deps \
      -c "$work/constraints.txt" -r "$work/$image-nodeps.txt" \
      || die "pip wheel --no-deps failed for $work/$image-nodeps.txt"
  fi
  # pip's own wheel: the image runs pip from it (python pip-X.whl/pip install ...), so the venv gets no pip.
  "$PIP" download --disable-pip-version-check --quiet --no-deps --only-binary=:all: --dest "$tmp" "pip==$pip_version" \
    || die "could not fetch pip==$pip_version's wheel"
  cp "$work/$image.txt" "$tmp/requirements.txt"
  cp "$work/$image-nodeps.txt" "$tmp/nodeps.txt"
  cp "$work/constraints.txt" "$tmp/pins.txt"  # for the record: the venv's versions the wheels were pinned to
  echo "$key" > "$tmp/.key"
  rm -rf "$dir.old"; [ -d "$dir" ] && mv "$dir" "$dir.old"
  mv "$tmp" "$dir"; rm -rf "$dir.old"
}
want operator && wheelhouse operator
want worker && wheelhouse worker

# The project's wheel, built from a clean copy of the checkout (never setuptools' stale build/lib).
src="$work/src"
mkdir -p "$src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r sh -c '
     for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh | tar --null -T - -cf -) | tar -C "$src" -xf -
else
  tar -C "$ROOT" --exclude=./.venv --exclude=./build --exclude=./out --exclude='*.egg-info' -cf - . | tar -C "$src" -xf -
fi
# A fixed date (1980-01-01, the zip epoch) for every file in the wheel: its bytes depend on the sources only.
export SOURCE_DATE_EPOCH=315532800
"$PIP" wheel --disable-pip-version-check --quiet --no-deps --no-build-isolation --wheel-dir "$work/project" "$src" \
  || die "could not build the paretoserve wheel from $src"
project_wheel="$(ls "$work"/project/paretoserve-*.whl)"
unset SOURCE_DATE_EPOCH
wheels_s="$(since "$t0")"
log "wheels ready in ${wheels_s}s ($(basename "$project_wheel"))"

# ---------------------------------------------------------------------------------------------------------
# 2. Base image.
# ---------------------------------------------------------------------------------------------------------
t0="$(now)"
base_source=""
registry_answers() { timeout 60 "$DOCKER" pull --quiet "$1" >/dev/null 2>&1; }
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v '^[[:space:]]*#' | grep -Eo '(https?://[^ ]*/debian)/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)"
  echo "${uri:-http://deb.debian.org/debian}"
}
make_local_base() {
  command -v mmdebstrap >/dev/null || die "no registry answers and mmdebstrap is missing (apt-get install mmdebstrap), or pass --base IMAGE"
  local mirror security key tar have
  mirror="$(debian_mirror)"; mirror="${mirror%/}"
  security="${DEBIAN_SECURITY_MIRROR:-${mirror%/debian}/debian-security}"
  key="$(printf 'bookworm minbase %s %s %s layout=1' "$BASE_PACKAGES" "$mirror" "$security" | sha256sum | cut -c1-16)"
  have="$("$DOCKER" image inspect --format '{{ index .Config.Labels "org.paretoserve.base-key" }}' "$LOCAL_BASE" 2>/dev/null || true)"
  if [ "$have" = "$key" ]; then
    log "base: $LOCAL_BASE cached (key $key)"; return
  fi
  tar="$CACHE/base/rootfs-$key.tar"
  if [ ! -s "$tar" ]; then
    log "base: mmdebstrap bookworm from $mirror (key $key)"
    mkdir -p "$CACHE/base"
    # Like debian:bookworm-slim: no manuals, docs (but copyrights) or translations.
    mmdebstrap --variant=minbase --format=tar --include="$BASE_PACKAGES" \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      bookworm "$tar.tmp" \
      "deb $mirror bookworm main" "deb $mirror bookworm-updates main" "deb $security bookworm-security main" \
      > "$CACHE/base/mmdebstrap.log" 2>&1 \
      || { tail -n 20 "$CACHE/base/mmdebstrap.log" >&2; die "mmdebstrap failed (log: $CACHE/base/mmdebstrap.log)"; }
    mv "$tar.tmp" "$tar"
  fi
  "$DOCKER" import --change "LABEL org.paretoserve.base-key=$key" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' "$tar" "$LOCAL_BASE" >/dev/null \
    || die "docker import of $tar failed"
  log "base: imported $LOCAL_BASE"
}
operator_base="python:3.11-slim-bookworm" worker_base="debian:bookworm-slim"
case "$base_arg" in
  "")
    if { ! want operator || have_image "$operator_base" || registry_answers "$operator_base"; } \
       && { ! want worker || have_image "$worker_base" || registry_answers "$worker_base"; }; then
      base_source="registry"
    else
      log "base: no registry answers; making a local base"
      make_local_base; operator_base="$LOCAL_BASE" worker_base="$LOCAL_BASE" base_source="mmdebstrap"
    fi ;;
  local) make_local_base; operator_base="$LOCAL_BASE" worker_base="$LOCAL_BASE" base_source="mmdebstrap" ;;
  *) have_image "$base_arg" || registry_answers "$base_arg" || die "base image '$base_arg' is neither local nor pullable"
     operator_base="$base_arg" worker_base="$base_arg" base_source="given" ;;
esac
base_s="$(since "$t0")"

# ---------------------------------------------------------------------------------------------------------
# 3. Build contexts: build/images/<image>/ with the Dockerfile, helpers, hard-linked wheels and models.
# ---------------------------------------------------------------------------------------------------------
link_tree() { cp -al "$1" "$2" 2>/dev/null || cp -a "$1" "$2"; }
assemble() {  # assemble IMAGE DOCKERFILE
  local ctx="$CONTEXTS/$1"
  rm -rf "$ctx"; mkdir -p "$ctx/project"
  cp "$IMAGES/$2" "$ctx/Dockerfile"
  cp "$IMAGES/base-python.sh" "$IMAGES/tritonserver.sh" "$ctx/"
  link_tree "$CACHE/wheelhouse/$1" "$ctx/wheels"
  rm -f "$ctx/wheels/.key"
  cp "$project_wheel" "$ctx/project/"
}
# A Rust crate of native/, built on the host like the wheels (the bases are Debian bookworm too, so the host's
# glibc build runs there): cargo_build DIR WHAT.
cargo_build() {
  local cargo="${CARGO:-$(command -v cargo || echo "$HOME/.cargo/bin/cargo")}"
  [ -x "$cargo" ] || die "cargo not found (install Rust with rustup), needed for $2"
  log "$2: cargo build --release ($1)"
  "$cargo" build --quiet --release --locked --manifest-path "$ROOT/$1/Cargo.toml" >&2 || die "cargo build of $1 failed"
}
export_s=0
if want worker; then
  t0="$(now)"
  assemble worker Dockerfile.worker
  if [ -n "$models_dir" ]; then
    [ -d "$models_dir" ] || die "--models $models_dir is not a directory"
    cp -a "$models_dir/." "$CONTEXTS/worker/models/" 2>/dev/null || { mkdir -p "$CONTEXTS/worker/models"; cp -a "$models_dir/." "$CONTEXTS/worker/models/"; }
    log "models: baking $models_dir"
  else
    (cd / && "$VENV/bin/paretoserve" models export --help >/dev/null 2>&1) \
      || die "'paretoserve models export' is not available in $VENV (reinstall the project: pip install -e .), or pass --models DIR"
    log "models: paretoserve models export --out build/images/worker/models"
    (cd / && "$VENV/bin/paretoserve" models export --out "$CONTEXTS/worker/models") >&2 \
      || die "'paretoserve models export' failed"
  fi
  ls "$CONTEXTS"/worker/models/*/config.pbtxt >/dev/null 2>&1 || die "the model repository has no <model>/config.pbtxt"
  # The native paretoserve_onnx backend (native/onnx_backend), which serves every ONNX model of the repository:
  # built on the host like the fast path, installed as backends/paretoserve_onnx/ in the image.
  cargo_build native/onnx_backend "the native ONNX backend"
  cp "$ROOT/native/onnx_backend/target/release/libtriton_paretoserve_onnx.so" "$CONTEXTS/worker/"
  chmod -R a+rX,go-w "$CONTEXTS/worker/models"
  find "$CONTEXTS/worker/models" -name __pycache__ -prune -exec rm -rf {} +
  export_s="$(since "$t0")"
fi
if want operator; then
  assemble operator Dockerfile
  # The router's compiled fast path (native/fastpath), copied to /usr/local/bin in the image.
  cargo_build native/fastpath "the router's fast path"
  cp "$ROOT/native/fastpath/target/release/paretoserve-fastpath" "$CONTEXTS/operator/"
fi

# ---------------------------------------------------------------------------------------------------------
# 4. Build.
# ---------------------------------------------------------------------------------------------------------
# The local base carries Debian's python3.11, so its builds run with --network=none (proof that they need no
# network); a public base may lack it and base-python.sh then runs apt-get, so those builds keep the network.
build_network=(--network=none); [ "$base_source" = "mmdebstrap" ] || build_network=()
build() {  # build CONTEXT IMAGE BASE -> seconds on stdout
  local t; t="$(now)"
  log "docker build $2 (FROM $3; log: $CONTEXTS/$1.log)"
  "$DOCKER" build "${build_network[@]}" --build-arg "BASE=$3" --build-arg "VERSION=$version" \
      -t "$2" "$CONTEXTS/$1" > "$CONTEXTS/$1.log" 2>&1 \
    || { tail -n 30 "$CONTEXTS/$1.log" >&2; die "docker build of $2 failed (log: $CONTEXTS/$1.log)"; }
  since "$t"
}
operator_s=null worker_s=null
want operator && operator_s="$(build operator "$OPERATOR_IMAGE" "$operator_base")"
want worker && worker_s="$(build worker "$WORKER_IMAGE" "$worker_base")"

# ---------------------------------------------------------------------------------------------------------
# 5. Into the node's containerd (kind users: kind load docker-image IMAGE).
# ---------------------------------------------------------------------------------------------------------
load_s=null loaded=false
if [ "$load" = auto ] && [ -S "$CONTAINERD_SOCK" ] && command -v "$CTR" >/dev/null; then
  t0="$(now)"
  images=(); want operator && images+=("$OPERATOR_IMAGE"); want worker && images+=("$WORKER_IMAGE")
  mkdir -p "$CACHE/loaded"
  for image in "${images[@]}"; do
    # Skipped when containerd still holds this very image (same Docker image id as at the last import).
    id="$("$DOCKER" image inspect --format '{{.Id}}' "$image")"
    stamp="$CACHE/loaded/$(echo "$image" | tr '/:' '__')"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$id" ] \
       && [ -n "$("$CTR" --address "$CONTAINERD_SOCK" -n k8s.io images ls -q "name==$image" 2>/dev/null)" ]; then
      log "containerd: $image already imported (${id:7:12})"; continue
    fi
    log "containerd: importing $image into namespace k8s.io"
    "$DOCKER" save "$image" | "$CTR" --address "$CONTAINERD_SOCK" -n k8s.io images import - >/dev/null \
      || die "import of $image into containerd ($CONTAINERD_SOCK) failed; rerun with --no-load to skip"
    echo "$id" > "$stamp"
  done
  load_s="$(since "$t0")" loaded=true
fi

# ---------------------------------------------------------------------------------------------------------
# 6. Report.
# ---------------------------------------------------------------------------------------------------------
size_of() { "$DOCKER" image inspect --format '{{.Size}}' "$1"; }
operator_size=null worker_size=null
want operator && operator_size="$(size_of "$OPERATOR_IMAGE")"
want worker && worker_size="$(size_of "$WORKER_IMAGE")"
printf '{"operator_image": %s, "operator_size_bytes": %s, "operator_build_s": %s, "worker_image": %s, "worker_size_bytes": %s, "worker_build_s": %s, "base": "%s", "base_source": "%s", "base_s": %s, "wheels_s": %s, "models_export_s": %s, "containerd_loaded": %s, "containerd_load_s": %s, "total_s": %s}\n' \
  "$(want operator && echo "\"$OPERATOR_IMAGE\"" || echo null)" "$operator_size" "$operator_s" \
  "$(want worker && echo "\"$WORKER_IMAGE\"" || echo null)" "$worker_size" "$worker_s" \
  "$( [ "$operator_base" = "$worker_base" ] && echo "$operator_base" || echo "$operator_base + $worker_base")" \
  "$base_source" "$base_s" "$wheels_s" "$export_s" "$loaded" "$load_s" "$(since "$t_start")"
