"""
Tests for L{relaytx.peer}: one L{PeerSession} driven by hand with a
L{FakeLinkTransport} and the node's fake clock.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relaytx import OutcomeUnknown, Server, exposed
from relaytx.node import RelayNode
from relaytx.peer import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_UNSUPPORTED_DATA,
    ILinkTransport,
    PeerSession,
    handles,
)
from relaytx.testing import FakeLinkTransport, memory_node
from relaytx.wire import Envelope, Ping, RegistrySync, RouteAdvert, encode
from tests.support import Chat, ChatSession

# Frames captured from the original implementation (seed-wire-samples.md),
# byte for byte, trailing newlines included.
SEED_GO_PING_TO_HA = (
    b'{"type":"ping","id":"1796024335539602613","from":"hB","to":"hA",'
    b'"data":{"timestamp":1796024335},"timestamp":"2026-11-30T07:38:55.539602863Z",'
    b'"route":["hB"],"ttl":9}\n'
)
SEED_GO_PONG_TO_HA = (
    b'{"type":"pong","id":"1796024335540121004","from":"hB","to":"hA",'
    b'"data":{"pong_time":1796024335,"timestamp":1796024335},'
    b'"timestamp":"2026-11-30T07:38:55.540121715Z","route":["hB"],"ttl":9}\n'
)
SEED_CALL_GET_COUNT = (
    b'{"type":"server_call","id":"1796024318380122731","from":"hA","to":"hB",'
    b'"data":{"call":{"args":[],"method":"get_count","server_name":"distributed_counter",'
    b'"timeout":30},"response_id":"1796024318380116242"},'
    b'"timestamp":"2026-11-30T07:38:38.380123102Z","route":["hA"],"ttl":9}\n'
)
SEED_CALL_INCREMENT = (
    b'{"type":"server_call","id":"1796024318382509572","from":"hA","to":"hB",'
    b'"data":{"call":{"args":[10],"method":"increment","server_name":"distributed_counter",'
    b'"timeout":30},"response_id":"1796024318382507248"},'
    b'"timestamp":"2026-11-30T07:38:38.382509952Z","route":["hA"],"ttl":9}\n'
)
SEED_RESPONSES_TO_HA = [
    b'{"type":"server_response","id":"1796024318380757040","from":"hB","to":"hA",'
    b'"data":{"node_id":"hB","response_id":"1796024318380116242",'
    b'"result":{"local_count":0,"node_id":"unknown"},"success":true},'
    b'"timestamp":"2026-11-30T07:38:38.380758482Z","route":["hB"],"ttl":9}\n',
    b'{"type":"server_response","id":"1796024318382849633","from":"hB","to":"hA",'
    b'"data":{"node_id":"hB","response_id":"1796024318382507248",'
    b'"result":{"increment":10,"local_count":10,"node_id":"unknown"},"success":true},'
    b'"timestamp":"2026-11-30T07:38:38.382850634Z","route":["hB"],"ttl":9}\n',
    b'{"type":"server_response","id":"1796024318389733408","from":"hB","to":"hA",'
    b'"data":{"error":"server nope not found","response_id":"1796024318389398360",'
    b'"success":false},"timestamp":"2026-11-30T07:38:38.389734049Z","route":["hB"],"ttl":9}\n',
    b'{"type":"server_response","id":"1796024318390918256","from":"hB","to":"hA",'
    b'"data":{"node_id":"hB","response_id":"1796024318390649191","result":null,'
    b'"success":true},"timestamp":"2026-11-30T07:38:38.390919608Z","route":["hB"],"ttl":9}\n',
]
SEED_CALL_HEALTH_CHECK_TO_HA = (
    b'{"type":"server_call","id":"1796024318384369168","from":"hB","to":"hA",'
    b'"data":{"call":{"args":[],"method":"health_check","server_name":"health_monitor",'
    b'"timeout":30},"response_id":"1796024318384367055"},'
    b'"timestamp":"2026-11-30T07:38:38.384369529Z","route":["hB"],"ttl":9}\n'
)
SEED_PY1_CALL = (
    b'{"type":"server_call","id":"1796024144862845966","from":"py1","to":"node1",'
    b'"data":{"call":{"server_name":"distributed_counter","method":"get_count","args":[],'
    b'"timeout":30},"response_id":"py-r1"},"timestamp":"2026-11-30T07:35:44.862891Z",'
    b'"route":["py1"],"ttl":9}'
)
SEED_PY1_CALL_NO_RESPONSE_ID = (
    b'{"type":"server_call","id":"1796024144862845967","from":"py1","to":"node1",'
    b'"data":{"call":{"server_name":"distributed_counter","method":"get_count","args":[],'
    b'"timeout":30}},"timestamp":"2026-11-30T07:35:44.862891Z","route":["py1"],"ttl":9}'
)
SEED_PY1_MINIMAL_PING = b'{"type":"ping","from":"py1","to":"node1","data":{"timestamp":2}}'
SEED_PY1_REGISTRY_SYNC = (
    b'{"type":"registry_sync","id":"1796024146680293368","from":"py1","to":"node1",'
    b'"data":{"servers":{"svc":{"methods":["m"]}}},"timestamp":"2026-11-30T07:35:46.680302Z",'
    b'"route":["py1"],"ttl":9}'
)
# The Python peer's answer to node1's call, with the response id left as a
# placeholder for the id relaytx generated.
SEED_PY1_RESPONSE = (
    b'{"type": "server_response", "id": "1796024148688889272", "from": "py1", '
    b'"to": "node1", "data": {"response_id": "RESPONSE_ID", "node_id": "py1", '
    b'"success": true, "result": {"echo": [1, "a", {"k": true}], "from": "py1"}}, '
    b'"timestamp": "2026-11-30T07:35:48.688891Z", "route": ["py1"], "ttl": 9}'
)
SEED_ROUTE_MESSAGE = (
    b'{"type":"route_message","id":"outer-1","from":"pyR","to":"hB","data":'
    b'{"original_message":{"type":"server_call","id":"inner-1","from":"pyR","to":"hC",'
    b'"data":{"call":{"server_name":"distributed_counter","method":"get_count","args":[],'
    b'"timeout":30},"response_id":"fwd-1"},"timestamp":"2026-11-30T07:38:38.405797Z",'
    b'"route":["pyR"],"ttl":9}},"timestamp":"2026-11-30T07:38:38.405815Z",'
    b'"route":["pyR"],"ttl":9}'
)

RESPONSE_KEYS = {"node_id", "response_id", "result", "success"}


class DistributedCounter(Server):
    """The counter the seed captures call."""

    def __init__(self) -> None:
        self.count = 0

    @exposed
    def get_count(self) -> dict[str, Any]:
        return {"local_count": self.count, "node_id": "unknown"}

    @exposed
    def increment(self, by: int = 1) -> dict[str, Any]:
        self.count += by
        return {"increment": by, "local_count": self.count, "node_id": "unknown"}


class HealthMonitor(Server):
    """The server the seed's reverse-direction call reaches."""

    @exposed
    def health_check(self) -> dict[str, Any]:
        return {"status": "healthy", "timestamp": "2025-01-01T00:00:00Z", "uptime": 1}


