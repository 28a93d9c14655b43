# -*- test-case-name: tests.test_adverts,tests.test_mesh -*-
"""
L{Advertiser}: a node's side of the registry exchange (C{registry_sync}).
It tells neighbours what this node hosts and what it can reach (what goes
out on each link is L{AdvertWriter}'s), and takes their adverts into the
routing table; L{Directory} answers the questions the registry answers:
which nodes host a server, and which is nearest.

How a link uses C{registry_sync} (the wire format is in L{relaytx.wire}):

  - When a link opens, each side sends at once its own servers, in the
    original design's shape, numbered C{seq} 1. A neighbour that never
    numbers its adverts (an older relaytx) does not route: it only ever
    gets that shape again, when our servers change. An original-design
    node does not route either, but is told what this node reaches as a
    routing neighbour is (below), less this node's other original-design
    neighbours (L{relaytx._routing.Exports.listeners}); what it says is
    taken as its servers only.
  - A neighbour whose adverts are numbered routes: it gets our whole table
    once (C{full}, split into frames under the message limit, C{more} on
    all but the last), then only changes: destinations added or changed,
    withdrawn, and servers, each when they change. In steady state nothing
    is sent.
  - Every advert on a link is numbered one more than the one before. A
    gap (an advert lost or dropped) makes the receiver ask for the whole
    table again (C{resync}), at most every L{RESYNC_RETRY} seconds until it
    comes; an advert numbered below what it expects is stale and ignored.
  - Changes are sent within L{SYNC_DELAY}, coalesced, except those the
    routing table holds back a moment (L{Router.ready}: BGP's minimum route
    advertisement interval, and paths through a node that just lost a link);
    withdrawals are never held.
  - A link that closes becomes a notice (C{down}) in the next adverts that
    withdraw or change paths through it (L{relaytx._routing}).

Link costs come from the RTT of each link's pings (L{relaytx._latency}),
except those measured while the node itself is busy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from relaytx._balance import InstanceInfo
from relaytx._latency import LinkCosts
from relaytx._links import LinkTable
from relaytx._metrics import NodeMetrics
from relaytx._ribs import AdjRib
from relaytx._routing import Router
from relaytx.peer import PeerSession
from relaytx.wire import Envelope, NodeInfo, RegistrySync, RouteAdvert, encode, rfc3339

#: Changes within this many seconds are announced in one registry_sync.
SYNC_DELAY = 0.02

#: The most a mark told of this node may move its own number (a member
#: cannot send it past any number a sane mesh makes).
_MAX_RENUMBER = 1 << 32

#: A timer this late (seconds) means the reactor is busy: round trips
#: measured within L{BUSY_HOLD} seconds of it do not count for link costs.
BUSY_LATENESS = 0.01
BUSY_HOLD = 30.0

#: Seconds a relaytx peer's route waits, untold, for its first advert (its
#: servers and number) before it is told without them (L{Router.link_up}).
HELLO_WAIT = 3.0

#: Seconds between two requests for a neighbour's whole table while none comes.
RESYNC_RETRY = 2.0

#: Instance entries (C{info}) in one advert at most.
INFO_PER_FRAME = 500

#: Bytes of a frame left for the envelope around an advert's data.
_ENVELOPE_ROOM = 1024


class _Link:
    """What the exchange knows of one link."""

    __slots__ = (
        "expect",
        "full_due",
        "hello_sent",
        "hello_wait",
        "listens",
        "resync_asked",
        "resync_wanted",
        "routes",
        "seq",
        "staging",
        "told_info",
        "told_info_at",
        "told_servers",
        "told_sn",
    )

    def __init__(self) -> None:
        self.seq = 0  # the last advert we sent on it
        self.expect = 1  # the next advert we expect from it
        self.hello_sent = False
        self.hello_wait: IDelayedCall | None = None  # until the peer's route is told anyway
        self.routes = False  # it numbers its adverts: a router
        self.listens = False  # it hears our table, and tells us its servers only
        self.full_due = False  # it gets our whole table next
        self.told_servers: Mapping[str, tuple[str, ...]] | None = None
        self.told_sn: int | None = None
        self.staging: AdjRib | None = None  # its whole table, while it arrives
        self.resync_wanted = False  # we missed an advert: we want its whole table
        self.resync_asked: float | None = None  # when we last asked for it
        self.told_info: dict[str, int] = {}  # the instance entries' versions it holds
        self.told_info_at = 0  # InstanceInfo.changes_for's mark of what it was last told

    def end_wait(self) -> None:
        """Stop waiting for the peer's first advert (see L{HELLO_WAIT})."""
        if self.hello_wait is not None and self.hello_wait.active():
            self.hello_wait.cancel()
        self.hello_wait = None


