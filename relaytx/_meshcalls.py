# -*- test-case-name: tests.test_mesh -*-
"""
L{MeshCalls}: calls that cross the mesh, at both ends.

  - B{call}: this node calls a server on another node. The call leaves
    with the caller's remaining time budget and waits in L{PendingCalls}
    for its answer, its deadline, or the loss of its path.
  - B{run}: a call addressed here arrived; run it (through the node's
    dispatcher) and B{answer} it: the outcome, success or error, goes back
    to the caller.
  - B{settle}: an answer to one of this node's calls arrived. Only the node
    the call went to may answer it; a node on the way may only report the
    path lost (-32002 or -32006) or the call refused for its own limits
    (-32005), L{HOP_CODES}. Anything else is a forgery: dropped, counted.

In PKI mode a call or answer that crossed other nodes must also carry its
sender's end-to-end code (L{relaytx._pki.EndToEnd}); without it, it is a
forgery too, whatever it claims.

Answers travel back along the path their call took (L{Forwarder}).

When a link goes down, the calls sent through it fail at once with -32006
(L{OutcomeUnknown}): they left, and may or may not have run. That holds
for this node's own calls, and for each call this node had passed into
that link for another node: a -32006 answer goes back towards its caller.
-32002 (L{NodeUnreachable}) is only for calls that certainly did not run:
no route, TTL exceeded, refused before they could reach the target.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaytx._aio import is_deferred
from relaytx._calls import (
    COPY_LOST,
    DEFAULT_CALL_TIMEOUT,
    DROPPED,
    LOST,
    MAX_CALL_BUDGET,
    WAITING,
    CallTarget,
    ForwardedCalls,
    PendingCalls,
)
from relaytx._forwarding import Forwarder
from relaytx._links import LinkTable
from relaytx._metrics import NodeMetrics
from relaytx._pki import EndToEnd
from relaytx._streams import MeshStreams, RunningCalls
from relaytx._tracing import TRACE_PATH, CallTraces
from relaytx.errors import (
    HOP_CODES,
    CallError,
    Cancelled,
    LinkBackedUp,
    MessageTooLarge,
    NodeUnreachable,
    NoSuchServer,
    OutcomeUnknown,
    Overloaded,
    RemoteCallError,
    cut_short,
    error_for_code,
    failure_exception,
)
from relaytx.wire import (
    CallSpec,
    Envelope,
    ServerCall,
    ServerResponse,
    StreamItem,
    secret_id,
)

#: What a forwarder may lose on its way back to a caller (L{MeshCalls.refuse}).
_ANSWERS = frozenset({ServerResponse.TYPE, StreamItem.TYPE})

#: How an original-design node says it hosts no such server (with no error
#: code: it answers only C{{"success": false, "error": TEXT}}).
_ORIGINAL_NO_SERVER = re.compile(r"server .+ not found")


#: What an error's data may hold as a peer answered it (SPEC section 5:
#: where it happened, the exception's type and message, and the limit or
#: timeout that refused it), and of what type: anything else a peer adds,
#: a traceback say, is not passed on to the caller.
_ERROR_DATA: dict[str, type | tuple[type, ...]] = {
    "node_id": str,
    "route": list,
    "type": str,
    "message": str,
    "limit": str,
    "timeout": (int, float),
}


def _error_data(given: Any) -> dict[str, Any]:
    """:returns: the data of a peer's error answer that a caller is told."""
    if not isinstance(given, dict):
        return {}
    data = {}
    for key, value in given.items():
        kind = _ERROR_DATA.get(key)
        if kind is None or not isinstance(value, kind) or isinstance(value, bool):
            continue
        if type(value) is list and not all(type(hop) is str for hop in value):
            continue  # (a route)
        data[key] = value
    return data


def _foreign_error_code(text: str | None) -> int:
    """
    :returns: the code of an error answer that carries none (an
        original-design node's): -32003 for its "server X not found",
        else -32000.
    """
    if text is not None and _ORIGINAL_NO_SERVER.fullmatch(text):
        return NoSuchServer.code
    return RemoteCallError.code


