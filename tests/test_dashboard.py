"""
Tests for L{relaytx._dashboard}: the page, its data and live feed, and the
checks of SPEC section 10 on its paths (tokens in the URL or a cookie,
Origin), through the node's real site on in-memory connections.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx._dashboard import DashboardPasses, dashboard_token
from relaytx.testing import MemoryMesh, memory_node
from tests.test_rpc import RawConnection, parse_response

TOKEN = b"s3cret-token"
DIGEST = hashlib.sha256(TOKEN).hexdigest()


class DashboardTests(SynchronousTestCase):
    """A node n0 linked to n1, its dashboard asked over HTTP."""

    tokens: dict[str, str] | None = None

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        options: dict[str, Any] = {}
        if self.tokens:
            options["http"] = {"tokens": self.tokens}
        self.node = memory_node("n0", self.clock, **options)
        self.other = memory_node("n1", self.clock)
        self.network = MemoryMesh()
        self.network.link(self.node, self.other)
        self.network.settle()
        self.site = self.node.site()

    def get(self, path: bytes, headers: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
        connection = RawConnection(self.site, self.clock)
        self.addCleanup(connection.lose)
        connection.send(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n%s\r\n" % (path, headers))
        self.network.pump()
        return connection.response()


class PageTests(DashboardTests):
    """The page and its files."""

    def test_page(self) -> None:
        """/dashboard is an HTML page that loads only this node's script and style."""
        for path in (b"/dashboard", b"/dashboard/"):
            code, headers, body = self.get(path)
            self.assertEqual(code, 200)
            self.assertTrue(headers[b"content-type"].startswith(b"text/html"))
            csp = headers[b"content-security-policy"]
            self.assertIn(b"default-src 'none'", csp)
            self.assertIn(b"script-src 'self'", csp)
            self.assertIn(b'src="/dashboard/app.js"', body)
            self.assertIn(b'href="/dashboard/style.css"', body)
            self.assertEqual(headers[b"x-content-type-options"], b"nosniff")

    def test_no_external_assets(self) -> None:
        """Nothing the page loads comes from elsewhere: it works offline."""
        for path, kind in [
            (b"/dashboard", b"text/html"),
            (b"/dashboard/app.js", b"text/javascript"),
            (b"/dashboard/style.css", b"text/css"),
        ]:
            code, headers, body = self.get(path)
            self.assertEqual(code, 200, path)
            self.assertTrue(headers[b"content-type"].startswith(kind), path)
            text = body.decode()
            # Every URL it names (src, href, url(), @import, fetch, EventSource) is a path here.
            for url in re.findall(
                r"""(?:src|href)="([^"]*)"|url\(([^)]*)\)|@import\s+"""
                r"""["']([^"']*)|(?:fetch|EventSource)\(\s*["']([^"']*)""",
                text,
            ):
                for found in url:
                    if found:
                        inline = found.startswith("data:")
                        self.assertTrue(found.startswith("/dashboard/") or inline, (path, found))
            self.assertNotIn("@font-face", text)

    def test_mesh(self) -> None:
        """/dashboard/mesh is the mesh view as JSON."""
        code, headers, body = self.get(b"/dashboard/mesh")
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"content-type"], b"application/json")
        view = json.loads(body)
        self.assertEqual(sorted(view["nodes"]), ["n0", "n1"])
        self.assertEqual(view["links"][0]["a"], "n0")

    def test_other_paths(self) -> None:
        """Unknown dashboard paths are 404, whatever the method; other methods 405."""
        self.assertEqual(self.get(b"/dashboard/nope")[0], 404)
        self.assertEqual(self.get(b"/dashboard/app.js/x")[0], 404)
        for path, code in [
            (b"/dashboard/mesh", 405),
            (b"/dashboard/nope", 404),
            (b"/dashboard/a/b", 404),
        ]:
            connection = RawConnection(self.site, self.clock)
            self.addCleanup(connection.lose)
            connection.post(path, b"{}")
            self.assertEqual(connection.response()[0], code, path)

    def test_events(self) -> None:
        """/dashboard/events sends a view at once and one each second while open."""
        connection = RawConnection(self.site, self.clock)
        connection.send(b"GET /dashboard/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.network.pump()
        head, _, _stream = connection.transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"content-type: text/event-stream", head.lower())
        self.assertEqual(self.node.views.mesh_watch.watchers, 1)
        for _ in range(3):
            self.clock.advance(1.0)
            self.network.pump()
        events = [
            json.loads(line[len(b"data: ") :])
            for line in connection.transport.value().split(b"\n")
            if line.startswith(b"data: ")
        ]
        self.assertEqual(len(events), 4)
        self.assertEqual(events[-1]["nodes"]["n1"]["state"], "up")
        connection.lose()
        self.assertEqual(self.node.views.mesh_watch.watchers, 0)
        self.clock.advance(5.0)
        self.assertEqual(
            self.clock.getDelayedCalls()
            and [c for c in self.clock.getDelayedCalls() if "_start_round" in repr(c)],
            [],
        )

    def test_events_head(self) -> None:
        """
        HEAD /dashboard/events answers the feed's heads and ends there, so
        the next request on the connection is answered.
        """
        connection = RawConnection(self.site, self.clock)
        self.addCleanup(connection.lose)
        connection.send(
            b"HEAD /dashboard/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        self.network.pump()
        answers = connection.transport.value().split(b"HTTP/1.1 ")
        self.assertEqual([a[:3] for a in answers[1:]], [b"200", b"200"])
        self.assertIn(b"text/event-stream", answers[1].lower())
        self.assertIn(b'"status":"healthy"', answers[2])
        self.assertEqual(self.node.views.mesh_watch.watchers, 0)

    def test_events_paused(self) -> None:
        """A client that does not read gets the newest view when it reads again, not a backlog."""
        connection = RawConnection(self.site, self.clock)
        self.addCleanup(connection.lose)
        connection.send(b"GET /dashboard/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.network.pump()
        connection.protocol._channel.pauseProducing()
        before = connection.transport.value().count(b"event: mesh")
        for _ in range(5):
            self.clock.advance(1.0)
            self.network.pump()
        self.assertEqual(connection.transport.value().count(b"event: mesh"), before)
        connection.protocol._channel.resumeProducing()
        self.assertEqual(connection.transport.value().count(b"event: mesh"), before + 1)

    def test_origin(self) -> None:
        """A page of another origin is refused (403), as on every path."""
        code, _, _ = self.get(b"/dashboard/mesh", b"Origin: http://evil.example\r\n")
        self.assertEqual(code, 403)
        code, _, _ = self.get(b"/dashboard/events", b"Origin: http://127.0.0.1:8080\r\n")
        self.assertEqual(code, 403)

    def test_host(self) -> None:
        """A rebound DNS name is refused (403)."""
        connection = RawConnection(self.site, self.clock)
        self.addCleanup(connection.lose)
        connection.send(b"GET /dashboard HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        self.assertEqual(connection.response()[0], 403)


class TokenTests(DashboardTests):
    """With [http.tokens], a browser brings its token in the URL once, then a cookie."""

    tokens = {"ops": DIGEST}

    def test_needs_token(self) -> None:
        """Without a token every dashboard path is 401."""
        for path in (b"/dashboard", b"/dashboard/mesh", b"/dashboard/events", b"/dashboard/app.js"):
            self.assertEqual(self.get(path)[0], 401, path)
        self.assertEqual(self.get(b"/dashboard?token=wrong")[0], 401)

    def pass_of(self, headers: dict[bytes, bytes]) -> bytes:
        """:returns: the pass the dashboard's cookie holds, checking the cookie's attributes."""
        cookie = headers[b"set-cookie"]
        for part in (b"Path=/dashboard", b"HttpOnly", b"SameSite=Strict"):
            self.assertIn(part, cookie)
        name, _, rest = cookie.partition(b"=")
        self.assertEqual(name, b"relaytx_token")
        return rest.partition(b";")[0]

    def test_query_then_cookie(self) -> None:
        """?token= opens the page and sets an HttpOnly, SameSite cookie its requests carry."""
        code, headers, _ = self.get(b"/dashboard?token=" + TOKEN)
        self.assertEqual(code, 200)
        given = self.pass_of(headers)
        for path in (b"/dashboard/app.js", b"/dashboard/mesh"):
            code, _, _ = self.get(path, b"Cookie: relaytx_token=" + given + b"\r\n")
            self.assertEqual(code, 200, path)
        code, _, _ = self.get(b"/dashboard/mesh", b"Authorization: Bearer " + TOKEN + b"\r\n")
        self.assertEqual(code, 200)

    def test_cookie_holds_no_token(self) -> None:
        """
        The cookie holds a pass, not the token (a browser sends a host's
        cookies to its every port: the token would open /rpc to whatever
        listens at /dashboard on another); the pass opens the dashboard
        alone, and a token in the cookie is no pass.
        """
        given = self.pass_of(self.get(b"/dashboard?token=" + TOKEN)[1])
        self.assertNotIn(TOKEN, given)
        self.assertGreaterEqual(len(given), 40)
        self.assertEqual(
            self.get(b"/registry", b"Authorization: Bearer " + given + b"\r\n")[0], 401
        )
        self.assertEqual(
            self.get(b"/registry", b"Cookie: relaytx_token=" + given + b"\r\n")[0], 401
        )
        self.assertEqual(
            self.get(b"/dashboard/mesh", b"Cookie: relaytx_token=" + TOKEN + b"\r\n")[0], 401
        )
        another = self.pass_of(self.get(b"/dashboard?token=" + TOKEN)[1])
        self.assertNotEqual(another, given)  # (a pass per opening)

    def test_elsewhere_refused(self) -> None:
        """The query token and the cookie are accepted on the dashboard's paths alone."""
        for path in (b"/registry?token=" + TOKEN, b"/metrics?token=" + TOKEN):
            self.assertEqual(self.get(path)[0], 401, path)
        self.assertEqual(
            self.get(b"/registry", b"Cookie: relaytx_token=" + TOKEN + b"\r\n")[0], 401
        )
        # Paths that only start like the dashboard's reach nothing else.
        for path in (
            b"/dashboard/../registry?token=" + TOKEN,
            b"/dashboard/%2e%2e/registry?token=" + TOKEN,
            b"/dashboard/..%2fregistry?token=" + TOKEN,
            b"/dashboardx?token=" + TOKEN,
        ):
            code, _, body = self.get(path)
            self.assertIn(code, (401, 404), path)
            self.assertNotIn(b"peers", body, path)
        connection = RawConnection(self.site, self.clock)
        self.addCleanup(connection.lose)
        connection.post(
            b"/rpc?token=" + TOKEN,
            b'{"jsonrpc":"2.0","id":1,"method":"node.ping"}',
            b"Cookie: relaytx_token=" + TOKEN + b"\r\n",
        )
        self.assertEqual(connection.response()[0], 401)

    def test_helper(self) -> None:
        """
        dashboard_token reads the query first, then the cookie's pass, on
        dashboard paths only; the oldest pass goes past the most kept.
        """
        passes = DashboardPasses(most=2)
        b = passes.issue(b"b")
        self.assertEqual(dashboard_token(b"/dashboard", {b"token": [b"a"]}, b, passes), b"a")
        self.assertEqual(dashboard_token(b"/dashboard/mesh", {}, b, passes), b"b")
        self.assertIsNone(dashboard_token(b"/dashboard/mesh", {}, b"b", passes))
        self.assertIsNone(dashboard_token(b"/dashboards", {b"token": [b"a"]}, b, passes))
        self.assertIsNone(dashboard_token(b"/rpc", {b"token": [b"a"]}, b, passes))
        passes.issue(b"c")
        passes.issue(b"d")
        self.assertIsNone(passes.token_of(b))


_ = parse_response
