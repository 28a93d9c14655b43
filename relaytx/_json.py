"""
The one JSON codec relaytx uses for HTTP bodies and peer frames.

orjson is several times faster than the standard library on both sides. Its
choices, which relaytx keeps: parsing rejects what JSON forbids (NaN,
Infinity) and any invalid UTF-8 (peer links rely on this, in place of
Autobahn's validation of each frame); an incoming integer wider than 64
bits is read as a float. One it does not keep: orjson writes a float NaN
or infinity as C{null}, which would change a method's result without a
word, so L{dumps} refuses them (TypeError), as the standard library's
C{allow_nan=False} does; they are looked for only when the output holds a
C{null}, which most do not (some 1 us for a frame that does).

Encoding an integer wider than 64 bits falls back to the standard
library, so a big integer result still reaches the caller exactly; a peer
frame so written is marked, and read back by the standard library too
(L{dumps_frame}, L{loads_frame}), so it crosses the mesh exactly.

Parsing accepts nesting up to 1024 levels (orjson's limit) but orjson
writes only 254, and the standard library's encoder recurses on the Python
stack, so a value nested near that limit falls back to a loop that keeps its
own stack: whatever L{loads} returns, L{dumps} can write back. A frame,
which a peer must read back (deepened by its envelope), is checked against
the reader's limit on that slow path only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import partial
from math import isfinite
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError

#: Deeper values are refused by L{dumps} (L{loads} never returns one).
MAX_DEPTH = 4096


#: C{loads(data)}: parse one JSON document; raises L{JSONDecodeError} (a
#: C{ValueError}) if C{data} is not JSON. orjson's own function, with no
#: Python call around it (every frame and body goes through it).
loads: Callable[[bytes | str], Any] = orjson.loads


#: Dataclasses and datetimes are not JSON values: orjson hands them on, and
#: the standard library refuses them (TypeError), as a method's result must
#: be refused (a datetime written without its offset is not even RFC 3339).
#: (orjson writes enum members and UUIDs as their values whatever it is
#: told: those are let through.)
_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def dumps(value: Any, max_depth: int | None = None) -> bytes:
    """
    Encode C{value} as compact UTF-8 JSON.

    :param max_depth: the deepest nesting a reader takes, if it is to be
        checked (orjson writes 254 levels, so only a value past that is
        looked at).
    :raises TypeError: if C{value} holds something JSON cannot express.
    :raises TooDeep: if it is nested deeper than C{max_depth}.
    """
    try:
        data = orjson.dumps(value, option=_STRICT)
    except TypeError:
        return _dumps_slowly(value) if max_depth is None else _dumps_within(value, max_depth)
    if b"null" in data:
        _check_finite(value)
    return data


def _check_finite(value: Any) -> None:
    # What orjson wrote as null may have been a NaN or an infinity.
    # (Other types orjson writes, dataclasses and the like, are not
    # JSON values a method returns: not looked into.)
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str or kind is int or item is None or kind is bool:
            continue
        if kind is dict:
            extend(item.values())
        elif kind is list or kind is tuple:
            extend(item)
        elif isinstance(item, float):
            if not isfinite(item):
                raise TypeError(f"Out of range float values are not JSON compliant: {item!r}")
        elif isinstance(item, dict):
            extend(item.values())
        elif isinstance(item, list | tuple):
            extend(item)


def _dumps_slowly(value: Any) -> bytes:
    # What orjson does not write: integers past 64 bits, nesting past 254.
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except RecursionError:
        return _dumps_deep(value)
    except ValueError as e:
        raise TypeError(str(e)) from None


def _dumps_within(value: Any, max_depth: int) -> bytes:
    # L{_dumps_slowly}, for a reader that takes C{max_depth} levels. (Written
    # first: a cycle is a TypeError, as L{dumps} says, not too deep; past
    # MAX_DEPTH, where a cycle is told from depth no more, both are too deep
    # for any reader.)
    too_deep = TooDeep(f"nested more than {max_depth} levels deep")
    try:
        data = _dumps_slowly(value)
    except PastMaxDepth:
        raise too_deep from None
    if deeper_than(value, max_depth):
        raise too_deep
    return data


class PastMaxDepth(TypeError):
    """A value nested past L{MAX_DEPTH} levels (a cycle, say): not written."""


class TooDeep(ValueError):
    """A value nested deeper than its reader takes (L{dumps_frame}'s C{max_depth})."""


#: The first byte of a frame that orjson did not write (JSON allows white
#: space before a value): it may hold integers wider than 64 bits, which
#: orjson would read as floats, so L{loads_frame} reads it exactly.
SLOWLY_WRITTEN = b" "


def dumps_frame(value: Any, max_depth: int) -> bytes:
    """
    L{dumps} for a peer that reads with L{loads_frame}: what orjson cannot
    write is marked (L{SLOWLY_WRITTEN}), and checked against the reader's
    C{max_depth} (orjson reads 1024 levels; it writes 254).

    :raises TypeError: if C{value} holds something JSON cannot express.
    :raises TooDeep: if it is nested deeper than C{max_depth}.
    """
    try:
        data = orjson.dumps(value, option=_STRICT)
    except TypeError:
        return SLOWLY_WRITTEN + _dumps_within(value, max_depth)
    if b"null" in data:
        _check_finite(value)
    return data


def loads_frame(data: bytes | str) -> Any:
    """
    L{loads} for a frame of L{dumps_frame}'s: one it marked is read by the
    standard library, integers of any size staying integers. (A reader in a
    hurry checks the mark itself, and calls L{loads} for the rest.)

    :raises ValueError: if C{data} is not JSON.
    """
    if data[:1] != SLOWLY_WRITTEN:
        return orjson.loads(data)
    try:
        return loads_exact(data)
    except RecursionError:  # deep, not wide: orjson reads it as well
        return orjson.loads(data)


def loads_exact(
    data: bytes | str,
    parse_int: Callable[[str], Any] | None = None,
    parse_float: Callable[[str], Any] | None = None,
) -> Any:
    """
    The standard library's reading of C{data}: integers of any size stay
    integers (orjson's become floats past 64 bits); NaN and Infinity are
    refused, as orjson refuses them. Slow: for what L{may_hold_wide_ints} flags.

    :param parse_int: as C{json.loads}'s, for integers Python cannot read.
    :param parse_float: as C{json.loads}'s.
    :raises ValueError: if C{data} is not JSON.
    :raises RecursionError: if it is nested past what orjson reads too.
    """
    read = partial(
        json.loads,
        data,
        parse_constant=_refuse_constant,
        parse_int=parse_int,
        parse_float=parse_float,
    )
    try:
        return read()
    except RecursionError:
        pass
    # The standard library's reader counts its levels against Python's
    # recursion limit, from wherever it was called: nested close to
    # orjson's 1024 levels, a document orjson reads would lose its wide
    # integers to floats. The limit is raised by what such a document
    # needs, for this one reading (the reactor's thread reads here).
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + _READ_DEPTH)
    try:
        return read()
    finally:
        sys.setrecursionlimit(limit)


