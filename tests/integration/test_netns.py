"""
Two hosts in network namespaces joined by a veth pair: a link that goes
silent (no FIN, no RST: the cable is pulled) is found by liveness alone.

The namespaces, the veth pair and every process are made by this test and
removed at its end. Traffic flows only between the two namespaces, and each
node is queried from inside its own namespace, on its loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PING = 0.5

SLOW_APP = """
from twisted.internet import reactor
from twisted.internet.task import deferLater
from relaytx import Server, exposed

class Slow(Server):
    @exposed
    def wait(self, seconds):
        return deferLater(reactor, seconds, lambda: "done")

    @exposed
    def quick(self):
        return "quick"

def setup(node):
    node.expose("slow", Slow())
"""

QUERY = """
import json, sys, urllib.request
url, body = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, data=body.encode() if body else None)
with urllib.request.urlopen(request, timeout=float(sys.argv[3])) as answer:
    print(answer.read().decode())
"""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check)


def poll_until(predicate: Callable[[], Any], timeout: float, what: str) -> float:
    """Call C{predicate} every 0.1 s until true; returns the seconds it took."""
    start = time.monotonic()
    pause = threading.Event()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.1)


class SilentLinkTests(SynchronousTestCase):
    """A pulled cable between two hosts."""

    def setUp(self) -> None:
        tag = f"rtx{os.getpid() % 100000}"
        self.ns_a, self.ns_b = f"{tag}a", f"{tag}b"
        self.veth_a, self.veth_b = f"{tag}va", f"{tag}vb"
        subnet = f"10.231.{os.getpid() % 250}"
        self.addr_a, self.addr_b = f"{subnet}.1", f"{subnet}.2"
        self.processes: list[subprocess.Popen[str]] = []
        self.failures: list[str] = []
        self.addCleanup(self._teardown)
        probe = run("ip", "netns", "add", self.ns_a, check=False)
        if probe.returncode != 0:  # no root or no netns support here
            raise SkipTest(f"cannot make network namespaces: {probe.stderr.strip()}")
        run("ip", "netns", "add", self.ns_b)
        for ns in (self.ns_a, self.ns_b):
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", self.veth_a, "netns", self.ns_a,
            "type", "veth", "peer", "name", self.veth_b, "netns", self.ns_b)  # fmt: skip
        for ns, dev, addr in ((self.ns_a, self.veth_a, self.addr_a),
                              (self.ns_b, self.veth_b, self.addr_b)):  # fmt: skip
            run("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        directory = tempfile.mkdtemp(prefix="relaytx-netns-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.app = os.path.join(directory, "slow_app.py")
        with open(self.app, "w") as f:
            f.write(SLOW_APP)

    def _teardown(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)
        for ns in (self.ns_a, self.ns_b):
            run("ip", "netns", "del", ns, check=False)

    def node(self, ns: str, node_id: str, *args: str) -> None:
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "relaytx.cli", "node"]
        argv += ["--node-id", node_id, "--port", "8080", "--interface", "0.0.0.0"]
        argv += ["--ping-interval", str(PING), *args]
        self.processes.append(
            subprocess.Popen(
                argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
        )

    def query(self, ns: str, path: str, body: Any = None, timeout: float = 5) -> Any:
        """Ask the node in C{ns}, from inside C{ns}, on its loopback."""
        argv = ["ip", "netns", "exec", ns, sys.executable, "-c", QUERY]
        argv += [f"http://127.0.0.1:8080{path}", json.dumps(body) if body else "", str(timeout)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)
        if done.returncode != 0:
            self.failures.append(done.stderr[-500:])
            return None
        return json.loads(done.stdout)

    def text(self, ns: str, path: str) -> str:
        """The raw answer of the node in C{ns} to C{GET path}."""
        argv = ["ip", "netns", "exec", ns, sys.executable, "-c", QUERY]
        argv += [f"http://127.0.0.1:8080{path}", "", "5"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=15).stdout

    def peers(self, ns: str) -> set[str]:
        answer = self.query(ns, "/registry/peers")
        return set(answer) if answer is not None else set()

    def test_pulled_cable(self) -> None:
        """
        A silent link with a call outstanding is dropped within the liveness
        bound (1.75 s of its last frame at the default peer timeout), fails
        the call on it with -32006 (it had reached B), and heals.
        """
        self.node(self.ns_b, "B", "--app", self.app)
        self.node(self.ns_a, "A", "--add-peer", f"ws://{self.addr_b}:8080")
        poll_until(lambda: self.peers(self.ns_a) == {"B"}, 20, "A to link to B")

        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "remote_call",
            "params": {"node_id": "B", "server_name": "slow", "method": "wait", "args": [20]},
        }
        outcome: list[Any] = []
        waiter = threading.Thread(
            target=lambda: outcome.append(self.query(self.ns_a, "/rpc", call, timeout=40))
        )
        waiter.start()
        self.addCleanup(waiter.join, 60)
        poll_until(
            lambda: "relaytx_pending_calls 1.0" in self.text(self.ns_a, "/metrics"),
            10,
            "the call to be in flight",
        )

        cut_at = time.monotonic()
        run("ip", "-n", self.ns_a, "link", "set", self.veth_a, "down")
        waiter.join(30)
        failed_after = time.monotonic() - cut_at
        self.assertEqual(outcome[0]["error"]["code"], -32006, outcome)
        # The bound, plus the query's own answer on a busy machine.
        self.assertLess(failed_after, 1.75 + 0.75)
        self.assertNotIn("B", self.peers(self.ns_a))

        run("ip", "-n", self.ns_a, "link", "set", self.veth_a, "up")
        poll_until(lambda: self.peers(self.ns_a) == {"B"}, 30, "A to re-link to B")
        answer = self.query(
            self.ns_a, "/rpc", {"jsonrpc": "2.0", "id": 2, "method": "B/slow.quick"}
        )
        self.assertIsNotNone(answer, self.failures[-1:])
        self.assertEqual(answer["result"], "quick")
