"""The configuration schema: frozen pydantic models, validated once at start.

Every key is documented in ``config/graygate.example.yaml``; this module is the one that
decides what is valid. Unknown keys are errors (``extra="forbid"``), so a typo never
silently turns into a default.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from yarl import URL

__all__ = [
    "KNOWN_METHODS",
    "SIDE_EFFECT_METHODS",
    "WRITE_ENDPOINT_PREFIX",
    "AdminConfig",
    "AdminToken",
    "ArrayRule",
    "BodiesConfig",
    "CompareConfig",
    "DatabaseConfig",
    "EjectConfig",
    "EndpointRules",
    "GrayConfig",
    "GraygateConfig",
    "HeaderRules",
    "JudgingConfig",
    "LatencyConfig",
    "ListenLimits",
    "LogConfig",
    "MetricsConfig",
    "MirrorConfig",
    "NoiseConfig",
    "PreflightConfig",
    "RecordConfig",
    "RedactConfig",
    "RuleSpec",
    "RuntimeConfig",
    "RuntimeSource",
    "ServeRule",
    "ShutdownConfig",
    "TimeoutsConfig",
    "Tolerance",
    "TracingConfig",
    "UpstreamsConfig",
    "VerdictConfig",
    "VersionsConfig",
    "WaiverSpec",
    "WriteCheck",
    "WriteRules",
    "WriteSide",
    "check_database_url",
    "is_loopback_listen",
    "parse_listen",
]

SIDE_EFFECT_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT", "POST", "PUT", "PATCH", "DELETE"}
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def parse_listen(value: str) -> tuple[str, int]:
    """``"host:port"`` (``[::1]:port`` for IPv6) into its parts; ValueError names the fault."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ValueError(f"expected host:port, got {value!r}")
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0-65535")
    host = host.strip("[]") or "0.0.0.0"
    return host, port


def is_loopback_listen(value: str) -> bool:
    """Whether a ``host:port`` listens on loopback only (``127.0.0.0/8``, ``::1``,
    ``localhost``); any other host, ``0.0.0.0`` and ``::`` included, is reachable from
    outside."""
    host, _ = parse_listen(value)
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _check_listen(value: str) -> str:
    parse_listen(value)
    return value


def _check_http_url(value: str) -> str:
    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http:// or https:// URL with a host")
    if url.raw_user is not None or url.raw_password is not None:
        # It would be sent as part of the Host header and stored with the run: refuse it.
        raise ValueError(
            "must not carry credentials (user:password@): graygate does not send them "
            "upstream; let the client's own Authorization header through instead"
        )
    if url.query_string or url.fragment:
        raise ValueError("must not carry a query string or fragment")
    return str(url).rstrip("/")


Listen = Annotated[str, Field(description="host:port")]
HttpUrl = Annotated[str, Field(description="absolute http(s) URL")]


class AdminToken(_Frozen):
    """A named admin token: ``read`` opens the verdicts and reports; ``write`` also the
    changes (waivers, closing, deleting, re-judging). Its name is the ``by`` of the audit
    trail."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    role: Literal["read", "write"] = "read"
    token_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    # Filled from the environment variable named by token_env at load; never from the file.
    token: str | None = Field(default=None, exclude=True, repr=False)


class AdminConfig(_Frozen):
    listen: Listen = "127.0.0.1:9090"
    token_env: str = "GRAYGATE_ADMIN_TOKEN"
    # Serve the admin API on a non-loopback address without a token: refused unless true.
    allow_open: bool = False
    # Filled from the environment variable named by token_env at load; never from the file.
    # It is the one write token, named "admin".
    token: str | None = Field(default=None, exclude=True, repr=False)
    # Named tokens with a role: [{name: ci, role: read, token_env: GRAYGATE_CI_TOKEN}].
    tokens: tuple[AdminToken, ...] = Field(default=(), max_length=100)

    _v_listen = field_validator("listen")(_check_listen)

    @model_validator(mode="after")
    def _distinct(self) -> AdminConfig:
        names = [t.name for t in self.tokens]
        if "admin" in names or len(set(names)) != len(names):
            raise ValueError(
                "tokens: every name must be distinct and not 'admin' (the token_env token)"
            )
        return self

    @property
    def any_token(self) -> bool:
        """Whether any admin token is set (the one token, or a named one)."""
        return bool(self.token) or any(t.token for t in self.tokens)


def check_database_url(value: str) -> str:
    """A PostgreSQL URL, checked whole (host, port in range, a database name), as
    ``postgresql+asyncpg://...``; ValueError names the fault (never the password)."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise ValueError("must be a postgresql:// or postgresql+asyncpg:// URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError when out of range or not a number
        _ = parts.hostname
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    query = parse_qs(parts.query)
    if not parts.path.strip("/") and not (query.get("dbname") or query.get("database")):
        raise ValueError(
            "names no database: add /DBNAME (e.g. postgresql://postgres@127.0.0.1:5432/graygate)"
        )
    return "postgresql+asyncpg://" + rest


