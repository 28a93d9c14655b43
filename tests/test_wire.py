"""
Tests for L{relaytx.wire}: the envelope, the typed payloads and the codec,
checked against the frames captured from the original implementation
(C{seed-wire-samples.md}).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from typing import Any

import attrs
from attrs import frozen
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relaytx.errors import MalformedMessage, UnknownMessageType
from relaytx.wire import (
    CORE_TYPES,
    DEFAULT_TTL,
    CallSpec,
    CopyDropped,
    Envelope,
    MessageTypes,
    Payload,
    Ping,
    Pong,
    RegistrySync,
    RouteAdvert,
    RouteMessage,
    ServerCall,
    ServerResponse,
    decode,
    encode,
    new_id,
    rfc3339,
    secret_id,
)
from tests.support import fuzz_settings

FAST_PATHS = fuzz_settings(max_examples=400)

# Every frame shown in seed-wire-samples.md, copied verbatim (the b'...' forms
# with their trailing newline, the bare JSON lines as they stand).

PING_HB_HA = b'{"type":"ping","id":"1796024335539602613","from":"hB","to":"hA","data":{"timestamp":1796024335},"timestamp":"2026-11-30T07:38:55.539602863Z","route":["hB"],"ttl":9}\n'  # noqa: E501
PING_HA_HB = b'{"type":"ping","id":"1796024335539923921","from":"hA","to":"hB","data":{"timestamp":1796024335},"timestamp":"2026-11-30T07:38:55.539933996Z","route":["hA"],"ttl":9}\n'  # noqa: E501
PONG_HA_HB = b'{"type":"pong","id":"1796024335540127374","from":"hA","to":"hB","data":{"pong_time":1796024335,"timestamp":1796024335},"timestamp":"2026-11-30T07:38:55.540128455Z","route":["hA"],"ttl":9}\n'  # noqa: E501
PONG_HB_HA = b'{"type":"pong","id":"1796024335540121004","from":"hB","to":"hA","data":{"pong_time":1796024335,"timestamp":1796024335},"timestamp":"2026-11-30T07:38:55.540121715Z","route":["hB"],"ttl":9}\n'  # noqa: E501
CALL_GET_COUNT = b'{"type":"server_call","id":"1796024318380122731","from":"hA","to":"hB","data":{"call":{"args":[],"method":"get_count","server_name":"distributed_counter","timeout":30},"response_id":"1796024318380116242"},"timestamp":"2026-11-30T07:38:38.380123102Z","route":["hA"],"ttl":9}\n'  # noqa: E501
RESPONSE_GET_COUNT = b'{"type":"server_response","id":"1796024318380757040","from":"hB","to":"hA","data":{"node_id":"hB","response_id":"1796024318380116242","result":{"local_count":0,"node_id":"unknown"},"success":true},"timestamp":"2026-11-30T07:38:38.380758482Z","route":["hB"],"ttl":9}\n'  # noqa: E501
CALL_INCREMENT = b'{"type":"server_call","id":"1796024318382509572","from":"hA","to":"hB","data":{"call":{"args":[10],"method":"increment","server_name":"distributed_counter","timeout":30},"response_id":"1796024318382507248"},"timestamp":"2026-11-30T07:38:38.382509952Z","route":["hA"],"ttl":9}\n'  # noqa: E501
RESPONSE_INCREMENT = b'{"type":"server_response","id":"1796024318382849633","from":"hB","to":"hA","data":{"node_id":"hB","response_id":"1796024318382507248","result":{"increment":10,"local_count":10,"node_id":"unknown"},"success":true},"timestamp":"2026-11-30T07:38:38.382850634Z","route":["hB"],"ttl":9}\n'  # noqa: E501
RESPONSE_NO_SERVER = b'{"type":"server_response","id":"1796024318389733408","from":"hB","to":"hA","data":{"error":"server nope not found","response_id":"1796024318389398360","success":false},"timestamp":"2026-11-30T07:38:38.389734049Z","route":["hB"],"ttl":9}\n'  # noqa: E501
RESPONSE_NULL_RESULT = b'{"type":"server_response","id":"1796024318390918256","from":"hB","to":"hA","data":{"node_id":"hB","response_id":"1796024318390649191","result":null,"success":true},"timestamp":"2026-11-30T07:38:38.390919608Z","route":["hB"],"ttl":9}\n'  # noqa: E501
CALL_HEALTH_CHECK = b'{"type":"server_call","id":"1796024318384369168","from":"hB","to":"hA","data":{"call":{"args":[],"method":"health_check","server_name":"health_monitor","timeout":30},"response_id":"1796024318384367055"},"timestamp":"2026-11-30T07:38:38.384369529Z","route":["hB"],"ttl":9}\n'  # noqa: E501
RESPONSE_HEALTH_CHECK = b'{"type":"server_response","id":"1796024318384638269","from":"hA","to":"hB","data":{"node_id":"hA","response_id":"1796024318384367055","result":{"status":"healthy","timestamp":"2025-01-01T00:00:00Z","uptime":1},"success":true},"timestamp":"2026-11-30T07:38:38.38463944Z","route":["hA"],"ttl":9}\n'  # noqa: E501
PY_CALL_GET_COUNT = b'{"type":"server_call","id":"1796024144862845966","from":"py1","to":"node1","data":{"call":{"server_name":"distributed_counter","method":"get_count","args":[],"timeout":30},"response_id":"py-r1"},"timestamp":"2026-11-30T07:35:44.862891Z","route":["py1"],"ttl":9}'  # noqa: E501
RESPONSE_PY_R1 = b'{"type":"server_response","id":"1796024144863517575","from":"node1","to":"py1","data":{"node_id":"node1","response_id":"py-r1","result":{"local_count":7,"node_id":"node1"},"success":true},"timestamp":"2026-11-30T07:35:44.863522353Z","route":["node1"],"ttl":9}\n'  # noqa: E501
MINIMAL_PING = b'{"type":"ping","from":"py1","to":"node1","data":{"timestamp":2}}'
PONG_MINIMAL = b'{"type":"pong","id":"1796024147583547256","from":"node1","to":"py1","data":{"pong_time":1796024147,"timestamp":2},"timestamp":"2026-11-30T07:35:47.583552604Z","route":["node1"],"ttl":9}\n'  # noqa: E501
RESPONSE_NULL_RESPONSE_ID = b'{"type":"server_response","id":"1796024146380134674","from":"node1","to":"py1","data":{"node_id":"node1","response_id":null,"result":{"local_count":17,"node_id":"node1"},"success":true},"timestamp":"2026-11-30T07:35:46.380140863Z","route":["node1"],"ttl":9}\n'  # noqa: E501
CALL_SVC_M = b'{"type":"server_call","id":"1796024148688152996","from":"node1","to":"py1","data":{"call":{"args":[1,"a",{"k":true}],"method":"m","server_name":"svc","timeout":5},"response_id":"1796024148688146517"},"timestamp":"2026-11-30T07:35:48.688153287Z","route":["node1"],"ttl":9}\n'  # noqa: E501
PY_RESPONSE_SVC_M = b'{"type": "server_response", "id": "1796024148688889272", "from": "py1", "to": "node1", "data": {"response_id": "1796024148688146517", "node_id": "py1", "success": true, "result": {"echo": [1, "a", {"k": true}], "from": "py1"}}, "timestamp": "2026-11-30T07:35:48.688891Z", "route": ["py1"], "ttl": 9}'  # noqa: E501
REGISTRY_SYNC_PY1 = b'{"type":"registry_sync","id":"1796024146680293368","from":"py1","to":"node1","data":{"servers":{"svc":{"methods":["m"]}}},"timestamp":"2026-11-30T07:35:46.680302Z","route":["py1"],"ttl":9}'  # noqa: E501
ROUTE_MESSAGE_PYR = b'{"type":"route_message","id":"outer-1","from":"pyR","to":"hB","data":{"original_message":{"type":"server_call","id":"inner-1","from":"pyR","to":"hC","data":{"call":{"server_name":"distributed_counter","method":"get_count","args":[],"timeout":30},"response_id":"fwd-1"},"timestamp":"2026-11-30T07:38:38.405797Z","route":["pyR"],"ttl":9}},"timestamp":"2026-11-30T07:38:38.405815Z","route":["pyR"],"ttl":9}'  # noqa: E501
FORWARDED_INNER_1 = b'{"type":"server_call","id":"inner-1","from":"pyR","to":"hC","data":{"call":{"args":[],"method":"get_count","server_name":"distributed_counter","timeout":30},"response_id":"fwd-1"},"timestamp":"2026-11-30T07:38:38.405797Z","route":["pyR","hB"],"ttl":8}\n'  # noqa: E501
RESPONSE_FWD_1 = b'{"type":"server_response","id":"1796024318407578260","from":"hC","to":"pyR","data":{"node_id":"hC","response_id":"fwd-1","result":{"local_count":0,"node_id":"unknown"},"success":true},"timestamp":"2026-11-30T07:38:38.407580854Z","route":["hC"],"ttl":9}\n'  # noqa: E501

SEED_FRAMES: dict[str, bytes] = {
    name: value
    for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, bytes)
}

# The frames written by the original itself (Go): its key order is ours, so
# relaytx re-encodes them byte for byte, trailing newline aside.
GO_FRAMES = [
    PING_HB_HA,
    PING_HA_HB,
    PONG_HA_HB,
    PONG_HB_HA,
    CALL_GET_COUNT,
    RESPONSE_GET_COUNT,
    CALL_INCREMENT,
    RESPONSE_INCREMENT,
    RESPONSE_NO_SERVER,
    RESPONSE_NULL_RESULT,
    CALL_HEALTH_CHECK,
    RESPONSE_HEALTH_CHECK,
    RESPONSE_PY_R1,
    PONG_MINIMAL,
    RESPONSE_NULL_RESPONSE_ID,
    CALL_SVC_M,
    FORWARDED_INNER_1,
    RESPONSE_FWD_1,
]

ENVELOPE_KEYS = ["type", "id", "from", "to", "data", "timestamp", "route", "ttl"]

RFC3339_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")

_MISSING = object()


def frame(**fields: Any) -> bytes:
    """
    :returns: a valid ping frame with C{fields} replaced; a field given as
        C{_MISSING} is left out. Use C{sender=} for C{from}.
    """
    obj: dict[str, Any] = {
        "type": "ping",
        "id": "m1",
        "from": "a",
        "to": "b",
        "data": {"timestamp": 1},
        "timestamp": "2026-11-30T07:38:55.5Z",
        "route": ["a"],
        "ttl": 9,
    }
    if "sender" in fields:
        fields["from"] = fields.pop("sender")
    for key, value in fields.items():
        if value is _MISSING:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj).encode()


def typed(type_name: str, data: Any, types: MessageTypes = CORE_TYPES) -> Payload:
    """
    :returns: the payload of a message of type C{type_name} carrying C{data},
        after a trip through the codec.
    """
    return types.payload(decode(frame(type=type_name, data=data)))


class SeedFrameTests(SynchronousTestCase):
    """
    Every frame the original sends is accepted, with the fields it carries.
    """

    def decoded(self, raw: bytes) -> tuple[Envelope, Payload]:
        """
        :returns: the envelope of C{raw} and its typed payload.
        """
        envelope = decode(raw)
        return envelope, CORE_TYPES.payload(envelope)

    def test_every_frame(self) -> None:
        """Every captured frame decodes, its data is kept as sent and its payload has its type."""
        self.assertEqual(len(SEED_FRAMES), 23)
        for name, raw in SEED_FRAMES.items():
            with self.subTest(frame=name):
                envelope, payload = self.decoded(raw)
                obj = json.loads(raw)
                self.assertEqual(envelope.type, obj["type"])
                self.assertEqual(payload.TYPE, envelope.type)
                self.assertIsInstance(payload, CORE_TYPES_BY_NAME[envelope.type])
                self.assertEqual(envelope.data, obj["data"])
                self.assertEqual(envelope.sender, obj["from"])
                self.assertEqual(envelope.to, obj["to"])

    def test_trailing_newline(self) -> None:
        """A frame decodes to the same envelope with or without the original's trailing newline."""
        with_newline = [raw for raw in SEED_FRAMES.values() if raw.endswith(b"\n")]
        self.assertGreater(len(with_newline), 15)
        for raw in with_newline:
            self.assertEqual(decode(raw), decode(raw.rstrip(b"\n")))
            self.assertEqual(decode(raw), decode(raw.decode()))

    def test_ping(self) -> None:
        """The original's ping carries a route holding its sender and a decremented TTL."""
        envelope, payload = self.decoded(PING_HB_HA)
        self.assertEqual(
            envelope,
            Envelope(
                type="ping",
                sender="hB",
                to="hA",
                data={"timestamp": 1796024335},
                id="1796024335539602613",
                timestamp="2026-11-30T07:38:55.539602863Z",
                route=("hB",),
                ttl=9,
            ),
        )
        self.assertEqual(payload, Ping(1796024335))
        envelope, payload = self.decoded(PING_HA_HB)
        self.assertEqual((envelope.sender, envelope.to, envelope.route), ("hA", "hB", ("hA",)))
        self.assertEqual(envelope.id, "1796024335539923921")
        self.assertEqual(payload, Ping(1796024335))

    def test_pong(self) -> None:
        """The original's pong carries the echoed timestamp and its own time in seconds."""
        for raw, sender, to in [(PONG_HA_HB, "hA", "hB"), (PONG_HB_HA, "hB", "hA")]:
            envelope, payload = self.decoded(raw)
            self.assertEqual((envelope.type, envelope.sender, envelope.to), ("pong", sender, to))
            self.assertEqual(payload, Pong(timestamp=1796024335, pong_time=1796024335))
        self.assertEqual(decode(PONG_HB_HA).id, "1796024335540121004")

    def test_minimal_ping(self) -> None:
        """A minimal envelope without id, timestamp, route and ttl gets the defaults."""
        envelope, payload = self.decoded(MINIMAL_PING)
        self.assertEqual(
            envelope, Envelope(type="ping", sender="py1", to="node1", data={"timestamp": 2})
        )
        self.assertIsNone(envelope.id)
        self.assertIsNone(envelope.timestamp)
        self.assertEqual(envelope.route, ())
        self.assertEqual(envelope.ttl, DEFAULT_TTL)
        self.assertEqual(DEFAULT_TTL, 10)
        self.assertIsNone(envelope.reply_to)
        self.assertEqual(payload, Ping(2))

    def test_pong_to_minimal_ping(self) -> None:
        """The pong to the minimal ping echoes its timestamp 2."""
        envelope, payload = self.decoded(PONG_MINIMAL)
        self.assertEqual((envelope.sender, envelope.to), ("node1", "py1"))
        self.assertEqual(payload, Pong(timestamp=2, pong_time=1796024147))

    def test_server_call(self) -> None:
        """The original's server_call gives the call spec and the response id."""
        envelope, payload = self.decoded(CALL_GET_COUNT)
        self.assertEqual(envelope.id, "1796024318380122731")
        self.assertEqual(envelope.timestamp, "2026-11-30T07:38:38.380123102Z")
        self.assertEqual(
            (envelope.sender, envelope.to, envelope.route, envelope.ttl), ("hA", "hB", ("hA",), 9)
        )
        self.assertEqual(
            payload,
            ServerCall(
                CallSpec("distributed_counter", "get_count", (), {}, 30),
                "1796024318380116242",
            ),
        )

    def test_server_call_with_args(self) -> None:
        """Positional arguments of a server_call come through in order."""
        _, payload = self.decoded(CALL_INCREMENT)
        assert isinstance(payload, ServerCall)
        self.assertEqual(payload.call.server_name, "distributed_counter")
        self.assertEqual(payload.call.method, "increment")
        self.assertEqual(payload.call.args, (10,))
        self.assertEqual(payload.call.kwargs, {})
        self.assertEqual(payload.call.timeout, 30)
        self.assertEqual(payload.response_id, "1796024318382507248")

    def test_server_call_json_args(self) -> None:
        """Arguments of every JSON kind, and a short timeout, come through unchanged."""
        envelope, payload = self.decoded(CALL_SVC_M)
        self.assertEqual((envelope.sender, envelope.to), ("node1", "py1"))
        self.assertEqual(
            payload,
            ServerCall(CallSpec("svc", "m", (1, "a", {"k": True}), {}, 5), "1796024148688146517"),
        )

    def test_server_call_reverse(self) -> None:
        """The accepting node's call to the dialler decodes like any other."""
        envelope, payload = self.decoded(CALL_HEALTH_CHECK)
        self.assertEqual((envelope.sender, envelope.to), ("hB", "hA"))
        self.assertEqual(
            payload,
            ServerCall(
                CallSpec("health_monitor", "health_check", (), {}, 30), "1796024318384367055"
            ),
        )

    def test_python_server_call(self) -> None:
        """A Python peer's server_call (unsorted keys, no trailing newline) decodes."""
        self.assertFalse(PY_CALL_GET_COUNT.endswith(b"\n"))
        envelope, payload = self.decoded(PY_CALL_GET_COUNT)
        self.assertEqual(envelope.timestamp, "2026-11-30T07:35:44.862891Z")
        self.assertEqual((envelope.sender, envelope.to, envelope.route), ("py1", "node1", ("py1",)))
        self.assertEqual(
            payload, ServerCall(CallSpec("distributed_counter", "get_count", (), {}, 30), "py-r1")
        )

    def test_server_response(self) -> None:
        """A successful server_response gives its result, node id and response id."""
        cases = [
            (
                RESPONSE_GET_COUNT,
                "hB",
                "1796024318380116242",
                {"local_count": 0, "node_id": "unknown"},
            ),
            (
                RESPONSE_INCREMENT,
                "hB",
                "1796024318382507248",
                {"increment": 10, "local_count": 10, "node_id": "unknown"},
            ),
            (
                RESPONSE_HEALTH_CHECK,
                "hA",
                "1796024318384367055",
                {"status": "healthy", "timestamp": "2025-01-01T00:00:00Z", "uptime": 1},
            ),
            (RESPONSE_PY_R1, "node1", "py-r1", {"local_count": 7, "node_id": "node1"}),
            (
                PY_RESPONSE_SVC_M,
                "py1",
                "1796024148688146517",
                {"echo": [1, "a", {"k": True}], "from": "py1"},
            ),
            (RESPONSE_FWD_1, "hC", "fwd-1", {"local_count": 0, "node_id": "unknown"}),
        ]
        for raw, node_id, response_id, result in cases:
            with self.subTest(response_id=response_id):
                envelope, payload = self.decoded(raw)
                self.assertEqual(envelope.sender, node_id)
                self.assertEqual(
                    payload,
                    ServerResponse(
                        response_id=response_id, success=True, node_id=node_id, result=result
                    ),
                )

    def test_server_response_error(self) -> None:
        """The original's error form has no node_id and carries the error text."""
        _, payload = self.decoded(RESPONSE_NO_SERVER)
        self.assertEqual(
            payload,
            ServerResponse(
                response_id="1796024318389398360", success=False, error="server nope not found"
            ),
        )

    def test_server_response_null_result(self) -> None:
        """A success with a null result keeps result None."""
        _, payload = self.decoded(RESPONSE_NULL_RESULT)
        self.assertEqual(
            payload,
            ServerResponse(response_id="1796024318390649191", success=True, node_id="hB"),
        )

    def test_server_response_null_response_id(self) -> None:
        """A reply to a call without response_id carries a null response_id."""
        _, payload = self.decoded(RESPONSE_NULL_RESPONSE_ID)
        assert isinstance(payload, ServerResponse)
        self.assertIsNone(payload.response_id)
        self.assertTrue(payload.success)
        self.assertEqual(payload.result, {"local_count": 17, "node_id": "node1"})

    def test_python_server_response(self) -> None:
        """A Python peer's reply with spaces after separators decodes."""
        envelope, _ = self.decoded(PY_RESPONSE_SVC_M)
        self.assertEqual(envelope.id, "1796024148688889272")
        self.assertEqual(envelope.timestamp, "2026-11-30T07:35:48.688891Z")
        self.assertEqual((envelope.route, envelope.ttl), (("py1",), 9))

    def test_registry_sync(self) -> None:
        """The Python peer's registry_sync gives its servers and no routes."""
        envelope, payload = self.decoded(REGISTRY_SYNC_PY1)
        self.assertEqual((envelope.sender, envelope.to), ("py1", "node1"))
        self.assertEqual(payload, RegistrySync(servers={"svc": ("m",)}, routes=None))

    def test_route_message(self) -> None:
        """A route_message holds the whole original envelope, checked and typed like any."""
        envelope, payload = self.decoded(ROUTE_MESSAGE_PYR)
        self.assertEqual((envelope.id, envelope.sender, envelope.to), ("outer-1", "pyR", "hB"))
        self.assertEqual(envelope.timestamp, "2026-11-30T07:38:38.405815Z")
        assert isinstance(payload, RouteMessage)
        inner = payload.original_message
        self.assertEqual(
            inner,
            Envelope(
                type="server_call",
                sender="pyR",
                to="hC",
                data={
                    "call": {
                        "server_name": "distributed_counter",
                        "method": "get_count",
                        "args": [],
                        "timeout": 30,
                    },
                    "response_id": "fwd-1",
                },
                id="inner-1",
                timestamp="2026-11-30T07:38:38.405797Z",
                route=("pyR",),
                ttl=9,
            ),
        )
        self.assertEqual(
            CORE_TYPES.payload(inner),
            ServerCall(CallSpec("distributed_counter", "get_count", (), {}, 30), "fwd-1"),
        )

    def test_forwarded_inner_message(self) -> None:
        """The unwrapped message hB forwarded is the inner envelope after hB's hop."""
        inner = CORE_TYPES.payload(decode(ROUTE_MESSAGE_PYR)).original_message  # type: ignore[attr-defined]
        forwarded = decode(FORWARDED_INNER_1)
        self.assertEqual(forwarded.route, ("pyR", "hB"))
        self.assertEqual(forwarded.ttl, 8)
        self.assertEqual(inner.hop("hB"), forwarded)


