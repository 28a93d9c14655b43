"""
Tests for L{relaytx.cli}: the C{relay} console script's argument handling.
C{relay call} and C{relay node} against real nodes are covered by
C{tests/integration/test_twistd.py}; here the HTTP request is replaced by
a fake (L{relaytx.cli.exchange}).
"""

from __future__ import annotations

import io
import json
import os
import signal
import ssl
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relaytx import __version__, cli
from tests.support import Authority, TempDirMixin


class Sent:
    """One request relay call made."""

    def __init__(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
        context: Any,
    ) -> None:
        self.method = method
        self.url = url
        self.body = None if body is None else json.loads(body)
        self.headers = headers
        self.timeout = timeout
        self.context = context


class CliTestCase(TempDirMixin, SynchronousTestCase):
    """Captured standard streams and a fake HTTP request."""

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)
        self.requests: list[Sent] = []
        self.answer: Any = {"jsonrpc": "2.0", "result": None, "id": 1}
        self.status = 200
        self.reply_headers: dict[str, str] = {}
        self.patch(cli, "exchange", self.exchange)

    def exchange(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
        context: Any,
    ) -> tuple[int, bytes, dict[str, str]]:
        """Record the request; answer with C{self.answer} (raise it if it is an exception)."""
        self.requests.append(Sent(method, url, body, headers, timeout, context))
        if isinstance(self.answer, BaseException):
            raise self.answer
        if isinstance(self.answer, bytes):
            return self.status, self.answer, self.reply_headers
        return self.status, json.dumps(self.answer).encode(), self.reply_headers

    def sent(self) -> Any:
        """:returns: the JSON body of the only request made."""
        self.assertEqual(len(self.requests), 1)
        return self.requests[0].body

    def usage_exit(self, *argv: str) -> str:
        """Run C{relay ARGV}, expect argparse's exit 2, and return what it wrote on stderr."""
        e = self.assertRaises(SystemExit, cli.main, list(argv))
        self.assertEqual(e.code, 2)
        self.assertEqual(self.requests, [])
        return self.stderr.getvalue()


class ParseArgTests(SynchronousTestCase):
    """_parse_arg: JSON when valid, else a string."""

    def test_json(self) -> None:
        """Valid JSON texts become their values."""
        for text, value in [
            ("5", 5),
            ("-1.5", -1.5),
            ("true", True),
            ("false", False),
            ("null", None),
            ('"quoted"', "quoted"),
            ("[1, 2]", [1, 2]),
            ('{"a": [1]}', {"a": [1]}),
            (" 7 ", 7),
            ('"5"', "5"),
        ]:
            self.assertEqual(cli._parse_arg(text), value)

    def test_strings(self) -> None:
        """Anything else is taken as the string itself."""
        for text in ["hello", "", "two words", "{not json", "True", "None", "1,2", "'x'"]:
            self.assertEqual(cli._parse_arg(text), text)

    def test_nonJsonConstants(self) -> None:
        """NaN and Infinity, which Python's json accepts, are not JSON and stay strings."""
        for text in ["NaN", "Infinity", "-Infinity", "[NaN]"]:
            self.assertEqual(cli._parse_arg(text), text)


class MainTests(CliTestCase):
    """main(): commands, usage and exit statuses."""

    def test_noCommand(self) -> None:
        """relay with no command prints the usage on stderr and exits 2."""
        self.assertEqual(cli.main([]), 2)
        self.assertIn("relay: error:", self.stderr.getvalue())
        self.assertIn("usage: relay node", self.stderr.getvalue())
        self.assertEqual(self.stdout.getvalue(), "")

    def test_help(self) -> None:
        """relay --help, -h and help print the usage on stdout and exit 0."""
        for flag in ["--help", "-h", "help"]:
            self.assertEqual(cli.main([flag]), 0)
        self.assertEqual(self.stdout.getvalue().count("usage: relay node"), 3)
        self.assertIn("relay call URL SERVER METHOD", self.stdout.getvalue())
        self.assertEqual(self.stderr.getvalue(), "")

    def test_unknownCommand(self) -> None:
        """An unknown command is named on stderr with the usage; exit status 2."""
        self.assertEqual(cli.main(["frobnicate"]), 2)
        self.assertIn("relay: error: unknown command 'frobnicate'", self.stderr.getvalue())
        self.assertIn("usage:", self.stderr.getvalue())
        self.assertEqual(self.stdout.getvalue(), "")

    def test_argvDefault(self) -> None:
        """Without an argument main() reads sys.argv."""
        self.patch(sys, "argv", ["relay", "bogus"])
        self.assertEqual(cli.main(), 2)
        self.assertIn("'bogus'", self.stderr.getvalue())

    def test_nodeBadOption(self) -> None:
        """relay node with a bad option exits 2 after one error line, before any reactor runs."""
        process_stderr = io.StringIO()
        self.patch(sys, "__stderr__", process_stderr)
        handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
        e = self.assertRaises(SystemExit, cli.main, ["node", "--node-id", "bad id!"])
        self.assertEqual(e.code, 2)
        # (No node runs: the process keeps its own signal handlers.)
        self.assertEqual([signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)], handlers)
        self.assertEqual(
            process_stderr.getvalue(),
            "relay: error: --node-id 'bad id!': use 1-64 characters of A-Za-z0-9._-\n",
        )


