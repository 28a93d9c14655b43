"""
Several instances of one server on real sockets (SPEC section 11): calls
spread over them, and one instance's node is killed (SIGKILL) under load.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from relaytx.errors import CallError
from relaytx.node import RelayNode

from .helpers import EXAMPLES, NodeProcess, get_json, start_node, url, wait_for

PING = 0.5  # seconds: short liveness so failures show quickly
WORKER = os.path.join(EXAMPLES, "worker.py")


class KillUnderLoadTests(TestCase):
    """A calls worker on B and C (subprocesses) with round_robin; B is killed mid-load."""

    timeout = 60

    async def mesh(self) -> tuple[RelayNode, NodeProcess, NodeProcess]:
        b = NodeProcess(self, "B", None, "--app", WORKER, "--ping-interval", str(PING))
        c = NodeProcess(self, "C", None, "--app", WORKER, "--ping-interval", str(PING))
        b.start()
        c.start()
        await gatherResults([Deferred.fromCoroutine(p.wait_healthy()) for p in (b, c)])
        a = start_node(
            self, "A", peers=[b.url, c.url], ping_interval=PING, balance={"default": "round_robin"}
        )
        await wait_for(
            lambda: (
                {e["node_id"] for e in a.views.servers().get("worker", [])} == {"B", "C"}
                and a.mesh.info.is_idempotent("B", "worker", "lookup")
                and a.mesh.info.is_idempotent("C", "worker", "lookup")
            ),
            5.0,
            what="both instances known to A",
        )
        return a, b, c

    async def load(
        self, a: RelayNode, kill: NodeProcess, method: str, *args: Any
    ) -> tuple[list[Any], int]:
        """
        Call C{worker.method(*args)} from 16 loops for 2 s, killing C{kill}
        after 0.7 s.

        :returns: every outcome (the result, or the error code), and how
            many calls A had in flight to the killed node when A found its
            link lost.
        """
        outcomes: list[Any] = []
        at_loss: list[int] = []
        path_lost = a.mesh.calls.path_lost

        def lost(peer_id: str) -> None:
            instance = a.balancer._state.get(("worker", peer_id))
            at_loss.append(0 if instance is None else instance.in_flight)
            path_lost(peer_id)

        a.mesh.calls.path_lost = lost  # type: ignore[method-assign]
        end = reactor.seconds() + 2.0

        async def loop() -> None:
            while reactor.seconds() < end:
                try:
                    outcomes.append(await a.call(None, "worker", method, *args, timeout=10))
                except CallError as e:
                    outcomes.append(e.code)

        loops = gatherResults([Deferred.fromCoroutine(loop()) for _ in range(16)])
        await deferLater(reactor, 0.7, lambda: None)
        kill.kill()
        await loops
        self.assertEqual(len(at_loss), 1)
        return outcomes, at_loss[0]

    async def test_idempotent_calls_survive_a_kill(self) -> None:
        """Killing an instance under load fails no call of an idempotent method."""
        a, b, _ = await self.mesh()
        servers = await get_json(url(a) + "/registry/servers")
        entries = {e["node_id"]: e for e in servers["worker"]}
        self.assertEqual(set(entries), {"B", "C"})
        for entry in entries.values():
            self.assertEqual((entry["hops"], entry["state"]), (1, "up"))
            self.assertIsInstance(entry["rtt_ms"], float)
        outcomes, in_flight = await self.load(a, b, "lookup", "k", 0.005)
        failed = [o for o in outcomes if not isinstance(o, dict)]
        self.assertEqual(failed, [])
        self.assertGreater(in_flight, 0)  # the kill did hit calls in flight
        nodes = [o["node_id"] for o in outcomes]
        self.assertEqual(set(nodes), {"B", "C"})
        self.assertEqual(nodes[-20:], ["C"] * 20)  # after the kill, C alone

    async def test_other_calls_only_outcome_unknown(self) -> None:
        """Killing an instance under load fails only its calls in flight, with -32006."""
        a, b, _ = await self.mesh()
        outcomes, in_flight = await self.load(a, b, "work", 0.005)
        failed = [o for o in outcomes if not isinstance(o, str)]
        self.assertEqual(set(failed), {-32006})
        self.assertLessEqual(len(failed), in_flight)
        self.assertEqual(outcomes[-20:], ["C"] * 20)
        self.assertGreater(outcomes.count("B"), 0)
