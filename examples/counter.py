"""
A counter app: C{twistd -n relay --app examples/counter.py} exposes
C{counter_server} with C{increment}, C{get} and C{reset}.
"""

from relaytx import Server, exposed


class Counter(Server):
    """A count that only ever changes one call at a time."""

    def __init__(self) -> None:
        self.count = 0

    @exposed
    def increment(self, by: int = 1) -> int:
        """Add C{by} (default 1) and return the new count."""
        self.count += by
        return self.count

    @exposed
    def get(self) -> int:
        """Return the count."""
        return self.count

    @exposed
    def reset(self) -> int:
        """Set the count back to 0 and return the old one."""
        old, self.count = self.count, 0
        return old


def setup(node):
    node.expose("counter_server", Counter())
