# -*- test-case-name: tests.test_node -*-
"""
L{RelayNode}: one relaytx node, the composition root. It hosts the servers,
runs calls through their mailboxes, owns the metrics, and listens for HTTP
(JSON-RPC, health, registry, metrics) and peer WebSockets on one port.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from attrs import evolve
from twisted.application.service import MultiService
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    FirstError,
    fail,
    succeed,
)
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaytx import __version__
from relaytx.apps import import_app, run_setup
from relaytx.auth import read_secret
from relaytx.config import NodeConfig
from relaytx.errors import (
    AccessDenied,
    CallError,
    CallTimeout,
    MethodNotFound,
    NoSuchMethod,
    NoSuchServer,
    Overloaded,
    RemoteCallError,
    StartupError,
    failure_exception,
)
from relaytx.jsonrpc import DEFAULT_CALL_TIMEOUT, NODE_ID_RE, CallTarget
from relaytx.limits import CallLimiter
from relaytx.mesh import Mesh
from relaytx.metrics import NodeMetrics
from relaytx.peer import CLOSE_REMOVED, PeerSession
from relaytx.server import Mailbox, Server, exposed
from relaytx.tls import TlsError
from relaytx.wire import Payload, rfc3339

_PLAIN_TCP = re.compile(r"tcp:(?P<port>\d+)(?::interface=(?P<interface>.*))?")
SERVER_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class NodeServer(Server):
    """
    The built-in server every node exposes as C{node}, so a bare node can be
    called across the mesh.
    """

    def __init__(self, node: RelayNode) -> None:
        self._node = node

    @exposed
    def info(self) -> dict[str, Any]:
        """This node's id, version, uptime, servers and peers."""
        return self._node.info()

    @exposed
    def ping(self) -> dict[str, Any]:
        """A liveness answer with this node's id and time."""
        return {"pong": True, "node_id": self._node.node_id, "timestamp": self._node.timestamp()}

    @exposed
    def echo(self, *args: Any) -> list[Any]:
        """Its arguments, as a list."""
        return list(args)