class QuietPingSession(PeerSession):
    """A session that overrides a built-in handler."""

    @handles(Ping)
    def on_ping(self, envelope: Envelope, ping: Ping) -> None:
        pass


def frame(type: str, sender: str, to: str, data: dict[str, Any], **extra: Any) -> bytes:
    """:returns: a text frame for a message."""
    return json.dumps({"type": type, "from": sender, "to": to, "data": data, **extra}).encode()


def dropped(node: RelayNode, reason: str) -> float:
    """:returns: how many messages C{node} dropped for C{reason}."""
    value = node.metrics.registry.get_sample_value(
        "relaytx_messages_dropped_total", {"reason": reason}
    )
    return value or 0.0


def dropped_total(node: RelayNode) -> float:
    """:returns: how many messages C{node} dropped for any reason."""
    return sum(
        sample.value
        for metric in node.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "relaytx_messages_dropped_total"
    )


class SessionTestCase(SynchronousTestCase):
    """A node C{hB} and a session to its neighbour C{hA} on a fake transport."""

    node_id = "hB"
    peer_id = "hA"
    options: dict[str, Any] = {}
    start_time = 0.0

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(self.start_time)
        self.node = memory_node(self.node_id, self.clock, **self.options)
        self.transport, self.session = self.open(self.peer_id)

    def open(self, peer_id: str) -> tuple[FakeLinkTransport, PeerSession]:
        transport = FakeLinkTransport(f"test:{peer_id}")
        session = self.node.mesh.open_link(peer_id, "inbound", f"test:{peer_id}", transport)
        return transport, session

    def receive(self, data: bytes, session: PeerSession | None = None) -> None:
        (session or self.session).data_received(data)

    def sent(self, *types: str) -> list[Envelope]:
        return self.transport.envelopes(*types)


