"""
Streamed results (SPEC section 12): a progress feed and a log tail.

    relay node --node-id n1 --port 8080 --app examples/feeds.py

  - C{jobs.crunch(steps=10, delay=0.1)}: a job that yields a progress
    update after each step, then its result;
  - C{logs.tail(path, lines=10)}: the last lines of a file under the
    node's working directory, then each new line as it is written, until
    the caller stops reading (the generator's C{finally} runs then).

Read them item by item with C{node.stream} inside a node, on C{/ws/rpc}
(C{$/stream} notifications), or with C{relaytx.client}::

    async with relaytx.client.connect("http://127.0.0.1:8080") as c:
        async for update in c.stream("jobs", "crunch", 5):
            print(update)

C{POST /rpc} answers the whole list at once (bounded by the message size
limit), so C{logs.tail}, which never ends, is for streams only.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from relaytx import Server, exposed


class Jobs(Server):
    """Work that reports its progress as it goes."""

    _log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    @exposed
    async def crunch(self, steps: int = 10, delay: float = 0.1) -> Any:
        """Yield C{{"step", "of", "percent"}} after each of C{steps} steps, then C{{"result"}}."""
        if not isinstance(steps, int) or not 0 < steps <= 10_000:
            raise ValueError("steps must be an integer from 1 to 10000")
        total = 0
        try:
            for step in range(1, steps + 1):
                await deferLater(self._clock, delay, lambda: None)
                total += step * step
                yield {"step": step, "of": steps, "percent": round(100 * step / steps)}
            yield {"result": total}
        finally:
            self._log.info("crunch of {steps} steps ended", steps=steps)


class Logs(Server):
    """A file's last lines, then its new ones (C{tail -f})."""

    def __init__(self, clock: IReactorTime, root: str = ".", poll: float = 0.2) -> None:
        self._clock = clock
        self._root = os.path.realpath(root)
        self._poll = poll

    def _path(self, path: str) -> str:
        full = os.path.realpath(os.path.join(self._root, path))
        if os.path.commonpath([full, self._root]) != self._root:
            raise ValueError(f"{path!r} is outside the node's directory")
        return full

    @exposed
    async def tail(self, path: str, lines: int = 10) -> Any:
        """Yield the last C{lines} lines of C{path}, then every line added to it."""
        with open(self._path(path), "rb") as f:
            for line in deque(f, maxlen=max(0, lines)):
                yield line.decode(errors="replace").rstrip("\n")
            pending = b""
            while True:
                chunk = f.read(65536)
                if not chunk:
                    await deferLater(self._clock, self._poll, lambda: None)
                    continue
                pending += chunk
                *whole, pending = pending.split(b"\n")
                for line in whole:
                    yield line.decode(errors="replace")


def setup(node: Any) -> None:
    node.expose("jobs", Jobs(node.clock))
    node.expose("logs", Logs(node.clock))
