# -*- test-case-name: tests.test_guards -*-
"""
Who may use a node's HTTP surface, and how much of the node one client
may hold (SPEC section 10), as pure bookkeeping: the HTTP site
(L{relaytx._http}) and the WebSocket connections (L{relaytx._flow}) ask
these objects and carry out what they say.

  - L{HttpPolicy}: the checks every HTTP request passes before any work is
    done for it: its C{Host} (DNS rebinding), its C{Origin} (browsers), its
    bearer token (C{[http.tokens]}), and admin rights for the endpoints
    that change the node's peers.
  - L{ConnectionCounts}: connections held in total and per IP address.
  - L{InputBudget}: bytes of unfinished messages and request bodies held,
    all connections together.
  - L{RepeatedFailures}: one log line for a failure that repeats, with a
    count, instead of one per attempt; L{FailureTally}, the same for
    failures of many kinds that interleave (strangers, many addresses).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping

from attrs import frozen

#: The endpoints that change a node's peers: admins only.
ADMIN_PATHS = frozenset({b"/registry/peers/add", b"/registry/peers/remove"})

#: The one request that needs no token.
HEALTH_PATH = b"/health"

#: The peer endpoint: it has its own checks (the cluster secret, origins).
PEER_PATH = b"/ws/p2p"


@frozen
class Refusal(Exception):
    """A request refused before any work: its HTTP status and why."""

    status: int
    message: str


def host_name(header: bytes) -> str:
    """
    :param header: a C{Host} header's value (C{name}, C{name:port},
        C{[v6]:port}).
    :returns: the host part, lower case, without its trailing dot (one:
        C{localhost..} is no name).
    """
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    name, colon, port = text.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        text = name
    return text[:-1] if text.endswith(".") else text


def is_ip_literal(name: str) -> bool:
    """:returns: whether C{name} is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str | None) -> bool:
    """
    :param host: a client's address, or C{None} for a client not on IP
        (a UNIX socket), which is on this machine.
    :returns: whether the client is on this machine's loopback.
    """
    if host is None:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # (127.0.0.1 on a dual-stack or IPv6 socket is ::ffff:127.0.0.1, which
    # ipaddress does not call loopback itself.)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class HttpPolicy:
    """
    The checks of SPEC section 10 for one node.

    :param tokens: SHA-256 hex digest (lower case) of each bearer token ->
        its caller name; none: HTTP clients need no token.
    :param admins: caller names allowed on L{ADMIN_PATHS} (with tokens;
        without, loopback clients are).
    :param allowed_origins: browser origins allowed (exactly as sent).
    :param allowed_hosts: C{Host} names allowed besides IP literals and
        C{localhost} (lower case, no port).
    """

    def __init__(
        self,
        tokens: Mapping[str, str] | None = None,
        admins: frozenset[str] = frozenset(),
        allowed_origins: frozenset[str] = frozenset(),
        allowed_hosts: frozenset[str] = frozenset(),
    ) -> None:
        self._digests = [(d.lower().encode(), name) for d, name in (tokens or {}).items()]
        self.requires_token = bool(self._digests)
        self._admins = admins
        self._origins = frozenset(o.encode() for o in allowed_origins)
        self._hosts = frozenset({"localhost", *allowed_hosts})
        self._host_verdicts: dict[bytes, bool] = {}

    def host_allowed(self, header: bytes | None) -> bool:
        """
        :param header: the request's C{Host}, or C{None} when it has none
            (no browser sends such a request).
        """
        if header is None:
            return True
        verdict = self._host_verdicts.get(header)
        if verdict is None:
            name = host_name(header)
            verdict = name in self._hosts or is_ip_literal(name)
            if len(self._host_verdicts) < 1024:  # a client may send any Host
                self._host_verdicts[header] = verdict
        return verdict

    def origin_allowed(self, origin: bytes | None) -> bool:
        """:returns: whether a request with this C{Origin} (C{None}: none) may go on."""
        return origin is None or origin in self._origins

    def token_caller(self, authorization: bytes | None) -> str | None:
        """
        :param authorization: the request's C{Authorization} header.
        :returns: the caller name of its bearer token, or C{None} if it
            carries none that is configured. Every configured digest is
            compared, in constant time.
        """
        if authorization is None:
            return None
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip()).hexdigest().encode()
        found = None
        for known, name in self._digests:
            if hmac.compare_digest(known, digest):
                found = name
        return found

    def admit(
        self,
        method: bytes,
        path: bytes,
        host: bytes | None,
        origin: bytes | None,
        authorization: bytes | None,
        client: str | None,
        known: tuple[bytes, str] | None = None,
    ) -> str:
        """
        Check one request, in this order: C{Host} (403), C{Origin} (403),
        token (401), admin rights (403). The peer endpoint is left to its
        own handshake.

        :param path: the request's path, without its query.
        :param client: the client's IP address (C{None}: not on IP).
        :param known: the C{Authorization} header of an earlier request on
            the same connection and the caller it named: the same header
            names the same caller without hashing it again.
        :returns: the caller's name for access rules and limits:
            C{http:NAME} of its token, or C{http:ADDRESS} without tokens.
        :raises Refusal: if the request must not go on.
        """
        if not self.host_allowed(host):
            raise Refusal(403, "Host not allowed: add it to [http] allowed_hosts")
        if not self.origin_allowed(origin):
            raise Refusal(403, "Origin not allowed: add it to allowed_origins")
        if known is not None and authorization == known[0]:
            caller: str | None = known[1]
        else:
            caller = self.caller(authorization, client)
        if caller is None:
            if method == b"GET" and path == HEALTH_PATH:
                return f"http:{client or 'local'}"
            if (
                authorization
                and authorization[:7].lower() == b"bearer "
                and authorization[7:].strip()
            ):
                raise Refusal(401, "the bearer token is not one this node accepts")
            raise Refusal(401, "a bearer token is required: Authorization: Bearer TOKEN")
        if path in ADMIN_PATHS and not self.is_admin(caller, client):
            raise Refusal(403, "admin endpoint: not allowed for this caller")
        return caller

    def caller(self, authorization: bytes | None, client: str | None) -> str | None:
        """
        :returns: the caller's name (see L{admit}), or C{None} when tokens
            are required and it has no valid one.
        """
        if not self.requires_token:
            return f"http:{client or 'local'}"
        name = self.token_caller(authorization)
        return None if name is None else f"http:{name}"

    def is_admin(self, caller: str, client: str | None) -> bool:
        """:returns: whether C{caller} (from C{client}) may use the admin endpoints."""
        if self.requires_token:
            return caller.startswith("http:") and caller[5:] in self._admins
        return is_loopback(client)


