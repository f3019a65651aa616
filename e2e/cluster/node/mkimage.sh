#!/usr/bin/env bash
# Why this exists: the real node's pause and probe images are single static binaries FROM scratch.
# Building them needs neither dockerd nor a registry: this packs a binary into an image archive in
# `docker save` format (manifest.json + config + one layer), which `ctr -n k8s.io images import`
# and `docker load` both accept. The archive is reproducible (fixed mtimes/owners, no timestamps),
# so the same binary always gives the same image ID.
#
# Usage: mkimage.sh BINARY IMAGE_REF OUT.tar [ENTRYPOINT_ARG...]
#   BINARY goes to /<basename> in the image; the entrypoint is ["/<basename>", ENTRYPOINT_ARG...].
set -euo pipefail

die() { printf '[mkimage] ERROR: %s\n' "$*" >&2; exit 1; }
(($# >= 3)) || die "usage: mkimage.sh BINARY IMAGE_REF OUT.tar [ENTRYPOINT_ARG...]"
bin="$1" ref="$2" out="$3"; shift 3
[[ -x "$bin" ]] || die "$bin is not an executable file"
[[ "$ref" == *:* ]] || die "image ref $ref needs a tag"
name="$(basename "$bin")"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs" "$work/img"
install -m 0755 "$bin" "$work/rootfs/$name"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$work/rootfs" -cf "$work/layer.tar" "$name"
layer_sha="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"

entry="\"/$name\""
for a in "$@"; do entry+=",\"$a\""; done
config="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Entrypoint\":[$entry],\"WorkingDir\":\"/\"},"
config+="\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$layer_sha\"]},"
config+="\"history\":[{\"created_by\":\"e2e/cluster/node/mkimage.sh $name\"}]}"
printf '%s' "$config" >"$work/config.json"
config_sha="$(sha256sum "$work/config.json" | cut -d' ' -f1)"

mkdir -p "$work/img/$layer_sha"
mv "$work/layer.tar" "$work/img/$layer_sha/layer.tar"
mv "$work/config.json" "$work/img/$config_sha.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
  "$config_sha" "$ref" "$layer_sha" >"$work/img/manifest.json"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/img" -cf "$out.tmp" .
mv -f "$out.tmp" "$out"
echo "sha256:$config_sha"