class RelayNode(MultiService):
    """
    One relaytx node.

    :param config: what to run.
    :param reactor: provides C{IReactorTime} and whatever the listening
        endpoint needs (C{IReactorTCP}, C{IReactorSSL}); tests pass a
        C{MemoryReactorClock}.
    :param on_fatal: called with a one-line message when the node cannot go
        on starting (an app's asynchronous setup failed); by default the
        error is logged and the node stops.
    """

    _log = Logger()

    def __init__(
        self,
        config: NodeConfig,
        reactor: Any,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.node_id = config.node_id
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.metrics = NodeMetrics()
        self.started_at: float = reactor.seconds()
        self.listening_port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort | None] | None = None
        self._on_fatal = on_fatal or self._stop_on_fatal
        self._mailboxes: dict[str, Mailbox] = {}
        self._setups: list[Deferred[None]] = []
        self.metrics.watch_queue_depth(lambda: sum(len(m) for m in self._mailboxes.values()))
        self.secret: bytes | None = None
        if config.secret_file is not None:
            try:
                self.secret = read_secret(config.secret_file)
            except (OSError, ValueError) as e:
                raise StartupError(f"--secret-file: {e}") from None
        limits = config.limits
        self.limiter = CallLimiter(
            reactor, limits.max_in_flight, limits.max_in_flight_per_caller, limits.calls_per_second
        )
        self.mesh = Mesh(
            self.node_id,
            reactor,
            self.metrics,
            execute_local=self._call_for_peer,
            local_servers=self.local_servers,
            ping_interval=config.ping_interval,
            registry_enabled=not config.disable_registry,
            max_pending_calls=limits.max_pending_calls,
            max_message_size=limits.max_message_size,
            max_routes=limits.max_routes,
        )
        self._dialers: dict[str, Any] = {}
        self.expose("node", NodeServer(self))

    # Servers.

    def expose(self, name: str, server: Server) -> None:
        """
        Host C{server} under C{name}.

        :raises ValueError: if the name is invalid or already taken.
        :raises TypeError: if C{server} is not a L{Server}.
        """
        if not isinstance(server, Server):
            raise TypeError(f"expose({name!r}, ...) needs a relaytx.Server, not {server!r}")
        if not SERVER_NAME_RE.fullmatch(name):
            raise ValueError(f"invalid server name {name!r}: use A-Za-z0-9_.- (not first .-)")
        if name in self._mailboxes:
            raise ValueError(f"a server named {name!r} is already exposed on {self.node_id}")
        self._mailboxes[name] = Mailbox(server)
        self.mesh.schedule_sync()

    def unexpose(self, name: str) -> Server:
        """
        Stop hosting the server called C{name}; calls already queued still run.

        :returns: the server.
        :raises KeyError: if there is none.
        """
        if name == "node":
            raise ValueError("the built-in 'node' server cannot be removed")
        server = self._mailboxes.pop(name).server
        self.mesh.schedule_sync()
        return server

    def local_servers(self) -> dict[str, list[str]]:
        """
        :returns: each local server's name and its exposed methods.
        """
        return {name: box.server.method_names() for name, box in self._mailboxes.items()}

    # Calls.

    def invoke(self, target: CallTarget) -> Deferred[Any]:
        """
        Run one resolved call (from JSON-RPC or the Python API) and count it.

        :returns: a Deferred with the method's result, or failing with a
            L{CallError}.
        """
        try:
            result = self.dispatch(target)
        except CallError as e:
            return fail(e)
        return result if isinstance(result, Deferred) else succeed(result)

    def dispatch(self, target: CallTarget) -> Any:
        """
        Run one resolved call and count it: the fast path under L{invoke}
        and JSON-RPC, which spares the common case (an idle local server
        answering at once) any Deferred.

        :returns: the result itself when it is ready at once, else a
            Deferred of it.
        :raises CallError: when the call fails at once.
        """
        started = self.clock.seconds()
        caller = target.caller
        if caller is not None:
            try:
                self.limiter.admit(caller)
            except Overloaded as e:
                raise self._counted(e, started) from None
        try:
            result = self._route(target)
        except CallError as e:
            if caller is not None:
                self.limiter.release(caller)
            raise self._counted(e, started) from None
        if isinstance(result, Deferred):
            return result.addBoth(self._finished, caller, started)
        if caller is not None:
            self.limiter.release(caller)
        self.metrics.count_call("ok", self.clock.seconds() - started)
        return result

    def _route(self, target: CallTarget) -> Any:
        node_id = target.node_id
        if node_id is None:
            if target.server not in self._mailboxes:
                host = self.mesh.nearest_host(target.server)
                if host is not None:
                    return self.mesh.call(evolve(target, node_id=host))
            return self._call_here(target, explicit=False)
        if node_id == self.node_id:
            return self._call_here(target, explicit=True)
        return self.mesh.call(target)

    def _finished(self, result: Any, caller: str | None, started: float) -> Any:
        if caller is not None:
            self.limiter.release(caller)
        return self._count(result, started)

    def _call_for_peer(self, target: CallTarget) -> Any:
        """
        Run a call that arrived over the mesh, within its caller's limits.

        :returns: the result, or a Deferred of it (as L{dispatch}).
        :raises CallError: when the call fails at once.
        """
        share = target.via or target.caller
        assert share is not None
        started = self.clock.seconds()
        try:
            self.limiter.admit(share)
        except Overloaded as e:
            raise self._counted(e, started) from None
        try:
            result = self._call_here(target, explicit=True)
        except CallError as e:
            self.limiter.release(share)
            raise self._counted(e, started) from None
        if isinstance(result, Deferred):
            return result.addBoth(self._finished, share, started)
        self.limiter.release(share)
        self.metrics.count_call("ok", self.clock.seconds() - started)
        return result

    def call(
        self,
        node_id: str | None,
        server: str,
        method: str,
        *args: Any,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        **kwargs: Any,
    ) -> Deferred[Any]:
        """
        Call C{server.method(*args, **kwargs)} on C{node_id} (C{None}: this
        node, or wherever the registry finds C{server}).

        :returns: a Deferred with the result, or failing with a L{CallError}.
        """
        return self.invoke(CallTarget(node_id, server, method, args, kwargs, timeout))

    def _call_here(self, target: CallTarget, explicit: bool) -> Any:
        """
        Run a call on a local server.

        :returns: the result, or a Deferred of it (see L{Mailbox.call}).
        :raises CallError: if the call is refused or fails at once.
        """
        caller = target.caller
        access = self.config.access
        if caller is not None and access:
            who = "http" if caller.startswith("http:") else caller
            if not access.allows(who, target.server, target.method):
                raise AccessDenied(
                    f"Access denied: {who} may not call {target.server}.{target.method}"
                    f" on {self.node_id}"
                )
        mailbox = self._mailboxes.get(target.server)
        if mailbox is None:
            missing: type[CallError] = NoSuchServer if explicit else MethodNotFound
            raise missing(f"Server not found: {target.server!r} on {self.node_id}")
        method = mailbox.server.exposed_methods.get(target.method)
        if method is None:
            missing = NoSuchMethod if explicit else MethodNotFound
            raise missing(f"Method not found: {target.server}.{target.method} on {self.node_id}")
        method.check_arguments(target.args, target.kwargs)
        try:
            result = mailbox.call(method, target.args, target.kwargs)
        except CallError:
            raise  # a server may fail a call with a precise relaytx error
        except Exception:
            raise self._method_error(Failure(), target) from None
        if isinstance(result, Deferred):
            if not result.called:  # remote calls time out in the mesh; local ones here
                result.addTimeout(target.timeout, self.clock, onTimeoutCancel=_timed_out)
            return result.addErrback(self._method_failed, target)
        return result

    def _method_failed(self, failure: Failure, target: CallTarget) -> Failure:
        if isinstance(failure.value, CallError | CancelledError):
            # A server may fail a call with a precise relaytx error; a
            # cancelled call was given up by its caller.
            return failure
        return Failure(self._method_error(failure, target))

    def _method_error(self, failure: Failure, target: CallTarget) -> RemoteCallError:
        self._log.failure(
            "{server}.{method} raised", failure, server=target.server, method=target.method
        )
        return RemoteCallError.from_exception(failure_exception(failure), self.node_id)

    def _counted(self, error: CallError, started: float) -> CallError:
        error.with_data(node_id=self.node_id, route=[self.node_id])
        self.metrics.count_call(type(error).__name__, self.clock.seconds() - started)
        return error

    def _count(self, result: Any, started: float) -> Any:
        if isinstance(result, Failure):
            error = result.value
            if isinstance(error, CallError):
                self._counted(error, started)
            else:
                self.metrics.count_call(type(error).__name__, self.clock.seconds() - started)
        else:
            self.metrics.count_call("ok", self.clock.seconds() - started)
        return result

    # Views for HTTP and the built-in server.

    def timestamp(self) -> str:
        """:returns: the current time, RFC 3339."""
        return rfc3339(self.clock.seconds())

    def uptime(self) -> float:
        """:returns: seconds since the node was created."""
        return max(0.0, self.clock.seconds() - self.started_at)

    def peers(self) -> dict[str, dict[str, Any]]:
        """:returns: directly connected peers by node id (SPEC section 4)."""
        return self.mesh.peers_view()

    def server_directory(self) -> dict[str, list[dict[str, Any]]]:
        """
        :returns: every server this node knows, local and remote, by name.
        """
        now = self.timestamp()
        directory = {
            name: [
                {
                    "name": name,
                    "node_id": self.node_id,
                    "methods": methods,
                    "is_local": True,
                    "last_seen": now,
                    "hops": 0,
                }
            ]
            for name, methods in self.local_servers().items()
        }
        for name, entries in self.mesh.directory().items():
            directory.setdefault(name, []).extend(entries)
        return directory

    def websocket_resources(self) -> dict[str, Any]:
        """:returns: the resources to mount under C{/ws/}, by name."""
        from relaytx.protocol import PeerServerFactory, peer_resource

        factory = PeerServerFactory(
            self.mesh,
            self.config.limits.max_message_size,
            allowed_origins=self.config.allowed_origins,
            reactor=self.reactor,
            secret=self.secret,
        )
        return {"p2p": peer_resource(factory)}

    def routes(self) -> dict[str, dict[str, Any]]:
        """:returns: the routing table (SPEC section 4)."""
        return self.mesh.router.table()

    # Peers and custom messages.

    def add_peer(self, address: str, node_id: str | None = None) -> None:
        """
        Dial the peer at C{address} now and keep re-dialling it while it is
        down.

        :raises ValueError: if C{address} is not a peer URL or is already
            dialled.
        """
        from relaytx.protocol import Dialer

        if node_id is not None and not NODE_ID_RE.fullmatch(node_id):
            raise ValueError(f"{node_id!r} is not a valid node id: 1-64 of A-Za-z0-9._-")
        dialer = Dialer(
            self.mesh,
            address,
            self.reactor,
            self.config.limits.max_message_size,
            node_id,
            secret=self.secret,
            tls=self.config.tls,
        )
        if dialer.url in self._dialers:
            raise ValueError(f"already dialling {address}")
        self._dialers[dialer.url] = dialer
        dialer.setServiceParent(self)

    def remove_peer(self, node_id: str | None = None, address: str | None = None) -> bool:
        """
        Close the link to C{node_id} and stop re-dialling it; or stop
        dialling C{address} (a peer that never answered has no known id).

        :returns: whether there was such a link or dialled peer.
        """
        found = False
        for url, dialer in list(self._dialers.items()):
            if (node_id is not None and dialer.node_id == node_id) or (
                address is not None and address in (dialer.address, url)
            ):
                if node_id is None:
                    node_id = dialer.node_id
                del self._dialers[url]
                dialer.disownServiceParent()
                found = True
        session = self.mesh.links.get(node_id) if node_id is not None else None
        if session is not None:
            session.close(CLOSE_REMOVED, "removed by the operator")
            found = True
        return found

    def use_session(self, session_class: type[PeerSession]) -> None:
        """Use a L{PeerSession} subclass (with extra handlers) for every link."""
        self.mesh.use_session(session_class)

    def register_handler(self, payload_type: type[Payload], handler: Callable[..., None]) -> None:
        """Handle messages of C{payload_type} addressed here with C{handler(envelope, payload)}."""
        self.mesh.register_handler(payload_type, handler)

    def send(self, node_id: str, payload: Payload) -> bool:
        """
        Send a message (any registered type) to node C{node_id}, routed like
        the built-in types.

        :returns: whether it left this node.
        """
        if node_id == self.node_id:
            raise ValueError("send() is for other nodes")
        return self.mesh.send(node_id, payload) is not None or self.mesh.can_reach(node_id)

    def info(self) -> dict[str, Any]:
        """:returns: what the built-in C{node.info()} answers."""
        return {
            "node_id": self.node_id,
            "version": __version__,
            "uptime": self.uptime(),  # seconds, as SPEC section 2 names it
            "uptime_s": self.uptime(),  # the same, as /health names it
            "servers": self.local_servers(),
            "peers": sorted(self.peers()),
            "timestamp": self.timestamp(),
        }

    # Apps and lifecycle.

    def load_app(self, spec: str) -> Deferred[None]:
        """
        Import the app C{spec} and run its C{setup(self)}.

        :raises StartupError: at once if the app cannot be imported or its
            setup raises synchronously.
        :returns: a Deferred that fires when setup is done; the node waits
            for it before it starts.
        """
        module = import_app(spec)
        d = run_setup(spec, module, self)
        if d.called and isinstance(d.result, Failure):
            failure = d.result
            d.addErrback(lambda _: None)  # reported by raising instead
            raise failure_exception(failure)
        self._setups.append(d)
        return d

    def listen(self) -> Deferred[IListeningPort | None]:
        """
        Start serving HTTP and peer WebSockets on the configured endpoint.

        :raises StartupError: at once if the endpoint refuses synchronously
            (a port in use, a bad description), as TCP and TLS endpoints do.
        :returns: a Deferred with the listening port; with C{None} if the
            endpoint refuses later, which is reported to C{on_fatal}.
        """
        from relaytx.rpc import make_site

        try:
            endpoint = self._endpoint()
        except StartupError:
            raise
        except Exception as e:
            raise StartupError(f"--port {self.config.port}: {e}") from None
        outcome: list[IListeningPort | Failure] = []

        def record(result: IListeningPort | Failure) -> IListeningPort | Failure:
            outcome.append(result)
            return result

        d = endpoint.listen(make_site(self))
        d.addBoth(record)
        if outcome and isinstance(outcome[0], Failure):
            d.addErrback(lambda _: None)
            raise StartupError(_listen_error(self.config.port, failure_exception(outcome[0])))

        def listening(port: IListeningPort) -> IListeningPort:
            self.listening_port = port
            self._warn_if_open(port)
            return port

        def failed(failure: Failure) -> None:
            self._on_fatal(_listen_error(self.config.port, failure_exception(failure)))

        return d.addCallbacks(listening, failed)

    def _warn_if_open(self, port: IListeningPort) -> None:
        """Say so when anyone beyond this machine could join the mesh."""
        if self.secret is not None:
            return
        host = getattr(port.getHost(), "host", None)
        if host is None:  # a UNIX socket: only this machine
            return
        try:
            beyond = not ipaddress.ip_address(host).is_loopback
        except ValueError:
            beyond = True
        if beyond:
            self._log.warn(
                "open mesh: listening on {host} without --secret-file, anyone who can "
                "reach it can link as any node id and call any server",
                host=host,
            )

    def _endpoint(self) -> IStreamServerEndpoint:
        description = self.config.port
        tls = self.config.tls
        plain = _PLAIN_TCP.fullmatch(description)
        interface = (plain.group("interface") or "").replace("\\:", ":") if plain else ""
        if tls is None or not tls.serves_tls:
            if plain is not None:
                # Twisted's default backlog of 50 overflows when many peers
                # (re)connect at once; their SYNs then wait seconds to retry.
                return TCP4ServerEndpoint(
                    self.reactor, int(plain.group("port")), backlog=1024, interface=interface
                )
            endpoint: IStreamServerEndpoint = serverFromString(self.reactor, description)
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
        return SSL4ServerEndpoint(
            self.reactor, int(plain.group("port")), options, interface=interface
        )

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen_once()

    def _listen_once(self) -> None:
        if self._listening is None:
            self._listening = self.listen()

    def startService(self) -> None:
        self._listen_once()
        for address in self.config.add_peer:
            if not any(d.address == address for d in self._dialers.values()):
                self.add_peer(address)
        super().startService()
        if self._setups:

            def setup_failed(failure: Failure) -> None:
                error = failure_exception(failure)
                if isinstance(error, FirstError):  # always, with fireOnOneErrback
                    error = failure_exception(error.subFailure)
                self._on_fatal(str(error))

            DeferredList(self._setups, fireOnOneErrback=True, consumeErrors=True).addErrback(
                setup_failed
            )

    def stopService(self) -> Deferred[None]:
        d = self.mesh.stop()
        d.addCallback(lambda _: super(RelayNode, self).stopService())
        if self.listening_port is not None:
            port, self.listening_port = self.listening_port, None
            self._listening = None
            d.addCallback(lambda _: port.stopListening())
        return d.addCallback(lambda _: None)

    def _stop_on_fatal(self, message: str) -> None:
        # An embedding application's default: log it and stop this node
        # (the command line exits the process instead: tap.CommandLineNode).
        self._log.critical("{message}", message=message)
        self.stopService()


def _timed_out(result: Any, timeout: float) -> Failure:
    return Failure(CallTimeout(f"Call timed out after {timeout:g}s", timeout=timeout))


def _listen_error(port: str, error: BaseException) -> str:
    if isinstance(error, CannotListenError):
        reason = error.socketError
        text = getattr(reason, "strerror", None) or str(reason)
        return f"cannot listen on {port}: {text}"
    return f"cannot listen on {port}: {error}"
