"""
Tests for L{relaytx._handshake}: both ends of a link's opening, every
transition, with no transport at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from relaytx import _auth
from relaytx._handshake import (
    EXPECT_HEADER,
    NODE_ID_HEADER,
    REGISTRY_OFF_HEADER,
    UNMASKED_HEADER,
    AcceptorHandshake,
    DiallerHandshake,
    HandshakeRefused,
    State,
)
from relaytx._links import LinkRefused
from relaytx.peer import CLOSE_AUTH_FAILED
from relaytx.wire import decode

SECRET = b"0123456789abcdef-cluster"
OTHER = b"fedcba9876543210-intruder"


def nonces(*values: str) -> Iterator[str]:
    """Fixed nonces, so proofs can be computed by hand."""
    return iter(values)


NC, NS = "c" * 64, "5" * 64


class AcceptorTests(SynchronousTestCase):
    """The accepting end."""

    def acceptor(
        self,
        secret: bytes | None = None,
        origins: frozenset[str] = frozenset(),
        refuse: LinkRefused | None = None,
    ) -> AcceptorHandshake:
        self.admitted: list[str] = []

        def admit(peer_id: str) -> None:
            self.admitted.append(peer_id)
            if refuse is not None:
                raise refuse

        return AcceptorHandshake("hB", admit, secret, origins, new_nonce=nonces(NS).__next__)

    def upgrade(self, handshake: AcceptorHandshake, **kwargs: Any) -> dict[str, str]:
        params = kwargs.pop("params", {"node_id": ["hA"]})
        headers = kwargs.pop("headers", {})
        return handshake.upgrade(params, headers, **kwargs)

    def refusal(self, handshake: AcceptorHandshake, **kwargs: Any) -> HandshakeRefused:
        refusal = self.assertRaises(HandshakeRefused, self.upgrade, handshake, **kwargs)
        self.assertIs(handshake.state, State.REFUSED)
        return refusal

    def test_open_mesh(self) -> None:
        """UPGRADING -> ACCEPTED -> OPEN: the answer names this node; the link opens at once."""
        handshake = self.acceptor()
        self.assertIs(handshake.state, State.UPGRADING)
        answer = self.upgrade(handshake)
        self.assertEqual(answer, {NODE_ID_HEADER: "hB"})
        self.assertEqual((handshake.state, handshake.peer_id), (State.ACCEPTED, "hA"))
        self.assertEqual(self.admitted, ["hA"])
        self.assertTrue(handshake.opened())
        self.assertIs(handshake.state, State.OPEN)

    def test_unmasked(self) -> None:
        """A dialler asking for unmasked frames gets the header echoed and the flag set."""
        handshake = self.acceptor()
        answer = self.upgrade(handshake, headers={"x-relaytx-unmasked": "1"})
        self.assertEqual(answer[UNMASKED_HEADER], "1")
        self.assertTrue(handshake.unmasked)
        other = self.acceptor()
        self.assertNotIn(UNMASKED_HEADER, self.upgrade(other))
        self.assertFalse(other.unmasked)

    def test_no_node_id(self) -> None:
        """UPGRADING -> REFUSED (400) without a valid node_id; admission is never asked."""
        for params in ({}, {"node_id": [""]}, {"node_id": ["a b"]}, {"node_id": ["x" * 65]}):
            handshake = self.acceptor()
            refusal = self.refusal(handshake, params=params)
            self.assertEqual((refusal.status, refusal.auth_failure), (400, None))
            self.assertEqual(self.admitted, [])

    def test_origin_refused(self) -> None:
        """A browser origin not in the allowed list is refused with 403 before admission."""
        handshake = self.acceptor(origins=frozenset({"https://ok.example"}))
        refusal = self.refusal(handshake, origin="https://evil.example")
        self.assertEqual(refusal.status, 403)
        self.assertEqual(self.admitted, [])

    def test_origin_allowed(self) -> None:
        """An allowed origin, or none at all, passes."""
        for origin in ("https://ok.example", ""):
            handshake = self.acceptor(origins=frozenset({"https://ok.example"}))
            self.upgrade(handshake, origin=origin)
            self.assertIs(handshake.state, State.ACCEPTED)

    def test_registry_off(self) -> None:
        """Each end says whether its registry is off; the other hears it."""
        handshake = self.acceptor()
        handshake.registry_off = True
        answer = self.upgrade(handshake, headers={REGISTRY_OFF_HEADER: "1"})
        self.assertEqual(answer[REGISTRY_OFF_HEADER], "1")
        self.assertTrue(handshake.peer_registry_off)
        handshake = self.acceptor()
        self.assertNotIn(REGISTRY_OFF_HEADER, self.upgrade(handshake))
        self.assertFalse(handshake.peer_registry_off)

    def test_expected_another_node(self) -> None:
        """
        A dialler expecting another node is refused (421) before admission,
        so a link this node holds is never put at stake; one expecting this
        node is admitted.
        """
        handshake = self.acceptor()
        refusal = self.refusal(handshake, headers={EXPECT_HEADER: "hZ"})
        self.assertEqual(refusal.status, 421)
        self.assertIn("this is hB", refusal.reason)
        self.assertIsNone(refusal.auth_failure)
        self.assertEqual(self.admitted, [])
        handshake = self.acceptor()
        self.upgrade(handshake, headers={EXPECT_HEADER: "hB"})
        self.assertEqual(self.admitted, ["hA"])

    def test_admission_refuses(self) -> None:
        """The node's admission decides last: its status and reason are the refusal's."""
        handshake = self.acceptor(refuse=LinkRefused(409, "already linked"))
        refusal = self.refusal(handshake)
        self.assertEqual((refusal.status, refusal.reason), (409, "already linked"))
        self.assertIsNone(refusal.auth_failure)

    def test_secret_without_nonce(self) -> None:
        """With a secret, a dialler without a (valid) nonce is 401, counted, before admission."""
        for headers in ({}, {"X-Relaytx-Nonce": "zz"}, {"X-Relaytx-Nonce": " " * 64}):
            handshake = self.acceptor(SECRET)
            refusal = self.refusal(handshake, headers=headers)
            self.assertEqual(refusal.status, 401)
            self.assertIsNotNone(refusal.auth_failure)
            self.assertEqual(self.admitted, [])

    def proving(self) -> AcceptorHandshake:
        handshake = self.acceptor(SECRET)
        answer = self.upgrade(handshake, headers={"X-Relaytx-Nonce": NC})
        self.assertEqual(answer[_auth.NONCE_HEADER], NS)
        self.assertEqual(
            answer[_auth.PROOF_HEADER], _auth.acceptor_proof(SECRET, NC, NS, "hB", "hA")
        )
        self.assertFalse(handshake.opened())
        self.assertIs(handshake.state, State.PROVING)
        return handshake

    def proof_frame(self, proof: Any, kind: str = "auth") -> bytes:
        frame = {"type": kind, "from": "hA", "to": "hB", "data": {"proof": proof}}
        return json.dumps(frame).encode()

    def test_right_proof(self) -> None:
        """PROVING -> OPEN on the dialler's proof, computed over both nonces and both ids."""
        handshake = self.proving()
        handshake.first_frame(
            self.proof_frame(_auth.dialler_proof(SECRET, NC, NS, "hA", "hB")), False
        )
        self.assertIs(handshake.state, State.OPEN)

    def test_wrong_proof(self) -> None:
        """PROVING -> REFUSED (4003, counted) on any proof but the right one."""
        wrong = [
            self.proof_frame(_auth.dialler_proof(OTHER, NC, NS, "hA", "hB")),  # another secret
            self.proof_frame(_auth.acceptor_proof(SECRET, NC, NS, "hB", "hA")),  # our own, replayed
            self.proof_frame(_auth.dialler_proof(SECRET, NC, NS, "hA", "hC")),  # for another node
            self.proof_frame(_auth.dialler_proof(SECRET, NC, NS, "hA", "hB"), kind="ping"),
            self.proof_frame(None),
            self.proof_frame(7),
            b"not json",
            b"[]",
        ]
        for frame in wrong:
            handshake = self.proving()
            refusal = self.assertRaises(HandshakeRefused, handshake.first_frame, frame, False)
            self.assertEqual(refusal.status, CLOSE_AUTH_FAILED)
            self.assertIsNotNone(refusal.auth_failure)
            self.assertIs(handshake.state, State.REFUSED)

    def test_binary_proof(self) -> None:
        """A binary first frame is no proof, whatever it holds."""
        handshake = self.proving()
        frame = self.proof_frame(_auth.dialler_proof(SECRET, NC, NS, "hA", "hB"))
        self.assertRaises(HandshakeRefused, handshake.first_frame, frame, True)

    def test_timed_out(self) -> None:
        """PROVING -> REFUSED (4003, counted) when no proof comes in time."""
        handshake = self.proving()
        refusal = handshake.timed_out()
        self.assertEqual(refusal.status, CLOSE_AUTH_FAILED)
        self.assertIsNotNone(refusal.auth_failure)
        self.assertIs(handshake.state, State.REFUSED)

    def test_out_of_order(self) -> None:
        """Events in a state that does not take them are a programming error."""
        handshake = self.acceptor()
        self.assertRaises(RuntimeError, handshake.opened)
        self.assertRaises(RuntimeError, handshake.first_frame, b"{}", False)
        self.assertRaises(RuntimeError, handshake.timed_out)
        self.upgrade(handshake)
        self.assertRaises(RuntimeError, self.upgrade, handshake)
        handshake.opened()
        self.assertRaises(RuntimeError, handshake.first_frame, b"{}", False)


