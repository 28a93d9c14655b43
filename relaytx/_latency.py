# -*- test-case-name: tests.test_latency -*-
"""
L{LinkCosts}: the cost of each of a node's links in the routing metric,
from the round trips their pings measure.

A hop costs 1. A link that is clearly slower than the node's fastest link
costs more: its extra round trip, in L{UNIT}s, rounded down to a coarse
step (2, 4, 8, ... extra; below 2 units, nothing). Comparing with the
node's own fastest link, not with an absolute figure, keeps a busy node
(whose every ping waits behind its own work) from seeing slow links
everywhere and moving routes back and forth as its load comes and goes.

Three more rules keep a cost still unless the link really changed:

  - a link's round trip is the B{lowest} of its last L{WINDOW} pings, so
    it must be slow at every one of them to cost more (a busy link whose
    pings queue behind calls now and then does not), and one fast answer
    brings the cost down;
  - a cost moves only when the round trip leaves the current step by a
    margin (L{MARGIN}) either way, so it does not toggle at a step's edge;
  - a cost goes up only once the link's window is full: at the default
    ping interval (5 s), a link must stay slow for 15-20 s.

On a LAN or loopback every link costs 1 and routes are shortest paths. A
link 200 ms slower than the node's others costs 17, and is routed around
where another path is faster by a clear margin (see L{relaytx._routing}).
Only links to routing neighbours are tracked (a bare link's cost moves no
route).
"""

from __future__ import annotations

from collections import deque

#: Seconds of extra round trip that cost as much as one more hop.
UNIT = 0.010

#: Round trips looked at per link (the last ones measured).
WINDOW = 4

#: How far outside its step the round trip must be before the cost moves.
MARGIN = 0.25

#: The smallest extra cost (an extra round trip below 2 units costs nothing).
FIRST_STEP = 2

#: The largest extra cost of a link (about 10 s of extra round trip).
MAX_EXTRA = 1024


def step_of(units: float) -> int:
    """:returns: the step (0, 2, 4, 8, ...) that C{units} of extra round trip fall in."""
    if units < FIRST_STEP:
        return 0
    step = FIRST_STEP
    while step * 2 <= units and step < MAX_EXTRA:
        step *= 2
    return step


class _Link:
    __slots__ = ("samples", "step")

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=WINDOW)
        self.step = 0

    def fastest(self) -> float | None:
        return min(self.samples) if self.samples else None


class LinkCosts:
    """The costs of one node's links to routing neighbours."""

    def __init__(self) -> None:
        self._links: dict[str, _Link] = {}

    def add(self, peer_id: str) -> None:
        """Track the link to C{peer_id} (a routing neighbour); it costs 1."""
        self._links.setdefault(peer_id, _Link())

    def remove(self, peer_id: str) -> dict[str, int]:
        """
        Stop tracking the link to C{peer_id}.

        :returns: the other links whose cost changed (the fastest link may
            have been this one).
        """
        if self._links.pop(peer_id, None) is None:
            return {}
        return self._review(None)

    def cost(self, peer_id: str) -> int:
        """:returns: the link's cost (1 if it is not tracked)."""
        link = self._links.get(peer_id)
        return 1 if link is None else 1 + link.step

    def sample(self, peer_id: str, rtt: float) -> dict[str, int]:
        """
        One round trip of C{rtt} seconds on the link to C{peer_id}.

        :returns: the links whose cost changed, with their new costs.
        """
        link = self._links.get(peer_id)
        if link is None:
            return {}
        before = self._baseline()
        link.samples.append(rtt)
        if self._baseline() != before:
            return self._review(None)
        return self._review(peer_id)

    def _baseline(self) -> float | None:
        fastest = [f for f in (link.fastest() for link in self._links.values()) if f is not None]
        return min(fastest, default=None)

    def _review(self, only: str | None) -> dict[str, int]:
        baseline = self._baseline()
        if baseline is None:
            return {}
        changed = {}
        links = self._links if only is None else {only: self._links[only]}
        for peer_id, link in links.items():
            fastest = link.fastest()
            if fastest is None:
                continue
            units = (fastest - baseline) / UNIT
            step = link.step
            if units >= max(step * 2, FIRST_STEP) * (1 + MARGIN):
                if len(link.samples) < WINDOW:
                    continue
            elif units >= step * (1 - MARGIN):
                continue
            new = step_of(units)
            if new != step:
                link.step = new
                changed[peer_id] = 1 + new
        return changed