CORE_TYPES_BY_NAME: dict[str, type[Payload]] = {cls.TYPE: cls for cls in CORE_TYPES}


class CodecTests(SynchronousTestCase):
    """
    L{encode} and L{decode} are inverse, in the original's key order.
    """

    def test_round_trip_seed_frames(self) -> None:
        """Every captured frame survives decode, encode, decode unchanged."""
        for name, raw in SEED_FRAMES.items():
            with self.subTest(frame=name):
                envelope = decode(raw)
                self.assertEqual(decode(encode(envelope)), envelope)

    def test_go_frames_byte_exact(self) -> None:
        """A frame the original wrote re-encodes to the same bytes, minus its newline."""
        for raw in GO_FRAMES:
            self.assertEqual(encode(decode(raw)), raw.rstrip(b"\n"))

    def test_encode_is_compact_utf8(self) -> None:
        """An encoded frame is compact UTF-8 JSON with no trailing newline."""
        envelope = Envelope.create(Ping("héllo"), "a", "b", now=0)
        raw = encode(envelope)
        self.assertIsInstance(raw, bytes)
        self.assertFalse(raw.endswith(b"\n"))
        self.assertNotIn(b", ", raw)
        self.assertNotIn(b": ", raw)
        self.assertIn("héllo".encode(), raw)

    def test_key_order(self) -> None:
        """Encoded keys come in the order type, id, from, to, data, timestamp, route, ttl."""
        envelope = Envelope.create(Ping(1), "a", "b", now=1796024335.0)
        keys = list(json.loads(encode(envelope)))
        self.assertEqual(keys, ENVELOPE_KEYS)
        self.assertTrue(encode(envelope).startswith(b'{"type":"ping","id":"'))

    def test_key_order_reply_to(self) -> None:
        """reply_to, when set, comes after all the original's keys."""
        envelope = Envelope.create(Ping(1), "a", "b", now=0, reply_to="m0")
        self.assertEqual(list(json.loads(encode(envelope))), [*ENVELOPE_KEYS, "reply_to"])
        self.assertEqual(decode(encode(envelope)).reply_to, "m0")

    def test_minimal_envelope_keys(self) -> None:
        """An envelope without id and timestamp leaves them out and still writes route and ttl."""
        raw = encode(Envelope(type="ping", sender="a", to="b", data={}))
        self.assertEqual(raw, b'{"type":"ping","from":"a","to":"b","data":{},"route":[],"ttl":10}')

    def test_encode_unserialisable(self) -> None:
        """Data JSON cannot express makes encode raise TypeError."""
        envelope = Envelope(type="ping", sender="a", to="b", data={"x": object()})
        self.assertRaises(TypeError, encode, envelope)

    def test_wide_integers_cross_exactly(self) -> None:
        """
        Integers past 64 bits, which orjson neither writes nor reads as
        integers, cross exactly: such a frame is written by the standard
        library, marked with a leading space (valid JSON), and read back by
        it. Every other frame is orjson's, unmarked.
        """
        data = {"n": 2**70, "m": -(2**80), "l": [10**40, 1.5, "x"]}
        raw = encode(Envelope(type="ping", sender="a", to="b", data=data))
        self.assertTrue(raw.startswith(b' {"type":"ping"'))
        read = decode(raw).data
        self.assertEqual(read, data)
        self.assertEqual([type(read["n"]), type(read["l"][0])], [int, int])
        self.assertEqual(json.loads(raw), json.loads(raw.lstrip()))  # JSON to anyone
        plain = encode(Envelope(type="ping", sender="a", to="b", data={"n": 2**63 - 1}))
        self.assertTrue(plain.startswith(b'{"type":"ping"'))

    def test_wide_integers_cross_exactly_deep(self) -> None:
        """Nested close to the 1024 levels a frame may hold, wide integers still cross exactly."""
        deep: Any = []
        for _ in range(1000):
            deep = [deep]
        raw = encode(Envelope(type="ping", sender="a", to="b", data={"n": 2**70, "deep": deep}))
        read = decode(raw).data
        self.assertEqual((read["n"], type(read["n"])), (2**70, int))

    def test_custom_payload_kinds(self) -> None:
        """
        The default reading of a custom payload checks each field declared
        as a JSON type (unions and None too) and leaves the others be.
        """

        @frozen
        class Note(Payload):
            TYPE = "note"
            text: str
            count: int
            ratio: float
            tags: list[str]
            extra: dict[str, Any] | None
            anything: Any = None

        good = {"text": "t", "count": 1, "ratio": 2, "tags": [], "extra": None, "anything": {1}}
        self.assertEqual(Note.from_data(good).ratio, 2)
        for key, value in [
            ("text", 1),
            ("count", 1.5),
            ("count", True),
            ("ratio", "2"),
            ("tags", {}),
            ("extra", []),
        ]:
            with self.subTest(key=key, value=value):
                error = self.assertRaises(MalformedMessage, Note.from_data, {**good, key: value})
                self.assertEqual(error.reason, "bad_field")
                self.assertIn(repr(key), str(error))

    def test_marked_frame_still_checked(self) -> None:
        """A marked frame is JSON or nothing: NaN and broken text are malformed."""
        for raw in [b' {"type":"ping","from":"a","to":"b","data":{"x":NaN}}', b" {"]:
            error = self.assertRaises(MalformedMessage, decode, raw)
            self.assertEqual(error.reason, "not_json")

    def test_decode_str(self) -> None:
        """decode accepts text as well as bytes."""
        self.assertEqual(decode(MINIMAL_PING.decode()), decode(MINIMAL_PING))


