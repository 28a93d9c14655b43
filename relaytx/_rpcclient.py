# -*- test-case-name: tests.test_client -*-
"""
The workings of L{relaytx.client}, on asyncio and transport-free: calls in
flight on one connection to a node's C{/ws/rpc}, matched to their answers
by id, each with its deadline; reconnection with back-off when the
connection drops; streams of items; and the errors a program sees.

L{RpcCore} talks to the node through a channel (L{relaytx._wsconn}, or a
fake in tests) that an I{opener} opens: a coroutine function taking the
core (the channel's listener) and returning an open channel, or raising
L{ChannelError}.

Every call is sent as C{remote_call} with the time left of its deadline,
so the node gives up when the caller does (SPEC section 5); a location-
transparent call leaves C{node_id} out.

What a call's failure means (the codes of SPEC section 5):

  - the node answered an error: L{RemoteError} with its code, message
    and data;
  - its deadline passed after it was sent: -32001, the node's own (sent
    at the deadline it started on receipt), or, if none comes within
    L{ANSWER_GRACE}, the client's (and the node is told to cancel it,
    C{$/cancelRequest});
  - the connection dropped after it was sent: -32006, its outcome is
    unknown (it may or may not have run);
  - its deadline passed before any connection could take it: -32002, it
    certainly did not run;
  - the client was closed meanwhile: L{ClientClosed}.

A call the channel took but never wrote (the connection ended first: the
node closed its end, or it dropped, in the same turn) was not sent: it
waits for the next connection like a call made while reconnecting.

Flow control (SPEC section 12): the node paces each stream by its
consumer. Ahead of a stream's request goes its window (C{$/streamCredit}
with C{window}), and every half window the items its consumer has taken
(with C{consumed}): the node's generator runs at most C{window} items
ahead of the consumer, and the connection is read on, so the answers of
other calls never wait behind a stream's items.

A node that does not pace streams so (from before it did) grants credit
as fast as the client reads: there, a stream that holds twice its window
stops reading from the connection (the channel holds the rest of the
read it was in), so the node's output backs up and its own flow control
makes the generator wait; reading resumes when the consumer takes one.
The answers of other calls then wait behind the stream's items, or fail
with -32001 at their deadline (and the node is told to cancel them).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import orjson

from relaytx._clientopts import ANSWER_GRACE
from relaytx._json import dumps, loads_exact, may_hold_wide_ints
from relaytx._wsconn import ChannelError, ChannelListener

#: The codes of SPEC section 5 a program is most likely to test for.
SERVER_ERROR = -32000
TIMED_OUT = -32001
UNREACHABLE = -32002
NOT_FOUND = -32003
ACCESS_DENIED = -32004
OVERLOADED = -32005
OUTCOME_UNKNOWN = -32006
CANCELLED = -32800
INTERNAL_ERROR = -32603

#: The largest request a client sends by default, in bytes: a node's
#: C{max_body_size} by default (a larger message closes the connection).
MAX_REQUEST = 1024 * 1024

#: The largest deadline a node accepts (SPEC section 5).
MAX_TIMEOUT = 86400.0

_log = logging.getLogger("relaytx.client")


class ClientError(Exception):
    """The root of the errors L{relaytx.client} raises on purpose."""


class RemoteError(ClientError):
    """
    A call failed: the node's JSON-RPC error, or one made here in the same
    terms (see the module docstring for the codes).

    @ivar code: the JSON-RPC error code (SPEC section 5).
    @ivar message: a one-line description.
    @ivar data: the error's details (C{node_id}, C{route}, and for -32000
        the exception's C{type} and C{message}); empty when there are none.
    """

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(code, message, data)
        self.code = code
        self.message = message
        self.data: dict[str, Any] = data if data is not None else {}

    def __str__(self) -> str:
        return f"error {self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"RemoteError({self.code}, {self.message!r}, {self.data!r})"

    @classmethod
    def from_jsonrpc(cls, error: Any) -> RemoteError:
        """:returns: the error an answer's C{error} member describes."""
        if not isinstance(error, dict):
            return cls(-32603, f"malformed error from the node: {error!r}")
        code = error.get("code")
        message = error.get("message")
        data = error.get("data")
        return cls(
            code if isinstance(code, int) and not isinstance(code, bool) else -32603,
            message if isinstance(message, str) else repr(message),
            data if isinstance(data, dict) else ({"data": data} if data is not None else None),
        )


