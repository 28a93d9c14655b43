# -*- test-case-name: tests.test_tracing -*-
"""
Distributed tracing (SPEC section 13): W3C trace context on every traced
call, one span per hop and per execution, and the exporters that write the
finished spans out.

How a trace travels
===================

  - An HTTP or C{/ws/rpc} request with a C{traceparent} header continues that
    trace; a call made by a server method while it runs continues the
    method's; any other call starts a new trace (on a node that traces).
  - Between nodes the context rides inside the call's C{data}, as
    C{"traceparent": "00-TRACE-SPAN-FLAGS"} (the W3C header's value): an
    original-design node ignores the unknown field, and relaytx forwarders
    keep a call's C{data} as it came. Each hop that traces makes its span a
    child of the previous hop's and puts its own span id there before
    passing the call on; a hop that does not trace passes the context on
    untouched, as W3C asks of a participant that records nothing. PKI
    mode's end-to-end codes do not cover the field (they cover the server,
    method, arguments, response id and timestamp), so rewriting it on the
    way breaks none.
  - A caller may also ask for the call's I{path}: C{"trace_path": true} in
    the call; the target then answers with C{"trace_path": {"route": [...],
    "ms": {NODE_ID: MS}}} (the nodes the call passed, the target last, and
    the time each spent on it, from receiving the call to passing its
    answer back), to which each relaytx forwarder on the way back adds its
    own time. This is what C{relay call --trace} prints, and works whether
    or not the nodes trace.

Spans
=====

  - C{call SERVER.METHOD}: where a call enters the mesh (an HTTP or
    WebSocket client's call, or the Python API's), until its answer.
  - C{forward SERVER.METHOD}: a node passing the call on, until the answer
    passes back through it.
  - C{run SERVER.METHOD}: the target node, from the call's arrival to its
    answer leaving.
  - C{execute SERVER.METHOD}: the server method itself, from the moment its
    mailbox starts it (queueing shows as the gap before it).

The recorder is deliberately lean. The OpenTelemetry SDK's own spans cost
about 33 us to start and end, and parsing a header with its propagator
16 us, where a whole direct call costs the calling node about 25 us of CPU;
a span here is a slotted record (about 2 us), finished spans are exported
in batches from the reactor, and the C{otlp} exporter turns them into the
SDK's C{ReadableSpan}s only on its way out (the C{relaytx[otlp]} extra).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Coroutine, Hashable, Iterable, Iterator
from contextvars import ContextVar
from functools import partial
from itertools import chain
from types import CoroutineType
from typing import IO, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from relaytx import _json
from relaytx._aio import is_deferred
from relaytx.errors import Cancelled, RemoteCallError
from relaytx.wire import rfc3339

#: The key of the trace context in a call's C{data}.
TRACEPARENT = "traceparent"

#: The key of the path request (in a call) and report (in its answer).
TRACE_PATH = "trace_path"

_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
#: A canonical version-00 value, as every relaytx hop writes one: read by slicing.
_CANONICAL_RE = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def _random_hex(nbytes: int, batch: int = 512) -> Callable[[], str]:
    """
    :returns: a source of random ids of C{nbytes} bytes, in lowercase hex:
        the OS's generator, read for a batch of ids at a time and split in C
        (taking one runs no Python code but once a batch).
    """

    def batches() -> Iterator[list[str]]:
        while True:
            yield os.urandom(nbytes * batch).hex(" ", nbytes).split()

    return partial(next, chain.from_iterable(batches()))


def _new_ids() -> None:
    # Fresh sources (at import, and in a forked child: a copy of the
    # parent's batch would repeat its ids).
    global _new_trace_id, _new_span_id
    _new_trace_id = _random_hex(16)
    _new_span_id = _random_hex(8)


_new_trace_id: Callable[[], str]
_new_span_id: Callable[[], str]
_new_ids()
os.register_at_fork(after_in_child=_new_ids)


class SpanContext:
    """
    A span's identity as W3C trace context carries it: a remote parent (an
    HTTP client's, or the previous hop's), or a local L{Span}'s.

    @ivar traceparent: the header's value for this context.
    """

    __slots__ = ("sampled", "span_id", "trace_id", "traceparent")

    def __init__(self, trace_id: str, span_id: str, sampled: bool, traceparent: str) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.traceparent = traceparent


def _canonical(value: str) -> tuple[str, str, bool] | None:
    """
    :returns: the trace id, parent span id and sampled flag of a valid
        canonical version-00 value (as every relaytx hop writes one), read
        by slicing; C{None} for anything else (which L{parse_traceparent}
        reads the long way).
    """
    if len(value) == 55 and _CANONICAL_RE.fullmatch(value) is not None:
        trace_id, span_id = value[3:35], value[36:52]
        if trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN:
            return trace_id, span_id, value[54] == "1"
    return None


def parse_traceparent(value: str | bytes | None) -> SpanContext | None:
    """
    Read a W3C C{traceparent} value (version C{00}, or a later version's
    first four fields, as the recommendation says).

    :returns: its context, or C{None} if it is missing or invalid (the
        recommendation's answer to an invalid header: start a new trace).
    """
    if type(value) is str:
        ids = _canonical(value)
        if ids is not None:
            return SpanContext(*ids, value)
    elif value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if type(value) is not str or len(value) < 55 or len(value) > 512:
        return None
    match = _TRACEPARENT_RE.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    sampled = bool(int(flags, 16) & 1)
    return SpanContext(
        trace_id, span_id, sampled, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"
    )


class CallTrace:
    """
    What a call carries of its trace (L{relaytx._calls.CallTarget.trace}).

    @ivar parent: the context the call's next span is a child of (a remote
        parent, or this node's span for the call), or C{None}.
    @ivar hops: when the caller asked for the call's path, the list the
        path is reported into, as C{[node_id, ms or None]} items in the
        order the call passed them (the last with L{STOPPED} added when a
        node on the way answered the call); C{None} otherwise.
    """

    __slots__ = ("hops", "parent")

    def __init__(
        self, parent: SpanContext | Span | None, hops: list[list[Any]] | None = None
    ) -> None:
        self.parent = parent
        self.hops = hops


#: The span of the server method running now, if it is traced: calls it
#: makes continue its trace.
current_span: ContextVar[Span | None] = ContextVar("relaytx_current_span", default=None)


class Span:
    """
    One operation of one node in a trace: started by L{Tracer.start_span},
    finished once by L{finish} or L{fail}. A span of an unsampled trace
    carries its context on but records nothing.
    """

    __slots__ = (
        "_tracer",
        "attributes",
        "attributes_json",
        "end",
        "local_parent",
        "name",
        "parent_id",
        "sampled",
        "span_id",
        "start",
        "trace_id",
    )

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        trace_id: str,
        parent_id: str | None,
        sampled: bool,
        attributes: dict[str, Any],
        attributes_json: bytes | None = None,
    ) -> None:
        self._tracer = tracer
        self.name = name
        self.trace_id = trace_id
        self.span_id = _new_span_id()
        self.parent_id = parent_id
        self.sampled = sampled
        #: shared with other spans of its kind when C{attributes_json} is
        #: given (L{Tracer.shape}): changed only through L{update}
        self.attributes = attributes
        #: C{attributes} as JSON, made once for every span that shares them
        #: (C{None}: made when the span is written)
        self.attributes_json = attributes_json
        self.start = tracer.clock.seconds()
        self.end: float | None = None
        #: whether its parent is a span of this node (else of its caller's)
        self.local_parent = False

    @property
    def traceparent(self) -> str:
        """The W3C header's value for this span's context (made when asked)."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def finish(self, outcome: Any = None) -> Any:
        """
        End the span (once; later calls do nothing). Usable as a Deferred's
        callback: a L{twisted.python.failure.Failure} marks it failed.

        :returns: C{outcome}, unchanged.
        """
        if self.end is None:
            if isinstance(outcome, Failure) and outcome.value is not None:
                self._failed(outcome.value)
            tracer = self._tracer
            self.end = tracer.clock.seconds()
            if self.sampled:  # into the tracer's next batch
                waiting = tracer._finished
                waiting.append(self)
                if len(waiting) >= tracer._batch:
                    tracer.flush()
        return outcome

    def fail(self, error: BaseException) -> None:
        """End the span as failed with C{error}."""
        if self.end is None:
            self._failed(error)
            self.finish()

    def update(self, attributes: dict[str, Any]) -> None:
        """Add to the span's attributes (in a copy of its own: they may be shared)."""
        self.attributes = {**self.attributes, **attributes}
        self.attributes_json = None

    def _failed(self, error: BaseException) -> None:
        failure: dict[str, Any] = {
            "otel.status_code": "ERROR",
            "relaytx.outcome": type(error).__name__,
        }
        code = getattr(error, "code", None)
        if not isinstance(code, int):
            # A method's own exception, or a cancel: the codes its caller gets.
            code = Cancelled.code if isinstance(error, CancelledError) else RemoteCallError.code
        failure["relaytx.error_code"] = code
        message = getattr(error, "message", None) or str(error)
        failure["otel.status_description"] = message[:200]
        self.update(failure)

    def to_json(self, node_id: str) -> dict[str, Any]:
        """:returns: the span as one line of the C{jsonl} exporter (SPEC section 13)."""
        start = self.start
        end = self.end if self.end is not None else start
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_id,
            "name": self.name,
            "node_id": node_id,
            "start": _stamp(start),
            "end": _stamp(end),
            "attributes": self.attributes,
        }


