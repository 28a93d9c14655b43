# -*- test-case-name: tests.test_balance -*-
"""
Several instances of one server (SPEC section 11): which one a
location-transparent call goes to, what happens when it fails there, and
what each node tells the others of its instances.

  - L{InstanceInfo}: each node's load and idempotent methods, this node's
    own and those heard in C{registry_sync} adverts (C{info}, see
    L{relaytx.wire}). A node numbers its own entry; an entry travels on
    only while it is newer than what a node held, so it crosses the mesh
    once per change. A node's load is the number of calls it has not
    finished (queued or running); it is told again when it moves to
    another power of two, at most once every L{LOAD_INTERVAL} seconds, so
    a busy mesh sends a few entries a second and an idle one nothing.
  - L{Breaker}: one instance's circuit: closed, open for C{open_seconds}
    after C{failure_threshold} consecutive failures (-32001, -32002,
    -32005, -32006; not a -32006 for a link lost on the way to an
    instance still reachable another way), then half-open: one trial
    call decides.
  - L{Balancer}: picks an instance by the policy for the server's name
    (C{nearest}, C{round_robin}, C{random}, C{least_loaded}), skipping
    open circuits, and fails a call over to another instance within the
    same deadline when it certainly did not run where it went (-32002,
    -32003, -32005), or when its outcome is unknown (-32006) and the method
    is idempotent. Each try is a new call (a new response id, and in PKI
    mode a new end-to-end code). A stream (SPEC section 12) whose outcome
    is unknown is never tried again: its consumer may have had items.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from attrs import evolve
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relaytx._aio import is_deferred
from relaytx._calls import CallTarget
from relaytx._hosting import ServerHost
from relaytx.config import BalanceConfig
from relaytx.errors import (
    CallError,
    LinkBackedUp,
    NodeUnreachable,
    NoSuchMethod,
    NoSuchServer,
    OutcomeUnknown,
    Overloaded,
    failure_exception,
)
from relaytx.wire import NO_SERVERS, NodeInfo, server_table

#: Seconds between two changes of this node's load told to its neighbours.
LOAD_INTERVAL = 0.5

#: The codes that count as an instance's failure for its circuit.
FAILURE_CODES = frozenset({-32001, -32002, -32005, -32006})

#: Errors of a call that certainly did not run where it went: tried elsewhere.
_NOT_RUN = (NodeUnreachable, Overloaded, NoSuchServer, NoSuchMethod)

#: Instances whose state is kept before idle ones are forgotten.
_MAX_INSTANCES = 10_000

#: Round trips kept per node, the lowest of which is its RTT.
_RTT_SAMPLES = 8

#: Seconds between two probes of the round trip to one instance's node.
PROBE_EVERY = 10.0


class InstanceInfo:
    """
    Each node's L{NodeInfo} (see the module docstring).

    :param max_entries: the most nodes kept (entries for more are ignored).
    :param on_change: called when an entry changed that neighbours must hear.

    @ivar entries: the entries by node id, this node's own included.
    """

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        max_entries: int = 10_000,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.node_id = node_id
        self._clock = clock
        self._max = max_entries
        self.on_change = on_change
        #: whether any neighbour hears the entries (else a load change
        #: only updates this node's own entry, with no timer)
        self.listening: Callable[[], bool] = lambda: True
        #: in PKI mode, the idempotent methods a node's signed record states
        #: (L{relaytx._pki.RecordBook.idempotent_of}), which then decide
        #: retries in place of the entries' unsigned ones
        self.attested: Callable[[str], Mapping[str, tuple[str, ...]] | None] | None = None
        self._version = 0
        self._load = 0
        self._idempotent: Mapping[str, tuple[str, ...]] = NO_SERVERS
        self._told_at = float("-inf")
        self._timer: IDelayedCall | None = None
        self._stopped = False
        self.entries: dict[str, NodeInfo] = {}
        #: node -> when its entry last changed here (a count), oldest first:
        #: what changed since a neighbour was last told is read from the end
        self._order: dict[str, int] = {}
        self._count = 0
        self._bump()

    def _bump(self) -> None:
        # Numbered from the clock (milliseconds), so a restarted node's
        # entries are newer than its earlier life's.
        stamp = int((self._clock.seconds() - 1_700_000_000) * 1000)
        self._version = max(self._version + 1, stamp)
        self._store(self.node_id, NodeInfo(self._version, self._load, self._idempotent))

    def _store(self, node: str, entry: NodeInfo) -> None:
        self.entries[node] = entry
        self._count += 1
        order = self._order
        order.pop(node, None)
        order[node] = self._count

    def set_idempotent(self, table: Mapping[str, Iterable[str]]) -> None:
        """This node's idempotent methods, by server: told at once when they change."""
        compact = server_table((name, methods) for name, methods in table.items() if methods)
        if compact != self._idempotent:
            self._idempotent = compact
            self._bump()
            self.on_change()

    def set_load(self, load: int) -> None:
        """This node's load changed: told within L{LOAD_INTERVAL} seconds."""
        self._load = load
        if self._timer is not None or self._stopped:
            return
        if not self.listening():
            self._bump()  # current for a neighbour that links later; no timer
            return
        wait = self._told_at + LOAD_INTERVAL - self._clock.seconds()
        if wait > 0:
            self._timer = self._clock.callLater(wait, self._tell_load)
        else:
            self._tell_load()

    def _tell_load(self) -> None:
        self._timer = None
        own = self.entries[self.node_id]
        if own.load == self._load:
            return
        self._told_at = self._clock.seconds()
        self._bump()
        self.on_change()

    def stop(self) -> None:
        """Tell nothing more (the node is stopping)."""
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def take(self, heard: Mapping[str, NodeInfo], told: dict[str, int]) -> bool:
        """
        Take the entries a neighbour sent; C{told} (what that neighbour is
        known to hold) records them.

        :returns: whether any was newer than what this node held.
        """
        changed = False
        entries = self.entries
        for node, entry in heard.items():
            told[node] = max(told.get(node, -1), entry.version)
            if node == self.node_id:
                continue
            held = entries.get(node)
            if held is not None and held.version >= entry.version:
                continue
            if held is None and len(entries) >= self._max:
                continue
            self._store(node, entry)
            changed = True
        return changed

    def changes_for(self, told: dict[str, int], since: int = 0) -> tuple[dict[str, NodeInfo], int]:
        """
        :param since: what L{changes_for} returned for this neighbour last
            time (0 the first time): only entries changed after it are looked at.
        :returns: the entries newer than a neighbour holds (C{told}, which
            is updated to hold them), and what to pass as C{since} next time.
            An idle node's entry (no load, no idempotent method) says what
            holding none says: it goes only to a neighbour that holds an
            older one (so an idle mesh of N nodes starts without N entries
            crossing every link).
        """
        changes = {}
        order = self._order
        entries = self.entries
        for node in reversed(order):
            if order[node] <= since:
                break
            entry = entries[node]
            held = told.get(node)
            if held is None:
                if not entry.load and not entry.idempotent:
                    continue
            elif held >= entry.version:
                continue
            told[node] = entry.version
            changes[node] = entry
        return changes, self._count

    def load_of(self, node: str) -> int:
        """:returns: the load node C{node} last told (0 when unknown)."""
        entry = self.entries.get(node)
        return 0 if entry is None else entry.load

    def is_idempotent(self, node: str, server: str, method: str) -> bool:
        """:returns: whether C{server.method} on C{node} is declared idempotent."""
        if self.attested is not None:
            table = self.attested(node)
            return table is not None and method in table.get(server, ())
        entry = self.entries.get(node)
        return entry is not None and method in entry.idempotent.get(server, ())

    def own_idempotent(self) -> Mapping[str, tuple[str, ...]]:
        """:returns: this node's own idempotent methods, by server."""
        return self._idempotent


