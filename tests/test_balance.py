"""
Tests for L{relaytx._balance}: how a location-transparent call picks an
instance, fails over, and skips instances whose circuit is open; and for
the instance entries (loads, idempotent methods) nodes tell each other.
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx import (
    CallTimeout,
    NodeUnreachable,
    OutcomeUnknown,
    Overloaded,
    RemoteCallError,
    Server,
    exposed,
)
from relaytx._balance import LOAD_INTERVAL, Balancer, Breaker, InstanceInfo
from relaytx._calls import CallTarget
from relaytx.config import BalanceConfig, ConfigError, build_config
from relaytx.errors import NoSuchMethod
from relaytx.node import RelayNode
from relaytx.server import exposed_methods, idempotent_names
from relaytx.testing import MemoryMesh, memory_node
from relaytx.wire import Envelope, NodeInfo, RegistrySync, decode, encode
from tests.test_rpc import RawConnection


class Where(Server):
    """Says which node it runs on; C{hold} waits until the test answers."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.waiting: list[Deferred[Any]] = []
        self.runs = 0

    @exposed
    def where(self) -> str:
        self.runs += 1
        return self.node_id

    @exposed
    def hold(self) -> Deferred[Any]:
        self.runs += 1
        d: Deferred[Any] = Deferred()
        self.waiting.append(d)
        return d

    @exposed(idempotent=True)
    def hold_again(self) -> Deferred[Any]:
        return self.hold()

    @exposed(concurrent=True)
    def peek(self) -> int:
        return self.runs

    #: the node it runs on, for the calls it makes itself
    node: RelayNode

    @exposed
    def onward(self, target: str) -> Any:
        """Answer with what svc.where on C{target} answers (a call of its own)."""
        self.runs += 1
        return self.node.call(target, "svc", "where")

    @exposed
    async def onward_async(self, target: str) -> Any:
        self.runs += 1
        return await self.node.call(target, "svc", "where")

    @exposed
    def onward_within(self, target: str, method: str, timeout: float, *args: Any) -> Any:
        """Answer with what svc.METHOD on C{target} answers within C{timeout} s."""
        self.runs += 1
        return self.node.call(target, "svc", method, *args, timeout=timeout)

    @exposed
    def refuse_params(self) -> None:
        """Fail with -32602 on purpose: it keeps its code."""
        from relaytx.errors import InvalidParams

        raise InvalidParams("Invalid params: not today")

    @exposed
    def shed(self) -> None:
        """Fail with a code that says where a call went: it ran all the same."""
        self.runs += 1
        raise Overloaded("busy elsewhere")


class Newer(Where):
    """A newer version of the server: one method more."""

    @exposed
    def newer(self) -> str:
        self.runs += 1
        return self.node_id


class FakeRemote:
    """Calls to other nodes, answered as the test says, recorded."""

    def __init__(self) -> None:
        self.calls: list[CallTarget] = []
        self.answers: dict[str, Any] = {}
        self.pending: dict[str, Deferred[Any]] = {}
        self.cancelled: list[str] = []

    def __call__(self, target: CallTarget) -> Deferred[Any]:
        self.calls.append(target)
        assert target.node_id is not None
        answer = self.answers.get(target.node_id)
        if isinstance(answer, Exception):
            return fail(answer)
        if answer is None:
            node = target.node_id
            d: Deferred[Any] = Deferred(lambda _: self.cancelled.append(node))
            self.pending[target.node_id] = d
            return d
        return succeed(answer)

    def nodes(self) -> list[str | None]:
        return [c.node_id for c in self.calls]


def no_local(target: CallTarget) -> Any:
    raise AssertionError("no local instance")


class BalancerCase(SynchronousTestCase):
    """A balancer over instances the test lays out, on a Clock."""

    def balancer(
        self,
        policy: str = "nearest",
        instances: list[tuple[str, int, int]] | None = None,
        rtts: dict[str, float] | None = None,
        local: bool = False,
        **options: Any,
    ) -> Balancer:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.info = InstanceInfo("a", self.clock)
        self.laid_out = instances if instances is not None else [("b", 1, 1), ("c", 1, 1)]
        rtts = rtts or {}
        config = BalanceConfig(default=policy, **options)
        return Balancer(
            "a",
            self.clock,
            config,
            lambda server: list(self.laid_out),
            rtts.get,
            lambda server: local,
            self.info,
            rng=random.Random(7),
        )

    def target(self, method: str = "where", timeout: float = 10.0) -> CallTarget:
        return CallTarget(None, "svc", method, timeout=timeout)


