"""The agent's own copy of a Flatland episode (replica mode, docs/protocol.md section 15).

It is loaded from the env file the evaluator sent and reset exactly as the evaluator resets its own
(``RailEnvPersister.load_new`` with the challenge's rewards class, then
``reset(regenerate_rail=True, regenerate_schedule=True, random_seed=seed)``: flatland's evaluators
and its own client do the same; or, when ``replica.reset`` is false, played as saved, as flatland's
policy runner does without ``--post-seed``), so stepping it with the actions the agent sends gives the very
rewards and dones the evaluator's env gives. `check` compares them at every step: a difference (say,
another flatland-rl version in the agent's image) is one clear error naming the step, not a
participant who silently plays another episode than the one scored.

Imports flatland: only agents that keep a replica need it.
"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
import warnings
from pathlib import Path, PurePosixPath
from typing import Any, Mapping


class ReplicaDiverged(Exception):
    """The replica's step disagrees with the evaluator's: the agent would act on another env."""


class Replica:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="flateval-replica-"))
        atexit.register(shutil.rmtree, self.root, True)
        self.env: Any = None
        self.path: Path | None = None
        self.steps = 0
        self._last: tuple[list, list] | None = None

    def start(self, message: Mapping[str, Any], obs_builder: Any = None) -> tuple[Any, Any]:
        """Load and reset the episode of an ``episode_start``; return flatland's (observations, info)."""
        from flatland.envs import rewards as flatland_rewards
        from flatland.envs.persistence import RailEnvPersister

        replica = message["replica"]
        if self.path is not None:
            self.path.unlink(missing_ok=True)  # the last episode's file: its env is loaded, or over
        self.path = self.root / _safe_relative(message.get("env_file") or "env.pkl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(replica["env_file_bytes"])
        rewards = getattr(flatland_rewards, str(replica.get("rewards") or "DefaultRewards"))()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.env, _ = RailEnvPersister.load_new(str(self.path), obs_builder=obs_builder, rewards=rewards)
            if replica.get("reset", True):
                obs, info = self.env.reset(regenerate_rail=True, regenerate_schedule=True, random_seed=message["seed"])
            else:  # played as saved (flatland's policy runner without --post-seed)
                obs, info = self.env._get_observations(), self.env.get_info_dict()
        self.steps, self._last = 0, None
        return obs, info

    def step(self, actions: Mapping[int, int]) -> tuple[Any, dict, dict, dict]:
        obs, rewards, dones, info = self.env.step(dict(actions))
        self.steps += 1
        n = self.env.get_num_agents()
        self._last = ([rewards[h] for h in range(n)], [bool(dones[h]) for h in range(n)])
        return obs, rewards, dones, info

    def check(self, message: Mapping[str, Any]) -> None:
        """Raise `ReplicaDiverged` unless the evaluator's rewards and dones (of a ``step`` or an
        ``episode_end``) are the replica's last step's."""
        if self._last is None or message.get("rewards") is None:
            return
        step = message.get("step", message.get("steps"))
        if step != self.steps:
            raise ReplicaDiverged(f"the evaluator is at step {step}, this replica at step {self.steps}")
        rewards, dones = self._last
        theirs_rewards, theirs_dones = list(message["rewards"]), [bool(d) for d in message["dones"]]
        if len(theirs_rewards) != len(rewards) or not all(
                math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(rewards, theirs_rewards)):
            raise ReplicaDiverged(f"step {step}: rewards {_short(theirs_rewards)} in the evaluator's env, "
                                  f"{_short(rewards)} in this replica (another flatland-rl version?)")
        if theirs_dones != dones:
            raise ReplicaDiverged(f"step {step}: dones {_short(theirs_dones)} in the evaluator's env, "
                                  f"{_short(dones)} in this replica (another flatland-rl version?)")

    @property
    def n_agents(self) -> int:
        return self.env.get_num_agents()


def _safe_relative(env_file: str) -> PurePosixPath:
    """The env file's name as the evaluator gave it (``Test_0/Level_1.pkl``), kept inside our folder."""
    parts = [p for p in PurePosixPath(env_file).parts if p not in ("", ".", "..", "/")]
    name = PurePosixPath(*parts) if parts else PurePosixPath("env.pkl")
    return name if name.suffix == ".pkl" else name.with_suffix(".pkl")


def _short(values: list) -> str:
    text = repr(values)
    return text if len(text) <= 120 else text[:117] + "..."