class DatabaseConfig(_Frozen):
    url: str | None = None
    pool_size: int = Field(default=10, ge=1, le=500)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        return check_database_url(value)


class UpstreamsConfig(_Frozen):
    primary: HttpUrl
    canary: HttpUrl
    secondary: HttpUrl | None = None
    timeout_ms: int = Field(default=30_000, gt=0, le=3_600_000)
    connect_timeout_ms: int = Field(default=2_000, gt=0, le=600_000)
    max_connections: int = Field(default=512, ge=1, le=65_536)
    # An answer's head (status line, header fields, interim 1xx heads; trailers and chunk
    # framing too): beyond either bound the answer is an error (502 when serving) and its
    # connection dropped. As Envoy's default (60 KiB); each mirror reads at most this much
    # of a canary's head, so a hostile canary costs the proxy little.
    max_head_bytes: int = Field(default=65_536, ge=1_024, le=16_777_216)
    max_head_fields: int = Field(default=1_000, ge=10, le=100_000)
    # The Host header each upstream gets: absent, the client's (as Envoy and Caddy do);
    # "upstream", the upstream's own host:port; else the value given.
    host_header: dict[Literal["primary", "canary", "secondary"], str] = Field(default_factory=dict)

    _v_urls = field_validator("primary", "canary", "secondary")(
        lambda v: None if v is None else _check_http_url(v)
    )

    @field_validator("host_header")
    @classmethod
    def _host_values(cls, value: dict[str, str]) -> dict[str, str]:
        for role, host in value.items():
            if not host or any(c in host for c in " \t\r\n/"):
                raise ValueError(f"{role}: {host!r} is not a host[:port] (or 'upstream')")
        return value


