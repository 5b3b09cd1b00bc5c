"""A replica of the NeurIPS 2020 Flatland starter kit's ``run.py``: the workload most real
submissions brought, for benchmarks (benchmarks/compare_flatland.py --workload torch-kit).

Same shape as the kit: a FlatlandRemoteClient script that builds its own tree observations
(``TreeObsForRailEnv(max_depth=2, ShortestPathPredictorForRailEnv(30))``), rebuilds them after every
``env_create``, normalizes each agent's tree as the kit's ``observation_utils.normalize_observation``
does (feature groups, clipped to a radius of 10) and evaluates a dueling double DQN (the kit's
``DuelingQNetwork``: two 128-wide ReLU streams, value + advantage) with torch on the CPU, one agent
at a time, for every agent whose action is required, every step. The weights are seeded instead of
loaded from a checkpoint (no file to ship, identical actions under every evaluator); the kit's
thread settings are torch's defaults, as here.

    python starter_kit_run.py                                   # under flatland's service
    flateval run --agent "python -m agent_bridge.flatland_remote starter_kit_run.py"

Needs torch (``pip install flateval[bench]``). Reads REDIS_PORT for flatland's service (its client
defaults to 6379).
"""

import os

import numpy as np
import torch
import torch.nn.functional as F
from flatland.envs.observations import TreeObsForRailEnv
from flatland.envs.predictions import ShortestPathPredictorForRailEnv
from flatland.evaluators.client import FlatlandRemoteClient, TimeoutException
from torch import nn

TREE_DEPTH = 2
OBSERVATION_RADIUS = 10
MAX_PATH_DEPTH = 30
ACTION_SIZE = 5
HIDDEN = 128
BRANCHES = TreeObsForRailEnv.tree_explored_actions_char


# ---------------------------------------------------------------- the kit's observation_utils


def max_below(values, bound):
    """The largest value in [0, bound): the kit's `max_lt`."""
    kept = [v for v in values if 0 <= v < bound]
    return max(kept, default=0)


def min_above(values, bound):
    """The smallest value from `bound` up: the kit's `min_gt`."""
    kept = [v for v in values if v >= bound]
    return min(kept, default=np.inf)


def clip_normalized(values, fixed_radius=0, normalize_to_range=False):
    """The kit's `norm_obs_clip`: scale by the radius (or the largest finite distance), clip to [-1, 1]."""
    high = fixed_radius if fixed_radius > 0 else max(1, max_below(values, 1000)) + 1
    low = min_above(values, 0) if normalize_to_range else 0
    low = min(low, high)
    span = high - low if high != low else high
    return np.clip((np.array(values) - (0 if high == low else low)) / span, -1, 1)


def node_groups(node):
    """One node's features in the kit's three groups: distances to things, the target distance, agents."""
    data = [node.dist_own_target_encountered, node.dist_other_target_encountered,
            node.dist_other_agent_encountered, node.dist_potential_conflict, node.dist_unusable_switch,
            node.dist_to_next_branch]
    agents = [node.num_agents_same_direction, node.num_agents_opposite_direction, node.num_agents_malfunctioning,
              node.speed_min_fractional]
    return np.array(data, dtype=float), np.array([node.dist_min_to_target], dtype=float), np.array(agents, dtype=float)


def subtree_groups(node, depth, max_depth):
    """A subtree's features, depth first; a missing branch (-inf) is -inf for its whole subtree."""
    if node == -np.inf:
        missing = (4 ** (max_depth - depth + 1) - 1) // 3
        return [-np.inf] * missing * 6, [-np.inf] * missing, [-np.inf] * missing * 4
    data, distance, agents = node_groups(node)
    if not node.childs:
        return data, distance, agents
    for branch in BRANCHES:
        sub = subtree_groups(node.childs[branch], depth + 1, max_depth)
        data, distance, agents = (np.concatenate((data, sub[0])), np.concatenate((distance, sub[1])),
                                  np.concatenate((agents, sub[2])))
    return data, distance, agents


