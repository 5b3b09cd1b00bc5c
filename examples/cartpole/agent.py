"""The starter agent of the CartPole challenge: a two-line controller that balances the pole.

    python examples/cartpole/agent.py                 # the heuristic (return 500 on most seeds)
    python examples/cartpole/agent.py --always-left   # always pushes left (action 0): a baseline

`act` gets CartPole's observation itself, a float32 array [cart position, cart velocity, pole
angle, pole angular velocity], and returns the action itself: 0 pushes the cart left, 1 right.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

from agent_bridge import serve

LEFT, RIGHT = 0, 1


class BalancePole:
    """Push the cart toward the side the pole is falling to (its angle, plus where it is heading)."""

    def reset(self, episode_info: Mapping[str, Any]) -> None:
        space = episode_info["env"]["action_space"]
        assert space == {"type": "Discrete", "n": 2, "start": 0}, space

    def act(self, observation: Any, info: Mapping[str, Any]) -> int:
        _, _, angle, angular_velocity = observation
        return RIGHT if angle + 0.5 * angular_velocity > 0 else LEFT


class AlwaysLeft:
    def reset(self, episode_info: Mapping[str, Any]) -> None:
        pass

    def act(self, observation: Any, info: Mapping[str, Any]) -> int:
        return LEFT


if __name__ == "__main__":
    serve(AlwaysLeft() if "--always-left" in sys.argv[1:] else BalancePole())