class MeshCalls:
    """
    Calls across the mesh, at both ends (see the module docstring).

    :param run_arrived: runs a call that arrived over the mesh (the node's
        dispatcher): returns the result or a Deferred of it, or raises a
        L{CallError}.
    :param max_pending: the most calls this node may wait on at once.
    :param e2e: in PKI mode, the end-to-end codes of calls and answers that
        cross other nodes.
    """

    _log = Logger()

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        metrics: NodeMetrics,
        links: LinkTable,
        forwarder: Forwarder,
        pending: PendingCalls,
        forwarded: ForwardedCalls,
        routes_are_complete: Callable[..., bool],
        run_arrived: Callable[[CallTarget], Any],
        max_pending: int = 10_000,
        e2e: EndToEnd | None = None,
    ) -> None:
        self._node_id = node_id
        self._clock = clock
        self._metrics = metrics
        self._links = links
        self._forwarder = forwarder
        self.pending = pending
        self._forwarded = forwarded
        self._routes_are_complete = routes_are_complete
        self._run_arrived = run_arrived
        self._max_pending = max_pending
        self._e2e = e2e
        self.running = RunningCalls(clock, metrics)  # calls run here for others, their cancels
        self.traces = CallTraces(node_id, clock)  # calls' trace contexts and path reports
        #: streamed items, credit and cancels (L{relaytx._streams})
        self.streams = MeshStreams(node_id, forwarder.send, links, pending, metrics.drop,
                                   self.running.cancel_arrived, e2e)  # fmt: skip

    # Calling.

    def call(self, target: CallTarget) -> Deferred[Any]:
        """
        Call a server on another node, C{target.node_id}.

        :returns: a Deferred with the result, failing with a L{CallError}.
        """
        destination = target.node_id
        if destination is None or destination == self._node_id:
            return fail(ValueError(f"a remote call needs another node's id, not {destination!r}"))
        if self._links.stopping:
            return fail(NodeUnreachable("node is stopping", node_id=self._node_id))
        if len(self.pending) >= self._max_pending:
            return fail(
                Overloaded(
                    f"Overloaded: {len(self.pending)} calls already pending on {self._node_id}",
                    node_id=self._node_id,
                )
            )
        if not self._forwarder.can_reach(destination) and (
            self._routes_are_complete(destination) or not self._links
        ):
            return fail(
                NodeUnreachable(
                    f"No route to node {destination!r}",
                    node_id=self._node_id,
                    route=[self._node_id],
                )
            )
        response_id = secret_id()  # unguessable: only the callee can answer
        spec = CallSpec(target.server, target.method, target.args, target.kwargs, target.timeout)
        caller = target.caller
        if caller == self._node_id:
            caller = None  # a call with no caller is the sending node's own
        consumer = target.stream
        call = ServerCall(
            spec, response_id, caller=caller, stream=None if consumer is None else consumer.window
        )
        now = self._clock.seconds()
        envelope = Envelope.create(call, self._node_id, destination, now)
        if self._e2e is not None and destination not in self._links:
            mac = self._e2e.seal_call(destination, call, envelope.timestamp or "")
            if mac is not None:
                envelope.data["mac"] = mac  # type: ignore[index]  # the dict to_data made
        d = self.pending.expect(
            response_id, destination, None, target.timeout, now, consumer, self.streams.cancelled
        )
        if consumer is not None:
            consumer.connect(partial(self.streams.send_credit, destination, response_id))
        if target.trace is not None:
            self.traces.carry(envelope, target.trace, response_id, d)
        try:
            forwarder = self._forwarder
            floods = forwarder.floods
            via = forwarder.forward(envelope, None, budget=target.timeout, now=now)
            flooded = forwarder.flooded_to if forwarder.floods > floods else None
            self.pending.set_via(response_id, via, flooded)
        except MessageTooLarge as e:
            self.pending.resolve(response_id, error=Overloaded(f"Call too large: {e}"))
        except LinkBackedUp as e:
            self.pending.resolve(response_id, error=e)
        return d

    def settle(self, envelope: Envelope, response: ServerResponse, via: str | None = None) -> None:
        """
        An answer to one of this node's calls arrived from neighbour C{via}
        (see the module docstring).
        """
        destination = self.pending.destination_of(response.response_id)
        hop_report = not response.success and response.error_code in HOP_CODES
        if destination is not None and envelope.sender != destination and not hop_report:
            self._metrics.drop("forged_answer")
            return
        e2e = self._e2e
        if (
            e2e is not None
            and envelope.sender != via
            # (A forwarder's report of a loss carries no code; one in the
            # callee's name must be the callee's, as any answer of its.)
            and (not hop_report or envelope.sender == destination)
            and not e2e.check_answer(envelope.sender, response, response.mac)
        ):
            self._metrics.drop("forged_answer")
            return
        if hop_report and response.error_code == NodeUnreachable.code:
            left = self.pending.dead_end(response.response_id, via or envelope.sender)
            if left == WAITING:
                # One copy of a flooded call went no further; the others may
                # reach the target (and run the call): -32002 only when none can.
                return
            if left == COPY_LOST:
                self.pending.resolve(
                    response.response_id, error=_copy_lost(self._node_id, destination or "")
                )
                return
        if self.traces.paths:
            self.traces.settled(envelope, response.response_id, destination)
        if response.success:
            broken = _stream_broken(self.pending, response, destination, self._node_id)
            if broken is not None:
                self.pending.resolve(response.response_id, error=broken)
                return
            self.pending.resolve(response.response_id, result=response.result)
            return
        data = _error_data(response.error_data)
        hearsay = e2e is not None and hop_report and envelope.sender != destination
        if hearsay:
            # PKI mode: a report no callee coded is its sender's word alone.
            data["node_id"] = envelope.sender
        else:
            data.setdefault("node_id", response.node_id or envelope.sender)
        code = response.error_code
        error = error_for_code(
            code if code is not None else _foreign_error_code(response.error),
            response.error or "remote error",
            data,
        )
        error.hearsay = hearsay
        self.pending.resolve(response.response_id, error=error)

    # Running and answering.

    def run(self, envelope: Envelope, call: ServerCall, via: str | None) -> None:
        """
        Run a call addressed here that arrived from neighbour C{via}, and
        answer it. Access rules judge the caller the envelope names; limits
        count against C{via}, the only identity a link proves.
        """
        e2e = self._e2e
        if e2e is not None and envelope.sender != via:
            why = e2e.check_call(envelope.sender, call, envelope.timestamp, self._clock.seconds())
            if why is not None:
                self._metrics.drop("forged_call")
                self._log.warn(
                    "dropped a call from {caller} that came through {via}: {why}",
                    caller=envelope.sender,
                    via=via,
                    why=why,
                )
                return
        spec = call.call
        key = (envelope.sender, call.response_id)
        if self.running.cancelled_early(key):
            self.answer_error(envelope.sender, call.response_id, Cancelled(), envelope.route, via)
            return
        stream = None if call.stream is None else self.streams.consumer(envelope.sender, call, via)
        target = CallTarget(
            self._node_id,
            spec.server_name,
            spec.method,
            spec.args,
            dict(spec.kwargs),
            min(spec.timeout, MAX_CALL_BUDGET) if spec.timeout else DEFAULT_CALL_TIMEOUT,
            caller=_caller_of(call, envelope.sender),
            via=via,
            stream=stream,
        )
        if e2e is not None and target.caller != envelope.sender:
            # PKI mode: members are told apart, and the one that names an
            # HTTP client must be allowed the call too.
            target.relayed_by = envelope.sender
        if self.traces.tracer is not None or TRACE_PATH in envelope.data:
            self.traces.arrived(envelope, target)  # until _send_answer
        try:
            result = self._run_arrived(target)
        except Exception:
            self._answer(Failure(), envelope, call, via)
            return
        if not is_deferred(result):  # answered at once: the common case
            self._answer(result, envelope, call, via)
            return
        # (The dispatcher times the call out at its budget, target.timeout.)
        self.running.add(key, result, via, stream, envelope.route)
        result.addBoth(self._answer, envelope, call, via)

    def _answer(self, outcome: Any, envelope: Envelope, call: ServerCall, via: str | None) -> None:
        if not isinstance(outcome, Failure):
            response = ServerResponse(
                response_id=call.response_id, success=True, node_id=self._node_id, result=outcome
            )
            self._send_answer(envelope.sender, response, via, envelope.route)
            return
        error = failure_exception(outcome)
        by_caller = None
        if isinstance(error, CancelledError):
            key = (envelope.sender, call.response_id)
            by_caller = self.running.cancelled(key)
        if by_caller is not None:
            error = _cancelled(self._node_id, key, by_caller, self._links.stopping)
        elif not isinstance(error, CallError):
            error = RemoteCallError.from_exception(error, self._node_id)
        self.answer_error(envelope.sender, call.response_id, error, envelope.route, via)

    def answer_error(
        self,
        caller: str,
        response_id: str | None,
        error: CallError,
        route: tuple[str, ...] | list[str] | None = None,
        via: str | None = None,
    ) -> None:
        """
        Answer call C{response_id} of C{caller} with C{error} (settled here
        when the caller is this node).

        :param route: the route the call took to this node, for the error's data.
        :param via: the neighbour the call came from, the way back when no
            route to the caller is known.
        """
        node_id = self._node_id
        error.with_data(node_id=node_id)
        if route is not None:
            # The way from the caller to here, in place of the dispatcher's
            # own [node_id] (which knows nothing of the way in).
            held = error.data.get("route")
            if held is None or held == [node_id]:
                error.data["route"] = [*route, node_id]
        if caller == self._node_id:
            if response_id is not None:
                self.pending.resolve(response_id, error=error)
            return
        response = ServerResponse(
            response_id=response_id,
            success=False,
            node_id=self._node_id,
            error=error.message,
            error_code=error.code,
            error_data=error.data,
            trace_path=self._forwarder.hops.answered_here(caller, response_id, error.code),
        )
        self._send_answer(caller, response, via, route)

    def _send_answer(
        self,
        caller: str,
        response: ServerResponse,
        via: str | None,
        route: tuple[str, ...] | list[str] | None = None,
        cut: bool = False,
    ) -> None:
        if self.traces.running:  # a traced call, or one whose path was asked for
            response.trace_path = self.traces.answered(caller, response) or response.trace_path
        if self._e2e is not None and caller not in self._links:
            response.mac = self._e2e.seal_answer(caller, response)
        try:
            self._forwarder.send(caller, response, back_via=via)
        except TypeError as e:  # the result cannot be encoded as JSON
            error = RemoteCallError.named("TypeError", f"result is not JSON-serialisable: {e}")
            self.answer_error(caller, response.response_id, error, route)
        except MessageTooLarge as e:
            if not response.success and not cut:
                # An error too large (an exception's long message): the
                # same error, its words cut short.
                response.error, response.error_data = cut_short(
                    response.error, dict(response.error_data or {}), e.size or 0,
                    "to cross the mesh",
                )  # fmt: skip
                self._send_answer(caller, response, via, route, cut=True)
                return
            error = RemoteCallError.named("ResultTooLarge", str(e))
            self.answer_error(caller, response.response_id, error, route)

    def refuse(
        self,
        envelope: Envelope,
        came_from: str | None,
        why: str,
        overloaded: bool = False,
        lost: bool = False,
    ) -> None:
        """
        A call that cannot travel on is answered with -32002 at once
        (-32005 when this node is C{overloaded}).

        :param lost: whether an answer or a stream item passing through
            that cannot travel on is lost for good (too large, say, rather
            than one of several copies): its call ran, so its caller is
            told -32006 at once, not left to its timeout.
        """
        response_id = envelope.response_id
        if response_id is None:
            return
        if envelope.type != ServerCall.TYPE:
            if lost and came_from is not None and envelope.type in _ANSWERS:
                caller, callee = envelope.to, envelope.sender
                if envelope.type == StreamItem.TYPE and self._forwarded.take(caller, response_id):
                    # The stream's generator stops too.
                    self.streams.send_cancel(callee, response_id, caller, lost=True)
                lost_answer = OutcomeUnknown(
                    f"the answer from {callee} was lost at {self._node_id}: {why}",
                    node_id=self._node_id,
                )
                self.answer_error(caller, response_id, lost_answer)
            return
        error = _refusal(envelope, self._node_id, why, overloaded)
        if came_from is None:
            self.pending.resolve(response_id, error=error)
        else:
            self.answer_error(envelope.sender, response_id, error, via=came_from)

    def dead_end(
        self,
        caller: str,
        response_id: str,
        target: str,
        came_from: str,
        route: tuple[str, ...] = (),
        ending: str | None = None,
    ) -> None:
        """
        None of the copies of flooded call C{response_id} that this node
        passed on got further: it answers -32002 back the way the call
        came (by C{route}), for its whole branch of the flood; -32006 if
        one of them was lost on the way (C{ending} L{LOST}: it may have
        run); if one was dropped at the target (L{DROPPED}: another branch
        ran it), it passes that word on instead.
        """
        if ending == DROPPED:
            self._forwarder.tell_dropped(came_from, caller, response_id)
            return
        error: CallError
        if ending == LOST:
            error = _copy_lost(self._node_id, target)
        else:
            error = NodeUnreachable(
                f"Node {target!r} unreachable from {self._node_id}:"
                " no copy of the call got further",
                node_id=self._node_id,
            )
        way_in = route[:-1] if route[-1:] == (self._node_id,) else route
        self.answer_error(caller, response_id, error, way_in or None, via=came_from)

    def copy_dropped(self, caller: str, response_id: str, reporter: str) -> None:
        """
        Neighbour C{reporter} says the copy of call C{response_id} of
        C{caller} that went its way was dropped at the target, another copy
        having been there (L{relaytx.wire.CopyDropped}): that branch of the
        flood has ended, and the word goes back towards the node that
        flooded the call, which fails it (-32006) once no copy is left out.
        """
        if caller == self._node_id:
            if self.pending.copy_dropped(response_id, reporter):
                destination = self.pending.destination_of(response_id) or ""
                self.pending.resolve(response_id, error=_copy_lost(self._node_id, destination))
            return
        ended = self._forwarded.copy_dropped(caller, response_id, reporter)
        if ended is not None:
            self.dead_end(caller, response_id, *ended)

    # Losses.

    def path_lost(self, peer_id: str) -> None:
        """
        Fail at once (-32006) whatever had left through the link to
        C{peer_id}, and tell each target still in reach to stop that call:
        nobody waits for its answer now, and a call queued there would
        otherwise still run (eight calls queued behind a forwarder that died
        held the target's mailbox, and every later call waited behind them).
        """
        lost = partial(_lost, self._node_id, peer_id)
        gone = self.pending.sent_via(peer_id)
        self.pending.fail_via(peer_id, lost)
        can_reach = self._forwarder.can_reach
        for response_id, destination in gone:
            if destination != peer_id and can_reach(destination):
                self.streams.send_cancel(destination, response_id)
        self.pending.branch_lost(peer_id, lost)
        # Flooded calls (sent via no one neighbour) fail here only when the
        # table is complete or no link is left: in flood mode the table never
        # knows far nodes, so "no route" would fail calls this loss never touched.
        if self.pending and (self._routes_are_complete() or not self._links):
            self._fail_unreachable(lost)
        for caller, response_id, target, came_from in self._forwarded.lost_link(peer_id):
            self.answer_error(caller, response_id, lost(target), via=came_from)
        # Calls passed on for callers behind the lost link: nobody can be
        # answered, so their targets are told to stop (SPEC section 12).
        self.streams.callers_lost(self._forwarded.lost_callers(peer_id))
        self.running.lost_link(peer_id, self._forwarder.can_reach)

    def routes_changed(self) -> None:
        """The routing table changed: fail (-32006) the calls to nodes now out of reach."""
        self._fail_unreachable(partial(_lost, self._node_id, None))

    def _fail_unreachable(self, error: Callable[[str], CallError]) -> None:
        # Only the calls whose way out is gone: one that left by a link still
        # up is on a path that holds as far as this node knows, whatever its
        # table says of the target for a moment (a route withdrawn while the
        # mesh settles), and a loss further on is answered by the node that
        # sees it (SPEC section 11: a route change does not lose the answer
        # of a call that ran). A flooded call (a route gone, with no other to
        # take) waits for its copies too, unless its target is marked
        # unreachable (a failed link: it may be dead).
        links = self._links
        forwarder = self._forwarder
        for destination in self.pending.destinations():
            if not forwarder.can_reach(destination):
                self.pending.fail_destination(
                    destination,
                    error,
                    keep_via=links,
                    keep_flooded=not forwarder.marked(destination),
                )

    def stop(self) -> None:
        """Fail every pending call (-32006), forget the forwarded ones, cancel the running ones."""
        self.pending.fail_all(partial(_stopped, self._node_id))
        self._forwarded.clear()
        self.running.cancel_all()  # and their budget timers; the callers hear -32006


