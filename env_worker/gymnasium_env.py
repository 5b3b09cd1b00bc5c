"""A Gymnasium env behind the `EnvAdapter` interface: one agent, its observation and action as they are.

Episode i of a submission is ``gymnasium.make(env_id)`` reset with ``seed = S + i``, so every score
can be reproduced by stepping gymnasium directly. The env id comes from the challenge host, never
from the agent. gymnasium is an optional extra (``pip install flateval[gymnasium]``), imported
only when a gymnasium episode runs.
"""

from __future__ import annotations

from typing import Any, Mapping

from agent_bridge import protocol as wire
from env_worker.env_adapter import EnvLoadError, ObservationNotAllowed, StepOutcome
from scoring.episode import ScoreInputs

INSTALL_HINT = "gymnasium is not installed: pip install flateval[gymnasium]"


def _gymnasium() -> Any:
    try:
        import gymnasium
    except ImportError:
        raise EnvLoadError(INSTALL_HINT) from None
    return gymnasium


def describe_space(space: Any) -> dict:
    """A gymnasium space as plain data for the agent (and for `wire.parse_action`): type, shape,
    dtype and bounds; array-valued bounds stay numpy arrays (they cross as raw buffers)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": space.dtype.name, "low": space.low,
                "high": space.high}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "shape": list(space.shape), "dtype": space.dtype.name, "nvec": space.nvec,
                "start": getattr(space, "start", space.nvec * 0)}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "shape": list(space.shape), "dtype": space.dtype.name}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {key: describe_space(sub) for key, sub in space.spaces.items()}}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [describe_space(sub) for sub in space.spaces]}
    return {"type": type(space).__name__}


def _validatable(space: Mapping[str, Any]) -> bool:
    """Whether `wire.parse_action` can check every action of this (described) space."""
    if space["type"] == "Dict":
        return all(_validatable(sub) for sub in space["spaces"].values())
    if space["type"] == "Tuple":
        return all(_validatable(sub) for sub in space["spaces"])
    return space["type"] in wire.ACTION_SPACE_TYPES


def _plain(value: Any) -> Any:
    """An observation or info in wire form: numpy values stay as they are (arrays cross as raw
    buffers), maps and sequences are walked, and what msgpack cannot carry becomes its repr."""
    if value is None or isinstance(value, (str, bytes, int, float)):
        return value
    if type(value).__module__ == "numpy":
        return _plain(value.tolist()) if getattr(value, "dtype", None) is not None and value.dtype.hasobject else value
    if isinstance(value, Mapping):
        return {k if isinstance(k, (str, int)) else str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


class GymnasiumEnv:
    """One single-agent gymnasium env, made fresh for one episode and reset with its seed."""

    def __init__(self, env_id: str, seed: int, render_mode: str | None = None) -> None:
        """`render_mode`: gymnasium's (``rgb_array`` to replay an episode as frames, never while it is played)."""
        gymnasium = _gymnasium()
        self.env_id, self.seed = env_id, seed
        try:
            self.env = gymnasium.make(env_id, **({"render_mode": render_mode} if render_mode else {}))
        except Exception as exc:  # unknown id, missing dependency, a broken env: one line
            text = str(exc).strip().splitlines()
            raise EnvLoadError(f"cannot make gymnasium env {env_id!r}: {text[0] if text else type(exc).__name__}") \
                from None
        self.action_space = describe_space(self.env.action_space)
        self.observation_space = describe_space(self.env.observation_space)
        if not _validatable(self.action_space):
            self.release()
            raise EnvLoadError(f"gymnasium env {env_id!r}: its action space {self.action_space['type']} is not "
                               f"supported (supported: {', '.join(wire.ACTION_SPACE_TYPES)})")
        spec = self.env.spec
        self.max_episode_steps: int | None = spec.max_episode_steps if spec is not None else None
        self.total = 0.0

    def use_observation(self, spec: Mapping[str, Any] | None) -> None:
        if spec is not None and spec.get("builder") != "none":
            raise ObservationNotAllowed(f"observation builder {spec.get('builder')!r} is not available: a gymnasium "
                                        "env sends its own observation")
        return None

    def serve_replica(self) -> dict:
        raise ObservationNotAllowed("replica mode is for Flatland envs only")

    def reset(self) -> tuple[Any, dict]:
        try:
            obs, info = self.env.reset(seed=self.seed)
        except Exception as exc:
            raise EnvLoadError(f"cannot reset {self.env_id} with seed {self.seed}: {type(exc).__name__}: {exc}") \
                from None
        self.total = 0.0
        return _plain(obs), _plain(info)

    def facts(self) -> dict:
        return {
            "kind": wire.KIND_GYMNASIUM,
            "env_id": self.env_id,
            "n_agents": 1,
            "observation_space": self.observation_space,
            "action_space": self.action_space,
            "max_episode_steps": self.max_episode_steps,
        }

    def parse_actions(self, reply: Mapping[str, Any]) -> Any:
        return wire.parse_action(reply, self.action_space)

    def step(self, action: Any) -> StepOutcome:
        obs, reward, terminated, truncated, info = self.env.step(action)
        reward = float(reward)
        self.total += reward
        return StepOutcome(observations=_plain(obs), rewards=[reward], dones=[bool(terminated)], info=_plain(info),
                           done=bool(terminated or truncated))

    def score_inputs(self) -> ScoreInputs:
        return ScoreInputs(cumulative_reward=self.total, max_episode_steps=self.max_episode_steps, n_agents=1,
                           n_done=None)

    def release(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
