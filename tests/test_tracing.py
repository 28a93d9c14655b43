"""
Tests for L{relaytx._tracing}: W3C trace context, spans per hop and per
execution across in-memory meshes, the path report, the exporters.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from itertools import pairwise
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from relaytx import Server, exposed
from relaytx._calls import CallTarget
from relaytx._tracing import (
    ISpanExporter,
    JsonlExporter,
    Span,
    Tracer,
    parse_traceparent,
)
from relaytx.config import ConfigError, build_config
from relaytx.node import RelayNode
from relaytx.server import exposed_methods
from relaytx.testing import MemoryMesh, memory_node

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@implementer(ISpanExporter)
class MemoryExporter:
    """Keeps every exported span."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.closed = False

    def export(self, spans: list[Span]) -> None:
        self.spans.extend(spans)

    def shutdown(self) -> None:
        self.closed = True


def trace(node: RelayNode, sample: float = 1.0) -> MemoryExporter:
    """Make C{node} trace into a new L{MemoryExporter}."""
    exporter = MemoryExporter()
    tracer = Tracer(node.node_id, node.clock, exporter, sample)
    node.tracer = tracer
    node.dispatcher.tracer = node.servers.tracer = tracer
    node.mesh.calls.traces.tracer = node.mesh.forwarder.hops.tracer = tracer
    return exporter