def normalize_observation(tree, max_depth, radius=0):
    """The kit's `normalize_observation`: a flat vector of 11 features x 21 nodes for depth 2."""
    data, distance, agents = node_groups(tree)
    for branch in BRANCHES:
        sub = subtree_groups(tree.childs[branch], 1, max_depth)
        data, distance, agents = (np.concatenate((data, sub[0])), np.concatenate((distance, sub[1])),
                                  np.concatenate((agents, sub[2])))
    data = clip_normalized(data, fixed_radius=radius)
    distance = clip_normalized(distance, normalize_to_range=True)
    agents = np.clip(agents, -1, 1)
    return np.concatenate((data, distance, agents))


# ---------------------------------------------------------------- the kit's DDDQN policy


class DuelingQNetwork(nn.Module):
    def __init__(self, state_size, action_size, hidden=HIDDEN):
        super().__init__()
        self.fc1_val, self.fc2_val, self.fc4_val = nn.Linear(state_size, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
        self.fc1_adv, self.fc2_adv = nn.Linear(state_size, hidden), nn.Linear(hidden, hidden)
        self.fc4_adv = nn.Linear(hidden, action_size)

    def forward(self, x):
        val = self.fc4_val(F.relu(self.fc2_val(F.relu(self.fc1_val(x)))))
        adv = self.fc4_adv(F.relu(self.fc2_adv(F.relu(self.fc1_adv(x)))))
        return val + adv - adv.mean()


class DDDQNPolicy:
    """The kit's policy in evaluation mode: a greedy action from the local Q network, one agent a call."""

    def __init__(self, state_size, action_size):
        torch.manual_seed(0)
        self.device = torch.device("cpu")
        self.qnetwork_local = DuelingQNetwork(state_size, action_size).to(self.device)

    def act(self, state):
        state = torch.from_numpy(state).float().unsqueeze(0).to(self.device)
        self.qnetwork_local.eval()
        with torch.no_grad():
            action_values = self.qnetwork_local(state)
        return int(np.argmax(action_values.cpu().data.numpy()))


# ---------------------------------------------------------------- run.py


def main():
    remote_client = FlatlandRemoteClient(remote_port=int(os.environ.get("REDIS_PORT", "6379")))
    tree_observation = TreeObsForRailEnv(max_depth=TREE_DEPTH,
                                         predictor=ShortestPathPredictorForRailEnv(MAX_PATH_DEPTH))
    n_nodes = sum(4 ** i for i in range(TREE_DEPTH + 1))
    policy = DDDQNPolicy(tree_observation.observation_dim * n_nodes, ACTION_SIZE)
    evaluation = 0
    while True:
        observation, info = remote_client.env_create(obs_builder_object=tree_observation)
        if not observation:
            break
        local_env = remote_client.env
        n_agents = len(local_env.agents)
        tree_observation.reset(local_env)  # the kit: set_env(local_env); reset() (flatland 4: reset(env))
        observation = tree_observation.get_many(list(range(n_agents)))
        steps = 0
        while True:
            try:
                actions = {}
                for agent in range(n_agents):
                    if info["action_required"][agent] and observation[agent]:
                        actions[agent] = policy.act(normalize_observation(observation[agent], TREE_DEPTH,
                                                                          OBSERVATION_RADIUS))
                observation, _, done, info = remote_client.env_step(actions)
                steps += 1
                if done["__all__"]:
                    break
            except TimeoutException as err:
                print("Timeout! Will skip this episode and go to the next.", err, flush=True)
                break
        print(f"evaluation {evaluation}: {steps} steps, {n_agents} agents", flush=True)
        evaluation += 1
    print("Evaluation of all environments complete...", flush=True)
    print(remote_client.submit(), flush=True)


if __name__ == "__main__":
    main()
