# -*- test-case-name: tests.test_protocol.ClosingHandshakeTests -*-
"""
Autobahn's protocol timers (the opening and closing handshakes' timeouts)
on the factory's own reactor, at the delay asked.

Autobahn hands them to txaio's batched timer, which files each deadline
under its whole second: a timeout of 1 s fires anywhere from 0 to 1 s
after it is set (0.05 s for one set at x.95 s), and always on the global
reactor, whatever reactor the factory was given. The closing handshake's
second (C{closeHandshakeTimeout}) then often ran out before the peer's
answer could come back, and a link removed on purpose, which both ends
heard, was taken by the remover for a broken one: it numbered itself anew
(as after a failure, L{relaytx._adverts}), and counted the loss as
C{closed}, not C{removed}.

A timeout that fires L{STALL} or more late (this node's reactor was held
up: starved of CPU, or busy with a long piece of work) is given its delay
once more, from then on: the reactor runs its timers before it reads its
sockets, so the answer it waited for may be there, unread, and the peer
is owed the time it was given, of a reactor that reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from relaytx._liveness import STALL


class _Timeout:
    """One of Autobahn's timeouts: what it calls C{cancel} on."""

    def __init__(self, reactor: IReactorTime, delay: float, expired: Callable[[], object]) -> None:
        self._reactor = reactor
        self._delay = delay
        self._expired = expired
        self._due = reactor.seconds() + delay
        self._extended = False
        self._call: IDelayedCall = reactor.callLater(delay, self._fire)

    def _fire(self) -> None:
        now = self._reactor.seconds()
        if not self._extended and now - self._due >= STALL:
            self._extended = True
            self._due = now + self._delay
            self._call = self._reactor.callLater(self._delay, self._fire)
            return
        self._expired()

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class ReactorTimers:
    """
    Stands in for an Autobahn factory's C{_batched_timer}: each C{call_later}
    is a timer of the reactor's own, due after exactly C{delay} seconds
    (see the module docstring).
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, func: Callable[..., object], *args: Any) -> _Timeout:
        return _Timeout(self._reactor, delay, lambda: func(*args))


def use_reactor_timers(factory: Any) -> None:
    """Give an Autobahn factory's connections exact timers, on its reactor."""
    factory._batched_timer = ReactorTimers(factory.reactor)
