"""
The persistent JSON-RPC entry, C{/ws/rpc}, on a real socket, driven by
C{examples/ws_client.py}.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from .helpers import EXAMPLES, rpc, start_node, url


class WsRpcTests(TestCase):
    """Many calls in flight on one WebSocket, answered by id."""

    timeout = 60

    async def test_example_client(self) -> None:
        """The example client's 500 pipelined increments all succeed and count to 500."""
        node = start_node(self, "ws1")
        node.load_app(os.path.join(EXAMPLES, "counter.py"))
        address = url(node).replace("http://", "ws://") + "/ws/rpc"

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, os.path.join(EXAMPLES, "ws_client.py"), address, "500"],
                capture_output=True,
                text=True,
                timeout=30,
            )

        done = await deferToThread(run)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("500 calls", done.stdout)
        self.assertIn("0 errors", done.stdout)
        self.assertIn("last count: 500", done.stdout)
        answer = await rpc(url(node), "counter_server.get")
        self.assertEqual(answer["result"], 500)
