"""
Tests for the streaming example C{examples/feeds.py}: its progress feed and
log tail, streamed through L{RelayNode.stream} on a fake reactor.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx.config import build_config
from relaytx.errors import RemoteCallError
from relaytx.node import RelayNode
from tests.support import TempDirMixin

FEEDS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "feeds.py"
)


class FeedsTests(TempDirMixin, SynchronousTestCase):
    """examples/feeds.py: jobs.crunch and logs.tail."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.node = RelayNode(build_config({"node_id": "n1"}), self.clock)
        self.successResultOf(self.node.load_app(FEEDS))

    def read(self, server: str, method: str, *args: Any, until: int | None = None) -> Any:
        """Stream into a list (stopping after C{until} items); :returns: it and the reader."""
        got: list[Any] = []

        async def read() -> None:
            async for item in self.node.stream(None, server, method, *args):
                got.append(item)
                if until is not None and len(got) == until:
                    break

        return got, ensureDeferred(read())

    def test_crunch_progress(self) -> None:
        """crunch yields one update per step as time passes, then its result."""
        got, done = self.read("jobs", "crunch", 4, 0.5)
        self.assertEqual(got, [])
        self.clock.advance(0.5)
        self.assertEqual(got, [{"step": 1, "of": 4, "percent": 25}])
        for _ in range(3):
            self.clock.advance(0.5)
        self.successResultOf(done)
        self.assertEqual(got[-1], {"result": 1 + 4 + 9 + 16})
        self.assertEqual(len(got), 5)

    def test_crunch_as_one_list(self) -> None:
        """A plain call gets every update and the result in one list."""
        d = self.node.call(None, "jobs", "crunch", 2, 0.1)
        self.clock.advance(0.1)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d)[-1], {"result": 5})

    def test_crunch_bad_steps(self) -> None:
        """A bad step count fails the call (-32000)."""
        d = self.node.call(None, "jobs", "crunch", 0)
        self.assertIsInstance(self.failureResultOf(d).value, RemoteCallError)
        self.flushLoggedErrors(ValueError)

    def test_tail_follows(self) -> None:
        """tail yields the last lines, then lines written later; break stops it."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("one\ntwo\nthree\n")
        self.node.servers.server("logs")._root = os.path.dirname(path)
        got, done = self.read("logs", "tail", os.path.basename(path), 2, until=4)
        self.assertEqual(got, ["two", "three"])
        with open(path, "a") as f:
            f.write("four\nfi")
        self.clock.advance(0.2)
        self.assertEqual(got, ["two", "three", "four"])
        with open(path, "a") as f:
            f.write("ve\n")
        self.clock.advance(0.2)
        self.successResultOf(done)
        self.assertEqual(got, ["two", "three", "four", "five"])
        self.clock.advance(0)  # the cancel of the abandoned stream
        self.assertFalse(self.clock.getDelayedCalls())  # the generator stopped polling

    def test_tail_outside(self) -> None:
        """A path outside the node's directory is refused."""
        d = self.node.call(None, "logs", "tail", "../../etc/passwd")
        self.assertIn("outside", self.failureResultOf(d).value.message)
        self.flushLoggedErrors(ValueError)
