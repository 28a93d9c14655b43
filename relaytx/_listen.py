# -*- test-case-name: tests.test_node -*-
"""
Where a node listens: the server endpoint its C{--port} and C{[tls]}
describe, the one-line error when it cannot listen there, and the
start-up warnings about who could reach it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from typing import Any

try:
    import resource
except ImportError:  # not on POSIX
    resource = None  # type: ignore[assignment]

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaytx._guards import is_loopback
from relaytx._stdtls import TLSServerEndpoint
from relaytx._tls import TlsConfig, TlsError
from relaytx.config import NodeConfig
from relaytx.errors import StartupError, failure_exception

_PLAIN_TCP = re.compile(r"tcp:(?P<port>\d+)(?::interface=(?P<interface>.*))?")

#: Pending connections the listener queues. Twisted's default of 50
#: overflows when many peers (re)connect at once; their SYNs then wait
#: seconds to be retried.
BACKLOG = 1024

_log = Logger(namespace="relaytx.node")

#: File descriptors kept for the node itself (its listener, dialled links,
#: log and app files) when connections are counted against its limit.
RESERVED_DESCRIPTORS = 128


def fit_connections(total: int, per_ip: int) -> tuple[int, int]:
    """
    Fit the connection limits to the file descriptors this process may
    open: the soft limit is raised to the hard one if need be, and where
    that is still too few, the limits are lowered (one log line), so that
    the descriptors never run out before the limits refuse a connection
    (which would lock out everyone, members and C{/health} included).

    :returns: C{(total, per_ip)} as they apply.
    """
    if resource is None:
        return total, per_ip
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = total + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return total, per_ip
    fitted = max(2, soft - RESERVED_DESCRIPTORS)
    # One address at its maximum still leaves half the room to the others.
    fitted_per_ip = max(1, min(per_ip, fitted // 2))
    _log.warn(
        "only {soft} file descriptors: at most {total} connections ({per_ip} per address) "
        "instead of limits.max_connections {wanted_total} ({wanted_per_ip}); raise ulimit -n",
        soft=soft,
        total=fitted,
        per_ip=fitted_per_ip,
        wanted_total=total,
        wanted_per_ip=per_ip,
    )
    return fitted, fitted_per_ip


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
        context = tls.server_context()
    except TlsError as e:
        raise StartupError(str(e)) from None
    port = int(plain.group("port"))
    tcp = TCP4ServerEndpoint(reactor, port, backlog=BACKLOG, interface=interface)
    return TLSServerEndpoint(tcp, context, reactor)


def listen_error(port: str, error: BaseException) -> str:
    """:returns: the one-line start-up error for failing to listen on C{port}."""
    if isinstance(error, CannotListenError):
        reason = error.socketError
        text = getattr(reason, "strerror", None) or str(reason)
        return f"cannot listen on {port}: {text}"
    return f"cannot listen on {port}: {error}"


def listen_site(
    description: str,
    tls: TlsConfig | None,
    reactor: Any,
    site: Any,
    listening: Callable[[IListeningPort], IListeningPort],
    on_fatal: Callable[[str], None],
) -> Deferred[IListeningPort | None]:
    """
    Serve C{site} on the endpoint C{description} (C{--port}).

    :param listening: called with the port once it listens.
    :param on_fatal: called with a one-line message if the endpoint refuses
        later (after this returns).
    :raises StartupError: at once if the endpoint refuses synchronously
        (a port in use, a bad description), as TCP and TLS endpoints do.
    :returns: a Deferred with what C{listening} returns; with C{None} if the
        endpoint refused later.
    """
    try:
        endpoint = server_endpoint(description, tls, reactor)
    except StartupError:
        raise
    except Exception as e:
        raise StartupError(f"--port {description}: {e}") from None
    outcome: list[IListeningPort | Failure] = []

    def record(result: IListeningPort | Failure) -> IListeningPort | Failure:
        outcome.append(result)
        return result

    if not isinstance(endpoint, (TCP4ServerEndpoint, TLSServerEndpoint)) and hasattr(
        site, "turn_away_by_closing"
    ):
        site.turn_away_by_closing = True  # (an ssl: endpoint's TLS layer needs a protocol)
    d = endpoint.listen(site)
    d.addBoth(record)
    if outcome and isinstance(outcome[0], Failure):
        d.addErrback(lambda _: None)
        raise StartupError(listen_error(description, failure_exception(outcome[0])))

    def failed(failure: Failure) -> None:
        on_fatal(listen_error(description, failure_exception(failure)))

    return d.addCallbacks(listening, failed)


def _beyond_loopback(port: IListeningPort) -> bool:
    # (No host: a UNIX socket, only this machine.)
    return not is_loopback(getattr(port.getHost(), "host", None))


def _private_files(config: NodeConfig) -> list[tuple[str, str]]:
    """:returns: C{(what, path)} of each file of C{config} that must stay private."""
    private = []
    if config.secret_file is not None:
        private.append(("--secret-file", config.secret_file))
    if config.tls is not None:
        if config.tls.key is not None:
            private.append(("tls.key", config.tls.key))
        elif config.tls.cert is not None:  # the key inside the certificate's file
            private.append(("tls.cert (which holds the key)", config.tls.cert))
    port = str(config.port)
    if port.startswith("ssl:"):
        # An ssl: endpoint's key: privateKey=, which certKey= defaults to.
        fields = dict(
            field.replace("\\:", ":").partition("=")[::2]
            for field in re.split(r"(?<!\\):", port)[1:]
            if "=" in field
        )
        if "privateKey" in fields:
            private.append(("--port privateKey", fields["privateKey"]))
    return private


def startup_warnings(
    port: IListeningPort, config: NodeConfig, has_secret: bool, pki: bool, has_tokens: bool
) -> list[str]:
    """
    Warn (one log line each) about what would let others in (SPEC section 9):
    listening beyond loopback with an open mesh, or with HTTP clients that
    need no token; an open mesh beside HTTP clients that need one (a peer
    link needs none), on loopback too; and a secret or private key file
    that the file's group or others may read.

    :returns: the warnings logged, for tests.
    """
    warnings = []
    beyond = _beyond_loopback(port)
    host = getattr(port.getHost(), "host", "?")
    if beyond and not (has_secret or pki):
        warnings.append(
            f"open mesh: listening on {host} without --secret-file or PKI; anyone who can "
            "reach it can link as any node id and call any server"
        )
    elif has_tokens and not (has_secret or pki):
        # (On loopback too: tokens say its operator keeps out local callers.)
        warnings.append(
            f"open mesh: HTTP clients need a token, but anyone who can reach {host} can "
            "link as a node at /ws/p2p and call any server without one; give the nodes "
            "a --secret-file (or PKI)"
        )
    if beyond and not has_tokens:
        warnings.append(
            f"HTTP clients are not authenticated: listening on {host} with no [http.tokens]; "
            "anyone who can reach it can call every server through /rpc and /ws/rpc"
        )
    if config.ignored_interface is not None:
        warnings.append(
            f"--interface {config.ignored_interface} is ignored: --port {config.port} is an "
            f"endpoint, and listens where it says ({host}); give tcp:PORT:interface=ADDR"
        )
    for what, path in _private_files(config):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(
                f"{what} {path} is open to its group or others "
                f"(mode {stat.S_IMODE(mode):o}); chmod 600 it"
            )
    for warning in warnings:
        # Not a field named "warning": trial takes such events for Python
        # warnings and fails every test that logs one (tox -e trial).
        _log.warn("{text}", text=warning)
    return warnings


def startup_line(
    port: IListeningPort, config: NodeConfig, servers: list[str], version: str
) -> None:
    """
    Log the line that says a node is up (SPEC section 13): its id, the
    address it listens on, its servers and the peers it dials, each also
    an event field (for C{--log-format json}).
    """
    host = port.getHost()
    address = config.port
    if isinstance(host, IPv4Address | IPv6Address):
        tls = config.tls
        secure = (tls is not None and tls.serves_tls) or str(address).startswith(("ssl:", "tls:"))
        scheme = "https" if secure else "http"
        name = f"[{host.host}]" if isinstance(host, IPv6Address) else host.host
        address = f"{scheme}://{name}:{host.port}"
    _log.info(
        "node {node_id} listening on {address}; servers: {servers}; peers: {peers}",
        node_id=config.node_id,
        address=address,
        servers=servers,
        peers=list(config.add_peer),
        version=version,
        tracing=None if config.tracing is None else config.tracing.exporter,
    )
