"""
A client of the persistent JSON-RPC entry (C{/ws/rpc}): many calls in flight
on one WebSocket, answers matched by id.

    python examples/ws_client.py ws://127.0.0.1:8080/ws/rpc 1000

(with a node running C{examples/counter.py}). Uses the C{websockets}
package (C{pip install websockets}).
"""

import json
import sys
import time

from websockets.sync.client import connect


def main(url: str, count: int) -> None:
    with connect(url) as ws:
        started = time.perf_counter()
        for i in range(count):  # send them all, then read the answers
            request = {"jsonrpc": "2.0", "method": "counter_server.increment", "id": i}
            ws.send(json.dumps(request))
        answers = {}
        for _ in range(count):
            answer = json.loads(ws.recv(timeout=30))
            answers[answer["id"]] = answer
        elapsed = time.perf_counter() - started
    errors = [a for a in answers.values() if "error" in a]
    print(f"{count} calls in {elapsed:.3f}s ({count / elapsed:.0f}/s), {len(errors)} errors")
    print("last count:", max(a.get("result", 0) for a in answers.values()))


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080/ws/rpc",
        int(sys.argv[2]) if len(sys.argv) > 2 else 1000,
    )
