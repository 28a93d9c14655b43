"""
Tests for the example apps C{examples/counter.py} and C{examples/tasks.py},
loaded into a node on a fake reactor and called through L{RelayNode.call}.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from relaytx.config import build_config
from relaytx.errors import (
    CallError,
    InvalidParams,
    MethodNotFound,
    NoSuchMethod,
    RemoteCallError,
)
from relaytx.node import RelayNode

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
COUNTER = os.path.join(EXAMPLES, "counter.py")
TASKS = os.path.join(EXAMPLES, "tasks.py")


class ExampleTestCase(SynchronousTestCase):
    """A node with both example apps loaded."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.node = RelayNode(build_config({"node_id": "n1"}), self.reactor)
        self.successResultOf(self.node.load_app(COUNTER))
        self.successResultOf(self.node.load_app(TASKS))

    def call(self, server: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a local server and return its result, checking it is plain JSON."""
        result = self.successResultOf(self.node.call(None, server, method, *args, **kwargs))
        self.assertEqual(json.loads(json.dumps(result)), result)
        return result

    def fails(self, kind: type[CallError], server: str, method: str, *args: Any) -> CallError:
        """Call a local server and return the CallError it fails with."""
        failure = self.failureResultOf(self.node.call(None, server, method, *args), kind)
        error = failure.value
        assert isinstance(error, CallError)
        self.assertEqual(error.data["node_id"], "n1")
        return error


class CounterTests(ExampleTestCase):
    """examples/counter.py: counter_server."""

    def test_exposed(self) -> None:
        """The app exposes counter_server with increment, get and reset."""
        self.assertEqual(self.node.local_servers()["counter_server"], ["get", "increment", "reset"])

    def test_increment(self) -> None:
        """increment adds 1 by default, or its argument, and returns the new count."""
        self.assertEqual(self.call("counter_server", "increment"), 1)
        self.assertEqual(self.call("counter_server", "increment", 5), 6)
        self.assertEqual(self.call("counter_server", "increment", by=-2), 4)
        self.assertEqual(self.call("counter_server", "get"), 4)

    def test_acceptanceCall(self) -> None:
        """The acceptance call increment(5) on a fresh node answers 5."""
        self.assertEqual(self.call("counter_server", "increment", 5), 5)

    def test_manyIncrements(self) -> None:
        """200 queued increments all count."""
        ds = [self.node.call(None, "counter_server", "increment") for _ in range(200)]
        self.assertEqual([self.successResultOf(d) for d in ds], list(range(1, 201)))
        self.assertEqual(self.call("counter_server", "get"), 200)

    def test_reset(self) -> None:
        """reset returns the old count and starts again from 0."""
        self.call("counter_server", "increment", 7)
        self.assertEqual(self.call("counter_server", "reset"), 7)
        self.assertEqual(self.call("counter_server", "get"), 0)
        self.assertEqual(self.call("counter_server", "reset"), 0)

    def test_explicitNode(self) -> None:
        """The counter answers a call naming this node explicitly."""
        d = self.node.call("n1", "counter_server", "increment", 3)
        self.assertEqual(self.successResultOf(d), 3)

    def test_twoNodesTwoCounters(self) -> None:
        """Each node that loads the app gets its own counter."""
        other = RelayNode(build_config({"node_id": "n2"}), MemoryReactorClock())
        self.successResultOf(other.load_app(COUNTER))
        self.call("counter_server", "increment", 10)
        self.assertEqual(self.successResultOf(other.call(None, "counter_server", "get")), 0)

    def test_wrongArity(self) -> None:
        """Too many arguments are invalid params (-32602)."""
        error = self.fails(InvalidParams, "counter_server", "increment", 1, 2)
        self.assertEqual(error.code, -32602)
        self.fails(InvalidParams, "counter_server", "get", 1)

    def test_badArgument(self) -> None:
        """A non-number increment fails with -32000 (TypeError); the counter survives."""
        error = self.fails(RemoteCallError, "counter_server", "increment", "x")
        self.assertEqual(error.code, -32000)
        self.assertEqual(error.data["type"], "TypeError")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(self.call("counter_server", "increment"), 1)

    def test_notExposed(self) -> None:
        """Attributes and constructor of the server are not callable (-32601)."""
        for name in ["count", "__init__", "_private", "setup"]:
            error = self.fails(MethodNotFound, "counter_server", name)
            self.assertEqual(error.code, -32601)

    def test_notExposedExplicit(self) -> None:
        """With an explicit node id an unknown method is -32003."""
        failure = self.failureResultOf(
            self.node.call("n1", "counter_server", "count"), NoSuchMethod
        )
        self.assertEqual(failure.value.code, -32003)


class TaskTests(ExampleTestCase):
    """examples/tasks.py: task_server."""

    def test_exposed(self) -> None:
        """The app exposes task_server with add_task, list_tasks and complete."""
        self.assertEqual(
            self.node.local_servers()["task_server"], ["add_task", "complete", "list_tasks"]
        )

    def test_addTask(self) -> None:
        """add_task returns the new task with increasing ids."""
        self.assertEqual(
            self.call("task_server", "add_task", "write tests"),
            {"id": 1, "title": "write tests", "done": False},
        )
        self.assertEqual(self.call("task_server", "add_task", title="ship")["id"], 2)

    def test_listTasks(self) -> None:
        """list_tasks returns tasks in the order they were added."""
        self.assertEqual(self.call("task_server", "list_tasks"), [])
        self.call("task_server", "add_task", "a")
        self.call("task_server", "add_task", "b")
        titles = [t["title"] for t in self.call("task_server", "list_tasks")]
        self.assertEqual(titles, ["a", "b"])

    def test_complete(self) -> None:
        """complete marks a task done; list_tasks(false) leaves it out."""
        self.call("task_server", "add_task", "a")
        self.call("task_server", "add_task", "b")
        self.assertEqual(
            self.call("task_server", "complete", 1), {"id": 1, "title": "a", "done": True}
        )
        self.assertEqual([t["id"] for t in self.call("task_server", "list_tasks")], [1, 2])
        self.assertEqual([t["id"] for t in self.call("task_server", "list_tasks", False)], [2])
        open_tasks = self.call("task_server", "list_tasks", include_done=False)
        self.assertEqual([t["id"] for t in open_tasks], [2])

    def test_completeTwice(self) -> None:
        """Completing a done task again is harmless."""
        self.call("task_server", "add_task", "a")
        self.call("task_server", "complete", 1)
        self.assertTrue(self.call("task_server", "complete", 1)["done"])

    def test_completeUnknown(self) -> None:
        """Completing an unknown id fails with -32000 naming the KeyError and the id."""
        error = self.fails(RemoteCallError, "task_server", "complete", 99)
        self.assertEqual(error.code, -32000)
        self.assertEqual(error.data["type"], "KeyError")
        self.assertIn("no task 99", error.message)
        self.assertIn("no task 99", error.data["message"])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_completeStringId(self) -> None:
        """A task id given as a string is an unknown id."""
        self.call("task_server", "add_task", "a")
        self.fails(RemoteCallError, "task_server", "complete", "1")
        self.flushLoggedErrors(KeyError)

    def test_emptyTitle(self) -> None:
        """A task without a non-empty string title fails with -32000 (ValueError)."""
        for title in ["", "   ", 5, None]:
            error = self.fails(RemoteCallError, "task_server", "add_task", title)
            self.assertEqual(error.data["type"], "ValueError")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 4)
        self.assertEqual(self.call("task_server", "list_tasks"), [])

    def test_missingArgument(self) -> None:
        """complete without an id is invalid params (-32602)."""
        error = self.fails(InvalidParams, "task_server", "complete")
        self.assertEqual(error.code, -32602)

    def test_unknownServer(self) -> None:
        """A server no app exposed is -32601."""
        self.fails(MethodNotFound, "todo_server", "list_tasks")
