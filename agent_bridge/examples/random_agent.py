"""An agent that picks a random action for every train, seeded per episode (reproducible)."""

import random
from typing import Any, Mapping

from agent_bridge import serve
from agent_bridge.actions import N_ACTIONS


class RandomAgent:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.n_agents = 0

    def reset(self, episode_info: Mapping[str, Any]) -> None:
        self.rng = random.Random(f"{self.seed}:{episode_info.get('episode_id')}")
        self.n_agents = int(episode_info["env"]["n_agents"])

    def act(self, observations: Mapping[int, Any], info: Mapping[str, Any]) -> dict:
        return {h: self.rng.randrange(N_ACTIONS) for h in range(self.n_agents)}


if __name__ == "__main__":
    serve(RandomAgent())
