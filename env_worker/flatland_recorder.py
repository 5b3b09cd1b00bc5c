"""One Flatland episode as a flatland-rl Trajectory, written through flatland's own `Trajectory` API.

`flatland-trajectory-evaluate` (flatland's `TrajectoryEvaluator`) replays a trajectory from its
serialised state and asserts every position, reward, done and info against the recording, so:

* the state is serialised right after the challenge's reset (`Trajectory.create_empty`), with the
  seeded random state that drives malfunctions;
* every agent's action is recorded at every step, as the env applied it: a missing action is
  DO_NOTHING to the env but MOVE_FORWARD to a replay;
* positions, rewards, dones and flatland's own infos are recorded after every step, and the
  ``trains_arrived`` row only for an episode that ended (done), as flatland's PolicyRunner does. Its
  ``normalized_reward`` is on flatland's scale (+1) under the episode's normalization: ``seed``
  gives flatland's evaluation service's Σr / (max steps × agents) + 1, ``flatland`` its
  ``Rewards.normalize`` (each agent's return capped at -max steps first); so it is always the
  result's normalized return - offset + 1 (`trajectory_normalized_reward`).

Per step the recorder appends one tuple of references to a list (the env's fresh reward list, done
list and info dict, the agents' positions): no file I/O and no per-agent dictionaries while the
deadline clock runs. At the episode's end the rows go through flatland's collect calls and
`Trajectory.persist` writes the TSVs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from core.episode_spec import EpisodeSpec
from env_worker.env_adapter import StepOutcome
from core.outcomes import COMPLETED
from scoring.episode import ScoreInputs, episode_score, percentage_complete

KIND = "flatland-trajectory"
FLATLAND_SCALE = 1.0  # flatland adds 1 to every normalized reward


def trajectory_normalized_reward(per_agent: "list[float] | tuple[float, ...]", max_episode_steps: int,
                                 normalization: str) -> float:
    """The ``trains_arrived`` normalized reward of an ended episode (see the module's docstring): the
    episode's score by the same formula, on flatland's scale."""
    totals = ScoreInputs(float(sum(per_agent)), max_episode_steps, len(per_agent), None, tuple(per_agent))
    scale = EpisodeSpec(env_path="", env_file="", normalization=normalization, score_offset=FLATLAND_SCALE)
    return episode_score(COMPLETED, totals, scale)


class FlatlandRecorder:
    """Records the episode of one reset `FlatlandEnv` adapter into `folder` (one Trajectory data dir)."""

    kind = KIND

    def __init__(self, folder: Path, adapter: Any, spec: EpisodeSpec) -> None:
        from flatland.trajectories.trajectories import Trajectory

        ep_id = spec.ep_id
        self.normalization = spec.normalization
        self.adapter = adapter
        self.env = adapter.env  # held to the end: the adapter lets go of it before the episode's result
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.trajectory = Trajectory.create_empty(data_dir=Path(folder), env=self.env, ep_id=ep_id)
        self.agents = self.env.agents
        self.rows: list[tuple] = []
        self.done = False

    def step(self, actions: dict[int, int], outcome: StepOutcome) -> None:
        """The per-step path: one append (see the module's docstring)."""
        self.rows.append((actions, [a.current_configuration for a in self.agents], outcome.rewards, outcome.dones,
                          self.adapter.last_info))
        self.done = outcome.done

    def finish(self) -> dict[str, Any]:
        """Write the trajectory's TSVs; return what was recorded (for the manifest)."""
        from flatland.envs.rail_env_action import RailEnvActions
        from flatland.envs.step_utils.states import TrainState

        trajectory, env = self.trajectory, self.env
        n = len(self.agents)
        actions_of = [RailEnvActions.from_value(a) for a in range(len(RailEnvActions))]
        do_nothing = RailEnvActions.DO_NOTHING.value
        per_agent = [0.0] * n
        for time, (actions, positions, rewards, dones, info) in enumerate(self.rows):
            for h in range(n):
                trajectory.action_collect(env_time=time, agent_id=h, action=actions_of[actions.get(h, do_nothing)])
                trajectory.position_collect(env_time=time + 1, agent_id=h, position=positions[h])
                trajectory.rewards_dones_infos_collect(env_time=time + 1, agent_id=h, reward=rewards[h],
                                                       info={k: v[h] for k, v in info.items()}, done=dones[h])
                per_agent[h] += rewards[h]
        arrivals = percentage_complete(sum(1 for a in self.agents if a.state == TrainState.DONE), n)
        normalized = None
        if self.done:
            normalized = trajectory_normalized_reward(per_agent, env._max_episode_steps, self.normalization)
            trajectory.arrived_collect(env_time=env._elapsed_steps - 1, success_rate=arrivals,
                                       normalized_reward=normalized)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trajectory.persist()
        steps, self.rows = len(self.rows), []
        return {"steps": steps, "done": self.done,
                "n_agents": n, "max_episode_steps": int(env._max_episode_steps), "success_rate": arrivals,
                "normalized_reward": normalized}
