# -*- test-case-name: tests.test_protocol -*-
"""
Dialled peers: L{Dialer} keeps one dialled link up, re-dialling with
exponential back-off; L{PeerAdmin} holds a node's dialers, the peers it
was told to dial at start (C{--add-peer}) and the ones added and removed
at run time (C{/registry/peers/add}, C{/registry/peers/remove}).
"""

from __future__ import annotations

import ipaddress
import random
import re
from typing import Any
from urllib.parse import urlsplit

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.logger import ILogObserver, Logger
from zope.interface import implementer

from relaytx._guards import RepeatedFailures
from relaytx._links import DIALLED_BY, HEALTHY_LINK_HERE, NOT_THE_NODE_EXPECTED
from relaytx._mesh import Mesh
from relaytx._protocol import PeerClientFactory
from relaytx._stdtls import TLSClientEndpoint
from relaytx._tls import TlsConfig
from relaytx.errors import TooManyDialers
from relaytx.interfaces import IPeerAdmin
from relaytx.peer import CLOSE_REMOVED
from relaytx.wire import NODE_ID_RE

PEER_PATH = "/ws/p2p"


def split_peer(address: str) -> tuple[str | None, str]:
    """
    Split C{ID@URL} (SPEC section 9: dial C{URL}, and keep the link only if
    the far side proves it is C{ID}) into the id and the address; a plain
    address has no id. An C{@} inside the address itself (user info in a
    URL) is not taken for one: the part before it must be a node id.

    :returns: C{(node_id, address)}.
    """
    address = address.strip()
    node_id, at, rest = address.partition("@")
    if at and "://" not in node_id and "/" not in node_id and NODE_ID_RE.fullmatch(node_id):
        return node_id, rest
    return None, address


