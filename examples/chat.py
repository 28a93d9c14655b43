"""
A chat app showing a custom message type routed across the mesh.

Run two nodes with it and say something from one to the other:

    relay node --node-id alice --port 8080 --app examples/chat.py
    relay node --node-id bob --port 8081 --app examples/chat.py --add-peer ws://127.0.0.1:8080
    relay call http://127.0.0.1:8081 chat say alice "hi alice"
    relay call http://127.0.0.1:8080 chat inbox

The C{chat} message travels as its own wire type (C{"type": "chat"}),
handled by a L{PeerSession} subclass; nodes in between that do not know
the type still forward it.
"""

from attrs import frozen

from relaytx import Server, exposed
from relaytx.peer import PeerSession, handles
from relaytx.wire import Envelope, Payload


@frozen
class Chat(Payload):
    """One chat line."""

    TYPE = "chat"
    text: str


class ChatSession(PeerSession):
    """A peer session that also understands chat messages."""

    @handles(Chat)
    def on_chat(self, envelope: Envelope, chat: Chat) -> None:
        """Put a chat line from another node in this node's inbox."""
        inbox = self.mesh.chat_inbox  # type: ignore[attr-defined]
        inbox.append({"from": envelope.sender, "text": chat.text, "at": envelope.timestamp})


class ChatServer(Server):
    """Say things to other nodes and read what they said."""

    def __init__(self, node) -> None:
        self._node = node

    @exposed
    def say(self, node_id: str, text: str) -> bool:
        """Send C{text} to node C{node_id}; True if it left this node."""
        return self._node.send(node_id, Chat(text))

    @exposed
    def inbox(self) -> list:
        """Every chat line received, oldest first."""
        return list(self._node.mesh.chat_inbox)


def setup(node):
    node.mesh.chat_inbox = []
    node.use_session(ChatSession)
    node.expose("chat", ChatServer(node))
