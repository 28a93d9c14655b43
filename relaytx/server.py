# -*- test-case-name: tests.test_server -*-
"""
Actor servers: a L{Server} subclass marks its remotely callable methods with
L{exposed}; a L{Mailbox} runs the calls to one server one at a time, in
arrival order.

A method may return a plain value, a L{Deferred} or be an C{async def}
coroutine; the next call starts only when the previous one has finished. An
exception fails that one call and the mailbox moves on. A method that is an
async generator streams its items (L{relaytx._streams}); the stream is the
server's running call until it ends.

A method that waits for a call to its I{own} server (directly, or through
another node) waits for itself and never finishes: call other servers only.
"""

from __future__ import annotations

import inspect
import sys
from collections import deque
from collections.abc import Callable, Mapping
from time import perf_counter
from types import CoroutineType
from typing import Any, ClassVar, TypeVar, overload

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from relaytx._aio import CoroutineRunner, is_deferred, run_on_twisted
from relaytx.errors import CallTimeout, InvalidParams, TimedOutHere

F = TypeVar("F", bound=Callable[..., Any])


@overload
def exposed(fn: F, /) -> F: ...


@overload
def exposed(*, idempotent: bool = False, concurrent: bool = False) -> Callable[[F], F]: ...


def exposed(
    fn: F | None = None, /, *, idempotent: bool = False, concurrent: bool = False
) -> F | Callable[[F], F]:
    """
    Mark a L{Server} method as callable from the network. Used bare, or
    with options (SPEC section 11)::

        class Counter(Server):
            @exposed
            def increment(self, by=1): ...

            @exposed(idempotent=True, concurrent=True)
            def get(self): ...

    Names starting with C{_} are never exposed, decorated or not.

    :param idempotent: running the method twice does no more than running
        it once, so a call whose outcome is unknown (-32006: its instance
        was lost after the call left) may be run again on another instance.
    :param concurrent: the method may run beside the mailbox (a read-only
        or inspection method): it is not queued behind a slow call, and
        does not hold the calls after it.
    """

    def mark(function: F) -> F:
        function.__relaytx_exposed__ = True  # type: ignore[attr-defined]  # a mark on the function
        function.__relaytx_idempotent__ = idempotent  # type: ignore[attr-defined]
        function.__relaytx_concurrent__ = concurrent  # type: ignore[attr-defined]
        return function

    if fn is not None:
        if not callable(fn):
            raise TypeError(f"@exposed takes a method, or only keyword options, not {fn!r}")
        return mark(fn)
    return mark


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class ExposedMethod:
    """
    One exposed method of a server class: its name, the function, and a
    signature check that runs before the call is queued.
    """

    __slots__ = (
        "_max_args",
        "_min_args",
        "_own_name",
        "_signature",
        "concurrent",
        "function",
        "idempotent",
        "name",
        "streams",
    )

    def __init__(self, name: str, function: Callable[..., Any]) -> None:
        self.name = name
        self.function = function
        #: an async generator: it streams its items (SPEC section 12)
        self.streams = inspect.isasyncgenfunction(function)
        #: see L{exposed}
        self.idempotent: bool = getattr(function, "__relaytx_idempotent__", False)
        self.concurrent: bool = getattr(function, "__relaytx_concurrent__", False)
        self._signature: inspect.Signature | None = None

    def _prepare(self) -> None:
        # The bound form hides C{self}; build it once, lazily, with the
        # range of positional counts that need no full bind() to check.
        signature = inspect.signature(self.function)
        own, *params = signature.parameters.values()
        self._signature = signature.replace(parameters=params)
        #: the name the instance goes by: no keyword may take it, even
        #: into **kwargs (Python refuses the call)
        self._own_name = own.name
        positional = [p for p in params if p.kind in _POSITIONAL]
        required_keywords = [p for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
        self._min_args = sum(1 for p in positional if p.default is p.empty)
        self._max_args = len(positional)
        if any(p.kind == p.VAR_POSITIONAL for p in params):
            self._max_args = sys.maxsize
        if required_keywords:
            self._min_args = sys.maxsize  # never fast: bind() names what is missing

    def check_arguments(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> None:
        """
        :raises InvalidParams: if C{args}/C{kwargs} do not fit the method.
        """
        if self._signature is None:
            self._prepare()
        if not kwargs and self._min_args <= len(args) <= self._max_args:
            return  # positional arguments only, and the right number of them
        assert self._signature is not None
        if self._own_name in kwargs:
            raise InvalidParams(
                f"Invalid params for {self.name}: got multiple values for argument"
                f" {self._own_name!r}"
            )
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise InvalidParams(f"Invalid params for {self.name}: {e}") from None


class Server:
    """
    Base class of the actor servers a node hosts. Subclasses take no required
    constructor arguments and mark callable methods with L{exposed}.

    Every name a subclass may expose is its own: what relaytx keeps on the
    class starts with C{_relaytx_}, and an exposed name never starts with
    C{_}. The exposed methods are read with L{exposed_methods},
    L{method_names} and L{idempotent_names}. They are found when a subclass
    is defined, from every class in its MRO (so with several bases, each
    base's exposed methods are kept and the one Python's attribute lookup
    finds wins); a subclass may override a method (it stays exposed if the
    override is decorated too).
    """

    _relaytx_methods: ClassVar[dict[str, ExposedMethod]] = {}

    #: Whether a relaytx error its methods fail with keeps its code even when
    #: the code tells where a call went (-32002 and the like). Only the
    #: node's own built-in server says so (C{traceroute}: -32002 for a node
    #: no route reaches); any other server's such failure comes from a call
    #: it made itself, and is its own call's -32000 (L{relaytx._hosting}).
    _relaytx_owns_delivery_errors: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[str, ExposedMethod] = {}
        # Walk the MRO from the most generic class to cls itself, so that a
        # name resolves to what getattr(cls, name) would find: with several
        # bases, one base's table alone would only hold the first base's.
        for klass in reversed(cls.__mro__):
            known = vars(klass).get("_relaytx_methods", {})
            for name, value in vars(klass).items():
                if name.startswith("_"):
                    continue
                if getattr(value, "__relaytx_exposed__", False):
                    method = known.get(name)
                    if method is None or method.function is not value:
                        method = ExposedMethod(name, value)
                    table[name] = method
                else:
                    table.pop(name, None)  # an undecorated override hides it
        cls._relaytx_methods = table


def exposed_methods(server: Server | type[Server]) -> Mapping[str, ExposedMethod]:
    """:returns: a server's (or server class's) exposed methods, by name."""
    return server._relaytx_methods


def method_names(server: Server | type[Server]) -> list[str]:
    """:returns: the names of a server's exposed methods, sorted."""
    return sorted(server._relaytx_methods)


def idempotent_names(server: Server | type[Server]) -> list[str]:
    """:returns: the names of a server's idempotent methods, sorted."""
    return sorted(name for name, m in server._relaytx_methods.items() if m.idempotent)


class OwnCancellation(Exception):
    """
    A method failed with a C{CancelledError} of its own (it cancelled a
    Deferred it waited on), not because its call was cancelled: the
    mailbox fails the call with this in its place, so that it is answered
    as a method's exception (-32000, of type C{CancelledError}), not as a
    call given up (-32800).

    @ivar failure: the method's own failure.
    """

    def __init__(self, failure: Failure) -> None:
        super().__init__(str(failure.value))
        self.failure = failure


def _own(failure: Failure) -> Failure:
    # A method's failure, for a call nobody cancelled: its CancelledError
    # is its own, and so is a deadline that passed where it runs, which was
    # a call's it made to a server of this node (the call's own deadline
    # fails it without passing through its method).
    error = failure.value
    if isinstance(error, CancelledError):
        return Failure(OwnCancellation(failure))
    if isinstance(error, TimedOutHere):
        return Failure(CallTimeout(error.message, **error.data))
    return failure


#: Seconds of methods' own time (of calls that take a millisecond or more)
#: after which a mailbox lets the reactor turn before its next call: calls
#: that arrived together and each block the reactor would otherwise run back
#: to back, and the node would answer no ping nor send any answer until the
#: last is done (its peers would take it for dead, SPEC section 8).
SLICE = 0.05

#: A call shorter than this is not counted against the slice.
_SHORT = 0.001


class TurnSlice:
    """
    Methods' own time since the reactor last turned, shared by the mailboxes
    of a node: calls to different servers that arrived together (a batch,
    or several neighbours' calls read in one turn) would otherwise each run
    at once, back to back, and hold the reactor for their sum (two 0.7 s
    methods: 1.4 s without a ping answered, and the neighbours dropped the
    node as silent). Once the slice (L{SLICE}) is spent, every mailbox waits
    for the reactor to turn before its next call.

    :param clock: the node's clock (none: calls never wait).
    """

    def __init__(self, clock: IReactorTime | None = None) -> None:
        self._clock = clock
        self.spent = 0.0
        #: whether calls must wait for the reactor to turn (read by every call)
        self.used_up = False
        self._waiting: list[Callable[[], None]] = []
        #: those waiting that spent the last slice: they go after the others
        self._spenders: list[Callable[[], None]] = []
        self._armed = False

    def spend(self, seconds: float) -> bool:
        """
        Count C{seconds} of a method's time (or of a step of a coroutine's,
        L{relaytx._aio}): less than a millisecond is not counted.

        :returns: whether the slice is used up (L{after_turn} then); for an
            uncounted time, C{False}.
        """
        if seconds < _SHORT:
            return False
        self.spent += seconds
        if self.spent < SLICE or self._clock is None:
            return False
        self.used_up = True
        self._arm()
        return True

    def after_turn(self, resume: Callable[[], None], spent_it: bool = False) -> None:
        """
        Call C{resume} once the reactor has turned, the slice renewed.

        :param spent_it: whether the caller's own call used the slice up:
            it is resumed after those that waited, so that a server with a
            long queue does not take every slice from the others.
        """
        (self._spenders if spent_it else self._waiting).append(resume)
        self._arm()

    def _arm(self) -> None:
        if not self._armed and self._clock is not None:
            self._armed = True
            # Two hops: a reactor runs the timers due before it polls, and
            # a timer set by a timer waits for the next round, after the poll.
            self._clock.callLater(0, self._clock.callLater, 0, self._turned)

    def _turned(self) -> None:
        self._armed = False
        self.spent = 0.0
        self.used_up = False
        waiting = self._waiting + self._spenders
        self._waiting, self._spenders = [], []
        for resume in waiting:
            resume()


class Mailbox:
    """
    Runs the calls to one server one at a time, first come first served.

    A queued call whose Deferred was cancelled (its caller gave up) is
    skipped, and so is one whose deadline passed while it waited (it fails
    with L{CallTimeout}): a call never starts after its caller stopped
    waiting. Cancelling the Deferred of a running call cancels the Deferred
    its method returned. Calls that return synchronously run without any
    queueing cost.

    :param run_coroutine: how the coroutines of C{async def} methods run
        (see L{relaytx._aio}); as Twisted runs them by default.
    :param clock: what deadlines are read on (none: calls have none).
    :param turn_slice: the slice of methods' time it shares with the node's
        other mailboxes (none: one of its own).
    """

    def __init__(
        self,
        server: Server,
        run_coroutine: CoroutineRunner = run_on_twisted,
        clock: IReactorTime | None = None,
        turn_slice: TurnSlice | None = None,
    ) -> None:
        self.server = server
        self._run_coroutine = run_coroutine
        self._clock = clock
        self._slice = TurnSlice(clock) if turn_slice is None else turn_slice
        self._queue: deque[
            tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Deferred[Any], float | None]
        ]
        self._queue = deque()
        self._busy = False
        self._waiting = False
        self._running_inline = False
        #: the caller's Deferred and the method's own, while a method runs on
        self._running: tuple[Deferred[Any], Deferred[Any]] | None = None
        #: the caller's Deferred while its cancel reaches the method's
        self._cancelling: Deferred[Any] | None = None

    def __len__(self) -> int:
        """
        :returns: the number of calls waiting, the running one excluded.
        """
        return len(self._queue)

    def deliver(
        self,
        method: ExposedMethod,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None = None,
    ) -> Deferred[Any]:
        """
        Queue a call of C{method} on this mailbox's server.

        :param timeout: seconds from now after which the call, if it has not
            started, never does.
        :returns: a Deferred that fires with the method's result or failure.
        """
        d: Deferred[Any] = Deferred(self._cancel)
        clock = self._clock
        deadline = None if timeout is None or clock is None else clock.seconds() + timeout
        self._queue.append((method.function, args, kwargs, d, deadline))
        if not self._busy:
            self._run()
        return d

    def _wait_for_turn(self, spent_it: bool = False) -> None:
        # The slice is spent: run the queue once the reactor has turned.
        self._busy = True
        self._running_inline = False
        self._slice.after_turn(self._turned, spent_it)

    def call(
        self,
        method: ExposedMethod,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None = None,
    ) -> Any:
        """
        Run a call of C{method}: at once if the mailbox is idle, else after
        the calls before it (as L{deliver}, with C{timeout}).

        This is the fast path of the common case, an idle server whose
        method returns a plain value: that value is returned as it is, and
        an exception it raises propagates, with no Deferred in between.
        Otherwise (a busy mailbox, a Deferred or coroutine result) the
        return value is a Deferred, as from L{deliver}.
        """
        if self._busy or self._slice.used_up:
            return self.deliver(method, args, kwargs, timeout)
        self._busy = self._running_inline = True
        started = perf_counter()
        try:
            result = method.function(self.server, *args, **kwargs)
        except BaseException:
            self._resume(started)
            raise
        if isinstance(result, CoroutineType):
            result = self._run_coroutine(result)
        if is_deferred(result):
            d: Deferred[Any] = Deferred(self._cancel)
            self._waiting = True
            result.addBoth(self._finished, d)
            if self._waiting:  # not done yet: _finished resumes the queue later
                self._running = (d, result)
                self._running_inline = False
                self._spend(started)
                return d
            result = d  # already done: d holds the outcome
        self._resume(started)
        return result

    def beside(self, method: ExposedMethod, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """
        Run a call of a C{concurrent} method now, beside the mailbox: it
        neither waits for the running call nor holds the queued ones. It
        does share the node's slice of the reactor's time: once the slice
        is spent, it runs after the reactor has turned.

        :returns: the result, or a Deferred of it (a coroutine's runs as
            the mailbox's do); an exception it raises propagates (or, once
            it waited for a turn, fails the Deferred).
        """
        turn_slice = self._slice
        if not turn_slice.used_up:
            return self._beside_now(method, args, kwargs)
        started: list[Deferred[Any]] = []  # the method's own, once it runs

        def cancel(_: Deferred[Any]) -> None:
            if started:
                started[0].cancel()  # (a running method is cancelled as any)

        later: Deferred[Any] = Deferred(cancel)

        def settle(outcome: Any) -> None:
            if later.called:  # cancelled: the outcome was its caller's to drop
                return
            if isinstance(outcome, Failure):
                later.errback(outcome)
            else:
                later.callback(outcome)

        def resume() -> None:
            if later.called:  # cancelled while it waited
                return
            if turn_slice.used_up:  # (spent again before this one's turn)
                turn_slice.after_turn(resume)
                return
            running = maybeDeferred(self._beside_now, method, args, kwargs)
            started.append(running)
            running.addBoth(settle)

        turn_slice.after_turn(resume)
        return later

    def _beside_now(
        self, method: ExposedMethod, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        started = perf_counter()
        try:
            result = method.function(self.server, *args, **kwargs)
        finally:
            self._slice.spend(perf_counter() - started)
        if isinstance(result, CoroutineType):
            result = self._run_coroutine(result)
        return result

    def _spend(self, started: float) -> bool:
        # Count a call that began at started against the slice: whether the
        # slice is used up (the mailbox then stays busy until the reactor
        # has turned, and runs its queue then).
        spent = perf_counter() - started
        if spent < _SHORT or not self._slice.spend(spent):  # (no call for most calls)
            return False
        if self._running is None:  # (else its end resumes the queue)
            self._wait_for_turn(spent_it=True)
        else:
            self._busy = True
            self._running_inline = False
        return True

    def _turned(self) -> None:
        if self._running is None:
            self._run()

    def _resume(self, started: float) -> None:
        # The inline call is over: run what queued up meanwhile (calls it
        # made to its own server, or that came since, if the reactor must
        # turn first), or go idle.
        if self._spend(started):
            return
        if self._queue:
            self._run()
        else:
            self._busy = self._running_inline = False

    def _run(self) -> None:
        self._busy = True
        self._running_inline = True
        queue = self._queue
        server = self.server
        clock = self._clock
        turn_slice = self._slice
        while queue:
            if turn_slice.used_up:  # (by another mailbox's calls)
                self._wait_for_turn()
                return
            function, args, kwargs, d, deadline = queue.popleft()
            if d.called:  # cancelled while it waited
                continue
            if deadline is not None and clock is not None and clock.seconds() >= deadline:
                d.errback(TimedOutHere("Call timed out waiting for its turn"))
                continue
            started = perf_counter()
            try:
                result = function(server, *args, **kwargs)
            except BaseException:
                d.errback(_own(Failure()))  # (the exception being handled)
                if self._spend(started):
                    return
                continue
            if isinstance(result, CoroutineType):
                result = self._run_coroutine(result)
            if is_deferred(result):
                self._waiting = True
                result.addBoth(self._finished, d)
                if self._waiting:
                    # Not done yet: _finished resumes the queue later.
                    self._running = (d, result)
                    self._running_inline = False
                    self._spend(started)
                    return
                if self._spend(started):
                    return
                continue
            d.callback(result)
            if self._spend(started):
                return
        self._running_inline = False
        self._busy = False

    def _cancel(self, d: Deferred[Any]) -> None:
        # The caller gave up: a queued call is skipped when its turn comes
        # (its Deferred has fired); a running one has its own Deferred
        # cancelled, so a method waiting on something stops waiting.
        running = self._running
        if running is not None and running[0] is d:
            self._cancelling = d
            try:
                running[1].cancel()
            finally:
                self._cancelling = None

    def _finished(self, result: Any, d: Deferred[Any]) -> None:
        self._waiting = False
        self._running = None
        if not d.called:  # a cancelled caller gets nothing more
            if isinstance(result, Failure):
                d.errback(result if d is self._cancelling else _own(result))
            else:
                d.callback(result)
        if self._running_inline:
            return
        if d is self._cancelling and self._queue and self._clock is not None:
            # Cancelled: the next call starts in the next reactor turn, not
            # at once, so that the cancels that came with this one (a
            # client gone cancels all its calls, in any order) are all
            # taken before anything more runs.
            self._clock.callLater(0, self._run)
            return
        self._run()
