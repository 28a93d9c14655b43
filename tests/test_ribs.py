# -*- test-case-name: tests.test_ribs -*-
"""
Tests for L{relaytx._ribs}: a neighbour's table built from its adverts
(explicit entries and references to a parent), and the adverts a sender
makes from its mirror of that table (L{diff}, L{export}).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from relaytx._ribs import AdjRib, SharedAttributes, Wanted, diff, export
from relaytx.wire import NO_SERVERS, RegistrySync, RouteAdvert, server_table
from tests.support import fuzz_settings

SVC = server_table([("svc", ("m",))])
OTHER = server_table([("other", ("x", "y"))])


def receiver(sender: str = "s", owner: str = "me", limit: int | None = None) -> AdjRib:
    """:returns: the table a node C{owner} keeps of what C{sender} told it."""
    return AdjRib(owner, (sender,), 64, limit)


def wire(routes: Mapping[str, RouteAdvert], withdrawn: list[str]) -> RegistrySync:
    """:returns: the advert as the receiver decodes it off the wire."""
    advert = RegistrySync(None, routes or None, tuple(withdrawn), 1)
    return RegistrySync.from_data(json.loads(json.dumps(advert.to_data())))


class ExplicitEntryTests(SynchronousTestCase):
    """Entries that give a whole path."""

    def test_path_from_the_receiver(self) -> None:
        """An explicit path is kept from the receiver, the sender first, with its metric."""
        rib = receiver()
        changed = rib.apply({"z": RouteAdvert(("a", "z"), SVC)})
        self.assertEqual(changed, {"z"})
        self.assertEqual(rib.get("z"), (("s", "a", "z"), 2))
        self.assertEqual(rib.servers_of("z"), SVC)
        self.assertEqual(len(rib), 1)
        self.assertIn("z", rib)

    def test_metric_given(self) -> None:
        """An explicit metric replaces the default, the path's length."""
        rib = receiver()
        rib.apply({"z": RouteAdvert(("a", "z"), None, None, 7)})
        self.assertEqual(rib.get("z"), (("s", "a", "z"), 7))

    def test_loops_resolve_to_nothing(self) -> None:
        """A path through the owner or the sender again, or with a repeat, is kept but unused."""
        rib = receiver()
        rib.apply(
            {
                "x": RouteAdvert(("me", "x")),
                "y": RouteAdvert(("q", "s", "y")),
                "w": RouteAdvert(("p", "q", "p", "w")),
                "ok": RouteAdvert(("p", "ok")),
            }
        )
        self.assertEqual(set(rib.paths), {"ok"})
        self.assertEqual(len(rib), 4)

    def test_too_long(self) -> None:
        """A path longer than the table's limit is unused; one at the limit is kept."""
        rib = AdjRib("me", ("s",), 4)
        rib.apply({"d": RouteAdvert(("a", "b", "d")), "e": RouteAdvert(("a", "b", "c", "e"))})
        self.assertEqual(set(rib.paths), {"d"})

    def test_withdraw(self) -> None:
        """A withdrawn destination and its servers are forgotten; an unknown one changes nothing."""
        rib = receiver()
        rib.apply({"z": RouteAdvert(("z",), SVC)})
        self.assertEqual(rib.apply(None, ["z", "nobody"]), {"z"})
        self.assertIsNone(rib.get("z"))
        self.assertEqual(rib.servers_of("z"), NO_SERVERS)
        self.assertEqual(len(rib), 0)

    def test_same_entry_twice(self) -> None:
        """Saying the same thing again changes nothing."""
        rib = receiver()
        rib.apply({"z": RouteAdvert(("a", "z"), SVC)})
        self.assertEqual(rib.apply({"z": RouteAdvert(("a", "z"), SVC)}), set())

    def test_servers_only(self) -> None:
        """An entry with only servers changes a known destination's servers, not its path."""
        rib = receiver()
        rib.apply({"z": RouteAdvert(("a", "z"), SVC)})
        self.assertEqual(rib.apply({"z": RouteAdvert(None, OTHER)}), {"z"})
        self.assertEqual(rib.get("z"), (("s", "a", "z"), 2))
        self.assertEqual(rib.servers_of("z"), OTHER)
        self.assertEqual(rib.apply({"q": RouteAdvert(None, OTHER)}), set())
        self.assertNotIn("q", rib)

    def test_empty_servers(self) -> None:
        """An empty server table forgets the servers."""
        rib = receiver()
        rib.apply({"z": RouteAdvert(("z",), SVC)})
        self.assertEqual(rib.apply({"z": RouteAdvert(None, NO_SERVERS)}), {"z"})
        self.assertEqual(rib.attributes, {})


