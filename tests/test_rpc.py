"""
Tests for L{relaytx._http}: the HTTP face of a node (SPEC sections 4 and 5),
driven in memory. Most requests go through C{treq.testing.StubTreq} on the
root resource of C{node.site()}; what only the L{NodeSite} does (its
L{BoundedRequest}s, their 413s, the raw shape of a response) is driven
through a real C{HTTPChannel} built by the site on a C{StringTransport}.
Every node runs on a C{MemoryReactorClock}: no sockets, no sleeping.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from relaytx import Server, exposed
from relaytx._http import BoundedRequest, NodeSite
from relaytx.node import RelayNode
from relaytx.server import exposed_methods
from relaytx.testing import MemoryMesh, link_nodes, memory_node

NODE_ID = "n1"
BASE = "http://node.test"
T0 = 1_700_000_000.0  # the clocks' time when each test's node is made
CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


class Math(Server):
    """
    The server of the JSON-RPC 2.0 specification's examples, plus a method
    that raises and one that answers later. Records the notes it is sent.
    """

    def __init__(self) -> None:
        self.notes: list[tuple[str, tuple[Any, ...]]] = []
        self.waiting: list[Deferred[Any]] = []
        self.cancelled = 0

    @exposed
    def subtract(self, minuend: int, subtrahend: int) -> int:
        return minuend - subtrahend

    @exposed
    def nest(self, depth: int) -> Any:
        nested: list[Any] = []
        for _ in range(depth - 1):
            nested = [nested]
        return nested

    @exposed
    def sum(self, *numbers: int) -> int:
        return sum(numbers)

    @exposed
    def update(self, *args: Any) -> None:
        self.notes.append(("update", args))

    @exposed
    def notify_hello(self, *args: Any) -> None:
        self.notes.append(("notify_hello", args))

    @exposed
    def notify_sum(self, *args: Any) -> None:
        self.notes.append(("notify_sum", args))

    @exposed
    def get_data(self) -> list[Any]:
        return ["hello", 5]

    @exposed
    def fail(self) -> None:
        raise ValueError("boom")

    @exposed
    def unjsonable(self) -> set[int]:
        return {1, 2}

    @exposed
    def infinite(self, sign: int) -> list[float]:
        return [0.5, sign * float("inf")]

    @exposed
    def exit(self, how: str) -> None:
        raise SystemExit(3) if how == "exit" else KeyboardInterrupt()

    @exposed
    def hang(self) -> Deferred[Any]:
        """Never answers; counts its cancellation."""

        def cancelled(_: Any) -> None:
            self.cancelled += 1

        return Deferred(cancelled)

    @exposed
    def later(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append(d)
        return d


def encoded(value: Any) -> bytes:
    """:returns: C{value} as a JSON body."""
    return json.dumps(value).encode()


def outcome(answer: dict[str, Any]) -> tuple[str, Any, Any]:
    """
    :returns: C{("result", id, result)} or C{("error", id, code)} for one
        JSON-RPC response object, after checking its framing.
    """
    if answer.get("jsonrpc") != "2.0" or ("result" in answer) == ("error" in answer):
        raise AssertionError(f"not a JSON-RPC 2.0 response object: {answer!r}")
    if "result" in answer:
        return ("result", answer["id"], answer["result"])
    return ("error", answer["id"], answer["error"]["code"])


class Reply:
    """One HTTP response, read in full."""

    def __init__(self, code: int, headers: Headers, length: Any, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.length = length
        self.body = body

    def header(self, name: str) -> str | None:
        """:returns: the (last) value of header C{name}, or C{None}."""
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class NodeHttp:
    """A node's site, driven in memory through C{StubTreq}."""

    def __init__(self, case: SynchronousTestCase, node: RelayNode) -> None:
        self.case = case
        self.site = node.site()
        self.stub = StubTreq(self.site.resource)

    def start(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> Deferred[Any]:
        """Send a request; :returns: a Deferred of its response."""
        headers = {"Content-Type": [content_type]} if content_type else None
        d: Deferred[Any] = self.stub.request(method, BASE + path, data=body, headers=headers)
        self.stub.flush()
        return d

    def finish(self, d: Deferred[Any]) -> Reply:
        """:returns: the response C{d} has fired with, read in full."""
        self.stub.flush()
        response = self.case.successResultOf(d)
        content = self.stub.content(response)
        self.stub.flush()
        body = self.case.successResultOf(content)
        return Reply(response.code, response.headers, response.length, body)

    def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        """:returns: the response to one request answered at once."""
        return self.finish(self.start(method, path, body))


def parse_response(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """
    :returns: the status code, headers (lower-case names) and body of the
        one HTTP/1.1 response in C{data}, de-chunked if it was chunked.
    """
    head, separator, rest = data.partition(b"\r\n\r\n")
    if not separator:
        raise AssertionError(f"no complete response in {data!r}")
    status_line, *lines = head.split(b"\r\n")
    code = int(status_line.split(b" ")[1])
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") != b"chunked":
        return code, headers, rest
    body = b""
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return code, headers, body
        body, rest = body + rest[:size], rest[size + 2 :]


class RawConnection:
    """One client connection to a L{NodeSite}, through its own C{HTTPChannel}."""

    def __init__(self, site: NodeSite, clock: MemoryReactorClock) -> None:
        self.transport = StringTransport(peerAddress=CLIENT)
        self.protocol: Any = site.buildProtocol(CLIENT)
        # make_site leaves the Site's timers on the global reactor; keep this
        # channel's idle timeout on the test's clock instead.
        self.protocol.callLater = clock.callLater
        self.protocol.makeConnection(self.transport)
        self.lost = False

    def send(self, data: bytes) -> None:
        """Send C{data} as it is."""
        self.protocol.dataReceived(data)

    def post(self, path: bytes, body: bytes, headers: bytes = b"") -> None:
        """Send a whole POST with a Content-Length."""
        self.send(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %d\r\n\r\n%s"
            % (path, headers, len(body), body)
        )

    def post_chunked(self, path: bytes, chunks: list[bytes]) -> None:
        """Send a whole POST with a chunked body and no length."""
        self.send(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n" % path
        )
        for chunk in chunks:
            self.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.send(b"0\r\n\r\n")

    def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        """:returns: the response written so far, parsed."""
        return parse_response(self.transport.value())

    def lose(self) -> None:
        """The client goes away."""
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone("the client went away")))


def _pipelined(count: int, text: str) -> bytes:
    """:returns: C{count} POSTs of node.echo(text), ids 0 to count - 1, one after another."""
    requests = b""
    for i in range(count):
        body = encoded({"jsonrpc": "2.0", "method": "node.echo", "params": [text], "id": i})
        requests += b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        requests += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    return requests


class _FillingTransport(StringTransport):
    """
    A transport whose buffer is full past C{BOUND} bytes: it pauses its
    producer then, as a socket's does, until L{drain}ed.
    """

    BOUND = 10_000
    full = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if not self.full and len(self.value()) > self.BOUND and self.producer is not None:
            self.full = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def drain(self) -> None:
        """The client read everything: the producer resumes."""
        self.clear()
        self.full = False
        self.producer.resumeProducing()


class RecordingRequest(BoundedRequest):
    """A L{BoundedRequest} that records what the resource writes to it."""

    made: list[RecordingRequest]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[bytes] = []
        self.finishes = 0
        self.made.append(self)

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def finish(self) -> None:
        self.finishes += 1
        super().finish()


