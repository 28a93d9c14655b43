# -*- test-case-name: tests.test_pki -*-
"""
L{RecordExchange}: how the signed node records of PKI mode (L{relaytx._pki})
travel. Each node floods its own record when its links change, hands every
record it holds to a neighbour when their link opens, and passes on each
record it has not seen before to its other neighbours. A record that fails
its checks is dropped and counted as an authentication failure; one not
newer than what is held is dropped quietly (flooding brings copies).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from relaytx._links import LinkTable
from relaytx._metrics import NodeMetrics
from relaytx._pki import NodeIdentity, NodeRecord, RecordBook
from relaytx.errors import MessageTooLarge
from relaytx.peer import PeerSession
from relaytx.wire import NO_SERVERS, Envelope

#: Link changes within this many seconds go out in one new record.
RECORD_DELAY = 0.02


class RecordExchange:
    """
    :param idempotent: returns this node's idempotent methods, which its
        record states (call L{idempotent_changed} when they change).
    :param on_change: called when a record that may change which paths are
        acceptable was taken (the routes are then decided again).
    """

    _log = Logger()

    def __init__(
        self,
        identity: NodeIdentity,
        book: RecordBook,
        clock: IReactorTime,
        metrics: NodeMetrics,
        links: LinkTable,
        on_change: Callable[[], None],
        idempotent: Callable[[], Mapping[str, tuple[str, ...]]] = lambda: NO_SERVERS,
    ) -> None:
        self._identity = identity
        self._idempotent = idempotent
        self._book = book
        self._clock = clock
        self._metrics = metrics
        self._links = links
        self._on_change = on_change
        # A restarted node's records must outrank the ones it published
        # before: they count from the start time, in microseconds.
        self._seq = int(clock.seconds() * 1_000_000)
        self._call: IDelayedCall | None = None
        self._publish_now()

    def link_opened(self, peer_id: str) -> None:
        """A new link: it gets every record held (ours with the new link soon after)."""
        session = self._links.get(peer_id)
        if session is not None:
            for record in self._book.records():
                self._send(session, record)
        self._publish_soon()

    def link_closed(self, peer_id: str) -> None:
        """A link closed: our record says so soon."""
        self._publish_soon()

    def idempotent_changed(self) -> None:
        """This node's idempotent methods changed: our record says so soon."""
        self._publish_soon()

    def stop(self) -> None:
        """Publish nothing more."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def take(self, envelope: Envelope, record: NodeRecord) -> None:
        """A neighbour passed on a record (the handler of C{node_record})."""
        if record.node_id == self._identity.node_id:
            return  # our own, back from the mesh (or forged: ours is always newer)
        why = self._book.take(record)
        if why == "old":
            return
        if why is not None:
            self._metrics.auth_failures.inc()
            self._log.warn(
                "dropped a record of {node} from {peer}: {why}",
                node=record.node_id,
                peer=envelope.sender,
                why=why,
            )
            return
        for peer_id, session in list(self._links.links.items()):
            if peer_id != envelope.sender:
                self._send(session, record)
        self._on_change()

    def _publish_soon(self) -> None:
        if self._links.stopping or (self._call is not None and self._call.active()):
            return
        self._call = self._clock.callLater(RECORD_DELAY, self._publish)

    def _publish(self) -> None:
        self._call = None
        record = self._publish_now()
        for session in list(self._links.links.values()):
            self._send(session, record)
        self._on_change()

    def _publish_now(self) -> NodeRecord:
        self._seq += 1
        record = self._identity.record(self._seq, self._links.links, self._idempotent())
        self._book.take(record)
        return record

    def _send(self, session: PeerSession, record: NodeRecord) -> None:
        peer_id = session.peer_id
        envelope = Envelope.create(record, self._identity.node_id, peer_id, self._clock.seconds())
        try:
            session.send(envelope)
        except MessageTooLarge as e:
            self._metrics.drop("record_too_large")
            self._log.warn("cannot send a record to {peer}: {error}", peer=peer_id, error=str(e))