class CallTests(CliTestCase):
    """relay call: the request it sends and how it reports the answer."""

    def test_call(self) -> None:
        """SERVER METHOD ARGS becomes a remote_call carrying the args and the deadline."""
        self.answer = {"jsonrpc": "2.0", "result": 6, "id": 1}
        status = cli.main(
            ["call", "http://127.0.0.1:8080", "counter_server", "increment", "5", "abc"]
        )
        self.assertEqual(status, 0)
        request = self.requests[0]
        self.assertEqual(request.url, "http://127.0.0.1:8080/rpc")
        self.assertEqual(request.headers, {"Content-Type": "application/json"})
        self.assertEqual(
            self.sent(),
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "remote_call",
                "params": {
                    "server_name": "counter_server",
                    "method": "increment",
                    "args": [5, "abc"],
                    "timeout": 30.0,
                },
            },
        )
        self.assertEqual(request.timeout, cli.answer_wait(30.0))
        self.assertIsNone(request.context)
        self.assertEqual(self.stdout.getvalue(), "6\n")
        self.assertEqual(self.stderr.getvalue(), "")

    def test_argumentTypes(self) -> None:
        """Each argument is JSON where valid, else a string."""
        argv = ["call", "http://h:1", "node", "echo", "1", '"1"', "x", "[1,{}]", "null", "NaN"]
        self.assertEqual(cli.main(argv), 0)
        self.assertEqual(self.sent()["params"]["args"], [1, "1", "x", [1, {}], None, "NaN"])

    def test_dashArguments(self) -> None:
        """Negative numbers are arguments; after -- anything is."""
        self.assertEqual(cli.main(["call", "http://h:1", "node", "echo", "-5", "--", "--x"]), 0)
        self.assertEqual(self.sent()["params"]["args"], [-5, "--x"])

    def test_dashWords(self) -> None:
        """
        A word with one dash that is not JSON is a string argument, as any
        other; one with two dashes is an option (an unknown one, an error).
        """
        argv = ["call", "http://h:1", "node", "echo", "-x", "-Infinity", "-abc", "--node", "n2"]
        self.assertEqual(cli.main(argv), 0)
        self.assertEqual(self.sent()["params"]["args"], ["-x", "-Infinity", "-abc"])
        self.assertEqual(self.sent()["params"]["node_id"], "n2")
        error = self.assertRaises(SystemExit, cli.main, ["call", "http://h:1", "s", "m", "--nope"])
        self.assertEqual(error.code, 2)

    def test_numberOutOfRange(self) -> None:
        """
        An argument that is JSON with a number no double holds (C{1e400})
        is refused before any request (it would go out as C{Infinity}, which
        is not JSON), exit status 2.
        """
        for arg in ["1e400", "[1, -1E999]"]:
            with self.subTest(arg=arg):
                self.stderr.truncate(0)
                stderr = self.usage_exit("call", "http://h:1", "node", "echo", arg)
                self.assertIn(f"argument {arg!r} holds a number out of range", stderr)

    def test_badNodeOption(self) -> None:
        """An empty or malformed --node is refused (not a call to any instance), exit status 2."""
        for node in ["", "bad id!"]:
            with self.subTest(node=node):
                self.stderr.truncate(0)
                stderr = self.usage_exit("call", "http://h:1", "s", "m", "--node", node)
                self.assertIn(f"--node: {node!r} is not a valid node id", stderr)

    def test_negativeJsonNumbers(self) -> None:
        """Every negative JSON number is an argument, exponents included."""
        numbers = ["-1e3", "-2.5E-1", "-0e0", "-1E+2", "-0.5", "-.5", "-7"]
        argv = ["call", "http://h:1", "node", "echo", *numbers, "--node", "n2"]
        self.assertEqual(cli.main(argv), 0)
        self.assertEqual(
            self.sent()["params"]["args"], [-1000.0, -0.25, -0.0, -100.0, -0.5, "-.5", -7]
        )
        self.assertEqual(self.sent()["params"]["node_id"], "n2")

    def test_printsJsonResult(self) -> None:
        """The result is printed as JSON on one line."""
        self.answer = {"jsonrpc": "2.0", "result": {"a": [1, "é"], "b": None}, "id": 1}
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m"]), 0)
        self.assertEqual(json.loads(self.stdout.getvalue()), {"a": [1, "é"], "b": None})
        self.assertEqual(self.stdout.getvalue().count("\n"), 1)

    def test_deepAndWideResults(self) -> None:
        """
        A result as deep as a node answers (1022 levels: past Python's
        recursion limit) and integers past 64 bits print as they came.
        """
        deep = b"[" * 1022 + b"]" * 1022
        self.answer = b'{"jsonrpc":"2.0","result":[%s,%d],"id":1}' % (deep, 2**70)
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m"]), 0)
        self.assertEqual(self.stdout.getvalue(), f"[{deep.decode()},{2**70}]\n")

    def test_urlForms(self) -> None:
        """
        A trailing slash is dropped, a bare host:port means http, ws(s) mean
        http(s), and a URL naming the node's /rpc means the node.
        """
        for url in ["http://h:1/", "127.0.0.1:8080", "ws://h:2", "wss://h:3", "http://h:4/rpc"]:
            cli.main(["call", url, "s", "m"])
        urls = [r.url for r in self.requests]
        self.assertEqual(
            urls,
            [
                "http://h:1/rpc",
                "http://127.0.0.1:8080/rpc",
                "http://h:2/rpc",
                "https://h:3/rpc",
                "http://h:4/rpc",
            ],
        )

    def test_badUrl(self) -> None:
        """An address that is not a node's is a usage error."""
        self.assertIn("ftp://h", self.usage_exit("call", "ftp://h", "s", "m"))

    def test_node(self) -> None:
        """--node names the node in the remote_call; --timeout sets its deadline."""
        argv = ["call", "http://h:1", "counter_server", "increment", "2", "--node", "n2"]
        self.assertEqual(cli.main([*argv, "--timeout", "4.5"]), 0)
        self.assertEqual(
            self.sent()["params"],
            {
                "node_id": "n2",
                "server_name": "counter_server",
                "method": "increment",
                "args": [2],
                "timeout": 4.5,
            },
        )
        self.assertEqual(self.requests[0].timeout, cli.answer_wait(4.5))

    def test_timeoutWithoutNode(self) -> None:
        """--timeout is the node's deadline for a location-transparent call too."""
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m", "--timeout", "2"]), 0)
        self.assertEqual(self.sent()["params"]["timeout"], 2)
        self.assertNotIn("node_id", self.sent()["params"])
        self.assertEqual(self.requests[0].timeout, cli.answer_wait(2))

    def test_optionsAnywhere(self) -> None:
        """--node and --timeout may come before the positional arguments."""
        argv = ["call", "--node", "n3", "--timeout", "1", "http://h:1", "s", "m", "x"]
        self.assertEqual(cli.main(argv), 0)
        params = self.sent()["params"]
        self.assertEqual((params["node_id"], params["args"], params["timeout"]), ("n3", ["x"], 1))

    def test_badTimeout(self) -> None:
        """A timeout that is not a positive number of seconds is a usage error."""
        for value in ["0", "-1", "x", "nan", "inf"]:
            self.stderr.truncate(0)
            self.assertIn(
                "--timeout", self.usage_exit("call", "http://h:1", "s", "m", "--timeout", value)
            )

    def test_timeoutPastADay(self) -> None:
        """A timeout past a day is a day, as the node takes it."""
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m", "--timeout", "100000"]), 0)
        self.assertEqual(self.sent()["params"]["timeout"], 86400)
        self.assertEqual(self.requests[0].timeout, cli.answer_wait(86400))

    def test_missingArguments(self) -> None:
        """URL, SERVER and METHOD are required."""
        self.assertIn("required", self.usage_exit("call", "http://h:1", "s"))

    def test_token(self) -> None:
        """--token (or $RELAYTX_TOKEN) is sent as a bearer token; no Origin is ever sent."""
        cli.main(["call", "http://h:1", "s", "m", "--token", "t0k"])
        self.patch(os, "environ", {**os.environ, "RELAYTX_TOKEN": "env"})
        cli.main(["call", "http://h:1", "s", "m"])
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "RELAYTX_TOKEN"})
        cli.main(["call", "http://h:1", "s", "m"])
        self.assertNotIn("Authorization", self.requests[-1].headers)
        headers = [r.headers for r in self.requests]
        self.assertEqual(headers[0]["Authorization"], "Bearer t0k")
        self.assertEqual(headers[1]["Authorization"], "Bearer env")
        self.assertFalse(any("Origin" in h for h in headers))
        self.requests.clear()
        self.assertIn("token", self.usage_exit("call", "http://h:1", "s", "m", "--token", "a\nb"))

    def test_tls(self) -> None:
        """--cacert, --cert and --key build the TLS context of an https node."""
        authority = Authority("test-ca")
        ca = self.mktemp()
        with open(ca, "wb") as f:
            f.write(authority.pem)
        cert_pem, key_pem = authority.issue("client")
        cert, key = self.mktemp(), self.mktemp()
        for path, data in ((cert, cert_pem), (key, key_pem)):
            with open(path, "wb") as f:
                f.write(data)
        argv = ["call", "https://h:1", "s", "m", "--cacert", ca, "--cert", cert, "--key", key]
        self.assertEqual(cli.main(argv), 0)
        context = self.requests[0].context
        self.assertIsInstance(context, ssl.SSLContext)
        self.assertTrue(context.check_hostname)
        self.assertEqual(context.verify_mode, ssl.CERT_REQUIRED)
        self.assertEqual(len(context.get_ca_certs()), 1)
        cli.main(["call", "https://h:1", "s", "m"])  # the system's trust store
        self.assertIsInstance(self.requests[1].context, ssl.SSLContext)

    def test_tlsErrors(self) -> None:
        """TLS options with http://, or files that cannot be read, are usage errors."""
        self.assertIn(
            "https://", self.usage_exit("call", "http://h:1", "s", "m", "--cacert", "ca.pem")
        )
        missing = self.mktemp()
        self.assertIn(
            missing, self.usage_exit("call", "https://h:1", "s", "m", "--cacert", missing)
        )
        self.assertIn("--cert", self.usage_exit("call", "https://h:1", "s", "m", "--key", "k"))

    def test_errorAnswer(self) -> None:
        """An error answer prints its code, message and data on stderr and exits 1."""
        self.answer = {
            "jsonrpc": "2.0",
            "error": {"code": -32601, "message": "Method not found", "data": {"node_id": "n1"}},
            "id": 1,
        }
        self.assertEqual(cli.main(["call", "http://h:1", "nosuch", "m"]), 1)
        lines = self.stderr.getvalue().splitlines()
        self.assertEqual(lines[0], "error -32601: Method not found")
        self.assertEqual(json.loads(lines[1]), {"node_id": "n1"})
        self.assertEqual(self.stdout.getvalue(), "")

    def test_errorWithoutData(self) -> None:
        """An error answer without data prints one line."""
        self.answer = {"jsonrpc": "2.0", "error": {"code": -32001, "message": "late"}, "id": 1}
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m"]), 1)
        self.assertEqual(self.stderr.getvalue(), "error -32001: late\n")

    def test_unreachable(self) -> None:
        """A node that cannot be reached is one error line and exit status 2."""
        self.answer = cli.NodeUnavailable("cannot call http://127.0.0.1:1/rpc: Connection refused")
        self.assertEqual(cli.main(["call", "http://127.0.0.1:1", "s", "m"]), 2)
        self.assertEqual(
            self.stderr.getvalue(),
            "relay: error: cannot call http://127.0.0.1:1/rpc: Connection refused\n",
        )

    def test_noAnswer(self) -> None:
        """
        A node that takes the call but never answers (frozen) fails it with
        -32001 and exit status 1 soon after --timeout, as the node would.
        """
        self.answer = cli.NoAnswer("cannot call http://h:1/rpc: no answer within 3s")
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m", "--timeout", "2"]), 1)
        self.assertEqual(self.requests[0].timeout, cli.answer_wait(2))
        self.assertEqual(
            self.stderr.getvalue(),
            "error -32001: call timed out (cannot call http://h:1/rpc: no answer within 3s)\n",
        )

    def test_httpError(self) -> None:
        """An HTTP error status is reported with the node's own words, exit status 2."""
        self.status = 401
        self.answer = {"error": "missing or bad token", "status": 401}
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m"]), 2)
        self.assertEqual(
            self.stderr.getvalue(),
            "relay: error: http://h:1/rpc answered 401: missing or bad token\n",
        )
        self.status = 404
        self.answer = b"<html>"
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m"]), 2)
        self.assertIn("answered 404\n", self.stderr.getvalue())

    def test_notJson(self) -> None:
        """A body that is not JSON is an error, exit status 2."""
        self.answer = b"<html>"
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m"]), 2)
        self.assertIn("relay: error:", self.stderr.getvalue())

    def test_notAResponse(self) -> None:
        """JSON that is not a JSON-RPC response object is an error, exit status 2."""
        answers = [
            [1, 2],
            "error",
            {"error": "text"},
            {"jsonrpc": "2.0", "id": 1},
            {"id": 1},
            {"jsonrpc": "2.0", "error": {}, "id": 1},
        ]
        for answer in answers:
            self.answer = answer
            self.assertEqual(cli.main(["call", "http://h:1", "s", "m"]), 2, answer)
        self.assertEqual(self.stderr.getvalue().count("relay: error:"), len(answers))
        self.assertEqual(self.stdout.getvalue(), "")