class TransportTests(SynchronousTestCase):
    """The fake transport itself."""

    def test_provides_interface(self) -> None:
        """FakeLinkTransport provides ILinkTransport."""
        self.assertTrue(verifyObject(ILinkTransport, FakeLinkTransport()))

    def test_records(self) -> None:
        """The fake records frames, closes and aborts without acting on them."""
        transport = FakeLinkTransport()
        transport.send(b"x")
        transport.close(1000, "bye")
        transport.abort()
        self.assertEqual(transport.frames, [b"x"])
        self.assertEqual(transport.closes, [(1000, "bye")])
        self.assertEqual(transport.close_code, 1000)
        self.assertTrue(transport.aborted)

    def test_refuses_text(self) -> None:
        """Sending a str instead of bytes is an error the fake reports."""
        self.assertRaises(TypeError, FakeLinkTransport().send, "x")


class PingPongTests(SessionTestCase):
    """Ping answers and round-trip times."""

    start_time = 1796024335.75

    def test_ping_answered(self) -> None:
        """A ping is answered with a pong echoing data.timestamp and giving pong_time."""
        self.transport.clear()
        self.receive(frame("ping", "hA", "hB", {"timestamp": "anything"}, id="p1"))
        [pong] = self.sent("pong")
        self.assertEqual((pong.sender, pong.to), ("hB", "hA"))
        self.assertEqual(dict(pong.data), {"timestamp": "anything", "pong_time": 1796024335})
        self.assertIsInstance(pong.data["pong_time"], int)
        self.assertEqual(pong.reply_to, "p1")

    def test_pong_measures_rtt(self) -> None:
        """A pong echoing our ping's timestamp gives the link's round-trip time."""
        self.receive(frame("pong", "hA", "hB", {"timestamp": 0}))  # the first ping's
        self.transport.clear()
        self.clock.advance(self.node.config.ping_interval)
        [ping] = self.sent("ping")
        self.assertEqual(ping.data["timestamp"], self.clock.seconds())
        self.assertEqual(ping.to, "hA")
        self.clock.advance(0.25)
        self.receive(frame("pong", "hA", "hB", {"timestamp": ping.data["timestamp"]}))
        self.assertAlmostEqual(self.session.rtt, 0.25)
        self.assertEqual(self.node.views.peers()["hA"]["rtt_ms"], 250.0)

    def test_pong_from_elsewhere_ignored(self) -> None:
        """A pong not sent by the neighbour itself, or with no usable timestamp, sets no RTT."""
        routed = {"timestamp": self.clock.seconds()}
        self.receive(frame("pong", "hX", "hB", routed, route=["hX", "hA"]))
        self.receive(frame("pong", "hA", "hB", {"timestamp": "soon"}))
        self.assertIsNone(self.session.rtt)
        self.assertEqual(dropped_total(self.node), 0)


