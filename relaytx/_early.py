# -*- test-case-name: tests.test_tap -*-
"""
Stop signals that come while a node starts: before its reactor runs and
puts its own handlers in place.

Python's default SIGINT handler raises KeyboardInterrupt wherever start-up
happens to be (inside a weakref callback, CPython swallows it and start-up
goes on: the node served as if never told to stop), and SIGTERM's default
ends the process by the signal. From L{hold} on, both are only noted
(L{heard}), and the node stops as soon as its reactor runs
(L{relaytx.tap.stop_signals_before_running}), as it does for a signal
after that. Light on purpose: C{relay node} holds them before it imports
anything else; under twistd they are held from the moment twistd imports
the node's module.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

TYPE_CHECKING = False  # (typing itself is not imported: relay call's start-up time)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["heard", "hold", "holds", "release"]

#: The stop signals noted since L{hold}, in order.
heard: list[int] = []

#: The handlers L{hold} replaced, by signal.
_replaced: dict[int, Any] = {}


def _note(signum: int, frame: Any) -> None:
    heard.append(signum)


def hold() -> None:
    """
    Note SIGTERM and SIGINT from now on, in a process that does not run
    its reactor yet (from its main thread; otherwise nothing changes).
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if getattr(reactor, "running", False):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.signal(signum, _note)
        if previous is not _note:
            _replaced[signum] = previous


def release() -> None:
    """
    Put back the handlers L{hold} replaced where they are still its own: a
    start-up that ends before any reactor runs (bad options, in a process
    that goes on: a test, a program that embeds C{relay node}).
    """
    for signum, previous in list(_replaced.items()):
        if holds(signal.getsignal(signum)):
            signal.signal(signum, previous)
        del _replaced[signum]


def holds(handler: object) -> bool:
    """:returns: whether C{handler} is the one L{hold} puts in place."""
    return handler is _note


if os.path.basename(sys.argv[0]) == "twistd":
    # Imported by relaytx.tap, which twistd imports once it reads that its
    # app is relay, before the node's own start-up: hold from here (the
    # import itself, some 0.1-0.5 s, was where a SIGINT went missing).
    hold()
