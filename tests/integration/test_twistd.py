"""
The command line end to end: C{twistd -n relay}, C{relay node} and
C{relay call} as subprocesses talking to real nodes on 127.0.0.1.

Every wait is bounded; every process a test starts is killed in its cleanup.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .helpers import free_port, write_app

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COUNTER = os.path.join(ROOT, "examples", "counter.py")
BIN = os.path.dirname(sys.executable)

#: How long a node may take to answer /health after it is started, and a
#: process to exit after a signal or a start-up error. Generous: some tests
#: start ten processes at once on two cores, each importing Twisted, and a
#: test passes as soon as they are done.
START_DEADLINE = 60.0
EXIT_DEADLINE = 60.0


def twistd(*args: str) -> list[str]:
    """:returns: the command line of C{twistd -n relay ARGS}."""
    script = os.path.join(BIN, "twistd")
    if os.access(script, os.X_OK):
        return [script, "-n", "relay", *args]
    run = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    return [sys.executable, "-c", run, "-n", "relay", *args]


def relay(*args: str) -> list[str]:
    """:returns: the command line of C{relay ARGS}."""
    script = os.path.join(BIN, "relay")
    if os.access(script, os.X_OK):
        return [script, *args]
    return [sys.executable, "-m", "relaytx.cli", *args]


def rpc(port: int, body: Any) -> Any:
    """POST C{body} as JSON to the node's /rpc and return the decoded answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/rpc", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    assert response.status == 200, (response.status, data)
    return json.loads(data)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Process:
    """A started subprocess whose output goes to files."""

    def __init__(
        self,
        command: Sequence[str],
        directory: str,
        ignore_sigint: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.stdout_path = os.path.join(directory, "stdout")
        self.stderr_path = os.path.join(directory, "stderr")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                self.command,
                cwd=directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                # As a shell starts a background job.
                preexec_fn=_ignore_sigint if ignore_sigint else None,
            )

    def stdout(self) -> str:
        """:returns: what the process wrote on stdout so far."""
        with open(self.stdout_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stderr(self) -> str:
        """:returns: what the process wrote on stderr so far."""
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait(self, timeout: float = EXIT_DEADLINE) -> int:
        """:returns: the exit status, waiting at most C{timeout} seconds."""
        return self.popen.wait(timeout)

    def kill(self) -> None:
        """Kill the process if it still runs, and reap it."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(EXIT_DEADLINE)


class CommandLineTestCase(SynchronousTestCase):
    """Start processes in temporary directories and wait for nodes."""

    def tempdir(self) -> str:
        """:returns: a new directory, removed after the test."""
        path = tempfile.mkdtemp(prefix="relaytx-it-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def start(
        self, command: Sequence[str], ignore_sigint: bool = False, env: dict[str, str] | None = None
    ) -> Process:
        """Start C{command} in a fresh directory; it is killed after the test."""
        process = Process(command, self.tempdir(), ignore_sigint, env)
        self.addCleanup(process.kill)
        return process

    def wait_healthy(self, process: Process, port: int) -> dict[str, Any]:
        """
        Poll C{/health} until the node answers 200, it exits, or
        L{START_DEADLINE} passes.

        :returns: the health answer.
        """
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                self.fail(
                    f"{process.command} exited {process.popen.returncode}: {process.stderr()}"
                )
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/health")
                response = conn.getresponse()
                body = response.read()
                if response.status == 200:
                    health: dict[str, Any] = json.loads(body)
                    return health
            except OSError:
                pass
            finally:
                conn.close()
            # Not up yet: a short bounded wait that also notices an early exit.
            try:
                process.popen.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        self.fail(f"{process.command} not healthy within {START_DEADLINE}s: {process.stderr()}")

    def start_node(self, command: Sequence[str], port: int) -> Process:
        """Start a node and wait until it is healthy."""
        process = self.start(command)
        self.wait_healthy(process, port)
        return process

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run C{relay ARGS} to completion (bounded) and return its outcome."""
        return subprocess.run(
            relay(*args),
            capture_output=True,
            text=True,
            timeout=EXIT_DEADLINE,
            stdin=subprocess.DEVNULL,
            cwd=self.tempdir(),
        )

    def slow_app(self, seconds: float = 1.5) -> str:
        """:returns: an app whose setup exposes the server C{late} C{seconds} later."""
        return write_app(
            self.tempdir(),
            "slow.py",
            "from twisted.internet import reactor, task\n"
            "from relaytx import Server, exposed\n"
            "class Late(Server):\n"
            "    @exposed\n"
            "    def hi(self):\n"
            "        return 'hi'\n"
            "def setup(node):\n"
            f"    return task.deferLater(reactor, {seconds}, node.expose, 'late', Late())\n",
        )

    def failing_app(self, seconds: float) -> str:
        """:returns: an app whose setup fails (RuntimeError: late boom) C{seconds} later."""
        return write_app(
            self.tempdir(),
            "late.py",
            "from twisted.internet import reactor, task\n"
            "def _boom():\n"
            "    raise RuntimeError('late boom')\n"
            "def setup(node):\n"
            f"    return task.deferLater(reactor, {seconds}, _boom)\n",
        )

    def assertNoTraceback(self, process: Process) -> None:
        """Neither output of C{process} holds a Python traceback."""
        self.assertNotIn("Traceback", process.stderr())
        self.assertNotIn("Traceback", process.stdout())


class JsonLogTests(CommandLineTestCase):
    """C{relay node --log-format json}: every line on stderr is one JSON object."""

    def test_appOutputIsLogged(self) -> None:
        """
        What an app prints (to stdout or stderr, at setup and in a call)
        becomes a log event like any other, not a raw line among the JSON
        ones; stdout stays empty.
        """
        app = write_app(
            self.tempdir(),
            "chatty.py",
            "import sys\n"
            "from relaytx import Server, exposed\n"
            "class Chatty(Server):\n"
            "    @exposed\n"
            "    def say(self, text):\n"
            "        print('said', text)\n"
            "        print('to stderr', text, file=sys.stderr)\n"
            "        return text\n"
            "def setup(node):\n"
            "    print('setting up')\n"
            "    node.expose('chatty', Chatty())\n",
        )
        port = free_port()
        command = relay("node", "--node-id", "n1", "--port", str(port), "--log-format", "json")
        node = self.start_node([*command, "--app", app], port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        request = {"jsonrpc": "2.0", "method": "chatty.say", "params": ["hi"], "id": 1}
        conn.request("POST", "/rpc", json.dumps(request))
        self.assertEqual(json.loads(conn.getresponse().read())["result"], "hi")
        conn.close()
        node.popen.send_signal(signal.SIGTERM)
        self.assertEqual(node.wait(), 0, node.stderr())
        self.assertEqual(node.stdout(), "")
        events = [json.loads(line) for line in node.stderr().splitlines() if line.strip()]
        for event in events:
            self.assertLessEqual({"time", "level", "node_id", "event"}, event.keys(), event)
        said = [e["event"] for e in events]
        for text in ("setting up", "said hi", "to stderr hi"):
            self.assertIn(text, said)


class TwistdNodeTests(CommandLineTestCase):
    """A counter node under twistd, called over HTTP."""

    def test_counterOverHttp(self) -> None:
        """The acceptance call answers 5, then 200 concurrent increments all count, once each."""
        port = free_port()
        node = self.start(twistd("--node-id", "n1", "--port", str(port), "--app", COUNTER))
        health = self.wait_healthy(node, port)
        self.assertEqual(health["status"], "healthy")
        self.assertEqual(health["node_id"], "n1")
        self.assertFalse(
            os.path.exists(os.path.join(os.path.dirname(node.stdout_path), "twistd.pid"))
        )

        answer = rpc(
            port,
            {"jsonrpc": "2.0", "method": "counter_server.increment", "params": [5], "id": 1},
        )
        self.assertEqual(answer, {"jsonrpc": "2.0", "result": 5, "id": 1})

        def increment(i: int) -> int:
            body = {"jsonrpc": "2.0", "method": "counter_server.increment", "params": [1], "id": i}
            answer = rpc(port, body)
            self.assertEqual(answer["id"], i)
            result: int = answer["result"]
            return result

        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(increment, range(200)))
        # The actor ran them one at a time: every intermediate count was seen exactly once.
        self.assertEqual(sorted(results), list(range(6, 206)))
        answer = rpc(port, {"jsonrpc": "2.0", "method": "counter_server.get", "id": 2})
        self.assertEqual(answer["result"], 205)
        self.assertNoTraceback(node)

    def test_relayCall(self) -> None:
        """relay call prints results as JSON and exits 0, or prints the error code and exits 1."""
        port = free_port()
        self.start_node(twistd("--node-id", "n1", "--port", str(port), "--app", COUNTER), port)
        url = f"http://127.0.0.1:{port}"

        done = self.run_cli("call", url, "counter_server", "increment", "3")
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, "3\n", ""))

        done = self.run_cli("call", url, "node", "echo", "1", "x", '{"a": [true]}', "NaN")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout), [1, "x", {"a": [True]}, "NaN"])

        done = self.run_cli("call", url, "counter_server", "get", "--node", "n1", "--timeout", "5")
        self.assertEqual((done.returncode, done.stdout), (0, "3\n"))

        done = self.run_cli("call", f"127.0.0.1:{port}/", "node", "info")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["node_id"], "n1")

        done = self.run_cli("call", url, "no_such_server", "increment")
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stdout, "")
        self.assertIn("error -32601", done.stderr)

        done = self.run_cli("call", url, "counter_server", "get", "--node", "n9")
        self.assertEqual(done.returncode, 1)
        self.assertIn("error -32002", done.stderr)

        done = self.run_cli("call", url, "counter_server", "increment", "x")
        self.assertEqual(done.returncode, 1)
        self.assertIn("error -32000", done.stderr)
        self.assertNotIn("Traceback", done.stderr)

    def test_relayCallUnreachable(self) -> None:
        """relay call to a port nobody listens on exits 2 with one error line."""
        done = self.run_cli("call", f"http://127.0.0.1:{free_port()}", "node", "ping")
        self.assertEqual(done.returncode, 2)
        self.assertEqual(done.stdout, "")
        self.assertEqual(len(done.stderr.splitlines()), 1)
        self.assertIn("relay: error: cannot call", done.stderr)


