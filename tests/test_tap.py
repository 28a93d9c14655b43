"""
Tests for L{relaytx.tap}: the node's command-line options, the twistd
plugin and the command-line node's start-up errors.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from typing import Any

import twisted.test
from twisted.application.service import IServiceMaker
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from relaytx import tap
from relaytx.config import Limits, NodeConfig, build_config
from relaytx.errors import StartupError
from relaytx.node import RelayNode
from relaytx.tap import CommandLineNode, Options, error_line, makeService, run_options
from tests.support import TempDirMixin

HERE = os.path.dirname(os.path.abspath(__file__))
COUNTER = os.path.join(os.path.dirname(HERE), "examples", "counter.py")
SERVER_PEM = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")


class TapTestCase(TempDirMixin, SynchronousTestCase):
    """Helpers: parse options with a captured error stream."""

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        # Errors that bypass Options.stderr (start-up failures) go to the
        # process's real standard error.
        self.process_stderr = io.StringIO()
        self.patch(sys, "__stderr__", self.process_stderr)

    def parse(self, *argv: str) -> Options:
        """Parse C{argv} as node options and return them."""
        options = Options()
        options.stderr = self.stderr
        options.parseOptions(list(argv))
        return options

    def assertUsageError(self, *argv: str, match: str = "") -> usage.UsageError:
        """
        Parsing C{argv} raises UsageError and writes exactly one line,
        C{relay: error: ...} containing C{match}, to Options.stderr.
        """
        self.stderr.seek(0)
        self.stderr.truncate()
        e = self.assertRaises(usage.UsageError, self.parse, *argv)
        lines = self.stderr.getvalue().splitlines(keepends=True)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("relay: error: "), lines)
        self.assertTrue(lines[0].endswith("\n"))
        self.assertIn(match, lines[0])
        self.assertEqual(lines[0], f"relay: error: {e}\n")
        self.assertEqual(self.process_stderr.getvalue(), "")
        return e

    def file(self, text: str = "secret\n") -> str:
        """Write C{text} to a new file and return its path."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path


