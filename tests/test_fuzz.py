"""
Property-based and hostile-input tests (hypothesis) for the parts of a node
that read what strangers send: the wire codec, the JSON-RPC handler and
method resolution, and a peer session fed random frames.

Every property runs with a fixed seed (C{derandomize=True}) and no example
database, so a run is the same on every machine.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from hypothesis import event, example, given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from relaytx import _json
from relaytx._calls import CallTarget
from relaytx._jsonrpc import MAX_BATCH, JsonRpcHandler, resolve
from relaytx.errors import (
    AccessDenied,
    CallError,
    CallTimeout,
    InternalError,
    InvalidParams,
    MalformedMessage,
    MethodNotFound,
    NodeUnreachable,
    NoSuchMethod,
    NoSuchServer,
    Overloaded,
    RemoteCallError,
    UnknownMessageType,
)
from relaytx.peer import CLOSE_INVALID_PAYLOAD
from relaytx.testing import FakeLinkTransport, memory_node
from relaytx.wire import (
    CORE_TYPES,
    NODE_ID_RE,
    CallSpec,
    Envelope,
    Ping,
    Pong,
    RegistrySync,
    RouteAdvert,
    RouteMessage,
    ServerCall,
    ServerResponse,
    decode,
    encode,
)
from tests.support import fuzz_settings

FUZZ = fuzz_settings(max_examples=250)

JSONRPC_CODES = frozenset({-32700, -32600, -32601, -32602, -32603, *range(-32005, -31999)})

# Strategies.

# Integers that survive a JSON round trip (orjson reads wider ones as floats).
json_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
json_floats = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | json_ints | json_floats | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
# Anything JSON can hold, including what the round trip does not keep exactly.
loose_values = st.recursive(
    json_scalars | st.integers() | st.just(1e308) | st.just(-0.0),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)

texts = st.text(max_size=10)
NODE_IDS = ["hA", "hB", "hC", "node", "x" * 64, "bad id", ""]
node_ids = st.sampled_from(NODE_IDS) | st.text(max_size=8)


def deep_text(depth: int, objects: bool = False) -> str:
    """:returns: JSON nested C{depth} levels deep (orjson parses up to 1024)."""
    if objects:
        return '{"a":' * depth + "1" + "}" * depth
    return "[" * depth + "]" * depth


deep_json = st.builds(deep_text, st.integers(min_value=1, max_value=1100), st.booleans())


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """:returns: mostly C{strategy}, sometimes any JSON value at all (a wrong type)."""
    return st.integers(0, 3).flatmap(lambda i: loose_values if i == 0 else strategy)


def fields(
    required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """:returns: objects with these fields, a required one now and then missing."""
    full = st.fixed_dictionaries(required, optional=optional)
    partial = st.fixed_dictionaries({}, optional={**required, **optional})
    return st.integers(0, 3).flatmap(lambda i: partial if i == 0 else full)


call_objects = fields(
    {
        "server_name": maybe(st.sampled_from(["node", "counter", "nope", ""])),
        "method": maybe(st.sampled_from(["echo", "ping", "info", "_private", "nope"])),
    },
    {
        "args": maybe(st.lists(json_values, max_size=3)),
        "kwargs": maybe(st.dictionaries(st.sampled_from(["a", "self", ""]), json_values)),
        "timeout": maybe(st.floats(0, 1e308) | st.integers(0, 10**6) | st.just(-1)),
    },
)
server_tables = st.dictionaries(
    st.text(max_size=6),
    maybe(fields({}, {"methods": maybe(st.lists(st.text(max_size=5), max_size=3))})),
    max_size=3,
)


@st.composite
def route_tables(draw: st.DrawFn) -> dict[str, Any]:
    """:returns: a C{routes} table whose entries are mostly well formed."""
    table: dict[str, Any] = {}
    for dest in draw(st.lists(st.sampled_from(NODE_IDS), max_size=3, unique=True)):
        path = [*draw(st.lists(st.sampled_from(NODE_IDS), max_size=2)), dest]
        entry: dict[str, Any] = {}
        if draw(st.booleans()):
            entry["path"] = draw(maybe(st.just(path) | st.lists(st.sampled_from(NODE_IDS))))
            if draw(st.booleans()):
                entry["m"] = draw(maybe(st.integers(-1, 5) | st.booleans()))
        elif draw(st.booleans()):
            entry["p"] = draw(maybe(st.sampled_from([*NODE_IDS, "bad id"])))
            if draw(st.booleans()):
                entry["c"] = draw(maybe(st.integers(-1, 5)))
        if draw(st.booleans()):
            entry["s"] = draw(
                maybe(
                    st.dictionaries(st.text(max_size=4), maybe(st.lists(st.text(max_size=3))))
                    | st.integers(-1, 2)
                )
            )
        table[dest] = draw(maybe(st.just(entry)))
    return table


link_news = st.lists(
    maybe(
        st.tuples(st.sampled_from(NODE_IDS), st.sampled_from(NODE_IDS), st.integers(0, 9)).map(list)
    ),
    max_size=2,
)


def envelope_dicts(data: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """:returns: envelope-shaped objects whose fields may have any type, or be missing."""
    return fields(
        {
            "type": maybe(st.sampled_from([*(c.TYPE for c in CORE_TYPES), "chat", ""])),
            "from": maybe(st.sampled_from(["hA", "hC", "hB"])),
            "to": maybe(st.sampled_from(["hB", "hC", "hA"])),
            "data": maybe(data),
        },
        {
            "id": maybe(st.text(max_size=8)),
            "timestamp": maybe(st.text(max_size=8)),
            "route": maybe(st.lists(maybe(st.sampled_from(["hA", "hB", "hC"])), max_size=3)),
            "ttl": maybe(st.integers(-2, 12)),
            "reply_to": maybe(st.text(max_size=8)),
            "extra": json_values,
        },
    )


# Payload-shaped data for each core type, fields of the right type or not.
PAYLOAD_DATA: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "ping": fields({}, {"timestamp": loose_values}),
    "pong": fields({}, {"timestamp": loose_values, "pong_time": maybe(json_floats | json_ints)}),
    "server_call": fields(
        {"call": maybe(call_objects)}, {"response_id": maybe(st.none() | st.text(max_size=8))}
    ),
    "server_response": fields(
        {"response_id": maybe(st.none() | st.text(max_size=8)), "success": maybe(st.booleans())},
        {
            "node_id": maybe(node_ids),
            "result": loose_values,
            "error": maybe(st.text(max_size=8)),
            "error_code": maybe(st.sampled_from(sorted(JSONRPC_CODES)) | json_ints),
            "error_data": maybe(st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
        },
    ),
    "registry_sync": fields(
        {},
        {
            "servers": maybe(server_tables),
            "routes": maybe(route_tables()),
            "seq": maybe(st.integers(-1, 5)),
            "tables": maybe(
                st.lists(
                    maybe(st.dictionaries(st.text(max_size=4), st.lists(st.text(max_size=3)))),
                    max_size=2,
                )
            ),
            "sn": maybe(st.integers(-1, 5)),
            "lost": maybe(st.dictionaries(st.sampled_from(NODE_IDS), maybe(st.integers(-1, 5)))),
            "full": maybe(st.booleans()),
            "more": maybe(st.booleans()),
            "resync": maybe(st.booleans()),
            "withdraw": maybe(st.lists(maybe(st.sampled_from(NODE_IDS)), max_size=2)),
            "down": maybe(link_news),
            "up": maybe(link_news),
        },
    ),
}
PAYLOAD_DATA["route_message"] = fields(
    {
        "original_message": maybe(
            envelope_dicts(st.one_of(*PAYLOAD_DATA.values()) | st.dictionaries(texts, json_values))
        )
    },
    {},
)
payload_data = st.one_of(*PAYLOAD_DATA.values())
typed_data = st.one_of(
    *(st.tuples(st.just(kind), data) for kind, data in PAYLOAD_DATA.items()),
    st.tuples(st.sampled_from([c.TYPE for c in CORE_TYPES]) | st.text(max_size=8), payload_data),
)
typed_envelopes = typed_data.flatmap(
    lambda kind_data: envelope_dicts(st.just(kind_data[1])).map(
        lambda env: {**env, "type": kind_data[0]} if "type" in env else env
    )
)


# Valid payloads, one strategy per core type.

method_lists = st.lists(texts, max_size=3).map(tuple)
servers = st.dictionaries(texts, method_lists, max_size=3)


@st.composite
def route_adverts(draw: st.DrawFn) -> dict[str, RouteAdvert]:
    routes = {}
    for dest in draw(st.lists(st.sampled_from(["hC", "hD", "hE"]), max_size=3, unique=True)):
        hops = draw(st.lists(st.sampled_from(["hA", "hB", "hF"]), max_size=2))
        kind = draw(st.sampled_from(["path", "parent", "servers"]))
        server_list = draw(st.none() | servers)
        if kind == "path":
            metric = draw(st.none() | st.integers(0, 99))
            routes[dest] = RouteAdvert((*hops, dest), server_list, None, metric)
        elif kind == "parent":
            metric = draw(st.none() | st.integers(0, 99))
            routes[dest] = RouteAdvert(
                None, server_list, draw(st.sampled_from(["hA", "hB"])), metric
            )
        else:
            routes[dest] = RouteAdvert(None, server_list)
    return routes


links = st.lists(
    st.tuples(st.sampled_from(["hA", "hB"]), st.sampled_from(["hC", "hD"]), st.integers(0, 99)),
    max_size=2,
).map(tuple)


call_specs = st.builds(
    CallSpec,
    server_name=texts,
    method=texts,
    args=st.lists(json_values, max_size=3).map(tuple),
    kwargs=st.dictionaries(texts, json_values, max_size=3),
    timeout=st.none() | st.floats(min_value=0, max_value=86400) | st.integers(0, 86400),
)
ok_responses = st.builds(
    ServerResponse,
    response_id=st.none() | texts,
    success=st.just(True),
    node_id=st.none() | texts,
    result=json_values,
)
error_responses = st.builds(
    ServerResponse,
    response_id=st.none() | texts,
    success=st.just(False),
    node_id=st.none() | texts,
    error=texts,
    error_code=st.none() | json_ints,
    error_data=st.none() | st.dictionaries(texts, json_values, min_size=1, max_size=3),
)
simple_payloads = st.one_of(
    st.builds(Ping, timestamp=json_values),
    st.builds(Pong, timestamp=json_values, pong_time=st.none() | json_floats | json_ints),
    st.builds(ServerCall, call=call_specs, response_id=st.none() | texts),
    ok_responses,
    error_responses,
    st.builds(
        RegistrySync,
        servers=st.none() | servers,
        routes=st.none() | route_adverts(),
        withdrawn=st.lists(st.sampled_from(["hX", "hY"]), max_size=2).map(tuple),
        seq=st.none() | st.integers(0, 99),
        full=st.booleans(),
        more=st.booleans(),
        resync=st.booleans(),
        down=links,
        up=links,
        sn=st.none() | st.integers(0, 99),
        lost=st.none()
        | st.dictionaries(st.sampled_from(["hX", "hY"]), st.integers(0, 9), min_size=1),
    ),
)


#: Node ids as the wire allows them (SPEC sections 3 and 10).
valid_node_ids = st.from_regex(r"[A-Za-z0-9._-]{1,10}", fullmatch=True)


def envelopes_of(payloads: st.SearchStrategy[Any]) -> st.SearchStrategy[Envelope]:
    """:returns: valid envelopes carrying C{payloads}."""
    return st.builds(
        lambda payload, **fields: Envelope(type=payload.TYPE, data=payload.to_data(), **fields),
        payloads,
        sender=valid_node_ids,
        to=valid_node_ids,
        id=st.none() | texts,
        timestamp=st.none() | texts,
        route=st.lists(valid_node_ids, max_size=4).map(tuple),
        ttl=json_ints,
        reply_to=st.none() | texts,
    )


valid_payloads = simple_payloads | st.builds(RouteMessage, envelopes_of(simple_payloads))


class JsonCodecTests(SynchronousTestCase):
    """L{relaytx._json} writes back whatever it reads, however deep."""

    @FUZZ
    @given(st.integers(min_value=1, max_value=1100), st.booleans())
    @example(254, False).via("orjson's own writing limit")
    @example(255, True).via("one past it")
    @example(1000, False).via("past the standard library's recursion limit")
    @example(1024, True).via("orjson's parsing limit")
    @example(1025, False).via("one past it")
    def test_deep_round_trip(self, depth: int, objects: bool) -> None:
        """A document nested up to orjson's parse limit (1024) is written back byte for byte."""
        text = deep_text(depth, objects)
        if depth > 1024:
            self.assertRaises(_json.JSONDecodeError, _json.loads, text)
            return
        self.assertEqual(_json.dumps(_json.loads(text)), text.encode())

    def test_deep_documents(self) -> None:
        """
        Documents 1000 and 1024 levels deep are written back, with the normal
        recursion limit (hypothesis raises it while a property runs).
        """
        for depth in (1000, 1024):
            for objects in (False, True):
                text = deep_text(depth, objects).encode()
                self.assertEqual(_json.dumps(_json.loads(text)), text)

    def test_deep_cycle(self) -> None:
        """A cycle hidden below the standard library's recursion limit is a TypeError."""
        outer: list[Any] = []
        inner = outer
        for _ in range(2000):
            inner.append([])
            inner = inner[0]
        inner.append(outer)
        self.assertRaises(TypeError, _json.dumps, outer)

    def test_not_finite_refused(self) -> None:
        """
        NaN and infinities, which orjson would write as null, are refused
        (TypeError), wherever they hide; a null, and finite floats, are not.
        """
        nan, inf = float("nan"), float("inf")
        deep: list[Any] = [nan]
        for _ in range(1100):  # (past the recursive encoders: written with a stack of its own)
            deep = [deep]
        for value in [nan, -inf, [1, {"a": (None, inf)}], {"x": [[nan]]}, deep, [2**70, nan]]:
            self.assertRaises(TypeError, _json.dumps, value)
            self.assertRaises(TypeError, _json.dumps_frame, value, 2000)
        for value in [None, [None, 1.5, -0.0, 1e308], {"a": None, "b": [2, "null"]}]:
            self.assertEqual(_json.loads(_json.dumps(value)), value)
            self.assertEqual(_json.loads(_json.dumps_frame(value, 100)), value)

    @FUZZ
    @given(json_values)
    def test_round_trip(self, value: Any) -> None:
        """Every JSON value survives dumps then loads."""
        self.assertEqual(_json.loads(_json.dumps(value)), value)