class Breaker:
    """
    One instance's circuit (see the module docstring).

    @ivar failures: consecutive failures so far.
    @ivar opened_at: when the circuit opened (clock seconds), or C{None}
        while it is closed.
    """

    __slots__ = ("_open_seconds", "_threshold", "failures", "opened_at", "trial")

    def __init__(self, threshold: int, open_seconds: float) -> None:
        self._threshold = threshold
        self._open_seconds = open_seconds
        self.failures = 0
        self.opened_at: float | None = None
        self.trial = False  # the half-open circuit's trial call is out

    @property
    def state(self) -> str:
        """C{"up"}, or C{"open"} while the circuit is open or half-open."""
        return "up" if self.opened_at is None else "open"

    def available(self, now: float) -> bool:
        """:returns: whether a call may go to the instance now."""
        opened = self.opened_at
        if opened is None:
            return True
        return not self.trial and now - opened >= self._open_seconds

    def started(self, now: float) -> None:
        """A call goes to the instance (when half-open, it is the trial)."""
        if self.opened_at is not None:
            self.trial = True

    def succeeded(self) -> None:
        """The instance answered: the circuit closes."""
        self.failures = 0
        self.opened_at = None
        self.trial = False

    def failed(self, now: float) -> bool:
        """
        A call to the instance failed.

        :returns: whether the circuit opened now.
        """
        self.failures += 1
        if self.opened_at is not None:
            if self.trial:  # the trial failed: open again
                self.trial = False
                self.opened_at = now
            return False
        if self.failures >= self._threshold:
            self.opened_at = now
            return True
        return False

    def abandoned(self) -> None:
        """The call to the instance ended without an outcome (cancelled)."""
        self.trial = False