class OptionsTests(TapTestCase):
    """Parsing every option of SPEC section 3."""

    def test_defaults(self) -> None:
        """No options give the default config: random id, 127.0.0.1:8080."""
        options = self.parse()
        assert options.config is not None
        self.assertRegex(options.config.node_id, r"\A[0-9a-f]{16}\Z")
        self.assertEqual(options.config.port, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(options.config.app, ())
        self.assertFalse(options.config.disable_registry)
        self.assertEqual(self.stderr.getvalue(), "")

    def test_allOptions(self) -> None:
        """Every option lands in the config."""
        secret = self.file()
        options = self.parse(
            "--node-id",
            "n1",
            "--port",
            "9001",
            "--interface",
            "0.0.0.0",
            "--app",
            "a.py",
            "--disable-registry",
            "--secret-file",
            secret,
            "--ping-interval",
            "2.5",
        )
        self.assertEqual(
            options.config,
            NodeConfig(
                node_id="n1",
                port="tcp:9001:interface=0.0.0.0",
                app=("a.py",),
                disable_registry=True,
                secret_file=secret,
                ping_interval=2.5,
            ),
        )

    def test_equalsForm(self) -> None:
        """--option=value works like --option value."""
        options = self.parse("--node-id=n2", "--port=tcp:9002:interface=127.0.0.1")
        assert options.config is not None
        self.assertEqual(options.config.node_id, "n2")
        self.assertEqual(options.config.port, "tcp:9002:interface=127.0.0.1")

    def test_shortPort(self) -> None:
        """-p is --port."""
        options = self.parse("-p", "9003")
        assert options.config is not None
        self.assertEqual(options.config.port, "tcp:9003:interface=127.0.0.1")

    def test_endpointPort(self) -> None:
        """--port takes a Twisted endpoint string."""
        port = f"ssl:8443:privateKey={SERVER_PEM}"
        options = self.parse("--port", port, "--interface", "0.0.0.0")
        assert options.config is not None
        self.assertEqual(options.config.port, port)

    def test_missingTlsKey(self) -> None:
        """An ssl: endpoint whose key file is missing is an option error."""
        self.assertUsageError("--port", "ssl:8443:privateKey=missing.pem", match="missing.pem")

    def test_repeatedApp(self) -> None:
        """--app is repeatable and keeps its order."""
        options = self.parse("--app", "one.py", "--app", "pkg.two", "--app=three.py")
        assert options.config is not None
        self.assertEqual(options.config.app, ("one.py", "pkg.two", "three.py"))
        self.assertEqual(options["app"], ["one.py", "pkg.two", "three.py"])

    def test_optionsNotShared(self) -> None:
        """Two Options instances do not share their repeatable lists."""
        self.parse("--app", "one.py")
        options = self.parse()
        self.assertEqual(options["app"], [])
        self.assertEqual(options["add-peer"], [])

    def test_repeatedAddPeer(self) -> None:
        """--add-peer is repeatable and keeps its order."""
        options = self.parse(
            "--add-peer", "ws://127.0.0.1:8081", "--add-peer=http://127.0.0.1:8082"
        )
        assert options.config is not None
        self.assertEqual(options.config.add_peer, ("ws://127.0.0.1:8081", "http://127.0.0.1:8082"))
        self.assertEqual(options["add-peer"], ["ws://127.0.0.1:8081", "http://127.0.0.1:8082"])

    def test_addPeerTwoIds(self) -> None:
        """One peer given with two ids, in any spelling, is refused with one line."""
        self.assertUsageError(
            "--add-peer", "a@ws://127.0.0.1:8081", "--add-peer", "b@http://127.0.0.1:8081/",
            match="one peer with two ids",
        )  # fmt: skip

    def test_badAddPeer(self) -> None:
        """A peer address that is not a ws/wss/http/https URL is refused with one line."""
        for address in ["ftp://h:1", "ws://", "ws://h:99999", "ws://h:abc"]:
            self.assertUsageError("--add-peer", address, match="--add-peer")

    def test_config(self) -> None:
        """--config (or -c) reads a TOML file; the command line wins over it."""
        path = self.file('node_id = "file"\nport = 9100\n[limits]\nmax_body_size = 10\n')
        options = self.parse("--config", path)
        assert options.config is not None
        self.assertEqual(options.config.node_id, "file")
        self.assertEqual(options.config.port, "tcp:9100:interface=127.0.0.1")
        self.assertEqual(options.config.limits, Limits(max_body_size=10))
        options = self.parse("-c", path, "--node-id", "cli", "--interface", "0.0.0.0")
        assert options.config is not None
        self.assertEqual(options.config.node_id, "cli")
        self.assertEqual(options.config.port, "tcp:9100:interface=0.0.0.0")

    def test_help(self) -> None:
        """--help prints the usage, naming every option, and exits 0."""
        options = Options()
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(SystemExit, options.parseOptions, ["--help"])
        self.assertEqual(e.code, 0)
        for name in [
            "--node-id",
            "--port",
            "--interface",
            "--add-peer",
            "--app",
            "--disable-registry",
            "--secret-file",
            "--config",
        ]:
            self.assertIn(name, out.getvalue())


class BadOptionTests(TapTestCase):
    """A bad value is a UsageError and one 'relay: error:' line."""

    def test_unknownFlag(self) -> None:
        """An unknown flag is named."""
        self.assertUsageError("--bogus", match="--bogus")

    def test_missingValue(self) -> None:
        """An option missing its value is an error."""
        self.assertUsageError("--node-id", match="node-id")

    def test_extraArgument(self) -> None:
        """A stray positional argument is an error."""
        self.assertUsageError("extra")

    def test_badNodeId(self) -> None:
        """Malformed node ids are refused."""
        for node_id in ["bad id!", "", "x" * 65, "a/b"]:
            self.assertUsageError("--node-id", node_id, match="--node-id")

    def test_badPort(self) -> None:
        """A port that is neither a number nor an endpoint, or out of range, is refused."""
        for port in ["foo", "70000", "-1", "", "http://x"]:
            self.assertUsageError("--port", port, match="--port")

    def test_badPingInterval(self) -> None:
        """A ping interval that is not a positive number of seconds is refused."""
        for value in ["x", "0", "-5", "nan", "1e9"]:
            self.assertUsageError("--ping-interval", value, match="--ping-interval")

    def test_missingSecretFile(self) -> None:
        """A secret file that does not exist is refused."""
        self.assertUsageError("--secret-file", self.mktemp(), match="--secret-file")

    def test_missingConfig(self) -> None:
        """A missing config file is refused."""
        self.assertUsageError("--config", self.mktemp(), match="--config")

    def test_badConfig(self) -> None:
        """An invalid config file is refused with one line."""
        self.assertUsageError("--config", self.file("port = \n"), match="not valid TOML")
        self.assertUsageError("--config", self.file("bogus = 1\n"), match="'bogus'")
        self.assertUsageError("--config", self.file("app = [1]\n"), match="app")


class TwistdTests(TapTestCase):
    """The plugin as twistd sees it."""

    def test_pluginDiscoverable(self) -> None:
        """twistd's plugin scan finds 'relay', built from relaytx.tap."""
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("relay", makers)
        relay = makers["relay"]
        self.assertIs(relay.options, Options)
        self.assertIs(relay.makeService, makeService)
        self.assertTrue(relay.description)

    def test_noPidfileInForeground(self) -> None:
        """twistd -n relay writes no pid file unless one is asked for."""
        config = ServerOptions()
        config.parseOptions(["-n", "relay", "--node-id", "n1"])
        self.assertEqual(config["pidfile"], "")
        self.assertEqual(config.subCommand, "relay")
        self.assertIsInstance(config.subOptions, Options)
        self.assertEqual(config.subOptions.config.node_id, "n1")

    def test_pidfileWhenDaemon(self) -> None:
        """A daemonising twistd keeps its default pid file."""
        config = ServerOptions()
        config.parseOptions(["relay", "--node-id", "n1"])
        self.assertEqual(config["pidfile"], os.path.abspath("twistd.pid"))

    def test_explicitPidfileKept(self) -> None:
        """A pid file named on twistd's command line is kept in the foreground."""
        config = ServerOptions()
        config.parseOptions(["-n", "--pidfile", "node.pid", "relay"])
        self.assertEqual(config["pidfile"], os.path.abspath("node.pid"))

    def test_defaultNamedPidfileKept(self) -> None:
        """A pid file named twistd.pid on purpose is kept in the foreground too."""
        for argv in (["--pidfile", "twistd.pid"], ["--pidfile=twistd.pid"]):
            self.patch(sys, "argv", ["twistd", "-n", *argv, "relay"])
            config = ServerOptions()
            config.parseOptions(sys.argv[1:])
            self.assertEqual(config["pidfile"], os.path.abspath("twistd.pid"), argv)

    def test_noParent(self) -> None:
        """Without a parent (relay node) the pid-file rule does nothing."""
        self.assertIsNone(self.parse().parent)

    def test_badOptionUnderTwistd(self) -> None:
        """
        Under twistd a bad option is one line on stderr and exit status 1,
        not twistd's whole usage on stdout too.
        """
        self.patch(Options, "stderr", self.stderr)
        config = ServerOptions()
        e = self.assertRaises(
            SystemExit, config.parseOptions, ["-n", "relay", "--node-id", "bad id!"]
        )
        self.assertEqual(e.code, 1)
        self.assertEqual(self.stderr.getvalue().count("\n"), 1)
        self.assertIn("relay: error: --node-id 'bad id!'", self.stderr.getvalue())


class ErrorLineTests(TapTestCase):
    """error_line, fail and run_options."""

    def test_oneLine(self) -> None:
        """A message spanning lines is written as one line."""
        out = io.StringIO()
        error_line("first\n  second\n\nthird", out)
        self.assertEqual(out.getvalue(), "relay: error: first second third\n")

    def test_defaultStream(self) -> None:
        """Without a stream the line goes to the process's real stderr."""
        error_line("oops")
        self.assertEqual(self.process_stderr.getvalue(), "relay: error: oops\n")

    def test_fail(self) -> None:
        """fail() prints the line and exits with status 1."""
        e = self.assertRaises(SystemExit, tap.fail, "bad")
        self.assertEqual(e.code, 1)
        self.assertEqual(self.process_stderr.getvalue(), "relay: error: bad\n")

    def test_runOptions(self) -> None:
        """run_options returns parsed options."""
        options = run_options(["--node-id", "n5"])
        assert options.config is not None
        self.assertEqual(options.config.node_id, "n5")

    def test_runOptionsHelp(self) -> None:
        """relay node --help names the command in its usage line and exits 0."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(SystemExit, run_options, ["--help"])
        self.assertEqual(e.code, 0)
        self.assertTrue(out.getvalue().startswith("Usage: relay node [options]\n"))

    def test_runOptionsReactor(self) -> None:
        """relay node accepts --reactor (read first: see relaytx.cli); twistd's does not."""
        for argv in (["--reactor", "poll"], ["-r", "poll"], ["--reactor=poll"]):
            options = run_options(argv)
            self.assertEqual(options["reactor"], "poll")
        self.assertRaises(usage.UsageError, self.parse, "--reactor", "poll")

    def test_version(self) -> None:
        """--version prints relaytx's version (and Twisted's), for relay node and twistd alike."""
        from relaytx import __version__

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(SystemExit, run_options, ["--version"])
        self.assertEqual(e.code, 0)
        self.assertTrue(out.getvalue().startswith(f"relaytx {__version__} (Twisted "))

    def test_runOptionsBad(self) -> None:
        """run_options exits with status 2 after one error line."""
        e = self.assertRaises(SystemExit, run_options, ["--node-id", "bad id"])
        self.assertEqual(e.code, 2)
        self.assertEqual(self.process_stderr.getvalue().count("relay: error: "), 1)


class ListenFailsReactor(MemoryReactorClock):
    """A fake reactor whose TCP ports are all taken."""

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        """Refuse, as a port in use does."""
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class CommandLineNodeTests(TapTestCase):
    """Start-up errors of the node run from the command line."""

    def node(self, reactor: Any = None, **options: Any) -> CommandLineNode:
        """A command-line node on a fake reactor."""
        options.setdefault("node_id", "n1")
        return CommandLineNode(build_config(options), reactor or MemoryReactorClock())

    def app(self, source: str) -> str:
        """Write an app file and return its path."""
        path = self.mktemp() + ".py"
        with open(path, "w") as f:
            f.write(source + "\n")
        return path

    def test_jsonLogWhereTwistdLogs(self) -> None:
        """
        Under twistd, --log-format json writes where twistd's own log would
        go: its -l file (a daemon's twistd.log by default), else stdout.
        """
        from twisted.application.service import Application
        from twisted.logger import ILogObserver, Logger

        previous = signal.getsignal(signal.SIGUSR1)  # (a log file is rotated on SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        path = self.mktemp()
        for options, where in [
            ({"logfile": path, "nodaemon": True}, path),
            ({"logfile": "", "nodaemon": True}, "stdout"),
        ]:
            node = self.node(log_format="json")
            node.twistd_options = options
            application = Application("relaytx")
            out = io.StringIO()
            self.patch(sys, "stdout", out)
            node.setServiceParent(application)
            observer = ILogObserver(application)
            Logger(namespace="t", observer=observer).info("hello {x}", x=1)
            if where == "stdout":
                written = out.getvalue()
            else:
                with open(path) as f:
                    written = f.read()
            self.assertEqual(json.loads(written)["event"], "hello 1", options)

    def test_syslogLeftToTwistd(self) -> None:
        """With twistd's --syslog, the node sets no log of its own: twistd's syslog takes it."""
        from twisted.application.service import Application
        from twisted.logger import ILogObserver

        for log_format in ("json", "text"):
            node = self.node(log_format=log_format)
            node.twistd_options = {"syslog": True, "nodaemon": True, "logfile": ""}
            application = Application("relaytx")
            node.setServiceParent(application)
            self.assertIsNone(ILogObserver(application, None), log_format)

    def test_isRelayNode(self) -> None:
        """A command-line node is a RelayNode that starts with exit status 0."""
        node = self.node()
        self.assertIsInstance(node, RelayNode)
        self.assertEqual(node.exit_status, 0)

    def test_loadApp(self) -> None:
        """load_app_or_exit loads an app's servers."""
        node = self.node()
        node.load_app_or_exit(COUNTER)
        self.assertIn("counter_server", node.local_servers())

    def test_missingApp(self) -> None:
        """A missing app file exits 1 with one line."""
        node = self.node()
        e = self.assertRaises(SystemExit, node.load_app_or_exit, "nowhere.py")
        self.assertEqual(e.code, 1)
        self.assertEqual(
            self.process_stderr.getvalue(), "relay: error: --app nowhere.py: no such file\n"
        )

    def test_setupRaises(self) -> None:
        """An app whose setup raises exits 1 with one line, even for a multi-line message."""
        path = self.app("def setup(node):\n    raise ValueError('line one\\nline two')")
        e = self.assertRaises(SystemExit, self.node().load_app_or_exit, path)
        self.assertEqual(e.code, 1)
        self.assertEqual(
            self.process_stderr.getvalue(),
            f"relay: error: --app {path}: setup failed: ValueError: line one line two"
            f" (at {path}:2, in setup)\n",
        )
        # The traceback goes to the log (relay node's has begun).
        [logged] = self.flushLoggedErrors(ValueError)
        self.assertIn("raise ValueError", logged.getTraceback())

    def test_setupRaisesBeforeTheLog(self) -> None:
        """Under twistd (whose log starts later), the traceback goes to stderr, before the line."""
        path = self.app("def setup(node):\n    raise ValueError('boom')")
        node = self.node()
        node.log_started = False
        beginner = _LogBeginner()
        self.patch(tap, "globalLogBeginner", beginner)
        self.assertRaises(SystemExit, node.load_app_or_exit, path)
        text = self.process_stderr.getvalue()
        self.assertTrue(text.startswith("Traceback (most recent call last):\n"), text)
        # What was logged before, held for twistd's log, is let go to stderr
        # (the global log, begun with an observer of stderr, replays it).
        [observer] = beginner.observers
        observer({"log_format": "held line", "log_level": LogLevel.warn, "log_time": 0.0})
        self.assertIn("held line", self.process_stderr.getvalue()[len(text) :])
        self.assertIn("raise ValueError('boom')", text)
        lines = text.splitlines()
        self.assertEqual([line for line in lines if "relay: error:" in line], [lines[-1]])
        self.assertEqual(self.flushLoggedErrors(ValueError), [])

    def test_setupRaisesBeforeTheJsonLog(self) -> None:
        """Under twistd with --log-format json, the traceback is a log event, not raw lines."""
        path = self.app("def setup(node):\n    raise ValueError('boom')")
        node = self.node(log_format="json")
        node.log_started = False
        beginner = _LogBeginner()
        self.patch(tap, "globalLogBeginner", beginner)
        self.assertRaises(SystemExit, node.load_app_or_exit, path)
        self.assertEqual(len(beginner.observers), 1)
        text = self.process_stderr.getvalue()
        self.assertNotIn("Traceback", text)
        self.assertEqual(text.count("relay: error:"), 1)
        [logged] = self.flushLoggedErrors(ValueError)
        self.assertIn("raise ValueError", logged.getTraceback())

    def test_importFailsNamesTheLine(self) -> None:
        """An app that fails to import names its line, and logs the traceback."""
        path = self.app("x = 1\nimport relaytx_absent_module_for_tap")
        self.assertRaises(SystemExit, self.node().load_app_or_exit, path)
        self.assertIn(f"(at {path}:2, in <module>)\n", self.process_stderr.getvalue())
        self.assertEqual(len(self.flushLoggedErrors(ModuleNotFoundError)), 1)

    def running_reactor(self) -> MemoryReactorClock:
        """A fake reactor that is running (MemoryReactorClock.run stops at once)."""
        reactor = MemoryReactorClock()
        reactor.running = True
        return reactor

    def test_setupFailsLater(self) -> None:
        """A setup Deferred that fails once the reactor runs stops it with exit status 1."""
        reactor = self.running_reactor()
        node = self.node(reactor)
        node.later = Deferred()  # type: ignore[attr-defined]  # read by the app
        node.load_app_or_exit(self.app("def setup(node):\n    return node.later"))
        node.startService()
        self.assertEqual(self.process_stderr.getvalue(), "")
        node.later.errback(RuntimeError("late"))  # type: ignore[attr-defined]
        self.assertEqual(node.exit_status, 1)
        self.assertTrue(reactor.hasStopped)
        self.assertEqual(self.process_stderr.getvalue().count("relay: error: "), 1)
        self.assertIn("setup failed: RuntimeError: late", self.process_stderr.getvalue())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 0)  # no traceback to show
        self.successResultOf(node.stopService())

    def test_setupFailsBeforeRun(self) -> None:
        """A setup failure before the reactor runs stops it as soon as it does."""
        reactor = MemoryReactorClock()
        node = self.node(reactor)
        node.later = Deferred()  # type: ignore[attr-defined]  # read by the app
        node.load_app_or_exit(self.app("def setup(node):\n    return node.later"))
        node.later.errback(RuntimeError("early"))  # type: ignore[attr-defined]
        self.assertEqual(node.exit_status, 1)
        self.assertFalse(reactor.hasStopped)
        self.assertEqual(reactor.whenRunningHooks, [(reactor.stop, (), {})])

    def test_setupSucceedsLater(self) -> None:
        """A setup Deferred that succeeds changes nothing."""
        reactor = self.running_reactor()
        node = self.node(reactor)
        node.later = Deferred()  # type: ignore[attr-defined]  # read by the app
        node.load_app_or_exit(self.app("def setup(node):\n    return node.later"))
        node.later.callback(None)  # type: ignore[attr-defined]
        self.assertEqual(node.exit_status, 0)
        self.assertFalse(reactor.hasStopped)
        self.assertEqual(self.process_stderr.getvalue(), "")

    def test_twoFatalErrors(self) -> None:
        """A second fatal error while the reactor is already stopping is reported, not raised."""
        reactor = self.running_reactor()
        node = self.node(reactor)

        def stopping() -> None:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")

        node.fatal("first")
        self.patch(reactor, "stop", stopping)
        reactor.running = True  # still shutting down
        node.fatal("second")
        self.assertEqual(
            self.process_stderr.getvalue(), "relay: error: first\nrelay: error: second\n"
        )
        self.assertEqual(node.exit_status, 1)

    def test_fatalFromNode(self) -> None:
        """The node's own fatal errors (on_fatal) go through the one-line exit path."""
        reactor = self.running_reactor()
        node = self.node(reactor)
        node._on_fatal("something broke")
        self.assertEqual(node.exit_status, 1)
        self.assertTrue(reactor.hasStopped)
        self.assertEqual(self.process_stderr.getvalue(), "relay: error: something broke\n")

    def test_portInUse(self) -> None:
        """A port in use exits 1 with one line naming the endpoint."""
        node = self.node(ListenFailsReactor(), port="9004")
        e = self.assertRaises(SystemExit, node.privilegedStartService)
        self.assertEqual(e.code, 1)
        self.assertEqual(
            self.process_stderr.getvalue(),
            "relay: error: cannot listen on tcp:9004:interface=127.0.0.1: Address already in use\n",
        )

    def test_unforeseenStartFailure(self) -> None:
        """
        Any other failure to start exits 1 with one line too, which a
        daemon's parent prints: a daemon that died of it had said nothing
        (its parent said only that it ended before it served).
        """
        node = self.node(MemoryReactorClock(), port="9006")

        def site() -> None:
            # (As in a --chroot without Python's own modules.)
            raise ModuleNotFoundError("No module named 'importlib.readers'")

        self.patch(node, "site", site)
        e = self.assertRaises(SystemExit, node.privilegedStartService)
        self.assertEqual(e.code, 1)
        self.assertEqual(
            self.process_stderr.getvalue(),
            "relay: error: could not start: ModuleNotFoundError:"
            " No module named 'importlib.readers'\n",
        )
        self.flushLoggedErrors(ModuleNotFoundError)

    def test_startAndStop(self) -> None:
        """A node starts listening on its endpoint and stops cleanly."""
        reactor = MemoryReactorClock()
        node = self.node(reactor, port="9005")
        node.privilegedStartService()
        node.startService()
        self.assertEqual([(p[0], p[3]) for p in reactor.tcpServers], [(9005, "127.0.0.1")])
        self.successResultOf(node.stopService())
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_exitOnFailure(self) -> None:
        """Under twistd, a failed node ends the process with its exit status after shutdown."""
        exits: list[int] = []
        self.patch(os, "_exit", exits.append)
        node = self.node()
        tap._exit_on_failure(node)
        self.assertEqual(exits, [])
        node.exit_status = 1
        tap._exit_on_failure(node)
        self.assertEqual(exits, [1])


