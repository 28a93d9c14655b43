"""
Real meshes on 127.0.0.1: links, registry convergence, routed calls and
failures, with nodes in this process and as C{relay node} subprocesses.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from relaytx._frames import READ_CHUNK
from relaytx.errors import CallTimeout, OutcomeUnknown

from .helpers import (
    EXAMPLES,
    Counter,
    NodeProcess,
    get_json,
    post_json,
    rpc,
    start_node,
    url,
    wait_for,
    write_app,
    ws,
)
from .test_security import SECRET, _Files

PING = 0.5  # seconds: short liveness so failures show quickly


def _servers_of(node, name):
    return {e["node_id"]: e["hops"] for e in node.views.servers().get(name, [])}


class LineTests(TestCase):
    """A line A - B - C, with C a subprocess that is killed and restarted."""

    timeout = 60

    async def test_line_links_registry_and_recovery(self) -> None:
        """Links show within 2 s, C's servers reach A with hops 2, leave when C dies and return."""
        c = NodeProcess(
            self, "C", None, "--app", os.path.join(EXAMPLES, "counter.py"),
            "--ping-interval", str(PING),
        )  # fmt: skip
        c.start()
        await c.wait_healthy()
        b = start_node(self, "B", peers=[c.url], ping_interval=PING)
        a = start_node(self, "A", peers=[ws(b)], ping_interval=PING)

        elapsed = await wait_for(
            lambda: set(a.views.peers()) == {"B"} and set(b.views.peers()) == {"A", "C"},
            2.0,
            what="links",
        )
        peers_c = await get_json(c.url + "/registry/peers")
        self.assertEqual(set(peers_c), {"B"})
        self.assertEqual(peers_c["B"]["direction"], "inbound")
        self.assertEqual(a.views.peers()["B"]["direction"], "outbound")
        self.assertLess(elapsed, 2.0)

        await wait_for(lambda: _servers_of(a, "counter_server") == {"C": 2}, 2.0, what="sync")
        served = await get_json(
            f"http://127.0.0.1:{a.listening_port.getHost().port}/registry/servers"
        )
        entry = served["counter_server"][0]
        self.assertEqual((entry["node_id"], entry["hops"], entry["is_local"]), ("C", 2, False))
        self.assertEqual(entry["methods"], ["get", "increment", "reset"])

        c.kill()
        lost = await wait_for(
            lambda: "counter_server" not in a.views.servers(), 3 * PING + 1, what="drop"
        )
        self.assertLess(lost, 3 * PING + 1)

        c.start()
        await wait_for(
            lambda: _servers_of(a, "counter_server") == {"C": 2}, 15.0, what="C to return"
        )
        self.assertEqual(await a.call("C", "counter_server", "increment", 3), 3)


class ConvergenceTests(TestCase):
    """Convergence time of a longer line."""

    timeout = 60

    async def test_ten_node_line(self) -> None:
        """On a line of 10, the first node learns the last one's server with hops 9."""
        nodes = []
        for i in range(10):
            peers = [ws(nodes[-1])] if nodes else []
            servers = {"last": Counter()} if i == 9 else {}
            nodes.append(start_node(self, f"n{i}", peers=peers, servers=servers))
        took = await wait_for(
            lambda: _servers_of(nodes[0], "last") == {"n9": 9}, 5.0, interval=0.005, what="line"
        )
        print(f"\n10-node line: registry converged in {took * 1000:.0f} ms")
        self.assertEqual(await nodes[0].call("n9", "last", "increment", 2), 2)
        self.assertEqual(nodes[0].views.routes()["n9"]["hops"], 9)


def _link(nodes, edges):
    """Dial along C{edges} (pairs of indexes: first dials second)."""
    for a, b in edges:
        nodes[a].add_peer(ws(nodes[b]))


