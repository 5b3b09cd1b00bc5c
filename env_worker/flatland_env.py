"""Flatland behind the `EnvAdapter` interface: load, reset, observe, step, score inputs.

Loading and resetting follow flatland-rl's own evaluator exactly (``RailEnvPersister.load_new``,
then ``reset(regenerate_rail=True, regenerate_schedule=True, random_seed=seed)``) so that scores
match it; a challenge with ``reset: false`` plays each env as saved, as flatland's policy runner does
without ``--post-seed`` (FAB's ECML 2026 evaluation). Env files come from the challenge host, never from the agent.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from agent_bridge import protocol as wire
from agent_bridge.actions import N_ACTIONS
from core.settings import DEFAULT_OBSERVATION_BUILDERS
from env_worker.env_adapter import EnvLoadError, ObservationNotAllowed, StepOutcome
from scoring.episode import ScoreInputs

TREE_FEATURES = 12
TREE_CHILD_ORDER = ("L", "F", "R", "B")
MAX_TREE_DEPTH = 5


def _builder(spec: Mapping[str, Any]) -> Any:
    from flatland.core.env_observation_builder import DummyObservationBuilder
    from flatland.envs.observations import GlobalObsForRailEnv, TreeObsForRailEnv
    from flatland.envs.predictions import ShortestPathPredictorForRailEnv

    kind = spec["builder"]
    if kind == "none":
        return DummyObservationBuilder()
    if kind == "global":
        return GlobalObsForRailEnv()
    depth = spec.get("max_depth", 2)
    if type(depth) is not int or not 1 <= depth <= MAX_TREE_DEPTH:
        raise ObservationNotAllowed(f"tree max_depth must be an integer 1..{MAX_TREE_DEPTH}, got {depth!r}")
    predictor_depth = spec.get("predictor_depth", 50)
    if type(predictor_depth) is not int or not 0 <= predictor_depth <= 500:
        raise ObservationNotAllowed(f"tree predictor_depth must be an integer 0..500, got {predictor_depth!r}")
    predictor = ShortestPathPredictorForRailEnv(max_depth=predictor_depth) if predictor_depth else None
    return TreeObsForRailEnv(max_depth=depth, predictor=predictor)


def normalize_observation(spec: Mapping[str, Any] | None) -> dict:
    """The agent's observation request with defaults filled in and unknown keys dropped."""
    spec = spec or {"builder": "none"}
    if spec["builder"] != "tree":
        return {"builder": spec["builder"]}
    return {"builder": "tree", "max_depth": spec.get("max_depth", 2), "predictor_depth": spec.get("predictor_depth", 50)}


def tree_rows(depth: int) -> int:
    """Number of nodes of a full 4-ary tree of `depth` (the row count of a flattened tree obs)."""
    return (4 ** (depth + 1) - 1) // 3


def flatten_tree(node: Any, depth: int) -> np.ndarray:
    """A flatland tree observation as one float array (rows in pre-order, children L, F, R, B).

    Missing branches are NaN rows, so the shape is fixed by the depth and the array crosses the
    socket as one raw buffer.
    """
    out = np.full((tree_rows(depth), TREE_FEATURES), np.nan)
    stack = [(node, 0, 0)]  # (node, row, level)
    while stack:
        current, row, level = stack.pop()
        if not hasattr(current, "childs"):
            continue  # -inf placeholder: branch absent, rows stay NaN
        out[row] = current[:TREE_FEATURES]
        if level == depth:
            continue
        subtree = tree_rows(depth - level - 1)
        for i, key in enumerate(TREE_CHILD_ORDER):
            child = current.childs.get(key) if current.childs else None
            if child is not None:
                stack.append((child, row + 1 + i * subtree, level + 1))
    return out


_CACHES: list = []
_MODULES_SEEN = [0]


