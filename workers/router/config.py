"""The router's configuration: frozen dataclasses parsed once from JSON, and live partial updates.

The operator writes this JSON into the sidecar's ConfigMap and pushes changes (thresholds, variant
weights, upstream replicas) to ``POST /admin/config``; the local runtime and the profiler do the
same. Both paths go through :func:`parse_config`, so a bad value fails the same way everywhere: a
:class:`~.errors.ConfigError` naming the field (``stages[0].cascade.threshold: must be in [0, 1]``).
Format (camelCase keys; optional keys show their defaults)::

    {"pipeline": "digits",
     "stages": [{"name": "classify", "dependsOn": [],
                 "inputs": ["$request"],                      # or a parent "<stage>" / "<stage>.<OUTPUT>"
                 "latencyMs": null,                           # the plan's latency of the stage
                 "variants": {"tiny_linear": 1.0},            # weighted split when several
                 "cascade": {"light": "tiny_linear", "heavy": "cnn_large",
                             "router": "confidence",          # |discriminator|prompt|hybrid
                             "threshold": 0.8, "discriminator": null, "preRouteThreshold": null,
                             "scorer": null}}],               # prompt: the model scoring a generation prompt
     "upstreams": {"tiny_linear": ["http://127.0.0.1:8000"], ...},
     "deadlineHeader": "x-paretoserve-deadline-ms",
     "sloMs": null,                                           # caps the deadline header when set
     "queue": {"maxSize": 1024, "concurrency": 64, "order": "slack"},  # |deadline|fifo
     "fallback": {"heavyToLight": true, "lightToHeavy": true, "otherVariants": true},
     "timeouts": {"connectMs": 1000, "readMs": 30000, "writeMs": 5000, "poolMs": 5000,
                  "defaultDeadlineMs": null},
     "limits": {"maxConnections": 64, "maxKeepaliveConnections": 64, "keepaliveExpiryS": 30},
     "transport": "fast"}                                     # |httpx

A stage has ``variants`` or a ``cascade`` (then ``variants`` may only list the cascade's models). Names
(pipeline, stages, models) match the spec's ``TRITON_MODEL_NAME`` (the spec's DNS-label stage names fit
it too) and ``deadlineHeader`` its ``DEADLINE_HEADER_NAME``: one pattern from the CRD to the router, so a
model name is always safe in a URL path. Upstreams are ``http(s)://host[:port][/path]`` base URLs without
credentials, query or fragment.
A stage's ``inputs`` say what its model reads, concatenated per row (see :mod:`.dataflow`); each stage
named must be in ``dependsOn``. ``queue.order`` orders the upstream calls waiting for a slot: ``slack``
(default) by the request's deadline minus the planned latency still ahead of the call (the stage's own
``latencyMs`` and its longest path to a sink: least slack first), ``deadline`` by the request's deadline
alone, ``fifo`` by arrival.
Live updates (:func:`apply_update`) may change variant weights, stage latencies, cascade thresholds,
upstreams and fallback flags; anything else needs a restart and is refused naming the field. The sidecar lets a live
update point a model only at origins its config file already names (:func:`origins`): the topology comes
from the file, so a stolen admin token cannot redirect traffic to a new host.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from paretoserve.planner.spec import DEADLINE_HEADER_NAME, TRITON_MODEL_NAME, RouterKind
from paretoserve.workers.router.decisions import topological_order
from paretoserve.workers.router.errors import ConfigError

DEFAULT_DEADLINE_HEADER = "x-paretoserve-deadline-ms"
_NAME = re.compile(TRITON_MODEL_NAME)
_HEADER = re.compile(DEADLINE_HEADER_NAME)
_CASCADE_KEYS = ("light", "heavy", "router", "threshold", "discriminator", "preRouteThreshold", "scorer")
_TOP_KEYS = ("pipeline", "stages", "upstreams", "deadlineHeader", "sloMs", "queue", "fallback", "timeouts",
             "limits", "transport")
_LIVE_STAGE_KEYS = ("name", "variants", "latencyMs", "cascade")
REQUEST_INPUT = "$request"
PRIMARY_OUTPUT = "PROBS"
QUEUE_ORDERS = ("slack", "deadline", "fifo")
_OUTPUT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_LIVE_CASCADE_KEYS = ("threshold", "preRouteThreshold")
_LIVE_TOP_KEYS = ("stages", "upstreams", "fallback")


@dataclass(frozen=True, slots=True)
class CascadeConfig:
    """A two-model cascade: ``light`` first, ``heavy`` for the rows the router defers or pre-routes."""

    light: str
    heavy: str
    router: RouterKind = RouterKind.CONFIDENCE
    threshold: float = 0.5
    """Defer a row when its score (confidence, or 1 − P(light wrong)) is below this."""
    discriminator: str | None = None
    """Model giving P(light wrong) in column 1 of ``PROBS``; discriminator router, optional for hybrid."""
    pre_route_threshold: float | None = None
    """prompt/hybrid: rows with hardness >= this go straight to ``heavy``."""
    scorer: str | None = None
    """prompt router: the model giving a generation request's prompt its ``SCORE`` (P(light wrong)); the request
    goes to ``heavy`` when the score is >= ``pre_route_threshold`` (:mod:`.streaming`)."""

    @property
    def check(self) -> str:
        """What scores the light model's rows: ``discriminator`` or ``confidence``."""
        return "discriminator" if self.discriminator is not None else "confidence"


