"""
An independent WebSocket client (the C{websockets} library) plays a peer of
the original implementation: it sends frames in the seed's format and
checks that the answers have the seed's shapes. A strict Autobahn server
plays an original node that relaytx dials.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .helpers import EXAMPLES, get_json, rpc, start_node, url, wait_for, ws

COUNTER = os.path.join(EXAMPLES, "counter.py")


def _frames_until(ws: Any, kind: str, limit: int = 20) -> dict[str, Any]:
    """Read frames (skipping the node's pings and syncs) until one of type C{kind}."""
    for _ in range(limit):
        frame = json.loads(ws.recv(timeout=5))
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame among {limit}")


class ForeignPeerTests(TestCase):
    """Seed-format frames from a foreign client get seed-format answers."""

    timeout = 30

    async def test_seed_frames(self) -> None:
        """Ping, server_call (with and without response_id) and registry_sync work as the seed's."""
        node = start_node(self, "node1")
        node.load_app(COUNTER)
        address = url(node).replace("http://", "ws://") + "/ws/p2p?node_id=py1"

        def conversation() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with connect(address, open_timeout=5) as ws:
                seen["header"] = ws.response.headers.get("X-Relaytx-Node-Id")
                ws.send('{"type":"ping","from":"py1","to":"node1","data":{"timestamp":2}}')
                seen["pong"] = _frames_until(ws, "pong")
                ws.send(
                    '{"type":"server_call","id":"1796024144862845966","from":"py1","to":"node1",'
                    '"data":{"call":{"server_name":"counter_server","method":"increment",'
                    '"args":[7],"timeout":30},"response_id":"py-r1"},'
                    '"timestamp":"2026-11-30T07:35:44.862891Z","route":["py1"],"ttl":9}'
                )
                seen["response"] = _frames_until(ws, "server_response")
                ws.send(
                    '{"type":"server_call","id":"x2","from":"py1","to":"node1",'
                    '"data":{"call":{"server_name":"counter_server","method":"get",'
                    '"args":[],"timeout":30}},"route":["py1"],"ttl":9}\n'
                )
                seen["no_id"] = _frames_until(ws, "server_response")
                ws.send(
                    '{"type":"server_call","id":"x3","from":"py1","to":"node1",'
                    '"data":{"call":{"server_name":"nope","method":"get","args":[],"timeout":30},'
                    '"response_id":"py-r3"},"route":["py1"],"ttl":9}'
                )
                seen["unknown"] = _frames_until(ws, "server_response")
                ws.send(
                    '{"type":"registry_sync","id":"1796024146680293368","from":"py1","to":"node1",'
                    '"data":{"servers":{"svc":{"methods":["m"]}}},'
                    '"timestamp":"2026-11-30T07:35:46.680302Z","route":["py1"],"ttl":9}'
                )
                seen["sync_sent"] = True
                # The node calls svc.m on us: answer as the seed's Python peer did.
                call = _frames_until(ws, "server_call")
                seen["call"] = call
                ws.send(
                    json.dumps(
                        {
                            "type": "server_response",
                            "id": "1796024148688889272",
                            "from": "py1",
                            "to": "node1",
                            "data": {
                                "response_id": call["data"]["response_id"],
                                "node_id": "py1",
                                "success": True,
                                "result": {"echo": call["data"]["call"]["args"], "from": "py1"},
                            },
                            "timestamp": "2026-11-30T07:35:48.688891Z",
                            "route": ["py1"],
                            "ttl": 9,
                        }
                    )
                )
                # Keep the link open (answering nothing) until the node closes it.
                try:
                    while True:
                        ws.recv(timeout=10)
                except ConnectionClosed as closed:
                    seen["close_code"] = closed.rcvd.code if closed.rcvd else None
            return seen

        talk = deferToThread(conversation)
        await wait_for(lambda: "svc" in node.views.servers(), 5.0, what="py1's registry")
        remote = await rpc(
            url(node),
            "remote_call",
            {"node_id": "py1", "server_name": "svc", "method": "m", "args": [1, "a", {"k": True}]},
        )
        self.assertEqual(
            remote,
            {"jsonrpc": "2.0", "result": {"echo": [1, "a", {"k": True}], "from": "py1"}, "id": 1},
        )
        node.mesh.links["py1"].close(1000, "test over")
        seen = await talk

        self.assertEqual(seen["header"], "node1")
        self.assertEqual(seen["close_code"], 1000)
        pong = seen["pong"]
        self.assertEqual(
            list(pong)[:8], ["type", "id", "from", "to", "data", "timestamp", "route", "ttl"]
        )
        self.assertEqual((pong["from"], pong["to"]), ("node1", "py1"))
        self.assertEqual(pong["data"]["timestamp"], 2)
        self.assertIsInstance(pong["data"]["pong_time"], int)

        response = seen["response"]["data"]
        self.assertEqual(
            {k: response[k] for k in ("node_id", "response_id", "result", "success")},
            {"node_id": "node1", "response_id": "py-r1", "result": 7, "success": True},
        )
        self.assertEqual(seen["response"]["to"], "py1")
        self.assertEqual(seen["no_id"]["data"]["response_id"], None)
        self.assertEqual(seen["no_id"]["data"]["result"], 7)
        unknown = seen["unknown"]["data"]
        self.assertEqual((unknown["success"], unknown["response_id"]), (False, "py-r3"))
        self.assertIsInstance(unknown["error"], str)

        call = seen["call"]
        self.assertEqual((call["from"], call["to"]), ("node1", "py1"))
        self.assertEqual(call["data"]["call"]["server_name"], "svc")
        self.assertEqual(call["data"]["call"]["args"], [1, "a", {"k": True}])

        peers = await get_json(url(node) + "/registry/peers")
        self.assertNotIn("py1", peers)


class BadInputTests(TestCase):
    """Bad input on a real peer link closes that link only, with the right code."""

    timeout = 30

    async def test_bad_frames(self) -> None:
        """Binary, non-JSON and oversized frames close their link (1003, 1007, 1009)."""
        node = start_node(self, "node1")
        base = url(node).replace("http://", "ws://") + "/ws/p2p?node_id="

        def close_code(peer: str, frame: Any) -> int | None:
            with connect(base + peer, open_timeout=5, max_size=None) as ws:
                ws.send(frame)
                try:
                    while True:
                        ws.recv(timeout=5)
                except ConnectionClosed as closed:
                    return closed.rcvd.code if closed.rcvd else None
            return None

        self.assertEqual(await deferToThread(close_code, "b1", b"\x00\x01"), 1003)
        self.assertEqual(await deferToThread(close_code, "b2", "not json"), 1007)
        self.assertEqual(await deferToThread(close_code, "b3", "[1, 2]"), 1007)
        self.assertEqual(await deferToThread(close_code, "b4", "x" * (1024 * 1024 + 1)), 1009)

        def refused(query: str) -> int:
            try:
                with connect(base.replace("node_id=", query), open_timeout=5):
                    return 101
            except Exception as e:  # InvalidStatus carries the HTTP answer
                return e.response.status_code  # type: ignore[attr-defined]

        self.assertEqual(await deferToThread(refused, "x=1"), 400)
        self.assertEqual(await deferToThread(refused, "node_id=node1"), 400)  # itself
        self.assertEqual(await deferToThread(refused, "node_id=bad%20id"), 400)

        health = await get_json(url(node) + "/health")
        self.assertEqual(health["status"], "healthy")
        dropped = node.metrics.registry.get_sample_value
        self.assertEqual(dropped("relaytx_messages_dropped_total", {"reason": "binary"}), 1)
        self.assertEqual(dropped("relaytx_messages_dropped_total", {"reason": "not_json"}), 1)
        self.assertEqual(dropped("relaytx_messages_dropped_total", {"reason": "not_object"}), 1)


class DialOriginalTests(TestCase):
    """relaytx dials a strict WebSocket server that plays an original node."""

    timeout = 30

    async def test_frames_stay_masked(self) -> None:
        """
        A server that does not answer X-Relaytx-Unmasked gets masked frames
        (a strict server fails the connection on an unmasked one, 1002),
        and the link works: its ping is answered in the seed's shape.
        """
        received: list[dict[str, Any]] = []
        closes: list[Any] = []

        class Original(WebSocketServerProtocol):
            def onOpen(self) -> None:
                ping = {"type": "ping", "from": "orig", "to": "rx", "data": {"timestamp": 9}}
                self.sendMessage(json.dumps(ping).encode() + b"\n")

            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                received.append(json.loads(payload))

            def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
                closes.append(code)

        factory = WebSocketServerFactory()
        factory.protocol = Original
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address = f"ws://127.0.0.1:{port.getHost().port}"
        node = start_node(self, "rx", peers=[address])
        await wait_for(lambda: any(f["type"] == "pong" for f in received), 10.0, what="pong")
        pong = next(f for f in received if f["type"] == "pong")
        self.assertEqual((pong["from"], pong["to"]), ("rx", "orig"))
        self.assertEqual(pong["data"]["timestamp"], 9)
        self.assertEqual(closes, [])
        self.assertTrue(node.mesh.links["orig"].transport._protocol.maskClientFrames)


class OriginalBehindRelaytxTests(TestCase):
    """
    A node of the original design two hops away, over real sockets: a
    C{websockets} client on R2's peer endpoint that behaves as one (it
    answers pings, answers calls only from its direct peer, and ignores
    every frame whose C{from} is another node).
    """

    timeout = 30

    async def test_call_through_last_relaytx_hop(self) -> None:
        """R1's call to S, an original node linked to R2 only, is made by R2 and answered (B3)."""
        r2 = start_node(self, "R2")
        r1 = start_node(self, "R1", peers=[ws(r2)])
        address = url(r2).replace("http://", "ws://") + "/ws/p2p?node_id=S"
        ignored: list[dict[str, Any]] = []
        stop = threading.Event()

        def original() -> None:
            with connect(address, open_timeout=5) as link:
                while not stop.is_set():
                    try:
                        frame = json.loads(link.recv(timeout=0.1))
                    except TimeoutError:
                        continue
                    if frame["from"] != "R2":
                        ignored.append(frame)
                        continue
                    reply: dict[str, Any] | None = None
                    if frame["type"] == "ping":
                        data = frame["data"]
                        reply = {"pong_time": 1, "timestamp": data.get("timestamp")}
                        kind = "pong"
                    elif frame["type"] == "server_call":
                        call = frame["data"]["call"]
                        reply = {
                            "node_id": "S",
                            "response_id": frame["data"]["response_id"],
                            "result": {"echo": call["args"], "from": "S"},
                            "success": True,
                        }
                        kind = "server_response"
                    if reply is not None:
                        envelope = {
                            "type": kind, "id": "1796024318380757040", "from": "S",
                            "to": "R2", "data": reply, "route": ["S"], "ttl": 9,
                        }  # fmt: skip
                        link.send(json.dumps(envelope) + "\n")

        thread = deferToThread(original)
        self.addCleanup(lambda: thread)
        self.addCleanup(stop.set)
        await wait_for(lambda: "S" in r2.mesh.links, 5.0, what="S to link to R2")
        self.assertTrue(r2.mesh.links["S"].original)
        self.assertFalse(r2.mesh.links["R1"].original)
        await wait_for(lambda: r1.mesh.can_reach("S"), 5.0, what="R1's route to S")
        answer = await rpc(
            url(r1),
            "remote_call",
            {"node_id": "S", "server_name": "svc", "method": "m", "args": [1, "a"], "timeout": 5},
        )
        self.assertEqual(answer.get("result"), {"echo": [1, "a"], "from": "S"}, answer)
        self.assertEqual(ignored, [])
        stop.set()
        await thread

    async def test_dialled_original_identified_and_kept(self) -> None:
        """
        A dialled original-design node, which never speaks first, is linked
        within a second by its pong (B2), taken for an original node, and
        kept: it answers the keepalive pings, which is all liveness asks.
        """
        from .test_identity import original_node

        address, received = original_node(self)
        started = reactor.seconds()
        node = start_node(self, "rx", [address], ping_interval=0.5)
        await wait_for(lambda: "orig" in node.mesh.links, 5.0, what="the link")
        self.assertLess(reactor.seconds() - started, 1.0)
        self.assertTrue(node.mesh.links["orig"].original)
        session = node.mesh.links["orig"]
        d: Any = Deferred()
        reactor.callLater(3.0, d.callback, None)
        await d
        self.assertIs(node.mesh.links.get("orig"), session)
        self.assertGreaterEqual(sum(f["type"] == "ping" for f in received), 6)