class DecodeFuzzTests(SynchronousTestCase):
    """L{decode} and L{MessageTypes.payload} reject bad input with their own errors only."""

    def _decode(self, frame: bytes | str) -> Envelope | None:
        try:
            envelope = decode(frame)
        except MalformedMessage:
            return None
        self.assertIsInstance(envelope.type, str)
        self.assertIsInstance(envelope.sender, str)
        self.assertIsInstance(envelope.to, str)
        self.assertIsInstance(envelope.data, dict)
        self.assertTrue(all(isinstance(hop, str) for hop in envelope.route))
        self.assertIs(type(envelope.ttl), int)
        return envelope

    @FUZZ
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, frame: bytes) -> None:
        """Random bytes decode to a well-typed envelope or raise MalformedMessage."""
        self._decode(frame)

    @FUZZ
    @given(st.text(st.characters(codec=None, exclude_categories=()), max_size=50))
    def test_arbitrary_text(self, frame: str) -> None:
        """Random text, lone surrogates included, raises only MalformedMessage."""
        event("has a surrogate" if any(0xD800 <= ord(c) < 0xE000 for c in frame) else "plain")
        self._decode(frame)

    @FUZZ
    @given(deep_json)
    def test_deep_frames(self, frame: str) -> None:
        """Deeply nested frames are refused with MalformedMessage, never RecursionError."""
        self.assertRaises(MalformedMessage, decode, frame)

    @FUZZ
    @given(loose_values)
    def test_arbitrary_json(self, value: Any) -> None:
        """Any JSON value but an object is refused as not_object; an object may decode."""
        frame = json.dumps(value).encode()
        try:
            decode(frame)
        except MalformedMessage as e:
            if not isinstance(value, dict):
                self.assertEqual(e.reason, "not_object")

    @FUZZ
    @given(typed_envelopes)
    def test_envelope_shaped(self, obj: dict[str, Any]) -> None:
        """Envelope-shaped objects with fields of random types raise only MalformedMessage."""
        envelope = self._decode(json.dumps(obj))
        event("decoded" if envelope is not None else "refused")
        required = {"type": str, "from": str, "to": str, "data": dict}
        fits = all(isinstance(obj.get(k), t) for k, t in required.items())
        if envelope is None:
            return
        self.assertTrue(fits, obj)
        self.assertEqual(envelope.ttl, obj.get("ttl") if obj.get("ttl") is not None else 10)
        self.assertEqual((envelope.type, envelope.sender), (obj["type"], obj["from"]))

    @FUZZ
    @given(typed_data)
    def test_payload(self, kind_data: tuple[str, dict[str, Any]]) -> None:
        """
        A payload of any core type built from random data raises only
        MalformedMessage or UnknownMessageType, and what it accepts it can
        write back unchanged.
        """
        kind, data = kind_data
        envelope = Envelope(type=kind, sender="hA", to="hB", data=data)
        try:
            payload = CORE_TYPES.payload(envelope)
        except UnknownMessageType:
            self.assertNotIn(kind, CORE_TYPES)
            event("unknown type")
            return
        except MalformedMessage:
            self.assertIn(kind, CORE_TYPES)
            event(f"malformed {kind}")
            return
        event(f"accepted {kind}")
        self.assertEqual(payload.TYPE, kind)
        written = payload.to_data()
        again = CORE_TYPES.payload(decode(encode(Envelope(kind, "hA", "hB", written))))
        self.assertEqual(again.to_data(), _json.loads(_json.dumps(written)))

    @FUZZ
    @given(envelopes_of(valid_payloads))
    def test_round_trip(self, envelope: Envelope) -> None:
        """A valid envelope of any core type survives encode then decode, payload and all."""
        decoded = decode(encode(envelope))
        self.assertEqual(decoded, envelope)
        self.assertEqual(CORE_TYPES.payload(decoded), CORE_TYPES.payload(envelope))
        self.assertEqual(decode(encode(decoded) + b"\n"), envelope)