def _caller_of(call: ServerCall, sender: str) -> str:
    """
    :returns: who access rules judge a call from C{sender} as: the sender
        itself, or the caller it relays for, which may only be one of its
        HTTP clients (C{http:...}). A node id named there is not believed:
        a member would act as another node, whose rights it has not.
    """
    claimed = call.caller
    if claimed is not None and claimed.startswith("http:"):
        return claimed
    return sender


def _cancelled(node_id: str, key: tuple[str, Any], by_caller: bool, stopping: bool) -> CallError:
    """
    :returns: the answer to call C{key} (its caller, its response id) whose
        run here was cancelled: by its caller (-32800), or by this node
        stopping or losing the caller (-32006: queued or running, it may
        have done part of its work).
    """
    if by_caller:
        return Cancelled(f"Call cancelled by its caller, {key[0]}")
    why = "stopped" if stopping else "lost the caller"
    return OutcomeUnknown(f"node {node_id} {why} before answering")


def _stream_broken(
    pending: PendingCalls, response: ServerResponse, callee: str | None, node_id: str
) -> CallError | None:
    """
    :returns: the error of a streamed call whose answer counts other items
        than came (items lost on the way, whoever dropped them), else C{None}.
    """
    found = pending.stream_of(response.response_id or "")
    if found is None:
        return None
    consumer, result = found[0], response.result
    if not consumer.count or type(result) is not int or result == consumer.count:
        # (No item: perhaps a method that is not a generator, whose result
        # is its own, an int as any other: a call on /ws/rpc may stream.)
        return None
    return OutcomeUnknown(
        f"stream from {callee} broken: it sent {result} items, {consumer.count} came",
        node_id=node_id,
    )