class PolicyTests(BalancerCase):
    """Each policy picks the instance SPEC section 11 says."""

    def test_nearest_fewest_hops(self) -> None:
        """nearest picks the instance with the fewest hops, whatever its RTT."""
        b = self.balancer(instances=[("b", 2, 2), ("c", 1, 1)], rtts={"b": 0.001, "c": 0.5})
        self.assertEqual({b.choose("svc") for _ in range(5)}, {"c"})

    def test_nearest_then_rtt(self) -> None:
        """Between equally near instances, nearest picks the lower RTT."""
        b = self.balancer(rtts={"b": 0.050, "c": 0.002})
        self.assertEqual({b.choose("svc") for _ in range(5)}, {"c"})

    def test_nearest_probes_unknown_rtt(self) -> None:
        """
        Equally near instances whose round trips are not known are probed
        (once in PROBE_EVERY each): nearest then takes the faster, not the
        first it called.
        """
        b = self.balancer(instances=[("b", 2, 2), ("c", 2, 2), ("d", 3, 3)])
        probes: dict[str, list[Deferred[float | None]]] = {}

        def probe(node: str) -> Deferred[float | None]:
            d: Deferred[float | None] = Deferred()
            probes.setdefault(node, []).append(d)
            return d

        b._probe = probe
        self.assertEqual(b.choose("svc"), "b")  # (nothing known: the lower id)
        self.assertEqual(b.choose("svc"), "b")
        self.assertEqual({n: len(ds) for n, ds in probes.items()}, {"b": 1, "c": 1})
        probes["b"][0].callback(0.080)
        probes["c"][0].callback(0.002)
        self.assertEqual({b.choose("svc") for _ in range(3)}, {"c"})
        self.assertEqual(b.rtt("c"), 0.002)

    def test_round_robin(self) -> None:
        """round_robin takes the instances in turn."""
        b = self.balancer("round_robin", instances=[("b", 1, 1), ("c", 2, 2), ("d", 1, 1)])
        self.assertEqual([b.choose("svc") for _ in range(6)], ["b", "c", "d", "b", "c", "d"])

    def test_random(self) -> None:
        """random reaches every instance, as its generator says."""
        b = self.balancer("random")
        picks = [b.choose("svc") for _ in range(40)]
        self.assertEqual(set(picks), {"b", "c"})

    def test_least_loaded_in_flight(self) -> None:
        """least_loaded picks the instance with fewer calls in flight from here."""
        b = self.balancer("least_loaded")
        remote = FakeRemote()
        for _ in range(3):
            b.call(self.target(), remote, no_local)
        counts = {n: remote.nodes().count(n) for n in ("b", "c")}
        self.assertEqual(sorted(counts.values()), [1, 2])  # never all three on one
        self.assertEqual(b.choose("svc"), min(counts, key=lambda n: counts[n]))

    def test_least_loaded_advertised(self) -> None:
        """With as many calls in flight to each, least_loaded picks the lower advertised load."""
        b = self.balancer("least_loaded")
        self.info.take({"b": NodeInfo(5, 9), "c": NodeInfo(5, 2)}, {})
        self.assertEqual({b.choose("svc") for _ in range(4)}, {"c"})

    def test_per_server_policy(self) -> None:
        """[balance.servers] sets a policy for one name; others keep the default."""
        b = self.balancer("nearest", servers={"svc": "round_robin"}, rtts={"b": 0.001})
        self.assertEqual([b.choose("svc") for _ in range(2)], ["b", "c"])
        self.assertEqual([b.choose("other") for _ in range(2)], ["b", "b"])
        self.assertTrue(b.spreads("svc"))
        self.assertFalse(b.spreads("other"))

    def test_local_instance_takes_part(self) -> None:
        """With round_robin, this node's own instance is one of those taken in turn."""
        b = self.balancer("round_robin", local=True)
        self.assertEqual([b.choose("svc") for _ in range(3)], ["a", "b", "c"])


class BreakerTests(SynchronousTestCase):
    """An instance's circuit opens, waits, and lets one trial decide."""

    def test_opens_after_threshold(self) -> None:
        """The circuit opens at the threshold's failure in a row, not before."""
        breaker = Breaker(3, 5.0)
        self.assertFalse(breaker.failed(0))
        self.assertFalse(breaker.failed(0))
        self.assertTrue(breaker.failed(1))
        self.assertEqual(breaker.state, "open")
        self.assertFalse(breaker.available(5.9))
        self.assertTrue(breaker.available(6.0))

    def test_success_resets_count(self) -> None:
        """A success between failures starts the count again."""
        breaker = Breaker(2, 5.0)
        breaker.failed(0)
        breaker.succeeded()
        self.assertFalse(breaker.failed(0))
        self.assertEqual(breaker.state, "up")

    def test_half_open_one_trial(self) -> None:
        """Half-open, one call goes; a second waits for its outcome."""
        breaker = Breaker(1, 5.0)
        breaker.failed(0)
        self.assertTrue(breaker.available(5))
        breaker.started(5)
        self.assertFalse(breaker.available(5))

    def test_trial_success_closes(self) -> None:
        """A trial that succeeds closes the circuit."""
        breaker = Breaker(1, 5.0)
        breaker.failed(0)
        breaker.started(5)
        breaker.succeeded()
        self.assertEqual(breaker.state, "up")
        self.assertTrue(breaker.available(5))

    def test_trial_failure_reopens(self) -> None:
        """A trial that fails opens the circuit for another open_seconds."""
        breaker = Breaker(1, 5.0)
        breaker.failed(0)
        breaker.started(5)
        breaker.failed(5)
        self.assertEqual(breaker.state, "open")
        self.assertFalse(breaker.available(9.9))
        self.assertTrue(breaker.available(10))

    def test_cancelled_trial_frees_the_slot(self) -> None:
        """A trial given up by its caller lets another trial go."""
        breaker = Breaker(1, 5.0)
        breaker.failed(0)
        breaker.started(5)
        breaker.abandoned()
        self.assertTrue(breaker.available(5))