# JSON-RPC.


class FakeInvoke:
    """
    An C{invoke} for the handler that answers at once, by method name:
    C{ok.echo} echoes its params, C{err.*} fails with a L{CallError},
    C{bug.*} with a plain exception (an internal error), C{bad.raise}
    raises instead of failing, C{bad.result} returns a set (not JSON), and
    anything else is not found.
    """

    ERRORS = {
        "not_found": MethodNotFound,
        "params": InvalidParams,
        "internal": InternalError,
        "remote": RemoteCallError,
        "timeout": CallTimeout,
        "unreachable": NodeUnreachable,
        "no_server": NoSuchServer,
        "no_method": NoSuchMethod,
        "denied": AccessDenied,
        "overloaded": Overloaded,
    }
    METHODS = [
        "ok.echo",
        *(f"err.{name}" for name in ERRORS),
        "bug.value",
        "bad.raise",
        "bad.result",
        "n1/ok.echo",
        "remote_call",
        "rpc.echo",
        "nope",
    ]

    def __init__(self) -> None:
        self.calls: list[CallTarget] = []

    def __call__(self, target: CallTarget) -> Deferred[Any]:
        self.calls.append(target)
        if target.server == "ok":
            return succeed({"args": list(target.args), "kwargs": target.kwargs})
        if target.server == "err" and target.method in self.ERRORS:
            return fail(self.ERRORS[target.method]("failed", detail=[1, "x"]))
        if target.server == "bug":
            return fail(ValueError("a bug"))
        if (target.server, target.method) == ("bad", "raise"):
            raise KeyError("raised, not failed")
        if (target.server, target.method) == ("bad", "result"):
            return succeed({1, 2})
        raise MethodNotFound(f"Method not found: {target.server}.{target.method}")


