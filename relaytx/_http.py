# -*- test-case-name: tests.test_rpc -*-
"""
The HTTP face of a node (SPEC section 4), on one listener:

  - C{POST /rpc}: JSON-RPC 2.0, served by L{RpcResource}, a plain
    C{twisted.web} resource: it is the hot path, and routing it through
    Klein's URL matching would cost a fifth of its throughput;
  - C{/health}, C{/registry...} and C{/metrics}: the Klein app of
    L{NodeWeb};
  - C{/ws/p2p}: peer links; C{/ws/rpc}: JSON-RPC 2.0 over a WebSocket, one
    request (or batch) per text message, for clients that make many calls.

Every answer is C{application/json} (C{/metrics}: Prometheus text). Unknown
paths give 404, a wrong method 405 and a body over the configured limit 413,
each with a small JSON body. Request bodies are never buffered past the limit.

Before any work is done for a request, L{NodeSite} applies SPEC section 10:
a connection past C{max_connections} (or C{max_connections_per_ip}) is
closed as it is accepted; a request whose head and body do not arrive
within C{header_timeout} is closed (408); then L{relaytx._guards.HttpPolicy}
checks its C{Host}, C{Origin} and bearer token (403, 403, 401) and admin
rights. The peer endpoint (C{/ws/p2p}) is left to its own handshake.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from klein import Klein
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol, datetimeToString
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.server import version as server_version
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from relaytx import _json
from relaytx._aio import is_deferred
from relaytx._calls import CallTarget
from relaytx._dashboard import TOKEN_COOKIE, DashboardPasses, DashboardResource, dashboard_token
from relaytx._flow import ConnectionWatch, WatchedConnection
from relaytx._frames import LeanMessages, tune_socket
from relaytx._guards import (
    PEER_PATH,
    ConnectionCounts,
    FailureTally,
    HttpPolicy,
    InputBudget,
    Refusal,
)
from relaytx._handshake import UNMASKED_HEADER
from relaytx._jsonrpc import MAX_BATCH, CallBook, JsonRpcHandler, loads_request
from relaytx._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from relaytx._metrics import NodeMetrics
from relaytx._protocol import UpgradeOnly
from relaytx._stdtls import is_tls
from relaytx._streams import DEFAULT_WINDOW, MAX_WINDOW, ItemConsumer
from relaytx._tracing import CallTrace, parse_traceparent
from relaytx._views import NodeViews
from relaytx._wstimers import use_reactor_timers
from relaytx.errors import MessageTooLarge, TooManyDialers
from relaytx.interfaces import IPeerAdmin

JSON = b"application/json"

#: The request header that asks for a call's path (with a C{traceparent}).
PATH_HEADER = b"relaytx-trace-path"

#: A header every relaytx dialler's upgrade carries (and no browser's can).
_RELAYTX_DIALLER = UNMASKED_HEADER.lower().encode()


def server_timing(hops: list[list[Any]]) -> bytes:
    """
    :param hops: a call's path as C{[node_id, ms or None]} items (the last
        with a role of its own added when it is not the target).
    :returns: the C{Server-Timing} header reporting it: one metric per node,
        in the order the call passed them, named by the node's id (a valid
        token), with its role as C{desc} and its time as C{dur} where known.
    """
    parts = []
    last = len(hops) - 1
    for index, (node_id, ms, *role_of) in enumerate(hops):
        role = "entry" if index == 0 else ("forward" if index < last else "target")
        if role_of:
            role = role_of[0]
        part = f'{node_id};desc="{role}"'
        if ms is not None:
            part += f";dur={ms:.3f}"
        parts.append(part)
    return ", ".join(parts).encode("ascii", "replace")


def _json_error(request: Any, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON)
    return _json.dumps({"error": message, "status": code})


def _client_host(address: IAddress) -> str:
    """
    The host that names a client as a caller (C{http:HOST}) for access rules
    and per-caller limits; C{local} for one not on IP, such as a client of a
    UNIX socket, which has no host.
    """
    if isinstance(address, IPv4Address | IPv6Address):
        return address.host
    return "local"


def _ip(address: IAddress | None) -> str | None:
    """:returns: the IP address of a client, C{None} for one not on IP."""
    if isinstance(address, IPv4Address | IPv6Address):
        return address.host
    return None


def _json_body(request: Any) -> Any:
    try:
        return _json.loads(request.content.read() or b"null")
    except (_json.JSONDecodeError, UnicodeDecodeError):
        return None


class BoundedRequest(Request):
    """
    A request that stops buffering its body once it passes the site's
    C{max_body_size} and is then answered with 413.
    """

    too_large = False
    _received = 0
    #: who sent it (C{http:NAME} or C{http:ADDRESS}), once L{process} admitted it
    caller: str | None = None
    #: bytes of its body counted in the site's input budget
    _budgeted = 0

    def _node_site(self) -> NodeSite:
        # Site.buildProtocol sets channel.site, which HTTPChannel does not declare.
        site: NodeSite = self.channel.site  # type: ignore[attr-defined]  # undeclared in Twisted
        return site

    def isSecure(self) -> bool:
        """:returns: whether the request came over TLS, the node's own included."""
        return bool(super().isSecure()) or is_tls(self.channel.transport)

    def forbidden(self) -> str | None:
        """
        :returns: why the request is refused 403 for its C{Origin} or
            C{Host}, if it is (see L{process}); checked first where a
            request is refused before it is whole (413, 408), as every
            request of a page of another origin is refused 403.
        """
        policy = self._node_site().policy
        headers = self.requestHeaders
        origins = headers.getRawHeaders(b"origin")
        if origins and (len(origins) > 1 or not policy.origin_allowed(origins[0])):
            return "Origin not allowed: add it to allowed_origins"
        hosts = headers.getRawHeaders(b"host")
        if hosts and len(hosts) == 1 and not policy.host_allowed(hosts[0]):
            # (Before the request is whole, its path is the channel's.)
            path = self.path if self.path is not None else getattr(self.channel, "_path", b"")
            if not (path.startswith(PEER_PATH) and headers.hasHeader(_RELAYTX_DIALLER)):
                return "Host not allowed: add it to [http] allowed_hosts"
        return None

    def early_refusal(self) -> tuple[int, str] | None:
        """
        :returns: the refusal its head alone earns a request, if any, as
            C{(status, why)}: for its C{Origin} or C{Host} (403,
            L{forbidden}), its token (401) or admin rights (403). Checked
            where a request is refused before it is whole (413, 408): a
            client without its token is told so (401) however large its
            body, as L{process} would.
        """
        why = self.forbidden()
        if why is not None:
            return 403, why
        policy = self._node_site().policy
        channel = self.channel
        # (Before the request is whole, its method and target are the channel's.)
        method = self.method if self.path is not None else getattr(channel, "_command", b"")
        target = self.uri if self.path is not None else getattr(channel, "_path", b"")
        path, _, query = target.partition(b"?")
        if path.startswith(PEER_PATH):
            return None  # (peers prove themselves at the handshake)
        headers = self.requestHeaders
        authorization = headers.getRawHeaders(b"authorization", [None])[0]
        if authorization is None and policy.requires_token:
            # A dashboard path's token may be in its query or its cookie
            # (the cookies are read with the head).
            token = dashboard_token(
                path,
                parse_qs(query, keep_blank_values=True),
                self.getCookie(TOKEN_COOKIE),
                self._node_site().dashboard_passes,
            )
            if token is not None:
                authorization = b"Bearer " + token
        hosts = headers.getRawHeaders(b"host")
        try:
            policy.admit(
                method,
                path,
                hosts[0] if hosts and len(hosts) == 1 else None,
                headers.getRawHeaders(b"origin", [None])[0],
                authorization,
                _ip(self.getClientAddress()),
                getattr(channel, "known_token", None),
            )
        except Refusal as refusal:
            return refusal.status, refusal.message
        return None

    #: its head is whole (its body is awaited)
    head_in = False

    def gotLength(self, length: int | None) -> None:
        self.head_in = True
        limit = self._node_site().max_body_size
        if length is not None and length > limit:
            self.too_large = True
            self.content = io.BytesIO()
            self._refuse_too_large()
            return
        super().gotLength(length)

    def _refuse_too_large(self) -> None:
        # The body is too large, declared so or grown so (chunked): 413
        # now, for a client that waits for an answer before it sends more.
        channel = self.channel
        if not isinstance(channel, NodeChannel):
            return  # (answered 413 once the body is in)
        refusal = self.early_refusal()
        if refusal is not None:
            # (No "100 Continue" after it: the body is not wanted.)
            self.requestHeaders.removeHeader(b"expect")
            channel.refuse_now(*refusal)
            return
        if self.requestHeaders.hasHeader(b"expect"):
            # Declared too large by a client that waits for "100
            # Continue" before it sends the body: 413 now, and closed.
            self.requestHeaders.removeHeader(b"expect")
            channel.refuse_now(413, "request body too large")
        else:
            # The rest of its body is still read (and dropped), and the
            # connection closed once it is in, or at the header timeout.
            # (Closing while its bytes still come would reset the
            # connection, and a client could lose the answer.)
            channel.answer_early(413, b"Request Entity Too Large", "request body too large")

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._received += len(data)
        site = self._node_site()
        if self._received > site.max_body_size:
            self._drop_body()
            self._refuse_too_large()
            return
        if not site.input_budget.take(len(data), self._budget_client()):
            # Bodies still arriving, all connections together, hold as
            # much as the node allows: this one is refused (503).
            self._drop_body(busy=True)
            return
        self._budgeted += len(data)
        super().handleContentChunk(data)

    def _drop_body(self, busy: bool = False) -> None:
        self.too_large = True
        self._busy = busy
        self._give_back()
        if self.content is not None:  # gotLength made it
            self.content.close()
        self.content = io.BytesIO()

    def _give_back(self) -> None:
        if self._budgeted:
            self._node_site().input_budget.give_back(self._budgeted, self._budget_client())
            self._budgeted = 0

    def _budget_client(self) -> str:
        # The client's address, as the input budget shares it out ("": not on IP).
        return _ip(self.getClientAddress()) or ""

    #: the answer being waited for, if any: cancelled if the client goes away
    pending_answer: Deferred[Any] | None = None

    def connectionLost(self, reason: Failure) -> None:
        self._give_back()
        super().connectionLost(reason)  # (drops the channel: nothing is written)
        answer, self.pending_answer = self.pending_answer, None
        if answer is not None:
            # The client went away: its calls are cancelled (SPEC section
            # 12). (An answer that has fired may wait on another Deferred,
            # a call tried again elsewhere: cancel() passes on to that.)
            answer.cancel()

    def _to_origin_form(self) -> bytes:
        # An absolute-form target (GET http://host:port/health), which a
        # server must accept (RFC 9112 section 3.2.2): the path is its
        # path, and its authority is the request's Host, whatever Host
        # header came (so the Host check reads the authority): :returns: it.
        rest = self.uri.split(b"://", 1)[1]
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        authority, target = rest[:cut], rest[cut:]
        if not target.startswith(b"/"):
            target = b"/" + target
        self.uri = target
        self.path = target.split(b"?", 1)[0]
        self.requestHeaders.setRawHeaders(b"host", [authority])
        return authority

    def process(self) -> None:
        if not self.method.isupper():
            # Methods are case-sensitive (RFC 9110 9.1): "post" is none of
            # this node's, but werkzeug's routes took it for POST (an admin
            # action ran on "post /registry/peers/add"), where /rpc said
            # 405. Made one no route takes, it is refused as any other
            # method a path does not take: 405, with those it does.
            self.method += b"?"
        site = self.site = self._node_site()
        if self._budgeted:
            self._give_back()  # the body is whole: it is the handler's now
        if self.too_large:
            channel = self.channel
            if isinstance(channel, NodeChannel) and channel.answered_early:
                channel.refused = True
                channel.loseConnection()  # (answered already: see gotLength)
                return
            self._allow_origin(site.policy)  # (none for a refused Origin or Host)
            refusal = self.early_refusal()
            if refusal is not None:
                status, why = refusal
                if status == 401:
                    self.setHeader(b"www-authenticate", _AUTHENTICATE)
                self._refuse(status, why)
                return
            if getattr(self, "_busy", False):
                self._refuse(503, "node busy: too much input held; retry later")
            else:
                self._refuse(413, "request body too large")
            return
        hosts = self.requestHeaders.getRawHeaders(b"host")
        host = None
        if hosts is not None:
            if len(hosts) > 1:
                # (RFC 9112: a request with more than one is a 400; which
                # one would the Host check believe?)
                self._refuse(400, "bad request: more than one Host header", close=False)
                return
            host = hosts[0]
        origins = self.requestHeaders.getRawHeaders(b"origin")
        if origins is not None and len(origins) > 1:
            # (Nor more than one Origin: the checks below read one.)
            self._refuse(400, "bad request: more than one Origin header", close=False)
            return
        if self.uri[:1] != b"/" and self.uri[:8].lower().startswith((b"http://", b"https://")):
            host = self._to_origin_form()
        if self.path.startswith(PEER_PATH):
            # Peers prove themselves at the handshake; a browser's request
            # is refused here too (an upgrade's Origin is checked again as
            # it opens). A relaytx node dials by any name: its upgrade says
            # it is one in a header no browser can send on a WebSocket
            # upgrade, so the Host check (against DNS rebinding, a
            # browser's attack) is for everyone else.
            policy = site.policy
            if not policy.origin_allowed(self.getHeader(b"origin")):
                self._refuse(403, "Origin not allowed: add it to allowed_origins", close=False)
                return
            if self.getHeader(_RELAYTX_DIALLER) is None and not policy.host_allowed(host):
                self._refuse(403, "Host not allowed: add it to [http] allowed_hosts", close=False)
                return
        else:
            policy = site.policy
            get = self.getHeader
            if host is None and self.clientproto == b"HTTP/1.1":
                # (RFC 9112: an HTTP/1.1 request without one is a 400.)
                self._refuse(400, "bad request: no Host header", close=False)
                return
            origin = get(b"origin")
            if origin is not None and policy.origin_allowed(origin) and policy.host_allowed(host):
                # A page of an allowed origin: CORS lets its scripts read
                # the answers (errors included), and ask first.
                self.setHeader(b"access-control-allow-origin", origin)
                self.setHeader(b"vary", b"Origin")
                if self.method == b"OPTIONS" and get(b"access-control-request-method"):
                    self._preflight()
                    return
            authorization = get(b"authorization")
            if authorization is None and policy.requires_token:
                # A browser brings its token to the dashboard's paths in
                # the URL or a cookie (relaytx._dashboard says why).
                token = dashboard_token(
                    self.path,
                    self.args,
                    self.getCookie(TOKEN_COOKIE),
                    self._node_site().dashboard_passes,
                )
                if token is not None:
                    authorization = b"Bearer " + token
            channel = self.channel
            try:
                self.caller = caller = policy.admit(
                    self.method,
                    self.path,
                    host,
                    origin,
                    authorization,
                    _ip(self.getClientAddress()),
                    getattr(channel, "known_token", None),
                )
            except Refusal as refusal:
                if refusal.status == 401:
                    self.setHeader(b"www-authenticate", _AUTHENTICATE)
                self._refuse(refusal.status, refusal.message, close=False)
                return
            if authorization is not None and isinstance(channel, NodeChannel):
                # A keep-alive client sends the same token with each request.
                channel.known_token = (authorization, caller)
            if b"%" in self.path and not _utf8_path(self.path):
                self._refuse(404, "not found", close=False)  # (no path has such a name)
                return
        super().process()

    def _stamp(self) -> None:
        # What twisted.web's process() puts on every answer, for the
        # answers given before it runs (RFC 9110 6.6.1: a server with a
        # clock sends Date).
        self.setHeader(b"server", server_version)
        self.setHeader(b"date", datetimeToString())

    def _preflight(self) -> None:
        # A browser's question before a cross-origin request (it carries no
        # token): which methods and headers the request may use.
        self._stamp()
        self.setResponseCode(204)
        self.setHeader(b"access-control-allow-methods", b"GET, POST, DELETE")
        self.setHeader(b"access-control-allow-headers", CORS_HEADERS)
        self.setHeader(b"access-control-max-age", b"600")
        self.finish()

    def _allow_origin(self, policy: HttpPolicy) -> None:
        # A refusal before the checks below: readable by a page of an
        # allowed origin too, as every answer to it is.
        origin = allowed_origin(policy, self.requestHeaders)
        if origin is not None:
            self.setHeader(b"access-control-allow-origin", origin)
            self.setHeader(b"vary", b"Origin")

    def _refuse(self, status: int, message: str, close: bool = True) -> None:
        self._stamp()
        body = _json_error(self, status, message)
        if close:
            self.setHeader(b"connection", b"close")
        self.setHeader(b"content-length", b"%d" % len(body))
        channel = self.channel
        self.write(body)
        self.finish()
        # After a body refused unread, the rest of what this client sends
        # cannot be trusted to frame a next request: close, as the header
        # says.
        if close and channel is not None:
            channel.loseConnection()