#: the second last written by L{_stamp}: its first microsecond since the
#: epoch, and its date and time
_stamp_second: list[Any] = [-1_000_000, b""]


def _stamp(seconds: float) -> str:
    """
    :returns: C{seconds} as L{relaytx.wire.rfc3339} writes it (UTC, to the
        microsecond).
    """
    second, micros = _stamp_parts(int(seconds * 1_000_000.0 + 0.5))
    return f"{second.decode()}.{micros:06d}Z"


def _stamp_parts(micros: int) -> tuple[bytes, int]:
    """
    :returns: the time C{micros} microseconds after the epoch as L{_stamp}
        writes it, in two parts: the date and time to the second (made once
        a second), and the microseconds.
    """
    cache = _stamp_second
    base = cache[0]
    if not base <= micros < base + 1_000_000:
        whole = micros // 1_000_000
        cache[1] = rfc3339(whole)[:-8].encode()  # without ".000000Z"
        cache[0] = base = whole * 1_000_000
    text: bytes = cache[1]
    return text, micros - base


class TracedMethod:
    """
    An exposed method run in an C{execute} span: as
    L{relaytx.server.ExposedMethod} to a mailbox, whose C{function} takes
    the span's parent (the call's context) before the method's own
    arguments, starts the span when the mailbox runs it and ends it when
    the method is done. While the method runs (and, for a coroutine, in
    every step of it) the span is L{current_span}, so the calls it makes
    continue its trace. One is made per method and kept (L{for_method}).

    @ivar method: the exposed method it runs.
    """

    __slots__ = ("function", "method", "name")

    def __init__(self, method: Any, tracer: Tracer, server: str) -> None:
        self.method = method
        self.name = name = method.name
        inner = method.function
        # Every span of the method shares them (a failed one gets a copy).
        span_name, attributes, attributes_json = tracer.shape(
            ("execute", server, name),
            f"execute {server}.{name}",
            {"rpc.system": "relaytx", "rpc.service": server, "rpc.method": name},
        )

        def run(instance: Any, parent: SpanContext | Span, *args: Any, **kwargs: Any) -> Any:
            span = Span(
                tracer,
                span_name,
                parent.trace_id,
                parent.span_id,
                parent.sampled,
                attributes,
                attributes_json,
            )
            span.local_parent = type(parent) is Span
            token = current_span.set(span)
            try:
                result = inner(instance, *args, **kwargs)
            except BaseException as e:
                span.fail(e)
                raise
            finally:
                current_span.reset(token)
            if type(result) is CoroutineType:
                # Still a coroutine, for the mailbox to run as the node's
                # reactor runs them (an asyncio task on the asyncio reactor).
                return _in_span(result, span)
            if is_deferred(result):
                return result.addBoth(span.finish)
            span.finish()
            return result

        self.function = run

    @classmethod
    def for_method(
        cls, cache: dict[tuple[str, str], TracedMethod], method: Any, tracer: Tracer, server: str
    ) -> TracedMethod:
        """
        :param cache: where the ones made are kept, by server and method
            name (a server exposed again under the name gets new ones).
        :returns: the traced form of C{server}'s exposed C{method}.
        """
        key = (server, method.name)
        traced = cache.get(key)
        if traced is None or traced.method is not method:
            traced = cache[key] = cls(method, tracer, server)
        return traced


