"""
Dialling the node you meant (C{ID@URL}), identifying original-design nodes
at once, keeping a healthy link against a second one, and PKI's start-up
check, on real sockets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from relaytx import _auth as auth
from tests.support import Authority

from .helpers import ROOT, free_port, start_node, wait_for, ws
from .test_security import SECRET, _Files, failures


class _Original(WebSocketServerProtocol):
    """
    An original-design node: it names itself only in its frames, sends its
    first ping only after 30 s (never, in these tests), and answers pings.
    """

    name = "orig"

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = json.loads(payload)
        self.factory.received.append(frame)
        if frame.get("type") == "ping":
            pong = {
                "type": "pong",
                "id": "1",
                "from": self.name,
                "to": frame["from"],
                "data": {"pong_time": 1, "timestamp": frame["data"].get("timestamp")},
                "route": [self.name],
                "ttl": 9,
            }
            self.sendMessage(json.dumps(pong).encode() + b"\n")


def original_node(case: TestCase, name: str = "orig") -> tuple[str, list[dict[str, Any]]]:
    """Start an original-design node; :returns: its address and the frames it gets."""
    factory = WebSocketServerFactory()
    factory.protocol = type("Original", (_Original,), {"name": name})
    factory.received = []
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return f"ws://127.0.0.1:{port.getHost().port}", factory.received


class DialTests(_Files, TestCase):
    """C{--add-peer ID@URL} keeps a link only to ID; a plain URL to whoever answers."""

    timeout = 30

    async def test_relaytx_node(self) -> None:
        """ID@URL naming another node is refused and counted; the right id links."""
        target = start_node(self, "target")
        wrong = start_node(self, "wrong", [f"other@{ws(target)}"])
        right = start_node(self, "right", [f"target@{ws(target)}"])
        await wait_for(lambda: "target" in right.mesh.links, 5, what="the right link")
        await wait_for(lambda: failures(wrong) >= 1, 5, what="the refusal")
        self.assertEqual(wrong.mesh.links, {})
        # The target refused the upgrade, which named the node expected.
        self.assertNotIn("wrong", target.mesh.links)
        [dialer] = wrong.peer_admin.dialers.values()
        self.assertEqual(dialer.expected_id, "other")

    async def test_wrong_id_spares_healthy_link(self) -> None:
        """
        Dialling a node it is linked to already under a wrong id leaves the
        link alone: the far side refuses before admitting a second link (it
        used to replace the first, at every attempt, before the refusal).
        """
        n1 = start_node(self, "n1")
        n3 = start_node(self, "n3", [ws(n1)])
        await wait_for(lambda: "n3" in n1.mesh.links and "n1" in n3.mesh.links, 5, what="link")
        here, there = n1.mesh.links["n3"], n3.mesh.links["n1"]
        n1.add_peer(ws(n3), "wrong2")
        await wait_for(lambda: failures(n1) >= 1, 5, what="the refusal")
        self.assertIs(n1.mesh.links["n3"], here)
        self.assertIs(n3.mesh.links["n1"], there)
        self.assertFalse(here.closed or there.closed)
        self.assertEqual(await n1.call("n3", "node", "echo", 1, timeout=5), [1])

    async def test_original_identified_at_once(self) -> None:
        """An original-design node, which never speaks first here, is linked by its pong."""
        address, received = original_node(self)
        node = start_node(self, "rx", [address])
        await wait_for(lambda: "orig" in node.mesh.links, 10, what="the link")
        self.assertEqual(received[0]["type"], "ping")
        self.assertEqual(received[0]["from"], "rx")

    async def test_original_expected(self) -> None:
        """ID@URL to an original-design node: its pong must name ID, or the link is refused."""
        address, _ = original_node(self)
        good = start_node(self, "rx1", [f"orig@{address}"])
        bad = start_node(self, "rx2", [f"someone@{address}"])
        await wait_for(lambda: "orig" in good.mesh.links, 5, what="the link")
        await wait_for(lambda: failures(bad) >= 1, 5, what="the refusal")
        self.assertEqual(bad.mesh.links, {})

    async def test_admin_endpoint(self) -> None:
        """/registry/peers/add with a node_id keeps the link only if the peer is that node."""
        target = start_node(self, "target")
        node = start_node(self, "node")
        node.add_peer(ws(target), "impostor")
        await wait_for(lambda: failures(node) >= 1, 5, what="the refusal")
        self.assertEqual(node.mesh.links, {})


class HealthyLinkTests(_Files, TestCase):
    """With the secret, a member cannot take over another member's healthy link."""

    timeout = 30

    async def test_second_link_refused(self) -> None:
        """A member dialling as node2 while node2 is linked gets 409; node2's link stays."""
        secret = self.write("secret", SECRET)
        node1 = start_node(self, "node1", secret_file=secret)
        node2 = start_node(self, "node2", [ws(node1)], secret_file=secret)
        await wait_for(lambda: "node2" in node1.mesh.links, 5, what="node2's link")
        session = node1.mesh.links["node2"]
        address = ws(node1) + "/ws/p2p?node_id=node2"

        def hijack() -> int:
            try:
                with connect(
                    address,
                    open_timeout=5,
                    additional_headers={auth.NONCE_HEADER: auth.new_nonce()},
                ):
                    return 101
            except InvalidStatus as e:
                return e.response.status_code

        self.assertEqual(await deferToThread(hijack), 409)
        self.assertIs(node1.mesh.links["node2"], session)
        self.assertEqual(await node2.call("node1", "node", "echo", 1, timeout=5), [1])


class PkiStartTests(_Files, TestCase):
    """A node whose certificate does not name its id does not start."""

    def test_wrong_certificate(self) -> None:
        """relay node exits 1 with one line naming the certificate's names and the id."""
        ca = Authority("mesh CA")
        cert, key = ca.issue("nodeA")
        config = self.write(
            "node.toml",
            (
                f'[tls]\ncert = "{self.write("a.pem", cert)}"\nkey = "{self.write("a.key", key)}"\n'
                f'ca = "{self.write("ca.pem", ca.pem)}"\nrequire_client_cert = true\n'
            ).encode(),
        )
        os.chmod(config, 0o600)
        argv = [sys.executable, "-m", "relaytx.cli", "node", "--node-id", "nodeB"]
        done = subprocess.run(
            [*argv, "--port", str(free_port()), "--config", config],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 1, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, done.stderr)
        self.assertTrue(lines[0].startswith("relay: error: "), lines[0])
        self.assertIn("nodeA", lines[0])
        self.assertIn("'nodeB'", lines[0])