class ConnectError(ClientError, ConnectionError):
    """
    The client could not open its first connection to the node: nothing
    listens there, the handshake failed, or the node refused it.

    @ivar status: the HTTP status of a refusal (401 for a missing or wrong
        token, 403 for a refused client), else C{None}.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ClientClosed(ClientError):
    """The client was closed before the call or stream could finish."""


class StreamingNotSupported(ClientError, NotImplementedError):
    """The node does not stream results yet (SPEC section 12)."""


class NotAStream(ClientError):
    """
    A stream was asked of a method that answered one result instead.

    @ivar result: that result.
    """

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


class Channel(Protocol):
    """An open connection to a node, as L{RpcCore} uses it."""

    def send(self, payload: bytes) -> None:
        """Send one message; raises L{ChannelError} if it is closed."""

    def close(self) -> None:
        """Close it; the listener hears of it when it is gone."""

    def pause_reading(self) -> None:
        """Stop reading messages for now."""

    def resume_reading(self) -> None:
        """Read messages again."""

    def unwritten(self) -> list[bytes]:
        """
        The messages L{send} took that never left, the connection having
        ended first (asked once it is lost).
        """


Opener = Callable[[ChannelListener], Awaitable[Channel]]


def _code_of(answer: dict[str, Any]) -> Any:
    """:returns: the code of an error answer, if it is one."""
    error = answer.get("error")
    return error.get("code") if isinstance(error, dict) else None


class _Call:
    __slots__ = ("deadline", "future", "graced", "id", "params", "sent", "timeout")

    def __init__(self, call_id: int, params: dict[str, Any], timeout: float, now: float) -> None:
        self.id = call_id
        self.params = params
        self.timeout = timeout
        self.deadline = now + timeout
        self.sent = False
        #: whether its deadline was moved on by ANSWER_GRACE, once it passed
        self.graced = False
        self.future: asyncio.Future[Any] | None = None


class _Stream(_Call):
    __slots__ = ("count", "full", "items", "outcome", "taken", "told", "waiter")

    def __init__(self, call_id: int, params: dict[str, Any], timeout: float, now: float) -> None:
        super().__init__(call_id, params, timeout, now)
        self.items: deque[Any] = deque()
        self.count = 0
        self.taken = 0  # items the consumer took
        self.told = 0  # of which the node was told ($/streamCredit)
        self.outcome: BaseException | None = None  # StopAsyncIteration once it ended
        self.waiter: asyncio.Future[None] | None = None
        self.full = False  # it holds its window of items: reading waits for its consumer

    def end(self, outcome: BaseException) -> None:
        if self.outcome is None:
            self.outcome = outcome
        self.wake()

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _request(call_id: int, params: dict[str, Any]) -> bytes:
    return dumps({"jsonrpc": "2.0", "method": "remote_call", "params": params, "id": call_id})


_CANCEL = b'{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":%d}}'
# A stream's pace (relaytx._http.WsItems): its window, before its request;
# then how many items its consumer took.
_WINDOW = b'{"jsonrpc":"2.0","method":"$/streamCredit","params":{"id":%d,"window":%d}}'
_CREDIT = b'{"jsonrpc":"2.0","method":"$/streamCredit","params":{"id":%d,"consumed":%d}}'


class _Deadlines:
    """
    The calls' deadlines, under one timer at the earliest: a heap of
    C{(deadline, id)}. An entry settled meanwhile stays in the heap and is
    skipped when it surfaces; the heap is rebuilt when such leftovers
    outnumber the calls still waiting.

    :param expire: called with each call whose deadline has come.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        calls: dict[int, _Call],
        expire: Callable[[_Call], None],
    ) -> None:
        self._loop = loop
        self._calls = calls
        self._expire = expire
        self._heap: list[tuple[float, int]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def add(self, entry: _Call) -> None:
        """Watch C{entry}'s deadline."""
        deadline = entry.deadline
        heapq.heappush(self._heap, (deadline, entry.id))
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)
        if len(self._heap) > 2 * len(self._calls) + 64:
            calls = self._calls
            self._heap = [
                (d, i) for d, i in self._heap if (e := calls.get(i)) is not None and e.deadline == d
            ]
            heapq.heapify(self._heap)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._due)

    def _due(self) -> None:
        self._timer = None
        now = self._loop.time()
        # (self._heap each time: an expiry may watch a call again, and so
        # rebuild the heap.)
        while self._heap and self._heap[0][0] <= now:
            deadline, call_id = heapq.heappop(self._heap)
            entry = self._calls.get(call_id)
            if entry is not None and entry.deadline == deadline:
                self._expire(entry)
        if self._heap:
            self._arm(self._heap[0][0])

    def stop(self) -> None:
        """Forget every deadline."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()


def _params(
    node_id: str | None,
    server: str,
    method: str,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any] | None,
    timeout: float,
) -> dict[str, Any]:
    """
    :returns: the params of C{remote_call} for a call.
    :raises ValueError: for a timeout out of range.
    """
    if not 0 < timeout <= MAX_TIMEOUT:  # also refuses nan
        raise ValueError(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
    params: dict[str, Any] = {"server_name": server, "method": method, "args": args}
    if node_id is not None:
        params["node_id"] = node_id
    if kwargs:
        params["kwargs"] = kwargs
    params["timeout"] = timeout
    return params


def _stream_outcome(url: str, entry: _Stream, answer: dict[str, Any]) -> BaseException:
    """:returns: how the answer to stream C{entry} ends it (C{StopAsyncIteration}: well)."""
    server, method = entry.params["server_name"], entry.params["method"]
    if "error" in answer:
        error = RemoteError.from_jsonrpc(answer["error"])
        if error.code == SERVER_ERROR and "async_generator" in error.message:
            # A node from before streaming: it tried to send the generator
            # itself as the result.
            return StreamingNotSupported(
                f"{url} does not stream results yet: {server}.{method} "
                "is an async generator it cannot send"
            )
        return error
    result = answer.get("result")
    if type(result) is int and result == entry.count:
        return StopAsyncIteration()
    return NotAStream(f"{server}.{method} answered a result, not a stream: use call()", result)


class _CallBook:
    """
    The calls and streams in flight on a client's connection: their ids,
    their deadlines, and what each answer (or notification) from the node
    settles. L{RpcCore} adds the connection itself.

    :param window: the items a stream's generator may run ahead of its
        consumer (see the module docstring).
    """

    def __init__(self, url: str, window: int, max_request: int = MAX_REQUEST) -> None:
        self.url = url
        self._max_request = max_request
        self._window = window
        self._half_window = max(1, window // 2)
        #: items a stream holds past which reading pauses: a node pacing the
        #: stream by this client's credit never sends that many ahead
        self._hold = 2 * window
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._deadlines = _Deadlines(self._loop, self._calls, self._expire)
        self._channel: Channel | None = None
        #: the streams holding their window: reading is paused while there are any
        self._full = 0
        self.closed = False
        #: why the connection is not there, for the errors of calls not sent
        self.last_error = ""
        #: answers that came for calls no longer waited on (timed out, cancelled)
        self.late_answers = 0

    def _dispatch(self, entry: _Call, request: bytes) -> None:
        """Send C{entry}'s C{request}, or keep it until it can be."""
        raise NotImplementedError

    # Calls.

    def _request(self, call_id: int, params: dict[str, Any]) -> bytes:
        """
        :returns: the request of call C{call_id}.
        :raises TypeError: if its arguments are not JSON.
        :raises RemoteError: (-32005) if it is over the node's message
            limit: the node would close the connection, and fail every call
            on it, rather than take it.
        """
        request = _request(call_id, params)
        if len(request) > self._max_request:
            raise RemoteError(
                OVERLOADED,
                f"Call not sent: its request is {len(request)} bytes, over the"
                f" {self._max_request}-byte message limit (max_request)",
                {"url": self.url},
            )
        return request

    def _start(self, entry: _Call) -> bytes:
        """Register C{entry}; :returns: its request (which checks its arguments are JSON)."""
        request = self._request(entry.id, entry.params)  # not JSON, too large: nothing kept
        self._calls[entry.id] = entry
        self._deadlines.add(entry)
        return request

    def cancel(self, call_id: int) -> None:
        """
        Give up the call or stream C{call_id}: forget it, and ask the node
        to cancel it if it was sent (C{$/cancelRequest}). Nothing happens
        if it has finished.
        """
        entry = self._calls.get(call_id)
        if entry is not None:
            self._fail(entry, asyncio.CancelledError())
            self._tell_cancel(entry)

    def _tell_cancel(self, entry: _Call) -> None:
        if entry.sent and self._channel is not None:
            try:
                self._channel.send(_CANCEL % entry.id)
            except ChannelError:
                pass  # closing: the node cancels what the connection carried

    def _fail(self, entry: _Call, error: BaseException) -> None:
        if self._calls.pop(entry.id, None) is None:
            return
        if isinstance(entry, _Stream):
            if entry.full:  # it takes no more items: they need not wait for it
                self._unfull(entry)
            entry.end(error)
            return
        future = entry.future
        if future is not None and not future.done():
            if isinstance(error, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(error)

    def _expire(self, entry: _Call) -> None:
        if entry.sent and not entry.graced:
            entry.graced = True
            entry.deadline += ANSWER_GRACE
            self._deadlines.add(entry)
            return
        if entry.sent:
            error = self._timed_out(entry)
        else:
            reason = f" ({self.last_error})" if self.last_error else ""
            error = RemoteError(
                UNREACHABLE,
                f"Call not sent: no connection to {self.url} within its {entry.timeout:g}s{reason}",
                {"url": self.url, "timeout": entry.timeout},
            )
        self._fail(entry, error)
        self._tell_cancel(entry)

    # What the channel says.

    def message_received(self, payload: bytes) -> None:
        """One message from the node: an answer, a batch of them, or a notification."""
        try:
            message = orjson.loads(payload)
            if may_hold_wide_ints(payload):
                # orjson reads an integer past 64 bits as a float; the
                # standard library reads it as the node wrote it.
                message = loads_exact(payload)
        except (orjson.JSONDecodeError, ValueError, RecursionError):
            _log.warning("%s sent a message that is not JSON: %.100r", self.url, payload)
            return
        if type(message) is dict:
            self._answered(message)
        elif type(message) is list:
            for item in message:
                if type(item) is dict:
                    self._answered(item)

    def _timed_out(self, entry: _Call) -> RemoteError:
        """:returns: the client's own -32001 for C{entry}."""
        return RemoteError(
            TIMED_OUT,
            f"Call timed out after {entry.timeout:g}s",
            {"url": self.url, "timeout": entry.timeout},
        )

    def _answered(self, answer: dict[str, Any]) -> None:
        call_id = answer.get("id")
        entry = self._calls.get(call_id) if type(call_id) is int else None
        if entry is None:
            if call_id is None and answer.get("method") == "$/stream":
                self._item(answer.get("params"))
            elif call_id is None and "error" in answer:
                _log.warning("%s answered an error for no call: %r", self.url, answer["error"])
            else:
                self.late_answers += 1
            return
        if entry.graced and _code_of(answer) != TIMED_OUT:
            # Past its deadline, only the node's own -32001 is taken (the
            # grace is for it): anything else is late, and the call failed
            # at its deadline.
            self.late_answers += 1
            self._fail(entry, self._timed_out(entry))
            return
        del self._calls[entry.id]
        future = entry.future
        if future is not None:
            if future.done():  # cancelled, and the canceller has not run yet
                return
            if "error" in answer:
                future.set_exception(RemoteError.from_jsonrpc(answer["error"]))
            elif "result" in answer and answer.get("jsonrpc") == "2.0":
                future.set_result(answer["result"])
            else:  # (not a node: an echo server, say)
                future.set_exception(_not_an_answer(self.url, answer))
            return
        assert isinstance(entry, _Stream)
        if entry.full:
            self._unfull(entry)
        entry.end(_stream_outcome(self.url, entry, answer))

    # Streams.

    async def _stream_items(self, params: dict[str, Any], timeout: float) -> AsyncIterator[Any]:
        if self.closed:
            raise ClientClosed(f"the client of {self.url} is closed")
        entry = _Stream(next(self._ids), params, timeout, self._loop.time())
        self._dispatch(entry, self._start(entry))
        try:
            while True:
                items = entry.items
                if items:
                    item = items.popleft()
                    entry.taken += 1
                    if entry.taken - entry.told >= self._half_window:
                        self._tell_credit(entry)
                    if entry.full and len(items) < self._hold:
                        self._unfull(entry)
                    yield item
                    continue
                if entry.outcome is not None:
                    if isinstance(entry.outcome, StopAsyncIteration):
                        return
                    raise entry.outcome
                entry.waiter = self._loop.create_future()
                await entry.waiter
        finally:
            self.cancel(entry.id)

    def _item(self, params: Any) -> None:
        if not isinstance(params, dict):
            return
        call_id = params.get("id")
        entry = self._calls.get(call_id) if type(call_id) is int else None
        if not isinstance(entry, _Stream):
            self.late_answers += 1
            return
        items = entry.items
        items.append(params.get("item"))
        entry.count += 1
        entry.wake()
        if len(items) >= self._hold and not entry.full:
            # The node does not pace the stream by our credit (a node from
            # before it did): read no further, so its output backs up and
            # its generator waits for this consumer (SPEC 12), whatever
            # else waits on the connection (see the module docstring).
            entry.full = True
            self._full += 1
            if self._full == 1 and self._channel is not None:
                self._channel.pause_reading()

    def _tell_credit(self, entry: _Stream) -> None:
        entry.told = entry.taken
        if entry.sent and self._channel is not None:
            try:
                self._channel.send(_CREDIT % (entry.id, entry.taken))
            except ChannelError:
                pass  # closing: the stream fails with the connection

    def _unfull(self, entry: _Stream) -> None:
        """C{entry} holds less than its window (or ended): read on unless another is full."""
        entry.full = False
        self._full -= 1
        if not self._full and self._channel is not None:
            self._channel.resume_reading()


def _not_an_answer(url: str, answer: dict[str, Any]) -> RemoteError:
    return RemoteError(
        INTERNAL_ERROR,
        f"{url} answered with no JSON-RPC 2.0 result or error: {answer!r:.200}",
        {"url": url},
    )


class RpcCore(_CallBook):
    """
    Calls over one connection (re-opened when it drops) to the node at
    C{url}.

    :param opener: opens a channel to the node (see the module docstring).
    :param reconnect: whether to reconnect when the connection drops;
        without, calls made while it is down fail at once (-32002).
    :param backoff: the first and the longest wait between reconnection
        attempts, in seconds; each wait doubles the last, less up to half
        of it at random (jitter).
    :param window: the items a stream's generator may run ahead of its
        consumer (see the module docstring).
    :param max_request: the largest request sent, in bytes (see L{MAX_REQUEST}).
    """

    def __init__(
        self,
        url: str,
        opener: Opener,
        *,
        reconnect: bool = True,
        backoff: tuple[float, float] = (0.1, 5.0),
        window: int = 256,
        max_request: int = MAX_REQUEST,
    ) -> None:
        super().__init__(url, window, max_request)
        self._opener = opener
        self._reconnect = reconnect
        self._backoff = backoff
        self._unsent: deque[_Call] = deque()
        self._reconnecting: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether a connection is open now."""
        return self._channel is not None

    # Connecting.

    async def open(self) -> None:
        """
        Open the first connection.

        :raises ConnectError: if it cannot be opened.
        """
        try:
            channel = await self._opener(self)
        except ChannelError as e:
            raise ConnectError(str(e), e.status) from None
        self._channel = channel

    async def _reconnect_loop(self) -> None:
        low, high = self._backoff
        for attempt in itertools.count():
            delay = min(high, low * 2**attempt)
            await asyncio.sleep(delay - random.uniform(0, delay / 2))
            try:
                channel = await self._opener(self)
            except ChannelError as e:
                if str(e) != self.last_error:
                    _log.warning("reconnecting to %s: %s", self.url, e)
                self.last_error = str(e)
                continue
            if self.closed:
                channel.close()
                return
            _log.info("reconnected to %s", self.url)
            self._reconnecting = None
            self._open(channel)
            return

    def _open(self, channel: Channel) -> None:
        self._channel = channel
        unsent, self._unsent = self._unsent, deque()
        now = self._loop.time()
        for entry in unsent:
            if self._calls.get(entry.id) is entry:
                entry.params["timeout"] = self._budget(entry, now)
                self._send(entry, _request(entry.id, entry.params))

    # Calls.

    def _budget(self, entry: _Call, now: float) -> float:
        return max(0.001, round(entry.deadline - now, 3))

    def call(
        self,
        node_id: str | None,
        server: str,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        timeout: float,
    ) -> tuple[int, asyncio.Future[Any]]:
        """
        Start a call of C{server.method(*args, **kwargs)} on C{node_id}
        (C{None}: wherever the node finds the server).

        :returns: the call's id (for L{cancel}) and a future of its result,
            failing with L{RemoteError} or L{ClientClosed}.
        :raises TypeError: if an argument is not a JSON value.
        :raises ValueError: for a timeout out of range.
        :raises ClientClosed: if the client is closed.
        """
        # The hot path of a pipelined client, so _params and _start inline.
        if self.closed:
            raise ClientClosed(f"the client of {self.url} is closed")
        if not 0 < timeout <= MAX_TIMEOUT:  # also refuses nan
            raise ValueError(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
        params: dict[str, Any] = {
            "server_name": server,
            "method": method,
            "args": args,
            "timeout": timeout,
        }
        if node_id is not None:
            params["node_id"] = node_id
        if kwargs:
            params["kwargs"] = kwargs
        call_id = next(self._ids)
        # (TypeError for what is not JSON, before anything is kept)
        request = self._request(call_id, params)
        loop = self._loop
        entry = _Call(call_id, params, timeout, loop.time())
        self._calls[call_id] = entry
        self._deadlines.add(entry)
        future = entry.future = loop.create_future()
        channel = self._channel
        if channel is None:
            self._dispatch(entry, request)
        else:  # the common case, inline: send now
            try:
                channel.send(request)
                entry.sent = True
            except ChannelError:  # closing: the listener hears of it soon
                self._unsent.append(entry)
        return entry.id, future

    def _dispatch(self, entry: _Call, request: bytes) -> None:
        if self._channel is not None:
            self._send(entry, request)
        elif self._reconnect:
            self._unsent.append(entry)
        else:
            reason = f": {self.last_error}" if self.last_error else ""
            self._fail(entry, RemoteError(UNREACHABLE, f"not connected to {self.url}{reason}"))

    def _send(self, entry: _Call, request: bytes) -> None:
        channel = self._channel
        assert channel is not None
        try:
            if isinstance(entry, _Stream):  # its pace, ahead of it
                channel.send(_WINDOW % (entry.id, self._window))
                entry.told = entry.taken  # (a stream sent again starts over)
            channel.send(request)
        except ChannelError:  # closing: the listener hears of it soon
            self._unsent.append(entry)
            return
        entry.sent = True

    def channel_lost(self, channel: Any, reason: str) -> None:
        """
        The connection dropped: calls sent on it fail; those it took but
        never wrote wait for the next one with the calls not sent yet;
        reconnect.
        """
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        current = self._channel
        if current is None or channel is not current:
            return
        self._channel = None
        self.last_error = reason
        self._take_back(current.unwritten())
        lost = [entry for entry in self._calls.values() if entry.sent]
        for entry in lost:
            if entry.graced:  # (its deadline had passed: it timed out)
                self._fail(entry, self._timed_out(entry))
                continue
            self._fail(
                entry,
                RemoteError(
                    OUTCOME_UNKNOWN,
                    f"the connection to {self.url} was lost after the call was sent "
                    f"({reason}): it may or may not have run",
                    {"url": self.url, "reason": reason},
                ),
            )
        if self.closed:
            return
        if self._reconnect:
            _log.warning("connection to %s lost (%s); reconnecting", self.url, reason)
            self._reconnecting = self._loop.create_task(self._reconnect_loop())
        else:
            for entry in list(self._unsent):
                self._dispatch(entry, b"")
            self._unsent.clear()

    def _take_back(self, unwritten: list[bytes]) -> None:
        """The requests in C{unwritten} never left: their calls were not sent."""
        calls = self._calls
        taken: list[_Call] = []
        for payload in unwritten:
            try:
                message = orjson.loads(payload)
            except orjson.JSONDecodeError:  # pragma: no cover  # this client wrote it
                continue
            call_id = message.get("id") if type(message) is dict else None
            entry = calls.get(call_id) if type(call_id) is int else None
            if entry is not None and entry.sent:  # (not a $/cancelRequest)
                entry.sent = False
                taken.append(entry)
        if taken:  # ahead of those the closing channel refused, made after them
            taken.extend(self._unsent)
            self._unsent = deque(taken)

    # Streams.

    def open_stream(
        self,
        node_id: str | None,
        server: str,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        timeout: float,
    ) -> AsyncIterator[Any]:
        """
        Stream the items of C{server.method(*args, **kwargs)} (SPEC section
        12); the request leaves when the first item is asked for.

        :returns: an async iterator of the items; leaving it early (C{break},
            C{aclose()}) or cancelling the task that reads it cancels the
            stream at the node.
        """
        if self.closed:
            raise ClientClosed(f"the client of {self.url} is closed")
        params = _params(node_id, server, method, args, kwargs, timeout)
        return self._stream_items(params, timeout)

    # Closing.

    async def close(self, timeout: float = 2.0) -> None:
        """
        Close the client: calls and streams in flight fail with
        L{ClientClosed} (the node cancels them as the connection closes),
        and the connection closes with code 1000.
        """
        if self.closed:
            return
        self.closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            self._reconnecting = None
        self._deadlines.stop()
        for entry in list(self._calls.values()):
            self._fail(entry, ClientClosed(f"the client of {self.url} was closed"))
        self._unsent.clear()
        channel, self._channel = self._channel, None
        if channel is not None:
            self._lost = self._loop.create_future()
            channel.close()
            try:
                async with asyncio.timeout(timeout + 1):
                    await self._lost
            except TimeoutError:
                pass
