"""
Tests for L{relaytx._guards}: the checks of SPEC section 10 as pure
bookkeeping (who may use the HTTP surface; connections, input and
repeated failures counted), and for the configuration that feeds them.
"""

from __future__ import annotations

import hashlib
import os

from twisted.trial.unittest import SynchronousTestCase

from relaytx._guards import (
    ConnectionCounts,
    FailureTally,
    HttpPolicy,
    InputBudget,
    Refusal,
    RepeatedFailures,
    host_name,
    is_loopback,
)
from relaytx.config import ConfigError, HttpConfig, Limits, build_config, read_toml
from tests.support import TempDirMixin

CI_TOKEN = b"ci-secret-token"
OPS_TOKEN = b"ops-secret-token"
TOKENS = {
    hashlib.sha256(CI_TOKEN).hexdigest(): "ci",
    hashlib.sha256(OPS_TOKEN).hexdigest(): "ops",
}


def bearer(token: bytes) -> bytes:
    """:returns: an C{Authorization} header carrying C{token}."""
    return b"Bearer " + token


class HostTests(SynchronousTestCase):
    """The Host check: IP literals, localhost and allowed names only (DNS rebinding)."""

    def test_hostName(self) -> None:
        """The host part of a Host header, without port, case or trailing dot."""
        for header, name in (
            (b"127.0.0.1:8080", "127.0.0.1"),
            (b"LocalHost", "localhost"),
            (b"[::1]:8080", "::1"),
            (b"[fe80::1]", "fe80::1"),
            (b"node1.example.:443", "node1.example"),
            (b"::1", "::1"),
        ):
            self.assertEqual(host_name(header), name, header)

    def test_allowed(self) -> None:
        """IP literals, localhost and allowed_hosts pass; any other name does not."""
        policy = HttpPolicy(allowed_hosts=frozenset({"node1.example"}))
        for header in (
            b"127.0.0.1:8080",
            b"10.1.2.3",
            b"[::1]:80",
            b"localhost:8080",
            b"node1.example:8080",
            b"NODE1.example",
            None,
        ):
            self.assertTrue(policy.host_allowed(header), header)
        for header in (
            b"evil.example:8080",
            b"node1.example.evil",
            b"localhost.evil",
            b"",
            b"localhost..",
            b"node1.example..:80",
            b"127.0.0.1..",
            b"localhost\xff",
        ):
            self.assertFalse(policy.host_allowed(header), header)

    def test_verdictsBounded(self) -> None:
        """A client sending many Host names does not grow the cache of verdicts."""
        policy = HttpPolicy()
        for n in range(3000):
            self.assertFalse(policy.host_allowed(b"h%d.example" % n))
        self.assertLessEqual(len(policy._host_verdicts), 1024)