class Advertiser:
    """
    :param local_servers: returns this node's servers and their methods.
    :param enabled: C{False} with C{--disable-registry}: nothing is sent or
        taken, and the directory is empty.
    :param max_message_size: the largest frame a link may send.
    :param on_change: called when the routing table changed.
    :param info: the nodes' instance entries, told to routing neighbours.
    """

    _log = Logger()

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        metrics: NodeMetrics,
        router: Router,
        links: LinkTable,
        local_servers: Callable[[], Mapping[str, list[str]]],
        enabled: bool = True,
        max_message_size: int = 1024 * 1024,
        on_change: Callable[[], None] = lambda: None,
        info: InstanceInfo | None = None,
    ) -> None:
        self._node_id = node_id
        self._clock = clock
        self._metrics = metrics
        self._router = router
        self._links = links
        self._local_servers = local_servers
        self.enabled = enabled
        self._on_change = on_change
        self._call: IDelayedCall | None = None
        self._due = 0.0
        self._busy_until = 0.0
        self._everyone = False
        self._peers: set[str] = set()
        self._state: dict[str, _Link] = {}
        #: the links whose peer routes (L{_Link.routes}), and those whose
        #: peer's whole table we may want (L{_Link.resync_wanted}): a hub of
        #: thousands of bare links looks at these at each advert, not at all
        self._routing: set[str] = set()
        self._resyncing: set[str] = set()
        self._overflow_logged: set[str] = set()
        self._costs = LinkCosts()
        self.writer = AdvertWriter(node_id, router, metrics, max_message_size)
        #: when the routing table last changed (clock seconds)
        self.changed_at: float | None = None
        #: this node's own sequence number (see L{relaytx._routing})
        self.own_sn = initial_sn(clock.seconds())
        self._changes_seen = 0
        self.info = info
        if info is not None:
            info.on_change = self.info_changed
            info.listening = self._has_routers

    def _has_routers(self) -> bool:
        return bool(self._routing)

    def info_changed(self) -> None:
        """An instance entry changed: routing neighbours hear it soon."""
        if self._routing:
            self.schedule(peers=list(self._routing))

    # Link events.

    def link_opened(self, peer_id: str, original: bool = False, quiet: bool = False) -> None:
        """
        A new link (or one that replaces another): it hears from us at once.

        :param original: the peer is an original-design node, which may
            never say its servers: its route is told at once. A relaytx
            peer's is told once its first advert came, or after
            L{HELLO_WAIT} (see L{Router.link_up}).
        :param quiet: the peer is a relaytx node that said its registry is
            off: no advert will come, and its route is told at once too.
        """
        heard = original or quiet or not self.enabled
        self._router.link_up(
            peer_id, now=self._clock.seconds() if self.enabled else None, heard=heard
        )
        state = self._state.get(peer_id)
        if state is not None:
            state.end_wait()  # (a link that replaces another)
        self._routing.discard(peer_id)
        state = self._state[peer_id] = _Link()
        if original and self.enabled:
            state.listens = state.full_due = True
            self._router.exports.listeners.add(peer_id)
        if not heard:
            state.hello_wait = self._clock.callLater(HELLO_WAIT, self._hello_late, peer_id, state)
        if self.enabled:
            self.schedule(at_once=True, peers=[peer_id])
        self._changed()

    def _hello_late(self, peer_id: str, state: _Link) -> None:
        # A relaytx peer that says nothing (its registry is off, or it is
        # slow): its route is told as it is.
        state.hello_wait = None
        if self._state.get(peer_id) is state:
            self._heard(peer_id, state)
            self._changed()

    def _heard(self, peer_id: str, state: _Link) -> None:
        state.end_wait()
        self._router.heard(peer_id)
        if len(self._state) > 1:
            # Its route goes to the others at once, as it did at link-up
            # (a node with no other neighbour has no one to tell).
            self.schedule(at_once=True, peers=())

    def link_closed(self, peer_id: str, failed: bool = True, mark: bool = True) -> None:
        """
        A link closed: forget it and what it said.

        :param failed: it failed, or the peer stopped (not removed on purpose
            with both ends knowing it): the peer may mark this node
            unreachable, which numbers itself anew.
        :param mark: the peer may be gone: mark it unreachable (see
            L{Router.link_down}).
        """
        state = self._state.pop(peer_id, None)
        if state is not None:
            state.end_wait()
        self._routing.discard(peer_id)
        self._resyncing.discard(peer_id)
        self._overflow_logged.discard(peer_id)
        for other, cost in self._costs.remove(peer_id).items():
            self._router.set_cost(other, cost)
        now = self._clock.seconds() if self.enabled else None
        self._router.link_down(peer_id, now, mark=mark)
        self._stamp()
        # (The mesh fails the calls that went through the link, then those
        # to nodes now out of reach: no on_change here.)
        if failed and state is not None and state.routes:
            # The other end may mark us unreachable: we number ourselves
            # above that, and everyone hears it. (Not for a link whose peer
            # never told its table: a stranger's hundreds of dropped links
            # each numbered a node anew, past the number its next life
            # starts at, and the restarted node stayed under its old marks,
            # unreachable mesh-wide for a minute.)
            self.own_sn += 2
            self.schedule(peers=None)
        else:
            self.schedule(peers=())

    def link_measured(self, peer_id: str, rtt: float) -> None:
        """
        A round trip on the link to C{peer_id} was measured. A round trip
        measured while this node's reactor runs late says how busy the node
        is, not how slow the link is: it is left out.
        """
        now = self._clock.seconds()
        if now < self._busy_until:
            return
        self._set_costs(self._costs.sample(peer_id, rtt))

    def _set_costs(self, costs: Mapping[str, int]) -> None:
        for peer_id, cost in costs.items():
            self._log.info("link to {peer} now costs {cost}", peer=peer_id, cost=cost)
            self._router.set_cost(peer_id, cost)
        if costs:
            self._changed()

    def _changed(self) -> None:
        self._stamp()
        if self._router.dirty:
            self._on_change()
            self.schedule(peers=())

    def _stamp(self) -> None:
        changes = self._router.changes
        if changes != self._changes_seen:
            self._changes_seen = changes
            self.changed_at = self._clock.seconds()

    # Sending.

    def schedule(
        self, at_once: bool = False, peers: Iterable[str] | None = None, delay: float | None = None
    ) -> None:
        """
        Announce this node's servers and routes soon, coalescing changes
        that come close together.

        :param peers: the neighbours that need to hear (besides every router,
            when routes changed); all of them when C{None} (this node's
            servers changed). Only those are visited, so a hub with
            thousands of bare links pays per change for whom it concerns.
        :param delay: send after this many seconds (L{SYNC_DELAY} by default).
        """
        if not self.enabled or self._links.stopping:
            return
        if peers is None:
            self._everyone = True
        else:
            self._peers.update(peers)
        wait = 0.0 if at_once else SYNC_DELAY if delay is None else delay
        due = self._clock.seconds() + wait
        if self._call is not None and self._call.active():
            if due >= self._due:
                return
            self._call.cancel()
        self._due = due
        self._call = self._clock.callLater(wait, self._send)

    def send_due(self) -> float | None:
        """:returns: when the next adverts go out (clock seconds), if any are due."""
        if self._call is None or not self._call.active():
            return None
        return self._due

    def stop(self) -> None:
        """Send nothing more (the node is stopping)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        for state in self._state.values():
            state.end_wait()

    def _send(self) -> None:
        self._call = None
        now = self._clock.seconds()
        if now - self._due > BUSY_LATENESS:
            # The reactor ran this timer late: round trips measured now, and
            # for a while, would be the node's own delay.
            self._busy_until = now + BUSY_HOLD
        router = self._router
        if router.expire_notices(now):
            self._stamp()
            self._on_change()
        ready, release = router.exports.ready(now)
        state = self._state
        if self._everyone:
            targets = set(state)
        else:
            targets = {p for p in self._peers if p in state}
        targets.update(self._resyncs())
        if ready or router.news.notices or router.news.ups:  # (news is told at once)
            targets |= self._routing
        if router.exports.for_listeners(ready):
            targets |= router.exports.listeners
        self._everyone = False
        self._peers = set()
        own = {name: tuple(methods) for name, methods in self._local_servers().items()}
        own_sn = self.own_sn
        links = self._links
        for peer_id in sorted(targets):
            session = links.get(peer_id)
            if session is not None:
                link = state[peer_id]
                self.writer.send_to(peer_id, session, link, own, own_sn, ready, now)
                if self.info is not None and link.routes:
                    changes, link.told_info_at = self.info.changes_for(
                        link.told_info, link.told_info_at
                    )
                    if changes:
                        self.writer.send_info(peer_id, session, link, changes, now)
        router.exports.exported(ready, now)
        self._reschedule(now, release)

    def _reschedule(self, now: float, release: float | None) -> None:
        due = [] if release is None else [release]
        expiry = self._router.next_notice_expiry()
        if expiry is not None:
            due.append(expiry)
        for state in self._resyncs().values():
            if state.resync_asked is not None:
                due.append(state.resync_asked + RESYNC_RETRY)
        if due:
            self.schedule(peers=(), delay=max(0.001, min(due) - now))

    def _resyncs(self) -> dict[str, _Link]:
        """The links whose peer's whole table we want (a gap), by peer."""
        wanted = {}
        for peer_id in list(self._resyncing):
            state = self._state.get(peer_id)
            if state is None or not state.resync_wanted:
                self._resyncing.discard(peer_id)  # (it came)
            else:
                wanted[peer_id] = state
        return wanted

    # Taking.

    def take(self, sync: RegistrySync, session: PeerSession) -> None:
        """Take a neighbour's advert (see the module docstring)."""
        peer_id = session.peer_id
        state = self._state.get(peer_id)
        if not self.enabled or state is None or self._links.get(peer_id) is not session:
            return
        router = self._router
        changed = False
        if sync.seq is None:
            # An original-design node: its servers, nothing more.
            if sync.servers is not None:
                changed = router.neighbour_servers(peer_id, sync.servers)
            if state.hello_wait is not None:
                self._heard(peer_id, state)
            if changed or router.dirty:
                self._changed()
            return
        if sync.seq < state.expect:
            self._metrics.drop("stale_advert")
            return
        if sync.seq > state.expect:
            self._gap(peer_id, state, sync.seq)
        state.expect = sync.seq + 1
        if not state.routes:
            state.routes = True
            self._routing.add(peer_id)
            state.full_due = True
            if state.listens:  # (a masked client that routes after all)
                state.listens = False
                router.exports.listeners.discard(peer_id)
            router.start_routing(peer_id)
            self._costs.add(peer_id)
            self.schedule(peers=[peer_id])
        if sync.resync:
            state.full_due = True
            self.schedule(at_once=True, peers=[peer_id])
        if sync.servers is not None:
            changed |= router.neighbour_servers(peer_id, sync.servers)
        if sync.sn is not None:
            changed |= router.neighbour_sn(peer_id, sync.sn)
        if state.hello_wait is not None:
            self._heard(peer_id, state)
        if sync.full or state.staging is not None or sync.routes or sync.withdrawn:
            routes_changed, refused = _take_routes(router, peer_id, state, sync)
            changed |= routes_changed
            if refused is not None:
                self._count_refused(peer_id, refused)
        if sync.lost:
            changed |= router.take_lost(peer_id, sync.lost, self._clock.seconds())
            marked = router.marked_at
            if self._node_id in sync.lost and self.own_sn <= marked < self.own_sn + _MAX_RENUMBER:
                # Marked unreachable at a number above this node's own: a
                # restart soon after its earlier life lost many links (each
                # numbered it anew). Past the mark, or its routes would be
                # taken for stale everywhere until the mark expired.
                self.own_sn = marked + 1 if marked % 2 else marked + 2
                self.schedule(peers=None)
        if sync.info and self.info is not None:
            if self.info.take(sync.info, state.told_info):
                self.info_changed()
        if sync.down or sync.up:
            changed |= router.take_notices(peer_id, sync.down, self._clock.seconds(), sync.up)
            expiry = router.next_notice_expiry()
            if expiry is not None:
                self.schedule(peers=(), delay=max(0.0, expiry - self._clock.seconds()))
        if changed or router.dirty:
            self._changed()

    def _gap(self, peer_id: str, state: _Link, seq: int) -> None:
        self._metrics.drop("advert_gap")
        self._log.info("advert {seq} from {peer} came after {last}: asking for its whole table",
                       seq=seq, peer=peer_id, last=state.expect - 1)  # fmt: skip
        state.staging = None
        state.resync_wanted = True
        self._resyncing.add(peer_id)
        self.schedule(at_once=True, peers=[peer_id])

    def _count_refused(self, peer_id: str, refused: int) -> None:
        if refused and peer_id not in self._overflow_logged:
            self._overflow_logged.add(peer_id)
            self._metrics.drop("too_many_routes")
            self._log.warn(
                "{peer} advertised more than {limit} destinations: the rest are ignored",
                peer=peer_id,
                limit=self._router.max_routes,
            )

    def routes_are_complete(self) -> bool:
        """
        :returns: whether the table knows every node reachable at all (the
            registry is on, every neighbour advertises routes, and none
            told more than the table keeps), so that flooding a message
            would find nothing more.
        """
        router = self._router
        return self.enabled and router.advertises_routes() and not router.partial()


