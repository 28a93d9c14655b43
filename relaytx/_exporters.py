# -*- test-case-name: tests.test_tracing -*-
"""
The span exporter C{[tracing]} names (SPEC section 13): L{relaytx._tracing}'s
C{jsonl} one, or the C{otlp} one of the C{relaytx[otlp]} extra
(L{relaytx._otlp}), imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime

from relaytx._dispatch import CallDispatcher
from relaytx._hosting import ServerHost
from relaytx._mesh import Mesh
from relaytx._tracing import ISpanExporter, JsonlExporter, Tracer
from relaytx.config import TracingConfig
from relaytx.errors import StartupError


def make_tracer(node_id: str, clock: IReactorTime, tracing: TracingConfig | None) -> Tracer | None:
    """
    :returns: the tracer of a node with C{[tracing]} settings C{tracing}
        (C{None}: the node does not trace).
    :raises StartupError: if the exporter cannot be made (one line).
    """
    if tracing is None:
        return None
    try:
        exporter = exporter_for(
            tracing.exporter, node_id, tracing.path, tracing.endpoint, tracing.headers
        )
    except OSError as e:
        raise StartupError(f"tracing.path {tracing.path}: {e.strerror or e}") from None
    except ValueError as e:
        raise StartupError(str(e)) from None
    return Tracer(node_id, clock, exporter, tracing.sample)


class TracerService(Service):
    """
    A node's tracer as a child service of the node: it exports finished
    spans while the node runs, and what is left (the spans of the calls
    that stopping ended, too: the node stops its children once its mesh
    has stopped) when it stops.
    """

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def startService(self) -> None:
        super().startService()
        self.tracer.start()

    def stopService(self) -> Any:
        super().stopService()
        return self.tracer.stop()


def start_tracing(
    node: Any,
    tracing: TracingConfig | None,
    dispatcher: CallDispatcher,
    servers: ServerHost,
    mesh: Mesh,
) -> Tracer | None:
    """
    Make the tracer of C{node} (a L{relaytx.node.RelayNode}) with
    C{[tracing]} settings C{tracing}, give it to the parts that make spans
    (the dispatcher's C{call} spans, the servers' C{execute} ones, the
    mesh's C{run} and C{forward} ones) and run it as a child service of
    the node.

    :returns: the tracer (C{None}: the node does not trace).
    :raises StartupError: as L{make_tracer}.
    """
    tracer = make_tracer(node.node_id, node.reactor, tracing)
    if tracer is not None:
        dispatcher.tracer = servers.tracer = tracer
        mesh.calls.traces.tracer = mesh.forwarder.hops.tracer = tracer
        TracerService(tracer).setServiceParent(node)
    return tracer


def exporter_for(
    kind: str,
    node_id: str,
    path: str | None = None,
    endpoint: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ISpanExporter:
    """
    :param kind: C{"jsonl"} (needs C{path}) or C{"otlp"} (C{endpoint}: an
        OTLP/HTTP traces URL; the collector's default when C{None}).
    :raises ValueError: if C{kind} is unknown, its settings are missing,
        or the C{otlp} extra is not installed.
    :raises OSError: if the C{jsonl} file cannot be opened.
    """
    if kind == "jsonl":
        if not path:
            raise ValueError('tracing.exporter "jsonl" needs tracing.path')
        return JsonlExporter(path, node_id)
    if kind == "otlp":
        try:
            from relaytx._otlp import OtlpExporter
        except ImportError as e:
            raise ValueError(
                f'tracing.exporter "otlp" needs the OpenTelemetry SDK and its OTLP exporter: '
                f"pip install 'relaytx[otlp]' ({e})"
            ) from None
        return OtlpExporter(node_id, endpoint, dict(headers or {}))
    raise ValueError(f'tracing.exporter {kind!r}: give "jsonl" or "otlp"')