class ExchangeTests(SynchronousTestCase):
    """exchange(): the HTTP request itself, against nothing that listens."""

    def test_refused(self) -> None:
        """A refused connection is NodeUnavailable naming the URL."""
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, not listening: refused
            url = f"http://127.0.0.1:{port}/rpc"
            error = self.assertRaises(
                cli.NodeUnavailable, cli.exchange, "POST", url, b"{}", {}, 5, None
            )
            read = self.assertRaises(
                cli.NodeUnavailable, cli.exchange, "GET", url, None, {}, 5, None
            )
        self.assertIn(f"cannot call {url}", str(error))
        self.assertIn(f"cannot read {url}", str(read))

    def test_noAnswer(self) -> None:
        """A node that accepts the connection but never answers is NoAnswer, by the timeout."""
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)  # the kernel accepts; nobody reads or answers
            url = f"http://127.0.0.1:{s.getsockname()[1]}/rpc"
            error = self.assertRaises(
                cli.NoAnswer, cli.exchange, "POST", url, b"{}", {}, 0.05, None
            )
        self.assertEqual(str(error), f"cannot call {url}: no answer within 0.05s")

    def test_trickle(self) -> None:
        """
        An answer that trickles in, each byte well within the timeout, is
        NoAnswer all the same: the timeout bounds the whole exchange.
        """
        import socket
        import threading

        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        stop = threading.Event()

        def trickle(listener: socket.socket) -> None:
            connection, _ = listener.accept()
            with connection:
                for byte in answer:
                    if stop.wait(0.02):
                        return
                    connection.sendall(bytes([byte]))

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            url = f"http://127.0.0.1:{s.getsockname()[1]}/rpc"
            server = threading.Thread(target=trickle, args=(s,), daemon=True)
            server.start()
            try:
                error = self.assertRaises(
                    cli.NoAnswer, cli.exchange, "POST", url, b"{}", {}, 0.2, None
                )
            finally:
                stop.set()
                server.join(5)
        self.assertEqual(str(error), f"cannot call {url}: no answer within 0.2s")

    def test_tls_reason(self) -> None:
        """A certificate that fails verification is refused, saying why."""
        import shutil
        import socket
        import ssl
        import tempfile
        import threading

        from tests.support import Authority

        authority = Authority("CA")
        cert, key = authority.issue("n1", days=-1)  # expired
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        paths = {}
        for name, data in (("ca", authority.pem), ("cert", cert), ("key", key)):
            paths[name] = os.path.join(directory, name)
            with open(paths[name], "wb") as f:
                f.write(data)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(paths["cert"], paths["key"])

        def serve(listener: socket.socket) -> None:
            connection, _ = listener.accept()
            with connection:
                try:
                    server.wrap_socket(connection, server_side=True).close()
                except (ssl.SSLError, OSError):
                    pass  # the client refused the certificate

        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            thread = threading.Thread(target=serve, args=(listener,), daemon=True)
            thread.start()
            url = f"https://127.0.0.1:{listener.getsockname()[1]}/health"
            context = ssl.create_default_context(cafile=paths["ca"])
            error = self.assertRaises(
                cli.NodeUnavailable, cli.exchange, "GET", url, None, {}, 5, context
            )
            thread.join(5)
        self.assertIn("certificate has expired (CERTIFICATE_VERIFY_FAILED)", str(error))

    def test_answer_wait(self) -> None:
        """
        relay call waits 0.25 s past its --timeout for the node's own
        -32001, as the client does, whatever the timeout (a call of
        --timeout 1 to a frozen node ended after 1.6 s).
        """
        self.assertEqual([cli.answer_wait(t) for t in (0.5, 1, 2.5, 30)], [0.75, 1.25, 2.75, 30.25])


