# -*- test-case-name: tests.test_liveness -*-
"""
L{LinkWatch}: notices a neighbour that has stopped answering (its process
frozen, a cable pulled, a partition: no FIN, no RST), on the node's clock.

The rule is about requests, not about silence: a link is only expected to
carry something back after it carried a request out. A request is a ping
(the keepalive every C{ping_interval}, a probe, or an idle link's nudge)
or a call (this node's own, or one it forwards). Each session records when
the first request left since it last heard anything at all from its peer
(C{waiting_since}; any bytes clear it; a stream's item sent towards its
reader counts as a request too) and until when calls sent on it may still
be outstanding (C{busy_until}, their deadlines). While some session waits
or is busy, the watch ticks every C{peer_timeout / 25} seconds and, for
each of them:

  - B{probe}: a request unanswered for C{peer_timeout / 5}, or a link with
    calls outstanding that has been quiet for C{peer_timeout * 0.32}, gets
    a ping (at most one per request, or per quiet spell). A quiet link
    whose calls have all been answered (C{calls_out()} says none is
    waiting) is not probed, and leaves the watch: a deadline is only the
    latest its calls could take;
  - B{suspect}: a request unanswered for C{peer_timeout} makes the link a
    suspect. The verdict comes a millisecond later, once the reactor has
    read what is waiting in this node's socket buffers: a suspect heard
    from meanwhile is spared; one still silent is dropped (its link
    aborted, everything sent through it failed at once).

An idle link carries no request of its own but the keepalive, so the
watch also B{nudges} a link it has heard nothing from for C{idle_after}
(C{peer_timeout * 0.36}, 0.45 s): a WebSocket ping (RFC 6455 section
5.5.2: a WebSocket answers it with a pong), a request like any other; an
original-design node gets a C{ping} of its own shape, which SPEC has it
answer, where a minimal WebSocket might not answer the other. The watch
looks at its links when the first of them falls due, and nudges with it
those due within a quarter of C{idle_after} more (never later than due),
so that links falling due together share one wake-up of the process. Both
ends of a link nudge, and whichever nudges first is heard by the other,
which then has no need to: an idle link carries about two small control
frames every half second, and no JSON. What a node spends on nudges is
bounded: past C{IDLE_BUDGET} nudges a second (1,000: some 335 links
nudged as early as they may be), each link is nudged less often, and from
3,750 links on (at the default C{ping_interval} of 5 s) only the
keepalive tests an idle link, as it did before nudges (a hub holding
thousands of links would otherwise spend a core on them).

This node's own stalls are not counted against its peers (the "local
health" idea of SWIM's Lifeguard extensions). A tick that runs more than
C{STALL} (0.1 s) late means this process did not run for that long
(starved of CPU, paused, the machine itself stalled): the time lost is
credited to every wait under way. After a stall of more than
C{GRACE_AFTER} (a quarter of a second), the waits that were under way
when it ended get twice the timeout, for at most C{GRACE} (4 peer
timeouts, 5 s): peers on the same machine were stalled too, and need a
moment to catch up with what they had been sent. Requests sent once this
node runs again are judged by the usual timeout, so a stall does not
slow the detection of a fault that comes after it.

So, with the default C{peer_timeout} of 1.25 s and a node that is not
itself stalled (and was not, while the request was out), a neighbour that
stops answering is dropped (SPEC section 8 asks 2 s):

  - within C{peer_timeout} and a tick (1.3 s) of the first call sent to it
    after it stopped: on a link in use, within about that of the fault;
  - within 1.75 s of the last frame it sent, on a link whose calls are all
    outstanding and quiet (a quiet spell of 0.4 s and a tick to the probe,
    then 1.25 s and a tick);
  - within 1.75 s of the last bytes it sent, on an idle link (a quiet
    spell of 0.45 s to the nudge, then 1.25 s and a tick), on a node of
    up to 335 links (and within 2 s up to 525); on a node of more, within
    its nudge interval (links / 750 s) and 1.3 s, or C{ping_interval} and
    1.3 s from 3,750 links on.

A peer that answers, however slowly within C{peer_timeout}, stays linked:
a busy link hears something at every call, and a briefly slow one answers
its probe. A peer whose own reactor is blocked for longer than
C{peer_timeout} (a method that computes for seconds without yielding)
cannot be told from a frozen one, and is dropped. A node that is itself
slow all the time (each tick late) finds silent peers more slowly, in
proportion: it credits them the time it loses.
"""

