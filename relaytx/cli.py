# -*- test-case-name: tests.test_cli -*-
"""
The C{relay} console script.

  - C{relay node [options]} runs a node in the foreground (the options of
    C{twistd relay}, without twistd's own, plus C{--reactor NAME}); logs go
    to standard error; SIGTERM or SIGINT stop it cleanly with exit status 0.
  - C{relay call URL SERVER METHOD [ARGS...] [--node NODE_ID] [--timeout S]
    [--token T] [--cacert F] [--cert F] [--key F] [--trace]} calls a server
    through the node at URL and prints the result as JSON. Each ARG is
    parsed as JSON when it is valid JSON, else taken as a string. The call
    carries its deadline to the node (C{remote_call}), with or without
    C{--node}. Exit status: 0 on success, 1 when the call answered an
    error (its code and message are printed on standard error), 2 for bad
    usage or when the node cannot be reached. With C{--trace}, the call
    starts a new trace and asks for its path, printed after the result:
    each node it passed and the time spent there (SPEC section 13).
  - C{relay status URL [--json] [--all]} with the same client options
    prints the whole mesh as the node at URL sees it: nodes, links with
    their RTT and health, servers per node, and what is unhealthy, in one
    screen (C{--json}: the view as JSON, for scripts). Exit status: 0 when
    nothing is unhealthy, 1 when something is, 2 for bad usage or when the
    node cannot be reached.
  - C{relay --version} prints relaytx's version.

Start-up time matters for C{relay call}: this module imports what a
command needs when the command runs (Twisted only for C{relay node}).
"""

from __future__ import annotations

import re
import sys
from itertools import islice

from relaytx import __version__

TYPE_CHECKING = False  # typing itself is not imported: it costs start-up time
if TYPE_CHECKING:
    import ssl
    from typing import Any

#: The reactor C{relay node} runs on unless told otherwise (SPEC section
#: 14; the README gives the figures behind the choice).
DEFAULT_REACTOR = "default"

