# -*- test-case-name: tests.test_aio -*-
"""
Running the coroutines of C{async def} server methods and app C{setup}s
(SPEC section 14), by the reactor the node runs on.

  - On the asyncio reactor (C{relay node --reactor asyncio}, C{twistd -r
    asyncio}), a coroutine runs as an asyncio task of the reactor's event
    loop, so it may await asyncio code (C{asyncio.sleep}, asyncio
    libraries, which look for their task) and Deferreds alike (a Deferred
    is waited for here, as asyncio tasks cannot). Cancelling the call's
    Deferred cancels the task: the method gets C{CancelledError}.
  - On any other reactor, a coroutine runs as Twisted runs one (awaiting
    Deferreds only); one that awaits asyncio code fails with
    L{AsyncioReactorRequired}, whose message says how to start the node.

Both ways, a coroutine's steps share the node's slice of the reactor's
time with its methods (L{TurnShare}, L{relaytx.server.TurnSlice}): each
step is timed, and once the slice is spent a coroutine resumes only after
the reactor has turned. Without it, a method that computed after an
C{await} (all of its work, on the asyncio reactor, where the coroutine
starts on a later pass) was not counted: four servers' methods computing
0.7 s each after an await held the reactor 2.8 s, and the node's
neighbours took it for dead. A single step is never cut short: one that
computes longer than the peer timeout still holds the reactor that long.

Both ways, the run of a coroutine is an owner (L{Owner}): streams it opens
(C{node.stream}) are tied to it and cancelled when it ends (see
L{relaytx._streams.ItemStream}). On the asyncio reactor the owner is the
asyncio task that opens a stream; elsewhere it is the node's run of the
method or app C{setup} in whose context the stream is opened (a
L{RunScope}, found through a context variable).

L{AioDeferred}: a Deferred that an asyncio task can await as well as any
coroutine can (C{node.call}'s and a stream's waits). A plain Deferred
cannot be awaited by a task the code creates itself (C{asyncio.gather},
C{asyncio.wait_for}, C{asyncio.create_task}): asyncio refuses it ("Task got
bad yield").

And L{is_deferred}, the one way relaytx tells a Deferred from a result that
is ready.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Coroutine, Generator
from contextvars import ContextVar
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from relaytx.errors import RelayError

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing.TypeIs from Python 3.13


def is_deferred(value: object) -> TypeIs[Deferred[Any]]:
    """
    C{isinstance(value, Deferred)}, in a third of the time when C{value} is
    not one. A Deferred is an C{Awaitable}, so its class is an C{ABCMeta},
    whose check costs about 130 ns for a value of any other class (an int,
    a dict: most results), and a local call made four such checks. Only the
    value's class is looked at: a subclass of Deferred is one; a class
    registered with it as an ABC (which nothing does) is not.
    """
    return Deferred in type(value).__mro__


_T = TypeVar("_T")

# asyncio's words when a task's coroutine yields what is not an asyncio future.
_BAD_YIELD = "Task got bad yield"


class AioDeferred(Deferred[_T]):
    """
    A Deferred that an asyncio task awaits too: the form of C{node.call}'s
    result. Awaited by Twisted's driver or by a method's (L{asyncio_runner}
    waits for Deferreds itself) it is an ordinary Deferred, at no cost. A
    task of the code's own (C{asyncio.gather}, C{asyncio.wait_for},
    C{asyncio.create_task}) refuses it once; it then waits through
    C{asFuture}, so cancelling the task, or the future, cancels this
    Deferred (the call: SPEC section 12).
    """

    def __await__(self) -> Generator[Any, Any, _T]:
        while not self.called or self.paused:
            try:
                yield self
            except RuntimeError as e:
                # Only a task that does not know Deferreds throws this in
                # (the next turn); whatever fired meanwhile is read below.
                if not str(e).startswith(_BAD_YIELD):
                    raise
                if not self.called or self.paused:
                    future = self.asFuture(asyncio.get_running_loop())
                    return (yield from future.__await__())
            except asyncio.CancelledError:
                # The task was cancelled before it got the future: cancel
                # this, whose outcome nobody reads now (as with asFuture).
                self.cancel()
                self.addBoth(_ignore)
                raise
        return (yield from Deferred.__iter__(self))


def _ignore(outcome: object) -> None:
    return None


def awaitable_by_tasks(d: Deferred[_T]) -> Deferred[_T]:
    """
    :returns: C{d}, made an L{AioDeferred} (a plain Deferred changes class
        in place: no new Deferred, no callbacks, on a call's fast path).
    """
    if type(d) is Deferred:
        d.__class__ = AioDeferred
    return d


class Owner(Protocol):
    """What a stream is tied to: an asyncio task, or a L{RunScope}."""

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...

    def remove_done_callback(self, fn: Callable[[Any], object], /) -> int: ...


class RunScope:
    """
    A node's run of one coroutine (a method's call, an app's C{setup}) on a
    reactor other than asyncio: like an asyncio task, it calls its done
    callbacks when the run ends, however it ends.
    """

    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Any], object]] | None = None

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None:
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(fn)

    def remove_done_callback(self, fn: Callable[[Any], object], /) -> int:
        callbacks = self._callbacks or []
        before = len(callbacks)
        callbacks[:] = [c for c in callbacks if c != fn]
        return before - len(callbacks)

    def end(self) -> None:
        """The run is over: call the callbacks (each once)."""
        callbacks, self._callbacks = self._callbacks, None
        for fn in callbacks or ():
            fn(self)


#: the node's run (on a reactor other than asyncio) whose context this is
_current_run: ContextVar[RunScope | None] = ContextVar("relaytx_run", default=None)


def owner_finder(reactor: Any) -> Callable[[], Owner | None]:
    """
    :returns: a function that tells the owner of what is opened now on
        C{reactor}'s node: the current asyncio task on the asyncio reactor,
        else the node's run of a coroutine in whose context it is called;
        C{None} outside them.
    """
    loop = getattr(reactor, "_asyncioEventloop", None)
    if isinstance(loop, asyncio.AbstractEventLoop):

        def current() -> Owner | None:
            task = asyncio.current_task(loop)
            return task if task is not None else _current_run.get()

        return current
    return _current_run.get


#: Runs one coroutine: returns a Deferred of its result.
CoroutineRunner = Callable[[Coroutine[Any, Any, Any]], Deferred[Any]]


class TurnShare(Protocol):
    """What the drivers see of the node's slice (L{relaytx.server.TurnSlice})."""

    #: whether the slice is spent: what runs next waits for the reactor to turn
    used_up: bool

    def spend(self, seconds: float) -> bool:
        """Count C{seconds} of work."""

    def after_turn(self, resume: Callable[[], None], spent_it: bool = False) -> None:
        """Call C{resume} once the reactor has turned."""


def _turned(share: TurnShare) -> Deferred[None]:
    """:returns: a Deferred that fires once the reactor has turned."""
    turned: Deferred[None] = Deferred()

    def resume() -> None:
        if not turned.called:  # (cancelled meanwhile)
            turned.callback(None)

    share.after_turn(resume)
    return turned


class AsyncioReactorRequired(RelayError):
    """A coroutine awaited asyncio code on a node that does not run asyncio."""

    def __init__(self) -> None:
        super().__init__(
            "awaited asyncio code (an asyncio future, e.g. asyncio.sleep), which runs only "
            "on the asyncio reactor: start the node with `relay node --reactor asyncio` "
            "or `twistd -r asyncio -n relay ...`"
        )


# CPython's words when asyncio is used without its loop running, or its
# future is awaited by a driver that does not know it.
_ASYNCIO_ERRORS = ("no running event loop", "await wasn't used with future")


def _needs_asyncio(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and str(error) in _ASYNCIO_ERRORS


def _on_twisted(
    coro: Coroutine[Any, Any, Any], share: TurnShare | None = None
) -> Generator[Any, Any, Any]:
    """
    Drive C{coro} under Twisted (as C{Deferred.fromCoroutine} does,
    through this generator), failing with L{AsyncioReactorRequired} when it
    awaits asyncio code. The run is a L{RunScope} (in the context Twisted
    runs C{coro} in), which ends when this does.

    :param share: the node's slice, which the steps after the first use
        (the first runs inside the call to the method, which its mailbox
        counts).
    """
    scope = RunScope()
    _current_run.set(scope)
    try:
        value: Any = None
        error: BaseException | None = None
        counted: TurnShare | None = None  # (share, from the second step on)
        while True:
            if counted is not None:
                while counted.used_up:
                    try:
                        yield _turned(counted)
                    except GeneratorExit:
                        coro.close()
                        raise
                    except BaseException as e:  # cancelled as it waited: the method gets it
                        value, error = None, e
                        break
                started = perf_counter()
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value
            except RuntimeError as e:
                if _needs_asyncio(e):  # keep the traceback: it shows the await
                    raise AsyncioReactorRequired().with_traceback(e.__traceback__) from None
                raise
            finally:
                if counted is not None:
                    counted.spend(perf_counter() - started)
            counted = share
            value = error = None
            if is_deferred(yielded):
                try:
                    value = yield yielded
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as e:  # thrown in: a failure, or cancellation
                    error = e
            else:  # an asyncio future (or a bare yield): only asyncio can wait for it
                error = AsyncioReactorRequired()
    finally:
        scope.end()


def run_on_twisted(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    """
    :returns: a Deferred of C{coro}'s result, run as Twisted runs
        coroutines (see the module docstring), outside any node's slice.
    """
    return Deferred.fromCoroutine(_on_twisted(coro))


def twisted_runner(share: TurnShare) -> CoroutineRunner:
    """:returns: L{run_on_twisted}, the steps in C{share}."""

    def run(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
        return Deferred.fromCoroutine(_on_twisted(coro, share))

    return run


@types.coroutine
def _bridged(
    coro: Coroutine[Any, Any, Any],
    loop: asyncio.AbstractEventLoop,
    share: TurnShare | None = None,
) -> Any:
    """
    Drive C{coro} inside an asyncio task: asyncio futures go to the task,
    Deferreds are waited for here, and their result is left in place for
    the coroutine's C{await} to read (as Twisted's own driver does). Every
    step is timed into C{share}, the first too: the method's call made the
    coroutine, which starts only on a later pass of the loop.
    """
    value: Any = None
    error: BaseException | None = None
    while True:
        if share is not None:
            while share.used_up:
                turned = loop.create_future()
                share.after_turn(partial(_settle_future, turned))
                try:
                    yield from turned
                except BaseException as e:  # the task was cancelled as it waited
                    value, error = None, e
                    break
            started = perf_counter()
        try:
            yielded = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value
        finally:
            if share is not None:
                share.spend(perf_counter() - started)
        value = error = None
        if is_deferred(yielded):
            fired = loop.create_future()

            def settle(result: Any, fired: asyncio.Future[None] = fired) -> Any:
                if not fired.done():
                    fired.set_result(None)
                return result  # the awaiting coroutine reads it from the Deferred

            yielded.addBoth(settle)
            try:
                yield from fired
            except BaseException as e:  # the task was cancelled
                yielded.cancel()
                yielded.addErrback(lambda _: None)  # nobody reads its failure now
                error = e
        else:
            try:
                value = yield yielded
            except BaseException as e:
                error = e


def _settle_future(future: asyncio.Future[None]) -> None:
    if not future.done():  # (cancelled meanwhile)
        future.set_result(None)


async def _task_body(
    coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop, share: TurnShare | None
) -> Any:
    return await _bridged(coro, loop, share)


def asyncio_runner(
    loop: asyncio.AbstractEventLoop, share: TurnShare | None = None
) -> CoroutineRunner:
    """
    :param loop: the event loop of the asyncio reactor.
    :param share: the node's slice, which the coroutines' steps use.
    :returns: a runner of coroutines as tasks of C{loop} (see the module
        docstring).
    """

    def run(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
        d = Deferred.fromFuture(loop.create_task(_task_body(coro, loop, share)))
        return d.addErrback(_twisted_cancellation)

    return run


def _twisted_cancellation(failure: Failure) -> Failure:
    # A cancelled task ends in asyncio's CancelledError; the rest of the
    # node (the mailbox, the dispatcher) knows a cancelled call by Twisted's.
    if isinstance(failure.value, asyncio.CancelledError):
        return Failure(CancelledError())
    return failure


def coroutine_runner(reactor: Any, share: TurnShare | None = None) -> CoroutineRunner:
    """
    :param share: the node's slice of the reactor's time, which the
        coroutines' steps use (none: they run outside any).
    :returns: how coroutines run on C{reactor}: as asyncio tasks on the
        asyncio reactor, else as Twisted runs them.
    """
    loop = getattr(reactor, "_asyncioEventloop", None)
    if isinstance(loop, asyncio.AbstractEventLoop):
        return asyncio_runner(loop, share)
    return run_on_twisted if share is None else twisted_runner(share)