def _flatland_caches() -> list:
    """The `functools.lru_cache`s on flatland's methods (not its plain-value function caches).

    flatland-rl decorates methods with `lru_cache` (RailEnv, the rail transition maps, ...), so
    the caches' keys hold `self`, the env or rail: a worker kept up to 128 finished envs alive
    (~10 MB each with their malfunction generators) and grew by about a gigabyte over a few hundred
    episodes. Clearing these between episodes frees them; the caches that make stepping fast
    (keyed by speeds and states) stay warm.
    """
    import sys

    if len(sys.modules) != _MODULES_SEEN[0]:  # new modules imported since: look again
        _MODULES_SEEN[0] = len(sys.modules)
        _CACHES.clear()
        seen = set()
        for name, module in list(sys.modules.items()):
            if not name.startswith("flatland") or module is None:
                continue
            for value in list(vars(module).values()):
                if not issubclass(type(value), type):  # type(): isinstance would load a deferred module
                    continue  # module-level caches take plain values (speeds, states): keep them warm
                for holder in vars(value).values():
                    wrapped = getattr(holder, "__wrapped__", None)
                    if hasattr(holder, "cache_clear") and not isinstance(wrapped, staticmethod) \
                            and id(holder) not in seen:
                        seen.add(id(holder))
                        _CACHES.append(holder)
    return _CACHES


def warm_up() -> None:
    """Import flatland's modules now, so a worker's first episode does not pay for them; all but
    the matplotlib.pyplot flatland imports and no episode uses (`agent_bridge.deferred_imports`)."""
    from agent_bridge.deferred_imports import defer_imports

    defer_imports()
    import flatland.core.env_observation_builder  # noqa: F401
    import flatland.envs.observations  # noqa: F401
    import flatland.envs.persistence  # noqa: F401
    import flatland.envs.predictions  # noqa: F401
    import flatland.envs.step_utils.states  # noqa: F401


