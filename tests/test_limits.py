"""
Tests for L{relaytx._limits.CallLimiter} on a L{Clock}, and for the limits
and access rules a L{RelayNode} applies to HTTP and peer callers, on a
C{MemoryReactorClock} with nodes linked by L{relaytx.testing.MemoryMesh}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx import CallTimeout
from relaytx._auth import AccessRules
from relaytx._calls import CallTarget
from relaytx._jsonrpc import JsonRpcHandler
from relaytx._limits import CallLimiter
from relaytx.errors import AccessDenied, Overloaded
from relaytx.node import RelayNode
from relaytx.testing import MemoryMesh, memory_node
from tests.support import Counter, Slow


def limiter(
    max_in_flight: int = 100, per_caller: int = 100, rate: float = 0.0
) -> tuple[Clock, CallLimiter]:
    """:returns: a clock and a limiter on it."""
    clock = Clock()
    return clock, CallLimiter(clock, max_in_flight, per_caller, rate)


class InFlightTests(SynchronousTestCase):
    """Calls in flight are bounded per caller and in total."""

    def test_perCaller(self) -> None:
        """A caller at its limit is refused; others are not; a release makes room."""
        _, calls = limiter(per_caller=2)
        calls.admit("a")
        calls.admit("a")
        e = self.assertRaises(Overloaded, calls.admit, "a")
        self.assertEqual(e.code, -32005)
        self.assertEqual(e.data["limit"], "max_in_flight_per_caller")
        self.assertIn("a has 2 calls in flight", e.message)
        calls.admit("b")
        calls.release("a")
        calls.admit("a")
        self.assertRaises(Overloaded, calls.admit, "a")
        self.assertEqual(calls.in_flight, 3)

    def test_total(self) -> None:
        """Past C{max_in_flight} every caller is refused, whatever its own count."""
        _, calls = limiter(max_in_flight=3, per_caller=2)
        calls.admit("a")
        calls.admit("a")
        calls.admit("b")
        for caller in ("a", "b", "c"):
            e = self.assertRaises(Overloaded, calls.admit, caller)
            self.assertEqual(e.code, -32005)
            self.assertEqual(e.data["limit"], "max_in_flight")
        calls.release("a")
        calls.admit("c")
        self.assertEqual(calls.in_flight, 3)

    def test_refusedCountsNothing(self) -> None:
        """A refused call takes no slot: releasing the admitted ones empties the limiter."""
        _, calls = limiter(max_in_flight=2, per_caller=1)
        calls.admit("a")
        self.assertRaises(Overloaded, calls.admit, "a")
        calls.admit("b")
        self.assertRaises(Overloaded, calls.admit, "c")
        calls.release("a")
        calls.release("b")
        self.assertEqual(calls.in_flight, 0)
        for caller in ("a", "b"):
            calls.admit(caller)
        self.assertEqual(calls.in_flight, 2)

    def test_unbalancedRelease(self) -> None:
        """Releasing a caller with nothing in flight does not free another caller's slot."""
        _, calls = limiter(max_in_flight=1)
        calls.admit("a")
        calls.release("stranger")
        self.assertEqual(calls.in_flight, 1)
        self.assertRaises(Overloaded, calls.admit, "b")


