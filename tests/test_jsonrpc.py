"""
Tests for L{relaytx._jsonrpc}: method name resolution and the transport-free
JSON-RPC 2.0 handler, driven with a fake C{invoke}.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from relaytx._calls import DEFAULT_CALL_TIMEOUT, CallTarget
from relaytx._jsonrpc import _NO_ID, CallBook, JsonRpcHandler, _gather, resolve
from relaytx.errors import (
    CallTimeout,
    InvalidParams,
    MethodNotFound,
    RemoteCallError,
)

NODE_ID = "n1"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class FakeMath:
    """
    An C{invoke} function for the handler: hosts a C{math} server with the
    methods of the JSON-RPC 2.0 specification's examples, plus a few that
    misbehave. Records every target it is asked to run.
    """

    def __init__(self) -> None:
        self.targets: list[CallTarget] = []
        self.notified: list[tuple[str, tuple[Any, ...]]] = []
        self.later: list[Deferred[Any]] = []

    def invoke(self, target: CallTarget) -> Deferred[Any]:
        self.targets.append(target)
        method = getattr(self, f"math_{target.method}", None)
        if target.server != "math" or method is None:
            raise MethodNotFound(f"Method not found: {target.server}.{target.method}")
        try:
            result = method(*target.args, **target.kwargs)
        except TypeError as e:
            raise InvalidParams(f"Invalid params: {e}") from None
        return result if isinstance(result, Deferred) else succeed(result)

    def math_subtract(self, minuend: int, subtrahend: int) -> int:
        return minuend - subtrahend

    def math_sum(self, *numbers: int) -> int:
        return sum(numbers)

    def math_update(self, *args: Any) -> None:
        self.notified.append(("update", args))

    def math_get_data(self) -> list[Any]:
        return ["hello", 5]

    def math_notify_hello(self, *args: Any) -> None:
        self.notified.append(("notify_hello", args))

    def math_notify_sum(self, *args: Any) -> int:
        self.notified.append(("notify_sum", args))
        return sum(args)

    def math_echo(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": list(args), "kwargs": kwargs}

    def math_later(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.later.append(d)
        return d

    def math_unserialisable(self) -> Any:
        return {1, 2}

    def math_dated(self) -> Any:
        return {"at": datetime.datetime(2020, 1, 1)}

    def math_record(self) -> Any:
        return [Point(1, 2)]

    def math_boom(self) -> None:
        raise ValueError("a bug in the node")

    def math_fail_later(self) -> Deferred[Any]:
        return fail(RuntimeError("a bug found later"))

    def math_remote_error(self) -> Deferred[Any]:
        return fail(RemoteCallError.from_exception(ZeroDivisionError("div"), node_id="n2"))

    def math_timeout(self) -> Deferred[Any]:
        return fail(CallTimeout("no answer in 5s", route=["n1", "n2"]))


class HandlerTestCase(SynchronousTestCase):
    """
    Shared set-up: a handler for node C{n1} calling a L{FakeMath}.
    """

    def setUp(self) -> None:
        self.math = FakeMath()
        self.handler = JsonRpcHandler(self.math.invoke, NODE_ID)

    def answer(self, body: bytes) -> Any:
        """
        :returns: the parsed answer to C{body}, which must be ready at once,
            or C{None} when there is nothing to answer.
        """
        raw = self.successResultOf(self.handler.handle(body))
        if raw is None:
            return None
        self.assertIsInstance(raw, bytes)
        return json.loads(raw)

    def request(self, method: str, params: Any = None, id: Any = 1) -> Any:
        """
        :returns: the parsed answer to one request (no C{params} member when
            C{params} is None).
        """
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
        if params is not None:
            body["params"] = params
        return self.answer(json.dumps(body).encode())

    def assertSpecAnswer(self, actual: Any, expected: Any) -> None:
        """
        Assert that C{actual} is the answer C{expected} (as the JSON-RPC
        specification writes it): results must be equal; errors must have
        the same code and id, a message containing the specification's, and
        C{data} naming this node.
        """
        if isinstance(expected, list):
            self.assertIsInstance(actual, list)
            self.assertEqual(len(actual), len(expected))
            for one, other in zip(actual, expected, strict=True):
                self.assertSpecAnswer(one, other)
            return
        self.assertIsInstance(actual, dict)
        if "result" in expected:
            self.assertEqual(actual, expected)
            return
        self.assertEqual(set(actual), {"jsonrpc", "error", "id"})
        self.assertEqual(actual["jsonrpc"], "2.0")
        self.assertEqual(actual["id"], expected["id"])
        self.assertEqual(actual["error"]["code"], expected["error"]["code"])
        self.assertIsInstance(actual["error"]["message"], str)
        self.assertIn(expected["error"]["message"], actual["error"]["message"])
        self.assertEqual(actual["error"]["data"]["node_id"], NODE_ID)

    def assertError(self, actual: Any, code: int, id: Any) -> dict[str, Any]:
        """
        Assert that C{actual} is an error answer with C{code} and C{id}.

        :returns: its error object.
        """
        self.assertEqual(set(actual), {"jsonrpc", "error", "id"})
        self.assertEqual(actual["jsonrpc"], "2.0")
        self.assertEqual(actual["id"], id)
        self.assertEqual(actual["error"]["code"], code)
        self.assertIsInstance(actual["error"]["message"], str)
        self.assertTrue(actual["error"]["message"])
        error: dict[str, Any] = actual["error"]
        return error


class SpecificationExampleTests(HandlerTestCase):
    """
    The examples of section 7 of the JSON-RPC 2.0 specification, with its
    method names given a server (C{subtract} is C{math.subtract}).
    """

    def test_positional_params(self) -> None:
        """rpc call with positional parameters."""
        self.assertSpecAnswer(
            self.answer(
                b'{"jsonrpc": "2.0", "method": "math.subtract", "params": [42, 23], "id": 1}'
            ),
            {"jsonrpc": "2.0", "result": 19, "id": 1},
        )
        self.assertSpecAnswer(
            self.answer(
                b'{"jsonrpc": "2.0", "method": "math.subtract", "params": [23, 42], "id": 2}'
            ),
            {"jsonrpc": "2.0", "result": -19, "id": 2},
        )
        self.assertEqual(self.math.targets[0], CallTarget(None, "math", "subtract", (42, 23)))

    def test_named_params(self) -> None:
        """rpc call with named parameters, in either order."""
        self.assertSpecAnswer(
            self.answer(
                b'{"jsonrpc": "2.0", "method": "math.subtract",'
                b' "params": {"subtrahend": 23, "minuend": 42}, "id": 3}'
            ),
            {"jsonrpc": "2.0", "result": 19, "id": 3},
        )
        self.assertSpecAnswer(
            self.answer(
                b'{"jsonrpc": "2.0", "method": "math.subtract",'
                b' "params": {"minuend": 42, "subtrahend": 23}, "id": 4}'
            ),
            {"jsonrpc": "2.0", "result": 19, "id": 4},
        )
        self.assertEqual(
            self.math.targets[0],
            CallTarget(None, "math", "subtract", (), {"subtrahend": 23, "minuend": 42}),
        )

    def test_notifications(self) -> None:
        """A notification is executed and gets no answer, even for a non-existent method."""
        self.assertIsNone(
            self.answer(b'{"jsonrpc": "2.0", "method": "math.update", "params": [1,2,3,4,5]}')
        )
        self.assertEqual(self.math.notified, [("update", (1, 2, 3, 4, 5))])
        self.assertIsNone(self.answer(b'{"jsonrpc": "2.0", "method": "math.foobar"}'))
        self.assertIsNone(self.answer(b'{"jsonrpc": "2.0", "method": "foobar"}'))
        self.assertEqual([t.method for t in self.math.targets], ["update", "foobar"])

    def test_non_existent_method(self) -> None:
        """rpc call of a non-existent method, with and without a server part."""
        expected = {
            "jsonrpc": "2.0",
            "error": {"code": -32601, "message": "Method not found"},
            "id": "1",
        }
        self.assertSpecAnswer(
            self.answer(b'{"jsonrpc": "2.0", "method": "math.foobar", "id": "1"}'), expected
        )
        self.assertSpecAnswer(
            self.answer(b'{"jsonrpc": "2.0", "method": "foobar", "id": "1"}'), expected
        )

    def test_invalid_json(self) -> None:
        """rpc call with invalid JSON."""
        self.assertSpecAnswer(
            self.answer(b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]'),
            {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None},
        )
        self.assertEqual(self.math.targets, [])

    def test_json_past_the_limits(self) -> None:
        """
        Valid JSON that the node does not read (nested more than 1024 deep,
        a number past a double's range) is a parse error that says so, not
        "invalid JSON".
        """
        deep = b"[" * 1100 + b"]" * 1100
        huge = b'{"jsonrpc": "2.0", "method": "math.sum", "params": [1e400], "id": 1}'
        for body, why in [(deep, "nested more than 1024 deep"), (huge, "past a double's range")]:
            error = self.answer(body)["error"]
            self.assertEqual(error["code"], -32700)
            self.assertIn(why, error["message"])
        self.assertEqual(self.math.targets, [])

    def test_invalid_request_object(self) -> None:
        """rpc call with invalid Request object."""
        self.assertSpecAnswer(
            self.answer(b'{"jsonrpc": "2.0", "method": 1, "params": "bar"}'),
            {
                "jsonrpc": "2.0",
                "error": {"code": -32600, "message": "Invalid Request"},
                "id": None,
            },
        )
        self.assertEqual(self.math.targets, [])

    def test_batch_invalid_json(self) -> None:
        """rpc call Batch, invalid JSON."""
        self.assertSpecAnswer(
            self.answer(
                b"[\n"
                b'  {"jsonrpc": "2.0", "method": "math.sum", "params": [1,2,4], "id": "1"},\n'
                b'  {"jsonrpc": "2.0", "method"\n'
                b"]"
            ),
            {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None},
        )
        self.assertEqual(self.math.targets, [])

    def test_empty_array(self) -> None:
        """rpc call with an empty Array: one Invalid Request error, not an array."""
        self.assertSpecAnswer(
            self.answer(b"[]"),
            {
                "jsonrpc": "2.0",
                "error": {"code": -32600, "message": "Invalid Request"},
                "id": None,
            },
        )

    def test_invalid_batch_one(self) -> None:
        """rpc call with an invalid Batch (but not empty)."""
        self.assertSpecAnswer(
            self.answer(b"[1]"),
            [
                {
                    "jsonrpc": "2.0",
                    "error": {"code": -32600, "message": "Invalid Request"},
                    "id": None,
                }
            ],
        )

    def test_invalid_batch_three(self) -> None:
        """rpc call with an invalid Batch of three."""
        error = {
            "jsonrpc": "2.0",
            "error": {"code": -32600, "message": "Invalid Request"},
            "id": None,
        }
        self.assertSpecAnswer(self.answer(b"[1,2,3]"), [error, error, error])

    def test_batch(self) -> None:
        """rpc call Batch mixing calls, a notification, an invalid request and unknown methods."""
        answer = self.answer(
            b"[\n"
            b'    {"jsonrpc": "2.0", "method": "math.sum", "params": [1,2,4], "id": "1"},\n'
            b'    {"jsonrpc": "2.0", "method": "math.notify_hello", "params": [7]},\n'
            b'    {"jsonrpc": "2.0", "method": "math.subtract", "params": [42,23], "id": "2"},\n'
            b'    {"foo": "boo"},\n'
            b'    {"jsonrpc": "2.0", "method": "foo.get",'
            b' "params": {"name": "myself"}, "id": "5"},\n'
            b'    {"jsonrpc": "2.0", "method": "math.get_data", "id": "9"}\n'
            b"]"
        )
        self.assertSpecAnswer(
            answer,
            [
                {"jsonrpc": "2.0", "result": 7, "id": "1"},
                {"jsonrpc": "2.0", "result": 19, "id": "2"},
                {
                    "jsonrpc": "2.0",
                    "error": {"code": -32600, "message": "Invalid Request"},
                    "id": None,
                },
                {
                    "jsonrpc": "2.0",
                    "error": {"code": -32601, "message": "Method not found"},
                    "id": "5",
                },
                {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
            ],
        )
        self.assertEqual(self.math.notified, [("notify_hello", (7,))])

    def test_batch_all_notifications(self) -> None:
        """rpc call Batch of notifications only: nothing is returned, but all of them ran."""
        self.assertIsNone(
            self.answer(
                b"[\n"
                b'    {"jsonrpc": "2.0", "method": "math.notify_sum", "params": [1,2,4]},\n'
                b'    {"jsonrpc": "2.0", "method": "math.notify_hello", "params": [7]}\n'
                b"]"
            )
        )
        self.assertEqual(self.math.notified, [("notify_sum", (1, 2, 4)), ("notify_hello", (7,))])


class RequestValidationTests(HandlerTestCase):
    """
    Requests that are not valid JSON-RPC 2.0 request objects.
    """

    def test_not_utf8(self) -> None:
        """A body that is not UTF-8 is a parse error."""
        self.assertError(self.answer(b'{"jsonrpc": "2.0", "method": "\xff"}'), -32700, None)

    def test_scalar(self) -> None:
        """A JSON value that is neither object nor array is one Invalid Request."""
        for body in [b"1", b'"math.sum"', b"null", b"true"]:
            with self.subTest(body=body):
                self.assertError(self.answer(body), -32600, None)

    def test_jsonrpc_member(self) -> None:
        """A missing or wrong jsonrpc member is an Invalid Request, answered with the id."""
        for version in [None, "1.0", 2.0, "2", 2]:
            with self.subTest(version=version):
                body: dict[str, Any] = {"method": "math.sum", "id": 7}
                if version is not None:
                    body["jsonrpc"] = version
                self.assertError(self.answer(json.dumps(body).encode()), -32600, 7)
        self.assertEqual(self.math.targets, [])

    def test_method_member(self) -> None:
        """A missing or non-string method is an Invalid Request."""
        for method in [None, 1, ["math.sum"], {"name": "math.sum"}, True]:
            with self.subTest(method=method):
                body: dict[str, Any] = {"jsonrpc": "2.0", "id": "x"}
                if method is not None:
                    body["method"] = method
                self.assertError(self.answer(json.dumps(body).encode()), -32600, "x")
        self.assertEqual(self.math.targets, [])

    def test_bad_id_types(self) -> None:
        """A boolean, object or array id is an Invalid Request answered with a null id."""
        for bad in [True, False, {"a": 1}, [1], []]:
            with self.subTest(id=bad):
                body = {"jsonrpc": "2.0", "method": "math.sum", "params": [1], "id": bad}
                self.assertError(self.answer(json.dumps(body).encode()), -32600, None)
        self.assertEqual(self.math.targets, [])

    def test_id_echo(self) -> None:
        """The answer carries the request's id unchanged, whatever its valid type."""
        for request_id in ["abc", "", "ünï", 7, 0, -3, 1.5, 2**53, None]:
            with self.subTest(id=request_id):
                self.assertEqual(
                    self.request("math.sum", [1, 2], request_id),
                    {"jsonrpc": "2.0", "result": 3, "id": request_id},
                )
                self.assertError(self.request("math.nope", [], request_id), -32601, request_id)

    def test_integers_past_a_double(self) -> None:
        """
        Integers of 310 digits and more (valid JSON, past a double's range,
        which the fast parser refuses) are read exactly, ids and params; an
        id too long for Python to read is an Invalid Request.
        """
        for digits in (20, 309, 310, 400, 4300):
            with self.subTest(digits=digits):
                big = int("7" * digits)
                body = b'{"jsonrpc":"2.0","method":"math.sum","params":[%d,1],"id":%d}' % (big, big)
                self.assertEqual(
                    self.answer(body), {"jsonrpc": "2.0", "result": big + 1, "id": big}
                )
        body = b'{"jsonrpc":"2.0","method":"math.sum","params":[1],"id":%s}' % (b"7" * 4301)
        self.assertError(self.answer(body), -32600, None)
        not_json = b'{"jsonrpc":"2.0","method":"math.sum","id":1e999x}'
        self.assertError(self.answer(not_json), -32700, None)

    def test_unreadable_integer_params(self) -> None:
        """
        Params holding an integer too long for Python to read are Invalid
        params, wherever it is in them, and nothing runs; the rest of a
        batch is answered.
        """
        huge = b"9" * 5000
        for params in (b"[%s]" % huge, b'{"x": %s}' % huge, b'[[1, {"y": [%s]}]]' % huge):
            with self.subTest(params=params[:12]):
                body = b'{"jsonrpc":"2.0","method":"math.echo","params":%s,"id":4}' % params
                self.assertError(self.answer(body), -32602, 4)
        body = (
            b'[{"jsonrpc":"2.0","method":"remote_call","id":5,"params":'
            b'{"server_name":"math","method":"echo","args":[%s]}},'
            b'{"jsonrpc":"2.0","method":"math.sum","params":[1,2],"id":6}]' % huge
        )
        first, second = self.answer(body)
        self.assertError(first, -32602, 5)
        self.assertEqual(second, {"jsonrpc": "2.0", "result": 3, "id": 6})
        self.assertEqual([t.method for t in self.math.targets], ["sum"])

    def test_escaped_lone_surrogates(self) -> None:
        """
        A string escape of a lone surrogate is valid JSON (RFC 8259 8.2), as
        this node writes it too: the call runs with it, and its answer says
        it back. Surrogates written raw are invalid UTF-8: a Parse error.
        """
        for text in (b"\\ud800", b"\\udcff x", b"a\\uDBFF"):
            with self.subTest(text=text):
                body = b'{"jsonrpc":"2.0","method":"math.echo","params":["%s"],"id":3}' % text
                raw = self.successResultOf(self.handler.handle(body))
                self.assertEqual(
                    json.loads(raw),  # type: ignore[arg-type]
                    {"jsonrpc": "2.0", "result": {"args": [json.loads(b'"%s"' % text)],
                                                  "kwargs": {}}, "id": 3},
                )  # fmt: skip
        raw_surrogate = b'{"jsonrpc":"2.0","method":"math.echo","params":["\xed\xa0\x80"],"id":3}'
        self.assertError(self.answer(raw_surrogate), -32700, None)

    def test_wide_integer_params(self) -> None:
        """Params past 64 bits reach the method as the integers sent, not as floats."""
        for wide in (2**64 + 1, -(2**70), -9999999999999999999):
            with self.subTest(wide=wide):
                body = b'{"jsonrpc":"2.0","method":"math.sum","params":[%d,1],"id":7}' % wide
                self.assertEqual(self.answer(body), {"jsonrpc": "2.0", "result": wide + 1, "id": 7})

    def test_wide_integers_deep_in_a_request(self) -> None:
        """
        A request nested as deep as one may be (1022 levels) still keeps
        its wide id and params exact: Python's reader counts those levels
        against its recursion limit, from wherever it is called. (Echoed,
        the deepest is two levels deeper than a result may be.)
        """
        wide = 2**70
        for depth in (900, 1000, 1020, 1021):
            with self.subTest(depth=depth):
                deep = b"[" * depth + b"]" * depth
                body = b'{"jsonrpc":"2.0","method":"math.echo","params":[%d,%s],"id":%d}' % (
                    wide,
                    deep,
                    wide,
                )
                limit = sys.getrecursionlimit()
                raw = self.successResultOf(self.handler.handle(body))
                self.assertEqual(sys.getrecursionlimit(), limit)
                # (Read as bytes: this test's own reader would run out of levels.)
                if depth <= 1020:
                    start = b'{"jsonrpc":"2.0","result":{"args":[%d,[[' % wide
                else:
                    start = b'{"jsonrpc":"2.0","error":{"code":-32000,"message":"ResultTooLarge'
                self.assertTrue(raw.startswith(start), raw[:80])
                self.assertTrue(raw.endswith(b'"id":%d}' % wide), raw[-60:])

    def test_null_id_is_not_notification(self) -> None:
        """A request whose id is null is answered (only a missing id makes a notification)."""
        self.assertEqual(
            self.answer(b'{"jsonrpc": "2.0", "method": "math.get_data", "id": null}'),
            {"jsonrpc": "2.0", "result": ["hello", 5], "id": None},
        )

    def test_params_not_structured(self) -> None:
        """params that are neither array nor object are Invalid params, and nothing runs."""
        for params in ["bar", 5, True]:
            with self.subTest(params=params):
                self.assertError(self.request("math.sum", params, 3), -32602, 3)
        null = self.answer(b'{"jsonrpc": "2.0", "method": "math.sum", "params": null, "id": 3}')
        self.assertError(null, -32602, 3)  # present, and no structured value
        self.assertEqual(self.math.targets, [])

    def test_no_params(self) -> None:
        """A request without params calls the method with no arguments."""
        self.assertEqual(self.request("math.echo")["result"], {"args": [], "kwargs": {}})
        self.assertEqual(self.math.targets, [CallTarget(None, "math", "echo")])

    def test_unknown_members_ignored(self) -> None:
        """Members the specification does not define are ignored."""
        self.assertEqual(
            self.answer(
                b'{"jsonrpc": "2.0", "method": "math.sum", "params": [2], "id": 1, "x": 0}'
            ),
            {"jsonrpc": "2.0", "result": 2, "id": 1},
        )

    def test_errors_name_node(self) -> None:
        """Every error answer's data names the node that answered, and the route: that node."""
        for body in [b"{", b"[]", b"[1]", b'{"jsonrpc": "2.0", "method": "rpc.x", "id": 1}']:
            answer = self.answer(body)
            for one in answer if isinstance(answer, list) else [answer]:
                self.assertEqual(one["error"]["data"], {"node_id": NODE_ID, "route": [NODE_ID]})

    def test_nested_batch(self) -> None:
        """An array inside a batch is one Invalid Request in the answer."""
        answer = self.answer(b'[[], [{"jsonrpc": "2.0", "method": "math.sum", "id": 1}]]')
        self.assertEqual(len(answer), 2)
        for one in answer:
            self.assertError(one, -32600, None)


class MethodNameTests(HandlerTestCase):
    """
    The handler hands every form of method name to C{invoke} as a target.
    """

    def test_server_method(self) -> None:
        """SERVER.METHOD leaves the choice of node to the invoke function."""
        self.request("math.sum", [1, 2])
        self.assertEqual(self.math.targets, [CallTarget(None, "math", "sum", (1, 2))])

    def test_node_server_method(self) -> None:
        """NODE_ID/SERVER.METHOD names the node explicitly."""
        self.assertEqual(self.request("n2/math.sum", [1, 2])["result"], 3)
        self.assertEqual(self.math.targets, [CallTarget("n2", "math", "sum", (1, 2))])

    def test_reserved_rpc_names(self) -> None:
        """Names starting with rpc. are Method not found and never reach invoke."""
        for name in ["rpc.discover", "rpc.math.sum", "n2/rpc.discover"]:
            with self.subTest(name=name):
                self.assertError(self.request(name, []), -32601, 1)
        self.assertEqual(self.math.targets, [])

    def test_remote_call(self) -> None:
        """remote_call with an object becomes the target it describes."""
        answer = self.request(
            "remote_call",
            {
                "node_id": "n2",
                "server_name": "math",
                "method": "subtract",
                "args": [42],
                "kwargs": {"subtrahend": 2},
                "timeout": 5,
            },
        )
        self.assertEqual(answer, {"jsonrpc": "2.0", "result": 40, "id": 1})
        self.assertEqual(
            self.math.targets, [CallTarget("n2", "math", "subtract", (42,), {"subtrahend": 2}, 5.0)]
        )

    def test_remote_call_array(self) -> None:
        """remote_call with params by position is Invalid params."""
        self.assertError(self.request("remote_call", ["n2", "math", "sum"]), -32602, 1)
        self.assertError(self.request("remote_call"), -32602, 1)
        self.assertEqual(self.math.targets, [])


class CallOutcomeTests(HandlerTestCase):
    """
    How the outcome of C{invoke} becomes the answer.
    """

    def test_call_error_code_and_data(self) -> None:
        """A CallError failure keeps its code and the data an inner layer recorded."""
        error = self.assertError(self.request("math.remote_error", [], "r"), -32000, "r")
        self.assertEqual(error["message"], "ZeroDivisionError: div")
        self.assertEqual(
            error["data"], {"node_id": "n2", "type": "ZeroDivisionError", "message": "div"}
        )

    def test_call_error_gets_node_id(self) -> None:
        """A CallError without a node id is answered with this node's."""
        error = self.assertError(self.request("math.timeout"), -32001, 1)
        self.assertEqual(error["message"], "no answer in 5s")
        self.assertEqual(error["data"], {"node_id": NODE_ID, "route": ["n1", "n2"]})

    def test_raised_call_error(self) -> None:
        """A CallError raised synchronously by invoke is answered like a failed Deferred."""
        self.assertError(self.request("math.subtract", [1]), -32602, 1)
        self.assertError(self.request("math.subtract", {"minuend": 1, "x": 2}), -32602, 1)

    def test_unexpected_exception(self) -> None:
        """An unexpected exception from invoke is an Internal error, logged, without details."""
        error = self.assertError(self.request("math.boom"), -32603, 1)
        self.assertNotIn("a bug in the node", json.dumps(error))
        self.assertEqual(error["data"], {"node_id": NODE_ID, "route": [NODE_ID]})
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_unexpected_failure(self) -> None:
        """A Deferred failing with an unexpected exception is an Internal error, logged."""
        self.assertError(self.request("math.fail_later"), -32603, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unexpected_failure_in_notification(self) -> None:
        """A notification that fails unexpectedly gets no answer but is logged."""
        self.assertIsNone(self.answer(b'{"jsonrpc": "2.0", "method": "math.boom"}'))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_expected_failure_in_notification(self) -> None:
        """A notification that fails with a CallError gets no answer and logs no error."""
        self.assertIsNone(self.answer(b'{"jsonrpc": "2.0", "method": "math.timeout"}'))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_unserialisable_result(self) -> None:
        """A result JSON cannot express becomes a -32000 error with the request's id."""
        error = self.assertError(self.request("math.unserialisable", [], "u"), -32000, "u")
        self.assertEqual(error["data"]["type"], "TypeError")
        self.assertEqual(error["data"]["node_id"], NODE_ID)

    def test_results_json_has_no_value_for(self) -> None:
        """
        A datetime or a dataclass in a result is no JSON value: -32000
        TypeError, not a text the method never returned (orjson writes both).
        """
        for method in ("math.dated", "math.record"):
            with self.subTest(method=method):
                error = self.assertError(self.request(method, [], "d"), -32000, "d")
                self.assertEqual(error["data"]["type"], "TypeError")

    def test_unserialisable_result_in_batch(self) -> None:
        """In a batch, only the answer whose result JSON cannot express becomes an error."""
        answer = self.answer(
            b'[{"jsonrpc": "2.0", "method": "math.sum", "params": [1], "id": 1},'
            b' {"jsonrpc": "2.0", "method": "math.unserialisable", "id": 2},'
            b' {"jsonrpc": "2.0", "method": "math.get_data", "id": 3}]'
        )
        self.assertEqual(answer[0], {"jsonrpc": "2.0", "result": 1, "id": 1})
        self.assertError(answer[1], -32000, 2)
        self.assertEqual(answer[2], {"jsonrpc": "2.0", "result": ["hello", 5], "id": 3})

    def test_later_result(self) -> None:
        """The answer waits for a Deferred result that fires later."""
        d = self.handler.handle(b'{"jsonrpc": "2.0", "method": "math.later", "id": 8}')
        self.assertNoResult(d)
        self.math.later[0].callback({"done": True})
        self.assertEqual(
            json.loads(self.successResultOf(d)),  # type: ignore[arg-type]
            {"jsonrpc": "2.0", "result": {"done": True}, "id": 8},
        )

    def test_later_failure(self) -> None:
        """A Deferred result that fails later becomes an error answer then."""
        d = self.handler.handle(b'{"jsonrpc": "2.0", "method": "math.later", "id": 8}')
        self.assertNoResult(d)
        self.math.later[0].errback(CallTimeout())
        self.assertError(json.loads(self.successResultOf(d)), -32001, 8)  # type: ignore[arg-type]

    def test_later_notification(self) -> None:
        """The empty answer to a notification comes only once its call has finished."""
        d = self.handler.handle(b'{"jsonrpc": "2.0", "method": "math.later"}')
        self.assertNoResult(d)
        self.math.later[0].callback(None)
        self.assertIsNone(self.successResultOf(d))

    def test_batch_order(self) -> None:
        """A batch is answered once every call, notifications included, has finished, in order."""
        d = self.handler.handle(
            b'[{"jsonrpc": "2.0", "method": "math.later", "id": "first"},'
            b' {"jsonrpc": "2.0", "method": "math.later"},'
            b' {"jsonrpc": "2.0", "method": "math.sum", "params": [4], "id": "now"},'
            b' {"jsonrpc": "2.0", "method": "math.later", "id": "last"}]'
        )
        first, notification, last = self.math.later
        last.callback("L")
        self.assertNoResult(d)
        first.callback("F")
        self.assertNoResult(d)
        notification.callback("ignored")
        self.assertEqual(
            json.loads(self.successResultOf(d)),  # type: ignore[arg-type]
            [
                {"jsonrpc": "2.0", "result": "F", "id": "first"},
                {"jsonrpc": "2.0", "result": 4, "id": "now"},
                {"jsonrpc": "2.0", "result": "L", "id": "last"},
            ],
        )

    def test_duplicate_ids_in_batch(self) -> None:
        """Requests sharing an id in one batch are each answered."""
        answer = self.answer(
            b'[{"jsonrpc": "2.0", "method": "math.sum", "params": [1], "id": 1},'
            b' {"jsonrpc": "2.0", "method": "math.sum", "params": [2], "id": 1}]'
        )
        self.assertEqual([one["result"] for one in answer], [1, 2])


class ResolveTests(SynchronousTestCase):
    """
    L{resolve} turns a method name and params into a L{CallTarget}.
    """

    def test_positional(self) -> None:
        """SERVER.METHOD with an array gives positional arguments and the default timeout."""
        target = resolve("counter.increment", [1, 2])
        self.assertEqual(target, CallTarget(None, "counter", "increment", (1, 2), {}))
        self.assertEqual(target.timeout, DEFAULT_CALL_TIMEOUT)
        self.assertEqual(DEFAULT_CALL_TIMEOUT, 30)

    def test_named(self) -> None:
        """SERVER.METHOD with an object gives keyword arguments."""
        self.assertEqual(
            resolve("counter.increment", {"by": 2}),
            CallTarget(None, "counter", "increment", (), {"by": 2}),
        )

    def test_no_params(self) -> None:
        """SERVER.METHOD without params gives no arguments."""
        self.assertEqual(resolve("counter.get", None), CallTarget(None, "counter", "get", (), {}))

    def test_dotted_server(self) -> None:
        """The method is what follows the last dot; the server may contain dots."""
        self.assertEqual(resolve("app.counter.get", None), CallTarget(None, "app.counter", "get"))

    def test_node_id(self) -> None:
        """NODE_ID/SERVER.METHOD names the node."""
        self.assertEqual(
            resolve("node-2.eu_west/counter.get", [3]),
            CallTarget("node-2.eu_west", "counter", "get", (3,)),
        )
        long_id = "x" * 64
        self.assertEqual(resolve(f"{long_id}/s.m", None).node_id, long_id)

    def test_bad_node_id(self) -> None:
        """A node id that is empty, too long or has other characters is Method not found."""
        for name in ["/s.m", "bad id/s.m", "x" * 65 + "/s.m", "n!/s.m", "ü/s.m"]:
            with self.subTest(name=name):
                self.assertRaises(MethodNotFound, resolve, name, None)

    def test_bad_forms(self) -> None:
        """Names without both a server and a method are Method not found."""
        for name in ["", "foobar", ".m", "s.", ".", "n1/", "n1/foobar", "n1/.m"]:
            with self.subTest(name=name):
                error = self.assertRaises(MethodNotFound, resolve, name, None)
                self.assertEqual(error.code, -32601)

    def test_reserved(self) -> None:
        """Names starting with rpc. are reserved; other servers merely containing rpc are not."""
        for name in ["rpc.discover", "rpc.a.b", "n1/rpc.discover"]:
            with self.subTest(name=name):
                self.assertRaises(MethodNotFound, resolve, name, None)
        self.assertEqual(resolve("rpcx.m", None).server, "rpcx")
        self.assertEqual(resolve("my.rpc.m", None).server, "my.rpc")

    def test_remote_call(self) -> None:
        """remote_call's object gives node, server, method, args, kwargs and a float timeout."""
        target = resolve(
            "remote_call",
            {
                "node_id": "n2",
                "server_name": "counter",
                "method": "increment",
                "args": [1],
                "kwargs": {"by": 2},
                "timeout": 5,
            },
        )
        self.assertEqual(target, CallTarget("n2", "counter", "increment", (1,), {"by": 2}, 5.0))
        self.assertIsInstance(target.timeout, float)

    def test_remote_call_defaults(self) -> None:
        """remote_call's args, kwargs and timeout are optional."""
        self.assertEqual(
            resolve("remote_call", {"node_id": "n2", "server_name": "s", "method": "m"}),
            CallTarget("n2", "s", "m", (), {}, DEFAULT_CALL_TIMEOUT),
        )

    def test_remote_call_nulls(self) -> None:
        """A null args, kwargs or timeout is its default; a null name is missing."""
        params = {"node_id": "n2", "server_name": "s", "method": "m"}
        self.assertEqual(
            resolve("remote_call", {**params, "args": None, "kwargs": None, "timeout": None}),
            CallTarget("n2", "s", "m", (), {}, DEFAULT_CALL_TIMEOUT),
        )
        self.assertInvalidParams({**params, "server_name": None}, "'server_name'")
        self.assertInvalidParams({**params, "method": None}, "'method'")

    def assertInvalidParams(self, params: Any, *words: str) -> None:
        """
        Assert that remote_call refuses C{params} with -32602 and a message
        containing C{words}.
        """
        error = self.assertRaises(InvalidParams, resolve, "remote_call", params)
        self.assertEqual(error.code, -32602)
        for word in words:
            self.assertIn(word, str(error))

    def test_remote_call_needs_object(self) -> None:
        """remote_call's params must be an object."""
        for params in [["n2", "s", "m"], [], None, "n2"]:
            with self.subTest(params=params):
                self.assertInvalidParams(params)

    def test_remote_call_location_transparent(self) -> None:
        """Without node_id, or with null, remote_call is location-transparent, with its deadline."""
        for params in [
            {"server_name": "s", "method": "m", "args": [1], "timeout": 2},
            {"node_id": None, "server_name": "s", "method": "m", "args": [1], "timeout": 2},
        ]:
            with self.subTest(params=params):
                self.assertEqual(
                    resolve("remote_call", params, "http:h"),
                    CallTarget(None, "s", "m", (1,), {}, 2.0, "http:h"),
                )

    def test_remote_call_missing(self) -> None:
        """Each of server_name and method is required."""
        full = {"server_name": "s", "method": "m"}
        for key in full:
            with self.subTest(key=key):
                params = {k: v for k, v in full.items() if k != key}
                self.assertInvalidParams(params, repr(key))

    def test_remote_call_types(self) -> None:
        """Ill-typed remote_call members (booleans included) are refused."""
        full: dict[str, Any] = {"node_id": "n2", "server_name": "s", "method": "m"}
        cases: list[tuple[str, Any]] = [
            ("node_id", 2),
            ("node_id", True),
            ("server_name", None),
            ("server_name", ["s"]),
            ("method", 1),
            ("args", {"a": 1}),
            ("args", "1"),
            ("kwargs", [1]),
            ("timeout", "5"),
            ("timeout", True),
        ]
        for key, value in cases:
            with self.subTest(key=key, value=value):
                self.assertInvalidParams({**full, key: value}, repr(key))

    def test_remote_call_bad_node_id(self) -> None:
        """A node_id outside 1-64 of A-Za-z0-9._- is refused."""
        for node_id in ["", "bad id", "x" * 65, "n/2"]:
            with self.subTest(node_id=node_id):
                self.assertInvalidParams({"node_id": node_id, "server_name": "s", "method": "m"})

    def test_remote_call_timeout_bounds(self) -> None:
        """
        The timeout must be more than 0; past a day it is a day (every
        budget is clamped so), and null is the default.
        """
        base = {"node_id": "n2", "server_name": "s", "method": "m"}
        for timeout in [0, 0.0, -1]:
            with self.subTest(timeout=timeout):
                self.assertInvalidParams({**base, "timeout": timeout}, "timeout")
        for timeout, taken in [
            (0.001, 0.001),
            (1, 1),
            (86400, 86400),
            (86400.5, 86400),
            (1e9, 86400),
        ]:
            self.assertEqual(resolve("remote_call", {**base, "timeout": timeout}).timeout, taken)
        self.assertEqual(resolve("remote_call", {**base, "timeout": None}).timeout, 30)

    def test_remote_call_unknown_member(self) -> None:
        """A member remote_call does not take is ignored, as unknown fields are on the wire."""
        target = resolve(
            "remote_call", {"node_id": "n2", "server_name": "s", "method": "m", "priority": 1}
        )
        self.assertEqual((target.node_id, target.server, target.method), ("n2", "s", "m"))

    def test_remote_call_empty_names(self) -> None:
        """An empty server_name or method is refused."""
        self.assertInvalidParams({"node_id": "n2", "server_name": "", "method": "m"}, "server_name")
        self.assertInvalidParams({"node_id": "n2", "server_name": "s", "method": ""}, "method")

    def test_kwargs_not_shared(self) -> None:
        """Targets built without kwargs each get their own empty dict."""
        first = resolve("s.m", [1])
        second = CallTarget(None, "s", "n")
        self.assertIsNot(first.kwargs, second.kwargs)
        first.kwargs["leak"] = True
        self.assertEqual(second.kwargs, {})
        self.assertEqual(CallTarget(None, "s", "o").kwargs, {})


class GatherTests(SynchronousTestCase):
    """The batch's gathering of answers, ready and pending."""

    def test_order_kept(self) -> None:
        """Results come back in request order, whichever fires first."""
        first, second = Deferred[Any](), Deferred[Any]()
        gathered = _gather([first, "ready", second])
        self.assertNoResult(gathered)
        second.callback(2)
        self.assertNoResult(gathered)
        first.callback(1)
        self.assertEqual(self.successResultOf(gathered), [1, "ready", 2])

    def test_failure_fails_all(self) -> None:
        """A failing item fails the whole, once; later outcomes are ignored."""
        first, second = Deferred[Any](), Deferred[Any]()
        gathered = _gather([first, second])
        first.errback(ValueError("boom"))
        self.failureResultOf(gathered, ValueError)
        second.callback(2)
        self.assertIsNone(self.successResultOf(second))

    def test_nothing_pending(self) -> None:
        """With no Deferred among the items, the result is ready at once."""
        self.assertEqual(self.successResultOf(_gather([1, 2])), [1, 2])


class ExactIdTests(HandlerTestCase):
    """Integer ids are echoed exactly, however large (SPEC section 10)."""

    def test_bigIntegers(self) -> None:
        """Ids past 64 bits, positive and negative, come back as the same integers."""
        for big in (2**64, 2**64 + 1, -(2**63) - 1, 10**40, 2**63, -(2**63)):
            raw = self.successResultOf(
                self.handler.handle(
                    b'{"jsonrpc":"2.0","method":"math.sum","params":[1],"id":%d}' % big
                )
            )
            assert raw is not None
            self.assertIn(b'"id":%d' % big, raw)
            self.assertEqual(json.loads(raw), {"jsonrpc": "2.0", "result": 1, "id": big})

    def test_batch(self) -> None:
        """In a batch, every id comes back as it was sent, big or not."""
        body = (
            b'[{"jsonrpc":"2.0","method":"math.sum","params":[1],"id":18446744073709551617},'
            b'{"jsonrpc":"2.0","method":"math.sum","params":[2],"id":1.5},'
            b'{"jsonrpc":"2.0","method":"nope","id":-99999999999999999999}]'
        )
        answers = json.loads(self.successResultOf(self.handler.handle(body)) or b"")
        self.assertEqual(
            [a["id"] for a in answers], [18446744073709551617, 1.5, -99999999999999999999]
        )

    def test_floatsStayFloats(self) -> None:
        """A float id is still echoed as that float."""
        self.assertEqual(self.request("math.sum", [1], id=2.5)["id"], 2.5)

    def test_notJson(self) -> None:
        """A body only the exact reader would accept (NaN) is still a parse error."""
        answer = self.answer(b'{"jsonrpc":"2.0","method":"math.sum","id":1e999}')
        self.assertEqual(answer["error"]["code"], -32700)


class CallBookTests(SynchronousTestCase):
    """What C{/ws/rpc} keeps of its calls in flight, to cancel them."""

    def test_cancel_by_id_and_all(self) -> None:
        """
        A cancel names every call in flight under its id (a client may send
        two); closing cancels every call, notifications' and displaced ones too.
        """
        book = CallBook()
        first, second, third, notified = (Deferred() for _ in range(4))
        book.track(7, first)
        book.track(7, second)
        book.track(8, third)
        book.track(_NO_ID, notified)
        self.assertTrue(book.cancel(7))
        self.failureResultOf(first, CancelledError)
        self.failureResultOf(second, CancelledError)
        self.assertFalse(book.cancel(7))
        self.assertNoResult(third)
        self.assertNoResult(notified)
        book.cancel_all()
        self.failureResultOf(third, CancelledError)
        self.failureResultOf(notified, CancelledError)

    def test_done_calls_forgotten(self) -> None:
        """A call that was answered, displaced or not, is no longer kept."""
        book = CallBook()
        first, second, notified = Deferred(), Deferred(), Deferred()
        book.track(1, first)
        book.track(1, second)
        book.track(_NO_ID, notified)
        for d in (first, second, notified):
            d.callback(None)
        self.assertFalse(book.cancel(1))
        self.assertEqual((book.in_flight, book._unnamed), ({}, {}))