class SharedAttributesTests(SynchronousTestCase):
    """A node's tables keep equal servers and numbers once, and only differences apart."""

    def tables(self, bound: int = 20_000) -> tuple[SharedAttributes, AdjRib, AdjRib]:
        shared = SharedAttributes(bound)
        one, other = (AdjRib("me", (sender,), 64, None, shared) for sender in "st")
        return shared, one, other

    def test_equal_attributes_kept_once(self) -> None:
        """Two neighbours' entries with the same servers and number keep no pair of their own."""
        shared, one, other = self.tables()
        one.apply(wire({"z": RouteAdvert(("z",), SVC, None, None, 2)}, []).routes)
        other.apply(wire({"z": RouteAdvert(("a", "z"), SVC, None, None, 2)}, []).routes)
        self.assertEqual((one.attributes, other.attributes), ({}, {}))
        self.assertEqual(shared.latest, {"z": (SVC, 2)})
        self.assertEqual((one.attributes_of("z"), other.attributes_of("z")), ((SVC, 2), (SVC, 2)))

    def test_a_table_behind_keeps_its_own(self) -> None:
        """
        A newer number from one neighbour becomes the shared one; the other
        table keeps what it was given until it is given the newer one too.
        """
        shared, one, other = self.tables()
        for rib in (one, other):
            rib.apply({"z": RouteAdvert(("z",), SVC, None, None, 2)})
        self.assertEqual(one.apply({"z": RouteAdvert(None, None, None, None, 4)}), {"z"})
        self.assertEqual((one.sn_of("z"), other.sn_of("z")), (4, 2))
        self.assertEqual((one.servers_of("z"), other.servers_of("z")), (SVC, SVC))
        self.assertEqual((one.attributes, other.attributes), ({}, {"z": (SVC, 2)}))
        self.assertEqual(other.apply({"z": RouteAdvert(None, None, None, None, 4)}), {"z"})
        self.assertEqual((one.attributes, other.attributes), ({}, {}))
        # New servers under the same number: the newest given is shared.
        self.assertEqual(other.apply({"z": RouteAdvert(None, OTHER)}), {"z"})
        self.assertEqual((one.servers_of("z"), other.servers_of("z")), (SVC, OTHER))
        self.assertEqual((one.sn_of("z"), other.sn_of("z")), (4, 4))
        self.assertEqual(shared.latest["z"], (OTHER, 4))

    def test_an_older_number_stays_apart(self) -> None:
        """A neighbour still giving an older number keeps it as its own; the shared one stays."""
        shared, one, other = self.tables()
        one.apply({"z": RouteAdvert(("z",), SVC, None, None, 4)})
        other.apply({"z": RouteAdvert(("a", "z"), SVC, None, None, 2)})
        self.assertEqual((one.sn_of("z"), other.sn_of("z")), (4, 2))
        self.assertEqual(other.attributes, {"z": (SVC, 2)})
        self.assertEqual(shared.latest, {"z": (SVC, 4)})

    def test_new_entry_without_attributes(self) -> None:
        """
        An entry given without servers or number has none, whatever the
        other tables hold for its destination; withdrawn, it reads as none.
        """
        _, one, other = self.tables()
        one.apply({"z": RouteAdvert(("z",), SVC, None, None, 2)})
        other.apply({"z": RouteAdvert(("a", "z"))})
        self.assertEqual(other.attributes_of("z"), (NO_SERVERS, 0))
        self.assertEqual(one.attributes_of("z"), (SVC, 2))
        one.apply(None, ["z"])
        self.assertEqual(one.attributes_of("z"), (NO_SERVERS, 0))
        self.assertEqual(other.attributes_of("z"), (NO_SERVERS, 0))

    def test_past_the_bound(self) -> None:
        """
        Past its bound the pairs of destinations no table holds are let go;
        every table still reads what it was given.
        """
        shared, one, other = self.tables(bound=3)
        given = {d: n for n, d in enumerate("abcde", 1)}
        one.apply({d: RouteAdvert((d,), SVC, None, None, n) for d, n in given.items() if d < "d"})
        other.apply({"c": RouteAdvert(("a", "c"), SVC, None, None, 3)})
        one.apply(None, ["a", "b", "c"])
        one.apply({d: RouteAdvert((d,), SVC, None, None, n) for d, n in given.items() if d > "c"})
        self.assertEqual(set(shared.latest), {"c", "d", "e"})
        self.assertEqual({d: one.sn_of(d) for d in "de"}, {"d": 4, "e": 5})
        self.assertEqual(other.attributes_of("c"), (SVC, 3))

    def test_a_dropped_table_is_forgotten(self) -> None:
        """A table no one holds any more is not given pairs of its own."""
        shared, one, other = self.tables()
        for rib in (one, other):
            rib.apply({"z": RouteAdvert(("z",), SVC, None, None, 2)})
        del rib, other
        self.assertEqual(len(shared._tables), 1)
        one.apply({"z": RouteAdvert(None, None, None, None, 4)})
        self.assertEqual(shared.latest, {"z": (SVC, 4)})