def allowed_origin(policy: HttpPolicy, headers: Any) -> bytes | None:
    """
    :returns: the C{Origin} of a request from a page of an allowed origin
        (on a Host the node takes), which may read its answer; else C{None}.
    """
    origins, hosts = headers.getRawHeaders(b"origin"), headers.getRawHeaders(b"host")
    if not origins or not hosts or len(hosts) > 1 or len(origins) > 1:
        return None
    origin: bytes = origins[0]
    if policy.origin_allowed(origin) and policy.host_allowed(hosts[0]):
        return origin
    return None


#: what a 401 asks for
_AUTHENTICATE = b'Bearer realm="relaytx"'

#: the reason phrases of the answers written before a request is whole
_PHRASES = {
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    408: b"Request Timeout",
    413: b"Request Entity Too Large",
}

#: the request headers a page of an allowed origin may send
CORS_HEADERS = b"authorization, content-type, traceparent, relaytx-trace-path"


def _utf8_path(path: bytes) -> bool:
    """:returns: whether C{path}, its escapes decoded, is UTF-8 (as every route is)."""
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


#: Seconds between the looks at requests still arriving (at most).
ROUND = 0.25


class NodeChannel(HTTPChannel):
    """
    An HTTP connection that must deliver each request's head and body
    within the site's C{header_timeout} (from its first byte, or from the
    connection's opening: the site's rounds close it with 408 otherwise),
    and gives its place back among the site's connections when it goes.

    Between requests, the site's C{idle_timeout} applies (Twisted's
    C{timeOut}); a client that does not read its answers stops being read
    from once they fill the socket's buffer (L{pauseProducing}), and so
    goes idle.
    """

    _log = Logger()
    site: NodeSite
    #: Seconds a connection closed for its C{idle_timeout} may take to send
    #: what it holds before it is cut (Twisted's default, 15, let a client
    #: that reads nothing hold its answers that much longer).
    abortTimeout = 1
    #: its place among the site's connections (released once)
    slot: tuple[ConnectionCounts, str] | None = None
    #: the last C{Authorization} header admitted here, and its caller
    known_token: tuple[bytes, str] | None = None
    #: when the request now arriving began (C{None}: none is arriving).
    #: A time per request rather than a timer: the site's rounds look.
    head_since: float | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.head_since = self.site.channel_opened(self)

    #: answered and closing unread (L{refuse_now}): what comes is dropped
    refused = False

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        if self.head_since is None and not self._handlingRequest:
            self.head_since = self.site.reactor.seconds()
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self.head_since = None
        super().allContentReceived()

    def pauseProducing(self) -> None:
        # The socket's buffer is full. Twisted stops reading only if no
        # request is being answered, but the answer being written is what
        # fills the buffer: a client pipelining requests and reading none
        # of the answers was read from without end, its answers held in
        # memory (SPEC section 10). Reading stops now; it resumes once the
        # buffer has drained (Twisted's resumeProducing, or requestDone if
        # a request is still being answered then).
        super().pauseProducing()
        self._networkProducer.pauseProducing()

    #: pipelined requests read, not yet begun: held while the answers
    #: written fill the socket's buffer (L{requestDone})
    _held: bytes | None = None

    def requestDone(self, request: Any) -> None:
        if not (self._waitingForTransport and self.persistent and self._dataBuffer):
            super().requestDone(request)
            return
        # Twisted begins the next request already read at once, whether or
        # not the answers before it could be sent: one read of small
        # requests for large answers (474 in 64 KiB, for 500 KB each) made
        # some 230 MB of answers that a client reading none of them held
        # in memory. The next request begins once the buffer has drained.
        held = b"".join(self._dataBuffer)
        self._dataBuffer = []
        super().requestDone(request)  # (nothing to begin; the idle timeout runs again)
        self._held = held
        # Anything read meanwhile waits too, as while a request is handled
        # (raw mode: buffered as it is, not parsed). Over TLS, bytes the
        # layer had decrypted still come after the transport has paused.
        self._handlingRequest = True
        self.setRawMode()

    def resumeProducing(self) -> None:
        held = self._held
        if held is None:
            super().resumeProducing()
            return
        self._held = None
        self._handlingRequest = False
        super().resumeProducing()
        data = held + b"".join(self._dataBuffer)
        self._dataBuffer = []
        self.setLineMode(data)

    def head_late(self) -> None:
        """Its request did not arrive within C{header_timeout}: 408, closed."""
        self.head_since = None
        if self._handlingRequest:
            return
        if self.answered_early:  # (its answer went out already)
            self.refused = True
            self.loseConnection()
            return
        requests = self.requests
        refusal = requests[-1].early_refusal() if requests and requests[-1].head_in else None
        if refusal is not None:  # (its head is in: it may not call at all)
            self.refuse_now(*refusal)
            return
        self.refuse_now(408, "request not received in time")

    #: the request arriving was answered before its body came (L{answer_early})
    answered_early = False

    def answer_early(self, status: int, phrase: bytes, message: str) -> None:
        """
        Answer the request arriving with C{status} (a small JSON body) now,
        and go on reading it: the connection closes once it is in (or at
        C{header_timeout}).
        """
        if self._write_answer(status, phrase, message):
            self.answered_early = True

    def _write_answer(self, status: int, phrase: bytes, message: str) -> bool:
        # A whole answer written as it is (no request object is involved):
        # :returns: whether there was a connection to write it on.
        transport = self.transport
        if transport is None:
            return False
        body = _json.dumps({"error": message, "status": status})
        authenticate = b"www-authenticate: %s\r\n" % _AUTHENTICATE if status == 401 else b""
        transport.write(
            b"HTTP/1.1 %d %s\r\nserver: %s\r\ndate: %s\r\ncontent-type: application/json\r\n"
            b"%s%sconnection: close\r\ncontent-length: %d\r\n\r\n%s"
            % (status, phrase, server_version, datetimeToString(), authenticate,
               self._cors_lines(), len(body), body)
        )  # fmt: skip
        return True

    def _cors_lines(self) -> bytes:
        # The CORS headers of an answer to the request arriving, if it
        # came from a page of an allowed origin (as far as its headers
        # came: a refusal is readable by that page too).
        requests = getattr(self, "requests", None)
        site = getattr(self, "site", None)
        if not requests or site is None:
            return b""
        origin = allowed_origin(site.policy, requests[-1].requestHeaders)
        if origin is None:
            return b""
        return b"access-control-allow-origin: %s\r\nvary: Origin\r\n" % origin

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's answer to a request it cannot parse (a broken request
        # line or header, a bad chunk size): a bare status line. SPEC
        # section 4's answers are JSON, this one too.
        self.refuse_now(400, "bad request")

    def refuse_now(self, status: int, message: str, phrase: bytes | None = None) -> None:
        """
        Answer the request arriving with C{status} (a small JSON body), and
        close the connection without reading more of it.
        """
        if phrase is None:
            phrase = _PHRASES[status]
        transport = self.transport
        if transport is None or not self._write_answer(status, phrase, message):
            return
        self.refused = True
        transport.loseConnection()
        # A client that reads nothing would hold the socket until its
        # buffers drain: close it for good after a moment.
        self._abortingCall = self.callLater(1.0, self.forceAbortClient)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        slot = self.hand_over()
        if slot is not None:
            slot[0].release(slot[1])
        super().connectionLost(reason)

    def hand_over(self) -> tuple[ConnectionCounts, str] | None:
        """
        This channel is gone, or became a WebSocket connection: the site
        stops watching it.

        :returns: its place among the site's connections (once), for the
            WebSocket protocol to give back.
        """
        self.site.channel_closed(self)
        slot, self.slot = self.slot, None
        return slot


