"""
Security features on real sockets (127.0.0.1 only): the cluster-secret
handshake, spoofed frames, mutual TLS, browser origins, access rules and
limits. Attackers are played by the C{websockets} client (in a thread) and by
nodes with the wrong secret or certificate.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived
from twisted.web.iweb import IPolicyForHTTPS
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from zope.interface import implementer

from relaytx import _auth as auth
from relaytx import _protocol as protocol
from relaytx._linkauth import FrameSealer, link_keys
from relaytx.config import ConfigError, build_config
from relaytx.node import RelayNode
from relaytx.peer import CLOSE_AUTH_FAILED
from tests.support import Authority

from .helpers import Counter, free_port, get_json, rpc, start_node, url, wait_for, ws

SECRET = b"correct horse battery staple, 2x"
OTHER_SECRET = b"another cluster's secret entirely"


class _Files:
    """Files in a temporary directory removed after the test."""

    def write(self, name: str, data: bytes) -> str:
        """:returns: the path of a new file C{name} holding C{data}."""
        if not hasattr(self, "_dir"):
            self._dir = tempfile.mkdtemp(prefix="relaytx-security-")
            self.addCleanup(shutil.rmtree, self._dir, True)  # type: ignore[attr-defined]
        path = os.path.join(self._dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path


def failures(node: RelayNode) -> float:
    """:returns: C{relaytx_auth_failures_total} of C{node}."""
    value = node.metrics.registry.get_sample_value("relaytx_auth_failures_total")
    return value or 0.0


def dropped(node: RelayNode, reason: str) -> float:
    """:returns: C{relaytx_messages_dropped_total{reason}} of C{node}."""
    value = node.metrics.registry.get_sample_value(
        "relaytx_messages_dropped_total", {"reason": reason}
    )
    return value or 0.0


async def never(predicate: Any, seconds: float, what: str, interval: float = 0.02) -> None:
    """Check C{predicate} every C{interval} for C{seconds}; fail the first time it holds."""
    end = reactor.seconds() + seconds
    while reactor.seconds() < end:
        if predicate():
            raise AssertionError(what)
        await deferLater(reactor, interval, lambda: None)


def call_frame(
    sender: str,
    to: str,
    response_id: str,
    method: str = "increment",
    args: list[Any] | None = None,
    route: list[str] | None = None,
    frame_id: str | None = None,
) -> str:
    """:returns: a C{server_call} frame for C{counter.METHOD}."""
    return json.dumps(
        {
            "type": "server_call",
            "id": frame_id or response_id,
            "from": sender,
            "to": to,
            "data": {
                "call": {
                    "server_name": "counter",
                    "method": method,
                    "args": args or [],
                    "timeout": 30,
                },
                "response_id": response_id,
            },
            "route": [sender] if route is None else route,
            "ttl": 9,
        }
    )


def auth_frame(sender: str, to: str, proof: Any) -> str:
    """:returns: the dialler's C{auth} frame."""
    return json.dumps({"type": "auth", "from": sender, "to": to, "data": {"proof": proof}})


def close_code(conn: Any, timeout: float = 5) -> int | None:
    """Read until the node closes C{conn}; :returns: its close code."""
    try:
        while True:
            conn.recv(timeout=timeout)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


def send_all(conn: Any, frames: list[str]) -> None:
    """
    Send C{frames} in order, stopping quietly once the node has closed the
    connection (it may refuse the first before the others are sent).
    """
    for frame in frames:
        try:
            conn.send(frame)
        except ConnectionClosed:
            return


def frame_of(conn: Any, kind: str, limit: int = 50) -> dict[str, Any]:
    """:returns: the next frame of type C{kind}, skipping pings and syncs."""
    for _ in range(limit):
        frame: dict[str, Any] = json.loads(conn.recv(timeout=5))
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame among {limit}")


def status_of(address: str, **kwargs: Any) -> int:
    """:returns: the HTTP status of a WebSocket upgrade to C{address} (101: accepted)."""
    try:
        with connect(address, open_timeout=5, **kwargs):
            return 101
    except InvalidStatus as e:
        return e.response.status_code


def peer_address(node: RelayNode, peer_id: str) -> str:
    """:returns: the C{/ws/p2p} URL to reach C{node} as C{peer_id}."""
    return ws(node) + "/ws/p2p?node_id=" + peer_id