from __future__ import annotations

from collections.abc import Mapping
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

#: The share of the peer timeout an idle link may be quiet before it is
#: nudged, and the share of that by which it may be nudged early, to share
#: a scan of the links with another (and the least time between scans).
IDLE_SHARE = 0.36
SCAN_SHARE = 1 / 4

#: Nudges a node sends a second, at most: past this many times C{idle_after}
#: links each is nudged less often, and from this many times the ping
#: interval on, not at all (the keepalive tests an idle link).
IDLE_BUDGET = 1000

#: Seconds between looks at the number of links while there are too many
#: to nudge.
RECOUNT = 1.0

#: Seconds after a tick that finds suspects that the verdict comes: a
#: timer this short runs once the reactor has polled its sockets (on a
#: test clock too, unlike one of zero seconds).
VERDICT_DELAY = 0.001

#: Times compared with the thresholds are sums of floats: this much short
#: of a threshold counts as reaching it.
_SLACK = 1e-6

#: A tick this many seconds late (or more) is a stall of this node's own:
#: its lateness, less a tick, is credited to the waits under way.
STALL = 0.1

#: After a stall of this many seconds, the waits under way when it ended
#: get twice the timeout, for at most GRACE peer timeouts.
GRACE_AFTER = 0.25
GRACE = 4