class NodeCommandTests(SynchronousTestCase):
    """relay node's own option, --reactor, read before anything imports a reactor."""

    def test_takeReactor(self) -> None:
        """Every spelling of --reactor is taken out; the rest stays in order."""
        for argv, name, rest in [
            ([], cli.DEFAULT_REACTOR, []),
            (["--port", "1"], cli.DEFAULT_REACTOR, ["--port", "1"]),
            (["--reactor", "epoll", "--port", "1"], "epoll", ["--port", "1"]),
            (["--port", "1", "--reactor=poll"], "poll", ["--port", "1"]),
            (["-r", "select", "--app", "a.py"], "select", ["--app", "a.py"]),
            (["-rasyncio"], "asyncio", []),
            (["--", "--reactor", "x"], cli.DEFAULT_REACTOR, ["--", "--reactor", "x"]),
            # An option's value is no option, even one that starts with -r.
            (["--node-id", "-replica1"], cli.DEFAULT_REACTOR, ["--node-id", "-replica1"]),
            (["--node-id", "-r1", "-r", "poll"], "poll", ["--node-id", "-r1"]),
            (["-c", "-r.toml"], cli.DEFAULT_REACTOR, ["-c", "-r.toml"]),
            (["--port"], cli.DEFAULT_REACTOR, ["--port"]),
            # Any beginning of --reactor, as the option parser takes it.
            (["--react", "asyncio", "--port", "1"], "asyncio", ["--port", "1"]),
            (["--reac=asyncio"], "asyncio", []),
            (["--node-i", "-r1", "--r", "poll"], "poll", ["--node-i", "-r1"]),
            # (--p is --port or --ping-interval: the parser refuses it.)
            (["--p", "-rx"], "x", ["--p"]),
        ]:
            self.assertEqual(cli.take_reactor(argv), (name, rest), argv)

    def test_longOptions(self) -> None:
        """take_reactor knows relay node's long options as the parser does."""
        from relaytx.tap import NodeCommandOptions

        options = NodeCommandOptions()
        self.assertEqual(set(cli._LONG_OPTIONS), set(options.longOpt))
        short = options.shortOpt
        with_value = {f"-{c}" for at, c in enumerate(short) if short[at + 1 : at + 2] == ":"}
        self.assertEqual(with_value - {"-:", "-r"}, set(cli._SHORT_WITH_VALUE))

    def test_abbreviatedOptions(self) -> None:
        """relay node takes any unique beginning of a long option, as twistd relay does."""
        from relaytx.tap import run_options

        options = run_options(["--node-i", "n7", "--po", "1234", "--pi", "2"])
        assert options.config is not None
        self.assertEqual(
            (options.config.node_id, options.config.port, options.config.ping_interval),
            ("n7", "tcp:1234:interface=127.0.0.1", 2.0),
        )

    def test_heldWhileADaemonIsAwaited(self) -> None:
        """
        A daemon's parent, which runs no node, gives stop signals back
        their handlers while it waits for its child's word: a daemon that
        died before it could say it left a parent no signal ended.
        """
        from relaytx import _early
        from relaytx.tap import _wait_for_start

        handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
        self.addCleanup(_early.release)
        _early.hold()
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        os.write(write, b"0")
        os.close(write)
        self.assertEqual(_wait_for_start(None, read), 0)
        self.assertEqual([signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)], handlers)

    def test_defaultReactor(self) -> None:
        """relay node runs on Twisted's default reactor unless told otherwise (SPEC 14; README)."""
        self.assertEqual(cli.DEFAULT_REACTOR, "default")