class EnvelopeTests(SynchronousTestCase):
    """
    Creating and forwarding envelopes.
    """

    def test_create(self) -> None:
        """create gives a fresh id, the sender as the route, the RFC 3339 time and the payload."""
        call = ServerCall(CallSpec("counter", "increment", (1,), {"by": 2}, 5.0), "r1")
        envelope = Envelope.create(call, "n1", "n2", now=1796024318.25)
        self.assertEqual(envelope.type, "server_call")
        self.assertEqual((envelope.sender, envelope.to), ("n1", "n2"))
        self.assertEqual(envelope.route, ("n1",))
        self.assertEqual(envelope.ttl, DEFAULT_TTL)
        self.assertEqual(envelope.timestamp, "2026-11-30T07:38:38.250000Z")
        self.assertEqual(envelope.data, call.to_data())
        self.assertIsNone(envelope.reply_to)
        self.assertIsNotNone(envelope.id)
        self.assertEqual(CORE_TYPES.payload(decode(encode(envelope))), call)

    def test_create_ttl(self) -> None:
        """create takes an explicit TTL."""
        self.assertEqual(Envelope.create(Ping(), "a", "b", now=0, ttl=3).ttl, 3)

    def test_create_fresh_ids(self) -> None:
        """Two messages created at the same instant get different ids."""
        first = Envelope.create(Ping(), "a", "b", now=5)
        second = Envelope.create(Ping(), "a", "b", now=5)
        self.assertNotEqual(first.id, second.id)

    def test_hop(self) -> None:
        """hop appends the forwarder to the route and lowers the TTL, keeping everything else."""
        envelope = decode(PING_HB_HA)
        forwarded = envelope.hop("n2")
        self.assertEqual(forwarded.route, ("hB", "n2"))
        self.assertEqual(forwarded.ttl, 8)
        self.assertEqual(attrs.evolve(forwarded, route=envelope.route, ttl=envelope.ttl), envelope)
        self.assertEqual(envelope.route, ("hB",))
        self.assertEqual(envelope.ttl, 9)

    def test_hop_twice(self) -> None:
        """Each hop adds one node and takes one from the TTL."""
        envelope = decode(MINIMAL_PING).hop("n1").hop("n2")
        self.assertEqual(envelope.route, ("n1", "n2"))
        self.assertEqual(envelope.ttl, DEFAULT_TTL - 2)

    def test_hop_keeps_every_field(self) -> None:
        """A hop keeps type, ends, data, id, timestamp and reply_to."""
        envelope = Envelope(
            "pong", "a", "b", {"x": 1}, "id1", "2026-11-30T00:00:00Z", ("a",), 4, "p9"
        )
        forwarded = envelope.hop("m")
        self.assertEqual(
            forwarded,
            Envelope(
                "pong", "a", "b", {"x": 1}, "id1", "2026-11-30T00:00:00Z", ("a", "m"), 3, "p9"
            ),
        )

    def test_tracking(self) -> None:
        """A forwarder reads a call's response id and budget without decoding it."""
        call = ServerCall(CallSpec("counter", "increment", (), {}, 2.5), "r7").to_data()
        self.assertEqual(ServerCall.tracking(call), ("r7", 2.5))
        no_budget = ServerCall(CallSpec("counter", "increment"), "r8").to_data()
        self.assertEqual(ServerCall.tracking(no_budget), ("r8", None))
        for bad_budget in (-1, "5", True, None):
            data = {"call": {"timeout": bad_budget}, "response_id": "r9"}
            self.assertEqual(ServerCall.tracking(data), ("r9", None), bad_budget)
        for untracked in ({"call": {}}, {"call": {}, "response_id": 5}, {"response_id": "r"}):
            self.assertIsNone(ServerCall.tracking(untracked))

    def test_route_is_a_tuple(self) -> None:
        """
        An envelope's route cannot be changed in place, whether decoded or
        made here: each hop makes a new envelope instead.
        """
        for envelope in (decode(PING_HB_HA), Envelope.create(Ping(), "a", "b", now=5)):
            self.assertIsInstance(envelope.route, tuple)
            self.assertIsInstance(envelope.hop("n2").route, tuple)


