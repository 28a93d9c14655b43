# -*- test-case-name: tests.test_node -*-
"""
Where a node listens: the server endpoint its C{--port} and C{[tls]}
describe, the one-line error when it cannot listen there, and the
start-up warnings about who could reach it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger

from relaytx._tls import TlsConfig, TlsError
from relaytx.errors import StartupError

_PLAIN_TCP = re.compile(r"tcp:(?P<port>\d+)(?::interface=(?P<interface>.*))?")

#: Pending connections the listener queues. Twisted's default of 50
#: overflows when many peers (re)connect at once; their SYNs then wait
#: seconds to be retried.
BACKLOG = 1024

_log = Logger(namespace="relaytx.node")


def server_endpoint(description: str, tls: TlsConfig | None, reactor: Any) -> IStreamServerEndpoint:
    """
    :param description: the node's endpoint description (C{--port}).
    :param tls: the node's C{[tls]} settings: with a certificate, a plain
        TCP port listens with TLS.
    :returns: the endpoint to listen on.
    :raises StartupError: if C{[tls]} cannot apply to C{description} or its
        files cannot be used.
    """
    plain = _PLAIN_TCP.fullmatch(description)
    interface = (plain.group("interface") or "").replace("\\:", ":") if plain else ""
    if tls is None or not tls.serves_tls:
        if plain is not None:
            return TCP4ServerEndpoint(
                reactor, int(plain.group("port")), backlog=BACKLOG, interface=interface
            )
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
        return endpoint
    if plain is None:
        raise StartupError(
            f"--port {description}: [tls] applies to a port number or a plain tcp: "
            "endpoint; give TLS settings in an ssl: endpoint instead"
        )
    try:
        options = tls.server_options()
    except TlsError as e:
        raise StartupError(str(e)) from None
    return SSL4ServerEndpoint(reactor, int(plain.group("port")), options, interface=interface)


def listen_error(port: str, error: BaseException) -> str:
    """:returns: the one-line start-up error for failing to listen on C{port}."""
    if isinstance(error, CannotListenError):
        reason = error.socketError
        text = getattr(reason, "strerror", None) or str(reason)
        return f"cannot listen on {port}: {text}"
    return f"cannot listen on {port}: {error}"


def warn_if_open(port: IListeningPort, has_secret: bool) -> None:
    """Say so (one log line) when anyone beyond this machine could join the mesh."""
    if has_secret:
        return
    host = getattr(port.getHost(), "host", None)
    if host is None:  # a UNIX socket: only this machine
        return
    try:
        beyond = not ipaddress.ip_address(host).is_loopback
    except ValueError:
        beyond = True
    if beyond:
        _log.warn(
            "open mesh: listening on {host} without --secret-file, anyone who can "
            "reach it can link as any node id and call any server",
            host=host,
        )
