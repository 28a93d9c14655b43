"""
The one JSON codec relaytx uses for HTTP bodies and peer frames.

orjson is several times faster than the standard library on both sides. Its
choices, which relaytx keeps: parsing rejects what JSON forbids (NaN,
Infinity); a float NaN or infinity in a result is written as C{null}; an
incoming integer wider than 64 bits is read as a float. Encoding an integer
wider than 64 bits falls back to the standard library, so a big integer
result still reaches the caller exactly.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def loads(data: bytes | str) -> Any:
    """
    Parse one JSON document.

    :raises JSONDecodeError: (a C{ValueError}) if C{data} is not JSON.
    """
    return orjson.loads(data)


def dumps(value: Any) -> bytes:
    """
    Encode C{value} as compact UTF-8 JSON.

    :raises TypeError: if C{value} holds something JSON cannot express.
    """
    try:
        return orjson.dumps(value)
    except TypeError:
        try:
            return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        except ValueError as e:
            raise TypeError(str(e)) from None