async def _in_span(coroutine: Coroutine[Any, Any, Any], span: Span) -> Any:
    """
    Run C{coroutine} with C{span} as L{current_span} in every step of it
    (the context a coroutine runner copies for its task is this one's), and
    end the span when it is done.
    """
    current_span.set(span)
    try:
        result = await coroutine
    except BaseException as e:
        span.fail(e)
        raise
    span.finish()
    return result


class ISpanExporter(Interface):
    """Where finished spans go, in batches, from the reactor thread."""

    def export(spans: list[Span]) -> None:
        """Write out C{spans} (finished, sampled)."""

    def shutdown() -> Any:
        """Flush and close; may return a Deferred that fires when done."""


class Tracer:
    """
    The spans of one node: made by L{start_span}, collected when they
    finish and handed to the exporter in batches, every C{interval}
    seconds or as soon as C{batch} of them are waiting.

    :param sample: the share of I{new} traces recorded (0 to 1); a trace
        continued from a caller follows the caller's sampled flag.
    :param batch: a few hundred microseconds of the exporter's work. At
        1024, writing a batch held a busy node's reactor for milliseconds
        (a direct call's p99 went from 6 to 16 ms under tracing); at 128,
        10 ms, for the same calls/s.
    """

    _log = Logger()

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        exporter: ISpanExporter,
        sample: float = 1.0,
        interval: float = 0.5,
        batch: int = 128,
    ) -> None:
        self.node_id = node_id
        self.clock = clock
        self.exporter = exporter
        self.sample = sample
        # As OpenTelemetry's TraceIdRatioBased sampler: a trace is sampled
        # when the low 64 bits of its id are below this bound, so every
        # node decides the same for one trace id.
        self._bound = round(sample * (1 << 64))
        self._interval = interval
        self._batch = batch
        self._finished: list[Span] = []
        self._loop: LoopingCall | None = None
        #: L{shape}s by their key
        self.shapes: dict[Hashable, tuple[str, dict[str, Any], bytes]] = {}
        self.max_shapes = 1024
        self.exported = 0

    def start_span(
        self,
        name: str,
        parent: SpanContext | Span | None,
        attributes: dict[str, Any],
        attributes_json: bytes | None = None,
    ) -> Span:
        """
        Start a span, the child of C{parent} (C{None}: the root of a new
        trace, sampled or not by L{sample}).

        :param attributes_json: C{attributes} as JSON, when they are a
            L{shape}'s, shared by every span of its kind.
        """
        if parent is None:
            trace_id = _new_trace_id()
            sampled = self.sample >= 1.0 or int(trace_id[16:], 16) < self._bound
            return Span(self, name, trace_id, None, sampled, attributes, attributes_json)
        span = Span(
            self, name, parent.trace_id, parent.span_id, parent.sampled, attributes, attributes_json
        )
        span.local_parent = type(parent) is Span
        return span

    def continue_span(
        self,
        name: str,
        traceparent: Any,
        attributes: dict[str, Any],
        attributes_json: bytes | None = None,
    ) -> Span:
        """
        Start a span, the child of the context a W3C C{traceparent} value
        gives (a new trace if it is missing or invalid): as L{start_span}
        with L{parse_traceparent}'s context, without making that context
        for the canonical value every relaytx hop writes.
        """
        if type(traceparent) is str:
            ids = _canonical(traceparent)
            if ids is not None:
                return Span(self, name, ids[0], ids[1], ids[2], attributes, attributes_json)
        return self.start_span(name, parse_traceparent(traceparent), attributes, attributes_json)

    def shape(
        self, key: Hashable, name: str, attributes: dict[str, Any]
    ) -> tuple[str, dict[str, Any], bytes]:
        """
        The name and attributes of one kind of span (one server's method,
        called by one caller over one route...), with the attributes as
        JSON: made once, for every span of the kind to share. The tracer
        keeps it in L{shapes} under C{key}, up to C{max_shapes} kinds (past
        those, each span gets a shape of its own, as before).
        """
        shape = (name, attributes, _json.dumps(attributes))
        if len(self.shapes) < self.max_shapes:
            self.shapes[key] = shape
        return shape

    def flush(self) -> None:
        """Hand every finished span to the exporter now."""
        if not self._finished:
            return
        spans, self._finished = self._finished, []
        try:
            self.exporter.export(spans)
        except Exception:
            self._log.failure("exporting {count} spans failed", count=len(spans))
            return
        self.exported += len(spans)

    def start(self) -> None:
        """Export finished spans every C{interval} seconds from now on."""
        if self._loop is None:
            self._loop = LoopingCall(self.flush)
            self._loop.clock = self.clock
            self._loop.start(self._interval, now=False)

    def stop(self) -> Any:
        """
        Export what is left and shut the exporter down.

        :returns: what the exporter's C{shutdown} returns (maybe a Deferred).
        """
        if self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()
        self.flush()
        return self.exporter.shutdown()


