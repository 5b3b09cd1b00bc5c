"""A FlatlandRemoteClient script written against flatland-rl 4.3's API, as a participant writes one:
tree observations (depth 2), a small deterministic heuristic, TimeoutException caught.

Runs unchanged under flatland's own service + client and under `flateval run --agent
"python -m agent_bridge.flatland_remote remote_client_tree.py"`. For tests it reads two optional
variables: REDIS_PORT (the port of flatland's service; flatland's client defaults to 6379) and
FREEZE ("<env file>:<step>:<seconds>", e.g. "Test_0/Level_1.pkl:5:1.5": sleep that long before
that step's actions in that env's episode).
"""

import os
import time

import numpy as np
from flatland.envs.observations import TreeObsForRailEnv
from flatland.envs.predictions import ShortestPathPredictorForRailEnv
from flatland.evaluators.client import FlatlandRemoteClient, TimeoutException

remote_client = FlatlandRemoteClient(remote_port=int(os.environ.get("REDIS_PORT", "6379")))
freeze_env, freeze_step, freeze_s = (os.environ.get("FREEZE") or "-:-1:0").split(":")


def act(handle, observation):
    """Go where the tree says the target is closest (forward by default); deterministic."""
    if observation is None or not hasattr(observation, "childs"):
        return 2
    best, action = np.inf, 2
    for direction, move in (("L", 1), ("F", 2), ("R", 3)):
        child = observation.childs.get(direction)
        if child is not None and not isinstance(child, float) and child.dist_min_to_target < best:
            best, action = child.dist_min_to_target, move
    return action


episode = 0
timeouts = 0
while True:
    observations, info = remote_client.env_create(
        obs_builder_object=TreeObsForRailEnv(max_depth=2, predictor=ShortestPathPredictorForRailEnv(max_depth=10)))
    if not observations:
        break
    env = remote_client.env
    step = 0
    while True:
        actions = {h: act(h, observations[h]) for h in env.get_agent_handles()}
        if remote_client.current_env_path.endswith(freeze_env) and step == int(freeze_step):
            time.sleep(float(freeze_s))
        try:
            observations, rewards, done, info = remote_client.env_step(actions)
        except TimeoutException as exc:
            timeouts += 1
            print(f"TimeoutException in episode {episode} at step {step}: {exc}", flush=True)
            break
        step += 1
        if done["__all__"]:
            break
    print(f"episode {episode} ({remote_client.current_env_path}): {step} steps", flush=True)
    episode += 1

print(f"Evaluation Complete: {episode} episodes, {timeouts} timeouts", flush=True)
print(remote_client.submit(), flush=True)