class SecretMeshTests(_Files, TestCase):
    """Only nodes that hold the cluster secret link to each other."""

    timeout = 30

    async def test_sameSecretOnly(self) -> None:
        """Same secret: linked, calls work; other secret or none: never linked, and counted."""
        good = self.write("secret", SECRET + b"\n")
        bad = self.write("other", OTHER_SECRET)
        ports = {name: free_port() for name in ("A", "B", "C", "D")}

        def at(name: str) -> str:
            return f"ws://127.0.0.1:{ports[name]}"

        fast = {"ping_interval": 0.3}
        b = start_node(self, "nodeB", port=ports["B"], secret_file=good,
                       servers={"counter": Counter()}, **fast)  # fmt: skip
        a = start_node(self, "nodeA", [at("B"), at("C"), at("D")], port=ports["A"],
                       secret_file=good, servers={"counter": Counter()}, **fast)  # fmt: skip
        c = start_node(self, "nodeC", [at("A"), at("B")], port=ports["C"], secret_file=bad, **fast)
        d = start_node(self, "nodeD", [at("A"), at("B")], port=ports["D"], **fast)

        await wait_for(
            lambda: "nodeB" in a.mesh.links and "nodeA" in b.mesh.links, 5, what="A-B link"
        )
        answer = await rpc(
            url(a),
            "remote_call",
            {"node_id": "nodeB", "server_name": "counter", "method": "increment", "args": [5]},
        )
        self.assertEqual(answer.get("result"), 5, answer)
        answer = await rpc(url(b), "nodeA/counter.increment", [2])
        self.assertEqual(answer.get("result"), 2, answer)

        strangers = {"nodeC", "nodeD"}
        # Three ping intervals and more, while C and D keep re-dialling.
        await never(
            lambda: strangers & (set(a.mesh.links) | set(b.mesh.links)),
            1.5,
            "a node without the cluster secret linked",
        )
        for node in (a, b):
            peers = await get_json(url(node) + "/registry/peers")
            self.assertEqual(set(peers) & strangers, set())
            self.assertEqual(len(peers), 1, peers)
        self.assertNotIn("nodeA", c.mesh.links)
        self.assertNotIn("nodeB", c.mesh.links)
        # A, dialling C and D, finds their proofs wrong or missing; D, dialling
        # A and B without a nonce, is refused and counted by both; C, dialling
        # A and B, finds their proofs wrong.
        self.assertGreaterEqual(failures(a), 2)
        self.assertGreaterEqual(failures(b), 1)
        self.assertGreaterEqual(failures(c), 1)  # C saw A's and B's proofs fail
        metrics = (await (await treq.get(url(a) + "/metrics", persistent=False)).text()).split("\n")
        [line] = [m for m in metrics if m.startswith("relaytx_auth_failures_total ")]
        self.assertGreaterEqual(float(line.split()[1]), 2)
        self.assertEqual(failures(d), 0)  # it has no secret to check anyone with

        # A stranger posing as nodeB learns nothing of A's link to nodeB (no 409).
        # C and D go first: their re-dials would be counted meanwhile.
        await gatherResults([maybeDeferred(node.stopService) for node in (c, d)])
        before = failures(a)
        self.assertEqual(await deferToThread(status_of, peer_address(a, "nodeB")), 401)
        self.assertEqual(failures(a), before + 1)
        self.assertIn("nodeB", a.mesh.links)


class SealedBatchLoadTests(_Files, TestCase):
    """Batches of sealed frames under load, on real sockets."""

    timeout = 60

    async def test_many_calls_mixed_sizes(self) -> None:
        """
        Hundreds of calls in flight across two hops with the secret, their
        arguments from a few bytes to 40 KiB (batches cut across reads,
        full batches, frames that go alone): every answer comes back whole,
        and no frame fails its check.
        """
        secret = self.write("secret", SECRET)
        ports = [free_port() for _ in range(3)]
        nodes = []
        for i, port in enumerate(ports):
            peers = [f"ws://127.0.0.1:{ports[i - 1]}"] if i else []
            nodes.append(start_node(self, f"n{i}", peers, port=port, secret_file=secret))
        first, last = nodes[0], nodes[-1]
        await wait_for(lambda: first.mesh.router.route("n2") is not None, 10, what="a route")
        sizes = [3, 200, 1500, 4000, 4100, 9000, 40_000]
        calls = [
            first.call("n2", "node", "echo", "x" * sizes[i % len(sizes)], i, timeout=20)
            for i in range(600)
        ]
        answers = await gatherResults(calls)
        self.assertEqual(answers, [["x" * sizes[i % len(sizes)], i] for i in range(600)])
        self.assertEqual([failures(node) for node in nodes], [0, 0, 0])
        self.assertIn("n1", last.mesh.links)


