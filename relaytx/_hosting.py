# -*- test-case-name: tests.test_server -*-
"""
L{ServerHost}: the servers a node hosts, each behind its mailbox, and the
running of one call on one of them: access rules first, then the method's
signature, then the mailbox.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from relaytx._aio import CoroutineRunner, is_deferred, run_on_twisted
from relaytx._auth import AccessRules
from relaytx._calls import CallTarget
from relaytx._streams import StreamingMethod
from relaytx._tracing import TracedMethod, Tracer
from relaytx.errors import (
    AccessDenied,
    CallError,
    CallTimeout,
    InternalError,
    InvalidRequest,
    MethodNotFound,
    NodeUnreachable,
    NoSuchMethod,
    NoSuchServer,
    OutcomeUnknown,
    Overloaded,
    ParseError,
    RemoteCallError,
    TimedOutHere,
    failure_exception,
)
from relaytx.server import (
    Mailbox,
    OwnCancellation,
    Server,
    TurnSlice,
    idempotent_names,
    method_names,
)

SERVER_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


#: The codes that tell where a call went, or did not (-32002 "did not run",
#: -32005 "refused, try another", -32006, "no such server" and the like).
#: A method that fails with one, because a call it made failed so, did run:
#: its own call fails with -32000, the exception's type and message, as any
#: method's failure does (SPEC section 5). Taken for its own, -32002 or
#: -32005 would have its caller fail over and run it a second time.
_DELIVERY_CODES = frozenset(
    {
        ParseError.code,
        InvalidRequest.code,
        MethodNotFound.code,
        InternalError.code,
        NodeUnreachable.code,
        NoSuchServer.code,
        Overloaded.code,
        OutcomeUnknown.code,
    }
)


class ServerHost:
    """
    The servers of node C{node_id}, by name.

    :param access: the node's access rules, applied to every call with a
        caller (calls from code in this node have none).
    :param on_change: called whenever a server is exposed or removed.
    :param run_coroutine: how the coroutines of C{async def} methods run
        (see L{relaytx._aio}).
    :param turn_slice: the node's slice of the reactor's time, which all
        the servers' calls share (and C{run_coroutine}'s steps, if it was
        given it); none: one of the host's own.

    @ivar tracer: the node's tracer when it traces: a traced call's method
        then runs in an C{execute} span.
    """

    _log = Logger()
    tracer: Tracer | None = None
    #: the most bytes of JSON a streaming method's items may make when they
    #: are collected into one list (a call that asked for no stream)
    max_result_size = 1024 * 1024

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        access: AccessRules,
        on_change: Callable[[], None] = lambda: None,
        run_coroutine: CoroutineRunner = run_on_twisted,
        turn_slice: TurnSlice | None = None,
    ) -> None:
        self._node_id = node_id
        self._run_coroutine = run_coroutine
        self._clock = clock
        #: methods' time since the reactor turned, all servers together
        self._turn_slice = TurnSlice(clock) if turn_slice is None else turn_slice
        self._access = access
        self._mailboxes: dict[str, Mailbox] = {}
        #: the traced forms of exposed methods (relaytx._tracing.TracedMethod)
        self._traced: dict[tuple[str, str], TracedMethod] = {}
        #: the hosted servers' names (a read-only view, for a test on a hot path)
        self.names = self._mailboxes.keys()
        self.on_change = on_change
        #: the Deferreds of calls that did not finish at once, queued or
        #: running, in order: the node's load (L{busy}); failed when the node
        #: stops (L{stop})
        self._unfinished: dict[Deferred[Any], None] = {}
        self._stopping = False
        #: called with the load when it moves to another power of two
        self.on_load: Callable[[int], None] = lambda load: None

    def __contains__(self, name: object) -> bool:
        return name in self._mailboxes

    def expose(self, name: str, server: Server) -> None:
        """
        Host C{server} under C{name}.

        :raises ValueError: if the name is invalid or already taken.
        :raises TypeError: if C{server} is not a L{Server}.
        """
        if not isinstance(server, Server):
            raise TypeError(f"expose({name!r}, ...) needs a relaytx.Server, not {server!r}")
        if not SERVER_NAME_RE.fullmatch(name):
            raise ValueError(f"invalid server name {name!r}: use A-Za-z0-9_.- (not first .-)")
        if name == "rpc" or name.startswith("rpc."):
            raise ValueError(
                f"invalid server name {name!r}: JSON-RPC 2.0 keeps method names that begin"
                " with 'rpc.' for itself, so its methods could not be called as rpc.METHOD"
            )
        if name in self._mailboxes:
            raise ValueError(f"a server named {name!r} is already exposed on {self._node_id}")
        # One server, one mailbox: under a second name it still runs one
        # call at a time (SPEC section 2), its calls by either name in turn.
        for box in self._mailboxes.values():
            if box.server is server:
                break
        else:
            box = Mailbox(server, self._run_coroutine, self._clock, self._turn_slice)
        self._mailboxes[name] = box
        self.on_change()

    def unexpose(self, name: str) -> Server:
        """
        Stop hosting the server called C{name}; calls already queued still run.

        :returns: the server.
        :raises KeyError: if there is none.
        """
        server = self._mailboxes.pop(name).server
        for key in [key for key in self._traced if key[0] == name]:
            del self._traced[key]
        self.on_change()
        return server

    def server(self, name: str) -> Server:
        """
        :returns: the server hosted as C{name}.
        :raises KeyError: if there is none.
        """
        return self._mailboxes[name].server

    def local_servers(self) -> dict[str, list[str]]:
        """:returns: each local server's name and its exposed methods."""
        return {name: method_names(box.server) for name, box in self._mailboxes.items()}

    def idempotent_methods(self) -> dict[str, list[str]]:
        """:returns: each local server's idempotent methods, where it has any."""
        table = {}
        for name, box in self._mailboxes.items():
            methods = idempotent_names(box.server)
            if methods:
                table[name] = methods
        return table

    def exposes(self, server: str, method: str) -> bool:
        """:returns: whether a hosted server C{server} exposes C{method}."""
        mailbox = self._mailboxes.get(server)
        return mailbox is not None and method in mailbox.server._relaytx_methods

    def queue_depth(self) -> int:
        """:returns: how many calls wait in the mailboxes, running ones excluded."""
        return sum(len(m) for m in set(self._mailboxes.values()))  # (a shared one once)

    def run(self, target: CallTarget, explicit: bool) -> Any:
        """
        Run a call on a local server.

        :param explicit: whether the caller named this node (a missing
            server is then -32003, not -32601).
        :returns: the result, or a Deferred of it (see L{Mailbox.call}).
        :raises CallError: if the call is refused or fails at once.
        """
        caller = target.caller
        access = self._access
        if caller is not None and access:
            if not access.allows(caller, target.server, target.method):
                raise AccessDenied(
                    f"Access denied: {caller} may not call {target.server}.{target.method}"
                    f" on {self._node_id}"
                )
            relayer = target.relayed_by
            if relayer is not None and not access.allows(relayer, target.server, target.method):
                raise AccessDenied(
                    f"Access denied: {relayer}, relaying for {caller}, may not call"
                    f" {target.server}.{target.method} on {self._node_id}"
                )
        mailbox = self._mailboxes.get(target.server)
        if mailbox is None:
            missing: type[CallError] = NoSuchServer if explicit else MethodNotFound
            raise missing(f"Server not found: {target.server!r} on {self._node_id}")
        method = mailbox.server._relaytx_methods.get(target.method)
        if method is None:
            missing = NoSuchMethod if explicit else MethodNotFound
            raise missing(f"Method not found: {target.server}.{target.method} on {self._node_id}")
        method.check_arguments(target.args, target.kwargs)
        runnable: Any = method
        args = target.args
        trace = target.trace
        tracer = self.tracer if trace is not None and trace.parent is not None else None
        streaming = None
        if method.streams:  # an async generator
            runnable = streaming = StreamingMethod(method, target.stream, self.max_result_size)
            if tracer is not None:  # (its execute span lasts until its last item)
                runnable = TracedMethod(runnable, tracer, target.server)
        elif tracer is not None:
            runnable = TracedMethod.for_method(self._traced, method, tracer, target.server)
        if tracer is not None:
            args = (trace.parent, *args)  # the execute span's parent, for the traced method
        try:
            if method.concurrent:
                result = mailbox.beside(runnable, args, target.kwargs)
            else:
                result = mailbox.call(runnable, args, target.kwargs, target.timeout)
        except CallError as e:
            if self._of_another_call(e, mailbox.server):
                raise self._method_error(Failure(), target) from None
            raise  # a server may fail a call with a precise relaytx error
        except BaseException:  # SystemExit too: a method's, not the node's
            raise self._method_error(Failure(), target) from None
        if is_deferred(result):
            if not result.called:  # remote calls time out in the mesh; local ones here
                result.addTimeout(target.timeout, self._clock, onTimeoutCancel=_timed_out)
                self._unfinished[result] = None
                self._load_moved(len(self._unfinished) - 1)
                result.addBoth(self._done, result)
                if streaming is not None:
                    result.addBoth(streaming.stop)
            return result.addErrback(self._method_failed, target, mailbox.server)
        return result

    @property
    def busy(self) -> int:
        """Calls that did not finish at once, queued or running: the node's load."""
        return len(self._unfinished)

    def _done(self, outcome: Any, result: Deferred[Any]) -> Any:
        unfinished = self._unfinished
        if result in unfinished:
            del unfinished[result]
            self._load_moved(len(unfinished) + 1)
        return outcome

    def stop(self) -> None:
        """
        The node stops: every call still running or queued here is
        cancelled, and its caller hears -32006 (it may have done part of
        its work). Callers on other nodes hear it from the mesh, which
        cancels their calls first; this answers the node's own callers
        (HTTP, C{/ws/rpc}, the Python API).
        """
        self._stopping = True
        # Last first: a queued call cancelled after the one ahead of it
        # would start, when that one's end let the mailbox go on.
        for result in reversed(list(self._unfinished)):
            result.cancel()

    def _load_moved(self, before: int) -> None:
        # The node's load moved from before: its owner hears when it moves
        # to another power of two.
        after = len(self._unfinished)
        if before.bit_length() != after.bit_length():
            self.on_load(after)

    def _method_failed(self, failure: Failure, target: CallTarget, server: Server) -> Failure:
        if isinstance(failure.value, OwnCancellation):
            return Failure(self._method_error(failure.value.failure, target))
        if self._stopping and isinstance(failure.value, CancelledError):
            return Failure(
                OutcomeUnknown(
                    f"node {self._node_id} stopped before answering", node_id=self._node_id
                )
            )
        error = failure.value
        if isinstance(error, CancelledError) or (
            isinstance(error, CallError) and not self._of_another_call(error, server)
        ):
            # A server may fail a call with a precise relaytx error; a
            # cancelled call was given up by its caller.
            return failure
        return Failure(self._method_error(failure, target))

    def _of_another_call(self, error: CallError, server: Server) -> bool:
        """
        :returns: whether C{error}, a method's failure, is that of a call
            the method made rather than its own: a code of where a call
            went (L{_DELIVERY_CODES}), a timeout other than its own, or an
            error another node answered (but -32000, which it is already).
            Its own call then fails -32000.
        """
        if server._relaytx_owns_delivery_errors:
            return False
        if error.code in _DELIVERY_CODES:
            return True
        if isinstance(error, CallTimeout):
            return not isinstance(error, TimedOutHere)
        if isinstance(error, RemoteCallError):
            return False  # -32000 already, with the exception's type and message
        origin = error.data.get("node_id")
        return origin is not None and origin != self._node_id

    def _method_error(self, failure: Failure, target: CallTarget) -> RemoteCallError:
        # At level error, not Logger.failure's critical: the node is well,
        # and the caller has the exception (-32000).
        self._log.failure(
            "{server}.{method} raised",
            failure,
            LogLevel.error,
            server=target.server,
            method=target.method,
        )
        return RemoteCallError.from_exception(failure_exception(failure), self._node_id)


def _timed_out(result: Any, timeout: float) -> Failure:
    return Failure(TimedOutHere(f"Call timed out after {timeout:g}s", timeout=timeout))
