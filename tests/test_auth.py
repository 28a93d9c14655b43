"""
Tests for L{relaytx._auth}: the HMAC proofs of the cluster secret, nonces,
reading the secret file, and access rules (and their C{[access]} table).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import tempfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relaytx import _auth as auth
from relaytx._auth import (
    AccessRule,
    AccessRules,
    acceptor_proof,
    dialler_proof,
    new_nonce,
    proofs_match,
    read_secret,
    valid_nonce,
)
from relaytx.config import ConfigError, build_config

SECRET = b"0123456789abcdef-cluster"
NC = "a" * 64
NS = "b" * 64


class _TempDirMixin:
    """C{path(contents)}: a file in a temporary directory removed after the test."""

    def path(self, contents: bytes) -> str:
        """:returns: the path of a new file holding C{contents}."""
        if not hasattr(self, "_temp_root"):
            self._temp_root = tempfile.mkdtemp(prefix="relaytx-auth-")
            self.addCleanup(shutil.rmtree, self._temp_root, True)  # type: ignore[attr-defined]
        self._count = getattr(self, "_count", 0) + 1
        name = os.path.join(self._temp_root, f"f{self._count}")
        with open(name, "wb") as f:
            f.write(contents)
        return name


class ProofTests(SynchronousTestCase):
    """Each proof is bound to the secret, its role, both nonces and both ids."""

    def test_knownValue(self) -> None:
        """A proof is HMAC-SHA256 over the role, the nonces and the ids, one per line."""
        expected = hmac.new(
            SECRET, b"relaytx-accept\n" + f"{NC}\n{NS}\nB\nA".encode(), hashlib.sha256
        ).hexdigest()
        self.assertEqual(acceptor_proof(SECRET, NC, NS, "B", "A"), expected)
        expected = hmac.new(
            SECRET, b"relaytx-dial\n" + f"{NC}\n{NS}\nA\nB".encode(), hashlib.sha256
        ).hexdigest()
        self.assertEqual(dialler_proof(SECRET, NC, NS, "A", "B"), expected)

    def test_deterministic(self) -> None:
        """The same inputs give the same 64-hex-digit proof."""
        one = dialler_proof(SECRET, NC, NS, "A", "B")
        self.assertEqual(one, dialler_proof(SECRET, NC, NS, "A", "B"))
        self.assertEqual(len(one), 64)
        int(one, 16)

    def test_role(self) -> None:
        """An acceptor's proof cannot stand for a dialler's over the same parts."""
        self.assertNotEqual(
            acceptor_proof(SECRET, NC, NS, "A", "B"), dialler_proof(SECRET, NC, NS, "A", "B")
        )
        # Nor the acceptor's proof reflected back as the dialler's, ids swapped.
        self.assertNotEqual(
            acceptor_proof(SECRET, NC, NS, "B", "A"), dialler_proof(SECRET, NC, NS, "A", "B")
        )

    def test_nonces(self) -> None:
        """Changing or swapping either nonce changes the proof."""
        base = dialler_proof(SECRET, NC, NS, "A", "B")
        other = "c" * 64
        self.assertNotEqual(base, dialler_proof(SECRET, other, NS, "A", "B"))
        self.assertNotEqual(base, dialler_proof(SECRET, NC, other, "A", "B"))
        self.assertNotEqual(base, dialler_proof(SECRET, NS, NC, "A", "B"))
        accept = acceptor_proof(SECRET, NC, NS, "B", "A")
        self.assertNotEqual(accept, acceptor_proof(SECRET, NC, other, "B", "A"))
        self.assertNotEqual(accept, acceptor_proof(SECRET, other, NS, "B", "A"))

    def test_ids(self) -> None:
        """Changing or swapping either node id changes the proof."""
        base = dialler_proof(SECRET, NC, NS, "A", "B")
        self.assertNotEqual(base, dialler_proof(SECRET, NC, NS, "C", "B"))
        self.assertNotEqual(base, dialler_proof(SECRET, NC, NS, "A", "C"))
        self.assertNotEqual(base, dialler_proof(SECRET, NC, NS, "B", "A"))
        accept = acceptor_proof(SECRET, NC, NS, "B", "A")
        self.assertNotEqual(accept, acceptor_proof(SECRET, NC, NS, "C", "A"))
        self.assertNotEqual(accept, acceptor_proof(SECRET, NC, NS, "B", "C"))

    def test_secret(self) -> None:
        """Another secret gives another proof."""
        self.assertNotEqual(
            dialler_proof(SECRET, NC, NS, "A", "B"),
            dialler_proof(SECRET + b"x", NC, NS, "A", "B"),
        )


class ProofsMatchTests(SynchronousTestCase):
    """L{proofs_match} compares in constant time and accepts only a string."""

    def test_match(self) -> None:
        """The same proof matches; another one does not."""
        proof = dialler_proof(SECRET, NC, NS, "A", "B")
        self.assertTrue(proofs_match(proof, proof))
        self.assertFalse(proofs_match(proof, acceptor_proof(SECRET, NC, NS, "A", "B")))
        self.assertFalse(proofs_match(proof, proof[:-1]))
        self.assertFalse(proofs_match(proof, proof.upper()))
        self.assertFalse(proofs_match(proof, ""))

    def test_notAString(self) -> None:
        """Whatever a peer sends that is not a string never matches, and never raises."""
        proof = dialler_proof(SECRET, NC, NS, "A", "B")
        for given in (None, proof.encode(), 1, [proof], {"proof": proof}, True):
            self.assertFalse(proofs_match(proof, given), given)

    def test_nonAscii(self) -> None:
        """A non-ASCII string is a mismatch, not an exception."""
        proof = dialler_proof(SECRET, NC, NS, "A", "B")
        self.assertFalse(proofs_match(proof, "\u00e9" * 64))

    def test_constantTime(self) -> None:
        """The comparison is C{hmac.compare_digest}, not C{==}."""
        seen: list[tuple[Any, Any]] = []
        real = hmac.compare_digest

        def spy(a: Any, b: Any) -> bool:
            seen.append((a, b))
            return real(a, b)

        self.patch(auth.hmac, "compare_digest", spy)
        self.assertTrue(proofs_match("ab" * 32, "ab" * 32))
        self.assertEqual(seen, [(b"ab" * 32, b"ab" * 32)])


class NonceTests(SynchronousTestCase):
    """Nonces are 64 hex digits, fresh each time."""

    def test_fresh(self) -> None:
        """New nonces are valid and all different."""
        nonces = {new_nonce() for _ in range(100)}
        self.assertEqual(len(nonces), 100)
        for nonce in nonces:
            self.assertTrue(valid_nonce(nonce), nonce)

    def test_valid(self) -> None:
        """Lower- and upper-case hex digits, exactly 64 of them, are a nonce."""
        self.assertTrue(valid_nonce("0123456789abcdef" * 4))
        self.assertTrue(valid_nonce("0123456789ABCDEF" * 4))

    def test_invalid(self) -> None:
        """Wrong lengths, non-hex characters, whitespace and non-strings are not."""
        for value in (
            "a" * 63,
            "a" * 65,
            "",
            "g" * 64,
            " " * 64,
            "0 " * 32,
            "a" * 63 + "\n",
            "\u0660" * 64,  # Arabic-Indic digit zero: a digit, but not hex
            None,
            1234,
            b"a" * 64,
            ["a" * 64],
        ):
            self.assertFalse(valid_nonce(value), repr(value))


class ReadSecretTests(_TempDirMixin, SynchronousTestCase):
    """L{read_secret} reads the secret file and refuses weak secrets."""

    def test_stripped(self) -> None:
        """Surrounding whitespace (a trailing newline) is not part of the secret."""
        self.assertEqual(read_secret(self.path(b"  " + SECRET + b"\n")), SECRET)

    def test_binary(self) -> None:
        """Any bytes may make up a secret."""
        raw = bytes(range(1, 40))
        self.assertEqual(read_secret(self.path(raw)), raw.strip())

    def test_sixteenBytes(self) -> None:
        """Sixteen bytes are enough."""
        self.assertEqual(read_secret(self.path(b"x" * 16)), b"x" * 16)

    def test_tooShort(self) -> None:
        """Fifteen bytes (after stripping) are refused with ValueError naming the file."""
        path = self.path(b"x" * 15 + b"\n\n   ")
        e = self.assertRaises(ValueError, read_secret, path)
        self.assertIn(path, str(e))
        self.assertIn("16 bytes", str(e))

    def test_empty(self) -> None:
        """An empty or whitespace-only file is refused with ValueError."""
        self.assertRaises(ValueError, read_secret, self.path(b""))
        self.assertRaises(ValueError, read_secret, self.path(b" \n\t\r\n" * 10))

    def test_missing(self) -> None:
        """A missing file raises OSError (the node reports it as a start-up error)."""
        self.assertRaises(OSError, read_secret, self.path(b"") + "-missing")


class AccessRulesTests(SynchronousTestCase):
    """Rules decide in order; the first match wins; the default decides the rest."""

    def test_emptyAllows(self) -> None:
        """No rules and the default default allow everything, and are falsy (no check)."""
        rules = AccessRules.from_config({})
        self.assertEqual(rules, AccessRules())
        self.assertFalse(rules)
        self.assertTrue(rules.allows("anyone", "any", "thing"))

    def test_defaultDeny(self) -> None:
        """With default deny and no rules everything is denied, and the rules are truthy."""
        rules = AccessRules.from_config({"default": "deny"})
        self.assertTrue(rules)
        self.assertFalse(rules.allows("node2", "counter", "get"))
        self.assertFalse(rules.allows("http", "node", "info"))

    def test_defaultAllowExplicit(self) -> None:
        """C{default = "allow"} allows what no rule matches."""
        rules = AccessRules.from_config(
            {"default": "allow", "rule": [{"callers": ["x"], "allow": False}]}
        )
        self.assertTrue(rules)
        self.assertFalse(rules.allows("x", "s", "m"))
        self.assertTrue(rules.allows("y", "s", "m"))

    def test_firstMatchWins(self) -> None:
        """Of two matching rules, the earlier one decides, whichever way it goes."""
        deny_first = AccessRules.from_config(
            {
                "rule": [
                    {"callers": ["node2"], "servers": ["counter"], "methods": ["increment"],
                     "allow": False},
                    {"callers": ["*"], "servers": ["counter"], "allow": True},
                ]
            }
        )  # fmt: skip
        self.assertFalse(deny_first.allows("node2", "counter", "increment"))
        self.assertTrue(deny_first.allows("node2", "counter", "get"))
        self.assertTrue(deny_first.allows("node3", "counter", "increment"))
        allow_first = AccessRules.from_config(
            {
                "default": "deny",
                "rule": [
                    {"callers": ["node2"], "servers": ["counter"], "methods": ["get"]},
                    {"callers": ["node2"], "allow": False},
                ],
            }
        )
        self.assertTrue(allow_first.allows("node2", "counter", "get"))
        self.assertFalse(allow_first.allows("node2", "counter", "increment"))
        self.assertFalse(allow_first.allows("node3", "counter", "get"))

    def test_wildcards(self) -> None:
        """C{"*"} in callers, servers or methods matches anything there."""
        for rule, yes, no in (
            ({"callers": ["*"], "servers": ["s"], "methods": ["m"]}, ("a", "s", "m"),
             ("a", "t", "m")),
            ({"callers": ["a"], "servers": ["*"], "methods": ["m"]}, ("a", "t", "m"),
             ("b", "t", "m")),
            ({"callers": ["a"], "servers": ["s"], "methods": ["*"]}, ("a", "s", "z"),
             ("a", "t", "z")),
        ):  # fmt: skip
            rules = AccessRules.from_config({"default": "deny", "rule": [rule]})
            self.assertTrue(rules.allows(*yes), (rule, yes))
            self.assertFalse(rules.allows(*no), (rule, no))

    def test_omittedFieldsMatchAll(self) -> None:
        """A rule without callers, servers or methods matches any; C{allow} defaults to true."""
        rules = AccessRules.from_config({"default": "deny", "rule": [{"servers": ["open"]}]})
        [rule] = rules.rules
        self.assertEqual(
            rule, AccessRule(True, frozenset({"*"}), frozenset({"open"}), frozenset({"*"}))
        )
        self.assertTrue(rules.allows("anyone", "open", "anything"))
        self.assertFalse(rules.allows("anyone", "closed", "anything"))

    def test_wildcardIsNotAGlob(self) -> None:
        """Only a whole C{"*"} is a wildcard: C{"node*"} names one odd caller."""
        rules = AccessRules.from_config(
            {"default": "deny", "rule": [{"callers": ["node*"], "servers": ["s"]}]}
        )
        self.assertFalse(rules.allows("node2", "s", "m"))
        self.assertTrue(rules.allows("node*", "s", "m"))

    def test_httpCaller(self) -> None:
        """C{"http"} is a caller name like any other."""
        rules = AccessRules.from_config(
            {"rule": [{"callers": ["http"], "servers": ["admin"], "allow": False}]}
        )
        self.assertFalse(rules.allows("http", "admin", "reset"))
        self.assertTrue(rules.allows("node2", "admin", "reset"))

    def test_badTables(self) -> None:
        """Every malformed C{[access]} table raises ValueError naming the bad key."""
        for table, match in (
            ({"default": "maybe"}, "access.default"),
            ({"default": True}, "access.default"),
            ({"default": ["allow"]}, "access.default"),
            ({"rule": 5}, "access.rule"),
            ({"rule": "x"}, "access.rule"),
            ({"rule": {"callers": ["a"]}}, "[[access.rule]]"),
            ({"rule": ["x"]}, "access.rule[0] must be a table"),
            ({"rule": [{}, {"who": ["a"]}]}, "access.rule[1] has unknown keys ['who']"),
            ({"rule": [{"callers": "node2"}]}, "access.rule[0].callers"),
            ({"rule": [{"servers": [1]}]}, "access.rule[0].servers"),
            ({"rule": [{"methods": {"a": 1}}]}, "access.rule[0].methods"),
            ({"rule": [{"allow": "yes"}]}, "access.rule[0].allow"),
            ({"rule": [{"allow": 1}]}, "access.rule[0].allow"),
            ({"rules": []}, "unknown keys ['rules']"),
        ):
            e = self.assertRaises(ValueError, AccessRules.from_config, table)
            self.assertIn(match, str(e), table)


class AccessConfigTests(_TempDirMixin, SynchronousTestCase):
    """L{build_config} reads C{[access]} from the TOML file into C{config.access}."""

    def test_read(self) -> None:
        """The C{[access]} table becomes L{AccessRules} in file order."""
        path = self.path(
            b'node_id = "n1"\n'
            b"[access]\n"
            b'default = "deny"\n'
            b"[[access.rule]]\n"
            b'callers = ["node2"]\n'
            b'servers = ["counter"]\n'
            b'methods = ["increment"]\n'
            b"allow = false\n"
            b"[[access.rule]]\n"
            b'callers = ["node2", "http"]\n'
            b'servers = ["counter"]\n'
        )
        config = build_config({"config": path})
        self.assertIsInstance(config.access, AccessRules)
        self.assertFalse(config.access.default_allow)
        self.assertEqual(len(config.access.rules), 2)
        self.assertFalse(config.access.allows("node2", "counter", "increment"))
        self.assertTrue(config.access.allows("node2", "counter", "get"))
        self.assertTrue(config.access.allows("http", "counter", "increment"))
        self.assertFalse(config.access.allows("node3", "counter", "get"))

    def test_absent(self) -> None:
        """Without C{[access]} every call is allowed and no check is made."""
        config = build_config({"config": self.path(b'node_id = "n1"\n')})
        self.assertEqual(config.access, AccessRules())
        self.assertFalse(config.access)

    def test_bad(self) -> None:
        """A malformed C{[access]} table is a one-line ConfigError naming the file."""
        for text in (
            b'[access]\ndefault = "nope"\n',
            b'[access]\nrule = "x"\n',
            b"[access.rule]\nallow = false\n",
            b'[[access.rule]]\ncallers = "node2"\n',
            b"[[access.rule]]\nallow = 1\n",
            b"[access]\nextra = 1\n",
            b"access = 1\n",
        ):
            path = self.path(text)
            e = self.assertRaises(ConfigError, build_config, {"config": path})
            self.assertIn(path, str(e))
            self.assertNotIn("\n", str(e))


class HttpCallerRuleTests(SynchronousTestCase):
    """HTTP callers in rules: "http" matches every http:NAME; "http:NAME" one of them."""

    def test_httpMatchesEveryHttpCaller(self) -> None:
        """A rule naming "http" matches http:ci and http:ADDRESS, not a node."""
        rules = AccessRules.from_config({"rule": [{"callers": ["http"], "allow": False}]})
        self.assertFalse(rules.allows("http:ci", "s", "m"))
        self.assertFalse(rules.allows("http:192.0.2.7", "s", "m"))
        self.assertTrue(rules.allows("node2", "s", "m"))
        self.assertTrue(rules.allows("httpd", "s", "m"))

    def test_namedHttpCaller(self) -> None:
        """A rule naming http:ops matches that caller alone; a node's rule never matches it."""
        rules = AccessRules.from_config(
            {
                "default": "deny",
                "rule": [
                    {"callers": ["http:ops"], "allow": True},
                    {"callers": ["node2"], "allow": True},
                ],
            }
        )
        self.assertTrue(rules.allows("http:ops", "s", "m"))
        self.assertFalse(rules.allows("http:ci", "s", "m"))
        self.assertTrue(rules.allows("node2", "s", "m"))
        self.assertFalse(rules.allows("http:node2", "s", "m"))
