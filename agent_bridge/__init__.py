"""The participant's side of flateval: serve a policy to an env worker over ZeroMQ.

Importing this package needs only pyzmq and msgpack (no flatland, Redis or rq), so it fits in the
smallest agent image.
"""

from agent_bridge.protocol import PROTOCOL_VERSION
from agent_bridge.server import Policy, serve

__all__ = ["PROTOCOL_VERSION", "Policy", "serve"]