class FailoverTests(BalancerCase):
    """Which failures a call is sent on to another instance for, within its deadline."""

    def test_unreachable_fails_over(self) -> None:
        """-32002 at the first instance: the call goes to the next and succeeds."""
        b = self.balancer("round_robin")
        remote = FakeRemote()
        remote.answers = {"b": NodeUnreachable("gone"), "c": "c"}
        d = b.call(self.target(), remote, no_local)
        self.assertEqual(self.successResultOf(d), "c")
        self.assertEqual(remote.nodes(), ["b", "c"])

    def test_overloaded_fails_over(self) -> None:
        """-32005 (it did not run): the call goes to the next instance."""
        b = self.balancer("round_robin")
        remote = FakeRemote()
        remote.answers = {"b": Overloaded("busy"), "c": "c"}
        self.assertEqual(self.successResultOf(b.call(self.target(), remote, no_local)), "c")

    def test_own_overload_not_failed_over(self) -> None:
        """This node's own -32005 (its pending calls) is the answer: no other try, no failure."""
        b = self.balancer("round_robin", failure_threshold=1)
        remote = FakeRemote()
        remote.answers = {"b": Overloaded("too many pending", node_id="a"), "c": "c"}
        self.failureResultOf(b.call(self.target(), remote, no_local), Overloaded)
        self.assertEqual(remote.nodes(), ["b"])
        self.assertEqual(b.state("svc", "b"), "up")

    def test_unknown_outcome_not_retried(self) -> None:
        """-32006 for a method not declared idempotent: the caller gets -32006."""
        b = self.balancer("round_robin")
        remote = FakeRemote()
        remote.answers = {"b": OutcomeUnknown("lost"), "c": "c"}
        d = b.call(self.target(), remote, no_local)
        self.assertEqual(self.failureResultOf(d, OutcomeUnknown).value.code, -32006)
        self.assertEqual(remote.nodes(), ["b"])

    def test_unknown_outcome_retried_when_idempotent(self) -> None:
        """-32006 for a method its node declared idempotent: retried on the next instance."""
        b = self.balancer("round_robin")
        self.info.take({"b": NodeInfo(3, 0, {"svc": ("where",)})}, {})
        remote = FakeRemote()
        remote.answers = {"b": OutcomeUnknown("lost"), "c": "c"}
        self.assertEqual(self.successResultOf(b.call(self.target(), remote, no_local)), "c")
        self.assertEqual(remote.nodes(), ["b", "c"])

    def test_stream_unknown_outcome_not_retried(self) -> None:
        """
        A stream whose outcome is unknown, once its consumer had items, is
        not run again, even for an idempotent method.
        """
        b = self.balancer("round_robin")
        self.info.take({"b": NodeInfo(3, 0, {"svc": ("where",)})}, {})
        remote = FakeRemote()
        remote.answers = {"b": OutcomeUnknown("lost"), "c": "c"}
        consumer = SimpleNamespace(count=2)
        target = CallTarget(None, "svc", "where", stream=consumer)
        self.failureResultOf(b.call(target, remote, no_local), OutcomeUnknown)
        self.assertEqual([c.stream for c in remote.calls], [consumer])

    def test_unknown_outcome_before_any_item_retried(self) -> None:
        """
        A call that could stream (every /ws/rpc call can) whose consumer had
        no item yet is an idempotent method's call like another: retried.
        """
        b = self.balancer("round_robin")
        self.info.take({"b": NodeInfo(3, 0, {"svc": ("where",)})}, {})
        remote = FakeRemote()
        remote.answers = {"b": OutcomeUnknown("lost"), "c": "c"}
        consumer = SimpleNamespace(count=0)
        target = CallTarget(None, "svc", "where", stream=consumer)
        self.assertEqual(self.successResultOf(b.call(target, remote, no_local)), "c")
        self.assertEqual(remote.nodes(), ["b", "c"])

    def test_stream_fails_over_when_not_run(self) -> None:
        """A stream refused where it went (-32002) goes on to another instance, consumer and all."""
        b = self.balancer("round_robin")
        remote = FakeRemote()
        remote.answers = {"b": NodeUnreachable("gone"), "c": "c"}
        consumer = SimpleNamespace(count=0)
        target = CallTarget(None, "svc", "where", stream=consumer)
        self.assertEqual(self.successResultOf(b.call(target, remote, no_local)), "c")
        self.assertEqual([c.stream for c in remote.calls], [consumer, consumer])

    def test_method_error_not_retried(self) -> None:
        """An exception of the method (-32000) is the answer: no other instance is tried."""
        b = self.balancer("round_robin")
        remote = FakeRemote()
        remote.answers = {"b": RemoteCallError("ValueError: no"), "c": "c"}
        self.failureResultOf(b.call(self.target(), remote, no_local), RemoteCallError)
        self.assertEqual(remote.nodes(), ["b"])

    def test_same_deadline(self) -> None:
        """The next try gets what is left of the call's budget, not a new one."""
        b = self.balancer("round_robin")
        remote = FakeRemote()
        d = b.call(self.target(timeout=10), remote, no_local)
        self.clock.advance(4)
        remote.pending.pop("b").errback(NodeUnreachable("gone"))
        self.assertEqual([c.timeout for c in remote.calls], [10, 6])
        remote.pending.pop("c").callback("c")
        self.assertEqual(self.successResultOf(d), "c")

    def test_same_deadline_here(self) -> None:
        """A try that fails over to this node's own instance gets what is left of the budget too."""
        b = self.balancer("round_robin", instances=[("b", 1, 1)], local=True)
        remote = FakeRemote()
        here: list[CallTarget] = []

        def local(target: CallTarget) -> str:
            here.append(target)
            return "a"

        original = self.target(timeout=10)
        d = b.call(original, remote, local)
        if not remote.calls:  # (the turn was this node's own, answered at once: the next is b's)
            self.assertEqual(d, "a")
            here.clear()
            d = b.call(original, remote, local)
        self.clock.advance(4)
        remote.pending.pop("b").errback(NodeUnreachable("gone"))
        self.assertEqual(self.successResultOf(d), "a")
        self.assertEqual([t.timeout for t in here], [6])
        self.assertEqual(original.timeout, 10)

    def test_last_error_when_all_fail(self) -> None:
        """When every instance refuses, the caller gets the last refusal, each tried once."""
        b = self.balancer("round_robin")
        remote = FakeRemote()
        remote.answers = {"b": NodeUnreachable("b gone"), "c": NodeUnreachable("c gone")}
        d = b.call(self.target(), remote, no_local)
        self.assertIn("c gone", self.failureResultOf(d, NodeUnreachable).value.message)
        self.assertEqual(remote.nodes(), ["b", "c"])

    def test_cancel_reaches_the_try(self) -> None:
        """Cancelling the call cancels the try in flight."""
        b = self.balancer("round_robin")
        remote = FakeRemote()
        d = b.call(self.target(), remote, no_local)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(remote.cancelled, ["b"])
        self.assertEqual(remote.nodes(), ["b"])

    def test_open_circuit_skipped_then_trial(self) -> None:
        """After failure_threshold failures an instance is skipped, then tried once."""
        b = self.balancer("round_robin", failure_threshold=2, open_seconds=5.0)
        remote = FakeRemote()
        remote.answers = {"b": NodeUnreachable("gone"), "c": "c"}
        for _ in range(4):
            self.successResultOf(b.call(self.target(), remote, no_local))
        self.assertEqual(b.state("svc", "b"), "open")
        remote.calls.clear()
        for _ in range(3):
            self.successResultOf(b.call(self.target(), remote, no_local))
        self.assertEqual(remote.nodes(), ["c", "c", "c"])
        self.clock.advance(5)
        remote.calls.clear()
        remote.answers["b"] = "b"
        results = [self.successResultOf(b.call(self.target(), remote, no_local)) for _ in "12"]
        self.assertIn("b", results)  # the trial, which closes the circuit
        self.assertEqual(b.state("svc", "b"), "up")

    def test_every_circuit_open(self) -> None:
        """With every instance's circuit open, a call fails at once with -32005."""
        b = self.balancer("round_robin", failure_threshold=1)
        remote = FakeRemote()
        remote.answers = {"b": NodeUnreachable("gone"), "c": NodeUnreachable("gone")}
        self.failureResultOf(b.call(self.target(), remote, no_local), NodeUnreachable)
        with self.assertRaises(Overloaded):
            b.call(self.target(), remote, no_local)

    def test_lost_path_is_not_the_instance(self) -> None:
        """
        Calls in flight through a forwarder that died all fail -32006 at
        once: while the instance is still reachable another way, that is a
        failure of the path, and its circuit stays closed (eight such
        failures had opened it, every call refused -32005 for 5 s); while
        it is not, or when the link lost was the instance's own, they count.
        """
        b = self.balancer("nearest", [("c", 2, 2)], failure_threshold=2)
        remote = FakeRemote()
        for _ in range(8):  # the forwarder f died: c re-routed, still reachable
            d = b.call(self.target(), remote, no_local)
            remote.pending.pop("c").errback(
                OutcomeUnknown("path lost", node_id="a", route=["a", "f"])
            )
            self.failureResultOf(d, OutcomeUnknown)
        self.assertEqual(b.state("svc", "c"), "up")
        remote.answers["c"] = OutcomeUnknown("link to c lost", node_id="f", route=["f", "c"])
        for _ in range(2):
            self.failureResultOf(b.call(self.target(), remote, no_local), OutcomeUnknown)
        self.assertEqual(b.state("svc", "c"), "open")  # (its own link: counted)

    def test_lost_path_counts_when_unreachable(self) -> None:
        """A lost path that leaves the instance out of reach counts against it."""
        b = self.balancer("nearest", [("c", 2, 2)], failure_threshold=2)
        remote = FakeRemote()
        for _ in range(2):
            d = b.call(self.target(), remote, no_local)
            self.laid_out = []  # (the loss left no route to c)
            remote.pending.pop("c").errback(
                OutcomeUnknown("path lost", node_id="a", route=["a", "f"])
            )
            self.failureResultOf(d, OutcomeUnknown)
            self.laid_out = [("c", 2, 2)]
        self.assertEqual(b.state("svc", "c"), "open")

    def test_deadline_passed(self) -> None:
        """A failover after the deadline passed is no try: the call times out."""
        b = self.balancer("round_robin")
        remote = FakeRemote()
        d = b.call(self.target(timeout=2), remote, no_local)
        self.clock.advance(3)
        remote.pending.pop("b").errback(NodeUnreachable("gone"))
        self.failureResultOf(d, NodeUnreachable)
        self.assertEqual(remote.nodes(), ["b"])


