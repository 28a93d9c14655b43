# -*- test-case-name: tests.test_jsonrpc -*-
"""
JSON-RPC 2.0, transport-free: a request body in, an answer body out.

L{JsonRpcHandler} implements the specification (single requests, batches,
notifications, params by position or by name, the standard error codes) and
leaves what a method name I{means} to L{resolve} and the call itself to an
C{dispatch} function (the node's). The HTTP resource and any other transport
hand it bytes and write back what it returns: C{None} means "nothing to
answer" (every request was a notification), which HTTP turns into 204.

Method names (SPEC section 5):

  - C{SERVER.METHOD}: a server by name, here or wherever the registry knows it;
  - C{NODE_ID/SERVER.METHOD}: that server on that node;
  - C{remote_call} with params C{{"node_id"?, "server_name", "method",
    "args"?, "kwargs"?, "timeout"?}} (an optional member null is as absent);
    without C{node_id} the call is location-transparent, as
    C{SERVER.METHOD}, with a deadline;
  - names starting with C{rpc.} are reserved by JSON-RPC and never resolve.

An answer is sent once every call of the request has finished, notifications
included, so a client that got its answer (or 204) knows they all ran.

Cancelling the Deferred of an answer cancels the calls it waits for (the
client went away); a cancelled call is answered -32800. A transport that
can carry notifications back (C{/ws/rpc}) passes a L{CallBook}: its calls
may stream (SPEC section 12), and each can be cancelled by its request id.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaytx import _json
from relaytx._aio import is_deferred
from relaytx._calls import DEFAULT_CALL_TIMEOUT, MAX_CALL_BUDGET, CallTarget
from relaytx._tracing import CallTrace
from relaytx.errors import (
    CallError,
    Cancelled,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    Overloaded,
    ParseError,
    RemoteCallError,
    cut_short,
)
from relaytx.wire import MAX_FRAME_DEPTH, NODE_ID_RE

#: The most requests one batch may hold; a longer batch is refused whole
#: with -32005, so one body cannot keep the reactor busy for seconds (a
#: 1 MiB batch of C{1}s would otherwise be half a million error answers).
MAX_BATCH = 1000

#: The deepest answer written: a result in it nests one level less, as
#: deep as a result may cross the mesh (inside a frame's data, two levels
#: below a frame a peer reads to MAX_FRAME_DEPTH), so that a result too
#: deep for the mesh is too deep here too, and no answer is deeper than
#: what the node itself reads.
_ANSWER_DEPTH = MAX_FRAME_DEPTH - 1

_NO_ID = object()  # marks a notification: the request had no "id" member


def resolve(method: str, params: Any, caller: str | None = None) -> CallTarget:
    """
    Turn a JSON-RPC method name and its params into a L{CallTarget}.

    :param params: the request's C{params}: a list, a dict, or C{None}.
    :raises MethodNotFound: if the name has none of the accepted forms.
    :raises InvalidParams: if C{params} does not fit the form.
    """
    if method == "remote_call":
        return _remote_call(params, caller)
    node_id: str | None = None
    name = method
    if "/" in method:
        node_id, _, name = method.partition("/")
        if not NODE_ID_RE.fullmatch(node_id):
            raise MethodNotFound(f"Method not found: {method!r} names no valid node id")
    server, dot, method_name = name.rpartition(".")
    if not dot or not server or not method_name or server == "rpc" or server.startswith("rpc."):
        raise MethodNotFound(f"Method not found: {method!r}")
    if params is None:
        return CallTarget(node_id, server, method_name, caller=caller)
    if isinstance(params, list):
        return CallTarget(node_id, server, method_name, tuple(params), caller=caller)
    if isinstance(params, dict):
        return CallTarget(node_id, server, method_name, (), params, caller=caller)
    raise InvalidParams('Invalid params: "params" must be an array or an object')


def _remote_call(params: Any, caller: str | None) -> CallTarget:
    if not isinstance(params, dict):
        raise InvalidParams(
            "Invalid params: remote_call takes an object {node_id?, server_name, method, "
            "args?, kwargs?, timeout?}"
        )
    field = _remote_call_field
    # Absent or null: location-transparent, as SERVER.METHOD (SPEC section 5).
    node_id = field(params, "node_id", str, None)
    if node_id is not None and not NODE_ID_RE.fullmatch(node_id):
        raise InvalidParams(f"Invalid params: {node_id!r} is not a valid node id")
    # Null is the default too; past a day, a day (as every budget is
    # clamped on the way: SPEC section 10).
    timeout = field(params, "timeout", (int, float), None)
    if timeout is None:
        timeout = DEFAULT_CALL_TIMEOUT
    elif not timeout > 0:
        raise InvalidParams("Invalid params: timeout must be a positive number of seconds")
    timeout = min(timeout, MAX_CALL_BUDGET)
    server_name, method = field(params, "server_name", str), field(params, "method", str)
    if not server_name or not method:
        raise InvalidParams("Invalid params: remote_call needs a server_name and a method")
    # Other keys are ignored, as unknown fields are everywhere on the wire.
    return CallTarget(
        node_id,
        server_name,
        method,
        tuple(field(params, "args", list, ())),
        field(params, "kwargs", dict, {}),
        float(timeout),
        caller,
    )


def _remote_call_field(
    params: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = _NO_ID
) -> Any:
    value = params.get(key)
    if value is None:  # absent or null: the default, where there is one
        if default is _NO_ID:
            raise InvalidParams(f"Invalid params: remote_call needs {key!r}")
        return default
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidParams(f"Invalid params: remote_call {key!r} has the wrong type")
    return value


_NOT_STRUCTURED = 'Invalid params: "params" must be an array or an object'


class CallBook:
    """
    What a transport that carries many requests (C{/ws/rpc}) keeps of the
    calls in flight on it: each by request id, to cancel it
    (C{$/cancelRequest}, the connection closing), and who takes the items
    of a call that streams.
    """

    def __init__(self) -> None:
        #: calls answered later, by request id
        self.in_flight: dict[Any, Deferred[Any]] = {}
        #: the others in flight: notifications' calls, and calls whose id a
        #: later request took while they ran (ids should be unique; a
        #: client may not care) -> their request id (C{_NO_ID} for none)
        self._unnamed: dict[Deferred[Any], Any] = {}

    def consumer(self, request_id: Any) -> Any:
        """
        :returns: who takes the items of request C{request_id} if its
            method streams (a L{relaytx._streams.ItemConsumer}), or C{None}.
        """
        return None

    def track(self, request_id: Any, d: Deferred[Any]) -> None:
        """
        Request C{request_id} (L{_NO_ID}: a notification) is answered, or
        its call done, when C{d} fires.
        """
        in_flight = self.in_flight
        if request_id is _NO_ID:
            self._unnamed[d] = request_id
        else:
            displaced = in_flight.get(request_id)
            if displaced is not None:
                self._unnamed[displaced] = request_id
            in_flight[request_id] = d
        d.addBoth(self._done, request_id, d)

    def _done(self, outcome: Any, request_id: Any, d: Deferred[Any]) -> Any:
        if self.in_flight.get(request_id) is d:
            del self.in_flight[request_id]
        elif self._unnamed:
            self._unnamed.pop(d, None)
        return outcome

    def cancel(self, request_id: Any) -> bool:
        """
        Cancel request C{request_id} (it is answered -32800), and any
        other in flight under the same id.

        :returns: whether it was in flight.
        """
        named = [] if request_id is _NO_ID else [self.in_flight.pop(request_id, None)]
        if self._unnamed:
            named += [d for d, i in self._unnamed.items() if i is not _NO_ID and i == request_id]
        for d in named:
            if d is not None:
                self._unnamed.pop(d, None)
                d.cancel()
        return any(d is not None for d in named)

    def cancel_all(self) -> None:
        """Cancel every call in flight, notifications' too (the connection is gone)."""
        while self.in_flight:
            _, d = self.in_flight.popitem()
            d.cancel()
        while self._unnamed:
            d, _ = self._unnamed.popitem()
            d.cancel()