class TopologyTests(TestCase):
    """100 increments across several topologies give exactly 100."""

    timeout = 60

    async def _hundred(self, count: int, edges, caller: int, target: int) -> None:
        nodes = [
            start_node(self, f"t{i}", servers={"counter_server": Counter()}, ping_interval=PING)
            for i in range(count)
        ]
        _link(nodes, edges)
        goal = f"t{target}"
        await wait_for(
            lambda: (
                nodes[caller].mesh.can_reach(goal)
                and len(nodes[caller].views.routes()) == count - 1
            ),
            15.0,
            what="routes",
        )
        results = await gatherResults(
            [nodes[caller].call(goal, "counter_server", "increment") for _ in range(100)]
        )
        self.assertEqual(sorted(results), list(range(1, 101)))
        self.assertEqual(await nodes[caller].call(goal, "counter_server", "get"), 100)
        return nodes

    async def _settles_on(self, node, destination: str, field: str, value) -> None:
        # The first route a node learns may be a longer way round (its
        # advert arrived first); the best one follows within a few sync
        # rounds (SYNC_DELAY each), which 100 quick calls may not outlast.
        await wait_for(
            lambda: node.views.routes()[destination][field] == value,
            5.0,
            what=f"{field} {value!r} to {destination}",
        )

    async def test_line_of_three(self) -> None:
        """A to C through B."""
        nodes = await self._hundred(3, [(0, 1), (1, 2)], 0, 2)
        self.assertEqual(nodes[0].views.routes()["t2"]["hops"], 2)

    async def test_ring_of_five(self) -> None:
        """Across a ring, the shorter way round (2 hops) is used."""
        nodes = await self._hundred(5, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)], 0, 2)
        await self._settles_on(nodes[0], "t2", "hops", 2)

    async def test_star(self) -> None:
        """Leaf to leaf through the hub."""
        nodes = await self._hundred(5, [(1, 0), (2, 0), (3, 0), (4, 0)], 1, 4)
        self.assertEqual(nodes[1].views.routes()["t4"]["next_hop"], "t0")

    async def test_full_mesh_of_four(self) -> None:
        """Every pair linked: calls go direct."""
        edges = [(i, j) for i in range(4) for j in range(i + 1, 4)]
        nodes = await self._hundred(4, edges, 0, 3)
        await self._settles_on(nodes[0], "t3", "hops", 1)


