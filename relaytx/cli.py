# -*- test-case-name: tests.test_cli -*-
"""
The C{relay} console script.

  - C{relay node [options]} runs a node in the foreground (the options of
    C{twistd relay}, without twistd's own); logs go to standard error;
    SIGTERM or SIGINT stop it cleanly with exit status 0.
  - C{relay call URL SERVER METHOD [ARGS...] [--node NODE_ID] [--timeout S]
    [--token TOKEN]}
    calls a server through the node at URL and prints the result as JSON.
    Each ARG is parsed as JSON when it is valid JSON, else taken as a
    string. Exit status: 0 on success, 1 when the call answered an error
    (its code and message are printed on standard error), 2 for bad usage
    or when the node cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from typing import Any

USAGE = """usage: relay node [options]            run a node (relay node --help)
       relay call URL SERVER METHOD [ARGS...] [--node NODE_ID] [--timeout S]
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the C{relay} console script."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.stderr.write(f"relay: error: give a command\n{USAGE}")
        return 2
    if args[0] in {"-h", "--help", "help"}:
        sys.stdout.write(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command == "node":
        return run_node(rest)
    if command == "call":
        return call(rest)
    sys.stderr.write(f"relay: error: unknown command {command!r}\n{USAGE}")
    return 2


def run_node(argv: list[str]) -> int:
    """Run a node until SIGTERM/SIGINT; returns the exit status."""
    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from relaytx.tap import makeService, run_options

    options = run_options(argv)
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    node = makeService(options)
    node.privilegedStartService()
    # A shell starts background jobs with SIGINT ignored, and Twisted keeps
    # an ignored SIGINT ignored: `relay node &` from a script could then
    # not be stopped by SIGINT. SIGINT stops a node wherever it was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reactor.callWhenRunning(node.startService)
    reactor.addSystemEventTrigger("before", "shutdown", node.stopService)
    reactor.run()
    return node.exit_status


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _parse_arg(text: str) -> Any:
    """
    :returns: C{text} parsed as JSON when it is valid JSON (C{NaN} and
        C{Infinity}, which Python's parser accepts, are not), else C{text}.
    """
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError:
        return text


def call(argv: list[str]) -> int:
    """Make one call through a node's JSON-RPC endpoint; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="relay call", description="Call SERVER.METHOD through the node at URL."
    )
    parser.add_argument("url", help="the node's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("server")
    parser.add_argument("method")
    parser.add_argument("args", nargs="*", help="arguments: JSON where valid, else strings")
    parser.add_argument("--node", help="call the server on this node id")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument(
        "--token",
        default=os.environ.get("RELAYTX_TOKEN"),
        help="bearer token for a node with [http.tokens] (default: $RELAYTX_TOKEN)",
    )
    ns = parser.parse_intermixed_args(argv)
    if not 0 < ns.timeout <= 86400:  # also refuses nan, which JSON cannot carry
        parser.error("--timeout must be a number of seconds in (0, 86400]")
    args = [_parse_arg(a) for a in ns.args]
    if ns.node:
        request = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "remote_call",
            "params": {
                "node_id": ns.node,
                "server_name": ns.server,
                "method": ns.method,
                "args": args,
                "timeout": ns.timeout,
            },
        }
    else:
        request = {"jsonrpc": "2.0", "id": 1, "method": f"{ns.server}.{ns.method}", "params": args}
    url = ns.url.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    headers = {"Content-Type": "application/json"}
    if ns.token:
        headers["Authorization"] = f"Bearer {ns.token}"
    http = urllib.request.Request(url + "/rpc", data=json.dumps(request).encode(), headers=headers)
    try:
        with urllib.request.urlopen(http, timeout=ns.timeout + 5) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:  # 401, 403: refused before any call
        try:
            why = json.loads(e.read()).get("error", e.reason)
        except (ValueError, AttributeError, OSError):
            why = e.reason
        sys.stderr.write(f"relay: error: {url}/rpc answered {e.code}: {why}\n")
        return 2
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        sys.stderr.write(f"relay: error: cannot call {url}/rpc: {reason}\n")
        return 2
    if not isinstance(answer, dict) or not isinstance(answer.get("error", {}), dict):
        sys.stderr.write(f"relay: error: {url}/rpc answered no JSON-RPC response\n")
        return 2
    if "error" in answer:
        error = answer["error"]
        sys.stderr.write(f"error {error.get('code')}: {error.get('message')}\n")
        if error.get("data"):
            sys.stderr.write(json.dumps(error["data"]) + "\n")
        return 1
    sys.stdout.write(json.dumps(answer.get("result")) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
