# -*- test-case-name: tests.test_errors -*-
"""
Every way a relaytx call or link can fail, and the one table that maps call
failures onto JSON-RPC error codes (SPEC section 5).

Two families:

  - L{CallError} and its subclasses describe why one call failed. Each carries
    its JSON-RPC C{code}, a one-line C{message} and a C{data} mapping
    (C{node_id} of the node where it happened, C{route}, and for
    L{RemoteCallError} the exception's C{type} and C{message}). They cross the
    wire and HTTP as error objects; never as tracebacks.
  - L{ProtocolViolation} and its subclasses describe bad input on a peer link.
    They are counted, then the frame is dropped or the link is closed; they
    never become JSON-RPC answers.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.python.failure import Failure


class RelayError(Exception):
    """
    The root of every exception relaytx raises on purpose.
    """


class StartupError(RelayError):
    """
    The node cannot start: a port in use, an app that cannot be loaded, an
    app whose C{setup} failed. The message is one line meant for an operator.
    """


class CallError(RelayError):
    """
    One call failed; C{code} is its JSON-RPC error code.

    @ivar message: a one-line human description.
    @ivar data: JSON-serialisable details (C{node_id}, C{route}, ...).
    @ivar hearsay: the word of a node on the call's way that the callee did
        not vouch for, where members are not trusted (PKI mode): its code
        says what that node says (-32002: the call did not run), which is
        no proof (a member may have dropped the answer of a call that ran).
    """

    code: ClassVar[int] = -32603
    default_message: ClassVar[str] = "Internal error"
    hearsay = False

    def __init__(self, message: str | None = None, **data: Any) -> None:
        self.message = message if message is not None else self.default_message
        self.data: dict[str, Any] = {k: v for k, v in data.items() if v is not None}
        super().__init__(self.message)

    def with_data(self, **data: Any) -> CallError:
        """
        Add details that only an outer layer knows (the node id, the route)
        without overwriting what an inner layer already recorded.

        :returns: C{self}, for chaining.
        """
        for key, value in data.items():
            if value is not None:
                self.data.setdefault(key, value)
        return self

    def to_jsonrpc(self) -> dict[str, Any]:
        """
        :returns: the JSON-RPC 2.0 error object for this failure.
        """
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data:
            error["data"] = self.data
        return error

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code})"


# JSON-RPC 2.0's own codes, owned by the request parser.


class ParseError(CallError):
    """The body is not valid JSON."""

    code = -32700
    default_message = "Parse error"


class InvalidRequest(CallError):
    """The JSON is not a valid JSON-RPC 2.0 request object."""

    code = -32600
    default_message = "Invalid Request"


class MethodNotFound(CallError):
    """An unknown method, local server, or unexposed method."""

    code = -32601
    default_message = "Method not found"


class InvalidParams(CallError):
    """The params do not fit the method: wrong shape, arity or keywords."""

    code = -32602
    default_message = "Invalid params"


class InternalError(CallError):
    """The node itself failed (a bug, not the server method's fault)."""

    code = -32603
    default_message = "Internal error"


# relaytx's call outcomes (SPEC section 5, -32000 to -32006).


class RemoteCallError(CallError):
    """
    The server method raised. C{data} carries the exception's C{type} and
    C{message}; the traceback stays in the hosting node's log.
    """

    code = -32000
    default_message = "Server error"

    @classmethod
    def from_exception(cls, exc: BaseException, node_id: str | None = None) -> RemoteCallError:
        """
        :returns: the error describing C{exc} raised by a server method.
        """
        try:
            text = str(exc)
        except Exception as e:  # a method's own exception class, broken
            text = f"(its message could not be read: {type(e).__name__})"
        return cls.named(type(exc).__name__, text, node_id)

    @classmethod
    def named(cls, name: str, text: str, node_id: str | None = None) -> RemoteCallError:
        """
        :returns: the error of an exception of type C{name} saying C{text}
            (raised by the method, or by the node on its behalf, such as a
            result that JSON cannot express).
        """
        error = cls(f"{name}: {text}" if text else name, node_id=node_id, type=name)
        error.data["message"] = text
        return error


class CallTimeout(CallError, DeferTimeoutError):
    """The caller's deadline passed before an answer arrived."""

    code = -32001
    default_message = "Call timed out"


class TimedOutHere(CallTimeout):
    """
    A call's own deadline passed where it runs: queued in its server's
    mailbox, or running (not a call that its method made, which timed out).
    """


class NodeUnreachable(CallError):
    """
    The call certainly did not run: no route to the target, TTL exceeded,
    or the path was lost before the call could have reached the target.
    """

    code = -32002
    default_message = "Target node unreachable"


class OutcomeUnknown(CallError):
    """
    The call left the caller, then its path or its target was lost before
    an answer came back: it may or may not have run. (L{NodeUnreachable}
    means it certainly did not.)
    """

    code = -32006
    default_message = "Outcome unknown: the path or the target was lost after the call left"


class NoSuchServer(CallError):
    """The target node hosts no server of that name."""

    code = -32003
    default_message = "Server not found"


class NoSuchMethod(CallError):
    """The server exists on the target but exposes no such method."""

    code = -32003
    default_message = "Method not found on server"


class AccessDenied(CallError):
    """The target's access rules refuse this caller."""

    code = -32004
    default_message = "Access denied"


class Overloaded(CallError):
    """A limit was hit; the caller should retry later."""

    code = -32005
    default_message = "Overloaded, retry later"


class LinkBackedUp(Overloaded):
    """
    The link a call would leave by holds as much unsent output as it may
    (its peer, or the path, is slower than the calls sent to it): another
    instance, or a later try, may fare better.
    """


class Cancelled(CallError):
    """
    The call was cancelled (SPEC section 12): by its caller, by
    C{$/cancelRequest} on C{/ws/rpc}, or because its client went away. The
    code is LSP's.
    """

    code = -32800
    default_message = "Call cancelled"


_BY_CODE: dict[int, type[CallError]] = {
    cls.code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        RemoteCallError,
        CallTimeout,
        NodeUnreachable,
        NoSuchServer,
        AccessDenied,
        Overloaded,
        OutcomeUnknown,
        Cancelled,
    )
}

