"""The router's exception hierarchy: every way a request can fail, each with its HTTP status.

The router promises that every request gets an answer or an explicit error, never silence. To make
that checkable, all failures are raised as one of these classes and turned into an HTTP response
at exactly one boundary (the app's exception handler), which also counts them in
``paretoserve_router_errors_total{reason}``. Foreign errors (httpx, JSON decoding) are mapped into
this tree where they occur, chained with ``raise ... from exc`` (the httpx/kopf pattern)::

    RouterError                  500 internal       a bug; logged with its traceback
    ├── BadRequest               400 bad_request    malformed body, header or input tensor
    │   ├── ConfigError          400 bad_config     a config or live update names a bad field
    │   ├── PayloadTooLarge      413 payload_too_large   a body over its limit (connection closed)
    │   ├── HeadersTooLarge      431 headers_too_large   a request head over its limit (connection closed)
    │   └── RequestTimeout       408 request_timeout     a request not received in time (closed)
    ├── Unauthorized             401 unauthorized   admin call without the right bearer token
    ├── Forbidden                403 forbidden      admin API disabled (no token file)
    ├── NotFound                 404 not_found      unknown pipeline, model or path
    ├── MethodNotAllowed         405 method_not_allowed   a known path with another method
    ├── QueueFull                429 queue_full     backpressure: the EDF queue is full
    ├── Overloaded               503 overloaded     too many connections/requests at once (closed)
    ├── DeadlineExceeded         504 deadline_exceeded   the per-request deadline passed
    └── UpstreamError            502 upstream_error
        ├── UpstreamTimeout      504 upstream_timeout     every replica timed out
        ├── UpstreamUnavailable  503 upstream_unavailable connection refused/reset, 5xx, model missing
        ├── LateRefused          503 late_refused   the model server's queue timeout refused the request
        └── UpstreamRejected     4xx upstream_rejected    the model server refused the input itself

Error bodies follow the KServe v2 shape ``{"error": message}`` with ``reason`` and ``status`` added,
and ``stage``/``model`` when known, so a client (and a test) can tell every outcome apart. A client-facing
message never names an upstream's address: :class:`UpstreamError` keeps the replica's URL and the raw
failure in ``url``/``detail`` for the server's log only.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_CLOSE = MappingProxyType({"connection": "close"})


class RouterError(Exception):
    """Base of every error the router answers with; ``status`` is the HTTP status it maps to."""

    default_status: ClassVar[int] = 500
    reason: ClassVar[str] = "internal"
    headers: ClassVar[Mapping[str, str]] = _NO_HEADERS
    """Response headers this error always carries (``retry-after``, ``www-authenticate``, ...)."""

    def __init__(self, message: str, *, stage: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.status = status if status is not None else self.default_status

    def at_stage(self, stage: str) -> RouterError:
        """Record the pipeline stage the error happened in (kept if already set); returns ``self``."""
        if self.stage is None:
            self.stage = stage
        return self

    def body(self) -> dict[str, Any]:
        """The JSON error body sent to the client."""
        body: dict[str, Any] = {"error": self.message, "reason": self.reason, "status": self.status}
        if self.stage is not None:
            body["stage"] = self.stage
        return body


class BadRequest(RouterError):
    """The request (body, header or tensor) is malformed; retrying it unchanged will not help."""

    default_status = 400
    reason = "bad_request"


class ConfigError(BadRequest, ValueError):
    """A router config, or a live update of one, is invalid; ``field`` is the offending path."""

    reason = "bad_config"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message

    def body(self) -> dict[str, Any]:
        return {**super().body(), "field": self.field}


class PayloadTooLarge(BadRequest):
    """A request body over its limit; the connection is closed (the rest of the body is not read)."""

    default_status = 413
    reason = "payload_too_large"
    headers = _CLOSE


class HeadersTooLarge(BadRequest):
    """A request line plus headers over the head limit; the connection is closed."""

    default_status = 431
    reason = "headers_too_large"
    headers = _CLOSE


class RequestTimeout(BadRequest):
    """The client did not send its whole request within the read timeout (a slow or stalled client)."""

    default_status = 408
    reason = "request_timeout"
    headers = _CLOSE


class Unauthorized(RouterError):
    """An admin call without the right ``Authorization: Bearer`` token."""

    default_status = 401
    reason = "unauthorized"
    headers = MappingProxyType({"www-authenticate": "Bearer"})


class Forbidden(RouterError):
    """The admin API is disabled: the router was started without a token file."""

    default_status = 403
    reason = "forbidden"


class NotFound(RouterError):
    """No such pipeline or model behind this router."""

    default_status = 404
    reason = "not_found"


class MethodNotAllowed(RouterError):
    """A known path asked with a method it does not serve."""

    default_status = 405
    reason = "method_not_allowed"


class QueueFull(RouterError):
    """The bounded EDF queue is full: answered at once so the client can back off."""

    default_status = 429
    reason = "queue_full"
    headers = MappingProxyType({"retry-after": "1"})


class Overloaded(RouterError):
    """The listener's concurrency limit is reached: answered at once, before the body is read."""

    default_status = 503
    reason = "overloaded"
    headers = MappingProxyType({"retry-after": "1", "connection": "close"})


class DeadlineExceeded(RouterError):
    """The request's deadline passed while it was queued or in flight; it was not silently dropped."""

    default_status = 504
    reason = "deadline_exceeded"


class UpstreamError(RouterError):
    """A model server failed or answered something malformed; ``model`` and ``url`` say which replica.

    ``message`` goes to the client and never holds an address; ``url`` and ``detail`` (the raw failure,
    e.g. the transport's own text with host and port) are for the server's log.
    """

    default_status = 502
    reason = "upstream_error"

    def __init__(
        self, message: str, *, model: str, url: str | None = None, stage: str | None = None, status: int | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, stage=stage, status=status)
        self.model = model
        self.url = url
        self.detail = detail

    def body(self) -> dict[str, Any]:
        return {**super().body(), "model": self.model}


class UpstreamTimeout(UpstreamError):
    """Every replica tried timed out (connect, read, write or waiting for a pooled connection)."""

    default_status = 504
    reason = "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    """Every replica tried refused or dropped the connection, answered 5xx, or lacks the model."""

    default_status = 503
    reason = "upstream_unavailable"


class LateRefused(UpstreamError):
    """A replica's Triton refused the request because it waited longer than its queue timeout (the pipeline's
    ``slo.lateRequests: refuse``): it can no longer be on time, so it is not retried on another replica or model."""

    default_status = 503
    reason = "late_refused"


class UpstreamRejected(UpstreamError):
    """The model server answered 4xx about the input itself; passed on with the upstream's status."""

    default_status = 400
    reason = "upstream_rejected"


def is_backend_failure(error: BaseException) -> bool:
    """Whether ``error`` means the *backend* failed, so another replica or model may succeed.

    Deadline, backpressure and bad-input errors are not: retrying them elsewhere cannot help.
    """
    return isinstance(error, UpstreamTimeout | UpstreamUnavailable)