class RawClientTests(_Files, TestCase):
    """A client that does not run the handshake properly gets nothing executed."""

    timeout = 30

    def node(self) -> tuple[RelayNode, Counter]:
        counter = Counter()
        node = start_node(
            self, "node1", secret_file=self.write("s", SECRET), servers={"counter": counter}
        )
        return node, counter

    async def test_noSecret(self) -> None:
        """Without the secret: 401 with no nonce; 4003 and nothing run after a made-up one."""
        node, counter = self.node()
        address = peer_address(node, "intruder")
        self.assertEqual(await deferToThread(status_of, address), 401)
        self.assertEqual(failures(node), 1)
        nonce = auth.new_nonce()
        bad_nonces = (" " * 64, "g" * 64, nonce[:-1])
        for bad_nonce in bad_nonces:
            status = await deferToThread(
                status_of, address, additional_headers={auth.NONCE_HEADER: bad_nonce}
            )
            self.assertEqual(status, 401, bad_nonce)
        self.assertEqual(failures(node), 1 + len(bad_nonces))

        def attempt(first: list[str]) -> tuple[dict[str, str], int | None]:
            with connect(
                address, open_timeout=5, additional_headers={auth.NONCE_HEADER: nonce}
            ) as conn:
                headers = {
                    key: conn.response.headers.get(key, "")
                    for key in (auth.NONCE_HEADER, auth.PROOF_HEADER)
                }
                send_all(conn, first)
                return headers, close_code(conn)

        # A call instead of the proof.
        headers, code = await deferToThread(attempt, [call_frame("intruder", "node1", "r1")])
        self.assertEqual(code, CLOSE_AUTH_FAILED)
        self.assertTrue(auth.valid_nonce(headers.get(auth.NONCE_HEADER)), headers)
        self.assertEqual(len(headers.get(auth.PROOF_HEADER, "")), 64)
        # A wrong proof, then a call; a proof made with another secret; a binary proof.
        wrong = [
            [auth_frame("intruder", "node1", "0" * 64), call_frame("intruder", "node1", "r2")],
            [auth_frame("intruder", "node1", None), call_frame("intruder", "node1", "r3")],
            ["not json", call_frame("intruder", "node1", "r4")],
        ]
        for frames in wrong:
            _, code = await deferToThread(attempt, frames)
            self.assertEqual(code, CLOSE_AUTH_FAILED, frames[0])

        def other_secret() -> int | None:
            with connect(
                address, open_timeout=5, additional_headers={auth.NONCE_HEADER: nonce}
            ) as conn:
                accept = conn.response.headers[auth.NONCE_HEADER]
                proof = auth.dialler_proof(OTHER_SECRET, nonce, accept, "intruder", "node1")
                send_all(conn, [auth_frame("intruder", "node1", proof)])
                send_all(conn, [call_frame("intruder", "node1", "r5")])
                return close_code(conn)

        self.assertEqual(await deferToThread(other_secret), CLOSE_AUTH_FAILED)

        self.assertEqual(counter.count, 0)
        self.assertEqual(failures(node), 1 + len(bad_nonces) + 1 + len(wrong) + 1)
        self.assertEqual(node.views.peers(), {})
        self.assertEqual(
            node.metrics.registry.get_sample_value("relaytx_calls_total", {"outcome": "ok"}),
            None,
        )

    async def test_silentClient(self) -> None:
        """A client that upgrades and then says nothing is closed with 4003 at the deadline."""
        self.patch(protocol, "AUTH_TIMEOUT", 0.5)
        node, _ = self.node()

        def silent() -> tuple[int | None, float]:
            started = time.monotonic()
            with connect(
                peer_address(node, "mute"),
                open_timeout=5,
                additional_headers={auth.NONCE_HEADER: auth.new_nonce()},
            ) as conn:
                return close_code(conn), time.monotonic() - started

        code, took = await deferToThread(silent)
        self.assertEqual(code, CLOSE_AUTH_FAILED)
        self.assertTrue(0.4 <= took < 3, took)
        self.assertEqual(failures(node), 1)

    async def test_replay(self) -> None:
        """A proof that opened one link is refused on the next, as is the node's own proof."""
        node, counter = self.node()
        address = peer_address(node, "member")
        nonce = auth.new_nonce()

        def honest() -> tuple[str, dict[str, Any]]:
            with connect(
                address, open_timeout=5, additional_headers={auth.NONCE_HEADER: nonce}
            ) as conn:
                accept = conn.response.headers[auth.NONCE_HEADER]
                expected = auth.acceptor_proof(SECRET, nonce, accept, "node1", "member")
                if conn.response.headers[auth.PROOF_HEADER] != expected:
                    raise AssertionError("the node's proof of the secret is wrong")
                proof = auth.dialler_proof(SECRET, nonce, accept, "member", "node1")
                conn.send(auth_frame("member", "node1", proof))
                # A member seals every frame after its proof with the link's key.
                keys = link_keys(SECRET, nonce, accept, "member", "node1", dialling=True)
                sealed = FrameSealer(keys.send).seal(call_frame("member", "node1", "ok1").encode())
                conn.send(sealed.decode())
                return proof, frame_of(conn, "server_response")

        proof, response = await deferToThread(honest)
        self.assertEqual(response["data"]["result"], 1, response)

        def replay(proof: str | None) -> int | None:
            with connect(
                address, open_timeout=5, additional_headers={auth.NONCE_HEADER: nonce}
            ) as conn:
                if proof is None:  # reflect the node's own proof back
                    proof = conn.response.headers[auth.PROOF_HEADER]
                send_all(conn, [auth_frame("member", "node1", proof)])
                send_all(conn, [call_frame("member", "node1", "replayed")])
                return close_code(conn)

        self.assertEqual(await deferToThread(replay, proof), CLOSE_AUTH_FAILED)
        self.assertEqual(await deferToThread(replay, None), CLOSE_AUTH_FAILED)
        self.assertEqual(counter.count, 1)
        self.assertEqual(failures(node), 2)
        await wait_for(lambda: not node.views.peers(), 5, what="the member's link to close")