class DiallerTests(SynchronousTestCase):
    """The dialling end."""

    def dialler(self, secret: bytes | None = None, expected: str | None = None) -> DiallerHandshake:
        return DiallerHandshake("hA", secret, expected, new_nonce=nonces(NC).__next__)

    def test_open_mesh(self) -> None:
        """CONNECTING -> REQUESTED -> ACCEPTED -> OPEN: the acceptor's header names it."""
        handshake = self.dialler()
        self.assertIs(handshake.state, State.CONNECTING)
        self.assertEqual(handshake.request_headers(), {UNMASKED_HEADER: "1"})
        self.assertIs(handshake.state, State.REQUESTED)
        expecting = self.dialler(expected="hB").request_headers()
        self.assertEqual(expecting, {UNMASKED_HEADER: "1", EXPECT_HEADER: "hB"})
        quiet = self.dialler()
        quiet.registry_off = True
        self.assertEqual(quiet.request_headers()[REGISTRY_OFF_HEADER], "1")
        quiet.answered({"X-Relaytx-Node-Id": "hB", REGISTRY_OFF_HEADER: "1"})
        self.assertTrue(quiet.peer_registry_off)
        handshake.answered({"X-Relaytx-Node-Id": "hB", "X-Relaytx-Unmasked": "1"})
        self.assertEqual((handshake.state, handshake.peer_id), (State.ACCEPTED, "hB"))
        self.assertTrue(handshake.unmasked)
        self.assertIsNone(handshake.opened(1.0))
        self.assertIs(handshake.state, State.OPEN)
        self.assertIsNone(handshake.keys)

    def test_masked(self) -> None:
        """An acceptor that does not echo the unmasked header gets masked frames."""
        handshake = self.dialler()
        handshake.request_headers()
        handshake.answered({"X-Relaytx-Node-Id": "hB"})
        self.assertFalse(handshake.unmasked)

    def test_original_node(self) -> None:
        """ACCEPTED -> IDENTIFYING -> OPEN: no id header: a ping goes first, a frame names it."""
        handshake = self.dialler()
        handshake.request_headers()
        handshake.answered({})
        self.assertIsNone(handshake.peer_id)
        ping = decode(handshake.opened(7.5) or b"")
        self.assertEqual((ping.type, ping.sender, ping.to), ("ping", "hA", ""))
        self.assertEqual((ping.data, ping.route, ping.ttl), ({"timestamp": 7.5}, ("hA",), 10))
        self.assertIs(handshake.state, State.IDENTIFYING)
        frame = b'{"type":"pong","from":"node1","to":"hA","data":{"timestamp":7.5}}\n'
        envelope = handshake.first_frame(frame, False)
        self.assertEqual((envelope.sender, envelope.type), ("node1", "pong"))
        self.assertEqual((handshake.state, handshake.peer_id), (State.OPEN, "node1"))

    def test_original_node_expected(self) -> None:
        """Told to expect node1 (ID@URL), the dialler pings node1 and keeps only node1."""
        handshake = self.dialler(expected="node1")
        handshake.request_headers()
        handshake.answered({})
        self.assertEqual(decode(handshake.opened(1.0) or b"").to, "node1")
        frame = b'{"type":"pong","from":"node1","to":"hA","data":{"timestamp":1}}'
        handshake.first_frame(frame, False)
        self.assertEqual((handshake.state, handshake.peer_id), (State.OPEN, "node1"))

    def test_original_node_not_expected(self) -> None:
        """IDENTIFYING -> REFUSED (4003, counted) when the first frame names another node."""
        handshake = self.dialler(expected="node1")
        handshake.request_headers()
        handshake.answered({})
        handshake.opened(1.0)
        frame = b'{"type":"pong","from":"node9","to":"hA","data":{"timestamp":1}}'
        refusal = self.assertRaises(HandshakeRefused, handshake.first_frame, frame, False)
        self.assertEqual(refusal.status, CLOSE_AUTH_FAILED)
        self.assertIsNotNone(refusal.auth_failure)
        self.assertIs(handshake.state, State.REFUSED)

    def test_expected_id(self) -> None:
        """REQUESTED -> REFUSED (403, counted) when the acceptor is not the node expected."""
        handshake = self.dialler(expected="hB")
        handshake.request_headers()
        refusal = self.assertRaises(
            HandshakeRefused, handshake.answered, {"X-Relaytx-Node-Id": "hX"}
        )
        self.assertEqual(refusal.status, 403)
        self.assertIsNotNone(refusal.auth_failure)
        right = self.dialler(expected="hB")
        right.request_headers()
        right.answered({"X-Relaytx-Node-Id": "hB"})
        self.assertIs(right.state, State.ACCEPTED)

    def test_unnamed_first_frame(self) -> None:
        """IDENTIFYING -> REFUSED (1002) when the first frame names no valid node."""
        for frame, binary in ((b"garbage", False), (b'{"type":"ping"}', False), (b"\x00", True)):
            handshake = self.dialler()
            handshake.request_headers()
            handshake.answered({})
            handshake.opened(1.0)
            refusal = self.assertRaises(HandshakeRefused, handshake.first_frame, frame, binary)
            self.assertEqual(refusal.status, 1002)
            self.assertIs(handshake.state, State.REFUSED)
        handshake = self.dialler()
        handshake.request_headers()
        handshake.answered({})
        handshake.opened(1.0)
        frame = b'{"type":"ping","from":"bad id!","to":"hA","data":{}}'
        self.assertRaises(HandshakeRefused, handshake.first_frame, frame, False)

    def secret_answer(self, proof: str | None = None, **extra: str) -> dict[str, str]:
        answer = {
            "X-Relaytx-Node-Id": "hB",
            "X-Relaytx-Nonce": NS,
            "X-Relaytx-Proof": proof or _auth.acceptor_proof(SECRET, NC, NS, "hB", "hA"),
        }
        answer.update(extra)
        return answer

    def test_secret(self) -> None:
        """With a secret: the nonce goes out, the acceptor's proof is checked, ours goes first."""
        handshake = self.dialler(SECRET)
        self.assertEqual(handshake.request_headers()[_auth.NONCE_HEADER], NC)
        handshake.answered(self.secret_answer())
        frame = handshake.opened(1.0)
        assert frame is not None
        sent = json.loads(frame)
        self.assertEqual((sent["type"], sent["from"], sent["to"]), ("auth", "hA", "hB"))
        self.assertEqual(sent["data"], {"proof": _auth.dialler_proof(SECRET, NC, NS, "hA", "hB")})
        self.assertIs(handshake.state, State.OPEN)

    def test_acceptor_without_proof(self) -> None:
        """REQUESTED -> REFUSED (401, counted) when the acceptor proves no secret."""
        for answer in (
            {"X-Relaytx-Node-Id": "hB"},
            {"X-Relaytx-Node-Id": "hB", "X-Relaytx-Nonce": "short"},
            {"X-Relaytx-Nonce": NS, "X-Relaytx-Proof": "0" * 64},  # no id to check it against
        ):
            handshake = self.dialler(SECRET)
            handshake.request_headers()
            refusal = self.assertRaises(HandshakeRefused, handshake.answered, answer)
            self.assertEqual(refusal.status, 401)
            self.assertIsNotNone(refusal.auth_failure)
            self.assertIs(handshake.state, State.REFUSED)

    def test_acceptor_wrong_proof(self) -> None:
        """REQUESTED -> REFUSED (401, counted) on any acceptor proof but the right one."""
        for proof in (
            _auth.acceptor_proof(OTHER, NC, NS, "hB", "hA"),
            _auth.dialler_proof(SECRET, NC, NS, "hA", "hB"),  # the dialler's role
            _auth.acceptor_proof(SECRET, NC, NS, "hC", "hA"),  # another node's
            "0" * 64,
        ):
            handshake = self.dialler(SECRET)
            handshake.request_headers()
            refusal = self.assertRaises(
                HandshakeRefused, handshake.answered, self.secret_answer(proof)
            )
            self.assertEqual(refusal.status, 401)
            self.assertIsNotNone(refusal.auth_failure)

    def test_out_of_order(self) -> None:
        """Events in a state that does not take them are a programming error."""
        handshake = self.dialler()
        self.assertRaises(RuntimeError, handshake.answered, {})
        self.assertRaises(RuntimeError, handshake.opened, 1.0)
        handshake.request_headers()
        self.assertRaises(RuntimeError, handshake.request_headers)
        self.assertRaises(RuntimeError, handshake.first_frame, b"{}", False)