class AdmitTests(SynchronousTestCase):
    """L{HttpPolicy.admit}: Host, Origin, token and admin rights, in that order."""

    def admit(
        self,
        policy: HttpPolicy,
        path: bytes = b"/rpc",
        method: bytes = b"POST",
        host: bytes | None = b"127.0.0.1:8080",
        origin: bytes | None = None,
        authorization: bytes | None = None,
        client: str | None = "127.0.0.1",
    ) -> str:
        """:returns: the caller L{HttpPolicy.admit} names."""
        return policy.admit(method, path, host, origin, authorization, client)

    def refused(self, policy: HttpPolicy, **kwargs: object) -> int:
        """:returns: the status a request is refused with."""
        with self.assertRaises(Refusal) as caught:
            self.admit(policy, **kwargs)  # type: ignore[arg-type]
        return caught.exception.status

    def test_open(self) -> None:
        """Without tokens, every client is admitted as http:ADDRESS."""
        policy = HttpPolicy()
        self.assertFalse(policy.requires_token)
        self.assertEqual(self.admit(policy, client="192.0.2.7"), "http:192.0.2.7")
        self.assertEqual(self.admit(policy, client=None), "http:local")

    def test_tokens(self) -> None:
        """With tokens, a request needs a configured one (401), named http:NAME."""
        policy = HttpPolicy(TOKENS)
        self.assertEqual(self.admit(policy, authorization=bearer(CI_TOKEN)), "http:ci")
        self.assertEqual(self.admit(policy, authorization=b"bearer  " + OPS_TOKEN), "http:ops")
        for authorization in (
            None,
            b"",
            b"Bearer",
            b"Bearer wrong",
            b"Basic " + CI_TOKEN,
            hashlib.sha256(CI_TOKEN).hexdigest().encode(),
            b"Bearer " + hashlib.sha256(CI_TOKEN).hexdigest().encode(),
        ):
            self.assertEqual(self.refused(policy, authorization=authorization), 401, authorization)

    def test_tokenRefusedSaysWhy(self) -> None:
        """A 401 says whether a token was missing or not one the node accepts."""
        policy = HttpPolicy(TOKENS)
        for authorization, said in [
            (None, "a bearer token is required"),
            (b"Basic dXNlcjpwYXNz", "a bearer token is required"),
            (b"Bearer ", "a bearer token is required"),
            (b"Bearer wrong", "not one this node accepts"),
            (b"bearer  wrong", "not one this node accepts"),
        ]:
            with self.assertRaises(Refusal) as caught:
                self.admit(policy, authorization=authorization)
            self.assertIn(said, str(caught.exception.message), authorization)

    def test_health(self) -> None:
        """GET /health alone needs no token; other methods and paths do."""
        policy = HttpPolicy(TOKENS)
        self.assertEqual(self.admit(policy, path=b"/health", method=b"GET"), "http:127.0.0.1")
        self.assertEqual(self.refused(policy, path=b"/health", method=b"POST"), 401)
        for path in (b"/registry", b"/metrics", b"/ws/rpc", b"/dashboard", b"/health/"):
            self.assertEqual(self.refused(policy, path=path, method=b"GET"), 401, path)

    def test_order(self) -> None:
        """A bad Host or Origin is 403 before the token is looked at."""
        policy = HttpPolicy(TOKENS)
        self.assertEqual(self.refused(policy, host=b"evil.example"), 403)
        self.assertEqual(self.refused(policy, origin=b"https://evil.example"), 403)
        self.assertEqual(
            self.refused(policy, path=b"/health", method=b"GET", origin=b"http://x"), 403
        )

    def test_origins(self) -> None:
        """An Origin is refused unless listed, exactly; no Origin is fine."""
        policy = HttpPolicy(allowed_origins=frozenset({"https://ops.example"}))
        self.assertEqual(self.admit(policy, origin=b"https://ops.example"), "http:127.0.0.1")
        self.assertEqual(self.admit(policy, origin=None), "http:127.0.0.1")
        for origin in (b"https://ops.example.evil", b"null", b"http://ops.example", b""):
            self.assertEqual(self.refused(policy, origin=origin), 403, origin)

    def test_adminsWithTokens(self) -> None:
        """With tokens, only callers named in admins may add or remove peers."""
        policy = HttpPolicy(TOKENS, admins=frozenset({"ops"}))
        for path in (b"/registry/peers/add", b"/registry/peers/remove"):
            self.assertEqual(
                self.admit(policy, path=path, authorization=bearer(OPS_TOKEN)), "http:ops"
            )
            self.assertEqual(self.refused(policy, path=path, authorization=bearer(CI_TOKEN)), 403)
            self.assertEqual(self.refused(policy, path=path), 401)
        self.assertEqual(
            self.admit(policy, path=b"/rpc", authorization=bearer(CI_TOKEN)), "http:ci"
        )

    def test_adminsWithoutTokens(self) -> None:
        """Without tokens, only loopback (or non-IP) clients may add or remove peers."""
        policy = HttpPolicy()
        path = b"/registry/peers/add"
        for client in ("127.0.0.1", "127.0.0.2", "::1", None):
            self.assertTrue(self.admit(policy, path=path, client=client))
        for client in ("192.0.2.7", "10.0.0.1", "::ffff:192.0.2.7", "2001:db8::1"):
            self.assertEqual(self.refused(policy, path=path, client=client), 403, client)

    def test_isLoopback(self) -> None:
        """Loopback addresses, v4 and v6, and clients not on IP are on this machine."""
        self.assertTrue(is_loopback("127.1.2.3"))
        self.assertTrue(is_loopback("::1"))
        self.assertTrue(is_loopback("::ffff:127.0.0.1"))  # 127.0.0.1 on a dual-stack socket
        self.assertFalse(is_loopback("::ffff:192.0.2.1"))
        self.assertTrue(is_loopback(None))
        self.assertFalse(is_loopback("192.0.2.1"))
        self.assertFalse(is_loopback("not an address"))


