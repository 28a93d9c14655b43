"""
Tests for L{relaytx.errors}: the exception hierarchy and its JSON-RPC codes.
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from relaytx import errors
from relaytx.errors import (
    AccessDenied,
    CallError,
    CallTimeout,
    Cancelled,
    InternalError,
    InvalidParams,
    InvalidRequest,
    LinkBackedUp,
    MalformedMessage,
    MethodNotFound,
    NodeUnreachable,
    NoSuchMethod,
    NoSuchServer,
    OutcomeUnknown,
    Overloaded,
    ParseError,
    ProtocolViolation,
    RelayError,
    RemoteCallError,
    StartupError,
    TimedOutHere,
    UnknownMessageType,
    error_for_code,
)

# SPEC section 5, plus the JSON-RPC 2.0 codes the request parser owns.
SPEC_CODES: dict[type[CallError], int] = {
    ParseError: -32700,
    InvalidRequest: -32600,
    MethodNotFound: -32601,
    InvalidParams: -32602,
    InternalError: -32603,
    RemoteCallError: -32000,
    CallTimeout: -32001,
    TimedOutHere: -32001,
    NodeUnreachable: -32002,
    NoSuchServer: -32003,
    NoSuchMethod: -32003,
    AccessDenied: -32004,
    Overloaded: -32005,
    LinkBackedUp: -32005,
    OutcomeUnknown: -32006,
    Cancelled: -32800,
}


class CodeTableTests(SynchronousTestCase):
    """
    Every call error carries the code SPEC section 5 gives it.
    """

    def test_codes(self) -> None:
        """Each call error class has its SPEC code, on the class and on instances."""
        for cls, code in SPEC_CODES.items():
            with self.subTest(cls=cls.__name__):
                self.assertEqual(cls.code, code)
                self.assertEqual(cls().code, code)

    def test_default_messages(self) -> None:
        """Each call error has its own non-empty default message, used when none is given."""
        for cls in SPEC_CODES:
            with self.subTest(cls=cls.__name__):
                error = cls()
                self.assertIsInstance(error.message, str)
                self.assertTrue(error.message)
                self.assertEqual(error.message, cls.default_message)
                self.assertEqual(str(error), error.message)

    def test_jsonrpc_standard_messages(self) -> None:
        """The JSON-RPC 2.0 codes default to the messages its specification uses."""
        self.assertEqual(ParseError().message, "Parse error")
        self.assertEqual(InvalidRequest().message, "Invalid Request")
        self.assertEqual(MethodNotFound().message, "Method not found")
        self.assertEqual(InvalidParams().message, "Invalid params")
        self.assertEqual(InternalError().message, "Internal error")

    def test_every_call_error_is_listed(self) -> None:
        """Every CallError subclass defined in the module appears in the SPEC table above."""
        defined = {
            value
            for value in vars(errors).values()
            if isinstance(value, type) and issubclass(value, CallError) and value is not CallError
        }
        self.assertEqual(defined, set(SPEC_CODES))

    def test_hierarchy(self) -> None:
        """Call errors and protocol violations are separate families under RelayError."""
        for cls in SPEC_CODES:
            self.assertTrue(issubclass(cls, CallError))
        self.assertTrue(issubclass(CallError, RelayError))
        self.assertTrue(issubclass(StartupError, RelayError))
        self.assertTrue(issubclass(ProtocolViolation, RelayError))
        for cls in (MalformedMessage, UnknownMessageType):
            self.assertTrue(issubclass(cls, ProtocolViolation))
            self.assertFalse(issubclass(cls, CallError))
        self.assertFalse(issubclass(StartupError, CallError))

    def test_repr(self) -> None:
        """The repr names the class, the message and the code."""
        self.assertEqual(repr(NodeUnreachable("gone")), "NodeUnreachable('gone', code=-32002)")


class CallErrorDataTests(SynchronousTestCase):
    """
    The message and data of a call error, and how layers add to them.
    """

    def test_message_and_data(self) -> None:
        """The constructor keeps the message and the keyword details as data."""
        error = NodeUnreachable("no route to n3", node_id="n1", route=["n1", "n2"])
        self.assertEqual(error.message, "no route to n3")
        self.assertEqual(str(error), "no route to n3")
        self.assertEqual(error.data, {"node_id": "n1", "route": ["n1", "n2"]})

    def test_none_data_dropped(self) -> None:
        """Details whose value is None are not recorded."""
        error = NoSuchServer("x", node_id=None, route=["n1"])
        self.assertEqual(error.data, {"route": ["n1"]})

    def test_with_data_adds(self) -> None:
        """with_data records details the error did not have and returns the same error."""
        error = CallTimeout()
        self.assertIs(error.with_data(node_id="n1", route=["n1"]), error)
        self.assertEqual(error.data, {"node_id": "n1", "route": ["n1"]})

    def test_with_data_does_not_overwrite(self) -> None:
        """with_data keeps what an inner layer recorded and only fills the gaps."""
        error = RemoteCallError("boom", node_id="inner", route=["a", "b"])
        error.with_data(node_id="outer", route=["outer"], extra=1)
        self.assertEqual(error.data, {"node_id": "inner", "route": ["a", "b"], "extra": 1})

    def test_with_data_ignores_none(self) -> None:
        """with_data does not record a None value."""
        error = Overloaded()
        error.with_data(node_id=None)
        self.assertEqual(error.data, {})
        self.assertNotIn("data", error.to_jsonrpc())

    def test_to_jsonrpc_without_data(self) -> None:
        """An error with no details becomes an error object with only code and message."""
        self.assertEqual(AccessDenied("nope").to_jsonrpc(), {"code": -32004, "message": "nope"})

    def test_to_jsonrpc_with_data(self) -> None:
        """An error with details carries them in the error object's data member."""
        error = Overloaded("slow down", node_id="n1", route=["n1"])
        self.assertEqual(
            error.to_jsonrpc(),
            {
                "code": -32005,
                "message": "slow down",
                "data": {"node_id": "n1", "route": ["n1"]},
            },
        )

    def test_to_jsonrpc_is_json(self) -> None:
        """The error object survives a JSON round trip unchanged."""
        error = NodeUnreachable(node_id="n1", route=["n1", "n2"])
        error_object = error.to_jsonrpc()
        self.assertEqual(json.loads(json.dumps(error_object)), error_object)


