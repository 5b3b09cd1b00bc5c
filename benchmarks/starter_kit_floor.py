"""The floor of the torch-kit workload: the starter kit replica's own work with no evaluator at all.

In a fresh interpreter, as a script starts: import torch, flatland and the kit (`startup_s`); then
for every env of the test set, what the kit's process does under any evaluator (load its copy, reset
as flatland's service does, build the tree observations, normalize and evaluate the DDDQN for every
agent that must act, step its copy; `agent_s`), and what the evaluator's side must do at least (load
and reset the authoritative copy, step it with the same actions, no observations; `worker_s`).

With 1 worker nothing can beat ``startup_s + agent_s`` (the agent's work is serial and it is the
slower side); with 2 workers on 2 cores, ``startup_s + (agent_s + worker_s) / 2`` (both sides'
work spread evenly over the cores). Prints one JSON line.

    python benchmarks/starter_kit_floor.py TEST_SET
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import starter_kit_run as kit  # noqa: E402  (torch, flatland)
from flatland.core.env_observation_builder import DummyObservationBuilder  # noqa: E402
from flatland.envs.observations import TreeObsForRailEnv  # noqa: E402
from flatland.envs.persistence import RailEnvPersister  # noqa: E402
from flatland.envs.predictions import ShortestPathPredictorForRailEnv  # noqa: E402

from flatland_baseline import FLATLAND_SEED, env_files  # noqa: E402

STARTUP_S = time.perf_counter() - STARTED


def load(path: Path, builder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env, _ = RailEnvPersister.load_new(str(path), obs_builder=builder)
        observations, info = env.reset(regenerate_rail=True, regenerate_schedule=True, random_seed=FLATLAND_SEED)
    return env, observations, info


def agent_episode(path: Path, policy) -> tuple[list[dict], int]:
    """The kit's episode on its own copy; the actions it took."""
    builder = TreeObsForRailEnv(max_depth=kit.TREE_DEPTH, predictor=ShortestPathPredictorForRailEnv(kit.MAX_PATH_DEPTH))
    env, observations, info = load(path, builder)
    builder.reset(env)
    observations = builder.get_many(list(range(len(env.agents))))
    taken = []
    while True:
        actions = {agent: policy.act(kit.normalize_observation(observations[agent], kit.TREE_DEPTH,
                                                               kit.OBSERVATION_RADIUS))
                   for agent in range(len(env.agents)) if info["action_required"][agent] and observations[agent]}
        taken.append(actions)
        observations, _, done, info = env.step(actions)
        if done["__all__"]:
            return taken, len(env.agents)


def worker_episode(path: Path, taken: list[dict]) -> None:
    env, _, _ = load(path, DummyObservationBuilder())
    for actions in taken:
        env.step(actions)


def main(test_set: Path) -> dict:
    policy = kit.DDDQNPolicy(TreeObsForRailEnv(max_depth=kit.TREE_DEPTH).observation_dim * 21, kit.ACTION_SIZE)
    agent_s = worker_s = 0.0
    steps = 0
    for rel in env_files(test_set):
        started = time.perf_counter()
        taken, _ = agent_episode(test_set / rel, policy)
        agent_s += time.perf_counter() - started
        started = time.perf_counter()
        worker_episode(test_set / rel, taken)
        worker_s += time.perf_counter() - started
        steps += len(taken)
    return {"startup_s": STARTUP_S, "agent_s": agent_s, "worker_s": worker_s, "steps": steps,
            "floor_1_s": STARTUP_S + agent_s, "floor_2_s": STARTUP_S + (agent_s + worker_s) / 2}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]).resolve())))