USAGE = """usage: relay node [options]            run a node (relay node --help)
       relay call URL SERVER METHOD [ARGS...] [--node NODE_ID] [--timeout S] [--trace]
                  [--token TOKEN] [--cacert FILE] [--cert FILE] [--key FILE]
       relay status URL [--json] [--all] [--timeout S]
                  [--token TOKEN] [--cacert FILE] [--cert FILE] [--key FILE]
       relay --version
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the C{relay} console script; :returns: the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.stderr.write(f"relay: error: give a command\n{USAGE}")
        return 2
    if args[0] in {"-h", "--help", "help"}:
        sys.stdout.write(USAGE)
        return 0
    if args[0] in {"--version", "-V", "version"}:
        sys.stdout.write(f"relaytx {__version__}\n")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        sys.stderr.write(f"relay: error: unknown command {args[0]!r}\n{USAGE}")
        return 2
    return command(args[1:])


# relay node


#: The long options of C{relay node} (relaytx.tap's, which imports the
#: reactor: not imported here), those that take a value marked C{=}, as
#: getopt lists them: it takes any unique beginning of one for it.
_LONG_OPTIONS = (
    "node-id=",
    "port=",
    "interface=",
    "secret-file=",
    "config=",
    "ping-interval=",
    "log-format=",
    "reactor=",
    "add-peer=",
    "app=",
    "disable-registry",
    "version",
    "help",
)

#: The short options that take a value as the next argument.
_SHORT_WITH_VALUE = frozenset({"-p", "-c"})


def _long_option(arg: str) -> tuple[str | None, str | None]:
    """
    :returns: the long option C{arg} (C{--NAME} or C{--NAME=VALUE}) names,
        as getopt reads it (an exact name, or the one name it begins; with
        its C{=} when it takes a value), and its value if C{arg} holds one.
    """
    name, equals, value = arg[2:].partition("=")
    names = [o for o in _LONG_OPTIONS if o.rstrip("=") == name]
    if not names and name:
        names = [o for o in _LONG_OPTIONS if o.startswith(name)]
    return (names[0] if len(names) == 1 else None), (value if equals else None)


def take_reactor(argv: list[str]) -> tuple[str, list[str]]:
    """
    Find C{--reactor NAME} (C{--reactor=NAME}, C{-r NAME}, C{-rNAME}, and
    any beginning of C{--reactor} the option parser takes for it, such as
    C{--react NAME}) in node options: it must be installed before anything
    imports the reactor, so before the other options are parsed.

    :returns: the reactor's name (L{DEFAULT_REACTOR} if none is given) and
        the options without it.
    """
    name, rest = DEFAULT_REACTOR, []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            rest.append(arg)
            rest.extend(args)
            break
        if arg.startswith("--"):
            option, value = _long_option(arg)
            if option == "reactor=":
                name = next(args, "") if value is None else value
            elif option is not None and option.endswith("=") and value is None:
                # Its value is no option, even one that starts with -r
                # (--node-id -r1: a node id).
                rest.extend((arg, *islice(args, 1)))
            else:
                rest.append(arg)
        elif arg in _SHORT_WITH_VALUE:
            rest.extend((arg, *islice(args, 1)))
        elif arg == "-r":
            name = next(args, "")
        elif arg.startswith("-r"):
            name = arg[2:]
        else:
            rest.append(arg)
    return name, rest


def install_reactor(name: str) -> None:
    """
    Install the reactor twistd's C{-r NAME} would.

    :raises SystemExit: with status 2 after one error line, if there is no
        such reactor or it cannot run here.
    """
    from twisted.application.reactors import NoSuchReactor, getReactorTypes, installReactor

    if "twisted.internet.reactor" in sys.modules:  # embedded: one is installed already
        return
    try:
        installReactor(name)
    except NoSuchReactor:
        names = ", ".join(sorted(r.shortName for r in getReactorTypes()))
        sys.stderr.write(f"relay: error: --reactor {name!r}: no such reactor; one of {names}\n")
        raise SystemExit(2) from None
    except Exception as e:
        sys.stderr.write(f"relay: error: --reactor {name!r} cannot run here: {e}\n")
        raise SystemExit(2) from None


def run_node(argv: list[str]) -> int:
    """Run a node until SIGTERM/SIGINT; returns the exit status."""
    from relaytx import _early

    _early.hold()  # (a stop signal during start-up stops the node once it runs)
    try:
        reactor_name, argv = take_reactor(argv)
        if "-h" not in argv and "--help" not in argv:
            install_reactor(reactor_name)
        from twisted.internet import reactor
        from twisted.logger import globalLogBeginner

        from relaytx._logs import json_observer, text_observer
        from relaytx.tap import error_line, makeService, run_options

        options = run_options(argv)
        assert options.config is not None  # parsed
        json_log = options.config.log_format == "json"
        if json_log:
            observer = json_observer(sys.stderr, options.config.node_id)
        else:
            observer = text_observer(sys.stderr)
        # In JSON, what apps print is logged too (as twistd does), so that
        # every line on stderr is one object; in text it goes out as printed.
        # (relay's own error lines go to the real stderr either way.)
        globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=json_log)
        node = makeService(options)  # (SIGINT stops it even if ignored: tap.stop_on_sigint)
        node.held_errors = []  # (printed below, after the shutdown's log lines)
        node.privilegedStartService()
    except BaseException:
        _early.release()  # (no node runs: a process that goes on keeps its own)
        raise
    reactor.callWhenRunning(node.startService)
    reactor.addSystemEventTrigger("before", "shutdown", node.stopService)
    reactor.run()
    # Stopped: a second SIGTERM (timeout(1) sends one to the process and
    # one to its group) must not kill the interpreter as it finishes, when
    # Python gives the signals back their default action.
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for message in node.held_errors:
        error_line(message)
    status: int = node.exit_status
    return status


# relay call and relay status: the commands that talk to a node over HTTP


def _not_json(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")


def _parse_arg(text: str) -> object:
    """
    :returns: C{text} parsed as JSON when it is valid JSON (C{NaN} and
        C{Infinity}, which Python's parser accepts, are not), else C{text}.
    :raises ValueError: if it is JSON with a number past a double's range
        (C{1e400}), which no JSON-RPC request can carry.
    """
    import json

    try:
        value = json.loads(text, parse_constant=_not_json)
    except ValueError:
        return text
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise ValueError(f"{text!r} holds a number out of range (past a double)") from None
    return value


def add_client_options(parser: object) -> None:
    """
    Add the options of a command that talks to a node over HTTP: C{--token}
    (default: C{$RELAYTX_TOKEN}, which keeps it out of the process list),
    C{--cacert}, C{--cert} and C{--key} (SPEC section 13).
    """
    import argparse
    import os

    assert isinstance(parser, argparse.ArgumentParser)
    parser.add_argument(
        "--token",
        default=os.environ.get("RELAYTX_TOKEN"),
        help="bearer token for the node (default: $RELAYTX_TOKEN)",
    )
    parser.add_argument("--cacert", help="PEM file of the CA that signed the node's certificate")
    parser.add_argument("--cert", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--key", help="PEM private key of --cert, if not in its file")


class NodeUnavailable(Exception):
    """The node could not be asked (one line for the operator)."""


class NoAnswer(NodeUnavailable):
    """The node took the request but did not answer within the time given."""


def _timeout(parser: Any, timeout: float) -> float:
    """:returns: C{--timeout}, at most a day (as every call's budget is clamped)."""
    if not 0 < timeout < float("inf"):  # (nan too, which JSON cannot carry)
        parser.error("--timeout must be a positive number of seconds")
    return min(timeout, 86400.0)


def answer_wait(timeout: float) -> float:
    """
    :returns: how long C{relay call} waits for an answer: its C{--timeout},
        when the node fails the call itself (-32001), and a margin for that
        answer to arrive (L{relaytx._clientopts.ANSWER_GRACE}, as the
        client's); past it, C{relay call} gives up on its own, with -32001
        too. (The margin was a quarter of the timeout, up to 1 s: a call of
        C{--timeout 1} to a frozen node ended after 1.6 s.)
    """
    from relaytx._clientopts import ANSWER_GRACE

    return timeout + ANSWER_GRACE


def exchange(
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    timeout: float,
    context: ssl.SSLContext | None,
) -> tuple[int, bytes, dict[str, str]]:
    """
    Send one HTTP request (C{POST} a call, C{GET} a view) to C{url}.

    :param context: the C{ssl.SSLContext} of an C{https} URL.
    :returns: the status, the body and the headers (names in lower case)
        of the answer.
    :raises NodeUnavailable: if the node cannot be reached.
    """
    import http.client
    import socket
    import threading
    from urllib.parse import urlsplit

    verb = "call" if method == "POST" else "read"
    parts = urlsplit(url)
    connection: http.client.HTTPConnection
    # The socket's timeout bounds each read; this, the whole exchange (an
    # answer that trickles in a byte at a time is cut off all the same).
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sock = connection.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    deadline = threading.Timer(timeout, expire)
    deadline.daemon = True
    try:
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=context)
        else:
            connection = http.client.HTTPConnection(parts.netloc, timeout=timeout)
        deadline.start()
        try:
            connection.request(method, parts.path, body, headers)
            response = connection.getresponse()
            answer = response.read()
            if expired.is_set():
                raise TimeoutError()
            return response.status, answer, {k.lower(): v for k, v in response.getheaders()}
        finally:
            deadline.cancel()
            connection.close()
    except TimeoutError:
        raise NoAnswer(f"cannot {verb} {url}: no answer within {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as e:
        if expired.is_set():
            raise NoAnswer(f"cannot {verb} {url}: no answer within {timeout:g}s") from None
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        why = getattr(e, "verify_message", None)
        if why:  # a failed TLS verification says why: "certificate has expired", ...
            reason = f"{why} ({reason})"
        raise NodeUnavailable(f"cannot {verb} {url}: {reason}") from None


def _client_setup(parser: object, ns: object) -> tuple[str, dict[str, str], ssl.SSLContext | None]:
    """
    :returns: the node's base URL, the headers that carry the token and
        the TLS context (C{None} over http) of a command's options; a bad
        one exits through C{parser.error}.
    """
    import argparse

    from relaytx._clientopts import auth_headers, http_base_url, ssl_context

    assert isinstance(parser, argparse.ArgumentParser)
    assert isinstance(ns, argparse.Namespace)
    try:
        base = http_base_url(ns.url)
        headers = dict(auth_headers(ns.token))
        context = None
        if base.startswith("https:"):
            context = ssl_context(ns.cacert, ns.cert, ns.key)
        elif ns.cacert or ns.cert or ns.key:
            raise ValueError("--cacert, --cert and --key need an https:// URL")
    except ValueError as e:
        parser.error(str(e))
    return base, headers, context


def _refused(url: str, status: int, answer: object) -> int:
    """Report an answer refused before any call (401, 403, ...); :returns: 2."""
    detail = answer.get("error") if isinstance(answer, dict) else None
    reason = f": {detail}" if isinstance(detail, str) else ""
    sys.stderr.write(f"relay: error: {url} answered {status}{reason}\n")
    return 2


def _json(body: bytes) -> object:
    from relaytx import _json

    try:
        # (Integers of any size stay exact; nesting as deep as a node
        # answers, 1024 levels, past Python's recursion limit.)
        return _json.loads_exact(body)
    except (ValueError, RecursionError):
        return None


def _shown(value: object) -> str:
    """:returns: C{value} as JSON, as C{json.dumps} writes it, however deep."""
    import json

    try:
        return json.dumps(value)
    except RecursionError:
        from relaytx import _json

        return _json.dumps(value).decode()  # (compact: its own stack, no recursion)


#: what argparse takes for a negative number (``-5``, ``-.5``), and a
#: negative JSON number (``-1e3``, ``-2.5E-1``)
#: What argparse takes for an argument although it begins with "-": any
#: word with one dash that is no option (-5, -1e3, -x, -Infinity). Words
#: with two dashes stay options, so a mistyped one is an error (after
#: C{--}, anything is an argument).
_DASH_ARGUMENT = re.compile(r"^-(?!-)")


def call(argv: list[str]) -> int:
    """Make one call through a node's JSON-RPC endpoint; returns the exit status."""
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="relay call", description="Call SERVER.METHOD through the node at URL."
    )
    # Every ARG that is not valid JSON is a string, "-x" too (SPEC section
    # 3): argparse would take it, or -1e3, for an unknown option.
    parser._negative_number_matcher = _DASH_ARGUMENT
    parser.add_argument("url", help="the node's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("server")
    parser.add_argument("method")
    parser.add_argument("args", nargs="*", help="arguments: JSON where valid, else strings")
    parser.add_argument("--node", help="call the server on this node id")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="start a new trace and print the path the call took, with each hop's time",
    )
    add_client_options(parser)
    ns = parser.parse_intermixed_args(argv)
    ns.timeout = _timeout(parser, ns.timeout)
    base, headers, context = _client_setup(parser, ns)
    headers["Content-Type"] = "application/json"
    trace_id = ""
    if ns.trace:
        import os

        # A new sampled trace, and a request for its path (Server-Timing).
        trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
        headers["traceparent"] = f"00-{trace_id}-{span_id}-01"
        headers["Relaytx-Trace-Path"] = "1"
    try:
        args = [_parse_arg(a) for a in ns.args]
    except ValueError as e:
        parser.error(f"argument {e}")
    params: dict[str, object] = {
        "server_name": ns.server,
        "method": ns.method,
        "args": args,
        "timeout": ns.timeout,  # the node gives up then, whichever form (SPEC section 5)
    }
    if ns.node is not None:
        from relaytx.wire import NODE_ID_RE

        if not NODE_ID_RE.fullmatch(ns.node):
            parser.error(f"--node: {ns.node!r} is not a valid node id")
        params["node_id"] = ns.node
    request = {"jsonrpc": "2.0", "id": 1, "method": "remote_call", "params": params}
    url = base + "/rpc"
    try:
        # The node answers by the deadline; the margin covers the network.
        status, body, reply_headers = exchange(
            "POST", url, json.dumps(request).encode(), headers, answer_wait(ns.timeout), context
        )
    except NoAnswer as e:
        # A frozen node, or one too busy to say so: --timeout holds all the same.
        sys.stderr.write(f"error -32001: call timed out ({e})\n")
        return 1
    except NodeUnavailable as e:
        sys.stderr.write(f"relay: error: {e}\n")
        return 2
    answer = _json(body)
    if status != 200:  # 401, 403: refused before any call
        return _refused(url, status, answer)
    if (
        not isinstance(answer, dict)
        or not isinstance(answer.get("error", {}), dict)
        or ("result" not in answer and "error" not in answer)
        or ("error" in answer and type(answer["error"].get("code")) is not int)
    ):
        sys.stderr.write(f"relay: error: {url} answered no JSON-RPC response\n")
        return 2
    path = ""
    if ns.trace:
        from relaytx._status import format_path, parse_server_timing

        path = format_path(parse_server_timing(reply_headers.get("server-timing")), trace_id)
    if "error" in answer:
        error = answer["error"]
        sys.stderr.write(f"error {error.get('code')}: {error.get('message')}\n")
        if error.get("data"):
            sys.stderr.write(_shown(error["data"]) + "\n")
        sys.stderr.write(path)
        return 1
    sys.stdout.write(_shown(answer.get("result")) + "\n")
    sys.stdout.write(path)
    return 0


def status(argv: list[str]) -> int:
    """Print the mesh as one node sees it; returns the exit status."""
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="relay status", description="The whole mesh as the node at URL sees it."
    )
    parser.add_argument("url", help="the node's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--json", action="store_true", help="print the view as JSON")
    parser.add_argument("--all", action="store_true", help="list every node and link")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds (default 15)")
    add_client_options(parser)
    ns = parser.parse_intermixed_args(argv)
    ns.timeout = _timeout(parser, ns.timeout)
    base, headers, context = _client_setup(parser, ns)
    headers["Accept"] = "application/json"
    url = base + "/dashboard/mesh"
    try:
        code, body, _ = exchange("GET", url, None, headers, ns.timeout, context)
    except NodeUnavailable as e:
        sys.stderr.write(f"relay: error: {e}\n")
        return 2
    view = _json(body)
    if code != 200:
        return _refused(url, code, view)
    if not isinstance(view, dict) or not isinstance(view.get("nodes"), dict):
        sys.stderr.write(f"relay: error: {url} answered no mesh view\n")
        return 2
    if ns.json:
        sys.stdout.write(json.dumps(view, indent=2, sort_keys=True) + "\n")
    else:
        from relaytx._status import format_status

        sys.stdout.write(format_status(view, everything=ns.all))
    return 1 if view.get("problems") else 0


#: The commands, by name; those that talk to a node share their client
#: options (L{add_client_options}, L{exchange}).
COMMANDS = {"node": run_node, "call": call, "status": status}


if __name__ == "__main__":
    raise SystemExit(main())
