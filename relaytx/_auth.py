# -*- test-case-name: tests.test_auth -*-
"""
Proof of the cluster secret at the peer handshake, and access rules.

The handshake (with C{--secret-file}) is an HMAC-SHA256 challenge-response
over fresh nonces from both sides, bound to both node ids and to the role of
each proof, carried by the WebSocket upgrade and the first frame:

  1. the dialler sends its nonce C{Nc} in the C{X-Relaytx-Nonce} header of
     the upgrade request (and its id in C{?node_id=});
  2. the acceptor answers the upgrade with its own nonce C{Ns} and its
     proof C{HMAC(secret, "relaytx-accept" Nc Ns acceptor dialler)} in
     C{X-Relaytx-Nonce} and C{X-Relaytx-Proof}; the dialler checks it and
     hangs up if it is wrong;
  3. the dialler's first frame is C{{"type": "auth", "data": {"proof":
     HMAC(secret, "relaytx-dial" Nc Ns dialler acceptor)}}}. The acceptor
     processes nothing before it: a wrong or missing proof closes the link
     with 4003 and the peer never appears among the node's peers.

Each proof covers a nonce the other side just made, so a recorded proof
cannot be replayed, and both node ids, so it cannot be relayed to a third
node under another name. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from typing import Any

from attrs import frozen

NONCE_HEADER = "X-Relaytx-Nonce"
PROOF_HEADER = "X-Relaytx-Proof"
AUTH_TYPE = "auth"

_NONCE_RE = re.compile(r"[0-9A-Fa-f]{64}")


def new_nonce() -> str:
    """:returns: 32 random bytes, hex-encoded."""
    return os.urandom(32).hex()


def read_secret(path: str) -> bytes:
    """
    :returns: the cluster secret in the file at C{path} (surrounding
        whitespace removed).
    :raises ValueError: if it is empty or too short to be a secret.
    """
    with open(path, "rb") as f:
        secret = f.read().strip()
    if len(secret) < 16:
        raise ValueError(f"{path}: a cluster secret needs at least 16 bytes")
    return secret


def _proof(secret: bytes, role: str, *parts: str) -> str:
    message = "\n".join((role, *parts)).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def acceptor_proof(
    secret: bytes, dial_nonce: str, accept_nonce: str, acceptor: str, dialler: str
) -> str:
    """:returns: the acceptor's proof (step 2)."""
    return _proof(secret, "relaytx-accept", dial_nonce, accept_nonce, acceptor, dialler)


def dialler_proof(
    secret: bytes, dial_nonce: str, accept_nonce: str, dialler: str, acceptor: str
) -> str:
    """:returns: the dialler's proof (step 3)."""
    return _proof(secret, "relaytx-dial", dial_nonce, accept_nonce, dialler, acceptor)


def proofs_match(expected: str, given: Any) -> bool:
    """Constant-time comparison of a proof with what the other side sent."""
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())


def valid_nonce(value: Any) -> bool:
    """:returns: whether C{value} looks like a nonce (64 hex digits)."""
    # Not bytes.fromhex: it skips whitespace, so 64 spaces would pass.
    return isinstance(value, str) and _NONCE_RE.fullmatch(value) is not None


# Access rules.


@frozen
class AccessRule:
    """
    One rule: whether C{callers} may call C{methods} of C{servers}.
    C{"*"} matches anything; the caller C{"http"} stands for every HTTP and
    WebSocket JSON-RPC client, this node's own and those whose calls other
    nodes relay; C{"http:NAME"} for the one holding token C{NAME}.
    """

    allow: bool
    callers: frozenset[str]
    servers: frozenset[str]
    methods: frozenset[str]

    def matches(self, caller: str, server: str, method: str) -> bool:
        callers = self.callers
        return (
            (
                "*" in callers
                or caller in callers
                or ("http" in callers and caller.startswith("http:"))
            )
            and ("*" in self.servers or server in self.servers)
            and ("*" in self.methods or method in self.methods)
        )


@frozen
class AccessRules:
    """
    An ordered list of rules; the first that matches decides. What no rule
    matches is allowed unless C{default_allow} is false.
    """

    rules: tuple[AccessRule, ...] = ()
    default_allow: bool = True

    def __bool__(self) -> bool:
        return bool(self.rules) or not self.default_allow

    def allows(self, caller: str, server: str, method: str) -> bool:
        """:returns: whether C{caller} may call C{server.method}."""
        for rule in self.rules:
            if rule.matches(caller, server, method):
                return rule.allow
        return self.default_allow

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> AccessRules:
        """
        Build rules from the C{[access]} table of the config file::

            [access]
            default = "allow"            # or "deny"
            [[access.rule]]
            callers = ["node2", "http"]  # or ["*"]
            servers = ["counter_server"]
            methods = ["get"]            # or ["*"] (the default)
            allow = true

        :raises ValueError: if the table is malformed.
        """
        default = table.get("default", "allow")
        if default not in ("allow", "deny"):
            raise ValueError('access.default must be "allow" or "deny"')
        raw_rules = table.get("rule", [])
        if not isinstance(raw_rules, list):
            raise ValueError("access.rule must be an array of tables: write [[access.rule]]")
        rules = []
        for i, raw in enumerate(raw_rules):
            if not isinstance(raw, dict):
                raise ValueError(f"access.rule[{i}] must be a table")
            unknown = set(raw) - {"callers", "servers", "methods", "allow"}
            if unknown:
                raise ValueError(f"access.rule[{i}] has unknown keys {sorted(unknown)}")

            def names(key: str, raw: dict[str, Any] = raw, i: int = i) -> frozenset[str]:
                value = raw.get(key, ["*"])
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"access.rule[{i}].{key} must be a list of strings")
                return frozenset(value)

            allow = raw.get("allow", True)
            if not isinstance(allow, bool):
                raise ValueError(f"access.rule[{i}].allow must be true or false")
            rules.append(AccessRule(allow, names("callers"), names("servers"), names("methods")))
        unknown_keys = set(table) - {"default", "rule"}
        if unknown_keys:
            raise ValueError(f"[access] has unknown keys {sorted(unknown_keys)}")
        return cls(tuple(rules), default_allow=default == "allow")