#: One line of the C{jsonl} exporter (L{Span.to_json}'s fields, in its order).
_LINE = (
    b'{"trace_id":"%s","span_id":"%s","parent_span_id":%s,"name":%s,"node_id":%s,'
    b'"start":"%s.%06dZ","end":"%s.%06dZ","attributes":%s}\n'
)


@implementer(ISpanExporter)
class JsonlExporter:
    """
    Each finished span as one JSON line in a file (appended to), with the
    fields of SPEC section 13: C{trace_id}, C{span_id}, C{parent_span_id}
    (C{null} for a root), C{name}, C{node_id}, C{start}, C{end} (RFC 3339)
    and C{attributes}. A failed span's attributes hold
    C{otel.status_code = "ERROR"} and why.

    :raises OSError: if the file cannot be opened.
    """

    def __init__(self, path: str, node_id: str) -> None:
        self.path = path
        self._node = _json.dumps(node_id)
        self._names: dict[str, bytes] = {}
        self._file: IO[bytes] | None = open(path, "ab")  # kept open, closed by shutdown

    def export(self, spans: list[Span]) -> None:
        out = self._file
        if out is None:
            return
        out.write(b"".join([self._line(span) for span in spans]))
        out.flush()

    def _line(self, span: Span) -> bytes:
        # What dumps(span.to_json(node_id)) writes, a few times faster: the
        # ids are hex (generated here, or read by parse_traceparent), so
        # only the name and the attributes need JSON's escaping.
        names = self._names
        name = names.get(span.name)
        if name is None:
            name = _json.dumps(span.name)
            if len(names) < 1024:  # "forward" spans name what callers sent
                names[span.name] = name
        # The stamps as _stamp_parts makes them, inline when both fall in
        # the second it made last (as nearly all do).
        start = int(span.start * 1_000_000.0 + 0.5)
        end = start if span.end is None else int(span.end * 1_000_000.0 + 0.5)
        second, start_text = _stamp_second
        if second <= start and end < second + 1_000_000:
            end_text, start_micros, end_micros = start_text, start - second, end - second
        else:
            start_text, start_micros = _stamp_parts(start)
            end_text, end_micros = _stamp_parts(end)
        attributes = span.attributes_json
        if attributes is None:
            attributes = _json.dumps(span.attributes)
        parent = span.parent_id
        return _LINE % (
            span.trace_id.encode(),
            span.span_id.encode(),
            b"null" if parent is None else b'"%s"' % parent.encode(),
            name,
            self._node,
            start_text,
            start_micros,
            end_text,
            end_micros,
            attributes,
        )

    def shutdown(self) -> None:
        if self._file is not None:
            out, self._file = self._file, None
            out.close()