class FlatlandEnv:
    """A Flatland RailEnv loaded from a test-set file, driven one step at a time."""

    n_actions = N_ACTIONS

    def __init__(self, path: str | Path, seed: int, allowed_builders: Sequence[str] = DEFAULT_OBSERVATION_BUILDERS,
                 rewards: str = "DefaultRewards", reset: bool = True):
        from flatland.envs import rewards as flatland_rewards
        from flatland.envs.persistence import RailEnvPersister

        self.seed = seed
        self.reset_env = reset  # False: play the env as saved (flatland's policy runner without --post-seed)
        self.allowed = tuple(allowed_builders)
        self._spec: dict = {"builder": "none"}
        self._replica = False  # the agent builds its own observations and info
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.env, _ = RailEnvPersister.load_new(str(path), rewards=getattr(flatland_rewards, rewards)())
        except Exception as exc:
            raise EnvLoadError(f"cannot load {Path(path).name}: {type(exc).__name__}: {exc}") from None
        self.n_agents = 0
        self.cumulative_reward = 0.0
        self.per_agent: list[float] = []

    # ---------------------------------------------------------------- observation builders
    def use_observation(self, spec: Mapping[str, Any] | None) -> dict:
        spec = normalize_observation(spec)
        if spec["builder"] not in self.allowed:
            raise ObservationNotAllowed(
                f"observation builder {spec['builder']!r} is not allowed here (allowed: {', '.join(self.allowed)})"
            )
        self.env.obs_builder = _builder(spec)  # RailEnv.reset() attaches it to the env
        self._spec = spec
        return spec

    def serve_replica(self) -> dict:
        """The agent builds its own observations (whatever the challenge allows us to build)."""
        self._replica = True
        self._spec = normalize_observation(None)
        self.env.obs_builder = _builder(self._spec)
        return self._spec

    def _wire_observations(self, obs: Mapping[int, Any]) -> Any:
        kind = self._spec["builder"]
        if kind == "none":
            return None
        if kind == "tree":
            depth = self._spec["max_depth"]
            return [flatten_tree(obs[h], depth) for h in range(self.n_agents)]
        return [list(obs[h]) for h in range(self.n_agents)]

    # ---------------------------------------------------------------- episode
    def reset(self) -> tuple[Any, dict]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self.reset_env:
                    obs, info = self.env.reset(regenerate_rail=True, regenerate_schedule=True, random_seed=self.seed)
                else:
                    obs, info = self._as_saved()
        except Exception as exc:
            raise EnvLoadError(f"cannot reset env: {type(exc).__name__}: {exc}") from None
        self.n_agents = self.env.get_num_agents()
        self.cumulative_reward = 0.0
        self.per_agent = [0.0] * self.n_agents
        return self._wire_observations(obs), self._wire_info(info)

    def _as_saved(self) -> tuple[Any, Any]:
        """The loaded env's first observations and info without a reset, as flatland's `PolicyRunner`
        takes them: its state, malfunction random state included, is the file's."""
        self.env.obs_builder.reset(self.env)  # what RailEnv.reset does for it
        return self.env._get_observations(), self.env.get_info_dict()

    def _wire_info(self, info: Mapping[str, Mapping[int, Any]]) -> dict:
        """flatland's info as plain per-agent lists (runs every step: kept lean, ~4 us for 10 agents)."""
        positions, directions = [], []
        for agent in self.env.agents:
            conf = agent.current_configuration
            if conf is None:
                positions.append(None)
                directions.append(None)
            else:
                positions.append(conf[0])
                directions.append(conf[1])
        return {
            "action_required": list(info["action_required"].values()),
            "malfunction": list(info["malfunction"].values()),
            # speeds are Fractions: float() on them costs a microsecond each, this a fifth of it
            "speed": [s.numerator / s.denominator for s in info["speed"].values()],
            "state": list(map(int, info["state"].values())),
            "position": positions,
            "direction": directions,
        }

    def facts(self) -> dict:
        env = self.env
        agents = env.agents
        return {
            "kind": "flatland",
            "width": env.width,
            "height": env.height,
            "n_agents": self.n_agents,
            "n_actions": N_ACTIONS,
            "max_episode_steps": env._max_episode_steps,
            "rail": wire.pack_ndarray(env.rail.grid.astype(np.uint16)),
            "agents": {
                "initial_position": [a.initial_configuration[0] for a in agents],
                "initial_direction": [a.initial_configuration[1] for a in agents],
                "target": [sorted({t[0] for t in a.targets})[0] if a.targets else None for a in agents],
                "earliest_departure": [int(a.earliest_departure) for a in agents],
                "latest_arrival": [int(a.latest_arrival) for a in agents],
                "speed": [float(a.speed_counter.max_speed) for a in agents],
            },
        }

    def parse_actions(self, reply: Mapping[str, Any]) -> dict[int, int]:
        return wire.parse_actions(reply, self.n_agents, N_ACTIONS)

    def step(self, actions: dict[int, int]) -> StepOutcome:
        obs, rewards, dones, info = self.env.step(actions)
        self.last_info = info  # flatland's own (per-agent dicts): what a trajectory records
        reward_list = [rewards[h] for h in range(self.n_agents)]
        self.cumulative_reward += sum(reward_list)
        per_agent = self.per_agent
        for h, reward in enumerate(reward_list):
            per_agent[h] += reward
        return StepOutcome(
            observations=self._wire_observations(obs),
            rewards=reward_list,
            dones=[bool(dones[h]) for h in range(self.n_agents)],
            info=None if self._replica else self._wire_info(info),
            done=bool(dones["__all__"]),
        )

    def release(self) -> None:
        """Let the env go, and flatland's caches with it (see `_flatland_caches`)."""
        if self.env is None:
            return
        self.env = None
        for cache in _flatland_caches():
            cache.cache_clear()

    def score_inputs(self) -> ScoreInputs:
        from flatland.envs.step_utils.states import TrainState

        return ScoreInputs(
            cumulative_reward=float(self.cumulative_reward),
            max_episode_steps=int(self.env._max_episode_steps),
            n_agents=self.n_agents,
            n_done=sum(1 for a in self.env.agents if a.state == TrainState.DONE),
            per_agent_rewards=tuple(float(r) for r in self.per_agent),
        )