ids = st.none() | st.text(max_size=6) | json_ints | json_floats
bad_ids = st.booleans() | st.lists(json_values, max_size=2) | st.dictionaries(texts, json_values)
requests = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.just("2.0") | st.sampled_from(["1.0", "2", ""]) | loose_values,
        "method": st.sampled_from(FakeInvoke.METHODS) | loose_values,
        "params": st.lists(json_values, max_size=3)
        | st.dictionaries(st.text(max_size=5), json_values, max_size=3)
        | loose_values,
        "id": ids | bad_ids,
        "extra": json_values,
    },
)
good_requests = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "method": st.sampled_from(FakeInvoke.METHODS)},
    optional={
        # (params may be left out; when given, as a structure: a null is not one)
        "params": st.lists(json_values, max_size=3)
        | st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        "id": ids,
    },
)
batches = st.lists(
    good_requests | requests | loose_values | st.lists(requests, max_size=2), max_size=6
)
bodies = st.one_of(
    st.binary(max_size=100),
    loose_values.map(json.dumps),
    requests.map(json.dumps),
    good_requests.map(json.dumps),
    batches.map(json.dumps),
    deep_json,
    st.integers(MAX_BATCH - 1, MAX_BATCH + 2).map(lambda n: "[" + ",".join(["1"] * n) + "]"),
)