class LivenessTests(SessionTestCase):
    """Keepalive pings on the clock, and the peer-timeout rule (see L{relaytx._liveness})."""

    options = {"ping_interval": 2.0}

    def answering(self, seconds: float, step: float = 0.01) -> None:
        """
        Move the clock on by C{seconds}, the peer answering every ping
        (and every WebSocket ping, a nudge) within C{step}.
        """
        answered = nudges = 0
        end = self.clock.seconds() + seconds
        while True:
            pings = self.sent("ping")
            for ping in pings[answered:]:
                self.receive(frame("pong", "hA", "hB", {"timestamp": ping.data["timestamp"]}))
            answered = len(pings)
            if self.transport.pings > nudges:
                nudges = self.transport.pings
                self.session.reading()  # its pong
            left = end - self.clock.seconds()
            if left <= 0:
                return
            self.clock.advance(min(step, left))  # lands on end exactly

    def test_pings_every_interval(self) -> None:
        """
        The session pings at once and then every ping_interval, and no more
        on an idle link (which its WebSocket pings, its nudges, test).
        """
        self.answering(0)
        self.assertEqual(len(self.sent("ping")), 1)
        self.answering(1.9)
        self.assertEqual(len(self.sent("ping")), 1)
        self.answering(0.1)
        self.assertEqual(len(self.sent("ping")), 2)
        self.answering(2)
        self.assertEqual(len(self.sent("ping")), 3)
        self.answering(60)
        self.assertEqual(len(self.sent("ping")), 33)

    def test_answering_peer_stays(self) -> None:
        """A neighbour that answers its pings stays linked, however long."""
        self.answering(120)
        self.assertFalse(self.transport.aborted)
        self.assertIs(self.node.mesh.links["hA"], self.session)
        self.assertTrue(self.node.views.peers()["hA"]["is_healthy"])

    def test_slow_answers_within_timeout(self) -> None:
        """A neighbour that answers each ping just within the peer timeout stays linked."""
        self.answering(60, step=1.2)
        self.assertFalse(self.transport.aborted)
        self.assertIn("hA", self.node.mesh.links)

    def test_silent_peer_dropped(self) -> None:
        """
        A neighbour that leaves a ping unanswered for the peer timeout is
        aborted, unlinked and unrouted.
        """
        hello = RegistrySync(servers={}, seq=1)
        advert = RegistrySync(routes={"hZ": RouteAdvert(("hZ",), {"z": ("m",)})}, seq=2)
        for sync in (hello, advert):
            self.receive(encode(Envelope.create(sync, "hA", "hB", self.clock.seconds())))
        self.assertEqual(self.node.views.routes()["hZ"]["next_hop"], "hA")
        self.answering(1.99)  # the first keepalive answered; the one at 2 s is not
        self.clock.advance(0.01)
        self.clock.pump([0.05] * 24)
        self.assertFalse(self.transport.aborted)
        self.clock.pump([0.05, 0.05, 0])
        self.assertTrue(self.transport.aborted)
        self.assertNotIn("hA", self.node.mesh.links)
        self.assertEqual(self.node.views.routes(), {})
        self.assertEqual(self.node.views.servers().keys(), {"node"})
        self.assertFalse(self.session.view(0)["is_healthy"])

    def test_idle_peer_nudged(self) -> None:
        """
        A link heard nothing from for 0.45 s gets a WebSocket ping (a nudge),
        no JSON; a peer that answers none is dropped within 1.75 s of the
        last bytes it sent, long before the next keepalive.
        """
        self.answering(3.0)
        self.assertFalse(self.transport.aborted)
        self.assertGreaterEqual(self.transport.pings, 4)  # one a 0.45-0.56 s
        self.assertLessEqual(self.transport.pings, 6)
        self.assertEqual(len(self.sent("ping")), 2)  # the keepalives at 0 and 2 s
        heard = self.session.last_seen
        nudges = self.transport.pings
        self.clock.pump([0.01] * int((heard + 0.44 - self.clock.seconds()) / 0.01))
        self.assertEqual(self.transport.pings, nudges)
        self.clock.pump([0.01] * 13)
        self.assertEqual(self.transport.pings, nudges + 1)
        self.clock.pump([0.01] * int((heard + 1.75 - self.clock.seconds()) / 0.01) + [0])
        self.assertTrue(self.transport.aborted)
        self.assertNotIn("hA", self.node.mesh.links)

    def test_silent_peer_fails_calls(self) -> None:
        """
        A call to a neighbour that falls silent fails with -32006 when it is
        dropped, within the peer timeout, not at its own timeout.
        """
        d = self.node.call("hA", "node", "ping", timeout=60)
        self.clock.pump([0.05] * 27 + [0])
        failure = self.failureResultOf(d, OutcomeUnknown)
        self.assertEqual(failure.value.code, -32006)
        self.assertEqual(len(self.node.mesh.pending), 0)

    def test_silent_peer_leaves_no_pinger(self) -> None:
        """Once a silent neighbour is dropped, its session schedules no more pings."""
        self.clock.pump([0.05] * 40)
        self.assertNotIn("hA", self.node.mesh.links)
        self.transport.clear()
        self.clock.advance(20)
        self.assertEqual(self.sent("ping"), [])


