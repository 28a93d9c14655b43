# -*- test-case-name: tests.test_client -*-
"""
A client for Python programs that are not nodes (SPEC section 14): calls
to servers anywhere in the mesh through one node's C{/ws/rpc}, with no
Twisted reactor (Twisted is not even imported).

asyncio::

    import relaytx.client

    async with relaytx.client.connect("http://127.0.0.1:8080") as c:
        await c.call("counter_server", "increment", 5)    # wherever it runs
        await c.counter_server.increment(5)                # the same, as a proxy
        await c.on("node2").counter_server.get()           # on node2 explicitly
        await c.on(timeout=2).counter_server.get()         # a 2 s deadline
        async for item in c.stream("ticker", "ticks", 10):  # a streamed result
            ...

blocking (the same, without C{await}; safe to share between threads)::

    with relaytx.client.connect_sync("http://127.0.0.1:8080") as c:
        c.counter_server.increment(5)

Many calls may be in flight on the one connection (C{asyncio.gather}, or
several threads with the blocking client). When the connection drops, the
client reconnects with back-off; calls in flight then fail with -32006 (it
is unknown whether they ran), and calls made meanwhile, or taken by the
connection in the turn it ended but never written, wait for the new
connection within their deadline (-32002 if none comes: they did not run).

The node paces each stream by its consumer: the client tells it the
stream's window (256 items) and how many items the loop has taken, so
the generator runs at most that far ahead (SPEC section 12) while the
answers of other calls on the connection come as usual (a loop may await
calls between its items).

Cancelling the task awaiting a call fails it at once with
C{asyncio.CancelledError} and asks the node to cancel it.

Errors: L{RemoteError} (C{code}, C{message}, C{data}; the codes are those
of SPEC section 5, e.g. L{TIMED_OUT}), L{ConnectError} when the first
connection cannot be made, L{ClientClosed} after L{Client.close}, and
L{StreamingNotSupported} from a node that does not stream yet. Arguments
that are not JSON values raise C{TypeError} before anything is sent.

Server names that are not Python identifiers (or clash with a client
method: C{call}, C{stream}, C{on}, C{invoke}, C{close}, C{url}) are
reached with C{c["my-server"].method(...)}. A method that takes a keyword
argument called C{timeout} is called with L{Client.invoke}.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ssl as _ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Generator, Iterator
from functools import partial
from types import TracebackType
from typing import Any

from relaytx._clientopts import auth_headers, is_secure, ssl_context, ws_rpc_url
from relaytx._rpcclient import (
    ACCESS_DENIED,
    CANCELLED,
    MAX_REQUEST,
    NOT_FOUND,
    OUTCOME_UNKNOWN,
    OVERLOADED,
    SERVER_ERROR,
    TIMED_OUT,
    UNREACHABLE,
    ClientClosed,
    ClientError,
    ConnectError,
    NotAStream,
    RemoteError,
    RpcCore,
    StreamingNotSupported,
)
from relaytx._wsconn import ChannelListener, WebSocketChannel, open_channel

#: Seconds a call may take unless told otherwise (as C{node.call}).
DEFAULT_TIMEOUT = 30.0


class _Target:
    """Calls to one node (or wherever the mesh finds the server) with one deadline."""

    def __init__(self, core: RpcCore, node_id: str | None, timeout: float) -> None:
        self._core = core
        self._node_id = node_id
        self._timeout = timeout

    async def invoke(
        self,
        server: str,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        node: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """
        Call C{server.method(*args, **kwargs)}: the explicit form of
        L{call}, for any keyword arguments.

        :param node: the node to run it on, instead of this target's.
        :param timeout: seconds, instead of this target's.
        :returns: the method's result.
        :raises RemoteError: if the call fails (see the module docstring).
        """
        core = self._core
        call_id, future = core.call(
            node if node is not None else self._node_id,
            server,
            method,
            args,
            kwargs,
            timeout if timeout is not None else self._timeout,
        )
        try:
            return await future
        except asyncio.CancelledError:
            core.cancel(call_id)
            raise

    def call(
        self, server: str, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Awaitable[Any]:
        """
        Call C{server.method(*args, **kwargs)}.

        :param timeout: seconds (default: the client's, 30).
        :returns: an awaitable of the method's result.
        :raises RemoteError: if the call fails (see the module docstring).
        """
        return self.invoke(server, method, args, kwargs, timeout=timeout)

    def stream(
        self, server: str, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """
        The items an async-generator method yields, as they come (SPEC
        section 12). Leaving the loop early (C{break}), C{aclose()} or
        cancelling the task cancels the stream at the node. Once 256 items
        wait for the loop, the client stops reading the connection until
        the loop takes one: other calls' answers wait meanwhile (see the
        module docstring).

        :param timeout: seconds for the whole stream (default: the client's).
        :raises StreamingNotSupported: from a node that cannot stream yet.
        :raises NotAStream: if the method answered a plain result.
        """
        return self._core.open_stream(
            self._node_id,
            server,
            method,
            args,
            kwargs,
            timeout if timeout is not None else self._timeout,
        )

    def on(self, node_id: str | None = None, *, timeout: float | None = None) -> _Target:
        """
        :param node_id: the node the calls run on; C{None}: wherever the
            mesh finds the server (the nearest instance).
        :param timeout: their deadline in seconds (default: this one's).
        :returns: the calls to C{node_id}: C{.call}, C{.stream} and proxies.
        """
        return _Target(self._core, node_id, timeout if timeout is not None else self._timeout)

    def __getattr__(self, name: str) -> ServerProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return ServerProxy(self, name)

    def __getitem__(self, name: str) -> ServerProxy:
        return ServerProxy(self, name)


class ServerProxy:
    """A server, reached through a client: C{proxy.method(*args, **kwargs)}."""

    def __init__(self, target: Any, name: str) -> None:
        self._target = target
        self._name = name

    def __getattr__(self, method: str) -> MethodProxy:
        if method.startswith("_"):
            raise AttributeError(method)
        return MethodProxy(self._target, self._name, method)

    def __getitem__(self, method: str) -> MethodProxy:
        return MethodProxy(self._target, self._name, method)

    def __repr__(self) -> str:
        return f"<ServerProxy {self._name}>"


class MethodProxy:
    """
    A method of a server: calling it calls the method (an awaitable with
    the asyncio client, the result with the blocking one); C{.stream(...)}
    streams its items.
    """

    def __init__(self, target: Any, server: str, method: str) -> None:
        self._target = target
        self._server = server
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target.invoke(self._server, self._method, args, kwargs)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        """:returns: the items of this method's stream (see L{Client.stream})."""
        return self._target.stream(self._server, self._method, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<MethodProxy {self._server}.{self._method}>"


class Client(_Target):
    """
    An asyncio client of one node (see the module docstring); made by
    L{connect}.
    """

    def __init__(self, core: RpcCore, timeout: float) -> None:
        super().__init__(core, None, timeout)

    @property
    def url(self) -> str:
        """The C{/ws/rpc} address of the node."""
        return self._core.url

    @property
    def connected(self) -> bool:
        """Whether the connection is open now (it is re-opened when it drops)."""
        return self._core.connected

    async def close(self) -> None:
        """Close the connection; calls still in flight fail with L{ClientClosed}."""
        await self._core.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _opener(
    url: str,
    token: str | None,
    cacert: str | None,
    cert: str | None,
    key: str | None,
    ssl: _ssl.SSLContext | None,
    server_hostname: str | None,
    connect_timeout: float,
    ping_interval: float | None,
    max_size: int,
) -> tuple[str, Any]:
    """:returns: the C{/ws/rpc} URL and the opener of its channels (checking the options)."""
    address = ws_rpc_url(url)
    headers = auth_headers(token)
    tls_files = cacert is not None or cert is not None or key is not None
    if (tls_files or ssl is not None or server_hostname is not None) and not is_secure(address):
        raise ValueError(f"TLS options need an https:// or wss:// address, not {url!r}")
    if tls_files and ssl is not None:
        raise ValueError("give either ssl or cacert/cert/key, not both")
    if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
        raise ValueError(f"ssl takes an ssl.SSLContext (or give cacert/cert/key), not {ssl!r}")
    context = ssl_context(cacert, cert, key) if tls_files else ssl

    def open_one(listener: ChannelListener) -> Awaitable[WebSocketChannel]:
        return open_channel(
            address,
            listener,
            headers=headers,
            ssl=context,
            server_hostname=server_hostname,
            open_timeout=connect_timeout,
            ping_interval=ping_interval,
            # "Silent for as long again": the ping's answer has the interval.
            ping_timeout=ping_interval if ping_interval is not None else 20.0,
            max_size=max_size,
        )

    return address, open_one


class connect:  # used as a function: ``async with connect(...)``
    """
    Connect to the node at C{url}: C{async with connect(url) as c:} (the
    connection closes at the end), or C{c = await connect(url)}.

    :param url: the node's address: C{http://h:p} or C{ws://h:p} (its
        C{/ws/rpc}), C{https://h:p} or C{wss://h:p} for TLS, or C{h:p}.
    :param token: a bearer token, sent as C{Authorization: Bearer TOKEN}
        (SPEC section 10).
    :param cacert: the PEM file of a private CA that signed the node's
        certificate (default: the system's trust store).
    :param cert: a PEM client certificate, for mutual TLS; C{key} is its
        private key if not in the same file.
    :param ssl: a ready TLS context instead of C{cacert}/C{cert}/C{key}.
    :param server_hostname: the name the node's certificate must carry, if
        not the URL's host.
    :param timeout: the default deadline of each call, in seconds.
    :param connect_timeout: seconds each connection attempt may take.
    :param reconnect: whether to reconnect when the connection drops.
    :param backoff: the first and the longest wait between reconnection
        attempts, in seconds.
    :param ping_interval: seconds of silence after which the node is
        pinged; a node silent for as long again is taken for gone, and the
        connection dropped (C{None}: never ping). The silence is checked
        every C{ping_interval}, so a node that stops answering is pinged
        within two intervals and dropped within three.
    :param max_size: the largest message accepted from the node, in bytes.
    :param max_request: the largest request sent, in bytes: the node's
        C{[limits] max_body_size} (1 MiB by default), past which it would
        close the connection, failing every call on it. A call whose
        request is larger fails at once with L{RemoteError} -32005, unsent.
    :raises ConnectError: (when awaited) if the first connection fails.
    :raises ValueError: for inconsistent options or unreadable TLS files.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = 10.0,
        reconnect: bool = True,
        backoff: tuple[float, float] = (0.1, 5.0),
        ping_interval: float | None = 20.0,
        max_size: int = 64 * 1024 * 1024,
        max_request: int = MAX_REQUEST,
    ) -> None:
        self._max_request = max_request
        self._address, self._open_one = _opener(
            url, token, cacert, cert, key, ssl, server_hostname, connect_timeout,
            ping_interval, max_size,
        )  # fmt: skip
        if not 0 < timeout <= 86400:
            raise ValueError("timeout must be a number of seconds in (0, 86400]")
        self._timeout = timeout
        self._reconnect = reconnect
        self._backoff = backoff
        self._client: Client | None = None

    async def _connect(self) -> Client:
        core = RpcCore(
            self._address, self._open_one, reconnect=self._reconnect, backoff=self._backoff,
            max_request=self._max_request,
        )  # fmt: skip
        await core.open()
        return Client(core, self._timeout)

    def __await__(self) -> Generator[Any, None, Client]:
        return self._connect().__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._connect()
        return self._client

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()


# The blocking flavour: the same core, on an event loop of its own thread.


class _SyncTarget:
    """As L{_Target}, blocking: each call returns its result."""

    def __init__(self, client: SyncClient, node_id: str | None, timeout: float) -> None:
        self._client = client
        self._node_id = node_id
        self._timeout = timeout

    def invoke(
        self,
        server: str,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        node: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """As L{Client.invoke}, blocking until the result is there."""
        return self._client._run_call(
            node if node is not None else self._node_id,
            server,
            method,
            args,
            kwargs,
            timeout if timeout is not None else self._timeout,
        )

    def call(
        self, server: str, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """As L{Client.call}, blocking: :returns: the method's result."""
        return self.invoke(server, method, args, kwargs, timeout=timeout)

    def stream(
        self, server: str, method: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        """As L{Client.stream}, as a plain iterator; closing it cancels the stream."""
        return self._client._run_stream(
            self._node_id,
            server,
            method,
            args,
            kwargs,
            timeout if timeout is not None else self._timeout,
        )

    def on(self, node_id: str | None = None, *, timeout: float | None = None) -> _SyncTarget:
        """As L{Client.on}."""
        return _SyncTarget(self._client, node_id, timeout if timeout is not None else self._timeout)

    def __getattr__(self, name: str) -> ServerProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return ServerProxy(self, name)

    def __getitem__(self, name: str) -> ServerProxy:
        return ServerProxy(self, name)


class SyncClient(_SyncTarget):
    """
    A blocking client of one node (see the module docstring); made by
    L{connect_sync}. Its connection lives on an event loop in a thread of
    its own, so it stays up (and is re-opened) between calls; any thread
    may call.
    """

    def __init__(self, options: connect) -> None:
        super().__init__(self, None, options._timeout)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="relaytx-client", daemon=True
        )
        self._thread.start()
        try:
            self._core: RpcCore = self._wait(self._open(options))
        except BaseException:
            self._stop()
            raise

    async def _open(self, options: connect) -> RpcCore:
        client = await options._connect()
        return client._core

    def _wait(self, coro: Any) -> Any:
        if threading.get_ident() == self._thread.ident:
            coro.close()
            raise RuntimeError("a blocking relaytx client cannot be used from its own loop")
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop is closed
            coro.close()
            raise ClientClosed("the client is closed") from None
        return future.result()

    @property
    def url(self) -> str:
        """The C{/ws/rpc} address of the node."""
        return self._core.url

    @property
    def connected(self) -> bool:
        """Whether the connection is open now."""
        return self._core.connected

    def _run_call(
        self,
        node_id: str | None,
        server: str,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        timeout: float,
    ) -> Any:
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("a blocking relaytx client cannot be used from its own loop")
        waiter: concurrent.futures.Future[Any] = concurrent.futures.Future()
        started: list[int] = []
        start = partial(self._start, waiter, started, node_id, server, method, args, kwargs)
        try:
            self._loop.call_soon_threadsafe(start, timeout)
        except RuntimeError:  # the loop is closed
            raise ClientClosed(f"the client of {self.url} is closed") from None
        try:
            # The core settles every call by its deadline; the margin is for
            # a loop that stopped (the client was closed meanwhile).
            return waiter.result(timeout + 5)
        except concurrent.futures.TimeoutError:
            raise ClientClosed(f"the client of {self.url} stopped answering") from None
        except BaseException:
            if not waiter.done():  # interrupted (KeyboardInterrupt): give the call up
                self._loop.call_soon_threadsafe(self._cancel, started)
            raise

    def _start(
        self,
        waiter: concurrent.futures.Future[Any],
        started: list[int],
        node_id: str | None,
        server: str,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        timeout: float,
    ) -> None:
        try:
            call_id, future = self._core.call(node_id, server, method, args, kwargs, timeout)
        except Exception as e:
            waiter.set_exception(e)
            return
        started.append(call_id)
        future.add_done_callback(partial(_settle, waiter))

    def _cancel(self, started: list[int]) -> None:
        for call_id in started:
            self._core.cancel(call_id)

    def _run_stream(
        self,
        node_id: str | None,
        server: str,
        method: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        timeout: float,
    ) -> Iterator[Any]:
        reader = _StreamReader(
            self._core.open_stream(node_id, server, method, args, kwargs, timeout)
        )
        try:
            while True:
                try:
                    yield self._wait(reader.next())
                except StopAsyncIteration:
                    return
        finally:
            # Also when the wait for an item was interrupted (Ctrl-C): that
            # item's task, still running on the loop, is cancelled first.
            if not self._loop.is_closed():
                self._wait(reader.close())

    def close(self) -> None:
        """Close the connection and stop the client's thread."""
        if self._loop.is_closed():
            return
        try:
            self._wait(self._core.close())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _settle(waiter: concurrent.futures.Future[Any], future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        waiter.cancel()
    elif (error := future.exception()) is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(future.result())


class _StreamReader:
    """
    A stream's items, read on the client's loop for a blocking reader: the
    item being waited for is a task of its own, so that a reader who stops
    waiting (interrupted) can have it cancelled before the stream is
    closed (an async generator cannot be closed while it runs).
    """

    def __init__(self, items: AsyncIterator[Any]) -> None:
        self._items = items
        self._task: asyncio.Future[Any] | None = None

    async def next(self) -> Any:
        self._task = asyncio.ensure_future(self._items.__anext__())
        return await self._task

    async def close(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        close = getattr(self._items, "aclose", None)
        if close is not None:
            await close()


def connect_sync(url: str, **options: Any) -> SyncClient:
    """
    Connect to the node at C{url}, blocking: C{with connect_sync(url) as
    c:}. Takes the options of L{connect}.

    :raises ConnectError: if the first connection fails.
    """
    return SyncClient(connect(url, **options))


__all__ = [
    "ACCESS_DENIED",
    "CANCELLED",
    "DEFAULT_TIMEOUT",
    "NOT_FOUND",
    "OUTCOME_UNKNOWN",
    "OVERLOADED",
    "SERVER_ERROR",
    "TIMED_OUT",
    "UNREACHABLE",
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnectError",
    "MethodProxy",
    "NotAStream",
    "RemoteError",
    "ServerProxy",
    "StreamingNotSupported",
    "SyncClient",
    "connect",
    "connect_sync",
]
