# -*- test-case-name: tests.test_peer,tests.test_mesh -*-
"""
Test doubles for relaytx, for your tests and ours (in the spirit of
C{treq.testing} and C{autobahn.twisted.testing}). Nothing here opens a socket
or touches the global reactor, and nothing in relaytx imports this module.

Two levels:

  - L{FakeLinkTransport} is a passive L{ILinkTransport}: it records the frames
    a L{PeerSession} sends and the close codes it asks for, and does nothing
    else. Drive one session by hand with it: feed frames to
    C{session.data_received}, move the node's clock, read what came out::

        node = memory_node("hB")
        transport = FakeLinkTransport()
        session = node.mesh.open_link("hA", "inbound", "test", transport)
        session.data_received(b'{"type":"ping","from":"hA","to":"hB","data":{"timestamp":2}}')
        [pong] = transport.envelopes("pong")

  - L{MemoryMesh} connects whole L{RelayNode}s through paired in-memory
    transports. A frame one session sends waits in a single FIFO queue until
    L{MemoryMesh.pump} delivers it to the other session's C{data_received};
    nothing is delivered re-entrantly, so a long chain of forwards never
    recurses and every test sees one deterministic order of events::

        clock = MemoryReactorClock()
        a, b, c = (memory_node(name, clock) for name in "abc")
        network = MemoryMesh()
        network.link(a, b)
        network.link(b, c)
        network.settle()                   # registry syncs exchanged
        d = a.call("c", "node", "echo", 1)
        network.pump()
        assert successResultOf(d) == [1]

    L{link_nodes} is the one-line form for two nodes. A link can be paused
    (frames wait, as on a stalled connection), closed by either session
    (C{connection_lost} reaches both once the close is pumped, after any
    frames sent before it) or L{cut <MemoryLink.cut>} (both ends lose it at
    once and frames in flight are lost).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from relaytx._adverts import SYNC_DELAY
from relaytx._routing import MRAI
from relaytx.config import build_config
from relaytx.interfaces import ILinkTransport
from relaytx.peer import PeerSession
from relaytx.wire import Envelope, decode

if TYPE_CHECKING:
    from relaytx.node import RelayNode

__all__ = [
    "FakeLinkTransport",
    "MemoryLink",
    "MemoryLinkTransport",
    "MemoryMesh",
    "line",
    "link_nodes",
    "memory_node",
]


def memory_node(node_id: str, reactor: Any = None, **options: Any) -> RelayNode:
    """
    Make a node that never listens, on a fake reactor.

    :param node_id: the node's id.
    :param reactor: its reactor and clock; a new C{MemoryReactorClock} by
        default. Several nodes may share one, so one C{advance} moves them
        all.
    :param options: any other L{build_config} option, e.g.
        C{disable_registry=True} or C{ping_interval=1.0}.
    :returns: a L{RelayNode}, not started.
    """
    from relaytx.node import RelayNode

    config = build_config({"node_id": node_id, **options})
    if reactor is None:
        reactor = MemoryReactorClock()
    return RelayNode(config, reactor)


@implementer(ILinkTransport)
class FakeLinkTransport:
    """
    An L{ILinkTransport} that records what a session asks of it and does
    nothing more: in particular L{close} and L{abort} do not call the
    session's C{connection_lost}; call it yourself to finish a close.

    @ivar frames: every frame sent, in order.
    @ivar closes: every C{(code, reason)} the session closed with.
    @ivar aborted: whether the session dropped the connection.
    @ivar pings: how many WebSocket pings the session sent.
    """

    sealed = False

    def __init__(self, peer_address: str = "fake:peer") -> None:
        """
        :param peer_address: what C{peer_address} shows.
        """
        self.peer_address = peer_address
        self.frames: list[bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.aborted = False
        self.pings = 0

    def send(self, frame: bytes) -> None:
        """Record one text frame."""
        if not isinstance(frame, bytes):
            raise TypeError(f"frames are bytes, not {type(frame).__name__}")
        self.frames.append(frame)

    def close(self, code: int, reason: str) -> None:
        """Record a close and its code."""
        self.closes.append((code, reason))

    def abort(self) -> None:
        """Record that the connection was dropped."""
        self.aborted = True

    def ping(self) -> None:
        """Count a WebSocket ping (no pong comes: call the session's C{reading})."""
        self.pings += 1

    @property
    def close_code(self) -> int | None:
        """The code of the first close, or C{None} if the session never closed."""
        return self.closes[0][0] if self.closes else None

    def envelopes(self, *types: str) -> list[Envelope]:
        """
        :param types: message types to keep; all of them when none are given.
        :returns: the frames sent so far, decoded, in order.
        """
        decoded = [decode(frame) for frame in self.frames]
        return [e for e in decoded if not types or e.type in types]

    def clear(self) -> None:
        """Forget the frames recorded so far (closes and abort are kept)."""
        self.frames.clear()


class MemoryLinkTransport(FakeLinkTransport):
    """
    One end of a L{MemoryLink}: records like L{FakeLinkTransport} and also
    hands frames, closes and aborts to the link, which queues them for the
    other end.
    """

    def __init__(self, link: MemoryLink, side: int, peer_address: str) -> None:
        super().__init__(peer_address)
        self._link = link
        self._side = side

    def send(self, frame: bytes) -> None:
        super().send(frame)
        self._link._enqueue(("frame", 1 - self._side, frame))

    def close(self, code: int, reason: str) -> None:
        super().close(code, reason)
        self._link._close(code, reason)

    def abort(self) -> None:
        super().abort()
        self._link._drop(f"aborted by {self._link.nodes[self._side].node_id}")

    def ping(self) -> None:
        super().ping()
        self._link._enqueue(("ping", 1 - self._side, None))


class MemoryLink:
    """
    A link between two nodes of a L{MemoryMesh}, made by L{MemoryMesh.link}.
    Side 0 dialled (its session is C{"outbound"}), side 1 accepted.

    @ivar nodes: the two nodes, dialler first.
    @ivar transports: their ends, as L{MemoryLinkTransport}s (each records
        what its own session sent).
    @ivar sessions: their sessions.
    @ivar close_code: the code of the close that ended the link, if one did.
    @ivar delivered: how many frames reached a session.
    @ivar discarded: how many frames were lost (sent after the link closed or
        in flight when it was cut or aborted).
    """

    def __init__(self, network: MemoryMesh, a: RelayNode, b: RelayNode) -> None:
        self.network = network
        self.nodes = (a, b)
        self.transports = (
            MemoryLinkTransport(self, 0, f"memory:{b.node_id}"),
            MemoryLinkTransport(self, 1, f"memory:{a.node_id}"),
        )
        self.sessions: tuple[PeerSession, PeerSession] | None = None
        self.paused = False
        self.closing = False
        self.closed = False
        self.close_code: int | None = None
        self.delivered = 0
        self.discarded = 0
        self._held: deque[tuple[str, int, Any]] = deque()

    def __repr__(self) -> str:
        a, b = self.nodes
        state = "closed" if self.closed else "closing" if self.closing else "open"
        return f"<MemoryLink {a.node_id}->{b.node_id} {state}>"

    def _side_of(self, node: RelayNode | str) -> int:
        node_id = node if isinstance(node, str) else node.node_id
        for side, n in enumerate(self.nodes):
            if n.node_id == node_id:
                return side
        raise KeyError(f"{node_id!r} is not an end of {self!r}")

    def session_of(self, node: RelayNode | str) -> PeerSession:
        """:returns: C{node}'s session on this link."""
        if self.sessions is None:
            raise RuntimeError(f"{self!r} is not open yet")
        return self.sessions[self._side_of(node)]

    def transport_of(self, node: RelayNode | str) -> MemoryLinkTransport:
        """:returns: C{node}'s end of this link (what C{node} sent is in its C{frames})."""
        return self.transports[self._side_of(node)]

    def sent_by(self, node: RelayNode | str, *types: str) -> list[Envelope]:
        """:returns: the messages C{node} sent on this link (of C{types}, if given)."""
        return self.transport_of(node).envelopes(*types)

    # Control.

    def pause(self) -> None:
        """Hold every frame on this link, in order, until L{resume}."""
        self.paused = True
        self.network._hold(self)

    def resume(self) -> None:
        """Release the held frames; L{MemoryMesh.pump} then delivers them."""
        self.paused = False
        self.network._queue.extend((self, event) for event in self._held)
        self._held.clear()

    def cut(self, reason: str = "cut") -> None:
        """
        The connection breaks: frames in flight are lost and both sessions
        get C{connection_lost} now.
        """
        self._discard()
        self._lose(reason)

    # Called by the transports.

    def _enqueue(self, event: tuple[str, int, Any], stall: bool = True) -> None:
        if self.closed:
            self.discarded += event[0] == "frame"
            return
        if self.paused and stall:
            self._held.append(event)
        else:
            self.network._queue.append((self, event))

    def _close(self, code: int, reason: str) -> None:
        if self.closing or self.closed:
            return
        self.closing = True
        self.close_code = code
        self._enqueue(("close", 0, f"close code {code}" + (f": {reason}" if reason else "")))

    def _drop(self, reason: str) -> None:
        if self.closed:
            return
        self._discard()
        self.closing = True
        self._enqueue(("lost", 0, reason), stall=False)  # a dropped connection is no stall

    def _discard(self) -> None:
        self.discarded += sum(1 for kind, _, _ in self._held if kind == "frame")
        self._held.clear()
        self.network._remove(self)

    def _deliver(self, event: tuple[str, int, Any]) -> None:
        kind, side, payload = event
        if self.closed or self.sessions is None:
            self.discarded += kind == "frame"
            return
        if kind == "frame":
            session = self.sessions[side]
            if session.transport is None:  # it already lost the link on its own
                self.discarded += 1
                return
            self.delivered += 1
            session.data_received(payload)
        elif kind in ("ping", "pong"):
            # A WebSocket ping and its pong: bytes the session hears as any
            # others; the WebSocket under it answers a ping, as Autobahn does.
            session = self.sessions[side]
            if session.transport is not None:
                session.reading()
                if kind == "ping":
                    self._enqueue(("pong", 1 - side, None))
        else:
            self._lose(payload)

    def _lose(self, reason: str) -> None:
        if self.closed:
            return
        self.closing = self.closed = True
        if self.sessions is not None:
            for session in self.sessions:
                session.connection_lost(reason)


class MemoryMesh:
    """
    An in-memory network of L{RelayNode}s. Frames wait in one FIFO queue
    until L{pump} delivers them, so every run of a test sees the same order.

    The nodes keep their own clocks (one shared C{MemoryReactorClock} is
    simplest); L{advance} and L{settle} move every clock of a linked node.

    @param shuffle: deliver in an order drawn from this (a seeded
        C{random.Random}, so a run can be repeated) rather than first come,
        first served: each delivery takes the oldest event of a link picked
        at random among those with events waiting. Each link stays in order,
        as a connection is; links overtake one another, as real ones do.

    @ivar links: every link made, open or not, in order.
    """

    def __init__(self, shuffle: random.Random | None = None) -> None:
        self.links: list[MemoryLink] = []
        self._queue: deque[tuple[MemoryLink, tuple[str, int, Any]]] = deque()
        self._shuffle = shuffle

    def link(self, a: RelayNode, b: RelayNode, registry_said: bool = True) -> MemoryLink:
        """
        Open a link: C{a} dials C{b}. Both sessions start at once (their
        first pings and registry syncs are queued, not delivered).

        :param registry_said: whether each end hears if the other's registry
            is off, as a relaytx handshake says (C{False}: as from a node that
            did not say).

        Each node uses its own session class (C{node.use_session}). A second
        link between the same two nodes replaces the first, as a reconnection
        does.

        :raises relaytx._mesh.LinkRefused: if either node refuses the link.
        """
        a.mesh.check_new_link(b.node_id, "outbound")
        b.mesh.check_new_link(a.node_id, "inbound")
        link = MemoryLink(self, a, b)
        self.links.append(link)
        # Accept first, as the server side of a WebSocket opens first. Each
        # hears whether the other's registry is off, as a handshake says.
        session_b = b.mesh.open_link(
            a.node_id, "inbound", f"memory:{a.node_id}", link.transports[1],
            quiet=registry_said and not a.mesh.adverts.enabled,
        )  # fmt: skip
        session_a = a.mesh.open_link(
            b.node_id, "outbound", f"memory:{b.node_id}", link.transports[0],
            quiet=registry_said and not b.mesh.adverts.enabled,
        )  # fmt: skip
        link.sessions = (session_a, session_b)
        return link

    def link_between(self, a: RelayNode | str, b: RelayNode | str) -> MemoryLink:
        """:returns: the latest link between C{a} and C{b}, whichever dialled."""
        ids = {n if isinstance(n, str) else n.node_id for n in (a, b)}
        for link in reversed(self.links):
            if {n.node_id for n in link.nodes} == ids:
                return link
        raise KeyError(f"no link between {sorted(ids)}")

    def pump(self, limit: int = 100_000) -> int:
        """
        Deliver queued frames and closes, including those sent in answer,
        until nothing is left to deliver. The clocks do not move.

        :param limit: give up after this many deliveries (a message loop).
        :returns: how many events were delivered.
        :raises RuntimeError: past C{limit}.
        """
        count = 0
        shuffle = self._shuffle
        while self._queue:
            queue = self._queue  # (a link paused or cut meanwhile leaves a new one)
            if count >= limit:
                raise RuntimeError(f"still delivering after {limit} events: a message loop?")
            if shuffle is None:
                link, event = queue.popleft()
            else:
                link = queue[shuffle.randrange(len(queue))][0]
                at = next(i for i, (owner, _) in enumerate(queue) if owner is link)
                event = queue[at][1]
                del queue[at]
            count += 1
            link._deliver(event)
        return count

    def clocks(self) -> list[Any]:
        """:returns: the distinct clocks of the linked nodes."""
        seen: dict[int, Any] = {}
        for link in self.links:
            for node in link.nodes:
                seen.setdefault(id(node.mesh.clock), node.mesh.clock)
        return list(seen.values())

    def advance(self, seconds: float, limit: int = 100_000) -> None:
        """
        Move every clock forward by C{seconds}, stopping at each timer on
        the way to fire it and L{pump} what it sent, as time passes in a
        real network: a long advance does not starve links of their pongs.

        :param limit: give up after this many stops (a timer loop).
        :raises RuntimeError: past C{limit}.
        """
        clocks = self.clocks()
        if not clocks:
            return
        # The time to reach, on the first clock (the others move in step):
        # every stop is measured from it, so that many small steps do not
        # add up to a rounding error that leaves a timer due at the end
        # unfired.
        reference = clocks[0]
        target = reference.seconds() + seconds
        for _ in range(limit):
            remaining = target - reference.seconds()
            due = [
                call.getTime() - clock.seconds()
                for clock in clocks
                for call in clock.getDelayedCalls()
                if call.active()
            ]
            step = min((d for d in due if d <= remaining), default=None)
            if step is None:
                break
            step = max(step, 0.0)
            for clock in clocks:
                clock.advance(step)
            self.pump()
        else:
            raise RuntimeError(f"still firing timers after {limit} stops: a timer loop?")
        remaining = max(target - reference.seconds(), 0.0)
        for clock in clocks:
            clock.advance(remaining)
        self.pump()

    def settle(self, step: float = SYNC_DELAY, limit: float = 1.0) -> float:
        """
        Let the network go quiet: pump, and while some timer is due within
        C{step} seconds (a coalesced registry sync) or some node's adverts
        wait out their damping (L{relaytx._routing.Router.ready}), move the clocks
        on by C{step} and pump again. Timers further away (pings, call
        timeouts, the end of a lost link's notice) are left alone.

        :param limit: never move the clocks more than this in total.
        :returns: how far the clocks moved.
        """
        moved = 0.0
        self.advance(0)
        while moved < limit and (self._timer_due_within(step) or self._adverts_due()):
            self.advance(step)
            moved += step
        return moved

    def _timer_due_within(self, step: float) -> bool:
        for clock in self.clocks():
            now = clock.seconds()
            if any(call.getTime() <= now + step for call in clock.getDelayedCalls()):
                return True
        return False

    def _adverts_due(self) -> bool:
        for link in self.links:
            for node in link.nodes:
                due = node.mesh.adverts.send_due()
                if due is not None and due <= node.mesh.clock.seconds() + MRAI + SYNC_DELAY:
                    return True
        return False

    def _hold(self, link: MemoryLink) -> None:
        kept: deque[tuple[MemoryLink, tuple[str, int, Any]]] = deque()
        for owner, event in self._queue:
            if owner is link:
                link._held.append(event)
            else:
                kept.append((owner, event))
        self._queue = kept

    def _remove(self, link: MemoryLink) -> None:
        kept: deque[tuple[MemoryLink, tuple[str, int, Any]]] = deque()
        for owner, event in self._queue:
            if owner is link:
                link.discarded += event[0] == "frame"
            else:
                kept.append((owner, event))
        self._queue = kept


def link_nodes(a: RelayNode, b: RelayNode, network: MemoryMesh | None = None) -> MemoryLink:
    """
    Link two nodes in memory (C{a} dials C{b}).

    :param network: the L{MemoryMesh} to add the link to; a new one by
        default. Reach it as the link's C{network} to L{MemoryMesh.pump}.
    :returns: the L{MemoryLink}.
    """
    return (network if network is not None else MemoryMesh()).link(a, b)


def line(nodes: Iterable[RelayNode], network: MemoryMesh | None = None) -> MemoryMesh:
    """
    Link C{nodes} in a line, each dialling the next.

    :returns: the L{MemoryMesh} holding the links.
    """
    network = network if network is not None else MemoryMesh()
    previous = None
    for node in nodes:
        if previous is not None:
            network.link(previous, node)
        previous = node
    return network