class BadInputTests(SessionTestCase):
    """Malformed input is counted and dropped, or closes that one link."""

    def assertLinkUp(self) -> None:
        self.assertEqual(self.transport.closes, [])
        self.transport.clear()
        self.receive(frame("ping", "hA", "hB", {"timestamp": 7}))
        self.assertEqual([p.data["timestamp"] for p in self.sent("pong")], [7])

    def test_not_json_closes_1007(self) -> None:
        """A frame that is not JSON closes the link with 1007 and is counted."""
        self.receive(b"{not json")
        self.assertEqual(self.transport.close_code, CLOSE_INVALID_PAYLOAD)
        self.assertEqual(dropped(self.node, "not_json"), 1)

    def test_invalid_utf8_closes_1007(self) -> None:
        """
        Invalid UTF-8 in a frame (a stray byte, an overlong form, a
        surrogate) closes the link with 1007: links rely on the session's
        decoder for this, not on Autobahn's validator.
        """
        for i, bad in enumerate((b"\xff", b"\xc0\xaf", b"\xed\xa0\x80")):
            peer = f"u{i}"
            transport, session = self.open(peer)
            data = b'{"type":"ping","from":"%s","to":"hB","data":{"x":"%s"}}'
            self.receive(data % (peer.encode(), bad), session)
            self.assertEqual(transport.close_code, CLOSE_INVALID_PAYLOAD, bad)
        self.assertEqual(dropped(self.node, "not_json"), 3)

    def test_not_object_closes_1007(self) -> None:
        """A JSON value that is not an object closes the link with 1007 and is counted."""
        self.receive(b"[1, 2]")
        self.assertEqual(self.transport.close_code, CLOSE_INVALID_PAYLOAD)
        self.assertEqual(dropped(self.node, "not_object"), 1)

    def test_other_links_unaffected(self) -> None:
        """A link closed for bad input leaves the node's other links serving."""
        other_transport, other = self.open("hC")
        self.receive(b"\xff\xfe")
        self.assertEqual(self.transport.close_code, CLOSE_INVALID_PAYLOAD)
        self.session.connection_lost("closed")
        other.data_received(frame("ping", "hC", "hB", {"timestamp": 1}))
        self.assertEqual(len(other_transport.envelopes("pong")), 1)
        self.assertEqual(other_transport.closes, [])
        self.assertEqual(list(self.node.mesh.links), ["hC"])

    def test_malformed_envelope_dropped(self) -> None:
        """An envelope lacking a field or with a mistyped one is dropped and counted; link stays."""
        self.receive(b'{"type":"ping","to":"hB","data":{}}')
        self.receive(b'{"type":"ping","from":"hA","to":"hB","data":{},"ttl":"9"}')
        self.assertEqual(dropped(self.node, "missing_field"), 1)
        self.assertEqual(dropped(self.node, "bad_field"), 1)
        self.assertLinkUp()

    def test_malformed_payload_dropped(self) -> None:
        """
        A server_call whose call is not an object is counted and dropped, and
        answered with -32600 since it names a response id; the link stays.
        """
        self.receive(frame("server_call", "hA", "hB", {"call": [], "response_id": "r"}))
        self.assertEqual(dropped(self.node, "bad_field"), 1)
        [answer] = self.sent("server_response")
        self.assertEqual(
            (answer.to, answer.data["response_id"], answer.data["error_code"]), ("hA", "r", -32600)
        )
        self.assertLinkUp()

    def test_malformed_without_response_id(self) -> None:
        """A malformed server_call that names no usable response id gets no answer."""
        self.receive(frame("server_call", "hA", "hB", {"call": []}))
        self.receive(frame("server_call", "hA", "hB", {"call": [], "response_id": 7}))
        self.assertEqual(self.sent("server_response"), [])
        self.assertLinkUp()

    def test_unknown_type_dropped(self) -> None:
        """A message of an unknown type is counted and dropped; the link stays."""
        self.receive(frame("gossip", "hA", "hB", {"text": "psst"}))
        self.assertEqual(dropped(self.node, "unknown_type"), 1)
        self.assertLinkUp()

    def test_binary_closes_1003(self) -> None:
        """A binary frame closes the link with 1003 and is counted."""
        self.session.binary_received()
        self.assertEqual(self.transport.close_code, CLOSE_UNSUPPORTED_DATA)
        self.assertEqual(dropped(self.node, "binary"), 1)

    def test_closed_once(self) -> None:
        """A session asked to close twice closes its transport once."""
        self.receive(b"nope")
        self.receive(b"nope again")
        self.assertEqual(len(self.transport.closes), 1)

    def test_connection_lost_twice(self) -> None:
        """connection_lost may be called twice; the second call does nothing."""
        self.session.connection_lost("one")
        self.session.connection_lost("two")
        self.assertNotIn("hA", self.node.mesh.links)