class _Instance:
    """What this node knows of its calls to one instance (a server on a node)."""

    __slots__ = ("breaker", "in_flight")

    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker
        self.in_flight = 0


class InstanceChoice:
    """
    Which instance of a server a call goes to, by the policy for its name,
    and what this node knows of each instance (calls in flight, circuit,
    round trips).

    :param instances: returns the remote instances of a server, as
        C{(node_id, hops, metric)}.
    :param link_rtt: returns the RTT in seconds of the link to a neighbour,
        or C{None}.
    :param hosts: whether this node hosts a server of that name.
    :param info: the nodes' loads and idempotent methods.
    :param probe: times a routed ping to a node (a Deferred of seconds, or
        of C{None}): under C{nearest}, an instance as few hops away as the
        nearest whose round trip is not known yet is probed, so that
        "then the lowest RTT" does not keep to the first one called.
    :param exposes: whether a node told that its instance of a server
        exposes a method, as C{exposes(node_id, server, method)} (none:
        every instance is taken to).
    """

    _log = Logger()

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        config: BalanceConfig,
        instances: Callable[[str], list[tuple[str, int, int]]],
        link_rtt: Callable[[str], float | None],
        hosts: Callable[[str], bool],
        info: InstanceInfo,
        rng: random.Random | None = None,
        probe: Callable[[str], Deferred[float | None]] | None = None,
        exposes: Callable[[str, str, str], bool] | None = None,
    ) -> None:
        self.node_id = node_id
        self._probe = probe
        self._exposes = exposes
        #: nodes probed for their round trip: when last asked
        self._probed: dict[str, float] = {}
        self._clock = clock
        self.config = config
        self._instances = instances
        self._link_rtt = link_rtt
        self._hosts = hosts
        self.info = info
        self._rng = rng or random.Random()
        self._state: dict[tuple[str, str], _Instance] = {}
        self._turns: dict[str, int] = {}
        self._rtts: dict[str, deque[float]] = {}
        self._policies = config.servers
        self._spread_default = config.default != "nearest"
        #: whether calls to any server are spread (else L{spreads} is
        #: always false, and a local call need not ask it)
        self.spreads_any = self._spread_default or any(
            policy != "nearest" for policy in self._policies.values()
        )

    def spreads(self, server: str) -> bool:
        """
        :returns: whether calls to C{server} are spread over instances even
            when this node hosts one (any policy but C{nearest}, where the
            local instance, 0 hops away, always wins). Never the built-in
            C{node}: each node's speaks of that node (C{node.info}), so a
            bare C{node.METHOD} is the node's own, as a local server wins.
        """
        if server == "node":
            return False
        policy = self._policies.get(server)
        return self._spread_default if policy is None else policy != "nearest"

    # What the node knows of each instance.

    def _instance(self, server: str, node: str) -> _Instance:
        key = (server, node)
        instance = self._state.get(key)
        if instance is None:
            if len(self._state) >= _MAX_INSTANCES:
                self._forget_idle()
            config = self.config
            breaker = Breaker(config.failure_threshold, config.open_seconds)
            instance = self._state[key] = _Instance(breaker)
        return instance

    def _forget_idle(self) -> None:
        # Instances of nodes long gone would stay forever: past the bound,
        # those with nothing to remember (no call out, circuit closed) go.
        for key, instance in list(self._state.items()):
            if not instance.in_flight and instance.breaker.opened_at is None:
                del self._state[key]

    def rtt(self, node: str) -> float | None:
        """
        :returns: the round trip to C{node} in seconds: its link's ping RTT
            for a neighbour, else the lowest time of its last answers to
            this node's calls; C{None} when not known.
        """
        if node == self.node_id:
            return 0.0
        rtt = self._link_rtt(node)
        if rtt is not None:
            return rtt
        samples = self._rtts.get(node)
        return min(samples) if samples else None

    def _sample(self, node: str, rtt: float) -> None:
        samples = self._rtts.get(node)
        if samples is None:
            if len(self._rtts) >= _MAX_INSTANCES:
                self._rtts.clear()
            samples = self._rtts[node] = deque(maxlen=_RTT_SAMPLES)
        samples.append(rtt)

    def state(self, server: str, node: str) -> str:
        """:returns: C{"up"}, or C{"open"} while that instance's circuit is open."""
        instance = self._state.get((server, node))
        return "up" if instance is None else instance.breaker.state

    def candidates(self, server: str) -> list[tuple[str, int, int]]:
        """:returns: every instance of C{server}, as C{(node_id, hops, metric)}."""
        found = self._instances(server)
        if self._hosts(server):
            found.append((self.node_id, 0, 0))
        return found

    # Choosing.

    def choose(
        self, server: str, tried: Iterable[str] = (), method: str | None = None
    ) -> str | None:
        """
        :param method: the method called: the instances known to expose it
            are chosen from, if any are (a server's instances may differ,
            in a rolling upgrade).
        :returns: the node whose instance of C{server} a call goes to now
            (one not in C{tried}, whose circuit lets it through), or
            C{None} if there is none.
        """
        now = self._clock.seconds()
        tried = set(tried)
        found = []
        for node, hops, metric in self.candidates(server):
            if node in tried:
                continue
            instance = self._state.get((server, node))
            if instance is not None and not instance.breaker.available(now):
                continue
            found.append((node, hops, metric))
        if not found:
            return None
        exposes = self._exposes
        if method is not None and exposes is not None and len(found) > 1:
            having = [instance for instance in found if exposes(instance[0], server, method)]
            if having:
                found = having
        if len(found) == 1:
            return found[0][0]
        policy = self._policies.get(server, self.config.default)
        if policy == "random":
            return self._rng.choice(found)[0]
        if policy == "round_robin":
            found.sort()
            return found[self._turn(server) % len(found)][0]
        if policy == "least_loaded":
            return self._least_loaded(server, found)
        if self._probe is not None and len(found) > 1:
            self._probe_unknown(found)
        return min(found, key=self._nearness)[0]

    def _probe_unknown(self, found: list[tuple[str, int, int]]) -> None:
        # The instances as near as the nearest whose round trip is not known
        # (none of this node's calls went there yet, not a neighbour) are
        # timed, once in PROBE_EVERY seconds each: their answers come as
        # calls' do.
        fewest = min(hops for _, hops, _ in found)
        now = self._clock.seconds()
        probed = self._probed
        for node, hops, _ in found:
            if hops != fewest or self.rtt(node) is not None:
                continue
            last = probed.get(node)
            if last is not None and now - last < PROBE_EVERY:
                continue
            if len(probed) >= _MAX_INSTANCES:
                probed.clear()
            probed[node] = now
            assert self._probe is not None
            self._probe(node).addCallback(self._probed_rtt, node)

    def _probed_rtt(self, rtt: float | None, node: str) -> None:
        if rtt is not None:
            self._sample(node, rtt)

    def _turn(self, server: str) -> int:
        turn = self._turns.get(server, 0)
        self._turns[server] = turn + 1
        return turn

    def _nearness(self, instance: tuple[str, int, int]) -> tuple[int, float, int, str]:
        node, hops, metric = instance
        rtt = self.rtt(node)
        return (hops, float("inf") if rtt is None else rtt, metric, node)

    def _least_loaded(self, server: str, found: list[tuple[str, int, int]]) -> str:
        # Fewest calls in flight from here, then the load its node told;
        # instances equal on both take turns.
        state = self._state
        info = self.info
        keyed = []
        for node, _, _ in found:
            instance = state.get((server, node))
            in_flight = 0 if instance is None else instance.in_flight
            keyed.append(((in_flight, info.load_of(node)), node))
        best = min(key for key, _ in keyed)
        ties = sorted(node for key, node in keyed if key == best)
        if len(ties) == 1:
            return ties[0]
        return ties[self._turn(server) % len(ties)]