class CallTraces:
    """
    The trace contexts and path reports of calls at both ends: the calls
    this node makes (C{carry}, C{settled}) and those it runs (C{arrived},
    C{answered}). L{relaytx._meshcalls.MeshCalls} asks it only for calls
    that carry a context or a path request, or when the node traces.

    @ivar tracer: the node's tracer, or C{None} when it does not trace.
    @ivar paths: this node's calls whose caller asked for their path:
        response id -> the list the path is reported into.
    @ivar running: the calls running here that L{arrived} saw, until
        L{answered}: (caller, response id) -> their C{run} span and, when
        their path was asked for, when they arrived.
    """

    def __init__(self, node_id: str, clock: IReactorTime, tracer: Tracer | None = None) -> None:
        self.node_id = node_id
        self.clock = clock
        self.tracer = tracer
        self.paths: dict[str, list[list[Any]]] = {}
        self.running: dict[tuple[str, Any], tuple[Span | None, float | None, tuple[str, ...]]] = {}

    def carry(self, envelope: Any, trace: CallTrace, response_id: str, d: Deferred[Any]) -> None:
        """
        A call leaves with C{envelope}: put its trace context and path
        request in its data (the dict C{to_data} made for this envelope).
        """
        data = envelope.data
        if trace.parent is not None:
            data[TRACEPARENT] = trace.parent.traceparent
        if trace.hops is not None:
            data[TRACE_PATH] = True
            self.paths[response_id] = trace.hops
            d.addBoth(self._path_done, response_id)

    def _path_done(self, outcome: Any, response_id: str) -> Any:
        self.paths.pop(response_id, None)
        return outcome

    def settled(self, envelope: Any, response_id: str | None, destination: str | None) -> None:
        """
        An answer to one of this node's calls to C{destination} was
        accepted: read its path report. When a node on the way answered
        the call itself, its hop says so (L{STOPPED}).
        """
        hops = self.paths.get(response_id or "")
        if hops is not None:
            hops[:] = read_path(envelope.data.get(TRACE_PATH), self.node_id)
            if len(hops) > 1 and hops[-1][0] != destination:
                hops[-1].append(STOPPED)

    def arrived(self, envelope: Any, target: Any) -> None:
        """
        A call addressed here arrived: start its C{run} span (when the node
        traces), the child of the context it came with; and when its path
        was asked for, note when it arrived (for L{answered}).
        """
        span = None
        tracer = self.tracer
        route = envelope.route  # a tuple of node ids: the span's and the path report's
        if tracer is not None:
            kind = ("run", target.server, target.method, target.caller, target.via, route)
            shape = tracer.shapes.get(kind) or tracer.shape(
                kind,
                f"run {target.server}.{target.method}",
                {
                    "rpc.system": "relaytx",
                    "rpc.service": target.server,
                    "rpc.method": target.method,
                    "relaytx.caller": target.caller,
                    "relaytx.from": target.via,
                    "relaytx.route": list(route),
                },
            )
            span = tracer.continue_span(
                shape[0], envelope.data.get(TRACEPARENT), shape[1], shape[2]
            )
            target.trace = CallTrace(span)
        arrived = self.clock.seconds() if envelope.data.get(TRACE_PATH) is True else None
        key = (envelope.sender, envelope.data.get("response_id"))
        self.running[key] = (span, arrived, route)

    def answered(self, caller: str, response: Any) -> dict[str, Any] | None:
        """
        A call that L{arrived} is answered with C{response} (a
        L{relaytx.wire.ServerResponse}): end its span.

        :returns: the answer's path report, if its path was asked for.
        """
        entry = self.running.pop((caller, response.response_id), None)
        if entry is None:
            return None
        span, arrived, route = entry
        if span is not None:
            if not response.success:
                span.update(
                    {
                        "otel.status_code": "ERROR",
                        "relaytx.error_code": response.error_code,
                        "otel.status_description": str(response.error)[:200],
                    }
                )
            span.finish()
        if arrived is None:
            return None
        return path_report(route, self.node_id, (self.clock.seconds() - arrived) * 1000.0)


