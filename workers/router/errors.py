"""The router's exception hierarchy: every way a request can fail, each with its HTTP status.

The router promises that every request gets an answer or an explicit error, never silence. To make
that checkable, all failures are raised as one of these classes and turned into an HTTP response
at exactly one boundary (the app's exception handler), which also counts them in
``paretoserve_router_errors_total{reason}``. Foreign errors (httpx, JSON decoding) are mapped into
this tree where they occur, chained with ``raise ... from exc`` (the httpx/kopf pattern)::

    RouterError                  500 internal       a bug; logged with its traceback
    ├── BadRequest               400 bad_request    malformed body, header or input tensor
    │   └── ConfigError          400 bad_config     a config or live update names a bad field
    ├── NotFound                 404 not_found      unknown pipeline or model
    ├── QueueFull                429 queue_full     backpressure: the EDF queue is full
    ├── DeadlineExceeded         504 deadline_exceeded   the per-request deadline passed
    └── UpstreamError            502 upstream_error
        ├── UpstreamTimeout      504 upstream_timeout     every replica timed out
        ├── UpstreamUnavailable  503 upstream_unavailable connection refused/reset, 5xx, model missing
        └── UpstreamRejected     4xx upstream_rejected    the model server refused the input itself

Error bodies follow the KServe v2 shape ``{"error": message}`` with ``reason`` and ``status`` added,
and ``stage``/``model`` when known, so a client (and a test) can tell every outcome apart.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RouterError(Exception):
    """Base of every error the router answers with; ``status`` is the HTTP status it maps to."""

    default_status: ClassVar[int] = 500
    reason: ClassVar[str] = "internal"

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


class NotFound(RouterError):
    """No such pipeline or model behind this router."""

    default_status = 404
    reason = "not_found"


class QueueFull(RouterError):
    """The bounded EDF queue is full: answered at once so the client can back off."""

    default_status = 429
    reason = "queue_full"


class DeadlineExceeded(RouterError):
    """The request's deadline passed while it was queued or in flight; it was not silently dropped."""

    default_status = 504
    reason = "deadline_exceeded"


class UpstreamError(RouterError):
    """A model server failed; ``model`` and ``url`` say which replica failed last."""

    default_status = 502
    reason = "upstream_error"

    def __init__(
        self, message: str, *, model: str, url: str | None = None, stage: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, stage=stage, status=status)
        self.model = model
        self.url = url

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


class UpstreamRejected(UpstreamError):
    """The model server answered 4xx about the input itself; passed on with the upstream's status."""

    default_status = 400
    reason = "upstream_rejected"


def is_backend_failure(error: BaseException) -> bool:
    """Whether ``error`` means the *backend* failed, so another replica or model may succeed.

    Deadline, backpressure and bad-input errors are not: retrying them elsewhere cannot help.
    """
    return isinstance(error, UpstreamTimeout | UpstreamUnavailable)
