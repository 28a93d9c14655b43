# -*- test-case-name: tests.test_flow -*-
"""
What a WebSocket connection (a peer link or C{/ws/rpc}) may hold of a
node, and for how long (SPEC section 10):

  - B{output}: a connection whose unsent output passes C{max_write_buffer}
    is backed up. A client's (C{/ws/rpc}) is no longer read from (its
    transport's C{pauseProducing}), so a client that sends calls but never
    reads the answers stops at that bound. A peer link is still read: two
    nodes that each stopped reading the other while both sent much would
    wait on each other for ever (and take the silence for a dead link);
    its session holds back the calls it brings instead (L{relaytx.peer}),
    the only messages whose answers add to that output. Either is read on
    once its output has drained, and closed if still backed up after
    C{idle_timeout};
  - B{silence}: an idle C{/ws/rpc} connection is pinged, and closed when it
    has answered nothing for C{idle_timeout} (peer links have their
    session's own pings);
  - B{unfinished messages}: one still arriving after C{idle_timeout} is
    closed (1008), and all of them together, on every connection, hold at
    most C{max_buffered_input} bytes: a message that would pass it closes
    its connection (1013, try again later);
  - B{places}: a connection accepted as an HTTP request holds its place
    among the node's connections (L{relaytx._guards.ConnectionCounts}) until
    it is gone.

L{ConnectionWatch} does the rounds for one node: one timer, every quarter
of C{idle_timeout}, over its connections, and only while it has some. So
each of these closes comes between C{idle_timeout} and a quarter more.
L{WatchedConnection} is mixed into the WebSocket protocols ahead of
L{relaytx._frames.LeanMessages}.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from relaytx._guards import ConnectionCounts, FailureTally, HttpPolicy, InputBudget
from relaytx._listen import fit_connections
from relaytx.config import NodeConfig

_log = Logger()

#: Close codes (RFC 6455 section 7.4.1).
CLOSE_POLICY = 1008
CLOSE_TRY_LATER = 1013
CLOSE_GOING_AWAY = 1001

#: Bytes of memory a message's frame costs the node beyond its payload,
#: held against C{max_buffered_input} with it (a piece's bytes object and
#: its place in the message's list).
FRAME_COST = 64

#: Rounds of L{ConnectionWatch} per C{idle_timeout}.
ROUNDS = 4


def _descriptor(transport: Any) -> FileDescriptor | None:
    """:returns: the socket's transport under C{transport} (and its TLS layer)."""
    for _ in range(8):  # a TLS layer or two, never a loop
        if transport is None or isinstance(transport, FileDescriptor):
            return transport
        transport = getattr(transport, "transport", None)
    return None


