"""
relaytx: a mesh of actor-like Python servers that call each other across
machines, on Twisted.

The supported surface is what C{__all__} lists; everything else is internal.
"""

__version__ = "0.1.0"

from relaytx.errors import (
    AccessDenied,
    CallError,
    CallTimeout,
    NodeUnreachable,
    NoSuchMethod,
    NoSuchServer,
    Overloaded,
    RelayError,
    RemoteCallError,
)
from relaytx.server import Server, exposed

__all__ = [
    "AccessDenied",
    "CallError",
    "CallTimeout",
    "NoSuchMethod",
    "NoSuchServer",
    "NodeUnreachable",
    "Overloaded",
    "RelayError",
    "RemoteCallError",
    "Server",
    "__version__",
    "exposed",
]