class VersionTests(CliTestCase):
    """relay --version."""

    def test_version(self) -> None:
        """relay --version prints relaytx's version and exits 0."""
        self.assertEqual(cli.main(["--version"]), 0)
        self.assertEqual(self.stdout.getvalue(), f"relaytx {__version__}\n")
        self.assertEqual(self.stderr.getvalue(), "")


def mesh_view(nodes: int, problems: int = 0) -> dict[str, Any]:
    """:returns: a mesh view of a line of C{nodes} nodes, the last C{problems} gone."""
    view: dict[str, Any] = {"node_id": "n0", "timestamp": "2026-01-01T00:00:00.000000Z"}
    view["nodes"] = {
        f"n{i}": {
            "node_id": f"n{i}",
            "state": "gone" if i >= nodes - problems else "up",
            "hops": i,
            "servers": ["counter_server", "node"] if i % 2 else ["node"],
            "calls_per_s": 1.5 * i,
            "errors_per_s": 0.0,
            "uptime_s": 3725,
        }
        for i in range(nodes)
    }
    view["links"] = [
        {"a": f"n{i}", "b": f"n{i + 1}", "rtt_ms": 0.1 * (i + 1), "healthy": True}
        for i in range(nodes - 1)
    ]
    view["problems"] = [f"n{i}: gone" for i in range(nodes - problems, nodes)]
    view["summary"] = {"nodes": nodes, "up": nodes - problems, "gone": problems, "links": nodes - 1}
    return view