class ReferenceTests(SynchronousTestCase):
    """Entries that follow another destination of the table."""

    def setUp(self) -> None:
        self.rib = receiver()
        self.rib.apply(
            {
                "p": RouteAdvert(("a", "p")),
                "d": RouteAdvert(None, None, "p"),
                "e": RouteAdvert(None, None, "d", 3),
            }
        )

    def test_resolved_from_parent(self) -> None:
        """A reference is its parent's path with itself added, metric plus its increment."""
        self.assertEqual(self.rib.get("d"), (("s", "a", "p", "d"), 3))
        self.assertEqual(self.rib.get("e"), (("s", "a", "p", "d", "e"), 6))
        self.assertEqual(self.rib.parent_of("e"), "d")
        self.assertIsNone(self.rib.parent_of("p"))

    def test_follows_parent(self) -> None:
        """One changed entry moves every destination below it."""
        changed = self.rib.apply({"p": RouteAdvert(("b", "c", "p"), None, None, 5)})
        self.assertEqual(changed, {"p", "d", "e"})
        self.assertEqual(self.rib.get("e"), (("s", "b", "c", "p", "d", "e"), 9))

    def test_parent_withdrawn(self) -> None:
        """References below a withdrawn parent stop resolving, and come back with it."""
        self.assertEqual(self.rib.apply(None, ["p"]), {"p", "d", "e"})
        self.assertEqual(set(self.rib.paths), set())
        self.assertEqual(len(self.rib), 2)
        self.assertEqual(self.rib.apply({"p": RouteAdvert(("p",))}), {"p", "d", "e"})
        self.assertEqual(self.rib.get("e"), (("s", "p", "d", "e"), 5))

    def test_parent_later(self) -> None:
        """A reference to a parent not yet given resolves once the parent arrives."""
        rib = receiver()
        self.assertEqual(rib.apply({"d": RouteAdvert(None, None, "p")}), set())
        self.assertEqual(rib.apply({"p": RouteAdvert(("p",))}), {"p", "d"})
        self.assertEqual(rib.get("d"), (("s", "p", "d"), 2))

    def test_reparent(self) -> None:
        """A reference given a new parent no longer moves with the old one."""
        self.rib.apply({"q": RouteAdvert(("q",)), "e": RouteAdvert(None, None, "q")})
        self.assertEqual(self.rib.get("e"), (("s", "q", "e"), 2))
        self.assertEqual(self.rib.apply({"d": RouteAdvert(("x", "d"))}), {"d"})
        self.assertEqual(self.rib.get("e"), (("s", "q", "e"), 2))

    def test_siblings_stay_when_one_leaves(self) -> None:
        """References to one parent that stay follow it after a sibling left for another."""
        self.rib.apply({f"d{i}": RouteAdvert(None, None, "p") for i in range(3)})
        self.rib.apply({"q": RouteAdvert(("q",)), "d1": RouteAdvert(None, None, "q")})
        changed = self.rib.apply({"p": RouteAdvert(("p",))})
        self.assertEqual(changed, {"p", "d", "e", "d0", "d2"})
        self.assertEqual(self.rib.get("d2"), (("s", "p", "d2"), 2))
        self.assertEqual(self.rib.get("d1"), (("s", "q", "d1"), 2))
        self.assertEqual(self.rib.apply(None, ["d0", "d2", "d"]), {"d0", "d2", "d", "e"})
        self.assertEqual(self.rib.apply({"p": RouteAdvert(("a", "p"))}), {"p"})

    def test_explicit_replaces_reference(self) -> None:
        """An explicit entry for a reference cuts it loose from its parent."""
        self.rib.apply({"d": RouteAdvert(("x", "d"))})
        self.assertEqual(self.rib.apply({"p": RouteAdvert(("p",))}), {"p"})
        self.assertEqual(self.rib.get("d"), (("s", "x", "d"), 2))

    def test_unresolved_entries_held(self) -> None:
        """Entries that resolve to nothing are still held: counted, listed, with their parents."""
        rib = receiver()
        rib.apply({"d": RouteAdvert(None, None, "q"), "x": RouteAdvert(("me", "x"))})
        self.assertEqual((len(rib), set(rib)), (2, {"d", "x"}))
        self.assertEqual((rib.parent_of("d"), rib.parent_of("x")), ("q", None))
        self.assertEqual((rib.get("d"), rib.get("x")), (None, None))
        rib.apply(None, ["x", "d"])
        self.assertEqual((len(rib), set(rib), rib.parent_of("d")), (0, set(), None))

    def test_reference_in_place_of_explicit_entry(self) -> None:
        """
        A reference that replaces an explicit entry with the same path
        changes nothing at once, and follows its parent from then on.
        """
        rib = receiver()
        rib.apply({"d": RouteAdvert(("a", "p", "d"))})
        self.assertEqual(rib.apply({"d": RouteAdvert(None, None, "p")}), {"d"})
        self.assertEqual(rib.parent_of("d"), "p")
        self.assertEqual(rib.apply({"p": RouteAdvert(("a", "p"))}), {"p", "d"})
        self.assertEqual(rib.apply({"d": RouteAdvert(("a", "p", "d"))}), set())
        self.assertIsNone(rib.parent_of("d"))
        self.assertEqual(rib.apply({"p": RouteAdvert(("b", "p"))}), {"p"})
        self.assertEqual(rib.get("d"), (("s", "a", "p", "d"), 3))

    def test_reference_through_owner(self) -> None:
        """A reference whose parent's path makes it a loop resolves to nothing."""
        rib = receiver()
        rib.apply({"me": RouteAdvert(("me",)), "p": RouteAdvert(("p",))})
        rib.apply({"x": RouteAdvert(None, None, "me"), "p2": RouteAdvert(None, None, "p")})
        self.assertEqual(set(rib.paths), {"p", "p2"})
        rib.apply({"a": RouteAdvert(("a",)), "b": RouteAdvert(None, None, "a")})
        rib.apply({"a": RouteAdvert(None, None, "b")})  # b follows a, a follows b
        self.assertIsNone(rib.get("a"))
        self.assertIsNone(rib.get("b"))

    def test_cycle_of_references(self) -> None:
        """References that go round in a circle resolve to nothing and stop."""
        rib = receiver()
        rib.apply(
            {
                "a": RouteAdvert(None, None, "c"),
                "b": RouteAdvert(None, None, "a"),
                "c": RouteAdvert(None, None, "b"),
            }
        )
        self.assertEqual(rib.paths, {})
        self.assertEqual(len(rib), 3)

    def test_chain_past_the_limit(self) -> None:
        """A chain of references stops resolving at the table's longest path."""
        rib = AdjRib("me", ("s",), 5)
        routes = {"n0": RouteAdvert(("n0",))}
        for i in range(1, 8):
            routes[f"n{i}"] = RouteAdvert(None, None, f"n{i - 1}")
        rib.apply(routes)
        self.assertEqual(set(rib.paths), {"n0", "n1", "n2", "n3"})