class CountTests(SynchronousTestCase):
    """L{ConnectionCounts}, L{InputBudget} and L{RepeatedFailures}."""

    def test_connections(self) -> None:
        """Connections fit under the total and per address, and give their place back."""
        counts = ConnectionCounts(total=5, per_ip=3)
        self.assertEqual([counts.take("a") for _ in range(4)], [True, True, True, False])
        self.assertEqual([counts.take("b") for _ in range(3)], [True, True, False])
        self.assertEqual((counts.held, counts.of("a"), counts.of("b")), (5, 3, 2))
        counts.release("a")
        self.assertTrue(counts.take("c"))
        counts.release("nobody")  # never counted: nothing changes
        self.assertEqual(counts.held, 5)
        for ip in ("a", "a", "b", "b", "c"):
            counts.release(ip)
        self.assertEqual((counts.held, counts._by_ip), (0, {}))

    def test_perIpBelowTotal(self) -> None:
        """One address can never hold every place."""
        counts = ConnectionCounts(total=3, per_ip=10)
        self.assertEqual([counts.take("a") for _ in range(3)], [True, True, False])
        self.assertTrue(counts.take("b"))

    def test_budget(self) -> None:
        """Input is counted up to the limit and given back."""
        budget = InputBudget(100)
        self.assertTrue(budget.take(60))
        self.assertFalse(budget.take(41))
        self.assertTrue(budget.take(40))
        budget.give_back(60)
        self.assertEqual(budget.held, 40)
        budget.give_back(1000)
        self.assertEqual(budget.held, 0)

    def test_budgetShares(self) -> None:
        """
        One client address holds at most a quarter, all clients three
        quarters; peer links may use it all, whatever clients hold.
        """
        budget = InputBudget(100)
        self.assertTrue(budget.take(25, "10.0.0.1"))
        self.assertFalse(budget.take(1, "10.0.0.1"))  # its quarter
        self.assertTrue(budget.take(25, "10.0.0.2"))
        self.assertTrue(budget.take(25, "10.0.0.3"))
        self.assertFalse(budget.take(1, "10.0.0.4"))  # clients' three quarters
        self.assertTrue(budget.take(25))  # a peer link: the last quarter is its
        self.assertFalse(budget.take(1))
        budget.give_back(25, "10.0.0.1")
        self.assertEqual(budget.by_address, {"10.0.0.2": 25, "10.0.0.3": 25})
        self.assertTrue(budget.take(20, "10.0.0.4"))
        self.assertEqual((budget.held, budget.clients), (95, 70))
        # A client not on IP has no address to share by: the clients' part holds.
        self.assertTrue(budget.take(5, ""))
        self.assertFalse(budget.take(1, ""))

    def test_repeatedFailures(self) -> None:
        """The same failure is logged at 1, 2, 4, 8... repeats; another one starts over."""
        repeats = RepeatedFailures()
        logged = [repeats.failed("refused") for _ in range(20)]
        self.assertEqual([n for n in logged if n is not None], [1, 2, 4, 8, 16])
        self.assertEqual(repeats.failed("TLS: bad certificate"), 1)
        self.assertEqual(repeats.succeeded(), 1)
        self.assertEqual(repeats.failed("refused"), 1)

    def test_failureTally(self) -> None:
        """
        Failures of kinds that take turns are each logged at 1, 2, 4...;
        past the kinds kept, the oldest is forgotten.
        """
        tally = FailureTally(kinds=2)
        logged = [(kind, tally.failed(kind)) for _ in range(8) for kind in ("a", "b")]
        self.assertEqual(
            [entry for entry in logged if entry[1] is not None],
            [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 4), ("b", 4), ("a", 8), ("b", 8)],
        )
        self.assertEqual(tally.failed("c"), 1)  # "a", seen least lately, is forgotten
        self.assertEqual(tally.failed("b"), None)  # 9
        self.assertEqual(tally.failed("a"), 1)