class RateTests(SynchronousTestCase):
    """Each caller has a token bucket of one second's worth, refilled on the clock."""

    def test_burst(self) -> None:
        """A fresh caller may start C{rate} calls at once, then is refused with -32005."""
        _, calls = limiter(rate=10)
        for _ in range(10):
            calls.admit("a")
            calls.release("a")
        e = self.assertRaises(Overloaded, calls.admit, "a")
        self.assertEqual(e.code, -32005)
        self.assertEqual(e.data["limit"], "rate")
        self.assertEqual(calls.in_flight, 0)

    def test_perCaller(self) -> None:
        """One caller's empty bucket does not limit another."""
        _, calls = limiter(rate=2)
        calls.admit("a")
        calls.admit("a")
        self.assertRaises(Overloaded, calls.admit, "a")
        calls.admit("b")
        calls.admit("b")

    def test_refill(self) -> None:
        """Tokens come back at C{rate} per second of clock time."""
        clock, calls = limiter(rate=10)
        for _ in range(10):
            calls.admit("a")
        self.assertRaises(Overloaded, calls.admit, "a")
        clock.advance(0.05)
        self.assertRaises(Overloaded, calls.admit, "a")  # half a token
        clock.advance(0.05)
        calls.admit("a")
        self.assertRaises(Overloaded, calls.admit, "a")
        clock.advance(0.35)
        for _ in range(3):
            calls.admit("a")
        self.assertRaises(Overloaded, calls.admit, "a")

    def test_burstCapped(self) -> None:
        """A long idle time refills one second's worth, no more."""
        clock, calls = limiter(rate=5)
        calls.admit("a")
        clock.advance(3600)
        for _ in range(5):
            calls.admit("a")
        self.assertRaises(Overloaded, calls.admit, "a")

    def test_steadyRate(self) -> None:
        """Over ten seconds a hammering caller gets about C{rate} calls a second."""
        clock, calls = limiter(rate=20)
        admitted = 0
        for _ in range(1000):  # every 10 ms, 100 attempts a second
            try:
                calls.admit("a")
            except Overloaded:
                pass
            else:
                admitted += 1
                calls.release("a")
            clock.advance(0.01)
        self.assertTrue(20 * 10 <= admitted <= 20 * 10 + 20 + 1, admitted)

    def test_noRate(self) -> None:
        """A rate of 0 means no rate limit."""
        _, calls = limiter(rate=0)
        for _ in range(10_000):
            calls.admit("a")
            calls.release("a")

    def test_slowRate(self) -> None:
        """A rate below one call a second still admits one call, then one per 1/rate s."""
        clock, calls = limiter(rate=0.5)
        calls.admit("a")
        calls.release("a")
        self.assertRaises(Overloaded, calls.admit, "a")
        clock.advance(1.9)
        self.assertRaises(Overloaded, calls.admit, "a")
        clock.advance(0.1)
        calls.admit("a")
        calls.release("a")
        clock.advance(3600)
        calls.admit("a")  # the bucket holds one call, no more
        self.assertRaises(Overloaded, calls.admit, "a")

    def test_clockStepsBack(self) -> None:
        """A wall clock stepping back does not drain a caller's bucket."""
        clock, calls = limiter(rate=10)
        clock.advance(1000)
        calls.admit("a")
        calls.release("a")
        clock.rightNow -= 500  # an NTP step backwards
        for _ in range(9):
            calls.admit("a")
            calls.release("a")
        self.assertRaises(Overloaded, calls.admit, "a")
        clock.advance(1)
        calls.admit("a")


class PruningTests(SynchronousTestCase):
    """The rate buckets are bounded by C{MAX_TRACKED}, without lifting anyone's limit."""

    def test_bound(self) -> None:
        """However many callers come, at most C{MAX_TRACKED} buckets are kept."""
        clock, calls = limiter(rate=1)
        calls.MAX_TRACKED = 50
        for i in range(2_000):
            calls.admit(f"http:10.0.{i // 256}.{i % 256}")
            calls.release(f"http:10.0.{i // 256}.{i % 256}")
            self.assertLessEqual(len(calls._buckets), 50)
            if i % 300 == 0:
                clock.advance(0.3)

    def test_defaultBound(self) -> None:
        """With the default C{MAX_TRACKED}, twenty thousand callers keep at most that many."""
        _, calls = limiter(rate=100)
        for i in range(2 * CallLimiter.MAX_TRACKED):
            calls.admit(str(i))
            calls.release(str(i))
        self.assertLessEqual(len(calls._buckets), CallLimiter.MAX_TRACKED)

    def test_idleForgottenFirst(self) -> None:
        """Full (idle) buckets are forgotten before those of callers still limited."""
        clock, calls = limiter(rate=1)
        calls.MAX_TRACKED = 5
        for caller in "abc":
            calls.admit(caller)
        clock.advance(1)  # a, b and c refill completely
        for caller in "de":
            calls.admit(caller)
        calls.admit("f")  # a sixth caller: room is made
        self.assertLessEqual(len(calls._buckets), 5)
        self.assertNotIn("a", calls._buckets)
        # d and e spent their token just now: still limited.
        self.assertRaises(Overloaded, calls.admit, "d")
        self.assertRaises(Overloaded, calls.admit, "e")

    def test_floodOfNamesKeepsLimits(self) -> None:
        """A flood of new caller names does not hand a limited, hammering caller a new bucket."""
        _, calls = limiter(rate=1)
        calls.MAX_TRACKED = 5
        calls.admit("busy")
        calls.release("busy")
        for i in range(100):
            calls.admit(f"new{i}")
            calls.release(f"new{i}")
            self.assertRaises(Overloaded, calls.admit, "busy")
            self.assertLessEqual(len(calls._buckets), 5)