def _node_channel(site: NodeSite) -> _GenericHTTPChannelProtocol:
    # As twisted.web.http's own factory of channels, with ours inside.
    return _GenericHTTPChannelProtocol(NodeChannel())


class NodeSite(Site):
    """
    The node's HTTP site: bounded request bodies, no access log (it would
    cost more than a local call; put a proxy in front to keep one).

    Bodies are never parsed as HTML form submissions: every body the node
    reads is JSON whatever its C{Content-Type}, and Twisted's form parsing
    would spend up to half a second of the reactor on a 1 MiB body labelled
    C{application/x-www-form-urlencoded} or C{multipart/form-data} (and
    answer a bare 400 to a JSON-RPC body labelled multipart).
    """

    requestFactory = BoundedRequest
    protocol = _node_channel
    displayTracebacks = False
    noisy = False
    _log = Logger()
    #: the id of the node it serves
    node_id = ""

    def __init__(
        self,
        resource: IResource,
        max_body_size: int,
        reactor: Any = None,
        policy: HttpPolicy | None = None,
        counts: ConnectionCounts | None = None,
        input_budget: InputBudget | None = None,
        header_timeout: float = 10.0,
        idle_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            resource, parsePOSTFormSubmission=False, reactor=reactor, timeout=idle_timeout
        )
        self.max_body_size = max_body_size
        self.policy = policy or HttpPolicy()
        self.counts = counts or ConnectionCounts(10_000, 1_000)
        self.input_budget = input_budget or InputBudget(32 * 1024 * 1024)
        self.header_timeout = header_timeout
        #: what the dashboard's cookies hold (L{relaytx._dashboard})
        self.dashboard_passes = DashboardPasses()
        self._turned_away = FailureTally()
        self._channels: set[NodeChannel] = set()
        self._rounds: LoopingCall | None = None

    def channel_opened(self, channel: NodeChannel) -> float:
        """
        Watch C{channel}'s requests arrive in time (rounds run while there
        are channels).

        :returns: the time now.
        """
        self._channels.add(channel)
        if self._rounds is None:
            self._rounds = LoopingCall(self._late_requests)
            self._rounds.clock = self.reactor
            # (A request is closed within a round of its time: 10.25 s for 10.)
            self._rounds.start(min(ROUND, self.header_timeout / 20), now=False)
        return self.reactor.seconds()

    def close_channels(self) -> None:
        """The node stops: close its HTTP connections, once what they were sent is written."""
        for channel in list(self._channels):
            if channel.transport is not None:
                channel.transport.loseConnection()

    def channel_closed(self, channel: NodeChannel) -> None:
        """C{channel} is gone (or is a WebSocket connection now)."""
        self._channels.discard(channel)
        if not self._channels and self._rounds is not None:
            rounds, self._rounds = self._rounds, None
            if rounds.running:
                rounds.stop()

    def _late_requests(self) -> None:
        late = self.reactor.seconds() - self.header_timeout
        for channel in [c for c in self._channels if c.head_since is not None]:
            since = channel.head_since
            if since is not None and since <= late:
                channel.head_late()

    #: whether a connection turned away gets a protocol that closes it, not
    #: none: under an C{ssl:} endpoint's TLS layer, which wraps whatever it
    #: is given (and failed on none, leaving the connection open)
    turn_away_by_closing = False

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """
        A connection past the limits is closed at once (by returning no
        protocol), before any work; anyone else is an HTTP channel.
        """
        ip = _ip(addr) or "local"
        counts = self.counts
        if not counts.take(ip):
            count = self._turned_away.failed(ip)
            if count is not None:
                self._log.warn(
                    "connection limit: closed {count} connection(s) from {ip} at once "
                    "({held} held, {mine} from it)",
                    count=count,
                    ip=ip,
                    held=counts.held,
                    mine=counts.of(ip),
                )
            return _TurnedAway() if self.turn_away_by_closing else None
        protocol = super().buildProtocol(addr)
        protocol._channel.slot = (counts, ip)
        return protocol

    def never_connected(self, protocol: Any) -> None:
        """
        A protocol this site built was never connected (its TLS handshake
        did not finish): its place among the connections goes back.
        """
        channel = getattr(protocol, "_channel", None)
        if isinstance(channel, NodeChannel):
            slot = channel.hand_over()
            if slot is not None:
                slot[0].release(slot[1])

    def log(self, request: Any) -> None:
        pass