class SpoofingTests(TestCase):
    """A link speaks only for its own peer."""

    timeout = 30

    async def test_spoofedFrames(self) -> None:
        """Frames claiming another node's identity are dropped as spoofed; the link stays up."""
        counter = Counter()
        node1 = start_node(self, "node1", servers={"counter": counter})
        node2 = start_node(self, "node2", [ws(node1)])
        await wait_for(lambda: "node2" in node1.mesh.links, 5, what="node2's link")

        spoofed = [
            call_frame("node2", "node1", "s1"),  # from node2, route [node2]
            call_frame("node2", "node1", "s2", route=[]),  # no route at all
            call_frame("node1", "node1", "s3", route=["node1", "evil"]),  # as the node itself
            json.dumps(  # wrapped: the inner message's route does not end with evil
                {
                    "type": "route_message",
                    "id": "s4",
                    "from": "evil",
                    "to": "node1",
                    "data": {"original_message": json.loads(call_frame("node2", "node1", "s4"))},
                    "route": ["evil"],
                    "ttl": 9,
                }
            ),
            json.dumps(  # a registry advert in node2's name, "forwarded" by evil
                {
                    "type": "registry_sync",
                    "id": "s5",
                    "from": "node2",
                    "to": "node1",
                    "data": {"servers": {"fake": {"methods": ["steal"]}}},
                    "route": ["node2", "evil"],
                    "ttl": 9,
                }
            ),
        ]

        def attack() -> dict[str, Any]:
            with connect(peer_address(node1, "evil"), open_timeout=5) as conn:
                for frame in spoofed:
                    conn.send(frame)
                conn.send(call_frame("evil", "node1", "legit"))
                return frame_of(conn, "server_response")

        response = await deferToThread(attack)
        # Only evil's own call ran: had any spoofed call run, the count would be higher.
        self.assertEqual(response["data"]["result"], 1, response)
        self.assertEqual(counter.count, 1)
        self.assertEqual(dropped(node1, "spoofed"), len(spoofed))
        self.assertNotIn("fake", node1.views.servers())
        self.assertIn("node2", node1.mesh.links)
        self.assertTrue(node1.mesh.links["node2"].healthy)
        self.assertEqual(await node2.call("node1", "counter", "get", timeout=5), 1)


# TLS.