# Node level.


def node_with(node_id: str, clock: MemoryReactorClock, **options: Any) -> RelayNode:
    """:returns: a memory node with a L{Slow} and a L{Counter}."""
    node = memory_node(node_id, clock, **options)
    node.expose("slow", Slow())
    node.expose("counter", Counter())
    return node


def server(node: RelayNode, name: str) -> Any:
    """:returns: the server C{name} of C{node}."""
    return node.servers.server(name)


def call(node: RelayNode, server: str, method: str, caller: str | None, *args: Any) -> Any:
    """:returns: the Deferred of a call made to C{node} by C{caller}."""
    return node.dispatcher.call(CallTarget(None, server, method, args, caller=caller))


class HttpCallerLimitTests(SynchronousTestCase):
    """A node limits each HTTP client (C{"http:ADDRESS"}) on its own."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.node = node_with(
            "n1", self.clock, limits={"max_in_flight_per_caller": 2, "max_in_flight": 5}
        )

    def test_perClient(self) -> None:
        """A client past its in-flight limit gets -32005; another client still gets through."""
        greedy = "http:1.2.3.4"
        held = [call(self.node, "slow", "wait", greedy) for _ in range(2)]
        for d in held:
            self.assertNoResult(d)
        refused = self.failureResultOf(call(self.node, "slow", "wait", greedy), Overloaded)
        self.assertEqual(refused.value.code, -32005)
        self.assertEqual(refused.value.data["node_id"], "n1")
        # The limit is the client's, not the server's: other servers are refused too.
        self.failureResultOf(call(self.node, "node", "echo", greedy, 1), Overloaded)
        self.assertEqual(
            self.successResultOf(call(self.node, "counter", "increment", "http:5.6.7.8")), 1
        )
        self.assertEqual(self.node.limiter.in_flight, 2)

        server(self.node, "slow").waiting[0].callback("done")
        self.assertEqual(self.successResultOf(held[0]), "done")
        self.assertEqual(self.successResultOf(call(self.node, "node", "echo", greedy, 1)), [1])
        self.assertEqual(
            self.node.metrics.registry.get_sample_value(
                "relaytx_calls_total", {"outcome": "Overloaded"}
            ),
            2,
        )

    def test_jsonRpcAnswer(self) -> None:
        """Over JSON-RPC the refusal is an error object with code -32005."""
        handler = JsonRpcHandler(self.node.dispatcher.call, self.node.node_id)
        body = json.dumps({"jsonrpc": "2.0", "method": "slow.wait", "id": 7}).encode()
        for _ in range(2):
            self.assertNoResult(handler.handle(body, "http:1.2.3.4"))
        answer = json.loads(self.successResultOf(handler.handle(body, "http:1.2.3.4")))
        self.assertEqual(answer["id"], 7)
        self.assertEqual(answer["error"]["code"], -32005)
        other = json.dumps({"jsonrpc": "2.0", "method": "counter.get", "id": 8}).encode()
        answer = json.loads(self.successResultOf(handler.handle(other, "http:9.9.9.9")))
        self.assertEqual(answer, {"jsonrpc": "2.0", "result": 0, "id": 8})

    def test_total(self) -> None:
        """Past C{max_in_flight} a fresh client is refused as well."""
        for i in range(5):
            self.assertNoResult(call(self.node, "slow", "wait", f"http:10.0.0.{i // 2}"))
        self.failureResultOf(call(self.node, "counter", "get", "http:10.9.9.9"), Overloaded)
        self.assertEqual(self.node.limiter.in_flight, 5)

    def test_localCodeNotLimited(self) -> None:
        """Calls made by code in the node itself (no caller) are never limited."""
        for i in range(5):
            call(self.node, "slow", "wait", f"http:10.0.0.{i // 2}")
        for _ in range(10):
            self.successResultOf(self.node.call(None, "counter", "increment"))
        self.assertEqual(server(self.node, "counter").count, 10)

    def test_rate(self) -> None:
        """A client over C{calls_per_second} gets -32005 until its bucket refills."""
        node = node_with("n2", self.clock, limits={"calls_per_second": 3})
        for _ in range(3):
            self.successResultOf(call(node, "counter", "increment", "http:1.2.3.4"))
        refused = self.failureResultOf(
            call(node, "counter", "increment", "http:1.2.3.4"), Overloaded
        )
        self.assertEqual(refused.value.data["limit"], "rate")
        self.successResultOf(call(node, "counter", "increment", "http:4.3.2.1"))
        self.clock.advance(1 / 3)
        self.successResultOf(call(node, "counter", "increment", "http:1.2.3.4"))
        self.assertEqual(server(node, "counter").count, 5)


class MeshFixture:
    """Three memory nodes on one clock: hA and hC both link to hB."""

    def mesh(self, **b_options: Any) -> None:
        self.clock = MemoryReactorClock()
        self.a = node_with("hA", self.clock)
        self.b = node_with("hB", self.clock, **b_options)
        self.c = node_with("hC", self.clock)
        self.network = MemoryMesh()
        self.network.link(self.a, self.b)
        self.network.link(self.c, self.b)
        self.network.settle()

    def remote(self, node: RelayNode, server: str, method: str, timeout: float = 30) -> Any:
        d = node.call("hB", server, method, timeout=timeout)
        self.network.pump()
        return d


class PeerLimitTests(MeshFixture, SynchronousTestCase):
    """A node limits the calls each peer runs on it."""

    def test_perPeer(self) -> None:
        """A peer past its in-flight limit gets -32005 back; another peer's call still runs."""
        self.mesh(limits={"max_in_flight_per_caller": 2})
        held = [self.remote(self.a, "slow", "wait") for _ in range(2)]
        refused = self.failureResultOf(self.remote(self.a, "slow", "wait"), Overloaded)
        self.assertEqual(refused.value.code, -32005)
        self.assertEqual(refused.value.data["node_id"], "hB")
        self.assertEqual(self.successResultOf(self.remote(self.c, "counter", "increment")), 1)
        other = self.remote(self.c, "slow", "wait")
        self.assertNoResult(other)
        self.assertEqual(self.b.limiter.in_flight, 3)
        waiting = server(self.b, "slow").waiting
        waiting[0].callback("first")
        self.network.pump()
        self.assertEqual(self.successResultOf(held[0]), "first")
        # hA has a free slot again.
        self.assertEqual(self.successResultOf(self.remote(self.a, "counter", "get")), 1)

    def test_budgetFreesSlot(self) -> None:
        """A call that hangs past its budget gives its caller's slot back."""
        self.mesh(limits={"max_in_flight_per_caller": 1})
        hung = self.remote(self.a, "slow", "wait", timeout=1)
        self.failureResultOf(self.remote(self.a, "counter", "get"), Overloaded)
        self.network.advance(1.0)
        self.failureResultOf(hung, CallTimeout)
        self.assertEqual(self.b.limiter.in_flight, 0)
        self.assertEqual(self.successResultOf(self.remote(self.a, "counter", "get")), 0)

    def test_pendingCalls(self) -> None:
        """A node waiting on C{max_pending_calls} calls refuses another with -32005 at once."""
        self.mesh()
        a = node_with("hA2", self.clock, limits={"max_pending_calls": 2})
        self.network.link(a, self.b)
        self.network.settle()
        held = [self.remote(a, "slow", "wait") for _ in range(2)]
        refused = self.failureResultOf(a.call("hB", "counter", "get"), Overloaded)
        self.assertEqual(refused.value.code, -32005)
        self.assertEqual(len(a.mesh.pending), 2)
        self.assertEqual(server(self.b, "counter").count, 0)
        # Other nodes are not held back by hA2's limit.
        self.assertEqual(self.successResultOf(self.remote(self.a, "counter", "get")), 0)
        server(self.b, "slow").waiting[0].callback("x")
        self.network.pump()
        self.assertEqual(self.successResultOf(held[0]), "x")
        self.assertEqual(self.successResultOf(self.remote(a, "counter", "get")), 0)