class TwoWayLinkTests(CommandLineTestCase):
    """Two relay node processes whose link carries large messages both ways."""

    def test_largeCallsBothWays(self) -> None:
        """
        40 clients of B each calling node.echo on A with 500 KB, at once:
        large calls one way, large answers the other. Neither node stops
        reading the other (both would wait for ever, and take the link for
        dead): every call succeeds or is refused (-32005), and the link
        stays up.
        """
        port_a, port_b = free_port(), free_port()
        a = self.start(relay("node", "--node-id", "A", "--port", str(port_a)))
        self.wait_healthy(a, port_a)
        b = self.start(
            relay(
                "node", "--node-id", "B", "--port", str(port_b),
                "--add-peer", f"ws://127.0.0.1:{port_a}",
            )
        )  # fmt: skip
        self.wait_healthy(b, port_b)
        deadline = time.monotonic() + START_DEADLINE
        ping = {"jsonrpc": "2.0", "method": "A/node.ping", "id": 0}
        while "result" not in rpc(port_b, ping) and time.monotonic() < deadline:
            time.sleep(0.05)
        call = json.dumps(
            {"jsonrpc": "2.0", "method": "A/node.echo", "params": ["x" * 500_000], "id": 1}
        )

        def outcome() -> Any:
            conn = http.client.HTTPConnection("127.0.0.1", port_b, timeout=10)
            try:
                conn.request("POST", "/rpc", call, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
            finally:
                conn.close()
            if response.status == 503:
                return "busy"  # (B holds as many bodies from one address as it takes)
            self.assertEqual(response.status, 200, data[:200])
            return json.loads(data).get("error", {}).get("code", "ok")

        def client(_: int) -> list[Any]:
            return [outcome() for _ in range(20)]

        with ThreadPoolExecutor(40) as pool:
            outcomes = [o for r in pool.map(client, range(40)) for o in r]
        # A call may be refused, on a loaded machine: -32005 when more than
        # the link may hold waits at once, 503 when more bodies than B takes
        # from one address arrive at once. None is lost.
        self.assertEqual(
            set(outcomes) - {"ok", -32005, "busy"}, set(), sorted(set(map(str, outcomes)))
        )
        self.assertGreater(outcomes.count("ok"), 200)
        metrics = http.client.HTTPConnection("127.0.0.1", port_b, timeout=10)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        metrics.close()
        self.assertIn('relaytx_links_lost_total{cause="silent"} 0.0', text)


class SlowSetupTests(CommandLineTestCase):
    """A node whose app's setup returns a Deferred serves once it has fired."""

    def test_servesOnceSetUp(self) -> None:
        """
        Under relay node and twistd alike, the first /health answered
        already counts the server the setup exposes 1.5 s after start, and
        the server answers its first call: nobody sees the node without it.
        """
        app = self.slow_app()
        for command in (relay, twistd):
            port = free_port()
            args = ["--node-id", "n1", "--port", str(port), "--app", app]
            node = self.start(command("node", *args) if command is relay else command(*args))
            health = self.wait_healthy(node, port)
            self.assertEqual(health["server_count"], 2, command)
            answer = rpc(port, {"jsonrpc": "2.0", "method": "late.hi", "id": 1})
            self.assertEqual(answer, {"jsonrpc": "2.0", "result": "hi", "id": 1})
            self.assertIn("servers: ['late', 'node']", node.stderr() + node.stdout())
            self.assertNoTraceback(node)

    def test_dialsOnceSetUp(self) -> None:
        """A node dials its peers once its apps are set up: they see it with its servers."""
        app = self.slow_app()
        port_a, port_b = free_port(), free_port()
        a = self.start(relay("node", "--node-id", "A", "--port", str(port_a)))
        self.wait_healthy(a, port_a)
        started = time.monotonic()
        self.start(
            relay(
                "node", "--node-id", "B", "--port", str(port_b), "--app", app,
                "--add-peer", f"ws://127.0.0.1:{port_a}",
            )
        )  # fmt: skip
        deadline = started + START_DEADLINE
        linked = None
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", port_a, timeout=10)
            conn.request("GET", "/registry/peers")
            peers = json.loads(conn.getresponse().read())
            conn.close()
            if "B" in peers and linked is None:
                linked = time.monotonic() - started
            if peers.get("B", {}).get("server_count") == 2:
                break  # (its servers come in its first advert, just after the link)
            self.assertLess(time.monotonic(), deadline, f"B never linked with its servers: {peers}")
            time.sleep(0.05)
        assert linked is not None
        self.assertGreaterEqual(linked, 1.5)  # not before the setup was done


class SignalTests(CommandLineTestCase):
    """SIGTERM and SIGINT stop nodes cleanly."""

    def terminated_twice(
        self, command: Callable[[int], list[str]], gaps: Sequence[float]
    ) -> list[tuple[float, Process]]:
        """
        Start one node per gap, and once each is healthy send it SIGTERM,
        then (if it still runs) another after that gap.

        :returns: each gap and its node's process.
        """
        nodes = []
        for gap in gaps:
            port = free_port()
            nodes.append((gap, port, self.start(command(port))))
        for gap, port, node in nodes:
            self.wait_healthy(node, port)
            node.popen.send_signal(signal.SIGTERM)
            time.sleep(gap)
            if node.popen.poll() is None:
                node.popen.send_signal(signal.SIGTERM)
        return [(gap, node) for gap, _, node in nodes]

    def test_twistdSigterm(self) -> None:
        """SIGTERM ends twistd with 0 or death by SIGTERM, and frees its port."""
        port = free_port()
        node = self.start_node(twistd("--port", str(port)), port)
        node.popen.send_signal(signal.SIGTERM)
        self.assertIn(node.wait(), (0, -signal.SIGTERM))
        self.assertNoTraceback(node)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))

    def test_relayNodeSignals(self) -> None:
        """relay node exits with exactly 0 on SIGTERM and on SIGINT."""
        nodes = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            port = free_port()
            nodes.append((sig, port, self.start(relay("node", "--port", str(port)))))
        for sig, port, node in nodes:
            self.wait_healthy(node, port)
            node.popen.send_signal(sig)
        for sig, _port, node in nodes:
            try:
                status = node.wait()
            except subprocess.TimeoutExpired:
                self.fail(f"still running {EXIT_DEADLINE}s after {sig!r}: {node.stderr()}")
            self.assertEqual(status, 0, f"{sig!r}: {node.stderr()}")
            self.assertNoTraceback(node)
            self.assertNotIn("relay: error:", node.stderr())

    def test_signalDuringStartUp(self) -> None:
        """
        A stop signal while a node starts (here, while an app is imported)
        stops it once its reactor runs: relay node exits 0, twistd 0 or by
        the signal. SIGINT had raised KeyboardInterrupt wherever start-up
        was (swallowed inside a weakref callback: the node went on to
        serve), SIGTERM had ended the process by the signal.
        """
        directory = self.tempdir()
        marker = os.path.join(directory, "importing")
        app = write_app(
            directory,
            "slow_import.py",
            "import time\n"
            f"open({marker!r}, 'w').close()\n"
            "time.sleep(1.0)\n"
            "def setup(node):\n"
            "    pass\n",
        )
        runs = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            for command in (lambda *a: relay("node", *a), twistd):
                if os.path.exists(marker):
                    os.remove(marker)
                node = self.start(command("--port", str(free_port()), "--app", app))
                deadline = time.monotonic() + START_DEADLINE
                while not os.path.exists(marker):
                    self.assertIsNone(node.popen.poll(), node.stderr())
                    self.assertLess(time.monotonic(), deadline, "the app was never imported")
                    time.sleep(0.01)
                node.popen.send_signal(sig)
                runs.append((sig, command is twistd, node))
        for sig, under_twistd, node in runs:
            try:
                status = node.wait()
            except subprocess.TimeoutExpired:
                self.fail(f"still running {EXIT_DEADLINE}s after {sig!r}: {node.stderr()}")
            expected = (0, -sig) if under_twistd else (0,)
            self.assertIn(status, expected, f"{sig!r}, twistd {under_twistd}: {node.stderr()}")
            self.assertNoTraceback(node)
            self.assertNotIn("relay: error:", node.stderr())

    def test_twistdSignalWhileItImportsTheNode(self) -> None:
        """
        A SIGINT while twistd imports the node's module (made slow here by
        an import hook) stops the node once its reactor runs: 0 or by the
        signal, no traceback. It raised KeyboardInterrupt there (swallowed
        inside a weakref callback, the node went on to serve).
        """
        hooks = self.tempdir()
        marker = os.path.join(hooks, "importing")
        write_app(
            hooks,
            "sitecustomize.py",
            "import importlib.abc, sys, time\n"
            "class Slow(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'relaytx.node':\n"
            f"            open({marker!r}, 'w').close()\n"
            "            time.sleep(1.0)\n"
            "        return None\n"
            "sys.meta_path.insert(0, Slow())\n",
        )
        paths = [hooks, *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        node = self.start(twistd("--port", str(free_port())), env=env)
        deadline = time.monotonic() + START_DEADLINE
        while not os.path.exists(marker):
            self.assertIsNone(node.popen.poll(), node.stderr())
            self.assertLess(time.monotonic(), deadline, "relaytx.node was never imported")
            time.sleep(0.01)
        node.popen.send_signal(signal.SIGINT)
        try:
            status = node.wait()
        except subprocess.TimeoutExpired:
            self.fail(f"still running {EXIT_DEADLINE}s after SIGINT: {node.stderr()}")
        self.assertIn(status, (0, -signal.SIGINT), node.stderr())
        self.assertNoTraceback(node)

    def test_relayNodeSecondSigterm(self) -> None:
        """
        A second SIGTERM while relay node stops (timeout(1) sends two, to
        the process and to its group) still leaves exit status 0.
        """
        for gap, node in self.terminated_twice(
            lambda port: relay("node", "--port", str(port)), (0.002, 0.005, 0.008)
        ):
            self.assertEqual(node.wait(), 0, f"second SIGTERM after {gap}s: {node.stderr()}")
            self.assertNoTraceback(node)  # (no ReactorNotRunning: the second is ignored)

    def test_twistdSecondSigterm(self) -> None:
        """
        A second SIGTERM while a node under twistd stops is ignored, as
        relay node ignores it: no ReactorNotRunning in its log.
        """
        for gap, node in self.terminated_twice(
            lambda port: twistd("--port", str(port)), (0.0, 0.001, 0.002, 0.004)
        ):
            self.assertIn(node.wait(), (0, -signal.SIGTERM), f"after {gap}s: {node.stderr()}")
            self.assertNotIn("ReactorNotRunning", node.stdout() + node.stderr())
            self.assertNoTraceback(node)

    def test_signalAsSoonAsListening(self) -> None:
        """
        SIGTERM or SIGINT sent the moment the port accepts (before the
        reactor runs and puts its own handlers in place) stops the node as
        a later one does: relay node exits 0, twistd 0 or by that signal;
        no signal is lost, and there is no false listen error.
        """
        runs = [
            (command, sig)
            for command in (partial(relay, "node"), twistd)
            for sig in (signal.SIGTERM, signal.SIGINT)
            for _ in range(2)
        ]
        for command, sig in runs:
            port = free_port()
            node = self.start(command("--port", str(port)))
            deadline = time.monotonic() + START_DEADLINE
            while node.popen.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.5).close()
                    break
                except OSError:
                    time.sleep(0.001)
            node.popen.send_signal(sig)
            try:
                status = node.wait(15)
            except subprocess.TimeoutExpired:
                self.fail(f"{sig!r} lost: still running: {node.stderr()}")
            allowed = (0,) if command is not twistd else (0, -sig)
            self.assertIn(status, allowed, f"{command('')[0]} {sig!r}: {node.stderr()}")
            self.assertNotIn("relay: error:", node.stderr())
            self.assertNoTraceback(node)

    def sigint_in_background(self, command: Callable[..., list[str]]) -> tuple[int, Process]:
        """
        Start C{command("--port", PORT)} with SIGINT ignored, as a shell
        starts a background job, and send it SIGINT once it is healthy.

        :returns: its exit status, and the process.
        """
        port = free_port()
        node = self.start(command("--port", str(port)), ignore_sigint=True)
        self.wait_healthy(node, port)
        node.popen.send_signal(signal.SIGINT)
        try:
            return node.wait(), node
        except subprocess.TimeoutExpired:
            self.fail(f"SIGINT ignored: {node.stdout()}{node.stderr()}")

    def test_relayNodeSigintInBackground(self) -> None:
        """relay node started with SIGINT ignored (a background job) still stops on SIGINT."""
        status, node = self.sigint_in_background(partial(relay, "node"))
        self.assertEqual(status, 0, node.stderr())

    def test_twistdSigintInBackground(self) -> None:
        """twistd -n relay started with SIGINT ignored stops on SIGINT as twistd does: 0 or -2."""
        status, _ = self.sigint_in_background(twistd)
        self.assertIn(status, (0, -signal.SIGINT))