class LinkWatch:
    """
    The watch over a node's links (see the module docstring).

    The sessions it watches provide C{closed}, C{last_seen},
    C{waiting_since}, C{probed_at}, C{busy_until} and C{watched}, and the
    methods C{calls_out()}, C{probe(now)}, C{nudge(now)} and
    C{silent(waited)}; L{relaytx.peer.PeerSession} does.

    :param clock: the node's clock.
    :param peer_timeout: seconds a request may go unanswered.
    :param links: the node's sessions by peer id, as they come and go, to
        nudge those that are idle (L{linked} starts the scans); none, no
        nudges.
    :param ping_interval: seconds between the keepalives of an idle link:
        a link is never nudged less often than that.
    """

    def __init__(
        self,
        clock: IReactorTime,
        peer_timeout: float = DEFAULT_PEER_TIMEOUT,
        links: Mapping[str, Any] | None = None,
        ping_interval: float = 5.0,
    ) -> None:
        if not peer_timeout > 0:
            raise ValueError(f"peer_timeout must be positive, not {peer_timeout!r}")
        self._clock = clock
        self.peer_timeout = peer_timeout
        self.tick = peer_timeout * TICK_SHARE
        self.probe_after = peer_timeout * PROBE_SHARE
        self.quiet_after = peer_timeout * QUIET_SHARE
        self.idle_after = peer_timeout * IDLE_SHARE
        self.ping_interval = ping_interval
        self._links: Mapping[str, Any] = {} if links is None else links
        self._scanner: IDelayedCall | None = None
        self._watched: set[Any] = set()
        self._timer: IDelayedCall | None = None
        self._verdicts: list[IDelayedCall] = []
        self._stopped = False
        #: when the pending tick is due (its lateness tells of stalls)
        self._due = 0.0
        #: after a stall of this node's: when it ended (waits begun by then
        #: get twice the timeout) and until when that grace lasts
        self._stall_end = float("-inf")
        self._grace_until = float("-inf")

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
        self._look_within(self.tick)

    def _look_within(self, delay: float) -> None:
        # The tick comes within delay: armed, or brought forward.
        if self._timer is None:
            self._arm(delay)
        elif self._due > self._clock.seconds() + delay + _SLACK:
            self._timer.cancel()
            self._arm(delay)

    def nudge_after(self, links: int) -> float | None:
        """
        :returns: how long a link may be idle before it is nudged, on a
            node of C{links} links, within the budget of nudges; C{None}
            when the keepalive comes as soon (too many links, or a short
            ping interval).
        """
        # (A link may be nudged a scan's spacing early: the budget holds then too.)
        after = max(self.idle_after, links / (IDLE_BUDGET * (1 - SCAN_SHARE)))
        return after if after < self.ping_interval else None

    def linked(self) -> None:
        """A link opened: scan the idle ones, if that is not under way."""
        if self._scanner is None and not self._stopped:
            self._scanner = self._clock.callLater(0, self._scan)

    def _scan(self) -> None:
        self._scanner = None
        links = self._links
        if not links:
            return  # (until the next link opens)
        after = self.nudge_after(len(links))
        if after is None:
            self._scanner = self._clock.callLater(RECOUNT, self._scan)
            return
        # Each link is nudged once quiet for `after`, or up to a scan's
        # spacing sooner, so that links falling due close together share
        # a scan (and a wake-up of this process); never later.
        now = self._clock.seconds()
        spacing = max(self.tick, after * SCAN_SHARE)
        nudge_until = now + spacing - after + _SLACK
        next_scan = now + after
        nudged = False
        for session in list(links.values()):  # (a write may lose a link)
            if session.waiting_since is not None or session.closed:
                continue  # (heard or dropped before it comes due)
            last = session.last_seen
            if last <= nudge_until:
                session.nudge(now)
                self._watched.add(session)
                nudged = True
            elif last + after < next_scan:
                next_scan = last + after
        if nudged:
            # A pong comes within milliseconds: the first look, a fifth of
            # the timeout on (as for a probe), finds it answered, or ticks
            # on. A tick armed later would miss a stall of this node's
            # (its lateness is how a stall shows), and with it the grace
            # its peers on the same machine need.
            self._look_within(self.probe_after)
        self._scanner = self._clock.callLater(max(next_scan - now, spacing), self._scan)

    def _arm(self, delay: float | None = None) -> None:
        delay = self.tick if delay is None else delay
        self._due = self._clock.seconds() + delay
        self._timer = self._clock.callLater(delay, self._tick)

    def _credit_stall(self, now: float) -> None:
        # This node did not run for a while: that time is not its peers'.
        late = now - self._due
        if late < STALL:
            return
        credit = late - self.tick
        for session in self._watched:
            since = session.waiting_since
            if since is not None:
                session.waiting_since = min(now, since + credit)
        if late >= GRACE_AFTER:
            self._stall_end = now
            self._grace_until = now + GRACE * self.peer_timeout

    def timeout_for(self, since: float, now: float) -> float:
        """
        :returns: the peer timeout at C{now} for a wait begun at C{since}:
            doubled for a wait that was under way when a stall of this
            node's ended, during the grace that follows it.
        """
        if since <= self._stall_end + _SLACK and now < self._grace_until:
            return 2 * self.peer_timeout
        return self.peer_timeout

    def stop(self) -> None:
        """Watch nothing more (the node is stopping)."""
        self._stopped = True
        if self._scanner is not None and self._scanner.active():
            self._scanner.cancel()
        self._scanner = None
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
        self._credit_stall(self._clock.seconds())
        now = self._clock.seconds() + _SLACK
        suspects = []
        done = []
        for session in self._watched:
            if session.closed:
                done.append(session)
                continue
            since = session.waiting_since
            if since is None:  # heard from since the last request
                if now < session.busy_until:
                    if now - session.last_seen < self.quiet_after:
                        continue
                    if session.calls_out():
                        session.probe(now - _SLACK)  # calls outstanding on a quiet link
                        continue
                    # Their answers came: the deadline need not be waited out.
                    session.busy_until = 0.0
                done.append(session)
                continue
            waited = now - since
            if waited >= self.timeout_for(since, now):
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
            self._arm()

    def _verdict(self, suspects: list[Any]) -> None:
        now = self._clock.seconds() + _SLACK
        for session in suspects:
            since = session.waiting_since
            if session.closed or since is None:
                continue
            if now - since >= self.timeout_for(since, now):
                session.silent(now - _SLACK - since)
