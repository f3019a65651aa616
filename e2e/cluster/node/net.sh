#!/usr/bin/env bash
# Why this exists: the real node needs a non-loopback address that exists before kube-apiserver starts
# (the apiserver advertises it as the `kubernetes` Service endpoint) and that kubelet accepts as its node
# IP. These VMs have no `dummy` link type, so a veth pair holds it: $NODE_VETH gets $NODE_IP/32, its peer
# just exists. `up` is idempotent; `down` removes the pair (and with it the address).
# Usage: e2e/cluster/node/net.sh up|down
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

case "${1:-}" in
  up)
    command -v ip >/dev/null || die "the ip command (iproute2) is missing"
    if ! ip link show "$NODE_VETH" >/dev/null 2>&1; then
      log "creating veth pair $NODE_VETH/$NODE_VETH_PEER for node IP $NODE_IP"
      ip link add "$NODE_VETH" type veth peer name "$NODE_VETH_PEER" \
        || die "cannot create veth pair $NODE_VETH (need root and the veth link type)"
    fi
    if [[ "$(ip -4 -o addr show dev "$NODE_VETH")" != *" $NODE_IP/"* ]]; then
      ip addr add "$NODE_IP/32" dev "$NODE_VETH" || die "cannot add $NODE_IP/32 to $NODE_VETH"
    fi
    ip link set "$NODE_VETH_PEER" up
    ip link set "$NODE_VETH" up
    # The address must be usable right away (no DAD for IPv4, but wait for the local route anyway).
    # (Capture first: `ip ... | grep -q` fails under pipefail when grep exits before ip is done.)
    has_route() { local r; r="$(ip route show table local)"; [[ "$r" == *"local $NODE_IP "* ]]; }
    for _ in $(seq 50); do has_route && break; sleep 0.1; done
    has_route || die "$NODE_IP has no local route on $NODE_VETH"
    ;;
  down)
    if ip link show "$NODE_VETH" >/dev/null 2>&1; then
      log "removing veth pair $NODE_VETH"
      ip link del "$NODE_VETH"
    fi
    ;;
  *) die "usage: net.sh up|down" ;;
esac