#: The codes of a node on a call's path (not its callee) that mean that
#: the path was lost, before the call could have reached the target
#: (L{NodeUnreachable}) or after (L{OutcomeUnknown}). Any other answer must
#: come from the callee itself.
PATH_LOST_CODES = frozenset({NodeUnreachable.code, OutcomeUnknown.code})

#: The codes a node on a call's path may answer it with: the path lost
#: (L{PATH_LOST_CODES}), or the call refused there for a limit of that
#: node's (L{Overloaded}: it cannot forward or relay more calls). Neither
#: can pass for the callee's outcome; a node on the path could as well
#: drop the call.
HOP_CODES = PATH_LOST_CODES | {Overloaded.code}


def failure_exception(failure: Failure) -> BaseException:
    """
    The exception a L{Failure} wraps. Twisted types C{Failure.value} as
    optional, but a Failure always holds one: its constructor raises
    C{NoCurrentExceptionError} when it is given none.

    :returns: C{failure.value}.
    :raises TypeError: if C{failure} holds no exception after all.
    """
    error = failure.value
    if error is None:
        raise TypeError(f"{failure!r} holds no exception")
    return error


#: How a L{NoSuchMethod}'s message starts, as a node words it.
_NO_METHOD = "Method not found"


def error_for_code(code: int, message: str, data: dict[str, Any] | None = None) -> CallError:
    """
    Rebuild a L{CallError} from a code that crossed the wire; an unknown code
    becomes a L{RemoteCallError} that keeps the code.

    :returns: an exception whose C{code} is C{code}.
    """
    cls = _BY_CODE.get(code)
    if cls is NoSuchServer and type(message) is str and message.startswith(_NO_METHOD):
        cls = NoSuchMethod  # (-32003 is both: the message tells which)
    error = (cls or RemoteCallError)(message)
    error.data.update(data or {})
    if cls is None:
        error.code = code  # type: ignore[misc]  # keep a foreign code as it came
    return error


#: The characters of an error's message (and of each text of its data)
#: kept when its answer is too large for the way back (L{cut_short}).
SHORT_TEXT = 1000


def cut_short(
    message: Any, data: dict[str, Any], size: int, why: str
) -> tuple[Any, dict[str, Any]]:
    """
    An error too large for the way back (C{size} bytes), its words cut
    short: the same code and type, each long text kept to L{SHORT_TEXT}
    characters and saying so (C{why}: "for /ws/rpc", say); data of some
    other shape, still large, keeps only where it happened and the type.

    :returns: the message and data to send instead.
    """
    from relaytx import _json

    def cut(text: Any) -> Any:
        if type(text) is not str or len(text) <= SHORT_TEXT:
            return text
        return f"{text[:SHORT_TEXT]}... ({size} bytes in all, cut {why})"

    data = {key: cut(value) for key, value in data.items()}
    # Texts are short now (however many bytes their characters take):
    # what else is still large is data of some other shape.
    rest = {key: value for key, value in data.items() if type(value) is not str}
    if len(_json.dumps(rest)) > 4 * SHORT_TEXT:
        data = {key: data[key] for key in ("node_id", "route", "type") if key in data}
    return cut(message), data


class MessageTooLarge(RelayError):
    """
    A message this node wanted to send exceeds the peer message limit.

    @ivar size: its size in bytes, when known.
    """

    def __init__(self, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.size = size


class TooManyDialers(ValueError, RelayError):
    """A peer to dial would pass C{limits.max_dialers}."""


# Link-level violations: counted and dropped, or the link is closed.


class ProtocolViolation(RelayError):
    """
    A peer sent something that breaks the wire protocol.

    @ivar reason: a short metric label (C{"not_json"}, C{"bad_field"}, ...).
    """

    reason: str = "protocol_violation"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class MalformedMessage(ProtocolViolation):
    """A frame that is not a well-formed envelope (or payload)."""

    reason = "malformed"


class UnknownMessageType(ProtocolViolation):
    """A well-formed envelope whose C{type} this node has no handler for."""

    reason = "unknown_type"
