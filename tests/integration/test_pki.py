"""
PKI mode on real sockets: a member with its own valid certificate tries
to act as another node, and fails each way.

Nodes link over mutual TLS with certificates from one CA, each naming its
node. The member, C{mallory}, is a real node (its certificate is valid):
the misbehaviour is code it runs, as an attacker would, while the nodes
it attacks run unchanged.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any

from attrs import frozen
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from relaytx._calls import CallTarget
from relaytx._ribs import Wanted
from relaytx.errors import AccessDenied, CallTimeout, NodeUnreachable
from relaytx.node import RelayNode
from relaytx.server import Server, exposed
from relaytx.wire import (
    Envelope,
    NodeInfo,
    Payload,
    ServerCall,
    ServerResponse,
    new_id,
    rfc3339,
    server_table,
)
from tests.support import Authority

from .helpers import Counter, start_node, wait_for
from .test_security import _Files, dropped, failures

CA = Authority("mesh CA")


class PkiTests(_Files, TestCase):
    """Each impersonation a member could try, tried."""

    timeout = 60

    def pki(self, name: str) -> dict[str, Any]:
        """:returns: the C{[tls]} table of node C{name} in PKI mode."""
        cert, key = CA.issue(name)
        return {
            "cert": self.write(f"{name}.pem", cert),
            "key": self.write(f"{name}.key", key),
            "ca": self.write("ca.pem", CA.pem),
            "require_client_cert": True,
        }

    def node(self, name: str, peers: list[RelayNode] = (), **kwargs: Any) -> RelayNode:  # type: ignore[assignment]
        addresses = [f"{p.node_id}@{wss(p)}" for p in peers]
        return start_node(self, name, addresses, tls=self.pki(name), **kwargs)

    async def linked(self, *pairs: tuple[RelayNode, RelayNode]) -> None:
        def all_linked() -> bool:
            return all(b.node_id in a.mesh.links and a.node_id in b.mesh.links for a, b in pairs)

        await wait_for(all_linked, 10, what="the links")

    def raw_client(self, name: str) -> ssl.SSLContext:
        """A TLS context presenting node C{name}'s certificate, trusting the mesh CA."""
        tls = self.pki(name)
        context = ssl.create_default_context(cafile=tls["ca"])
        context.load_cert_chain(tls["cert"], tls["key"])
        return context

    async def test_link_under_another_id(self) -> None:
        """A member linking under another node's id is refused 403 and counted."""
        a = self.node("nodeA")
        context = self.raw_client("mallory")
        address = wss(a).replace("https", "wss") + "/ws/p2p?node_id="

        def status(claimed: str) -> int:
            try:
                with connect(address + claimed, ssl=context, open_timeout=5):
                    return 101
            except InvalidStatus as e:
                return e.response.status_code

        self.assertEqual(await deferToThread(status, "nodeB"), 403)
        self.assertEqual(failures(a), 1)
        self.assertEqual(a.mesh.links, {})
        # Under its own name the same member links.
        self.assertEqual(await deferToThread(status, "mallory"), 101)

    async def test_replace_a_link(self) -> None:
        """While nodeB's link is healthy, a second link as nodeB (its own certificate) gets 409."""
        a = self.node("nodeA")
        b = self.node("nodeB", [a])
        await self.linked((a, b))
        context = self.raw_client("nodeB")
        address = wss(a).replace("https", "wss") + "/ws/p2p?node_id=nodeB"

        def status() -> int:
            try:
                with connect(address, ssl=context, open_timeout=5):
                    return 101
            except InvalidStatus as e:
                return e.response.status_code

        self.assertEqual(await deferToThread(status), 409)
        self.assertIs(a.mesh.links["nodeB"].direction, "inbound")
        self.assertEqual(await b.call("nodeA", "node", "ping", timeout=5) is not None, True)

    async def test_dialled_member_answers_as_another(self) -> None:
        """Dialling nodeB@URL where mallory answers: the link is refused and counted."""
        mallory = self.node("mallory")
        a = start_node(self, "nodeA", [f"nodeB@{wss(mallory)}"], tls=self.pki("nodeA"))
        await wait_for(lambda: failures(a) >= 1, 10, what="the refusal")
        self.assertEqual(a.mesh.links, {})

    async def test_claimed_link(self) -> None:
        """A member claiming a link to nodeC does not draw nodeC's calls; the true path is used."""
        counter = Counter()
        c = self.node("nodeC", servers={"counter": counter})
        b = self.node("nodeB", [c])
        a = self.node("nodeA", [b])
        mallory = self.node("mallory", [a])
        intercepted: list[str] = []
        self.claim_link(mallory, "nodeC", intercepted)
        await self.linked((a, b), (b, c), (mallory, a))
        await wait_for(lambda: a.mesh.router.route("nodeC") is not None, 10, what="a route")
        # Without the check, A would take mallory's equally short path (its id is lower).
        await wait_for(
            lambda: a.mesh.router._ribs["mallory"].paths.get("nodeC") == ("mallory", "nodeC"),
            5,
            what="mallory's claim, held by nodeA",
        )
        self.assertEqual(a.mesh.router.route("nodeC").next_hop, "nodeB")  # type: ignore[union-attr]
        for n in range(1, 4):
            self.assertEqual(await a.call("nodeC", "counter", "increment", timeout=5), n)
        self.assertEqual(intercepted, [])
        self.assertEqual(counter.count, 3)

    def claim_link(self, mallory: RelayNode, victim: str, intercepted: list[str]) -> None:
        """Make C{mallory} advertise a direct link to C{victim} and sign a record saying so."""
        router = mallory.mesh.router
        honest_wanted_by = router.exports.wanted_by

        def wanted_by(peer_id: str) -> Callable[[str], Wanted]:
            honest = honest_wanted_by(peer_id)

            def wanted(destination: str) -> Wanted:
                if destination != victim:
                    return honest(destination)
                # A link of its own to the victim, as fresh as its true route.
                route = router.route(victim)
                return (victim,), 1, {"counter": ("increment",)}, route.sn if route else 0

            return wanted

        router.exports.wanted_by = wanted_by  # type: ignore[method-assign]
        records = mallory.mesh.records
        assert records is not None
        identity = records._identity
        honest_record = identity.record
        identity.record = lambda seq, links, *rest: honest_record(seq, [*links, victim], *rest)  # type: ignore[method-assign]
        forwarder = mallory.mesh.forwarder
        honest_receive = forwarder.receive

        def receive(envelope: Envelope, session: Any, unwrapped: bool = False) -> None:
            if envelope.to == victim and envelope.type == ServerCall.TYPE:
                intercepted.append(envelope.id or "")
                return
            honest_receive(envelope, session, unwrapped)

        forwarder.receive = receive  # type: ignore[method-assign]
        records._publish_soon()
        mallory.mesh.adverts.schedule()

    def on_path(self, mallory: RelayNode, act: Any) -> None:
        """Run C{act(envelope, session)} on each call mallory passes on; True drops the call."""
        forwarder = mallory.mesh.forwarder
        honest_receive = forwarder.receive

        def receive(envelope: Envelope, session: Any, unwrapped: bool = False) -> None:
            if (
                envelope.type == ServerCall.TYPE
                and envelope.to != mallory.node_id
                and act(envelope, session)
            ):
                return
            honest_receive(envelope, session, unwrapped)

        forwarder.receive = receive  # type: ignore[method-assign]

    async def line_through_mallory(self) -> tuple[RelayNode, RelayNode, RelayNode, Counter]:
        counter = Counter()
        c = self.node("nodeC", servers={"counter": counter})
        mallory = self.node("mallory", [c])
        a = self.node("nodeA", [mallory])
        await self.linked((a, mallory), (mallory, c))
        await wait_for(lambda: a.mesh.router.route("nodeC") is not None, 10, what="a route")
        # A genuine call crosses mallory, with its end-to-end code.
        self.assertEqual(await a.call("nodeC", "counter", "increment", timeout=5), 1)
        return a, mallory, c, counter

    async def test_forged_death_and_lost_links(self) -> None:
        """
        A member on no path to nodeC says nodeC is dead (a mark at a huge
        number) and its link to nodeB lost: nodeA keeps its route through
        nodeB, and calls to nodeC go on. (A member may speak only for the
        paths it offers itself.)
        """
        counter = Counter()
        c = self.node("nodeC", servers={"counter": counter})
        b = self.node("nodeB", [c])
        a = self.node("nodeA", [b])
        mallory = self.node("mallory", [a])
        await self.linked((a, b), (b, c), (mallory, a))
        await wait_for(lambda: a.mesh.router.route("nodeC") is not None, 10, what="a route")
        await wait_for(lambda: a.mesh.router.is_router("mallory"), 10, what="mallory's table")
        stamp = int(mallory.clock.seconds() * 1000)
        forged = [("nodeB", "nodeC", stamp), ("nodeC", "nodeB", stamp)]
        router = mallory.mesh.router
        router.lost_for = lambda withdrawn: {"nodeC": 2**62 + 1}  # type: ignore[method-assign]
        router.news.notices_for = lambda peer: forged  # type: ignore[method-assign]
        mallory.mesh.adverts.schedule(peers=None)
        news = a.mesh.router.news.notices
        await wait_for(lambda: all(n in news for n in forged), 5, what="the forged news at nodeA")
        self.assertEqual(a.mesh.router.route("nodeC").next_hop, "nodeB")  # type: ignore[union-attr]
        self.assertNotIn("nodeC", a.mesh.router.lost_nodes())
        self.assertEqual(await a.call("nodeC", "counter", "increment", timeout=5), 1)

    async def test_borrowed_http_caller(self) -> None:
        """
        A member naming an HTTP client as the caller it relays for is judged
        as that client and as itself: a rule denying it holds, and one
        allowing the client does not lend the client's rights to it.
        """
        access = {
            "rule": [
                {"callers": ["mallory"], "servers": ["counter"], "allow": False},
                {"callers": ["http:ci"], "servers": ["counter"], "allow": True},
                {"callers": ["http"], "servers": ["counter"], "allow": False},
            ]
        }
        counter = Counter()
        c = self.node("nodeC", servers={"counter": counter}, access=access)
        mallory = self.node("mallory", [c])
        a = self.node("nodeA", [c])
        await self.linked((mallory, c), (a, c))

        def relayed(node: RelayNode, caller: str) -> Any:
            return node.dispatcher.call(
                CallTarget("nodeC", "counter", "increment", timeout=5, caller=caller)
            )

        with self.assertRaises(AccessDenied) as denied:
            await relayed(mallory, "http:ci")
        self.assertIn("mallory, relaying for http:ci", denied.exception.message)
        with self.assertRaises(AccessDenied):
            await relayed(a, "http:10.0.0.1")  # (a rule denying http holds through a)
        self.assertEqual(await relayed(a, "http:ci"), 1)
        self.assertEqual(counter.count, 1)

    async def test_forged_answer(self) -> None:
        """
        A member on the path answering for the callee is ignored: never a
        forged success, nor a loss (-32002) the callee is made to report
        (a member may say a call was lost, but in its own name).
        """
        a, mallory, _, counter = await self.line_through_mallory()
        answers = [
            (True, None, None),
            (False, "ValueError: no", -32000),  # as if the method had raised
            (False, "no route", -32002),  # as if the callee were out of reach
        ]

        def forge(envelope: Envelope, session: Any) -> bool:
            call = ServerCall.from_data(envelope.data)
            success, error, code = answers.pop(0)
            answer = ServerResponse(
                call.response_id, success, "nodeC", 999, error=error, error_code=code
            )
            forged = Envelope(
                ServerResponse.TYPE,
                "nodeC",
                envelope.sender,
                answer.to_data(),
                "forged-" + (call.response_id or ""),
                envelope.timestamp,
                ("nodeC", mallory.node_id),
                9,
            )
            mallory.mesh.links[envelope.sender].send(forged)
            return True  # and drop the call

        self.on_path(mallory, forge)
        before = dropped(a, "forged_answer")
        with self.assertRaises(CallTimeout):
            await a.call("nodeC", "counter", "increment", timeout=1)
        with self.assertRaises(CallTimeout):
            await a.call("nodeC", "counter", "get", timeout=1)
        with self.assertRaises(CallTimeout):
            await a.call("nodeC", "counter", "get", timeout=1)
        self.assertEqual(dropped(a, "forged_answer"), before + 3)
        self.assertEqual(counter.count, 1)

    async def test_path_loss_allowed(self) -> None:
        """A member on the path may still report a call lost: the caller sees -32002."""
        a, mallory, _, _ = await self.line_through_mallory()

        def lost(envelope: Envelope, session: Any, node_id: str = mallory.node_id) -> bool:
            call = ServerCall.from_data(envelope.data)
            answer = ServerResponse(
                call.response_id,
                False,
                node_id,
                error="lost",
                error_code=-32002,
                error_data={"node_id": node_id},
            )
            mallory.mesh.forwarder.send(envelope.sender, answer)
            return True

        self.on_path(mallory, lost)
        with self.assertRaises(NodeUnreachable) as raised:
            await a.call("nodeC", "counter", "increment", timeout=5)
        self.assertEqual(raised.exception.data["node_id"], mallory.node_id)
        # In the callee's name, it is still the member's word.
        lost_for_c = partial(lost, node_id="nodeC")
        self.on_path(mallory, lost_for_c)
        with self.assertRaises(NodeUnreachable) as raised:
            await a.call("nodeC", "counter", "increment", timeout=5)
        self.assertEqual(raised.exception.data["node_id"], mallory.node_id)

    async def test_loss_in_its_own_name_fails_over_nothing(self) -> None:
        """
        A member on the path that passes a call on, drops its answer and
        says in its own name that it did not run (-32002) does not get it
        run again on another instance: its word is no proof, so only an
        idempotent method would be retried. The caller sees the member's
        -32002, naming the member.
        """
        here, there = Counter(), Counter()
        c = self.node("nodeC", servers={"counter": here})
        mallory = self.node("mallory", [c])
        c2 = self.node("nodeC2", servers={"counter": there})
        d = self.node("nodeD", [c2])
        b = self.node("nodeB", [d])
        a = self.node("nodeA", [mallory, b])
        await self.linked((a, mallory), (mallory, c), (a, b), (b, d), (d, c2))
        await wait_for(
            lambda: {i[0] for i in a.mesh.registry.instances("counter")} == {"nodeC", "nodeC2"},
            10,
            what="both instances",
        )
        forwarder = mallory.mesh.forwarder
        honest_receive = forwarder.receive

        def receive(envelope: Envelope, session: Any, unwrapped: bool = False) -> None:
            if envelope.type == ServerResponse.TYPE and envelope.sender == "nodeC":
                lost = ServerResponse(
                    envelope.data["response_id"], False, "mallory", error="lost",
                    error_code=-32002, error_data={"node_id": "mallory"},
                )  # fmt: skip
                forwarder.send(envelope.to, lost)
                return
            honest_receive(envelope, session, unwrapped)

        forwarder.receive = receive  # type: ignore[method-assign]
        with self.assertRaises(NodeUnreachable) as raised:
            await a.call(None, "counter", "increment", timeout=5)
        self.assertEqual(raised.exception.data["node_id"], "mallory")
        self.assertEqual((here.count, there.count), (1, 0))

    async def test_forged_idempotent_methods(self) -> None:
        """A member claiming another node's methods idempotent does not get them retried."""
        c = self.node("nodeC", servers={"ledger": Ledger()})
        mallory = self.node("mallory", [c])
        a = self.node("nodeA", [mallory])
        await self.linked((a, mallory), (mallory, c))
        info = a.mesh.info
        await wait_for(
            lambda: info.is_idempotent("nodeC", "ledger", "total"), 10, what="nodeC's record"
        )
        # Mallory's own code: a newer entry for nodeC, told as its own news.
        forged = NodeInfo(10**15, 0, server_table([("ledger", ("add", "total"))]))
        mallory.mesh.info.take({"nodeC": forged}, {})
        mallory.mesh.info.on_change()
        await wait_for(lambda: info.entries.get("nodeC") == forged, 5, what="the forged entry")
        self.assertFalse(info.is_idempotent("nodeC", "ledger", "add"))
        self.assertTrue(info.is_idempotent("nodeC", "ledger", "total"))
        # A server exposed later: nodeC's next record states its methods.
        c.expose("later", Ledger())
        await wait_for(
            lambda: info.is_idempotent("nodeC", "later", "total"), 10, what="nodeC's new record"
        )

    async def test_forged_and_replayed_calls(self) -> None:
        """A member on the path cannot make calls in the caller's name, nor replay its calls."""
        a, mallory, c, counter = await self.line_through_mallory()

        def forge_and_replay(envelope: Envelope, session: Any) -> bool:
            link = mallory.mesh.links["nodeC"]
            data = json.loads(json.dumps(envelope.data))
            # The same genuine call again, as a new message (a replay).
            link.send(Envelope(**{**_fields(envelope), "id": "replay", "data": data}))
            # A call of its own making, in nodeA's name, with and without a stolen code.
            forged = json.loads(json.dumps(envelope.data))
            forged["call"]["args"] = [100]
            forged["response_id"] = "forged-rid"
            link.send(Envelope(**{**_fields(envelope), "id": "forged", "data": forged}))
            forged.pop("mac", None)
            forged["response_id"] = "forged-rid-2"
            link.send(Envelope(**{**_fields(envelope), "id": "forged2", "data": forged}))
            return False  # and pass the genuine one on

        self.on_path(mallory, forge_and_replay)
        self.assertEqual(await a.call("nodeC", "counter", "increment", timeout=5), 2)
        await wait_for(lambda: dropped(c, "forged_call") >= 3, 5, what="the forged calls")
        self.assertEqual(counter.count, 2)

    async def test_forged_user_message(self) -> None:
        """
        A message of a user's own type that mallory passes on is taken only
        as its sender sent it: one mallory makes in nodeA's name, or alters
        on its way, is dropped at nodeC (SPEC section 9: a member cannot act
        as another node). Its own, and nodeA's as sent, arrive.
        """
        a, mallory, c, _ = await self.line_through_mallory()
        heard: list[tuple[str, str]] = []
        c.register_handler(
            Shout, lambda envelope, shout: heard.append((envelope.sender, shout.text))
        )
        forwarder = mallory.mesh.forwarder
        honest_receive = forwarder.receive

        def receive(envelope: Envelope, session: Any, unwrapped: bool = False) -> None:
            if envelope.type == Shout.TYPE and envelope.to == "nodeC":
                link = mallory.mesh.links["nodeC"]
                # In nodeA's name, and the genuine one altered (its code kept).
                now = rfc3339(mallory.clock.seconds())
                made = Envelope(Shout.TYPE, "nodeA", "nodeC", {"text": "made up"}, new_id(), now)
                link.send(Envelope(**{**_fields(made), "route": ("nodeA", "mallory")}))
                altered = {**envelope.data, "text": "altered"}
                link.send(Envelope(**{**_fields(envelope), "id": new_id(), "data": altered}))
            honest_receive(envelope, session, unwrapped)

        forwarder.receive = receive  # type: ignore[method-assign]
        before = dropped(c, "forged_message")
        self.assertTrue(a.send("nodeC", Shout("genuine")))
        self.assertTrue(mallory.send("nodeC", Shout("mallory's own")))
        await wait_for(lambda: dropped(c, "forged_message") >= before + 2, 5, what="the drops")
        await wait_for(lambda: len(heard) >= 2, 5, what="the genuine shouts")
        self.assertEqual(sorted(heard), [("mallory", "mallory's own"), ("nodeA", "genuine")])


@frozen
class Shout(Payload):
    """A message type of the user's own."""

    TYPE = "shout"
    text: str


class Ledger(Server):
    """A server with one idempotent method and one that is not."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[int] = []

    @exposed
    def add(self, n: int) -> int:
        self.entries.append(n)
        return len(self.entries)

    @exposed(idempotent=True)
    def total(self) -> int:
        return sum(self.entries)


def _fields(envelope: Envelope) -> dict[str, Any]:
    """An envelope as forwarded by mallory (its route ending with mallory)."""
    return {
        "type": envelope.type,
        "sender": envelope.sender,
        "to": envelope.to,
        "data": envelope.data,
        "id": envelope.id,
        "timestamp": envelope.timestamp,
        "route": (*envelope.route, "mallory"),
        "ttl": envelope.ttl - 1,
    }


def wss(node: RelayNode) -> str:
    """:returns: the base address of a TLS node."""
    assert node.listening_port is not None
    return f"https://127.0.0.1:{node.listening_port.getHost().port}"