class Balancer(InstanceChoice):
    """
    Where location-transparent calls go, and where they go next when they
    fail (see the module docstring).
    """

    @classmethod
    def serving(
        cls, node_id: str, clock: IReactorTime, config: BalanceConfig, mesh: Any, host: ServerHost
    ) -> Balancer:
        """
        :returns: the balancer of a node whose mesh is C{mesh}
            (L{relaytx._mesh.Mesh}) and whose servers are C{host}: the
            host's changes and load feed the node's instance entry.
        """
        info: InstanceInfo = mesh.info

        def servers_changed() -> None:
            info.set_idempotent(host.idempotent_methods())
            mesh.schedule_sync()

        host.on_change = servers_changed
        host.on_load = info.set_load
        registry = mesh.registry

        def exposes(node: str, server: str, method: str) -> bool:
            if node == node_id:
                return host.exposes(server, method)
            return bool(registry.exposes(node, server, method))

        return cls(
            node_id, clock, config, registry.instances, registry.link_rtt, host.__contains__, info,
            probe=mesh.probes.probe, exposes=exposes,
        )  # fmt: skip

    def call(
        self,
        target: CallTarget,
        remote: Callable[[CallTarget], Deferred[Any]],
        local: Callable[[CallTarget], Any],
    ) -> Any:
        """
        Make a location-transparent call: to the instance the policy picks,
        then to others while it certainly did not run (see the module
        docstring), all within C{target.timeout}.

        :param remote: calls a server on another node.
        :param local: runs the call on this node's instance (returns the
            result or a Deferred of it, or raises a L{CallError}).
        :returns: the result, or a Deferred of it (cancelling it cancels
            the try in flight).
        :raises CallError: if it fails at once; as C{local} when this node
            hosts the only instance (or none is known).
        """
        node = self.choose(target.server, method=target.method)
        if node is None:
            if self.candidates(target.server):
                raise Overloaded(
                    f"every instance of {target.server} has its circuit open; retry later",
                    node_id=self.node_id,
                )
            return local(target)  # no instance known: as the node says of unknown servers
        if node == self.node_id:
            return self._local(target, local)
        now = self._clock.seconds()
        return self._send(target, node, remote, local, now + target.timeout, (), now)

    def _send(
        self,
        target: CallTarget,
        node: str,
        remote: Callable[[CallTarget], Deferred[Any]],
        local: Callable[[CallTarget], Any],
        deadline: float,
        tried: tuple[str, ...],
        now: float,
    ) -> Deferred[Any]:
        # One try, a new call: its own response id (and end-to-end code).
        instance = self._state.get((target.server, node))
        if instance is None:
            instance = self._instance(target.server, node)
        instance.in_flight += 1
        breaker = instance.breaker
        if breaker.opened_at is not None:
            breaker.trial = True
        attempt = CallTarget(
            node,
            target.server,
            target.method,
            target.args,
            target.kwargs,
            deadline - now,
            target.caller,
            target.via,
            target.trace,
            target.stream,
        )
        d = remote(attempt)
        d.addBoth(self._ended, target, node, instance, remote, local, deadline, tried, now)
        return d

    def _ended(
        self,
        outcome: Any,
        target: CallTarget,
        node: str,
        instance: _Instance,
        remote: Callable[[CallTarget], Deferred[Any]],
        local: Callable[[CallTarget], Any],
        deadline: float,
        tried: tuple[str, ...],
        started: float,
    ) -> Any:
        instance.in_flight -= 1
        now = self._clock.seconds()
        if not isinstance(outcome, Failure):
            breaker = instance.breaker
            if breaker.failures or breaker.opened_at is not None:
                breaker.succeeded()
            self._sample(node, now - started)
            return outcome
        error = failure_exception(outcome)
        if (
            isinstance(error, Overloaded)
            and not isinstance(error, LinkBackedUp)
            and error.data.get("node_id") == self.node_id
        ):
            # This node's own limit (its pending calls): not the instance's
            # doing, and no other instance would fare better.
            return outcome
        self._failed(instance, target.server, node, error, now)
        if not self.fails_over(error, node, target.server, target.method) or now >= deadline:
            return outcome
        if isinstance(error, OutcomeUnknown) and target.stream is not None and target.stream.count:
            return outcome  # its consumer had items: never sent twice
        tried = (*tried, node)
        following = self.choose(target.server, tried, target.method)
        if following is None or (
            isinstance(error, NoSuchMethod) and not self._told_exposed(following, target)
        ):
            # (A method one instance lacks goes on only to one that has it:
            # a mistyped name had been tried on every instance in turn.)
            return outcome
        self._log.info(
            "{server}.{method} failed on {node} ({error}): trying {following}",
            server=target.server,
            method=target.method,
            node=node,
            error=getattr(error, "code", type(error).__name__),
            following=following,
        )
        if following == self.node_id:
            try:
                # (Within the same deadline: what is left of it.)
                return self._local(evolve(target, timeout=deadline - now), local)
            except CallError:
                return Failure()
        # (Returning a Deferred chains it: cancelling the call cancels it.)
        return self._send(target, following, remote, local, deadline, tried, now)

    def _local(self, target: CallTarget, local: Callable[[CallTarget], Any]) -> Any:
        # The local instance is one like the others: its circuit learns
        # from its calls' outcomes (a timeout, its own overload).
        instance = self._instance(target.server, self.node_id)
        breaker = instance.breaker
        if breaker.opened_at is not None:
            breaker.trial = True
        instance.in_flight += 1
        try:
            result = local(target)
        except BaseException:
            self._local_done(Failure(), instance, target.server)
            raise
        if is_deferred(result):
            return result.addBoth(self._local_done, instance, target.server)
        return self._local_done(result, instance, target.server)

    def _local_done(self, outcome: Any, instance: _Instance, server: str) -> Any:
        instance.in_flight -= 1
        breaker = instance.breaker
        if isinstance(outcome, Failure):
            error = failure_exception(outcome)
            self._failed(instance, server, self.node_id, error, self._clock.seconds())
        elif breaker.failures or breaker.opened_at is not None:
            breaker.succeeded()
        return outcome

    def outcome(self, server: str, node: str, error: BaseException | None) -> None:
        """
        A call to C{server} on C{node} ended (C{error}: how it failed, if
        it did): its circuit learns from it.
        """
        instance = self._instance(server, node)
        if error is None:
            instance.breaker.succeeded()
        else:
            self._failed(instance, server, node, error, self._clock.seconds())

    def _failed(
        self, instance: _Instance, server: str, node: str, error: BaseException, now: float
    ) -> None:
        breaker = instance.breaker
        code = error.code if isinstance(error, CallError) else None
        if code in FAILURE_CODES and self._path_failed(error, server, node):
            breaker.abandoned()
        elif code in FAILURE_CODES:
            if breaker.failed(now):
                self._log.warn(
                    "{server} on {node} failed {count} times in a row: calls skip it"
                    " for {seconds:g} s",
                    server=server,
                    node=node,
                    count=breaker.failures,
                    seconds=self.config.open_seconds,
                )
        elif isinstance(error, CancelledError):
            breaker.abandoned()
        else:
            breaker.succeeded()  # it answered: an error of the method, not of the instance

    def _told_exposed(self, node: str, target: CallTarget) -> bool:
        exposes = self._exposes
        return exposes is None or exposes(node, target.server, target.method)

    def _path_failed(self, error: BaseException, server: str, node: str) -> bool:
        """
        :returns: whether C{error} tells of a link lost on the way to
            C{node} (a -32006 naming a link to another node than C{node}),
            while C{node}'s instance is still reachable by another path:
            the path failed, not the instance. Every call in flight through
            a forwarder fails so at once when it dies, and those failures
            had opened a healthy instance's circuit for C{open_seconds}
            (with eight calls in flight, every call refused -32005 for 5 s
            while the mesh had re-routed to it within 0.5 s).
        """
        if not isinstance(error, OutcomeUnknown):
            return False
        link = error.data.get("route")
        if not isinstance(link, list) or len(link) != 2 or link[-1] == node:
            return False
        return any(found == node for found, _, _ in self._instances(server))

    def fails_over(self, error: BaseException, node: str, server: str, method: str) -> bool:
        """
        :returns: whether a call that failed with C{error} on C{node} may be
            sent to another instance: it certainly did not run there, or its
            outcome is unknown and the method is idempotent.
        """
        if isinstance(error, _NOT_RUN) and not error.hearsay:
            return True
        if isinstance(error, (OutcomeUnknown, *_NOT_RUN)):
            # (A member's word that it did not run is no proof, in PKI mode.)
            return self.info.is_idempotent(node, server, method)
        return False