class CustomMessageTests(SessionTestCase):
    """Adding message types by subclassing or by registering a handler."""

    def test_subclass_handles(self) -> None:
        """A PeerSession subclass with @handles receives its message type."""
        self.node.use_session(ChatSession)
        _, session = self.open("hC")
        self.assertIsInstance(session, ChatSession)
        session.data_received(frame("chat", "hC", "hB", {"text": "hi"}))
        self.assertEqual(session.chats, [("hC", "hi")])  # type: ignore[attr-defined]
        self.assertEqual(dropped_total(self.node), 0)

    def test_subclass_keeps_builtins(self) -> None:
        """A subclass still answers pings: the handler table is merged along the MRO."""
        self.node.use_session(ChatSession)
        transport, session = self.open("hC")
        session.data_received(frame("ping", "hC", "hB", {"timestamp": 3}))
        self.assertEqual(len(transport.envelopes("pong")), 1)
        self.assertIn(Ping, ChatSession.handlers)

    def test_no_global_table(self) -> None:
        """Declaring a subclass leaves PeerSession's own table untouched."""
        self.assertIn(Chat, ChatSession.handlers)
        self.assertNotIn(Chat, PeerSession.handlers)

    def test_subclass_overrides(self) -> None:
        """A subclass handler for a built-in type wins over the inherited one."""
        self.node.use_session(QuietPingSession)
        transport, session = self.open("hC")
        session.data_received(frame("ping", "hC", "hB", {"timestamp": 3}))
        self.assertEqual(transport.envelopes("pong"), [])

    def test_register_handler(self) -> None:
        """node.register_handler makes a message type handled without subclassing."""
        received: list[tuple[str, Chat]] = []
        self.node.register_handler(
            Chat, lambda envelope, chat: received.append((envelope.id, chat))
        )
        self.receive(frame("chat", "hA", "hB", {"text": "yo"}, id="c1"))
        self.assertEqual(received, [("c1", Chat("yo"))])
        self.assertEqual(dropped_total(self.node), 0)

    def test_unregistered_type_dropped(self) -> None:
        """Without a handler, the custom type is an unknown type, counted and dropped."""
        self.receive(frame("chat", "hA", "hB", {"text": "yo"}))
        self.assertEqual(dropped(self.node, "unknown_type"), 1)

    def test_bad_custom_payload(self) -> None:
        """A custom message whose data lacks a field is counted and dropped."""
        self.node.register_handler(Chat, lambda envelope, chat: self.fail("handled"))
        self.receive(frame("chat", "hA", "hB", {}))
        self.assertEqual(dropped(self.node, "missing_field"), 1)

    def test_ill_typed_custom_payload(self) -> None:
        """
        A custom message whose field is not of its declared JSON type is
        counted and dropped (SPEC section 7): C{text: str} takes no number,
        array, object or null.
        """
        got: list[str] = []
        self.node.register_handler(Chat, lambda envelope, chat: got.append(chat.text))
        for text in [5, [1, 2], {"a": 1}, None, True]:
            self.receive(frame("chat", "hA", "hB", {"text": text}))
        self.assertEqual(dropped(self.node, "bad_field"), 5)
        self.receive(frame("chat", "hA", "hB", {"text": "yo"}))
        self.assertEqual(got, ["yo"])
        self.assertEqual(self.transport.closes, [])


class SeedFromGoTests(SessionTestCase):
    """Frames an original node (hA) sends to us (hB), fed in verbatim."""

    def setUp(self) -> None:
        super().setUp()
        self.counter = DistributedCounter()
        self.node.expose("distributed_counter", self.counter)
        self.transport.clear()

    def test_server_call_answered(self) -> None:
        """A seed server_call is answered with a server_response in the seed's shape."""
        self.receive(SEED_CALL_GET_COUNT)
        [response] = self.sent("server_response")
        self.assertEqual((response.sender, response.to), ("hB", "hA"))
        self.assertEqual(set(response.data), RESPONSE_KEYS)
        self.assertEqual(
            dict(response.data),
            {
                "node_id": "hB",
                "response_id": "1796024318380116242",
                "result": {"local_count": 0, "node_id": "unknown"},
                "success": True,
            },
        )
        self.assertIsNotNone(response.id)
        self.assertNotEqual(response.id, "1796024318380122731")
        self.assertIsNotNone(response.timestamp)
        self.assertEqual(response.route, ("hB",))

    def test_server_call_with_args(self) -> None:
        """A seed server_call's positional args reach the method."""
        self.receive(SEED_CALL_INCREMENT)
        [response] = self.sent("server_response")
        self.assertEqual(response.data["response_id"], "1796024318382507248")
        self.assertEqual(response.data["result"]["local_count"], 10)
        self.assertEqual(self.counter.count, 10)

    def test_nothing_run_after_bad_input(self) -> None:
        """
        A call right behind a frame that closed the link for bad input (not
        JSON, or binary: the same burst) is dropped, not run: its answer
        could not have been sent.
        """
        self.receive(b"[1, 2]")
        self.receive(SEED_CALL_INCREMENT)
        self.assertEqual(self.counter.count, 0)
        transport, session = self.open("hA2")
        session.binary_received()
        self.receive(SEED_CALL_INCREMENT.replace(b'"hA"', b'"hA2"'), session)
        self.assertEqual(self.counter.count, 0)
        self.assertEqual(transport.close_code, CLOSE_UNSUPPORTED_DATA)

    def test_unknown_server_answered_with_error(self) -> None:
        """A call to a server we do not host is answered with success false and an error text."""
        self.receive(SEED_CALL_GET_COUNT.replace(b"distributed_counter", b"nope"))
        [response] = self.sent("server_response")
        self.assertIs(response.data["success"], False)
        self.assertIsInstance(response.data["error"], str)
        self.assertEqual(response.data["error_code"], -32003)