def _take_routes(
    router: Router, peer_id: str, state: _Link, sync: RegistrySync
) -> tuple[bool, int | None]:
    """
    Take the routes of routing neighbour C{peer_id}'s advert: a part of its
    whole table (staged until the last part), or a change.

    :returns: whether the routing table changed, and how many destinations
        the neighbour's table now refuses (C{None} while it is staged).
    """
    if sync.full:
        state.staging = router.new_rib(peer_id)
    staging = state.staging
    if staging is None:
        changed = router.advert_from(peer_id, sync.routes, sync.withdrawn)
        return changed, router.refused_from(peer_id)
    staging.apply(sync.routes, sync.withdrawn)
    if sync.more:
        return False, None
    state.staging = None
    state.resync_wanted = False
    state.resync_asked = None
    return router.replace(peer_id, staging), staging.refused


class AdvertWriter:
    """
    What goes out on each link: an original-design node's servers, or a
    routing neighbour's whole table or the changes to it, as frames under
    the message limit, numbered on their link.

    @ivar frames_sent: adverts sent since start; C{bytes_sent}: their bytes.
    """

    _log = Logger()

    def __init__(
        self, node_id: str, router: Router, metrics: NodeMetrics, max_message_size: int
    ) -> None:
        self._node_id = node_id
        self._router = router
        self._metrics = metrics
        self._max_message_size = max_message_size
        self.frames_sent = 0
        self.bytes_sent = 0

    def send_to(
        self,
        peer_id: str,
        session: PeerSession,
        state: _Link,
        own: Mapping[str, tuple[str, ...]],
        own_sn: int,
        ready: set[str],
        now: float,
    ) -> None:
        """
        Send neighbour C{peer_id} what it has to hear now, if anything.

        :param own: this node's servers; C{own_sn}: its sequence number.
        :param ready: the changed destinations that may be advertised now.
        """
        servers = None if own == state.told_servers else own
        sn = None if state.told_sn == own_sn else own_sn
        router = self._router
        if state.listens:
            self._tell_listener(peer_id, session, state, own, own_sn, servers, ready, now)
            return
        if not state.routes:
            if not state.hello_sent or servers is not None:
                state.hello_sent = True
                state.told_servers = own
                state.told_sn = own_sn
                self._emit(peer_id, session, state, [RegistrySync(own, sn=own_sn)], now)
            return
        resync = self._resync_due(state, now)
        full = state.full_due
        if full:
            state.full_due = False
            withdrawn: list[str] = []
            frames = self._split(servers, router.exports.export_full(peer_id), withdrawn, full=True)
            down = router.news.notices_for(peer_id)
        else:
            # (What a neighbour must hear of lost links depends on what it
            # held before this advert.)
            down = router.news.notices_for(peer_id)
            routes, withdrawn = router.exports.export_changes(peer_id, ready)
            frames = self._split(servers, routes, withdrawn)
        up = router.news.ups_for(peer_id)
        first = frames[0]
        if not (full or first.routes or first.withdrawn or servers is not None or sn is not None):
            if not (resync or down or up):
                return
        state.hello_sent = True
        state.told_servers = own
        state.told_sn = own_sn
        lost = router.lost_for(withdrawn)
        if full:
            # A neighbour marked unreachable here hears it, at link-up: if it
            # is a restarted node numbering itself below the mark, it
            # numbers itself past it (see take).
            mark = router.mark_of(peer_id)
            if mark is not None:
                lost[peer_id] = mark
        if down or up or resync or sn is not None or lost:
            frames[0] = attrs.evolve(
                first, resync=resync, down=down, up=up, sn=sn, lost=lost or None
            )
        self._emit(peer_id, session, state, frames, now)

    def _tell_listener(
        self,
        peer_id: str,
        session: PeerSession,
        state: _Link,
        own: Mapping[str, tuple[str, ...]],
        own_sn: int,
        servers: Mapping[str, tuple[str, ...]] | None,
        ready: set[str],
        now: float,
    ) -> None:
        """
        An original-design neighbour: our servers and what we reach, first
        whole (the first frame in the original's shape, our servers and
        number), then the changes. Nothing of numbers or lost links after
        that: it does not route (a hub's every renumbering would otherwise
        reach each of its thousands of such links).
        """
        exports = self._router.exports
        if state.full_due:
            state.full_due = False
            frames = self._split(own, exports.export_full(peer_id), (), full=True)
            frames[0] = attrs.evolve(frames[0], sn=own_sn)
        else:
            routes, withdrawn = exports.export_changes(peer_id, ready)
            if not (routes or withdrawn or servers is not None):
                return
            frames = self._split(servers, routes, withdrawn)
        state.hello_sent = True
        state.told_servers = own
        state.told_sn = own_sn
        self._emit(peer_id, session, state, frames, now)

    def send_info(
        self,
        peer_id: str,
        session: PeerSession,
        state: _Link,
        changes: Mapping[str, NodeInfo],
        now: float,
    ) -> None:
        """Send neighbour C{peer_id} the instance entries it does not hold."""
        items = list(changes.items())
        frames = [
            RegistrySync(info=dict(items[at : at + INFO_PER_FRAME]))
            for at in range(0, len(items), INFO_PER_FRAME)
        ]
        self._emit(peer_id, session, state, frames, now)

    def _resync_due(self, state: _Link, now: float) -> bool:
        if not state.resync_wanted:
            return False
        if state.resync_asked is None or now - state.resync_asked >= RESYNC_RETRY:
            state.resync_asked = now
            return True
        return False

    def _split(
        self,
        servers: Mapping[str, tuple[str, ...]] | None,
        routes: Mapping[str, RouteAdvert],
        withdrawn: Iterable[str],
        full: bool = False,
    ) -> list[RegistrySync]:
        """
        The advert, whole: L{_emit} splits it if, encoded, it turns out to
        be over the message limit (most often it is not, and is encoded
        once).
        """
        return [RegistrySync(servers, routes or None, tuple(withdrawn), None, full)]

    def _pieces(self, frame: RegistrySync) -> list[RegistrySync]:
        """
        C{frame} as frames under the message limit, sized entry by entry:
        the first keeps everything but its routes and withdrawals; the
        pieces of a whole table say that C{more} follows but the last.
        """
        limit = self._max_message_size
        budget = max(limit - _ENVELOPE_ROOM, limit // 2)
        pieces: list[RegistrySync] = []
        chunk: dict[str, RouteAdvert] = {}
        gone: list[str] = []
        size = len(encode_data(attrs.evolve(frame, routes=None, withdrawn=())))

        def cut() -> None:
            nonlocal chunk, gone, size
            pieces.append(RegistrySync(None, chunk or None, tuple(gone), None))
            chunk, gone, size = {}, [], 64

        for destination in frame.withdrawn:
            if size + len(destination) + 3 > budget and (chunk or gone):
                cut()
            gone.append(destination)
            size += len(destination) + 3
        for destination, entry in (frame.routes or {}).items():
            cost = len(destination) + 4 + len(encode_data(entry.to_json()))
            if size + cost > budget and (chunk or gone):
                cut()
            chunk[destination] = entry
            size += cost
        cut()
        pieces[0] = attrs.evolve(frame, routes=pieces[0].routes, withdrawn=pieces[0].withdrawn)
        if frame.full or frame.more:
            last = len(pieces) - 1
            pieces = [
                attrs.evolve(piece, more=frame.more if i == last else True)
                for i, piece in enumerate(pieces)
            ]
        return pieces

    def _emit(
        self,
        peer_id: str,
        session: PeerSession,
        state: _Link,
        frames: list[RegistrySync],
        now: float,
    ) -> None:
        for frame in frames:
            advert = attrs.evolve(frame, seq=state.seq + 1)
            envelope = Envelope.create(advert, self._node_id, peer_id, now)
            frame_bytes = encode(envelope)
            size = len(frame_bytes)
            if size > self._max_message_size:
                pieces = self._pieces(frame)
                if len(pieces) > 1:
                    self._emit(peer_id, session, state, pieces, now)
                    continue
                # Only an entry too large on its own gets here (a server
                # list past the limit): the link's adverts cannot go on.
                self._metrics.drop("advert_too_large")
                self._log.error(
                    "cannot advertise to {peer}: an advert of {size} bytes is over the limit",
                    peer=peer_id,
                    size=size,
                )
                return
            state.seq += 1
            session.send(envelope, frame=frame_bytes)
            self.frames_sent += 1
            self.bytes_sent += size
            self._metrics.sync_frames.inc()
            self._metrics.sync_bytes.inc(size)


class Directory:
    """
    The registry's answers, from the routing table: which nodes host a
    server, and which of them is nearest.

    :param enabled: C{False} with C{--disable-registry}: the directory is
        empty.
    """

    def __init__(
        self, router: Router, links: LinkTable, clock: IReactorTime, enabled: bool = True
    ) -> None:
        self._router = router
        self._links = links
        self._clock = clock
        self._enabled = enabled
        self._instances: dict[str, list[tuple[str, int, int]]] = {}
        self._instances_at = -1

    def server_count(self, peer_id: str) -> int:
        """:returns: how many servers neighbour C{peer_id} advertised."""
        route = self._router.route(peer_id)
        return 0 if route is None else len(route.servers)

    def peers(self) -> dict[str, dict[str, Any]]:
        """:returns: C{GET /registry/peers}."""
        return self._links.view(self.server_count)

    def reachable(self) -> dict[str, int]:
        """:returns: every node a link or a route reaches, with its hop count."""
        reachable = {dest: route.hops for dest, route in self._router.routes().items()}
        for peer in self._links.links:
            reachable.setdefault(peer, 1)
        return reachable

    def directory(self) -> dict[str, list[dict[str, Any]]]:
        """:returns: the remote part of C{GET /registry/servers}."""
        result: dict[str, list[dict[str, Any]]] = {}
        if not self._enabled:
            return result
        for destination, route in sorted(self._router.routes().items()):
            hop = self._links.get(route.next_hop)
            last_seen = rfc3339(hop.last_seen if hop is not None else self._clock.seconds())
            for name, methods in route.servers.items():
                result.setdefault(name, []).append(
                    {
                        "name": name,
                        "node_id": destination,
                        "methods": list(methods),
                        "is_local": False,
                        "last_seen": last_seen,
                        "hops": route.hops,
                    }
                )
        for entries in result.values():
            entries.sort(key=lambda e: (e["hops"], e["node_id"]))
        return result

    def instances(self, server: str) -> list[tuple[str, int, int]]:
        """
        :returns: the other nodes hosting C{server}, as C{(node_id, hops,
            metric)} (a new list; the answers are kept until the table
            changes, as calls ask for every call).
        """
        if not self._enabled:
            return []
        changes = self._router.changes
        if changes != self._instances_at:
            self._instances_at = changes
            self._instances.clear()
        found = self._instances.get(server)
        if found is None:
            if len(self._instances) >= 1024:  # names asked for are the callers' to choose
                self._instances.clear()
            found = self._instances[server] = [
                (destination, len(route.path), route.metric)
                for destination, route in self._router.routes().items()
                if server in route.servers
            ]
        return list(found)

    def exposes(self, node_id: str, server: str, method: str) -> bool:
        """:returns: whether C{node_id} told that its C{server} exposes C{method}."""
        route = self._router.route(node_id)
        methods = None if route is None else route.servers.get(server)
        return methods is not None and method in methods

    def link_rtt(self, peer_id: str) -> float | None:
        """:returns: the RTT in seconds of the link to C{peer_id}, if measured."""
        session = self._links.get(peer_id)
        return None if session is None else session.rtt

    def nearest_host(self, server: str) -> str | None:
        """
        :returns: the nearest node hosting C{server} (fewest hops, then the
            lowest metric, then the lowest id), or C{None}.
        """
        if not self._enabled:
            return None
        best: tuple[int, int, str] | None = None
        for destination, route in self._router.routes().items():
            if server in route.servers:
                key = (len(route.path), route.metric, destination)
                if best is None or key < best:
                    best = key
        return None if best is None else best[2]


def initial_sn(now: float) -> int:
    """
    :returns: a node's first sequence number: even, and above any its id had
        in an earlier life (tenths of a second since late 2023), so a
        restarted node is not taken for the one that was marked unreachable.
    """
    return 2 * max(0, int((now - 1_700_000_000) * 10))


def encode_data(value: Any) -> bytes:
    """:returns: the JSON of an advert's data (or part of it), for sizing."""
    from relaytx import _json

    if isinstance(value, RegistrySync):
        value = value.to_data()
    return _json.dumps(value)
