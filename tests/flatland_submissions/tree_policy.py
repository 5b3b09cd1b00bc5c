"""A flatland `Policy` as flatland 4.x's offline evaluation (flatland-benchmarks) runs one: made with no
arguments, `act_many(handles, observations)` on tree observations, one instance per episode."""

from typing import Any, Dict, List

from flatland.core.policy import Policy
from flatland.envs.observations import TreeObsForRailEnv
from flatland.envs.predictions import ShortestPathPredictorForRailEnv
from flatland.envs.rail_env_action import RailEnvActions


class TreeObs(TreeObsForRailEnv):
    """Depth-2 tree observations (the builder flatland's runner makes with no arguments)."""

    def __init__(self) -> None:
        super().__init__(max_depth=2, predictor=ShortestPathPredictorForRailEnv(max_depth=10))


class ClosestBranchPolicy(Policy):
    """Take the branch of the tree that gets closest to the target; forward when in doubt."""

    def __init__(self) -> None:
        self.steps = 0

    def act_many(self, handles: List[int], observations: List[Any], **kwargs) -> Dict[int, RailEnvActions]:
        self.steps += 1
        return {handle: self._act(observations[handle]) for handle in handles}

    @staticmethod
    def _act(observation: Any) -> RailEnvActions:
        if observation is None or not hasattr(observation, "childs"):
            return RailEnvActions.MOVE_FORWARD
        best, action = float("inf"), RailEnvActions.MOVE_FORWARD
        for branch, move in (("L", RailEnvActions.MOVE_LEFT), ("F", RailEnvActions.MOVE_FORWARD),
                             ("R", RailEnvActions.MOVE_RIGHT)):
            child = observation.childs.get(branch)
            if child is not None and not isinstance(child, float) and child.dist_min_to_target < best:
                best, action = child.dist_min_to_target, move
        return action
