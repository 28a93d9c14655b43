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
    ping_interval = 5.0              # seconds between liveness pings

    [limits]
    max_body_size = 1048576          # bytes of one HTTP request body (413 past it)
    max_message_size = 1048576       # bytes of one peer WebSocket message

Anything invalid raises L{ConfigError}, whose message is one line for the
operator.
"""

from __future__ import annotations

import secrets
import tomllib
from collections.abc import Mapping
from typing import Any

from attrs import field, frozen
from twisted.python.usage import UsageError

from relaytx.jsonrpc import NODE_ID_RE


class ConfigError(UsageError):
    """An option or configuration value is invalid."""


@frozen
class Limits:
    """Sizes and rates past which the node refuses work."""

    max_body_size: int = 1024 * 1024
    max_message_size: int = 1024 * 1024


@frozen
class NodeConfig:
    """
    Everything a node needs to start.

    @ivar port: a Twisted server endpoint description (C{"tcp:8080:..."}).
    """

    node_id: str
    port: str = "tcp:8080:interface=127.0.0.1"
    add_peer: tuple[str, ...] = ()
    app: tuple[str, ...] = ()
    disable_registry: bool = False
    secret_file: str | None = None
    ping_interval: float = 5.0
    limits: Limits = field(factory=Limits)


_TOP_KEYS = {
    "node_id": str,
    "port": (int, str),
    "interface": str,
    "add_peer": list,
    "app": list,
    "disable_registry": bool,
    "secret_file": str,
    "ping_interval": (int, float),
    "config": str,
}
_LIMIT_KEYS = {"max_body_size": int, "max_message_size": int}


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
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML: {e}") from None
    limits = table.pop("limits", {})
    _check_keys(table, _TOP_KEYS, path, "")
    if not isinstance(limits, dict):
        raise ConfigError(f"--config {path}: [limits] must be a table")
    _check_keys(limits, _LIMIT_KEYS, path, "limits.")
    if limits:
        table["limits"] = limits
    return table


def _check_keys(table: Mapping[str, Any], known: Mapping[str, Any], path: str, prefix: str) -> None:
    for key, value in table.items():
        kind = known.get(key)
        if kind is None or key == "config":
            raise ConfigError(f"--config {path}: unknown setting {prefix}{key!r}")
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"--config {path}: {prefix}{key} has the wrong type")


def port_description(port: Any, interface: str) -> str:
    """
    :param port: a TCP port number or a Twisted endpoint description.
    :returns: the endpoint description to listen on.
    :raises ConfigError: if C{port} is neither.
    """
    text = str(port).strip()
    if text.isdigit():
        number = int(text)
        if not 0 <= number <= 65535:
            raise ConfigError(f"--port {text}: a port number is 0-65535")
        host = interface.replace(":", "\\:")
        return f"tcp:{number}:interface={host}"
    kind = text.partition(":")[0]
    if not text or kind not in {"tcp", "ssl", "unix", "tcp6", "systemd"}:
        raise ConfigError(
            f"--port {text!r}: give a port number or an endpoint such as tcp:8080:interface=0.0.0.0"
        )
    return text


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

    node_id = settings.get("node_id") or secrets.token_hex(8)
    if not NODE_ID_RE.fullmatch(node_id):
        raise ConfigError(f"--node-id {node_id!r}: use 1-64 characters of A-Za-z0-9._-")

    ping_interval = float(settings.get("ping_interval", 5.0))
    if not 0 < ping_interval <= 3600:
        raise ConfigError(f"--ping-interval {ping_interval}: give seconds in (0, 3600]")

    limits = Limits(**settings.get("limits", {}))
    for name in ("max_body_size", "max_message_size"):
        if getattr(limits, name) <= 0:
            raise ConfigError(f"limits.{name} must be a positive number of bytes")

    return NodeConfig(
        node_id=node_id,
        port=port_description(settings.get("port", 8080), settings.get("interface", "127.0.0.1")),
        add_peer=tuple(settings.get("add_peer", ())),
        app=tuple(settings.get("app", ())),
        disable_registry=bool(settings.get("disable_registry", False)),
        secret_file=settings.get("secret_file"),
        ping_interval=ping_interval,
        limits=limits,
    )