class BadStartTests(CommandLineTestCase):
    """A bad start ends the process with one 'relay: error:' line and no traceback."""

    def setUp(self) -> None:
        self.apps = self.tempdir()
        self.raising_app = os.path.join(self.apps, "raising.py")
        with open(self.raising_app, "w") as f:
            f.write("def setup(node):\n    raise RuntimeError('setup boom')\n")
        self.late_app = self.failing_app(0.2)
        self.busy = socket.socket()
        self.addCleanup(self.busy.close)
        self.busy.bind(("127.0.0.1", 0))
        self.busy.listen(1)

    def cases(self) -> dict[str, tuple[list[str], str]]:
        """:returns: argument lists by case name, with a fragment of the expected error."""
        busy = str(self.busy.getsockname()[1])
        return {
            "unknown flag": (["--bogus"], "--bogus"),
            "bad node id": (["--node-id", "bad id!"], "--node-id"),
            "port in use": (["--port", busy], "cannot listen"),
            "bad port": (["--port", "http://x"], "--port"),
            "bad peer": (["--add-peer", "ftp://127.0.0.1:1"], "--add-peer"),
            "missing TLS key": (["--port", "ssl:0:privateKey=missing.pem"], "missing.pem"),
            "missing app": (["--app", "no_such_app.py"], "no such file"),
            "setup raises": (["--app", self.raising_app], "setup boom (at "),
            "setup fails later": (["--app", self.late_app], "late boom (at "),
        }

    def check(self, command: Any) -> None:
        """Run every case with C{command} in parallel and check how each ended."""
        started = {}
        for name, (args, expected) in self.cases().items():
            if "--port" not in args:
                args = [*args, "--port", str(free_port())]
            started[name] = (self.start(command(*args)), expected)
        for name, (process, expected) in started.items():
            status = process.wait()
            stderr = process.stderr()
            errors = [line for line in stderr.splitlines() if "relay: error:" in line]
            self.assertNotEqual(status, 0, f"{name}: {stderr}")
            self.assertEqual(len(errors), 1, f"{name}: {stderr}")
            self.assertTrue(errors[0].startswith("relay: error: "), f"{name}: {errors}")
            self.assertIn(expected, errors[0], name)
            # It is the last line (after the shutdown's log lines, where the
            # log is stderr too).
            self.assertEqual(stderr.strip().splitlines()[-1], errors[0], name)
            if name.startswith("setup"):
                # The app's traceback is in the log, and when that is
                # stderr, the error line comes after it.
                log = process.stdout() + stderr
                self.assertIn("Traceback", log, name)
                self.assertIn("boom", log.split("Traceback", 1)[1], name)
                if "Traceback" in stderr:
                    self.assertGreater(stderr.index(errors[0]), stderr.index("Traceback"), name)
            else:
                self.assertNoTraceback(process)
            self.assertNotIn("Usage:", process.stdout(), name)

    def test_twistd(self) -> None:
        """twistd -n relay refuses each bad start with one line on stderr."""
        self.check(twistd)

    def test_relayNode(self) -> None:
        """relay node refuses each bad start with one line on stderr."""
        self.check(lambda *args: relay("node", *args))

    def test_relayNodeStatus(self) -> None:
        """relay node exits 2 for bad options and 1 for start-up failures."""
        busy = str(self.busy.getsockname()[1])
        usage = self.start(relay("node", "--node-id", "bad id!"))
        startup = self.start(relay("node", "--port", busy))
        self.assertEqual(usage.wait(), 2)
        self.assertEqual(startup.wait(), 1)