@implementer(IPushProducer)
class Flow:
    """
    One connection's state for L{ConnectionWatch}, and the producer its
    socket pauses when its unsent output passes C{bufferSize}: only past
    the node's C{max_write_buffer} does that stop reading.
    """

    def __init__(self, protocol: Any, watch: ConnectionWatch, pings: bool) -> None:
        self.protocol = protocol
        self.watch = watch
        self.pings = pings
        self.descriptor: FileDescriptor | None = None
        self.reading_paused = False
        #: unsent output passed max_write_buffer and has not drained yet
        self.backed_up = False
        self.quiet_rounds = 0
        self.paused_rounds = 0
        self.message_rounds = 0
        self.held_input = 0
        #: a client's address (C{""}: not on IP), as its held input is
        #: shared out (L{InputBudget}); C{None}: a peer link
        self.client: str | None = None
        if pings:  # (the node pings its clients, C{/ws/rpc}; peers ping it)
            peer = getattr(getattr(protocol, "transport", None), "getPeer", lambda: None)()
            self.client = getattr(peer, "host", None) or ""
        #: output passed the socket's buffer and has not drained yet
        self.congested = False
        self._drained: list[Any] = []

    def register(self) -> None:
        """Become the producer of the connection's socket."""
        protocol = self.protocol
        descriptor = _descriptor(protocol.transport)
        if descriptor is None:  # not on a socket (tests' fake transports)
            return
        top = protocol.transport
        # An upgraded connection still has its HTTP channel as its producer.
        top.unregisterProducer()
        if descriptor is not top and descriptor.producer is not None:
            return  # a TLS layer's own: leave it be
        descriptor.registerProducer(self, True)
        self.descriptor = descriptor

    def unsent(self) -> int:
        """:returns: the bytes written to the connection and not sent yet."""
        fd = self.descriptor
        if fd is None:
            return 0
        # FileDescriptor's buffers: the one being sent, and the pieces after it.
        return len(fd.dataBuffer) - fd.offset + fd._tempDataLen

    def when_drained(self, callback: Any) -> None:
        """Call C{callback()} once the output has drained (at once if it has)."""
        if not self.congested:
            callback()
        elif callback not in self._drained:
            self._drained.append(callback)

    def pauseProducing(self) -> None:
        # Called at every write while more than bufferSize bytes wait.
        self.congested = True
        if not self.backed_up and self.unsent() > self.watch.max_write_buffer:
            self.backed_up = True
            self.paused_rounds = 0
            protocol = self.protocol
            if getattr(protocol, "reads_while_backed_up", False):
                protocol.output_backed_up()
                return
            self.reading_paused = True
            fd = self.descriptor
            if fd is not None:
                fd.pauseProducing()

    def resumeProducing(self) -> None:
        # Called once everything written has been sent. Reading resumes
        # first: what the callbacks write may pass the bound again, and
        # pause it again.
        self.congested = False
        if self.backed_up:
            self.backed_up = False
            if self.reading_paused:
                self.reading_paused = False
                fd = self.descriptor
                if fd is not None:
                    fd.resumeProducing()
            else:
                self.protocol.output_drained()
        drained, self._drained = self._drained, []
        for callback in drained:
            callback()

    def stopProducing(self) -> None:
        pass

    def release(self) -> None:
        """
        The connection is gone: let go of what it never sent. A closed
        connection's objects wait for the cycle collector (a protocol and
        its transport refer to each other), which may not run for a long
        while: a client that left 50 MiB of answers unread held them that
        long, connection after connection.
        """
        fd = self.descriptor
        if fd is not None:
            fd.dataBuffer, fd.offset = b"", 0
            fd._tempDataBuffer, fd._tempDataLen = [], 0
        self._drained = []