class HopTraces:
    """
    The calls a node forwards that carry a trace context (when it traces) or
    a path request: their C{forward} spans and the time they passed, until
    their answers pass back (then the span ends, and the node's time is
    added to the answer's path report).

    Entries of calls whose answers never pass back here (a lost path is
    answered by whoever saw it) end when their call's budget is spent, or
    when more than C{max_entries} calls are held.

    @ivar tracer: the node's tracer, or C{None} when it does not trace.
    """

    def __init__(
        self,
        node_id: str,
        clock: IReactorTime,
        tracer: Tracer | None = None,
        max_entries: int = 10_000,
    ) -> None:
        self.node_id = node_id
        self.clock = clock
        self.tracer = tracer
        self.max_entries = max_entries
        #: (caller, response id) -> (span, when the call passed, until when
        #: to wait, the route it came by if its path was asked for)
        self.entries: dict[
            tuple[str, str], tuple[Span | None, float, float, tuple[str, ...] | None]
        ] = {}

    def call_passing(self, envelope: Any, came_from: str, went_to: str | None) -> None:
        """
        A traced call (or one whose path was asked for) passes through:
        start its span and put the span's context in the call, in place of
        the previous hop's.
        """
        data = envelope.data
        response_id = data.get("response_id")
        call = data.get("call")
        if type(response_id) is not str or type(call) is not dict:
            return
        now = self.clock.seconds()
        self._expire(now)
        span = None
        tracer = self.tracer
        if tracer is not None:
            server, method = call.get("server_name"), call.get("method")
            if type(server) is not str or type(method) is not str:
                server = method = None  # not ours to read: the target answers for it
            kind = ("forward", server, method, envelope.sender, envelope.to, came_from, went_to)
            shape = tracer.shapes.get(kind) or tracer.shape(
                kind,
                "forward" if server is None else f"forward {server}.{method}",
                {
                    "relaytx.caller": envelope.sender,
                    "relaytx.target_node": envelope.to,
                    "relaytx.from": came_from,
                    "relaytx.to": went_to,
                },
            )
            span = tracer.continue_span(shape[0], data.get(TRACEPARENT), shape[1], shape[2])
            data[TRACEPARENT] = span.traceparent  # forwarders pass data as it came
        budget = call.get("timeout")
        if not isinstance(budget, int | float) or isinstance(budget, bool) or budget <= 0:
            budget = 30.0
        route = None
        if TRACE_PATH in data:
            route = tuple(envelope.route)
            if route[-1:] == (self.node_id,):
                route = route[:-1]
        self.entries[(envelope.sender, response_id)] = (
            span, now, now + min(budget, 86400.0) + 1, route,
        )  # fmt: skip

    def answer_passing(self, envelope: Any) -> None:
        """An answer passes back through: end its call's span, add this node's time."""
        response_id = envelope.data.get("response_id")
        if type(response_id) is not str:
            return
        entry = self.entries.pop((envelope.to, response_id), None)
        if entry is None:
            return
        span, passed, _, _ = entry
        data = envelope.data
        if span is not None:
            if data.get("success") is not True:
                span.update(
                    {"otel.status_code": "ERROR", "relaytx.error_code": data.get("error_code")}
                )
            span.finish()
        report = data.get(TRACE_PATH)
        if report is not None:
            add_hop_time(report, self.node_id, (self.clock.seconds() - passed) * 1000.0)

    def answered_here(
        self, caller: str, response_id: str | None, code: int
    ) -> dict[str, Any] | None:
        """
        This node answers a call passing through with error C{code} itself
        (its onward link went down, its answer was lost here): the call's
        span ends now, failed.

        :returns: the answer's path report, ending here, if the call's path
            was asked for (the hops it made before stay in it).
        """
        if not self.entries or response_id is None:
            return None
        entry = self.entries.pop((caller, response_id), None)
        if entry is None:
            return None
        span, passed, _, route = entry
        if span is not None:
            span.update({"otel.status_code": "ERROR", "relaytx.error_code": code})
            span.finish()
        if route is None:
            return None
        return path_report(route, self.node_id, (self.clock.seconds() - passed) * 1000.0)

    def _expire(self, now: float) -> None:
        entries = self.entries
        while entries:
            key = next(iter(entries))
            span, _, deadline, _ = entries[key]
            if deadline > now and len(entries) < self.max_entries:
                return
            del entries[key]
            if span is not None:
                span.update({"relaytx.outcome": "no answer passed back"})
                span.finish()