def _is_notification(request: Any) -> bool:
    return (
        isinstance(request, dict)
        and request.get("jsonrpc") == "2.0"
        and isinstance(request.get("method"), str)
        and "id" not in request
    )


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


class JsonRpcFuzzTests(SynchronousTestCase):
    """L{JsonRpcHandler.handle} answers any body at once with a valid JSON-RPC answer."""

    def _answer(self, body: bytes | str) -> Any:
        invoke = FakeInvoke()
        raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        d = JsonRpcHandler(invoke, "n1").handle(raw, "http:127.0.0.1")
        answer = self.successResultOf(d)
        self.flushLoggedErrors(KeyError, ValueError)  # the fake's "bugs", logged as such
        if answer is None:
            return None
        self.assertIsInstance(answer, bytes)
        self.assertNotIn(b"Traceback", answer)
        return json.loads(answer)

    def _check_response(self, response: Any, request: Any) -> None:
        self.assertIsInstance(response, dict)
        self.assertEqual(response.get("jsonrpc"), "2.0")
        self.assertIn("id", response)
        self.assertEqual(len({"result", "error"} & set(response)), 1, response)
        request_id = request.get("id") if isinstance(request, dict) else None
        expected_id = request_id if _valid_id(request_id) else None
        self.assertEqual(response["id"], expected_id)
        self.assertTrue(_valid_id(response["id"]))
        if "error" in response:
            error = response["error"]
            self.assertIs(type(error["code"]), int)
            self.assertIn(error["code"], JSONRPC_CODES)
            self.assertIsInstance(error["message"], str)
            self.assertNotIn("Traceback", json.dumps(error))
        elif isinstance(request, dict) and request.get("method") in ("ok.echo", "n1/ok.echo"):
            params = request.get("params")
            self.assertEqual(
                response["result"],
                {
                    "args": params if isinstance(params, list) else [],
                    "kwargs": params if isinstance(params, dict) else {},
                },
            )

    @FUZZ
    @given(bodies)
    def test_any_body(self, body: bytes | str) -> None:
        """
        Any body gets None or JSON at once: an answer per non-notification,
        ids echoed only when valid, every error code a JSON-RPC one.
        """
        answer = self._answer(body)
        event(f"answer is {type(answer).__name__}")
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.assertEqual(answer["error"]["code"], -32700)
            self.assertIsNone(answer["id"])
            return
        if not isinstance(request, list):
            if _is_notification(request):
                self.assertIsNone(answer)
            else:
                self._check_response(answer, request)
            return
        if not request or len(request) > MAX_BATCH:
            self.assertEqual(answer["error"]["code"], -32600 if not request else -32005)
            self.assertIsNone(answer["id"])
            return
        expected = [r for r in request if not _is_notification(r)]
        if not expected:
            self.assertIsNone(answer)
            return
        self.assertIsInstance(answer, list)
        self.assertEqual(len(answer), len(expected))
        for response, item in zip(answer, expected, strict=True):
            self._check_response(response, item)

    @FUZZ
    @given(good_requests)
    def test_good_request_codes(self, request: dict[str, Any]) -> None:
        """Each failure of the fake maps to its own code; a raising invoke is -32603."""
        answer = self._answer(json.dumps(request))
        if "id" not in request:
            self.assertIsNone(answer)
            return
        self._check_response(answer, request)
        server, _, method = request["method"].partition(".")
        if request["method"] in ("ok.echo", "n1/ok.echo"):
            self.assertIn("result", answer)
        elif server == "err":
            self.assertEqual(answer["error"]["code"], FakeInvoke.ERRORS[method].code)
        elif server in ("bug", "bad"):
            code = -32000 if method == "result" else -32603
            self.assertEqual(answer["error"]["code"], code)


