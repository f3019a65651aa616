"""The router's admin API: live config, Triton knobs and metrics, on their own listener behind a token.

``/admin/config`` decides where every inference goes and ``/admin/worker`` what the pod's Triton loads,
so neither may be reachable by whoever can send an inference request (security review F1, F2). The
admin app is served on a separate listener (``--admin-host/--admin-port``, loopback by default; on
Kubernetes a NetworkPolicy admits only the operator and Prometheus) and every ``/admin/*`` call must
carry ``Authorization: Bearer <token>``, compared in constant time with the token of
``--admin-token-file`` (401 with ``WWW-Authenticate: Bearer`` otherwise). Without a token file the
admin endpoints answer 403: the API is off. ``/metrics`` needs no token (Prometheus scrapes it).

- ``GET /admin/config``: the live config;
- ``POST /admin/config``: a partial update of thresholds, weights, upstreams or fallback flags,
  validated as a whole and swapped in atomically, answering the new config, or 400 naming the field;
  upstream URLs must be plain ``http(s)://host`` base URLs at an origin the config file already names;
- ``POST /admin/worker``: ``{"models": {...}}`` knobs for the pod's own Triton (:mod:`.worker_knobs`);
- ``GET /metrics``: Prometheus text of the router's registry (:mod:`.metrics`).

Admin bodies are read within :data:`~.limits.ADMIN_BODY_BYTES`; the token is checked before the body
is read.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from paretoserve.workers.router.config import config_to_json
from paretoserve.workers.router.errors import Forbidden, Unauthorized
from paretoserve.workers.router.limits import ADMIN_BODY_BYTES, read_body
from paretoserve.workers.router.protocol import Message, decode_object, json_response

if TYPE_CHECKING:
    from paretoserve.workers.router.app import RouterService

logger = logging.getLogger(__name__)
Endpoint = Callable[[Request], Awaitable[Response]]


def bearer_matches(authorization: str | None, token: bytes) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time comparison)."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Starlette decodes header values as latin-1: encoding back gives the bytes the client sent.
    return hmac.compare_digest(credentials.strip().encode("latin-1", "replace"), token)


class AdminApi:
    """The admin endpoints of one :class:`~.app.RouterService`; ``token`` ``None`` turns ``/admin/*`` off."""

    def __init__(self, service: RouterService, token: str | None) -> None:
        if token is not None and not token.strip():
            raise ValueError("the admin token is empty")
        self._service = service
        self._token = token.strip().encode() if token is not None else None

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            raise Forbidden("admin API disabled: no --admin-token-file")
        if not bearer_matches(request.headers.get("authorization"), self._token):
            raise Unauthorized("the admin API needs 'Authorization: Bearer <token>' with this router's token")

    def guarded(self, endpoint: Endpoint) -> Endpoint:
        """``endpoint`` behind the token check (before anything else, the body included)."""
        async def checked(request: Request) -> Response:
            self._authorize(request)
            return await endpoint(request)

        return checked

    async def _body(self, request: Request, what: str) -> Message:
        body = await read_body(request, ADMIN_BODY_BYTES)
        return decode_object(body, what)

    async def get_config(self, _: Request) -> Response:
        return json_response(config_to_json(self._service.config))

    async def post_config(self, request: Request) -> Response:
        patch = await self._body(request, "the config update")
        updated = await self._service.update_config(patch)
        logger.info("router config updated: %s", sorted(patch))
        return json_response(config_to_json(updated))

    async def post_worker(self, request: Request) -> Response:
        """Apply the plan's Triton knobs (instances, batching) to this pod's own Triton."""
        return json_response(await self._service.knobs.apply(await self._body(request, "the worker update")))

    async def metrics(self, _: Request) -> Response:
        await self._service.refresh_fastpath_figures()
        return Response(generate_latest(self._service.registry), media_type=CONTENT_TYPE_LATEST)


def build_admin_app(service: RouterService, token: str | None) -> Starlette:
    """The admin listener's app for ``service`` (no lifespan: the data app's owns the clients)."""
    api = AdminApi(service, token)
    return Starlette(
        routes=[
            Route("/admin/config", api.guarded(api.get_config), methods=["GET"]),
            Route("/admin/config", api.guarded(api.post_config), methods=["POST"]),
            Route("/admin/worker", api.guarded(api.post_worker), methods=["POST"]),
            Route("/metrics", api.metrics, methods=["GET"]),
        ],
        exception_handlers=service.exception_handlers(),
    )