class CallTests(TestCase):
    """Actor order, timeouts and failures of remote calls on real sockets."""

    timeout = 60

    async def _pair(self):
        target = Counter()
        b = start_node(self, "B", servers={"counter_server": target}, ping_interval=PING)
        a = start_node(self, "A", peers=[ws(b)], ping_interval=PING)
        await wait_for(lambda: a.mesh.can_reach("B"), 5.0, what="link")
        return a, b, target

    async def test_link_sockets_tuned(self) -> None:
        """
        Both ends of a link read at most READ_CHUNK bytes per reactor turn
        and send without Nagle's delay (the dialler's end too).
        """
        a, b, _ = await self._pair()
        for node, peer in ((a, "B"), (b, "A")):
            socket_transport = node.mesh.links[peer].transport._protocol.transport
            self.assertEqual(socket_transport.bufferSize, READ_CHUNK)
            self.assertTrue(socket_transport.getTcpNoDelay())

    async def test_links_unmasked(self) -> None:
        """Two relaytx nodes agree that the dialler's frames go unmasked."""
        a, b, _ = await self._pair()  # A dials B
        dialler = a.mesh.links["B"].transport._protocol
        acceptor = b.mesh.links["A"].transport._protocol
        self.assertFalse(dialler.maskClientFrames)
        self.assertFalse(acceptor.requireMaskedClientFrames)
        self.assertEqual(await a.call("B", "counter_server", "increment"), 1)

    async def test_actor_order(self) -> None:
        """200 concurrent remote calls to one server never overlap."""
        a, _, target = await self._pair()
        results = await gatherResults(
            [a.call("B", "counter_server", "slow_increment", 0.0005) for _ in range(200)]
        )
        self.assertEqual(sorted(results), list(range(1, 201)))
        self.assertEqual(target.max_running, 1)

    async def test_timeout_leaves_nothing_pending(self) -> None:
        """A call past its timeout fails with -32001 and the pending gauge returns to 0."""
        a, _, target = await self._pair()
        started = reactor.seconds()
        with self.assertRaises(CallTimeout) as caught:
            await a.call("B", "counter_server", "slow_increment", 1.0, timeout=0.2)
        self.assertEqual(caught.exception.code, -32001)
        self.assertLess(reactor.seconds() - started, 0.6)
        self.assertEqual(a.metrics.registry.get_sample_value("relaytx_pending_calls"), 0)
        self.assertEqual(len(a.mesh.pending), 0)
        await wait_for(lambda: target.running == 0, 2.0, what="B's method to finish")

    async def test_no_route_fails_fast(self) -> None:
        """A call to a node nobody can reach fails with -32002 in well under a second."""
        a, _, _ = await self._pair()
        started = reactor.seconds()
        answer = await rpc(
            f"http://127.0.0.1:{a.listening_port.getHost().port}",
            "remote_call",
            {"node_id": "nowhere", "server_name": "x", "method": "y"},
        )
        self.assertEqual(answer["error"]["code"], -32002)
        self.assertLess(reactor.seconds() - started, 0.5)

    async def test_registry_off_reachable_at_once(self) -> None:
        """
        A node with its registry off, linked beyond a neighbour, is called
        by its id within a second: its neighbour, told in the handshake
        that no advert will come, passes its route on at once.
        """
        a, b, _ = await self._pair()
        start_node(self, "F", peers=[ws(b)], disable_registry=True)
        await wait_for(lambda: "F" in b.mesh.links, 5.0, what="F's link")
        linked = reactor.seconds()
        await wait_for(lambda: a.mesh.router.route("F") is not None, 1.0, what="A's route to F")
        self.assertLess(reactor.seconds() - linked, 1.0)
        self.assertEqual(await a.call("F", "node", "echo", 1, timeout=5), [1])

    async def test_http_forms(self) -> None:
        """remote_call, NODE_ID/SERVER.METHOD and bare SERVER.METHOD all reach B over HTTP."""
        a, _, _ = await self._pair()
        await wait_for(lambda: "counter_server" in a.views.servers(), 2.0)
        base = f"http://127.0.0.1:{a.listening_port.getHost().port}"
        first = await rpc(
            base,
            "remote_call",
            {"node_id": "B", "server_name": "counter_server", "method": "increment", "args": [2]},
        )
        self.assertEqual(first["result"], 2)
        self.assertEqual((await rpc(base, "B/counter_server.increment", [3]))["result"], 5)
        self.assertEqual((await rpc(base, "counter_server.get"))["result"], 5)
        failed = await rpc(base, "B/counter_server.fail", ["boom"])
        self.assertEqual(failed["error"]["code"], -32000)
        self.assertEqual(failed["error"]["data"]["type"], "ValueError")
        self.assertEqual(failed["error"]["data"]["node_id"], "B")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)  # B logs the traceback
        missing = await rpc(base, "B/nope.get")
        self.assertEqual(missing["error"]["code"], -32003)


