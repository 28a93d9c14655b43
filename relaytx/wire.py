# -*- test-case-name: tests.test_wire -*-
"""
The peer wire protocol: one envelope, a typed payload per message type, and
the codec between them and WebSocket text frames.

Every frame is one JSON object::

    {"type": str, "id": str, "from": str, "to": str, "data": {...},
     "timestamp": RFC 3339, "route": [str, ...], "ttl": int, "reply_to": str?}

  - C{type}, C{from}, C{to} and C{data} are required. C{id}, C{timestamp},
    C{route} and C{ttl} may be missing (an original node's minimal envelope);
    C{ttl} then defaults to L{DEFAULT_TTL}. Unknown top-level fields are ignored.
  - C{id} is unique per message (a random per-process prefix and a counter),
    never a timestamp. C{route} lists the nodes a message has passed through,
    its originator first. C{ttl} is decremented at each hop.
  - A trailing newline after the object (as the original writes) is fine.
  - Ids are bounded (SPEC section 10): C{from}, C{to} (or C{""}, "whoever
    you are", in a dialler's first ping) and every C{route} item must be
    node ids (L{NODE_ID_RE}); C{id}, C{reply_to} and a
    payload's C{response_id} and C{caller} are at most L{MAX_ID_LENGTH}
    characters. Anything else is malformed.

The payloads (C{data}) of the built-in types:

  - C{ping} C{{"timestamp"}}: any JSON value, echoed by the C{pong}.
  - C{pong} C{{"timestamp", "pong_time"}}: the ping's C{timestamp} and the
    answerer's clock in Unix seconds.
  - C{server_call} C{{"call": {"server_name", "method", "args", "kwargs"?,
    "timeout"}, "response_id", "mac"?, "caller"?}}: C{timeout} is the caller's
    remaining budget in seconds; C{mac} is the caller's end-to-end code (PKI
    mode, see L{relaytx._pki}); C{caller}, when the sending node relays a
    call made by someone else (its HTTP client C{http:NAME}), names that
    caller for the target's access rules (no C{caller}: the sender's own
    call). Original nodes ignore both.
  - C{server_response} C{{"response_id", "node_id", "success", "result" |
    "error", "error_code"?, "error_data"?, "mac"?}}: C{mac} is the callee's
    end-to-end code (PKI mode).
  - C{registry_sync} C{{"servers"?: {NAME: {"methods": [...]}}, "seq"?,
    "sn"?, "full"?, "more"?, "resync"?, "routes"?: {NODE_ID: ENTRY},
    "tables"?: [SERVERS, ...], "withdraw"?: [NODE_ID, ...], "down"?: [[NODE,
    PEER, STAMP], ...], "up"?: [...], "lost"?: {NODE_ID: SN}}}. C{servers}
    is the sender's own servers in the original's shape; it is always in a
    link's first advert, and afterwards only when they changed. An
    original-design node sends only C{servers} and is only ever sent
    C{servers} (plus C{seq} and C{sn}, which it ignores). Between relaytx
    nodes (see L{relaytx._adverts} for how a link uses them):

      - C{seq} numbers the adverts on one link (1, 2, ...): a gap makes the
        receiver send C{resync: true}, asking for the whole table again.
        C{resync} is only ever sent to a neighbour that sent C{routes}.
      - C{full: true} starts the sender's whole table (which replaces what
        it said before), split into frames under the message limit;
        C{more: true} on every frame of it but the last. Without C{full},
        C{routes} and C{withdraw} are changes: destinations added or
        changed, and destinations no longer offered.
      - An B{ENTRY} is C{{"path": [NODE_ID, ...], "m"?: METRIC}} (the path
        from the sender, exclusive, to the destination, inclusive; C{m}
        defaults to the path's length), or C{{"p": PARENT, "c"?: COST}}
        (the path to C{PARENT}, given in this advert or before, with the
        destination added, and the metric to it plus C{c}, default 1; the
        destination then follows its parent's path when that changes), or
        neither (only its servers changed); plus C{"s"?} (the destination's
        servers: an index into C{tables}, or a server table itself) and
        C{"n"?} (the destination's sequence number). Absent C{s} or C{n}:
        as before.
      - C{sn} is the sender's own sequence number (even; it grows when a
        link of the sender fails); C{lost} marks destinations unreachable
        at an (odd) sequence number, so any path to them numbered below is
        stale. C{down} and C{up} are links lost or back: the node that saw
        it, its peer and that node's clock in milliseconds.

      - C{info} C{{NODE_ID: {"v": VERSION, "l": LOAD, "i"?: {SERVER:
        [METHOD, ...]}}}} is what the sender knows of nodes' instances
        (SPEC section 11): each node's load (calls it has not finished) and
        its idempotent methods, numbered by that node (C{v} grows), so a
        node relays an entry on only when it is newer than what it held
        (L{relaytx._balance}). Sent to routing neighbours only, when it
        changes; ignored by nodes that do not know it.

    Unknown fields are ignored. At most L{MAX_PATH} nodes in a path.
  - C{route_message} C{{"original_message": ENVELOPE}}: a message wrapped for
    a hop that is not its destination.
  - C{link_close} C{{"code"}}: the sender closes this link on purpose with
    C{code} (4001 replaced, 4002 removed by its operator). Sent just before
    the close frame, on links that authenticate their frames only (a close
    frame is not authenticated): there, a close on purpose counts as one
    only if this said so first (L{LinkClose}).
  - C{call_copy_dropped} C{{"response_id", "caller"}}: a copy of a flooded
    call that the sender passed on, or that reached it, was dropped at the
    target, another copy having been there (L{CopyDropped}). To a relaytx
    neighbour only, never routed.

Cancellation and streams (SPEC section 12; see L{relaytx._streams}). These
frames travel only between relaytx nodes: none is ever sent on a link to an
original-design node (the forwarder drops them there), and a callee sends
items only to a caller whose call asked for a stream.

  - C{server_call} may carry C{"stream": WINDOW} (an int >= 1): the caller
    takes a streamed result. If the method is an async generator, its items
    come as C{stream_item}s, at most WINDOW ahead of the caller's credit,
    and the call's C{server_response} (its result: the number of items)
    ends the stream. Without C{stream}, such a method's items are collected
    and answered as one list.
  - C{stream_item} C{{"response_id", "seq", "item", "mac"?}}, callee to
    caller: item number C{seq} (0, 1, ...), back along the call's path.
  - C{stream_credit} C{{"response_id", "credit", "mac"?}}, caller to callee:
    the callee may have sent items numbered below C{credit} (cumulative, so
    a lost or repeated frame does no harm).
  - C{call_cancel} C{{"response_id", "caller", "lost"?, "mac"?}}, to the
    callee: cancel C{caller}'s call (queued: it never runs; running: its
    Deferred is cancelled). The callee answers it with -32800. C{lost: true}
    is sent by a node on the call's path that lost the link its call came
    by (its caller can no longer be answered).

C{mac} is, in PKI mode, the sender's end-to-end code when the frame crosses
other nodes (L{relaytx._pki.EndToEnd}), as for calls and answers.

Decoding is strict and happens in two steps, so a node can forward a message
whose type it does not know: L{decode} checks the envelope and raises
L{MalformedMessage}; L{MessageTypes.payload} turns C{data} into the payload
class registered for C{type}, raising L{UnknownMessageType} or
L{MalformedMessage}. No code outside this module reads the raw dictionaries.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType, UnionType
from typing import (
    Any,
    ClassVar,
    NamedTuple,
    Self,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import attrs
from attrs import define, field, frozen

from relaytx import _json
from relaytx.errors import MalformedMessage, MessageTooLarge, UnknownMessageType

DEFAULT_TTL = 10

#: A node id: 1-64 of C{A-Za-z0-9._-} (SPEC section 3).
NODE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

#: The longest id of any other kind on the wire (SPEC section 10).
MAX_ID_LENGTH = 128

#: Node ids, one per line (see L{_node_ids}).
_NODE_IDS_RE = re.compile(r"[A-Za-z0-9._-]{1,64}(?:\n[A-Za-z0-9._-]{1,64})*")

_id_prefix = os.urandom(6).hex()
_id_counter = itertools.count(1)


def new_id() -> str:
    """
    :returns: an id unique across processes (48 random bits) and within this
        process (a counter). Cheap enough for every message.
    """
    return f"{_id_prefix}-{next(_id_counter)}"


def _random_hex(nbytes: int, batch: int = 256) -> Iterator[str]:
    # The OS's generator, read for a batch of ids at a time: one system
    # call per batch instead of one per id.
    width = 2 * nbytes
    while True:
        pool = os.urandom(nbytes * batch).hex()
        for at in range(0, len(pool), width):
            yield pool[at : at + width]


_secrets = _random_hex(12)


def secret_id() -> str:
    """
    :returns: 96 bits from the OS's cryptographic generator, in hex: an id
        no other node can guess, such as a call's response id.
    """
    return next(_secrets)


def _after_fork() -> None:
    # A forked process draws its own ids: none of its parent's.
    global _id_prefix, _secrets
    _id_prefix = os.urandom(6).hex()
    _secrets = _random_hex(12)


os.register_at_fork(after_in_child=_after_fork)


_second_cache: list[Any] = [None, ""]


def rfc3339(seconds: float) -> str:
    """
    :param seconds: a Unix time, as C{IReactorTime.seconds()} gives.
    :returns: that instant as an RFC 3339 UTC timestamp with microseconds.
    """
    # Every message carries one: format the date and time once per second.
    whole = int(seconds // 1)
    micros = round((seconds - whole) * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    if _second_cache[0] != whole:
        stamp = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache[0], _second_cache[1] = whole, stamp
    return f"{_second_cache[1]}.{micros:06d}Z"


# Field checks shared by the envelope and the payloads.


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    try:
        value = data[key]
    except KeyError:
        raise MalformedMessage(f"{what} has no {key!r}", reason="missing_field") from None
    return _check(value, key, kind, what)


def _optional(
    data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str, default: Any = None
) -> Any:
    value = data.get(key)
    if value is None:
        return default
    return _check(value, key, kind, what)


def _check(value: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    # bool is an int in Python but never a number on the wire.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MalformedMessage(
            f"{what} field {key!r} has type {type(value).__name__}", reason="bad_field"
        )
    return value


def _bounded_id(value: str | None, key: str) -> str | None:
    if value is not None and len(value) > MAX_ID_LENGTH:
        raise MalformedMessage(f"{key} is over {MAX_ID_LENGTH} characters", reason="bad_id")
    return value


def _string_list(value: Any, key: str, what: str) -> tuple[str, ...]:
    _check(value, key, list, what)
    for item in value:
        _check(item, key, str, what)
    return tuple(value)


def _all_strings(items: list[Any]) -> bool:
    # str.join takes nothing but strings, and checks them in C.
    try:
        "".join(items)
    except TypeError:
        return False
    return True


#: Node ids seen to be valid (a bounded cache: a frame's ids are nearly
#: always ones seen before, and a set lookup costs a few tens of ns where
#: checking the syntax costs a microsecond).
_VALID_IDS: set[str] = set()
_MAX_VALID_IDS = 4096


def _node_ids(sender: str, to: str, route: list[Any]) -> bool:
    """
    :returns: whether C{route} holds only strings and C{sender}, C{to} (or
        C{""}) and every route item are node ids.
    """
    valid = _VALID_IDS
    try:
        if sender in valid and (to in valid or to == ""):
            for item in route:
                if item not in valid:
                    break
            else:
                return True
    except TypeError:  # an unhashable route item: not an id
        return False
    return _check_node_ids(sender, to, route)


def _check_node_ids(sender: str, to: str, route: list[Any]) -> bool:
    # One join and one regular expression over all of them, in C. str.join
    # takes nothing but strings; the count of line breaks catches one
    # inside an id. An empty "to" is the dialler's ping to a node that has
    # not said its id yet (relaytx._handshake): it names no node.
    try:
        joined = "\n".join(route)
    except TypeError:
        return False
    ids = [sender, *route] if to == "" else [sender, to, *route]
    text = f"{sender}\n{to}\n{joined}" if route else f"{sender}\n{to}"
    if to == "":
        text = f"{sender}\n{joined}" if route else sender
    if _NODE_IDS_RE.fullmatch(text) is None or text.count("\n") != len(ids) - 1:
        return False
    if len(_VALID_IDS) + len(ids) > _MAX_VALID_IDS:
        _VALID_IDS.clear()
    _VALID_IDS.update(ids)
    return True


# The envelope.


@define
class Envelope:
    """
    One message on a peer link, as SPEC section 7 describes it.

    Treat an envelope as a value: nothing changes one once made, and a
    forwarding node makes a new one with L{hop}. It is not frozen only
    because freezing makes one several times as dear to make, and a
    forwarding node makes two for each message it passes on (the one it
    reads and the one it sends; the README's benchmark notes give the
    figures). The payloads made for every call (L{CallSpec}, L{ServerCall},
    L{ServerResponse}, L{RouteMessage}) are plain records for the same
    reason; the rarer ones stay frozen.

    @ivar data: the raw payload object; use L{MessageTypes.payload} for the
        typed view.
    """

    type: str
    sender: str
    to: str
    data: Mapping[str, Any]
    id: str | None = None
    timestamp: str | None = None
    route: tuple[str, ...] = ()
    ttl: int = DEFAULT_TTL
    reply_to: str | None = None

    @classmethod
    def create(
        cls,
        payload: Payload,
        sender: str,
        to: str,
        now: float,
        ttl: int = DEFAULT_TTL,
        reply_to: str | None = None,
    ) -> Envelope:
        """
        A new message originated by C{sender}: fresh id, route C{[sender]}.

        :param now: the current Unix time.
        """
        return cls(
            type=payload.TYPE,
            sender=sender,
            to=to,
            data=payload.to_data(),
            id=new_id(),
            timestamp=rfc3339(now),
            route=(sender,),
            ttl=ttl,
            reply_to=reply_to,
        )

    def hop(self, node_id: str) -> Envelope:
        """
        :returns: this message as forwarded by C{node_id}: its id appended to
            C{route} and C{ttl} one lower.
        """
        # As attrs.evolve would, at a third of its cost: every forwarded
        # message comes through here.
        return Envelope(
            self.type,
            self.sender,
            self.to,
            self.data,
            self.id,
            self.timestamp,
            (*self.route, node_id),
            self.ttl - 1,
            self.reply_to,
        )

    @property
    def response_id(self) -> str | None:
        """
        The C{response_id} of a C{server_call} or C{server_response}, read
        without decoding the rest of the payload (a forwarder needs no
        more); C{None} when it is missing or not a string.
        """
        response_id = self.data.get("response_id")
        if type(response_id) is str and len(response_id) <= MAX_ID_LENGTH:
            return response_id
        return None

    def to_json(self) -> dict[str, Any]:
        """
        :returns: the JSON object, keys in the original's order.
        """
        obj: dict[str, Any] = {"type": self.type}
        if self.id is not None:
            obj["id"] = self.id
        obj["from"] = self.sender
        obj["to"] = self.to
        obj["data"] = self.data
        if self.timestamp is not None:
            obj["timestamp"] = self.timestamp
        obj["route"] = list(self.route)
        obj["ttl"] = self.ttl
        if self.reply_to is not None:
            obj["reply_to"] = self.reply_to
        return obj

    @classmethod
    def from_json(cls, obj: Any) -> Envelope:
        """
        Check a parsed JSON value and build the envelope.

        :raises MalformedMessage: if C{obj} is not a valid envelope.
        """
        if not isinstance(obj, dict):
            raise MalformedMessage(
                f"frame is a JSON {type(obj).__name__}, not an object", reason="not_object"
            )
        get = obj.get
        kind, sender, to, data = get("type"), get("from"), get("to"), get("data")
        message_id, route, ttl = get("id"), get("route"), get("ttl")
        if (
            # The fast path: every field present and well typed, as relaytx
            # and the original send them.
            type(kind) is str
            and type(sender) is str
            and type(to) is str
            and type(data) is dict
            and type(message_id) is str
            and type(route) is list
            and type(ttl) is int
            and len(message_id) <= MAX_ID_LENGTH
            and _node_ids(sender, to, route)
        ):
            timestamp = get("timestamp")
            reply_to = get("reply_to")
            if (timestamp is None or type(timestamp) is str) and (
                reply_to is None or (type(reply_to) is str and len(reply_to) <= MAX_ID_LENGTH)
            ):
                return cls(
                    kind, sender, to, data, message_id, timestamp, tuple(route), ttl, reply_to
                )
        return cls._from_json_checked(obj)

    @classmethod
    def _from_json_checked(cls, obj: dict[str, Any]) -> Envelope:
        # The general path, field by field: the fast path above must agree
        # with it on every input (tests.test_wire holds them to that).
        what = "envelope"
        route = obj.get("route")
        envelope = cls(
            type=_require(obj, "type", str, what),
            sender=_require(obj, "from", str, what),
            to=_require(obj, "to", str, what),
            data=_require(obj, "data", dict, what),
            id=_bounded_id(_optional(obj, "id", str, what), "id"),
            timestamp=_optional(obj, "timestamp", str, what),
            route=() if route is None else _string_list(route, "route", what),
            ttl=_optional(obj, "ttl", int, what, DEFAULT_TTL),
            reply_to=_bounded_id(_optional(obj, "reply_to", str, what), "reply_to"),
        )
        if not _node_ids(envelope.sender, envelope.to, list(envelope.route)):
            raise MalformedMessage(
                "envelope from, to or route holds something other than node ids",
                reason="bad_id",
            )
        return envelope


#: The deepest frame a relaytx peer reads (orjson's limit).
MAX_FRAME_DEPTH = 1024

_loads = _json.loads
_SLOWLY_WRITTEN = _json.SLOWLY_WRITTEN


def encode(envelope: Envelope) -> bytes:
    """
    :returns: the UTF-8 text frame for C{envelope}.
    :raises TypeError: if its data holds a value JSON cannot express.
    :raises MessageTooLarge: if it is nested deeper than a peer reads (a
        call's arguments valid as a request, deepened by the envelope).
    """
    try:
        return _json.dumps_frame(envelope.to_json(), MAX_FRAME_DEPTH)
    except _json.TooDeep as e:
        raise MessageTooLarge(f"a {envelope.type} {e}") from None


def decode(frame: bytes | str) -> Envelope:
    """
    Parse one text frame into an envelope (its payload stays raw).

    :raises MalformedMessage: if the frame is not JSON or not an envelope.
    """
    try:
        # (_json.loads_frame, inlined: every frame read comes here.)
        obj = _loads(frame) if frame[:1] != _SLOWLY_WRITTEN else _json.loads_frame(frame)
    except ValueError as e:  # (JSONDecodeError and UnicodeDecodeError among them)
        try:
            obj = _json.loads_surrogates(frame, e)
        except (ValueError, RecursionError):
            raise MalformedMessage("frame is not valid JSON", reason="not_json") from None
    return Envelope.from_json(obj)


# Payloads.


class Payload:
    """
    The typed C{data} of one message type. Subclasses set C{TYPE} (the wire
    name) and may override L{from_data}/L{to_data}; for an C{attrs} class the
    defaults map fields to keys one to one, which is all most custom message
    types need::

        @frozen
        class Chat(Payload):
            TYPE = "chat"
            text: str
    """

    TYPE: ClassVar[str]

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        """
        :raises MalformedMessage: if C{data} does not fit this payload.
        """
        kwargs = {}
        kinds = _json_kinds(cls)
        for f in attrs.fields(cls):  # type: ignore[arg-type]  # subclasses are attrs classes
            if not f.init:
                continue
            # The wire key is the field's name (as to_data writes it); the
            # constructor takes its alias (a private _x is passed as x).
            if f.name in data:
                value = data[f.name]
                kind = kinds.get(f.name)
                if kind is not None and type(value) not in kind:
                    raise MalformedMessage(
                        f"{cls.TYPE}'s {f.name!r} is not {_kind_name(kind)}", reason="bad_field"
                    )
                kwargs[f.alias] = value
            elif f.default is attrs.NOTHING:
                raise MalformedMessage(f"{cls.TYPE} has no {f.name!r}", reason="missing_field")
        return cls(**kwargs)

    def to_data(self) -> dict[str, Any]:
        """
        :returns: the JSON object for this payload.
        """
        return attrs.asdict(self, recurse=False)  # type: ignore[arg-type]  # attrs subclasses


#: The JSON values a field's declared type takes, as the Python types
#: the JSON reader gives them.
_KINDS: dict[Any, frozenset[type]] = {
    str: frozenset({str}),
    int: frozenset({int}),
    float: frozenset({int, float}),
    bool: frozenset({bool}),
    list: frozenset({list}),
    tuple: frozenset({list}),
    dict: frozenset({dict}),
    Mapping: frozenset({dict}),
    type(None): frozenset({type(None)}),
    None: frozenset({type(None)}),
}


def _json_kinds(cls: type) -> dict[str, frozenset[type]]:
    """
    :returns: for each field of payload class C{cls} declared as a JSON
        type (C{str}, C{int}, C{float}, C{bool}, C{list}, C{dict}, or
        unions of them, C{None} among them), the Python types its values
        may have; fields of any other type (C{Any}, a class) are not
        checked, nor are those of a class whose annotations cannot be
        resolved.
    """
    kinds = _KINDS_OF.get(cls)
    if kinds is not None:
        return kinds
    kinds = _KINDS_OF[cls] = {}
    try:
        hints = get_type_hints(cls)
    except Exception:  # (a name the class's module no longer holds, say)
        return kinds
    for f in attrs.fields(cls):
        kind = _kind_of(hints.get(f.name, Any))
        if kind is not None:
            kinds[f.name] = kind
    return kinds


#: L{_json_kinds} of each payload class read so far.
_KINDS_OF: dict[type, dict[str, frozenset[type]]] = {}


def _kind_of(hint: Any) -> frozenset[type] | None:
    origin = get_origin(hint)
    if origin is Union or origin is UnionType:
        parts = [_kind_of(arg) for arg in get_args(hint)]
        if any(part is None for part in parts):
            return None
        return frozenset().union(*parts)  # type: ignore[arg-type]
    return _KINDS.get(origin if origin is not None else hint)


def _kind_name(kind: frozenset[type]) -> str:
    names = {str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    names |= {list: "an array", dict: "an object", type(None): "null"}
    return " or ".join(sorted({names[t] for t in kind}))


@frozen
class Ping(Payload):
    """A liveness probe; C{timestamp} is echoed untouched by the pong."""

    TYPE = "ping"
    timestamp: Any = None

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Ping:
        return cls(data.get("timestamp"))

    def to_data(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp}  # every link, every interval: no attrs.asdict


@frozen
class Pong(Payload):
    """The answer to a ping."""

    TYPE = "pong"
    timestamp: Any = None
    pong_time: float | None = None

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Pong:
        return cls(data.get("timestamp"), _optional(data, "pong_time", (int, float), "pong"))

    def to_data(self) -> dict[str, Any]:
        return {"pong_time": self.pong_time, "timestamp": self.timestamp}


@define
class CallSpec:
    """What to call: C{server_name.method(*args, **kwargs)} within C{timeout} s."""

    server_name: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(factory=dict)
    timeout: float | None = None

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "server_name": self.server_name,
            "method": self.method,
            "args": list(self.args),
        }
        if self.kwargs:
            data["kwargs"] = self.kwargs
        if self.timeout is not None:
            data["timeout"] = self.timeout
        return data


@define
class ServerCall(Payload):
    """A call to a server on the envelope's C{to} node."""

    TYPE = "server_call"
    call: CallSpec
    response_id: str | None = None
    #: the caller's end-to-end code (PKI mode, a call that crosses other nodes)
    mac: str | None = None
    #: the caller the sending node relays for (see the module docstring)
    caller: str | None = None
    #: the caller takes a streamed result, this many items ahead of its credit
    stream: int | None = None

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ServerCall:
        get = data.get
        call, response_id, mac = get("call"), get("response_id"), get("mac")
        caller, stream = get("caller"), get("stream")
        if (
            type(call) is dict
            and (stream is None or (type(stream) is int and stream > 0))
            and (
                response_id is None
                or (type(response_id) is str and len(response_id) <= MAX_ID_LENGTH)
            )
            and (mac is None or type(mac) is str)
            and (caller is None or (type(caller) is str and 0 < len(caller) <= MAX_ID_LENGTH))
        ):
            # The fast path: every field present or absent as allowed, well typed.
            server_name, method = call.get("server_name"), call.get("method")
            args, kwargs, timeout = call.get("args"), call.get("kwargs"), call.get("timeout")
            if (
                type(server_name) is str
                and type(method) is str
                and (args is None or type(args) is list)
                and (kwargs is None or type(kwargs) is dict)
                and (
                    timeout is None
                    or ((type(timeout) is float or type(timeout) is int) and timeout >= 0)
                )
            ):
                return cls(
                    CallSpec(
                        server_name,
                        method,
                        () if args is None else tuple(args),
                        {} if kwargs is None else kwargs,
                        timeout,
                    ),
                    response_id,
                    mac,
                    caller,
                    stream,
                )
        return cls._from_data_checked(data)

    @classmethod
    def _from_data_checked(cls, data: Mapping[str, Any]) -> ServerCall:
        # The general path; the fast one above must agree with it.
        what = "server_call"
        call = _require(data, "call", dict, what)
        what = "server_call.call"
        timeout = _optional(call, "timeout", (int, float), what)
        if timeout is not None and timeout < 0:
            raise MalformedMessage("server_call timeout is negative", reason="bad_field")
        caller = _bounded_id(_optional(data, "caller", str, "server_call"), "caller")
        if caller == "":
            raise MalformedMessage("server_call caller is empty", reason="bad_field")
        stream = _optional(data, "stream", int, "server_call")
        if stream is not None and stream <= 0:
            raise MalformedMessage("server_call stream window is not positive", reason="bad_field")
        return cls(
            CallSpec(
                server_name=_require(call, "server_name", str, what),
                method=_require(call, "method", str, what),
                args=tuple(_optional(call, "args", list, what, ())),
                kwargs=_optional(call, "kwargs", dict, what, {}),
                timeout=timeout,
            ),
            _bounded_id(_optional(data, "response_id", str, "server_call"), "response_id"),
            _optional(data, "mac", str, "server_call"),
            caller,
            stream,
        )

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"call": self.call.to_data(), "response_id": self.response_id}
        if self.mac is not None:
            data["mac"] = self.mac
        if self.caller is not None:
            data["caller"] = self.caller
        if self.stream is not None:
            data["stream"] = self.stream
        return data

    @staticmethod
    def tracking(data: Mapping[str, Any]) -> tuple[str, float | None] | None:
        """
        What a node forwarding a call keeps of it, read from its raw
        C{data} without checking the rest (its destination does that).

        :returns: the call's response id and time budget (C{None} when it
            gives none), or C{None} if it has no usable response id.
        """
        response_id = data.get("response_id")
        call = data.get("call")
        if type(response_id) is not str or type(call) is not dict:
            return None
        if len(response_id) > MAX_ID_LENGTH:
            return None
        timeout = call.get("timeout")
        if (type(timeout) is int or type(timeout) is float) and timeout >= 0:
            return response_id, timeout
        return response_id, None


