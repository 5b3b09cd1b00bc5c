"""An agent that never moves a train: the baseline every submission must beat."""

from typing import Any, Mapping

from agent_bridge import serve


class DoNothing:
    def reset(self, episode_info: Mapping[str, Any]) -> None:
        pass

    def act(self, observations: Mapping[int, Any], info: Mapping[str, Any]) -> dict:
        return {}  # a missing handle means DO_NOTHING


if __name__ == "__main__":
    serve(DoNothing())