class MiddleNodeDeathTests(TestCase):
    """A call in flight through a node that dies."""

    timeout = 60

    async def test_middle_node_killed_and_restarted(self) -> None:
        """
        The call fails with -32006 (it had reached C: its outcome is unknown)
        within the liveness bound, and calls work once B is back.
        """
        target = Counter()
        c = start_node(self, "C", servers={"counter_server": target}, ping_interval=PING)
        b = NodeProcess(self, "B", None, "--add-peer", ws(c), "--ping-interval", str(PING))
        b.start()
        await b.wait_healthy()
        a = start_node(self, "A", peers=[b.url], ping_interval=PING)
        await wait_for(lambda: a.mesh.can_reach("C"), 5.0, what="route to C")

        in_flight = a.call("C", "counter_server", "slow_increment", 5.0, timeout=30)
        await wait_for(lambda: target.running == 1, 2.0, what="call to start")
        killed_at = reactor.seconds()
        b.kill()
        with self.assertRaises(OutcomeUnknown) as caught:
            await in_flight
        self.assertEqual(caught.exception.code, -32006)
        self.assertLess(reactor.seconds() - killed_at, 3 * PING)

        b.start()
        await wait_for(lambda: a.mesh.can_reach("C"), 15.0, what="route back")
        # C stopped the call in flight once its caller was out of reach: it
        # never counted, so the next increment is the first.
        self.assertEqual(await a.call("C", "counter_server", "increment"), 1)
        self.assertEqual(target.running, 0)


class FrozenPeerTests(TestCase):
    """A neighbour whose process stops (SIGSTOP: no FIN, no RST) on an idle link."""

    timeout = 60

    async def test_frozen_neighbour_dropped_within_two_seconds(self) -> None:
        """
        With the default settings, an idle link's frozen peer is dropped
        within 2 s (SPEC section 8), its routes with it, while A's other
        link carries on. (A is a process of its own: a stall of this test's
        reactor is not A's, which would rightly give its peers more time.)
        """
        b = NodeProcess(self, "B", None, "--app", os.path.join(EXAMPLES, "counter.py"))
        b.start()
        self.addCleanup(lambda: b.process and os.kill(b.process.pid, signal.SIGCONT))
        await b.wait_healthy()
        c = start_node(self, "C", servers={"counter_server": Counter()})
        a = NodeProcess(
            self, "A", None, "--add-peer", b.url.replace("http", "ws"), "--add-peer", ws(c)
        )
        a.start()
        await a.wait_healthy()

        async def peers_of_a() -> set[str]:
            return set(await get_json(a.url + "/registry/peers"))

        async def linked() -> bool:
            return await peers_of_a() == {"B", "C"}

        async def b_dropped() -> bool:
            return "B" not in await peers_of_a()

        await wait_for(linked, 5.0, what="links")
        await wait_for(lambda: "B" in c.views.routes(), 5.0, what="C's route to B")
        await deferLater(reactor, 1.0, lambda: None)  # idle: nothing asked on the links

        assert b.process is not None
        os.kill(b.process.pid, signal.SIGSTOP)
        dropped = await wait_for(b_dropped, 5.0, what="B dropped")
        self.assertLess(dropped, 2.0)
        self.assertNotIn("B", await get_json(a.url + "/registry/routes"))
        answer = await rpc(a.url, "C/counter_server.increment")
        self.assertEqual(answer.get("result"), 1, answer)


_BURNER = """
import time
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from relaytx import Server, exposed

_arrived = []

def _resume_together(waiting):
    for d in waiting:
        d.callback(None)

class Burner(Server):
    @exposed
    def burn(self, seconds):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        return seconds

    @exposed(concurrent=True)
    def peek(self, seconds):
        return self.burn(seconds)

    @exposed
    async def later(self, seconds):
        # The two calls of a batch resume together, in one timer's call.
        arrived = Deferred()
        _arrived.append(arrived)
        if len(_arrived) == 2:
            reactor.callLater(0.01, _resume_together, _arrived[:])
            del _arrived[:]
        await arrived
        return self.burn(seconds)

def setup(node):
    node.expose("t", Burner())
    node.expose("u", Burner())
"""