@define
class ServerResponse(Payload):
    """
    The answer to a C{server_call}: C{result} when C{success}, otherwise
    C{error} (a message), C{error_code} (SPEC section 5) and C{error_data}.
    The original omits C{node_id} from its error form.
    """

    TYPE = "server_response"
    response_id: str | None
    success: bool
    node_id: str | None = None
    result: Any = None
    error: str | None = None
    error_code: int | None = None
    error_data: Mapping[str, Any] | None = None
    #: the callee's end-to-end code (PKI mode, an answer that crosses other nodes)
    mac: str | None = None
    #: the call's path and the time each node spent on it, when its caller
    #: asked (see L{relaytx._tracing}); written, never read, by this class
    trace_path: Mapping[str, Any] | None = None

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ServerResponse:
        get = data.get
        response_id, node_id, mac = get("response_id"), get("node_id"), get("mac")
        if (
            # The fast path: a success, well typed, with no error fields.
            get("success") is True
            and type(response_id) is str
            and len(response_id) <= MAX_ID_LENGTH
            and (node_id is None or type(node_id) is str)
            and (mac is None or type(mac) is str)
            and get("error") is None
            and get("error_code") is None
            and get("error_data") is None
        ):
            return cls(response_id, True, node_id, get("result"), mac=mac)
        return cls._from_data_checked(data)

    @classmethod
    def _from_data_checked(cls, data: Mapping[str, Any]) -> ServerResponse:
        # The general path; the fast one above must agree with it.
        what = "server_response"
        if "response_id" not in data:
            raise MalformedMessage("server_response has no 'response_id'", reason="missing_field")
        return cls(
            response_id=_bounded_id(_optional(data, "response_id", str, what), "response_id"),
            success=_require(data, "success", bool, what),
            node_id=_optional(data, "node_id", str, what),
            result=data.get("result"),
            error=_optional(data, "error", str, what),
            error_code=_optional(data, "error_code", int, what),
            error_data=_optional(data, "error_data", dict, what),
            mac=_optional(data, "mac", str, what),
        )

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"response_id": self.response_id, "success": self.success}
        if self.node_id is not None:
            data["node_id"] = self.node_id
        if self.success:
            data["result"] = self.result
        else:
            data["error"] = self.error or ""
            if self.error_code is not None:
                data["error_code"] = self.error_code
            if self.error_data:
                data["error_data"] = self.error_data
        if self.mac is not None:
            data["mac"] = self.mac
        if self.trace_path is not None:
            data["trace_path"] = self.trace_path
        return data


