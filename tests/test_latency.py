# -*- test-case-name: tests.test_latency -*-
"""
Tests for L{relaytx._latency}: link costs from round trips, with the rules
that keep them still.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from relaytx._latency import FIRST_STEP, UNIT, WINDOW, LinkCosts, step_of

FAST = 0.0005  # a loopback round trip


def filled(costs: LinkCosts, peer: str, rtt: float) -> dict[str, int]:
    """Feed C{peer} a whole window of C{rtt}; :returns: the changes, merged."""
    changes: dict[str, int] = {}
    for _ in range(WINDOW):
        changes.update(costs.sample(peer, rtt))
    return changes


class StepTests(SynchronousTestCase):
    """The coarse steps of extra cost."""

    def test_steps(self) -> None:
        """Below the first step nothing; then powers of two, rounded down."""
        self.assertEqual(
            [step_of(u) for u in (0, 1.9, 2, 3.9, 4, 7.9, 8, 100)], [0, 0, 2, 2, 4, 4, 8, 64]
        )
        self.assertEqual(step_of(1e9), 1024)


class LinkCostTests(SynchronousTestCase):
    """Costs relative to the node's fastest link."""

    def setUp(self) -> None:
        self.costs = LinkCosts()
        for peer in ("a", "b"):
            self.costs.add(peer)
        filled(self.costs, "a", FAST)

    def test_fast_links_cost_one(self) -> None:
        """Links as fast as each other cost 1; untracked links cost 1."""
        self.assertEqual(filled(self.costs, "b", FAST * 3), {})
        self.assertEqual((self.costs.cost("a"), self.costs.cost("b")), (1, 1))
        self.assertEqual(self.costs.cost("nobody"), 1)
        self.assertEqual(self.costs.sample("nobody", 5.0), {})

    def test_slow_link_costs_more(self) -> None:
        """A link 200 ms slower than the fastest costs 17 once its window is full."""
        for _ in range(WINDOW - 1):
            self.assertEqual(self.costs.sample("b", 0.2), {})
        self.assertEqual(self.costs.sample("b", 0.2), {"b": 17})
        self.assertEqual(self.costs.cost("b"), 17)

    def test_one_fast_answer_brings_it_down(self) -> None:
        """A single fast round trip lowers the cost at once."""
        filled(self.costs, "b", 0.2)
        self.assertEqual(self.costs.sample("b", FAST), {"b": 1})

    def test_now_and_then_slow_is_not_slow(self) -> None:
        """A link slow at some pings but not all of a window keeps its cost."""
        for rtt in [0.3, 0.3, FAST, 0.3, 0.3, 0.3, FAST, 0.3]:
            self.assertEqual(self.costs.sample("b", rtt), {}, rtt)

    def test_busy_node_sees_no_slow_link(self) -> None:
        """When every link is slow alike (the node itself is busy), none costs more."""
        rng = random.Random(5)
        for _ in range(40):
            for peer in ("a", "b"):
                self.assertEqual(self.costs.sample(peer, 0.4 + rng.random() * 0.01), {})

    def test_margin_stops_toggling(self) -> None:
        """A round trip wobbling around a step's edge does not move the cost back and forth."""
        edge = 4 * UNIT  # the edge between steps 2 and 4
        filled(self.costs, "b", FAST + edge * 1.3)
        self.assertEqual(self.costs.cost("b"), 5)
        for wobble in [0.95, 1.05, 0.9, 1.1, 0.8, 1.2]:
            self.assertEqual(self.costs.sample("b", FAST + edge * wobble), {}, wobble)

    def test_baseline_moves(self) -> None:
        """When the fastest link goes, the others are judged against the next fastest."""
        self.costs.add("c")
        filled(self.costs, "b", 0.2)
        filled(self.costs, "c", 0.2)
        self.assertEqual((self.costs.cost("b"), self.costs.cost("c")), (17, 17))
        self.assertEqual(self.costs.remove("a"), {"b": 1, "c": 1})
        self.assertEqual(self.costs.remove("a"), {})

    def test_first_step(self) -> None:
        """An extra round trip under the first step, with its margin, costs nothing."""
        filled(self.costs, "b", FAST + FIRST_STEP * UNIT * 1.2)
        self.assertEqual(self.costs.cost("b"), 1)
        filled(self.costs, "b", FAST + FIRST_STEP * UNIT * 1.3)
        self.assertEqual(self.costs.cost("b"), 3)
