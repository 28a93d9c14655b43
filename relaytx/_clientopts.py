# -*- test-case-name: tests.test_client -*-
"""
What a program outside the mesh needs to reach a node, shared by
C{relaytx.client} and C{relay call}: the forms a node's URL may take, the
TLS context of C{--cacert}, C{--cert} and C{--key}, and the bearer token's
header (SPEC section 10).

Standard library only: C{relay call} imports this at start-up, and
C{relaytx.client} must not import Twisted.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit, urlunsplit

#: The path of the persistent JSON-RPC entry (SPEC section 4).
WS_RPC_PATH = "/ws/rpc"

#: Seconds past a call's deadline that a caller outside the mesh (the
#: client, C{relay call}) waits for the node's own -32001 (which the node
#: sends at the deadline it started on receipt): the error then names where
#: the call timed out (its C{data.node_id}) as the node says, not in one run
#: the node's words and in the next the caller's own. A node that says
#: nothing (frozen, or too busy) is given no more than this.
ANSWER_GRACE = 0.25

_WS_SCHEMES = {"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}
_HTTP_SCHEMES = {"http": "http", "ws": "http", "https": "https", "wss": "https"}


def _split(url: str) -> tuple[str, str, str, str]:
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _WS_SCHEMES or not parts.hostname:
        raise ValueError(f"{url!r} is not an http://, https://, ws:// or wss:// address of a node")
    try:
        parts.port  # noqa: B018  # raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None
    return scheme, parts.netloc, parts.path.rstrip("/"), parts.query


#: The entries a URL may name in place of its node (SPEC section 4).
_ENTRIES = (WS_RPC_PATH, "/rpc")


def _node_path(path: str) -> str:
    """C{path}, less an entry it ends with (C{http://h:p/rpc} names the node at C{http://h:p})."""
    for entry in _ENTRIES:
        if path.endswith(entry):
            return path[: -len(entry)]
    return path


def ws_rpc_url(url: str) -> str:
    """
    The C{/ws/rpc} address of the node at C{url}.

    C{http://h:p}, C{ws://h:p} and C{h:p} mean C{ws://h:p/ws/rpc};
    C{https://h:p} and C{wss://h:p} mean C{wss://h:p/ws/rpc}, and so do
    those addresses with C{/rpc} or C{/ws/rpc} after them. A URL with a
    path of its own (a node behind a proxy) is kept as it is, with the
    scheme made a WebSocket one.

    :raises ValueError: if C{url} is not such an address.
    """
    scheme, netloc, path, query = _split(url)
    path = _node_path(path) + WS_RPC_PATH if path.endswith(_ENTRIES) else path
    return urlunsplit((_WS_SCHEMES[scheme], netloc, path or WS_RPC_PATH, query, ""))


def http_base_url(url: str) -> str:
    """
    The base URL of the node at C{url} for HTTP requests (C{BASE/rpc}):
    C{ws://} means C{http://}, C{wss://} means C{https://}, a bare
    C{h:p} means C{http://h:p}; a trailing slash is dropped, and so is an
    entry the URL names (C{/rpc}, C{/ws/rpc}: C{relay call
    http://h:p/rpc ...} posted to C{/rpc/rpc}, and got a 404).

    :raises ValueError: if C{url} is not such an address.
    """
    scheme, netloc, path, _ = _split(url)
    return urlunsplit((_HTTP_SCHEMES[scheme], netloc, _node_path(path), "", ""))


def is_secure(url: str) -> bool:
    """:returns: whether C{url} (any form L{ws_rpc_url} takes) speaks TLS."""
    return _split(url)[0] in ("https", "wss")


def ssl_context(
    cacert: str | None = None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """
    A client TLS context that verifies the node's certificate and host name.

    :param cacert: a PEM file of the CA that signed the node's certificate
        (a private CA); the system's trust store when C{None}.
    :param cert: a PEM client certificate to present (mutual TLS), which
        may hold its key too.
    :param key: the PEM private key of C{cert}, if it is in a file of its own.
    :raises ValueError: if a file cannot be read or used, or C{key} comes
        without C{cert}.
    """
    if key is not None and cert is None:
        raise ValueError("a client key (--key) needs its certificate (--cert)")
    try:
        context = ssl.create_default_context(cafile=cacert)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"--cacert {cacert}: {_reason(e)}") from None
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"--cert {cert}: {_reason(e)}") from None
    return context


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def auth_headers(token: str | None) -> list[tuple[str, str]]:
    """
    :returns: the headers that carry C{token} (SPEC section 10): none
        without one. No C{Origin} header is ever sent: a node refuses
        browser origins, and a program is not a browser.
    :raises ValueError: if the token cannot be sent in a header.
    """
    if token is None:
        return []
    if not token or any(c in token for c in "\r\n") or not token.isprintable():
        raise ValueError("a token must be a non-empty line of printable characters")
    return [("Authorization", f"Bearer {token}")]
