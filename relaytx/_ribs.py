# -*- test-case-name: tests.test_ribs -*-
"""
L{AdjRib}: what one neighbour said it can reach, as its C{registry_sync}
adverts built it up, change by change.

Both ends of a link keep one: the receiver its copy of what the neighbour
told it, and the sender a mirror of what it told the neighbour, built by
the same code from the same entries, so the two agree. The sender compares
its mirror with its routing table to send only what changed (L{diff}).

An entry for a destination is either B{explicit} (the path from the sender
to it, and the sender's metric) or a B{reference} to another destination
of the same table, its B{parent}: the path to the parent with the
destination added, the parent's metric plus an increment. A reference
follows its parent: when the sender's path to the parent changes, one entry
for the parent changes the paths of every destination beyond it. This is
what keeps a link cut cheap: the nodes behind a lost link move to a new path
together, and only where they join the tree is anything sent.

A path that passes through the table's owner or through any node twice, or
that is longer than the table allows, is a loop or too long: the entry is
kept but resolves to nothing (and so does every reference below it).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import chain
from weakref import WeakSet

from relaytx.wire import NO_SERVERS, RouteAdvert

__all__ = ["NO_ATTRIBUTES", "AdjRib", "Attributes", "SharedAttributes", "Wanted", "diff", "export"]

#: A destination's servers and sequence number, as an entry last gave them.
Attributes = tuple[Mapping[str, tuple[str, ...]], int]

#: Never given: no servers, number 0.
NO_ATTRIBUTES: Attributes = (NO_SERVERS, 0)


class SharedAttributes:
    """
    The servers and sequence number of each destination that a node's
    tables hold (every neighbour's, every mirror), kept once for them all:
    a table keeps a pair of its own only where its entry's pair is not the
    shared one (a neighbour behind the others, or ahead of them for a
    moment). A pair in every table entry cost some 30 bytes an entry (the
    dict slot alone), about a fifth of a well-connected node's tables.

    The shared pair of a destination is the newest a table took: when a
    table takes a newer one, the tables that held the older one as shared
    keep it as their own (a few tables, once per change of a destination's
    number), and each drops it when it takes the newer one too.

    :param bound: destinations past which the pairs that no table holds
        any more are let go.
    """

    __slots__ = ("_bound", "_tables", "latest")

    def __init__(self, bound: int = 20_000) -> None:
        #: destination -> its shared pair (for each destination a table
        #: holds without a pair of its own, and some no table holds any more)
        self.latest: dict[str, Attributes] = {}
        self._bound = bound
        self._tables: WeakSet[AdjRib] = WeakSet()

    def join(self, table: AdjRib) -> None:
        """C{table} keeps its pairs here from now on."""
        self._tables.add(table)

    def set(self, table: AdjRib, destination: str, pair: Attributes) -> None:
        """
        C{table}'s entry for C{destination} (which it holds) now has C{pair}.
        """
        latest = self.latest
        shared = latest.get(destination)
        own = table.attributes
        if shared is None or shared is pair or shared == pair:
            if shared is None:
                if len(latest) >= self._bound:
                    self._let_go()
                latest[destination] = pair
            if destination in own:
                del own[destination]
                if not own:
                    table.attributes = {}  # (a dict keeps its size when emptied)
            return
        if pair[1] < shared[1]:
            own[destination] = pair  # behind the others
            return
        for other in self._tables:
            if other is not table and destination in other and destination not in other.attributes:
                other.attributes[destination] = shared
        latest[destination] = pair
        if destination in own:
            del own[destination]

    def _let_go(self) -> None:
        # The pairs of destinations no table holds (a table's own pair for
        # a destination needs no shared one, but is rare: kept).
        held: set[str] = set()
        for table in self._tables:
            held.update(table)
        latest = self.latest
        for destination in [d for d in latest if d not in held]:
            del latest[destination]
        self._bound = max(self._bound, 2 * len(latest))


#: What a sender wants a neighbour to hold for a destination: the path
#: (from the sender, exclusive), the metric, the servers and the
#: destination's sequence number; C{None}: nothing.
Wanted = tuple[tuple[str, ...], int, Mapping[str, tuple[str, ...]], int] | None


class AdjRib:
    """
    One neighbour's advertised table.

    :param owner: the node the paths lead away from: a path through it is
        a loop (the receiver, on both ends).
    :param prefix: prepended to every path (the receiver keeps paths from
        itself, so they start with the sender; the sender's mirror keeps
        them as it sent them).
    :param max_len: the longest resolved path kept, prefix included.
    :param limit: the most destinations kept; further new ones are refused
        (counted in C{refused}).
    :param shared: where the attributes of the entries are kept (a node
        passes one to all its tables); by default, this table's own.

    @ivar paths: destination -> resolved path (prefix included).
    @ivar metrics: destination -> the sender's metric to it, where that is
        not the path's hop count (its length less C{natural}, the prefix's):
        on a LAN, where every link costs one, next to none. (An entry for
        every resolved destination cost some 40 bytes, times every
        neighbour's table and every mirror.) See L{metric_of}.
    @ivar attributes: destination -> its servers and sequence number, as the
        sender last gave them, where they are not the shared ones (none
        given: L{NO_ATTRIBUTES}). See L{attributes_of}.
    @ivar latest: the shared pairs (L{SharedAttributes.latest}).
    @ivar refused: how many new destinations were refused over the limit.
    """

    __slots__ = (
        "__weakref__",
        "_children",
        "_dangling",
        "_explicit",
        "_incs",
        "_shared",
        "attributes",
        "latest",
        "limit",
        "max_len",
        "metrics",
        "natural",
        "owner",
        "paths",
        "prefix",
        "refused",
    )

    def __init__(
        self,
        owner: str,
        prefix: tuple[str, ...] = (),
        max_len: int = 64,
        limit: int | None = None,
        shared: SharedAttributes | None = None,
    ) -> None:
        self.owner = owner
        self.prefix = prefix
        self.max_len = max_len
        self.limit = limit
        self.paths: dict[str, tuple[str, ...]] = {}
        self.metrics: dict[str, int] = {}
        self.natural = len(prefix)
        self.attributes: dict[str, Attributes] = {}
        self._shared = SharedAttributes() if shared is None else shared
        self._shared.join(self)
        self.latest = self._shared.latest
        self.refused = 0
        # An entry's parent is not kept where the entry resolves: a
        # reference's path is its parent's with the destination added, so
        # the parent is the path's last node but one. Kept apart are the
        # explicit entries that resolve (some 2% of a table's entries) and
        # the entries that do not resolve (next to none). A parent for
        # every entry cost some 30 bytes an entry, times every table.
        #: explicit entries that resolve
        self._explicit: set[str] = set()
        #: entries that do not resolve: destination -> its parent, or None
        #: for an explicit one
        self._dangling: dict[str, str | None] = {}
        #: references whose increment is not 1
        self._incs: dict[str, int] = {}
        #: parent -> the reference to it, or a tuple of them when there are
        #: several: most parents have one (a tuple of one costs 48 bytes,
        #: a set of one 216), many two or three.
        self._children: dict[str, str | tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self.paths) + len(self._dangling)

    def __contains__(self, destination: object) -> bool:
        return destination in self.paths or destination in self._dangling

    def __iter__(self) -> Iterator[str]:
        return chain(self.paths, self._dangling)

    def parent_of(self, destination: str) -> str | None:
        """:returns: the parent of a reference entry, C{None} for others."""
        parent = self._held_parent(destination)
        return None if parent is _ABSENT else parent

    def _held_parent(self, destination: str) -> str | None:
        # The entry's parent, None for an explicit one, _ABSENT for none.
        path = self.paths.get(destination)
        if path is not None:
            return None if destination in self._explicit else path[-2]
        return self._dangling.get(destination, _ABSENT)

    def get(self, destination: str) -> tuple[tuple[str, ...], int] | None:
        """:returns: the resolved path and metric to C{destination}, or C{None}."""
        path = self.paths.get(destination)
        return None if path is None else (path, self.metric_of(destination))

    def metric_of(self, destination: str) -> int:
        """:returns: the sender's metric to C{destination}, which resolves."""
        metric = self.metrics.get(destination)
        return len(self.paths[destination]) - self.natural if metric is None else metric

    def attributes_of(self, destination: str) -> Attributes:
        """
        :returns: C{destination}'s servers and sequence number as last given
            (L{NO_ATTRIBUTES} if never, or if the table does not hold it).

        Where the table holds C{destination}, C{attributes.get(destination)
        or latest[destination]} is the same, inline.
        """
        own = self.attributes.get(destination)
        if own is not None:
            return own
        return self.latest[destination] if destination in self else NO_ATTRIBUTES

    def servers_of(self, destination: str) -> Mapping[str, tuple[str, ...]]:
        """:returns: C{destination}'s servers as last given (none if never)."""
        return self.attributes_of(destination)[0]

    def sn_of(self, destination: str) -> int:
        """:returns: C{destination}'s sequence number as last given (0 if never)."""
        return self.attributes_of(destination)[1]

    # Changes.

    def apply(
        self, routes: Mapping[str, RouteAdvert] | None, withdrawn: Iterable[str] = ()
    ) -> set[str]:
        """
        Take one advert's changes: C{withdrawn} first, then C{routes} in
        their order.

        :returns: the destinations whose resolved path, metric, servers or
            sequence number changed, those that follow a changed parent
            included.
        """
        changed: set[str] = set()
        for destination in withdrawn:
            self.withdraw(destination, changed)
        if routes:
            take = self.take
            for destination, entry in routes.items():
                take(destination, entry, changed)
        return changed

    def withdraw(self, destination: str, changed: set[str]) -> None:
        """Forget C{destination}; what changed is added to C{changed}."""
        parent = self._held_parent(destination)
        if parent is _ABSENT:
            return
        self._unlink(destination, parent)
        self._dangling.pop(destination, None)
        self._explicit.discard(destination)
        self.attributes.pop(destination, None)
        if self.paths.pop(destination, None) is not None:
            self.metrics.pop(destination, None)
            changed.add(destination)
        if destination in self._children:
            _resolve_children(self, destination, changed)

    def clear(self) -> set[str]:
        """Forget every entry; :returns: the destinations that resolved."""
        gone = set(self.paths)
        self.paths.clear()
        self.metrics.clear()
        self.attributes = {}
        self._explicit.clear()
        self._dangling.clear()
        self._incs.clear()
        self._children.clear()
        return gone

    def take(self, destination: str, entry: RouteAdvert, changed: set[str]) -> None:
        """Take one entry; what changed is added to C{changed}."""
        path, servers, parent, metric, sn = entry
        if path is None and parent is None:
            # Only the servers or number changed (of a destination held here).
            if destination in self and _attributes(self, destination, servers, sn):
                if destination in self.paths:
                    changed.add(destination)
            return
        old_parent = self._held_parent(destination)
        if old_parent is _ABSENT:
            if self.limit is not None and len(self) >= self.limit:
                self.refused += 1
                return
        elif old_parent != parent:
            self._unlink(destination, old_parent)
        if path is not None:
            full = self.prefix + path if self.prefix else path
            if (
                len(full) <= self.max_len
                and self.owner not in full
                and len(set(full)) == len(full)
                and (metric is None or metric >= 0)
            ):
                resolved_metric = len(path) if metric is None else metric
                self._store(destination, full, resolved_metric, changed, None)
            else:
                self._store(destination, None, 0, changed, None)
        else:
            assert parent is not None
            if old_parent != parent:
                self._adopt(parent, destination)
            if metric is not None and metric != 1:
                self._incs[destination] = metric
            elif old_parent == parent:
                self._incs.pop(destination, None)
            resolved, resolved_metric = self._resolve(destination, parent)
            self._store(destination, resolved, resolved_metric, changed, parent)
        if (servers is not None or sn is not None or old_parent is _ABSENT) and _attributes(
            self, destination, servers, sn, old_parent is _ABSENT
        ):
            changed.add(destination)

    def put(
        self,
        destination: str,
        entry: RouteAdvert,
        path: tuple[str, ...],
        metric: int,
        changed: set[str],
    ) -> None:
        """
        Take C{entry} from its sender's side, knowing what it resolves to
        (C{path}, C{metric}: the sender's own route, loop-free and within the
        limit): as L{take}, without resolving it again.
        """
        parent = entry.parent
        if entry.path is None and parent is None:
            # Only the servers or number changed.
            if destination in self and _attributes(self, destination, entry.servers, entry.sn):
                changed.add(destination)
            return
        old_parent = self._held_parent(destination)
        if old_parent != parent:
            if old_parent is not _ABSENT:
                self._unlink(destination, old_parent)
            if parent is not None:
                self._adopt(parent, destination)
        if parent is not None:
            # (A reference's path is its parent's and the destination.)
            assert path[-2] == parent
            self._explicit.discard(destination)
            if entry.metric is not None and entry.metric != 1:
                self._incs[destination] = entry.metric
            else:
                self._incs.pop(destination, None)
        else:
            self._explicit.add(destination)
        self._dangling.pop(destination, None)
        self.paths[destination] = path
        if metric == len(path) - self.natural:
            self.metrics.pop(destination, None)
        else:
            self.metrics[destination] = metric
        changed.add(destination)
        if destination in self._children:
            _resolve_children(self, destination, changed)
        if _attributes(self, destination, entry.servers, entry.sn, old_parent is _ABSENT):
            changed.add(destination)

    def _adopt(self, parent: str, destination: str) -> None:
        # (Called only for a destination not referring to parent yet.)
        children = self._children
        siblings = children.get(parent)
        if siblings is None:
            children[parent] = destination
        elif type(siblings) is str:
            children[parent] = (siblings, destination)
        else:
            children[parent] = (*siblings, destination)

    def _unlink(self, destination: str, parent: str | None) -> None:
        # (parent: the entry's, as _held_parent gives it.)
        if parent is not None:
            children = self._children
            siblings = children.get(parent)
            if siblings == destination:
                del children[parent]
            elif type(siblings) is tuple and destination in siblings:
                at = siblings.index(destination)
                rest = siblings[:at] + siblings[at + 1 :]
                children[parent] = rest[0] if len(rest) == 1 else rest
            self._incs.pop(destination, None)

    def _resolve(self, destination: str, parent: str) -> tuple[tuple[str, ...] | None, int]:
        parent_path = self.paths.get(parent)
        if (
            parent_path is None
            or len(parent_path) >= self.max_len
            or destination in parent_path
            or destination == self.owner
        ):
            return None, 0
        parent_metric = self.metrics.get(parent)
        if parent_metric is None:
            parent_metric = len(parent_path) - self.natural
        metric = parent_metric + self._incs.get(destination, 1)
        return (*parent_path, destination), metric

    def _store(
        self,
        destination: str,
        path: tuple[str, ...] | None,
        metric: int,
        changed: set[str],
        parent: str | None,
    ) -> None:
        # (parent: the entry's, None for an explicit one.)
        paths, metrics = self.paths, self.metrics
        if path is None:
            self._dangling[destination] = parent
            self._explicit.discard(destination)
            if destination not in paths:
                return
            del paths[destination]
            metrics.pop(destination, None)
        else:
            self._dangling.pop(destination, None)
            if parent is None:
                self._explicit.add(destination)
            else:
                self._explicit.discard(destination)
            if (
                paths.get(destination) == path
                and metrics.get(destination, len(path) - self.natural) == metric
            ):
                return
            paths[destination] = path
            if metric == len(path) - self.natural:
                metrics.pop(destination, None)
            else:
                metrics[destination] = metric
        changed.add(destination)
        if destination in self._children:
            _resolve_children(self, destination, changed)


def _attributes(
    rib: AdjRib,
    destination: str,
    servers: Mapping[str, tuple[str, ...]] | None,
    sn: int | None,
    new: bool = False,
) -> bool:
    # Set a destination's servers and number where given (all of them for
    # an entry new to the table, none given: none): whether they changed.
    own = rib.attributes.get(destination)
    held = NO_ATTRIBUTES if new else own or rib.latest[destination]
    held_servers, held_sn = held
    if servers is None or servers is held_servers or servers == held_servers:
        servers = held_servers
    if sn is None:
        sn = held_sn
    changed = not (servers is held_servers and sn == held_sn)
    if not changed and not new:
        return False
    # (SharedAttributes.set's common case, inline: this is on every entry taken.)
    shared = rib.latest.get(destination)
    if shared is not None and shared[1] == sn and (shared[0] is servers or shared[0] == servers):
        if own is not None:
            del rib.attributes[destination]
    else:
        rib._shared.set(rib, destination, held if not changed else (servers, sn))
    return changed


def _resolve_children(rib: AdjRib, destination: str, changed: set[str]) -> None:
    # Every reference below a changed entry, depth first, with a stack of
    # our own: a chain of references is as long as a path (at most
    # max_len), a cycle of them resolves to nothing and stops.
    # Metrics are kept only where they are not the path's hop count: a
    # child's is when its parent's is and it adds one (no increment kept).
    children = rib._children
    below = children[destination]
    stack = [(destination, below)] if type(below) is str else [(destination, c) for c in below]
    paths, metrics, incs, dangling = rib.paths, rib.metrics, rib._incs, rib._dangling
    max_len, owner = rib.max_len, rib.owner
    while stack:
        parent, child = stack.pop()
        parent_path = paths.get(parent)
        if (
            parent_path is None
            or len(parent_path) >= max_len
            or child in parent_path
            or child == owner
        ):
            if child not in paths:
                continue
            del paths[child]
            metrics.pop(child, None)
            dangling[child] = parent
        else:
            path = (*parent_path, child)
            parent_metric = metrics.get(parent)
            increment = incs.get(child)
            if parent_metric is None and increment is None:
                metric = None  # the hop count
            else:
                natural = len(path) - rib.natural
                metric = (natural - 1 if parent_metric is None else parent_metric) + (
                    1 if increment is None else increment
                )
                if metric == natural:
                    metric = None
            if paths.get(child) == path and metrics.get(child) == metric:
                continue
            dangling.pop(child, None)
            paths[child] = path
            if metric is None:
                metrics.pop(child, None)
            else:
                metrics[child] = metric
        changed.add(child)
        grandchildren = children.get(child)
        if grandchildren:
            if type(grandchildren) is str:
                stack.append((child, grandchildren))
            else:
                stack.extend((child, g) for g in grandchildren)


#: (An entry's parent is a node id or None: this is neither.)
_ABSENT = "\x00"


def _entry(
    mirror: AdjRib,
    path: tuple[str, ...],
    metric: int,
    servers: Mapping[str, tuple[str, ...]] | None,
    sn: int | None,
    may_refer: bool,
) -> RouteAdvert:
    # A reference when the mirror's path to the node before the destination
    # is this path's start: one word instead of a path, and the entry
    # follows its parent from then on.
    if may_refer and len(path) > 1:
        parent = path[-2]
        parent_path = mirror.paths.get(parent)
        if parent_path is not None and parent_path == path[:-1]:
            increment = metric - mirror.metrics.get(parent, len(parent_path) - mirror.natural)
            if increment >= 0:
                return RouteAdvert(None, servers, parent, None if increment == 1 else increment, sn)
    return RouteAdvert(path, servers, None, None if metric == len(path) else metric, sn)


def diff(
    mirror: AdjRib, wanted: Callable[[str], Wanted], candidates: Iterable[str]
) -> tuple[dict[str, RouteAdvert], list[str]]:
    """
    The advert that brings a neighbour from what it holds (C{mirror}) to
    what the sender wants it to hold, for the destinations that may have
    changed; C{mirror} is brought along.

    Destinations go shortest path first, so a parent is settled before the
    references to it. An entry sent changes the destinations that follow
    it in the mirror; those are looked at too (the second time a
    destination is sent it is sent explicitly, so this ends).

    :param wanted: the sender's wish for a destination (see L{Wanted}).
    :param candidates: the destinations that may differ; the others are
        taken to agree already.
    :returns: the entries to send, in order, and the destinations to withdraw.
    """
    paths, metrics = mirror.paths, mirror.metrics
    attributes, latest = mirror.attributes, mirror.latest
    natural = mirror.natural
    wants: dict[str, Wanted] = {}
    heap: list[tuple[int, str]] = []
    for destination in candidates:
        want = wanted(destination)
        if want is None:
            if destination in mirror:
                heap.append((0, destination))
                wants[destination] = want
            continue
        path, metric, servers, sn = want
        held = paths.get(destination)
        if (held is path or held == path) and metrics.get(
            destination, len(path) - natural
        ) == metric:
            held_servers, held_sn = attributes.get(destination) or latest[destination]
            if held_sn == sn and (held_servers is servers or held_servers == servers):
                if held is not path:
                    paths[destination] = path  # (the sender's own: one tuple kept, not two)
                continue
        heap.append((len(path), destination))
        wants[destination] = want
    if not heap:
        return {}, []
    heapq.heapify(heap)
    # What waits in the heap: a destination is there at most once (a
    # subtree that moves makes each of its nodes a follower of every
    # ancestor sent; one look at each, when its turn comes, sees them all).
    queued = set(wants)
    entries: dict[str, RouteAdvert] = {}
    withdrawn: list[str] = []
    sent: set[str] = set()
    while heap:
        _, destination = heapq.heappop(heap)
        queued.discard(destination)
        want = wants[destination] if destination in wants else wanted(destination)
        changed: set[str] = set()
        if want is None:
            if destination not in mirror:
                continue
            withdrawn.append(destination)
            mirror.withdraw(destination, changed)
        else:
            path, metric, servers, sn = want
            held = paths.get(destination)
            same_route = (held is path or held == path) and metrics.get(
                destination, len(path) - natural
            ) == metric
            held_servers, held_sn = mirror.attributes_of(destination)
            same_servers = held_servers is servers or held_servers == servers
            same_sn = held_sn == sn
            if same_route and same_servers and same_sn:
                if held is not path:
                    paths[destination] = path
                continue
            new_servers = None if same_servers else servers
            new_sn = None if same_sn else sn
            if same_route:
                entry = RouteAdvert(None, new_servers, None, None, new_sn)
            else:
                entry = _entry(mirror, path, metric, new_servers, new_sn, destination not in sent)
            mirror.put(destination, entry, path, metric, changed)
            earlier = entries.get(destination)
            if earlier is not None:
                # Sent twice: one entry, the latest route and every change of attributes.
                if entry.path is None and entry.parent is None:
                    entry = earlier._replace(
                        servers=entry.servers if entry.servers is not None else earlier.servers,
                        sn=entry.sn if entry.sn is not None else earlier.sn,
                    )
                else:
                    entry = entry._replace(
                        servers=entry.servers if entry.servers is not None else earlier.servers,
                        sn=entry.sn if entry.sn is not None else earlier.sn,
                    )
            entries[destination] = entry
            sent.add(destination)
        changed.discard(destination)
        for follower in changed:
            if follower in queued:
                continue
            if follower not in wants:
                wants[follower] = wanted(follower)
            follow = wants[follower]
            heapq.heappush(heap, (0 if follow is None else len(follow[0]), follower))
            queued.add(follower)
    return entries, withdrawn


def export(
    mirror: AdjRib, wanted: Callable[[str], Wanted], destinations: Iterable[str]
) -> dict[str, RouteAdvert]:
    """
    A whole table for a neighbour that holds nothing yet: C{mirror} is
    cleared and rebuilt to match.

    :returns: the entries, parents before the references to them.
    """
    mirror.clear()
    rows = []
    for destination in destinations:
        want = wanted(destination)
        if want is not None:
            rows.append((len(want[0]), destination, want))
    rows.sort(key=lambda row: row[0])
    entries: dict[str, RouteAdvert] = {}
    changed: set[str] = set()
    for _, destination, (path, metric, servers, sn) in rows:
        entry = _entry(mirror, path, metric, servers or None, sn or None, True)
        mirror.put(destination, entry, path, metric, changed)
        entries[destination] = entry
    return entries