@dataclass(frozen=True, slots=True)
class StageInput:
    """One piece of a stage's input: the request's input (``stage`` None) or a parent's output tensor."""

    stage: str | None = None
    output: str = PRIMARY_OUTPUT

    @property
    def text(self) -> str:
        if self.stage is None:
            return REQUEST_INPUT
        return self.stage if self.output == PRIMARY_OUTPUT else f"{self.stage}.{self.output}"


@dataclass(frozen=True, slots=True)
class StageConfig:
    name: str
    depends_on: tuple[str, ...] = ()
    variants: tuple[tuple[str, float], ...] = ()
    """``(model, weight)`` pairs in declaration order; the weighted split of a non-cascade stage."""
    cascade: CascadeConfig | None = None
    inputs: tuple[StageInput, ...] = (StageInput(),)
    latency_ms: float | None = None
    """The plan's latency of this stage (queueing included); None before a plan (then 0 in slack orders)."""

    @property
    def reads_request_only(self) -> bool:
        """Whether the stage's model reads exactly the request (the request's body goes upstream as it is)."""
        return self.inputs == (StageInput(),)

    def models(self) -> tuple[str, ...]:
        """Every model the stage may call."""
        names = [model for model, _ in self.variants]
        if self.cascade is not None:
            names += [self.cascade.light, self.cascade.heavy]
            names += [self.cascade.discriminator] if self.cascade.discriminator else []
            names += [self.cascade.scorer] if self.cascade.scorer else []
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class QueueConfig:
    max_size: int = 1024
    """Requests that may wait in the EDF queue; one more is answered 429 at once."""
    concurrency: int = 64
    """Upstream calls in flight at once; the rest wait in ``order``."""
    order: str = "slack"
    """``slack``, ``deadline`` or ``fifo`` (see the module notes)."""