class NodeTestCase(SynchronousTestCase):
    """A node with a C{math} server on a fake clock, and its HTTP site."""

    limits: dict[str, int] = {}

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(T0)
        self.node = memory_node(NODE_ID, self.clock, limits=self.limits or None)
        self.math = Math()
        self.node.expose("math", self.math)
        self.http = NodeHttp(self, self.node)

    def rpc(self, body: Any) -> Reply:
        """POST C{body} (JSON-encoded unless it is bytes) to C{/rpc}."""
        return self.http.request("POST", "/rpc", body if isinstance(body, bytes) else encoded(body))

    def answer(self, body: Any) -> Any:
        """:returns: the decoded JSON-RPC answer to C{body}, checked to be a 200 JSON reply."""
        reply = self.rpc(body)
        self.assertEqual((reply.code, reply.header("content-type")), (200, "application/json"))
        return reply.json()

    def assertNoContent(self, reply: Reply) -> None:
        self.assertEqual((reply.code, reply.body), (204, b""))

    def assertJsonError(self, reply: Reply, code: int) -> Any:
        """Check that C{reply} is a C{code} answer with a small JSON body; return the body."""
        self.assertEqual(reply.code, code)
        self.assertEqual(reply.header("content-type"), "application/json")
        body = reply.json()
        self.assertEqual(body["status"], code)
        self.assertIsInstance(body["error"], str)
        return body

    def raw(self) -> RawConnection:
        """:returns: a new client connection to the node's site."""
        connection = RawConnection(self.http.site, self.clock)
        self.addCleanup(connection.lose)
        return connection

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def assertTimestamp(
        self, value: Any, earliest: datetime, latest: datetime | None = None
    ) -> None:
        """
        Check that C{value} is an RFC 3339 string for the instant C{earliest},
        or between C{earliest} and C{latest}.
        """
        self.assertIsInstance(value, str)
        self.assertTrue(RFC3339.fullmatch(value), f"{value!r} is not RFC 3339")
        instant = datetime.fromisoformat(value)
        if latest is None:
            self.assertEqual(instant, earliest)
        else:
            self.assertTrue(earliest <= instant <= latest, f"{value} not in [{earliest}, {latest}]")