def daemon(*args: str) -> list[str]:
    """:returns: the command line of C{twistd --pidfile twistd.pid relay ARGS}: a daemon."""
    return [*twistd()[:-2], "--pidfile", "twistd.pid", "relay", *args]


class TwistdProcessTests(CommandLineTestCase):
    """
    What twistd cannot hear of by itself: a daemon's parent told how its
    start-up ended, pid files removed after a fatal error, and the node's
    log (its level, its rotation) under twistd.
    """

    def setUp(self) -> None:
        self.busy = socket.socket()
        self.addCleanup(self.busy.close)
        self.busy.bind(("127.0.0.1", free_port()))
        self.busy.listen(1)
        self.late_app = self.failing_app(0.5)

    def gone(self, path: str) -> None:
        """Wait (bounded) until C{path} is no more."""
        deadline = time.monotonic() + EXIT_DEADLINE
        while os.path.exists(path):
            self.assertLess(time.monotonic(), deadline, f"{path} still there")
            time.sleep(0.05)

    def stop_daemon(self, directory: str) -> None:
        """Stop the daemon whose pid file is in C{directory}, if it runs."""
        path = os.path.join(directory, "twistd.pid")
        try:
            with open(path) as f:
                pid = int(f.read())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        self.gone(path)

    def test_daemonFailures(self) -> None:
        """
        A daemon whose port is in use, or whose app's setup fails later,
        ends its parent with status 1 and why; the log says it too, and the
        pid file goes (the parent of the first waited for ever).
        """
        busy = str(self.busy.getsockname()[1])
        deep = os.path.join(self.tempdir(), "a_rather_long_directory_name_for_apps", "and_more")
        os.makedirs(deep)
        long_app = os.path.join(deep, "late_failing_application.py")
        shutil.copy(self.late_app, long_app)
        for args, expected in (
            (["--port", busy], "cannot listen"),
            (["--port", str(free_port()), "--app", self.late_app], "setup failed: RuntimeError"),
            (["--port", str(free_port()), "--app", long_app], "late boom"),  # (past 100 bytes)
        ):
            with self.subTest(expected=expected):
                parent = self.start(daemon(*args))
                directory = os.path.dirname(parent.stdout_path)
                self.addCleanup(self.stop_daemon, directory)
                self.assertEqual(parent.wait(), 1, parent.stderr())
                [line] = parent.stderr().splitlines()  # one clear line, as relay node's
                self.assertTrue(line.startswith("relay: error: "), line)
                self.assertIn(expected, line)
                self.gone(os.path.join(directory, "twistd.pid"))
                with open(os.path.join(directory, "twistd.log")) as f:
                    [line] = [line for line in f if "relay: error: " in line]
                self.assertIn(expected, line)

    def test_daemonStoppedDuringSetup(self) -> None:
        """
        A daemon stopped while its apps are set up ends its parent (1, and
        why): it had waited for ever for a word that never came.
        """
        parent = self.start(daemon("--port", str(free_port()), "--app", self.slow_app(30.0)))
        directory = os.path.dirname(parent.stdout_path)
        self.addCleanup(self.stop_daemon, directory)
        pidfile = os.path.join(directory, "twistd.pid")
        deadline = time.monotonic() + START_DEADLINE
        while not os.path.exists(pidfile) or not open(pidfile).read().strip():
            self.assertLess(time.monotonic(), deadline, "no pid file")
            time.sleep(0.05)
        with open(pidfile) as f:
            os.kill(int(f.read()), signal.SIGTERM)
        self.assertEqual(parent.wait(), 1, parent.stderr())
        [line] = parent.stderr().splitlines()
        self.assertIn("relay: error: stopped before it served", line)
        self.gone(pidfile)
        with open(os.path.join(directory, "twistd.log")) as f:
            self.assertNotIn("Traceback", f.read())  # (the pid file removed once)

    def test_daemonDiesWithoutAWord(self) -> None:
        """
        A daemon that dies before it says how its start-up went ends its
        parent (1, and why): twistd's parent kept the status pipe's write
        end open, and so waited for ever.
        """
        app = write_app(
            self.tempdir(),
            "dies.py",
            "import os\n"
            "from twisted.internet import reactor, task\n"
            "def setup(node):\n"
            "    return task.deferLater(reactor, 0.2, os._exit, 3)\n",
        )
        parent = self.start(daemon("--port", str(free_port()), "--app", app))
        self.assertEqual(parent.wait(), 1, parent.stderr())
        [line] = parent.stderr().splitlines()
        self.assertEqual(line, "relay: error: the daemon ended before it served")

    def test_errorsBeforeTheFork(self) -> None:
        """An error found before a daemon forks is one line too, not two."""
        for args in (["--app", "nope.py"], ["--log-format", "json", "--app", "nope.py"]):
            with self.subTest(args=args):
                parent = self.start(daemon("--port", str(free_port()), *args))
                self.assertEqual(parent.wait(), 1, parent.stderr())
                [line] = parent.stderr().splitlines()
                self.assertEqual(line, "relay: error: --app nope.py: no such file")

    def test_twistdPlaces(self) -> None:
        """
        A pid file, run directory or chroot that cannot serve is one line
        on stderr, in the foreground and for a daemon (twistd found them
        only as it set the process up: a traceback on stdout, or alone; or
        said its own lines of text for a pid file in use or without a pid).
        """
        missing = os.path.join(self.tempdir(), "missing")
        a_directory = self.tempdir()
        in_use, junk = os.path.join(a_directory, "in_use.pid"), os.path.join(a_directory, "j.pid")
        with open(in_use, "w") as f:
            f.write(str(os.getpid()))  # (this process runs)
        with open(junk, "w") as f:
            f.write("junk")
        for place, expected in (
            (["--pidfile", os.path.join(missing, "x.pid")], "no such directory"),
            (["--pidfile", a_directory], "is a directory"),
            (["--pidfile", in_use], f"another node (pid {os.getpid()}) runs with it"),
            (["--pidfile", junk], "holds no pid"),
            (["--rundir", missing], "no such directory"),
            (["--chroot", missing], "no such directory"),
        ):
            for command in (twistd, daemon):
                with self.subTest(place=place, daemon=command is daemon):
                    argv = command("--port", str(free_port()))
                    at = argv.index("relay")
                    argv[at:at] = place
                    process = self.start(argv)
                    self.assertEqual(process.wait(), 1, process.stderr())
                    [line] = process.stderr().splitlines()
                    self.assertTrue(line.startswith(f"relay: error: {' '.join(place)}: "), line)
                    self.assertIn(expected, line)
                    self.assertNoTraceback(process)
        # A daemon opens dev/null inside its chroot (one in the foreground, none).
        argv = daemon("--port", str(free_port()))
        at = argv.index("relay")
        argv[at:at] = ["--chroot", a_directory]
        process = self.start(argv)
        self.assertEqual(process.wait(), 1, process.stderr())
        [line] = process.stderr().splitlines()
        self.assertEqual(
            line, f"relay: error: --chroot {a_directory}: a daemon needs dev/null in it"
        )

    def test_daemonServes(self) -> None:
        """A daemon's parent ends (0) once the node serves, its apps set up."""
        port = free_port()
        app = self.slow_app(3.0)
        started = time.monotonic()
        parent = self.start(daemon("--port", str(port), "--app", app))
        directory = os.path.dirname(parent.stdout_path)
        self.addCleanup(self.stop_daemon, directory)
        self.assertEqual(parent.wait(), 0, parent.stderr())
        self.assertGreaterEqual(time.monotonic() - started, 3.0)  # (not before the setup)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/health")
            self.assertEqual(conn.getresponse().status, 200)
        finally:
            conn.close()
        self.stop_daemon(directory)

    def test_foregroundPidfile(self) -> None:
        """twistd -n with a pid file asked for removes it after a fatal error."""
        busy = str(self.busy.getsockname()[1])
        command = twistd("--port", busy)
        command[command.index("-n") + 1 : command.index("-n") + 1] = ["--pidfile", "my.pid"]
        process = self.start(command)
        self.assertEqual(process.wait(), 1, process.stderr())
        self.assertFalse(
            os.path.exists(os.path.join(os.path.dirname(process.stdout_path), "my.pid"))
        )

    def test_logUnderTwistd(self) -> None:
        """
        A JSON log file under twistd is rotated on SIGUSR1 (which ended the
        process); a text log holds info and above, as relay node's does.
        """
        for log_format in ("json", "text"):
            with self.subTest(log_format=log_format):
                port = free_port()
                command = twistd("--port", str(port), "--log-format", log_format)
                command[command.index("-n") + 1 : command.index("-n") + 1] = ["-l", "node.log"]
                node = self.start_node(command, port)
                for _ in range(3):  # (each logged at debug level: left out)
                    rpc_notification = {"jsonrpc": "2.0", "method": "nope.nope"}
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    conn.request("POST", "/rpc", json.dumps(rpc_notification))
                    self.assertEqual(conn.getresponse().status, 204)
                    conn.close()
                node.popen.send_signal(signal.SIGUSR1)
                log = os.path.join(os.path.dirname(node.stdout_path), "node.log")
                deadline = time.monotonic() + EXIT_DEADLINE
                while not os.path.exists(log + ".1"):
                    self.assertIsNone(node.popen.poll(), node.stderr())
                    self.assertLess(time.monotonic(), deadline)
                    time.sleep(0.05)
                self.wait_healthy(node, port)
                with open(log + ".1") as f:
                    written = f.read()
                self.assertIn("relaytx", written)
                self.assertNotIn("nope.nope", written)
