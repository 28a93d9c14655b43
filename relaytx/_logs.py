# -*- test-case-name: tests.test_logs -*-
"""
A node's log as JSON lines (C{--log-format json}, SPEC section 13): one
object per event, C{{"time", "level", "node_id", "event", ...}}, where
C{event} is the event's message and the event's own fields follow (those
C{twisted.logger} keeps for itself, C{log_*}, left out). A failure's
traceback is in C{"traceback"}; a field JSON cannot express is written as
its C{repr}.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import IO, Any

import orjson
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from relaytx.wire import rfc3339

#: The keys every line starts with; an event's fields of the same names
#: are left out.
RESERVED = frozenset({"time", "level", "node_id", "event", "logger", "traceback"})


@implementer(ILogObserver)
class JsonLogObserver:
    """
    Writes each event as one JSON line to C{stream}.

    :param node_id: the node the log is of.
    """

    def __init__(
        self, stream: IO[str], node_id: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._stream = stream
        self._node_id = node_id
        self._clock = clock

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        line: dict[str, Any] = {
            "time": rfc3339(event.get("log_time") or self._clock()),
            "level": getattr(level, "name", "info"),
            "node_id": self._node_id,
            "event": formatEvent(event),
        }
        namespace = event.get("log_namespace")
        if namespace:
            line["logger"] = namespace
        for key, value in event.items():
            if key.startswith("log_") or key in RESERVED or key in ("format", "message"):
                continue
            line[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            try:
                line["traceback"] = failure.getTraceback()
                if not line["event"]:
                    # (Twisted logs an unhandled error in a Deferred as two
                    # events, the second a failure with no words of its own.)
                    line["event"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
            except Exception:  # a failure that cannot describe itself
                line["traceback"] = repr(failure)
        try:
            text = orjson.dumps(line, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # an integer past 64 bits, say
            text = json.dumps(_strict(line), default=repr, allow_nan=False)
        self._stream.write(text + "\n")
        self._stream.flush()


def _strict(value: Any) -> Any:
    """
    C{value} as orjson writes it, for C{json.dumps}: NaN and infinities
    (which it would write as such, not JSON) as C{None}, keys that are not
    text as text.
    """
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key if type(key) is str else str(key): _strict(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def text_observer(stream: IO[str], level: LogLevel = LogLevel.info) -> ILogObserver:
    """:returns: an observer writing events of C{level} and above as Twisted's text lines."""
    return FilteringLogObserver(
        textFileLogObserver(stream), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )


def json_observer(stream: IO[str], node_id: str, level: LogLevel = LogLevel.info) -> ILogObserver:
    """:returns: an observer writing events of C{level} and above as JSON lines."""
    return FilteringLogObserver(
        JsonLogObserver(stream, node_id), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )


class StandardLibraryBridge(logging.Handler):
    """
    Hands the records of Python's C{logging} to C{twisted.logger}, so that
    they reach the node's log in its format (one JSON object a line with
    C{--log-format json}): an app's C{logging.warning}, asyncio's "Task
    exception was never retrieved". Installed as C{logging.lastResort}
    (L{bridge_standard_logging}), it takes only what no handler an app
    configured takes (warnings and worse, as that fallback does).
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # The message is the event's format, its braces escaped: no
            # field of its own for the legacy log to overwrite.
            text = record.getMessage().replace("{", "{{").replace("}", "}}")
            fields = {}
            if record.exc_info is not None and record.exc_info[1] is not None:
                kind, value, traceback = record.exc_info
                fields["log_failure"] = Failure(value, kind, traceback)
            Logger(namespace=record.name).emit(_level_of(record.levelno), text, **fields)
        except Exception:
            self.handleError(record)


#: Python's logging levels, highest first, and twisted.logger's for each.
_LEVELS: tuple[tuple[int, LogLevel], ...] = (
    (logging.CRITICAL, LogLevel.critical),
    (logging.ERROR, LogLevel.error),
    (logging.WARNING, LogLevel.warn),
    (logging.INFO, LogLevel.info),
)


def _level_of(levelno: int) -> LogLevel:
    for floor, level in _LEVELS:
        if levelno >= floor:
            return level
    debug: LogLevel = LogLevel.debug
    return debug


class _RootFallback(StandardLibraryBridge):
    """
    The bridge as a handler of the root logger, taking what no other
    handler takes: a root with a handler keeps C{logging.warning()} (the
    module's function) from configuring a handler of its own that would
    print past the node's log (C{logging.basicConfig}, which it calls
    on a root with none).
    """

    def emit(self, record: logging.LogRecord) -> None:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            for handler in logger.handlers:
                if handler is not self and record.levelno >= handler.level:
                    return  # an app's handler takes it
            logger = logger.parent if logger.propagate else None
        super().emit(record)


def bridge_standard_logging() -> None:
    """Send what Python's C{logging} would print as a last resort to the node's log."""
    if not isinstance(logging.lastResort, StandardLibraryBridge):
        logging.lastResort = StandardLibraryBridge(logging.WARNING)
    root = logging.getLogger()
    if not any(isinstance(handler, _RootFallback) for handler in root.handlers):
        root.addHandler(_RootFallback(logging.WARNING))
