# -*- test-case-name: tests.test_config -*-
"""
A node's configuration: command-line options merged over an optional TOML
file (C{--config}), validated into one frozen L{NodeConfig}.

Keys of the TOML file (every command-line option, with C{_} for C{-}; the
command line wins where both give a value)::

    node_id = "node1"
    port = 8080                      # or an endpoint string "tcp:8080:interface=..."
    interface = "127.0.0.1"
    add_peer = ["ws://127.0.0.1:8081"]
    app = ["examples/counter.py"]
    disable_registry = false
    secret_file = "/etc/relaytx/secret"
    ping_interval = 5.0              # seconds between keepalive pings on a link
    peer_timeout = 1.25              # seconds a neighbour may leave a ping or call unanswered

    allowed_origins = []             # browser origins allowed on /ws/p2p

    [limits]
    max_body_size = 1048576          # bytes of one HTTP request body (413 past it)
    max_message_size = 1048576       # bytes of one peer WebSocket message (1009 past it)
    max_pending_calls = 10000        # calls this node waits on at once (-32005 past it)
    max_in_flight = 50000            # calls executing here at once (-32005 past it)
    max_in_flight_per_caller = 10000 # ... for one peer or HTTP client (-32005 past it)
    calls_per_second = 0             # calls one caller may start per second; 0: no limit
    max_routes = 10000               # destinations in the routing table (half from one neighbour)
    header_timeout = 10.0            # seconds for an HTTP request's head and body
    idle_timeout = 60.0              # idle keep-alive, unanswered ping, unfinished message
    max_connections = 10000          # connections at once, all clients (closed past it)
    max_connections_per_ip = 1000    # ... from one address (half the above, where less)
    max_write_buffer = 4194304       # unsent bytes a connection may hold before reading pauses
    max_buffered_input = 33554432    # bytes of unfinished messages and bodies, all connections
    max_dialers = 256                # peers dialled at once (--add-peer and peers/add)
    max_batch = 1000                 # requests in one JSON-RPC batch (-32005 past it)

    [http]
    admins = ["ops"]                 # callers allowed on /registry/peers/add and /remove
    allowed_hosts = ["node1.example"]  # Host names accepted besides IP literals and localhost
    [http.tokens]                    # caller name -> SHA-256 hex of its bearer token
    ops = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

    log_format = "text"              # or "json": one JSON object per log line

    [tracing]                        # SPEC section 13; see relaytx._tracing
    exporter = "jsonl"               # or "otlp" (the relaytx[otlp] extra)
    path = "spans.jsonl"             # jsonl: the file each finished span is appended to
    endpoint = "http://localhost:4318/v1/traces"  # otlp: the collector (its default)
    sample = 1.0                     # share of new traces recorded (0-1)
    [tracing.headers]                # otlp: extra HTTP headers for the collector

    [tls]                            # see relaytx._tls
    cert = "node.pem"
    key = "node.key"
    ca = "ca.pem"
    require_client_cert = false

    [balance]                        # SPEC section 11; see relaytx._balance
    default = "nearest"              # or "round_robin", "random", "least_loaded"
    failure_threshold = 5            # consecutive failures that open an instance's circuit
    open_seconds = 5.0               # seconds calls skip it; then one trial call decides
    [balance.servers]                # a policy per server name
    counter_server = "round_robin"

    [access]                         # see relaytx._auth.AccessRules
    default = "allow"
    [[access.rule]]
    callers = ["node2"]
    servers = ["counter_server"]
    methods = ["get"]
    allow = true

Relative paths in the file (an app given as a file, C{secret_file}, the
C{[tls]} files, C{tracing.path}) are relative to the file's own directory; on the command
line, to the working directory. Endpoint strings in C{port} keep Twisted's
own syntax and meaning (their paths are taken from the working directory).

Anything invalid raises L{ConfigError}, whose message is one line for the
operator.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from attrs import evolve, field, frozen
from twisted.internet.endpoints import serverFromString
from twisted.python.usage import UsageError

from relaytx._auth import AccessRules
from relaytx._tls import TlsConfig, TlsError, certified_id
from relaytx.wire import NODE_ID_RE


class ConfigError(UsageError):
    """An option or configuration value is invalid."""


@frozen
class Limits:
    """Sizes and rates past which the node refuses work."""

    max_body_size: int = 1024 * 1024
    max_message_size: int = 1024 * 1024
    #: calls this node waits on at once (its own, all destinations)
    max_pending_calls: int = 10_000
    #: calls executing here at once, all callers
    max_in_flight: int = 50_000
    #: calls executing here at once for one caller (a peer or an HTTP client)
    max_in_flight_per_caller: int = 10_000
    #: calls per second one caller may start (bursts of one second's worth)
    calls_per_second: float = 0.0
    #: destinations one neighbour's advert may hold (bigger adverts are ignored)
    max_routes: int = 10_000
    #: seconds an HTTP request's head and body may take to arrive
    header_timeout: float = 10.0
    #: seconds before an idle keep-alive connection, a WebSocket that answers
    #: no ping, an unfinished fragmented message or a connection whose
    #: output is not being read is closed
    idle_timeout: float = 60.0
    #: connections at once, all clients; more are closed at once
    max_connections: int = 10_000
    #: connections at once from one IP address
    max_connections_per_ip: int = 1_000
    #: unsent bytes past which a connection is no longer read from
    max_write_buffer: int = 4 * 1024 * 1024
    #: bytes of unfinished WebSocket messages and HTTP bodies held, all
    #: connections together
    max_buffered_input: int = 32 * 1024 * 1024
    #: peers dialled at once (the command line's and those added at run time)
    max_dialers: int = 256
    #: requests one JSON-RPC batch may hold (a longer one runs none: -32005)
    max_batch: int = 1000


@frozen
class HttpConfig:
    """
    Who may use the HTTP surface (SPEC section 10).

    @ivar tokens: SHA-256 hex digest of a bearer token -> its caller name.
    @ivar admins: caller names allowed on the admin endpoints.
    @ivar allowed_hosts: C{Host} names accepted besides IP literals and
        C{localhost} (lower case).
    """

    tokens: Mapping[str, str] = field(factory=dict)
    admins: frozenset[str] = frozenset()
    allowed_hosts: frozenset[str] = frozenset()


@frozen
class TracingConfig:
    """
    Where a node's spans go (SPEC section 13).

    @ivar exporter: C{"jsonl"} or C{"otlp"}.
    @ivar path: the C{jsonl} file.
    @ivar endpoint: the C{otlp} collector's traces URL (C{None}: its default).
    @ivar sample: the share of new traces recorded.
    @ivar headers: extra HTTP headers for the collector.
    """

    exporter: str
    path: str | None = None
    endpoint: str | None = None
    sample: float = 1.0
    headers: Mapping[str, str] = field(factory=dict)


#: How a location-transparent call picks among a server's instances.
POLICIES = ("nearest", "round_robin", "random", "least_loaded")


@frozen
class BalanceConfig:
    """
    How calls spread over several instances of a server (SPEC section 11).

    @ivar default: the policy of every server name not in C{servers}.
    @ivar servers: a policy per server name.
    @ivar failure_threshold: consecutive failures that open an instance's circuit.
    @ivar open_seconds: how long calls skip an open instance before a trial.
    """

    default: str = "nearest"
    servers: Mapping[str, str] = field(factory=dict)
    failure_threshold: int = 5
    open_seconds: float = 5.0

    def policy(self, server: str) -> str:
        """:returns: the policy for calls to C{server}."""
        return self.servers.get(server, self.default)


#: How a node writes its log: C{text} (Twisted's lines) or C{json}.
LOG_FORMATS = ("text", "json")


@frozen
class NodeConfig:
    """
    Everything a node needs to start.

    @ivar port: a Twisted server endpoint description (C{"tcp:8080:..."}).
    @ivar ignored_interface: an C{--interface} given with a C{--port} that
        is an endpoint, which binds what it names instead (the node warns).
    """

    node_id: str
    port: str = "tcp:8080:interface=127.0.0.1"
    add_peer: tuple[str, ...] = ()
    app: tuple[str, ...] = ()
    disable_registry: bool = False
    secret_file: str | None = None
    ping_interval: float = 5.0
    #: seconds a neighbour may leave a request (a ping, a call) unanswered,
    #: hearing nothing from it, before its link is dropped
    peer_timeout: float = 1.25
    limits: Limits = field(factory=Limits)
    access: AccessRules = field(factory=AccessRules)
    tls: TlsConfig | None = None
    allowed_origins: frozenset[str] = frozenset()
    http: HttpConfig = field(factory=HttpConfig)
    tracing: TracingConfig | None = None
    log_format: str = "text"
    balance: BalanceConfig = field(factory=BalanceConfig)
    ignored_interface: str | None = None


_TOP_KEYS = {
    "node_id": str,
    "port": (int, str),
    "interface": str,
    "add_peer": list,
    "app": list,
    "disable_registry": bool,
    "secret_file": str,
    "ping_interval": (int, float),
    "peer_timeout": (int, float),
    "allowed_origins": list,
    "log_format": str,
    "config": str,
}
_LIMIT_KEYS = {
    "max_body_size": int,
    "max_message_size": int,
    "max_pending_calls": int,
    "max_in_flight": int,
    "max_in_flight_per_caller": int,
    "calls_per_second": (int, float),
    "max_routes": int,
    "header_timeout": (int, float),
    "idle_timeout": (int, float),
    "max_connections": int,
    "max_connections_per_ip": int,
    "max_write_buffer": int,
    "max_buffered_input": int,
    "max_dialers": int,
    "max_batch": int,
}
_HTTP_KEYS = {"tokens": dict, "admins": list, "allowed_hosts": list}
_TRACING_KEYS = {
    "exporter": str,
    "path": str,
    "endpoint": str,
    "sample": (int, float),
    "headers": dict,
}
_TLS_KEYS = {"cert": str, "key": str, "ca": str, "require_client_cert": bool}


def read_toml(path: str) -> dict[str, Any]:
    """
    :returns: the settings in the TOML file at C{path}, checked for unknown
        keys and wrong types.
    :raises ConfigError: if the file cannot be read or holds bad settings.
    """
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: not valid TOML: {e}") from None
    sections = {
        name: table.pop(name, {})
        for name in ("limits", "tls", "access", "http", "tracing", "balance")
    }
    _check_keys(table, _TOP_KEYS, path, "")
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise ConfigError(f"--config {path}: [{name}] must be a table")
    _check_keys(sections["limits"], _LIMIT_KEYS, path, "limits.")
    _check_keys(sections["tls"], _TLS_KEYS, path, "tls.")
    _check_keys(sections["http"], _HTTP_KEYS, path, "http.")
    _check_keys(sections["tracing"], _TRACING_KEYS, path, "tracing.")
    if sections["access"]:
        try:
            table["access"] = AccessRules.from_config(sections["access"])
        except ValueError as e:
            raise ConfigError(f"--config {path}: {e}") from None
    for name in ("limits", "tls", "http", "tracing", "balance"):
        if sections[name]:
            table[name] = sections[name]
    _resolve_paths(table, os.path.dirname(os.path.abspath(path)))
    return table


def _is_app_file(spec: str) -> bool:
    # As relaytx._apps tells a file from a module name.
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def _resolve_paths(table: dict[str, Any], base: str) -> None:
    """
    Make the file paths of a config file absolute, relative to the file's
    own directory (C{base}) rather than the working directory: an app given
    as a file, C{secret_file}, the C{[tls]} files and C{tracing.path}. Module names and
    endpoint strings (Twisted's own syntax) are left as they are.
    """

    def resolved(value: str) -> str:
        return os.path.join(base, os.path.expanduser(value))

    if "secret_file" in table:
        table["secret_file"] = resolved(table["secret_file"])
    if "app" in table:
        table["app"] = [resolved(a) if _is_app_file(a) else a for a in table["app"]]
    tls = table.get("tls")
    if tls:
        for key in ("cert", "key", "ca"):
            if key in tls:
                tls[key] = resolved(tls[key])
    tracing = table.get("tracing")
    if tracing and isinstance(tracing.get("path"), str):
        tracing["path"] = resolved(tracing["path"])


def _check_keys(table: Mapping[str, Any], known: Mapping[str, Any], path: str, prefix: str) -> None:
    for key, value in table.items():
        kind = known.get(key)
        if kind is None or key == "config":
            raise ConfigError(f"--config {path}: unknown setting {prefix}{key!r}")
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"--config {path}: {prefix}{key} has the wrong type")
        if kind is list and not all(isinstance(item, str) for item in value):
            raise ConfigError(f"--config {path}: {prefix}{key} must be a list of strings")


def port_description(port: Any, interface: str) -> str:
    """
    :param port: a TCP port number or a Twisted endpoint description.
    :returns: the endpoint description to listen on.
    :raises ConfigError: if C{port} is neither, or the endpoint cannot be
        built (a bad argument, a missing TLS key file, no systemd socket).
    """
    text = str(port).strip()
    if text.isascii() and text.isdigit():
        number = int(text)
        if not 0 <= number <= 65535:
            raise ConfigError(f"--port {text}: a port number is 0-65535")
        if not interface.strip():
            raise ConfigError("--interface: give an address such as 127.0.0.1 or 0.0.0.0")
        host = interface.strip().replace("\\", "\\\\").replace(":", "\\:")
        return f"tcp:{number}:interface={host}"
    kind = text.partition(":")[0]
    if not text or kind not in {"tcp", "ssl", "unix", "tcp6", "systemd"}:
        raise ConfigError(
            f"--port {text!r}: give a port number or an endpoint such as tcp:8080:interface=0.0.0.0"
        )
    # Build the endpoint once (without a reactor: parsers only store it) so
    # that a bad description fails here, as an option error, rather than as
    # a traceback when the node listens.
    try:
        serverFromString(None, text)
    except OSError as e:
        reason = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)
        raise ConfigError(f"--port {text!r}: {reason}") from None
    except Exception as e:
        raise ConfigError(
            f"--port {text!r}: not a valid endpoint: {type(e).__name__}: {e}"
        ) from None
    return text


def _access(value: Any) -> AccessRules:
    if value is None or isinstance(value, AccessRules):
        return value or AccessRules()
    if not isinstance(value, dict):
        raise ConfigError("[access] must be a table")
    try:
        return AccessRules.from_config(value)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_config(options: Mapping[str, Any]) -> NodeConfig:
    """
    Merge command-line C{options} over the C{--config} file, if any, and
    validate the result.

    :param options: option values by their long name with C{_} for C{-};
        C{None} (or an empty list) means "not given".
    :raises ConfigError: for any invalid value.
    """
    settings: dict[str, Any] = {}
    if options.get("config"):
        settings.update(read_toml(options["config"]))
    for key, value in options.items():
        if value is not None and value != [] and value is not False:
            settings[key] = value

    tls = None
    if settings.get("tls"):
        tls = TlsConfig(**settings["tls"])
        try:
            tls.check()
        except TlsError as e:
            raise ConfigError(str(e)) from None

    node_id = settings.get("node_id")
    if node_id is None and tls is not None and tls.pki and tls.cert is not None:
        # PKI mode: a node's id is the one its certificate names (SPEC 9).
        try:
            node_id = certified_id(tls.cert)
        except TlsError as e:
            raise ConfigError(str(e)) from None
    if node_id is None:
        node_id = secrets.token_hex(8)
    if not NODE_ID_RE.fullmatch(node_id):
        raise ConfigError(f"--node-id {node_id!r}: use 1-64 characters of A-Za-z0-9._-")

    ping_interval = float(settings.get("ping_interval", 5.0))
    if not 0 < ping_interval <= 3600:
        raise ConfigError(f"--ping-interval {ping_interval}: give seconds in (0, 3600]")
    peer_timeout = float(settings.get("peer_timeout", 1.25))
    if not 0 < peer_timeout <= 3600:
        raise ConfigError(f"peer_timeout {peer_timeout}: give seconds in (0, 3600]")

    limits = _limits(settings.get("limits", {}))
    add_peer = tuple(settings.get("add_peer", ()))
    if len(set(add_peer)) > limits.max_dialers:
        raise ConfigError(
            f"{len(set(add_peer))} peers to dial (--add-peer), more than"
            f" limits.max_dialers ({limits.max_dialers})"
        )

    given_port, interface = str(settings.get("port", 8080)).strip(), settings.get("interface")
    port = port_description(given_port, "127.0.0.1" if interface is None else interface)
    numeric = given_port.isascii() and given_port.isdigit()
    ignored_interface = None if numeric else interface
    return NodeConfig(
        node_id=node_id,
        port=port,
        ignored_interface=ignored_interface,
        add_peer=add_peer,
        app=tuple(settings.get("app", ())),
        disable_registry=bool(settings.get("disable_registry", False)),
        secret_file=settings.get("secret_file"),
        ping_interval=ping_interval,
        peer_timeout=peer_timeout,
        limits=limits,
        access=_access(settings.get("access")),
        tls=tls,
        allowed_origins=_origins(settings.get("allowed_origins", [])),
        http=_http(settings.get("http")),
        tracing=_tracing(settings.get("tracing")),
        log_format=_log_format(settings.get("log_format", "text")),
        balance=_balance(settings.get("balance")),
    )


def _policy(value: Any, what: str) -> str:
    if value not in POLICIES:
        raise ConfigError(f"{what} {value!r}: give one of {', '.join(POLICIES)}")
    return str(value)


def _balance(table: Any) -> BalanceConfig:
    if table is None or isinstance(table, BalanceConfig):
        return table or BalanceConfig()
    if not isinstance(table, dict):
        raise ConfigError("[balance] must be a table")
    unknown = set(table) - {"default", "servers", "failure_threshold", "open_seconds"}
    if unknown:
        raise ConfigError(f"unknown setting balance.{sorted(unknown)[0]}")
    default = _policy(table.get("default", "nearest"), "balance.default")
    raw = table.get("servers", {})
    if not isinstance(raw, dict):
        raise ConfigError("[balance.servers] must be a table of NAME = POLICY")
    servers = {str(name): _policy(p, f"balance.servers.{name}") for name, p in raw.items()}
    threshold = table.get("failure_threshold", 5)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ConfigError("balance.failure_threshold must be a whole number of at least 1")
    seconds = table.get("open_seconds", 5.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 3600:
        raise ConfigError("balance.open_seconds must be seconds in (0, 3600]")
    return BalanceConfig(default, servers, threshold, float(seconds))


def _log_format(value: Any) -> str:
    if value not in LOG_FORMATS:
        raise ConfigError(f"--log-format {value!r}: give text or json")
    return str(value)


def _tracing(table: Any) -> TracingConfig | None:
    if table is None or isinstance(table, TracingConfig):
        return table
    if not isinstance(table, dict):
        raise ConfigError("[tracing] must be a table")
    unknown = set(table) - set(_TRACING_KEYS)
    if unknown:
        raise ConfigError(f"unknown setting tracing.{sorted(unknown)[0]}")
    exporter = table.get("exporter")
    if exporter in (None, "none"):
        return None
    if exporter not in ("jsonl", "otlp"):
        raise ConfigError(f'tracing.exporter {exporter!r}: give "jsonl" or "otlp"')
    path = table.get("path")
    if exporter == "jsonl" and not (isinstance(path, str) and path):
        raise ConfigError('tracing.exporter "jsonl" needs tracing.path, the file spans go to')
    endpoint = table.get("endpoint")
    if endpoint is not None and not (
        isinstance(endpoint, str) and endpoint.startswith(("http://", "https://"))
    ):
        raise ConfigError("tracing.endpoint must be an http:// or https:// URL")
    sample = table.get("sample", 1.0)
    if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 <= sample <= 1:
        raise ConfigError("tracing.sample must be a number from 0 to 1")
    headers = table.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError("[tracing.headers] must map header names to strings")
    return TracingConfig(exporter, path, endpoint, float(sample), dict(headers))


def _limits(table: Any) -> Limits:
    if isinstance(table, Limits):
        return table
    unknown = set(table) - set(_LIMIT_KEYS)
    if unknown:
        raise ConfigError(f"unknown setting limits.{sorted(unknown)[0]}")
    limits = Limits(**table)
    for name in _LIMIT_KEYS:
        value = getattr(limits, name)
        if name == "calls_per_second":
            if value < 0:
                raise ConfigError("limits.calls_per_second must be 0 (no limit) or positive")
        elif not value > 0 or value == float("inf"):
            raise ConfigError(f"limits.{name} must be positive")
    if limits.header_timeout > 3600 or limits.idle_timeout > 86400:
        raise ConfigError("limits.header_timeout is at most 3600 s, limits.idle_timeout 86400 s")
    if (
        "max_connections_per_ip" not in table
        and limits.max_connections_per_ip >= limits.max_connections
    ):
        # A total given alone, at or under the default per address: an
        # address may hold half of it.
        if limits.max_connections < 2:
            raise ConfigError(
                "limits.max_connections must be at least 2 (one address may hold"
                " half of them: the others, members and /health, need room)"
            )
        limits = evolve(limits, max_connections_per_ip=max(1, limits.max_connections // 2))
    if limits.max_connections_per_ip >= limits.max_connections:
        # One address holding its maximum must leave room for the others
        # (members, /health).
        raise ConfigError(
            f"limits.max_connections_per_ip ({limits.max_connections_per_ip}) must be below "
            f"limits.max_connections ({limits.max_connections})"
        )
    return limits


_CALLER_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SHA256_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")
_HOST_NAME_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})")


def _http(table: Any) -> HttpConfig:
    if table is None or isinstance(table, HttpConfig):
        return table or HttpConfig()
    if not isinstance(table, dict):
        raise ConfigError("[http] must be a table")
    unknown = set(table) - set(_HTTP_KEYS)
    if unknown:
        raise ConfigError(f"unknown setting http.{sorted(unknown)[0]}")
    raw_tokens = table.get("tokens", {})
    if not isinstance(raw_tokens, dict):
        raise ConfigError("[http.tokens] must be a table of NAME = SHA-256 hex")
    tokens: dict[str, str] = {}
    for name, digest in raw_tokens.items():
        if not _CALLER_NAME_RE.fullmatch(name):
            raise ConfigError(f"http.tokens: {name!r} is not a caller name (1-64 of A-Za-z0-9._-)")
        if not isinstance(digest, str) or not _SHA256_HEX_RE.fullmatch(digest):
            raise ConfigError(
                f"http.tokens.{name} must be the SHA-256 of the token, in 64 hex digits"
            )
        if digest.lower() in tokens:
            raise ConfigError(f"http.tokens.{name} has the same token as {tokens[digest.lower()]}")
        tokens[digest.lower()] = name
    admins = _strings(table.get("admins", []), "http.admins")
    if admins and not tokens:
        raise ConfigError("http.admins names token holders: give [http.tokens] too")
    strangers = sorted(admins - set(tokens.values()))
    if strangers:
        raise ConfigError(f"http.admins: {strangers[0]!r} has no token in [http.tokens]")
    hosts = _strings(table.get("allowed_hosts", []), "http.allowed_hosts")
    for host in hosts:
        if not _HOST_NAME_RE.fullmatch(host):
            raise ConfigError(f"http.allowed_hosts: {host!r} is not a host name (no port)")
    return HttpConfig(tokens, admins, frozenset(h.lower().rstrip(".") for h in hosts))


_SCHEME_RE = re.compile(r"[a-z][a-z0-9+.-]*")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origins(value: Any) -> frozenset[str]:
    """
    The browser origins allowed, each as a browser sends it in C{Origin}
    (RFC 6454's serialisation): the scheme and host in lower case, a
    default port left out, no path. An entry that is not an origin is an
    error, not a rule that never matches.
    """
    origins = set()
    for entry in _strings(value, "allowed_origins"):
        why = "give scheme://host[:port], as a browser sends it"
        try:
            parts = urlsplit(entry.strip())
            port = parts.port
        except ValueError:
            raise ConfigError(f"allowed_origins: {entry!r} is not an origin: {why}") from None
        scheme, host = parts.scheme.lower(), parts.hostname
        if (
            not _SCHEME_RE.fullmatch(scheme)
            or not host
            or parts.username is not None
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or "*" in host
        ):
            if entry.strip().lower() == "null":
                why = "'null' is the origin of every sandboxed page and local file"
            raise ConfigError(f"allowed_origins: {entry!r} is not an origin: {why}")
        if ":" in host:
            host = f"[{host}]"
        origin = f"{scheme}://{host}"
        if port is not None and port != _DEFAULT_PORTS.get(scheme):
            origin += f":{port}"
        origins.add(origin)
    return frozenset(origins)


def _strings(value: Any, what: str) -> frozenset[str]:
    if not isinstance(value, list | tuple | frozenset | set) or not all(
        isinstance(v, str) for v in value
    ):
        raise ConfigError(f"{what} must be a list of strings")
    return frozenset(value)
