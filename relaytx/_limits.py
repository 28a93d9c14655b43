# -*- test-case-name: tests.test_limits -*-
"""
Admission control for calls a node executes: how many may be in flight in
total and per caller, and how fast one caller may send them (a token
bucket). A caller over a limit gets L{Overloaded} (-32005) at once, so one
caller flooding a node fills only its own share and cannot push the other
callers' calls past their timeouts.

Callers are peer node ids for calls that came over the mesh and
C{"http:ADDRESS"} for this node's own JSON-RPC clients.
"""

from __future__ import annotations

import itertools

from twisted.internet.interfaces import IReactorTime

from relaytx.errors import Overloaded


class CallLimiter:
    """
    :param max_in_flight: calls executing here at once, all callers.
    :param max_in_flight_per_caller: calls executing here at once for one
        caller.
    :param rate: calls per second one caller may start (0: no limit); a
        caller may burst up to one second's worth (and at least one call,
        so a rate below 1 still lets a call through now and then).
    """

    #: Rate buckets kept at most: past it, idle callers are forgotten first,
    #: then the least recently active.
    MAX_TRACKED = 10_000

    def __init__(
        self,
        clock: IReactorTime,
        max_in_flight: int,
        max_in_flight_per_caller: int,
        rate: float,
    ) -> None:
        self._clock = clock
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_caller = max_in_flight_per_caller
        self.rate = rate
        self.in_flight = 0
        self._per_caller: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}

    def admit(self, caller: str) -> None:
        """
        Let one call from C{caller} start; pair with L{release}.

        :raises Overloaded: if a limit is reached (nothing is counted then).
        """
        if self.in_flight >= self.max_in_flight:
            raise Overloaded(
                f"Overloaded: {self.in_flight} calls in flight here; retry later",
                limit="max_in_flight",
            )
        mine = self._per_caller.get(caller, 0)
        if mine >= self.max_in_flight_per_caller:
            raise Overloaded(
                f"Overloaded: {caller} has {mine} calls in flight here; retry later",
                limit="max_in_flight_per_caller",
            )
        if self.rate > 0:
            self._take_token(caller)
        self._per_caller[caller] = mine + 1
        self.in_flight += 1

    def release(self, caller: str) -> None:
        """One call admitted for C{caller} has finished."""
        mine = self._per_caller.get(caller, 0) - 1
        if mine < 0:
            return  # nothing admitted for it: the total must not drift
        if mine > 0:
            self._per_caller[caller] = mine
        else:
            self._per_caller.pop(caller, None)
        self.in_flight = max(0, self.in_flight - 1)

    @property
    def _capacity(self) -> float:
        return max(self.rate, 1.0)  # a bucket smaller than one call would never admit

    def _take_token(self, caller: str) -> None:
        now = self._clock.seconds()
        tokens, then = self._buckets.get(caller, (self._capacity, now))
        # The wall clock may step back: that must not drain the bucket.
        tokens = min(self._capacity, tokens + max(0.0, now - then) * self.rate)
        buckets = self._buckets
        if buckets.pop(caller, None) is None and len(buckets) >= self.MAX_TRACKED:
            self._forget_idle(now)
        # (Re)inserted last: the dict is in least-recently-active order, and
        # a caller hammering past its limit stays the most recent.
        if tokens < 1:
            buckets[caller] = (tokens, now)
            raise Overloaded(
                f"Rate limited: {caller} is over {self.rate:g} calls/s; retry later",
                limit="rate",
            )
        buckets[caller] = (tokens - 1, now)

    def _forget_idle(self, now: float) -> None:
        # A bucket that has refilled completely carries no state worth keeping.
        capacity = self._capacity
        full = [
            c
            for c, (t, then) in self._buckets.items()
            if t + max(0.0, now - then) * self.rate >= capacity
        ]
        for caller in full:
            del self._buckets[caller]
        # Then make a tenth of the room free, so that the next new callers
        # do not scan again (a flood of new names costs O(1) a call,
        # amortised), by forgetting the least recently active. Clearing
        # them all would hand every limited caller a full bucket: a flood
        # of new names would lift everyone's limit.
        keep = self.MAX_TRACKED - max(1, self.MAX_TRACKED // 10)
        excess = len(self._buckets) - keep
        if excess > 0:
            for caller in list(itertools.islice(self._buckets, excess)):
                del self._buckets[caller]