@implementer(IPolicyForHTTPS)
class _ClientPolicy:
    """Trust C{ca} only, and present C{client} (if any) as the client certificate."""

    def __init__(self, ca: bytes, client: tuple[bytes, bytes] | None) -> None:
        self._ca = Certificate.loadPEM(ca)
        self._client = PrivateCertificate.loadPEM(client[0] + client[1]) if client else None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(
            hostname.decode("ascii"), trustRoot=self._ca, clientCertificate=self._client
        )


def https_client(ca: bytes, client: tuple[bytes, bytes] | None) -> treq.client.HTTPClient:
    """:returns: a treq client trusting C{ca}, with no persistent connections."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    return treq.client.HTTPClient(
        Agent(reactor, contextFactory=_ClientPolicy(ca, client), pool=pool)
    )


class TlsTests(_Files, TestCase):
    """Mutual TLS: only nodes whose certificates the mesh CA signed link."""

    timeout = 30

    def tls(
        self, name: str, authority: Authority, trust: Authority, **extra: Any
    ) -> dict[str, Any]:
        """:returns: the C{[tls]} table of node C{name}, signed by C{authority}."""
        cert, key = authority.issue(name)
        return {
            "cert": self.write(f"{name}.pem", cert),
            "key": self.write(f"{name}.key", key),
            "ca": self.write(f"{name}-ca.pem", trust.pem),
            **extra,
        }

    async def test_mutualTls(self) -> None:
        """CA-signed nodes link over wss and call; a foreign-CA or cert-less node never links."""
        mesh_ca, other_ca = Authority("mesh CA"), Authority("other CA")
        counter = Counter()
        mutual = {"require_client_cert": True}
        node1 = start_node(
            self,
            "node1",
            servers={"counter": counter},
            tls=self.tls("node1", mesh_ca, mesh_ca, **mutual),
        )
        port1 = node1.listening_port.getHost().port  # type: ignore[union-attr]
        wss1 = f"wss://127.0.0.1:{port1}"
        node2 = start_node(
            self, "node2", [wss1], servers={"counter": Counter()},
            tls=self.tls("node2", mesh_ca, mesh_ca, **mutual),
        )  # fmt: skip
        # Signed by another CA, though it trusts the mesh CA (so it accepts node1).
        node3 = start_node(self, "node3", [wss1], tls=self.tls("node3", other_ca, mesh_ca))
        # No certificate at all.
        node4 = start_node(self, "node4", [wss1], tls={"ca": self.write("ca4.pem", mesh_ca.pem)})

        # Both ends: the acceptor opens its side as it answers the upgrade,
        # the dialler only once that answer has arrived.
        await wait_for(
            lambda: "node2" in node1.mesh.links and "node1" in node2.mesh.links,
            5,
            what="node2's wss link, at both ends",
        )
        self.assertEqual(node1.mesh.links["node2"].direction, "inbound")
        self.assertEqual(await node2.call("node1", "counter", "increment", timeout=5), 1)
        self.assertEqual(await node1.call("node2", "counter", "increment", timeout=5), 1)

        client = https_client(mesh_ca.pem, mesh_ca.issue("operator"))
        base2 = f"https://127.0.0.1:{node2.listening_port.getHost().port}"  # type: ignore[union-attr]
        health = await (await client.get(f"https://127.0.0.1:{port1}/health")).json()
        self.assertEqual((health["status"], health["node_id"]), ("healthy", "node1"))
        answer = await (
            await client.post(
                base2 + "/rpc",
                data=json.dumps(
                    {"jsonrpc": "2.0", "method": "node1/counter.increment", "id": 1}
                ).encode(),
            )
        ).json()
        self.assertEqual(answer, {"jsonrpc": "2.0", "result": 2, "id": 1})

        await never(
            lambda: (
                {"node3", "node4"} & set(node1.mesh.links) or node3.mesh.links or node4.mesh.links
            ),
            1.5,
            "a node without a certificate from the mesh CA linked",
        )
        self.assertEqual(set(node1.mesh.links), {"node2"})

        # HTTPS wants a client certificate from the mesh CA too.
        for identity in (None, other_ca.issue("stranger")):
            stranger = https_client(mesh_ca.pem, identity)
            with self.assertRaises(ResponseNeverReceived):
                await stranger.get(f"https://127.0.0.1:{port1}/health")
        # The client checks the node's certificate against its own trust root.
        doubter = https_client(other_ca.pem, mesh_ca.issue("operator2"))
        with self.assertRaises(ResponseNeverReceived):
            await doubter.get(f"https://127.0.0.1:{port1}/health")
        # And no plain HTTP on the TLS port.
        with self.assertRaises(Exception):  # noqa: B017  # whatever breaks first
            await get_json(f"http://127.0.0.1:{port1}/health")
        self.assertEqual(counter.count, 2)


class TlsConfigTests(_Files, SynchronousTestCase):
    """A [tls] table that cannot give what it asks for is refused at start-up."""

    def test_mutualWithoutCertificate(self) -> None:
        """require_client_cert without cert, or without ca, is a ConfigError, not plain TCP."""
        ca = self.write("ca.pem", Authority("mesh CA").pem)
        for table in (
            {"ca": ca, "require_client_cert": True},
            {"key": ca, "ca": ca},
        ):
            e = self.assertRaises(ConfigError, build_config, {"node_id": "n1", "tls": table})
            self.assertIn("tls.cert", str(e))
        cert, key = Authority("mesh CA").issue("n1")
        e = self.assertRaises(
            ConfigError,
            build_config,
            {"tls": {"cert": self.write("n1.pem", cert), "key": self.write("n1.key", key),
                     "require_client_cert": True}},
        )  # fmt: skip
        self.assertIn("tls.ca", str(e))


class OriginTests(TestCase):
    """Browsers (requests with an Origin) are refused on /ws/p2p unless allowed."""

    timeout = 30

    async def test_origins(self) -> None:
        """An Origin gets 403 unless allowed_origins lists it; no Origin is a peer."""
        strict = start_node(self, "strict")
        lenient = start_node(self, "lenient", allowed_origins=["https://ops.example"])
        for node, origin, status in (
            (strict, None, 101),
            (strict, "https://evil.example", 403),
            (strict, "https://ops.example", 403),
            (strict, "null", 403),  # a sandboxed page
            (lenient, "https://ops.example", 101),
            (lenient, "https://evil.example", 403),
            (lenient, "https://ops.example.evil.example", 403),
        ):
            got = await deferToThread(status_of, peer_address(node, "browser"), origin=origin)
            self.assertEqual(got, status, (node.node_id, origin))

    async def test_draftOrigin(self) -> None:
        """The pre-RFC draft's Sec-WebSocket-Origin header is checked as well."""
        node = start_node(self, "strict")
        port = node.listening_port.getHost().port  # type: ignore[union-attr]

        def upgrade(origin: str | None) -> bytes:
            request = (
                "GET /ws/p2p?node_id=draft8 HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 8\r\n"
                + (f"Sec-WebSocket-Origin: {origin}\r\n" if origin else "")
                + "\r\n"
            )
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(request.encode())
                return s.recv(4096).split(b"\r\n", 1)[0]

        self.assertIn(b" 101 ", await deferToThread(upgrade, None))  # the draft is spoken
        self.assertIn(b" 403 ", await deferToThread(upgrade, "https://evil.example"))
        await wait_for(lambda: not node.views.peers(), 5, what="the draft client to be gone")


