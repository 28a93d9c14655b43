# -*- test-case-name: tests.test_calls -*-
"""
Calls: what one is (L{CallTarget}), and the bookkeeping of calls in flight,
on an injected clock.

  - L{CallTarget}: a resolved call, whichever way it came in (JSON-RPC, the
    Python API, the mesh).
  - L{PendingCalls}: the calls this node made and waits on, by response id.
    Each entry times out (L{CallTimeout}, -32001) at the caller's deadline
    and fails at once (L{relaytx.errors.OutcomeUnknown}, -32006) when the
    neighbour it was sent through goes away. A late answer is discarded and
    counted.
  - L{ForwardedCalls}: the calls this node passed on for others. Each entry
    remembers the link it came from, the way its answer goes back, and the
    one it left by, so that when the latter goes away the caller hears about
    it at once (-32006) instead of at its timeout. Entries expire with the
    call's time budget.
  - L{SeenMessages}: message ids delivered here recently, so a message that
    arrives twice (flooding, a resend) is executed at most once.

None of them sets a reactor timer per call: L{PendingCalls} keeps its
deadlines in one heap (L{_Deadlines}) under one timer, and the other two
drop expired entries as they are used.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable
from typing import Any

from attrs import Factory, define
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from relaytx.errors import CallError, CallTimeout

#: Seconds a call may take when its caller gives no timeout.
DEFAULT_CALL_TIMEOUT = 30.0

#: The longest time budget a call from another node is given (a day):
#: what it asks for beyond that is clamped, so no call is remembered or
#: waited on for longer.
MAX_CALL_BUDGET = 86400.0

#: What L{PendingCalls.dead_end} says of a flooded call: copies of it are
#: still out, or none is and one of them was lost on the way.
WAITING = "waiting"
COPY_LOST = "copy lost"

#: How a flood a node passed on ended, when no answer came back through
#: it (L{ForwardedCalls.dead_end}): a copy was lost on the way (it may have
#: run: -32006), or one reached the target after another copy had
#: (L{relaytx.wire.CopyDropped}: another branch ran it, this one did not);
#: else (C{None}) every copy came to a dead end (-32002).
LOST = "lost"
DROPPED = "dropped"


@define
class CallTarget:
    """
    A resolved call: C{server.method(*args, **kwargs)} on C{node_id}.

    @ivar node_id: the node named by the caller, or C{None} when the caller
        left the choice to the node (a bare C{SERVER.METHOD}).
    @ivar timeout: the caller's budget in seconds.
    @ivar caller: who asks, for access rules and limits: a peer node id,
        C{"http:ADDRESS"} for a JSON-RPC client of this node, or C{None}
        for code running in this node (never limited).
    @ivar via: the neighbour a call from the mesh arrived from; limits count
        against it (C{caller} when C{None}).
    @ivar trace: the call's trace context and path request
        (L{relaytx._tracing.CallTrace}), or C{None} for an untraced call.
    @ivar stream: who takes the items if the method streams them
        (L{relaytx._streams.ItemConsumer}), or C{None}: a streaming method's
        items are then collected into one list (SPEC section 12).
    @ivar relayed_by: in PKI mode, the node that relays the call for its
        HTTP client C{caller}: access rules must allow both (a member
        cannot borrow an HTTP client's rights that the rules deny it).
    @ivar ran_here: a call whose instance the balancer chose: whether its
        last attempt ran on this node's own (counted as its servers' calls).

    A value, though not frozen (as the envelope, for speed: one is made per
    call); use C{attrs.evolve} for a changed copy.
    """

    node_id: str | None
    server: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = Factory(dict)  # a fresh dict per target, never a shared one
    timeout: float = DEFAULT_CALL_TIMEOUT
    caller: str | None = None
    via: str | None = None
    trace: Any = None
    stream: Any = None
    relayed_by: str | None = None
    ran_here: bool = False


#: Seconds before a call's deadline within which a -32001 from its callee
#: is taken for the caller's own timeout (L{PendingCalls.resolve}): this
#: reactor's timer may wake a little late (epoll counts in milliseconds).
DEADLINE_RACE = 0.05


class _Pending:
    __slots__ = (
        "branches",
        "copy_lost",
        "deadline",
        "deferred",
        "destination",
        "stream",
        "timeout",
        "via",
    )

    def __init__(
        self,
        deferred: Deferred[Any],
        via: str | None,
        destination: str,
        deadline: float,
        timeout: float,
    ) -> None:
        self.deferred = deferred
        self.via = via
        self.destination = destination
        self.deadline = deadline
        self.timeout = timeout
        self.stream: Any = None
        #: a flooded call's copies still out: the neighbours they went to
        self.branches: set[str] | None = None
        #: whether a copy was lost on the way (a link went down behind it)
        self.copy_lost = False


class _Deadlines:
    """
    Keys in a heap by deadline, for bookkeeping that expires without a
    reactor timer per entry. The live entries are kept by the owner, in a
    dict of objects with a C{deadline}; a key forgotten there (or given a
    new deadline) stays in the heap and is skipped when it surfaces, and
    the heap is rebuilt when such leftovers outnumber the live entries.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: float, key: Any) -> None:
        heapq.heappush(self._heap, (deadline, next(self._sequence), key))

    def pop_due(self, now: float, live: dict[Any, Any]) -> Any:
        """:returns: the next live key whose deadline is C{now} or earlier, or C{None}."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            entry = live.get(key)
            if entry is not None and entry.deadline == deadline:
                return key
        return None

    def earliest(self, live: dict[Any, Any]) -> float | None:
        """
        Drop leftovers from the top (and compact if they are most of the
        heap). :returns: the earliest live deadline, or C{None}.
        """
        heap = self._heap
        while heap and self._stale(heap[0], live):
            heapq.heappop(heap)
        if self.bloated(len(live)):
            self._heap = heap = [e for e in heap if not self._stale(e, live)]
            heapq.heapify(heap)
        return heap[0][0] if heap else None

    def bloated(self, live_count: int) -> bool:
        """Whether leftovers outnumber the C{live_count} live entries (and a few more)."""
        return len(self._heap) > 2 * live_count + 64

    def clear(self) -> None:
        self._heap.clear()

    @staticmethod
    def _stale(item: tuple[float, int, Any], live: dict[Any, Any]) -> bool:
        entry = live.get(item[2])
        return entry is None or entry.deadline != item[0]


def _timeout_error(entry: _Pending) -> CallTimeout:
    """:returns: the error of a call whose deadline passed here."""
    return CallTimeout(
        f"Call to {entry.destination} timed out after {entry.timeout:g}s",
        target_node=entry.destination,
        timeout=entry.timeout,
    )


class PendingCalls:
    """
    The calls this node waits on.

    Deadlines sit in one heap under a single timer set for the earliest of
    them, instead of a reactor timer per call: with thousands of calls a
    second, scheduling and cancelling a timer for each was a visible share
    of a call's cost. Entries of calls that ended early are dropped from the
    heap lazily, and the heap is rebuilt when they outnumber the live ones.

    :param on_late: called when an answer arrives for no pending call.
    """

    def __init__(self, clock: IReactorTime, on_late: Callable[[], None] = lambda: None) -> None:
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._on_late = on_late
        self._deadlines = _Deadlines()
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, response_id: object) -> bool:
        return response_id in self._pending

    def expect(
        self,
        response_id: str,
        destination: str,
        via: str | None,
        timeout: float,
        now: float | None = None,
        stream: Any = None,
        on_cancel: Callable[[str, str, str | None], None] | None = None,
    ) -> Deferred[Any]:
        """
        Wait for the answer to call C{response_id}.

        :param via: the neighbour the call was sent to, or C{None} if it was
            flooded to several.
        :param now: the clock's time, if the caller has just read it.
        :param stream: who takes the call's streamed items, if it asked for
            a stream (L{stream_of} finds it).
        :param on_cancel: called with the response id, destination and
            neighbour of the call when its Deferred is cancelled while it
            is pending (to tell its callee).
        :returns: a Deferred that fires with the answer's result, or fails
            with L{CallTimeout} after C{timeout} seconds or with the error
            the answer carried. Cancelling it forgets the call.
        """
        if response_id in self._pending:
            raise ValueError(f"response id {response_id!r} is already pending")

        def cancel(_: Deferred[Any]) -> None:
            entry = self._forget(response_id)
            if entry is not None and on_cancel is not None:
                on_cancel(response_id, entry.destination, entry.via)

        d: Deferred[Any] = Deferred(cancel)
        deadline = (self._clock.seconds() if now is None else now) + timeout
        entry = self._pending[response_id] = _Pending(d, via, destination, deadline, timeout)
        if stream is not None:
            entry.stream = stream
        self._deadlines.push(deadline, response_id)
        timer = self._timer
        if timer is None or deadline < timer.getTime():
            self._schedule(deadline)
        return d

    def _schedule(self, deadline: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        delay = max(0.0, deadline - self._clock.seconds())
        self._timer = self._clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        pending = self._pending
        # One at a time: an errback may settle or add other calls.
        while (response_id := self._deadlines.pop_due(now, pending)) is not None:
            self._timed_out(response_id, pending[response_id])
        self._rearm()

    def _rearm(self) -> None:
        # Set the timer for the earliest live deadline (none when nothing
        # is pending).
        earliest = self._deadlines.earliest(self._pending)
        if earliest is None:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
        elif self._timer is None or earliest < self._timer.getTime():
            # Only ever bring the timer forward: one set too early (its call
            # was answered) fires, finds nothing due and re-arms, once per
            # timeout period, instead of being moved at every answer.
            self._schedule(earliest)

    def set_via(
        self, response_id: str, via: str | None, branches: Iterable[str] | None = None
    ) -> None:
        """
        Record the neighbour a pending call was sent to, once known, or the
        neighbours its flooded copies went to (C{branches}).
        """
        entry = self._pending.get(response_id)
        if entry is not None:
            entry.via = via
            if branches is not None:
                entry.branches = set(branches)

    def dead_end(self, response_id: str | None, reporter: str) -> str | None:
        """
        The copy of flooded call C{response_id} sent to neighbour
        C{reporter} went no further (-32002, for that neighbour's whole
        branch of the flood).

        :returns: L{WAITING} if copies went elsewhere too, and may yet
            reach the target: the call waits for them (or its deadline);
            L{COPY_LOST} if none is left, but one was lost on the way
            (L{branch_lost}): it may have run, so the call fails -32006,
            not -32002; else C{None}: the report is the call's answer.
        """
        entry = self._pending.get(response_id) if response_id is not None else None
        branches = None if entry is None else entry.branches
        if branches is None:
            return None
        branches.discard(reporter)
        if branches:
            return WAITING
        return COPY_LOST if entry.copy_lost else None  # type: ignore[union-attr]  # branches came from it

    def copy_dropped(self, response_id: str, reporter: str) -> bool:
        """
        The copy of flooded call C{response_id} sent to neighbour
        C{reporter} was dropped at the target, another copy having been
        there (L{relaytx.wire.CopyDropped}): that branch has ended.

        :returns: whether no copy is left out: the call, which ran
            somewhere, has lost its answer (-32006).
        """
        entry = self._pending.get(response_id)
        branches = None if entry is None else entry.branches
        if not branches or reporter not in branches:
            return False
        branches.discard(reporter)
        entry.copy_lost = True  # type: ignore[union-attr]  # branches came from it
        return not branches

    def branch_lost(self, peer_id: str, error: Callable[[str], CallError]) -> int:
        """
        The link to neighbour C{peer_id} went down: the copies of flooded
        calls that went out through it are lost, and may have run. A call
        with no copy left out fails with C{error} (built for its
        destination); one that has others waits for them.

        :returns: how many calls failed.
        """
        ended = set()
        for response_id, entry in self._pending.items():
            branches = entry.branches
            if branches and peer_id in branches:
                branches.discard(peer_id)
                entry.copy_lost = True
                if not branches:
                    ended.add(response_id)
        return self._fail(ended, error)

    def stream_of(self, response_id: str) -> tuple[Any, str] | None:
        """
        :returns: who takes the items of pending call C{response_id}, and
            the node it went to; C{None} if it is not pending or asked for
            no stream.
        """
        entry = self._pending.get(response_id)
        if entry is None or entry.stream is None:
            return None
        return entry.stream, entry.destination

    def any_via(self, peer_id: str) -> bool:
        """
        :returns: whether some pending call was sent to neighbour
            C{peer_id}, or flooded (sent to several).
        """
        return any(entry.via == peer_id or entry.via is None for entry in self._pending.values())

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
            if (
                error.code == CallTimeout.code
                and self._clock.seconds() >= entry.deadline - DEADLINE_RACE
            ):
                # The callee's copy of the deadline, which it starts on
                # receipt, passed no sooner than this node's, and its
                # answer beat the timer here by a hair: the timeout is the
                # caller's, as the timer would have said it.
                error = _timeout_error(entry)
            entry.deferred.errback(Failure(error))
        else:
            entry.deferred.callback(result)
        return True

    def sent_via(self, peer_id: str) -> list[tuple[str, str]]:
        """:returns: the calls sent through neighbour C{peer_id}: C{(response_id, destination)}."""
        return [(rid, e.destination) for rid, e in self._pending.items() if e.via == peer_id]

    def fail_via(self, peer_id: str, error: Callable[[str], CallError]) -> int:
        """
        Fail every call sent through neighbour C{peer_id}.

        :param error: builds the error for a call to a given destination.
        :returns: how many calls failed.
        """
        return self._fail_where(lambda e: e.via == peer_id, error)

    def fail_destination(
        self,
        destination: str,
        error: Callable[[str], CallError],
        keep_via: Container[str] = (),
        keep_flooded: bool = False,
    ) -> int:
        """
        Fail every call to C{destination}, but those sent through a
        neighbour in C{keep_via} (and, with C{keep_flooded}, flooded calls
        with a copy out through one); returns how many.
        """

        def doomed(e: _Pending) -> bool:
            if e.destination != destination:
                return False
            if e.via is not None:
                return e.via not in keep_via
            branches = e.branches
            return not (keep_flooded and branches and any(b in keep_via for b in branches))

        return self._fail_where(doomed, error)

    def fail_all(self, error: Callable[[str], CallError]) -> int:
        """Fail every pending call (the node is stopping); returns how many."""
        return self._fail_where(lambda e: True, error)

    def _fail_where(
        self, match: Callable[[_Pending], bool], error: Callable[[str], CallError]
    ) -> int:
        return self._fail([rid for rid, entry in self._pending.items() if match(entry)], error)

    def _fail(self, doomed: Iterable[str], error: Callable[[str], CallError]) -> int:
        failed = 0
        for response_id in doomed:
            # An errback run for an earlier entry may already have settled
            # (resolved or cancelled) a later one: that one is not counted.
            entry = self._forget(response_id)
            if entry is not None:
                failed += 1
                entry.deferred.errback(Failure(error(entry.destination)))
        return failed

    def _timed_out(self, response_id: str, entry: _Pending) -> None:
        del self._pending[response_id]
        entry.deferred.errback(Failure(_timeout_error(entry)))

    def _forget(self, response_id: str) -> _Pending | None:
        entry = self._pending.pop(response_id, None)
        if entry is None:
            return None
        # The entry stays in the heap: dropped when it reaches the top at
        # its deadline, or when the heap is compacted. (Popping it at every
        # answer cost a heap operation per call.)
        if not self._pending or self._deadlines.bloated(len(self._pending)):
            self._rearm()
        return entry


class _Forwarded:
    __slots__ = ("came_from", "deadline", "target", "went_to")

    def __init__(self, target: str, came_from: str, went_to: str | None, deadline: float) -> None:
        self.target = target
        self.came_from = came_from
        self.went_to = went_to
        self.deadline = deadline


class ForwardedCalls:
    """
    Calls this node forwarded for other nodes, by response id, until their
    answer passes back through or their budget runs out.

    Nothing needs doing when a budget runs out but forgetting the call, so
    there is no timer, and no heap of deadlines: lookups pass over expired
    calls, and the table drops them in one sweep, at most every
    L{SWEEP_INTERVAL} seconds, when it is used. A forwarded call costs one
    insert and one pop (a reactor timer or a heap entry per call was a
    visible share of a forwarding node's work).
    """

    #: Seconds between sweeps: an expired call is held at most this much
    #: longer, and is never reported or used meanwhile.
    SWEEP_INTERVAL = 1.0

    def __init__(
        self, clock: IReactorTime, max_total: int = 40_000, max_per_neighbour: int = 10_000
    ) -> None:
        """
        :param max_total: the most calls remembered at once.
        :param max_per_neighbour: the most remembered at once that came
            from one neighbour.
        """
        self._clock = clock
        self._calls: dict[tuple[str, str], _Forwarded] = {}
        self._next_sweep = 0.0
        self.max_total = max_total
        self.max_per_neighbour = max_per_neighbour
        self._per_neighbour: dict[str, int] = {}
        #: flooded calls (caller, response id) -> the neighbours whose
        #: copies have not come to a dead end yet (see L{dead_end})
        self.floods: dict[tuple[str, str], set[str]] = {}
        #: the route each of those had come by (for the error's data)
        self._flood_routes: dict[tuple[str, str], tuple[str, ...]] = {}
        #: how those of them ended, so far, that did not all come to dead
        #: ends: L{LOST} or L{DROPPED} (see L{dead_end})
        self._flood_endings: dict[tuple[str, str], str] = {}

    def __len__(self) -> int:
        self._sweep(self._clock.seconds())
        return len(self._calls)

    def has_room(self, came_from: str) -> bool:
        """
        :returns: whether one more call from neighbour C{came_from} may be
            remembered (a call that may not is not forwarded).
        """
        calls = self._calls
        if len(calls) >= self.max_total or (
            self._per_neighbour.get(came_from, 0) >= self.max_per_neighbour
        ):
            self._sweep(self._clock.seconds())  # expired ones give their room back
            return len(calls) < self.max_total and (
                self._per_neighbour.get(came_from, 0) < self.max_per_neighbour
            )
        return True

    def any_to(self, peer_id: str) -> bool:
        """
        :returns: whether some call forwarded to neighbour C{peer_id}, or
            flooded, is still within its budget.
        """
        now = self._clock.seconds()
        return any(
            (entry.went_to == peer_id or entry.went_to is None) and entry.deadline > now
            for entry in self._calls.values()
        )

    def _counted_out(self, entry: _Forwarded) -> None:
        per = self._per_neighbour
        left = per.get(entry.came_from, 0) - 1
        if left > 0:
            per[entry.came_from] = left
        else:
            per.pop(entry.came_from, None)

    def remember(
        self,
        caller: str,
        response_id: str,
        target: str,
        came_from: str,
        went_to: str | None,
        budget: float,
        now: float | None = None,
    ) -> bool:
        """
        Note that call C{response_id} from C{caller} to C{target} arrived on
        the link to C{came_from} and left on the link to C{went_to}.

        :param now: the clock's time, if the caller has just read it.
        :returns: C{False} if it is a second copy of a call that left on
            that link already, from another neighbour (copies of a flood
            that met here): it is not to go on, and is not remembered.
        """
        if now is None:
            now = self._clock.seconds()
        if now >= self._next_sweep:
            self._sweep(now)
        key = (caller, response_id)
        old = self._calls.get(key)
        if old is not None:  # flooded copies of one call: one entry
            if (
                went_to is not None
                and old.went_to == went_to
                and old.came_from != came_from
                and old.deadline > now
            ):
                return False
            self._counted_out(old)
        self._calls[key] = _Forwarded(
            target, came_from, went_to, now + min(budget, MAX_CALL_BUDGET)
        )
        per = self._per_neighbour
        per[came_from] = per.get(came_from, 0) + 1
        return True

    def take(self, caller: str, response_id: str | None) -> str | None:
        """
        The answer to a forwarded call is passing through: forget the call.

        :returns: the neighbour the call came from (the way its answer goes
            back), or C{None} if no such call is remembered. (A call whose
            budget ran out a moment ago, not swept yet, still gives its way
            back: its answer is late, but the way is as good as ever.)
        """
        if response_id is None:
            return None
        key = (caller, response_id)
        entry = self._calls.pop(key, None)
        if entry is None:
            return None
        if self.floods:
            self._flood_over(key)
        self._counted_out(entry)
        return entry.came_from

    def flooded(
        self,
        caller: str,
        response_id: str,
        branches: Iterable[str],
        route: tuple[str, ...] = (),
    ) -> None:
        """
        Copies of forwarded call C{response_id}, which came by C{route},
        went to C{branches}.
        """
        if (caller, response_id) in self._calls:
            self.floods[caller, response_id] = set(branches)
            self._flood_routes[caller, response_id] = route

    def dead_end(
        self, caller: str, response_id: str | None, reporter: str, ending: str | None = None
    ) -> tuple[bool, tuple[str, str, tuple[str, ...], str | None] | None]:
        """
        Neighbour C{reporter} says its copy of call C{response_id} went no
        further (-32002, for its whole branch of the flood; with C{ending}
        L{DROPPED}, the target dropped it, another copy having been there).

        :returns: whether this node flooded the call (the report is then
            its own to take, not to pass on), and when every copy it sent
            has so ended, the call's target, the neighbour it came from,
            where this node's own dead end goes, the route it came by, and
            how the flood ended (L{LOST}: a copy was lost on the way, see
            L{lost_link}, so this node's report is -32006; L{DROPPED}: it
            passes the word on; C{None}: -32002). The call is then
            forgotten.
        """
        key = (caller, response_id or "")
        branches = self.floods.get(key)
        if branches is None:
            return False, None
        if reporter not in branches:
            return True, None
        branches.discard(reporter)
        if ending is not None:
            self._ended(key, ending)
        if branches:
            return True, None
        ended = self._flood_endings.get(key)
        route = self._flood_over(key)
        entry = self._calls.pop(key, None)
        if entry is None:
            return True, None
        self._counted_out(entry)
        return True, (entry.target, entry.came_from, route, ended)

    def copy_dropped(
        self, caller: str, response_id: str, reporter: str
    ) -> tuple[str, str, tuple[str, ...], str | None] | None:
        """
        Neighbour C{reporter} says the copy of call C{response_id} this node
        passed it was dropped at the target, another copy having been there
        (L{relaytx.wire.CopyDropped}).

        :returns: C{None}, or when this node's part of the call is over
            (the last copy it flooded has ended, or the one copy it passed
            on), what L{dead_end} returns for it: the word goes on back
            (L{DROPPED}), or a loss is reported (L{LOST}). The call is then
            forgotten. A word on a call forgotten already (its answer has
            passed) goes no further.
        """
        key = (caller, response_id)
        if key in self.floods:
            return self.dead_end(caller, response_id, reporter, DROPPED)[1]
        entry = self._calls.get(key)
        if entry is None or entry.went_to != reporter:
            return None
        del self._calls[key]
        self._counted_out(entry)
        return entry.target, entry.came_from, (), DROPPED

    def _ended(self, key: tuple[str, str], ending: str) -> None:
        # A branch of a flood ended so: a loss outweighs a copy dropped.
        if self._flood_endings.get(key) != LOST:
            self._flood_endings[key] = ending

    def _flood_over(self, key: tuple[str, str]) -> tuple[str, ...]:
        # Forget a flood's branches: returns the route it came by.
        self.floods.pop(key, None)
        self._flood_endings.pop(key, None)
        return self._flood_routes.pop(key, ())

    def way_back(self, caller: str, response_id: str | None) -> str | None:
        """
        :returns: the neighbour call C{response_id} of C{caller} came from,
            without forgetting it (its stream's items go back that way), or
            C{None}.
        """
        entry = self._calls.get((caller, response_id))  # type: ignore[arg-type]  # None finds nothing
        return None if entry is None else entry.came_from

    def lost_callers(self, peer_id: str) -> list[tuple[str, str, str, str | None]]:
        """
        Forget the calls that came in through C{peer_id}, at once: their
        answers can no longer go back that way.

        :returns: C{(caller, response_id, target, went_to)} of each, so the
            target can be told to stop (a C{call_cancel} with C{lost}).
        """
        return [
            (caller, response_id, entry.target, entry.went_to)
            for caller, response_id, entry in self._forget(lambda e: e.came_from == peer_id)
        ]

    def lost_link(self, peer_id: str) -> list[tuple[str, str, str, str]]:
        """
        Forget the calls that left through C{peer_id}, at once (whether or
        not the result is looked at), and the flooded ones whose last copy
        still out did: the others wait for their other copies, but will
        not report -32002 when those come to dead ends (L{dead_end}).

        :returns: C{(caller, response_id, target, came_from)} of each, so
            the caller can be told (back the way the call came).
        """
        lost = [
            (caller, response_id, entry.target, entry.came_from)
            for caller, response_id, entry in self._forget(lambda e: e.went_to == peer_id)
        ]
        floods = self.floods
        for key in [key for key, branches in floods.items() if peer_id in branches]:
            branches = floods[key]
            branches.discard(peer_id)
            if branches:
                self._ended(key, LOST)
                continue
            self._flood_over(key)
            entry = self._calls.pop(key, None)
            if entry is not None:
                self._counted_out(entry)
                lost.append((key[0], key[1], entry.target, entry.came_from))
        return lost

    def _forget(self, lost: Callable[[_Forwarded], bool]) -> list[tuple[str, str, _Forwarded]]:
        """Forget the calls C{lost} picks: their keys and entries."""
        self._sweep(self._clock.seconds())
        keys = [key for key, e in self._calls.items() if lost(e)]
        found = []
        for key in keys:
            entry = self._calls.pop(key)
            self._counted_out(entry)
            found.append((key[0], key[1], entry))
        return found

    def clear(self) -> None:
        """Forget everything (the node is stopping)."""
        self._calls.clear()
        self._per_neighbour.clear()
        self.floods.clear()
        self._flood_routes.clear()
        self._flood_endings.clear()

    def _sweep(self, now: float) -> None:
        calls = self._calls
        for key in [key for key, e in calls.items() if e.deadline <= now]:
            self._counted_out(calls.pop(key))
        floods = self.floods
        if floods:
            for key in [key for key in floods if key not in calls]:
                self._flood_over(key)
        self._next_sweep = now + self.SWEEP_INTERVAL


def drop_expired(
    table: dict[Any, Any], now: float, capacity: int, expires: Callable[[Any], float]
) -> None:
    """
    Drop from the front of C{table}, whose entries are in the order they
    expire, those past their time (C{expires(value)}), and the oldest while
    it holds more than C{capacity}.
    """
    while table:
        oldest = next(iter(table))
        if expires(table[oldest]) > now and len(table) <= capacity:
            return
        del table[oldest]


class OwedAnswers:
    """
    The answers an original-design neighbour is owed: one per call it made
    through this node, by response id. Such a node takes any answer with
    its call's response id for that call's: a second one (a flood's dead
    end told after the answer passed) would mislead it, and it may use a
    response id again, even while a call with it is still out (its peers
    pick them by hand). An answer to a call this node did not see pass (it
    went another way) is owed once. Bounded, each kept for C{ttl} seconds
    after its last call or answer, without timers.
    """

    def __init__(self, clock: IReactorTime, ttl: float = 120.0, capacity: int = 100_000) -> None:
        self._clock = clock
        self._ttl = ttl
        self._capacity = capacity
        #: (neighbour, response id) -> [answers owed, until when, call ids seen]
        self._owed: OrderedDict[tuple[str, str], list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owed)

    def called(self, peer_id: str, response_id: str, message_id: str | None) -> None:
        """Neighbour C{peer_id} made a call (a copy of one seen before counts once)."""
        entry = self._take((peer_id, response_id))
        if entry is None:
            entry = [0, 0.0, set()]
        elif message_id is not None and message_id in entry[2]:
            self._keep((peer_id, response_id), entry)
            return
        entry[0] += 1
        if message_id is not None and len(entry[2]) < 64:
            entry[2].add(message_id)
        self._keep((peer_id, response_id), entry)

    def answered(self, peer_id: str, response_id: str) -> bool:
        """:returns: whether neighbour C{peer_id} is owed this answer (it is counted)."""
        key = (peer_id, response_id)
        entry = self._take(key)
        if entry is None:
            self._keep(key, [0, 0.0, set()])  # one, for a call not seen: now answered
            return True
        owed: bool = entry[0] > 0
        if owed:
            entry[0] -= 1
        self._keep(key, entry)
        return owed

    def _take(self, key: tuple[str, str]) -> list[Any] | None:
        entry = self._owed.pop(key, None)
        if entry is not None and entry[1] <= self._clock.seconds():
            return None  # past its time: as if never seen
        return entry

    def _keep(self, key: tuple[str, str], entry: list[Any]) -> None:
        now = self._clock.seconds()
        entry[1] = now + self._ttl
        self._owed[key] = entry  # (the newest last: they expire in this order)
        drop_expired(self._owed, now, self._capacity, _until)


def _until(entry: list[Any]) -> float:
    until: float = entry[1]
    return until


class SeenMessages:
    """
    A bounded memory of messages delivered here, each kept for C{ttl}
    seconds (and at most C{capacity} of them), without timers: expiry
    happens as new ones are added.

    A message is known by its sender and its id, which relaytx makes unique.
    The original design's nodes use nanosecond timestamps as ids, which
    collide under load, so two distinct calls of theirs may share an id
    (never a response id as well): their messages are known by their type
    and response id too. Copies of one message (a flood, a resend) share
    all four.
    """

    def __init__(self, clock: IReactorTime, ttl: float = 120.0, capacity: int = 100_000) -> None:
        self._clock = clock
        self._ttl = ttl
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, str, str, str | None], float] = OrderedDict()
        # No entry expires before this time (the oldest entry's expiry, or
        # earlier): until then, and under capacity, there is nothing to drop.
        self._next_expiry = 0.0

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(
        self,
        sender: str,
        message_id: str | None,
        kind: str = "",
        response_id: str | None = None,
    ) -> bool:
        """
        :param kind: the message's type.
        :param response_id: for a call or an answer, its response id.
        :returns: C{True} the first time this message is seen (always for a
            message without an id).
        """
        if message_id is None:
            return True
        key = (sender, message_id, kind, response_id)
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
        if len(seen) > self._capacity:
            seen.popitem(last=False)  # the oldest: one in, one out
        if now >= self._next_expiry:
            while seen:
                oldest_key = next(iter(seen))
                expires = seen[oldest_key]
                if expires > now:
                    self._next_expiry = expires
                    break
                del seen[oldest_key]
        return True
