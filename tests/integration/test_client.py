"""
L{relaytx.client} and the command line against real nodes (C{relay node}
and C{twistd} subprocesses on 127.0.0.1): both client flavours, many calls
in flight, deadlines and cancellation reaching the node, reconnection
after a node restarts, tokens and TLS; async methods on the asyncio
reactor; C{relay call}'s deadline and TLS options; the example of the
README's quick start; two processes with one node id.

The asyncio client runs in this process under C{asyncio.run}; every wait
is bounded, every process is killed in the test's cleanup.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from typing import Any

import websockets.asyncio.server

import relaytx.client as client
from tests.support import Authority

from .test_twistd import (
    COUNTER,
    ROOT,
    CommandLineTestCase,
    Process,
    free_port,
    relay,
    twistd,
)

EXAMPLES_DIR = os.path.join(ROOT, "examples")

PROBE_APP = """
import asyncio

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from relaytx import Server, exposed


class Probe(Server):
    def __init__(self):
        self.cancelled = 0

    @exposed
    def slow(self, seconds):
        def cancel(d):
            self.cancelled += 1
            timer.cancel()

        d = Deferred(cancel)
        timer = reactor.callLater(seconds, d.callback, seconds)
        return d

    @exposed
    def cancellations(self):
        return self.cancelled

    @exposed
    async def nap(self, seconds):
        await asyncio.sleep(seconds)
        return {"slept": seconds, "in_task": asyncio.current_task() is not None}

    @exposed
    def fail(self, message):
        raise ValueError(message)


def setup(node):
    node.expose("probe", Probe())
"""


ENDLESS_APP = """
from relaytx import Server, exposed

made = [0]  # shared: a server runs one call at a time, and the stream is one


class Endless(Server):
    @exposed
    async def items(self, size):
        pad = "x" * size
        while True:
            made[0] += 1
            yield {"n": made[0], "pad": pad}


class Made(Server):
    @exposed
    def count(self):
        return made[0]


def setup(node):
    node.expose("endless", Endless())
    node.expose("made", Made())