class IdAndTimeTests(SynchronousTestCase):
    """
    L{new_id}, L{secret_id} and L{rfc3339}.
    """

    def test_new_id_unique(self) -> None:
        """10000 ids in a row are all distinct."""
        ids = [new_id() for _ in range(10000)]
        self.assertEqual(len(set(ids)), 10000)

    def test_new_id_not_timestamp(self) -> None:
        """An id is a non-empty string that is not a decimal number such as a timestamp."""
        value = new_id()
        self.assertIsInstance(value, str)
        self.assertTrue(value)
        self.assertFalse(value.isdigit())
        self.assertRaises(ValueError, float, value)

    def test_secret_id(self) -> None:
        """
        Secret ids are 96-bit hex strings, all distinct, across the batches
        they are drawn in.
        """
        ids = [secret_id() for _ in range(3000)]
        self.assertEqual(len(set(ids)), 3000)
        for value in ids:
            self.assertRegex(value, r"^[0-9a-f]{24}$")

    def test_ids_after_fork(self) -> None:
        """A forked process draws ids of its own, not its parent's next ones."""
        secret_id()
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover (the child's report is checked below)
            os.write(write, f"{secret_id()} {new_id()}".encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            child_secret, child_id = pipe.read().split()
        os.waitpid(child, 0)
        self.assertNotEqual(child_secret, secret_id())
        self.assertNotEqual(child_id.split("-")[0], new_id().split("-")[0])

    def test_rfc3339_epoch(self) -> None:
        """Time zero is midnight UTC on 1970-01-01, with microseconds and a Z."""
        self.assertEqual(rfc3339(0), "1970-01-01T00:00:00.000000Z")

    def test_rfc3339_fraction(self) -> None:
        """A fractional time keeps its microseconds."""
        self.assertEqual(rfc3339(1796024335.5), "2026-11-30T07:38:55.500000Z")
        self.assertEqual(rfc3339(1796024318.25), "2026-11-30T07:38:38.250000Z")

    def test_rfc3339_format(self) -> None:
        """The timestamp has the RFC 3339 shape and parses back to the same UTC instant."""
        for seconds in [0, 1.5, 1796024335.5, 4102444800.125]:
            text = rfc3339(seconds)
            self.assertTrue(RFC3339_RE.fullmatch(text), text)
            parsed = datetime.fromisoformat(text)
            self.assertEqual(parsed.utcoffset().total_seconds(), 0)  # type: ignore[union-attr]
            self.assertEqual(parsed, datetime.fromtimestamp(seconds, UTC))
            self.assertEqual(parsed.timestamp(), seconds)


class MalformedEnvelopeTests(SynchronousTestCase):
    """
    L{decode} refuses what is not an envelope, with a reason for metrics.
    """

    def assertMalformed(self, raw: bytes | str, reason: str, *words: str) -> MalformedMessage:
        """
        Assert that C{raw} fails to decode with C{reason} and a message
        containing each of C{words}.
        """
        error = self.assertRaises(MalformedMessage, decode, raw)
        self.assertEqual(error.reason, reason)
        for word in words:
            self.assertIn(word, str(error))
        return error

    def test_base_frame_valid(self) -> None:
        """The frame the malformed cases start from is itself valid."""
        self.assertEqual(CORE_TYPES.payload(decode(frame())), Ping(1))

    def test_not_json(self) -> None:
        """Text that is not JSON is refused as not_json."""
        for raw in [
            b"",
            b"not json",
            b"{",
            b'{"type": "ping",',
            PING_HB_HA[:-10],
            b"\xff\xfe",
            b"{'type': 'ping'}",
            b"NaN",
        ]:
            with self.subTest(raw=raw):
                self.assertMalformed(raw, "not_json", "JSON")

    def test_escaped_lone_surrogates(self) -> None:
        """
        A frame whose text escapes a lone surrogate (valid JSON, as Python's
        json module writes it) is read; one with a surrogate written raw is
        invalid UTF-8, and refused.
        """
        raw = json.dumps(json.loads(frame(data={"text": "x\ud800y"})), ensure_ascii=True)
        self.assertIn("\\ud800", raw)
        self.assertEqual(decode(raw.encode()).data, {"text": "x\ud800y"})
        self.assertMalformed(raw.replace("\\ud800", "\udfff").encode("utf-8", "surrogatepass"),
                             "not_json", "JSON")  # fmt: skip

    def test_not_object(self) -> None:
        """JSON that is not an object is refused as not_object, naming what it is."""
        for raw, kind in [
            (b"[]", "list"),
            (b"[" + MINIMAL_PING + b"]", "list"),
            (b"1", "int"),
            (b'"ping"', "str"),
            (b"null", "NoneType"),
            (b"true", "bool"),
        ]:
            with self.subTest(raw=raw):
                self.assertMalformed(raw, "not_object", kind)

    def test_missing_fields(self) -> None:
        """An envelope without type, from, to or data is refused as missing_field."""
        for key in ["type", "from", "to", "data"]:
            with self.subTest(key=key):
                self.assertMalformed(frame(**{key: _MISSING}), "missing_field", repr(key))

    def test_wrong_field_types(self) -> None:
        """Each envelope field of the wrong JSON type is refused as bad_field, naming the field."""
        cases: list[tuple[str, Any]] = [
            ("type", 1),
            ("type", None),
            ("type", ["ping"]),
            ("from", 7),
            ("from", None),
            ("to", {"id": "b"}),
            ("data", []),
            ("data", "x"),
            ("data", None),
            ("id", 1796024335539602613),
            ("id", ["m1"]),
            ("timestamp", 1796024335),
            ("ttl", "9"),
            ("ttl", 9.5),
            ("ttl", 9.0),
            ("reply_to", 5),
        ]
        for key, value in cases:
            with self.subTest(key=key, value=value):
                self.assertMalformed(frame(**{key: value}), "bad_field", repr(key))

    def test_bool_is_not_int(self) -> None:
        """A JSON boolean where the TTL (an int) belongs is refused."""
        for value in [True, False]:
            self.assertMalformed(frame(ttl=value), "bad_field", "'ttl'", "bool")

    def test_route_not_string_list(self) -> None:
        """A route that is not a list of strings is refused as bad_field."""
        for value in ["a", {"a": 1}, 1, [1], ["a", None], [["a"]], ["a", True]]:
            with self.subTest(route=value):
                self.assertMalformed(frame(route=value), "bad_field", "'route'")

    def test_null_optional_fields(self) -> None:
        """null in id, timestamp, route, ttl or reply_to reads as absent."""
        envelope = decode(frame(id=None, timestamp=None, route=None, ttl=None, reply_to=None))
        self.assertEqual(envelope, Envelope(type="ping", sender="a", to="b", data={"timestamp": 1}))

    def test_unknown_fields_ignored(self) -> None:
        """Unknown top-level fields are ignored and not re-sent."""
        envelope = decode(frame(priority=3, extra={"x": [1]}))
        self.assertEqual(envelope, decode(frame()))
        self.assertNotIn("priority", json.loads(encode(envelope)))

    def test_unknown_type_decodes(self) -> None:
        """decode accepts an envelope of an unknown type, so it can be forwarded."""
        envelope = decode(frame(type="gossip", data={"rumour": 1}))
        self.assertEqual(envelope.type, "gossip")
        self.assertEqual(envelope.data, {"rumour": 1})

    def test_unknown_type_payload(self) -> None:
        """Asking for the payload of an unknown type raises UnknownMessageType."""
        error = self.assertRaises(
            UnknownMessageType, CORE_TYPES.payload, decode(frame(type="gossip"))
        )
        self.assertEqual(error.reason, "unknown_type")
        self.assertIn("'gossip'", str(error))
        self.assertNotIsInstance(error, MalformedMessage)


class MalformedPayloadTests(SynchronousTestCase):
    """
    L{MessageTypes.payload} refuses data that does not fit the message type.
    """

    def assertBadPayload(self, type_name: str, data: Any, reason: str, *words: str) -> None:
        """
        Assert that a C{type_name} message carrying C{data} decodes but its
        payload is refused with C{reason} and a message containing C{words}.
        """
        envelope = decode(frame(type=type_name, data=data))
        error = self.assertRaises(MalformedMessage, CORE_TYPES.payload, envelope)
        self.assertEqual(error.reason, reason)
        for word in words:
            self.assertIn(word, str(error))

    def test_ping_anything(self) -> None:
        """A ping's timestamp may be any JSON value, or missing."""
        for value in [None, 0, "now", [1], {"t": 1}, True]:
            self.assertEqual(typed("ping", {"timestamp": value}), Ping(value))
        self.assertEqual(typed("ping", {}), Ping(None))

    def test_pong(self) -> None:
        """A pong_time that is not a number (a bool included) is refused."""
        for value in ["1", True, [1]]:
            with self.subTest(pong_time=value):
                self.assertBadPayload(
                    "pong", {"timestamp": 1, "pong_time": value}, "bad_field", "'pong_time'"
                )
        self.assertEqual(typed("pong", {"timestamp": 1, "pong_time": 2.5}), Pong(1, 2.5))
        self.assertEqual(typed("pong", {"timestamp": 1}), Pong(1, None))

    def test_server_call_call(self) -> None:
        """A server_call without a call object is refused."""
        self.assertBadPayload("server_call", {"response_id": "r"}, "missing_field", "'call'")
        for value in [None, [], "x", 1]:
            self.assertBadPayload("server_call", {"call": value}, "bad_field", "'call'")

    def test_server_call_fields(self) -> None:
        """Missing or ill-typed server_name, method, args, kwargs or timeout are refused."""
        good = {"server_name": "s", "method": "m", "args": [], "timeout": 30}
        self.assertEqual(
            typed("server_call", {"call": good}), ServerCall(CallSpec("s", "m", (), {}, 30))
        )
        for key in ["server_name", "method"]:
            call = {k: v for k, v in good.items() if k != key}
            self.assertBadPayload("server_call", {"call": call}, "missing_field", repr(key))
        cases: list[tuple[str, Any]] = [
            ("server_name", 1),
            ("method", ["m"]),
            ("method", True),
            ("args", "1,2"),
            ("args", {"a": 1}),
            ("kwargs", [1]),
            ("kwargs", "k"),
            ("timeout", "30"),
            ("timeout", True),
        ]
        for key, value in cases:
            with self.subTest(key=key, value=value):
                call = {**good, key: value}
                self.assertBadPayload("server_call", {"call": call}, "bad_field", repr(key))

    def test_server_call_negative_timeout(self) -> None:
        """A negative timeout is refused; zero is allowed."""
        call = {"server_name": "s", "method": "m", "timeout": -1}
        self.assertBadPayload("server_call", {"call": call}, "bad_field", "timeout")
        payload = typed("server_call", {"call": {**call, "timeout": 0}})
        self.assertEqual(payload.call.timeout, 0)  # type: ignore[attr-defined]

    def test_server_call_response_id(self) -> None:
        """A response_id that is not a string (or null) is refused."""
        call = {"server_name": "s", "method": "m"}
        self.assertBadPayload(
            "server_call", {"call": call, "response_id": 5}, "bad_field", "'response_id'"
        )
        self.assertIsNone(typed("server_call", {"call": call}).response_id)  # type: ignore[attr-defined]

    def test_server_call_defaults(self) -> None:
        """args, kwargs and timeout may be left out of a call."""
        payload = typed("server_call", {"call": {"server_name": "s", "method": "m"}})
        self.assertEqual(payload, ServerCall(CallSpec("s", "m", (), {}, None), None))

    def test_server_response_fields(self) -> None:
        """Missing or ill-typed server_response fields are refused, naming the field."""
        self.assertBadPayload(
            "server_response", {"success": True}, "missing_field", "'response_id'"
        )
        self.assertBadPayload("server_response", {"response_id": "r"}, "missing_field", "'success'")
        cases: list[tuple[str, Any]] = [
            ("response_id", 1),
            ("success", 1),
            ("success", "true"),
            ("success", None),
            ("node_id", 3),
            ("error", {"message": "x"}),
            ("error_code", "-32000"),
            ("error_code", True),
            ("error_code", -32000.5),
            ("error_data", [1]),
        ]
        for key, value in cases:
            with self.subTest(key=key, value=value):
                data = {"response_id": "r", "success": False, key: value}
                self.assertBadPayload("server_response", data, "bad_field", repr(key))

    def test_server_response_error_fields(self) -> None:
        """An error reply gives its message, code and data."""
        payload = typed(
            "server_response",
            {
                "response_id": "r",
                "success": False,
                "node_id": "n2",
                "error": "boom",
                "error_code": -32000,
                "error_data": {"type": "ValueError"},
            },
        )
        self.assertEqual(
            payload,
            ServerResponse("r", False, "n2", None, "boom", -32000, {"type": "ValueError"}),
        )

    def test_registry_sync(self) -> None:
        """Ill-shaped server tables are refused."""
        cases: list[tuple[Any, str]] = [
            ({"servers": []}, "'servers'"),
            ({"servers": None}, "'servers'"),
            ({"servers": {"svc": ["m"]}}, "'svc'"),
            ({"servers": {"svc": {"methods": "m"}}}, "'methods'"),
            ({"servers": {"svc": {"methods": [1]}}}, "'methods'"),
            ({"servers": {"svc": {"methods": None}}}, "'methods'"),
        ]
        for data, word in cases:
            with self.subTest(data=data):
                self.assertBadPayload("registry_sync", data, "bad_field", word)

    def test_registry_sync_routes(self) -> None:
        """Ill-shaped route entries, withdrawals, numbers and link news are refused."""
        long_path = [f"n{i}" for i in range(64)] + ["n3"]
        cases: list[tuple[Any, str, str]] = [
            ({"routes": []}, "bad_field", "'routes'"),
            ({"routes": {"n3": ["n2", "n3"]}}, "bad_field", "'n3'"),
            ({"routes": {"n3": {"path": "n3"}}}, "bad_field", "'n3'"),
            ({"routes": {"n3": {"path": [2]}}}, "bad_field", "not a node id"),
            ({"routes": {"n3": {"path": []}}}, "bad_field", "'n3'"),
            ({"routes": {"n3": {"path": ["n3", "n2"]}}}, "bad_field", "'n3'"),
            ({"routes": {"n3": {"path": ["n2 x", "n3"]}}}, "bad_field", "not a node id"),
            ({"routes": {"bad id": {"path": ["bad id"]}}}, "bad_field", "not a node id"),
            ({"routes": {"n3": {"path": long_path}}}, "bad_field", "'n3'"),
            ({"routes": {"n3": {"path": ["n3"], "s": []}}}, "bad_field", "'s'"),
            ({"routes": {"n3": {"path": ["n3"], "s": {"svc": "m"}}}}, "bad_field", "'svc'"),
            ({"routes": {"n3": {"path": ["n3"], "m": -1}}}, "bad_field", "metric"),
            ({"routes": {"n3": {"path": ["n3"], "m": True}}}, "bad_field", "metric"),
            ({"routes": {"n3": {"p": 5}}}, "bad_field", "not a node id"),
            ({"routes": {"n3": {"p": "n3"}}}, "bad_field", "own parent"),
            ({"routes": {"n3": {"p": "n2", "c": 1.5}}}, "bad_field", "metric"),
            ({"withdraw": "n3"}, "bad_field", "'withdraw'"),
            ({"withdraw": ["n3", 4]}, "bad_field", "not a node id"),
            ({"seq": -1}, "bad_field", "seq"),
            ({"seq": "1"}, "bad_field", "'seq'"),
            ({"full": 1}, "bad_field", "'full'"),
            ({"down": [["a", "b"]]}, "bad_field", "down"),
            ({"down": [["a", "b", "1"]]}, "bad_field", "down"),
            ({"up": [["a", "b c", 1]]}, "bad_field", "not a node id"),
        ]
        for data, reason, word in cases:
            with self.subTest(data=data):
                self.assertBadPayload("registry_sync", data, reason, word)

    def test_registry_sync_defaults(self) -> None:
        """An empty registry_sync says nothing: no servers, no number; methods default to none."""
        empty = typed("registry_sync", {})
        self.assertEqual(empty, RegistrySync())
        self.assertIsNone(empty.servers)
        self.assertFalse(empty.routes_sync)
        self.assertEqual(
            typed("registry_sync", {"servers": {"svc": {}}}), RegistrySync({"svc": ()})
        )

    def test_registry_sync_with_routes(self) -> None:
        """Entries give a path, or a parent, with metric and servers; and the rest of an advert."""
        payload = typed(
            "registry_sync",
            {
                "servers": {"a": {"methods": ["x", "y"]}},
                "seq": 4,
                "full": True,
                "more": True,
                "resync": True,
                "routes": {
                    "n2": {"path": ["n2"]},
                    "n3": {"path": ["n2", "n3"], "m": 9, "s": {"c": ["z"]}},
                    "n4": {"p": "n3", "c": 2},
                    "n5": {"s": {}},
                },
                "withdraw": ["n6"],
                "down": [["n7", "n8", 12]],
                "up": [["n9", "n7", 13]],
            },
        )
        self.assertEqual(
            payload,
            RegistrySync(
                {"a": ("x", "y")},
                {
                    "n2": RouteAdvert(("n2",)),
                    "n3": RouteAdvert(("n2", "n3"), {"c": ("z",)}, None, 9),
                    "n4": RouteAdvert(None, None, "n3", 2),
                    "n5": RouteAdvert(None, {}),
                },
                ("n6",),
                4,
                True,
                True,
                True,
                (("n7", "n8", 12),),
                (("n9", "n7", 13),),
            ),
        )
        self.assertTrue(payload.routes_sync)

    def test_server_tables_by_reference(self) -> None:
        """Entries may give servers inline or as an index into the advert's tables."""
        payload = typed(
            "registry_sync",
            {
                "tables": [{"a": ["x"]}, {"b": []}],
                "routes": {"n2": {"path": ["n2"], "s": 1}, "n3": {"p": "n2", "s": {"c": []}}},
            },
        )
        assert payload.routes is not None
        self.assertEqual(payload.routes["n2"].servers, {"b": ()})
        self.assertEqual(payload.routes["n3"].servers, {"c": ()})
        for bad in (2, -1):
            with self.subTest(index=bad):
                self.assertBadPayload(
                    "registry_sync",
                    {"tables": [{"a": []}], "routes": {"n2": {"path": ["n2"], "s": bad}}},
                    "bad_field",
                    "no server table",
                )

    def test_node_ids_kept_once(self) -> None:
        """The node ids of adverts are one string object each, shared by every advert."""
        first = typed("registry_sync", {"routes": {"far1": {"path": ["hop1", "far1"]}}})
        second = typed("registry_sync", {"routes": {"far2": {"path": ["hop1", "far2"]}}})
        assert first.routes is not None and second.routes is not None
        self.assertIs(first.routes["far1"].path[0], second.routes["far2"].path[0])  # type: ignore[index]

    def test_route_message(self) -> None:
        """A route_message without a valid nested envelope is refused."""
        self.assertBadPayload("route_message", {}, "missing_field", "'original_message'")
        for value in [None, [], "x", 1]:
            self.assertBadPayload(
                "route_message", {"original_message": value}, "bad_field", "'original_message'"
            )
        inner = json.loads(frame())
        del inner["to"]
        self.assertBadPayload("route_message", {"original_message": inner}, "missing_field", "'to'")
        inner = json.loads(frame(route=[1]))
        self.assertBadPayload("route_message", {"original_message": inner}, "bad_field", "'route'")
        inner = json.loads(frame(ttl=True))
        self.assertBadPayload("route_message", {"original_message": inner}, "bad_field", "'ttl'")

    def test_unknown_payload_fields_ignored(self) -> None:
        """Unknown keys inside data, call objects and server entries are ignored."""
        self.assertEqual(typed("ping", {"timestamp": 1, "x": 2}), Ping(1))
        self.assertEqual(
            typed(
                "server_call",
                {"call": {"server_name": "s", "method": "m", "priority": 1}, "hint": True},
            ),
            ServerCall(CallSpec("s", "m")),
        )
        self.assertEqual(
            typed("server_response", {"response_id": "r", "success": True, "elapsed": 3}),
            ServerResponse("r", True),
        )
        self.assertEqual(
            typed("registry_sync", {"servers": {"s": {"methods": ["m"], "v": 2}}, "epoch": 1}),
            RegistrySync({"s": ("m",)}),
        )
        self.assertEqual(
            typed("route_message", {"original_message": json.loads(frame()), "via": "x"}),
            RouteMessage(decode(frame())),
        )


class PayloadEncodingTests(SynchronousTestCase):
    """
    The C{data} each built-in payload writes, and its round trip.
    """

    def test_round_trips(self) -> None:
        """Every built-in payload survives to_data, the codec and from_data unchanged."""
        payloads: list[Payload] = [
            Ping(1796024335),
            Ping({"nested": [1, 2]}),
            Pong(2, 1796024147),
            ServerCall(CallSpec("svc", "m", (1, "a", {"k": True}), {"by": 2}, 5.0), "r1"),
            ServerCall(CallSpec("svc", "m"), None),
            ServerResponse("r1", True, "n2", {"x": [1]}),
            ServerResponse("r1", False, "n2", None, "boom", -32000, {"type": "ValueError"}),
            ServerResponse(None, True),
            RegistrySync({"svc": ("m", "n")}),
            RegistrySync({}, {"n3": RouteAdvert(("n2", "n3"), {"c": ("z",)})}),
            RegistrySync(
                None,
                {"n4": RouteAdvert(None, None, "n3", 3), "n5": RouteAdvert(None, {"s": ("m",)})},
                ("n6",),
                7,
                True,
                True,
                True,
                (("n1", "n2", 5),),
                (("n1", "n2", 6),),
            ),
            RouteMessage(Envelope.create(Ping(3), "a", "c", now=0)),
        ]
        for payload in payloads:
            with self.subTest(payload=payload):
                envelope = Envelope.create(payload, "a", "b", now=0)
                self.assertEqual(CORE_TYPES.payload(decode(encode(envelope))), payload)

    def test_pong_shape(self) -> None:
        """A pong's data has the keys of the original's pong."""
        self.assertEqual(Pong(2, 1796024147).to_data(), {"timestamp": 2, "pong_time": 1796024147})
        self.assertEqual(set(Pong(2, 1).to_data()), set(json.loads(PONG_MINIMAL)["data"]))

    def test_server_call_shape(self) -> None:
        """A server_call writes kwargs and timeout only when set, and response_id always."""
        self.assertEqual(
            ServerCall(CallSpec("svc", "m", (1,), {}, 30), "r").to_data(),
            {
                "call": {"server_name": "svc", "method": "m", "args": [1], "timeout": 30},
                "response_id": "r",
            },
        )
        self.assertEqual(
            ServerCall(CallSpec("svc", "m", (), {"k": 1})).to_data(),
            {
                "call": {"server_name": "svc", "method": "m", "args": [], "kwargs": {"k": 1}},
                "response_id": None,
            },
        )

    def test_server_call_matches_original(self) -> None:
        """relaytx's server_call data for the original's call equals what the original sent."""
        ours = ServerCall(CallSpec("svc", "m", (1, "a", {"k": True}), {}, 5), "1796024148688146517")
        self.assertEqual(ours.to_data(), json.loads(CALL_SVC_M)["data"])

    def test_server_response_success_shape(self) -> None:
        """A success writes its result (even null) and no error keys."""
        self.assertEqual(
            ServerResponse("r", True, "n1").to_data(),
            {"response_id": "r", "success": True, "node_id": "n1", "result": None},
        )

    def test_server_response_error_shape(self) -> None:
        """A failure writes error (empty if unset), its code and data when given, and no result."""
        self.assertEqual(
            ServerResponse(
                "r", False, "n1", "ignored", "boom", -32003, {"node_id": "n1"}
            ).to_data(),
            {
                "response_id": "r",
                "success": False,
                "node_id": "n1",
                "error": "boom",
                "error_code": -32003,
                "error_data": {"node_id": "n1"},
            },
        )
        self.assertEqual(
            ServerResponse(None, False).to_data(),
            {"response_id": None, "success": False, "error": ""},
        )

    def test_server_response_matches_original(self) -> None:
        """relaytx's answer to the Python peer's call has the original's answer data."""
        ours = ServerResponse("py-r1", True, "node1", {"local_count": 7, "node_id": "node1"})
        self.assertEqual(ours.to_data(), json.loads(RESPONSE_PY_R1)["data"])

    def test_registry_sync_shape(self) -> None:
        """
        A registry_sync writes the original's server table; the rest only
        when it says something, with default metrics left out.
        """
        self.assertEqual(
            RegistrySync({"svc": ("m",)}).to_data(), json.loads(REGISTRY_SYNC_PY1)["data"]
        )
        self.assertEqual(RegistrySync({"svc": ("m",)}, seq=1).to_data()["seq"], 1)
        self.assertEqual(
            RegistrySync(
                None,
                {
                    "n3": RouteAdvert(("n2", "n3"), None, None, 2),
                    "n4": RouteAdvert(None, None, "n3", 1),
                    "n5": RouteAdvert(None, None, "n3", 4),
                    "n6": RouteAdvert(("n6",), {"s": ("a",)}, None, 3),
                },
                ("n7",),
                5,
            ).to_data(),
            {
                "seq": 5,
                "routes": {
                    "n3": {"path": ["n2", "n3"]},
                    "n4": {"p": "n3"},
                    "n5": {"p": "n3", "c": 4},
                    "n6": {"path": ["n6"], "m": 3, "s": 0},
                },
                "tables": [{"s": ["a"]}],
                "withdraw": ["n7"],
            },
        )

    def test_route_message_shape(self) -> None:
        """A route_message writes the whole inner envelope in the original's key order."""
        inner = decode(ROUTE_MESSAGE_PYR)
        data = RouteMessage(inner).to_data()
        self.assertEqual(list(data), ["original_message"])
        self.assertEqual(list(data["original_message"]), ENVELOPE_KEYS)
        self.assertEqual(data["original_message"], inner.to_json())


@frozen
class Chat(Payload):
    """A custom message type using the default from_data/to_data."""

    TYPE = "chat"
    text: str
    mood: str = "plain"


@frozen
class Secret(Payload):
    """A custom message type with a private attribute and a derived field."""

    TYPE = "secret"
    _code: str
    length: int = attrs.field(init=False)

    @length.default
    def _length(self) -> int:
        return len(self._code)


@frozen
class Strict(Payload):
    """A custom message type whose constructor checks its field's type."""

    TYPE = "strict"
    count: int = attrs.field(validator=attrs.validators.instance_of(int))


class OtherPing(Payload):
    """A second class claiming the ping name."""

    TYPE = "ping"


class MessageTypesTests(SynchronousTestCase):
    """
    The per-node table of message types, and custom payloads.
    """

    def test_core_types(self) -> None:
        """The core table holds exactly the six built-in types under their wire names."""
        self.assertEqual(
            CORE_TYPES_BY_NAME,
            {
                "ping": Ping,
                "pong": Pong,
                "server_call": ServerCall,
                "server_response": ServerResponse,
                "registry_sync": RegistrySync,
                "route_message": RouteMessage,
            },
        )
        for name in CORE_TYPES_BY_NAME:
            self.assertIn(name, CORE_TYPES)
        self.assertNotIn("chat", CORE_TYPES)
        self.assertNotIn(Ping, CORE_TYPES)

    def test_extended(self) -> None:
        """extended gives a new table with the custom type and every core type."""
        types = CORE_TYPES.extended(Chat)
        self.assertIn("chat", types)
        self.assertNotIn("chat", CORE_TYPES)
        self.assertEqual(set(types), {*CORE_TYPES, Chat})
        self.assertEqual(typed("ping", {"timestamp": 4}, types), Ping(4))

    def test_custom_round_trip(self) -> None:
        """A custom attrs payload round-trips with the default from_data and to_data."""
        types = CORE_TYPES.extended(Chat)
        envelope = Envelope.create(Chat("hello"), "a", "b", now=0)
        self.assertEqual(envelope.type, "chat")
        self.assertEqual(envelope.data, {"text": "hello", "mood": "plain"})
        self.assertEqual(types.payload(decode(encode(envelope))), Chat("hello"))

    def test_custom_unknown_to_core(self) -> None:
        """A table without the custom type reports it as unknown."""
        envelope = decode(encode(Envelope.create(Chat("hello"), "a", "b", now=0)))
        self.assertRaises(UnknownMessageType, CORE_TYPES.payload, envelope)

    def test_custom_defaults_and_extras(self) -> None:
        """A missing field with a default takes it; unknown keys are ignored."""
        types = CORE_TYPES.extended(Chat)
        self.assertEqual(typed("chat", {"text": "hi", "x": 1}, types), Chat("hi", "plain"))
        self.assertEqual(typed("chat", {"text": "hi", "mood": "glum"}, types), Chat("hi", "glum"))

    def test_custom_missing_field(self) -> None:
        """A missing field without a default is refused as missing_field."""
        types = CORE_TYPES.extended(Chat)
        envelope = decode(frame(type="chat", data={"mood": "glum"}))
        error = self.assertRaises(MalformedMessage, types.payload, envelope)
        self.assertEqual(error.reason, "missing_field")
        self.assertIn("'text'", str(error))
        self.assertIn("chat", str(error))

    def test_custom_private_field(self) -> None:
        """A private field round-trips under its attribute name; an init=False one is derived."""
        types = CORE_TYPES.extended(Secret)
        envelope = Envelope.create(Secret("xyz"), "a", "b", now=0)
        self.assertEqual(envelope.data, {"_code": "xyz", "length": 3})
        self.assertEqual(types.payload(decode(encode(envelope))), Secret("xyz"))

    def test_custom_constructor_error(self) -> None:
        """A custom payload whose constructor rejects the data is refused as bad_field."""
        types = CORE_TYPES.extended(Strict)
        self.assertEqual(typed("strict", {"count": 3}, types), Strict(3))
        envelope = decode(frame(type="strict", data={"count": "three"}))
        error = self.assertRaises(MalformedMessage, types.payload, envelope)
        self.assertEqual(error.reason, "bad_field")
        self.assertIn("strict", str(error))

    def test_duplicate_name(self) -> None:
        """A second class taking a used type name is refused with ValueError."""
        error = self.assertRaises(ValueError, CORE_TYPES.extended, OtherPing)
        self.assertIn("'ping'", str(error))
        self.assertRaises(ValueError, MessageTypes, [Chat, Ping, OtherPing])

    def test_same_class_twice(self) -> None:
        """Adding a class that is already in the table changes nothing."""
        types = CORE_TYPES.extended(Ping, Chat).extended(Chat)
        self.assertEqual(set(types), {*CORE_TYPES, Chat})

    def test_empty_table(self) -> None:
        """An empty table knows no types at all."""
        empty = MessageTypes([])
        self.assertEqual(list(empty), [])
        self.assertRaises(UnknownMessageType, empty.payload, decode(frame()))


# Values of every JSON type, and of the wrong kinds a field may be given.
_ANY = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4)
_SOME = _ANY | st.lists(_ANY, max_size=3) | st.dictionaries(st.text(max_size=3), _ANY, max_size=3)


def _object(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """
    An object whose fields are well typed, then one or two of them spoilt:
    replaced by any JSON value, or left out. (Spoiling each field at
    random would almost never leave just one of many wrong.)
    """

    @st.composite
    def build(draw: Any) -> dict[str, Any]:
        obj = {key: draw(strategy) for key, strategy in fields.items()}
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            key = draw(st.sampled_from(sorted(fields)))
            if draw(st.booleans()):
                obj.pop(key, None)
            else:
                obj[key] = draw(_SOME)
        return obj

    return build()


def _outcome(decode: Any, value: Any) -> Any:
    """What C{decode(value)} gives: the object, or the reason it was refused."""
    try:
        return decode(value)
    except MalformedMessage as e:
        return ("refused", e.reason)


_STRINGS = st.text(max_size=5)
_NUMBER = st.integers(min_value=-5, max_value=10**6) | st.floats(allow_nan=False, width=32)


class FastPathTests(SynchronousTestCase):
    """The validators' fast paths agree with their general paths on every input."""

    @FAST_PATHS
    @given(
        _object(
            type=_STRINGS,
            id=_STRINGS,
            **{"from": _STRINGS},
            to=_STRINGS,
            data=st.dictionaries(st.text(max_size=3), _ANY, max_size=2),
            timestamp=st.none() | _STRINGS,
            route=st.lists(_STRINGS, max_size=3),
            ttl=st.integers(min_value=-2, max_value=64),
            reply_to=st.none() | _STRINGS,
        )
    )
    def test_envelope(self, obj: dict[str, Any]) -> None:
        """Envelope.from_json's fast path gives what the field-by-field path gives."""
        self.assertEqual(
            _outcome(Envelope.from_json, obj), _outcome(Envelope._from_json_checked, obj)
        )

    @FAST_PATHS
    @given(
        _object(
            call=_object(
                server_name=_STRINGS,
                method=_STRINGS,
                args=st.lists(_ANY, max_size=2),
                kwargs=st.dictionaries(st.text(max_size=3), _ANY, max_size=2),
                timeout=st.none() | _NUMBER,
            ),
            response_id=st.none() | _STRINGS,
        )
    )
    def test_server_call(self, data: dict[str, Any]) -> None:
        """ServerCall.from_data's fast path gives what its general path gives."""
        self.assertEqual(
            _outcome(ServerCall.from_data, data), _outcome(ServerCall._from_data_checked, data)
        )

    @FAST_PATHS
    @given(
        _object(
            response_id=_STRINGS,
            node_id=st.none() | _STRINGS,
            success=st.booleans(),
            result=_SOME,
            error=st.none() | _STRINGS,
            error_code=st.none() | st.integers(min_value=-32800, max_value=-32000),
            error_data=st.none() | st.dictionaries(st.text(max_size=3), _ANY, max_size=2),
        )
    )
    def test_server_response(self, data: dict[str, Any]) -> None:
        """ServerResponse.from_data's fast path gives what its general path gives."""
        self.assertEqual(
            _outcome(ServerResponse.from_data, data),
            _outcome(ServerResponse._from_data_checked, data),
        )


class IdBoundsTests(SynchronousTestCase):
    """Ids on the wire: node ids where a node is named, else at most 128 characters."""

    def frame(self, **fields: Any) -> bytes:
        """:returns: a well-formed server_call frame with C{fields} replaced."""
        obj: dict[str, Any] = {
            "type": "server_call",
            "id": "m1",
            "from": "hA",
            "to": "hB",
            "data": {"call": {"server_name": "s", "method": "m", "args": []}, "response_id": "r1"},
            "route": ["hA"],
            "ttl": 9,
        }
        obj.update(fields)
        return json.dumps(obj).encode()

    def test_accepted(self) -> None:
        """Ids at the bounds are accepted."""
        envelope = decode(
            self.frame(id="i" * 128, reply_to="r" * 128, route=["a" * 64, "b.c-d_e"], to="z" * 64)
        )
        self.assertEqual(envelope.route, ("a" * 64, "b.c-d_e"))

    def test_refused(self) -> None:
        """Longer ids, and node ids out of their syntax, are malformed."""
        for fields in (
            {"id": "i" * 129},
            {"reply_to": "r" * 129},
            {"from": "a" * 65},
            {"to": "bad id"},
            {"from": ""},
            {"route": ["hA", ""]},
            {"route": ["hA", "x" * 900_000]},
            {"route": ["hA", "h\nB"]},
            {"route": ["h\nA"], "from": "h"},
            {"route": ["hA", 5]},
            {"to": "hé"},
        ):
            with self.assertRaises(MalformedMessage, msg=str(fields)[:80]):
                decode(self.frame(**fields))

    def test_emptyTo(self) -> None:
        """An empty "to" (a dialler's first ping, to a node not yet named) is accepted."""
        self.assertEqual(decode(self.frame(to="")).to, "")
        self.assertEqual(decode(self.frame(to="", id=None)).to, "")

    def test_generalPathAgrees(self) -> None:
        """The general path (an envelope without an id) checks node ids too."""
        with self.assertRaises(MalformedMessage):
            decode(self.frame(id=None, to="bad id"))
        self.assertEqual(decode(self.frame(id=None)).to, "hB")

    def test_responseIds(self) -> None:
        """A response_id over 128 characters is malformed in calls and answers."""
        long_id = "r" * 129
        with self.assertRaises(MalformedMessage):
            ServerCall.from_data(
                {"call": {"server_name": "s", "method": "m"}, "response_id": long_id}
            )
        with self.assertRaises(MalformedMessage):
            ServerResponse.from_data({"response_id": long_id, "success": True, "result": 1})
        with self.assertRaises(MalformedMessage):
            ServerResponse.from_data({"response_id": long_id, "success": False, "error": "x"})
        self.assertIsNone(
            ServerCall.tracking(
                {"call": {"server_name": "s", "method": "m"}, "response_id": long_id}
            )
        )
        envelope = Envelope("server_call", "hA", "hB", {"response_id": long_id})
        self.assertIsNone(envelope.response_id)

    def test_copy_dropped(self) -> None:
        """A call_copy_dropped names the call by caller and response id, both checked."""
        notice = CopyDropped("r1", "hA")
        self.assertEqual(notice.to_data(), {"response_id": "r1", "caller": "hA"})
        self.assertEqual(CopyDropped.from_data(notice.to_data()), notice)
        for bad in (
            {"caller": "hA"},
            {"response_id": "", "caller": "hA"},
            {"response_id": "r" * 129, "caller": "hA"},
            {"response_id": "r1"},
            {"response_id": "r1", "caller": "bad id"},
            {"response_id": 1, "caller": "hA"},
        ):
            with self.assertRaises(MalformedMessage, msg=repr(bad)):
                CopyDropped.from_data(bad)

    def test_caller(self) -> None:
        """A server_call's caller travels when set, and is bounded and typed."""
        call = ServerCall(CallSpec("s", "m"), "r1", caller="http:ci")
        data = call.to_data()
        self.assertEqual(data["caller"], "http:ci")
        self.assertEqual(ServerCall.from_data(data), call)
        self.assertNotIn("caller", ServerCall(CallSpec("s", "m"), "r1").to_data())
        for bad in ("", "c" * 129, 5):
            with self.assertRaises(MalformedMessage, msg=repr(bad)):
                ServerCall.from_data({**data, "caller": bad})
