# -*- test-case-name: tests.test_peer -*-
"""
L{PeerSession}: one link to a directly connected node, free of any
transport. The Autobahn protocols in L{relaytx._protocol} only feed it frames
and carry out what it asks (send a frame, close); tests drive it with a list
and a L{Clock}. It reaches the rest of the node only through its host, an
L{ISessionHost} (the node's mesh).

A session owns the link's keepalive (a ping every C{ping_interval} on the
node's clock, RTT), what the node's L{relaytx._liveness.LinkWatch} needs
to notice a peer that stops answering (when the first request since the
peer was last heard from left, until when calls sent on it may be
outstanding), and the table of message handlers.

To add a message type, subclass and declare a handler; the table is merged
along the class hierarchy and a subclass wins::

    @frozen
    class Chat(Payload):
        TYPE = "chat"
        text: str

    class ChatSession(PeerSession):
        @handles(Chat)
        def on_chat(self, envelope: Envelope, chat: Chat) -> None:
            print(envelope.sender, "says", chat.text)

then give the class to the node (C{node.use_session(ChatSession)}) and send
with C{node.send(node_id, Chat("hi"))}: it is routed like the built-in
types, through nodes that do not know it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from relaytx.errors import (
    MalformedMessage,
    MessageTooLarge,
    ProtocolViolation,
    UnknownMessageType,
)
from relaytx.interfaces import ILinkTransport, ISessionHost
from relaytx.wire import (
    Envelope,
    LinkClose,
    Payload,
    Ping,
    Pong,
    RegistrySync,
    ServerCall,
    ServerResponse,
    decode,
    encode,
    rfc3339,
)

#: The type of the messages held back while a link's output is backed up.
_CALL = ServerCall.TYPE

# WebSocket close codes this module uses (RFC 6455 section 7.4 and the
# application range 4000-4999).
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
#: never sent: what a connection that broke without a closing handshake is told
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_REPLACED = 4001
CLOSE_REMOVED = 4002
CLOSE_AUTH_FAILED = 4003
#: the codes of a link closed on purpose: it says nothing of either node
CLOSE_ON_PURPOSE = (CLOSE_REMOVED, CLOSE_REPLACED)
#: The codes a session closes a link with for what its peer sent.
_CLOSED_FOR_INPUT = frozenset({CLOSE_INVALID_PAYLOAD, CLOSE_UNSUPPORTED_DATA})

H = TypeVar("H", bound=Callable[..., Any])


def handles(*payload_types: type[Payload]) -> Callable[[H], H]:
    """
    Declare a L{PeerSession} method as the handler of C{payload_types}. It is
    called with the envelope and the typed payload.
    """

    def mark(fn: H) -> H:
        fn.__relaytx_handles__ = (  # type: ignore[attr-defined]  # a mark on the function
            *getattr(fn, "__relaytx_handles__", ()),
            *payload_types,
        )
        return fn

    return mark


class PeerSession:
    """
    One link to neighbour C{peer_id}.

    :param host: the node's mesh, which routes and runs what arrives.
    :param direction: C{"outbound"} on the side that dialled, else
        C{"inbound"}.
    :param original: whether the peer is a node of the original design,
        not a relaytx node: it takes frames only from its direct peers and
        forwards nothing, so calls from other nodes reach it through this
        node (L{relaytx._meshcalls.MeshCalls.relay}) and flooded copies
        never go to it.

    @ivar last_seen: when a frame last arrived from the peer.
    @ivar waiting_since: when the first request (a call, a ping) left on
        this link since the peer was last heard from; C{None} when it has
        answered since.
    @ivar busy_until: until when calls sent on this link may still be
        outstanding (the latest of their deadlines).
    """

    _log = Logger()

    #: payload class -> name of the handling method; merged along the MRO.
    handlers: ClassVar[dict[type[Payload], str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _collect_handlers(cls)

    def __init__(
        self,
        host: ISessionHost,
        peer_id: str,
        direction: str,
        address: str,
        original: bool = False,
    ) -> None:
        self.host = host
        self.peer_id = peer_id
        self.direction = direction
        self.address = address
        self.original = original
        self.transport: ILinkTransport | None = None
        self.last_seen = host.clock.seconds()
        #: when its link opened
        self.opened_at = self.last_seen
        self.rtt: float | None = None
        self.healthy = True
        self.closed = False
        #: the close code this end closed the link with, if it did
        self.closed_with: int | None = None
        #: whether the link authenticates its frames (see L{close})
        self.sealed = False
        #: the code the peer said, in an authenticated frame, it closes with
        self.close_told: int | None = None
        self.waiting_since: float | None = None
        self.busy_until = 0.0
        self.probed_at = float("-inf")
        #: whether the node's link watch holds this session
        self.watched = False
        self._lost = False
        self._pinger: LoopingCall | None = None

    # The transport's side.

    def connection_made(self, transport: ILinkTransport) -> None:
        """The link is open: start liveness and announce ourselves."""
        self.transport = transport
        self.sealed = bool(getattr(transport, "sealed", False))
        self.last_seen = self.opened_at = self.host.clock.seconds()
        self._pinger = LoopingCall(self._tick)
        self._pinger.clock = self.host.clock
        self._pinger.start(self.host.ping_interval, now=True)

    def reading(self) -> None:
        """Part of a frame arrived: the peer is alive, as a whole frame would show."""
        self.last_seen = self.host.clock.seconds()
        self.waiting_since = None

    def data_received(self, frame: bytes) -> None:
        """
        One text frame arrived. After this node closed the link for what
        the peer sent (not JSON, a binary frame), what comes is dropped: a
        call sent right behind the bad frame, in the same burst, had run,
        and its answer could not be sent.
        """
        self.last_seen = self.host.clock.seconds()
        self.waiting_since = None  # heard from: it can answer what it was asked
        if self.closed and self.closed_with in _CLOSED_FOR_INPUT:
            return
        try:
            envelope = decode(frame)
        except MalformedMessage as e:
            self.host.bad_input(e, self)
            if e.reason in ("not_json", "not_object"):
                self.close(CLOSE_INVALID_PAYLOAD, "frames must be JSON objects")
            return
        if self.holding and envelope.type == _CALL:
            self._hold(envelope, len(frame))
            return
        self.host.receive(envelope, self)

    # Calls held back while the link's output is backed up.

    #: whether calls arriving wait (L{hold_calls})
    holding = False
    _held: deque[tuple[Envelope, int]] | None = None
    _held_bytes = 0
    _hold_limit = 0

    #: the link's unsent output, in bytes (while L{holding})
    unsent: Callable[[], int] = staticmethod(lambda: 0)

    def backed_up_past_bound(self) -> bool:
        """Whether the link's unsent output is past what calls may add to (L{hold_calls})."""
        return self.holding and self.unsent() > self._hold_limit

    def hold_calls(self, limit: int, unsent: Callable[[], int] | None = None) -> None:
        """
        The link's unsent output passed the node's bound: calls arriving on
        it (for this node or passing through), whose answers would add to
        that output, wait until it drains (L{release_calls}); everything
        else is taken as it comes. Past C{limit} bytes held, a call is
        refused at once (-32005); and while the output itself is past
        C{limit} (C{unsent()}), so is a call that would leave by the link
        (L{relaytx._forwarding}). (The link is still read: see
        L{relaytx._flow}.)
        """
        self.holding = True
        self._hold_limit = limit
        if unsent is not None:
            self.unsent = unsent
        if self._held is None:
            self._held = deque()

    def release_calls(self) -> None:
        """The output has drained: the calls held are taken, in order."""
        self.holding = False
        held = self._held
        while held and not self.holding and not self.closed:
            envelope, size = held.popleft()
            self._held_bytes -= size
            self.host.receive(envelope, self)

    def _hold(self, envelope: Envelope, size: int) -> None:
        held = self._held
        assert held is not None  # (holding)
        if self._held_bytes + size > self._hold_limit:
            self.host.refuse_held(envelope, self)
            return
        held.append((envelope, size))
        self._held_bytes += size

    def binary_received(self) -> None:
        """A binary frame arrived: the protocol is text only."""
        self.host.bad_input(ProtocolViolation("binary frame", reason="binary"), self)
        self.close(CLOSE_UNSUPPORTED_DATA, "binary frames are not accepted")

    def connection_lost(self, reason: str = "") -> None:
        """The link is gone, whatever the cause. Safe to call twice."""
        if self._lost:
            return
        self._lost = self.closed = True
        if self._held:
            self._held.clear()  # (their callers hear of the lost link)
            self._held_bytes = 0
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._pinger = None
        self.transport = None
        self.host.link_lost(self, reason)

    # Sending and closing.

    def send(self, envelope: Envelope, room: int = 0, frame: bytes | None = None) -> None:
        """
        Send C{envelope} on this link.

        :param room: bytes to keep free under the node's message limit (for
            what the nodes on its way will add).
        :param frame: C{envelope} encoded already (by a sender that had to
            know its size), so that it is not encoded twice.
        :raises MessageTooLarge: if it exceeds the node's message limit.
        """
        if self.transport is not None and not self.closed:
            if frame is None:
                frame = encode(envelope)
            limit = self.host.max_message_size
            if len(frame) + room > limit:
                kept = f" ({room} bytes kept for the hops on its way)" if room else ""
                raise MessageTooLarge(
                    f"a {envelope.type} of {len(frame)} bytes is over the {limit}-byte limit{kept}",
                    len(frame),
                )
            self.transport.send(frame)

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """
        Close the link with a WebSocket close code. On a link that seals its
        frames, a close on purpose (L{CLOSE_ON_PURPOSE}) is said first in a
        sealed C{link_close}: a close frame is not authenticated, and a man
        in the middle who forged one could otherwise stop a dialler for good.
        """
        if self.transport is not None and not self.closed:
            if self.sealed and code in CLOSE_ON_PURPOSE:
                now = self.host.clock.seconds()
                self.send(Envelope.create(LinkClose(code), self.host.node_id, self.peer_id, now))
            self.closed = True
            self.closed_with = code
            self.healthy = False  # nothing more is sent on it
            self.transport.close(code, reason)

    def peer_closed_on_purpose(self, code: int | None) -> int | None:
        """
        :param code: the close code the peer's close frame gave.
        :returns: C{code} if it is a close on purpose (L{CLOSE_ON_PURPOSE})
            the peer can be taken at its word for: on a link that seals its
            frames, only one it said in a sealed C{link_close} first.
        """
        if code not in CLOSE_ON_PURPOSE or (self.sealed and self.close_told != code):
            return None
        return code

    # Dispatch.

    def dispatch(self, envelope: Envelope) -> None:
        """
        Handle a message addressed to this node with the handler declared
        for its type (or registered on the node). Unknown types and bad
        payloads are counted and dropped (a C{server_call} that names a
        response id is also answered with an error); the link stays up.
        """
        host = self.host
        try:
            payload = host.message_types.payload(envelope)
        except (UnknownMessageType, MalformedMessage) as e:
            host.bad_input(e, self)
            if envelope.type == ServerCall.TYPE:
                host.bad_call(envelope, e, self)  # its caller hears why, if it can
            return
        name = self.handlers.get(type(payload))
        if name is not None:
            getattr(self, name)(envelope, payload)
            return
        handler = host.handler_for(type(payload))
        if handler is not None:
            handler(envelope, payload)
            return
        host.bad_input(UnknownMessageType(f"no handler for {envelope.type!r}"), self)

    @handles(Ping)
    def on_ping(self, envelope: Envelope, ping: Ping) -> None:
        """Answer with a pong echoing the ping's timestamp (the original's shape)."""
        pong = Pong(timestamp=ping.timestamp, pong_time=int(self.host.clock.seconds()))
        self.host.send(envelope.sender, pong, reply_to=envelope.id)

    @handles(Pong)
    def on_pong(self, envelope: Envelope, pong: Pong) -> None:
        """
        A pong from this neighbour to our ping: measure the round trip. A
        pong to one of the node's probes (C{traceroute}) goes to the node.
        """
        if (envelope.reply_to is not None or self.original) and self.host.probe_answered(envelope):
            return
        stamp = pong.timestamp
        if envelope.sender != self.peer_id or isinstance(stamp, bool):
            return
        if not isinstance(stamp, int | float):
            return
        rtt = self.host.clock.seconds() - stamp
        if 0 <= rtt < 3600:
            self.rtt = rtt
            self.host.link_measured(self, rtt)

    @handles(ServerCall)
    def on_server_call(self, envelope: Envelope, call: ServerCall) -> None:
        """Run a call addressed to this node and send the answer back."""
        self.host.run_call(envelope, call, self)

    @handles(ServerResponse)
    def on_server_response(self, envelope: Envelope, response: ServerResponse) -> None:
        """Settle one of this node's pending calls."""
        self.host.settle(envelope, response, self)

    @handles(RegistrySync)
    def on_registry_sync(self, envelope: Envelope, sync: RegistrySync) -> None:
        """Take a neighbour's servers and routes (only a neighbour's own)."""
        if envelope.sender != self.peer_id:
            self.host.bad_input(
                ProtocolViolation("registry_sync from a non-neighbour", reason="spoofed"), self
            )
            return
        self.host.take_advert(sync, self)

    # Liveness.

    def awaiting(self, now: float, until: float = 0.0) -> None:
        """
        A request left on this link at C{now}: the peer must be heard from
        within the node's peer timeout.

        :param until: for a call, its deadline: the link is probed while it
            is quiet until then.
        """
        if until > self.busy_until:
            self.busy_until = until
        if self.waiting_since is None:
            self.waiting_since = now
        if not self.watched:
            self.watched = True
            self.host.watch(self)

    def calls_out(self) -> bool:
        """
        :returns: whether some call sent on this link may still be waiting
            for its answer (C{busy_until} is only the latest deadline).
        """
        return bool(self.host.calls_out(self))

    def probe(self, now: float) -> None:
        """Ping the peer now, to hear from it sooner than the keepalive would."""
        self.probed_at = now
        self.send(Envelope.create(Ping(timestamp=now), self.host.node_id, self.peer_id, now))
        if self.waiting_since is None:
            self.waiting_since = now

    def nudge(self, now: float) -> None:
        """
        The link has been idle for a while: send a WebSocket ping, whose
        pong (as any bytes) says the peer is alive, and wait for it like
        any request. The node's link watch, which nudges, watches it
        (L{relaytx._liveness}).

        An original-design node gets a C{ping} of its own shape instead:
        SPEC section 7 has it answer that, while a minimal WebSocket under
        it might leave a WebSocket ping unanswered.
        """
        if self.transport is None:
            return
        if self.original:
            self.probe(now)
            return
        self.probed_at = now  # (one ping per spell: no probe after it)
        self.transport.ping()
        if self.waiting_since is None:
            self.waiting_since = now

    def challenge(self) -> None:
        """
        Another connection claims this link's peer id, and is refused while
        this link looks healthy: ask the peer to answer now. A link that
        died without a FIN (a cable, a partition, the peer restarted behind
        it) is then dropped within the peer timeout, and the claimant gets
        in at its next try, instead of after the next keepalive; a live
        peer answers and keeps its link. One ping per answer at most: none
        while a request is already unanswered.
        """
        if self.closed or self.waiting_since is not None:
            return
        now = self.host.clock.seconds()
        self.probe(now)
        self.awaiting(now)

    def silent(self, waited: float) -> None:
        """
        The peer left a request unanswered for C{waited} seconds: drop the
        link (aborted: a close handshake would wait for it too).
        """
        self.healthy = False
        self._log.info(
            "peer {peer} silent for {silent:.2f}s after a request: dropping its link",
            peer=self.peer_id,
            silent=waited,
        )
        if self.transport is not None:
            self.transport.abort()
        self.connection_lost("silent")

    def _tick(self) -> None:
        # The keepalive: every ping_interval, whether or not the link is
        # busy, as before; an unanswered one drops the link (LinkWatch).
        now = self.host.clock.seconds()
        self.send(Envelope.create(Ping(timestamp=now), self.host.node_id, self.peer_id, now))
        self.awaiting(now)

    def view(self, server_count: int) -> dict[str, Any]:
        """
        :param server_count: how many servers the peer advertised.
        :returns: this link as C{GET /registry/peers} shows it.
        """
        return {
            "node_id": self.peer_id,
            "address": self.address,
            "direction": self.direction,
            "is_healthy": self.healthy and not self.closed,
            "last_seen": rfc3339(self.last_seen),
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "server_count": server_count,
        }


def _collect_handlers(cls: type[PeerSession]) -> None:
    table = dict(cls.handlers)
    for name, fn in vars(cls).items():
        for payload_type in getattr(fn, "__relaytx_handles__", ()):
            table[payload_type] = name
    cls.handlers = table


_collect_handlers(PeerSession)