class SeedToGoTests(SessionTestCase):
    """Frames an original node (hB) sends to us (hA), fed in verbatim."""

    node_id = "hA"
    peer_id = "hB"

    def setUp(self) -> None:
        super().setUp()
        self.node.expose("health_monitor", HealthMonitor())
        self.transport.clear()

    def test_ping_answered(self) -> None:
        """The original's ping is answered with a pong echoing its integer timestamp."""
        self.receive(SEED_GO_PING_TO_HA)
        [pong] = self.sent("pong")
        self.assertEqual(pong.to, "hB")
        self.assertEqual(set(pong.data), {"pong_time", "timestamp"})
        self.assertEqual(pong.data["timestamp"], 1796024335)

    def test_pong_accepted(self) -> None:
        """The original's pong is accepted without a drop."""
        self.receive(SEED_GO_PONG_TO_HA)
        self.assertEqual(dropped_total(self.node), 0)
        self.assertEqual(self.transport.closes, [])

    def test_responses_accepted(self) -> None:
        """The original's answers (error without node_id, null result) are accepted as late ones."""
        for data in SEED_RESPONSES_TO_HA:
            self.receive(data)
        self.assertEqual(dropped_total(self.node), 0)
        late = self.node.metrics.registry.get_sample_value("relaytx_late_answers_total")
        self.assertEqual(late, len(SEED_RESPONSES_TO_HA))
        self.assertEqual(self.transport.closes, [])

    def test_reverse_call_answered(self) -> None:
        """The accepting original's call to the dialler is answered in the seed's shape."""
        self.receive(SEED_CALL_HEALTH_CHECK_TO_HA)
        [response] = self.sent("server_response")
        self.assertEqual(response.to, "hB")
        self.assertEqual(
            dict(response.data),
            {
                "node_id": "hA",
                "response_id": "1796024318384367055",
                "result": {"status": "healthy", "timestamp": "2025-01-01T00:00:00Z", "uptime": 1},
                "success": True,
            },
        )

    def test_duplicate_seed_call_runs_once(self) -> None:
        """The same seed server_call delivered twice is executed and answered once."""
        self.receive(SEED_CALL_HEALTH_CHECK_TO_HA)
        self.receive(SEED_CALL_HEALTH_CHECK_TO_HA)
        self.assertEqual(len(self.sent("server_response")), 1)
        self.assertEqual(dropped(self.node, "duplicate"), 1)


class SeedPythonPeerTests(SessionTestCase):
    """Frames the seed's Python peer (py1) exchanged with an original node (node1)."""

    node_id = "node1"
    peer_id = "py1"
    start_time = 1796024147.5

    def setUp(self) -> None:
        super().setUp()
        self.node.expose("distributed_counter", DistributedCounter())
        self.transport.clear()

    def test_call_without_trailing_newline(self) -> None:
        """The Python peer's call (no trailing newline) is answered in the seed's shape."""
        self.receive(SEED_PY1_CALL)
        [response] = self.sent("server_response")
        self.assertEqual(set(response.data), RESPONSE_KEYS)
        self.assertEqual(response.data["response_id"], "py-r1")
        self.assertEqual(response.data["node_id"], "node1")

    def test_call_without_response_id(self) -> None:
        """A server_call without response_id is answered with response_id null."""
        self.receive(SEED_PY1_CALL_NO_RESPONSE_ID)
        [response] = self.sent("server_response")
        self.assertEqual(set(response.data), RESPONSE_KEYS)
        self.assertIsNone(response.data["response_id"])
        self.assertIs(response.data["success"], True)

    def test_minimal_ping(self) -> None:
        """The minimal ping envelope (no id, timestamp, route or ttl) is answered."""
        self.receive(SEED_PY1_MINIMAL_PING)
        [pong] = self.sent("pong")
        self.assertEqual((pong.sender, pong.to), ("node1", "py1"))
        self.assertEqual(dict(pong.data), {"pong_time": 1796024147, "timestamp": 2})
        self.assertIsNotNone(pong.id)
        self.assertEqual(pong.route, ("node1",))

    def test_registry_sync(self) -> None:
        """The Python peer's registry_sync puts its server in the directory, one hop away."""
        self.receive(SEED_PY1_REGISTRY_SYNC)
        [entry] = self.node.views.servers()["svc"]
        self.assertEqual(
            (entry["node_id"], entry["methods"], entry["hops"], entry["is_local"]),
            ("py1", ["m"], 1, False),
        )

    def test_our_call_in_seed_shape(self) -> None:
        """Our server_call has the seed's shape and the peer's seed answer completes it."""
        d = self.node.call("py1", "svc", "m", 1, "a", {"k": True}, timeout=5)
        [call] = self.sent("server_call")
        self.assertEqual((call.sender, call.to), ("node1", "py1"))
        self.assertEqual(
            dict(call.data["call"]),
            {"server_name": "svc", "method": "m", "args": [1, "a", {"k": True}], "timeout": 5},
        )
        response_id = call.data["response_id"]
        self.assertIsInstance(response_id, str)
        self.assertNoResult(d)
        self.receive(SEED_PY1_RESPONSE.replace(b"RESPONSE_ID", response_id.encode()))
        self.assertEqual(self.successResultOf(d), {"echo": [1, "a", {"k": True}], "from": "py1"})


