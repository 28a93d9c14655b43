"""
The dashboard in a real headless browser (Debian's Chromium), against a live
mesh on 127.0.0.1: the page loads with nothing from elsewhere, shows the
mesh, shows a node that joins within 2 s and one that dies as gone within
2 s, and a screenshot of it is saved.

The screenshot goes to the test's temporary directory, or to the file named
by C{$RELAYTX_DASHBOARD_SCREENSHOT} (how the README's picture is made).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from .browser import Browser
from .helpers import Counter, NodeProcess, start_node, url, wait_for, ws

#: SPEC section 13: the page updates within 2 s of a change.
LIVE = 2.0

TOKEN = "dashboard-test-token"


def node_state(node_id: str) -> str:
    """:returns: JavaScript: the state the graph shows for C{node_id} (or null)."""
    return (
        f"(document.querySelector('#nodes g.node[data-node=\"{node_id}\"]') || "
        "{getAttribute: () => null}).getAttribute('data-state')"
    )


class DashboardBrowserTests(TestCase):
    """A mesh of four nodes, one of them a subprocess that joins and is killed."""

    timeout = 180

    def directory(self) -> str:
        path = tempfile.mkdtemp(prefix="relaytx-dashboard-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    async def browser(self, address: str) -> Browser:
        browser: Browser = await deferToThread(Browser, address)
        self.addCleanup(lambda: deferToThread(browser.close))
        return browser

    async def test_live_mesh(self) -> None:
        """The page shows the mesh, a node joining and a node dying, each within 2 s."""
        digest = hashlib.sha256(TOKEN.encode()).hexdigest()
        http = {"tokens": {"ops": digest}}
        n0 = start_node(self, "n0", servers={"counter_server": Counter()}, http=http)
        n1 = start_node(self, "n1", [ws(n0)], servers={"counter_server": Counter()})
        n2 = start_node(self, "n2", [ws(n1)])
        await wait_for(lambda: {"n1", "n2"} <= set(n0.mesh.router.routes()), 15, what="routes")
        # Some traffic, for the calls per second the page shows.
        traffic = LoopingCall(
            lambda: n0.call("n1", "counter_server", "increment").addErrback(lambda _: None)
        )
        traffic.start(0.02)
        self.addCleanup(traffic.stop)

        # The token comes in the URL once; the page's own requests carry it as a cookie.
        browser = await self.browser(f"{url(n0)}/dashboard?token={TOKEN}")
        visible = " && ".join(f"{node_state(n)} === 'up'" for n in ("n0", "n1", "n2"))
        await deferToThread(browser.wait_for, visible, 20)
        self.assertEqual(await deferToThread(browser.evaluate, "location.search"), "")
        self.assertEqual(
            await deferToThread(browser.evaluate, "document.getElementById('feed').textContent"),
            "live",
        )
        links = "document.querySelectorAll('#links g.link').length"
        self.assertEqual(await deferToThread(browser.evaluate, links), 2)
        # Nothing the page loaded came from anywhere but this node.
        loaded = await deferToThread(
            browser.evaluate,
            "performance.getEntriesByType('resource').map(e => e.name).concat([location.href])",
        )
        self.assertTrue(loaded)
        for address in loaded:
            self.assertTrue(address.startswith(url(n0) + "/"), address)

        # A node joins: n3, a relay node process linked to n2.
        n3 = NodeProcess(self, "n3", None, "--add-peer", ws(n2))
        n3.start()
        await n3.wait_healthy()
        await wait_for(lambda: "n3" in n0.mesh.router.routes(), 15, what="n0 to reach n3")
        joined = time.monotonic()
        await deferToThread(browser.wait_for, f"{node_state('n3')} === 'up'", 10)
        shown = time.monotonic() - joined
        self.assertLess(shown, LIVE, f"n3 shown {shown:.2f}s after n0 could reach it")

        # It dies (SIGKILL: no goodbye): shown as gone, and as a problem.
        n3.kill()
        await wait_for(lambda: "n3" not in n0.mesh.router.routes(), 10, what="n3's route gone")
        died = time.monotonic()
        await deferToThread(browser.wait_for, f"{node_state('n3')} === 'gone'", 10)
        shown = time.monotonic() - died
        self.assertLess(shown, LIVE, f"n3 shown gone {shown:.2f}s after its route went")
        row = "document.querySelector('#nodes-table tr[data-node=\"n3\"]').dataset.state"
        self.assertEqual(await deferToThread(browser.evaluate, row), "gone")
        problems = "document.getElementById('problems').textContent"
        self.assertIn("n3: gone", await deferToThread(browser.evaluate, problems))

        target = os.environ.get("RELAYTX_DASHBOARD_SCREENSHOT") or os.path.join(
            self.directory(), "dashboard.png"
        )
        await deferToThread(browser.screenshot, target)
        with open(target, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertGreater(os.path.getsize(target), 10_000)

        # n0 restarts, and has forgotten the page's pass: the page says how
        # to come back in (the browser gives up on a refused feed).
        port = n0.listening_port.getHost().port
        await n0.stopService()
        n0 = start_node(self, "n0", servers={"counter_server": Counter()}, http=http, port=port)
        feed = "document.getElementById('feed').textContent"
        await deferToThread(browser.wait_for, f"{feed}.indexOf('?token=') >= 0", 20)

        # Another server on this host, at /dashboard on a port of its own
        # (any local web app, or a user's process): the browser sends it
        # the node's cookie, as cookies know no ports. What it gets is no
        # token, and opens nothing on the node but the dashboard.
        heard: list[bytes] = []
        other = reactor.listenTCP(0, Site(_CookieJar(heard)), interface="127.0.0.1")
        self.addCleanup(other.stopListening)
        other_url = f"http://127.0.0.1:{other.getHost().port}/dashboard"
        await deferToThread(browser.send, "Page.navigate", {"url": other_url})
        await wait_for(lambda: bool(heard), 10, what="the other server's request")
        name, _, given = heard[0].partition(b"=")
        self.assertEqual(name, b"relaytx_token")
        self.assertTrue(given)
        self.assertNotIn(TOKEN.encode(), heard[0])
        answer = await rpc_with(url(n0), {"authorization": "Bearer " + given.decode()})
        self.assertEqual(answer, 401)


class _CookieJar(Resource):
    """Any GET: keeps the C{Cookie} header it came with."""

    isLeaf = True

    def __init__(self, heard: list[bytes]) -> None:
        super().__init__()
        self._heard = heard

    def render_GET(self, request: Any) -> bytes:
        self._heard.append(request.getHeader(b"cookie") or b"")
        return b"<p>nothing here</p>"


async def rpc_with(base: str, headers: dict[str, str]) -> int:
    """:returns: the status of a node.ping to C{base} with C{headers}."""
    response = await treq.post(
        base + "/rpc",
        data=b'{"jsonrpc":"2.0","id":1,"method":"node.ping"}',
        headers={k: [v] for k, v in headers.items()},
        persistent=False,
    )
    await response.content()
    return int(response.code)