class _TurnedAway(Protocol):
    """A connection past the limits, closed as soon as it is made (before any TLS handshake)."""

    def connectionMade(self) -> None:
        transport: Any = self.transport  # (an ITCPTransport, or a TLS layer's)
        transport.abortConnection()


class RpcResource(Resource):
    """
    C{POST /rpc}: hands the body to a L{JsonRpcHandler} and writes its
    answer (204 when there is nothing to answer).
    """

    isLeaf = True

    def __init__(self, handler: JsonRpcHandler, clock: IReactorTime | None = None) -> None:
        super().__init__()
        self._handler = handler
        self._clock = clock

    def render_POST(self, request: Any) -> bytes | int:
        caller = getattr(request, "caller", None) or (
            f"http:{_client_host(request.getClientAddress())}"
        )
        traceparent = request.getHeader(b"traceparent")
        if traceparent is not None:
            return self._render_traced(request, caller, traceparent)
        answer = self._handler.handle_now(request.content.read(), caller)
        if answer is None:  # notifications only: 204, with no body and no length
            request.setResponseCode(204)
            request.finish()
            return NOT_DONE_YET
        if not is_deferred(answer):  # answered at once: the common, fast case
            return self._body(request, answer)
        request.pending_answer = answer
        answer.addBoth(self._write_later, request)
        return NOT_DONE_YET

    def _render_traced(self, request: Any, caller: str, traceparent: bytes) -> bytes | int:
        # A request with a traceparent continues that trace (an invalid one
        # starts a new trace, as W3C says); with Relaytx-Trace-Path: 1 too,
        # the answer reports the path the call took (Server-Timing).
        hops: list[list[Any]] | None = None
        if request.getHeader(PATH_HEADER) not in (None, b"0"):
            hops = []
        trace = CallTrace(parse_traceparent(traceparent), hops)
        started = self._now(request) if hops is not None else 0.0
        answer = self._handler.handle_now(request.content.read(), caller, trace)
        if is_deferred(answer):
            request.pending_answer = answer
            answer.addBoth(self._write_later, request, trace, started)
            return NOT_DONE_YET
        if answer is None:
            request.setResponseCode(204)
            request.finish()
            return NOT_DONE_YET
        self._report_path(request, trace, started)
        return self._body(request, answer)

    def _report_path(self, request: Any, trace: CallTrace | None, started: float) -> None:
        hops = None if trace is None else trace.hops
        if hops is None:
            return
        if not hops:
            hops.append([self._handler.node_id, None])
        hops[0][1] = round((self._now(request) - started) * 1000.0, 3)
        request.setHeader(b"server-timing", server_timing(hops))

    def _now(self, request: Any) -> float:
        clock = self._clock or request.site.reactor
        now: float = clock.seconds()
        return now

    def render(self, request: Any) -> bytes | int:
        # Every method but POST is a 405 with a JSON body, OPTIONS and
        # made-up ones included (Twisted would answer those 501, in HTML).
        if request.method == b"POST":
            return self.render_POST(request)
        return self._not_allowed(request)

    def _not_allowed(self, request: Any) -> bytes:
        request.setHeader(b"allow", b"POST")
        return _json_error(request, 405, "method not allowed: use POST")

    def _body(self, request: Any, answer: bytes | Failure | None) -> bytes:
        if isinstance(answer, Failure):  # a bug: JsonRpcHandler answers every error
            return _json_error(request, 500, "internal error")
        if answer is None:
            request.setResponseCode(204)
            return b""
        request.setHeader(b"content-type", JSON)
        return answer

    def _write_later(
        self,
        answer: bytes | Failure | None,
        request: Any,
        trace: CallTrace | None = None,
        started: float = 0.0,
    ) -> None:
        if request.channel is None:
            # The client went away meanwhile (Request.connectionLost drops
            # its channel, and cancelled the calls): nobody to answer.
            # Checked here rather than through notifyFinish, which costs a
            # Deferred per request.
            return
        request.pending_answer = None
        if answer is None:  # 204: no body, and no length either
            request.setResponseCode(204)
            request.finish()
            return
        if trace is not None:
            self._report_path(request, trace, started)
        body = self._body(request, answer)
        # A length, as for answers returned at once, rather than chunks.
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