class JsonRpcHandler:
    """
    Answers JSON-RPC 2.0 request bodies by calling C{dispatch}.

    :param dispatch: runs one resolved call; returns its result, or a Deferred
        that fires with it; fails (at once or through the Deferred) with a
        L{CallError} for expected failures.
    :param node_id: recorded in the C{data} of every error answer.
    :param max_batch: the most requests one batch may hold; a longer one is
        answered with a single -32005 error and none of it runs.
    """

    _log = Logger()

    def __init__(
        self,
        dispatch: Callable[[CallTarget], Any],
        node_id: str,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._dispatch = dispatch
        self._node_id = self.node_id = node_id
        self._max_batch = max_batch

    def handle(
        self, body: bytes, caller: str | None = None, trace: CallTrace | None = None
    ) -> Deferred[bytes | None]:
        """
        Answer one request body.

        :param caller: who sent it (see L{CallTarget.caller}).
        :param trace: the trace context the request came with (see
            L{CallTarget.trace}); a batch's calls share its parent, and only
            a single request's path can be reported.

        :returns: a Deferred firing with the answer body, or C{None} when
            there is nothing to answer.
        """
        answer = self.handle_now(body, caller, trace)
        return answer if is_deferred(answer) else succeed(answer)

    def handle_now(
        self,
        body: bytes,
        caller: str | None = None,
        trace: CallTrace | None = None,
        calls: CallBook | None = None,
    ) -> bytes | Deferred[bytes | None] | None:
        """
        As L{handle}, but an answer that is ready at once (every call of the
        request answered at once) is returned as it is, not in a Deferred.

        :param calls: the transport's calls in flight, if it keeps them
            (see L{CallBook}).
        """
        try:
            request = loads_request(body)
        except ValueError as e:
            return self._encode(self._error(ParseError(f"Parse error: {e}"), None))
        if not isinstance(request, list):
            answer = self._one(request, caller, encoded=True, trace=trace, calls=calls)
            if is_deferred(answer):
                return answer  # its callbacks encode the answer
            return self._single_answer(answer)
        if not request:
            return self._encode(self._error(InvalidRequest("Invalid Request: empty batch"), None))
        if len(request) > self._max_batch:
            overloaded = Overloaded(
                f"Overloaded: a batch may hold at most {self._max_batch} requests, "
                f"not {len(request)}",
                limit="max_batch",
            )
            return self._encode(self._error(overloaded, None))
        if trace is not None and trace.hops is not None:
            trace = CallTrace(trace.parent)  # one path report cannot hold a batch's
        answers = [self._one(item, caller, trace=trace, calls=calls) for item in request]
        if not any(is_deferred(a) for a in answers):
            return self._batch_answer(answers)  # type: ignore[arg-type]  # no Deferred among them
        return _gather(answers).addCallback(self._batch_answer)

    def _single_answer(self, answer: dict[str, Any] | None) -> bytes | None:
        return None if answer is None else self._encode(answer)

    def _batch_answer(self, answers: list[dict[str, Any] | None]) -> bytes | None:
        present = [a for a in answers if a is not None]
        if not present:
            return None
        try:
            return _json.dumps(present, _ANSWER_DEPTH + 1)
        except (TypeError, _json.TooDeep):
            return b"[" + b",".join(self._encode(a) for a in present) + b"]"

    def _encode(self, answer: dict[str, Any]) -> bytes:
        try:
            return _json.dumps(answer, _ANSWER_DEPTH)
        except TypeError as e:
            # The method returned something JSON cannot express.
            error = RemoteCallError.named("TypeError", f"result is not JSON-serialisable: {e}")
        except _json.TooDeep as e:
            error = RemoteCallError.named("ResultTooLarge", f"the answer is {e}")
        return _json.dumps(self._error(error, answer["id"]))

    def _one(
        self,
        request: Any,
        caller: str | None,
        encoded: bool = False,
        trace: CallTrace | None = None,
        calls: CallBook | None = None,
    ) -> dict[str, Any] | Deferred[Any] | None:
        """
        The answer to one request object: ready at once, or a Deferred.

        :param encoded: whether an answer that comes later should come as
            its body, ready to send (one callback fewer on the way than
            encoding it afterwards, for the common single request).
        """
        try:
            request_id, method, params = self._validate(request)
        except InvalidRequest as e:
            request_id = request.get("id") if isinstance(request, dict) else None
            if not _valid_id(request_id):
                request_id = None
            return self._error(e, request_id)
        try:
            if params is None:
                if "params" in request:  # a null: no structured value either
                    raise InvalidParams(_NOT_STRUCTURED)
            elif not isinstance(params, list | dict):
                if params is _UNREADABLE_PARAMS:
                    raise InvalidParams(
                        "Invalid params: an integer of more digits than Python reads"
                        f" ({sys.get_int_max_str_digits()})"
                    )
                raise InvalidParams(_NOT_STRUCTURED)
            target = resolve(method, params, caller)
            if trace is not None:
                target.trace = trace
            if calls is not None and request_id is not _NO_ID:
                target.stream = calls.consumer(request_id)
            result = self._dispatch(target)
        except Exception:
            failure = Failure()
            if request_id is _NO_ID:
                self._notified(failure, method)
                return None
            return self._failure(failure, request_id)
        if is_deferred(result):
            if calls is not None:
                calls.track(request_id, result)
            if request_id is _NO_ID:
                return result.addBoth(self._notified, method)
            on_result: Callable[[Any, Any], Any] = self._result
            on_failure: Callable[[Failure, Any], Any] = self._failure
            if encoded:
                on_result, on_failure = self._result_body, self._failure_body
            return result.addCallbacks(
                on_result, on_failure, callbackArgs=(request_id,), errbackArgs=(request_id,)
            )
        if request_id is _NO_ID:
            return None
        return {"jsonrpc": "2.0", "result": result, "id": request_id}

    @staticmethod
    def _validate(request: Any) -> tuple[Any, str, Any]:
        if not isinstance(request, dict):
            raise InvalidRequest("Invalid Request: not a JSON object")
        if request.get("jsonrpc") != "2.0":
            raise InvalidRequest('Invalid Request: "jsonrpc" must be "2.0"')
        method = request.get("method")
        if not isinstance(method, str):
            raise InvalidRequest('Invalid Request: "method" must be a string')
        request_id = request.get("id", _NO_ID)
        if request_id is not _NO_ID and not _valid_id(request_id):
            raise InvalidRequest('Invalid Request: "id" must be a string, a number or null')
        return request_id, method, request.get("params")

    def _result(self, result: Any, request_id: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "result": result, "id": request_id}

    def _failure(self, failure: Failure, request_id: Any) -> dict[str, Any]:
        return self._error(self._call_error(failure), request_id)

    def _result_body(self, result: Any, request_id: Any) -> bytes:
        return self._encode(self._result(result, request_id))

    def _failure_body(self, failure: Failure, request_id: Any) -> bytes:
        return self._encode(self._failure(failure, request_id))

    def _notified(self, outcome: Any, method: str) -> None:
        if isinstance(outcome, Failure):
            error = self._call_error(outcome)
            self._log.debug(
                "notification {method} failed: {error}", method=method, error=error.message
            )

    def _call_error(self, failure: Failure) -> CallError:
        if isinstance(failure.value, CallError):
            return failure.value
        if isinstance(failure.value, CancelledError):
            return Cancelled("Call cancelled")
        self._log.failure("internal error answering a JSON-RPC call", failure)
        return InternalError(f"Internal error: {type(failure.value).__name__}")

    def within(self, answer: bytes, limit: int) -> bytes:
        """
        C{answer} (of L{handle_now}'s), made to fit a transport whose
        messages are at most C{limit} bytes (C{/ws/rpc}): results too large
        for it become -32000 C{ResultTooLarge} errors, the largest of a
        batch first, until it fits. (C{POST /rpc} answers are not bounded.)
        """
        if len(answer) <= limit:
            return answer
        message = loads_request(answer)
        members = message if isinstance(message, list) else [message]
        sizes = sorted(((len(_json.dumps(m)), i) for i, m in enumerate(members)), reverse=True)
        total = len(answer)
        for size, i in sizes:
            member = members[i]
            if "result" in member:
                error = RemoteCallError.named(
                    "ResultTooLarge",
                    f"the answer is {size} bytes, past the {limit}-byte message limit of"
                    " /ws/rpc: stream it, or call by POST /rpc",
                    self._node_id,
                )
                members[i] = self._error(error.with_data(route=[self._node_id]), member["id"])
            else:
                # An error as large (an exception's long message, twice):
                # the same error, its words cut short.
                members[i] = _shortened(member, size)
            total += len(_json.dumps(members[i])) - size
            if total <= limit:
                break
        else:
            # Still too large (many errors, each cut to some 2 KB): each
            # error in a few words, with where it happened; and if even
            # that is too much, the batch is answered with one error.
            members = [m if "result" in m else _terse(m) for m in members]
            answer = _json.dumps(members if isinstance(message, list) else members[0])
            if len(answer) <= limit:
                return answer
            too_large = InternalError(
                f"the answer is {total} bytes, past the {limit}-byte message limit of"
                " /ws/rpc: send fewer requests at once, or call by POST /rpc"
            )
            return _json.dumps(self._error(too_large, None))
        return _json.dumps(members if isinstance(message, list) else members[0])

    def _error(self, error: CallError, request_id: Any) -> dict[str, Any]:
        if "node_id" not in error.data:
            # Where it happened (SPEC section 5): here, before it went
            # anywhere, for errors of the request itself (-32700, -32600...).
            error.with_data(node_id=self._node_id, route=[self._node_id])
        return {"jsonrpc": "2.0", "error": error.to_jsonrpc(), "id": request_id}


def _shortened(member: dict[str, Any], size: int) -> dict[str, Any]:
    """:returns: the error answer C{member} (C{size} bytes), its texts cut short."""
    error = dict(member["error"])
    data = error.get("data")
    error["message"], short = cut_short(
        error.get("message"), data if type(data) is dict else {}, size, "for /ws/rpc"
    )
    if type(data) is dict:
        error["data"] = short
    return {**member, "error": error}


def _terse(member: dict[str, Any]) -> dict[str, Any]:
    """:returns: the error answer C{member} in a few words, with where it happened."""
    error = member["error"]
    data = error.get("data")
    short = {"code": error.get("code"), "message": str(error.get("message"))[:100]}
    if type(data) is dict:
        short["data"] = {key: data[key] for key in ("node_id", "type") if key in data}
    return {**member, "error": short}


def _gather(items: list[Any]) -> Deferred[list[Any]]:
    """
    C{items} with each Deferred among them replaced by its result, once all
    have fired; the first failure fails the whole. As gatherResults, without
    wrapping the ready items in Deferreds and at about half its cost per
    item, which a batch of remote calls pays for every call.
    """
    results = list(items)
    waiting = [i for i, item in enumerate(results) if is_deferred(item)]

    def cancel(_: Deferred[list[Any]]) -> None:
        # The client went away: cancel the calls it waits for, last first.
        # A batch's later calls to a server queue behind its earlier ones,
        # and the running call's end starts the next in the mailbox at once:
        # cancelled first, it would start a call the client no longer wants.
        # (One that fired may wait on a call tried again elsewhere: its
        # cancel() passes on to that.)
        for index in reversed(waiting):
            item = results[index]
            if is_deferred(item):
                item.cancel()

    done: Deferred[list[Any]] = Deferred(cancel)
    left = len(waiting)

    def settle(outcome: Any, index: int) -> None:
        nonlocal left
        if done.called:
            return
        if isinstance(outcome, Failure):
            done.errback(outcome)
            return
        results[index] = outcome
        left -= 1
        if not left:
            done.callback(results)

    for index in waiting:
        results[index].addBoth(settle, index)
    if not waiting:
        done.callback(results)
    return done


#: An integer too long for Python to read (past C{sys.get_int_max_str_digits}):
#: not a valid id (-32600), and not a value any method can use.
_UNREADABLE_INT = object()

#: In place of C{params} that hold such an integer: -32602.
_UNREADABLE_PARAMS = object()

#: L{_past_a_double}'s answer for a body that is not JSON.
_NOT_JSON = object()


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: no double holds it, and JSON cannot write it back
        raise ValueError(f"{text} is past a double's range")
    return value


def loads_request(body: bytes) -> Any:
    """
    Read a JSON-RPC message as its ids and params must be read: an integer
    wider than 64 bits stays an integer (the fast parser reads it as a
    float), so that an id is echoed, or a request cancelled, by the id as
    it came, and params reach the method as sent.

    :raises ValueError: if C{body} is not JSON, or is JSON past what a node
        reads (nested deeper than 1024, a number past a double's range):
        its message says which.
    """
    try:
        request = _json.loads(body)
    except (_json.JSONDecodeError, UnicodeDecodeError) as e:
        request = _past_a_double(body, e)
        if request is _NOT_JSON:
            raise ValueError(_why_refused(e)) from None
        return request
    if _json.may_hold_wide_ints(body):
        # Read again, exactly.
        with contextlib.suppress(RecursionError):  # (deep, not wide)
            request = _exact_loads(body)
    return request


def _exact_loads(body: bytes | str) -> Any:
    """
    The standard library's reading of C{body}: integers of any size stay
    integers, but for those past what Python reads: such an id becomes
    L{_UNREADABLE_INT}, such C{params} L{_UNREADABLE_PARAMS}.
    """
    unreadable = False

    def exact_int(text: str) -> Any:
        nonlocal unreadable
        try:
            return int(text)
        except ValueError:
            unreadable = True
            return _UNREADABLE_INT

    message = _json.loads_exact(body, parse_int=exact_int, parse_float=_finite_float)
    if unreadable:
        for request in message if isinstance(message, list) else (message,):
            if isinstance(request, dict) and _holds_unreadable(request.get("params")):
                request["params"] = _UNREADABLE_PARAMS
    return message


def _holds_unreadable(value: Any) -> bool:
    stack = [value]
    while stack:
        value = stack.pop()
        if value is _UNREADABLE_INT:
            return True
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _why_refused(error: ValueError) -> str:
    """:returns: why the fast parser's C{error} refused a body, in a few words."""
    said = str(error)
    if "depth limit exceeded" in said:
        return "JSON nested more than 1024 deep"
    if "number is infinity" in said:
        return "a number past a double's range"
    return "invalid JSON"


def _past_a_double(body: bytes, error: ValueError) -> Any:
    """
    The fast parser refused C{body}: if only for an integer past a double's
    range (310 digits or more, valid JSON) or for an escaped lone surrogate
    (valid JSON too, see L{_json.loads_surrogates}), C{body} read exactly;
    else L{_NOT_JSON} (a float past that range too).
    """
    if _json.escaped_surrogate(error):
        try:
            return _exact_loads(body.decode())  # (raw surrogates, invalid UTF-8, stay refused)
        except (ValueError, RecursionError):
            return _NOT_JSON
    if "number is infinity" not in str(error):
        return _NOT_JSON
    try:
        return _exact_loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))
