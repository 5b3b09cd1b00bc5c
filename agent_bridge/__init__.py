"""The participant's side of flateval: serve a policy to an env worker over ZeroMQ.

Importing this package needs only pyzmq and msgpack (no flatland, Redis or rq), so it fits in the
smallest agent image. In an agent image that has neither, `flateval run --agent-image` mounts a
folder with both (for every CPython 3.8-3.13) and names it in ``$FLATEVAL_AGENT_DEPS``: it goes
first on the path, so the bridge runs on the versions flateval tested.
"""

import os as _os
import sys as _sys

_deps = _os.environ.get("FLATEVAL_AGENT_DEPS")
if _deps and _deps not in _sys.path:
    _sys.path.insert(0, _deps)

from agent_bridge.protocol import PROTOCOL_VERSION
from agent_bridge.server import Policy, serve

__all__ = ["PROTOCOL_VERSION", "Policy", "serve"]