def path_report(route: Iterable[str], node_id: str, ms: float) -> dict[str, Any]:
    """:returns: the C{trace_path} a call's target answers with."""
    return {"route": [*route, node_id], "ms": {node_id: round(ms, 3)}}


def add_hop_time(report: Any, node_id: str, ms: float) -> None:
    """Add this node's time to an answer's C{trace_path} report, if it is one."""
    if type(report) is dict:
        times = report.get("ms")
        if type(times) is dict and len(times) < 64:
            times[node_id] = round(ms, 3)


#: The role of a path's last hop that is not the call's target but a node
#: on its way that answered the call itself (its onward link went down, say).
STOPPED = "stopped"


def read_path(report: Any, caller: str) -> list[list[Any]]:
    """
    :param report: an answer's C{trace_path}.
    :returns: the call's path as C{[node_id, ms or None]} items, the
        caller first (its own time is the caller's to add).
    """
    if type(report) is not dict:
        return [[caller, None]]
    route = report.get("route")
    times = report.get("ms")
    if type(route) is not list or not route:
        route = [caller]
    if type(times) is not dict:
        times = {}
    hops = []
    for node in route[:64]:
        if type(node) is str:
            ms = times.get(node)
            hops.append([node, ms if isinstance(ms, int | float) else None])
    return hops