class DeepJsonRpcTests(SynchronousTestCase):
    """Deeply nested JSON-RPC requests are answered, never failed."""

    def test_deep_params(self) -> None:
        """Params nested 1000 levels deep come back as the result."""
        deep = deep_text(999).encode()
        body = b'{"jsonrpc":"2.0","method":"ok.echo","params":[%s],"id":7}' % deep
        answer = self.successResultOf(JsonRpcHandler(FakeInvoke(), "n1").handle(body))
        self.assertEqual(
            answer, b'{"jsonrpc":"2.0","result":{"args":[%s],"kwargs":{}},"id":7}' % deep
        )

    def test_too_deep(self) -> None:
        """A body nested 100000 levels deep is a parse error."""
        for body in (b"[" * 100_000, b'{"a":' * 100_000):
            answer = json.loads(
                self.successResultOf(JsonRpcHandler(FakeInvoke(), "n1").handle(body))
            )
            self.assertEqual((answer["error"]["code"], answer["id"]), (-32700, None))


class ResolveFuzzTests(SynchronousTestCase):
    """L{resolve} turns any name and params into a sound target or a -32601/-32602 error."""

    @FUZZ
    @given(
        st.sampled_from(["remote_call", "a.b", "n1/a.b", "rpc.x", "a/b/c.d", ".", "a."])
        | st.text(max_size=20),
        loose_values
        | st.fixed_dictionaries(
            {},
            optional={
                "node_id": maybe(st.sampled_from(NODE_IDS)),
                "server_name": maybe(texts),
                "method": maybe(texts),
                "args": maybe(st.lists(json_values, max_size=2)),
                "kwargs": maybe(st.dictionaries(texts, json_values, max_size=2)),
                "timeout": maybe(st.floats() | st.integers(-1, 10**6)),
            },
        ),
    )
    def test_resolve(self, method: str, params: Any) -> None:
        """Resolution raises only MethodNotFound or InvalidParams, and a target is well-formed."""
        try:
            target = resolve(method, params, "http:x")
        except (MethodNotFound, InvalidParams) as e:
            self.assertIsInstance(e, CallError)
            return
        self.assertIsInstance(target.args, tuple)
        self.assertIsInstance(target.kwargs, dict)
        self.assertIsInstance(target.server, str)
        self.assertIsInstance(target.method, str)
        if method != "remote_call":  # remote_call passes any names on to the target
            self.assertTrue(target.server and target.method)
            self.assertEqual(
                f"{target.server}.{target.method}",
                method.partition("/")[2] if target.node_id else method,
            )
        self.assertTrue(0 < target.timeout <= 86400 and not math.isnan(target.timeout))
        if target.node_id is not None:
            self.assertTrue(NODE_ID_RE.fullmatch(target.node_id))
        self.assertEqual(target.caller, "http:x")

    def test_scalar_params(self) -> None:
        """Params that are neither an array nor an object are InvalidParams."""
        for params in (1, "x", True, 1.5):
            self.assertRaises(InvalidParams, resolve, "a.b", params)


