"""
Helpers shared by the test modules.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from attrs import frozen
from hypothesis import HealthCheck, settings
from twisted.internet.defer import Deferred

from relaytx.peer import PeerSession, handles
from relaytx.server import Server, exposed
from relaytx.wire import Envelope, Payload


def fuzz_settings(max_examples: int) -> Any:
    """
    Hypothesis settings for a property run the same on every machine: a
    fixed seed (C{derandomize}), no example database, no deadline.
    """
    return settings(
        derandomize=True,
        database=None,
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class TempDirMixin:
    """
    C{mktemp} under one temporary directory per test, removed afterwards
    (trial's own C{mktemp} writes beside the working directory under pytest).
    """

    def mktemp(self) -> str:
        """:returns: a new path, not yet created, in this test's temporary directory."""
        if not hasattr(self, "_temp_root"):
            self._temp_root = tempfile.mkdtemp(prefix="relaytx-test-")
            self.addCleanup(shutil.rmtree, self._temp_root, True)  # type: ignore[attr-defined]
        self._temp_count = getattr(self, "_temp_count", 0) + 1
        return os.path.join(self._temp_root, f"temp{self._temp_count}")


class Counter(Server):
    """The counter most tests call: C{increment(by=1)} and C{get()}."""

    def __init__(self) -> None:
        self.count = 0

    @exposed
    def increment(self, by: int = 1) -> int:
        self.count += by
        return self.count

    @exposed
    def get(self) -> int:
        return self.count


class Slow(Server):
    """Answers only when the test says so."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[Any]] = []

    @exposed
    def wait(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append(d)
        return d


@frozen
class Chat(Payload):
    """A custom message type."""

    TYPE = "chat"
    text: str


class ChatSession(PeerSession):
    """A session that adds the C{chat} message type and records what it gets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chats: list[tuple[str, str]] = []

    @handles(Chat)
    def on_chat(self, envelope: Envelope, chat: Chat) -> None:
        self.chats.append((envelope.sender, chat.text))