"""


def arun(coro: Coroutine[Any, Any, Any], limit: float = 120.0) -> Any:
    """Run C{coro} on a fresh event loop, bounded by C{limit} seconds."""

    async def bounded() -> Any:
        async with asyncio.timeout(limit):
            return await coro

    return asyncio.run(bounded())


class ClientTestCase(CommandLineTestCase):
    """Nodes for clients: the probe app written once per test."""

    def probe_app(self) -> str:
        """:returns: the path of the probe app."""
        path = os.path.join(self.tempdir(), "probe.py")
        with open(path, "w") as f:
            f.write(PROBE_APP)
        return path

    def node(self, node_id: str, *args: str, port: int | None = None) -> tuple[Process, str]:
        """Start C{relay node} and wait for it; :returns: it and its URL."""
        port = port or free_port()
        process = self.start_node(
            relay("node", "--node-id", node_id, "--port", str(port), *args), port
        )
        return process, f"http://127.0.0.1:{port}"

    def line(self) -> list[str]:
        """Start node1 (counter and probe) - node2 - node3; :returns: their URLs."""
        ports = [free_port() for _ in range(3)]
        commands = [
            ["--app", COUNTER, "--app", self.probe_app()],
            ["--add-peer", f"ws://127.0.0.1:{ports[0]}"],
            ["--add-peer", f"ws://127.0.0.1:{ports[1]}"],
        ]
        processes = [
            self.start(relay("node", "--node-id", f"node{i + 1}", "--port", str(port), *extra))
            for i, (port, extra) in enumerate(zip(ports, commands, strict=True))
        ]
        for process, port in zip(processes, ports, strict=True):
            self.wait_healthy(process, port)
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        self.wait_routes(urls[2], ["node1", "node2"])
        return urls

    def wait_routes(self, url: str, destinations: list[str]) -> None:
        """Wait until the node at C{url} has routes to C{destinations}."""

        async def routed() -> None:
            async with client.connect(url) as c:
                while True:
                    known = set()
                    for node_id in destinations:
                        try:
                            await c.on(node_id, timeout=2).node.ping()
                            known.add(node_id)
                        except client.RemoteError:
                            pass
                    if known == set(destinations):
                        return
                    await asyncio.sleep(0.1)

        arun(routed(), 60)


class AsyncioClientTests(ClientTestCase):
    """The asyncio client through node3 of a line node1 - node2 - node3."""

    def test_calls(self) -> None:
        """Calls by name and on a node, pipelined, errors with their fields, deadlines, cancels."""
        urls = self.line()

        async def scenario() -> None:
            async with client.connect(urls[2]) as c:
                self.assertEqual(await c.counter_server.increment(5), 5)
                self.assertEqual(await c.on("node1").counter_server.get(), 5)
                self.assertEqual(await c.call("node", "echo", 1, "x"), [1, "x"])

                # 500 in flight at once on the one connection, each counted once.
                counts = await asyncio.gather(*(c.counter_server.increment() for _ in range(500)))
                self.assertEqual(sorted(counts), list(range(6, 506)))

                # Errors keep the node's code, message and data.
                with self.assertRaises(client.RemoteError) as caught:
                    await c.probe.fail("bad input")
                error = caught.exception
                self.assertEqual(error.code, -32000)
                self.assertEqual(error.message, "ValueError: bad input")
                self.assertEqual(error.data["type"], "ValueError")
                self.assertEqual(error.data["node_id"], "node1")
                with self.assertRaises(client.RemoteError) as caught:
                    await c.on("node9").node.ping()
                self.assertEqual(caught.exception.code, -32002)

                # A deadline fails the call at once and reaches node1.
                started = time.monotonic()
                with self.assertRaises(client.RemoteError) as caught:
                    await c.call("probe", "slow", 30, timeout=0.5)
                self.assertEqual(caught.exception.code, -32001)
                self.assertLess(time.monotonic() - started, 5)
                for _ in range(100):
                    if await c.probe.cancellations() == 1:
                        break
                    await asyncio.sleep(0.05)
                self.assertEqual(await c.probe.cancellations(), 1)

                # Cancelling the task fails the call at once.
                task = asyncio.ensure_future(c.probe.slow(30))
                await asyncio.sleep(0.2)
                task.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await task
                self.assertEqual(await c.counter_server.get(), 505)

        arun(scenario())

    def test_blocking(self) -> None:
        """The blocking client makes the same calls, from several threads at once."""
        urls = self.line()
        with client.connect_sync(urls[2]) as c:
            self.assertEqual(c.counter_server.increment(2), 2)
            self.assertEqual(c.on("node1", timeout=5)["counter_server"].get(), 2)
            error = self.assertRaises(client.RemoteError, c.probe.fail, "no")
            self.assertEqual((error.code, error.data["type"]), (-32000, "ValueError"))
            results: list[int] = []

            def work() -> None:
                for _ in range(50):
                    results.append(c.counter_server.increment())

            threads = [threading.Thread(target=work) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            self.assertEqual(sorted(results), list(range(3, 203)))

    def test_reconnects(self) -> None:
        """A node restarts: calls it carried fail (-32006); calls made meanwhile wait, then run."""
        port = free_port()
        first, url = self.node("solo", "--app", self.probe_app(), port=port)

        async def scenario() -> None:
            async with client.connect(url, backoff=(0.05, 0.5)) as c:
                carried = asyncio.ensure_future(c.probe.slow(30))
                await asyncio.sleep(0.3)
                first.popen.send_signal(signal.SIGKILL)
                with self.assertRaises(client.RemoteError) as caught:
                    await carried
                self.assertEqual(caught.exception.code, -32006)
                waiting = asyncio.ensure_future(c.call("node", "echo", "again", timeout=60))
                await asyncio.sleep(0.5)
                self.assertFalse(waiting.done())
                again = await asyncio.to_thread(
                    self.start_node,
                    relay("node", "--node-id", "solo", "--port", str(port)),
                    port,
                )
                self.addCleanup(again.kill)
                self.assertEqual(await waiting, ["again"])
                self.assertTrue(c.connected)

        arun(scenario())

    def test_callAsTheNodeStops(self) -> None:
        """
        A call made as the node's end closes (SIGTERM, the loop busy
        meanwhile) was never sent: no stray error; it waits for the node to
        be back, and runs.
        """
        port = free_port()
        first, url = self.node("solo", port=port)
        errors: list[Any] = []

        async def scenario() -> None:
            asyncio.get_running_loop().set_exception_handler(lambda _, e: errors.append(e))
            async with client.connect(url, backoff=(0.05, 0.5)) as c:
                self.assertEqual(await c.node.echo(1), [1])
                first.popen.send_signal(signal.SIGTERM)
                first.wait()  # the loop is busy while the node's end closes
                time.sleep(0.2)
                # The call is made in the turn that reads the node's EOF.
                call = asyncio.ensure_future(c.call("node", "echo", "again", timeout=60))
                await asyncio.sleep(0.5)
                self.assertFalse(call.done(), call.done() and call.exception())
                again = await asyncio.to_thread(
                    self.start_node,
                    relay("node", "--node-id", "solo", "--port", str(port)),
                    port,
                )
                self.addCleanup(again.kill)
                self.assertEqual(await call, ["again"])

        arun(scenario())
        self.assertEqual(errors, [])

    def test_frozenNode(self) -> None:
        """With ping_interval=0.5 a frozen node (SIGSTOP) is dropped within 1.5 s, not 20."""
        process, url = self.node("frozen")
        self.addCleanup(os.kill, process.popen.pid, signal.SIGCONT)

        async def scenario() -> float:
            async with client.connect(url, ping_interval=0.5, reconnect=False) as c:
                self.assertEqual(await c.node.echo(1), [1])
                os.kill(process.popen.pid, signal.SIGSTOP)
                started = time.monotonic()
                while c.connected and time.monotonic() - started < 30:
                    await asyncio.sleep(0.05)
                return time.monotonic() - started

        self.assertLess(arun(scenario()), 3)

    def test_slowStreamWithCalls(self) -> None:
        """
        A slow consumer holds an endless generator back while calls go on
        the same connection (SPEC 12): the generator levels off.
        """
        path = os.path.join(self.tempdir(), "endless.py")
        with open(path, "w") as f:
            f.write(ENDLESS_APP)
        _, url = self.node("gen", "--app", path)

        async def scenario() -> tuple[list[int], list[Any]]:
            outcomes: list[Any] = []
            tasks: list[asyncio.Future[Any]] = []
            made: list[int] = []

            async def ping(c: client.Client) -> None:
                try:
                    outcomes.append((await c.call("node", "ping", timeout=1))["pong"])
                except client.RemoteError as e:
                    outcomes.append(e.code)

            async with client.connect(url) as c, client.connect(url) as watcher:
                started = time.monotonic()
                async for _ in c.endless.items.stream(1000):
                    now = time.monotonic() - started
                    if len(tasks) < now / 0.5:  # a ping every 0.5 s
                        tasks.append(asyncio.ensure_future(ping(c)))
                    if len(made) < 2 and now >= 3 + 2 * len(made):  # at 3 s and 5 s
                        made.append(await watcher.made.count())
                        if len(made) == 2:
                            break
                    await asyncio.sleep(0.05)  # 20 items a second
                await asyncio.gather(*tasks)
            return made, outcomes

        made, outcomes = arun(scenario(), 60)
        # Without a bound the client read on for the pings: tens of
        # thousands more a second; with it, the consumer's 40 and credit.
        # And the pings' answers never waited behind the stream's items.
        self.assertLess(made[1] - made[0], 1000, made)
        self.assertEqual(set(outcomes), {True}, outcomes)

    def test_callsInsideStreamLoop(self) -> None:
        """
        A loop over a fast endless stream that awaits a call at each item
        neither stalls (the answers never wait behind the stream's items)
        nor lets the generator run away: the node paces the stream by the
        credit of its consumer.
        """
        path = os.path.join(self.tempdir(), "endless.py")
        with open(path, "w") as f:
            f.write(ENDLESS_APP)
        _, url = self.node("gen2", "--app", path)

        async def scenario() -> tuple[int, int]:
            async with client.connect(url) as c, client.connect(url) as watcher:
                taken = 0
                async for _ in c.endless.items.stream(100):
                    await c.call("node", "ping", timeout=5)
                    taken += 1
                    if taken == 600:
                        break
                return taken, await watcher.made.count()

        taken, made = arun(scenario(), 60)
        self.assertEqual(taken, 600)
        self.assertLessEqual(made - taken, 256 + 2, (made, taken))  # the client's window

    def test_connectFails(self) -> None:
        """Nothing listening: ConnectError at once, naming the address."""

        async def scenario() -> None:
            with self.assertRaises(client.ConnectError) as caught:
                await client.connect(f"http://127.0.0.1:{free_port()}")
            self.assertIn("cannot connect to ws://127.0.0.1:", str(caught.exception))

        arun(scenario(), 30)


class TokenTests(ClientTestCase):
    """Tokens are sent as SPEC section 10 says, and no Origin with them."""

    def test_clientSendsToken(self) -> None:
        """The client's handshake carries Authorization: Bearer TOKEN and no Origin."""
        seen: list[Any] = []

        async def handler(ws: Any) -> None:
            async for message in ws:
                request = json.loads(message)
                await ws.send(json.dumps({"jsonrpc": "2.0", "result": "ok", "id": request["id"]}))

        def record(connection: Any, request: Any) -> None:
            seen.append(request.headers)

        async def scenario() -> Any:
            async with websockets.asyncio.server.serve(
                handler, "127.0.0.1", 0, process_request=record
            ) as server:
                port = server.sockets[0].getsockname()[1]
                async with client.connect(f"ws://127.0.0.1:{port}", token="s3cret") as c:
                    return await c.node.ping()

        self.assertEqual(arun(scenario(), 30), "ok")
        self.assertEqual(seen[0]["Authorization"], "Bearer s3cret")
        self.assertNotIn("Origin", seen[0])

    def test_nodeWithTokens(self) -> None:
        """A node with [http.tokens] takes the client with its token, refuses it (401) without."""
        import hashlib

        directory = self.tempdir()
        config = os.path.join(directory, "node.toml")
        digest = hashlib.sha256(b"s3cret").hexdigest()
        with open(config, "w") as f:
            f.write(f'[http.tokens]\ntool = "{digest}"\n')
        _, url = self.node("guarded", "--config", config)

        async def scenario() -> None:
            async with client.connect(url, token="s3cret") as c:
                self.assertEqual(await c.node.echo("in"), ["in"])
            for token in (None, "wrong"):
                with self.assertRaises(client.ConnectError) as caught:
                    await client.connect(url, token=token)
                self.assertEqual(caught.exception.status, 401)

        arun(scenario(), 60)
        done = self.run_cli("call", url, "node", "echo", "1", "--token", "s3cret")
        self.assertEqual((done.returncode, done.stdout), (0, "[1]\n"), done.stderr)
        done = self.run_cli("call", url, "node", "echo", "1")
        self.assertEqual(done.returncode, 2)
        self.assertIn("answered 401", done.stderr)

    def test_relayCallSendsToken(self) -> None:
        """relay call --token sends the bearer token; a 401 is one error line, exit 2."""
        seen: list[Any] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                seen.append(dict(self.headers))
                self.rfile.read(int(self.headers["Content-Length"]))
                status = 200 if self.headers.get("Authorization") == "Bearer t0k" else 401
                body = (
                    b'{"jsonrpc":"2.0","result":1,"id":1}'
                    if status == 200
                    else b'{"error":"missing or bad token","status":401}'
                )
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        done = self.run_cli("call", url, "s", "m", "--token", "t0k")
        self.assertEqual((done.returncode, done.stdout), (0, "1\n"), done.stderr)
        done = self.run_cli("call", url, "s", "m", "--token", "wrong")
        self.assertEqual(done.returncode, 2)
        self.assertEqual(
            done.stderr, f"relay: error: {url}/rpc answered 401: missing or bad token\n"
        )
        self.assertEqual([h["Authorization"] for h in seen], ["Bearer t0k", "Bearer wrong"])
        self.assertFalse([h for h in seen if "Origin" in h])


class TlsTests(ClientTestCase):
    """A node speaking TLS with a private CA, and mutual TLS."""

    def files(self) -> tuple[Authority, str, str]:
        """:returns: a CA, its certificate's path and a directory for the rest."""
        authority = Authority("relaytx-test-ca")
        directory = self.tempdir()
        ca = os.path.join(directory, "ca.pem")
        with open(ca, "wb") as f:
            f.write(authority.pem)
        return authority, ca, directory

    def issue(self, authority: Authority, name: str, directory: str) -> tuple[str, str]:
        cert, key = authority.issue(name)
        paths = (os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}.key"))
        for path, data in zip(paths, (cert, key), strict=True):
            with open(path, "wb") as f:
                f.write(data)
        return paths

    def tls_node(self, config: str) -> tuple[Process, str]:
        """Start a TLS node with the TOML C{config}; wait until it answers over TLS."""
        port = free_port()
        directory = self.tempdir()
        path = os.path.join(directory, "node.toml")
        with open(path, "w") as f:
            f.write(config)
        process = self.start(relay("node", "--port", str(port), "--config", path))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                self.fail(process.stderr())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                time.sleep(0.05)
        return process, f"https://127.0.0.1:{port}"

    def test_privateCa(self) -> None:
        """With --cacert / cacert= the node's certificate is verified; without, refused."""
        authority, ca, directory = self.files()
        cert, key = self.issue(authority, "n1", directory)
        _, url = self.tls_node(f'node_id = "n1"\n[tls]\ncert = "{cert}"\nkey = "{key}"\n')

        async def scenario() -> None:
            async with client.connect(url, cacert=ca) as c:
                self.assertEqual((await c.node.info())["node_id"], "n1")
            with self.assertRaises(client.ConnectError) as caught:
                await client.connect(url)  # the system's trust store knows no such CA
            self.assertIn("TLS failed", str(caught.exception))

        arun(scenario(), 60)
        done = self.run_cli("call", url, "node", "echo", "1", "--cacert", ca)
        self.assertEqual((done.returncode, done.stdout), (0, "[1]\n"), done.stderr)
        done = self.run_cli("call", url, "node", "echo", "1")
        self.assertEqual(done.returncode, 2)
        self.assertIn("CERTIFICATE_VERIFY_FAILED", done.stderr)

    def test_mutualTls(self) -> None:
        """A node requiring client certificates takes the client's --cert/--key, and only it."""
        authority, ca, directory = self.files()
        cert, key = self.issue(authority, "n1", directory)
        client_cert, client_key = self.issue(authority, "tool", directory)
        _, url = self.tls_node(
            f'node_id = "n1"\n[tls]\ncert = "{cert}"\nkey = "{key}"\nca = "{ca}"\n'
            "require_client_cert = true\n"
        )

        async def scenario() -> None:
            async with client.connect(url, cacert=ca, cert=client_cert, key=client_key) as c:
                self.assertEqual(await c.node.echo("mtls"), ["mtls"])
            with self.assertRaises(client.ConnectError):
                async with client.connect(url, cacert=ca) as c:
                    await c.node.ping()

        arun(scenario(), 60)
        args = ["--cacert", ca, "--cert", client_cert, "--key", client_key]
        done = self.run_cli("call", url, "node", "echo", "2", *args)
        self.assertEqual((done.returncode, done.stdout), (0, "[2]\n"), done.stderr)
        done = self.run_cli("call", url, "node", "echo", "2", "--cacert", ca)
        self.assertEqual(done.returncode, 2, done.stderr)


class AsyncioReactorTests(ClientTestCase):
    """async methods awaiting asyncio code, by reactor."""

    def test_relayNodeAsyncio(self) -> None:
        """relay node --reactor asyncio runs a method awaiting asyncio.sleep, in a task."""
        _, url = self.node("aio", "--reactor", "asyncio", "--app", self.probe_app())
        with client.connect_sync(url) as c:
            self.assertEqual(c.probe.nap(0.05), {"slept": 0.05, "in_task": True})
            self.assertEqual(c.node.echo(1), [1])

    def test_twistdAsyncio(self) -> None:
        """twistd -r asyncio -n relay does too."""
        port = free_port()
        command = twistd("--port", str(port), "--app", self.probe_app())
        command[command.index("-n") : command.index("-n")] = ["-r", "asyncio"]
        self.start_node(command, port)
        with client.connect_sync(f"http://127.0.0.1:{port}") as c:
            self.assertEqual(c.probe.nap(0.05)["in_task"], True)

    def test_otherReactor(self) -> None:
        """On the default reactor the call fails with -32000 saying how to start the node."""
        _, url = self.node("plain", "--app", self.probe_app())
        with client.connect_sync(url) as c:
            error = self.assertRaises(client.RemoteError, c.probe.nap, 0.05)
        self.assertEqual(error.code, -32000)
        self.assertEqual(error.data["type"], "AsyncioReactorRequired")
        self.assertIn("relay node --reactor asyncio", error.message)

    def test_badReactor(self) -> None:
        """An unknown reactor is one error line and exit status 2."""
        done = self.run_cli("node", "--reactor", "nope")
        self.assertEqual(done.returncode, 2)
        self.assertEqual(len(done.stderr.splitlines()), 1)
        self.assertIn("relay: error: --reactor 'nope': no such reactor", done.stderr)


class RelayCallTests(ClientTestCase):
    """relay call's deadline, for every form; relay --version."""

    def test_timeoutByName(self) -> None:
        """--timeout without --node: the node answers -32001 by then, and cancels the call."""
        _, url = self.node("n1", "--app", self.probe_app())
        started = time.monotonic()
        done = self.run_cli("call", url, "probe", "slow", "30", "--timeout", "1")
        self.assertLess(time.monotonic() - started, 20)
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertTrue(done.stderr.startswith("error -32001: "), done.stderr)
        done = self.run_cli("call", url, "probe", "cancellations")
        self.assertEqual(done.stdout, "1\n")

    def test_version(self) -> None:
        """relay --version prints relaytx's version."""
        from relaytx import __version__

        done = self.run_cli("--version")
        self.assertEqual((done.returncode, done.stdout), (0, f"relaytx {__version__}\n"))


class ExampleTests(ClientTestCase):
    """The README's quick start: examples/mesh_client.py against three nodes."""

    def test_meshClient(self) -> None:
        """The example runs to its end against node1 - node2 - node3."""
        urls = self.line()
        done = subprocess.run(
            [sys.executable, os.path.join(EXAMPLES_DIR, "mesh_client.py"), urls[2]],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        lines = done.stdout.splitlines()
        self.assertEqual(lines[0], f"connected to node3 ({urls[2].replace('http', 'ws')}/ws/rpc)")
        self.assertIn("counter_server.increment(5) -> 5", lines)
        self.assertIn("node1's count -> 5", lines)
        self.assertTrue(any(line.endswith("count 1005") for line in lines), lines)
        for node_id in ("node1", "node2", "node3"):
            self.assertIn(f"{node_id}.ping -> True", lines)
        self.assertTrue(lines[-1].startswith("node9.ping -> error -32002:"), lines)


class DuplicateIdTests(ClientTestCase):
    """A second process with a node id in use does not take the first one's place."""

    def test_secondProcessRefused(self) -> None:
        """The hub keeps the first n1's link and routes; both ends warn."""
        hub, hub_url = self.node("hub")
        hub_port = hub_url.rsplit(":", 1)[1]
        peer = ["--add-peer", f"ws://127.0.0.1:{hub_port}"]
        self.node("n1", *peer, "--app", COUNTER)
        self.wait_routes(hub_url, ["n1"])
        second, _ = self.node("n1", *peer)
        deadline = time.monotonic() + 60
        while "Is a second process running as n1" not in hub.stderr():
            self.assertLess(time.monotonic(), deadline, hub.stderr())
            time.sleep(0.1)
        while "is another process running as n1" not in second.stderr():
            self.assertLess(time.monotonic(), deadline, second.stderr())
            time.sleep(0.1)
        # The first n1 still has the link: its counter answers through the hub.
        with client.connect_sync(hub_url) as c:
            self.assertEqual(c.on("n1").counter_server.increment(3), 3)
        self.assertEqual(hub.stderr().count("Is a second process running as n1"), 1)
