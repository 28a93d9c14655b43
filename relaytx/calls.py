# -*- test-case-name: tests.test_calls -*-
"""
Bookkeeping of calls in flight, on an injected clock.

  - L{PendingCalls}: the calls this node made and waits on, by response id.
    Each entry times out (L{CallTimeout}, -32001) at the caller's deadline
    and fails at once (L{NodeUnreachable}, -32002) when the neighbour it was
    sent through goes away. A late answer is discarded and counted.
  - L{ForwardedCalls}: the calls this node passed on for others. Each entry
    remembers the link it came from and the one it left by, so that when the
    latter goes away the caller hears about it at once instead of at its
    timeout. Entries expire with the call's time budget.
  - L{SeenMessages}: message ids delivered here recently, so a message that
    arrives twice (flooding, a resend) is executed at most once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from relaytx.errors import CallError, CallTimeout


class _Pending:
    __slots__ = ("deferred", "destination", "timer", "via")

    def __init__(self, deferred: Deferred[Any], via: str | None, destination: str) -> None:
        self.deferred = deferred
        self.via = via
        self.destination = destination
        self.timer: IDelayedCall | None = None


class PendingCalls:
    """
    The calls this node waits on.

    :param on_change: called with the number of pending calls after each
        change (the node's gauge).
    :param on_late: called when an answer arrives for no pending call.
    """

    def __init__(
        self,
        clock: IReactorTime,
        on_change: Callable[[int], None] = lambda n: None,
        on_late: Callable[[], None] = lambda: None,
    ) -> None:
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._on_change = on_change
        self._on_late = on_late

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, response_id: object) -> bool:
        return response_id in self._pending

    def expect(
        self, response_id: str, destination: str, via: str | None, timeout: float
    ) -> Deferred[Any]:
        """
        Wait for the answer to call C{response_id}.

        :param via: the neighbour the call was sent to, or C{None} if it was
            flooded to several.
        :returns: a Deferred that fires with the answer's result, or fails
            with L{CallTimeout} after C{timeout} seconds or with the error
            the answer carried. Cancelling it forgets the call.
        """
        if response_id in self._pending:
            raise ValueError(f"response id {response_id!r} is already pending")

        def cancel(_: Deferred[Any]) -> None:
            self._forget(response_id)

        d: Deferred[Any] = Deferred(cancel)
        entry = _Pending(d, via, destination)
        entry.timer = self._clock.callLater(timeout, self._timed_out, response_id, timeout)
        self._pending[response_id] = entry
        self._on_change(len(self._pending))
        return d

    def set_via(self, response_id: str, via: str | None) -> None:
        """Record the neighbour a pending call was sent to, once known."""
        entry = self._pending.get(response_id)
        if entry is not None:
            entry.via = via

    def destinations(self) -> set[str]:
        """:returns: the nodes that pending calls wait on."""
        return {entry.destination for entry in self._pending.values()}

    def destination_of(self, response_id: str | None) -> str | None:
        """:returns: the node pending call C{response_id} went to, if any."""
        entry = self._pending.get(response_id) if response_id is not None else None
        return None if entry is None else entry.destination

    def resolve(
        self, response_id: str | None, result: Any = None, error: CallError | None = None
    ) -> bool:
        """
        Deliver the answer to call C{response_id}.

        :returns: C{False} if no such call is pending (a late or unknown
            answer, which is counted).
        """
        entry = self._forget(response_id) if response_id is not None else None
        if entry is None:
            self._on_late()
            return False
        if error is not None:
            entry.deferred.errback(Failure(error))
        else:
            entry.deferred.callback(result)
        return True

    def fail_via(self, peer_id: str, error: Callable[[str], CallError]) -> int:
        """
        Fail every call sent through neighbour C{peer_id}.

        :param error: builds the error for a call to a given destination.
        :returns: how many calls failed.
        """
        return self._fail_where(lambda e: e.via == peer_id, error)

    def fail_destination(self, destination: str, error: Callable[[str], CallError]) -> int:
        """Fail every call to C{destination}; returns how many."""
        return self._fail_where(lambda e: e.destination == destination, error)

    def fail_all(self, error: Callable[[str], CallError]) -> int:
        """Fail every pending call (the node is stopping); returns how many."""
        return self._fail_where(lambda e: True, error)

    def _fail_where(
        self, match: Callable[[_Pending], bool], error: Callable[[str], CallError]
    ) -> int:
        doomed = [rid for rid, entry in self._pending.items() if match(entry)]
        failed = 0
        for response_id in doomed:
            # An errback run for an earlier entry may already have settled
            # (resolved or cancelled) a later one: that one is not counted.
            entry = self._forget(response_id)
            if entry is not None:
                failed += 1
                entry.deferred.errback(Failure(error(entry.destination)))
        return failed

    def _timed_out(self, response_id: str, timeout: float) -> None:
        entry = self._pending.get(response_id)
        if entry is None:
            return
        entry.timer = None
        self._forget(response_id)
        entry.deferred.errback(
            Failure(
                CallTimeout(
                    f"Call to {entry.destination} timed out after {timeout:g}s",
                    target_node=entry.destination,
                    timeout=timeout,
                )
            )
        )

    def _forget(self, response_id: str) -> _Pending | None:
        entry = self._pending.pop(response_id, None)
        if entry is None:
            return None
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        entry.timer = None
        self._on_change(len(self._pending))
        return entry


class _Forwarded:
    __slots__ = ("caller", "came_from", "target", "timer", "went_to")

    def __init__(self, caller: str, target: str, came_from: str, went_to: str | None) -> None:
        self.caller = caller
        self.target = target
        self.came_from = came_from
        self.went_to = went_to
        self.timer: IDelayedCall | None = None


class ForwardedCalls:
    """
    Calls this node forwarded for other nodes, by response id, until their
    answer passes back through or their budget runs out.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._calls: dict[tuple[str, str], _Forwarded] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def remember(
        self,
        caller: str,
        response_id: str,
        target: str,
        came_from: str,
        went_to: str | None,
        budget: float,
    ) -> None:
        """
        Note that call C{response_id} from C{caller} to C{target} arrived on
        the link to C{came_from} and left on the link to C{went_to}.
        """
        key = (caller, response_id)
        old = self._calls.pop(key, None)
        if old is not None and old.timer is not None and old.timer.active():
            old.timer.cancel()
        entry = _Forwarded(caller, target, came_from, went_to)
        entry.timer = self._clock.callLater(budget, self._expire, key)
        self._calls[key] = entry

    def came_from(self, caller: str, response_id: Any) -> str | None:
        """
        :returns: the neighbour a forwarded call came from, the way its
            answer goes back when no route to the caller is known.
        """
        entry = self._calls.get((caller, response_id)) if isinstance(response_id, str) else None
        return None if entry is None else entry.came_from

    def answered(self, caller: str, response_id: str | None) -> None:
        """The answer to a forwarded call passed through: forget the call."""
        if response_id is None:
            return
        entry = self._calls.pop((caller, response_id), None)
        if entry is not None and entry.timer is not None and entry.timer.active():
            entry.timer.cancel()

    def lost_link(self, peer_id: str) -> list[tuple[str, str, str]]:
        """
        Forget the calls that left through C{peer_id}, at once (whether or
        not the result is looked at).

        :returns: C{(caller, response_id, target)} of each, so the caller
            can be told.
        """
        lost = [key for key, e in self._calls.items() if e.went_to == peer_id]
        told = []
        for key in lost:
            entry = self._calls.pop(key)
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
            told.append((entry.caller, key[1], entry.target))
        return told

    def clear(self) -> None:
        """Forget everything (the node is stopping)."""
        for entry in self._calls.values():
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
        self._calls.clear()

    def _expire(self, key: tuple[str, str]) -> None:
        entry = self._calls.pop(key, None)
        if entry is not None:
            entry.timer = None


class SeenMessages:
    """
    A bounded memory of message ids delivered here, each kept for C{ttl}
    seconds (and at most C{capacity} of them), without timers: expiry
    happens as new ids are added.
    """

    def __init__(self, clock: IReactorTime, ttl: float = 120.0, capacity: int = 100_000) -> None:
        self._clock = clock
        self._ttl = ttl
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, sender: str, message_id: str | None) -> bool:
        """
        :returns: C{True} the first time C{(sender, message_id)} is seen
            (always for a message without an id).
        """
        if message_id is None:
            return True
        key = (sender, message_id)
        now = self._clock.seconds()
        seen = self._seen
        expires = seen.get(key)
        if expires is not None:
            if expires > now:
                return False
            # Kept past its ttl only because nothing was added since: it is
            # new again, and goes to the back of the line.
            del seen[key]
        seen[key] = now + self._ttl
        while seen:
            oldest_key, expires = next(iter(seen.items()))
            if expires > now and len(seen) <= self._capacity:
                break
            del seen[oldest_key]
        return True
