# -*- test-case-name: tests.test_routing -*-
"""
L{LinkNews}: what a node knows of lost links, and the paths it leaves
unused meanwhile (the routing table's "lost links", see
L{relaytx._routing}).

The node at each end of a lost link makes it news (C{down} in its
adverts), for the neighbours it had told paths across that link. A node
that hears it stops using, at once, every path that any neighbour gave
across that link (a B{suspect}), until that neighbour says the path again
(the link is back, or it never used it) or L{NOTICE_HOLD} passes; it passes
the news on likewise. A link back up while its loss is news is news too
(C{up}).

Pure bookkeeping, as the routing table: callers pass the time, and the
table decides again the destinations these methods return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import chain, compress, repeat
from operator import contains

from relaytx._ribs import AdjRib

__all__ = ["NOTICE_HOLD", "LinkNews", "Notice", "crosses", "crossing"]

#: How long news of a lost link lasts, in seconds: long enough to cross the
#: mesh, short enough not to shun for long a link that came back unheard.
NOTICE_HOLD = 2.0

#: A lost or restored link: (the node that saw it, its peer, a stamp of
#: that node's clock in milliseconds).
Notice = tuple[str, str, int]


class LinkNews:
    """
    The lost links node C{node_id} knows of.

    :param ribs: what each routing neighbour told this node (the routing
        table's, shared).
    :param mirrors: what this node told each routing neighbour (shared).

    @ivar notices: lost links that are news here -> until when.
    @ivar ups: links back up while their loss was news, (node, peer) ->
        (stamp, until when that is news).
    @ivar suspects: (neighbour, destination) -> until when its path, which
        crossed a lost link when the news came, stays unused.
    """

    def __init__(
        self, node_id: str, ribs: Mapping[str, AdjRib], mirrors: Mapping[str, AdjRib]
    ) -> None:
        self.node_id = node_id
        self.notices: dict[Notice, float] = {}
        self.ups: dict[tuple[str, str], tuple[int, float]] = {}
        self.suspects: dict[tuple[str, str], float] = {}
        self._ribs = ribs
        self._mirrors = mirrors
        #: routing neighbour -> the news it was told
        self._told: dict[str, set[Notice]] = {}
        #: routing neighbour -> the news no path it held crossed, when its
        #: whole mirror was last looked through, and the destinations it
        #: was told since (only those can bring a path across)
        self._clear: dict[str, set[Notice]] = {}
        self._since: dict[str, set[str]] = {}

    # This node's own links.

    def own_link_up(self, peer_id: str, now: float) -> None:
        """This node's link to C{peer_id} opened: news of its loss is taken back."""
        me = self.node_id
        lost = [n for n in self.notices if n[0] == me and n[1] == peer_id]
        for notice in lost:
            del self.notices[notice]
        if lost:
            self.ups[me, peer_id] = (int(now * 1000), now + 2 * NOTICE_HOLD)

    def own_link_down(self, peer_id: str, now: float) -> None:
        """This node's link to C{peer_id} closed: news for its next adverts."""
        self.ups.pop((self.node_id, peer_id), None)
        self.notices[(self.node_id, peer_id, int(now * 1000))] = now + NOTICE_HOLD

    def forget(self, peer_id: str, told: bool = True) -> None:
        """
        Forget the suspects among what C{peer_id} said (it said everything
        again, or its link closed) and, with C{told}, what it was told.
        """
        if told:
            self.told_nothing(peer_id)
        if self.suspects:
            for key in [k for k in self.suspects if k[0] == peer_id]:
                del self.suspects[key]

    def told_nothing(self, peer_id: str) -> None:
        """C{peer_id} gets this node's whole table: it has heard no news from it."""
        self._told.pop(peer_id, None)
        self._clear.pop(peer_id, None)
        self._since.pop(peer_id, None)

    def exported(self, peer_id: str, destinations: Iterable[str]) -> None:
        """Routing neighbour C{peer_id} was told C{destinations} (see L{notices_for})."""
        if self._clear.get(peer_id):
            self._since.setdefault(peer_id, set()).update(destinations)

    # News from neighbours.

    def take(
        self,
        down: Iterable[Notice],
        now: float,
        up: Iterable[Notice] = (),
        only: str | None = None,
    ) -> set[str]:
        """
        A neighbour says these links are gone (C{down}) or back (C{up}).

        :param only: the neighbour: its word counts for the paths it offers
            only (L{Router}'s C{hearsay}); C{None}: for every neighbour's.
        :returns: the destinations to decide again.
        """
        ups = self.ups
        affected: set[str] = set()
        for node, peer, stamp in up:
            known = ups.get((node, peer))
            if known is not None and known[0] >= stamp:
                continue
            ups[node, peer] = (stamp, now + 2 * NOTICE_HOLD)
            stale = [n for n in self.notices if n[0] == node and n[1] == peer and n[2] <= stamp]
            for notice in stale:
                del self.notices[notice]
            if stale:
                affected |= self._clear_suspects()
        lost = []
        for notice in down:
            node, peer, stamp = notice
            if notice in self.notices or node == self.node_id:
                continue
            known = ups.get((node, peer))
            if known is not None and known[0] >= stamp:
                continue  # it came back since
            self.notices[notice] = now + NOTICE_HOLD
            lost.append(notice)
        if lost:
            until = now + NOTICE_HOLD
            suspects = self.suspects
            for peer, rib in self._ribs.items():
                if only is not None and peer != only:
                    continue
                for destination in crossing(rib.paths, lost):
                    suspects[peer, destination] = until
                    affected.add(destination)
        return affected

    def restated(self, peer_id: str, changed: set[str], said: Iterable[str]) -> None:
        """
        Neighbour C{peer_id} said C{said} again, which moved C{changed}:
        entries said again are news, not suspects; others that moved
        (following a parent) stop being suspects once clear of every lost
        link.
        """
        suspects = self.suspects
        for destination in said:
            suspects.pop((peer_id, destination), None)
        rib = self._ribs[peer_id]
        lost = list(self.notices)
        for destination in changed:
            key = (peer_id, destination)
            if key in suspects:
                path = rib.paths.get(destination)
                if path is None or not crosses(path, lost):
                    del suspects[key]

    def expire(self, now: float) -> set[str]:
        """
        Forget the news held long enough, and stop suspecting the paths it
        hit that no neighbour has said again.

        :returns: the destinations to decide again.
        """
        for notice in [n for n, until in self.notices.items() if until <= now]:
            del self.notices[notice]
        for link in [k for k, (_, until) in self.ups.items() if until <= now]:
            del self.ups[link]
        over = [key for key, until in self.suspects.items() if until <= now]
        for key in over:
            del self.suspects[key]
        return {destination for _, destination in over}

    def next_expiry(self) -> float | None:
        """:returns: when the first news or suspicion held expires, if any."""
        return min(
            [*self.notices.values(), *self.suspects.values(), *(u for _, u in self.ups.values())],
            default=None,
        )

    # News for neighbours.

    def notices_for(self, peer_id: str) -> tuple[Notice, ...]:
        """
        :returns: the lost links routing neighbour C{peer_id} must hear of
            now: those that some path we told it crosses (so it holds a
            stale path of ours, and perhaps of others), each told once.

        A notice is looked for through the neighbour's whole mirror once;
        while none of its paths crosses the link, later adverts look only
        at the destinations told since (L{exported}): a path across the
        link can only come with one of them, itself or an ancestor of its
        reference. Each advert of a busy node used to look through every
        mirror for every notice no path crossed, until it expired.
        """
        since = self._since.pop(peer_id, set())
        mirror = self._mirrors.get(peer_id)
        if mirror is None or not self.notices:
            self._clear.pop(peer_id, None)
            return ()
        told = self._told.setdefault(peer_id, set())
        if told:
            told &= {*self.notices, *self._up_notices()}
        clear = self._clear.setdefault(peer_id, set())
        if clear:
            clear &= self.notices.keys()
        paths = mirror.paths
        me = self.node_id
        fresh = [n for n in self.notices if n not in told]
        if not fresh:
            return ()
        unclear = [n for n in fresh if n not in clear]
        due = []
        for notices, held in (
            (unclear, list(paths.values()) if unclear else []),
            ([n for n in fresh if n in clear], [path for path in map(paths.get, since) if path]),
        ):
            if not notices:
                continue
            own = [n for n in notices if n[0] == me]
            # (Paths of the mirror start after this node: one across its own
            # lost link starts at the peer.)
            crossed_here = crossed(held, [n for n in notices if n[0] != me])
            if own:
                first = {path[0] for path in held}
                crossed_here.update(n for n in own if n[1] in first)
            for notice in notices:
                if notice in crossed_here:
                    due.append(notice)
                    told.add(notice)
                    clear.discard(notice)
                else:
                    clear.add(notice)
        return tuple(due)

    def ups_for(self, peer_id: str) -> tuple[Notice, ...]:
        """
        :returns: the links back up (after news of their loss) that routing
            neighbour C{peer_id} has not heard of from us, each told once.
        """
        if not self.ups or peer_id not in self._mirrors:
            return ()
        told = self._told.setdefault(peer_id, set())
        due = tuple(n for n in self._up_notices() if n not in told)
        told.update(due)
        return due

    def _up_notices(self) -> list[Notice]:
        return [(node, peer, stamp) for (node, peer), (stamp, _) in self.ups.items()]

    def _clear_suspects(self) -> set[str]:
        # The suspects whose paths cross no lost link any longer.
        lost = list(self.notices)
        cleared = set()
        for key in list(self.suspects):
            peer, destination = key
            path = self._ribs[peer].paths.get(destination)
            if path is None or not crosses(path, lost):
                del self.suspects[key]
                cleared.add(destination)
        return cleared


def crossing(paths: Mapping[str, tuple[str, ...]], lost: list[Notice]) -> set[str]:
    """
    :returns: the destinations of C{paths} whose path runs over one of the
        C{lost} links. (A path that runs over a link holds both its ends:
        only the paths that hold one, picked out in C, are looked at in
        Python, once for all the links of that end: a dead hub's news, a
        link to it from each of its neighbours, is one look through the
        paths that hold the hub. A look per link, through the paths that
        hold each neighbour, made a tenth of a thousand-node mesh's work
        after a death.)
    """
    found: set[str] = set()
    held = list(paths.values())
    for end, partners in _by_end(lost):
        for destination, path in compress(paths.items(), map(contains, held, repeat(end))):
            if destination not in found and _next_to(path, end, partners):
                found.add(destination)
    return found


def crossed(held: list[tuple[str, ...]], lost: Iterable[Notice]) -> set[Notice]:
    """:returns: those of the C{lost} links that some path of C{held} runs over."""
    found: set[Notice] = set()
    for end, partners in _by_end(lost):
        left = dict(partners)
        for path in compress(held, map(contains, held, repeat(end))):
            at = path.index(end)
            for node in path[at + 1 : at + 2] if at == 0 else path[at - 1 : at + 2 : 2]:
                notices = left.pop(node, None)
                if notices is not None:
                    found.update(notices)
            if not left:
                break
    return found


def _by_end(lost: Iterable[Notice]) -> list[tuple[str, dict[str, list[Notice]]]]:
    # The links grouped by one of their ends, ends shared by most links
    # first: end -> {the other end: the notices of that link}.
    at_end: dict[str, list[Notice]] = {}
    for notice in lost:
        node, peer, _ = notice
        at_end.setdefault(node, []).append(notice)
        if peer != node:
            at_end.setdefault(peer, []).append(notice)
    left = set(chain.from_iterable(at_end.values()))
    groups = []
    for end in sorted(at_end, key=lambda end: -len(at_end[end])):
        partners: dict[str, list[Notice]] = {}
        for notice in at_end[end]:
            if notice in left:
                left.discard(notice)
                partners.setdefault(notice[1] if notice[0] == end else notice[0], []).append(notice)
        if partners:
            groups.append((end, partners))
        if not left:
            break
    return groups


def _next_to(path: tuple[str, ...], end: str, partners: Mapping[str, object]) -> bool:
    # Whether a node of partners is next to end (which path holds) on path.
    at = path.index(end)
    return (at > 0 and path[at - 1] in partners) or (
        at + 1 < len(path) and path[at + 1] in partners
    )


def crosses(path: tuple[str, ...], lost: list[Notice]) -> bool:
    """:returns: whether C{path} runs over one of the C{lost} links (either way)."""
    for node, peer, _ in lost:
        if node in path and peer in path:
            at = path.index(node)
            if (at + 1 < len(path) and path[at + 1] == peer) or (at > 0 and path[at - 1] == peer):
                return True
    return False
