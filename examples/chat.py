"""
A chat app showing a custom message type routed across the mesh.

Run two nodes with it and say something from one to the other:

    relay node --node-id alice --port 8080 --app examples/chat.py
    relay node --node-id bob --port 8081 --app examples/chat.py --add-peer ws://127.0.0.1:8080
    relay call http://127.0.0.1:8081 chat say alice "hi alice"
    relay call http://127.0.0.1:8080 chat inbox

The C{chat} message travels as its own wire type (C{"type": "chat"});
nodes in between that do not know the type still forward it. The chat
server registers the handler for it, since the lines it receives are its
own state. A message type that needs no app state can instead be handled
by a L{relaytx.peer.PeerSession} subclass (C{@handles(Chat)}, then
C{node.use_session(ChatSession)}), as the README shows.
"""

from attrs import frozen

from relaytx import Server, exposed
from relaytx.wire import Envelope, Payload


@frozen
class Chat(Payload):
    """One chat line."""

    TYPE = "chat"
    text: str


class ChatServer(Server):
    """Say things to other nodes and read what they said."""

    def __init__(self, node) -> None:
        self._node = node
        self._lines: list[dict] = []

    def received(self, envelope: Envelope, chat: Chat) -> None:
        """A chat line from another node (the node's handler for C{chat})."""
        self._lines.append({"from": envelope.sender, "text": chat.text, "at": envelope.timestamp})

    @exposed
    def say(self, node_id: str, text: str) -> bool:
        """Send C{text} to node C{node_id}; True if it left this node."""
        return self._node.send(node_id, Chat(text))

    @exposed
    def inbox(self) -> list:
        """Every chat line received, oldest first."""
        return list(self._lines)


def setup(node):
    chat = ChatServer(node)
    node.register_handler(Chat, chat.received)
    node.expose("chat", chat)