class LimitTests(SynchronousTestCase):
    """A table holds at most its limit of destinations."""

    def test_new_destinations_refused(self) -> None:
        """Past the limit new destinations are refused and counted; known ones still change."""
        rib = receiver(limit=2)
        rib.apply({"a": RouteAdvert(("a",)), "b": RouteAdvert(("b",)), "c": RouteAdvert(("c",))})
        self.assertEqual(set(rib.paths), {"a", "b"})
        self.assertEqual(rib.refused, 1)
        self.assertEqual(rib.apply({"b": RouteAdvert(("a", "b"))}), {"b"})
        rib.apply(None, ["a"])
        rib.apply({"c": RouteAdvert(("c",))})
        self.assertEqual(set(rib), {"b", "c"})


def table(paths: dict[str, tuple[str, ...]], metric: int = 0) -> dict[str, Wanted]:
    """:returns: wishes with each path's length (plus C{metric}) and a server table each."""
    return {
        d: (path, len(path) + metric, server_table([(f"svc-{d}", ("m",))]), 2)
        for d, path in paths.items()
    }


class SenderTests(SynchronousTestCase):
    """What a sender writes for a neighbour."""

    def test_export_uses_references(self) -> None:
        """A whole table refers to parents the neighbour holds, parents first."""
        want = table({"p": ("p",), "d": ("p", "d"), "e": ("p", "d", "e"), "x": ("q", "x")})
        mirror = AdjRib("n", (), 63)
        entries = export(mirror, want.get, want)
        self.assertEqual(list(entries)[:2], ["p", "d"])
        self.assertEqual(entries["d"].parent, "p")
        self.assertEqual(entries["e"].parent, "d")
        self.assertEqual(entries["x"].path, ("q", "x"))
        self.assertEqual({d: mirror.get(d) for d in want}, {d: w[:2] for d, w in want.items()})  # type: ignore[index]
        self.assertEqual({d: mirror.sn_of(d) for d in want}, dict.fromkeys(want, 2))

    def test_one_entry_moves_a_subtree(self) -> None:
        """When a subtree moves, only its root is sent: the rest follows it."""
        want = table({"p": ("p",), "d": ("p", "d"), "e": ("p", "d", "e")})
        mirror = AdjRib("n", (), 63)
        rib = receiver("s", "n")
        rib.apply(export(mirror, want.get, want))
        moved = table({"p": ("a", "p"), "d": ("a", "p", "d"), "e": ("a", "p", "d", "e")})
        entries, withdrawn = diff(mirror, moved.get, moved)
        self.assertEqual(list(entries), ["p"])
        self.assertEqual(withdrawn, [])
        rib.apply(entries, withdrawn)
        self.assertEqual(rib.get("e"), (("s", "a", "p", "d", "e"), 4))

    def test_nothing_to_say(self) -> None:
        """A diff of what the neighbour already holds is empty."""
        want = table({"p": ("p",), "d": ("p", "d")})
        mirror = AdjRib("n", (), 63)
        export(mirror, want.get, want)
        self.assertEqual(diff(mirror, want.get, want), ({}, []))

    def test_withdrawal_of_a_parent(self) -> None:
        """A parent withdrawn while its child stays: the child is sent with a path of its own."""
        want = table({"p": ("p",), "d": ("p", "d")})
        mirror = AdjRib("n", (), 63)
        rib = receiver("s", "n")
        rib.apply(export(mirror, want.get, want))
        after = {"d": want["d"]}
        entries, withdrawn = diff(mirror, after.get, ["p"])
        self.assertEqual(withdrawn, ["p"])
        self.assertEqual(entries, {"d": RouteAdvert(("p", "d"))})
        self.assertEqual(rib.sn_of("d"), 2)
        rib.apply(entries, withdrawn)
        self.assertEqual(rib.get("d"), (("s", "p", "d"), 2))

    def test_servers_change_keeps_reference(self) -> None:
        """After a change of servers alone, a reference still follows its parent on both ends."""
        want = table({"p": ("p",), "d": ("p", "d")})
        mirror = AdjRib("n", (), 63)
        rib = receiver("s", "n")
        rib.apply(export(mirror, want.get, want))
        renamed = {**want, "d": (("p", "d"), 2, OTHER, 2)}
        rib.apply(*diff(mirror, renamed.get, ["d"]))
        moved = {"p": (("a", "p"), 2, want["p"][2], 2), "d": (("a", "p", "d"), 3, OTHER, 2)}  # type: ignore[index]
        entries, withdrawn = diff(mirror, moved.get, ["p", "d"])
        self.assertEqual(list(entries), ["p"])
        rib.apply(entries, withdrawn)
        self.assertEqual(rib.get("d"), (("s", "a", "p", "d"), 3))
        self.assertEqual(mirror.get("d"), (("a", "p", "d"), 3))

    def test_servers_alone(self) -> None:
        """A change of servers alone sends the servers, not the path."""
        want = table({"p": ("p",)})
        mirror = AdjRib("n", (), 63)
        export(mirror, want.get, want)
        after = {"p": (("p",), 1, OTHER, 2)}
        entries, _ = diff(mirror, after.get, ["p"])
        self.assertEqual(entries, {"p": RouteAdvert(None, OTHER)})
        renumbered = {"p": (("p",), 1, OTHER, 4)}
        entries, _ = diff(mirror, renumbered.get, ["p"])
        self.assertEqual(entries, {"p": RouteAdvert(None, None, None, None, 4)})

    def test_mirror_keeps_the_senders_paths(self) -> None:
        """
        A reference that follows its parent to the path the sender wants is
        not sent, and the mirror keeps the sender's own path, not its copy.
        """
        mirror = AdjRib("n", (), 63)
        want = table({"p": ("a", "p"), "d": ("a", "p", "d")})
        export(mirror, want.get, want)
        moved = table({"p": ("b", "p"), "d": ("b", "p", "d")})
        entries, _ = diff(mirror, moved.get, ["p"])
        self.assertEqual(list(entries), ["p"])
        self.assertIs(mirror.paths["d"], moved["d"][0])  # type: ignore[index]


