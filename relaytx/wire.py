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
  - C{registry_sync} C{{"servers": {NAME: {"methods": [...]}},
    "routes"?: {NODE_ID: {"path": [...], "servers": {...}}}}}: the sender's
    own servers (the original's shape) and, for every node it can reach, the
    path from the sender to that node and that node's servers.
  - C{route_message} C{{"original_message": ENVELOPE}}: a message wrapped for
    a hop that is not its destination.

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
from typing import Any, ClassVar, Self, TypeVar

import attrs
from attrs import define, field, frozen

from relaytx import _json
from relaytx.errors import MalformedMessage, UnknownMessageType

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


def encode(envelope: Envelope) -> bytes:
    """
    :returns: the UTF-8 text frame for C{envelope}.
    :raises TypeError: if its data holds a value JSON cannot express.
    """
    return _json.dumps(envelope.to_json())


def decode(frame: bytes | str) -> Envelope:
    """
    Parse one text frame into an envelope (its payload stays raw).

    :raises MalformedMessage: if the frame is not JSON or not an envelope.
    """
    try:
        obj = _json.loads(frame)
    except (_json.JSONDecodeError, UnicodeDecodeError):
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
        for f in attrs.fields(cls):  # type: ignore[arg-type]  # subclasses are attrs classes
            if not f.init:
                continue
            # The wire key is the field's name (as to_data writes it); the
            # constructor takes its alias (a private _x is passed as x).
            if f.name in data:
                kwargs[f.alias] = data[f.name]
            elif f.default is attrs.NOTHING:
                raise MalformedMessage(f"{cls.TYPE} has no {f.name!r}", reason="missing_field")
        return cls(**kwargs)

    def to_data(self) -> dict[str, Any]:
        """
        :returns: the JSON object for this payload.
        """
        return attrs.asdict(self, recurse=False)  # type: ignore[arg-type]  # attrs subclasses


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

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ServerCall:
        get = data.get
        call, response_id, mac = get("call"), get("response_id"), get("mac")
        caller = get("caller")
        if (
            type(call) is dict
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
        )

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"call": self.call.to_data(), "response_id": self.response_id}
        if self.mac is not None:
            data["mac"] = self.mac
        if self.caller is not None:
            data["caller"] = self.caller
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


@frozen
class RouteAdvert:
    """
    One destination a C{registry_sync} sender can reach.

    @ivar path: the nodes from the sender (exclusive) to the destination
        (inclusive); its length is the hop count from the sender.
    @ivar servers: the destination's servers and their methods.
    """

    path: tuple[str, ...]
    servers: Mapping[str, tuple[str, ...]] = field(factory=dict)


@frozen
class RegistrySync(Payload):
    """
    The sender's servers and everything it can reach (path vector).

    @ivar routes: destination node id to L{RouteAdvert}; C{None} when the
        sender does not route (an original node, or C{--disable-registry}).
    """

    TYPE = "registry_sync"
    servers: Mapping[str, tuple[str, ...]] = field(factory=dict)
    routes: Mapping[str, RouteAdvert] | None = None

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> RegistrySync:
        what = "registry_sync"
        servers = _server_table(data.get("servers", {}), what)
        raw_routes = _optional(data, "routes", dict, what)
        routes = None
        if raw_routes is not None:
            routes = {}
            for dest, advert in raw_routes.items():
                _check(advert, dest, dict, f"{what} routes")
                path = _string_list(_require(advert, "path", list, what), "path", what)
                if not path or path[-1] != dest:
                    raise MalformedMessage(
                        f"{what} path to {dest!r} does not end there", reason="bad_field"
                    )
                routes[dest] = RouteAdvert(path, _server_table(advert.get("servers", {}), what))
        return cls(servers, routes)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"servers": _server_json(self.servers)}
        if self.routes is not None:
            data["routes"] = {
                dest: {"path": list(advert.path), "servers": _server_json(advert.servers)}
                for dest, advert in self.routes.items()
            }
        return data


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