class MakeServiceTests(TapTestCase):
    """makeService builds the node from parsed options."""

    def test_makeService(self) -> None:
        """The node has the configured id and the apps' servers."""
        options = self.parse("--node-id", "n9", "--app", COUNTER)
        node = makeService(options)
        self.assertIsInstance(node, CommandLineNode)
        self.assertEqual(node.node_id, "n9")
        self.assertIn("counter_server", node.local_servers())
        self.assertIsNone(node.listening_port)

    def test_badApp(self) -> None:
        """A broken app ends makeService with exit status 1 and one line."""
        options = self.parse("--app", "relaytx_no_such_app")
        e = self.assertRaises(SystemExit, makeService, options)
        self.assertEqual(e.code, 1)
        self.assertEqual(
            self.process_stderr.getvalue(),
            "relay: error: --app relaytx_no_such_app: no such module\n",
        )

    def test_nodeRefusesToBuild(self) -> None:
        """A start-up error while building the node (e.g. a bad secret) exits 1 with one line."""

        def refuse(node: CommandLineNode, *args: Any) -> None:
            raise StartupError("--secret-file s: a cluster secret needs at least 16 bytes")

        self.patch(CommandLineNode, "__init__", refuse)
        e = self.assertRaises(SystemExit, makeService, self.parse())
        self.assertEqual(e.code, 1)
        self.assertEqual(
            self.process_stderr.getvalue(),
            "relay: error: --secret-file s: a cluster secret needs at least 16 bytes\n",
        )

    def test_moduleInWorkingDirectory(self) -> None:
        """Like python -m, --app finds a module in the current directory."""
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "relaytx_cwd_app.py"), "w") as f:
            f.write("calls = []\ndef setup(node):\n    calls.append(node)\n")
        self.addCleanup(sys.modules.pop, "relaytx_cwd_app", None)
        here = os.getcwd()
        self.patch(sys, "path", [p for p in sys.path if p not in ("", here)])
        os.chdir(directory)
        self.addCleanup(os.chdir, here)
        node = makeService(self.parse("--app", "relaytx_cwd_app"))
        self.assertEqual(sys.modules["relaytx_cwd_app"].calls, [node])
        self.assertEqual(sys.path[-1], os.getcwd())


class _LogBeginner:
    """Takes the observers a node would begin the global log with."""

    def __init__(self) -> None:
        self.observers: list[Any] = []

    def beginLoggingTo(self, observers: list[Any], redirectStandardIO: bool = True) -> None:
        self.observers.extend(observers)