class ConnectionCounts:
    """
    Connections held at once, in total and per IP address.

    :param total: the most connections at once.
    :param per_ip: the most from one address; kept below C{total}, so one
        address at its maximum leaves room for every other client.
    """

    def __init__(self, total: int, per_ip: int) -> None:
        self.total = total
        self.per_ip = min(per_ip, max(1, total - 1))
        self.held = 0
        self._by_ip: dict[str, int] = {}

    def take(self, ip: str) -> bool:
        """:returns: whether a new connection from C{ip} fits (it is then counted)."""
        mine = self._by_ip.get(ip, 0)
        if self.held >= self.total or mine >= self.per_ip:
            return False
        self._by_ip[ip] = mine + 1
        self.held += 1
        return True

    def release(self, ip: str) -> None:
        """A connection counted for C{ip} has gone."""
        mine = self._by_ip.get(ip, 0)
        if mine <= 0:
            return
        if mine == 1:
            del self._by_ip[ip]
        else:
            self._by_ip[ip] = mine - 1
        self.held -= 1

    def of(self, ip: str) -> int:
        """:returns: the connections held from C{ip}."""
        return self._by_ip.get(ip, 0)


class InputBudget:
    """
    Bytes of input held while it is incomplete (WebSocket messages still
    arriving, HTTP bodies), all connections together.

    Clients (HTTP bodies, C{/ws/rpc}) may hold at most three quarters of
    it, and one address at most a quarter: one address at its connection
    limit, each holding a body just under the size limit, filled it all,
    and every member's link was closed at its next large frame (SPEC section
    10: links between members keep working while one address holds its
    maximum). Peer links may use it all, with no share per address (the
    nodes of one machine all link from one).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        #: what clients hold, all together and by address
        self.clients = 0
        self.by_address: dict[str, int] = {}

    def take(self, size: int, client: str | None = None) -> bool:
        """
        :param client: for a client's input, its address (C{""}: one not on IP).
        :returns: whether C{size} more bytes fit (they are then counted).
        """
        if self.held + size > self.limit:
            return False
        if client is not None:
            held = self.by_address.get(client, 0)
            share = self.limit // 4
            if (client and held + size > share) or self.clients + size > self.limit - share:
                return False
            self.by_address[client] = held + size
            self.clients += size
        self.held += size
        return True

    def give_back(self, size: int, client: str | None = None) -> None:
        """C{size} bytes counted by L{take} (for C{client}) were let go."""
        self.held = max(0, self.held - size)
        if client is not None:
            self.clients = max(0, self.clients - size)
            held = self.by_address.get(client, 0) - size
            if held > 0:
                self.by_address[client] = held
            else:
                self.by_address.pop(client, None)


class RepeatedFailures:
    """
    Decides which occurrences of a repeating failure to log: the first of
    a kind, then (while it repeats unchanged) one line each time the count
    doubles, with the count; a different failure, or a success, starts
    over.
    """

    def __init__(self) -> None:
        self._last: str | None = None
        self.count = 0

    def failed(self, kind: str) -> int | None:
        """
        :param kind: what failed, in words (equal words: the same failure).
        :returns: the count to log now, or C{None} to stay quiet.
        """
        if kind != self._last:
            self._last, self.count = kind, 1
            return 1
        self.count += 1
        return self.count if self.count & (self.count - 1) == 0 else None

    def succeeded(self) -> int:
        """:returns: how many times the last failure repeated; starts over."""
        count, self._last, self.count = self.count, None, 0
        return count


class FailureTally:
    """
    Decides which occurrences of failures of many kinds to log: the first
    of each kind, then one line each time its count doubles, with the
    count. Unlike L{RepeatedFailures}, kinds that take turns (a stranger
    alternating two ids, clients from two addresses) do not start each
    other over. The C{kinds} seen last are kept; an older one forgotten
    counts again from one.
    """

    def __init__(self, kinds: int = 256) -> None:
        self._kinds = kinds
        self._counts: dict[str, int] = {}

    def failed(self, kind: str) -> int | None:
        """
        :param kind: what failed, in words (equal words: the same failure).
        :returns: the count to log now, or C{None} to stay quiet.
        """
        counts = self._counts
        count = counts.pop(kind, 0) + 1
        counts[kind] = count  # (last in the dict: the most recent)
        if len(counts) > self._kinds:
            del counts[next(iter(counts))]
        return count if count & (count - 1) == 0 else None