class BatchLimitTests(SynchronousTestCase):
    """A batch longer than the limit is refused whole, at once."""

    def test_over_limit(self) -> None:
        """A batch of MAX_BATCH + 1 calls runs none of them and answers one -32005."""
        invoke = FakeInvoke()
        request = {"jsonrpc": "2.0", "method": "ok.echo", "id": 1}
        body = json.dumps([request] * (MAX_BATCH + 1)).encode()
        answer = json.loads(self.successResultOf(JsonRpcHandler(invoke, "n1").handle(body)))
        self.assertEqual((answer["error"]["code"], answer["id"]), (-32005, None))
        self.assertEqual(invoke.calls, [])

    def test_at_limit(self) -> None:
        """A batch of exactly MAX_BATCH calls runs them all."""
        invoke = FakeInvoke()
        request = {"jsonrpc": "2.0", "method": "ok.echo", "id": 1}
        body = json.dumps([request] * MAX_BATCH).encode()
        answer = json.loads(self.successResultOf(JsonRpcHandler(invoke, "n1").handle(body)))
        self.assertEqual(len(answer), MAX_BATCH)
        self.assertEqual(len(invoke.calls), MAX_BATCH)


# A peer session under fire.

GOOD_PING = (
    b'{"type":"ping","id":"probe-ping-0","from":"hA","to":"hB","data":{"timestamp":"probe"}}'
)