@dataclass(frozen=True, slots=True)
class FallbackConfig:
    heavy_to_light: bool = True
    light_to_heavy: bool = True
    other_variants: bool = True
    """A non-cascade stage tries its other variants when the chosen one fails."""


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    connect_ms: float = 1000.0
    read_ms: float = 30000.0
    write_ms: float = 5000.0
    pool_ms: float = 5000.0
    default_deadline_ms: float | None = None
    """Deadline of requests without the deadline header (``None``: only the upstream timeouts)."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_connections: int = 64
    max_keepalive_connections: int = 64
    keepalive_expiry_s: float = 30.0


@dataclass(frozen=True, slots=True)
class RouterConfig:
    pipeline: str
    stages: tuple[StageConfig, ...]
    upstreams: Mapping[str, tuple[str, ...]]
    deadline_header: str = DEFAULT_DEADLINE_HEADER
    slo_ms: float | None = None
    """The pipeline's end-to-end SLO when known: the cap on a request's deadline header."""
    queue: QueueConfig = QueueConfig()
    fallback: FallbackConfig = FallbackConfig()
    timeouts: TimeoutConfig = TimeoutConfig()
    limits: LimitsConfig = LimitsConfig()
    transport: str = "fast"
    order: tuple[str, ...] = ()
    """Stage names in dependency order (computed by :func:`parse_config`)."""
    by_name: Mapping[str, StageConfig] = field(default_factory=dict, repr=False, compare=False)
    """The stages by name (filled by :func:`parse_config`)."""
    ahead_ms: Mapping[str, float] = field(default_factory=dict, repr=False, compare=False)
    """Per stage, the planned latency from its start to the end of the pipeline: its own ``latencyMs`` plus
    its longest path to a sink (filled by :func:`parse_config`)."""

    def stage(self, name: str) -> StageConfig:
        return self.by_name.get(name) or next(stage for stage in self.stages if stage.name == name)


class _Fields:
    """Typed reads from one JSON object; every error names ``path.key``."""

    def __init__(self, raw: object, path: str, allowed: Sequence[str]) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(path or "config", f"must be an object, got {type(raw).__name__}")
        for key in raw:
            if key not in allowed:
                raise ConfigError(self._join(path, str(key)), f"unknown field (allowed: {', '.join(allowed)})")
        self.raw: Mapping[str, Any] = raw
        self.path = path

    @staticmethod
    def _join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def at(self, key: str) -> str:
        return self._join(self.path, key)

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def string(self, key: str, default: str | None = None, pattern: re.Pattern[str] = _NAME) -> str:
        value = self.raw.get(key, default)
        if not isinstance(value, str) or not pattern.match(value):
            raise ConfigError(self.at(key), f"must be a string matching {pattern.pattern}, got {value!r}")
        return value

    def number(self, key: str, default: float | None = None, *, low: float = 0.0, high: float | None = None,
               low_open: bool = False) -> float:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ConfigError(self.at(key), f"must be a number, got {value!r}")
        if value < low or (low_open and value == low) or (high is not None and value > high):
            bound = f"in [{low:g}, {high:g}]" if high is not None else (f"> {low:g}" if low_open else f">= {low:g}")
            raise ConfigError(self.at(key), f"must be {bound}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int, *, low: int) -> int:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(self.at(key), f"must be an integer >= {low}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.at(key), f"must be true or false, got {value!r}")
        return value

    def names(self, key: str) -> tuple[str, ...]:
        value = self.raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and _NAME.match(v) for v in value):
            raise ConfigError(self.at(key), f"must be a list of names matching {_NAME.pattern}, got {value!r}")
        return tuple(value)

    def model_key(self, key: object) -> str:
        if not isinstance(key, str) or not _NAME.match(key):
            raise ConfigError(self.at(str(key)), f"model names must match {_NAME.pattern}")
        return key

    def section(self, key: str, allowed: Sequence[str]) -> _Fields:
        return _Fields(self.raw.get(key) or {}, self.at(key), allowed)


def _cascade(fields: _Fields) -> CascadeConfig:
    try:
        router = RouterKind(fields.raw.get("router", "confidence"))
    except ValueError:
        kinds = ", ".join(kind.value for kind in RouterKind)
        raise ConfigError(fields.at("router"), f"must be one of {kinds}, got {fields.raw.get('router')!r}") from None
    light, heavy = fields.string("light"), fields.string("heavy")
    if light == heavy:
        raise ConfigError(fields.at("heavy"), f"must differ from light ({light!r})")
    discriminator = fields.string("discriminator") if fields.has("discriminator") else None
    pre = fields.number("preRouteThreshold", high=1.0) if fields.has("preRouteThreshold") else None
    if router is RouterKind.DISCRIMINATOR and discriminator is None:
        raise ConfigError(fields.at("discriminator"), "the discriminator router needs a discriminator model")
    if router in (RouterKind.CONFIDENCE, RouterKind.PROMPT) and discriminator is not None:
        raise ConfigError(fields.at("discriminator"), f"not used by the {router.value} router; set it to null")
    prompt_like = router in (RouterKind.PROMPT, RouterKind.HYBRID)
    if prompt_like and pre is None:
        raise ConfigError(fields.at("preRouteThreshold"), f"the {router.value} router needs a preRouteThreshold")
    if not prompt_like and pre is not None:
        raise ConfigError(fields.at("preRouteThreshold"), f"not used by the {router.value} router; set it to null")
    scorer = fields.string("scorer") if fields.has("scorer") else None
    if scorer is not None and router is not RouterKind.PROMPT:
        raise ConfigError(fields.at("scorer"), f"not used by the {router.value} router (only by prompt); "
                                               "set it to null")
    if scorer is not None and scorer in (light, heavy):
        raise ConfigError(fields.at("scorer"), f"must differ from light and heavy ({scorer!r})")
    return CascadeConfig(light, heavy, router, fields.number("threshold", high=1.0), discriminator, pre, scorer)


def _inputs(fields: _Fields, depends_on: tuple[str, ...]) -> tuple[StageInput, ...]:
    raw = fields.raw.get("inputs", [REQUEST_INPUT])
    if not isinstance(raw, list) or not raw:
        raise ConfigError(fields.at("inputs"), "must be a non-empty list")
    pieces = []
    for i, text in enumerate(raw):
        path = f"{fields.at('inputs')}[{i}]"
        if text == REQUEST_INPUT:
            pieces.append(StageInput())
            continue
        if not isinstance(text, str):
            raise ConfigError(path, f"must be {REQUEST_INPUT!r}, a stage name or '<stage>.<OUTPUT>'")
        parents = [d for d in depends_on if text == d or text.startswith(d + ".")]
        if not parents:
            raise ConfigError(path, f"{text!r} reads no stage of dependsOn ({', '.join(depends_on) or 'none'})")
        parent = max(parents, key=len)
        output = text[len(parent) + 1:] or PRIMARY_OUTPUT
        if not _OUTPUT.match(output):
            raise ConfigError(path, f"output names must match {_OUTPUT.pattern}, got {output!r}")
        pieces.append(StageInput(parent, output))
    return tuple(pieces)


def _stage(raw: object, path: str) -> StageConfig:
    fields = _Fields(raw, path, ("name", "dependsOn", "inputs", "latencyMs", "variants", "cascade"))
    name = fields.string("name")
    depends_on = fields.names("dependsOn")
    inputs = _inputs(fields, depends_on)
    latency_ms = (fields.number("latencyMs", high=3_600_000.0) if fields.raw.get("latencyMs") is not None
                  else None)
    cascade = _cascade(fields.section("cascade", _CASCADE_KEYS)) if fields.has("cascade") else None
    weights = fields.raw.get("variants") or {}
    if not isinstance(weights, Mapping):
        raise ConfigError(fields.at("variants"), "must be an object of model name to weight")
    variant_fields = _Fields(weights, fields.at("variants"), tuple(weights))
    variants = tuple((variant_fields.model_key(model), variant_fields.number(model)) for model in weights)
    if cascade is None:
        if not variants:
            raise ConfigError(fields.at("variants"), "a stage without a cascade needs at least one variant")
        if sum(weight for _, weight in variants) <= 0:
            raise ConfigError(fields.at("variants"), "weights must have a positive total")
    else:
        own = {cascade.light, cascade.heavy, cascade.discriminator, cascade.scorer}
        for model, _ in variants:
            if model not in own:
                raise ConfigError(variant_fields.at(model), "a cascade stage may only list its cascade's models")
    return StageConfig(name, depends_on, variants, cascade, inputs, latency_ms)


def _ahead_ms(stages: Sequence[StageConfig], order: Sequence[str]) -> dict[str, float]:
    """Each stage's planned latency to the end of the pipeline (longest path to a sink, itself included)."""
    children: dict[str, list[str]] = {stage.name: [] for stage in stages}
    for stage in stages:
        for parent in stage.depends_on:
            children[parent].append(stage.name)
    by_name = {stage.name: stage for stage in stages}
    ahead: dict[str, float] = {}
    for name in reversed(order):
        own = by_name[name].latency_ms or 0.0
        ahead[name] = own + max((ahead[child] for child in children[name]), default=0.0)
    return ahead


