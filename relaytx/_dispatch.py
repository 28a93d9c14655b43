# -*- test-case-name: tests.test_limits -*-
"""
L{CallDispatcher}: where every call to a server goes, whichever way it came
in, and the one place calls are admitted under the node's limits and
counted in its metrics.

  - L{CallDispatcher.dispatch}: a call from this node's JSON-RPC clients or
    its own code (the Python API). It runs here when the caller named this
    node, or named no node and a local server has the name; otherwise it
    goes to the named node, or to the nearest node hosting the server.
  - L{CallDispatcher.run_arrived}: a call that arrived over the mesh for a
    local server.

Both return the result itself when it is ready at once (the common case:
an idle local server answering at once costs no Deferred), else a Deferred
of it, and raise a L{CallError} when the call fails at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

from attrs import evolve
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from relaytx._aio import is_deferred
from relaytx._balance import Balancer
from relaytx._calls import CallTarget
from relaytx._hosting import ServerHost
from relaytx._limits import CallLimiter
from relaytx._metrics import NodeMetrics
from relaytx._tracing import CallTrace, Span, Tracer, current_span
from relaytx.errors import CallError, Cancelled, Overloaded
from relaytx.interfaces import IRemoteCalls


class CallDispatcher:
    """
    :param remote: the mesh, for calls that run on other nodes; the
        composition root sets it once the mesh exists (the mesh, in turn,
        runs the calls it receives through L{run_arrived}).

    @ivar tracer: the node's tracer when it traces: each call dispatched
        here then gets a C{call} span (L{relaytx._tracing}).
    """

    tracer: Tracer | None = None
    #: where location-transparent calls to other nodes go (SPEC section 11)
    balancer: Balancer | None = None

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        metrics: NodeMetrics,
        limiter: CallLimiter,
        host: ServerHost,
        remote: IRemoteCalls | None = None,
    ) -> None:
        self._node_id = node_id
        self._clock = clock
        self._metrics = metrics
        self._limiter = limiter
        self._host = host
        self._names = host.names
        self.remote = remote
        # Calls are counted per server and method only for methods the host
        # exposes (bounded label sets).
        metrics.server_calls.known = host.exposes

    def call(self, target: CallTarget) -> Deferred[Any]:
        """
        As L{dispatch}, always with a Deferred (the Python API's form).

        :returns: a Deferred with the method's result, or failing with a
            L{CallError}.
        """
        try:
            result = self.dispatch(target)
        except CallError as e:
            return fail(e)
        return result if is_deferred(result) else succeed(result)

    def dispatch(self, target: CallTarget) -> Any:
        """
        Send one call where it runs, within its caller's limits, and count it.

        :returns: the result itself when it is ready at once, else a
            Deferred of it.
        :raises CallError: when the call fails at once.
        """
        # A call for a local server goes straight to it; any other is routed.
        node_id = target.node_id
        run: Callable[[CallTarget], Any]
        if node_id == self._node_id:
            run, local = self._run_explicit, True
        elif (
            node_id is None
            and target.server in self._names
            and (
                (balancer := self.balancer) is None
                or not balancer.spreads_any
                or not balancer.spreads(target.server)
            )
        ):
            run, local = self._run_implicit, True
        else:
            run, local = self._route, False
        if self.tracer is not None:
            return self._traced(self.tracer, target, run, local)
        return self._admitted(target.caller, target, run, local)

    def _traced(
        self, tracer: Tracer, target: CallTarget, run: Callable[[CallTarget], Any], local: bool
    ) -> Any:
        # The call's span: a child of the context the call came with, or of
        # the traced method making it, or a new trace.
        trace = target.trace
        parent = trace.parent if trace is not None else current_span.get()
        kind = ("call", target.server, target.method, target.node_id, target.caller)
        shape = tracer.shapes.get(kind) or tracer.shape(
            kind, f"call {target.server}.{target.method}", _call_attributes(target)
        )
        span = tracer.start_span(shape[0], parent, shape[1], shape[2])
        target.trace = CallTrace(span, None if trace is None else trace.hops)
        try:
            return self._admitted(target.caller, target, run, local, span)
        except CallError as e:
            span.fail(e)
            raise

    def run_arrived(self, target: CallTarget) -> Any:
        """
        Run a call that arrived over the mesh for a local server. Limits
        count against the neighbour it came from (C{target.via}), the only
        identity a link proves.

        :returns: as L{dispatch}.
        :raises CallError: when the call fails at once.
        """
        return self._admitted(target.via or target.caller, target, self._run_explicit, True)

    def _route(self, target: CallTarget) -> Any:
        node_id = target.node_id
        if node_id is None:
            remote = self.remote
            balancer = self.balancer
            if remote is not None and (
                target.server not in self._host
                or (balancer is not None and balancer.spreads(target.server))
            ):
                if balancer is not None:
                    return balancer.call(
                        target, partial(self._run_there, target, remote.call),
                        partial(self._run_here, target),
                    )  # fmt: skip
                host = remote.nearest_host(target.server)
                if host is not None:
                    return remote.call(evolve(target, node_id=host))
            return self._host.run(target, explicit=False)
        if node_id == self._node_id:
            return self._host.run(target, explicit=True)
        if self.remote is None:
            raise CallError(f"node {self._node_id} has no mesh to reach {node_id!r}")
        return self.remote.call(target)

    def _run_implicit(self, target: CallTarget) -> Any:
        return self._host.run(target, explicit=False)

    def _run_here(self, call: CallTarget, attempt: CallTarget) -> Any:
        # The balancer chose this node's own instance for C{call}.
        call.ran_here = True
        return self._host.run(attempt, explicit=False)

    def _run_there(
        self, call: CallTarget, send: Callable[[CallTarget], Any], attempt: CallTarget
    ) -> Any:
        call.ran_here = False
        return send(attempt)

    def _run_explicit(self, target: CallTarget) -> Any:
        return self._host.run(target, explicit=True)

    def _admitted(
        self, share: str | None, target: CallTarget, run: Any, local: bool, span: Span | None = None
    ) -> Any:
        # local: the call runs on a server of this node, and so is counted
        # per server and method too. span: the call's, ended with it (here,
        # not by a callback of its own: one costs a Deferred about 0.5 us).
        started = self._clock.seconds()
        limiter = self._limiter
        if share is not None:
            try:
                limiter.admit(share)
            except Overloaded as e:
                raise self._counted(e, started, target, local) from None
        try:
            result = run(target)
        except CallError as e:
            if share is not None:
                limiter.release(share)
            raise self._counted(e, started, target, local or target.ran_here) from None
        if is_deferred(result):
            return result.addBoth(self._finished, share, started, target, local, span)
        if span is not None:
            span.finish()
        if share is not None:
            limiter.release(share)
        elapsed = self._clock.seconds() - started
        if local or target.ran_here:  # counted per server and method, and in the totals
            self._metrics.count_server_call(target.server, target.method, "ok", elapsed)
        else:
            self._metrics.count_call("ok", elapsed)
        return result

    def _finished(
        self,
        result: Any,
        share: str | None,
        started: float,
        target: CallTarget,
        local: bool,
        span: Span | None,
    ) -> Any:
        if span is not None:
            span.finish(result)
        if share is not None:
            self._limiter.release(share)
        local = local or target.ran_here
        if isinstance(result, Failure):
            error = result.value
            if isinstance(error, CallError):
                self._counted(error, started, target, local)
            elif isinstance(error, CancelledError | asyncio.CancelledError):  # (-32800)
                self._count(Cancelled.__name__, started, target, local)
            else:
                self._count(type(error).__name__, started, target, local)
            return result
        elapsed = self._clock.seconds() - started
        if local:
            self._metrics.count_server_call(target.server, target.method, "ok", elapsed)
        else:
            self._metrics.count_call("ok", elapsed)
        return result

    def _count(self, outcome: str, started: float, target: CallTarget, local: bool) -> None:
        elapsed = self._clock.seconds() - started
        if local:
            self._metrics.count_server_call(target.server, target.method, outcome, elapsed)
        else:
            self._metrics.count_call(outcome, elapsed)

    def _counted(
        self, error: CallError, started: float, target: CallTarget, local: bool
    ) -> CallError:
        error.with_data(node_id=self._node_id, route=[self._node_id])
        self._count(type(error).__name__, started, target, local)
        return error


def _call_attributes(target: CallTarget) -> dict[str, Any]:
    """:returns: the attributes of C{target}'s C{call} span."""
    attributes: dict[str, Any] = {
        "rpc.system": "relaytx",
        "rpc.service": target.server,
        "rpc.method": target.method,
    }
    if target.node_id is not None:
        attributes["relaytx.target_node"] = target.node_id
    if target.caller is not None:
        attributes["relaytx.caller"] = target.caller
    return attributes
