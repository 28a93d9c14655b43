"""
The twistd plugin: C{twistd -n relay [options]} runs a relaytx node.
"""

from twisted.application.service import ServiceMaker

relay = ServiceMaker(
    "relaytx",
    "relaytx.tap",
    "A relaytx node: actor servers over JSON-RPC and a WebSocket mesh.",
    "relay",
)