def _upstreams(fields: _Fields, needed: Sequence[str], default: Sequence[str]) -> dict[str, tuple[str, ...]]:
    raw = fields.raw.get("upstreams") or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(fields.at("upstreams"), "must be an object of model name to a list of base URLs")
    upstreams: dict[str, tuple[str, ...]] = {}
    for model, urls in raw.items():
        path = f"{fields.at('upstreams')}.{model}"
        if not _NAME.match(str(model)):
            raise ConfigError(path, f"model names must match {_NAME.pattern}")
        if not isinstance(urls, list) or not urls:
            raise ConfigError(path, f"must be a non-empty list of base URLs, got {urls!r}")
        upstreams[model] = tuple(base_url(url, f"{path}[{i}]") for i, url in enumerate(urls))
    for model in needed:
        if model not in upstreams:
            if not default:
                raise ConfigError(f"{fields.at('upstreams')}.{model}", "a model the stages use has no upstream")
            upstreams[model] = tuple(base_url(url, "--upstream") for url in default)
    return upstreams


def base_url(url: object, path: str) -> str:
    """``url`` as an upstream base URL (trailing ``/`` dropped), or :class:`ConfigError` on ``path``."""
    text = url if isinstance(url, str) and url.isascii() and url.isprintable() and " " not in url else None
    parts = urlsplit(text) if text is not None else None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query
            or parts.fragment or "?" in str(text) or "#" in str(text)):
        raise ConfigError(path, f"must be an http(s) base URL like http://127.0.0.1:8000, got {url!r}")
    if "@" in parts.netloc:
        raise ConfigError(path, "must not carry credentials (user:password@)")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigError(path, f"has a malformed port: {url!r}") from None
    return str(text).rstrip("/")