def _server_table(value: Any, what: str) -> dict[str, tuple[str, ...]]:
    _check(value, "servers", dict, what)
    table = {}
    for name, entry in value.items():
        _check(entry, name, dict, f"{what} servers")
        table[name] = _string_list(entry.get("methods", []), "methods", f"{what} server {name!r}")
    return table


def _server_json(table: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    return {name: {"methods": list(methods)} for name, methods in table.items()}


#: The most node ids a route path may hold (SPEC section 7 caps the hop budget at 64).
MAX_PATH = 64

#: The largest metric a route may carry; anything above is malformed.
MAX_METRIC = 1 << 30

# Node ids read from adverts, each kept once: a valid id is checked once per
# process, and the tables of every node in a process share the strings.
_known_ids: dict[str, str] = {}
_KNOWN_IDS_MAX = 200_000


def node_id_of(value: Any, what: str) -> str:
    """
    :returns: C{value} as a node id (the one string object kept for it).
    :raises MalformedMessage: if C{value} is not a string of 1-64 of
        C{A-Za-z0-9._-}.
    """
    if type(value) is str:
        known = _known_ids.get(value)
        if known is not None:
            return known
        if NODE_ID_RE.fullmatch(value):
            if len(_known_ids) >= _KNOWN_IDS_MAX:
                _known_ids.clear()
            _known_ids[value] = value
            return value
    raise MalformedMessage(f"{what}: {str(value)[:80]!r} is not a node id", reason="bad_field")


# A destination's servers as adverts carry them ({NAME: [METHOD, ...]}); equal
# tables are kept once, so the thousand nodes of a table that host the same
# servers share one.
_known_tables: dict[tuple[tuple[str, tuple[str, ...]], ...], Mapping[str, tuple[str, ...]]] = {}
_KNOWN_TABLES_MAX = 20_000

#: No servers.
NO_SERVERS: Mapping[str, tuple[str, ...]] = MappingProxyType({})


def server_table(items: Iterable[tuple[str, Iterable[str]]]) -> Mapping[str, tuple[str, ...]]:
    """
    :returns: the read-only server table (name -> methods) holding C{items},
        the one object kept for equal tables.
    """
    return _table(tuple((name, tuple(methods)) for name, methods in items))


def _table(key: tuple[tuple[str, tuple[str, ...]], ...]) -> Mapping[str, tuple[str, ...]]:
    if not key:
        return NO_SERVERS
    table = _known_tables.get(key)
    if table is None:
        if len(_known_tables) >= _KNOWN_TABLES_MAX:
            _known_tables.clear()
        table = _known_tables[key] = MappingProxyType(dict(key))
    return table


def _compact_servers(value: Any, what: str) -> Mapping[str, tuple[str, ...]]:
    if type(value) is not dict:
        _check(value, "s", dict, what)
    items = []
    for name, methods in value.items():
        if type(methods) is not list or not _all_strings(methods):
            _string_list(methods, name, f"{what} servers")  # raises
        items.append((name, tuple(methods)))
    return _table(tuple(items))


class RouteAdvert(NamedTuple):
    """
    One destination in a C{registry_sync}: how its sender reaches it now.
    Exactly one of C{path} and C{parent} is set, or neither (only the
    servers changed).

    @ivar path: the nodes from the sender (exclusive) to the destination
        (inclusive); its length is the hop count from the sender.
    @ivar servers: the destination's servers and their methods, when they
        are sent (C{None}: as before).
    @ivar parent: instead of a path: the sender's path to C{parent} (which
        this advert or an earlier one gave) with the destination added.
        The destination's path then follows the parent's when that changes.
    @ivar metric: with C{path}, the sender's metric to the destination
        (C{None}: the path's length); with C{parent}, what the last link
        adds to the parent's metric (C{None}: 1).
    @ivar sn: the destination's sequence number, when it is sent (C{None}:
        as before; never sent: 0).
    """

    path: tuple[str, ...] | None = None
    servers: Mapping[str, tuple[str, ...]] | None = None
    parent: str | None = None
    metric: int | None = None
    sn: int | None = None

    def to_json(self, table_index: Any = None) -> dict[str, Any]:
        """
        :param table_index: given a server table, returns its index in the
            advert's C{tables} (the entry then refers to it); C{None}: the
            entry carries its servers itself.
        :returns: the entry's JSON object (see L{RegistrySync}).
        """
        out: dict[str, Any] = {}
        path, metric = self.path, self.metric
        if path is not None:
            out["path"] = list(path)
            if metric is not None and metric != len(path):
                out["m"] = metric
        elif self.parent is not None:
            out["p"] = self.parent
            if metric is not None and metric != 1:
                out["c"] = metric
        if self.servers is not None:
            if table_index is not None:
                out["s"] = table_index(self.servers)
            else:
                out["s"] = {name: list(methods) for name, methods in self.servers.items()}
        if self.sn is not None:
            out["n"] = self.sn
        return out

    @classmethod
    def from_json(
        cls,
        dest: str,
        value: Any,
        what: str,
        tables: list[Mapping[str, tuple[str, ...]]] | None = None,
    ) -> RouteAdvert:
        """
        :param tables: the advert's server tables, which entries refer to
            by index.
        :raises MalformedMessage: if C{value} is not an entry for C{dest}.
        """
        if type(value) is not dict:
            _check(value, dest, dict, what)
        get = value.get
        raw_path, parent, metric = get("path"), get("p"), None
        path: tuple[str, ...] | None = None
        if raw_path is not None:
            if type(raw_path) is not list or not raw_path or len(raw_path) > MAX_PATH:
                raise MalformedMessage(f"{what} path to {dest!r} is not a path", reason="bad_field")
            path = tuple([node_id_of(hop, what) for hop in raw_path])
            if path[-1] != dest:
                raise MalformedMessage(
                    f"{what} path to {dest!r} does not end there", reason="bad_field"
                )
            metric = get("m")
        elif parent is not None:
            parent = node_id_of(parent, what)
            if parent == dest:
                raise MalformedMessage(f"{what} {dest!r} is its own parent", reason="bad_field")
            metric = get("c")
        if metric is not None and (type(metric) is not int or not 0 <= metric <= MAX_METRIC):
            raise MalformedMessage(f"{what} metric of {dest!r} is not one", reason="bad_field")
        raw_servers = get("s")
        servers = None
        if type(raw_servers) is int:
            if tables is None or not 0 <= raw_servers < len(tables):
                raise MalformedMessage(
                    f"{what} {dest!r} refers to no server table", reason="bad_field"
                )
            servers = tables[raw_servers]
        elif raw_servers is not None:
            servers = _compact_servers(raw_servers, what)
        sn = get("n")
        if sn is not None and (type(sn) is not int or sn < 0):
            raise MalformedMessage(
                f"{what} sequence number of {dest!r} is not one", reason="bad_field"
            )
        return cls(path, servers, parent, metric, sn)


@frozen
class RegistrySync(Payload):
    """
    A neighbour's servers and routes (path vector), or a change to them.
    See the module docstring for the wire format and how a link uses it.

    @ivar servers: the sender's own servers (C{None}: not in this advert,
        so unchanged).
    @ivar routes: destinations added or changed since the sender's last
        advert on this link (or, with C{full}, its whole table).
    @ivar withdrawn: destinations the sender no longer offers.
    @ivar seq: the advert's number on this link (1, 2, ...); C{None} from
        a node that does not route (an original-design node).
    @ivar full: this advert starts the sender's whole table, which replaces
        what it said before; C{more} says another frame of it follows.
    @ivar resync: the sender asks for our whole table (it missed an advert).
    @ivar down: links the sender knows to be gone, as C{(node, peer,
        stamp)} (C{node} saw its link to C{peer} close at C{stamp}, its
        clock in milliseconds): a path through one is stale, whoever offers it.
    @ivar up: links back up since such a notice, likewise.
    @ivar sn: the sender's own sequence number (C{None}: unchanged).
    @ivar lost: destinations the sender knows to be unreachable at a
        sequence number (odd, one above the last it knew them by): any path
        to them numbered below it is stale, whoever offers it.
    """

    TYPE = "registry_sync"
    servers: Mapping[str, tuple[str, ...]] | None = None
    routes: Mapping[str, RouteAdvert] | None = None
    withdrawn: tuple[str, ...] = ()
    seq: int | None = None
    full: bool = False
    more: bool = False
    resync: bool = False
    down: tuple[tuple[str, str, int], ...] = ()
    up: tuple[tuple[str, str, int], ...] = ()
    sn: int | None = None
    lost: Mapping[str, int] | None = None
    info: Mapping[str, NodeInfo] | None = None

    @property
    def routes_sync(self) -> bool:
        """Whether the sender takes part in the route exchange (a relaytx router)."""
        return self.seq is not None

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> RegistrySync:
        what = "registry_sync"
        servers = _server_table(data["servers"], what) if "servers" in data else None
        seq = _optional(data, "seq", int, what)
        if seq is not None and seq < 0:
            raise MalformedMessage(f"{what} seq is negative", reason="bad_field")
        raw_routes = _optional(data, "routes", dict, what)
        routes = None
        if raw_routes:
            from_json = RouteAdvert.from_json
            tables = [_compact_servers(t, what) for t in _optional(data, "tables", list, what, ())]
            routes = {
                node_id_of(dest, what): from_json(dest, entry, what, tables)
                for dest, entry in raw_routes.items()
            }
        withdrawn: tuple[str, ...] = ()
        raw_withdrawn = _optional(data, "withdraw", list, what)
        if raw_withdrawn:
            withdrawn = tuple([node_id_of(dest, what) for dest in raw_withdrawn])
        return cls(
            servers,
            routes,
            withdrawn,
            seq,
            _optional(data, "full", bool, what, False),
            _optional(data, "more", bool, what, False),
            _optional(data, "resync", bool, what, False),
            _links_of(data, "down", what),
            _links_of(data, "up", what),
            _sequence(data.get("sn"), "sn", what),
            _lost_of(data, what),
            _info_of(data, what),
        )

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.servers is not None:
            data["servers"] = _server_json(self.servers)
        if self.seq is not None:
            data["seq"] = self.seq
        if self.full:
            data["full"] = True
        if self.more:
            data["more"] = True
        if self.resync:
            data["resync"] = True
        if self.routes:
            # Each server table once, in C{tables}; entries refer to it.
            tables: list[dict[str, list[str]]] = []
            index: dict[int, int] = {}

            def table_index(table: Mapping[str, tuple[str, ...]]) -> int:
                at = index.get(id(table))
                if at is None:
                    at = index[id(table)] = len(tables)
                    tables.append({name: list(methods) for name, methods in table.items()})
                return at

            data["routes"] = {
                dest: entry.to_json(table_index) for dest, entry in self.routes.items()
            }
            if tables:
                data["tables"] = tables
        if self.withdrawn:
            data["withdraw"] = list(self.withdrawn)
        if self.down:
            data["down"] = [list(link) for link in self.down]
        if self.up:
            data["up"] = [list(link) for link in self.up]
        if self.sn is not None:
            data["sn"] = self.sn
        if self.lost:
            data["lost"] = dict(self.lost)
        if self.info:
            data["info"] = {node: entry.to_json() for node, entry in self.info.items()}
        return data


class NodeInfo(NamedTuple):
    """
    What a C{registry_sync} tells of one node's instances (SPEC section 11).

    @ivar version: the node's number for this entry (it grows).
    @ivar load: the node's calls not finished (queued or running).
    @ivar idempotent: its servers' idempotent methods, by server name.
    """

    version: int
    load: int
    idempotent: Mapping[str, tuple[str, ...]] = NO_SERVERS

    def to_json(self) -> dict[str, Any]:
        """:returns: the entry as it goes in C{info}."""
        entry: dict[str, Any] = {"v": self.version, "l": self.load}
        if self.idempotent:
            entry["i"] = {name: list(methods) for name, methods in self.idempotent.items()}
        return entry


def _info_of(data: Mapping[str, Any], what: str) -> Mapping[str, NodeInfo] | None:
    raw = _optional(data, "info", dict, what)
    if not raw:
        return None
    info = {}
    for node, entry in raw.items():
        node = node_id_of(node, what)
        _check(entry, "info", dict, what)
        version = entry.get("v")
        load = entry.get("l", 0)
        if type(version) is not int or version < 0 or type(load) is not int or load < 0:
            raise MalformedMessage(f"{what} info of {node}: bad v or l", reason="bad_field")
        methods = _compact_servers(entry["i"], what) if "i" in entry else NO_SERVERS
        info[node] = NodeInfo(version, load, methods)
    return info


def _sequence(value: Any, key: str, what: str) -> int | None:
    if value is not None and (type(value) is not int or value < 0):
        raise MalformedMessage(f"{what} {key} is not a sequence number", reason="bad_field")
    return value


def _lost_of(data: Mapping[str, Any], what: str) -> Mapping[str, int] | None:
    raw = _optional(data, "lost", dict, what)
    if not raw:
        return None
    return {node_id_of(dest, what): _sequence(sn, "lost", what) or 0 for dest, sn in raw.items()}


def _links_of(data: Mapping[str, Any], key: str, what: str) -> tuple[tuple[str, str, int], ...]:
    links = []
    for link in _optional(data, key, list, what, ()):
        if type(link) is not list or len(link) != 3 or type(link[2]) is not int:
            raise MalformedMessage(f"{what} {key} holds {str(link)[:80]}", reason="bad_field")
        links.append((node_id_of(link[0], what), node_id_of(link[1], what), link[2]))
    return tuple(links)


@define
class RouteMessage(Payload):
    """A message wrapped for a hop that is not its destination."""

    TYPE = "route_message"
    original_message: Envelope

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> RouteMessage:
        return cls(Envelope.from_json(_require(data, "original_message", dict, "route_message")))

    def to_data(self) -> dict[str, Any]:
        return {"original_message": self.original_message.to_json()}


def _stream_id(data: Mapping[str, Any], what: str) -> str:
    response_id = _require(data, "response_id", str, what)
    if not response_id or len(response_id) > MAX_ID_LENGTH:
        raise MalformedMessage(f"{what} response_id is empty or too long", reason="bad_id")
    return str(response_id)


def _count(data: Mapping[str, Any], key: str, what: str) -> int:
    value = _require(data, key, int, what)
    if value < 0:
        raise MalformedMessage(f"{what} {key} is negative", reason="bad_field")
    return int(value)


@define
class StreamItem(Payload):
    """One item of a streamed result, callee to caller (see the module docstring)."""

    TYPE = "stream_item"
    response_id: str
    seq: int
    item: Any = None
    mac: str | None = None

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> StreamItem:
        what = "stream_item"
        return cls(
            _stream_id(data, what),
            _count(data, "seq", what),
            data.get("item"),
            _optional(data, "mac", str, what),
        )

    def to_data(self) -> dict[str, Any]:
        data = {"response_id": self.response_id, "seq": self.seq, "item": self.item}
        if self.mac is not None:
            data["mac"] = self.mac
        return data


@define
class StreamCredit(Payload):
    """How many items the caller of a stream takes in all, so far (see the module docstring)."""

    TYPE = "stream_credit"
    response_id: str
    credit: int
    mac: str | None = None

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> StreamCredit:
        what = "stream_credit"
        return cls(
            _stream_id(data, what),
            _count(data, "credit", what),
            _optional(data, "mac", str, what),
        )

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"response_id": self.response_id, "credit": self.credit}
        if self.mac is not None:
            data["mac"] = self.mac
        return data


