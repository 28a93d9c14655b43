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

And L{is_deferred}, the one way relaytx tells a Deferred from a result that
is ready.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

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


#: Runs one coroutine: returns a Deferred of its result.
CoroutineRunner = Callable[[Coroutine[Any, Any, Any]], Deferred[Any]]


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


def _on_twisted(coro: Coroutine[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """
    Drive C{coro} under Twisted (as C{Deferred.fromCoroutine} does,
    through this generator), failing with L{AsyncioReactorRequired} when it
    awaits asyncio code.
    """
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            yielded = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value
        except RuntimeError as e:
            if _needs_asyncio(e):  # keep the traceback: it shows the await
                raise AsyncioReactorRequired().with_traceback(e.__traceback__) from None
            raise
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


def run_on_twisted(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    """
    :returns: a Deferred of C{coro}'s result, run as Twisted runs
        coroutines (see the module docstring).
    """
    return Deferred.fromCoroutine(_on_twisted(coro))


@types.coroutine
def _bridged(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> Any:
    """
    Drive C{coro} inside an asyncio task: asyncio futures go to the task,
    Deferreds are waited for here, and their result is left in place for
    the coroutine's C{await} to read (as Twisted's own driver does).
    """
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            yielded = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value
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


async def _task_body(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> Any:
    return await _bridged(coro, loop)


def asyncio_runner(loop: asyncio.AbstractEventLoop) -> CoroutineRunner:
    """
    :param loop: the event loop of the asyncio reactor.
    :returns: a runner of coroutines as tasks of C{loop} (see the module
        docstring).
    """

    def run(coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
        d = Deferred.fromFuture(loop.create_task(_task_body(coro, loop)))
        return d.addErrback(_twisted_cancellation)

    return run


def _twisted_cancellation(failure: Failure) -> Failure:
    # A cancelled task ends in asyncio's CancelledError; the rest of the
    # node (the mailbox, the dispatcher) knows a cancelled call by Twisted's.
    if isinstance(failure.value, asyncio.CancelledError):
        return Failure(CancelledError())
    return failure


def coroutine_runner(reactor: Any) -> CoroutineRunner:
    """
    :returns: how coroutines run on C{reactor}: as asyncio tasks on the
        asyncio reactor, else as Twisted runs them.
    """
    loop = getattr(reactor, "_asyncioEventloop", None)
    if isinstance(loop, asyncio.AbstractEventLoop):
        return asyncio_runner(loop)
    return run_on_twisted
