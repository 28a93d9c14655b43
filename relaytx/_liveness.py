# -*- test-case-name: tests.test_liveness -*-
"""
L{LinkWatch}: notices a neighbour that has stopped answering (its process
frozen, a cable pulled, a partition: no FIN, no RST), on the node's clock,
with one timer for the whole node.

The rule is about requests, not about silence: a link is only expected to
carry something back after it carried a request out. A request is a ping
(the keepalive every C{ping_interval}, or a probe) or a call (this node's
own, or one it forwards). Each session records when the first request left
since it last heard anything at all from its peer (C{waiting_since}; any
frame clears it) and until when calls sent on it may still be outstanding
(C{busy_until}, their deadlines). While some session waits or is busy, the
watch ticks every C{peer_timeout / 25} seconds and, for each of them:

  - B{probe}: a request unanswered for C{peer_timeout / 5}, or a link with
    calls outstanding that has been quiet for C{peer_timeout * 0.32}, gets
    a ping (at most one per request, or per quiet spell);
  - B{suspect}: a request unanswered for C{peer_timeout} makes the link a
    suspect. The verdict waits for the reactor's next turn, which reads
    whatever the peer's frames are doing in this node's socket buffers: a
    node that was itself stalled (starved of CPU, paused, collecting
    garbage) finds its peers' answers there and drops no one for its own
    lateness. A suspect that still has not been heard from is dropped:
    its link is aborted, and everything sent through it fails at once.

So, with the default C{peer_timeout} of 1.25 s, a neighbour that stops
answering is dropped:

  - within C{peer_timeout} plus two ticks (1.35 s) of the first call sent
    to it after it stopped: on a link in use, within about that of the
    fault;
  - within 1.85 s of the last frame it sent, on a link whose calls are all
    outstanding and quiet (a quiet spell of 0.4 s, a probe, 1.25 s, two
    ticks);
  - within C{ping_interval} plus 1.35 s (6.35 s by default) on an idle link,
    which only the keepalive pings test: an idle link costs no more pings
    than before.

A peer that answers, however slowly within C{peer_timeout}, stays linked:
a busy link hears something at every call, and a briefly slow one answers
its probe. A peer whose own reactor is blocked for longer than
C{peer_timeout} (a method that computes for seconds without yielding)
cannot be told from a frozen one, and is dropped.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: A neighbour that leaves a request unanswered (hearing nothing from it at
#: all) for this many seconds is dropped.
DEFAULT_PEER_TIMEOUT = 1.25

#: Fractions of the peer timeout: the tick, the probe of an unanswered
#: request, and the probe of a quiet link with calls outstanding.
TICK_SHARE = 1 / 25
PROBE_SHARE = 1 / 5
QUIET_SHARE = 0.32

#: Seconds after a tick that finds suspects that the verdict comes: a
#: timer this short runs once the reactor has polled its sockets (on a
#: test clock too, unlike one of zero seconds).
VERDICT_DELAY = 0.001

#: Times compared with the thresholds are sums of floats: this much short
#: of a threshold counts as reaching it.
_SLACK = 1e-6


class LinkWatch:
    """
    The watch over a node's links (see the module docstring).

    The sessions it watches provide C{closed}, C{last_seen},
    C{waiting_since}, C{probed_at}, C{busy_until} and C{watched}, and the
    methods C{probe(now)} and C{silent(waited)}; L{relaytx.peer.PeerSession}
    does.

    :param clock: the node's clock.
    :param peer_timeout: seconds a request may go unanswered.
    """

    def __init__(self, clock: IReactorTime, peer_timeout: float = DEFAULT_PEER_TIMEOUT) -> None:
        if not peer_timeout > 0:
            raise ValueError(f"peer_timeout must be positive, not {peer_timeout!r}")
        self._clock = clock
        self.peer_timeout = peer_timeout
        self.tick = peer_timeout * TICK_SHARE
        self.probe_after = peer_timeout * PROBE_SHARE
        self.quiet_after = peer_timeout * QUIET_SHARE
        self._watched: set[Any] = set()
        self._timer: IDelayedCall | None = None
        self._verdicts: list[IDelayedCall] = []
        self._stopped = False

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, session: Any) -> None:
        """
        Watch C{session} until it has nothing outstanding: a request just
        left on it (it set C{waiting_since}, or C{busy_until}).
        """
        if self._stopped:
            return
        self._watched.add(session)
        if self._timer is None:
            self._timer = self._clock.callLater(self.tick, self._tick)

    def stop(self) -> None:
        """Watch nothing more (the node is stopping)."""
        self._stopped = True
        for session in self._watched:
            session.watched = False
        self._watched.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for verdict in self._verdicts:
            if verdict.active():
                verdict.cancel()
        self._verdicts.clear()

    def _tick(self) -> None:
        self._timer = None
        now = self._clock.seconds() + _SLACK
        timeout = self.peer_timeout
        suspects = []
        done = []
        for session in self._watched:
            if session.closed:
                done.append(session)
                continue
            since = session.waiting_since
            if since is None:  # heard from since the last request
                if now < session.busy_until:
                    if now - session.last_seen >= self.quiet_after:
                        session.probe(now - _SLACK)  # calls outstanding on a quiet link
                    continue
                done.append(session)
                continue
            waited = now - since
            if waited >= timeout:
                suspects.append(session)
            elif waited >= self.probe_after and session.probed_at < since:
                session.probe(now - _SLACK)
        for session in done:
            session.watched = False
            self._watched.discard(session)
        if suspects:
            # After the reactor has read what is waiting on the sockets.
            self._verdicts = [v for v in self._verdicts if v.active()]
            self._verdicts.append(self._clock.callLater(VERDICT_DELAY, self._verdict, suspects))
        if self._watched:
            self._timer = self._clock.callLater(self.tick, self._tick)

    def _verdict(self, suspects: list[Any]) -> None:
        now = self._clock.seconds() + _SLACK
        for session in suspects:
            since = session.waiting_since
            if session.closed or since is None:
                continue
            if now - since >= self.peer_timeout:
                session.silent(now - _SLACK - since)