class AccessRuleTests(_Files, TestCase):
    """Access rules from the TOML file refuse remote and HTTP callers with -32004."""

    timeout = 30

    async def test_denied(self) -> None:
        """node2 may read node1's counter but not increment it; HTTP clients neither."""
        config = self.write(
            "node1.toml",
            b"[access]\n"
            b'default = "allow"\n'
            b"[[access.rule]]\n"
            b'callers = ["node2"]\n'
            b'servers = ["counter"]\n'
            b'methods = ["increment"]\n'
            b"allow = false\n"
            b"[[access.rule]]\n"
            b'callers = ["http"]\n'
            b'servers = ["counter"]\n'
            b'methods = ["increment"]\n'
            b"allow = false\n",
        )
        counter = Counter()
        node1 = start_node(self, "node1", servers={"counter": counter}, config=config)
        node2 = start_node(self, "node2", [ws(node1)], servers={"counter": Counter()})
        await wait_for(lambda: "node1" in node2.mesh.links, 5, what="the link")

        answer = await rpc(
            url(node2),
            "remote_call",
            {"node_id": "node1", "server_name": "counter", "method": "increment", "timeout": 5},
        )
        self.assertEqual(answer["error"]["code"], -32004, answer)
        self.assertEqual(answer["error"]["data"]["node_id"], "node1")
        answer = await rpc(url(node2), "node1/counter.get")
        self.assertEqual(answer.get("result"), 0, answer)
        answer = await rpc(url(node1), "counter.increment")
        self.assertEqual(answer["error"]["code"], -32004, answer)
        answer = await rpc(url(node1), "node1/counter.increment")
        self.assertEqual(answer["error"]["code"], -32004, answer)
        self.assertEqual(counter.count, 0)
        # The rules are node1's: node1 may still increment node2's counter.
        answer = await rpc(url(node1), "node2/counter.increment")
        self.assertEqual(answer.get("result"), 1, answer)


