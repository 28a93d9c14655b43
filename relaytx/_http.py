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
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from klein import Klein
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from relaytx import _json
from relaytx._calls import CallTarget
from relaytx._frames import LeanMessages, tune_socket
from relaytx._jsonrpc import JsonRpcHandler
from relaytx._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from relaytx._metrics import NodeMetrics
from relaytx._protocol import UpgradeOnly
from relaytx._views import NodeViews
from relaytx.interfaces import IPeerAdmin

JSON = b"application/json"


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

    def _node_site(self) -> NodeSite:
        # Site.buildProtocol sets channel.site, which HTTPChannel does not declare.
        site: NodeSite = self.channel.site  # type: ignore[attr-defined]  # undeclared in Twisted
        return site

    def gotLength(self, length: int | None) -> None:
        limit = self._node_site().max_body_size
        if length is not None and length > limit:
            self.too_large = True
            self.content = io.BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._received += len(data)
        if self._received > self._node_site().max_body_size:
            self.too_large = True
            if self.content is not None:  # gotLength made it
                self.content.close()
            self.content = io.BytesIO()
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        if self.too_large:
            self.site = self._node_site()
            body = _json_error(self, 413, "request body too large")
            self.setHeader(b"connection", b"close")
            self.setHeader(b"content-length", b"%d" % len(body))
            channel = self.channel
            self.write(body)
            self.finish()
            # The rest of what this client sends cannot be trusted to frame
            # a next request: close, as the header says.
            if channel is not None:
                channel.loseConnection()
            return
        super().process()


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
    displayTracebacks = False
    noisy = False

    def __init__(self, resource: IResource, max_body_size: int, reactor: Any = None) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False, reactor=reactor)
        self.max_body_size = max_body_size

    def log(self, request: Any) -> None:
        pass


class RpcResource(Resource):
    """
    C{POST /rpc}: hands the body to a L{JsonRpcHandler} and writes its
    answer (204 when there is nothing to answer).
    """

    isLeaf = True

    def __init__(self, handler: JsonRpcHandler) -> None:
        super().__init__()
        self._handler = handler

    def render_POST(self, request: Any) -> bytes | int:
        caller = f"http:{_client_host(request.getClientAddress())}"
        answer = self._handler.handle_now(request.content.read(), caller)
        if answer is None:  # notifications only: 204, with no body and no length
            request.setResponseCode(204)
            request.finish()
            return NOT_DONE_YET
        if not isinstance(answer, Deferred):  # answered at once: the common, fast case
            return self._body(request, answer)
        answer.addBoth(self._write_later, request)
        return NOT_DONE_YET

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

    def _write_later(self, answer: bytes | Failure | None, request: Any) -> None:
        if request.channel is None:
            # The client went away meanwhile (Request.connectionLost drops
            # its channel): nobody to answer. Checked here rather than
            # through notifyFinish, which costs a Deferred per request.
            return
        if answer is None:  # 204: no body, and no length either
            request.setResponseCode(204)
            request.finish()
            return
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

    @app.route("/registry/peers/add", methods=["POST"])
    def add_peer(self, request: Any) -> bytes:
        body = _json_body(request)
        address = body.get("address") if isinstance(body, dict) else None
        node_id = body.get("node_id") if isinstance(body, dict) else None
        if not isinstance(address, str) or not (node_id is None or isinstance(node_id, str)):
            return _json_error(request, 400, 'give {"address": URL, "node_id"?: ID}')
        try:
            self._admin.add_peer(address, node_id)
        except ValueError as e:
            return _json_error(request, 400, str(e))
        return self._json(request, {"status": "dialling", "address": address})

    @app.route("/registry/peers/remove", methods=["DELETE", "POST"])
    def remove_peer(self, request: Any) -> bytes:
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
            request.setHeader(b"allow", ", ".join(error.valid_methods).encode())
        return _json_error(request, error.code or 500, (error.name or "error").lower())


class JsonRpcWebSocketProtocol(LeanMessages, WebSocketServerProtocol):  # type: ignore[misc]
    """
    JSON-RPC 2.0 over a WebSocket (C{/ws/rpc}): each text message is one
    request or batch, answered by a text message (none for notifications).
    Many calls may be in flight on one connection; answers come as they are
    ready and are matched by C{id}.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        tune_socket(self.transport)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
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
        answer = self.factory.handler.handle_now(payload, self._caller)
        if isinstance(answer, Deferred):
            answer.addBoth(self._answer)
        else:
            self._answer(answer)

    def onConnect(self, request: Any) -> None:
        transport = self.transport
        assert transport is not None  # the handshake just arrived through it
        self._caller = f"http:{_client_host(transport.getPeer())}"

    def _answer(self, answer: bytes | Failure | None) -> None:
        if isinstance(answer, bytes) and self.state == self.STATE_OPEN:
            self.sendMessage(answer, isBinary=False)


class JsonRpcWebSocketFactory(WebSocketServerFactory):
    """Serves L{JsonRpcWebSocketProtocol} with one node's handler."""

    protocol = JsonRpcWebSocketProtocol
    noisy = False

    def __init__(self, handler: JsonRpcHandler, max_message_size: int, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.handler = handler
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            autoPingInterval=0,
            utf8validateIncoming=False,  # JsonRpcWebSocketProtocol checks
        )


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

    def __init__(self, rpc: RpcResource, web: IResource) -> None:
        super().__init__()
        self._rpc = rpc
        self._web = web
        self.ws = WebSocketTree()
        self.putChild(b"ws", self.ws)

    def getChild(self, path: bytes, request: Any) -> IResource:
        if path == b"rpc" and not request.postpath:
            return self._rpc
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
) -> NodeSite:
    """
    :param dispatch: runs one resolved call (the node's dispatcher).
    :param peer_endpoint: the resource of C{/ws/p2p}.
    :param max_body_size: the largest HTTP body, or C{/ws/rpc} message.
    :returns: the HTTP site of node C{node_id}.
    """
    handler = JsonRpcHandler(dispatch, node_id)
    root = NodeRoot(RpcResource(handler), NodeWeb(views, admin, metrics).app.resource())
    root.ws.putChild(b"p2p", peer_endpoint)
    rpc_factory = JsonRpcWebSocketFactory(handler, max_body_size, reactor=reactor)
    root.ws.putChild(b"rpc", UpgradeOnly(rpc_factory))
    return NodeSite(root, max_body_size, reactor=reactor)
