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

from twisted.internet.interfaces import IReactorTime

from relaytx.errors import Overloaded


class CallLimiter:
    """
    :param max_in_flight: calls executing here at once, all callers.
    :param max_in_flight_per_caller: calls executing here at once for one
        caller.
    :param rate: calls per second one caller may start (0: no limit); a
        caller may burst up to one second's worth.
    """

    #: Idle callers are forgotten once this many are tracked.
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
        if mine > 0:
            self._per_caller[caller] = mine
        else:
            self._per_caller.pop(caller, None)
        self.in_flight = max(0, self.in_flight - 1)

    def _take_token(self, caller: str) -> None:
        now = self._clock.seconds()
        tokens, then = self._buckets.get(caller, (self.rate, now))
        tokens = min(self.rate, tokens + (now - then) * self.rate)
        if tokens < 1:
            raise Overloaded(
                f"Rate limited: {caller} is over {self.rate:g} calls/s; retry later",
                limit="rate",
            )
        if caller not in self._buckets and len(self._buckets) >= self.MAX_TRACKED:
            self._forget_idle(now)
        self._buckets[caller] = (tokens - 1, now)

    def _forget_idle(self, now: float) -> None:
        # A bucket that has refilled completely carries no state worth keeping.
        full = [
            c for c, (t, then) in self._buckets.items() if t + (now - then) * self.rate >= self.rate
        ]
        for caller in full:
            del self._buckets[caller]
        if len(self._buckets) >= self.MAX_TRACKED:
            self._buckets.clear()  # still too many: start over rather than grow