class AccessTests(MeshFixture, SynchronousTestCase):
    """A node's access rules refuse calls with -32004 before they run."""

    RULES = AccessRules.from_config(
        {
            "rule": [
                {"callers": ["hA"], "servers": ["counter"], "methods": ["increment"],
                 "allow": False},
                {"callers": ["http"], "servers": ["counter"], "allow": False},
            ]
        }
    )  # fmt: skip

    def test_peerDenied(self) -> None:
        """A peer denied by a rule gets -32004; the method does not run; others are allowed."""
        self.mesh(access=self.RULES)
        denied = self.failureResultOf(self.remote(self.a, "counter", "increment"), AccessDenied)
        self.assertEqual(denied.value.code, -32004)
        self.assertIn("hA may not call counter.increment", denied.value.message)
        self.assertEqual(server(self.b, "counter").count, 0)
        self.assertEqual(self.successResultOf(self.remote(self.a, "counter", "get")), 0)
        self.assertEqual(self.successResultOf(self.remote(self.c, "counter", "increment")), 1)
        self.assertEqual(self.b.limiter.in_flight, 0)

    def test_httpDenied(self) -> None:
        """HTTP clients are the caller C{"http"}, by bare name and by explicit node id."""
        self.mesh(access=self.RULES)
        for target in (
            CallTarget(None, "counter", "get", caller="http:127.0.0.1"),
            CallTarget("hB", "counter", "increment", caller="http:10.1.2.3"),
        ):
            failure = self.failureResultOf(self.b.dispatcher.call(target), AccessDenied)
            self.assertEqual(failure.value.code, -32004)
        self.assertEqual(self.successResultOf(call(self.b, "node", "echo", "http:1.1.1.1", 2)), [2])
        # Code in the node itself is not subject to the rules.
        self.assertEqual(self.successResultOf(self.b.call(None, "counter", "increment")), 1)
        self.assertEqual(self.b.limiter.in_flight, 0)

    def test_claimedCaller(self) -> None:
        """
        A node may relay for an HTTP client of its own (C{http:...}), judged
        as that client; a node id it names instead is not believed: the
        call is judged as the node that sent it.
        """
        rules = AccessRules.from_config(
            {
                "default": "deny",
                "rule": [
                    {"callers": ["hC"], "servers": ["counter"]},
                    {"callers": ["http:ci"], "servers": ["counter"], "methods": ["get"]},
                ],
            }
        )
        self.mesh(access=rules)
        posing = self.a.dispatcher.call(CallTarget("hB", "counter", "increment", caller="hC"))
        self.network.pump()
        denied = self.failureResultOf(posing, AccessDenied)
        self.assertIn("hA may not call counter.increment", denied.value.message)
        self.assertEqual(server(self.b, "counter").count, 0)
        relayed = self.a.dispatcher.call(CallTarget("hB", "counter", "get", caller="http:ci"))
        self.network.pump()
        self.assertEqual(self.successResultOf(relayed), 0)

    def test_defaultDeny(self) -> None:
        """With C{default = "deny"} only what a rule allows runs."""
        rules = AccessRules.from_config(
            {"default": "deny", "rule": [{"callers": ["hC"], "servers": ["counter"]}]}
        )
        self.mesh(access=rules)
        self.failureResultOf(self.remote(self.a, "counter", "get"), AccessDenied)
        self.failureResultOf(self.remote(self.a, "node", "info"), AccessDenied)
        self.assertEqual(self.successResultOf(self.remote(self.c, "counter", "increment")), 1)
