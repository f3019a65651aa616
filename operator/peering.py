"""Which operator replica adapts: kopf's peering rule, applied to the adaptation loop too.

kopf pauses the handlers of a stand-by peer, but the adaptation loop is our own thread (see adaptation.py),
so it must apply the same rule itself: a process is active when no other live peer in the
ClusterKopfPeering object has a priority at least as high (equal priorities pause both, as in kopf).
"""

from __future__ import annotations

import datetime as dt
from typing import Any


def _timestamp(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def is_active_peer(peers: dict[str, Any], identity: str, priority: int, *, now: float) -> bool:
    """kopf's rule for this process: no other live peer with a priority >= ours (equal pauses both)."""
    for peer_id, info in peers.items():
        if peer_id == identity or not isinstance(info, dict):
            continue
        lastseen = info.get("lastseen")
        alive = lastseen is None or _timestamp(lastseen) + float(info.get("lifetime", 60)) > now
        if alive and int(info.get("priority", 0)) >= priority:
            return False
    return True
