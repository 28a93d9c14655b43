# -*- test-case-name: tests.test_streams -*-
"""
Streamed results and cancellation across the mesh (SPEC section 12).

An exposed method that is an async generator streams its items to a
consumer that asked for a stream, at most a window of items ahead of it:

  - B{consumer}: whoever takes the items (an L{ItemConsumer}): the async
    iterator of C{node.stream} (L{ItemStream}), a C{/ws/rpc} connection
    (C{relaytx._http}), or, at the callee of a call from another node,
    L{RemoteConsumer}, which sends them to the caller over the mesh. A
    consumer grants credit: the total number of items it takes so far
    (its window more than it has consumed).
  - B{producer}: the method's generator, run by L{StreamingMethod} in the
    server's mailbox (the stream is the server's running call until it
    ends: one call at a time), through a L{Port}: it waits whenever it has
    sent all the items it was granted. Its result, which ends the stream,
    is the number of items.
  - A call that asked for no stream (C{POST /rpc}, C{node.call}) gets the
    items as one list, collected at the callee and bounded by the message
    size limit (past it: -32000 C{ResultTooLarge}).

Across the mesh (L{MeshStreams}), the caller's call carries its window; the
callee sends each item as a C{stream_item} back along the call's path, and
the caller sends C{stream_credit} as its consumer takes them. The credit is
end to end: the generator runs at most a window ahead of the consumer,
wherever the items are; a node on the way forwards them as they come and
holds none, so a slow consumer slows the generator, and no node's memory
grows with the stream.

Cancellation: the caller's Deferred, cancelled, sends a C{call_cancel} to
the callee, which cancels the call (a queued one never runs, a running one
has its Deferred cancelled: a generator's C{finally} runs) and answers
-32800. A node on the path that loses the link a call came by sends a
C{call_cancel} with C{lost} to the callee: nobody can be answered any more.

PKI mode: a C{stream_item} that crosses other nodes carries its callee's
end-to-end code, and C{stream_credit} and C{call_cancel} their caller's,
as calls and answers do (L{relaytx._pki.EndToEnd}); an item's code covers
its number, so none can be dropped, replayed or reordered unnoticed. A
C{lost} cancel needs no code but is taken only from a node on the path the
call took: such a node could already end the call for its caller (-32006)
by dropping it, and the callee only stops early work nobody can receive.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaytx import _json
from relaytx._aio import AioDeferred, Owner
from relaytx._calls import drop_expired
from relaytx.errors import CallError, MessageTooLarge, OutcomeUnknown, RemoteCallError
from relaytx.server import ExposedMethod, Server
from relaytx.wire import CallCancel, Envelope, ServerCall, StreamCredit, StreamItem

#: Items a consumer takes ahead of what it has consumed, unless it says.
DEFAULT_WINDOW = 64

#: The largest window a caller may ask of a callee.
MAX_WINDOW = 4096


class ItemConsumer:
    """
    What takes a stream's items, as its producer sees it.

    @ivar window: how many items it takes ahead of what it has consumed.
    @ivar count: how many items it has been given.
    @ivar granted: how many items it takes in all, so far.
    """

    window: int = DEFAULT_WINDOW
    count: int = 0
    granted: int = DEFAULT_WINDOW
    _grant: Callable[[int], None] | None = None

    def connect(self, grant: Callable[[int], None]) -> None:
        """The producer starts: C{grant(total)} tells it of more credit."""
        self._grant = grant

    def item(self, value: Any) -> None:
        """Take one item."""
        raise NotImplementedError

    def consumed(self, count: int) -> None:
        """
        The consumer is done with its first C{count} items: grant more, in
        steps of half the window (so credit costs a frame per half window).
        """
        total = count + self.window
        if total - self.granted >= max(1, self.window // 2):
            self.granted = total
            if self._grant is not None:
                self._grant(total)


class _Items(ItemConsumer):
    """
    What an L{ItemStream} holds: the items not consumed yet and how its
    call ended. The call's Deferred and the producer refer to this, never
    to the iterator, so an iterator dropped early can be told (C{__del__}).
    """

    def __init__(self, clock: IReactorTime, window: int, what: str) -> None:
        self.window = self.granted = window
        self.count = 0
        self.clock = clock
        self.what = what
        self.items: deque[Any] = deque()
        self.consumed_count = 0
        self.waiter: Deferred[None] | None = None
        self.call: Deferred[Any] | None = None
        #: None while it runs; then True (ended well), or the failure
        self.outcome: Failure | bool | None = None
        self.closed = False
        #: the task or run whose end cancels the stream (ItemStream's docstring)
        self.owner: Owner | None = None
        self._owner_gone = self.owner_ended

    def tie(self, owner: Owner) -> None:
        """Cancel the stream if it is still open when C{owner} ends."""
        self.owner = owner
        owner.add_done_callback(self._owner_gone)

    def untie(self) -> None:
        """Its owner's end no longer matters (it ended, or was detached)."""
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.remove_done_callback(self._owner_gone)

    def owner_ended(self, owner: object) -> None:
        if self.owner is owner:
            self.owner = None
            self.cancel()

    def item(self, value: Any) -> None:
        self.items.append(value)
        self.count += 1
        self.wake()

    def ended(self, outcome: Any) -> None:
        if self.owner is not None:
            self.untie()
        if isinstance(outcome, Failure):
            self.outcome = outcome
        elif type(outcome) is int and outcome == self.count:
            self.outcome = True
        else:
            self.outcome = Failure(
                TypeError(f"{self.what} answered a result, not a stream: use call()")
            )
        self.wake()

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.callback(None)

    def abandoned(self, waiter: Deferred[None]) -> None:
        # The task or Deferred waiting for an item was cancelled.
        self.waiter = None
        self.cancel()

    def cancel(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.owner is not None:
            self.untie()
        self.items.clear()
        call = self.call
        if call is not None and not call.called:
            call.addErrback(lambda f: f.trap(CancelledError))
            # From the next turn: this may run inside the producer's
            # delivery of an item, where its Deferred cannot be cancelled.
            self.clock.callLater(0, call.cancel)


class ItemStream:
    """
    The items of a streamed call, as an async iterator: what
    L{relaytx.node.RelayNode.stream} returns.

    Leaving the loop early (C{break}, then dropping the iterator),
    C{aclose()}, or cancelling the task or Deferred waiting in it cancels
    the call, and so the generator at its callee (whose C{finally} runs).
    The call's failure (its deadline, a lost path: -32006) ends the loop
    with that error.

    A stream is tied to its B{owner}, whoever opened it: the asyncio task
    (on the asyncio reactor), or else the node's run of the method (or app
    C{setup}) in whose context it was opened, with the coroutines and
    Deferreds that run started. When the owner ends (returns, raises, is
    cancelled) with the stream still open, the stream is cancelled at once,
    without waiting for the garbage collector: a method cancelled while it
    awaits in its loop body, the iterator kept in a local, does not hold
    the callee's server until the stream's timeout. So a stream handed to
    another task or coroutine works as long as its opener has not ended (a
    method that awaits the task reading it; C{asyncio.gather}). To keep a
    stream beyond its opener (a reader that outlives it, a stream kept on
    a server between calls), L{detach} it: it then ends only at its end,
    its timeout, C{aclose()}, a cancelled read, or when it is dropped.

    :param clock: where the cancel of an abandoned stream is sent from
        (the next reactor turn, not from inside the producer's delivery).
    :param what: the call, for error messages.
    :param owner: its owner (above), if any.

    @ivar consumer: what the producer gives the items to.
    """

    def __init__(
        self,
        clock: IReactorTime,
        window: int = DEFAULT_WINDOW,
        what: str = "",
        owner: Owner | None = None,
    ) -> None:
        if type(window) is not int or not 0 < window <= MAX_WINDOW:
            raise ValueError(f"a stream's window is 1 to {MAX_WINDOW} items, not {window!r}")
        self.consumer = _Items(clock, window, what)
        if owner is not None:
            self.consumer.tie(owner)

    def detach(self) -> ItemStream:
        """
        Untie the stream from its owner: its opener's end no longer cancels
        it (see the class docstring).

        :returns: this stream (C{it = node.stream(...).detach()}).
        """
        self.consumer.untie()
        return self

    def attach(self, call: Deferred[Any]) -> None:
        """C{call} is the streamed call: its outcome ends the stream."""
        self.consumer.call = call
        call.addBoth(self.consumer.ended)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        state = self.consumer
        while True:
            if state.closed:
                raise StopAsyncIteration
            items = state.items
            if items:
                value = items.popleft()
                state.consumed_count += 1
                state.consumed(state.consumed_count)
                return value
            outcome = state.outcome
            if outcome is True:
                raise StopAsyncIteration
            if outcome is not None:
                assert isinstance(outcome, Failure)
                state.closed = True
                outcome.raiseException()
            state.waiter = AioDeferred(state.abandoned)  # a task may await it
            await state.waiter

    async def aclose(self) -> None:
        """Stop: the call is cancelled at its callee (unless it has ended)."""
        self.consumer.cancel()

    def cancel(self) -> None:
        """As L{aclose}, from code that is not a coroutine."""
        self.consumer.cancel()

    def __del__(self) -> None:
        # Dropped before its end (a loop left with break): cancel the call.
        state = getattr(self, "consumer", None)  # (None: its window was refused)
        if state is not None and not state.closed and state.outcome is None:
            state.cancel()


class Port:
    """
    A producer's side of a stream: items go to C{consumer}, at most as
    many as it has granted.
    """

    __slots__ = ("_consumer", "_waiter", "granted", "sent")

    def __init__(self, consumer: ItemConsumer) -> None:
        self._consumer = consumer
        self.sent = 0
        self.granted = consumer.granted  # (none at first, for a consumer that has no room yet)
        self._waiter: Deferred[None] | None = None
        consumer.connect(self.grant)

    def send(self, value: Any) -> None:
        """Give the consumer one item."""
        self._consumer.item(value)
        self.sent += 1

    def grant(self, total: int) -> None:
        """The consumer takes C{total} items in all."""
        if total > self.granted:
            self.granted = total
            waiter, self._waiter = self._waiter, None
            if waiter is not None:
                waiter.callback(None)

    def wait(self) -> Deferred[None]:
        """:returns: a Deferred that fires when more credit is granted."""
        self._waiter = Deferred()
        return self._waiter


_STOPPED = "the call ended for its caller while its generator ran on"


async def _pump(generator: Any, port: Port, method: StreamingMethod) -> int:
    """Send C{generator}'s items through C{port}; :returns: how many."""
    try:
        while True:
            if port.sent >= port.granted:
                await port.wait()  # (before the next item is made, not after)
            try:
                value = await generator.__anext__()
            except StopAsyncIteration:
                break
            if method.stopped:
                raise CancelledError(_STOPPED)
            try:
                port.send(value)
            except MessageTooLarge as e:
                # (As a result past the limit fails.)
                raise RemoteCallError.named(
                    "ResultTooLarge", f"item {port.sent + 1}: {e}"
                ) from None
    finally:
        await generator.aclose()  # cancelled while waiting: its finally runs
    return port.sent


async def _collect(generator: Any, limit: int, method: StreamingMethod) -> list[Any]:
    """:returns: C{generator}'s items, as long as they fit in C{limit} bytes of JSON."""
    items: list[Any] = []
    size = 2
    what = method.name
    try:
        async for value in generator:
            if method.stopped:
                raise CancelledError(_STOPPED)
            size += len(_json.dumps(value)) + 1  # TypeError: not JSON
            if size > limit:
                raise RemoteCallError.named(
                    "ResultTooLarge",
                    f"the items of {what} pass the {limit}-byte message limit;"
                    " stream them (node.stream, /ws/rpc)",
                )
            items.append(value)
    finally:
        await generator.aclose()
    return items


class StreamingMethod:
    """
    An async-generator method as the mailbox runs it (it has the
    C{function} of an L{ExposedMethod}): its items go to C{consumer} through
    a L{Port}, or are collected into a list of at most C{limit} bytes when
    nobody asked for a stream.
    """

    __slots__ = ("_consumer", "_limit", "_method", "stopped")

    def __init__(self, method: ExposedMethod, consumer: ItemConsumer | None, limit: int) -> None:
        self._method = method
        self._consumer = consumer
        self._limit = limit
        #: the call ended for its caller (cancelled, timed out) while the
        #: generator ran on: it is closed at its next item
        self.stopped = False

    def stop(self, outcome: Any = None) -> Any:
        """
        The call ended for its caller: the generator makes no more items.
        A cancel reaches the generator where it awaits, but one that
        catches it (Twisted's CancelledError is an Exception) and goes on
        is closed when it yields, its C{finally} run then: the server is
        not held by a stream nobody takes.
        """
        self.stopped = True
        return outcome

    @property
    def name(self) -> str:
        return self._method.name

    def function(self, server: Server, *args: Any, **kwargs: Any) -> Any:
        generator = self._method.function(server, *args, **kwargs)
        if self._consumer is None:
            return _collect(generator, self._limit, self)
        return _pump(generator, Port(self._consumer), self)


class RemoteConsumer(ItemConsumer):
    """
    At the callee, the caller of a streamed call from another node: its
    items go back along the call's path, and its credit comes from its
    C{stream_credit} frames (L{MeshStreams}).
    """

    def __init__(
        self, streams: MeshStreams, caller: str, response_id: str, via: str | None, window: int
    ) -> None:
        self.window = self.granted = min(window, MAX_WINDOW)
        self.count = 0
        self._streams = streams
        self._key = (caller, response_id)
        self._via = via

    def connect(self, grant: Callable[[int], None]) -> None:
        super().connect(grant)
        self._streams.producing[self._key] = self

    def item(self, value: Any) -> None:
        caller, response_id = self._key
        self._streams.send_item(caller, response_id, self.count, value, self._via)
        self.count += 1

    def credit(self, total: int) -> None:
        """The caller takes C{total} items in all."""
        if total > self.granted:
            self.granted = total
            if self._grant is not None:
                self._grant(total)

    def close(self) -> None:
        """The call ended: its credit frames are no longer taken."""
        if self._streams.producing.get(self._key) is self:
            del self._streams.producing[self._key]


def _via(envelope: Envelope) -> str:
    # The neighbour a frame came from (the forwarder checked it is the last
    # node of its route, or its sender).
    route = envelope.route
    return route[-1] if route else envelope.sender


class MeshStreams:
    """
    The frames of streams and cancels, at both ends of a call (see the
    module docstring).

    :param send: originates a message (the forwarder's C{send}).
    :param links: the node's links (a frame to a neighbour needs no code;
        nothing goes to an original-design one).
    :param pending: the node's calls in flight (L{relaytx._calls.PendingCalls}).
    :param cancel_arrived: called with C{(caller, response_id, sender,
        lost, came_by)} for a cancel that passed the checks (C{came_by}:
        the neighbour it came from).
    :param e2e: in PKI mode, the end-to-end codes.
    """

    _log = Logger()

    def __init__(
        self,
        node_id: str,
        send: Callable[..., Any],
        links: Any,
        pending: Any,
        drop: Callable[[str], None],
        cancel_arrived: Callable[[str, str, str, bool, str], None],
        e2e: Any = None,
    ) -> None:
        self._node_id = node_id
        self._send = send
        self._links = links
        self._pending = pending
        self._drop = drop
        self._cancel_arrived = cancel_arrived
        self._e2e = e2e
        #: streams produced here for other nodes: (caller, response id) -> consumer
        self.producing: dict[tuple[str, str], RemoteConsumer] = {}

    def handlers(self) -> dict[type[Any], Callable[..., None]]:
        """:returns: the frames this takes from the node's links, and what takes each."""
        return {
            StreamItem: self.take_item,
            StreamCredit: self.take_credit,
            CallCancel: self.take_cancel,
        }

    def _seal(self, kind: str, peer: str, payload: Any) -> None:
        e2e = self._e2e
        if e2e is not None and peer not in self._links:
            payload.mac = e2e.seal_frame(kind, peer, payload.to_data())

    def _forged(self, kind: str, envelope: Envelope, payload: Any) -> bool:
        e2e = self._e2e
        if e2e is None or envelope.sender == _via(envelope):
            return False
        body = payload.to_data()
        mac = body.pop("mac", None)
        return not e2e.check_frame(kind, envelope.sender, body, mac)

    # The callee's side.

    def consumer(self, caller: str, call: ServerCall, via: str | None) -> RemoteConsumer | None:
        """:returns: who takes the items of C{call} from C{caller} if it streams."""
        if call.response_id is None or call.stream is None:
            return None
        return RemoteConsumer(self, caller, call.response_id, via, min(call.stream, MAX_WINDOW))

    def send_item(
        self, caller: str, response_id: str, seq: int, value: Any, via: str | None
    ) -> None:
        """Send item C{seq} of call C{response_id} back to C{caller}."""
        item = StreamItem(response_id, seq, value)
        self._seal("item", caller, item)
        self._send(caller, item, back_via=via)

    def take_credit(self, envelope: Envelope, credit: StreamCredit) -> None:
        """A C{stream_credit} frame arrived for one of the streams produced here."""
        consumer = self.producing.get((envelope.sender, credit.response_id))
        if consumer is None:
            return  # ended meanwhile
        if self._forged("credit", envelope, credit):
            self._drop("forged_credit")
            return
        consumer.credit(credit.credit)

    def take_cancel(self, envelope: Envelope, cancel: CallCancel) -> None:
        """A C{call_cancel} frame arrived for a call here."""
        sender = envelope.sender
        if not cancel.lost and (
            sender != cancel.caller or self._forged("cancel", envelope, cancel)
        ):
            self._drop("forged_cancel")
            return
        self._cancel_arrived(cancel.caller, cancel.response_id, sender, cancel.lost, _via(envelope))

    # The caller's side.

    def send_credit(self, callee: str, response_id: str, total: int) -> None:
        """Tell C{callee} this node takes C{total} items of call C{response_id}."""
        credit = StreamCredit(response_id, total)
        self._seal("credit", callee, credit)
        self._quietly(callee, credit)

    def cancelled(self, response_id: str, callee: str, via: str | None) -> None:
        """This node's call C{response_id} to C{callee} was cancelled: tell the callee."""
        self.send_cancel(callee, response_id)

    def send_cancel(
        self, callee: str, response_id: str, caller: str | None = None, lost: bool = False
    ) -> None:
        """Ask C{callee} to cancel call C{response_id} (C{caller}'s: this node's by default)."""
        cancel = CallCancel(response_id, caller or self._node_id, lost)
        if not lost:
            self._seal("cancel", callee, cancel)
        self._quietly(callee, cancel)

    def callers_lost(self, lost: list[tuple[str, str, str, str | None]]) -> None:
        """
        The calls C{(caller, response_id, target, went_to)} passed on here
        lost the link towards their callers: tell each target (if the link
        it went by is a relaytx node's) with a C{call_cancel} marked C{lost}.
        """
        for caller, response_id, target, went_to in lost:
            session = self._links.get(went_to)
            if session is not None and not session.original:
                self.send_cancel(target, response_id, caller, lost=True)

    def _quietly(self, destination: str, payload: Any) -> None:
        try:
            self._send(destination, payload)
        except Exception:  # too large cannot be; a lost one does no harm
            self._log.failure(
                "sending a {type} to {node} failed", type=payload.TYPE, node=destination
            )

    def take_item(self, envelope: Envelope, item: StreamItem) -> None:
        """A C{stream_item} arrived for one of this node's calls."""
        response_id = item.response_id
        found = self._pending.stream_of(response_id)
        if found is None:
            self._drop("late_item")
            return
        consumer, callee = found
        if envelope.sender != callee or self._forged("item", envelope, item):
            self._drop("forged_item")
            return
        if item.seq != consumer.count or item.seq >= consumer.granted:
            # Items come in order, within the credit: anything else lost or
            # broke the stream.
            why = "out of order" if item.seq != consumer.count else "past its credit"
            error: CallError = OutcomeUnknown(
                f"stream from {callee} broken: item {item.seq} {why}", node_id=self._node_id
            )
            self._pending.resolve(response_id, error=error)
            self.send_cancel(callee, response_id)
            return
        consumer.item(item.item)


class _Running:
    """A call running (or queued) here for another node."""

    __slots__ = ("deferred", "route", "stream", "via")

    def __init__(
        self,
        deferred: Deferred[Any],
        via: str | None,
        stream: RemoteConsumer | None,
        route: tuple[str, ...],
    ) -> None:
        self.deferred = deferred
        self.via = via
        self.stream = stream
        self.route = route


class _EarlyCancels:
    """
    Cancels that arrived before their call (a cancel may overtake it on
    another path), kept for a while so that the call, if it comes, never
    runs; bounded, oldest dropped first. Those past their time go as new
    ones come (kept in the order they expire).
    """

    TTL = 60.0
    CAPACITY = 10_000

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._keys: dict[tuple[str, str | None], float] = {}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: tuple[str, str | None]) -> None:
        now = self._clock.seconds()
        keys = self._keys
        keys.pop(key, None)  # (to the back: the order is that of expiry)
        keys[key] = now + self.TTL
        drop_expired(keys, now, self.CAPACITY, float)

    def take(self, key: tuple[str, str | None]) -> bool:
        """:returns: whether a cancel for C{key} came (and forgets it)."""
        expires = self._keys.pop(key, None)
        return expires is not None and expires > self._clock.seconds()


