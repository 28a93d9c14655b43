"""
Tests for L{relaytx.cli}: the C{relay} console script's argument handling.
C{relay call} and C{relay node} against real nodes are covered by
C{tests/integration/test_twistd.py}; here urllib is replaced by a fake.
"""

from __future__ import annotations

import io
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relaytx import cli


class FakeResponse:
    """What urlopen returns: a context manager with a body."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def read(self) -> bytes:
        """:returns: the body."""
        return self.body


class CliTestCase(SynchronousTestCase):
    """Captured standard streams and a fake urlopen."""

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)
        self.requests: list[tuple[urllib.request.Request, float]] = []
        self.answer: Any = {"jsonrpc": "2.0", "result": None, "id": 1}
        self.patch(urllib.request, "urlopen", self.urlopen)

    def urlopen(self, request: urllib.request.Request, timeout: float) -> FakeResponse:
        """Record the request; answer with C{self.answer} (raise it if it is an exception)."""
        self.requests.append((request, timeout))
        if isinstance(self.answer, BaseException):
            raise self.answer
        if isinstance(self.answer, bytes):
            return FakeResponse(self.answer)
        return FakeResponse(json.dumps(self.answer).encode())

    def sent(self) -> Any:
        """:returns: the JSON body of the only request made."""
        self.assertEqual(len(self.requests), 1)
        data = self.requests[0][0].data
        assert isinstance(data, bytes)
        return json.loads(data)

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
        e = self.assertRaises(SystemExit, cli.main, ["node", "--node-id", "bad id!"])
        self.assertEqual(e.code, 2)
        self.assertEqual(
            process_stderr.getvalue(),
            "relay: error: --node-id 'bad id!': use 1-64 characters of A-Za-z0-9._-\n",
        )


class CallTests(CliTestCase):
    """relay call: the request it sends and how it reports the answer."""

    def test_call(self) -> None:
        """SERVER METHOD ARGS becomes a SERVER.METHOD request with positional params."""
        self.answer = {"jsonrpc": "2.0", "result": 6, "id": 1}
        status = cli.main(
            ["call", "http://127.0.0.1:8080", "counter_server", "increment", "5", "abc"]
        )
        self.assertEqual(status, 0)
        request, timeout = self.requests[0]
        self.assertEqual(request.full_url, "http://127.0.0.1:8080/rpc")
        self.assertEqual(request.get_method(), "POST")
        self.assertEqual(request.get_header("Content-type"), "application/json")
        self.assertEqual(
            self.sent(),
            {"jsonrpc": "2.0", "id": 1, "method": "counter_server.increment", "params": [5, "abc"]},
        )
        self.assertEqual(timeout, 35.0)
        self.assertEqual(self.stdout.getvalue(), "6\n")
        self.assertEqual(self.stderr.getvalue(), "")

    def test_argumentTypes(self) -> None:
        """Each argument is JSON where valid, else a string."""
        argv = ["call", "http://h:1", "node", "echo", "1", '"1"', "x", "[1,{}]", "null", "NaN"]
        self.assertEqual(cli.main(argv), 0)
        self.assertEqual(self.sent()["params"], [1, "1", "x", [1, {}], None, "NaN"])

    def test_dashArguments(self) -> None:
        """Negative numbers are arguments; after -- anything is."""
        self.assertEqual(cli.main(["call", "http://h:1", "node", "echo", "-5", "--", "--x"]), 0)
        self.assertEqual(self.sent()["params"], [-5, "--x"])

    def test_printsJsonResult(self) -> None:
        """The result is printed as JSON on one line."""
        self.answer = {"jsonrpc": "2.0", "result": {"a": [1, "é"], "b": None}, "id": 1}
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m"]), 0)
        self.assertEqual(json.loads(self.stdout.getvalue()), {"a": [1, "é"], "b": None})
        self.assertEqual(self.stdout.getvalue().count("\n"), 1)

    def test_urlForms(self) -> None:
        """A trailing slash is dropped and a bare host:port means http."""
        cli.main(["call", "http://h:1/", "s", "m"])
        cli.main(["call", "127.0.0.1:8080", "s", "m"])
        urls = [r.full_url for r, _ in self.requests]
        self.assertEqual(urls, ["http://h:1/rpc", "http://127.0.0.1:8080/rpc"])

    def test_node(self) -> None:
        """--node builds a remote_call with the node id, args and timeout."""
        argv = ["call", "http://h:1", "counter_server", "increment", "2", "--node", "n2"]
        self.assertEqual(cli.main([*argv, "--timeout", "4.5"]), 0)
        self.assertEqual(
            self.sent(),
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "remote_call",
                "params": {
                    "node_id": "n2",
                    "server_name": "counter_server",
                    "method": "increment",
                    "args": [2],
                    "timeout": 4.5,
                },
            },
        )
        self.assertEqual(self.requests[0][1], 9.5)

    def test_optionsAnywhere(self) -> None:
        """--node and --timeout may come before the positional arguments."""
        argv = ["call", "--node", "n3", "--timeout", "1", "http://h:1", "s", "m", "x"]
        self.assertEqual(cli.main(argv), 0)
        params = self.sent()["params"]
        self.assertEqual((params["node_id"], params["args"], params["timeout"]), ("n3", ["x"], 1))

    def test_defaultTimeout(self) -> None:
        """The default timeout is 30 s, sent with --node."""
        cli.main(["call", "http://h:1", "s", "m", "--node", "n2"])
        self.assertEqual(self.sent()["params"]["timeout"], 30.0)

    def test_badTimeout(self) -> None:
        """A timeout that is not a positive number of seconds is a usage error."""
        for value in ["0", "-1", "x", "nan", "inf"]:
            self.stderr.truncate(0)
            self.assertIn(
                "--timeout", self.usage_exit("call", "http://h:1", "s", "m", "--timeout", value)
            )

    def test_missingArguments(self) -> None:
        """URL, SERVER and METHOD are required."""
        self.assertIn("required", self.usage_exit("call", "http://h:1", "s"))

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
        self.answer = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
        self.assertEqual(cli.main(["call", "http://127.0.0.1:1", "s", "m"]), 2)
        self.assertTrue(
            self.stderr.getvalue().startswith("relay: error: cannot call http://127.0.0.1:1/rpc")
        )
        self.assertEqual(self.stderr.getvalue().count("\n"), 1)

    def test_httpError(self) -> None:
        """An HTTP error status is reported as an unreachable endpoint."""
        self.answer = urllib.error.HTTPError("http://h:1/rpc", 404, "Not Found", None, None)  # type: ignore[arg-type]
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m"]), 2)
        self.assertIn("Not Found", self.stderr.getvalue())

    def test_token(self) -> None:
        """--token (or $RELAYTX_TOKEN) is sent as a bearer token; none is sent without it."""
        cli.main(["call", "http://h:1", "s", "m", "--token", "t0k"])
        self.assertEqual(self.requests[-1][0].get_header("Authorization"), "Bearer t0k")
        self.patch(os, "environ", {"RELAYTX_TOKEN": "from-env"})
        cli.main(["call", "http://h:1", "s", "m"])
        self.assertEqual(self.requests[-1][0].get_header("Authorization"), "Bearer from-env")
        self.patch(os, "environ", {})
        cli.main(["call", "http://h:1", "s", "m"])
        self.assertIsNone(self.requests[-1][0].get_header("Authorization"))

    def test_refused(self) -> None:
        """A 401 is one error line with the node's reason, exit status 2."""
        body = io.BytesIO(b'{"error":"a bearer token is required","status":401}')
        self.answer = urllib.error.HTTPError("http://h:1/rpc", 401, "Unauthorized", None, body)  # type: ignore[arg-type]
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m"]), 2)
        self.assertEqual(
            self.stderr.getvalue(),
            "relay: error: http://h:1/rpc answered 401: a bearer token is required\n",
        )

    def test_notJson(self) -> None:
        """A body that is not JSON is an error, exit status 2."""
        self.answer = b"<html>"
        self.assertEqual(cli.main(["call", "http://h:1", "s", "m"]), 2)
        self.assertIn("relay: error:", self.stderr.getvalue())

    def test_notAResponse(self) -> None:
        """JSON that is not a JSON-RPC response object is an error, exit status 2."""
        for answer in [[1, 2], "error", {"error": "text"}]:
            self.answer = answer
            self.assertEqual(cli.main(["call", "http://h:1", "s", "m"]), 2)
        self.assertEqual(self.stderr.getvalue().count("relay: error:"), 3)
