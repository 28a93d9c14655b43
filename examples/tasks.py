"""
A task list app: C{task_server} with C{add_task}, C{list_tasks} and
C{complete}.
"""

from relaytx import Server, exposed


class TaskList(Server):
    """Tasks with an id, a title and a done flag, in the order they were added."""

    def __init__(self) -> None:
        self.tasks: dict[int, dict] = {}
        self.next_id = 1

    @exposed
    def add_task(self, title: str) -> dict:
        """Add a task; return it (with its new id)."""
        if not isinstance(title, str) or not title.strip():
            raise ValueError("a task needs a non-empty title")
        task = {"id": self.next_id, "title": title, "done": False}
        self.tasks[self.next_id] = task
        self.next_id += 1
        return task

    @exposed
    def list_tasks(self, include_done: bool = True) -> list:
        """Return every task (only open ones when include_done is false)."""
        return [t for t in self.tasks.values() if include_done or not t["done"]]

    @exposed
    def complete(self, task_id: int) -> dict:
        """Mark a task done and return it."""
        try:
            task = self.tasks[task_id]
        except KeyError:
            raise KeyError(f"no task {task_id}") from None
        task["done"] = True
        return task


def setup(node):
    node.expose("task_server", TaskList())
