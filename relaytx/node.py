# -*- test-case-name: tests.test_node -*-
"""
L{RelayNode}: one relaytx node, and the composition root: the one place
that builds a node's parts and wires them together.

  - L{ServerHost} (C{_hosting}): the node's servers and their mailboxes;
  - L{CallDispatcher} (C{_dispatch}): where each call goes, under the
    node's limits, counted in its metrics;
  - L{Mesh} (C{_mesh}): links, routes and calls across the mesh;
  - L{NodeViews} (C{_views}): what the node shows of itself;
  - L{PeerAdmin} (C{_dialer}): the peers it dials;
  - the HTTP site (C{_http}) and the peer endpoint (C{_protocol}), on one
    listener (C{_listen}).

Applications use the node's Python API: L{RelayNode.expose},
L{RelayNode.call}, L{RelayNode.stream}, L{RelayNode.send}, L{RelayNode.use_session} and
L{RelayNode.register_handler}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, FirstError, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaytx import __version__
from relaytx._aio import AioDeferred, coroutine_runner, owner_finder
from relaytx._apps import import_app, run_setup
from relaytx._auth import read_secret
from relaytx._balance import Balancer
from relaytx._calls import DEFAULT_CALL_TIMEOUT, CallTarget
from relaytx._dashboard import DashboardResource
from relaytx._dialer import PeerAdmin
from relaytx._dispatch import CallDispatcher
from relaytx._exporters import start_tracing
from relaytx._flow import NodeGuards
from relaytx._hosting import ServerHost
from relaytx._http import NodeSite, make_site
from relaytx._limits import CallLimiter
from relaytx._listen import listen_site, startup_line, startup_warnings
from relaytx._mesh import Mesh
from relaytx._metrics import NodeMetrics
from relaytx._pki import NodeIdentity, load_identity
from relaytx._protocol import PeerServerFactory, peer_resource
from relaytx._streams import DEFAULT_WINDOW, ItemStream
from relaytx._tls import TlsError
from relaytx._views import NodeServer, NodeViews
from relaytx.config import NodeConfig
from relaytx.errors import StartupError, failure_exception
from relaytx.peer import PeerSession
from relaytx.server import Server, TurnSlice
from relaytx.wire import Payload


def load_trust(config: NodeConfig) -> tuple[bytes | None, NodeIdentity | None]:
    """
    :returns: the cluster secret (C{--secret-file}), and in PKI mode the
        node's identity from its C{[tls]} files.
    :raises StartupError: if either cannot be used, or the certificate does
        not name the node.
    """
    secret = None
    if config.secret_file is not None:
        try:
            secret = read_secret(config.secret_file)
        except (OSError, ValueError) as e:
            raise StartupError(f"--secret-file: {e}") from None
    tls = config.tls
    if tls is None or not tls.pki:
        return secret, None
    assert tls.cert is not None and tls.ca is not None  # pki
    try:
        return secret, load_identity(config.node_id, tls.cert, tls.key, tls.ca)
    except TlsError as e:
        raise StartupError(str(e)) from None


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

    @ivar mesh: the node's side of the peer network.
    @ivar views: what it shows of itself (its HTTP endpoints' bodies).
    @ivar dispatcher: where its calls go.
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
        self.node_id = node_id = config.node_id
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.metrics = metrics = NodeMetrics()
        self.listening_port: IListeningPort | None = None
        self._site: NodeSite | None = None
        self._listening: Deferred[IListeningPort | None] | None = None
        self._on_fatal = on_fatal or self._stop_on_fatal
        self._setups: list[Deferred[None]] = []
        #: the cluster secret; whether node ids come from certificates (SPEC section 9)
        self.secret, identity = load_trust(config)
        self.pki = identity is not None
        limits = config.limits
        #: methods' and coroutines' time since the reactor last turned
        turn_slice = TurnSlice(reactor)
        #: how coroutines (async methods, async setups) run on this reactor
        self.run_coroutine = coroutine_runner(reactor, turn_slice)
        #: who owns a stream opened now (relaytx._streams.ItemStream)
        self._stream_owner = owner_finder(reactor)
        self.servers = ServerHost(
            node_id, reactor, config.access, run_coroutine=self.run_coroutine, turn_slice=turn_slice
        )
        self.servers.max_result_size = limits.max_message_size
        metrics.watch_queue_depth(self.servers.queue_depth)
        self.limiter = CallLimiter(
            reactor, limits.max_in_flight, limits.max_in_flight_per_caller, limits.calls_per_second
        )
        self.dispatcher = CallDispatcher(node_id, reactor, metrics, self.limiter, self.servers)
        self.mesh = Mesh(
            node_id,
            reactor,
            metrics,
            run_arrived=self.dispatcher.run_arrived,
            local_servers=self.servers.local_servers,
            ping_interval=config.ping_interval,
            peer_timeout=config.peer_timeout,
            registry_enabled=not config.disable_registry,
            max_pending_calls=limits.max_pending_calls,
            max_message_size=limits.max_message_size,
            max_routes=limits.max_routes,
            strict_links=self.secret is not None or self.pki,
            identity=identity,
        )
        self.dispatcher.remote = self.mesh
        self.dispatcher.balancer = self.balancer = Balancer.serving(
            node_id, reactor, config.balance, self.mesh, self.servers
        )  # where location-transparent calls go (SPEC section 11)
        self.views = NodeViews(node_id, reactor, self.servers, self.mesh, reactor.seconds(),
                               __version__, self.balancer)  # fmt: skip
        #: who may use the HTTP surface, and what connections may hold (SPEC section 10)
        self.guards = NodeGuards.build(config, reactor)
        self.peer_admin = PeerAdmin(
            self.mesh, reactor, limits.max_message_size, self.secret, config.tls,
            max_dialers=limits.max_dialers, watch=self.guards.watch,
        )  # fmt: skip
        self.views.failing_peers = self.peer_admin.failing
        self.mesh.removed_by = self.peer_admin.removed_by
        self.peer_admin.setServiceParent(self)
        #: the node's tracer, when C{[tracing]} names an exporter (SPEC section 13)
        self.tracer = start_tracing(self, config.tracing, self.dispatcher, self.servers, self.mesh)
        self.servers.expose("node", NodeServer(self.views))

    # The Python API.

    def expose(self, name: str, server: Server) -> None:
        """
        Host C{server} under C{name}.

        :raises ValueError: if the name is invalid or already taken.
        :raises TypeError: if C{server} is not a L{Server}.
        """
        self.servers.expose(name, server)

    def unexpose(self, name: str) -> Server:
        """
        Stop hosting the server called C{name}; calls already queued still run.

        :returns: the server.
        :raises KeyError: if there is none.
        :raises ValueError: for the built-in server C{node}.
        """
        if name == "node":
            raise ValueError("the built-in 'node' server cannot be removed")
        return self.servers.unexpose(name)

    def local_servers(self) -> dict[str, list[str]]:
        """:returns: each local server's name and its exposed methods."""
        return self.servers.local_servers()

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
        Call C{server.method(*args, **kwargs)} on C{node_id} (C{None}: the
        instance the node's policy for C{server} picks, SPEC section 11).

        :returns: a Deferred with the result, or failing with a
            L{relaytx.errors.CallError}; cancelling it cancels the call. An
            asyncio task may await it too (C{asyncio.gather},
            C{asyncio.wait_for}, on the asyncio reactor): cancelling the
            task cancels the call (L{relaytx._aio.AioDeferred}).
        """
        d = self.dispatcher.call(CallTarget(node_id, server, method, args, kwargs, timeout))
        if type(d) is Deferred:  # awaitable_by_tasks, inline on this hot path
            d.__class__ = AioDeferred
        return d

    def stream(
        self,
        node_id: str | None,
        server: str,
        method: str,
        *args: Any,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        window: int = DEFAULT_WINDOW,
        **kwargs: Any,
    ) -> ItemStream:
        """
        Stream the items of the async generator C{server.method(*args,
        **kwargs)} on C{node_id} (as L{call}), at most C{window} items ahead
        of the loop (SPEC section 12; L{relaytx._streams.ItemStream}).

        The stream is tied to the asyncio task, or the node's run of a
        method, that opens it: when that ends, the stream is cancelled if
        it is still open. C{detach()} it to keep it beyond its opener (see
        L{relaytx._streams.ItemStream}).

        :returns: an async iterator of the items.
        :raises ValueError: for a window out of range (1 to 4096).
        """
        what = f"{server}.{method}"
        items = ItemStream(self.clock, window, what, self._stream_owner())
        target = CallTarget(node_id, server, method, args, kwargs, timeout, stream=items.consumer)
        items.attach(self.dispatcher.call(target))
        return items

    def send(self, node_id: str, payload: Payload) -> bool:
        """
        Send a message (any registered type) to node C{node_id}, routed like
        the built-in types.

        :returns: whether it left this node.
        """
        if node_id == self.node_id:
            raise ValueError("send() is for other nodes")
        forwarder = self.mesh.forwarder
        floods = forwarder.floods
        return self.mesh.send(node_id, payload) is not None or forwarder.floods > floods

    def use_session(self, session_class: type[PeerSession]) -> None:
        """Use a L{PeerSession} subclass (with extra handlers) for every link."""
        self.mesh.use_session(session_class)

    def register_handler(self, payload_type: type[Payload], handler: Callable[..., None]) -> None:
        """Handle messages of C{payload_type} addressed here with C{handler(envelope, payload)}."""
        self.mesh.register_handler(payload_type, handler)

    def add_peer(self, address: str, node_id: str | None = None) -> None:
        """
        Dial the peer at C{address} now and keep re-dialling it while it is
        down.

        :raises ValueError: if C{address} is not a peer URL or is already
            dialled.
        """
        self.peer_admin.add_peer(address, node_id)

    def remove_peer(self, node_id: str | None = None, address: str | None = None) -> bool:
        """
        Close the link to C{node_id} and stop re-dialling it; or stop
        dialling C{address}.

        :returns: whether there was such a link or dialled peer.
        """
        return self.peer_admin.remove_peer(node_id, address)

    # Apps and lifecycle.

    def load_app(self, spec: str) -> Deferred[None]:
        """
        Import the app C{spec} and run its C{setup(self)}.

        :raises StartupError: at once if the app cannot be imported or its
            setup raises synchronously.
        :returns: a Deferred that fires when setup is done; the node
            accepts no connection until it has.
        """
        module = import_app(spec)
        d = run_setup(spec, module, self, self.run_coroutine)
        if d.called and isinstance(d.result, Failure):
            failure = d.result
            d.addErrback(lambda _: None)  # reported by raising instead
            raise failure_exception(failure)
        self._setups.append(d)
        return d

    def site(self) -> Any:
        """:returns: the HTTP site serving this node (JSON-RPC, registry, peer links)."""
        limits = self.config.limits
        peers = PeerServerFactory(
            self.mesh,
            limits.max_message_size,
            allowed_origins=self.config.allowed_origins,
            reactor=self.reactor,
            secret=self.secret,
            pki=self.pki,
            watch=self.guards.watch,
        )
        return make_site(
            self.node_id,
            self.dispatcher.dispatch,
            self.views,
            self.peer_admin,
            self.metrics,
            peer_resource(peers),
            limits.max_body_size,
            self.reactor,
            dashboard=DashboardResource(self.views.mesh_watch),
            max_batch=limits.max_batch,
            **self.guards.site_options(),
        )

    def listen(self) -> Deferred[IListeningPort | None]:
        """
        Start serving HTTP and peer WebSockets on the configured endpoint.

        :raises StartupError: at once if the endpoint refuses synchronously
            (a port in use, a bad description), as TCP and TLS endpoints do.
        :returns: a Deferred with the listening port; with C{None} if the
            endpoint refuses later, which is reported to C{on_fatal}.
        """

        def listening(listening_port: IListeningPort) -> IListeningPort:
            self.listening_port = listening_port
            pending = [d for d in self._setups if not d.called]
            if not pending:
                self._warn(listening_port)
                return listening_port
            # An app's setup is not done yet: the port is bound (a port in
            # use is told at once) but accepts no connection until it is,
            # so no one sees a node without its servers; connections wait
            # in the listen backlog.
            pause = getattr(listening_port, "stopReading", None)  # (a tcp or unix Port)
            if pause is not None:
                pause()
            self._log.info("serving once the apps' setup is done")

            def set_up(results: list[tuple[bool, None]]) -> None:
                if self.listening_port is listening_port and all(ok for ok, _ in results):
                    if pause is not None:
                        listening_port.startReading()  # type: ignore[attr-defined]
                    self._warn(listening_port)

            DeferredList(pending).addCallback(set_up)
            return listening_port

        self._site = site = self.site()
        return listen_site(
            self.config.port, self.config.tls, self.reactor, site, listening, self._on_fatal
        )

    def _warn(self, port: IListeningPort) -> list[str]:
        startup_line(port, self.config, sorted(self.servers.local_servers()), __version__)
        return startup_warnings(
            port, self.config, self.secret is not None, self.pki, self.guards.policy.requires_token
        )

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen_once()

    def _listen_once(self) -> None:
        if self._listening is None:
            self._listening = self.listen()

    def startService(self) -> None:
        self._listen_once()
        self.views.rates.start()
        super().startService()
        pending = [d for d in self._setups if not d.called]
        if pending:
            # As it accepts no connection (see listen), it dials no peer
            # either until its apps are set up: no peer sees it without
            # its servers.
            DeferredList(pending).addCallback(self._dial_peers)
        else:
            self._dial_peers()
        if self._setups:

            def setup_failed(failure: Failure) -> None:
                error = failure_exception(failure)
                if isinstance(error, FirstError):  # always, with fireOnOneErrback
                    error = failure_exception(error.subFailure)
                self._on_fatal(str(error))

            DeferredList(self._setups, fireOnOneErrback=True, consumeErrors=True).addErrback(
                setup_failed
            )

    def _dial_peers(self, setups: list[tuple[bool, None]] | None = None) -> None:
        if not self.running or (setups and not all(ok for ok, _ in setups)):
            return  # (stopped while its apps were set up, or one failed)
        for address in self.config.add_peer:
            if not self.peer_admin.is_dialling(address):
                self.add_peer(address)

    def stopService(self) -> Deferred[None]:
        # No new connection from the first moment: a call that came while
        # the links close (up to a second, for a peer slow to answer the
        # close) ran, and its client was cut off without an answer.
        unlistened: Deferred[object] | None = None
        if self.listening_port is not None:
            port, self.listening_port = self.listening_port, None
            self._listening = None
            unlistened = maybeDeferred(port.stopListening)
        self.guards.watch.stop()
        self.views.mesh_watch.stop()
        self.views.rates.stop()
        d = self.mesh.stop()
        self.servers.stop()  # (after the mesh has answered its callers)
        self.guards.watch.close_clients()
        if self._site is not None:
            # Its HTTP connections too, their answers written: kept alive,
            # they went on being served by a node that had stopped (an
            # embedded one's dashboard feed waited on it for ever).
            self._site.close_channels()
        d.addCallback(lambda _: super(RelayNode, self).stopService())
        if unlistened is not None:
            d.addCallback(lambda _: unlistened)
        return d.addCallback(lambda _: None)

    def _stop_on_fatal(self, message: str) -> None:
        # An embedding application's default: log it and stop this node
        # (the command line exits the process instead: tap.CommandLineNode).
        self._log.critical("{message}", message=message)
        self.stopService()