class BusyNodeTests(TestCase):
    """A node whose methods hold its reactor, each briefly (SPEC section 8)."""

    timeout = 60

    async def test_long_calls_to_two_servers_keep_the_links(self) -> None:
        """
        Calls of 0.7 s, to two servers of one node or three to a concurrent
        method, come together (a batch through a neighbour): the reactor
        turns between them, so the neighbour's nudges are answered and the
        link stays (it had been held 1.4 or 2.1 s, and the neighbour dropped
        the node as silent, every call failing -32006). So do two async
        methods that compute 0.7 s each after an await: their timers fire
        in one turn of the reactor, and their steps share the slice.
        """
        await self._batches("default", [("burn", "tu"), ("peek", "ttt"), ("later", "tu")])

    async def test_async_methods_on_asyncio(self) -> None:
        """
        On the asyncio reactor, where an async method's coroutine starts on
        a later pass (none of its work had been counted), the same.
        """
        await self._batches("asyncio", [("later", "tu")])

    async def _batches(self, reactor_name: str, batches: list[tuple[str, str]]) -> None:
        # Each batch calls METHOD on each of SERVERS (peek: concurrent;
        # later: async) of X through its neighbour Y.
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        app = write_app(directory, "burner.py", _BURNER)
        x = NodeProcess(self, "X", None, "--app", app, "--reactor", reactor_name)
        x.start()
        await x.wait_healthy()
        y = start_node(self, "Y", peers=[x.url.replace("http", "ws")])
        await wait_for(lambda: y.mesh.can_reach("X"), 5.0, what="Y's route to X")
        await deferLater(reactor, 0.6, lambda: None)  # idle: the link is nudged
        for method, servers in batches:
            batch = [
                {"jsonrpc": "2.0", "method": f"X/{server}.{method}", "params": [0.7], "id": n}
                for n, server in enumerate(servers)
            ]
            answers = await post_json(url(y) + "/rpc", batch)
            self.assertEqual([a.get("result") for a in answers], [0.7] * len(servers), answers)
            self.assertIn("X", y.views.peers())
            lost = y.metrics.registry.get_sample_value(
                "relaytx_links_lost_total", {"cause": "silent"}
            )
            self.assertFalse(lost, method)


class LongMeshTests(TestCase):
    """Meshes wider than the original design's TTL, and a node that dies among many."""

    timeout = 90

    async def test_call_past_the_default_ttl(self) -> None:
        """On a line of 14, a call across 13 hops succeeds: the hop budget covers the route."""
        nodes = []
        for i in range(14):
            peers = [ws(nodes[-1])] if nodes else []
            servers = {"last": Counter()} if i == 13 else {}
            nodes.append(start_node(self, f"n{i:02d}", peers=peers, servers=servers))
        await wait_for(
            lambda: nodes[0].mesh.can_reach("n13") and nodes[13].mesh.can_reach("n00"),
            20.0,
            what="routes between n00 and n13, both ways",
        )
        self.assertEqual(nodes[0].views.routes()["n13"]["hops"], 13)
        self.assertEqual(await nodes[0].call("n13", "last", "increment", 2, timeout=10), 2)
        self.assertIsNotNone(await nodes[13].call("n00", "node", "ping", timeout=10))

    async def test_killed_node_dropped_everywhere(self) -> None:
        """A node killed with SIGKILL is dropped by every other node within 2 s, for good."""
        ring = [start_node(self, f"r{i}", ping_interval=PING) for i in range(8)]
        _link(ring, [(i, (i + 1) % 8) for i in range(8)] + [(0, 4), (2, 6)])
        x = NodeProcess(
            self, "x", None, "--ping-interval", str(PING),
            *(arg for node in ring[::3] for arg in ("--add-peer", ws(node))),
        )  # fmt: skip
        x.start()
        await x.wait_healthy()
        await wait_for(
            lambda: all(node.mesh.can_reach("x") for node in ring), 20.0, what="routes to x"
        )
        x.kill()
        took = await wait_for(
            lambda: not any(node.mesh.router.route("x") for node in ring),
            2.0,
            interval=0.01,
            what="every node to drop x",
        )
        print(f"\nx dropped everywhere {took * 1000:.0f} ms after SIGKILL")
        for _ in range(50):  # and for a second no stale path to it comes back
            await deferLater(reactor, 0.02, lambda: None)
            self.assertFalse(any(node.mesh.router.route("x") for node in ring))