@define
class CallCancel(Payload):
    """Cancel a call at its callee (see the module docstring)."""

    TYPE = "call_cancel"
    response_id: str
    caller: str
    lost: bool = False
    mac: str | None = None

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> CallCancel:
        what = "call_cancel"
        return cls(
            _stream_id(data, what),
            node_id_of(data.get("caller"), what),
            bool(_optional(data, "lost", bool, what, False)),
            _optional(data, "mac", str, what),
        )

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"response_id": self.response_id, "caller": self.caller}
        if self.lost:
            data["lost"] = True
        if self.mac is not None:
            data["mac"] = self.mac
        return data


@frozen
class CopyDropped(Payload):
    """
    A copy of a flooded call reached its target after another copy had, and
    was dropped there: the target says so to the neighbour the copy came
    from, which passes the word back along that copy's way to the node that
    flooded it (L{relaytx._meshcalls}). That branch of the flood has ended
    without running the call, so a loss of the copy that did run fails the
    call at once (-32006) rather than at its timeout. Sent to a relaytx
    neighbour itself: never routed, never to an original-design node,
    which would take any word on its call for the answer.
    """

    TYPE = "call_copy_dropped"
    response_id: str
    caller: str

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> CopyDropped:
        what = "call_copy_dropped"
        return cls(_stream_id(data, what), node_id_of(data.get("caller"), what))

    def to_data(self) -> dict[str, Any]:
        return {"response_id": self.response_id, "caller": self.caller}


