"""
An asyncio program that is not a node, calling servers across a mesh of
three nodes through one of them with C{relaytx.client} (the README's quick
start): node1 runs C{examples/counter.py}; node2 dials node1 and node3
dials node2, so node3 is two hops from the counter.

    python examples/mesh_client.py [URL]    # default http://127.0.0.1:8082 (node3)
"""

import asyncio
import sys
import time

import relaytx.client


async def connected(url: str, within: float = 15.0) -> relaytx.client.Client:
    """
    Connect to the node at C{url} once it listens, and once the counter is
    known there: nodes started a moment ago are still linking, and their
    routes take a moment to reach each other.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            c = await relaytx.client.connect(url)
            break
        except relaytx.client.ConnectError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    while True:
        try:
            await c.counter_server.get()
            return c
        except relaytx.client.RemoteError as e:  # -32601: not known there yet
            if e.code not in (-32601, -32002) or time.monotonic() > deadline:
                await c.close()
                raise
            await asyncio.sleep(0.2)


async def main(url: str) -> None:
    async with await connected(url) as c:
        info = await c.node.info()
        print(f"connected to {info['node_id']} ({c.url})")

        # Found by name, wherever it runs (node1, two hops away).
        print("counter_server.increment(5) ->", await c.counter_server.increment(5))

        # On a named node, with a deadline of its own.
        print("node1's count ->", await c.on("node1", timeout=5).counter_server.get())

        # Many calls in flight at once on the one connection.
        started = time.perf_counter()
        counts = await asyncio.gather(*(c.counter_server.increment() for _ in range(1000)))
        elapsed = time.perf_counter() - started
        print(f"1000 increments in flight at once: {elapsed * 1000:.0f} ms, count {max(counts)}")

        # Every node hosts the built-in server `node`.
        for node_id in ("node1", "node2", "node3"):
            pong = await c.on(node_id).node.ping()
            print(f"{node_id}.ping -> {pong['pong']}")

        # Failures are RemoteErrors with the codes of SPEC section 5.
        try:
            await c.on("node9").node.ping()
        except relaytx.client.RemoteError as e:
            print(f"node9.ping -> error {e.code}: {e.message}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8082"))
