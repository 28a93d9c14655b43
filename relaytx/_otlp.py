# -*- test-case-name: tests.test_tracing -*-
"""
The C{otlp} span exporter: a node's finished spans to an OpenTelemetry
collector over OTLP/HTTP, through the OpenTelemetry SDK's own exporter and
batch processor (the C{relaytx[otlp]} extra; importing this module without
it raises C{ImportError}).

Spans are recorded by L{relaytx._tracing} and become the SDK's
C{ReadableSpan}s here, on their way out; the SDK's batch processor sends
them from its own thread, so a slow or absent collector never holds the
reactor up (spans beyond its queue are dropped, as the SDK does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from zope.interface import implementer

from relaytx import __version__
from relaytx._tracing import ISpanExporter, Span

#: The collector's traces endpoint when none is configured.
DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"

_KINDS = {"call": SpanKind.CLIENT, "run": SpanKind.SERVER, "forward": SpanKind.INTERNAL}


def _attribute(value: Any) -> Any:
    # OpenTelemetry attributes are scalars or lists of one scalar type.
    if value is None:
        return ""
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    return str(value)


@implementer(ISpanExporter)
class OtlpExporter:
    """
    :param endpoint: the collector's OTLP/HTTP traces URL
        (L{DEFAULT_ENDPOINT} when C{None}).
    :param headers: extra HTTP headers for the collector (e.g. a token).
    :param exporter: the SDK exporter to use instead of one for C{endpoint}
        (tests use an in-memory one).
    """

    def __init__(
        self,
        node_id: str,
        endpoint: str | None = None,
        headers: Mapping[str, str] | None = None,
        exporter: SpanExporter | None = None,
    ) -> None:
        self.endpoint = endpoint or DEFAULT_ENDPOINT
        self._resource = Resource.create(
            {"service.name": "relaytx", "service.instance.id": node_id}
        )
        self._scope = InstrumentationScope("relaytx", __version__)
        self._node_id = node_id
        if exporter is None:
            exporter = OTLPSpanExporter(
                endpoint=self.endpoint, headers=dict(headers or {}), timeout=5
            )
        self._processor = BatchSpanProcessor(exporter, export_timeout_millis=5000)

    def export(self, spans: list[Span]) -> None:
        on_end = self._processor.on_end
        for span in spans:
            on_end(self.readable(span))

    def readable(self, span: Span) -> ReadableSpan:
        """:returns: C{span} as the SDK's C{ReadableSpan}."""
        flags = TraceFlags(TraceFlags.SAMPLED)
        trace_id = int(span.trace_id, 16)
        parent = None
        if span.parent_id is not None:
            parent = SpanContext(trace_id, int(span.parent_id, 16), not span.local_parent, flags)
        attributes = {k: _attribute(v) for k, v in span.attributes.items()}
        attributes["relaytx.node_id"] = self._node_id
        failed = attributes.pop("otel.status_code", None) == "ERROR"
        why = attributes.pop("otel.status_description", None)
        status = Status(StatusCode.ERROR, str(why or "")) if failed else Status(StatusCode.UNSET)
        end = span.end if span.end is not None else span.start
        return ReadableSpan(
            name=span.name,
            context=SpanContext(trace_id, int(span.span_id, 16), False, flags),
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            kind=_KINDS.get(span.name.partition(" ")[0], SpanKind.INTERNAL),
            status=status,
            start_time=int(span.start * 1e9),
            end_time=int(end * 1e9),
            instrumentation_scope=self._scope,
        )

    def shutdown(self) -> None:
        # Sends what is queued (bounded by the export timeout) and stops
        # the processor's thread.
        self._processor.shutdown()