class RemoteCallErrorTests(SynchronousTestCase):
    """
    L{RemoteCallError.from_exception} describes what a server method raised.
    """

    def raised(self) -> ValueError:
        """
        :returns: a ValueError that was really raised, so it has a traceback.
        """
        try:
            raise ValueError("bad input")
        except ValueError as e:
            return e

    def test_from_exception(self) -> None:
        """The message names the type and the text, and data holds both separately."""
        error = RemoteCallError.from_exception(self.raised(), node_id="n1")
        self.assertIsInstance(error, RemoteCallError)
        self.assertEqual(error.code, -32000)
        self.assertEqual(error.message, "ValueError: bad input")
        self.assertEqual(
            error.data, {"node_id": "n1", "type": "ValueError", "message": "bad input"}
        )

    def test_unreadable_message(self) -> None:
        """An exception whose C{str} fails is still named, by its own type."""

        class Garbled(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no text")

        error = RemoteCallError.from_exception(Garbled(), node_id="n1")
        self.assertEqual((error.code, error.data["type"]), (-32000, "Garbled"))
        self.assertIn("could not be read: RuntimeError", error.data["message"])

    def test_no_traceback(self) -> None:
        """Nothing of the traceback reaches the error object sent over the wire."""
        exc = self.raised()
        self.assertIsNotNone(exc.__traceback__)
        error_object = RemoteCallError.from_exception(exc).to_jsonrpc()
        text = json.dumps(error_object)
        self.assertNotIn("Traceback", text)
        self.assertNotIn(__file__, text)
        self.assertNotIn("line ", text)
        self.assertEqual(set(error_object["data"]), {"type", "message"})

    def test_without_node_id(self) -> None:
        """Without a node id, data holds only the type and message."""
        error = RemoteCallError.from_exception(KeyError("k"))
        self.assertEqual(error.data, {"type": "KeyError", "message": "'k'"})

    def test_empty_message(self) -> None:
        """An exception without text is described by its type name alone."""
        error = RemoteCallError.from_exception(ZeroDivisionError())
        self.assertEqual(error.message, "ZeroDivisionError")
        self.assertEqual(error.data, {"type": "ZeroDivisionError", "message": ""})


class ErrorForCodeTests(SynchronousTestCase):
    """
    L{error_for_code} rebuilds errors from codes that crossed the wire.
    """

    def test_known_codes(self) -> None:
        """Every SPEC code comes back as an error of the class owning it."""
        for cls, code in SPEC_CODES.items():
            with self.subTest(code=code):
                error = error_for_code(code, "remote said so")
                self.assertEqual(error.code, code)
                self.assertEqual(error.message, "remote said so")
                self.assertIsInstance(error, CallError)
                # -32003 and -32001 are shared: they come back as NoSuchServer
                # and CallTimeout (a deadline passed where a call runs is one
                # of the caller's timeouts there).
                shared = {
                    NoSuchMethod: NoSuchServer,
                    TimedOutHere: CallTimeout,
                    LinkBackedUp: Overloaded,
                }
                expected = shared.get(cls, cls)
                self.assertIs(type(error), expected)

    def test_no_such_method(self) -> None:
        """
        -32003 is both a missing server and a missing method: the message,
        as a node words it, tells which (the caller counts each by name).
        """
        method = error_for_code(-32003, "Method not found: probe.nope on t")
        self.assertIs(type(method), NoSuchMethod)
        server = error_for_code(-32003, "Server not found: 'probe' on t")
        self.assertIs(type(server), NoSuchServer)
        self.assertIs(type(error_for_code(-32003, "server probe not found")), NoSuchServer)

    def test_data_copied(self) -> None:
        """The data is copied into the error, so later changes to the dict do not leak in."""
        data = {"node_id": "n3", "route": ["n3", "n2"]}
        error = error_for_code(-32002, "unreachable", data)
        data["node_id"] = "changed"
        self.assertEqual(error.data, {"node_id": "n3", "route": ["n3", "n2"]})
        self.assertEqual(error.to_jsonrpc()["data"], error.data)

    def test_no_data(self) -> None:
        """Without data the rebuilt error has none."""
        self.assertEqual(error_for_code(-32001, "late").data, {})

    def test_unknown_code(self) -> None:
        """An unknown code becomes a RemoteCallError that keeps that code."""
        error = error_for_code(-31999, "custom", {"x": 1})
        self.assertIsInstance(error, RemoteCallError)
        self.assertEqual(error.code, -31999)
        self.assertEqual(
            error.to_jsonrpc(), {"code": -31999, "message": "custom", "data": {"x": 1}}
        )

    def test_unknown_code_does_not_leak(self) -> None:
        """Keeping a foreign code changes that one error, not RemoteCallError's class code."""
        error_for_code(12345, "custom")
        self.assertEqual(RemoteCallError.code, -32000)
        self.assertEqual(RemoteCallError("x").code, -32000)
        self.assertEqual(error_for_code(-32000, "y").code, -32000)


class PathLostCodesTests(SynchronousTestCase):
    """
    The two codes a node on a call's path may report: -32002 (the call
    certainly did not run) and -32006 (it may have).
    """

    def test_codes(self) -> None:
        """PATH_LOST_CODES holds -32002 and -32006 and nothing else."""
        self.assertEqual(errors.PATH_LOST_CODES, {-32002, -32006})

    def test_outcome_unknown_rebuilt(self) -> None:
        """-32006 from the wire comes back as OutcomeUnknown, exported from relaytx."""
        import relaytx

        error = error_for_code(-32006, "lost", {"node_id": "n2"})
        self.assertIs(type(error), OutcomeUnknown)
        self.assertIs(relaytx.OutcomeUnknown, OutcomeUnknown)
        self.assertIn("OutcomeUnknown", relaytx.__all__)
        self.assertNotIsInstance(error, NodeUnreachable)


class CallTimeoutTests(SynchronousTestCase):
    """
    L{CallTimeout} is also Twisted's own timeout error.
    """

    def test_is_defer_timeout(self) -> None:
        """A CallTimeout is a twisted.internet.defer.TimeoutError and a CallError."""
        error = CallTimeout("r1 timed out")
        self.assertIsInstance(error, defer.TimeoutError)
        self.assertIsInstance(error, CallError)
        self.assertEqual(error.code, -32001)
        self.assertEqual(str(error), "r1 timed out")

    def test_failure_result(self) -> None:
        """A Deferred failed with CallTimeout matches failureResultOf(d, defer.TimeoutError)."""
        d: defer.Deferred[None] = defer.fail(CallTimeout(node_id="n1"))
        failure = self.failureResultOf(d, defer.TimeoutError)
        self.assertEqual(failure.value.to_jsonrpc()["data"], {"node_id": "n1"})


class ProtocolViolationTests(SynchronousTestCase):
    """
    Link-level errors carry a short reason for metrics.
    """

    def test_default_reasons(self) -> None:
        """Each violation class has its own default reason."""
        self.assertEqual(ProtocolViolation("x").reason, "protocol_violation")
        self.assertEqual(MalformedMessage("x").reason, "malformed")
        self.assertEqual(UnknownMessageType("x").reason, "unknown_type")

    def test_reason_override(self) -> None:
        """A reason given to the constructor replaces the default for that instance only."""
        error = MalformedMessage("frame is not JSON", reason="not_json")
        self.assertEqual(error.reason, "not_json")
        self.assertEqual(str(error), "frame is not JSON")
        self.assertEqual(MalformedMessage.reason, "malformed")
