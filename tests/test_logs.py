"""
Tests for L{relaytx._logs} (C{--log-format json}) and the start-up log line
that names the node, its address, servers and peers (SPEC section 13).
"""

from __future__ import annotations

import io
import json
import logging
import os

import twisted.test
from twisted.internet.address import IPv4Address
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaytx._listen import startup_line
from relaytx._logs import JsonLogObserver, bridge_standard_logging, json_observer
from relaytx.config import ConfigError, build_config
from relaytx.tap import Options
from relaytx.testing import memory_node
from tests.support import Counter


class JsonLogTests(SynchronousTestCase):
    """One JSON object per event."""

    def lines(self, stream: io.StringIO) -> list[dict[str, object]]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    def test_fields(self) -> None:
        """A line holds time, level, node_id, event and the event's fields."""
        stream = io.StringIO()
        log = Logger(namespace="relaytx.test", observer=JsonLogObserver(stream, "n1"))
        log.warn("link to {peer} lost ({reason})", peer="n2", reason="closed", count={1, 2})
        (line,) = self.lines(stream)
        self.assertEqual(line["level"], "warn")
        self.assertEqual(line["node_id"], "n1")
        self.assertEqual(line["event"], "link to n2 lost (closed)")
        self.assertEqual(line["peer"], "n2")
        self.assertEqual(line["reason"], "closed")
        self.assertEqual(line["count"], "{1, 2}")  # not JSON: its repr
        self.assertEqual(line["logger"], "relaytx.test")
        self.assertRegex(str(line["time"]), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertFalse([key for key in line if key.startswith("log_")])

    def test_strict_json(self) -> None:
        """
        Every line is strict JSON, also one with an integer past 64 bits
        (which orjson does not write): NaN and infinities are null, keys
        that are not text are text.
        """
        stream = io.StringIO()
        log = Logger(observer=JsonLogObserver(stream, "n1"))
        nan, inf = float("nan"), float("inf")
        for big in (1, 10**20):
            log.info("x", big=big, nan=nan, nested={"v": [inf, -inf], 2: (nan,)})
        for text in stream.getvalue().splitlines():
            line = json.loads(text, parse_constant=self.fail)  # (NaN, Infinity: not JSON)
            self.assertEqual(
                (line["nan"], line["nested"]), (None, {"v": [None, None], "2": [None]})
            )
        self.assertEqual([line["big"] for line in self.lines(stream)], [1, 10**20])

    def test_failure(self) -> None:
        """A logged failure's traceback is in the line, still one line."""
        stream = io.StringIO()
        log = Logger(observer=JsonLogObserver(stream, "n1"))
        try:
            raise ValueError("boom")
        except ValueError:
            log.failure("{server} raised", Failure(), server="s", node_id="other")
        (line,) = self.lines(stream)
        self.assertEqual(line["level"], "critical")
        self.assertIn("ValueError: boom", str(line["traceback"]))
        self.assertEqual(line["node_id"], "n1")  # the reserved keys win

    def test_failure_without_words(self) -> None:
        """
        A failure logged with no message of its own (as Twisted logs an
        unhandled error in a Deferred, after a line that says so) is named
        by its type and message.
        """
        stream = io.StringIO()
        log = Logger(observer=JsonLogObserver(stream, "n1"))
        log.failure("", Failure(ValueError("boom")))
        (line,) = self.lines(stream)
        self.assertEqual(line["event"], "ValueError: boom")
        self.assertIn("ValueError: boom", str(line["traceback"]))

    def test_level_filter(self) -> None:
        """Debug events are left out, as in the text log."""
        stream = io.StringIO()
        log = Logger(observer=json_observer(stream, "n1"))
        log.debug("quiet")
        log.info("loud")
        self.assertEqual([line["event"] for line in self.lines(stream)], ["loud"])

    def test_standard_logging(self) -> None:
        """
        What Python's logging would print as a last resort (an app's
        warnings, asyncio's "Task exception was never retrieved") is a
        line of the node's log, traceback and all; an app's own handlers
        keep theirs, and what is under a warning stays out.
        """
        self.patch(logging, "lastResort", logging.lastResort)
        self.patch(logging.getLogger(), "handlers", list(logging.getLogger().handlers))
        bridge_standard_logging()
        stream = io.StringIO()
        observer = JsonLogObserver(stream, "n1")
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        app = logging.getLogger("relaytx.test.app")
        self.patch(app, "propagate", False)  # (the test runner's own handlers are above it)
        app.warning("disk %s full", "/tmp")
        app.info("not shown")
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            app.exception("it broke")
        warning, error = self.lines(stream)
        self.assertEqual(
            (warning["level"], warning["event"], warning["logger"]),
            ("warn", "disk /tmp full", "relaytx.test.app"),
        )
        self.assertEqual((error["level"], error["event"]), ("error", "it broke"))
        self.assertIn("ZeroDivisionError", error["traceback"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        seen: list[str] = []
        own = logging.Handler()
        own.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
        app.addHandler(own)
        self.addCleanup(app.removeHandler, own)
        app.warning("to the app's handler")
        self.assertEqual(seen, ["to the app's handler"])
        self.assertEqual(len(self.lines(stream)), 2)

    def test_module_function(self) -> None:
        """
        logging.warning() itself, which configures a handler of its own on
        a root that has none, leaves the node's log the only place it
        goes, for it and for every record after it.
        """
        root = logging.getLogger()
        self.patch(root, "handlers", [])  # (as in a node: the runner's own left out)
        self.patch(logging, "lastResort", logging.lastResort)
        bridge_standard_logging()
        stream = io.StringIO()
        observer = JsonLogObserver(stream, "n1")
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        logging.warning("root %s", "hello")
        logging.getLogger("relaytx.test.later").warning("later")
        self.assertEqual(
            [(line["logger"], line["event"]) for line in self.lines(stream)],
            [("root", "root hello"), ("relaytx.test.later", "later")],
        )
        self.assertEqual([type(h).__name__ for h in root.handlers], ["_RootFallback"])
        bridge_standard_logging()  # (once)
        self.assertEqual(len(root.handlers), 1)

    def test_option(self) -> None:
        """--log-format takes text or json, and nothing else."""
        options = Options()
        options.parseOptions(["--node-id", "n1", "--log-format", "json"])
        assert options.config is not None
        self.assertEqual(options.config.log_format, "json")
        self.assertEqual(build_config({"node_id": "n1"}).log_format, "text")
        with self.assertRaises(ConfigError):
            build_config({"node_id": "n1", "log_format": "xml"})


class _Port:
    def __init__(self, address: object) -> None:
        self._address = address

    def getHost(self) -> object:
        return self._address


class StartupLineTests(SynchronousTestCase):
    """The start-up log names the node id, its address, servers and peers."""

    def test_line(self) -> None:
        """One info event carries all four, in its message and as fields."""
        node = memory_node(
            "n1", MemoryReactorClock(), add_peer=["ws://127.0.0.1:9001", "n3@ws://10.0.0.3:80"]
        )
        node.expose("counter", Counter())
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        port = _Port(IPv4Address("TCP", "127.0.0.1", 8080))
        startup_line(port, node.config, sorted(node.local_servers()), "0")  # type: ignore[arg-type]
        (event,) = [e for e in events if "servers" in e]
        self.assertEqual(event["node_id"], "n1")
        self.assertEqual(event["address"], "http://127.0.0.1:8080")
        self.assertEqual(event["servers"], ["counter", "node"])
        self.assertEqual(event["peers"], ["ws://127.0.0.1:9001", "n3@ws://10.0.0.3:80"])
        from twisted.logger import formatEvent

        self.assertEqual(
            formatEvent(event),
            "node n1 listening on http://127.0.0.1:8080; servers: ['counter', 'node']; "
            "peers: ['ws://127.0.0.1:9001', 'n3@ws://10.0.0.3:80']",
        )

    def test_tls_for_dialling_only(self) -> None:
        """A node whose [tls] has only a CA (to dial wss:// peers) listens on plain http."""
        pem = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")
        node = memory_node("n1", MemoryReactorClock(), port="8080", tls={"ca": pem})
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        port = _Port(IPv4Address("TCP", "127.0.0.1", 8080))
        startup_line(port, node.config, [], "0")  # type: ignore[arg-type]
        (event,) = [e for e in events if "servers" in e]
        self.assertEqual(event["address"], "http://127.0.0.1:8080")

    def test_tls_endpoint(self) -> None:
        """A node listening on an ssl: endpoint says https."""
        pem = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")
        node = memory_node("n1", MemoryReactorClock(), port=f"ssl:8443:privateKey={pem}")
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        port = _Port(IPv4Address("TCP", "127.0.0.1", 8443))
        startup_line(port, node.config, [], "0")  # type: ignore[arg-type]
        (event,) = [e for e in events if "servers" in e]
        self.assertEqual(event["address"], "https://127.0.0.1:8443")