class BothEndsTests(SynchronousTestCase):
    """An acceptor and a dialler talking to each other, with nothing in between."""

    def run_handshake(self, dial_secret: bytes | None, accept_secret: bytes | None) -> str:
        """:returns: how it ended: "open", or the refusal's status."""
        dialler = DiallerHandshake("hA", dial_secret, None)
        acceptor = AcceptorHandshake("hB", lambda peer: None, accept_secret)
        try:
            answer = acceptor.upgrade({"node_id": ["hA"]}, dialler.request_headers())
            dialler.answered(answer)
            proof = dialler.opened(1.0)
            if acceptor.opened():
                return "open"
            assert proof is not None
            acceptor.first_frame(proof, False)
        except HandshakeRefused as refusal:
            return str(refusal.status)
        return "open"

    def test_outcomes(self) -> None:
        """Same secret or none: open; different secrets or one missing: refused, and where."""
        self.assertEqual(self.run_handshake(None, None), "open")
        self.assertEqual(self.run_handshake(SECRET, SECRET), "open")
        self.assertEqual(self.run_handshake(None, SECRET), "401")  # the acceptor refuses
        self.assertEqual(self.run_handshake(SECRET, None), "401")  # the dialler refuses
        self.assertEqual(self.run_handshake(OTHER, SECRET), "401")  # the dialler refuses

    def test_link_keys(self) -> None:
        """Both ends derive the same two keys, one per direction, fresh for each link."""
        keys = []
        for _ in range(2):
            dialler = DiallerHandshake("hA", SECRET, None)
            acceptor = AcceptorHandshake("hB", lambda peer: None, SECRET)
            dialler.answered(acceptor.upgrade({"node_id": ["hA"]}, dialler.request_headers()))
            acceptor.opened()
            acceptor.first_frame(dialler.opened(1.0) or b"", False)
            assert dialler.keys is not None and acceptor.keys is not None
            self.assertEqual(dialler.keys.send, acceptor.keys.receive)
            self.assertEqual(dialler.keys.receive, acceptor.keys.send)
            self.assertNotEqual(dialler.keys.send, dialler.keys.receive)
            keys.append(dialler.keys)
        self.assertNotEqual(keys[0], keys[1])


