# -*- test-case-name: tests.test_tracing -*-
"""
The span exporter C{[tracing]} names (SPEC section 13): L{relaytx._tracing}'s
C{jsonl} one, or the C{otlp} one of the C{relaytx[otlp]} extra
(L{relaytx._otlp}), imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet.interfaces import IReactorTime

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