@frozen
class LinkClose(Payload):
    """
    Why the sender is closing this link on purpose (C{code}: 4001 replaced,
    4002 removed by its operator), said in a frame the link authenticates
    just before its close frame, which it cannot (a man in the middle could
    forge that). Sent to the neighbour itself, on links that seal their
    frames only (L{relaytx.peer.PeerSession.close}).
    """

    TYPE = "link_close"
    code: int

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> LinkClose:
        code = _require(data, "code", int, "link_close")
        if not 4000 <= code <= 4999:
            raise MalformedMessage("link_close code is not an application's", reason="bad_field")
        return cls(code)

    def to_data(self) -> dict[str, Any]:
        return {"code": self.code}


#: The frame types of cancellation and streams, never sent to an
#: original-design node.
STREAM_TYPES = frozenset({StreamItem.TYPE, StreamCredit.TYPE, CallCancel.TYPE})


@frozen
class AuthProof(Payload):
    """
    The dialler's proof of the cluster secret: its first frame on a link to
    a node that asked for one (see L{relaytx._handshake}). Never routed and
    never sent after the handshake, so it is not among L{CORE_TYPES}.
    """

    TYPE = "auth"
    proof: str

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> AuthProof:
        return cls(_require(data, "proof", str, "auth"))


P = TypeVar("P", bound=Payload)