def origin(url: str) -> str:
    """``scheme://host:port`` of a base URL (default ports made explicit, host lower-cased)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def origins(config: RouterConfig) -> frozenset[str]:
    """Every upstream origin ``config`` names (what live updates may use)."""
    return frozenset(origin(url) for urls in config.upstreams.values() for url in urls)


def local_models(config: RouterConfig, triton_url: str) -> frozenset[str]:
    """The models ``config`` serves from the Triton at ``triton_url`` (the pod's own: ``/admin/worker``'s)."""
    own = origin(triton_url)
    return frozenset(model for model, urls in config.upstreams.items() if any(origin(url) == own for url in urls))


def parse_config(raw: object, *, default_upstreams: Sequence[str] = ()) -> RouterConfig:
    """Validate a decoded JSON config; ``default_upstreams`` serve models that ``upstreams`` omits."""
    fields = _Fields(raw, "", _TOP_KEYS)
    stages_raw = fields.raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError("stages", "must be a non-empty list of stages")
    stages = tuple(_stage(stage, f"stages[{i}]") for i, stage in enumerate(stages_raw))
    seen: set[str] = set()
    for i, stage in enumerate(stages):
        if stage.name in seen:
            raise ConfigError(f"stages[{i}].name", f"duplicate stage name {stage.name!r}")
        seen.add(stage.name)
    try:
        order = topological_order({stage.name: stage.depends_on for stage in stages})
    except ValueError as exc:
        index = next(i for i, stage in enumerate(stages) if repr(stage.name) in str(exc))
        raise ConfigError(f"stages[{index}].dependsOn", str(exc)) from None
    needed = [model for stage in stages for model in stage.models()]
    queue = fields.section("queue", ("maxSize", "concurrency", "order"))
    queue_order = queue.raw.get("order", "slack")
    if queue_order not in QUEUE_ORDERS:
        raise ConfigError("queue.order", f"must be one of {', '.join(QUEUE_ORDERS)}, got {queue_order!r}")
    fallback = fields.section("fallback", ("heavyToLight", "lightToHeavy", "otherVariants"))
    timeouts = fields.section("timeouts", ("connectMs", "readMs", "writeMs", "poolMs", "defaultDeadlineMs"))
    limits = fields.section("limits", ("maxConnections", "maxKeepaliveConnections", "keepaliveExpiryS"))
    transport = fields.raw.get("transport", "fast")
    if transport not in ("fast", "httpx"):
        raise ConfigError("transport", f"must be 'fast' or 'httpx', got {transport!r}")
    return RouterConfig(
        pipeline=fields.string("pipeline"),
        stages=stages,
        upstreams=MappingProxyType(_upstreams(fields, needed, default_upstreams)),
        deadline_header=fields.string("deadlineHeader", DEFAULT_DEADLINE_HEADER, _HEADER),
        slo_ms=fields.number("sloMs", low_open=True) if fields.has("sloMs") else None,
        queue=QueueConfig(queue.integer("maxSize", 1024, low=1), queue.integer("concurrency", 64, low=1),
                          str(queue_order)),
        fallback=FallbackConfig(fallback.boolean("heavyToLight", True), fallback.boolean("lightToHeavy", True),
                                fallback.boolean("otherVariants", True)),
        timeouts=TimeoutConfig(
            connect_ms=timeouts.number("connectMs", 1000.0, low_open=True),
            read_ms=timeouts.number("readMs", 30000.0, low_open=True),
            write_ms=timeouts.number("writeMs", 5000.0, low_open=True),
            pool_ms=timeouts.number("poolMs", 5000.0, low_open=True),
            default_deadline_ms=(timeouts.number("defaultDeadlineMs", low_open=True)
                                 if timeouts.has("defaultDeadlineMs") else None),
        ),
        limits=LimitsConfig(limits.integer("maxConnections", 64, low=1),
                            limits.integer("maxKeepaliveConnections", 64, low=0),
                            limits.number("keepaliveExpiryS", 30.0)),
        transport=str(transport),
        order=order,
        by_name=MappingProxyType({stage.name: stage for stage in stages}),
        ahead_ms=MappingProxyType(_ahead_ms(stages, order)),
    )


def load_config_text(text: str, *, default_upstreams: Sequence[str] = ()) -> RouterConfig:
    """Parse a JSON document (a JSON syntax error is a :class:`ConfigError` on ``config``)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("config", f"not valid JSON: {exc}") from None
    return parse_config(raw, default_upstreams=default_upstreams)


