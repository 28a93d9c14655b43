# -*- test-case-name: tests.test_original -*-
"""
L{OriginalRelay}: calls from other nodes for a neighbour of the original
design, made by this node as its own.

A node of the original design takes frames only from its direct peers (it
drops one whose C{from} is any other node) and forwards nothing. So a call
another node sends it through this node would die at its deadline; this
node, its last relaytx hop, calls it instead, as itself, and relays the
answer back along the call's path, as the neighbour's own (the last hop
vouches for a node that cannot vouch for itself: the same answer, had the
neighbour taken the call, would have passed through this node unchanged).
Nothing changes in what this node advertises: the neighbour stays
reachable through it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from relaytx._calls import DEFAULT_CALL_TIMEOUT, CallTarget
from relaytx._forwarding import Forwarder
from relaytx._meshcalls import MeshCalls
from relaytx._metrics import NodeMetrics
from relaytx._tracing import TRACE_PATH
from relaytx.errors import (
    PATH_LOST_CODES,
    CallError,
    CallTimeout,
    MalformedMessage,
    MessageTooLarge,
    NodeUnreachable,
    Overloaded,
    RemoteCallError,
    failure_exception,
)
from relaytx.wire import DEFAULT_TTL, Envelope, ServerCall, ServerResponse, new_id, rfc3339


class OriginalRelay:
    """
    :param calls: the node's calls across the mesh: relayed calls are this
        node's own, with their deadlines and lost links.
    :param max_pending: the node's C{max_pending_calls}: relayed calls may
        take half of it, the calls of one neighbour a quarter (SPEC section
        10: forwarded calls are bounded in total and per neighbour), so that
        no neighbour fills the pool the node's own callers draw on.
    """

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        metrics: NodeMetrics,
        forwarder: Forwarder,
        calls: MeshCalls,
        max_pending: int = 10_000,
    ) -> None:
        self._node_id = node_id
        self._clock = clock
        self._metrics = metrics
        self._forwarder = forwarder
        self._calls = calls
        self._max_total = max(1, max_pending // 2)
        self._max_per_neighbour = max(1, max_pending // 4)
        #: relayed calls in flight, by the neighbour they came from
        self._relaying: dict[str, int] = {}
        self._total = 0

    def relay(self, envelope: Envelope, came_from: str) -> None:
        """
        Call C{envelope.to}, an original-design neighbour, for the node that
        sent C{envelope} (a C{server_call}, which arrived from neighbour
        C{came_from}), and relay the answer: such a node drops frames from
        anyone but its direct peers.

        The neighbour's answer (success or error) goes back as the
        neighbour's own, as if this node had forwarded it; this node's own
        failures go back as its own reports: -32005 when it has too many
        calls pending to make one more (as a forwarder would say), -32002
        when the call never left otherwise (no link), -32006 when the link
        was lost after it left. At its deadline nothing is sent: the caller's own
        deadline, no later than this one, has passed too.
        """
        caller, original, response_id = envelope.sender, envelope.to, envelope.response_id
        try:
            call = ServerCall.from_data(envelope.data)
        except (MalformedMessage, TypeError, ValueError):
            self._metrics.drop("bad_field")  # as its destination would have
            return
        if response_id is None:
            return  # nobody could be answered: such a call is not worth making
        relaying = self._relaying.get(came_from, 0)
        if relaying >= self._max_per_neighbour or self._total >= self._max_total:
            self._metrics.drop("overloaded")
            error = Overloaded(
                f"Overloaded: {self._node_id} cannot relay more calls to {original!r}:"
                f" {relaying} from {came_from}, {self._total} in all, in flight",
                node_id=self._node_id,
            )
            self._calls.answer_error(caller, response_id, error, via=came_from)
            return
        self._relaying[came_from] = relaying + 1
        self._total += 1
        spec = call.call
        target = CallTarget(
            original, spec.server_name, spec.method, spec.args, dict(spec.kwargs),
            spec.timeout if spec.timeout else DEFAULT_CALL_TIMEOUT,
            caller=caller, via=came_from,
        )  # fmt: skip
        d = self._calls.call(target)
        d.addBoth(self._relayed, came_from)
        # A call asking for its path gets it, the neighbour its last hop.
        way = None
        if TRACE_PATH in envelope.data:
            route = envelope.route
            if route[-1:] != (self._node_id,):
                route = (*route, self._node_id)
            way = (*route, original)
        d.addCallbacks(
            self._relay_result,
            self._relay_failure,
            callbackArgs=(caller, original, response_id, came_from, way),
            errbackArgs=(caller, original, response_id, came_from, way),
        )

    def _relayed(self, outcome: Any, came_from: str) -> Any:
        left = self._relaying.pop(came_from, 1) - 1
        if left:
            self._relaying[came_from] = left
        self._total -= 1
        return outcome

    def _relay_result(
        self,
        result: Any,
        caller: str,
        original: str,
        response_id: str,
        came_from: str,
        way: tuple[str, ...] | None = None,
    ) -> None:
        response = ServerResponse(response_id, True, original, result)
        self._relay_answer(caller, original, response, came_from, way)

    def _relay_failure(
        self,
        failure: Failure,
        caller: str,
        original: str,
        response_id: str,
        came_from: str,
        way: tuple[str, ...] | None = None,
    ) -> None:
        error = failure_exception(failure)
        if isinstance(error, CallTimeout):
            return
        if isinstance(error, Overloaded):
            # This node's own limit (its pending calls), as a relaytx hop
            # that cannot forward more answers: -32005, retry later.
            error = Overloaded(
                f"Overloaded: {self._node_id} cannot relay more calls to {original!r}: {error}",
                node_id=self._node_id,
            )
            self._calls.answer_error(caller, response_id, error, via=came_from)
            return
        if not isinstance(error, CallError):
            error = NodeUnreachable(
                f"Node {original!r} not called from {self._node_id}: {error}",
                node_id=self._node_id,
            )
        if error.code in PATH_LOST_CODES:  # this node's own report
            self._calls.answer_error(caller, response_id, error, via=came_from)
            return
        response = ServerResponse(
            response_id, False, original, error=error.message, error_code=error.code,
            error_data=error.data,
        )  # fmt: skip
        self._relay_answer(caller, original, response, came_from, way)

    def _relay_answer(
        self,
        caller: str,
        original: str,
        response: ServerResponse,
        came_from: str,
        way: tuple[str, ...] | None = None,
    ) -> None:
        # As the original's answer would look had this node forwarded it.
        if way is not None:
            # (Its path, with no time of the neighbour's own: this node's is
            # added as it passes the answer on, as a forwarder's.)
            response.trace_path = {"route": list(way), "ms": {}}
        envelope = Envelope(
            ServerResponse.TYPE, original, caller, response.to_data(), new_id(),
            rfc3339(self._clock.seconds()), (original, self._node_id), DEFAULT_TTL - 1,
        )  # fmt: skip
        if way is not None:
            self._forwarder.hops.answer_passing(envelope)
        try:
            self._forwarder.forward(envelope, came_from=original, back_via=came_from)
        except (TypeError, MessageTooLarge) as e:
            error = RemoteCallError.named(type(e).__name__, f"the answer cannot be relayed: {e}")
            self._calls.answer_error(caller, response.response_id, error, via=came_from)
