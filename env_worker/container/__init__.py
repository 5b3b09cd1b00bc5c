"""A participant's image as the agent (`flateval run --agent-image IMAGE`): the container sibling of
the local sandbox (`env_worker.sandbox`), with the same fences built by a container engine.

- `engine`: the engine, found the way its own CLI finds it (``$DOCKER_HOST``, else the default
  socket), and what an image says of itself (user, working directory, environment);
- `bridge`: what flateval brings into any image, read-only: ``agent_bridge`` and its pyzmq and
  msgpack for every Python 3.8-3.13, prepared once per machine;
- `agent`: one agent container (`AgentContainer`), started, checked, restarted and stopped as
  `env_worker.agent_process.AgentProcess` does a process.

docs/sandbox.md (section "Agent images") describes each fence and how it is built.
"""

from env_worker.container.agent import AgentContainer
from env_worker.container.bridge import BridgeDepsError, bridge_deps_dir
from env_worker.container.engine import Engine, EngineError, find_engine

__all__ = ["AgentContainer", "BridgeDepsError", "Engine", "EngineError", "bridge_deps_dir", "find_engine"]