class NodeWeb:
    """
    The Klein app serving a node's health, registry, admin and metrics
    endpoints.
    """

    app = Klein()
    # A path is the table's, or 404 (SPEC section 4): werkzeug would answer
    # /registry//servers with a redirect to /registry/servers.
    app.url_map.merge_slashes = False

    def __init__(self, views: NodeViews, admin: IPeerAdmin, metrics: NodeMetrics) -> None:
        self._views = views
        self._admin = admin
        self._metrics = metrics

    def _json(self, request: Any, value: Any) -> bytes:
        request.setHeader(b"content-type", JSON)
        return _json.dumps(value)

    @app.route("/health", methods=["GET"])
    def health(self, request: Any) -> bytes:
        return self._json(request, self._views.health())

    @app.route("/registry", methods=["GET"])
    def registry(self, request: Any) -> bytes:
        return self._json(request, self._views.registry())

    @app.route("/registry/servers", methods=["GET"])
    def servers(self, request: Any) -> bytes:
        return self._json(request, self._views.servers())

    @app.route("/registry/peers", methods=["GET"])
    def peers(self, request: Any) -> bytes:
        return self._json(request, self._views.peers())

    @app.route("/registry/routes", methods=["GET"])
    def routes(self, request: Any) -> bytes:
        return self._json(request, self._views.routes())

    def _not_admin(self, request: Any) -> bytes | None:
        # NodeSite refused non-admins at these paths already; checked here
        # too, for any other spelling of the path that routes here.
        # (A site other than NodeSite, as in tests, has no policy: the
        # default one, with no tokens, admits loopback clients.)
        policy: HttpPolicy = getattr(request.site, "policy", None) or HttpPolicy()
        client = _ip(request.getClientAddress())
        caller = getattr(request, "caller", None) or policy.caller(
            request.getHeader(b"authorization"), client
        )
        if caller is None or not policy.is_admin(caller, client):
            return _json_error(request, 403, "admin endpoint: not allowed for this caller")
        return None

    @app.route("/registry/peers/add", methods=["POST"])
    def add_peer(self, request: Any) -> bytes:
        refused = self._not_admin(request)
        if refused is not None:
            return refused
        body = _json_body(request)
        address = body.get("address") if isinstance(body, dict) else None
        node_id = body.get("node_id") if isinstance(body, dict) else None
        if not isinstance(address, str) or not (node_id is None or isinstance(node_id, str)):
            return _json_error(request, 400, 'give {"address": URL, "node_id"?: ID}')
        try:
            self._admin.add_peer(address, node_id)
        except TooManyDialers as e:
            return _json_error(request, 503, str(e))
        except ValueError as e:
            return _json_error(request, 400, str(e))
        return self._json(request, {"status": "dialling", "address": address})

    @app.route("/registry/peers/remove", methods=["DELETE"])
    def remove_peer(self, request: Any) -> bytes:
        refused = self._not_admin(request)
        if refused is not None:
            return refused
        body = _json_body(request)
        node_id = body.get("node_id") if isinstance(body, dict) else None
        address = body.get("address") if isinstance(body, dict) else None
        if (
            not isinstance(node_id, str | None)
            or not isinstance(address, str | None)
            or not (node_id or address)
        ):
            return _json_error(request, 400, 'give {"node_id": ID} (or {"address": URL})')
        if not self._admin.remove_peer(node_id, address):
            return _json_error(request, 404, f"no peer {node_id or address}")
        answer = {"status": "removed", "node_id": node_id}
        if address is not None:
            answer["address"] = address
        return self._json(request, answer)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: Any) -> bytes:
        request.setHeader(b"content-type", METRICS_CONTENT_TYPE.encode())
        return self._metrics.exposition()

    @app.handle_errors(HTTPException)
    def http_error(self, request: Any, failure: Failure) -> bytes:
        error = failure.value
        if not isinstance(error, HTTPException):  # Klein hands over only these
            failure.raiseException()  # to the next handler, as trap() would
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            # (sorted: werkzeug keeps them in a set, in no set order)
            request.setHeader(b"allow", ", ".join(sorted(error.valid_methods)).encode())
        return _json_error(request, error.code or 500, (error.name or "error").lower())


