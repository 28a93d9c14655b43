# -*- test-case-name: tests.test_dashboard -*-
"""
C{GET /dashboard}: the live mesh dashboard a node serves itself (SPEC
section 13), and its data.

  - C{/dashboard}: the page (HTML); C{/dashboard/app.js} and
    C{/dashboard/style.css}, its script and style. Nothing is fetched from
    anywhere else (no external scripts or fonts): it works offline, and
    its C{Content-Security-Policy} allows this node alone.
  - C{/dashboard/mesh}: the mesh view as JSON (L{relaytx._meshview}); what
    C{relay status} reads.
  - C{/dashboard/events}: the same view as server-sent events, a new one
    each second while the page is open (C{event: mesh}).

Why server-sent events and same-origin GETs, not a WebSocket: browsers send
C{Origin} on every WebSocket upgrade, and SPEC section 10 refuses any origin
not listed in C{allowed_origins}, the node's own included; they send none on
a same-origin GET, C{EventSource} included, so the page works with no
configuration, and a page of another origin is still refused.

Tokens: when C{[http.tokens]} is set, every dashboard path needs one like any
other path, but a browser cannot add an C{Authorization} header to a page
load or to C{EventSource}. So, on the dashboard's paths only, the token may
come as C{?token=TOKEN} (open C{/dashboard?token=TOKEN} once): the page's
answer then sets a cookie (C{HttpOnly}, C{SameSite=Strict}, path
C{/dashboard}, C{Secure} over TLS) that the page's own requests carry, and
the page's script removes the token from the address bar. The cookie holds
a pass (L{DashboardPasses}), not the token: a browser sends a host's cookies
to every port of that host (another local web server, a user's process on
a port of its own, at C{/dashboard} there), and the token would open
C{/rpc} and the admin endpoints to whoever got it; a pass opens the
dashboard alone, on this node, until the node stops. The cookie is
accepted on the dashboard's paths alone, where every request is a GET
that changes nothing.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from relaytx import _json
from relaytx._meshview import MeshWatch

#: The path of the dashboard and its data.
DASHBOARD_PATH = b"/dashboard"

#: The cookie the page's requests carry a pass in (L{DashboardPasses}).
TOKEN_COOKIE = b"relaytx_token"

#: Passes a node keeps at most (one each time the page is opened with a
#: token): past them, the oldest is forgotten, and its page must be
#: opened with the token again.
MAX_PASSES = 1024

_SECURITY_HEADERS = {
    b"content-security-policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"cache-control": b"no-store",
}

_STATIC = {
    b"": ("dashboard.html", b"text/html; charset=utf-8"),
    b"app.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"style.css": ("dashboard.css", b"text/css; charset=utf-8"),
}


#: Every path below /dashboard.
_PATHS = frozenset({*_STATIC, b"mesh", b"events"})


@cache  # read once a process, however many nodes it hosts
def _static(name: str) -> bytes:
    return resources.files("relaytx").joinpath("static", name).read_bytes()


class DashboardPasses:
    """
    The passes a node's dashboard cookies hold: each stands for the token
    the page was opened with, in this process's memory alone (see the
    module docstring).
    """

    def __init__(self, most: int = MAX_PASSES) -> None:
        self._tokens: OrderedDict[bytes, bytes] = OrderedDict()
        self._most = most

    def issue(self, token: bytes) -> bytes:
        """:returns: a new pass for C{token} (a token the node admitted)."""
        given = secrets.token_urlsafe(32).encode()
        self._tokens[given] = token
        if len(self._tokens) > self._most:
            self._tokens.popitem(last=False)
        return given

    def token_of(self, given: bytes) -> bytes | None:
        """:returns: the token pass C{given} stands for, if this node issued it."""
        return self._tokens.get(given)


def dashboard_token(
    path: bytes, args: dict[bytes, list[bytes]], cookie: bytes | None, passes: DashboardPasses
) -> bytes | None:
    """
    :param path: a request's path (without its query).
    :param args: its query arguments.
    :param cookie: its C{relaytx_token} cookie (a pass).
    :param passes: the node's passes.
    :returns: the token a request for a dashboard path brings in its query,
        or that its cookie's pass stands for (C{None} on any other path, or
        without one).
    """
    if path != DASHBOARD_PATH and not path.startswith(DASHBOARD_PATH + b"/"):
        return None
    given = args.get(b"token")
    if given and given[0]:
        return given[0]
    return passes.token_of(cookie) if cookie else None


class DashboardResource(Resource):
    """C{/dashboard} and its paths (see the module docstring)."""

    _log = Logger()

    def __init__(
        self,
        watch: MeshWatch,
        feed_interval: float = 15.0,
        passes: DashboardPasses | None = None,
    ) -> None:
        super().__init__()
        self._watch = watch
        #: what the cookies hold (the node's site reads them too)
        self.passes = DashboardPasses() if passes is None else passes
        self._pages = {name: _static(file) for name, (file, _) in _STATIC.items()}
        self._keepalive = feed_interval

    def getChild(self, path: bytes, request: Any) -> IResource:
        if request.postpath:  # /dashboard/a/b: nothing there
            return _Leaf(self, b"?")
        return _Leaf(self, path)

    def render_GET(self, request: Any) -> bytes | int:
        return self.render_path(b"", request)

    def render(self, request: Any) -> bytes | int:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _error(request, 405, "method not allowed: use GET")
        result: bytes | int = super().render(request)
        return result

    def render_path(self, name: bytes, request: Any) -> bytes | int:
        """Answer C{GET /dashboard/NAME}."""
        for header, value in _SECURITY_HEADERS.items():
            request.setHeader(header, value)
        if name in _STATIC:
            if name == b"" and request.args.get(b"token"):
                self._keep_token(request)
            request.setHeader(b"content-type", _STATIC[name][1])
            return self._pages[name]
        if name == b"mesh":
            return self._mesh(request)
        if name == b"events":
            return self._events(request)
        return _error(request, 404, "not found")

    def _keep_token(self, request: Any) -> None:
        # The page's own requests (its script, style and feed) carry a pass
        # for the token from now on; NodeSite admitted this one with it.
        given = self.passes.issue(request.args[b"token"][0])
        secure = b"; Secure" if request.isSecure() else b""
        request.setHeader(
            b"set-cookie",
            TOKEN_COOKIE + b"=" + given + b"; Path=/dashboard; HttpOnly; SameSite=Strict" + secure,
        )

    def _mesh(self, request: Any) -> int:
        request.setHeader(b"content-type", b"application/json")

        def answer(view: dict[str, Any]) -> None:
            if request.channel is None:
                return  # the client went away
            body = _json.dumps(view)
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            self._log.failure("the mesh view failed", failure)
            if request.channel is not None:
                request.setResponseCode(500)
                request.write(_json.dumps({"error": "internal error", "status": 500}))
                request.finish()

        self._watch.snapshot().addCallbacks(answer, failed)
        return NOT_DONE_YET

    def _events(self, request: Any) -> bytes | int:
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"x-accel-buffering", b"no")
        if request.method == b"HEAD":
            return b""  # (the heads of an endless feed: it ends here)
        _Feed(request, self._watch)
        return NOT_DONE_YET


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, dashboard: DashboardResource, name: bytes) -> None:
        super().__init__()
        self._dashboard = dashboard
        self._name = name

    def render(self, request: Any) -> bytes | int:
        if self._name not in _PATHS:
            return _error(request, 404, "not found")  # (whatever the method)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _error(request, 405, "method not allowed: use GET")
        return self._dashboard.render_path(self._name, request)


class _Feed:
    """
    One page's live feed: each new view as one server-sent event. A client
    that does not read is not written to (its transport pauses this
    producer); it gets the newest view when it reads again, not a backlog.
    """

    def __init__(self, request: Any, watch: MeshWatch) -> None:
        self._request = request
        self._paused = False
        self._pending: bytes | None = None
        request.write(b"retry: 1000\n\n")
        request.registerProducer(self, True)
        self._stop: Callable[[], None] = lambda: None
        request.notifyFinish().addBoth(self._gone)
        self._stop = watch.watch(self._view, self._ended)  # (may end at once: a stopped node)

    def _ended(self) -> None:
        # The node stops: the feed ends (an embedded node's site may live
        # on, and the page would wait on a feed that says nothing).
        request = self._request
        request.unregisterProducer()
        if not request.finished and request.channel is not None:
            request.finish()

    def _view(self, view: dict[str, Any]) -> None:
        event = b"event: mesh\ndata: " + _json.dumps(view) + b"\n\n"
        if self._paused:
            self._pending = event
            return
        self._request.write(event)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._pending is not None:
            event, self._pending = self._pending, None
            self._request.write(event)

    def stopProducing(self) -> None:
        self._gone(None)

    def _gone(self, _: Any) -> None:
        self._stop()
        self._pending = None


def _error(request: Any, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return _json.dumps({"error": message, "status": code})


__all__ = [
    "DASHBOARD_PATH",
    "TOKEN_COOKIE",
    "DashboardPasses",
    "DashboardResource",
    "dashboard_token",
]