class ListenLimits(_Frozen):
    """What the proxied port accepts of a request's head; beyond, 414 (target) or 431
    (header fields). The defaults are no stricter than Envoy's (60 KiB of request headers,
    100 fields, a field up to the total)."""

    max_line_bytes: int = Field(default=65_536, ge=256, le=16_777_216)  # the request target
    max_field_bytes: int = Field(default=61_440, ge=256, le=16_777_216)  # a name, a value
    max_header_bytes: int = Field(default=61_440, ge=256, le=16_777_216)  # all names + values
    max_headers: int = Field(default=100, ge=1, le=100_000)
    # Client connections one process holds open; at the cap, the connection idle the
    # longest (keep-alive, or a head not yet complete) is closed for a new one, and a new
    # one is closed at once when none is idle.
    max_connections: int = Field(default=10_000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _field_within_total(self) -> ListenLimits:
        if self.max_field_bytes > self.max_header_bytes:
            raise ValueError(
                f"max_field_bytes ({self.max_field_bytes}) is more than max_header_bytes "
                f"({self.max_header_bytes})"
            )
        return self


class TimeoutsConfig(_Frozen):
    """The proxied port's time bounds toward clients (seconds)."""

    # A request's head, from its first byte to its empty line; then the connection closes.
    client_header_s: float = Field(default=10.0, gt=0.0, le=3_600.0)
    # A keep-alive connection with no request (and a new one before its first request).
    keepalive_s: float = Field(default=75.0, gt=0.0, le=86_400.0)
    # Each wait for a client to take the answer's bytes (as nginx's send_timeout): a client
    # that reads nothing for this long is cut off and the upstream connection released.
    client_write_s: float = Field(default=30.0, gt=0.0, le=3_600.0)


class EjectConfig(_Frozen):
    """Outlier ejection of a mirror target (as Envoy's ``consecutive_5xx`` / local-origin
    failures): after ``consecutive`` broken answers in a row from an upstream the mirror
    sends to (a malformed answer or one whose head passes the bounds, a reset, a refused
    connect), mirrors to it are skipped (``ejected``) for ``base_ms``; each ejection that
    follows without a sound answer in between doubles that, up to ``max_ms``. The first
    mirror after an ejection is a probe: broken, ejected again at once. ``consecutive: 0``
    never ejects."""

    consecutive: int = Field(default=5, ge=0, le=1_000)
    base_ms: int = Field(default=1_000, ge=10, le=3_600_000)
    max_ms: int = Field(default=60_000, ge=10, le=3_600_000)

    @model_validator(mode="after")
    def _order(self) -> EjectConfig:
        if self.max_ms < self.base_ms:
            raise ValueError(f"max_ms ({self.max_ms}) is less than base_ms ({self.base_ms})")
        return self


class MirrorConfig(_Frozen):
    enabled: bool = True
    sample: float = Field(default=1.0, ge=0.0, le=1.0)
    methods: tuple[str, ...] | None = None
    allow_side_effects: bool = False
    max_body_bytes: int = Field(default=1_048_576, ge=0, le=67_108_864)
    timeout_ms: int = Field(default=2_000, gt=0, le=600_000)
    max_in_flight: int = Field(default=256, ge=1, le=65_536)
    eject: EjectConfig = Field(default_factory=EjectConfig)

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        upper = tuple(m.upper() for m in value)
        for m in upper:
            if m not in KNOWN_METHODS:
                raise ValueError(f"unknown HTTP method {m!r}")
        return upper

    @model_validator(mode="after")
    def _side_effects(self) -> MirrorConfig:
        if self.methods is not None and not self.allow_side_effects:
            unsafe = sorted(set(self.methods) & SIDE_EFFECT_METHODS)
            if unsafe:
                raise ValueError(
                    f"methods {unsafe} have side effects; set mirror.allow_side_effects: true "
                    "to mirror them"
                )
        return self

    @property
    def mirrored_methods(self) -> frozenset[str]:
        """The methods that are mirrored, after applying ``allow_side_effects``."""
        if self.methods is not None:
            return frozenset(self.methods)
        if self.allow_side_effects:
            return KNOWN_METHODS - {"CONNECT", "TRACE"}
        return frozenset({"GET", "HEAD", "OPTIONS"})


class ServeRule(_Frozen):
    """One condition under which the canary serves; every key given must hold."""

    label: str | None = None  # the request's gray label equals this
    header: str | None = None  # this header ...
    equals: str | None = None  # ... equals this (absent: is present)
    cookie: str | None = None  # this cookie ...
    cookie_equals: str | None = None  # ... equals this (absent: is present)
    percent: float | None = Field(default=None, ge=0.0, le=100.0)
    sticky: str | None = None  # header whose value is hashed for percent (one user, one side)
    sticky_cookie: str | None = None  # cookie whose value is hashed for percent

    @model_validator(mode="after")
    def _shape(self) -> ServeRule:
        if (
            self.label is None
            and self.header is None
            and self.cookie is None
            and self.percent is None
        ):
            raise ValueError("a serve_canary rule needs label, header, cookie or percent")
        if self.equals is not None and self.header is None:
            raise ValueError("equals needs header")
        if self.cookie_equals is not None and self.cookie is None:
            raise ValueError("cookie_equals needs cookie")
        if (self.sticky or self.sticky_cookie) and self.percent is None:
            raise ValueError("sticky needs percent")
        return self


def _default_labels() -> dict[Literal["primary", "canary"], str]:
    return {"primary": "stable", "canary": "canary"}


class GrayConfig(_Frozen):
    header: str = "X-Gray-Tag"
    # Label given to a request that arrives without one, by the side that serves it.
    labels: dict[Literal["primary", "canary"], str] = Field(default_factory=_default_labels)
    serve_canary: tuple[ServeRule, ...] = ()


class Tolerance(_Frozen):
    abs: float | None = Field(default=None, ge=0.0, le=1e15)
    rel: float | None = Field(default=None, ge=0.0, le=1e6)

    @model_validator(mode="after")
    def _one(self) -> Tolerance:
        if self.abs is None and self.rel is None:
            raise ValueError("a tolerance needs abs or rel")
        return self


class ArrayRule(_Frozen):
    key: str | None = None  # elements matched by this field (keyed array)
    unordered: bool = False  # compared as multisets

    @model_validator(mode="after")
    def _one(self) -> ArrayRule:
        if self.key is None and not self.unordered:
            raise ValueError("an array rule needs key or unordered: true")
        return self


class HeaderRules(_Frozen):
    strict: tuple[str, ...] | None = None
    ignore: tuple[str, ...] | None = None

    _v_lower = field_validator("strict", "ignore")(
        lambda v: None if v is None else tuple(h.lower() for h in v)
    )


class RuleSpec(_Frozen):
    """Rules for an endpoint; in ``compare.defaults`` they apply to every endpoint.

    An endpoint's lists add to the defaults'; its maps and scalars override them.
    """

    default: Literal["strict", "ignore"] | None = None  # fields not named: strict or ignored
    strict: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    tolerance: dict[str, Tolerance] = Field(default_factory=dict)
    arrays: dict[str, ArrayRule] = Field(default_factory=dict)
    status: Literal["strict", "ignore"] | None = None
    headers: HeaderRules | None = None
    body: Literal["auto", "json", "text", "bytes"] | None = None


class EndpointRules(RuleSpec):
    match: str  # "METHOD /path/{param}"; METHOD may be * for any

    @field_validator("match")
    @classmethod
    def _match(cls, value: str) -> str:
        method, _, path = value.strip().partition(" ")
        path = path.strip()
        if not method or not path.startswith("/"):
            raise ValueError("expected 'METHOD /path/{param}'")
        if method != "*" and method.upper() not in KNOWN_METHODS:
            raise ValueError(f"unknown HTTP method {method!r}")
        return f"{method.upper()} {path}"


class NoiseConfig(_Frozen):
    # Diffy's rule: a field is reported only where the canary's difference rate exceeds
    # the primary-vs-secondary rate by both margins.
    relative: float = Field(default=0.2, ge=0.0, le=100.0)
    absolute: float = Field(default=0.0003, ge=0.0, le=1.0)
    # Pairs with a secondary an endpoint needs before any of its fields can be noise.
    min_secondary_pairs: int = Field(default=20, ge=1, le=1_000_000)


# The pseudo-endpoint of a write check: "WRITE stock_moves".
WRITE_ENDPOINT_PREFIX = "WRITE "
_WRITE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class WriteRules(_Frozen):
    """A write check's comparison rules (derived from ``writes:``; never written by hand):
    the rows of both sides as a JSON array of objects, paired by ``key`` or by position."""

    name: str = Field(pattern=_WRITE_NAME)
    key: str | None = None
    strict: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    tolerance: dict[str, Tolerance] = Field(default_factory=dict)
    methods: tuple[str, ...] = ("POST", "PUT", "PATCH", "DELETE")  # the exchanges checked

    @property
    def endpoint(self) -> str:
        return WRITE_ENDPOINT_PREFIX + self.name


class CompareConfig(_Frozen):
    defaults: RuleSpec = Field(default_factory=RuleSpec)
    endpoints: tuple[EndpointRules, ...] = ()
    # Filled from the top-level ``writes:`` (one per write check), so that every RuleBook
    # compiled from a stored ``compare`` section judges the WRITE pseudo-endpoints alike.
    writes: tuple[WriteRules, ...] = Field(default=(), max_length=64)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    max_body_bytes: int = Field(default=1_048_576, ge=0, le=268_435_456)


class RedactConfig(_Frozen):
    headers: tuple[str, ...] = ()  # in addition to authorization, cookie, set-cookie, ...
    json_fields: tuple[str, ...] = ()  # JSON paths whose values are replaced
    placeholder: str = Field(default="[REDACTED]", max_length=256)
    # Stored headers of one request or answer, in all (names and values); beyond: left out
    # and counted.
    max_header_bytes: int = Field(default=65_536, ge=1_024, le=1_048_576)

    _v_lower = field_validator("headers")(lambda v: tuple(h.lower() for h in v))


class BodiesConfig(_Frozen):
    """``record.bodies``: which answers' bodies are stored. ``sample`` is the fraction of
    exchanges whose bodies are kept in full (0 < sample <= 1, chosen at random per
    exchange); for the others each body is replaced by its sha256, and the judge compares
    the digests (equal: equal bodies; unequal: the pair is ``unjudgeable``). With
    ``keep_differing`` (the default) bodies whose digests differ are kept anyway, so every
    pair that differs is still judged in full and only equal bodies are reduced to digests.
    Empty and truncated bodies and the request's body are always kept."""

    sample: float = Field(default=1.0, gt=0.0, le=1.0)
    keep_differing: bool = True


class RecordConfig(_Frozen):
    queue_size: int = Field(default=20_000, ge=1, le=10_000_000)
    batch_size: int = Field(default=500, ge=1, le=100_000)
    flush_interval_ms: int = Field(default=200, gt=0, le=60_000)
    max_body_bytes: int = Field(default=262_144, ge=0, le=67_108_864)
    spill_dir: str | None = None  # default: under the data directory
    spill_max_bytes: int = Field(default=1_073_741_824, ge=0, le=1_099_511_627_776)
    bodies: BodiesConfig = Field(default_factory=BodiesConfig)


class LatencyConfig(_Frozen):
    max_increase: float = Field(default=0.05, ge=0.0, le=100.0)
    alpha: float = Field(default=0.01, gt=0.0, lt=1.0)  # Mann-Whitney significance level
    min_samples: int = Field(default=50, ge=1, le=1_000_000)
    # A shift smaller than this many milliseconds is never a regression (a 2 ms endpoint
    # 0.3 ms slower passes whatever the ratio).
    min_increase_ms: float = Field(default=0.5, ge=0.0, le=60_000.0)
    # Each endpoint with min_samples timed pairs is judged on its own; endpoints with fewer
    # (too little traffic, or answers not timed) are reported, and make the check
    # INCONCLUSIVE when they carry more than this share of the answered pairs.
    max_unjudged_share: float = Field(default=0.05, ge=0.0, le=1.0)
    # When set, the latency check is off and says why (a replay run: the new build ran on
    # another host at another time than the recorded primary); the only way to a GO
    # without latency judged.
    skip: str | None = Field(default=None, max_length=500)


class VerdictConfig(_Frozen):
    min_pairs: int = Field(default=200, ge=0, le=100_000_000)
    min_pairs_per_endpoint: int = Field(default=20, ge=0, le=100_000_000)
    max_strict_mismatch_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    max_tolerance_violation_rate: float = Field(default=0.001, ge=0.0, le=1.0)
    max_error_rate_increase: float = Field(default=0.0, ge=0.0, le=1.0)
    max_unrecorded_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    # Recorded exchanges not judged yet, over those recorded: above this, no GO.
    max_backlog_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    # share of compared exchanges (pairs + unjudgeable) a truncated body left unjudged above
    # which the verdict is INCONCLUSIVE (never GO)
    max_unjudgeable_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    # Write checks that could not run (database away, query error, timeout) / write checks
    # attempted; above it the verdict is INCONCLUSIVE (the ``writes`` check).
    max_write_failure_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)