class JsonRpcWebSocketProtocol(  # type: ignore[misc]
    WatchedConnection, LeanMessages, WebSocketServerProtocol
):
    """
    JSON-RPC 2.0 over a WebSocket (C{/ws/rpc}): each text message is one
    request or batch, answered by a text message (none for notifications).
    Many calls may be in flight on one connection; answers come as they are
    ready and are matched by C{id}.

    A message over the size limit closes the connection with 1009, a broken
    frame with 1002, invalid UTF-8 with 1007 and a binary message with 1003,
    each with a close frame. The node pings a silent connection and closes
    it when it answers nothing for C{idle_timeout} (L{relaytx._flow}).
    """

    pings = True
    _trace: CallTrace | None = None
    calls: WsCalls | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        tune_socket(self.transport)
        self.calls = WsCalls(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._waiting = None
        calls, self.calls = self.calls, None
        if calls is not None:
            calls.cancel_all()  # closing the connection cancels its calls
        super().connectionLost(reason)

    #: messages read while the output is over C{max_write_buffer}: they are
    #: taken once it drains (reading stops at that bound, but what one read
    #: brought in would otherwise all be answered at once)
    _waiting: deque[tuple[bytes, bool]] | None = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        flow = self.flow
        if flow is not None and (flow.reading_paused or self._waiting):
            if self._waiting is None:
                self._waiting = deque()
            self._waiting.append((payload, isBinary))
            flow.when_drained(self._take_waiting)
            return
        self._take(payload, isBinary)

    def _take_waiting(self) -> None:
        waiting = self._waiting
        while waiting and self.calls is not None:
            flow = self.flow
            if flow is not None and flow.reading_paused:
                flow.when_drained(self._take_waiting)
                return
            self._take(*waiting.popleft())
        self._waiting = None

    def _take(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.sendCloseFrame(code=1003, reasonUtf8=b"JSON-RPC frames are text", isReply=False)
            return
        if not payload.isascii():
            # RFC 6455's check of text frames, here rather than in Autobahn:
            # its validator costs a microsecond a frame through cffi.
            try:
                payload.decode()
            except UnicodeDecodeError:
                self.sendCloseFrame(code=1007, reasonUtf8=b"invalid UTF-8", isReply=False)
                return
        if _STREAM_CREDIT in payload and self._stream_credit(payload):
            return
        cancels: list[Any] = []
        if _CANCEL_REQUEST in payload:
            cancels, alone = self._cancel_requests(payload)
            if alone:
                self._cancel(cancels)
                return
        answer = self.factory.handler.handle_now(payload, self._caller, self._trace, self.calls)
        if is_deferred(answer):
            answer.addBoth(self._answer)
        else:
            self._answer(answer)
        if cancels:
            # After the batch's own requests have started: a cancel may name one of them.
            self._cancel(cancels)

    def onConnect(self, request: Any) -> None:
        transport = self.transport
        assert transport is not None  # the handshake just arrived through it
        # Every call on the connection continues the upgrade's trace, if any.
        traceparent = request.headers.get("traceparent")
        self._trace = None if traceparent is None else CallTrace(parse_traceparent(traceparent))
        host = _client_host(transport.getPeer())
        caller = f"http:{host}"
        policy = self.factory.policy
        if policy is not None:
            # NodeSite admitted the upgrade request already; this finds
            # the name of its token again.
            authorization = request.headers.get("authorization")
            named = policy.caller(
                authorization.encode("latin-1") if authorization else None,
                None if host == "local" else host,
            )
            caller = named or caller
        self._caller = caller

    def _cancel_requests(self, payload: bytes) -> tuple[list[Any], bool]:
        """
        The C{$/cancelRequest} notifications (SPEC section 12) of a message,
        alone or in a batch: each cancels the request it names, which is
        then answered -32800. Nothing is answered to a notification itself,
        whether or not that request is in flight (in a batch, the handler
        passes over it as a notification of an unknown method).

        :returns: the ids to cancel, and whether the message is nothing but
            one such notification (else it is handled as usual).
        """
        try:
            message = loads_request(payload)  # (a wide integer id read as the request's was)
        except ValueError:
            return [], False
        if type(message) is dict:
            request_id = _cancelled_id(message)
            if request_id is _NOT_A_CANCEL:
                return [], False
            ids = [] if request_id is None else [request_id]
            return ids, "id" not in message  # with an id, answered as usual (-32601)
        if type(message) is list:
            named = (_cancelled_id(member) for member in message if type(member) is dict)
            return [i for i in named if i is not None and i is not _NOT_A_CANCEL], False
        return [], False

    def _stream_credit(self, payload: bytes) -> bool:
        """
        C{$/streamCredit} (see L{WsItems}), a notification alone in its
        message: nothing is answered to it.

        :returns: whether C{payload} was one.
        """
        try:
            message = loads_request(payload)
        except ValueError:
            return False
        if (
            type(message) is not dict
            or message.get("method") != "$/streamCredit"
            or message.get("jsonrpc") != "2.0"
            or "id" in message
        ):
            return False
        params = message.get("params")
        calls = self.calls
        if type(params) is dict and calls is not None:
            request_id = params.get("id")
            if type(request_id) in (str, int):
                calls.stream_credit(request_id, params.get("window"), params.get("consumed"))
        return True

    def _cancel(self, request_ids: list[Any]) -> None:
        calls = self.calls
        if calls is not None:
            for request_id in request_ids:
                calls.cancel(request_id)

    def _answer(self, answer: bytes | Failure | None) -> None:
        if isinstance(answer, bytes) and self.state == self.STATE_OPEN:
            limit: int = self.factory.max_message_size
            if len(answer) > limit:  # (Autobahn would refuse to send it)
                handler: JsonRpcHandler = self.factory.handler
                answer = handler.within(answer, limit)
            self.sendMessage(answer, isBinary=False)


#: How a cancel notification is recognised before it is parsed (without
#: its "$/", which a JSON writer may escape: PHP's writes "$\/").
_CANCEL_REQUEST = b"cancelRequest"

#: How a stream's credit is recognised before it is parsed.
_STREAM_CREDIT = b"streamCredit"

#: L{_cancelled_id} of a message that is no C{$/cancelRequest}.
_NOT_A_CANCEL = object()


def _cancelled_id(message: dict[str, Any]) -> Any:
    """
    :returns: the id a C{$/cancelRequest} message names; C{None} if it
        names none that a request can have; L{_NOT_A_CANCEL} for any other
        message.
    """
    if message.get("method") != "$/cancelRequest" or message.get("jsonrpc") != "2.0":
        return _NOT_A_CANCEL  # (not a valid request: answered -32600 as any)
    params = message.get("params")
    if type(params) is not dict:
        return None
    request_id = params.get("id")
    if isinstance(request_id, str | int | float) and not isinstance(request_id, bool):
        return request_id
    return None


#: What a stream's items granted and not yet written may come to, in bytes
#: (by the size of its items so far): so many items of a megabyte are not
#: a window of 64 megabytes in the node's output to a client.
STREAM_BYTES = 256 * 1024

#: Items granted before any has come, while their size is unknown.
FIRST_WINDOW = 4


class WsItems(ItemConsumer):
    """
    The items of one streamed request on a C{/ws/rpc} connection, sent as
    C{$/stream} notifications as they come. Credit is granted as they are
    written, while the connection's output drains; once it passes the
    socket's buffer (a client that does not read), no more is granted
    until it has drained, so the generator waits for the client.

    The window is in items, and bounded in bytes too: it starts at
    L{FIRST_WINDOW} items, then holds what L{STREAM_BYTES} hold of items
    of the size seen so far (at least one, at most the window asked). A
    client that reads nothing so holds some L{STREAM_BYTES} and an item
    of each stream of the node's memory, beyond its socket's buffer.

    A client may pace a stream itself, as C{relaytx.client} does: a
    C{$/streamCredit} notification naming the request's id and a C{window}
    before the request, then one naming how many items its consumer has
    C{consumed} now and then. The generator then runs at most C{window}
    items ahead of that consumer (so the answers of its other calls never
    wait behind the stream's items), and no further than the connection
    takes, as above.

    :param window: the client's window, if it paces the stream.
    """

    # (Class attributes where a call that never streams, most of them, can
    # leave them be: one is made for every call on /ws/rpc.)
    paced = False
    #: the window asked: the client's, or the default
    asked = DEFAULT_WINDOW
    #: paced: the items the client takes in all, so far
    allowed = DEFAULT_WINDOW
    window = granted = FIRST_WINDOW
    count = 0
    _bytes = 0

    def __init__(self, calls: WsCalls, request_id: Any, window: int | None = None) -> None:
        self._calls = calls
        self._request_id = request_id
        if window is not None:
            self.paced = True
            self.asked = self.allowed = window
            self.window = self.granted = min(window, FIRST_WINDOW)
        flow = calls.protocol.flow
        if flow is not None and flow.congested:
            # The connection's output has not drained (other streams, a
            # client that does not read): a generator here makes no item
            # until it has (one, across the mesh, where a window is at
            # least one), so many streams at once add no more than that.
            self.window, self.granted = 1, 0

    def connect(self, grant: Callable[[int], None]) -> None:
        super().connect(grant)
        if not self.granted:
            # A generator here waits for the connection to drain (above):
            # told then. (Only a call that streams gets here: every call on
            # /ws/rpc has a consumer, most never use it.)
            flow = self._calls.protocol.flow
            if flow is not None:
                flow.when_drained(self._grant_more)

    def item(self, value: Any) -> None:
        protocol = self._calls.protocol
        params = {"id": self._request_id, "item": value}
        # (TypeError: not JSON, which fails the stream.)
        body = _json.dumps({"jsonrpc": "2.0", "method": "$/stream", "params": params})
        limit = getattr(protocol, "maxMessagePayloadSize", 0)  # (an Autobahn option)
        if limit and len(body) > limit:
            raise MessageTooLarge(f"an item of {len(body)} bytes is over the {limit}-byte limit")
        self.count += 1
        self._bytes += len(body)
        if protocol.state == protocol.STATE_OPEN:
            protocol.sendMessage(body, isBinary=False)
        self._grant_more()

    def client_consumed(self, consumed: int) -> None:
        """The client, which paces the stream, has consumed C{consumed} items."""
        allowed = min(consumed, self.count) + self.asked
        if allowed > self.allowed:
            self.allowed = allowed
            self._grant_more()

    def _grant_more(self) -> None:
        flow = self._calls.protocol.flow
        if flow is not None and flow.congested:
            flow.when_drained(self._grant_more)  # (once, however often asked)
            return
        count = self.count
        if count:
            fits = STREAM_BYTES * count // self._bytes
            self.window = window = max(1, min(self.asked, fits))
        else:
            window = self.window
        total = count + window
        if self.paced and total > self.allowed:
            total = self.allowed
        # In steps of half the window (credit costs a frame across the
        # mesh), or at once for a producer that has spent all it had.
        if total > self.granted and (
            total - self.granted >= max(1, window // 2) or count >= self.granted
        ):
            self.granted = total
            if self._grant is not None:
                self._grant(total)


class WsCalls(CallBook):
    """
    The calls in flight on one C{/ws/rpc} connection; each may stream, and
    the client may pace a stream itself (L{WsItems}).
    """

    def __init__(self, protocol: JsonRpcWebSocketProtocol) -> None:
        super().__init__()
        self.protocol = protocol
        #: request id -> the window the client paces it with, told before it
        self._windows: dict[Any, int] = {}
        #: the streams the client paces, by request id, while in flight
        self._paced: dict[Any, WsItems] = {}

    def consumer(self, request_id: Any) -> WsItems:
        windows = self._windows
        window = windows.pop(request_id, None) if windows else None
        items = WsItems(self, request_id, window)
        if window is not None:
            _bounded_put(self._paced, request_id, items)
        return items

    def _done(self, outcome: Any, request_id: Any, d: Deferred[Any]) -> Any:
        if self._paced:
            self._paced.pop(request_id, None)
        return super()._done(outcome, request_id, d)

    def stream_credit(self, request_id: Any, window: Any, consumed: Any) -> None:
        """
        A C{$/streamCredit} notification: the client paces request
        C{request_id} with C{window} (it comes before the request), or its
        consumer has taken C{consumed} items. Anything else is ignored.
        """
        if type(window) is int and 0 < window <= MAX_WINDOW:
            _bounded_put(self._windows, request_id, window)
        items = self._paced.get(request_id)
        if items is not None and type(consumed) is int and consumed >= 0:
            items.client_consumed(consumed)


#: Streams paced by the client, and windows told ahead, kept at most per
#: connection (past it the oldest is let go: a client that plays with
#: them gets write-paced streams, or streams that wait for no credit).
MAX_PACED = 4096


def _bounded_put(table: dict[Any, Any], key: Any, value: Any) -> None:
    table[key] = value
    if len(table) > MAX_PACED:
        del table[next(iter(table))]


class JsonRpcWebSocketFactory(WebSocketServerFactory):
    """Serves L{JsonRpcWebSocketProtocol} with one node's handler."""

    protocol = JsonRpcWebSocketProtocol
    noisy = False

    def __init__(
        self,
        handler: JsonRpcHandler,
        max_message_size: int,
        reactor: Any,
        policy: HttpPolicy | None = None,
        watch: ConnectionWatch | None = None,
    ) -> None:
        super().__init__(reactor=reactor)
        self.handler = handler
        self.policy = policy
        self.watch = watch
        self.max_message_size = max_message_size
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            autoPingInterval=0,  # the node's watch pings silent connections
            utf8validateIncoming=False,  # JsonRpcWebSocketProtocol checks
            # A broken or oversized message is answered with a close frame
            # and its code (1002, 1009), not by dropping the connection.
            failByDrop=False,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=1,
        )
        use_reactor_timers(self)


class WebSocketTree(Resource):
    """C{/ws/}: the WebSocket endpoints; anything else there is a JSON 404."""

    def getChild(self, path: bytes, request: Any) -> IResource:
        return _NotFound()

    def render(self, request: Any) -> bytes:
        return _json_error(request, 404, "not found")


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return _json_error(request, 404, "not found")


class NodeRoot(Resource):
    """
    The root resource: C{/rpc} and the WebSocket tree directly, everything
    else through the Klein app.
    """

    def __init__(
        self, rpc: RpcResource, web: IResource, dashboard: IResource | None = None
    ) -> None:
        super().__init__()
        self._rpc = rpc
        self._web = web
        self._dashboard = dashboard
        self.ws = WebSocketTree()
        self.putChild(b"ws", self.ws)

    def getChild(self, path: bytes, request: Any) -> IResource:
        if path == b"rpc" and not request.postpath:
            return self._rpc
        if path == b"dashboard" and self._dashboard is not None:
            return self._dashboard
        if not path and request.postpath:
            return _NotFound()  # //health: no path of the table (Klein would take it)
        # Give Klein the whole path back: it routes on it.
        request.postpath.insert(0, request.prepath.pop())
        return self._web


def make_site(
    node_id: str,
    dispatch: Callable[[CallTarget], Any],
    views: NodeViews,
    admin: IPeerAdmin,
    metrics: NodeMetrics,
    peer_endpoint: IResource,
    max_body_size: int,
    reactor: Any,
    policy: HttpPolicy | None = None,
    counts: ConnectionCounts | None = None,
    watch: ConnectionWatch | None = None,
    header_timeout: float = 10.0,
    idle_timeout: float = 60.0,
    dashboard: IResource | None = None,
    max_batch: int = MAX_BATCH,
) -> NodeSite:
    """
    :param dispatch: runs one resolved call (the node's dispatcher).
    :param peer_endpoint: the resource of C{/ws/p2p}.
    :param max_body_size: the largest HTTP body, or C{/ws/rpc} message.
    :param policy: who may use the site (none: anyone, as before section 10).
    :param counts: the connections held, in total and per address.
    :param watch: the node's WebSocket connections.
    :param dashboard: the resource of C{/dashboard} (none: a 404 there).
    :param max_batch: the most requests one JSON-RPC batch may hold.
    :returns: the HTTP site of node C{node_id}.
    """
    handler = JsonRpcHandler(dispatch, node_id, max_batch)
    root = NodeRoot(
        RpcResource(handler, reactor), NodeWeb(views, admin, metrics).app.resource(), dashboard
    )
    root.ws.putChild(b"p2p", peer_endpoint)
    rpc_factory = JsonRpcWebSocketFactory(
        handler, max_body_size, reactor=reactor, policy=policy, watch=watch
    )
    root.ws.putChild(b"rpc", UpgradeOnly(rpc_factory))
    site = NodeSite(
        root,
        max_body_size,
        reactor=reactor,
        policy=policy,
        counts=counts,
        input_budget=None if watch is None else watch.budget,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
    )
    site.node_id = node_id
    if isinstance(dashboard, DashboardResource):
        site.dashboard_passes = dashboard.passes
    return site