class LimitTests(TestCase):
    """Limits hold against big bodies and against a flooding peer."""

    timeout = 30

    async def test_bodySize(self) -> None:
        """A body over limits.max_body_size gets 413, chunked or not; the node carries on."""
        node = start_node(self, "node1", limits={"max_body_size": 1024})
        big = json.dumps({"jsonrpc": "2.0", "method": "node.echo", "params": ["x" * 2000], "id": 1})
        response = await treq.post(url(node) + "/rpc", data=big.encode(), persistent=False)
        self.assertEqual(response.code, 413)
        self.assertEqual((await response.json())["status"], 413)
        fits = json.dumps({"jsonrpc": "2.0", "method": "node.echo", "params": ["x" * 900], "id": 1})
        response = await treq.post(url(node) + "/rpc", data=fits.encode(), persistent=False)
        self.assertEqual(response.code, 200)
        self.assertEqual((await response.json())["result"], ["x" * 900])

        port = node.listening_port.getHost().port  # type: ignore[union-attr]

        def chunked() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(
                    b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                for _ in range(64):  # 64 KiB in 1 KiB chunks, no length announced
                    s.sendall(b"400\r\n" + b" " * 1024 + b"\r\n")
                s.sendall(b"0\r\n\r\n")
                return s.recv(4096).split(b"\r\n", 1)[0]

        self.assertIn(b" 413 ", await deferToThread(chunked))
        self.assertEqual((await get_json(url(node) + "/health"))["status"], "healthy")

    async def test_flood(self) -> None:
        """A peer flooding calls gets -32005 while another peer's calls finish in time."""
        counter = Counter()
        node1 = start_node(
            self,
            "node1",
            servers={"counter": counter},
            limits={"max_in_flight_per_caller": 10},
        )
        node2 = start_node(self, "node2", [ws(node1)])
        await wait_for(lambda: "node1" in node2.mesh.links, 5, what="the link")

        stop = threading.Event()
        seen = {"sent": 0, "ok": 0, "overloaded": 0, "other": 0}

        def flood() -> None:
            address = peer_address(node1, "flooder")
            with connect(address, open_timeout=5, close_timeout=2, max_size=None) as conn:
                deadline = time.monotonic() + 15
                while not stop.is_set() and time.monotonic() < deadline:
                    for _ in range(100):
                        n = seen["sent"] = seen["sent"] + 1
                        conn.send(call_frame("flooder", "node1", f"f{n}", "slow_increment", [0.01]))
                    try:
                        while True:
                            frame = json.loads(conn.recv(timeout=0.005))
                            if frame["type"] != "server_response":
                                continue
                            data = frame["data"]
                            if data["success"]:
                                seen["ok"] += 1
                            elif data.get("error_code") == -32005:
                                seen["overloaded"] += 1
                            else:
                                seen["other"] += 1
                    except TimeoutError:
                        pass

        flooding = deferToThread(flood)
        try:
            await wait_for(lambda: seen["overloaded"] >= 100 or flooding.called, 10,
                           what="the flood to be refused")  # fmt: skip
            slowest = 0.0
            for _ in range(8):
                started = reactor.seconds()
                await node2.call("node1", "counter", "slow_increment", 0.01, timeout=1.5)
                slowest = max(slowest, reactor.seconds() - started)
        finally:
            stop.set()
            await flooding
        self.assertLess(slowest, 1.5)
        self.assertGreater(seen["overloaded"], 100, seen)
        self.assertGreater(seen["ok"], 0, seen)
        self.assertEqual(seen["other"], 0, seen)
        self.assertGreater(seen["sent"], 200, seen)
        self.assertLessEqual(counter.max_running, 1)
        await wait_for(lambda: "flooder" not in node1.mesh.links, 5, what="the flooder to go")
        await wait_for(lambda: node1.limiter.in_flight == 0, 5, what="the flood's calls to end")