class ConnectionWatch:
    """
    The WebSocket connections of one node, and the rounds over them (see
    the module docstring).

    :param clock: the node's clock.
    :param idle_timeout: seconds of silence, of an unfinished message, or of
        unread output, after which a connection is closed.
    :param max_write_buffer: unsent bytes past which a connection is not read.
    :param budget: bytes of unfinished messages held, all connections.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        idle_timeout: float = 60.0,
        max_write_buffer: int = 4 * 1024 * 1024,
        budget: InputBudget | None = None,
    ) -> None:
        self._clock = clock
        self.idle_timeout = idle_timeout
        self.max_write_buffer = max_write_buffer
        self.budget = budget or InputBudget(32 * 1024 * 1024)
        self.flows: set[Flow] = set()
        self._rounds: LoopingCall | None = None
        self.closed = {"silent": 0, "unfinished": 0, "unread": 0, "busy": 0}
        #: the connections failed for what their far end sent, by kind
        self.failures = FailureTally()

    def watch(self, protocol: Any, pings: bool) -> Flow:
        """Watch C{protocol}'s connection; C{pings}: ping it when it is silent."""
        flow = Flow(protocol, self, pings)
        flow.register()
        self.flows.add(flow)
        if self._rounds is None:
            self._rounds = LoopingCall(self.round)
            self._rounds.clock = self._clock
            self._rounds.start(self.idle_timeout / ROUNDS, now=False)
        return flow

    def forget(self, flow: Flow) -> None:
        """C{flow}'s connection is gone."""
        self.flows.discard(flow)
        if flow.held_input:
            self.budget.give_back(flow.held_input, flow.client)
            flow.held_input = 0
        if not self.flows:
            self.stop()

    def stop(self) -> None:
        """No more rounds (until a connection is watched again)."""
        rounds, self._rounds = self._rounds, None
        if rounds is not None and rounds.running:
            rounds.stop()

    def close_clients(self) -> None:
        """
        The node stops: close the clients' connections (those it pings,
        C{/ws/rpc}) with 1001, going away, each once its answers so far
        are written. Peer links close on their own, with 1000.
        """
        for flow in list(self.flows):
            protocol = flow.protocol
            if flow.pings and protocol.state == protocol.STATE_OPEN:
                protocol.sendCloseFrame(
                    code=CLOSE_GOING_AWAY, reasonUtf8=b"node stopping", isReply=False
                )

    def round(self) -> None:
        """One round over every connection."""
        for flow in list(self.flows):
            protocol = flow.protocol
            if protocol.read_since_round:
                protocol.read_since_round = False
                flow.quiet_rounds = 0
            else:
                flow.quiet_rounds += 1
            # (Autobahn sets inside_message once the opening handshake is
            # done: a connection still opening is inside no message.)
            if getattr(protocol, "unfinished_message", False):
                flow.message_rounds += 1
            else:
                flow.message_rounds = 0
            if flow.backed_up:
                flow.paused_rounds += 1
            # A message (or a pause) seen at n rounds began up to a round
            # before the first of them: n - 1 rounds is all it surely lasted,
            # so one is closed at ROUNDS + 1 (after idle_timeout, never
            # before). A quiet spell counts from the round after the last
            # read: ROUNDS of them are idle_timeout at least already.
            if flow.paused_rounds > ROUNDS:
                self._close(flow, "unread", "output not read")
            elif flow.message_rounds > ROUNDS:
                self._close(flow, "unfinished", "message not finished in time")
            elif flow.pings and flow.quiet_rounds >= ROUNDS:
                self._close(flow, "silent", "no answer to ping")
            elif flow.pings and flow.quiet_rounds >= ROUNDS // 2:
                if protocol.state == protocol.STATE_OPEN:
                    protocol.sendPing()

    def _close(self, flow: Flow, what: str, reason: str) -> None:
        self.closed[what] += 1
        self._log.debug(
            "closing {peer}: {reason}", peer=getattr(flow.protocol, "peer", None), reason=reason
        )
        self.forget(flow)
        protocol = flow.protocol
        if what == "unfinished":
            # A client still sending: it is told why, then the connection
            # ends once the close frame is written.
            protocol.sendCloseFrame(code=CLOSE_POLICY, reasonUtf8=reason.encode(), isReply=False)
            protocol.transport.loseConnection()
            return
        # A connection that reads nothing (or answers nothing) would not
        # read a close either: cut it.
        protocol.dropConnection(abort=True)


class _Silent:
    """A logger, as Autobahn's protocols use theirs, that logs nothing."""

    def __getattr__(self, level: str) -> Any:
        return _nothing


def _nothing(*args: Any, **kwargs: Any) -> None:
    pass


def quietly(protocol: Any, step: Any, **kwargs: Any) -> None:
    """Take one step of an Autobahn C{protocol} with its logging off."""
    log, protocol.log = protocol.log, _Silent()
    try:
        step(**kwargs)
    finally:
        protocol.log = log