def config_to_json(config: RouterConfig) -> dict[str, Any]:
    """The JSON form of ``config`` (what ``GET /admin/config`` returns; parses back to an equal config)."""
    def stage(s: StageConfig) -> dict[str, Any]:
        out: dict[str, Any] = {"name": s.name, "dependsOn": list(s.depends_on),
                               "inputs": [piece.text for piece in s.inputs], "latencyMs": s.latency_ms,
                               "variants": dict(s.variants)}
        c = s.cascade
        out["cascade"] = None if c is None else {
            "light": c.light, "heavy": c.heavy, "router": c.router.value, "threshold": c.threshold,
            "discriminator": c.discriminator, "preRouteThreshold": c.pre_route_threshold, "scorer": c.scorer}
        return out

    t, q, f, lim = config.timeouts, config.queue, config.fallback, config.limits
    return {
        "pipeline": config.pipeline,
        "stages": [stage(s) for s in config.stages],
        "upstreams": {model: list(urls) for model, urls in config.upstreams.items()},
        "deadlineHeader": config.deadline_header,
        "sloMs": config.slo_ms,
        "queue": {"maxSize": q.max_size, "concurrency": q.concurrency, "order": q.order},
        "fallback": {"heavyToLight": f.heavy_to_light, "lightToHeavy": f.light_to_heavy,
                     "otherVariants": f.other_variants},
        "timeouts": {"connectMs": t.connect_ms, "readMs": t.read_ms, "writeMs": t.write_ms, "poolMs": t.pool_ms,
                     "defaultDeadlineMs": t.default_deadline_ms},
        "limits": {"maxConnections": lim.max_connections, "maxKeepaliveConnections": lim.max_keepalive_connections,
                   "keepaliveExpiryS": lim.keepalive_expiry_s},
        "transport": config.transport,
    }