class StatusTests(CliTestCase):
    """relay status URL: the mesh as one node sees it."""

    def test_table(self) -> None:
        """Nodes, their state, hops, calls/s and servers, then the links with their RTT."""
        self.answer = mesh_view(3)
        self.assertEqual(cli.main(["status", "http://127.0.0.1:8080"]), 0)
        self.assertEqual(self.requests[0].method, "GET")
        self.assertEqual(self.requests[0].url, "http://127.0.0.1:8080/dashboard/mesh")
        out = self.stdout.getvalue()
        self.assertIn("mesh seen from n0", out)
        self.assertIn("3 nodes: 3 up, 0 silent, 0 gone", out)
        lines = out.splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("NODE"))
        self.assertEqual(
            lines[header].split(),
            ["NODE", "STATE", "HOPS", "CALLS/S", "ERR/S", "UPTIME", "SERVERS"],
        )
        self.assertEqual(
            lines[header + 2].split(), ["n1", "up", "1", "1.5", "0.0", "1h02m", "counter_server"]
        )
        self.assertIn("n1 - n2    0.20  ok", out)
        self.assertNotIn("PROBLEMS", out)

    def test_problems(self) -> None:
        """What is wrong comes first, and the exit status is 1."""
        self.answer = mesh_view(4, problems=1)
        self.assertEqual(cli.main(["status", "127.0.0.1:8080"]), 1)
        out = self.stdout.getvalue()
        self.assertIn("PROBLEMS (1)\n  n3: gone", out)
        rows = [line for line in out.splitlines() if line.startswith("n")]
        self.assertEqual(rows[0].split()[:2], ["n3", "gone"])

    def test_large(self) -> None:
        """Past a screen, the rest of the nodes and links is one line each; --all lists all."""
        self.answer = mesh_view(60, problems=2)
        cli.main(["status", "http://127.0.0.1:8080"])
        out = self.stdout.getvalue()
        self.assertLess(len(out.splitlines()), 60)
        self.assertIn("... and 40 more nodes (40 up; --all to list them)", out)
        self.assertIn("... and 39 more links (all healthy, RTT 0.10-3.90 ms; --all", out)
        self.stdout.truncate(0)
        self.stdout.seek(0)
        cli.main(["status", "http://127.0.0.1:8080", "--all"])
        self.assertGreater(len(self.stdout.getvalue().splitlines()), 120)

    def test_json(self) -> None:
        """--json prints the view itself; --token is sent as a bearer token."""
        self.answer = mesh_view(2)
        cli.main(["status", "http://127.0.0.1:8080", "--json", "--token", "t0k"])
        self.assertEqual(json.loads(self.stdout.getvalue()), self.answer)
        self.assertEqual(self.requests[0].headers["Authorization"], "Bearer t0k")
        self.assertNotIn("Origin", self.requests[0].headers)

    def test_unreachable(self) -> None:
        """A node that cannot be reached is one line and exit status 2."""
        url = "http://127.0.0.1:9/dashboard/mesh"
        self.answer = cli.NodeUnavailable(f"cannot read {url}: Connection refused")
        self.assertEqual(cli.main(["status", "http://127.0.0.1:9"]), 2)
        self.assertEqual(
            self.stderr.getvalue(), f"relay: error: cannot read {url}: Connection refused\n"
        )

    def test_refused(self) -> None:
        """A refusal (a missing token) is reported with the node's own words, exit status 2."""
        self.status = 401
        self.answer = {"error": "missing or bad token", "status": 401}
        self.assertEqual(cli.main(["status", "http://h:1"]), 2)
        self.assertEqual(
            self.stderr.getvalue(),
            "relay: error: http://h:1/dashboard/mesh answered 401: missing or bad token\n",
        )

    def test_notAView(self) -> None:
        """An answer that is not a mesh view is an error, exit status 2."""
        for answer in [b"<html>", [1], {"nodes": []}]:
            self.answer = answer
            self.assertEqual(cli.main(["status", "http://h:1"]), 2)
        self.assertEqual(self.stderr.getvalue().count("answered no mesh view"), 3)

    def test_tlsOptions(self) -> None:
        """--cacert, --cert and --key need https, and files that exist."""
        self.assertIn(
            "need an https:// URL", self.usage_exit("status", "http://h:1", "--cacert", "ca.pem")
        )
        missing = self.mktemp()
        self.assertIn(missing, self.usage_exit("status", "https://h:1", "--cacert", missing))
        self.assertIn("--cert", self.usage_exit("status", "https://h:1", "--key", "k.pem"))