class Calls(Server):
    """Answers at once, later, by raising, or by calling another node."""

    def __init__(self, node: RelayNode | None = None) -> None:
        self.node = node
        self.waiting: list[Deferred[Any]] = []

    @exposed
    def double(self, x: int) -> int:
        return 2 * x

    @exposed
    def later(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append(d)
        return d

    @exposed
    def fail(self) -> None:
        raise ValueError("no")

    @exposed
    async def count(self, n: int) -> Any:
        for i in range(n):
            if i == 1:
                d: Deferred[None] = Deferred()
                self.waiting.append(d)
                await d
            yield i

    @exposed
    def relay(self, node_id: str, x: int) -> Deferred[Any]:
        assert self.node is not None
        return self.node.call(node_id, "calls", "double", x)

    @exposed
    async def relay_async(self, node_id: str, x: int) -> Any:
        assert self.node is not None
        return await self.node.call(node_id, "calls", "double", x)


class Picky(Server):
    """Fails a negative argument."""

    @exposed
    def take(self, x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x


class TraceparentTests(SynchronousTestCase):
    """Reading the W3C traceparent header."""

    def test_valid(self) -> None:
        """A version-00 value gives its trace id, parent span id and sampled flag."""
        context = parse_traceparent(PARENT)
        assert context is not None
        self.assertEqual(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736")
        self.assertEqual(context.span_id, "00f067aa0ba902b7")
        self.assertTrue(context.sampled)
        self.assertEqual(context.traceparent, PARENT)
        unsampled = parse_traceparent(PARENT[:-2].encode() + b"00")
        assert unsampled is not None
        self.assertFalse(unsampled.sampled)
        # Other flags: the sampled bit is read, and passed on as 00 or 01.
        for flags, sampled in (("03", True), ("02", False), ("ff", True)):
            other = parse_traceparent(PARENT[:-2] + flags)
            assert other is not None
            self.assertEqual(other.sampled, sampled, flags)
            self.assertEqual(other.traceparent, PARENT[:-2] + ("01" if sampled else "00"))

    def test_future_version(self) -> None:
        """A later version is read by its first four fields, extra ones ignored."""
        context = parse_traceparent("cc" + PARENT[2:] + "-what-comes-next")
        assert context is not None
        self.assertEqual(context.span_id, "00f067aa0ba902b7")
        self.assertEqual(context.traceparent, PARENT)

    def test_invalid(self) -> None:
        """Anything else is no context at all (a new trace starts)."""
        for value in [
            None,
            "",
            PARENT.upper(),
            "ff" + PARENT[2:],
            PARENT + "-extra",
            "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            PARENT.replace("-", "_"),
            b"\xff" * 55,
            "x" * 10_000,
        ]:
            self.assertIsNone(parse_traceparent(value), value)

    def test_continue_span(self) -> None:
        """
        A span continued from a traceparent value is the child of the
        context parse_traceparent reads from it, or the root of a new trace
        when it reads none.
        """
        tracer = Tracer("n0", MemoryReactorClock(), MemoryExporter())
        valid = [
            PARENT,
            PARENT[:-2] + "00",
            PARENT[:-2] + "03",
            "cc" + PARENT[2:] + "-what-comes-next",
            PARENT.encode(),
        ]
        for value in valid:
            context = parse_traceparent(value)
            assert context is not None
            span = tracer.continue_span("run a.b", value, {})
            found = (span.trace_id, span.parent_id, span.sampled)
            self.assertEqual(found, (context.trace_id, context.span_id, context.sampled), value)
        for value in [
            None,
            PARENT.upper(),
            "00-" + "0" * 32 + PARENT[35:],
            PARENT[:36] + "0" * 16 + "-01",
        ]:
            span = tracer.continue_span("run a.b", value, {})
            self.assertIsNone(span.parent_id, value)
            self.assertNotEqual(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736")


def line_of_nodes(clock: MemoryReactorClock) -> tuple[MemoryMesh, list[RelayNode]]:
    """:returns: three in-memory nodes in a line, n0 - n1 - n2, each serving C{calls}."""
    network = MemoryMesh()
    nodes = [memory_node(name, clock) for name in ("n0", "n1", "n2")]
    for node in nodes:
        node.expose("calls", Calls(node))
    for a, b in pairwise(nodes):
        network.link(a, b)
    network.settle()
    return network, nodes


class MeshTracingTests(SynchronousTestCase):
    """Spans across a line of in-memory nodes."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.network, self.nodes = line_of_nodes(self.clock)

    def spans(self, *exporters: MemoryExporter) -> dict[str, Span]:
        """:returns: every exported span by name (after a flush)."""
        for node in self.nodes:
            if node.tracer is not None:
                node.tracer.flush()
        found = {}
        for exporter in exporters:
            for span in exporter.spans:
                self.assertNotIn(span.name, found)
                found[span.name] = span
        return found

    def call(self, target: CallTarget) -> Any:
        d = self.nodes[0].dispatcher.call(target)
        self.network.pump()
        return self.successResultOf(d)

    def test_hops(self) -> None:
        """
        A call across two hops makes a call span, a forward span, a run span
        and an execute span, sharing one trace id, each the child of the one
        before.
        """
        exporters = [trace(node) for node in self.nodes]
        self.assertEqual(self.call(CallTarget("n2", "calls", "double", (4,))), 8)
        spans = self.spans(*exporters)
        self.assertEqual(
            sorted(spans),
            [
                "call calls.double",
                "execute calls.double",
                "forward calls.double",
                "run calls.double",
            ],
        )
        call, forward = spans["call calls.double"], spans["forward calls.double"]
        run, execute = spans["run calls.double"], spans["execute calls.double"]
        self.assertEqual({s.trace_id for s in spans.values()}, {call.trace_id})
        self.assertIsNone(call.parent_id)
        self.assertEqual(forward.parent_id, call.span_id)
        self.assertEqual(run.parent_id, forward.span_id)
        self.assertEqual(execute.parent_id, run.span_id)
        self.assertEqual([s.local_parent for s in (forward, run, execute)], [False, False, True])
        self.assertEqual(exporters[0].spans, [call])
        self.assertEqual(exporters[1].spans, [forward])
        self.assertEqual(run.attributes["relaytx.route"], ["n0", "n1"])
        for span in spans.values():
            self.assertIsNotNone(span.end)

    def test_untraced_hop(self) -> None:
        """A node that does not trace passes the context on untouched."""
        first, last = trace(self.nodes[0]), trace(self.nodes[2])
        self.call(CallTarget("n2", "calls", "double", (1,)))
        spans = self.spans(first, last)
        self.assertEqual(spans["run calls.double"].parent_id, spans["call calls.double"].span_id)

    def test_continues_incoming(self) -> None:
        """A call with a trace context (an HTTP client's) continues that trace."""
        exporters = [trace(node) for node in self.nodes]
        context = parse_traceparent(PARENT)
        target = CallTarget("n2", "calls", "double", (1,))
        from relaytx._tracing import CallTrace

        target.trace = CallTrace(context)
        self.call(target)
        spans = self.spans(*exporters)
        call = spans["call calls.double"]
        self.assertEqual(call.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736")
        self.assertEqual(call.parent_id, "00f067aa0ba902b7")

    def test_nested_calls(self) -> None:
        """A call made by a traced method, plain or async, continues its trace."""
        exporters = [trace(node) for node in self.nodes]
        for method in ("relay", "relay_async"):
            for exporter in exporters:
                exporter.spans.clear()
            self.assertEqual(self.call(CallTarget("n1", "calls", method, ("n2", 3))), 6)
            spans = self.spans(*exporters)
            outer = spans[f"execute calls.{method}"]
            inner = spans["call calls.double"]
            self.assertEqual(inner.trace_id, outer.trace_id)
            self.assertEqual(inner.parent_id, outer.span_id)
            self.assertEqual(spans["run calls.double"].parent_id, inner.span_id)

    def test_failure(self) -> None:
        """A failed call's spans say it failed, with the error's code."""
        exporters = [trace(node) for node in self.nodes]
        d = self.nodes[0].call("n2", "calls", "fail")
        self.network.pump()
        self.failureResultOf(d)
        self.flushLoggedErrors(ValueError)
        spans = self.spans(*exporters)
        for name in ("call calls.fail", "run calls.fail", "execute calls.fail"):
            self.assertEqual(spans[name].attributes["otel.status_code"], "ERROR", name)
        self.assertEqual(spans["call calls.fail"].attributes["relaytx.error_code"], -32000)
        self.assertEqual(spans["forward calls.fail"].attributes["relaytx.error_code"], -32000)
        self.assertEqual(spans["run calls.fail"].attributes["relaytx.error_code"], -32000)
        self.assertEqual(spans["execute calls.fail"].attributes["relaytx.error_code"], -32000)

    def test_cancelled(self) -> None:
        """A cancelled call's spans say so, with the code of a cancel."""
        exporters = [trace(node) for node in self.nodes]
        d = self.nodes[0].call("n2", "calls", "later")
        self.network.pump()
        d.cancel()
        self.network.pump()
        self.failureResultOf(d)
        spans = self.spans(*exporters)
        for name in ("call calls.later", "execute calls.later"):
            self.assertEqual(spans[name].attributes["otel.status_code"], "ERROR", name)
            self.assertEqual(spans[name].attributes["relaytx.error_code"], -32800, name)

    def test_stream(self) -> None:
        """
        A streaming method runs in an execute span too, from its start to
        its last item.
        """
        exporters = [trace(node) for node in self.nodes]
        d = self.nodes[0].call("n2", "calls", "count", 3)
        self.network.pump()
        self.nodes[2].tracer.flush()
        self.assertEqual(exporters[2].spans, [])  # under way: nothing finished
        waiting = self.nodes[2].servers.server("calls").waiting
        waiting.pop().callback(None)
        self.network.pump()
        self.assertEqual(self.successResultOf(d), [0, 1, 2])
        spans = self.spans(*exporters)
        execute = spans["execute calls.count"]
        self.assertEqual(execute.parent_id, spans["run calls.count"].span_id)
        self.assertNotIn("otel.status_code", execute.attributes)

    def test_forwarder_answers_a_lost_path(self) -> None:
        """
        A forwarder whose onward link goes down answers the call itself
        (-32006): its span ends then, failed with that code, as the
        caller's does.
        """
        exporters = [trace(node) for node in self.nodes]
        d = self.nodes[0].call("n2", "calls", "later")
        self.network.pump()
        self.network.link_between("n1", "n2").cut()
        self.network.pump()
        self.assertEqual(self.failureResultOf(d).value.code, -32006)
        spans = self.spans(*exporters)
        forward = spans["forward calls.later"]
        self.assertEqual(exporters[1].spans, [forward])
        self.assertEqual(forward.attributes["otel.status_code"], "ERROR")
        self.assertEqual(forward.attributes["relaytx.error_code"], -32006)
        self.assertEqual(forward.parent_id, spans["call calls.later"].span_id)
        self.assertEqual(self.nodes[1].mesh.forwarder.hops.entries, {})

    def test_span_times(self) -> None:
        """A span lasts from its start to its end on the node's clock."""
        exporters = [trace(node) for node in self.nodes]
        d = self.nodes[0].call("n2", "calls", "later")
        self.network.pump()
        self.clock.advance(0.25)
        server = self.nodes[2].servers.server("calls")
        assert isinstance(server, Calls)
        server.waiting.pop().callback("done")
        self.network.pump()
        self.assertEqual(self.successResultOf(d), "done")
        spans = self.spans(*exporters)
        execute = spans["execute calls.later"]
        assert execute.end is not None
        self.assertAlmostEqual(execute.end - execute.start, 0.25)

    def test_sampling(self) -> None:
        """With sample = 0 nothing is recorded, but the context still travels (unsampled)."""
        exporters = [trace(node, sample=0.0) for node in self.nodes]
        self.call(CallTarget("n2", "calls", "double", (1,)))
        self.assertEqual(self.spans(*exporters), {})
        # A sampled context from the caller is followed all the same.
        target = CallTarget("n2", "calls", "double", (1,))
        from relaytx._tracing import CallTrace

        target.trace = CallTrace(parse_traceparent(PARENT))
        self.call(target)
        self.assertEqual(len(self.spans(*exporters)), 4)

    def test_path(self) -> None:
        """A call asking for its path gets every node it passed, with their times."""
        from relaytx._tracing import CallTrace

        target = CallTarget("n2", "calls", "later")
        target.trace = CallTrace(None, hops := [])
        d = self.nodes[0].dispatcher.call(target)
        self.network.pump()
        self.clock.advance(0.5)
        server = self.nodes[2].servers.server("calls")
        assert isinstance(server, Calls)
        server.waiting.pop().callback(1)
        self.network.pump()
        self.successResultOf(d)
        self.assertEqual([node for node, _ in hops], ["n0", "n1", "n2"])
        self.assertIsNone(hops[0][1])  # the caller's own time is the caller's to add
        self.assertAlmostEqual(hops[1][1], 500.0)
        self.assertAlmostEqual(hops[2][1], 500.0)
        self.assertEqual(self.nodes[0].mesh.calls.traces.paths, {})

    def test_path_to_a_lost_link(self) -> None:
        """
        A call asking for its path that a forwarder answers itself (its
        onward link went down) gets the path as far as that forwarder, with
        its time.
        """
        from relaytx._tracing import CallTrace

        target = CallTarget("n2", "calls", "later")
        target.trace = CallTrace(None, hops := [])
        d = self.nodes[0].dispatcher.call(target)
        self.network.pump()
        self.clock.advance(0.25)
        self.network.link_between("n1", "n2").cut()
        self.network.pump()
        self.assertEqual(self.failureResultOf(d).value.code, -32006)
        self.assertEqual(hops, [["n0", None], ["n1", 250.0, "stopped"]])
        self.assertEqual(self.nodes[1].mesh.forwarder.hops.entries, {})

    def test_shared_shapes(self) -> None:
        """
        The call and run spans of one kind of call share their attributes
        and those attributes' JSON; a failed one gets a copy of its own, and
        the spans after it are written without its error.
        """
        exporters = [trace(node) for node in self.nodes]
        self.nodes[2].expose("picky", Picky())
        for x in (1, -1, 2):
            d = self.nodes[0].call("n2", "picky", "take", x)
            self.network.pump()
            if x < 0:
                self.failureResultOf(d)
            else:
                self.assertEqual(self.successResultOf(d), x)
        self.flushLoggedErrors(ValueError)
        self.spans()
        path = os.path.join(tempfile.mkdtemp(), "spans.jsonl")
        self.addCleanup(shutil.rmtree, os.path.dirname(path))
        for name, exporter in (("call", exporters[0]), ("run", exporters[2])):
            first, failed, last = [s for s in exporter.spans if s.name == f"{name} picky.take"]
            self.assertIs(first.attributes, last.attributes)
            self.assertIs(first.attributes_json, last.attributes_json)
            self.assertNotIn("otel.status_code", first.attributes)
            self.assertEqual(failed.attributes["otel.status_code"], "ERROR")
            self.assertEqual(failed.attributes["rpc.method"], "take")
            writer = JsonlExporter(path, "n")
            writer.export([first, failed, last])
            writer.shutdown()
            with open(path, "rb") as f:
                lines = [json.loads(line)["attributes"] for line in f]
            os.remove(path)
            self.assertEqual(lines[0], lines[2])
            self.assertEqual(lines[0], first.attributes)
            self.assertEqual(lines[1], failed.attributes)

    def test_untraced_frames_unchanged(self) -> None:
        """Without tracing or a path request, a call's frames carry no trace fields."""
        d = self.nodes[0].call("n2", "calls", "double", 2)
        link = self.network.link_between("n0", "n1")
        sent = link.sent_by("n0", "server_call")
        self.network.pump()
        self.successResultOf(d)
        self.assertEqual(sorted(sent[0].data), ["call", "response_id"])


class TracedMethodTests(SynchronousTestCase):
    """An execute span around a method, on either way of running coroutines."""

    def test_asyncio_task(self) -> None:
        """
        An async method run as an asyncio task (the asyncio reactor) may
        await asyncio code; its span is current in every step of it, and
        ends when it does, and the caller's context is left as it was.
        """
        import asyncio

        from relaytx._aio import asyncio_runner
        from relaytx._tracing import TracedMethod, current_span
        from relaytx.server import Mailbox
        from tests.aiosupport import run

        class Sleeper(Server):
            @exposed
            async def nap(self, seconds: float) -> list[Any]:
                before = current_span.get()
                await asyncio.sleep(seconds)
                return [before, current_span.get()]

        async def scenario() -> tuple[Any, Any, Any]:
            loop = asyncio.get_running_loop()
            exporter = MemoryExporter()
            tracer = Tracer("n0", MemoryReactorClock(), exporter)
            parent = parse_traceparent(PARENT)
            assert parent is not None
            method = TracedMethod(exposed_methods(Sleeper)["nap"], tracer, "sleeper")
            box = Mailbox(Sleeper(), asyncio_runner(loop))
            d = box.call(method, (parent, 2.0), {})
            outside = current_span.get()
            result = await d.asFuture(loop)
            tracer.flush()
            return result, exporter.spans, outside

        (before, after), spans, outside = run(scenario())
        self.assertEqual([span.name for span in spans], ["execute sleeper.nap"])
        self.assertIs(before, spans[0])
        self.assertIs(after, spans[0])
        self.assertIsNone(outside)
        self.assertEqual(spans[0].parent_id, "00f067aa0ba902b7")
        self.assertNotIn("otel.status_code", spans[0].attributes)

    def test_failure_is_its_own(self) -> None:
        """
        A method's execute spans share their attributes until one fails:
        only that one says so.
        """
        from relaytx._tracing import TracedMethod

        exporter = MemoryExporter()
        tracer = Tracer("n0", MemoryReactorClock(), exporter)
        parent = parse_traceparent(PARENT)
        method = TracedMethod(exposed_methods(Picky)["take"], tracer, "picky")
        server = Picky()
        self.assertEqual(method.function(server, parent, 1), 1)
        self.assertRaises(ValueError, method.function, server, parent, -1)
        self.assertEqual(method.function(server, parent, 2), 2)
        tracer.flush()
        first, failed, last = exporter.spans
        self.assertEqual(failed.attributes["otel.status_code"], "ERROR")
        self.assertEqual(failed.attributes["rpc.method"], "take")
        for span in (first, last):
            self.assertEqual(
                span.attributes,
                {"rpc.system": "relaytx", "rpc.service": "picky", "rpc.method": "take"},
            )


class TracerTests(SynchronousTestCase):
    """Finished spans reach the exporter in batches."""

    def test_batches(self) -> None:
        """
        A full batch (128 spans by default) is exported at once; fewer wait
        for the interval.
        """
        clock = MemoryReactorClock()
        exporter = MemoryExporter()
        tracer = Tracer("n0", clock, exporter)
        tracer.start()
        for _ in range(127):
            tracer.start_span("s", None, {}).finish()
        self.assertEqual(exporter.spans, [])
        tracer.start_span("s", None, {}).finish()
        self.assertEqual(len(exporter.spans), 128)
        tracer.start_span("s", None, {}).finish()
        self.assertEqual(len(exporter.spans), 128)
        clock.advance(0.5)
        self.assertEqual(len(exporter.spans), 129)
        tracer.stop()

    def test_shapes_bounded(self) -> None:
        """
        A tracer keeps at most C{max_shapes} span shapes; past them, each
        span gets one of its own, as right.
        """
        tracer = Tracer("n0", MemoryReactorClock(), MemoryExporter())
        tracer.max_shapes = 2
        shapes = [tracer.shape(k, f"s{k}", {"k": k}) for k in range(3)]
        self.assertEqual(list(tracer.shapes), [0, 1])
        self.assertEqual(shapes[2], ("s2", {"k": 2}, b'{"k":2}'))

    def test_ids_after_fork(self) -> None:
        """A forked child makes span and trace ids of its own, not its parent's next."""
        from relaytx import _tracing

        _tracing._new_span_id()  # a batch is read before the fork
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.write(write, f"{_tracing._new_span_id()} {_tracing._new_trace_id()}".encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as f:
            child_span, child_trace = f.read().split()
        self.assertNotEqual(child_span, _tracing._new_span_id())
        self.assertNotEqual(child_trace, _tracing._new_trace_id())


class TracedMethodCacheTests(SynchronousTestCase):
    """The traced form of a method is made once, and again for a server exposed anew."""

    def test_cache(self) -> None:
        """Calls reuse one TracedMethod; unexposing drops it; a new server gets its own."""
        clock = MemoryReactorClock()
        node = memory_node("n0", clock)
        exporter = trace(node)
        node.expose("calls", Calls(node))
        for x in (1, 2):
            self.assertEqual(self.successResultOf(node.call(None, "calls", "double", x)), 2 * x)
        cache = node.servers._traced
        self.assertEqual(list(cache), [("calls", "double")])
        first = cache["calls", "double"]

        class Other(Server):
            @exposed
            def double(self, x: int) -> int:
                return 20 * x

        node.unexpose("calls")
        self.assertEqual(cache, {})
        node.expose("calls", Other())
        self.assertEqual(self.successResultOf(node.call(None, "calls", "double", 1)), 20)
        self.assertIsNot(cache["calls", "double"], first)
        self.assertIs(cache["calls", "double"].method, exposed_methods(Other)["double"])
        assert node.tracer is not None
        node.tracer.flush()
        names = [span.name for span in exporter.spans]
        self.assertEqual(names.count("execute calls.double"), 3)


class JsonlTests(SynchronousTestCase):
    """The jsonl exporter's lines (SPEC section 13)."""

    def test_fields(self) -> None:
        """Each finished span is one line with exactly the SPEC's fields."""
        directory = tempfile.mkdtemp(prefix="relaytx-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "spans.jsonl")
        clock = MemoryReactorClock()
        clock.advance(1_700_000_000.25)
        exporter = JsonlExporter(path, "n1")
        verifyObject(ISpanExporter, exporter)
        tracer = Tracer("n1", clock, exporter)
        tracer.start()
        root = tracer.start_span("call a.b", None, {"rpc.method": "b"})
        child = tracer.start_span("execute a.b", root, {})
        clock.advance(0.5)
        child.finish()
        root.fail(ValueError("boom"))
        self.assertEqual(os.path.getsize(path), 0)  # exported in batches
        clock.advance(0.5)
        tracer.stop()
        lines = [json.loads(line) for line in open(path).read().splitlines()]
        self.assertEqual(len(lines), 2)
        fields = {"trace_id", "span_id", "parent_span_id", "name", "node_id", "start", "end"}
        for line in lines:
            self.assertEqual(set(line), fields | {"attributes"})
            self.assertEqual(line["node_id"], "n1")
            self.assertEqual(line["start"], "2023-11-14T22:13:20.250000Z")
            self.assertEqual(line["end"], "2023-11-14T22:13:20.750000Z")
        first, second = lines
        self.assertEqual(first["name"], "execute a.b")
        self.assertEqual(first["parent_span_id"], second["span_id"])
        self.assertIsNone(second["parent_span_id"])
        self.assertEqual(len(second["trace_id"]), 32)
        self.assertEqual(len(second["span_id"]), 16)
        self.assertEqual(second["attributes"]["otel.status_code"], "ERROR")
        self.assertEqual(second["attributes"]["rpc.method"], "b")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_line_is_the_span(self) -> None:
        """A line is exactly the span's JSON, also for names and attributes that need escaping."""
        directory = tempfile.mkdtemp(prefix="relaytx-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "spans.jsonl")
        clock = MemoryReactorClock()
        clock.advance(1_700_000_000.9999996)  # rounds up into the next second
        exporter = JsonlExporter(path, 'n"1')
        tracer = Tracer('n"1', clock, exporter)
        root = tracer.start_span('forward a"\\b.\u00e9', None, {"k": 'v"\n', "n": [1, None]})
        child = tracer.start_span("run a.b", root, {})
        clock.advance(1.25)
        child.finish()
        root.finish()
        later = tracer.start_span("run a.b", root, {})  # within the second written last
        clock.advance(0.5)
        later.finish()
        tracer.stop()
        lines = [json.loads(line) for line in open(path, encoding="utf-8").read().splitlines()]
        self.assertEqual(lines, [span.to_json('n"1') for span in (child, root, later)])
        self.assertEqual(lines[1]["start"], "2023-11-14T22:13:21.000000Z")
        self.assertEqual(lines[1]["end"], "2023-11-14T22:13:22.250000Z")
        self.assertEqual(lines[2]["start"], "2023-11-14T22:13:22.250000Z")
        self.assertEqual(lines[2]["end"], "2023-11-14T22:13:22.750000Z")

    def test_execute_lines(self) -> None:
        """
        The lines of a method's execute spans carry their attributes, the
        failed one's own included (the others share theirs, and their JSON).
        """
        from relaytx._tracing import TracedMethod

        directory = tempfile.mkdtemp(prefix="relaytx-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "spans.jsonl")
        tracer = Tracer("n1", MemoryReactorClock(), JsonlExporter(path, "n1"))
        method = TracedMethod(exposed_methods(Picky)["take"], tracer, "picky")
        parent = parse_traceparent(PARENT)
        server = Picky()
        method.function(server, parent, 1)
        self.assertRaises(ValueError, method.function, server, parent, -1)
        method.function(server, parent, 2)
        tracer.stop()
        lines = [json.loads(line) for line in open(path).read().splitlines()]
        shared = {"rpc.system": "relaytx", "rpc.service": "picky", "rpc.method": "take"}
        self.assertEqual([line["attributes"] for line in (lines[0], lines[2])], [shared] * 2)
        failed = lines[1]["attributes"]
        self.assertEqual(failed["otel.status_code"], "ERROR")
        self.assertEqual(failed["otel.status_description"], "negative")
        self.assertEqual({k: failed[k] for k in shared}, shared)


class ConfigTests(SynchronousTestCase):
    """The [tracing] table."""

    def test_bad(self) -> None:
        """Each bad setting is one clear error."""
        for table, why in [
            ({"exporter": "zipkin"}, "jsonl"),
            ({"exporter": "jsonl"}, "tracing.path"),
            ({"exporter": "otlp", "endpoint": "localhost:4318"}, "http"),
            ({"exporter": "otlp", "sample": 2}, "sample"),
            ({"exporter": "otlp", "colour": "red"}, "tracing.colour"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                build_config({"node_id": "n1", "tracing": table})
            self.assertIn(why, str(caught.exception))

    def test_none(self) -> None:
        """No exporter (or "none") means no tracing."""
        self.assertIsNone(build_config({"node_id": "n1"}).tracing)
        self.assertIsNone(build_config({"node_id": "n1", "tracing": {"exporter": "none"}}).tracing)


class HttpTracingTests(SynchronousTestCase):
    """A trace context and a path request on C{POST /rpc}."""

    def setUp(self) -> None:
        from treq.testing import StubTreq

        self.clock = MemoryReactorClock()
        self.network, self.nodes = line_of_nodes(self.clock)
        self.exporters = [trace(node) for node in self.nodes]
        self.stub = StubTreq(self.nodes[0].site().resource)

    def post(self, body: Any, headers: dict[str, list[str]]) -> tuple[Any, Any]:
        d = self.stub.request(
            "POST", "http://node.test/rpc", data=json.dumps(body).encode(), headers=headers
        )
        for _ in range(5):
            self.stub.flush()
            self.network.pump()
        response = self.successResultOf(d)
        content = self.stub.content(response)
        self.stub.flush()
        return response, json.loads(self.successResultOf(content))

    def test_header_continues_trace(self) -> None:
        """A request's traceparent becomes the parent of the node's call span."""
        request = {"jsonrpc": "2.0", "id": 1, "method": "n2/calls.double", "params": [5]}
        response, answer = self.post(request, {"traceparent": [PARENT]})
        self.assertEqual(answer["result"], 10)
        self.assertIsNone(response.headers.getRawHeaders("server-timing"))
        self.nodes[0].tracer.flush()  # type: ignore[union-attr]
        (call,) = self.exporters[0].spans
        self.assertEqual(call.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736")
        self.assertEqual(call.parent_id, "00f067aa0ba902b7")
        self.assertEqual(call.attributes["relaytx.caller"], "http:127.0.0.1")

    def test_server_timing(self) -> None:
        """With Relaytx-Trace-Path the answer's Server-Timing lists each hop's time."""
        request = {"jsonrpc": "2.0", "id": 1, "method": "n2/calls.double", "params": [5]}
        response, answer = self.post(
            request, {"traceparent": [PARENT], "relaytx-trace-path": ["1"]}
        )
        self.assertEqual(answer["result"], 10)
        (timing,) = response.headers.getRawHeaders("server-timing")
        names = [part.strip().split(";")[0] for part in timing.split(",")]
        self.assertEqual(names, ["n0", "n1", "n2"])
        self.assertIn('n0;desc="entry";dur=', timing)
        self.assertIn('n2;desc="target";dur=', timing)

    def test_server_timing_of_a_stopped_call(self) -> None:
        """
        A call a forwarder answers itself (its onward link went down) ends
        its Server-Timing with that forwarder, as C{stopped}, not C{target}.
        """
        request = {"jsonrpc": "2.0", "id": 1, "method": "n2/calls.later", "params": []}
        d = self.stub.request(
            "POST",
            "http://node.test/rpc",
            data=json.dumps(request).encode(),
            headers={"traceparent": [PARENT], "relaytx-trace-path": ["1"]},
        )
        self.stub.flush()
        self.network.pump()
        self.network.link_between("n1", "n2").cut()
        for _ in range(5):
            self.stub.flush()
            self.network.pump()
        response = self.successResultOf(d)
        (timing,) = response.headers.getRawHeaders("server-timing")
        roles = [part.strip().split(";")[:2] for part in timing.split(",")]
        self.assertEqual(roles, [["n0", 'desc="entry"'], ["n1", 'desc="stopped"']])
        self.stub.flush()

    def test_local_server_timing(self) -> None:
        """A call that runs on the entry node reports that node alone."""
        request = {"jsonrpc": "2.0", "id": 1, "method": "calls.double", "params": [5]}
        response, _ = self.post(request, {"traceparent": [PARENT], "relaytx-trace-path": ["1"]})
        (timing,) = response.headers.getRawHeaders("server-timing")
        self.assertTrue(timing.startswith('n0;desc="entry";dur='), timing)
        self.nodes[0].tracer.flush()  # type: ignore[union-attr]
        names = sorted(s.name for s in self.exporters[0].spans)
        self.assertEqual(names, ["call calls.double", "execute calls.double"])


class OtlpTests(SynchronousTestCase):
    """The otlp exporter hands the OpenTelemetry SDK its own spans."""

    def test_readable_spans(self) -> None:
        """Spans become ReadableSpans with their ids, parent, status and times."""
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from opentelemetry.trace import SpanKind, StatusCode

        from relaytx._otlp import OtlpExporter

        memory = InMemorySpanExporter()
        exporter = OtlpExporter("n1", exporter=memory)
        verifyObject(ISpanExporter, exporter)
        clock = MemoryReactorClock()
        clock.advance(100.0)
        tracer = Tracer("n1", clock, exporter)
        root = tracer.start_span("call a.b", parse_traceparent(PARENT), {"relaytx.route": ["x"]})
        inner = tracer.start_span("execute a.b", root, {})
        clock.advance(0.002)
        inner.finish()
        root.fail(ValueError("no"))
        tracer.stop()
        child, span = memory.get_finished_spans()
        assert span.parent is not None and child.parent is not None
        self.assertTrue(span.parent.is_remote)  # a caller's
        self.assertFalse(child.parent.is_remote)  # this node's own
        self.assertEqual(span.name, "call a.b")
        self.assertEqual(span.kind, SpanKind.CLIENT)
        self.assertEqual(f"{span.context.trace_id:032x}", "4bf92f3577b34da6a3ce929d0e0e4736")
        self.assertEqual(f"{span.context.span_id:016x}", root.span_id)
        assert span.parent is not None
        self.assertEqual(f"{span.parent.span_id:016x}", "00f067aa0ba902b7")
        self.assertEqual(span.status.status_code, StatusCode.ERROR)
        self.assertEqual(span.end_time - span.start_time, 2_000_000)
        self.assertEqual(span.attributes["relaytx.node_id"], "n1")
        self.assertEqual(span.resource.attributes["service.instance.id"], "n1")