class RuntimeSource(_Frozen):
    expvar: HttpUrl | None = None  # Go expvar JSON, e.g. http://canary:8082/debug/vars
    prometheus: HttpUrl | None = None  # Go client library metrics, e.g. .../metrics

    _v_urls = field_validator("expvar", "prometheus")(
        lambda v: None if v is None else _check_http_url(v)
    )


class RuntimeConfig(_Frozen):
    canary: RuntimeSource | None = None
    primary: RuntimeSource | None = None
    interval_s: float = Field(default=10.0, gt=0.0, le=3_600.0)
    window_s: float = Field(default=60.0, gt=0.0, le=86_400.0)
    required: bool = False
    gc_pause_budget_ms: float | None = Field(default=None, gt=0.0, le=60_000.0)
    failing_windows: int = Field(default=3, ge=1, le=10_000)
    max_goroutine_growth: float = Field(
        default=0.5, ge=0.0, le=1_000.0
    )  # relative, under steady load
    max_heap_growth: float | None = Field(default=None, ge=0.0, le=1_000.0)
    max_gc_cpu_fraction: float | None = Field(default=None, ge=0.0, le=1.0)


class PreflightConfig(_Frozen):
    enabled: bool = True
    health_path: str = "/healthz"
    timeout_ms: int = Field(default=2_000, gt=0, le=600_000)