class SeedRouteMessageTests(SessionTestCase):
    """The seed's route_message, sent by pyR to hB for hC."""

    peer_id = "pyR"

    def test_unwrapped_and_forwarded(self) -> None:
        """The inner message goes on unwrapped to the direct peer, via hB, with one less ttl."""
        to_c, _ = self.open("hC")
        to_c.clear()
        self.receive(SEED_ROUTE_MESSAGE)
        [forwarded] = to_c.envelopes("server_call")
        self.assertEqual(
            (forwarded.id, forwarded.sender, forwarded.to, forwarded.timestamp),
            ("inner-1", "pyR", "hC", "2026-11-30T07:38:38.405797Z"),
        )
        self.assertEqual(forwarded.route, ("pyR", "hB"))
        self.assertEqual(forwarded.ttl, 8)
        self.assertEqual(forwarded.data["response_id"], "fwd-1")
        self.assertEqual(dropped_total(self.node), 0)

    def test_minimal_inner_envelope(self) -> None:
        """
        The inner message may be a minimal envelope (no id, timestamp,
        route or ttl), as the original node may send any message: it goes
        on as the same message sent straight would.
        """
        to_c, _ = self.open("hC")
        to_c.clear()
        inner = {
            "type": "server_call",
            "from": "pyR",
            "to": "hC",
            "data": {
                "call": {"server_name": "s", "method": "m", "args": [], "timeout": 30},
                "response_id": "fwd-2",
            },
        }
        wrapper = {"type": "route_message", "from": "pyR", "to": "hB"}
        self.receive(json.dumps({**wrapper, "data": {"original_message": inner}}).encode())
        [forwarded] = to_c.envelopes("server_call")
        self.assertEqual((forwarded.sender, forwarded.to), ("pyR", "hC"))
        self.assertEqual(forwarded.route, ("hB",))  # (as it goes on when sent straight)
        self.assertEqual(forwarded.data["response_id"], "fwd-2")
        self.assertEqual(dropped_total(self.node), 0)
        # Wrapped, a message that names another sender still needs its route.
        to_c.clear()
        forged = {**inner, "from": "hX", "data": {**inner["data"], "response_id": "fwd-3"}}
        self.receive(json.dumps({**wrapper, "data": {"original_message": forged}}).encode())
        self.assertEqual(to_c.envelopes("server_call"), [])
        self.assertEqual(dropped_total(self.node), 1)


class BackedUpTests(SessionTestCase):
    """Calls held back while the link's output is backed up (L{PeerSession.hold_calls})."""

    def call(self, n: int, text: str = "x") -> bytes:
        """A call of node.echo(text) from hA, response id c{n}."""
        data = {
            "call": {"server_name": "node", "method": "echo", "args": [text], "timeout": 5},
            "response_id": f"c{n}",
        }
        return frame("server_call", "hA", "hB", data, id=f"m{n}")

    def answers(self) -> list[tuple[str, Any]]:
        return [
            (a.data["response_id"], a.data.get("result", a.data.get("error_code")))
            for a in self.sent("server_response")
        ]

    def test_held_then_taken_in_order(self) -> None:
        """
        Calls arriving while the output is backed up wait; everything else
        is taken as it comes (a ping is answered); once drained, the calls
        run in the order they came.
        """
        self.session.hold_calls(10_000)
        self.receive(self.call(1, "one"))
        self.receive(frame("ping", "hA", "hB", {"timestamp": 7}))
        self.receive(self.call(2, "two"))
        self.assertEqual(self.answers(), [])
        self.assertEqual(len(self.sent("pong")), 1)
        self.session.release_calls()
        self.assertEqual(self.answers(), [("c1", ["one"]), ("c2", ["two"])])
        self.receive(self.call(3))
        self.assertEqual(len(self.answers()), 3)  # drained: taken at once again

    def test_past_the_limit_refused(self) -> None:
        """Past the bytes the link may hold, a call is refused at once with -32005."""
        self.session.hold_calls(len(self.call(1)) * 2)
        for n in range(1, 4):
            self.receive(self.call(n))
        self.assertEqual(self.answers(), [("c3", -32005)])
        self.assertEqual(dropped(self.node, "overloaded"), 1)
        self.session.release_calls()
        self.assertEqual(self.answers(), [("c3", -32005), ("c1", ["x"]), ("c2", ["x"])])

    def test_dropped_with_the_link(self) -> None:
        """Calls still held when the link is lost are let go of."""
        self.session.hold_calls(10_000)
        self.receive(self.call(1))
        self.session.connection_lost("gone")
        self.session.release_calls()
        self.assertEqual(self.answers(), [])