class RemovalTests(TestCase):
    """A link removed on purpose over real sockets: both ends know it, nobody is marked."""

    timeout = 30

    def options(self) -> dict:
        """:returns: the nodes' other settings."""
        return {}

    async def _square(self) -> list:
        # s0 dials s1, s1 dials s2, s2 dials s3, s3 dials s0.
        nodes = [start_node(self, f"s{i}", ping_interval=PING, **self.options()) for i in range(4)]
        _link(nodes, [(0, 1), (1, 2), (2, 3), (3, 0)])
        await wait_for(
            lambda: all(len(node.views.routes()) == 3 for node in nodes), 10.0, what="routes"
        )
        return nodes

    async def _removed(self, nodes, remover: int, removed: int) -> None:
        numbers = [node.mesh.adverts.own_sn for node in nodes]
        far = nodes[removed]
        old = far.mesh.links[f"s{remover}"]
        self.assertTrue(nodes[remover].remove_peer(f"s{removed}"))
        await wait_for(
            lambda: far.mesh.links.get(f"s{remover}") is not old, 5.0, what="the link to close"
        )
        await deferLater(reactor, 3 * PING, lambda: None)  # what each end makes of it
        # Neither end took the other for dead: no node numbered itself anew,
        # and nothing is marked unreachable.
        self.assertEqual([node.mesh.adverts.own_sn for node in nodes], numbers)
        for node in nodes:
            self.assertEqual(node.mesh.router._marks, {}, node.node_id)
            self.assertEqual(len(node.views.routes()), 3, node.node_id)

    async def test_dialler_removes(self) -> None:
        """The dialling end removes the link: its close frame is answered, and it dials no more."""
        nodes = await self._square()
        await self._removed(nodes, 0, 1)
        self.assertEqual(nodes[0].peer_admin.dialers, {})
        self.assertNotIn("s0", nodes[1].mesh.links)
        self.assertEqual(nodes[1].mesh.router.route("s0").path, ("s2", "s3", "s0"))

    async def test_acceptor_removes(self) -> None:
        """
        The accepting end removes the link: neither end is taken for dead,
        and the dialling end, told so, dials no more (the link stays gone).
        """
        nodes = await self._square()
        await self._removed(nodes, 1, 0)
        self.assertEqual(list(nodes[0].peer_admin.dialers), [])
        self.assertNotIn("s1", nodes[0].mesh.links)
        self.assertNotIn("s0", nodes[1].mesh.links)

    async def test_both_dial(self) -> None:
        """
        Of two nodes that dial each other, the one that removes the other
        stops dialling it, and so does the other, told so: the link stays
        gone.
        """
        nodes = await self._square()
        nodes[1].add_peer(ws(nodes[0]))  # (s0 holds its own link: this one waits)
        await deferLater(reactor, 3 * PING, lambda: None)
        await self._removed(nodes, 0, 1)
        self.assertEqual(nodes[0].peer_admin.dialers, {})
        self.assertEqual(list(nodes[1].peer_admin.dialers), [ws(nodes[2]) + "/ws/p2p?node_id=s1"])
        await deferLater(reactor, 3 * PING, lambda: None)
        self.assertNotIn("s1", nodes[0].mesh.links)


class SecretRemovalTests(_Files, RemovalTests):
    """
    The same on links that seal their frames: the reason goes in a sealed
    frame first, as a close frame cannot be trusted (test_mitm forges one).
    """

    def options(self) -> dict:
        if not hasattr(self, "_secret"):
            self._secret = self.write("secret", SECRET)
            os.chmod(self._secret, 0o600)
        return {"secret_file": self._secret}