class WatchedConnection:
    """
    Mixed into a WebSocket protocol (ahead of L{LeanMessages}) whose
    factory has a C{watch} (a L{ConnectionWatch}, or C{None}): the
    connection is watched while it is open, its unfinished messages are
    counted in the watch's budget, and its place among the node's
    connections (C{slot}, handed over from its HTTP channel) is given
    back when it goes.
    """

    #: ping this connection when it is silent (peer links ping by themselves)
    pings = False
    #: read on while the output is backed up (a peer link, see the module
    #: docstring): L{output_backed_up} and L{output_drained} say when
    reads_while_backed_up = False
    #: a place among the node's connections: C{(counts, ip)}
    slot: tuple[ConnectionCounts, str] | None = None
    flow: Flow | None = None
    # Autobahn's.
    factory: Any
    transport: Any
    failedByMe: bool
    read_since_round: bool
    STATE_CLOSED: int

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[misc]  # Autobahn's, next in the MRO
        watch = getattr(self.factory, "watch", None)
        if watch is not None:
            self.flow = watch.watch(self, self.pings)

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        # Autobahn's, without its warning for every connection it fails: a
        # client or a stranger fails one at will (a frame unmasked, or too
        # large). The node logs each kind once per doubling of its count.
        if getattr(self, "state", None) != self.STATE_CLOSED:  # (else nothing to fail)
            watch = getattr(self.factory, "watch", None)
            count = 1 if watch is None else watch.failures.failed(f"{code}: {reason}")
            if count is not None:
                _log.warn(
                    "failed a WebSocket connection from {peer} (code={code}): {reason} "
                    "({count} time(s))",
                    peer=getattr(self, "peer", None), code=code, reason=reason, count=count,
                )  # fmt: skip
        quietly(self, super()._fail_connection, code=code, reason=reason)  # type: ignore[misc]

    def output_backed_up(self) -> None:
        """The unsent output passed C{max_write_buffer} (see L{reads_while_backed_up})."""

    def output_drained(self) -> None:
        """The output backed up has drained."""

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)  # type: ignore[misc]
        # A frame's own cost is held too: half a million one-byte
        # fragments of an unfinished message held some 27 MiB against 5 MB
        # counted, for each connection that sent them.
        self._hold_input(length + FRAME_COST)

    def onMessageEnd(self) -> None:
        self._give_input_back()
        super().onMessageEnd()  # type: ignore[misc]

    def short_frame_begins(self, size: int) -> None:
        # A short frame waiting for its rest (LeanMessages) is held input
        # too: many connections each holding one just under 64 KiB would
        # otherwise pass max_buffered_input unseen.
        self._hold_input(size)

    def short_frame_done(self) -> None:
        self._give_input_back()

    def _hold_input(self, size: int) -> None:
        """C{size} bytes of a message arrive: held, if the budget has room (else 1013)."""
        flow = self.flow
        if flow is None or self.failedByMe:
            return
        if not flow.watch.budget.take(size, flow.client):
            flow.watch.closed["busy"] += 1
            self._fail_connection(CLOSE_TRY_LATER, "node busy: too much input held; retry later")
            return
        flow.held_input += size

    def _give_input_back(self) -> None:
        flow = self.flow
        if flow is not None and flow.held_input:
            flow.watch.budget.give_back(flow.held_input, flow.client)
            flow.held_input = 0

    def connectionLost(self, reason: Any) -> None:
        flow, self.flow = self.flow, None
        if flow is not None:
            flow.watch.forget(flow)
        slot, self.slot = self.slot, None
        if slot is not None:
            slot[0].release(slot[1])
        super().connectionLost(reason)  # type: ignore[misc]
        if flow is not None:
            flow.release()
        queue = getattr(self, "send_queue", None)  # (Autobahn's frames not written yet)
        if queue:
            queue.clear()
        # An unfinished message's pieces, freed now rather than whenever the
        # cycle collector gets to the closed connection.
        drop = getattr(self, "drop_message", None)
        if drop is not None:
            drop()


@define
class NodeGuards:
    """
    What SPEC section 10 keeps for one node: who may use its HTTP surface
    (C{policy}), the connections it holds (C{connections}, made when the
    node first serves, fitted to its file descriptors) and its WebSocket
    connections' watch (C{watch}).
    """

    policy: HttpPolicy
    watch: ConnectionWatch
    header_timeout: float
    max_connections: int
    max_connections_per_ip: int
    _connections: ConnectionCounts | None = field(default=None, alias="_connections")

    @classmethod
    def build(cls, config: NodeConfig, clock: IReactorTime) -> NodeGuards:
        """:returns: the guards of a node with C{config}, on C{clock}."""
        http, limits = config.http, config.limits
        return cls(
            HttpPolicy(http.tokens, http.admins, config.allowed_origins, http.allowed_hosts),
            ConnectionWatch(
                clock,
                limits.idle_timeout,
                limits.max_write_buffer,
                InputBudget(limits.max_buffered_input),
            ),
            limits.header_timeout,
            limits.max_connections,
            limits.max_connections_per_ip,
        )

    @property
    def connections(self) -> ConnectionCounts:
        """The connections the node holds, in total and per address."""
        if self._connections is None:
            total, per_ip = fit_connections(self.max_connections, self.max_connections_per_ip)
            self._connections = ConnectionCounts(total, per_ip)
        return self._connections

    def site_options(self) -> dict[str, Any]:
        """:returns: the guards' part of L{relaytx._http.make_site}'s arguments."""
        return {
            "policy": self.policy,
            "counts": self.connections,
            "watch": self.watch,
            "header_timeout": self.header_timeout,
            "idle_timeout": self.watch.idle_timeout,
        }