class PkiTests(SynchronousTestCase):
    """In PKI mode each end's certificate must name the id it claims."""

    def test_acceptor(self) -> None:
        """The dialler's certificate must name the node_id it claims (403, counted)."""
        for names, ok in ((frozenset({"hA", "localhost"}), True), (frozenset({"hC"}), False)):
            handshake = AcceptorHandshake("hB", lambda peer: None, pki=True)
            if ok:
                handshake.upgrade({"node_id": ["hA"]}, {}, peer_names=names)
                self.assertIs(handshake.state, State.ACCEPTED)
                continue
            refusal = self.assertRaises(
                HandshakeRefused, handshake.upgrade, {"node_id": ["hA"]}, {}, "", names
            )
            self.assertEqual(refusal.status, 403)
            self.assertIsNotNone(refusal.auth_failure)

    def test_dialler(self) -> None:
        """The acceptor's certificate must name the id it answers with (403, counted)."""
        for names, ok in ((frozenset({"hB"}), True), (frozenset({"hC"}), False)):
            handshake = DiallerHandshake("hA", pki=True)
            handshake.request_headers()
            if ok:
                handshake.answered({"X-Relaytx-Node-Id": "hB"}, names)
                continue
            refusal = self.assertRaises(
                HandshakeRefused, handshake.answered, {"X-Relaytx-Node-Id": "hB"}, names
            )
            self.assertEqual(refusal.status, 403)
            self.assertIsNotNone(refusal.auth_failure)
        handshake = DiallerHandshake("hA", pki=True)
        handshake.request_headers()
        self.assertRaises(HandshakeRefused, handshake.answered, {}, frozenset({"hB"}))