class RunningCalls:
    """
    The calls running (or queued) on this node for other nodes, by caller
    and response id, and the cancels that reach them (see the module
    docstring): a queued call never runs, a running one has its Deferred
    cancelled and is answered -32800.
    """

    def __init__(self, clock: IReactorTime, metrics: Any) -> None:
        self._metrics = metrics
        self._running: dict[tuple[str, str | None], _Running] = {}
        #: calls cancelled here: by their caller (True: answered -32800) or
        #: by this node (False: -32006)
        self._cancelled: dict[tuple[str, str | None], bool] = {}
        #: cancels that came before their call (which is then not run)
        self._early = _EarlyCancels(clock)

    def __len__(self) -> int:
        return len(self._running)

    def cancelled_early(self, key: tuple[str, str | None]) -> bool:
        """:returns: whether a cancel came for call C{key} before it did (forgotten now)."""
        early = self._early
        return bool(early) and early.take(key)

    def add(
        self,
        key: tuple[str, str | None],
        deferred: Deferred[Any],
        via: str | None,
        stream: RemoteConsumer | None,
        route: tuple[str, ...],
    ) -> None:
        """Call C{key}, which came by C{via} along C{route}, runs until C{deferred} fires."""
        running = _Running(deferred, via, stream, route)
        self._running[key] = running
        deferred.addBoth(self._ran, key, running)

    def _ran(self, outcome: Any, key: tuple[str, str | None], running: _Running) -> Any:
        if self._running.get(key) is running:
            del self._running[key]
        if running.stream is not None:
            running.stream.close()
        return outcome

    def cancel_arrived(
        self, caller: str, response_id: str, sender: str, lost: bool, came_by: str | None = None
    ) -> None:
        """
        A cancel of C{caller}'s call C{response_id} arrived (checked by
        L{MeshStreams}) by neighbour C{came_by}. One that C{lost} the caller
        is taken only from a node on the call's route, and only by the link
        the call came by: no one can seal it for the caller, and a member
        off the path named a node of the route as its sender (in PKI mode,
        which knows what a link's peer is, but not who first sent what it
        passes on). One that comes before its call keeps the call from
        running.
        """
        key = (caller, response_id)
        running = self._running.get(key)
        if running is None:
            if not lost:
                self._early.add(key)
            return
        if lost and (
            sender not in running.route or (came_by is not None and came_by != running.via)
        ):
            self._metrics.drop("forged_cancel")
            return
        self._cancel(key, running, by_caller=not lost)

    def _cancel(self, key: tuple[str, str | None], running: _Running, by_caller: bool) -> None:
        self._cancelled[key] = by_caller
        running.deferred.cancel()

    def cancelled(self, key: tuple[str, str | None]) -> bool | None:
        """
        :returns: whether call C{key} was cancelled by its caller (C{True})
            or by this node (C{False}: it lost the caller, or stops), or
            C{None} if it was not cancelled here (a method's own
            C{CancelledError}); forgotten now.
        """
        return self._cancelled.pop(key, None)

    def lost_link(self, peer_id: str, can_reach: Callable[[str], bool]) -> None:
        """
        The link to C{peer_id} went: cancel the calls that came by it for a
        caller now out of reach (it has been told -32006 by its side;
        queued ones are skipped), and every stream that came by it (its
        items went that way).
        """
        for key, running in list(self._running.items()):
            if running.via == peer_id and (running.stream is not None or not can_reach(key[0])):
                self._cancel(key, running, by_caller=False)

    def cancel_all(self) -> None:
        """Cancel every call (the node is stopping)."""
        for key, running in list(self._running.items()):
            self._cancel(key, running, by_caller=False)