class ConfigTests(TempDirMixin, SynchronousTestCase):
    """The [http] table and the new [limits] keys, validated with one-line errors."""

    def error(self, **options: object) -> str:
        """:returns: the one-line error that building a config with C{options} raises."""
        with self.assertRaises(ConfigError) as caught:
            build_config({"node_id": "n1", **options})
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        return message

    def test_defaults(self) -> None:
        """SPEC section 10's defaults."""
        limits = build_config({"node_id": "n1"}).limits
        self.assertEqual(
            (
                limits.header_timeout,
                limits.idle_timeout,
                limits.max_connections,
                limits.max_connections_per_ip,
                limits.max_write_buffer,
                limits.max_dialers,
            ),
            (10.0, 60.0, 10_000, 1_000, 4 * 1024 * 1024, 256),
        )
        self.assertEqual(build_config({"node_id": "n1"}).http, HttpConfig())

    def test_http(self) -> None:
        """Tokens are kept by digest (lower case), hosts in lower case."""
        digest = hashlib.sha256(CI_TOKEN).hexdigest()
        config = build_config(
            {
                "node_id": "n1",
                "http": {
                    "tokens": {"ci": digest.upper()},
                    "admins": ["ci"],
                    "allowed_hosts": ["Node1.Example."],
                },
            }
        )
        self.assertEqual(config.http.tokens, {digest: "ci"})
        self.assertEqual(config.http.admins, frozenset({"ci"}))
        self.assertEqual(config.http.allowed_hosts, frozenset({"node1.example"}))

    def test_badHttp(self) -> None:
        """Bad [http] values give one clear line each."""
        digest = hashlib.sha256(CI_TOKEN).hexdigest()
        for http, match in (
            ({"tokens": {"ci": "abc"}}, "SHA-256"),
            ({"tokens": {"ci": 5}}, "SHA-256"),
            ({"tokens": {"bad name": digest}}, "caller name"),
            ({"tokens": {"a": digest, "b": digest}}, "same token"),
            ({"admins": ["ops"]}, "give [http.tokens]"),
            ({"tokens": {"ci": digest}, "admins": ["ops"]}, "'ops' has no token"),
            ({"allowed_hosts": ["evil.example:80"]}, "host name"),
            ({"allowed_hosts": "x"}, "list of strings"),
            ({"colour": "blue"}, "unknown setting http.colour"),
            ("x", "[http] must be a table"),
        ):
            self.assertIn(match, self.error(http=http), http)

    def test_badLimits(self) -> None:
        """Non-positive, infinite or inconsistent limits are refused."""
        for limits, match in (
            ({"header_timeout": 0}, "limits.header_timeout must be positive"),
            ({"idle_timeout": -1}, "limits.idle_timeout must be positive"),
            ({"idle_timeout": float("inf")}, "limits.idle_timeout must be positive"),
            ({"max_write_buffer": 0}, "limits.max_write_buffer"),
            ({"max_dialers": 0}, "limits.max_dialers"),
            ({"max_connections": 10, "max_connections_per_ip": 10}, "must be below"),
            ({"max_sockets": 10}, "unknown setting limits.max_sockets"),
            ({"max_connections_per_ip": 20_000}, "must be below"),
            ({"max_connections": 1}, "limits.max_connections must be at least 2"),
        ):
            self.assertIn(match, self.error(limits=limits), limits)
        peers = [f"ws://127.0.0.1:{port}" for port in (1, 2, 3)]
        self.assertIn(
            "3 peers to dial (--add-peer), more than limits.max_dialers (2)",
            self.error(limits={"max_dialers": 2}, add_peer=peers),
        )

    def test_totalAlone(self) -> None:
        """A total of connections given alone, at most the default per address, halves it."""
        limits = build_config({"node_id": "n1", "limits": {"max_connections": 20}}).limits
        self.assertEqual((limits.max_connections, limits.max_connections_per_ip), (20, 10))
        limits = build_config({"node_id": "n1", "limits": {"max_connections": 5000}}).limits
        self.assertEqual(limits.max_connections_per_ip, 1000)
        peers = [f"ws://127.0.0.1:{port}" for port in (1, 2, 1)]  # (one given twice)
        config = build_config({"node_id": "n1", "add_peer": peers, "limits": {"max_dialers": 2}})
        self.assertEqual(len(config.add_peer), 3)

    def test_limitsObject(self) -> None:
        """A Limits instance is taken as it is."""
        limits = Limits(max_dialers=3)
        self.assertIs(build_config({"node_id": "n1", "limits": limits}).limits, limits)

    def test_readmeExample(self) -> None:
        """The README's configuration example is valid, its [http] and [limits] included."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
            text = f.read()
        example = text.split("```toml\n", 1)[1].split("```", 1)[0]
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(example)
        settings = read_toml(path)
        config = build_config(
            {"node_id": "n1", "http": settings["http"], "limits": settings["limits"]}
        )
        self.assertEqual(config.http.admins, frozenset({"ops"}))
        self.assertEqual(set(config.http.tokens.values()), {"ops", "ci"})
        self.assertEqual(config.limits.max_dialers, 256)


class KnownTokenTests(SynchronousTestCase):
    """A connection's earlier token is not hashed again, and never names another."""

    def test_known(self) -> None:
        """The same header names the known caller; any other header is checked afresh."""
        policy = HttpPolicy(TOKENS, admins=frozenset({"ops"}))
        known = (bearer(CI_TOKEN), "http:ci")
        admit = policy.admit
        host = b"127.0.0.1"
        self.assertEqual(
            admit(b"POST", b"/rpc", host, None, bearer(CI_TOKEN), None, known), "http:ci"
        )
        self.assertEqual(
            admit(b"POST", b"/rpc", host, None, bearer(OPS_TOKEN), None, known), "http:ops"
        )
        with self.assertRaises(Refusal):
            admit(b"POST", b"/rpc", host, None, b"Bearer wrong", None, known)
        with self.assertRaises(Refusal):
            admit(b"POST", b"/rpc", host, None, None, None, known)
        with self.assertRaises(Refusal):  # a known caller is still no admin
            admit(b"POST", b"/registry/peers/add", host, None, bearer(CI_TOKEN), None, known)