class SpecificationExampleTests(NodeTestCase):
    """
    The examples of the JSON-RPC 2.0 specification (section 7), with each
    method named C{math.METHOD}.
    """

    def test_positional_parameters(self) -> None:
        """Calls with params by position are answered with their results and ids."""
        first = {"jsonrpc": "2.0", "method": "math.subtract", "params": [42, 23], "id": 1}
        second = {"jsonrpc": "2.0", "method": "math.subtract", "params": [23, 42], "id": 2}
        self.assertEqual(self.answer(first), {"jsonrpc": "2.0", "result": 19, "id": 1})
        self.assertEqual(self.answer(second), {"jsonrpc": "2.0", "result": -19, "id": 2})

    def test_named_parameters(self) -> None:
        """Calls with params by name are answered whatever the order of the names."""
        for request_id, params in [
            (3, {"subtrahend": 23, "minuend": 42}),
            (4, {"minuend": 42, "subtrahend": 23}),
        ]:
            request = {"jsonrpc": "2.0", "method": "math.subtract", "params": params}
            self.assertEqual(
                self.answer({**request, "id": request_id}),
                {"jsonrpc": "2.0", "result": 19, "id": request_id},
            )

    def test_notification(self) -> None:
        """A notification runs and gets 204 with no body, even for a method that does not exist."""
        update = {"jsonrpc": "2.0", "method": "math.update", "params": [1, 2, 3, 4, 5]}
        self.assertNoContent(self.rpc(update))
        self.assertEqual(self.math.notes, [("update", (1, 2, 3, 4, 5))])
        self.assertNoContent(self.rpc({"jsonrpc": "2.0", "method": "math.foobar"}))

    def test_non_existent_method(self) -> None:
        """A call of a method the server does not expose is answered -32601 with its id."""
        answer = self.answer({"jsonrpc": "2.0", "method": "math.foobar", "id": "1"})
        self.assertEqual(outcome(answer), ("error", "1", -32601))

    def test_invalid_json(self) -> None:
        """A body that is not JSON is answered -32700 with a null id."""
        answer = self.answer(b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
        self.assertEqual(outcome(answer), ("error", None, -32700))

    def test_invalid_request_object(self) -> None:
        """A request whose method is not a string is answered -32600 with a null id."""
        answer = self.answer({"jsonrpc": "2.0", "method": 1, "params": "bar"})
        self.assertEqual(outcome(answer), ("error", None, -32600))

    def test_batch_invalid_json(self) -> None:
        """A batch that is not valid JSON is answered with one -32700 object, not an array."""
        answer = self.answer(
            b'[\n  {"jsonrpc": "2.0", "method": "math.sum", "params": [1,2,4], "id": "1"},\n'
            b'  {"jsonrpc": "2.0", "method"\n]'
        )
        self.assertEqual(outcome(answer), ("error", None, -32700))

    def test_empty_array(self) -> None:
        """An empty batch is answered with one -32600 object, not an array."""
        self.assertEqual(outcome(self.answer([])), ("error", None, -32600))

    def test_invalid_batch_of_one(self) -> None:
        """A batch holding one non-request is answered with an array of one -32600."""
        answer = self.answer([1])
        self.assertEqual([outcome(a) for a in answer], [("error", None, -32600)])

    def test_invalid_batch(self) -> None:
        """A batch of three non-requests is answered with an array of three -32600."""
        answer = self.answer([1, 2, 3])
        self.assertEqual([outcome(a) for a in answer], [("error", None, -32600)] * 3)

    def test_batch(self) -> None:
        """A mixed batch gets one answer per call, none for its notification, which still runs."""
        answer = self.answer(
            [
                {"jsonrpc": "2.0", "method": "math.sum", "params": [1, 2, 4], "id": "1"},
                {"jsonrpc": "2.0", "method": "math.notify_hello", "params": [7]},
                {"jsonrpc": "2.0", "method": "math.subtract", "params": [42, 23], "id": "2"},
                {"foo": "boo"},
                {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
                {"jsonrpc": "2.0", "method": "math.get_data", "id": "9"},
            ]
        )
        self.assertIsInstance(answer, list)
        # The specification lets a batch be answered in any order.
        self.assertEqual(
            sorted((outcome(a) for a in answer), key=repr),
            sorted(
                [
                    ("result", "1", 7),
                    ("result", "2", 19),
                    ("error", None, -32600),
                    ("error", "5", -32601),
                    ("result", "9", ["hello", 5]),
                ],
                key=repr,
            ),
        )
        self.assertEqual(self.math.notes, [("notify_hello", (7,))])

    def test_batch_of_notifications(self) -> None:
        """A batch of notifications only gets 204 with no body, after every one of them ran."""
        reply = self.rpc(
            [
                {"jsonrpc": "2.0", "method": "math.notify_sum", "params": [1, 2, 4]},
                {"jsonrpc": "2.0", "method": "math.notify_hello", "params": [7]},
            ]
        )
        self.assertNoContent(reply)
        self.assertEqual(self.math.notes, [("notify_sum", (1, 2, 4)), ("notify_hello", (7,))])


class ErrorAnswerTests(NodeTestCase):
    """JSON-RPC errors over HTTP: status 200, the right code, C{data.node_id}."""

    def error(self, body: Any, request_id: Any = 1) -> dict[str, Any]:
        """:returns: the error object answering C{body}, checked to carry C{request_id}."""
        answer = self.answer(body)
        self.assertEqual(set(answer), {"jsonrpc", "error", "id"})
        self.assertEqual(answer["id"], request_id)
        error: dict[str, Any] = answer["error"]
        self.assertIsInstance(error["message"], str)
        self.assertEqual(error["data"]["node_id"], NODE_ID)
        return error

    def test_parse_error(self) -> None:
        """A body that is not JSON gets -32700 naming this node."""
        self.assertEqual(self.error(b"{not json", None)["code"], -32700)

    def test_invalid_request(self) -> None:
        """A request with the wrong C{jsonrpc} version gets -32600 with its id, naming this node."""
        request = {"jsonrpc": "1.0", "method": "math.sum", "params": [1], "id": 1}
        self.assertEqual(self.error(request)["code"], -32600)

    def test_method_not_found(self) -> None:
        """An unknown server, or a name with no C{SERVER.}, gets -32601 naming this node."""
        for method in ["nosuch.method", "foobar", "math._private"]:
            request = {"jsonrpc": "2.0", "method": method, "id": 1}
            self.assertEqual(self.error(request)["code"], -32601, method)

    def test_invalid_params(self) -> None:
        """Wrong arity and C{remote_call} with params by position get -32602 naming this node."""
        wrong_arity = {"jsonrpc": "2.0", "method": "math.subtract", "params": [1], "id": 1}
        self.assertEqual(self.error(wrong_arity)["code"], -32602)
        by_position = {
            "jsonrpc": "2.0",
            "method": "remote_call",
            "params": [NODE_ID, "math", "sum", [1]],
            "id": 1,
        }
        self.assertEqual(self.error(by_position)["code"], -32602)

    def test_server_error(self) -> None:
        """A method that raises gets -32000 with the exception's type and message, no traceback."""
        reply = self.rpc({"jsonrpc": "2.0", "method": "math.fail", "id": 1})
        self.assertEqual(reply.code, 200)
        self.assertNotIn(b"Traceback", reply.body)
        error = reply.json()["error"]
        self.assertEqual(error["code"], -32000)
        self.assertEqual(
            (error["data"]["node_id"], error["data"]["type"], error["data"]["message"]),
            (NODE_ID, "ValueError", "boom"),
        )
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_method_raises_system_exit(self) -> None:
        """
        SystemExit or KeyboardInterrupt raised by a method is that method's
        error (-32000), not the node's: the batch's other answers stand.
        """
        cases = [("exit", "SystemExit", "3"), ("ctrl-c", "KeyboardInterrupt", "")]
        for how, name, message in cases:
            reply = self.rpc(
                [
                    {"jsonrpc": "2.0", "method": "math.exit", "params": [how], "id": 1},
                    {"jsonrpc": "2.0", "method": "math.sum", "params": [1, 2], "id": 2},
                ]
            )
            self.assertEqual(reply.code, 200)
            failed, summed = sorted(reply.json(), key=lambda a: a["id"])
            self.assertEqual(failed["error"]["code"], -32000)
            data = failed["error"]["data"]
            self.assertEqual((data["type"], data["message"]), (name, message))
            self.assertEqual(summed["result"], 3)
        self.flushLoggedErrors(SystemExit, KeyboardInterrupt)

    def test_result_not_json(self) -> None:
        """A result JSON cannot express is -32000 TypeError, its message in data too."""
        error = self.error({"jsonrpc": "2.0", "method": "math.unjsonable", "id": 1})
        self.assertEqual(error["code"], -32000)
        data = error["data"]
        self.assertEqual((data["node_id"], data["type"]), (NODE_ID, "TypeError"))
        self.assertIn("not JSON-serialisable", data["message"])
        self.assertEqual(error["message"], f"TypeError: {data['message']}")

    def test_result_not_finite(self) -> None:
        """A result holding an infinity or NaN is -32000 TypeError, not a null in its place."""
        for sign in (1, -1):
            error = self.error(
                {"jsonrpc": "2.0", "method": "math.infinite", "params": [sign], "id": 1}
            )
            self.assertEqual((error["code"], error["data"]["type"]), (-32000, "TypeError"))
            self.assertIn("inf", error["data"]["message"])

    def test_timeout(self) -> None:
        """A call still unanswered when its 30 s budget runs out gets -32001 then and not before."""
        d = self.http.start(
            "POST", "/rpc", encoded({"jsonrpc": "2.0", "method": "math.later", "id": 2})
        )
        self.clock.advance(29.9)
        self.http.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(0.1)
        reply = self.http.finish(d)
        self.assertEqual(reply.code, 200)
        error = reply.json()["error"]
        self.assertEqual((error["code"], error["data"]["node_id"]), (-32001, NODE_ID))


class DeepResultTests(NodeTestCase):
    """
    A result nested as deep as the mesh carries one is answered, here and
    from afar alike; one level more is -32000 C{ResultTooLarge} either way,
    never an answer deeper than the node itself reads.
    """

    def nest(self, depth: int, method: str = "math.nest", node: RelayNode | None = None) -> Any:
        request = {"jsonrpc": "2.0", "method": method, "params": [depth], "id": 1}
        return self.post(request, node)

    def post(self, request: Any, node: RelayNode | None = None) -> Any:
        http = self.http if node is None else NodeHttp(self, node)
        d = http.start("POST", "/rpc", encoded(request))
        for _ in range(3):  # (a mailbox that ran 50 ms of calls lets a turn pass)
            self.network.pump()
            self.clock.advance(0)
        reply = http.finish(d)
        self.assertEqual(reply.code, 200)
        return orjson.loads(reply.body)  # (1024 levels; the json module stops sooner)

    def setUp(self) -> None:
        super().setUp()
        self.network = MemoryMesh()

    def assertTooDeep(self, answer: Any) -> None:
        self.assertEqual(answer["error"]["code"], -32000)
        self.assertEqual(answer["error"]["data"]["type"], "ResultTooLarge")

    def test_here_and_afar(self) -> None:
        """Locally and through a neighbour, 1022 levels are answered and 1023 refused."""
        other = memory_node("n2", self.clock)
        self.network.link(other, self.node)
        self.network.settle()
        for method, node in [("math.nest", None), ("n1/math.nest", other)]:
            with self.subTest(method=method):
                result, depth = self.nest(1022, method, node)["result"], 1
                while result:
                    (result,), depth = result, depth + 1
                self.assertEqual((result, depth), ([], 1022))
                self.assertTooDeep(self.nest(1023, method, node))
                self.assertTooDeep(self.nest(2000, method, node))
                self.assertTooDeep(self.nest(5000, method, node))  # (past what is written at all)

    def test_in_a_batch(self) -> None:
        """In a batch, only the answer too deep is refused."""
        batch = [
            {"jsonrpc": "2.0", "method": "math.nest", "params": [1023], "id": 1},
            {"jsonrpc": "2.0", "method": "math.sum", "params": [1, 2], "id": 2},
        ]
        deep, shallow = self.post(batch)
        self.assertTooDeep(deep)
        self.assertEqual(shallow["result"], 3)


class BatchLimitTests(NodeTestCase):
    """C{[limits] max_batch}: the most requests one batch may hold."""

    limits = {"max_batch": 3}

    def test_configured(self) -> None:
        """Three requests run; four run none and get one -32005 naming the limit."""
        request = {"jsonrpc": "2.0", "method": "math.sum", "params": [1, 2]}
        answers = self.answer([{**request, "id": i} for i in range(3)])
        self.assertEqual([a["result"] for a in answers], [3, 3, 3])
        error = self.answer([{**request, "id": i} for i in range(4)])["error"]
        self.assertEqual(error["code"], -32005)
        self.assertIn("at most 3 requests", error["message"])


class DeadlineTests(NodeTestCase):
    """remote_call without node_id: a location-transparent call with a deadline (SPEC 5)."""

    def call(self, params: dict[str, Any]) -> Deferred[Any]:
        body = {"jsonrpc": "2.0", "method": "remote_call", "params": params, "id": 3}
        return self.http.start("POST", "/rpc", encoded(body))

    def test_local(self) -> None:
        """A local server's call fails with -32001 at the given timeout, and is cancelled."""
        d = self.call({"node_id": None, "server_name": "math", "method": "hang", "timeout": 2})
        self.clock.advance(1.9)
        self.http.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(0.1)
        error = self.http.finish(d).json()["error"]
        self.assertEqual((error["code"], error["data"]["node_id"]), (-32001, NODE_ID))
        self.assertEqual(self.math.cancelled, 1)

    def test_queued_past_deadline(self) -> None:
        """
        Calls whose deadline passes while they wait behind a hung one fail
        -32001 and never start (each that ran would be cancelled in turn).
        """
        params = {"node_id": None, "server_name": "math", "method": "hang", "timeout": 2}
        calls = [self.call(params) for _ in range(3)]
        self.clock.advance(2)
        for d in calls:
            self.assertEqual(self.http.finish(d).json()["error"]["code"], -32001)
        self.assertEqual(self.math.cancelled, 1)
        self.assertEqual(self.node.servers.queue_depth(), 0)

    def test_stop_answers_local_calls(self) -> None:
        """
        A node that stops answers its own callers' calls still running or
        queued on its servers -32006, and cancels them.
        """
        params = {"node_id": None, "server_name": "math", "method": "hang", "timeout": 30}
        running, queued = self.call(params), self.call(params)
        self.node.stopService()
        for d in (running, queued):
            error = self.http.finish(d).json()["error"]
            self.assertEqual((error["code"], error["data"]["node_id"]), (-32006, NODE_ID))
            self.assertIn("stopped before answering", error["message"])
        self.assertEqual(self.math.cancelled, 1)  # the queued one never ran

    def test_remote(self) -> None:
        """A server on another node is found by name, and the call fails there at the timeout."""
        other = memory_node("n2", self.clock)
        remote = Math()
        other.expose("elsewhere", remote)
        network = link_nodes(self.node, other).network
        network.settle()
        d = self.call({"server_name": "elsewhere", "method": "later", "args": [], "timeout": 5})
        network.pump()
        self.assertEqual(len(remote.waiting), 1)  # it reached n2
        network.advance(4.9)
        self.http.stub.flush()
        self.assertNoResult(d)
        network.advance(0.2)
        self.http.stub.flush()
        self.assertEqual(self.http.finish(d).json()["error"]["code"], -32001)
        # And with an answer in time, the result.
        d = self.call({"server_name": "elsewhere", "method": "sum", "args": [1, 2], "timeout": 5})
        network.pump()
        self.assertEqual(self.http.finish(d).json()["result"], 3)


class LaterAnswerTests(NodeTestCase):
    """Answers that are not ready when the request has been read."""

    def test_later_answer(self) -> None:
        """A method's later result is answered once it fires, with a length rather than chunks."""
        d = self.http.start(
            "POST", "/rpc", encoded({"jsonrpc": "2.0", "method": "math.later", "id": 7})
        )
        self.assertNoResult(d)
        [later] = self.math.waiting
        later.callback({"a": [1, 2]})
        reply = self.http.finish(d)
        self.assertEqual((reply.code, reply.header("content-type")), (200, "application/json"))
        self.assertEqual(reply.json(), {"jsonrpc": "2.0", "result": {"a": [1, 2]}, "id": 7})
        self.assertEqual(reply.length, len(reply.body))  # UNKNOWN_LENGTH if chunked

    def test_later_answer_headers(self) -> None:
        """On the wire, a later answer carries Content-Length and no Transfer-Encoding."""
        connection = self.raw()
        connection.post(b"/rpc", encoded({"jsonrpc": "2.0", "method": "math.later", "id": 7}))
        self.assertEqual(connection.transport.value(), b"")
        self.math.waiting[0].callback("done")
        code, headers, body = connection.response()
        self.assertEqual((code, headers[b"content-type"]), (200, b"application/json"))
        self.assertEqual(json.loads(body), {"jsonrpc": "2.0", "result": "done", "id": 7})
        self.assertEqual(headers[b"content-length"], b"%d" % len(body))
        self.assertNotIn(b"transfer-encoding", headers)

    def test_later_notification(self) -> None:
        """A notification whose method answers later gets 204 only once the method has finished."""
        d = self.http.start("POST", "/rpc", encoded({"jsonrpc": "2.0", "method": "math.later"}))
        self.assertNoResult(d)
        self.math.waiting[0].callback("ignored")
        self.assertNoContent(self.http.finish(d))

    def test_later_batch(self) -> None:
        """A batch holding a later call is answered whole once that call has finished."""
        batch = [
            {"jsonrpc": "2.0", "method": "math.later", "id": 1},
            {"jsonrpc": "2.0", "method": "math.sum", "params": [2, 3], "id": 2},
        ]
        d = self.http.start("POST", "/rpc", encoded(batch))
        self.assertNoResult(d)
        self.math.waiting[0].callback("x")
        reply = self.http.finish(d)
        self.assertEqual(reply.code, 200)
        self.assertEqual(
            sorted((outcome(a) for a in reply.json()), key=repr),
            [("result", 1, "x"), ("result", 2, 5)],
        )

    def test_bad_host_forms(self) -> None:
        """
        A Host that is a name with two trailing dots is refused (403), an
        HTTP/1.1 request with none is a 400 (RFC 9112), an HTTP/1.0 one
        is served: each a JSON answer.
        """
        for head, status in (
            (b"GET /health HTTP/1.1\r\nHost: localhost..\r\n\r\n", 403),
            (b"GET /registry HTTP/1.1\r\nHost: 127.0.0.1..:80\r\n\r\n", 403),
            (b"GET /health HTTP/1.1\r\n\r\n", 400),
            (b"POST /rpc HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 400),
            (b"GET /health HTTP/1.0\r\n\r\n", 200),
            (b"GET /health HTTP/1.1\r\nHost: localhost.\r\n\r\n", 200),
        ):
            connection = self.raw()
            connection.send(head)
            code, headers, body = connection.response()
            self.assertEqual((code, headers[b"content-type"]), (status, b"application/json"), head)
            json.loads(body)

    def test_path_not_utf8(self) -> None:
        """A path whose escapes are not UTF-8 is a JSON 404, as any unknown path."""
        for path in (b"/health%ff", b"/rpc%ff", b"/registry%c3%28", b"/nope%ff"):
            connection = self.raw()
            connection.send(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path)
            code, headers, body = connection.response()
            self.assertEqual((code, headers[b"content-type"]), (404, b"application/json"), path)
            self.assertEqual(json.loads(body)["status"], 404)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_client_gone(self) -> None:
        """A client that leaves before a later answer has its call cancelled; nothing is written."""
        RecordingRequest.made = []
        self.http.site.requestFactory = RecordingRequest
        connection = self.raw()
        connection.post(b"/rpc", encoded({"jsonrpc": "2.0", "method": "math.later", "id": 7}))
        [request] = RecordingRequest.made
        connection.lose()
        self.assertTrue(self.math.waiting[0].called)  # cancelled (SPEC section 12)
        self.math.waiting[0].callback("too late")  # (ignored: it was cancelled)
        self.assertEqual((request.writes, request.finishes), ([], 0))
        self.assertEqual(connection.transport.value(), b"")
        # The server is free again: the call finished even though nobody heard it.
        self.assertEqual(
            self.answer({"jsonrpc": "2.0", "method": "math.sum", "id": 1})["result"], 0
        )

    def test_client_gone_batch_queued_calls_never_run(self) -> None:
        """
        A batch whose client leaves: its calls still queued behind its
        running one never run (SPEC section 12), whichever order they came in.
        """
        connection = self.raw()
        batch = [
            {"jsonrpc": "2.0", "method": "math.later", "id": 1},
            {"jsonrpc": "2.0", "method": "math.update", "params": ["queued"], "id": 2},
            {"jsonrpc": "2.0", "method": "math.update", "params": ["queued too"], "id": 3},
        ]
        connection.post(b"/rpc", encoded(batch))
        [running] = self.math.waiting
        connection.lose()
        self.assertTrue(running.called)
        self.assertEqual(self.math.notes, [])
        self.clock.advance(0)  # (the mailbox goes on in the next turn)
        self.assertEqual(self.math.notes, [])
        # The mailbox is free again for everyone else.
        self.assertEqual(
            self.answer({"jsonrpc": "2.0", "method": "math.sum", "params": [2], "id": 4})["result"],
            2,
        )
        self.assertEqual(self.math.notes, [])


class CorsTests(NodeTestCase):
    """A page of an allowed origin may call the node: CORS headers and preflights."""

    ORIGIN = b"https://app.example"
    TOKEN = b"ci-token-for-cors"

    def setUp(self) -> None:
        super().setUp()
        self.node = memory_node(
            NODE_ID,
            self.clock,
            allowed_origins=[self.ORIGIN.decode()],
            http={"tokens": {"ci": hashlib.sha256(self.TOKEN).hexdigest()}},
        )
        self.node.expose("math", self.math)
        self.http = NodeHttp(self, self.node)

    def exchange(self, head: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        connection = self.raw()
        connection.send(head)
        return connection.response()

    def test_preflight(self) -> None:
        """An allowed origin's preflight (no token) is a 204 naming what may be sent."""
        code, headers, body = self.exchange(
            b"OPTIONS /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://app.example\r\n"
            b"Access-Control-Request-Method: POST\r\n"
            b"Access-Control-Request-Headers: authorization, content-type\r\n\r\n"
        )
        self.assertEqual((code, body), (204, b""))
        self.assertEqual(headers[b"access-control-allow-origin"], self.ORIGIN)
        self.assertIn(b"POST", headers[b"access-control-allow-methods"])
        self.assertIn(b"authorization", headers[b"access-control-allow-headers"])
        self.assertIn(b"content-type", headers[b"access-control-allow-headers"])

    def test_two_origins(self) -> None:
        """
        A request with two Origin headers is a 400, in either order: which
        would the check believe? (The last one decided, the first one the
        refusals before the body.)
        """
        allowed, evil = b"Origin: https://app.example\r\n", b"Origin: https://evil.example\r\n"
        for origins in (evil + allowed, allowed + evil):
            code, headers, _ = self.exchange(
                b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\n" + origins
                + b"Authorization: Bearer " + self.TOKEN + b"\r\nContent-Length: 2\r\n\r\n{}"
            )  # fmt: skip
            self.assertEqual(code, 400, origins)
            self.assertNotIn(b"access-control-allow-origin", headers)

    def test_answers_readable(self) -> None:
        """Its answers carry the origin, refusals (401) included; others' are refused (403)."""
        code, headers, _ = self.exchange(
            b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://app.example\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
        self.assertEqual((code, headers[b"access-control-allow-origin"]), (401, self.ORIGIN))
        self.assertEqual(headers[b"vary"], b"Origin")
        for head in (
            b"OPTIONS /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\n"
            b"Access-Control-Request-Method: POST\r\n\r\n",
            b"OPTIONS /rpc HTTP/1.1\r\nHost: evil.example\r\nOrigin: https://app.example\r\n"
            b"Access-Control-Request-Method: POST\r\n\r\n",
        ):
            code, headers, _ = self.exchange(head)
            self.assertEqual(code, 403)
            self.assertNotIn(b"access-control-allow-origin", headers)
        code, headers, _ = self.exchange(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertEqual(code, 200)
        self.assertNotIn(b"access-control-allow-origin", headers)

    def test_early_refusals_readable(self) -> None:
        """
        The refusals made before a request is whole carry the origin too: a
        body declared too large (413) and one that does not come (408), or
        either without its token (401, which comes first).
        """
        for token, large, late in ((True, 413, 408), (False, 401, 401)):
            head = b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://app.example\r\n"
            if token:
                head += b"Authorization: Bearer %s\r\n" % self.TOKEN
            code, headers, _ = self.exchange(head + b"Content-Length: 99999999\r\n\r\n")
            self.assertEqual(
                (code, headers.get(b"access-control-allow-origin")), (large, self.ORIGIN)
            )
            connection = self.raw()
            connection.send(head + b"Content-Length: 50\r\n\r\n{")
            self.clock.advance(self.node.config.limits.header_timeout + 1)
            code, headers, _ = connection.response()
            self.assertEqual(
                (code, headers.get(b"access-control-allow-origin")), (late, self.ORIGIN)
            )
            if not token:
                self.assertIn(b"Bearer", headers[b"www-authenticate"])

    def test_refusals_of_large_bodies_readable(self) -> None:
        """
        A body sent chunked past the limit without its token is refused 401
        with the origin too; and a refusal from the head of a request that
        waits for "100 Continue" is the last thing said (no 100 after it).
        """
        connection = self.raw()
        connection.send(
            b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://app.example\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(5):
            connection.send(b"%x\r\n%s\r\n" % (300_000, b"x" * 300_000))
        connection.send(b"0\r\n\r\n")
        code, headers, _ = connection.response()
        self.assertEqual((code, headers.get(b"access-control-allow-origin")), (401, self.ORIGIN))
        connection = self.raw()
        connection.send(
            b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        written = connection.transport.value()
        self.assertTrue(written.startswith(b"HTTP/1.1 401 "), written)
        self.assertNotIn(b"100 Continue", written)

    def test_early_refusals_forbidden(self) -> None:
        """
        A page of another origin, or a request for another host, is refused
        403 before its body is judged: too large (else 413) or not coming
        (else 408).
        """
        for head in (
            b"Host: 127.0.0.1\r\nOrigin: https://evil.example\r\n",
            b"Host: evil.example\r\n",
        ):
            code, headers, _ = self.exchange(
                b"POST /rpc HTTP/1.1\r\n" + head + b"Content-Length: 99999999\r\n\r\n"
            )
            self.assertEqual(code, 403, head)
            self.assertNotIn(b"access-control-allow-origin", headers)
            connection = self.raw()
            connection.send(b"POST /rpc HTTP/1.1\r\n" + head + b"Content-Length: 50\r\n\r\n{")
            self.clock.advance(self.node.config.limits.header_timeout + 1)
            self.assertEqual(connection.response()[0], 403, head)


class MethodAndPathTests(NodeTestCase):
    """Wrong methods give 405 and unknown paths 404, each with a small JSON body."""

    def test_rpc_wrong_methods(self) -> None:
        """Every method but POST on /rpc gets 405 JSON with C{Allow: POST}, made-up ones too."""
        for method in ["GET", "PUT", "DELETE", "OPTIONS", "PATCH", "FROB"]:
            reply = self.http.request(method, "/rpc")
            self.assertJsonError(reply, 405)
            self.assertEqual(reply.header("allow"), "POST", method)

    def test_unknown_paths(self) -> None:
        """Paths the node does not serve get 404 JSON."""
        for path in ["/", "/nope", "/rpc/", "/rpc/more", "/health/x", "/registry/nope"]:
            self.assertJsonError(self.http.request("GET", path), 404)
        # Doubled slashes are no path of the table either (no redirect).
        for path in ["//health", "//registry", "/registry//servers", "/registry//routes"]:
            self.assertJsonError(self.http.request("GET", path), 404)

    def test_health_wrong_method(self) -> None:
        """Anything but GET on /health gets 405 JSON whose C{Allow} names GET."""
        for method in ["POST", "PUT", "DELETE"]:
            reply = self.http.request(method, "/health")
            self.assertJsonError(reply, 405)
            allowed = (reply.header("allow") or "").replace(" ", "").split(",")
            self.assertIn("GET", allowed)
            self.assertNotIn(method, allowed)

    def test_other_routes_wrong_method(self) -> None:
        """The registry and metrics endpoints give 405 JSON to a method they do not take."""
        for method, path, allowed in [
            ("GET", "/registry/peers/add", "POST"),
            ("GET", "/registry/peers/remove", "DELETE"),
            ("POST", "/registry/peers/remove", "DELETE"),  # (SPEC section 4: DELETE)
            ("POST", "/metrics", "GET"),
            ("DELETE", "/registry/servers", "GET"),
        ]:
            reply = self.http.request(method, path)
            self.assertJsonError(reply, 405)
            self.assertIn(allowed, (reply.header("allow") or "").replace(" ", "").split(","))


class BodyLimitTests(NodeTestCase):
    """Bodies past C{limits.max_body_size} get 413, whether or not they give a length."""

    limits = {"max_body_size": 256}

    def setUp(self) -> None:
        super().setUp()
        RecordingRequest.made = []
        self.http.site.requestFactory = RecordingRequest

    def kept(self) -> bytes:
        """:returns: what the one request made so far holds of its body."""
        [request] = RecordingRequest.made
        content: bytes = request.content.getvalue()
        return content

    def call_of_size(self, size: int) -> bytes:
        """:returns: a call of C{math.update}, padded with whitespace to C{size} bytes."""
        body = encoded({"jsonrpc": "2.0", "method": "math.update", "params": ["big"], "id": 1})
        return body + b" " * (size - len(body))

    def assertTooLarge(self, connection: RawConnection) -> None:
        code, headers, body = connection.response()
        self.assertEqual((code, headers[b"content-type"]), (413, b"application/json"))
        self.assertEqual(json.loads(body)["status"], 413)
        self.assertEqual(self.math.notes, [])

    def assertServed(self, connection: RawConnection) -> None:
        code, _, body = connection.response()
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body), {"jsonrpc": "2.0", "result": None, "id": 1})
        self.assertEqual(self.math.notes, [("update", ("big",))])

    def test_length_over_limit(self) -> None:
        """
        A body whose Content-Length is over the limit gets 413 JSON at once
        (a client may wait for an answer before sending more), is read and
        dropped, never runs; the connection closes once it is in.
        """
        body = self.call_of_size(257)
        connection = self.raw()
        connection.send(
            b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 257\r\n\r\n" + body[:200]
        )
        self.assertTooLarge(connection)
        self.assertEqual(self.kept(), b"")
        self.assertFalse(connection.transport.disconnecting)  # (still reading the body)
        connection.send(body[200:])
        self.assertTrue(connection.transport.disconnecting)
        self.assertEqual(self.kept(), b"")
        self.assertEqual(connection.transport.value().count(b"HTTP/1.1 "), 1)  # one answer
        self.assertEqual(self.math.notes, [])

    def test_length_over_limit_never_sent(self) -> None:
        """A client that declared a body over the limit and sends nothing has its 413 at once."""
        connection = self.raw()
        connection.send(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000000\r\n\r\n")
        self.assertTooLarge(connection)
        self.clock.advance(self.http.site.header_timeout + 2)  # (nothing more came)
        self.assertTrue(connection.transport.disconnecting)
        self.assertEqual(connection.transport.value().count(b"HTTP/1.1 "), 1)  # no 408 after it

    def test_unfinished_head_closed_in_time(self) -> None:
        """
        A head that never ends is answered 408 and closed within a quarter
        second of the header timeout (it was up to a second late).
        """
        self.raw()  # (another connection, opened at another moment)
        self.clock.advance(0.4)
        connection = self.raw()
        connection.send(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        timeout = self.http.site.header_timeout
        self.clock.advance(timeout - 0.01)
        self.assertEqual(connection.transport.value(), b"")
        self.clock.pump([0.01] * 26)
        self.assertTrue(connection.transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(connection.transport.disconnecting)

    def test_length_over_limit_expecting_continue(self) -> None:
        """
        A client that declares a body over the limit and waits for "100
        Continue" gets 413 JSON at once instead, and the connection closes.
        """
        connection = self.raw()
        connection.send(
            b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 257\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        self.assertTrue(connection.transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertNotIn(b"100 Continue", connection.transport.value())
        self.assertTrue(connection.transport.disconnecting)
        connection.send(self.call_of_size(257))  # (sent anyway: dropped)
        self.assertEqual(self.kept(), b"")
        self.assertTooLarge(connection)

    def test_unparsable_request(self) -> None:
        """A request Twisted cannot parse gets 400 with a small JSON body, and is closed."""
        for head in (
            b"GARBAGE\r\n\r\n",
            b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
            b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ):
            connection = self.raw()
            connection.send(head)
            code, headers, body = connection.response()
            self.assertEqual((code, headers[b"content-type"]), (400, b"application/json"), head)
            self.assertEqual(json.loads(body)["status"], 400)
            self.assertTrue(connection.transport.disconnecting)

    def test_length_at_limit(self) -> None:
        """A body of exactly the limit is served."""
        connection = self.raw()
        connection.post(b"/rpc", self.call_of_size(256))
        self.assertServed(connection)

    def test_chunked_over_limit(self) -> None:
        """
        A chunked body that grows past the limit gets 413 JSON as soon as
        it does (as one declared too large, for a client that waits for an
        answer), is dropped, never runs; the connection closes once the
        body is in, or at the header timeout if it never ends.
        """
        body = self.call_of_size(300)
        for ends in (True, False):
            RecordingRequest.made = []
            connection = self.raw()
            connection.send(
                b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for chunk in [body[:100], body[100:200]]:
                connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.assertEqual(connection.transport.value(), b"")
            connection.send(b"%x\r\n%s\r\n" % (100, body[200:]))  # past the limit
            self.assertTooLarge(connection)
            self.assertEqual(self.kept(), b"")
            self.assertFalse(connection.transport.disconnecting)  # (still reading the body)
            if ends:
                connection.send(b"0\r\n\r\n")
            else:
                connection.send(b"100\r\n" + b" " * 256 + b"\r\n")  # more, and no end
                self.clock.advance(self.http.site.header_timeout + 2)
            self.assertTrue(connection.transport.disconnecting)
            self.assertEqual(connection.transport.value().count(b"HTTP/1.1 "), 1)  # one answer

    def test_chunked_at_limit(self) -> None:
        """A chunked body of exactly the limit is served."""
        body = self.call_of_size(256)
        connection = self.raw()
        connection.post_chunked(b"/rpc", [body[:100], body[100:200], body[200:]])
        self.assertServed(connection)

    def test_limit_on_other_paths(self) -> None:
        """
        The limit holds for every path, not only /rpc; an admin path this
        client may not use says so first (403, as for a small body).
        """
        body = encoded({"address": "ws://127.0.0.1:9"})
        for path, expected in ((b"/registry", 413), (b"/registry/peers/add", 403)):
            connection = self.raw()
            connection.post(path, body + b" " * (257 - len(body)))
            code, headers, _ = connection.response()
            self.assertEqual((code, headers[b"content-type"]), (expected, b"application/json"))
        self.assertEqual(self.node.peer_admin.dialers, {})

    def test_form_bodies_are_json(self) -> None:
        """A JSON-RPC body labelled as a form submission is still read as JSON."""
        for content_type in [
            b"multipart/form-data; boundary=x",
            b"application/x-www-form-urlencoded",
        ]:
            connection = self.raw()
            connection.post(
                b"/rpc",
                encoded({"jsonrpc": "2.0", "method": "math.sum", "params": [1, 2], "id": 1}),
                b"Content-Type: %s\r\n" % content_type,
            )
            code, _, body = connection.response()
            self.assertEqual((code, json.loads(body)["result"]), (200, 3), content_type)


class HealthTests(NodeTestCase):
    """C{GET /health}."""

    def test_fields(self) -> None:
        """/health answers 200 JSON with exactly the SPEC's fields, of the right types."""
        self.clock.advance(12.5)
        reply = self.http.request("GET", "/health")
        self.assertEqual((reply.code, reply.header("content-type")), (200, "application/json"))
        health = reply.json()
        self.assertEqual(
            set(health),
            {"status", "node_id", "peer_count", "server_count", "uptime_s", "timestamp"},
        )
        self.assertEqual((health["status"], health["node_id"]), ("healthy", NODE_ID))
        for name in ["peer_count", "server_count"]:
            self.assertIs(type(health[name]), int, name)
        self.assertEqual((health["peer_count"], health["server_count"]), (0, 2))  # node, math
        self.assertIsInstance(health["uptime_s"], float)
        self.assertEqual(health["uptime_s"], 12.5)
        self.assertTimestamp(health["timestamp"], datetime.fromtimestamp(T0 + 12.5, UTC))


class RegistryTests(NodeTestCase):
    """C{GET /registry} and C{/registry/servers}, C{/registry/peers}, C{/registry/routes}."""

    def get(self, path: str) -> Any:
        reply = self.http.request("GET", path)
        self.assertEqual((reply.code, reply.header("content-type")), (200, "application/json"))
        return reply.json()

    def test_registry(self) -> None:
        """/registry holds the node id, its servers, its peers and an RFC 3339 timestamp."""
        self.clock.advance(3)
        registry = self.get("/registry")
        self.assertEqual(set(registry), {"node_id", "servers", "peers", "timestamp"})
        self.assertEqual(registry["node_id"], NODE_ID)
        self.assertEqual(registry["servers"], self.get("/registry/servers"))
        self.assertEqual(registry["peers"], {})
        self.assertTimestamp(registry["timestamp"], self.now())

    def test_servers(self) -> None:
        """/registry/servers lists each local server with its methods, at 0 hops, up."""
        self.clock.advance(3)
        now = self.get("/health")["timestamp"]
        servers = self.get("/registry/servers")

        def entry(name: str, methods: list[str]) -> dict[str, Any]:
            return {
                "name": name,
                "node_id": NODE_ID,
                "methods": methods,
                "is_local": True,
                "last_seen": now,
                "hops": 0,
                "rtt_ms": 0.0,
                "state": "up",
            }

        self.assertEqual(
            servers,
            {
                "node": [entry("node", ["echo", "info", "ping", "status", "traceroute"])],
                "math": [entry("math", sorted(exposed_methods(Math)))],
            },
        )
        self.assertTimestamp(servers["math"][0]["last_seen"], self.now())

    def test_alone(self) -> None:
        """A lone node has no peers and no routes."""
        self.assertEqual(self.get("/registry/peers"), {})
        self.assertEqual(self.get("/registry/routes"), {})

    def test_with_a_peer(self) -> None:
        """With a linked peer, its servers, the peer and a one-hop route to it are listed."""
        other = memory_node("n2", self.clock)
        network = MemoryMesh()
        network.link(self.node, other)
        network.settle()
        servers = self.get("/registry/servers")
        [local, remote] = servers["node"]
        self.assertEqual((local["node_id"], local["is_local"], local["hops"]), (NODE_ID, True, 0))
        self.assertEqual((remote["node_id"], remote["is_local"], remote["hops"]), ("n2", False, 1))
        self.assertEqual(remote["methods"], ["echo", "info", "ping", "status", "traceroute"])
        # Last heard from during the exchange that settle() let run.
        self.assertTimestamp(remote["last_seen"], datetime.fromtimestamp(T0, UTC), self.now())
        peers = self.get("/registry/peers")
        self.assertEqual(list(peers), ["n2"])
        self.assertEqual(
            (peers["n2"]["node_id"], peers["n2"]["direction"], peers["n2"]["is_healthy"]),
            ("n2", "outbound", True),
        )
        routes = self.get("/registry/routes")
        self.assertEqual(
            (routes["n2"]["next_hop"], routes["n2"]["hops"]),
            ("n2", 1),
        )
        self.assertEqual(self.get("/health")["peer_count"], 1)


class PeerManagementTests(NodeTestCase):
    """C{POST /registry/peers/add} and C{DELETE /registry/peers/remove}."""

    URL = "ws://127.0.0.1:9/ws/p2p?node_id=" + NODE_ID

    def add(self, body: bytes) -> Reply:
        return self.http.request("POST", "/registry/peers/add", body)

    def remove(self, body: bytes) -> Reply:
        return self.http.request("DELETE", "/registry/peers/remove", body)

    def dialled(self) -> list[tuple[str, int]]:
        """:returns: the TCP connections the node has attempted."""
        return [(host, port) for host, port, *_ in self.clock.tcpClients]

    def stop(self) -> None:
        """Stop the node and check that it left no timer behind."""
        self.assertIsNone(self.successResultOf(self.node.stopService()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_add_bad_body(self) -> None:
        """A body that is not C{{"address": URL, "node_id"?: ID}} gets 400 and dials nothing."""
        self.node.startService()
        for body in [
            b"",
            b"not json",
            b"\xff\xfe",
            b'["ws://127.0.0.1:9"]',
            b"{}",
            b'{"address": 9}',
            b'{"address": "ws://127.0.0.1:9", "node_id": 7}',
            b'{"address": "ftp://127.0.0.1:9"}',
            b'{"address": "ws://127.0.0.1:99999"}',
        ]:
            self.assertJsonError(self.add(body), 400)
        self.assertEqual((self.node.peer_admin.dialers, self.dialled()), ({}, []))
        self.stop()

    def test_add(self) -> None:
        """A good address gets 200 and the running node dials it at once, on its own reactor."""
        self.node.startService()
        reply = self.add(b'{"address": "ws://127.0.0.1:9"}')
        self.assertEqual((reply.code, reply.header("content-type")), (200, "application/json"))
        self.assertEqual(reply.json(), {"status": "dialling", "address": "ws://127.0.0.1:9"})
        self.assertEqual(list(self.node.peer_admin.dialers), [self.URL])
        self.assertEqual(self.dialled(), [("127.0.0.1", 9)])
        self.assertJsonError(self.add(b'{"address": "http://127.0.0.1:9"}'), 400)  # the same peer
        self.stop()

    def test_add_before_start(self) -> None:
        """A peer added to a node that is not running yet is dialled when the node starts."""
        self.assertEqual(self.add(b'{"address": "127.0.0.1:9", "node_id": "p1"}').code, 200)
        self.assertEqual(list(self.node.peer_admin.dialers), [self.URL])
        self.assertEqual(self.dialled(), [])
        self.node.startService()
        self.assertEqual(self.dialled(), [("127.0.0.1", 9)])
        self.stop()

    def test_one_peer_in_two_spellings(self) -> None:
        """
        A peer the configuration names twice, in two spellings, is dialled
        once when the node starts (it was an error in a start-up trigger).
        """
        node = memory_node(
            "twice",
            self.clock,
            add_peer=["ws://127.0.0.1:9", "http://127.0.0.1:9/", "ws://127.0.0.1:9/ws/p2p"],
        )
        node.startService()
        self.assertEqual(list(node.peer_admin.dialers), ["ws://127.0.0.1:9/ws/p2p?node_id=twice"])
        self.assertEqual(self.dialled(), [("127.0.0.1", 9)])
        self.assertIsNone(self.successResultOf(node.stopService()))

    def test_remove_unknown(self) -> None:
        """Removing a peer the node neither dials nor is linked to gets 404 JSON."""
        self.assertJsonError(self.remove(b'{"node_id": "nobody"}'), 404)

    def test_remove_bad_body(self) -> None:
        """A body that is not C{{"node_id": ID}} gets 400 JSON."""
        for body in [b"", b"not json", b'["p1"]', b"{}", b'{"node_id": 3}']:
            self.assertJsonError(self.remove(body), 400)

    def test_remove(self) -> None:
        """Removing a dialled peer by its id gets 200 and stops its dialler."""
        self.node.startService()
        self.assertEqual(self.add(b'{"address": "ws://127.0.0.1:9", "node_id": "p1"}').code, 200)
        [dialer] = self.node.peer_admin.dialers.values()
        reply = self.remove(b'{"node_id": "p1"}')
        self.assertEqual((reply.code, reply.header("content-type")), (200, "application/json"))
        self.assertEqual(reply.json(), {"status": "removed", "node_id": "p1"})
        self.assertEqual(self.node.peer_admin.dialers, {})
        self.assertFalse(dialer.running)
        self.assertJsonError(self.remove(b'{"node_id": "p1"}'), 404)
        self.stop()


def samples(exposition: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """:returns: every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition.decode())
        for sample in family.samples
    }


def pending_gauges(exposition: bytes) -> dict[str, float]:
    """:returns: the value of each gauge whose name contains C{pending}."""
    return {
        family.name: family.samples[0].value
        for family in text_string_to_metric_families(exposition.decode())
        if family.type == "gauge" and "pending" in family.name
    }


class MetricsTests(NodeTestCase):
    """C{GET /metrics}."""

    def metrics(self, http: NodeHttp | None = None) -> bytes:
        reply = (http or self.http).request("GET", "/metrics")
        self.assertEqual(reply.code, 200)
        self.assertTrue((reply.header("content-type") or "").startswith("text/plain"))
        return reply.body

    def test_calls(self) -> None:
        """/metrics counts calls by outcome and their latency, in Prometheus text."""
        self.answer({"jsonrpc": "2.0", "method": "math.sum", "params": [1], "id": 1})
        self.answer({"jsonrpc": "2.0", "method": "nosuch.method", "id": 2})
        found = samples(self.metrics())
        self.assertEqual(found[("relaytx_calls_total", (("outcome", "ok"),))], 1)
        self.assertEqual(found[("relaytx_calls_total", (("outcome", "MethodNotFound"),))], 1)
        self.assertEqual(found[("relaytx_call_latency_seconds_count", ())], 2)
        self.assertEqual(found[("relaytx_call_latency_seconds_bucket", (("le", "+Inf"),))], 2)

    def test_pending_gauge(self) -> None:
        """A gauge whose name contains C{pending} counts the remote calls the node waits on."""
        self.assertEqual(set(pending_gauges(self.metrics()).values()), {0})
        other = memory_node("n2", self.clock)
        remote = Math()
        other.expose("math", remote)
        network = link_nodes(self.node, other).network
        network.settle()
        body = encoded({"jsonrpc": "2.0", "method": "n2/math.later", "id": 1})
        d = self.http.start("POST", "/rpc", body)
        network.pump()
        self.assertNoResult(d)
        self.assertIn(1, pending_gauges(self.metrics()).values())
        remote.waiting[0].callback("remote")
        network.pump()
        self.assertEqual(self.http.finish(d).json()["result"], "remote")
        self.assertEqual(set(pending_gauges(self.metrics()).values()), {0})


class HttpDetailTests(NodeTestCase):
    """
    Details of SPEC section 4 and of HTTP that relaytx once got wrong: JSON
    404s under /ws, closing after a 413, the node's own reactor for HTTP
    timers, no length on a 204, valid node ids for added peers.
    """

    def test_ws_paths_not_found(self) -> None:
        """/ws and unknown paths under it get 404 JSON, like every other unknown path."""
        for path in ["/ws", "/ws/", "/ws/nope"]:
            self.assertJsonError(self.http.request("GET", path), 404)

    def test_paths_under_ws_endpoints_not_found(self) -> None:
        """
        Paths below /ws/rpc and /ws/p2p get 404 JSON, a WebSocket upgrade
        to them included: only the endpoints themselves are upgraded.
        """
        for path in ["/ws/rpc/", "/ws/rpc/x", "/ws/p2p/x?node_id=x", "/ws/p2p/a/b"]:
            self.assertJsonError(self.http.request("GET", path), 404)
            connection = self.raw()
            connection.send(
                b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            code, _, body = connection.response()
            self.assertEqual((code, json.loads(body)["status"]), (404, 404), path)

    def test_ws_endpoints_wrong_methods(self) -> None:
        """
        /ws/rpc and /ws/p2p are upgraded from a GET: other methods get 405
        JSON with C{Allow: GET}; a GET that is not an upgrade, 400.
        """
        for path in ["/ws/rpc", "/ws/p2p?node_id=x"]:
            for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"]:
                reply = self.http.request(method, path)
                self.assertJsonError(reply, 405)
                self.assertEqual(reply.header("allow"), "GET")
            self.assertJsonError(self.http.request("GET", path), 400)

    def filling_channel(self) -> tuple[_FillingTransport, Any]:
        """:returns: a connection to the site whose socket buffer fills (L{_FillingTransport})."""
        transport = _FillingTransport(peerAddress=CLIENT)
        channel: Any = self.http.site.buildProtocol(CLIENT)
        channel.callLater = self.clock.callLater
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
        return transport, channel

    def test_pipelined_requests_wait_for_the_buffer(self) -> None:
        """
        Requests read ahead of their turn (pipelined, in one read) begin
        only while the socket's buffer has room: a client that reads none
        of its answers is not answered into memory without end.
        """
        transport, channel = self.filling_channel()
        pipelined = _pipelined(10, "x" * 6000)
        channel.dataReceived(pipelined)
        answered = [transport.value()]
        while transport.full:
            transport.drain()
            answered.append(transport.value())
        # Past 10 000 bytes the buffer is full: two answers of 6 KB at a time
        # (and the last two fill it too, with nothing left to answer).
        self.assertEqual([a.count(b"HTTP/1.1 200") for a in answered], [2, 2, 2, 2, 2, 0])
        ids = [json.loads(a[-100:].rpartition(b'"id":')[2][:-1]) for a in answered[:-1]]
        self.assertEqual(ids, [1, 3, 5, 7, 9])

    def test_pipelined_requests_read_while_full(self) -> None:
        """
        Bytes read while the next request waits for the buffer (a TLS
        layer hands over what it had decrypted after the pause) wait with
        it, unparsed: every request is answered, in order, with no 400.
        """
        transport, channel = self.filling_channel()
        pipelined = _pipelined(10, "x" * 6000)
        first = pipelined.index(b"POST", pipelined.index(b"POST", 1) + 1) + 100  # into the third
        channel.dataReceived(pipelined[:first])
        self.assertTrue(transport.full)
        for at in range(first, len(pipelined), 1000):
            channel.dataReceived(pipelined[at : at + 1000])
        answered = transport.value()
        while transport.full:
            transport.drain()
            answered += transport.value()
        self.assertEqual(answered.count(b"HTTP/1.1 200"), 10)
        self.assertNotIn(b"HTTP/1.1 400", answered)
        ids = [json.loads(i) for i in re.findall(rb'"id":(\d+)\}', answered)]
        self.assertEqual(ids, list(range(10)))

    def test_too_large_closes(self) -> None:
        """After a 413 announcing C{Connection: close}, the node closes the connection."""
        connection = self.raw()
        connection.post(b"/rpc", b"x" * (1024 * 1024 + 1))
        code, headers, _ = connection.response()
        self.assertEqual((code, headers[b"connection"]), (413, b"close"))
        self.assertTrue(connection.transport.disconnecting)

    def test_site_on_node_reactor(self) -> None:
        """The site make_site builds keeps its timers on the node's reactor."""
        self.assertIs(self.http.site.reactor, self.node.reactor)

    def test_no_content_has_no_length(self) -> None:
        """A 204 answer carries no Content-Length (RFC 9110 section 8.6)."""
        connection = self.raw()
        connection.post(b"/rpc", encoded({"jsonrpc": "2.0", "method": "math.update"}))
        code, headers, _ = connection.response()
        self.assertEqual(code, 204)
        self.assertNotIn(b"content-length", headers)

    def test_add_invalid_node_id(self) -> None:
        """POST /registry/peers/add refuses a node_id that is not 1-64 of A-Za-z0-9._-."""
        for node_id in ["", "bad id!", "x" * 65]:
            body = encoded({"address": "ws://127.0.0.1:9", "node_id": node_id})
            self.assertJsonError(self.http.request("POST", "/registry/peers/add", body), 400)
        self.assertEqual(self.node.peer_admin.dialers, {})