def _stopped(node_id: str, destination: str) -> CallError:
    """:returns: the error of a call to C{destination} still out when C{node_id} stops."""
    return OutcomeUnknown(
        f"node {node_id} stopped while its call to {destination!r} was out", node_id=node_id
    )


def _lost(node_id: str, peer_id: str | None, destination: str) -> CallError:
    """
    :returns: the error a call that left C{node_id} for C{destination}
        fails with when the link to C{peer_id} goes down (C{None}: when the
        routes to C{destination} do): its outcome is unknown.
    """
    if peer_id is None:
        return OutcomeUnknown(
            f"Node {destination!r} became unreachable after the call left", node_id=node_id
        )
    return OutcomeUnknown(
        f"Path to node {destination!r} lost after the call left:"
        f" link from {node_id} to {peer_id} went down",
        node_id=node_id,
        route=[node_id, peer_id],
    )


def _copy_lost(node_id: str, destination: str) -> CallError:
    """
    :returns: the error of a call flooded to C{destination} whose copies
        all ended, after one was lost on the way: it may have run.
    """
    return OutcomeUnknown(
        f"Path to node {destination!r} lost after the call left: a copy of it was lost"
        f" at {node_id} and the others went no further",
        node_id=node_id,
    )


def _refusal(envelope: Envelope, node_id: str, why: str, overloaded: bool) -> CallError:
    """:returns: the error a call refused by C{node_id} fails with."""
    route = [*envelope.route]
    if route[-1:] != [node_id]:
        route.append(node_id)  # (where it happened ends the route, as everywhere)
    if overloaded:
        return Overloaded(
            f"Overloaded: {node_id} cannot forward more calls: {why}", node_id=node_id, route=route
        )
    return NodeUnreachable(
        f"Node {envelope.to!r} unreachable from {node_id}: {why}", node_id=node_id, route=route
    )
