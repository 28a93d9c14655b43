"""
Tests for L{relaytx._pki} and L{relaytx._records}: certified node records,
the adjacency they allow, end-to-end codes, and how records travel.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from relaytx import _json
from relaytx._pki import (
    REPLAY_WINDOW,
    EndToEnd,
    NodeIdentity,
    NodeRecord,
    RecordBook,
    load_identity,
)
from relaytx._tls import TlsError
from relaytx.errors import MalformedMessage
from relaytx.wire import (
    CallSpec,
    Envelope,
    ServerCall,
    ServerResponse,
    decode,
    encode,
    rfc3339,
    server_table,
)
from tests.support import Authority

CA = Authority("mesh CA")
OTHER_CA = Authority("other CA")
_ISSUED: dict[str, tuple[bytes, bytes]] = {}


def json_round_trip(data: Any) -> Any:
    """C{data} as the far end reads it: encoded with its keys in reverse order, then parsed."""

    def reordered(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reordered(value[k]) for k in reversed(list(value))}
        if isinstance(value, list | tuple):
            return [reordered(v) for v in value]
        return value

    return _json.loads(_json.dumps(reordered(data)))


def identity(name: str, authority: Authority = CA, node_id: str | None = None) -> NodeIdentity:
    """The identity of node C{name}, its certificate from C{authority} (cached per name)."""
    key = f"{name}/{id(authority)}"
    if key not in _ISSUED:
        _ISSUED[key] = authority.issue(name)
    cert, private = _ISSUED[key]
    return NodeIdentity(node_id or name, cert, private, CA.pem)


class IdentityTests(SynchronousTestCase):
    """A node's identity is the one its certificate names."""

    def test_names(self) -> None:
        """A certificate naming the id (common name or DNS name) makes an identity."""
        self.assertEqual(identity("nodeA").node_id, "nodeA")
        cert, key = CA.issue("whatever", dns=("nodeZ",))
        self.assertEqual(NodeIdentity("nodeZ", cert, key, CA.pem).node_id, "nodeZ")

    def test_wrong_name(self) -> None:
        """A certificate not naming the node id is refused, naming its names in the message."""
        error = self.assertRaises(TlsError, identity, "nodeA", CA, "nodeB")
        self.assertIn("nodeA", str(error))
        self.assertIn("'nodeB'", str(error))