#: The levels a document orjson reads may hold, and some.
_READ_DEPTH = 1100


#: Digits kept as C{0}, every other byte blanked (L{may_hold_wide_ints}).
_DIGITS_ONLY = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_NINETEEN_DIGITS = b"0" * 19


def may_hold_wide_ints(data: bytes) -> bool:
    """
    :returns: whether C{data} has a run of 19 digits or more, as an integer
        that orjson reads as a float (past 64 bits) must have. Long digit
        strings and long fractions say yes too: an exact reading of those
        costs time, not correctness. (A byte translation and a search, in
        C: some 0.3 us for a small request.)
    """
    return _NINETEEN_DIGITS in data.translate(_DIGITS_ONLY)


def escaped_surrogate(error: ValueError) -> bool:
    """:returns: whether orjson refused a document for an escaped lone surrogate alone."""
    return "surrogate in string" in str(error)


def loads_surrogates(data: bytes | str, error: ValueError) -> Any:
    """
    orjson refuses a string escape of a lone surrogate (C{"\\ud800"}),
    which JSON's grammar allows (RFC 8259, section 8.2) and the standard
    library writes, as relaytx does for a text that holds one (an error's
    message, say): what orjson refused so is read by the standard library.

    :param error: why orjson refused C{data}.
    :raises ValueError: C{error}, if it was refused for anything else (a
        surrogate written raw is invalid UTF-8, and stays refused).
    """
    if not escaped_surrogate(error):
        raise error
    text = data.decode() if isinstance(data, bytes) else data
    return loads_exact(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def canonical(value: Any) -> bytes:
    """
    Encode C{value} the same way whoever encodes it: object keys sorted,
    compact. What a code (a MAC, a signature) covers is encoded so.

    :raises TypeError: if C{value} holds something JSON cannot express.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        try:
            return json.dumps(
                value, separators=(",", ":"), sort_keys=True, allow_nan=False
            ).encode()
        except ValueError as e:
            raise TypeError(str(e)) from None


def _scalar(value: Any) -> bytes:
    if isinstance(value, float) and not isfinite(value):
        raise TypeError(f"Out of range float values are not JSON compliant: {value!r}")
    try:
        return orjson.dumps(value)
    except TypeError:
        try:
            return json.dumps(value, allow_nan=False).encode()
        except (ValueError, RecursionError) as e:
            raise TypeError(str(e)) from None


def deeper_than(value: Any, levels: int) -> bool:
    """:returns: whether C{value} has arrays or objects nested more than C{levels} deep."""
    todo = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list | tuple):
            continue
        if depth > levels:
            return True
        todo.extend((member, depth + 1) for member in item)
    return False


class _Token(bytes):
    """Punctuation queued by L{_dumps_deep}, told apart from values."""


_OPEN_LIST, _CLOSE_LIST = _Token(b"["), _Token(b"]")
_OPEN_OBJECT, _CLOSE_OBJECT = _Token(b"{"), _Token(b"}")
_COMMA = _Token(b",")


def _dumps_deep(value: Any) -> bytes:
    """
    L{dumps} for values nested too deeply for a recursive encoder: the same
    output, built with an explicit stack.

    :raises TypeError: past L{MAX_DEPTH} levels (a cycle, say), or for a
        value JSON cannot express.
    """
    out: list[bytes] = []
    todo: list[Any] = [value]
    depth = 0
    while todo:
        item = todo.pop()
        if isinstance(item, _Token):
            if item is _CLOSE_LIST or item is _CLOSE_OBJECT:
                depth -= 1
            out.append(item)
            continue
        if isinstance(item, list | tuple | dict):
            depth += 1
            if depth > MAX_DEPTH:
                raise PastMaxDepth(f"value nested more than {MAX_DEPTH} levels deep")
            parts: list[Any] = []
            if isinstance(item, dict):
                parts.append(_OPEN_OBJECT)
                for i, (key, member) in enumerate(item.items()):
                    if not isinstance(key, str):
                        raise TypeError(f"object key {key!r} is not a string")
                    if i:
                        parts.append(_COMMA)
                    parts.append(_Token(_scalar(key) + b":"))
                    parts.append(member)
                parts.append(_CLOSE_OBJECT)
            else:
                parts.append(_OPEN_LIST)
                for i, member in enumerate(item):
                    if i:
                        parts.append(_COMMA)
                    parts.append(member)
                parts.append(_CLOSE_LIST)
            todo.extend(reversed(parts))
            continue
        out.append(_scalar(item))
    return b"".join(out)
