"""What one client may make the router hold: body sizes and deadlines.

The router sits on the pod network in front of every model, in a sidecar with a small memory limit, and
its deadline gauge feeds the operator's planner. So nothing a client sends may be buffered or believed
without a bound: a body is refused with 413 as soon as its declared or received size passes the limit
(the same for admin bodies, with a smaller one), and a deadline header is parsed strictly
(``^[0-9]{1,9}(\\.[0-9]{1,3})?$`` milliseconds) and clamped to a maximum, so ``-100000``, ``1e308``,
``1_000`` or ``nan`` never reach the EDF queue or the gauge. :class:`RequestLimits` holds every bound of
the sidecar; the ones on request heads (size), on the time to send a request (a head or a body that
trickles in is cut off with 408) and on concurrent connections are enforced below the app, in
:mod:`.http_guard`; the cap on upstream answers in :mod:`.transport` and :mod:`.upstream`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.requests import Request

from paretoserve.workers.router.errors import BadRequest, PayloadTooLarge

MIB = 1024 * 1024
ADMIN_BODY_BYTES = 1 * MIB
"""Admin bodies (config updates, worker knobs) are small: one limit for all of them."""
_DEADLINE = re.compile(r"^[0-9]{1,9}(?:\.[0-9]{1,3})?$")


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The router's bounds on clients and upstreams (``paretoserve router`` flags; defaults in the docs)."""

    max_body_bytes: int = 16 * MIB
    """Largest data-plane request body (413 beyond it, from Content-Length or while reading)."""
    max_upstream_bytes: int = 64 * MIB
    """Largest upstream answer read (502 ``upstream_error`` beyond it)."""
    max_header_bytes: int = 16 * 1024
    """Largest request head (request line and headers): 431 and the connection closed beyond it."""
    read_timeout_s: float = 10.0
    """Time a client may take to send a whole request, head and body (408 and closed after it)."""
    keep_alive_s: int = 75
    """How long a connection may stay idle (before its first request, or between two) before it is closed."""
    limit_concurrency: int = 1024
    """Connections plus requests in progress on the data listener; more are answered 503 at once."""
    max_requests_per_connection: int = 1000
    """Requests one keep-alive connection may carry; the last is answered with ``Connection: close``, so a
    long-lived client reconnects through its Service and new replicas get their share of it."""
    max_deadline_ms: float = 600_000.0
    """Cap on the deadline header when the config has no ``sloMs``."""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_upstream_bytes", "max_header_bytes", "limit_concurrency",
                     "max_requests_per_connection"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("read_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.max_deadline_ms <= 999_999_999:
            raise ValueError(f"max_deadline_ms must be in (0, 999999999], got {self.max_deadline_ms}")


def parse_deadline_ms(raw: str, header: str, maximum_ms: float) -> float:
    """The budget in a deadline header, in ms, clamped to ``[0, maximum_ms]``; 400 naming the header else."""
    if not _DEADLINE.match(raw):
        shown = raw if len(raw) <= 32 else raw[:32] + "..."
        raise BadRequest(f"header {header}: must be milliseconds as digits with up to 3 decimals "
                         f"(e.g. 250 or 12.5), got {shown!r}")
    return min(float(raw), maximum_ms)


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit() or not declared.isascii():
        raise BadRequest(f"header content-length: must be a non-negative integer, got {declared[:32]!r}")
    return int(declared)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (the read time is bounded below the app: :mod:`.http_guard`).

    A Content-Length over the limit is refused before a byte is read; a body without one (chunked) is
    counted as it arrives, so at most ``limit`` bytes (plus one chunk) are ever held.
    """
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"the request body ({declared} bytes) is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise BadRequest("the client disconnected (or timed out) before sending the whole body")
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
