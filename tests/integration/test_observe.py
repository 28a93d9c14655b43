"""
Seeing the mesh on real sockets (SPEC section 13): traces across nodes into
jsonl files, in PKI mode too; C{relay status} and C{relay call --trace}
against a live mesh; C{--log-format json} from C{relay node} and C{twistd}.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

import treq
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from relaytx._calls import CallTarget
from relaytx._tracing import CallTrace
from relaytx.node import RelayNode
from tests.support import Authority

from .helpers import ROOT, Counter, NodeProcess, start_node, url, wait_for, ws
from .test_pki import wss

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def read_spans(path: str) -> list[dict[str, Any]]:
    """:returns: the spans a jsonl exporter wrote to C{path} so far."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class ObserveTestCase(TestCase):
    """A temporary directory and a line of nodes that trace into it."""

    timeout = 120

    def directory(self) -> str:
        if not hasattr(self, "_directory"):
            self._directory = tempfile.mkdtemp(prefix="relaytx-observe-")
            self.addCleanup(shutil.rmtree, self._directory, True)
        return self._directory

    def spans_file(self, name: str) -> str:
        return os.path.join(self.directory(), f"{name}.jsonl")

    def tracing(self, name: str) -> dict[str, Any]:
        return {"exporter": "jsonl", "path": self.spans_file(name)}

    async def line(self, **options: Any) -> list[RelayNode]:
        n0 = start_node(self, "n0", tracing=self.tracing("n0"), **options)
        n1 = start_node(self, "n1", [ws(n0)], tracing=self.tracing("n1"), **options)
        n2 = start_node(
            self,
            "n2",
            [ws(n1)],
            servers={"counter_server": Counter()},
            tracing=self.tracing("n2"),
            **options,
        )
        await wait_for(lambda: "n2" in n0.mesh.router.routes(), 15, what="n0 to reach n2")
        return [n0, n1, n2]

    async def cli(self, *args: str) -> tuple[int, str, str]:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "relaytx.cli", *args], env=dict(os.environ), path=ROOT
        )
        return code, out.decode(), err.decode()


