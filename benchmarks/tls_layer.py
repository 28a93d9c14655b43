#!/usr/bin/env python
"""
What a TLS layer costs per message, in this process, with no socket: the
node's own layer (C{relaytx._stdtls}, the standard library's SSLObject)
against Twisted's C{TLSMemoryBIOProtocol} (pyOpenSSL), for messages sent one
per reactor turn and 64 per turn (as at 64 calls in flight).

    python benchmarks/tls_layer.py [--size 300] [--repeat 5]

Each figure is the best of C{--repeat} runs: microseconds for one message
to be written by one end and reach the protocol at the other, both ends'
work included.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import ssl  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.protocols.tls import TLSMemoryBIOFactory  # noqa: E402

from relaytx._stdtls import TLSFactory  # noqa: E402
from relaytx._tls import TlsConfig  # noqa: E402
from tests.support import Authority  # noqa: E402


class Sink(Protocol):
    """Counts the bytes that reach it."""

    def __init__(self) -> None:
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)


class Wire:
    """Two layers joined by string transports, moved by hand."""

    def __init__(self, server: Any, client: Any, clock: Clock) -> None:
        self.server, self.client, self.clock = server, client, clock
        self.st, self.ct = StringTransport(), StringTransport()
        server.makeConnection(self.st)
        client.makeConnection(self.ct)
        for _ in range(10):
            self.move()

    def move(self) -> None:
        self.clock.advance(0)
        for transport, to in ((self.ct, self.server), (self.st, self.client)):
            data = transport.value()
            if data:
                transport.clear()
                to.dataReceived(data)


def layers(directory: Path, kind: str) -> tuple[Wire, Sink]:
    ca = Authority("bench CA")
    (directory / "ca.pem").write_bytes(ca.pem)
    files = {}
    for name in ("n0", "n1"):
        cert, key = ca.issue(name)
        (directory / f"{name}.pem").write_bytes(cert)
        (directory / f"{name}.key").write_bytes(key)
        files[name] = (str(directory / f"{name}.pem"), str(directory / f"{name}.key"))
    clock = Clock()
    sink, source = Sink(), Protocol()
    if kind == "stdlib":
        server = TlsConfig(*files["n1"], str(directory / "ca.pem"), True)
        client = TlsConfig(*files["n0"], str(directory / "ca.pem"))
        sf = TLSFactory(Factory.forProtocol(lambda: sink), server.server_context(), True, clock)
        cf = TLSFactory(
            Factory.forProtocol(lambda: source), client.client_context(), False, clock, "localhost"
        )
    else:
        authority = ssl.Certificate.loadPEM(ca.pem)
        pems = {n: Path(c).read_bytes() + Path(k).read_bytes() for n, (c, k) in files.items()}
        sopts = ssl.PrivateCertificate.loadPEM(pems["n1"]).options(authority)
        copts = ssl.optionsForClientTLS(
            "localhost", authority, ssl.PrivateCertificate.loadPEM(pems["n0"])
        )
        sf = TLSMemoryBIOFactory(sopts, False, Factory.forProtocol(lambda: sink), clock)
        cf = TLSMemoryBIOFactory(copts, True, Factory.forProtocol(lambda: source), clock)
    wire = Wire(sf.buildProtocol(None), cf.buildProtocol(None), clock)
    assert source.transport is not None
    return wire, sink


def per_message(wire: Wire, sink: Sink, size: int, batch: int, messages: int) -> float:
    message = b"x" * size
    write = wire.client.wrappedProtocol.transport.write
    before = sink.count
    start = time.perf_counter()
    for _ in range(messages // batch):
        for _ in range(batch):
            write(message)
        wire.move()
    elapsed = time.perf_counter() - start
    assert sink.count - before == size * (messages // batch) * batch
    return elapsed / (messages // batch * batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'layer':10} {'per turn':>9} {'us/message':>11}")
    with tempfile.TemporaryDirectory() as d:
        for batch in (1, 64):
            for kind in ("twisted", "stdlib"):
                wire, sink = layers(Path(d), kind)
                best = min(
                    per_message(wire, sink, args.size, batch, 12_800) for _ in range(args.repeat)
                )
                print(f"{kind:10} {batch:9d} {best:11.2f}")


if __name__ == "__main__":
    main()