class TracingConfig(_Frozen):
    exporter: Literal["none", "console", "otlp"] = "none"
    endpoint: HttpUrl | None = None  # OTLP/HTTP traces endpoint
    service_name: str = "graygate"


class MetricsConfig(_Frozen):
    """The request path's Prometheus series. ``max_endpoints``: distinct values of the
    upstream latency histogram's ``endpoint`` label (configured endpoint templates) per
    process; requests of further templates, and unmatched paths, are counted as ``other``."""

    max_endpoints: int = Field(default=50, ge=1, le=1_000)


class LogConfig(_Frozen):
    """``access``: one log line per proxied request (``graygate serve --access-log``)."""

    access: bool = False


class WaiverSpec(_Frozen):
    """A standing exemption declared in the configuration (reviewed as code): differences
    at ``field`` of the endpoints matching ``endpoint`` (a glob: ``GET /api/orders/*``) are
    waived, of ``kind`` only when given; for this run, or every run matching ``scope``."""

    endpoint: str = Field(min_length=1, max_length=512)
    field: str = Field(min_length=1, max_length=512)
    kind: (
        Literal["value", "type", "missing", "extra", "order", "length", "status", "header", "body"]
        | None
    ) = None
    reason: str = Field(min_length=1, max_length=2_000)
    owner: str = Field(min_length=1, max_length=200)
    scope: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("field")
    @classmethod
    def _field(cls, value: str) -> str:
        if not (
            value.startswith("$") or value in ("status", "body") or value.startswith("header:")
        ):
            raise ValueError(
                f"{value!r} is not a field: a JSON path ($.created_at, $.items[*].price), "
                "status, body or header:NAME"
            )
        return value