class TraceTests(ObserveTestCase):
    """One call through three nodes, traced into three files."""

    async def test_http_call(self) -> None:
        """
        A traced HTTP call gives spans on each node sharing the caller's trace
        id, each hop's span the child of the previous hop's; its answer's
        Server-Timing names each node.
        """
        n0, _, _ = await self.line()
        body = {"jsonrpc": "2.0", "id": 1, "method": "n2/counter_server.increment", "params": [5]}
        response = await treq.post(
            url(n0) + "/rpc",
            json.dumps(body).encode(),
            headers={"traceparent": [PARENT], "relaytx-trace-path": ["1"]},
            persistent=False,
        )
        answer = json.loads(await response.content())
        self.assertEqual(answer["result"], 5)
        (timing,) = response.headers.getRawHeaders("server-timing")
        self.assertEqual([p.strip().split(";")[0] for p in timing.split(",")], ["n0", "n1", "n2"])

        def all_written() -> bool:
            return all(read_spans(self.spans_file(n)) for n in ("n0", "n1", "n2"))

        await wait_for(all_written, 5, what="the spans to be exported")
        spans = {s["name"]: s for n in ("n0", "n1", "n2") for s in read_spans(self.spans_file(n))}
        call = spans["call counter_server.increment"]
        forward = spans["forward counter_server.increment"]
        run = spans["run counter_server.increment"]
        execute = spans["execute counter_server.increment"]
        self.assertEqual(
            {s["trace_id"] for s in spans.values()}, {"4bf92f3577b34da6a3ce929d0e0e4736"}
        )
        self.assertEqual(call["parent_span_id"], "00f067aa0ba902b7")
        self.assertEqual(forward["parent_span_id"], call["span_id"])
        self.assertEqual(run["parent_span_id"], forward["span_id"])
        self.assertEqual(execute["parent_span_id"], run["span_id"])
        self.assertEqual([call["node_id"], forward["node_id"], run["node_id"]], ["n0", "n1", "n2"])

    async def test_cli(self) -> None:
        """relay call --trace prints the path after the result; relay status the mesh."""
        n0, _, _ = await self.line()
        code, out, err = await self.cli(
            "call", url(n0), "counter_server", "increment", "3", "--node", "n2", "--trace"
        )
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0], "3")
        self.assertRegex(lines[1], r"^trace [0-9a-f]{32}: n0 -> n1 -> n2$")
        self.assertEqual([line.split()[1] for line in lines[3:]], ["n0", "n1", "n2"])
        trace_id = lines[1].split()[1].rstrip(":")
        await wait_for(lambda: read_spans(self.spans_file("n2")), 5, what="n2's spans")
        self.assertIn(trace_id, {s["trace_id"] for s in read_spans(self.spans_file("n2"))})

        code, out, err = await self.cli("status", url(n0))
        self.assertEqual(code, 0, err)
        self.assertIn("3 nodes: 3 up, 0 silent, 0 gone; 2 links (0 unhealthy)", out)
        rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:2] == "n2"}
        self.assertEqual(rows["n2"][:3], ["n2", "up", "2"])
        self.assertEqual(rows["n2"][-1], "counter_server")

        code, out, err = await self.cli("status", url(n0), "--json")
        self.assertEqual(code, 0, err)
        view = json.loads(out)
        self.assertEqual(sorted(view["nodes"]), ["n0", "n1", "n2"])

        code, out, err = await self.cli("call", url(n0), "node", "traceroute", "n2")
        self.assertEqual(code, 0, err)
        hops = json.loads(out)
        self.assertEqual([(h["hop"], h["node_id"]) for h in hops], [(1, "n1"), (2, "n2")])
        for hop in hops:
            self.assertGreater(hop["rtt_ms"], 0)

    async def test_ws_rpc(self) -> None:
        """Every call on a /ws/rpc connection continues the upgrade's traceparent."""
        from websockets.sync.client import connect

        n0, _, _ = await self.line()

        def calls() -> list[Any]:
            address = url(n0).replace("http://", "ws://") + "/ws/rpc"
            with connect(address, additional_headers={"traceparent": PARENT}) as socket:
                answers = []
                for i in range(2):
                    body = {"jsonrpc": "2.0", "id": i, "method": "n2/counter_server.increment"}
                    socket.send(json.dumps(body))
                    answers.append(json.loads(socket.recv(timeout=10)))
                return answers

        answers = await deferToThread(calls)
        self.assertEqual([a["result"] for a in answers], [1, 2])
        await wait_for(
            lambda: len(read_spans(self.spans_file("n0"))) >= 2, 5, what="n0's call spans"
        )
        spans = read_spans(self.spans_file("n0"))
        self.assertEqual({s["trace_id"] for s in spans}, {"4bf92f3577b34da6a3ce929d0e0e4736"})
        self.assertEqual({s["parent_span_id"] for s in spans}, {"00f067aa0ba902b7"})


class PkiTraceTests(ObserveTestCase):
    """PKI mode: the trace fields added on the way break no end-to-end code."""

    def pki(self, name: str, authority: Authority) -> dict[str, Any]:
        cert, key = authority.issue(name)
        paths = {}
        for suffix, data in ((".pem", cert), (".key", key)):
            path = os.path.join(self.directory(), name + suffix)
            with open(path, "wb") as f:
                f.write(data)
            paths[suffix] = path
        ca = os.path.join(self.directory(), "ca.pem")
        with open(ca, "wb") as f:
            f.write(authority.pem)
        return {"cert": paths[".pem"], "key": paths[".key"], "ca": ca, "require_client_cert": True}

    async def test_traced_call_across_a_member(self) -> None:
        """A traced call whose path is asked for crosses a member and is answered."""
        authority = Authority("observe CA")
        a = start_node(self, "nodeA", tls=self.pki("nodeA", authority), tracing=self.tracing("a"))
        b = start_node(
            self,
            "nodeB",
            [f"nodeA@{wss(a)}"],
            tls=self.pki("nodeB", authority),
            tracing=self.tracing("b"),
        )
        c = start_node(
            self,
            "nodeC",
            [f"nodeB@{wss(b)}"],
            tls=self.pki("nodeC", authority),
            servers={"counter_server": Counter()},
            tracing=self.tracing("c"),
        )
        await wait_for(lambda: "nodeC" in a.mesh.router.routes(), 20, what="a route to nodeC")
        self.assertNotIn("nodeC", a.mesh.links)  # the call crosses nodeB: codes are checked
        target = CallTarget("nodeC", "counter_server", "increment", (2,))
        target.trace = CallTrace(None, hops := [])
        self.assertEqual(await a.dispatcher.call(target), 2)
        self.assertEqual([node for node, _ in hops], ["nodeA", "nodeB", "nodeC"])
        self.assertIsNotNone(hops[1][1])
        self.assertEqual(
            c.metrics.registry.get_sample_value(
                "relaytx_messages_dropped_total", {"reason": "forged_call"}
            ),
            None,
        )
        await wait_for(lambda: read_spans(self.spans_file("c")), 5, what="nodeC's spans")
        (run,) = [s for s in read_spans(self.spans_file("c")) if s["name"].startswith("run")]
        forwards = [s for s in read_spans(self.spans_file("b")) if s["name"].startswith("forward")]
        self.assertEqual(run["parent_span_id"], forwards[-1]["span_id"])