class TraceTests(CliTestCase):
    """relay call --trace: the path the call took, after the result."""

    def test_path(self) -> None:
        """A new sampled trace is sent, and each hop's time is printed after the result."""
        self.answer = {"jsonrpc": "2.0", "result": 5, "id": 1}
        self.reply_headers = {
            "server-timing": 'n0;desc="entry";dur=3.500, n1;desc="forward";dur=2.000, '
            'n2;desc="target";dur=0.250'
        }
        self.assertEqual(
            cli.main(["call", "http://127.0.0.1:8080", "c", "increment", "--trace"]), 0
        )
        headers = self.requests[0].headers
        traceparent = headers["traceparent"]
        self.assertRegex(traceparent, r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")
        self.assertEqual(headers["Relaytx-Trace-Path"], "1")
        lines = self.stdout.getvalue().splitlines()
        self.assertEqual(lines[0], "5")
        self.assertEqual(lines[1], f"trace {traceparent[3:35]}: n0 -> n1 -> n2")
        self.assertEqual(lines[2].split(), ["HOP", "NODE", "MS", "SELF", "MS", "ROLE"])
        self.assertEqual(lines[3].split(), ["0", "n0", "3.500", "1.500", "entry"])
        self.assertEqual(lines[4].split(), ["1", "n1", "2.000", "1.750", "forward"])
        self.assertEqual(lines[5].split(), ["2", "n2", "0.250", "0.250", "target"])

    def test_errorPath(self) -> None:
        """An error answer's path goes to stderr after the error."""
        self.answer = {"jsonrpc": "2.0", "error": {"code": -32001, "message": "late"}, "id": 1}
        self.reply_headers = {"server-timing": 'n0;desc="entry";dur=1.000'}
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m", "--trace"]), 1)
        lines = self.stderr.getvalue().splitlines()
        self.assertEqual(lines[0], "error -32001: late")
        self.assertRegex(lines[1], r"^trace [0-9a-f]{32}: n0$")

    def test_no_trace(self) -> None:
        """Without --trace nothing is added to the request or the output."""
        self.answer = {"jsonrpc": "2.0", "result": 5, "id": 1}
        cli.main(["call", "http://127.0.0.1:8080", "c", "increment"])
        self.assertNotIn("traceparent", self.requests[0].headers)
        self.assertNotIn("Relaytx-Trace-Path", self.requests[0].headers)
        self.assertEqual(self.stdout.getvalue(), "5\n")