frames = st.one_of(
    st.binary(max_size=80),
    loose_values.map(lambda v: json.dumps(v).encode()),
    typed_envelopes.map(lambda v: json.dumps(v).encode()),
    deep_json.map(str.encode),
    deep_json.map(
        lambda d: b'{"type":"ping","from":"hA","to":"hB","data":{"timestamp":%s}}' % d.encode()
    ),
    st.builds(
        lambda payload, sender, to, route: encode(
            Envelope(payload.TYPE, sender, to, payload.to_data(), route=route)
        ),
        valid_payloads,
        st.sampled_from(["hA", "hC", "hB"]),
        st.sampled_from(["hB", "hC", "hA"]),
        st.lists(st.sampled_from(["hA", "hB", "hC"]), max_size=3).map(tuple),
    ),
)


class PeerSessionFuzzTests(SynchronousTestCase):
    """A session fed random frames never raises and keeps answering unless it closed."""

    @FUZZ
    @given(st.lists(frames, min_size=1, max_size=4))
    @example([b'{"type":"ping","from":"hA","to":"hB","data":{"timestamp":%s}}' % b"[" * 1000])
    @example(
        [
            b'{"type":"ping","from":"hA","to":"hB","data":{"timestamp":%s}}'
            % deep_text(1000).encode()
        ]
    )
    def test_random_frames(self, batch: list[bytes]) -> None:
        """
        After any frames, a good ping still gets its pong, unless a frame
        closed the link with 1007; every undecodable frame is counted until
        then (what comes after is dropped unread).
        """
        node = memory_node("hB")
        transport = FakeLinkTransport()
        session = node.mesh.open_link("hA", "inbound", "test", transport)
        dropped = node.metrics.registry.get_sample_value
        for frame in batch:
            try:
                reason = None
                decode(frame)
            except MalformedMessage as e:
                reason = e.reason
            before = dropped("relaytx_messages_dropped_total", {"reason": reason}) or 0
            closed = bool(transport.closes)
            session.data_received(frame)
            if reason is not None:
                after = dropped("relaytx_messages_dropped_total", {"reason": reason}) or 0
                self.assertEqual(after, before if closed else before + 1)
        event(f"closed {transport.close_code}" if transport.closes else "still open")
        if transport.closes:
            self.assertEqual(transport.close_code, CLOSE_INVALID_PAYLOAD)
            self.assertTrue(session.closed)
            return
        transport.clear()
        session.data_received(GOOD_PING)
        pongs = [e for e in transport.envelopes("pong") if e.reply_to == "probe-ping-0"]
        self.assertEqual([p.data["timestamp"] for p in pongs], ["probe"])

    def test_deep_timestamp(self) -> None:
        """A ping whose timestamp is nested 1000 levels deep is answered, echoing it."""
        node = memory_node("hB")
        transport = FakeLinkTransport()
        session = node.mesh.open_link("hA", "inbound", "test", transport)
        transport.clear()
        deep = deep_text(1000).encode()
        session.data_received(
            b'{"type":"ping","from":"hA","to":"hB","data":{"timestamp":%s}}' % deep
        )
        [pong] = transport.envelopes("pong")
        self.assertEqual(_json.dumps(pong.data["timestamp"]), deep)

    def test_deep_call(self) -> None:
        """A call whose argument is nested 1000 levels deep is answered with it."""
        node = memory_node("hB")
        transport = FakeLinkTransport()
        session = node.mesh.open_link("hA", "inbound", "test", transport)
        transport.clear()
        deep = deep_text(1000).encode()
        session.data_received(
            b'{"type":"server_call","from":"hA","to":"hB","data":{"response_id":"r1",'
            b'"call":{"server_name":"node","method":"echo","args":[%s]}}}' % deep
        )
        [response] = transport.envelopes("server_response")
        self.assertEqual(response.data["response_id"], "r1")
        self.assertEqual(_json.dumps(response.data["result"]), b"[" + deep + b"]")