def peer_url(address: str, own_id: str) -> tuple[str, str, int, bool]:
    """
    Normalise a peer address (SPEC section 3): C{http://h:p} and C{ws://h:p}
    mean C{ws://h:p/ws/p2p}; C{https}/C{wss} mean TLS; C{h:p}, with no
    scheme, means C{ws://h:p} (a port is needed then: a word alone, such
    as C{notaurl}, is taken for a typo, not dialled on port 80 for ever).

    :returns: C{(url, host, port, secure)}, the URL carrying C{node_id}.
    :raises ValueError: if C{address} is not such a URL.
    """
    address = address.strip()
    if "://" not in address:
        if not re.fullmatch(r"([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):\d+(/.*)?", address):
            raise ValueError(f"{address!r} is not a ws://, wss://, http:// or https:// address")
        address = "ws://" + address
    parts = urlsplit(address)
    scheme = {"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"{address!r} is not a ws://, wss://, http:// or https:// address")
    secure = scheme == "wss"
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{address!r} has a bad port") from None
    if port is None:
        port = 443 if secure else 80
    elif not 0 < port < 65536:
        raise ValueError(f"{address!r} has a bad port: {port}")
    path = parts.path if parts.path not in ("", "/") else PEER_PATH
    host = parts.hostname
    if not _is_host(host):
        raise ValueError(f"{address!r} names no host: {host!r} is no IP address or DNS name")
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{scheme}://{netloc}{path}?node_id={own_id}", host, port, secure


#: A DNS name (RFC 1123): dot-separated labels of letters, digits and
#: hyphens, none starting or ending with a hyphen, none over 63; and
#: underscores, which container networks' names have (my_service_1).
_DNS_NAME = re.compile(
    r"(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?"
)


def _is_host(host: str) -> bool:
    """:returns: whether C{host} is an IP address or a DNS name (not a typo)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _DNS_NAME.fullmatch(host) is not None
    return True


#: What a node that is not the one dialled says (L{NOT_THE_NODE_EXPECTED}).
_WRONG_NODE = re.compile(r"this is ([A-Za-z0-9._-]+), " + re.escape(NOT_THE_NODE_EXPECTED))

#: What a node says that refuses us while it holds the link it dialled to us.
_DIALLED_BY = re.compile(re.escape(DIALLED_BY).replace(r"\{\}", "([A-Za-z0-9._-]+)"))


@implementer(ILogObserver)
def _discard(event: Any) -> None:
    """Drops a log event."""


class _Reconnector(ClientService):
    """
    A ClientService that logs nothing itself: it would log every retry
    of every dialer (with thousands of them, tens of KiB a second); its
    dialer logs each kind of failure once, with a count.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._log = Logger(observer=_discard)
        super().__init__(*args, **kwargs)


class _ReportingEndpoint:
    """An endpoint that tells its dialer why a connection attempt failed."""

    def __init__(self, endpoint: Any, dialer: Dialer) -> None:
        self._endpoint = endpoint
        self._dialer = dialer

    def connect(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = self._endpoint.connect(factory)

        def failed(failure: Any) -> Any:
            self._dialer.attempt_failed(f"{type(failure.value).__name__}: {failure.value}")
            return failure

        return d.addErrback(failed)


@implementer(IStreamClientEndpoint)
class _WhileUnlinked:
    """
    An endpoint that connects only while its node is not stopping, and the
    dialled peer has no link here through another connection (its own
    dial, kept when the two nodes dial each other): until that link is
    gone, a connection attempt waits,
    checking once a second, without touching the network. Two nodes that
    each dial the other would otherwise have one of them dialled, and
    refused (409), every few seconds for as long as they run.
    """

    _log = Logger()

    #: seconds between checks while the peer is linked
    INTERVAL = 1.0

    def __init__(self, dialer: Dialer, endpoint: Any, clock: Any) -> None:
        self._dialer = dialer
        self._endpoint = endpoint
        self._clock = clock

    def __repr__(self) -> str:
        return repr(self._endpoint)

    def _linked(self) -> bool:
        peer = self._dialer.node_id
        return peer is not None and peer in self._dialer.mesh.links

    def connect(self, factory: Any) -> Deferred[Any]:
        if self._dialer.mesh.stopping:
            # The node closes its links while it stops; a dial now would
            # open one only to close it (4001). Stopping the dialer, last,
            # cancels this wait.
            return Deferred()
        if not self._linked():
            d: Deferred[Any] = self._endpoint.connect(factory)
            return d
        self._log.info(
            "{peer} is linked through its own connection: dialling {url} waits until it is gone",
            peer=self._dialer.node_id,
            url=self._dialer.url,
        )
        timer: list[IDelayedCall] = []
        waiting: Deferred[Any] = Deferred(lambda _: timer[0].cancel() if timer else None)

        def check() -> None:
            timer.clear()
            if self._dialer.mesh.stopping:
                return  # (as above)
            if self._linked():
                timer.append(self._clock.callLater(self.INTERVAL, check))
                return
            self._endpoint.connect(factory).chainDeferred(waiting)

        timer.append(self._clock.callLater(self.INTERVAL, check))
        return waiting


class Dialer(Service):
    """
    Keeps a link to the peer at C{address} up: dials it, and re-dials with
    exponential back-off and jitter whenever the link is down. Failed
    WebSocket handshakes count as failed attempts too (ClientService alone
    would restart its back-off at every TCP connect). While the peer is
    linked through its own dial, this one waits (L{_WhileUnlinked}).

    @ivar expected_id: the id the peer must prove (C{ID@URL}), if any; a
        link to any other node is refused.
    @ivar node_id: the peer's id once known (or as expected).
    """

    _log = Logger()

    INITIAL_DELAY = 0.25
    MAX_DELAY = 8.0

    #: the peer was removed: no more dials (see L{retire})
    retired = False
    #: which of its admin's dialers this is, in order (L{PeerAdmin.removed_since})
    made = 0
    #: a link this dialer opened is open
    _holds_link = False

    def __init__(
        self,
        mesh: Mesh,
        address: str,
        reactor: Any,
        max_message_size: int,
        node_id: str | None = None,
        secret: bytes | None = None,
        tls: Any = None,
        watch: Any = None,
    ) -> None:
        self.mesh = mesh
        self.address = address
        self.expected_id = self.node_id = node_id
        self.secret = secret
        self.url, host, port, secure = peer_url(address, mesh.node_id)
        endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=5)
        if secure:
            context = (tls if tls is not None else TlsConfig()).client_context()
            endpoint = TLSClientEndpoint(endpoint, context, host, reactor)
        pki = tls is not None and tls.pki
        self.factory = PeerClientFactory(
            self, mesh, self.url, max_message_size, reactor, pki, watch=watch
        )
        self._failures = 0
        self._repeats = RepeatedFailures()
        #: attempts failed since the last link opened, and the last failure in words
        self.failed_attempts = 0
        self.last_failure: str | None = None
        self._backoff = backoffPolicy(
            initialDelay=self.INITIAL_DELAY,
            maxDelay=self.MAX_DELAY,
            factor=2.0,
            jitter=lambda: random.uniform(0, self.INITIAL_DELAY),
        )
        self._client = _Reconnector(
            _WhileUnlinked(self, _ReportingEndpoint(endpoint, self), reactor),
            self.factory,
            retryPolicy=self._retry_delay,
            clock=reactor,
        )

    def _retry_delay(self, attempt: int) -> float:
        delay: float = self._backoff(max(attempt, self._failures))
        return delay

    @property
    def holds_link(self) -> bool:
        """Whether a link this dialer opened is open."""
        return self._holds_link

    def link_opened(self, peer_id: str | None) -> None:
        """The handshake succeeded: the back-off starts over."""
        self._holds_link = True
        self._failures = 0
        self.failed_attempts, self.last_failure = 0, None
        failed = self._repeats.succeeded()
        if failed > 1:
            self._log.info(
                "linked to {url} after {count} failed attempts", url=self.url, count=failed
            )
        if peer_id is not None:
            self.node_id = peer_id
            admin = self.parent
            if isinstance(admin, PeerAdmin) and admin.removed_since(peer_id, self):
                # Dialled by address before its peer was removed (it had
                # never answered, so its id was unknown then): the removal
                # holds for it too.
                session = self.mesh.links.get(peer_id)
                if session is not None:
                    session.close(CLOSE_REMOVED, "removed by the operator")
                admin.forget(self)
                self.retire()

    def link_closed(self, removed: bool = False) -> None:
        """
        The link this dialer opened closed; a retired dialer stops now.

        :param removed: the peer closed it, saying its operator removed
            this node (/registry/peers/remove there): it is not dialled
            again, or the removal would undo itself in a second.
        """
        self._holds_link = False
        if removed:
            self.removed_by_peer()
        if self.retired:
            self._stop()

    def removed_by_peer(self) -> None:
        """
        The peer's operator removed this node (the peer closed a link with
        4002, whichever end had dialled it): dial it no more.
        """
        if self.retired:
            return
        self._log.info(
            "{peer} at {url} removed this node's link: not dialling it again"
            " (/registry/peers/add dials it anew)",
            peer=self.node_id or "the peer",
            url=self.url,
        )
        admin = self.parent
        if isinstance(admin, PeerAdmin):
            admin.forget(self)
        self.retire()

    def retire(self) -> None:
        """
        Dial no more: the peer was removed. A link this dialer holds open is
        left to the closing handshake its session began, so that the close
        frame reaches the peer and its answer comes back (both ends then
        know the link was removed on purpose, see L{relaytx._mesh}); the
        dialer stops when the link closes (within Autobahn's close timeout),
        or now if it holds none.
        """
        self.retired = True
        if not self._holds_link:
            self._stop()

    def _stop(self) -> None:
        if self.parent is not None:
            self.disownServiceParent()

    def handshake_failed(self, code: int | None, reason: str | None, told: bool = False) -> None:
        """
        A connection closed before its link opened.

        :param told: its failure was reported already (L{attempt_failed}).
        """
        self._failures += 1
        dialled = _DIALLED_BY.search(reason) if reason else None
        if dialled is not None and self.node_id is None:
            # The peer holds the link it dialled to this node, and says its
            # id: so a removal it makes stops this dialer too (removed_by).
            self.node_id = dialled.group(1)
        if not told:
            wrong = _WRONG_NODE.search(reason) if reason else None
            if wrong is not None:
                # The node there refused us before admitting the link: it
                # is not the one we must reach (ID@URL). As a wrong answer
                # to our own check would be, it counts as an auth failure.
                answered = wrong.group(1)
                self.mesh.count_auth_failure(self.url, f"answered as {answered}")
                self.attempt_failed(f"refused: the peer is {answered}, not {self.expected_id}")
            elif reason and HEALTHY_LINK_HERE in reason:
                # The peer holds a healthy link for this node's own id.
                own = self.mesh.node_id
                self.attempt_failed(
                    f"the peer has a healthy link from node id {own} already: is another "
                    f"process running as {own} (or this node's previous run not yet found "
                    "gone)? Retrying while that lasts"
                )
            else:
                self.attempt_failed(f"closed before the link opened ({code} {reason})")

    def attempt_failed(self, why: str) -> None:
        """
        An attempt to link failed (C{why}, in words): logged the first time,
        then, while the same failure repeats, at 2, 4, 8... attempts with
        the count, not once per attempt.
        """
        self.failed_attempts += 1
        self.last_failure = why
        count = self._repeats.failed(why)
        if count is not None:
            self._log.warn(
                "dialling {url} failed: {why} ({count} attempt(s) in a row)",
                url=self.url,
                why=why,
                count=count,
            )

    def startService(self) -> None:
        super().startService()
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._client.running:
            d: Deferred[None] = self._client.stopService()
            return d
        return succeed(None)


@implementer(IPeerAdmin)
class PeerAdmin(MultiService):
    """
    The dialers of one node, by URL: a service whose children they are, so
    that they dial while the node runs.

    :param tls: the node's C{[tls]} settings, for C{wss://} peers.
    """

    def __init__(
        self,
        mesh: Mesh,
        reactor: Any,
        max_message_size: int,
        secret: bytes | None = None,
        tls: Any = None,
        max_dialers: int = 256,
        watch: Any = None,
    ) -> None:
        super().__init__()
        self._mesh = mesh
        self._reactor = reactor
        self._max_message_size = max_message_size
        self._secret = secret
        self._tls = tls
        self._watch = watch
        self.max_dialers = max_dialers
        self.dialers: dict[str, Dialer] = {}
        #: node ids removed by the operator, and when (in dialers made):
        #: a dialer made before a removal does not link to that id
        self._removed: dict[str, int] = {}
        self._made = 0

    def is_dialling(self, address: str) -> bool:
        """
        :returns: whether C{address} (or C{ID@address}) is dialled already,
            in any of its spellings (C{http://h:p}, C{ws://h:p/ws/p2p}, ...).
        """
        try:
            url = peer_url(split_peer(address)[1], self._mesh.node_id)[0]
        except ValueError:
            return False
        return url in self.dialers

    def failing(self) -> dict[str, dict[str, Any]]:
        """
        :returns: the dialled peers this node holds no link to, whose last
            attempts failed: C{{ADDRESS: {"node_id", "failures", "error"}}}
            (the address as given; C{node_id} the one it must prove, or was
            last seen with).
        """
        return {
            dialer.address: {
                "node_id": dialer.node_id,
                "failures": dialer.failed_attempts,
                "error": dialer.last_failure,
            }
            for dialer in self.dialers.values()
            if dialer.last_failure is not None and not dialer.holds_link
        }

    def add_peer(self, address: str, node_id: str | None = None) -> None:
        """
        Dial the peer at C{address} now and keep re-dialling it while it is
        down.

        :param address: a peer URL, or C{ID@URL} (the same as giving C{node_id}).
        :param node_id: the id the peer must prove; a link to any other node
            is refused.
        :raises ValueError: if C{address} is not a peer URL or is already
            dialled, or C{node_id} is not a node id (or contradicts C{ID@}).
        :raises TooManyDialers: if C{max_dialers} peers are dialled already.
        """
        if node_id is not None and not NODE_ID_RE.fullmatch(node_id):
            raise ValueError(f"{node_id!r} is not a valid node id: 1-64 of A-Za-z0-9._-")
        named, address = split_peer(address)
        if named is not None and node_id is not None and named != node_id:
            raise ValueError(f"the address names {named} and node_id says {node_id}")
        node_id = node_id or named
        if len(self.dialers) >= self.max_dialers:
            raise TooManyDialers(
                f"{len(self.dialers)} peers are dialled already (limits.max_dialers); "
                "remove one first"
            )
        dialer = Dialer(
            self._mesh,
            address,
            self._reactor,
            self._max_message_size,
            node_id,
            secret=self._secret,
            tls=self._tls,
            watch=self._watch,
        )
        if dialer.url in self.dialers:
            raise ValueError(f"already dialling {address}")
        self._made += 1
        dialer.made = self._made
        if node_id is not None:
            self._removed.pop(node_id, None)  # (added again, by its id)
        self.dialers[dialer.url] = dialer
        dialer.setServiceParent(self)

    def removed_since(self, peer_id: str, dialer: Dialer) -> bool:
        """
        :returns: whether the operator removed C{peer_id} after C{dialer}
            was made (dialers added since may link to it).
        """
        removed = self._removed.get(peer_id)
        if removed is None:
            return False
        if dialer.made > removed:
            del self._removed[peer_id]
            return False
        return True

    def removed_by(self, peer_id: str) -> None:
        """
        C{peer_id} removed this node (it closed a link with 4002, as
        C{/registry/peers/remove} there does): a dialer of its, waiting
        while the peer's own link stood, dials it no more either.
        """
        for dialer in [d for d in self.dialers.values() if d.node_id == peer_id]:
            dialer.removed_by_peer()

    def forget(self, dialer: Dialer) -> None:
        """C{dialer} dials no more (its peer removed the link)."""
        for url in [url for url, held in self.dialers.items() if held is dialer]:
            del self.dialers[url]

    def remove_peer(self, node_id: str | None = None, address: str | None = None) -> bool:
        """
        Close the link to C{node_id} and stop re-dialling it; or stop
        dialling C{address} (a peer that never answered has no known id).

        :returns: whether there was such a link or dialled peer.
        """
        retired = []
        spelled = None
        if address is not None:
            try:  # (any spelling of it: http://h:p, ws://h:p/ws/p2p, h:p...)
                spelled = peer_url(split_peer(address)[1], self._mesh.node_id)[0]
            except ValueError:
                spelled = None
        for url, dialer in list(self.dialers.items()):
            if (node_id is not None and dialer.node_id == node_id) or (
                address is not None and (address == dialer.address or url in (address, spelled))
            ):
                if node_id is None:
                    node_id = dialer.node_id
                del self.dialers[url]
                retired.append(dialer)
        session = self._mesh.links.get(node_id) if node_id is not None else None
        if session is not None:
            session.close(CLOSE_REMOVED, "removed by the operator")
        found = bool(retired) or session is not None
        if node_id is not None and found:
            # (A removal that found nothing removes nothing: the answer says so.)
            self._removed[node_id] = self._made
        for dialer in retired:
            dialer.retire()
        self._forget_removals()
        return found

    def _forget_removals(self) -> None:
        # A removal holds only for the dialers made before it.
        oldest = min((dialer.made for dialer in self.dialers.values()), default=None)
        for node_id, made in list(self._removed.items()):
            if oldest is None or made < oldest:
                del self._removed[node_id]