# Property: whatever the tables and whatever changes between them, the
# neighbour ends up holding exactly what the sender wants, in one advert.

NODES = [f"n{i}" for i in range(8)]


@st.composite
def wishes(draw: st.DrawFn) -> dict[str, Wanted]:
    """A routing table as a sender could hold it: loop-free paths, some sharing prefixes."""
    want: dict[str, Wanted] = {}
    for dest in draw(st.lists(st.sampled_from(NODES), max_size=8, unique=True)):
        others = [n for n in NODES if n != dest]
        if want and draw(st.booleans()):
            parent = draw(st.sampled_from(sorted(want)))
            base = want[parent]
            assert base is not None
            if dest not in base[0]:
                path = (*base[0], dest)
                metric = base[1] + draw(st.integers(0, 3))
                servers = draw(st.sampled_from([NO_SERVERS, SVC, OTHER]))
                want[dest] = (path, metric, servers, draw(st.integers(0, 3)))
                continue
        hops = draw(st.lists(st.sampled_from(others), max_size=4, unique=True))
        path = (*hops, dest)
        want[dest] = (
            path,
            len(path) + draw(st.integers(0, 3)),
            draw(st.sampled_from([SVC, OTHER])),
            draw(st.integers(0, 3)),
        )
    return want


class DiffPropertyTests(SynchronousTestCase):
    """Any sequence of tables reaches the neighbour exactly."""

    @fuzz_settings(max_examples=250)
    @given(st.lists(wishes(), min_size=1, max_size=8), st.booleans())
    def test_neighbour_holds_what_is_wanted(
        self, tables: list[dict[str, Wanted]], everything: bool
    ) -> None:
        """After each advert (over the wire), the neighbour's table is the sender's wish."""
        # (All share their attributes, as a node's tables do: no table may
        # see another's through them. A second neighbour hears every advert
        # one step late, so its numbers and servers are behind the others'.)
        shared = SharedAttributes(bound=3)
        mirror = AdjRib("nb", (), 63, None, shared)
        rib = AdjRib("nb", ("s",), 64, None, shared)
        late = AdjRib("nb", ("s",), 64, None, shared)
        first = tables[0]
        sent = wire(export(mirror, first.get, first), [])
        rib.apply(sent.routes)
        previous = first
        for want in tables[1:]:
            late.apply(sent.routes, sent.withdrawn)
            # Only the destinations that changed are candidates, as a sender knows.
            candidates = set(want) | set(previous)
            if not everything:
                candidates = {d for d in candidates if want.get(d) != previous.get(d)}
            entries, withdrawn = diff(mirror, want.get, candidates)
            sent = wire(entries, withdrawn)
            rib.apply(sent.routes, sent.withdrawn)
            for dest in set(NODES):
                wish = want.get(dest)
                self.assertEqual(mirror.get(dest), None if wish is None else wish[:2])
                for table, wished in ((rib, wish), (late, previous.get(dest))):
                    expected = None if wished is None else (("s", *wished[0]), wished[1])
                    self.assertEqual(table.get(dest), expected, dest)
                    servers = NO_SERVERS if wished is None else wished[2]
                    self.assertEqual(table.servers_of(dest), servers)
                    self.assertEqual(table.sn_of(dest), 0 if wished is None else wished[3])
            previous = want