class LogFormatTests(ObserveTestCase):
    """--log-format json: one JSON object per line, the start-up line first of ours."""

    async def started_lines(self, process: NodeProcess) -> list[dict[str, Any]]:
        process.start()
        await process.wait_healthy()
        assert process.process is not None and process.process.stderr is not None
        process.process.send_signal(15)
        _, err = await_process(process)
        return [json.loads(line) for line in err.decode().splitlines() if line.strip()]

    async def test_relay_node(self) -> None:
        """Every line of relay node's log is JSON; one names node, address, servers, peers."""
        process = NodeProcess(
            self,
            "j1",
            None,
            "--log-format",
            "json",
            "--app",
            os.path.join(ROOT, "examples", "counter.py"),
            "--add-peer",
            "ws://127.0.0.1:9",
        )
        lines = await self.started_lines(process)
        self.assertTrue(lines)
        for line in lines:
            self.assertEqual(line["node_id"], "j1")
            for key in ("time", "level", "event"):
                self.assertIn(key, line)
        (started,) = [line for line in lines if "listening on" in line["event"]]
        self.assertEqual(started["address"], f"http://127.0.0.1:{process.port}")
        self.assertEqual(started["servers"], ["counter_server", "node"])
        self.assertEqual(started["peers"], ["ws://127.0.0.1:9"])
        self.assertEqual(started["level"], "info")

    async def test_twistd(self) -> None:
        """
        Under twistd too, the log is JSON lines (on stdout, where twistd -n
        logs), what an app prints as it loads included.
        """
        import subprocess

        from .helpers import free_port, write_app

        port = free_port()
        app = write_app(
            self.directory(),
            "printing.py",
            "import sys\n"
            "print('loading')\n"
            "def setup(node):\n"
            "    print('oops', file=sys.stderr)\n"
            "    print('set up', end='')\n",
        )
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        command = [twistd, "-n", "relay", "--node-id", "j2", "--port", str(port), "--app", app]
        command += ["--log-format", "json"]
        process = subprocess.Popen(
            command, cwd=self.directory(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())

        async def healthy() -> bool:
            try:
                response = await treq.get(f"http://127.0.0.1:{port}/health", persistent=False)
                return response.code == 200
            except Exception:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                return False

        await wait_for(healthy, 30, 0.1, "twistd's node")
        process.send_signal(15)
        out, _ = process.communicate(timeout=30)
        lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        self.assertTrue(any("listening on" in line["event"] for line in lines), lines)
        for line in lines:
            self.assertEqual(line["node_id"], "j2")
        printed = [
            (n["logger"], n["level"], n["event"])
            for n in lines
            if n["event"] in ("loading", "oops", "set up")
        ]
        self.assertEqual(
            printed,
            [
                ("stdout", "info", "loading"),
                ("stderr", "error", "oops"),
                ("stdout", "info", "set up"),
            ],
        )


def await_process(process: NodeProcess) -> tuple[bytes, bytes]:
    """:returns: the output of a node process once it exits (bounded)."""
    assert process.process is not None
    out, err = process.process.communicate(timeout=30)
    return out or b"", err or b""
