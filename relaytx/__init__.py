# -*- test-case-name: tests.test_client -*-
"""
relaytx: a mesh of actor-like Python servers that call each other across
machines, on Twisted.

The supported surface is what C{__all__} lists; everything else is internal.

The names are imported when first used, not with the package: a program
that only uses C{relaytx.client} (which needs no Twisted) or the C{relay
call} command does not pay for importing Twisted.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from relaytx.errors import (
        AccessDenied,
        CallError,
        CallTimeout,
        NodeUnreachable,
        NoSuchMethod,
        NoSuchServer,
        OutcomeUnknown,
        Overloaded,
        RelayError,
        RemoteCallError,
    )
    from relaytx.server import Server, exposed

_LAZY = {
    "AccessDenied": "relaytx.errors",
    "CallError": "relaytx.errors",
    "CallTimeout": "relaytx.errors",
    "NoSuchMethod": "relaytx.errors",
    "NoSuchServer": "relaytx.errors",
    "NodeUnreachable": "relaytx.errors",
    "OutcomeUnknown": "relaytx.errors",
    "Overloaded": "relaytx.errors",
    "RelayError": "relaytx.errors",
    "RemoteCallError": "relaytx.errors",
    "Server": "relaytx.server",
    "exposed": "relaytx.server",
}


def __getattr__(name: str) -> Any:
    """
    Import a name of C{__all__} from its module on first use.

    :raises AttributeError: for any other name.
    """
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'relaytx' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AccessDenied",
    "CallError",
    "CallTimeout",
    "NoSuchMethod",
    "NoSuchServer",
    "NodeUnreachable",
    "OutcomeUnknown",
    "Overloaded",
    "RelayError",
    "RemoteCallError",
    "Server",
    "__version__",
    "exposed",
]
