"""
SPEC section 10 on real sockets (127.0.0.0/8 only): each attack of issue 15
mounted as an attacker would, with raw requests carrying the headers a
browser sends, raw sockets that stall, never read or flood, a raw peer
that sends oversized ids and never-answered calls. Every flood is bounded
to seconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from relaytx import Server, exposed
from relaytx._http import NodeSite
from relaytx.errors import AccessDenied
from relaytx.node import RelayNode
from tests.support import Authority, TempDirMixin

from .helpers import Counter, rpc, start_node, url, wait_for, ws
from .test_garbage import _frame, _read_response, _ws_close_code

HOST = "127.0.0.1"
ATTACKER = "127.0.0.2"  # another address on this machine's loopback
CI_TOKEN, OPS_TOKEN = "ci-token-0123456789", "ops-token-9876543210"
TOKENS = {
    "ci": hashlib.sha256(CI_TOKEN.encode()).hexdigest(),
    "ops": hashlib.sha256(OPS_TOKEN.encode()).hexdigest(),
}
#: What a browser adds to a cross-site "simple" request a page makes.
BROWSER = {
    "Origin": "https://evil.example",
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-Mode": "no-cors",
    "Sec-Fetch-Dest": "empty",
    "Content-Type": "text/plain;charset=UTF-8",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0 Safari/537.36",
}


def port_of(node: RelayNode) -> int:
    """:returns: the port C{node} listens on."""
    assert node.listening_port is not None
    port: int = node.listening_port.getHost().port
    return port


def request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    host: str | None = None,
    source: str = HOST,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send one raw HTTP/1.1 request from C{source}; :returns: status, headers and body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'{HOST}:{port}'}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    with socket.create_connection((HOST, port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall("\r\n".join(lines).encode() + body)
        return _read_response(sock)


def _chunked(
    port: int, path: str, headers: dict[str, str], chunks: list[bytes]
) -> tuple[int, dict[bytes, bytes], bytes]:
    """
    POST a chunked body (which the node reads to its end, however large,
    before it answers: no race with a refusal); :returns: the answer.
    """
    lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}:{port}", "Transfer-Encoding: chunked"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall("\r\n".join([*lines, "", ""]).encode())
        for chunk in chunks:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        return _read_response(sock)


def _head_only(
    port: int, line: str, headers: dict[str, str]
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send a request's head alone (its body never comes); :returns: the answer's head."""
    head = [f"{line} HTTP/1.1", f"Host: {HOST}:{port}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall("\r\n".join([*head, "", ""]).encode())
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    lines = answer.partition(b"\r\n\r\n")[0].split(b"\r\n")
    fields = dict(line.partition(b":")[::2] for line in lines[1:])
    headers = {name.strip().lower(): value.strip() for name, value in fields.items()}
    return int(lines[0].split()[1]), headers, b""


def rpc_body(method: str, params: Any = None, request_id: Any = 1) -> bytes:
    """:returns: one JSON-RPC request."""
    return json.dumps(
        {"jsonrpc": "2.0", "method": method, "params": params or [], "id": request_id}
    ).encode()


def upgrade(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    source: str = HOST,
    host: str | None = None,
) -> tuple[socket.socket, int, bytes]:
    """Start a raw WebSocket upgrade; :returns: the socket, the status and bytes past the head."""
    sock = socket.create_connection((HOST, port), timeout=5, source_address=(source, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host or f'{HOST}:{port}'}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    return sock, status, rest


def _trickle(port: int, begun: bytes, more: bytes, gap: float) -> list[int | None]:
    """
    Open 8 /ws/rpc connections, send C{begun} on each, then C{more} every
    C{gap} seconds for up to 4 s (never silent, never done).

    :returns: the close code each got (C{None}: none).
    """
    socks = []
    for _ in range(8):
        sock, status, _ = upgrade(port, "/ws/rpc")
        assert status == 101, status
        sock.sendall(begun)
        socks.append(sock)
    going = set(range(len(socks)))
    deadline = time.monotonic() + 4
    while going and time.monotonic() < deadline:
        for i in list(going):
            try:
                socks[i].sendall(more)
            except OSError:
                going.discard(i)
        time.sleep(gap)
    return [_ws_close_code(sock) for sock in socks]


def log_events(case: TestCase) -> list[dict[str, Any]]:
    """:returns: a list that gets every log event from now to the end of C{case}."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def dialler_lines(events: list[dict[str, Any]], dialer: Any) -> list[dict[str, Any]]:
    """:returns: the lines C{dialer} logged of its failed attempts, among C{events}."""
    return [
        e for e in events
        if e.get("log_format", "").startswith("dialling") and e.get("url") == dialer.url
    ]  # fmt: skip


def errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:returns: the error and critical events among C{events}."""
    return [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """
    Read (and drop) whatever comes until the node closes C{sock}.

    :returns: the seconds it took, or C{None} if still open after C{seconds}.
    """
    started = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - started < seconds:
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


class TokenTests(TestCase):
    """[http.tokens]: 401 without a token everywhere but GET /health; admins; names."""

    timeout = 30

    def node(self) -> tuple[RelayNode, Counter]:
        """A node with two tokens, ops its admin, and a counter ci may not increment."""
        counter = Counter()
        node = start_node(
            self,
            "tok1",
            servers={"counter": counter},
            http={"tokens": TOKENS, "admins": ["ops"]},
            access={
                "rule": [
                    {"callers": ["http:ci"], "servers": ["counter"], "methods": ["increment"],
                     "allow": False},
                ]
            },
        )  # fmt: skip
        return node, counter

    async def test_noToken(self) -> None:
        """Every path but GET /health, and the /ws/rpc upgrade, answer 401 without a token."""
        node, counter = self.node()
        port = port_of(node)

        def attempts() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            for method, path in (
                ("POST", "/rpc"),
                ("GET", "/registry"),
                ("GET", "/registry/peers"),
                ("GET", "/metrics"),
                ("POST", "/registry/peers/add"),
                ("GET", "/nowhere"),
                ("POST", "/health"),
            ):
                seen[path + method] = request(port, method, path, rpc_body("counter.increment"))
            seen["wrong"] = request(
                port, "POST", "/rpc", rpc_body("counter.increment"),
                {"Authorization": "Bearer not-a-token"},
            )  # fmt: skip
            seen["health"] = request(port, "GET", "/health")
            sock, seen["ws"], _ = upgrade(port, "/ws/rpc")
            sock.close()
            sock, seen["ws_wrong"], _ = upgrade(
                port, "/ws/rpc", {"Authorization": "Bearer " + CI_TOKEN[::-1]}
            )
            sock.close()
            return seen

        seen = await deferToThread(attempts)
        for name, answer in seen.items():
            if name in ("health", "ws", "ws_wrong"):
                continue
            status, headers, body = answer
            self.assertEqual(status, 401, name)
            self.assertEqual(json.loads(body)["status"], 401, name)
            self.assertEqual(headers[b"content-type"], b"application/json", name)
            self.assertIn(b"Bearer", headers[b"www-authenticate"], name)
        self.assertEqual(seen["health"][0], 200)
        self.assertEqual(json.loads(seen["health"][2])["status"], "healthy")
        self.assertEqual((seen["ws"], seen["ws_wrong"]), (401, 401))
        self.assertEqual(counter.count, 0)
        self.assertEqual(node.peer_admin.dialers, {})

    async def test_absoluteForm(self) -> None:
        """
        A target in absolute form (GET http://host:port/health, which a
        server must take: RFC 9112) is the same request as its path, with
        its authority as the Host: /health needs no token, /rpc does, and
        an authority the Host check refuses is refused.
        """
        node, _ = self.node()
        port = port_of(node)
        here = f"http://{HOST}:{port}"
        shouted = f"HTTP://{HOST}:{port}"
        ci = {"Authorization": "Bearer " + CI_TOKEN}

        def attempts() -> dict[str, int]:
            return {
                "health": request(port, "GET", here + "/health", host="elsewhere")[0],
                "rpc_no_token": request(port, "POST", here + "/rpc", rpc_body("counter.get"))[0],
                "rpc": request(port, "POST", shouted + "/rpc", rpc_body("counter.get"), ci)[0],
                "query": request(port, "GET", here + "/registry/peers?x=1", headers=ci)[0],
                "evil": request(port, "GET", "http://evil.example/health")[0],
                "two": request(port, "GET", here + "/health", headers={"Host": "b.example"})[0],
            }  # fmt: skip

        self.assertEqual(
            await deferToThread(attempts),
            {"health": 200, "rpc_no_token": 401, "rpc": 200, "query": 200, "evil": 403, "two": 400},
        )

    async def test_refusalsDated(self) -> None:
        """
        The node's own refusals, made before twisted.web would stamp them
        (401, 403, 400, 413), carry Date and Server as its other answers do.
        """
        node, _ = self.node()
        port = port_of(node)
        big = {"Content-Length": str(10**9)}

        def refusals() -> dict[str, tuple[int, dict[bytes, bytes], bytes]]:
            return {
                "ok": request(port, "GET", "/health"),
                "401": request(port, "POST", "/rpc", rpc_body("counter.get")),
                "403": request(port, "GET", "/health", host="evil.example"),
                "400": request(port, "GET", "/health", headers={"Host": "b.example"}),
                "413": _head_only(
                    port, "POST /rpc", {**big, "Authorization": "Bearer " + CI_TOKEN}
                ),
            }

        for name, (status, headers, _) in (await deferToThread(refusals)).items():
            with self.subTest(name=name):
                self.assertEqual(str(status), "200" if name == "ok" else name)
                self.assertIn(b"date", headers)
                self.assertTrue(headers[b"date"].endswith(b" GMT"), headers[b"date"])
                self.assertTrue(headers[b"server"].startswith(b"TwistedWeb/"))

    async def test_tokenBeforeSize(self) -> None:
        """
        A request without its token is told so (401) however large its
        body, and a non-admin on an admin path 403: before 413, whether
        its length is declared or its body runs past the limit.
        """
        node, counter = self.node()
        port = port_of(node)
        big = {"Content-Length": str(10**9)}
        ci = {"Authorization": "Bearer " + CI_TOKEN}
        ops = {"Authorization": "Bearer " + OPS_TOKEN}
        chunks = [b"x" * 300_000] * 5  # (over 1 MiB in all)

        def answers() -> dict[str, int]:
            return {
                "declared, no token": _head_only(port, "POST /rpc", big)[0],
                "declared, not an admin": _head_only(
                    port, "POST /registry/peers/add", {**big, **ci}
                )[0],
                "declared, admin": _head_only(port, "POST /registry/peers/add", {**big, **ops})[0],
                "declared, token": _head_only(port, "POST /rpc", {**big, **ci})[0],
                "dashboard, no token": _head_only(port, "GET /dashboard", big)[0],
                "dashboard, wrong cookie": _head_only(
                    port, "GET /dashboard/mesh", {**big, "Cookie": "relaytx_token=wrong"}
                )[0],
                "dashboard, token in query": _head_only(
                    port, f"GET /dashboard?token={CI_TOKEN}", big
                )[0],
                "sent, no token": _chunked(port, "/rpc", {}, chunks)[0],
                "sent, token": _chunked(port, "/rpc", ci, chunks)[0],
            }

        self.assertEqual(
            await deferToThread(answers),
            {
                "declared, no token": 401,
                "declared, not an admin": 403,
                "declared, admin": 413,
                "declared, token": 413,
                "dashboard, no token": 401,
                "dashboard, wrong cookie": 401,
                "dashboard, token in query": 413,
                "sent, no token": 401,
                "sent, token": 413,
            },
        )
        self.assertEqual(counter.count, 0)

    async def test_methodsCaseSensitive(self) -> None:
        """
        A method in the wrong case (RFC 9110: methods are case-sensitive) is
        405 on every path, with the methods it takes: an admin action no
        more runs on "post" than /rpc did.
        """
        node = start_node(self, "mc")
        port = port_of(node)
        address = json.dumps({"address": "ws://127.0.0.1:9"}).encode()

        def attempts() -> dict[str, tuple[int, bytes | None]]:
            seen = {}
            for method, path in (("get", "/health"), ("Get", "/registry"), ("post", "/rpc"),
                                 ("post", "/registry/peers/add"), ("head", "/health")):  # fmt: skip
                status, headers, _ = request(port, method, path, address)
                seen[f"{method} {path}"] = (status, headers.get(b"allow"))
            return seen

        self.assertEqual(
            await deferToThread(attempts),
            {
                "get /health": (405, b"GET, HEAD"),
                "Get /registry": (405, b"GET, HEAD"),
                "post /rpc": (405, b"POST"),
                "post /registry/peers/add": (405, b"POST"),
                "head /health": (405, b"GET, HEAD"),
            },
        )
        self.assertEqual(len(node.peer_admin.dialers), 0)

    async def test_withTokens(self) -> None:
        """A token admits a caller as http:NAME: rules apply to it, admins may add peers."""
        node, counter = self.node()
        port = port_of(node)
        ci = {"Authorization": "Bearer " + CI_TOKEN}
        ops = {"Authorization": "Bearer " + OPS_TOKEN}
        address = json.dumps({"address": "ws://127.0.0.1:9"}).encode()

        def calls() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            seen["ci_get"] = request(port, "POST", "/rpc", rpc_body("counter.get"), ci)
            seen["ci_inc"] = request(port, "POST", "/rpc", rpc_body("counter.increment"), ci)
            seen["ops_inc"] = request(port, "POST", "/rpc", rpc_body("counter.increment"), ops)
            seen["ci_add"] = request(port, "POST", "/registry/peers/add", address, ci)
            seen["ci_remove"] = request(port, "DELETE", "/registry/peers/remove", address, ci)
            seen["ops_add"] = request(port, "POST", "/registry/peers/add", address, ops)
            seen["metrics"] = request(port, "GET", "/metrics", headers=ci)
            with connect(
                f"ws://{HOST}:{port}/ws/rpc", additional_headers=ci, open_timeout=5
            ) as client:
                client.send(rpc_body("counter.increment").decode())
                seen["ws_ci_inc"] = json.loads(client.recv(timeout=5))
                client.send(rpc_body("counter.get").decode())
                seen["ws_ci_get"] = json.loads(client.recv(timeout=5))
            return seen

        seen = await deferToThread(calls)
        self.assertEqual(json.loads(seen["ci_get"][2])["result"], 0)
        self.assertEqual(json.loads(seen["ci_inc"][2])["error"]["code"], -32004)
        self.assertIn("http:ci", json.loads(seen["ci_inc"][2])["error"]["message"])
        self.assertEqual(json.loads(seen["ops_inc"][2])["result"], 1)
        self.assertEqual((seen["ci_add"][0], seen["ci_remove"][0]), (403, 403))
        self.assertEqual(seen["ops_add"][0], 200)
        self.assertEqual(len(node.peer_admin.dialers), 1)
        self.assertEqual(seen["metrics"][0], 200)
        self.assertEqual(seen["ws_ci_inc"]["error"]["code"], -32004)
        self.assertEqual(seen["ws_ci_get"]["result"], 1)
        self.assertEqual(counter.count, 1)


class BrowserTests(TestCase):
    """A web page on the operator's machine: its Origin, or a rebinding Host, gets 403."""

    timeout = 30

    async def test_crossSitePage(self) -> None:
        """A page's text/plain POSTs and its WebSocket get 403: no call runs, no peer is added."""
        counter = Counter()
        node = start_node(self, "web1", servers={"counter": counter})
        port = port_of(node)

        def page() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            seen["rpc"] = request(port, "POST", "/rpc", rpc_body("counter.increment"), BROWSER)
            seen["add"] = request(
                port, "POST", "/registry/peers/add", b'{"address":"ws://127.0.0.1:9"}', BROWSER
            )
            seen["remove"] = request(
                port, "POST", "/registry/peers/remove", b'{"node_id":"x"}', BROWSER
            )
            seen["registry"] = request(port, "GET", "/registry", headers={"Origin": "null"})
            seen["health"] = request(port, "GET", "/health", headers=BROWSER)
            sock, seen["ws"], _ = upgrade(
                port, "/ws/rpc", {"Origin": "https://evil.example", "Sec-Fetch-Mode": "websocket"}
            )
            sock.close()
            sock, seen["p2p"], _ = upgrade(
                port, "/ws/p2p?node_id=x", {"Origin": "https://evil.example"}
            )
            sock.close()
            seen["p2p_get"] = request(port, "GET", "/ws/p2p?node_id=x", headers=BROWSER)
            # curl and JSON-RPC libraries: no Origin, any Content-Type.
            plain = {"Content-Type": "text/plain"}
            seen["curl"] = request(port, "POST", "/rpc", rpc_body("counter.get"), plain)
            return seen

        seen = await deferToThread(page)
        for name in ("rpc", "add", "remove", "registry", "health", "p2p_get"):
            self.assertEqual(seen[name][0], 403, name)
            self.assertEqual(json.loads(seen[name][2])["status"], 403, name)
        self.assertEqual((seen["ws"], seen["p2p"]), (403, 403))
        self.assertEqual(counter.count, 0)
        self.assertEqual(node.peer_admin.dialers, {})
        self.assertEqual(json.loads(seen["curl"][2])["result"], 0)

    async def test_rebinding(self) -> None:
        """A Host that is a name other than localhost or allowed_hosts gets 403 (DNS rebinding)."""
        counter = Counter()
        node = start_node(
            self,
            "web2",
            servers={"counter": counter},
            http={"allowed_hosts": ["relay.internal"]},
            allowed_origins=["https://ops.example"],
        )
        port = port_of(node)

        def rebound() -> dict[str, int]:
            same_origin = {"Content-Type": "text/plain", "Sec-Fetch-Site": "same-origin"}
            return {
                "evil": request(
                    port, "POST", "/rpc", rpc_body("counter.increment"), same_origin,
                    host=f"evil.example:{port}",
                )[0],
                "evil_get": request(port, "GET", "/registry", host=f"evil.example:{port}")[0],
                "suffix": request(port, "GET", "/registry", host="localhost.evil.example")[0],
                "localhost": request(port, "GET", "/registry", host=f"localhost:{port}")[0],
                "v6": request(port, "GET", "/registry", host=f"[::1]:{port}")[0],
                "allowed": request(port, "GET", "/registry", host=f"Relay.Internal:{port}")[0],
                "origin_ok": request(
                    port, "POST", "/rpc", rpc_body("counter.get"),
                    {**BROWSER, "Origin": "https://ops.example"},
                )[0],
            }  # fmt: skip

        seen = await deferToThread(rebound)
        self.assertEqual(
            seen,
            {
                "evil": 403,
                "evil_get": 403,
                "suffix": 403,
                "localhost": 200,
                "v6": 200,
                "allowed": 200,
                "origin_ok": 200,
            },
        )
        self.assertEqual(counter.count, 0)

    async def test_rebinding_peer_endpoint(self) -> None:
        """
        The Host check holds on /ws/p2p too, but for relaytx diallers (which
        dial by any name, and say so in a header no browser can send on a
        WebSocket upgrade); a request with two Host headers is a 400.
        """
        node = start_node(self, "web3")
        port = port_of(node)
        evil = f"evil.example:{port}"

        def tries() -> dict[str, int]:
            seen = {}
            for name, path, headers in [
                ("p2p", "/ws/p2p?node_id=x", {}),
                ("rpc", "/ws/rpc", {}),
                ("dialler", "/ws/p2p?node_id=x", {"X-Relaytx-Unmasked": "1"}),
            ]:
                sock, seen[name], _ = upgrade(port, path, headers, host=evil)
                sock.close()
            seen["p2p_get"] = request(port, "GET", "/ws/p2p?node_id=x", host=evil)[0]
            for name, first, second in [("two", "evil.example", HOST), ("two_back", HOST, "evil")]:
                seen[name] = request(
                    port, "GET", "/registry", headers={"Host": second}, host=first
                )[0]
            seen["two_p2p"] = request(port, "GET", "/ws/p2p", headers={"Host": HOST}, host=HOST)[0]
            return seen

        seen = await deferToThread(tries)
        self.assertEqual(
            seen,
            {
                "p2p": 403,
                "rpc": 403,
                "dialler": 101,
                "p2p_get": 403,
                "two": 400,
                "two_back": 400,
                "two_p2p": 400,
            },
        )


class SlowClientTests(TestCase):
    """Half-open requests, silent sockets and unfinished messages are closed in time."""

    timeout = 40

    async def test_halfOpenRequests(self) -> None:
        """Requests whose head or body stops short are closed at header_timeout; /health lives."""
        node = start_node(self, "slow1", limits={"header_timeout": 0.5})
        port = port_of(node)

        def half_open() -> list[float | None]:
            socks = []
            for n in range(60):
                sock = socket.create_connection((HOST, port), timeout=5)
                if n % 3 == 0:
                    sock.sendall(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # head unfinished
                elif n % 3 == 1:
                    sock.sendall(
                        b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99\r\n\r\n{"
                    )
                socks.append(sock)  # (and one in three says nothing at all)
            health = request(port, "GET", "/health")[0]
            assert health == 200, health
            times = [closed_within(sock, 5) for sock in socks]
            for sock in socks:
                sock.close()
            return times

        times = await deferToThread(half_open)
        self.assertNotIn(None, times)
        self.assertLess(max(t for t in times if t is not None), 3.0)
        await wait_for(lambda: node.guards.connections.held == 0, 5, what="every place given back")

    async def test_keepAliveIdle(self) -> None:
        """An idle keep-alive connection is closed at idle_timeout, not before."""
        node = start_node(self, "slow2", limits={"idle_timeout": 1.0})
        port = port_of(node)

        def keep_alive() -> tuple[int, float | None]:
            with socket.create_connection((HOST, port), timeout=5) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                first = sock.recv(65536)
                return int(first.split()[1]), closed_within(sock, 5)

        status, took = await deferToThread(keep_alive)
        self.assertEqual(status, 200)
        assert took is not None
        self.assertGreater(took, 0.8)
        self.assertLess(took, 3.0)

    async def test_silentWebSockets(self) -> None:
        """/ws/rpc sockets that answer no ping are closed; a client that answers stays."""
        node = start_node(self, "slow3", limits={"idle_timeout": 1.0})
        port = port_of(node)

        def silent() -> tuple[list[float | None], Any]:
            socks = [upgrade(port, "/ws/rpc")[0] for _ in range(40)]
            with connect(f"ws://{HOST}:{port}/ws/rpc", open_timeout=5) as client:
                times = [closed_within(sock, 5) for sock in socks]
                time.sleep(0.5)  # past idle_timeout overall: pinged, and answered
                client.send(rpc_body("node.echo", ["still here"]).decode())
                answer = json.loads(client.recv(timeout=5))
            for sock in socks:
                sock.close()
            return times, answer

        times, answer = await deferToThread(silent)
        self.assertNotIn(None, times)
        self.assertLess(max(t for t in times if t is not None), 3.0)
        self.assertEqual(answer["result"], ["still here"])
        self.assertEqual(node.guards.watch.closed["silent"], 40)

    async def test_unfinishedFragments(self) -> None:
        """
        Fragmented messages that never finish are closed (1008) at idle_timeout,
        and all of them together hold at most max_buffered_input (1013 past it).
        """
        node = start_node(
            self, "slow4", limits={"idle_timeout": 1.0, "max_buffered_input": 256 * 1024}
        )
        port = port_of(node)
        piece = b"x" * (60 * 1024)

        # A message begun, then more pieces, never the last.
        begun = _frame(0x1, b'["' + piece, fin=False)
        codes = await deferToThread(_trickle, port, begun, _frame(0x0, b"y", fin=False), 0.1)
        self.assertEqual(sorted(set(codes)), [1008, 1013], codes)
        self.assertGreaterEqual(codes.count(1013), 4, codes)
        self.assertEqual(node.guards.watch.budget.held, 0)


class TinyFragmentTests(TestCase):
    """An unfinished message of tiny fragments: each fragment's cost counts, not its byte."""

    timeout = 30

    async def test_tinyFragmentsCounted(self) -> None:
        """
        10,000 one-byte fragments hold 10 KB of payload but some 640 KB of
        the node's memory: past max_buffered_input (256 KiB), 1013 at once,
        long before idle_timeout; and all of it is given back.
        """
        node = start_node(
            self, "tiny", limits={"idle_timeout": 20.0, "max_buffered_input": 256 * 1024}
        )
        port = port_of(node)

        def fragments() -> tuple[int | None, float]:
            sock, status, rest = upgrade(port, "/ws/rpc")
            assert status == 101, status
            started = time.monotonic()
            try:
                sock.sendall(_frame(0x1, b"[", fin=False) + _frame(0x0, b" ", fin=False) * 10_000)
            except OSError:
                pass  # (closed while sending)
            return _ws_close_code(sock, rest), time.monotonic() - started

        code, took = await deferToThread(fragments)
        self.assertEqual(code, 1013)
        self.assertLess(took, 10)
        await wait_for(lambda: node.guards.watch.budget.held == 0, 5, what="the budget back")


class ConnectionCapTests(TestCase):
    """One address holding its maximum leaves room for /health and for members."""

    timeout = 30

    async def test_perAddress(self) -> None:
        """Past max_connections_per_ip, an address's connections close at once; others get in."""
        node1 = start_node(
            self, "cap1", limits={"max_connections": 40, "max_connections_per_ip": 20}
        )
        port = port_of(node1)

        def flood() -> tuple[list[float | None], list[socket.socket]]:
            held = [
                socket.create_connection((HOST, port), timeout=5, source_address=(ATTACKER, 0))
                for _ in range(20)
            ]
            extra = [
                socket.create_connection((HOST, port), timeout=5, source_address=(ATTACKER, 0))
                for _ in range(10)
            ]
            times = [closed_within(sock, 2) for sock in extra]
            for sock in extra:
                sock.close()
            return times, held

        times, held = await deferToThread(flood)
        try:
            self.assertNotIn(None, times)
            self.assertLess(max(t for t in times if t is not None), 0.5)
            self.assertEqual(node1.guards.connections.of(ATTACKER), 20)
            health = await deferToThread(request, port, "GET", "/health")
            self.assertEqual(health[0], 200)
            node2 = start_node(self, "cap2", [ws(node1)])
            await wait_for(
                lambda: "cap2" in node1.mesh.links and "cap1" in node2.mesh.links,
                5,
                what="a member to link, at both ends",
            )
            pong = await node2.call("cap1", "node", "ping", timeout=5)
            self.assertEqual(pong["node_id"], "cap1")
        finally:
            for sock in held:
                sock.close()
        await wait_for(lambda: node1.guards.connections.of(ATTACKER) == 0, 5, what="places back")

    async def test_unfinishedBodiesFromOneAddress(self) -> None:
        """
        One address holding bodies that never finish takes at most a quarter
        of max_buffered_input: a member's large frames and other clients'
        bodies still get in (they had been refused, the member's link
        closed with 1013).
        """
        limits = {"max_buffered_input": 2 * 1024 * 1024, "header_timeout": 20.0}
        node1 = start_node(self, "pool1", limits=limits)
        port = port_of(node1)
        node2 = start_node(self, "pool2", [ws(node1)])
        await wait_for(lambda: "pool2" in node1.mesh.links, 5, what="the member's link")

        def hold() -> list[socket.socket]:
            held = []
            for _ in range(12):  # (2.3 MB: it had filled the whole budget)
                sock = socket.create_connection(
                    (HOST, port), timeout=5, source_address=(ATTACKER, 0)
                )
                head = f"POST /rpc HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 200000\r\n\r\n"
                sock.sendall(head.encode() + b" " * 190_000)
                held.append(sock)
            return held

        held = await deferToThread(hold)
        try:
            budget = node1.guards.watch.budget
            await wait_for(lambda: budget.held >= 190_000, 5, what="the held bodies")
            await deferLater(reactor, 0.3, lambda: None)  # (what more there is to take, taken)
            big = "x" * 300_000
            self.assertEqual(await node2.call("pool1", "node", "echo", big, timeout=5), [big])
            self.assertIn("pool2", node1.mesh.links)
            body = json.dumps({"jsonrpc": "2.0", "method": "node.echo", "params": [big], "id": 1})
            status, _, answer = await deferToThread(request, port, "POST", "/rpc", body.encode())
            self.assertEqual((status, json.loads(answer)["result"]), (200, [big]))
        finally:
            for sock in held:
                sock.close()
        await wait_for(lambda: node1.guards.watch.budget.held == 0, 5, what="the budget back")

    async def test_total(self) -> None:
        """Past max_connections in all, new connections close at once."""
        node = start_node(self, "cap3", limits={"max_connections": 10, "max_connections_per_ip": 8})
        port = port_of(node)

        def fill() -> float | None:
            mine = [socket.create_connection((HOST, port), timeout=5) for _ in range(8)]
            theirs = [
                socket.create_connection((HOST, port), timeout=5, source_address=(ATTACKER, 0))
                for _ in range(2)
            ]
            late = socket.create_connection(
                (HOST, port), timeout=5, source_address=("127.0.0.3", 0)
            )
            took = closed_within(late, 2)
            for sock in (*mine, *theirs, late):
                sock.close()
            return took

        took = await deferToThread(fill)
        assert took is not None
        self.assertLess(took, 0.5)


class BackPressureTests(TestCase):
    """A /ws/rpc client that never reads its answers does not grow the node."""

    timeout = 40

    async def test_neverReads(self) -> None:
        """Reading stops at max_write_buffer; the client is closed at idle_timeout; others go on."""
        bound = 256 * 1024
        node = start_node(self, "bp1", limits={"max_write_buffer": bound, "idle_timeout": 2.0})
        port = port_of(node)
        sent = {"bytes": 0}
        stop = {"now": False}

        def never_read() -> float | None:
            sock, status, _ = upgrade(port, "/ws/rpc")
            assert status == 101
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            call = _frame(0x1, rpc_body("node.echo", ["x" * 8000]))
            sock.settimeout(0.05)
            started = time.monotonic()
            while not stop["now"] and time.monotonic() - started < 10:
                try:
                    sock.sendall(call)
                    sent["bytes"] += 8000
                except TimeoutError:
                    continue  # the node stopped reading: our sends back up
                except OSError:
                    break
            took = closed_within(sock, 6)
            sock.close()
            return took

        flooding = deferToThread(never_read)
        unsent = []
        latencies = []
        for _ in range(20):
            started = reactor.seconds()
            answer = await rpc(url(node), "node.echo", ["legit"])
            latencies.append(reactor.seconds() - started)
            self.assertEqual(answer["result"], ["legit"])
            unsent += [flow.unsent() for flow in node.guards.watch.flows]
        await wait_for(
            lambda: any(f.reading_paused for f in node.guards.watch.flows) or flooding.called,
            10,
            what="the node to stop reading the flooder",
        )
        stop["now"] = True
        took = await flooding
        self.assertIsNotNone(took)
        self.assertGreater(sent["bytes"], 4 * bound)  # it sent far more than the node holds
        self.assertLess(max(unsent), bound + 512 * 1024)  # the bound, and a read's answers
        self.assertLess(max(latencies), 1.0)
        self.assertEqual(node.guards.watch.closed["unread"], 1)


class _Big(Server):
    """Answers as many bytes as asked for, at once (beside the mailbox), counting its runs."""

    runs = 0

    @exposed(concurrent=True)
    def answer(self, size: int) -> str:
        self.runs += 1
        return "x" * size


def _text_frames(sock: socket.socket, count: int) -> list[bytes]:
    """:returns: the payloads of the next C{count} unmasked frames read from C{sock}."""
    data, payloads = b"", []
    while len(payloads) < count:
        while len(data) < 10:
            data += sock.recv(1 << 20)
        size, at = data[1] & 0x7F, 2
        if size == 126:
            size, at = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127:
            size, at = struct.unpack("!Q", data[2:10])[0], 10
        while len(data) < at + size:
            data += sock.recv(1 << 20)
        payloads.append(data[at : at + size])
        data = data[at + size :]
    return payloads


class BurstTests(TestCase):
    """Requests that one read brought in are taken only as the output drains."""

    timeout = 40

    async def test_burstHeldToTheBound(self) -> None:
        """
        A burst asking for far more than max_write_buffer runs only what the
        bound (and the socket's buffers) take; the rest waits, and every
        answer comes, in order, as the client reads.
        """
        big = _Big()
        node = start_node(
            self, "burst", servers={"big": big}, limits={"max_write_buffer": 256 * 1024}
        )
        port = port_of(node)
        count, size = 60, 500_000
        burst = b"".join(_frame(0x1, rpc_body("big.answer", [size], i)) for i in range(count))

        def send() -> socket.socket:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before connecting)
            sock.settimeout(10)
            sock.connect((HOST, port))
            key = base64.b64encode(os.urandom(16))
            sock.sendall(
                b"GET /ws/rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n" % key
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            sock.sendall(burst)
            return sock

        sock = await deferToThread(send)
        try:
            await wait_for(lambda: big.runs > 0, 5, what="the first calls")
            await deferLater(reactor, 0.5, lambda: None)
            self.assertLess(big.runs, 20)  # (what the kernel's buffers took, and the bound)
            [flow] = node.guards.watch.flows
            self.assertLessEqual(flow.unsent(), 256 * 1024 + size + 1024)
            answers = await deferToThread(_text_frames, sock, count)
        finally:
            sock.close()
        self.assertEqual([json.loads(a)["id"] for a in answers], list(range(count)))
        self.assertEqual(big.runs, count)


class ShortFrameTests(TestCase):
    """Short frames (under 64 KiB) that never finish, as fragmented messages."""

    timeout = 40

    async def test_unfinishedShortFrames(self) -> None:
        """
        A short frame that trickles in and never finishes is closed (1008) at
        idle_timeout, and such frames together hold at most
        max_buffered_input (1013 past it).
        """
        node = start_node(
            self, "short1", limits={"idle_timeout": 1.0, "max_buffered_input": 256 * 1024}
        )
        port = port_of(node)
        size = 60 * 1024

        # All but the last 1000 bytes of a frame, then a byte now and then.
        begun = _frame(0x1, b"[" + b" " * (size - 2) + b"]")[:-1000]
        codes = await deferToThread(_trickle, port, begun, b" ", 0.2)
        self.assertEqual(sorted(set(codes)), [1008, 1013], codes)
        self.assertGreaterEqual(codes.count(1013), 4, codes)
        self.assertEqual(node.guards.watch.budget.held, 0)


class HttpBackPressureTests(TestCase):
    """An HTTP client that pipelines requests and never reads the answers."""

    timeout = 40

    async def test_pipelinedNeverReads(self) -> None:
        """
        The node stops reading it once its answers fill the socket's buffer
        (they were held without end), answers others meanwhile, and cuts it
        at idle_timeout, a second after closing it.
        """
        node = start_node(self, "bp2", limits={"idle_timeout": 2.0})
        port = port_of(node)
        requests = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 200
        stop = {"now": False, "done": False}

        def never_read() -> None:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect((HOST, port))
                sock.settimeout(0.05)
                started = time.monotonic()
                while not stop["now"] and time.monotonic() - started < 10:
                    try:
                        sock.sendall(requests)
                    except TimeoutError:
                        continue  # the node stopped reading: our sends back up
                    except OSError:
                        break
                while not stop["done"] and time.monotonic() - started < 30:
                    time.sleep(0.05)  # still reading nothing, until the node cut it

        site = node.listening_port.factory  # type: ignore[union-attr]
        self.assertIsInstance(site, NodeSite)

        def unsent() -> int:
            # What the node holds for its HTTP clients, unsent (the sockets'
            # buffers, as relaytx._flow.Flow.unsent reads them).
            held = 0
            for channel in list(site._channels):
                transport = channel.transport
                while transport is not None and not hasattr(transport, "dataBuffer"):
                    transport = transport.transport
                if transport is not None:
                    held += len(transport.dataBuffer) - transport.offset + transport._tempDataLen
            return held

        flooding = deferToThread(never_read)
        held = []
        for _ in range(20):
            answer = await rpc(url(node), "node.echo", ["legit"])
            self.assertEqual(answer["result"], ["legit"])
            held.append(unsent())
            await deferLater(reactor, 0.1, lambda: None)
        stop["now"] = True
        try:
            # The legitimate callers' connections are gone by then too.
            await wait_for(lambda: not site._channels, 10, what="the flooder to be cut")
        finally:
            stop["done"] = True
            await flooding
        # One socket buffer's worth, and the answers to one read of requests.
        self.assertLess(max(held), 1024 * 1024)


class ForwardedCallerTests(TestCase):
    """A call relayed by another node keeps its HTTP caller for the target's rules."""

    timeout = 30

    async def test_denyHttpThroughNeighbour(self) -> None:
        """node1 denies http: node2's HTTP clients are refused, node2 itself is not."""
        counter = Counter()
        node1 = start_node(
            self,
            "fw1",
            servers={"counter": counter},
            access={"rule": [{"callers": ["http"], "servers": ["counter"], "allow": False}]},
        )
        node2 = start_node(self, "fw2", [ws(node1)])
        await wait_for(lambda: "fw1" in node2.mesh.links, 5, what="the link")
        await wait_for(lambda: node2.mesh.can_reach("fw1"), 5, what="a route")
        for method, params in (
            ("fw1/counter.increment", []),
            ("counter.increment", []),
            ("remote_call", {"node_id": "fw1", "server_name": "counter", "method": "increment"}),
        ):
            answer = await rpc(url(node2), method, params)
            self.assertEqual(answer["error"]["code"], -32004, (method, answer))
            self.assertIn("http:127.0.0.1", answer["error"]["message"])
        self.assertEqual(counter.count, 0)
        self.assertEqual(await node2.call("fw1", "counter", "increment", timeout=5), 1)

    async def test_namedThroughNeighbour(self) -> None:
        """A rule naming http:ops on node1 admits node2's client holding the ops token."""
        counter = Counter()
        node1 = start_node(
            self,
            "fw3",
            servers={"counter": counter},
            access={
                "default": "deny",
                "rule": [{"callers": ["http:ops"], "servers": ["counter"], "allow": True}],
            },
        )
        node2 = start_node(self, "fw4", [ws(node1)], http={"tokens": TOKENS})
        await wait_for(lambda: "fw3" in node2.mesh.links, 5, what="the link")
        port = port_of(node2)

        def call(token: str) -> Any:
            headers = {"Authorization": "Bearer " + token}
            return json.loads(
                request(port, "POST", "/rpc", rpc_body("fw3/counter.increment"), headers)[2]
            )

        ops = await deferToThread(call, OPS_TOKEN)
        ci = await deferToThread(call, CI_TOKEN)
        self.assertEqual(ops.get("result"), 1, ops)
        self.assertEqual(ci["error"]["code"], -32004, ci)
        # node2 calling for itself is not http:ops: node1's default denies it.
        with self.assertRaises(AccessDenied):
            await node2.call("fw3", "counter", "increment", timeout=5)


class MemberTests(TestCase):
    """A member sending huge ids and never-answered calls cannot grow a node."""

    timeout = 40

    async def test_hugeIdsAndNeverAnswered(self) -> None:
        """Huge ids are dropped as malformed; forwarded calls stop at max_pending_calls (-32005)."""
        target = start_node(self, "mem2", servers={"counter": Counter()})
        middle = start_node(self, "mem1", [ws(target)], limits={"max_pending_calls": 50})
        await wait_for(lambda: "mem2" in middle.mesh.links, 5, what="the link")

        def attack() -> dict[str, int]:
            seen = {"overloaded": 0, "other": 0}
            with connect(ws(middle) + "/ws/p2p?node_id=evil", open_timeout=5, max_size=None) as c:
                big = "x" * 400_000  # twice in a frame: under the 1 MiB frame limit
                for n in range(5):
                    c.send(json.dumps({
                        "type": "server_call", "id": big, "from": "evil", "to": "mem2",
                        "data": {"call": {"server_name": "counter", "method": "get"},
                                 "response_id": big + str(n)},
                        "route": ["evil"], "ttl": 9,
                    }))  # fmt: skip
                for n in range(120):
                    c.send(json.dumps({
                        "type": "server_call", "id": f"m{n}", "from": "evil", "to": "mem2",
                        "data": {"call": {"server_name": "counter", "method": "slow_increment",
                                          "args": [60], "timeout": 1e9},
                                 "response_id": f"r{n}"},
                        "route": ["evil"], "ttl": 9,
                    }))  # fmt: skip
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and seen["overloaded"] < 70:
                    try:
                        frame = json.loads(c.recv(timeout=0.5))
                    except TimeoutError:
                        continue
                    if frame["type"] == "server_response":
                        if frame["data"].get("error_code") == -32005:
                            seen["overloaded"] += 1
                        else:
                            seen["other"] += 1
            return seen

        seen = await deferToThread(attack)
        self.assertEqual(seen, {"overloaded": 70, "other": 0})
        dropped = middle.metrics.messages_dropped.labels("bad_id")._value.get()
        self.assertGreaterEqual(dropped, 5)
        forwarded = middle.mesh.forwarded
        self.assertLessEqual(len(forwarded), 50)
        horizon = reactor.seconds() + 86400 + 1
        self.assertTrue(all(e.deadline <= horizon for e in forwarded._calls.values()))


class DialerTests(TempDirMixin, TestCase):
    """Peers added at run time are bounded, and their failures logged once with a count."""

    timeout = 30

    async def test_boundedAndQuiet(self) -> None:
        """Past max_dialers, peers/add answers 503; a failing peer's log grows as log2 of tries."""
        node = start_node(self, "dial1", limits={"max_dialers": 5})
        events = log_events(self)
        port = port_of(node)
        closed = socket.socket()
        closed.bind((HOST, 0))
        dead = closed.getsockname()[1]  # bound, never listening: refused
        self.addCleanup(closed.close)

        def add_many() -> list[int]:
            return [
                request(
                    port, "POST", "/registry/peers/add",
                    json.dumps({"address": f"ws://127.0.0.1:{dead}/p{n}"}).encode(),
                )[0]
                for n in range(30)
            ]  # fmt: skip

        statuses = await deferToThread(add_many)
        self.assertEqual(statuses[:5], [200] * 5)
        self.assertEqual(set(statuses[5:]), {503})
        self.assertEqual(len(node.peer_admin.dialers), 5)
        dialer = next(iter(node.peer_admin.dialers.values()))
        await wait_for(lambda: dialer._repeats.count >= 5, 15, what="five failed attempts")
        lines = dialler_lines(events, dialer)
        retries = [e for e in events if "Scheduling retry" in e.get("log_format", "")]
        self.assertLessEqual(len(lines), 1 + dialer._repeats.count.bit_length())
        self.assertLess(len(lines), dialer._repeats.count)
        self.assertEqual(retries, [])
        self.assertIn("ConnectionRefusedError", lines[0]["why"])

    async def test_refusedUpgradesQuiet(self) -> None:
        """
        A stranger retrying the upgrade without the cluster secret, and a
        second claimant of a linked id, are refused at every attempt: no
        line of Autobahn's per attempt, the failures logged at 1, 2, 4...
        """
        secret = self.mktemp()
        with open(secret, "wb") as f:
            f.write(b"s" * 32)
        os.chmod(secret, 0o600)
        target = start_node(self, "quiet1", secret_file=secret)
        start_node(self, "quiet2", [ws(target)], secret_file=secret)
        await wait_for(lambda: "quiet2" in target.mesh.links, 5, what="the member's link")
        events = log_events(self)
        base = ws(target) + "/ws/p2p?node_id="

        def knock() -> list[int]:
            statuses = []
            for n in range(16):
                try:
                    with connect(base + ("quiet2" if n % 2 else "stranger"), open_timeout=5):
                        statuses.append(101)
                except InvalidStatus as e:
                    statuses.append(e.response.status_code)
            return statuses

        statuses = await deferToThread(knock)
        self.assertEqual(statuses, [401] * 16)  # (no nonce: the secret's refusal comes first)
        autobahn = [
            e
            for e in events
            if "opening handshake" in e.get("log_format", "")
            or "dropping connection" in e.get("log_format", "")
        ]
        self.assertEqual([e for e in autobahn if e.get("log_level") != LogLevel.debug], [])
        counted = [e for e in events if "failed authentication" in e.get("log_format", "")]
        self.assertLessEqual(len(counted), 2 * (1 + (8).bit_length()))
        self.assertEqual(errors(events), [])

    async def test_failedConnectionsQuiet(self) -> None:
        """
        A stranger that gets past the upgrade with a nonce of the right
        form, then breaks the protocol (an unmasked frame), is closed (1002)
        at every attempt, and logged at 1, 2, 4... of them: no warning of
        Autobahn's per connection.
        """
        secret = self.mktemp()
        with open(secret, "wb") as f:
            f.write(b"s" * 32)
        os.chmod(secret, 0o600)
        target = start_node(self, "quiet3", secret_file=secret)
        port = target.listening_port.getHost().port  # type: ignore[union-attr]
        events = log_events(self)

        def attempt(n: int) -> int | None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            key = base64.b64encode(os.urandom(16))
            sock.sendall(
                b"GET /ws/p2p?node_id=evil" + str(n % 2).encode() + b" HTTP/1.1\r\n"
                b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
                b"X-Relaytx-Nonce: " + os.urandom(32).hex().encode() + b"\r\n\r\n"
            )
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(4096)
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            sock.sendall(_frame(0x1, b"{}", masked=False))
            return _ws_close_code(sock, rest)

        codes = await deferToThread(lambda: [attempt(n) for n in range(12)])
        self.assertEqual(codes, [1002] * 12)
        autobahn = [
            e
            for e in events
            if e.get("log_namespace", "").startswith("autobahn")
            and e.get("log_level") not in (LogLevel.debug, LogLevel.info)
        ]
        self.assertEqual(autobahn, [])
        ours = [e for e in events if "failed a WebSocket connection" in e.get("log_format", "")]
        self.assertEqual([e["count"] for e in ours], [1, 2, 4, 8])

    async def test_refusedAtHandshakeQuiet(self) -> None:
        """
        A peer that answers as another node (ID@URL) is refused at each
        attempt, and logged at 1, 2, 4... attempts: no error, no traceback,
        no line of Autobahn's per attempt.
        """
        target = start_node(self, "dial2")
        events = log_events(self)
        node = start_node(self, "dial3", [f"other@{ws(target)}"])
        dialer = next(iter(node.peer_admin.dialers.values()))
        await wait_for(lambda: dialer._repeats.count >= 4, 20, what="four refused attempts")
        ours = dialler_lines(events, dialer)
        auth = [e for e in events if "failed authentication" in e.get("log_format", "")]
        loud = errors(events) + [
            e for e in events if "failing WebSocket connection" in e.get("log_format", "")
        ]
        self.assertEqual(loud, [])
        bound = 1 + dialer._repeats.count.bit_length()
        self.assertLessEqual((len(ours), len(auth)), (bound, bound))
        self.assertIn("dial2", ours[0]["why"])
        self.assertIn("other", ours[0]["why"])
        self.assertEqual(node.mesh.links, {})


def _unchecked_tls(port: int) -> ssl.SSLSocket:
    """:returns: a TLS connection to C{port} on loopback, its certificate unchecked."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(socket.create_connection((HOST, port), timeout=5))


class TlsDialTests(TempDirMixin, TestCase):
    """A wss:// peer whose certificate fails verification is logged once per doubling."""

    timeout = 40

    def write(self, data: bytes) -> str:
        """:returns: the path of a new file holding C{data}."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    async def test_failedVerification(self) -> None:
        """No error or critical line per attempt: one warning line at 1, 2, 4... attempts."""
        cert, key = Authority("mesh CA").issue("tls1")
        node1 = start_node(self, "tls1", tls={"cert": self.write(cert), "key": self.write(key)})
        events = log_events(self)
        wss = url(node1).replace("http://", "wss://")
        node2 = start_node(self, "tls2", [wss], tls={"ca": self.write(Authority("other CA").pem)})
        dialer = next(iter(node2.peer_admin.dialers.values()))
        await wait_for(lambda: dialer._repeats.count >= 5, 20, what="five failed attempts")
        ours = dialler_lines(events, dialer)
        loud = errors(events)
        self.assertEqual(loud, [])
        self.assertLessEqual(len(ours), 1 + dialer._repeats.count.bit_length())
        self.assertLess(len(ours), dialer._repeats.count)
        self.assertNotIn("tls2", node1.mesh.links)
        # The TLS layers of both ends say so once per doubling too.
        handshakes = [
            e for e in events if e.get("log_format", "").startswith("TLS handshake with")
        ]  # fmt: skip
        self.assertLess(len(handshakes), 2 * dialer._repeats.count)
        self.assertLessEqual(len(handshakes), 2 * (1 + dialer._repeats.count.bit_length()))

    def tls_node(self, node_id: str, port: Any = None, **limits: Any) -> RelayNode:
        """A node serving HTTP and peers over TLS: C{[tls]}, or an C{ssl:} endpoint."""
        if not hasattr(self, "authority"):
            self.authority = Authority("mesh CA")
        cert, key = self.authority.issue(node_id)
        cert_file, key_file = self.write(cert), self.write(key)
        os.chmod(key_file, 0o600)
        if port == "ssl":
            endpoint = f"ssl:0:interface=127.0.0.1:privateKey={key_file}:certKey={cert_file}"
            return start_node(self, node_id, port=endpoint, limits=limits)  # type: ignore[arg-type]
        return start_node(self, node_id, tls={"cert": cert_file, "key": key_file}, limits=limits)

    async def test_limitsBeforeTheHandshake(self) -> None:
        """
        On a TLS listener, a connection past max_connections_per_ip is
        closed at once, before any handshake, with nothing logged as an
        error; the others are served.
        """
        for kind in ("tls", "ssl"):
            node = self.tls_node(f"cap-{kind}", kind, max_connections_per_ip=2)
            events = log_events(self)
            port = port_of(node)

            def over(port: int) -> list[bytes | None]:
                held = [socket.create_connection((HOST, port), timeout=5) for _ in range(2)]
                extra = [socket.create_connection((HOST, port), timeout=5) for _ in range(5)]
                seen: list[bytes | None] = []
                for sock in extra:
                    sock.settimeout(2)
                    try:
                        seen.append(sock.recv(1))
                    except (ConnectionResetError, TimeoutError) as e:
                        seen.append(None if isinstance(e, TimeoutError) else b"")
                    sock.close()
                for sock in held:
                    sock.close()
                return seen

            seen = await deferToThread(over, port)
            self.assertEqual(seen, [b""] * 5, kind)  # closed (or reset), not left open
            # Those closed before their handshake gave their places back.
            await wait_for(
                lambda node=node: node.guards.connections.held == 0, 5, what="places back"
            )
            health = await deferToThread(self.health_over_tls, port)
            self.assertTrue(health.startswith(b"HTTP/1.1 200"), (kind, health[:40]))
            self.assertEqual(errors(events), [], kind)

    def health_over_tls(self, port: int) -> bytes:
        """:returns: the answer to GET /health over TLS (certificate unchecked)."""
        with _unchecked_tls(port) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            return data

    async def test_cleanCloseWithTwistedTls(self) -> None:
        """
        A link to an ssl: endpoint (Twisted's own TLS, which waits for the
        peer's close_notify) closes cleanly and at once when its dialler
        removes it, not after the closing handshake's timeout.
        """
        node1 = self.tls_node("ssl1", "ssl")
        node2 = start_node(
            self,
            "ssl2",
            [url(node1).replace("http://", "wss://")],
            tls={"ca": self.write(self.authority.pem)},
        )
        await wait_for(lambda: "ssl1" in node2.mesh.links, 10, what="the link")
        started = reactor.seconds()
        self.assertTrue(node2.remove_peer("ssl1"))
        await wait_for(lambda: "ssl1" not in node2.mesh.links, 5, what="the link to close")
        self.assertLess(reactor.seconds() - started, 0.5)
        lost = node2.metrics.registry.get_sample_value(
            "relaytx_links_lost_total", {"cause": "removed"}
        )
        self.assertEqual(lost, 1)  # (a close that timed out counts as "closed")

    async def test_badRequestOverTls(self) -> None:
        """A request line HTTP cannot parse gets its JSON 400 over TLS too; nothing is logged."""
        node = self.tls_node("bad-tls")
        events = log_events(self)
        port = port_of(node)

        def ask() -> bytes:
            with _unchecked_tls(port) as sock:
                sock.sendall(b"BAD\r\nHost: 127.0.0.1\r\n\r\n")
                data = b""
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return data
                    data += chunk

        answer = await deferToThread(ask)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400"), answer[:40])
        self.assertIn(b"application/json", answer)
        self.assertEqual(errors(events), [])


class BigIdTests(TestCase):
    """JSON-RPC ids are echoed exactly, past 64 bits, on /rpc and /ws/rpc."""

    timeout = 30

    async def test_bigIds(self) -> None:
        """2**64 + 1 and -(2**70) come back as the same integers."""
        node = start_node(self, "ids1")
        port = port_of(node)
        big = [2**64 + 1, -(2**70), 123456789012345678901234567890]

        def ask() -> tuple[list[bytes], list[bytes]]:
            http = [request(port, "POST", "/rpc", rpc_body("node.ping", [], i))[2] for i in big]
            with connect(f"ws://{HOST}:{port}/ws/rpc", open_timeout=5) as client:
                answers = []
                for i in big:
                    client.send(rpc_body("node.ping", [], i).decode())
                    answers.append(client.recv(timeout=5).encode())
            return http, answers

        http, over_ws = await deferToThread(ask)
        for i, a, b in zip(big, http, over_ws, strict=True):
            self.assertIn(b'"id":%d' % i, a)
            self.assertIn(b'"id":%d' % i, b)
            self.assertEqual(json.loads(a)["id"], i)


# Quiet an unused import warning for struct (kept for frame helpers' users).
_ = struct