#: Where a message of a user's own type carries its end-to-end code in PKI
#: mode (L{relaytx._pki.EndToEnd}): a key its payload is unlikely to have,
#: and payloads ignore keys they do not have.
MESSAGE_MAC = "relaytx_mac"


class MessageTypes:
    """
    An explicit table of wire type names to payload classes. Each node owns
    one; there is no global registry. Extend it with L{extended}.
    """

    def __init__(self, classes: Iterable[type[Payload]]) -> None:
        self._classes: dict[str, type[Payload]] = {}
        for cls in classes:
            if cls.TYPE in self._classes and self._classes[cls.TYPE] is not cls:
                raise ValueError(f"message type {cls.TYPE!r} is already taken")
            self._classes[cls.TYPE] = cls

    def extended(self, *classes: type[Payload]) -> MessageTypes:
        """
        :returns: a new table with C{classes} added.
        :raises ValueError: if one of them reuses a taken type name.
        """
        return MessageTypes([*self._classes.values(), *classes])

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._classes

    def __iter__(self) -> Any:
        return iter(self._classes.values())

    def payload(self, envelope: Envelope) -> Payload:
        """
        :returns: the typed payload of C{envelope}.
        :raises UnknownMessageType: if its type is not in this table.
        :raises MalformedMessage: if its data does not fit that type.
        """
        cls = self._classes.get(envelope.type)
        if cls is None:
            raise UnknownMessageType(f"unknown message type {envelope.type!r}")
        try:
            return cls.from_data(envelope.data)
        except MalformedMessage:
            raise
        except (TypeError, ValueError) as e:
            raise MalformedMessage(f"bad {envelope.type} payload: {e}", reason="bad_field") from e


CORE_TYPES = MessageTypes([Ping, Pong, ServerCall, ServerResponse, RegistrySync, RouteMessage])
