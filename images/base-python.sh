#!/bin/sh
# Runs inside `docker build` (both images): makes sure the base image carries the Python the image needs,
# and installs it with apt only when it is missing, so one Dockerfile works on every supported base:
#   - the local base made by images/build.sh with mmdebstrap (Debian's python3.11 already there: no network),
#   - debian:bookworm-slim (apt-get installs Debian's python3.11: needs the network, as any user build has),
#   - python:3.11-slim-bookworm (its own /usr/local/bin/python3.11: fine for the operator image only).
# Usage: base-python.sh any     -- any python3.11 on PATH (operator + router image)
#        base-python.sh debian  -- Debian's /usr/bin/python3.11 and libpython3.11 (worker image: Triton's
#                                  Python-backend stub links the system libpython3.11.so.1.0)
set -eu
mode="${1:?usage: base-python.sh any|debian}"
missing=""
case "$mode" in
  any)    command -v python3.11 >/dev/null 2>&1 || missing="python3.11" ;;
  debian) [ -x /usr/bin/python3.11 ] || missing="python3.11"
          ldconfig -p 2>/dev/null | grep -Eq 'libpython3\.11\.so\.1\.0 .*=> /(usr/)?lib/' \
            || missing="${missing:+$missing }libpython3.11" ;;
  *) echo "base-python.sh: unknown mode '$mode' (any|debian)" >&2; exit 2 ;;
esac
if [ -z "$missing" ]; then
  echo "base-python.sh: the base already has what '$mode' needs ($(command -v python3.11 || echo /usr/bin/python3.11))"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "base-python.sh: the base lacks $missing and has no apt-get; use a Debian bookworm base (see images/README.md)" >&2
  exit 1
fi
echo "base-python.sh: installing $missing with apt-get (needs network during the build)"
export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086
apt-get install -y --no-install-recommends $missing python3.11-venv ca-certificates
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