class InstanceInfoTests(SynchronousTestCase):
    """A node's instance entry: numbered, told within LOAD_INTERVAL, newer wins."""

    def test_load_told_at_most_every_interval(self) -> None:
        """Load changes close together become one new entry, LOAD_INTERVAL after the last."""
        clock = Clock()
        told: list[int] = []
        info = InstanceInfo("a", clock, on_change=lambda: told.append(info.load_of("a")))
        info.set_load(1)
        info.set_load(2)
        info.set_load(4)
        self.assertEqual(told, [1])
        clock.advance(LOAD_INTERVAL)
        self.assertEqual(told, [1, 4])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_timer_when_nobody_listens(self) -> None:
        """With no routing neighbour, a load change updates the entry at once, with no timer."""
        clock = Clock()
        info = InstanceInfo("a", clock)
        info.listening = lambda: False
        info.set_load(1)
        info.set_load(2)
        self.assertEqual(info.load_of("a"), 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_newer_wins(self) -> None:
        """An entry older than the one held is ignored; a newer one replaces it."""
        info = InstanceInfo("a", Clock())
        told: dict[str, int] = {}
        self.assertTrue(info.take({"b": NodeInfo(10, 3)}, told))
        self.assertFalse(info.take({"b": NodeInfo(9, 7)}, told))
        self.assertEqual(info.load_of("b"), 3)
        self.assertTrue(info.take({"b": NodeInfo(11, 7)}, told))
        self.assertEqual(info.load_of("b"), 7)

    def test_own_entry_not_overwritten(self) -> None:
        """An entry about this node heard from others never replaces its own."""
        info = InstanceInfo("a", Clock())
        self.assertFalse(info.take({"a": NodeInfo(1 << 50, 99)}, {}))
        self.assertEqual(info.load_of("a"), 0)

    def test_changes_for(self) -> None:
        """A neighbour is sent only the entries newer than it holds."""
        info = InstanceInfo("a", Clock())
        told: dict[str, int] = {}
        info.set_load(1)
        info.take({"b": NodeInfo(10, 3)}, {})
        changes, since = info.changes_for(told)
        self.assertEqual(set(changes), {"a", "b"})
        self.assertEqual(info.changes_for(told), ({}, since))
        self.assertEqual(info.changes_for(told, since), ({}, since))

    def test_idle_entries_not_told(self) -> None:
        """An idle node's entry goes only to a neighbour that holds an older, busier one."""
        info = InstanceInfo("a", Clock())
        info.take({"b": NodeInfo(10, 0), "c": NodeInfo(5, 2)}, {})
        changes, _ = info.changes_for({})
        self.assertEqual(changes, {"c": NodeInfo(5, 2)})
        told = {"b": 9}  # it holds b's entry 9, say b busy then
        changes, _ = info.changes_for(told)
        self.assertEqual(changes, {"b": NodeInfo(10, 0), "c": NodeInfo(5, 2)})
        self.assertEqual(told, {"b": 10, "c": 5})

    def test_changes_since(self) -> None:
        """Only the entries changed since a neighbour was last told are looked at, newest too."""
        info = InstanceInfo("a", Clock())
        told: dict[str, int] = {}
        info.take({"b": NodeInfo(10, 3), "c": NodeInfo(5, 1)}, {})
        _, since = info.changes_for(told)
        info.take({"b": NodeInfo(11, 4)}, {})
        info.take({"d": NodeInfo(1, 0)}, told)  # heard from this neighbour: it holds it
        changes, later = info.changes_for(told, since)
        self.assertEqual(changes, {"b": NodeInfo(11, 4)})
        self.assertGreater(later, since)
        # A neighbour first told now (nothing held, since 0) gets every busy entry.
        fresh, _ = info.changes_for({})
        self.assertEqual(set(fresh), {"b", "c"})

    def test_wire_round_trip(self) -> None:
        """info survives encoding: versions, loads and idempotent methods."""
        sync = RegistrySync(seq=4, info={"b": NodeInfo(10, 3, {"svc": ("get",)})})
        envelope = Envelope.create(sync, "a", "b", 0.0)
        back = RegistrySync.from_data(decode(encode(envelope)).data)
        self.assertEqual(back.info, {"b": NodeInfo(10, 3, {"svc": ("get",)})})


class ConfigTests(SynchronousTestCase):
    """[balance] is read and checked."""

    def test_policies(self) -> None:
        """default and per-server policies and the breaker's settings are taken."""
        config = build_config(
            {
                "node_id": "a",
                "balance": {
                    "default": "least_loaded",
                    "servers": {"svc": "random"},
                    "failure_threshold": 2,
                    "open_seconds": 1.5,
                },
            }
        )
        self.assertEqual(config.balance.policy("svc"), "random")
        self.assertEqual(config.balance.policy("other"), "least_loaded")
        self.assertEqual((config.balance.failure_threshold, config.balance.open_seconds), (2, 1.5))

    def test_defaults(self) -> None:
        """Without [balance], nearest with a threshold of 5 and 5 s open."""
        balance = build_config({"node_id": "a"}).balance
        self.assertEqual((balance.default, balance.failure_threshold), ("nearest", 5))
        self.assertEqual(balance.open_seconds, 5.0)

    def test_bad_values(self) -> None:
        """An unknown policy, key or a bad threshold is one clear error."""
        for table, words in [
            ({"default": "fastest"}, "balance.default"),
            ({"servers": {"svc": "x"}}, "balance.servers.svc"),
            ({"failure_threshold": 0}, "failure_threshold"),
            ({"open_seconds": -1}, "open_seconds"),
            ({"policy": "nearest"}, "balance.policy"),
        ]:
            with self.assertRaises(ConfigError) as raised:
                build_config({"node_id": "a", "balance": table})
            self.assertIn(words, str(raised.exception))


class ExposedTests(SynchronousTestCase):
    """@exposed bare and with options."""

    def test_options(self) -> None:
        """The options mark the method; the bare form marks neither."""
        methods = exposed_methods(Where)
        self.assertEqual((methods["where"].idempotent, methods["where"].concurrent), (False, False))
        self.assertTrue(methods["hold_again"].idempotent)
        self.assertTrue(methods["peek"].concurrent)
        self.assertEqual(idempotent_names(Where("x")), ["hold_again"])

    def test_concurrent_beside_a_slow_call(self) -> None:
        """A concurrent method answers while a slow call holds the mailbox; others wait."""
        node = memory_node("solo")
        server = Where("solo")
        node.expose("svc", server)
        slow = node.call("solo", "svc", "hold")
        self.assertEqual(self.successResultOf(node.call("solo", "svc", "peek")), 1)
        queued = node.call("solo", "svc", "where")
        self.assertNoResult(queued)
        server.waiting[0].callback("done")
        self.assertEqual(self.successResultOf(slow), "done")
        self.assertEqual(self.successResultOf(queued), "solo")

    def test_bad_use(self) -> None:
        """@exposed given something not callable says how to use it."""
        with self.assertRaises(TypeError):
            exposed(3)  # type: ignore[call-overload]


class MeshInstancesTests(SynchronousTestCase):
    """Several instances in an in-memory mesh: a is linked to b, c and d, each hosting svc."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_800_000_000)
        self.network = MemoryMesh()

    def mesh(self, policy: str = "round_robin", **balance: Any) -> RelayNode:
        a = memory_node("a", self.reactor, balance={"default": policy, **balance})
        self.servers = {}
        self.nodes = {}
        for name in ("b", "c", "d"):
            node = self.nodes[name] = memory_node(name, self.reactor)
            self.servers[name] = server = Where(name)
            server.node = node
            node.expose("svc", server)
            self.network.link(a, node)
        self.network.settle()
        self.a = a
        return a

    def picks(self, a: RelayNode, count: int) -> list[str]:
        """:returns: where C{count} calls of C{svc.where} from C{a}, one after another, ran."""
        results = []
        for _ in range(count):
            d = a.call(None, "svc", "where")
            self.network.pump()
            results.append(self.successResultOf(d))
        return results

    def test_nested_failure_ran_once(self) -> None:
        """
        A method that fails because a call it made failed with -32002 (no
        route) or -32005 did run: its caller gets -32000 with that error's
        type, and does not fail over to another instance to run it again.
        """
        a = self.mesh()
        for method, args, kind in [
            ("onward", ("nowhere",), "NodeUnreachable"),
            ("onward_async", ("nowhere",), "NodeUnreachable"),
            ("shed", (), "Overloaded"),
        ]:
            with self.subTest(method=method):
                before = sum(server.runs for server in self.servers.values())
                d = a.call(None, "svc", method, *args)
                self.network.pump()
                self.reactor.advance(0)
                self.network.pump()
                error = self.failureResultOf(d, RemoteCallError).value
                self.assertEqual((error.code, error.data["type"]), (-32000, kind))
                after = sum(server.runs for server in self.servers.values())
                self.assertEqual(after - before, 1)
        self.assertEqual(len(self.flushLoggedErrors(NodeUnreachable, Overloaded)), 3)

    def test_nested_timeout_and_answers_from_elsewhere(self) -> None:
        """
        A call the method made timing out (-32001), or failing with an error
        another node answered (-32602 there), is the method's failure,
        -32000: not its own call's timeout (which would count against its
        instance's circuit). A method's own -32602 keeps its code.
        """
        a = self.mesh()
        d = a.call("b", "svc", "onward_within", "c", "hold", 1.0, timeout=30)
        self.network.pump()
        self.network.advance(1.0)
        error = self.failureResultOf(d, RemoteCallError).value
        self.assertEqual((error.code, error.data["type"]), (-32000, "CallTimeout"))
        d = a.call("b", "svc", "onward_within", "c", "where", 5.0, "surplus")
        self.network.pump()
        error = self.failureResultOf(d, RemoteCallError).value
        self.assertEqual((error.code, error.data["type"]), (-32000, "InvalidParams"))
        d = a.call("b", "svc", "refuse_params")
        self.network.pump()
        self.assertEqual(self.failureResultOf(d).value.code, -32602)
        self.flushLoggedErrors()

    def test_round_robin_across_nodes(self) -> None:
        """node.call(None, ...) with round_robin goes to b, c, d in turn."""
        a = self.mesh()
        self.assertEqual(self.picks(a, 6), ["b", "c", "d", "b", "c", "d"])

    def test_builtin_node_server_is_the_nodes_own(self) -> None:
        """
        Whatever the policy, a bare C{node.METHOD} runs on the node called:
        each node's built-in server speaks of that node.
        """
        for policy in ("round_robin", "random", "least_loaded"):
            a = self.mesh(policy)
            for _ in range(4):
                d = a.call(None, "node", "info")
                self.network.pump()
                self.assertEqual(self.successResultOf(d)["node_id"], "a", policy)

    def test_registry_servers_instances(self) -> None:
        """/registry/servers lists every instance with hops, rtt_ms and state."""
        a = self.mesh()
        entries = a.views.servers()["svc"]
        self.assertEqual([e["node_id"] for e in entries], ["b", "c", "d"])
        for entry in entries:
            self.assertEqual((entry["hops"], entry["state"]), (1, "up"))
            self.assertIn("rtt_ms", entry)

    def call_in_flight(self, method: str) -> Deferred[Any]:
        d = self.a.call(None, "svc", method, timeout=30)
        self.network.pump()
        self.assertEqual(len(self.servers["b"].waiting), 1)  # round_robin: b first
        return d

    def test_lost_instance_not_idempotent(self) -> None:
        """A call in flight on an instance whose link dies fails with -32006: it may have run."""
        self.mesh()
        d = self.call_in_flight("hold")
        self.network.link_between("a", "b").cut()
        self.network.pump()
        self.assertEqual(self.failureResultOf(d, OutcomeUnknown).value.code, -32006)
        self.assertEqual(self.servers["c"].runs + self.servers["d"].runs, 0)

    def test_lost_instance_idempotent(self) -> None:
        """An idempotent call in flight on an instance whose link dies runs on another."""
        self.mesh()
        d = self.call_in_flight("hold_again")
        self.network.link_between("a", "b").cut()
        self.network.pump()
        [(name, server)] = [(n, s) for n, s in self.servers.items() if s.waiting and n != "b"]
        server.waiting[0].callback(name)
        self.network.pump()
        self.assertEqual(self.successResultOf(d), name)

    def test_forwarder_lost_circuit_stays_closed(self) -> None:
        """
        Eight calls in flight to an instance through a forwarder that dies
        fail -32006 together; the mesh re-routes through the other, and the
        next call goes there: the instance's circuit stays closed (it had
        opened, and calls were refused -32005 for open_seconds).
        """
        a = memory_node("a", self.reactor, balance={"failure_threshold": 5})
        forwarders = [memory_node(name, self.reactor) for name in ("f1", "f2")]
        target = memory_node("t", self.reactor)
        target.expose("svc", Where("t"))
        for forwarder in forwarders:
            self.network.link(a, forwarder)
            self.network.link(forwarder, target)
        self.network.settle()
        via = a.mesh.router.route("t").path[0]
        calls = [a.call(None, "svc", "where") for _ in range(8)]  # (on their way when...)
        for name in ("a", "t"):
            self.network.link_between(name, via).cut()
        self.network.pump()
        for d in calls:
            self.assertEqual(self.failureResultOf(d, OutcomeUnknown).value.code, -32006)
        self.assertEqual(a.balancer.state("svc", "t"), "up")
        d = a.call(None, "svc", "where")
        self.network.settle()
        self.assertEqual(self.successResultOf(d), "t")

    def test_forwarder_lost_calls_stopped_at_target(self) -> None:
        """
        Calls queued at a target through a forwarder that dies fail -32006
        at the caller, which tells the target (still in reach another way)
        to stop them: they never run, and the next call does not wait
        behind them.
        """
        a = memory_node("a", self.reactor)
        target = memory_node("t", self.reactor)
        server = Where("t")
        target.expose("svc", server)
        for name in ("f1", "f2"):
            forwarder = memory_node(name, self.reactor)
            self.network.link(a, forwarder)
            self.network.link(forwarder, target)
        self.network.settle()
        via = a.mesh.router.route("t").path[0]
        calls = [a.call("t", "svc", "hold") for _ in range(8)]
        self.network.pump()
        self.assertEqual((server.runs, target.servers.queue_depth()), (1, 7))
        for name in ("a", "t"):
            self.network.link_between(name, via).cut()
        self.network.settle()
        for d in calls:
            self.failureResultOf(d, OutcomeUnknown)
        self.assertEqual((server.runs, target.servers.queue_depth()), (1, 0))
        self.assertTrue(server.waiting[0].called)  # the running one: cancelled
        d = a.call("t", "svc", "where")
        self.network.settle()
        self.assertEqual(self.successResultOf(d), "t")

    def versions(self) -> tuple[RelayNode, dict[str, Where]]:
        """a linked to b, c and d, whose svc differ: c's and d's have newer(), b's not."""
        a = memory_node("a", self.reactor, balance={"default": "round_robin"})
        servers: dict[str, Where] = {}
        for name in ("b", "c", "d"):
            node = memory_node(name, self.reactor)
            servers[name] = Where(name) if name == "b" else Newer(name)
            node.expose("svc", servers[name])
            self.network.link(a, node)
        self.network.settle()
        return a, servers

    def test_method_some_instances_lack(self) -> None:
        """
        A method that only some instances expose (a rolling upgrade) goes to
        those: the registry says which.
        """
        a, servers = self.versions()
        to_b = self.network.link_between("a", "b")
        before = len(to_b.sent_by("a", "server_call"))
        for _ in range(6):
            d = a.call(None, "svc", "newer")
            self.network.pump()
            self.assertIn(self.successResultOf(d), ("c", "d"))
        self.assertEqual(len(to_b.sent_by("a", "server_call")), before)  # (none asked b)
        self.assertEqual(servers["c"].runs + servers["d"].runs, 6)

    def test_unknown_method_tried_once(self) -> None:
        """
        A method no instance exposes is tried on one, whose -32003 is the
        answer: it had been tried on every instance in turn, the error
        naming the last.
        """
        a, _ = self.versions()
        sent_before = self.sent_calls(a)
        d = a.call(None, "svc", "nope")
        self.network.pump()
        self.assertEqual(self.failureResultOf(d, NoSuchMethod).value.code, -32003)
        self.assertEqual(self.sent_calls(a) - sent_before, 1)

    def sent_calls(self, a: RelayNode) -> int:
        return sum(
            len(self.network.link_between("a", name).sent_by("a", "server_call"))
            for name in ("b", "c", "d")
        )

    def test_retry_is_a_new_call(self) -> None:
        """A call tried again elsewhere leaves as a new call, with a response id of its own."""
        self.mesh()
        d = self.call_in_flight("hold_again")
        [first] = self.network.link_between("a", "b").sent_by("a", "server_call")
        self.network.link_between("a", "b").cut()
        self.network.pump()
        sent = [
            envelope
            for name in ("c", "d")
            for envelope in self.network.link_between("a", name).sent_by("a", "server_call")
        ]
        self.assertEqual(len(sent), 1)
        self.assertNotEqual(sent[0].response_id, first.response_id)
        self.assertNotEqual(sent[0].id, first.id)
        self.assertNoResult(d)

    def test_client_gone_after_failover(self) -> None:
        """
        An HTTP client that leaves while its call runs on a second instance
        (the first was lost) cancels it there too (SPEC sections 11, 12).
        """
        self.mesh()
        self.client_gone_after_failover({"jsonrpc": "2.0", "method": "svc.hold_again", "id": 1})

    def test_client_gone_after_failover_batch(self) -> None:
        """The same for a call of a batch."""
        self.mesh()
        self.client_gone_after_failover(
            [
                {"jsonrpc": "2.0", "method": "svc.hold_again", "id": 1},
                {"jsonrpc": "2.0", "method": "node.ping", "id": 2},
            ]
        )

    def client_gone_after_failover(self, request: Any) -> None:
        connection = RawConnection(self.a.site(), self.reactor)
        self.addCleanup(connection.lose)
        connection.post(b"/rpc", json.dumps(request).encode())
        self.network.pump()
        self.assertEqual(len(self.servers["b"].waiting), 1)
        self.network.link_between("a", "b").cut()
        self.network.pump()
        [retry] = [d for n, s in self.servers.items() if n != "b" for d in s.waiting]
        self.assertFalse(retry.called)
        connection.lose()
        self.network.pump()
        self.assertTrue(retry.called)  # cancelled at its target
        self.assertEqual(connection.transport.value(), b"")

    def test_unreachable_instance_fails_over(self) -> None:
        """An instance that cannot be reached (its link closed before the call) is skipped."""
        a = self.mesh("nearest")
        self.network.link_between("a", "b").cut()
        self.network.pump()
        self.assertLessEqual(set(self.picks(a, 4)), {"c", "d"})

    def test_load_reaches_callers(self) -> None:
        """A busy instance's load reaches callers within LOAD_INTERVAL; least_loaded avoids it."""
        a = self.mesh("least_loaded")
        busy = memory_node("x", self.reactor)  # a caller of b besides a
        self.network.link(busy, self.nodes["b"])
        self.network.settle()
        for _ in range(4):
            busy.call("b", "svc", "hold")
        self.network.pump()
        self.assertEqual(self.nodes["b"].servers.busy, 4)  # one running, three queued
        self.network.advance(LOAD_INTERVAL)
        self.network.settle()
        self.assertEqual(a.mesh.info.load_of("b"), 4)
        self.assertEqual(set(self.picks(a, 6)), {"c", "d"})

    def test_idempotent_methods_advertised(self) -> None:
        """Each node tells its idempotent methods; the caller knows them without calling."""
        a = self.mesh()
        self.assertTrue(a.mesh.info.is_idempotent("c", "svc", "hold_again"))
        self.assertFalse(a.mesh.info.is_idempotent("c", "svc", "hold"))

    def test_quiet_when_idle(self) -> None:
        """An idle mesh sends no adverts: instance entries go out only when they change."""
        a = self.mesh()
        frames = a.mesh.adverts.writer.frames_sent
        self.network.advance(30)
        self.assertEqual(a.mesh.adverts.writer.frames_sent, frames)

    def test_open_instance_in_registry(self) -> None:
        """An instance whose circuit opened shows state "open" in /registry/servers."""
        a = self.mesh("round_robin", failure_threshold=1)
        a.balancer.outcome("svc", "c", NodeUnreachable("gone"))
        states = {e["node_id"]: e["state"] for e in a.views.servers()["svc"]}
        self.assertEqual(states, {"b": "up", "c": "open", "d": "up"})

    def test_local_instance_circuit(self) -> None:
        """
        The local instance has a circuit too: its calls' timeouts open it,
        and calls skip it while it is open.
        """
        a = self.mesh("round_robin", failure_threshold=1)
        local = Where("a")
        a.expose("svc", local)
        d = a.call(None, "svc", "hold", timeout=1)  # round_robin: a first
        self.assertEqual(len(local.waiting), 1)
        self.network.advance(1.5)
        self.failureResultOf(d, CallTimeout)
        self.assertEqual(a.balancer.state("svc", "a"), "open")
        self.assertEqual(set(self.picks(a, 6)), {"b", "c", "d"})

    def test_timeout_counts(self) -> None:
        """A call timing out on an instance counts as its failure (-32001)."""
        a = self.mesh("round_robin", failure_threshold=1)
        d = a.call(None, "svc", "hold", timeout=1)
        self.network.advance(1.5)
        self.failureResultOf(d, CallTimeout)
        self.assertEqual(a.balancer.state("svc", "b"), "open")