def _refuse_unknown(raw: Mapping[str, Any], path: str, live: Sequence[str]) -> None:
    for key in raw:
        if key not in live:
            where = f"{path}.{key}" if path else str(key)
            allowed = ", ".join(live)
            raise ConfigError(where, f"cannot be changed live (live fields: {allowed}); restart with a new config")


def apply_update(config: RouterConfig, patch: object, *,
                 allowed_origins: frozenset[str] | None = None) -> RouterConfig:
    """``config`` with a partial update applied, fully re-validated; ``config`` itself is unchanged.

    ``patch`` may hold ``stages`` (a list of ``{"name", "variants"?, "cascade": {"threshold"?,
    "preRouteThreshold"?}?}``; ``variants`` replaces the stage's whole weight map), ``upstreams``
    (model -> replica list, replacing that model's list; ``null`` drops a model no stage uses) and
    ``fallback`` flags. With ``allowed_origins``, every upstream URL in the patch must have one of these
    origins. Errors name the field as written in the patch.
    """
    if not isinstance(patch, Mapping):
        raise ConfigError("config", f"an update must be an object, got {type(patch).__name__}")
    _refuse_unknown(patch, "", _LIVE_TOP_KEYS)
    raw = config_to_json(config)
    index_of = {stage["name"]: i for i, stage in enumerate(raw["stages"])}
    patched: dict[int, int] = {}
    stages = patch.get("stages", [])
    if not isinstance(stages, list):
        raise ConfigError("stages", "must be a list of stage updates")
    for i, update in enumerate(stages):
        path = f"stages[{i}]"
        if not isinstance(update, Mapping):
            raise ConfigError(path, "must be an object")
        _refuse_unknown(update, path, _LIVE_STAGE_KEYS)
        name = update.get("name")
        if name not in index_of:
            raise ConfigError(f"{path}.name", f"no stage named {name!r} (stages: {', '.join(index_of)})")
        target = raw["stages"][index_of[name]]
        patched[index_of[name]] = i
        if "variants" in update:
            target["variants"] = update["variants"]
        if "latencyMs" in update:
            target["latencyMs"] = update["latencyMs"]
        if "cascade" in update:
            cascade = update["cascade"]
            if not isinstance(cascade, Mapping):
                raise ConfigError(f"{path}.cascade", "must be an object")
            _refuse_unknown(cascade, f"{path}.cascade", _LIVE_CASCADE_KEYS)
            if target["cascade"] is None:
                raise ConfigError(f"{path}.cascade", f"stage {name!r} has no cascade")
            target["cascade"].update(cascade)
    upstreams = patch.get("upstreams", {})
    if not isinstance(upstreams, Mapping):
        raise ConfigError("upstreams", "must be an object of model name to a list of base URLs")
    for model, urls in upstreams.items():
        if urls is None:
            raw["upstreams"].pop(model, None)
            continue
        if allowed_origins is not None and isinstance(urls, list):
            for i, url in enumerate(urls):
                path = f"upstreams.{model}[{i}]"
                if origin(base_url(url, path)) not in allowed_origins:
                    raise ConfigError(path, "not an upstream origin of this router's config file "
                                            "(live updates may only rearrange the configured upstreams)")
        raw["upstreams"][model] = urls
    fallback = patch.get("fallback", {})
    if not isinstance(fallback, Mapping):
        raise ConfigError("fallback", "must be an object")
    raw["fallback"].update(fallback)
    try:
        return parse_config(raw)
    except ConfigError as exc:
        match = re.match(r"^stages\[(\d+)\]", exc.field)
        if match and int(match.group(1)) in patched:
            field = f"stages[{patched[int(match.group(1))]}]{exc.field[match.end():]}"
            raise ConfigError(field, exc.detail) from None
        raise