# An HTTP field name (RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class VersionsConfig(_Frozen):
    """What the run compares (shown by the report and the API); from the environment too,
    e.g. ``GRAYGATE_VERSIONS_CANARY=2.0.0-rc1`` set by the deployment pipeline. With
    ``header`` (e.g. ``X-Build-Version``), the versions the answers name in that response
    header are recorded too: the first seen of each side is the run's version when none is
    configured, and a side whose version changes during the run is reported."""

    primary: str | None = Field(default=None, min_length=1, max_length=200)
    canary: str | None = Field(default=None, min_length=1, max_length=200)
    header: str | None = Field(default=None, max_length=256)

    @field_validator("header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        if value is not None and not _HEADER_NAME.fullmatch(value):
            raise ValueError("not an HTTP header name (e.g. X-Build-Version)")
        return value

    @field_validator("primary", "canary", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        # YAML reads 1.14 as a number and 2 as an int: a version is text.
        return (
            str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        )


class ShutdownConfig(_Frozen):
    """Rolling updates: on SIGTERM ``/readyz`` answers 503 at once and the proxy keeps
    serving for ``grace_s`` seconds (load balancers and kube-proxy stop sending), then stops
    accepting, finishes in-flight requests and flushes."""

    grace_s: float = Field(default=5.0, ge=0.0, le=300.0)


class WorkersConfig(_Frozen):
    """The diff workers of ``graygate serve``'s worker role. ``nice``: the CPU priority of
    a process that runs them and no proxy (all its threads, the event loop's included) and,
    once more, of the threads that compare pairs, lowered by this much (``nice(1)``'s
    scale: 0 keeps the priority, 19 is the lowest), so that judging a burst of large
    documents yields the CPU to the proxy (and its upstreams) on a shared host instead of
    competing with it."""

    nice: int = Field(default=10, ge=0, le=19)


class WriteSide(_Frozen):
    """One side of a write check: where to read, and the read (``:trace_id`` bound)."""

    url: str = Field(repr=False)  # a secret: censored wherever a configuration is shown
    query: str = Field(min_length=1, max_length=10_000)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_database_url(value)

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        if ":trace_id" not in value:
            raise ValueError("the query must use the parameter :trace_id")
        if ";" in value.strip().rstrip(";"):
            raise ValueError("one statement only (no ';' inside the query)")
        return value.strip().rstrip(";")


class WriteCheck(_Frozen):
    """``writes:`` one shadow-write comparison: after an exchange whose request was mirrored,
    the rows each side wrote (read by trace id) compared under the usual rules, as the
    pseudo-endpoint ``WRITE <name>``. graygate only reads, in READ ONLY transactions."""

    name: str = Field(pattern=_WRITE_NAME)
    primary: WriteSide
    canary: WriteSide
    key: str | None = Field(default=None, min_length=1)  # rows paired by it; else by position
    strict: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    tolerance: dict[str, Tolerance] = Field(default_factory=dict)
    # Only exchanges with these methods are checked (a GET writes nothing to compare).
    methods: tuple[str, ...] = ("POST", "PUT", "PATCH", "DELETE")
    settle_ms: int = Field(default=500, ge=0, le=600_000)
    timeout_ms: int = Field(default=2_000, gt=0, le=600_000)
    max_rows: int = Field(default=1_000, ge=1, le=100_000)

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(m.upper() for m in value)
        bad = [m for m in out if m not in KNOWN_METHODS]
        if bad:
            raise ValueError(f"unknown HTTP method {bad[0]!r}")
        return out

    def rules(self) -> WriteRules:
        return WriteRules(
            name=self.name,
            key=self.key,
            strict=self.strict,
            ignore=self.ignore,
            tolerance=self.tolerance,
            methods=self.methods,
        )


class GraygateConfig(_Frozen):
    run: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    # inline: graygate stands in front of the primary and serves the clients; shadow: it
    # receives a mirrored copy (nginx mirror, Envoy/Istio), answers 202 at once and sends
    # the request to primary and canary itself.
    mode: Literal["inline", "shadow"] = "inline"
    listen: Listen = "0.0.0.0:8080"
    listen_limits: ListenLimits = Field(default_factory=ListenLimits)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    upstreams: UpstreamsConfig
    mirror: MirrorConfig = Field(default_factory=MirrorConfig)
    gray: GrayConfig = Field(default_factory=GrayConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)
    redact: RedactConfig = Field(default_factory=RedactConfig)
    record: RecordConfig = Field(default_factory=RecordConfig)
    verdict: VerdictConfig = Field(default_factory=VerdictConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    preflight: PreflightConfig = Field(default_factory=PreflightConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    # Peers (CIDRs) whose Forwarded / X-Forwarded-* / X-Real-IP / X-Original-URL ... headers
    # are believed; from any other peer they are dropped. Default: nobody.
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = Field(default=(), max_length=1024)
    # Standing exemptions, reviewed as code (see WaiverSpec); they show in the waivers'
    # audit trail as source "config".
    waivers: tuple[WaiverSpec, ...] = Field(default=(), max_length=1_000)
    versions: VersionsConfig = Field(default_factory=VersionsConfig)
    # Shadow-write comparisons (README "Comparing writes").
    writes: tuple[WriteCheck, ...] = Field(default=(), max_length=64)

    _v_listen = field_validator("listen")(_check_listen)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _trusted(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError("must be a list of CIDRs, e.g. [10.0.0.0/8, 127.0.0.1/32]")
        out: list[IPv4Network | IPv6Network] = []
        for item in value:
            try:
                out.append(ip_network(str(item).strip(), strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network (CIDR)") from None
        return out

    @model_validator(mode="after")
    def _writes(self) -> GraygateConfig:
        names = [w.name for w in self.writes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"writes: the name {dup[0]!r} is used twice")
        unmirrored = [
            w.name
            for w in self.writes
            if not set(w.methods) & (self.mirror.mirrored_methods or frozenset())
        ]
        if unmirrored:
            raise ValueError(
                f"writes: {unmirrored[0]!r} checks methods that are never mirrored "
                "(POST/PUT/PATCH/DELETE need mirror.allow_side_effects: true and the "
                "method in mirror.methods)"
            )
        rules = tuple(w.rules() for w in self.writes)
        if rules != self.compare.writes:
            # Frozen: set once here, while validating (the derived section, not user input).
            object.__setattr__(self, "compare", self.compare.model_copy(update={"writes": rules}))
        return self


class JudgingConfig(_Frozen):
    """The sections of a configuration that judge a run (what ``runs.config`` is read for):
    the rules, the verdict's thresholds and the runtime checks."""

    compare: CompareConfig = Field(default_factory=CompareConfig)
    verdict: VerdictConfig = Field(default_factory=VerdictConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