class LoadIdentityTests(SynchronousTestCase):
    """
    A node starts in PKI mode only with a certificate its peers take: one
    they would all refuse is one error line at start, not a node that can
    link to no one.
    """

    def load(self, cert: bytes, key: bytes, now: float | None = None) -> NodeIdentity:
        directory = tempfile.mkdtemp(prefix="relaytx-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        paths = []
        for name, data in (("n.pem", cert), ("n.key", key), ("ca.pem", CA.pem)):
            path = os.path.join(directory, name)
            with open(path, "wb") as f:
                f.write(data)
            paths.append(path)
        return load_identity("nodeA", *paths, now=now)

    def test_valid(self) -> None:
        """A certificate of the mesh's CA, valid now, naming the node, loads."""
        self.assertEqual(self.load(*CA.issue("nodeA")).node_id, "nodeA")

    def test_refused(self) -> None:
        """Expired, not yet valid, or from another CA: one clear error."""
        other = Authority("mesh CA")  # (another CA of the same name)
        for (cert, key), now, why in [
            (CA.issue("nodeA", days=-1), None, "tls.cert has expired: not after "),
            (CA.issue("nodeA"), time.time() - 86400, "tls.cert is not valid yet: not before "),
            (other.issue("nodeA"), None, "tls.cert is not signed by tls.ca"),
        ]:
            with self.subTest(why=why):
                error = self.assertRaises(TlsError, self.load, cert, key, now)
                self.assertIn(why, str(error))


class RecordTests(SynchronousTestCase):
    """Records are taken only when their certificate and signature hold."""

    def setUp(self) -> None:
        self.me = identity("nodeA")
        self.book = RecordBook(self.me)

    def test_take_signed(self) -> None:
        """A record signed by a certificate the CA issued for that node is taken once."""
        record = identity("nodeB").record(5, ["nodeA", "nodeC"])
        self.assertEqual(record.links, ("nodeA", "nodeC"))
        self.assertIsNone(self.book.take(record))
        self.assertIn("nodeB", self.book)
        self.assertEqual(self.book.take(record), "old")

    def test_newer_replaces(self) -> None:
        """A record with a higher sequence number replaces the one held; a lower one does not."""
        b = identity("nodeB")
        self.book.take(b.record(5, ["nodeA"]))
        self.assertEqual(self.book.take(b.record(4, ["nodeC"])), "old")
        self.assertIsNone(self.book.take(b.record(6, ["nodeC"])))
        self.assertFalse(self.book.adjacent("nodeA", "nodeB"))

    def test_other_ca(self) -> None:
        """A record whose certificate another CA signed is refused."""
        record = identity("nodeB", OTHER_CA).record(1, ["nodeA"])
        self.assertIn("CA did not sign", self.book.take(record) or "")
        self.assertNotIn("nodeB", self.book)

    def test_someone_elses_record(self) -> None:
        """A member cannot publish a record for another node: its certificate does not name it."""
        mallory = identity("mallory")
        forged = mallory.record(1, ["nodeA"])
        forged = NodeRecord("nodeB", 99, forged.links, forged.x25519, forged.cert, forged.signature)
        self.assertIn("does not name", self.book.take(forged) or "")
        self.assertNotIn("nodeB", self.book)

    def test_altered(self) -> None:
        """Any field changed after signing breaks the signature."""
        record = identity("nodeB").record(1, ["nodeA"])
        for changed in (
            NodeRecord("nodeB", 2, record.links, record.x25519, record.cert, record.signature),
            NodeRecord(
                "nodeB", 1, ("nodeA", "nodeC"), record.x25519, record.cert, record.signature
            ),
            NodeRecord("nodeB", 1, record.links, "00" * 32, record.cert, record.signature),
            NodeRecord("nodeB", 1, record.links, record.x25519, record.cert, "AAAA"),
            NodeRecord("nodeB", 1, record.links, record.x25519, record.cert, "not base64!"),
        ):
            self.assertIsNotNone(self.book.take(changed))
        self.assertNotIn("nodeB", self.book)

    def test_expired(self) -> None:
        """A record whose certificate has expired is refused."""
        cert, key = CA.issue("nodeB", days=-1)
        record = NodeIdentity("nodeB", cert, key, CA.pem).record(1, ["nodeA"])
        self.assertIn("expired", self.book.take(record) or "")

    def test_idempotent_methods_signed(self) -> None:
        """A record states its node's idempotent methods under its signature."""
        table = server_table([("ledger", ("total",))])
        record = identity("nodeB").record(2, ["nodeA"], table)
        self.assertEqual(NodeRecord.from_data(record.to_data()), record)
        self.assertIsNone(self.book.idempotent_of("nodeB"))
        self.assertIsNone(self.book.take(record))
        self.assertEqual(self.book.idempotent_of("nodeB"), {"ledger": ("total",)})
        widened = attrs.evolve(record, idempotent=server_table([("ledger", ("total", "add"))]))
        self.assertIn("signature", self.book.take(attrs.evolve(widened, seq=3)) or "")
        self.assertEqual(self.book.idempotent_of("nodeB"), {"ledger": ("total",)})
        for bad in ({"ledger": "total"}, {"ledger": [7]}, ["ledger"]):
            data = {**record.to_data(), "idempotent": bad}
            self.assertRaises(MalformedMessage, NodeRecord.from_data, data)

    def test_wire_form(self) -> None:
        """A record survives its wire form; malformed ones are refused as such."""
        record = identity("nodeB").record(3, ["nodeA"])
        self.assertEqual(NodeRecord.from_data(record.to_data()), record)
        for bad in (
            {**record.to_data(), "seq": -1},
            {**record.to_data(), "links": ["ok", "not ok!"]},
            {**record.to_data(), "node_id": 7},
            {**record.to_data(), "x25519": "short"},
            {k: v for k, v in record.to_data().items() if k != "cert"},
        ):
            self.assertRaises(MalformedMessage, NodeRecord.from_data, bad)


class AdjacencyTests(SynchronousTestCase):
    """A path is used only when both ends declare each of its links."""

    def setUp(self) -> None:
        self.book = RecordBook(identity("nodeA"))
        for name, links in {
            "nodeA": ["nodeB", "mallory"],
            "nodeB": ["nodeA", "nodeC"],
            "nodeC": ["nodeB"],
            "mallory": ["nodeA", "nodeC"],  # claims a link nodeC does not declare
        }.items():
            self.assertIsNone(self.book.take(identity(name).record(1, links)))

    def test_adjacent(self) -> None:
        """Both records must list each other."""
        self.assertTrue(self.book.adjacent("nodeB", "nodeC"))
        self.assertTrue(self.book.adjacent("nodeC", "nodeB"))
        self.assertFalse(self.book.adjacent("mallory", "nodeC"))
        self.assertFalse(self.book.adjacent("nodeC", "nodeZ"))  # no record of nodeZ

    def test_accept_path(self) -> None:
        """The true path to nodeC is accepted; the member's claimed shortcut is not."""
        self.assertTrue(self.book.accept_path("nodeB", ("nodeC",)))
        self.assertFalse(self.book.accept_path("mallory", ("nodeC",)))
        self.assertFalse(self.book.accept_path("mallory", ("nodeC", "nodeB")))
        self.assertTrue(self.book.accept_path("mallory", ("nodeA", "nodeB", "nodeC")))  # all real
        self.assertTrue(self.book.accept_path("nodeB", ()))


class EndToEndTests(SynchronousTestCase):
    """Codes only a caller and its callee can make."""

    def setUp(self) -> None:
        self.ids = {n: identity(n) for n in ("nodeA", "nodeC", "mallory")}
        self.e2e: dict[str, EndToEnd] = {}
        for name, me in self.ids.items():
            book = RecordBook(me)
            for other in self.ids.values():
                book.take(other.record(1, []))
            self.e2e[name] = EndToEnd(me, book)
        self.call = ServerCall(CallSpec("counter", "increment", (1,), {"by": 2}, 5.0), "r1")
        self.now = time.time()
        self.issued = rfc3339(self.now)

    def signed_call(self, **changes: Any) -> ServerCall:
        call = self.call
        mac = self.e2e["nodeA"].seal_call("nodeC", call, self.issued)
        return ServerCall(changes.get("call", call.call), changes.get("rid", "r1"), mac)

    def test_call(self) -> None:
        """The callee takes its caller's code, once; a replay of it is refused."""
        call = self.signed_call()
        self.assertIsNone(self.e2e["nodeC"].check_call("nodeA", call, self.issued, self.now))
        self.assertIn("replay", self.e2e["nodeC"].check_call("nodeA", call, self.issued, self.now))

    def test_call_forged(self) -> None:
        """A call changed on its way, claimed from someone else, or coded by a third is refused."""
        c = self.e2e["nodeC"]
        altered = self.signed_call(call=CallSpec("counter", "increment", (100,), {}, 5.0))
        self.assertIsNotNone(c.check_call("nodeA", altered, self.issued, self.now))
        self.assertIsNotNone(
            c.check_call("nodeA", self.signed_call(rid="r2"), self.issued, self.now)
        )
        self.assertIsNotNone(c.check_call("mallory", self.signed_call(), self.issued, self.now))
        forged = ServerCall(
            self.call.call, "r1", self.e2e["mallory"].seal_call("nodeC", self.call, self.issued)
        )
        self.assertIsNotNone(c.check_call("nodeA", forged, self.issued, self.now))
        self.assertIsNotNone(
            c.check_call("nodeA", ServerCall(self.call.call, "r1"), self.issued, self.now)
        )

    def test_message(self) -> None:
        """
        A message of a user's own type carries its sender's code: its
        destination takes it as sent, within the replay window, and not
        changed, claimed by another, or coded by a third.
        """

        def message(sender: str, when: float, **data: Any) -> Envelope:
            envelope = Envelope(
                "shout", "nodeA", "nodeC", {"text": "hi", **data}, "m1", rfc3339(when)
            )
            return self.e2e[sender].seal_message(envelope)

        c = self.e2e["nodeC"]
        sealed = message("nodeA", self.now)
        wire = Envelope(
            **{**attrs.asdict(sealed, recurse=False), "data": json_round_trip(sealed.data)}
        )
        self.assertTrue(c.check_message(wire, self.now))
        self.assertFalse(
            c.check_message(attrs.evolve(sealed, data={**sealed.data, "text": "ho"}), self.now)
        )
        self.assertFalse(c.check_message(attrs.evolve(sealed, id="m2"), self.now))
        self.assertFalse(c.check_message(attrs.evolve(sealed, sender="mallory"), self.now))
        self.assertFalse(c.check_message(message("mallory", self.now), self.now))
        self.assertFalse(c.check_message(attrs.evolve(sealed, data={"text": "hi"}), self.now))
        self.assertFalse(c.check_message(sealed, self.now + REPLAY_WINDOW + 1))
        self.assertTrue(c.check_message(sealed, self.now + REPLAY_WINDOW - 1))

    def test_call_window(self) -> None:
        """A call issued outside the replay window, or with another timestamp, is refused."""
        c = self.e2e["nodeC"]
        call = self.signed_call()
        late = self.now + REPLAY_WINDOW + 1
        self.assertIn("issued", c.check_call("nodeA", call, self.issued, late) or "")
        other = rfc3339(self.now + 1)
        self.assertIsNotNone(c.check_call("nodeA", call, other, self.now))
        self.assertIsNotNone(c.check_call("nodeA", call, None, self.now))

    def test_replays_under_load(self) -> None:
        """
        However many calls a caller makes, a replay of one the windows still
        let in is refused: the ids of its last REORDER_WINDOW seconds are all
        kept, and older ones are refused by the window.
        """
        from relaytx._pki import REORDER_WINDOW, _Taken

        taken = _Taken()
        now = self.now
        # 150,000 calls over 15 s (10,000 a second), each taken once.
        for i in range(150_000):
            self.assertIsNone(taken.take(f"r{i}", now + i / 10_000, now + i / 10_000))
        end = now + 15
        for i in (0, 1, 75_000, 149_999):
            self.assertIn("replay", taken.take(f"r{i}", now + i / 10_000, end) or "")
        # Much later (by the caller's clock), the first ones are forgotten,
        # and refused as too old.
        later = now + 15 + REORDER_WINDOW
        self.assertIsNone(taken.take("new", later, later))
        self.assertLess(len(taken.ids), 150_000)
        self.assertIn("before", taken.take("r0", now, later) or "")

    def test_reorder_window(self) -> None:
        """A call issued long before its caller's newest is refused; other callers are apart."""
        from relaytx._pki import REORDER_WINDOW

        c = self.e2e["nodeC"]

        def call(rid: str, issued: float, caller: str = "nodeA") -> str | None:
            stamp = rfc3339(issued)
            made = ServerCall(self.call.call, rid)
            made.mac = self.e2e[caller].seal_call("nodeC", made, stamp)
            return c.check_call(caller, made, stamp, self.now)

        self.assertIsNone(call("new", self.now))
        self.assertIsNone(call("late-but-not-too-late", self.now - REORDER_WINDOW + 1))
        self.assertIn("before", call("too-late", self.now - REORDER_WINDOW - 1) or "")
        self.assertIsNone(call("other-caller", self.now - REORDER_WINDOW - 1, "mallory"))

    def test_flood(self) -> None:
        """A caller past the most calls remembered has its calls refused, not forgotten."""
        from relaytx import _pki

        self.patch(_pki, "MAX_TAKEN", 3)
        taken = _pki._Taken()
        for i in range(3):
            self.assertIsNone(taken.take(f"r{i}", self.now, self.now))
        self.assertIn("more calls", taken.take("r3", self.now, self.now) or "")
        self.assertIn("replay", taken.take("r0", self.now, self.now) or "")

    def test_answer(self) -> None:
        """Only the callee's code makes an answer good, and only for what it answered."""
        response = ServerResponse("r1", True, "nodeC", {"count": 3})
        response.mac = self.e2e["nodeC"].seal_answer("nodeA", response)
        a = self.e2e["nodeA"]
        self.assertTrue(a.check_answer("nodeC", response, response.mac))
        changed = ServerResponse("r1", True, "nodeC", {"count": 999}, mac=response.mac)
        self.assertFalse(a.check_answer("nodeC", changed, changed.mac))
        forged = ServerResponse("r1", True, "nodeC", {"count": 999})
        forged.mac = self.e2e["mallory"].seal_answer("nodeA", forged)
        self.assertFalse(a.check_answer("nodeC", forged, forged.mac))
        self.assertFalse(a.check_answer("nodeC", forged, None))

    def test_every_field_coded(self) -> None:
        """Changing any field of a call or an answer on the way changes what its code must be."""
        c, issued = self.e2e["nodeC"], self.issued
        spec = CallSpec("counter", "increment", (1,), {"by": 2}, 5.0)
        good = ServerCall(spec, "r1", caller="client")
        good.mac = self.e2e["nodeA"].seal_call("nodeC", good, issued)
        changes = {
            "server": attrs.evolve(good, call=attrs.evolve(spec, server_name="other")),
            "method": attrs.evolve(good, call=attrs.evolve(spec, method="reset")),
            "args": attrs.evolve(good, call=attrs.evolve(spec, args=(1, 2))),
            "kwargs": attrs.evolve(good, call=attrs.evolve(spec, kwargs={"by": 3})),
            "caller": attrs.evolve(good, caller="someone"),
            "response id": attrs.evolve(good, response_id="r9"),
        }
        for what, call in changes.items():
            self.assertIn("code", c.check_call("nodeA", call, issued, self.now) or "", what)
        later = rfc3339(self.now + 1)
        self.assertIn("code", c.check_call("nodeA", good, later, self.now) or "")
        self.assertIsNone(c.check_call("nodeA", good, issued, self.now))
        a = self.e2e["nodeA"]
        failed = ServerResponse("r1", False, "nodeC", error="no", error_code=-32000)
        failed.mac = c.seal_answer("nodeA", failed)
        self.assertTrue(a.check_answer("nodeC", failed, failed.mac))
        for what, answer in {
            "success": attrs.evolve(failed, success=True),
            "message": attrs.evolve(failed, error="yes"),
            "code": attrs.evolve(failed, error_code=-32001),
            "data": attrs.evolve(failed, error_data={"x": 1}),
            "node": attrs.evolve(failed, node_id="mallory"),
        }.items():
            self.assertFalse(a.check_answer("nodeC", answer, failed.mac), what)
        # The path report is the forwarders' word, not the callee's.
        reported = attrs.evolve(failed, trace_path={"route": ["nodeB"]})
        self.assertTrue(a.check_answer("nodeC", reported, failed.mac))

    def test_codes_survive_the_wire(self) -> None:
        """A call and its answer, coded, encoded and read back as a node reads them, hold."""
        spec = CallSpec("counter", "increment", (1, [2, 3]), {"b": 1, "a": {"y": 2, "x": 1}}, 5.0)
        call = ServerCall(spec, "r1")
        call.mac = self.e2e["nodeA"].seal_call("nodeC", call, self.issued)
        read = ServerCall.from_data(json_round_trip(call.to_data()))
        self.assertIsNone(self.e2e["nodeC"].check_call("nodeA", read, self.issued, self.now))
        answer = ServerResponse("r1", True, "nodeC", {"z": [1, 2], "a": None})
        answer.mac = self.e2e["nodeC"].seal_answer("nodeA", answer)
        back = ServerResponse.from_data(json_round_trip(answer.to_data()))
        self.assertTrue(self.e2e["nodeA"].check_answer("nodeC", back, back.mac))

    def test_wide_integers_keep_their_codes(self) -> None:
        """An answer holding integers past 64 bits, through the wire codec, is still good."""
        answer = ServerResponse("r1", True, "nodeC", {"big": 2**70, "neg": [-(2**65)]})
        answer.mac = self.e2e["nodeC"].seal_answer("nodeA", answer)
        frame = encode(Envelope.create(answer, "nodeC", "nodeA", now=self.now))
        back = ServerResponse.from_data(decode(frame).data)
        self.assertEqual(back.result, {"big": 2**70, "neg": [-(2**65)]})
        self.assertTrue(self.e2e["nodeA"].check_answer("nodeC", back, back.mac))

    def test_keys(self) -> None:
        """Caller and callee derive one key; any other pair another one."""

        def code(node: str, peer: str) -> str:
            # Under one key, the same bytes give the same code.
            keyed = self.e2e[node].key(peer)
            assert keyed is not None
            return keyed.copy().hexdigest()

        self.assertEqual(code("nodeA", "nodeC"), code("nodeC", "nodeA"))
        self.assertNotEqual(code("nodeA", "nodeC"), code("mallory", "nodeC"))
        self.assertIsNone(self.e2e["nodeA"].key("stranger"))


class TimestampTests(SynchronousTestCase):
    """The timestamps calls carry parse back to the time they name."""

    def test_round_trip(self) -> None:
        """rfc3339 output is what check_call reads."""
        now = time.time()
        parsed = datetime.fromisoformat(rfc3339(now)).astimezone(UTC).timestamp()
        self.assertAlmostEqual(parsed, now, places=5)
