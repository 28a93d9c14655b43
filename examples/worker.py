"""
A worker app to run on several nodes (SPEC section 11):
C{relay node --app examples/worker.py} exposes C{worker} with

  - C{work(seconds)}: waits that long, counts the job, returns the node
    that did it (not idempotent: each call is one more job);
  - C{lookup(key)}: the node's answer for C{key} after a short wait
    (idempotent: a call whose outcome is unknown may run again elsewhere);
  - C{spin(n)}: a CPU-bound sum of C{n} squares (for throughput figures);
  - C{stats()}: jobs done so far (concurrent: answers beside a slow call).

With C{[balance] default = "round_robin"} in the callers' config, calls to
C{worker.*} spread over every node running it, and fail over when one
goes down.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import deferLater

from relaytx import Server, exposed


class Worker(Server):
    """One instance of the worker; C{node_id} names the node it runs on."""

    def __init__(self, node_id: str = "") -> None:
        self.node_id = node_id
        self.jobs = 0

    @exposed
    async def work(self, seconds: float = 0.0) -> str:
        """Wait C{seconds}, count one job, return this node's id."""
        from twisted.internet import reactor

        await deferLater(reactor, seconds, lambda: None)
        self.jobs += 1
        return self.node_id

    @exposed(idempotent=True)
    async def lookup(self, key: str, seconds: float = 0.01) -> dict[str, Any]:
        """After C{seconds}, return C{key} and the node that answered."""
        from twisted.internet import reactor

        await deferLater(reactor, seconds, lambda: None)
        return {"key": key, "node_id": self.node_id}

    @exposed(idempotent=True)
    def spin(self, n: int = 100_000) -> int:
        """Return the sum of the squares below C{n} (CPU-bound)."""
        return sum(i * i for i in range(n))

    @exposed(concurrent=True)
    def stats(self) -> dict[str, Any]:
        """Return this node's id and the jobs it has done."""
        return {"node_id": self.node_id, "jobs": self.jobs}


def setup(node: Any) -> None:
    node.expose("worker", Worker(node.node_id))
