"""What recording an episode costs on the per-step path, against the env step it records.

For each env shape (malfunctions on), one episode is stepped twice from the same reset with the same
random actions, through flateval's Flatland adapter (`FlatlandEnv.step`: flatland's step plus the
wire form of its info, what the episode loop times as the env step):

* env step     - the adapter's step alone, median per step;
* recorder     - `RecordingObserver.env_stepped` (the hook the loop calls, with the recorder behind
                 it), median per step: the per-step cost of recording, which must stay under 5 %;
* flatland collect - for comparison, calling flatland's three collect calls for every agent per
                 step instead (what flatland's PolicyRunner does), median per step;
* at the end   - `episode_ended`: the TSVs written through flatland's `Trajectory.persist`, the
                 manifest and the atomic rename (once per episode, after the last step).

    python benchmarks/recording_cost.py [--episodes-steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from core.episode_spec import EpisodeSpec  # noqa: E402
from env_worker.flatland_env import FlatlandEnv, warm_up  # noqa: E402
from env_worker.flatland_test_set import TestConfig, generate_test_set  # noqa: E402
from env_worker.recording import RecordingObserver  # noqa: E402
from scoring.episode import EpisodeResult  # noqa: E402

SHAPES = {
    "10 agents, 30x30": TestConfig(10, 30, 30, 2, malfunction_interval=50, levels=1),
    "50 agents, 20x35 (NeurIPS 2020 Test_3)": TestConfig(50, 20, 35, 3, malfunction_interval=50, levels=1),
}
SEED = 1001
LIMIT_PERCENT = 5.0


def _actions(n_agents: int, steps: int) -> list[dict[int, int]]:
    rng = np.random.default_rng(0)
    return [{h: int(a) for h, a in enumerate(rng.integers(0, 5, n_agents))} for _ in range(steps)]


def _fresh(path: Path) -> FlatlandEnv:
    env = FlatlandEnv(path, SEED)
    env.use_observation(None)
    env.reset()
    return env


def measure(path: Path, steps: int, out: Path) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = _fresh(path)
        plan = _actions(probe.n_agents, steps)

        env = _fresh(path)  # 1: the env step alone
        alone = []
        for actions in plan:
            started = time.perf_counter()
            outcome = env.step(actions)
            alone.append(time.perf_counter() - started)
            if outcome.done:
                break

        env = FlatlandEnv(path, SEED)  # 2: the same steps with the recording observer attached
        env.use_observation(None)
        spec = EpisodeSpec(env_path=str(path), env_file="Test_0/Level_0.pkl", submission_id="bench")
        observer = RecordingObserver(str(out))
        observer.episode_started(spec)
        env.reset()
        observer.env_reset(env)
        hook = []
        for actions in plan:
            outcome = env.step(actions)
            started = time.perf_counter()
            observer.env_stepped(0.0, actions, outcome)
            hook.append(time.perf_counter() - started)
            if outcome.done:
                break
        totals = env.score_inputs()
        env.release()
        result = EpisodeResult(env_file=spec.env_file, test=0, level=0, outcome="completed", normalized_return=0.0,
                               percentage_complete=0.0, steps=len(hook), cumulative_reward=totals.cumulative_reward,
                               duration_s=0.0)
        started = time.perf_counter()
        observer.episode_ended(result)
        at_end = time.perf_counter() - started

        env = _fresh(path)  # 3: flatland's collect calls per step, for comparison
        from flatland.envs.rail_env_action import RailEnvActions
        from flatland.trajectories.trajectories import Trajectory

        trajectory = Trajectory.create_empty(data_dir=out / "collect", env=env.env, ep_id="collect")
        collect = []
        for t, actions in enumerate(plan):
            outcome = env.step(actions)
            started = time.perf_counter()
            info = env.last_info
            for h in range(env.n_agents):
                trajectory.action_collect(env_time=t, agent_id=h, action=RailEnvActions.from_value(actions.get(h, 0)))
                trajectory.position_collect(env_time=t + 1, agent_id=h, position=env.env.agents[h].current_configuration)
                trajectory.rewards_dones_infos_collect(env_time=t + 1, agent_id=h, reward=outcome.rewards[h],
                                                       info={k: v[h] for k, v in info.items()}, done=outcome.dones[h])
            collect.append(time.perf_counter() - started)
            if outcome.done:
                break
    assert result.trajectory, "the episode was not recorded"
    return {"agents": probe.n_agents, "steps": len(hook), "env_us": statistics.median(alone) * 1e6,
            "hook_us": statistics.median(hook) * 1e6, "collect_us": statistics.median(collect) * 1e6,
            "end_ms": at_end * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="at most this many steps per episode")
    args = parser.parse_args()
    warm_up()
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="flateval-recording-cost-") as tmp:
        print(f"{'env':42} {'steps':>5} {'env step':>10} {'recorder':>10} {'share':>7} {'flatland collect':>17} "
              f"{'at the end':>11}")
        for name, shape in SHAPES.items():
            folder = Path(tmp) / name.split(",")[0].replace(" ", "_")
            [path] = generate_test_set(folder / "set", [shape], seed=7)
            row = measure(path, args.steps, folder / "rec")
            share = 100 * row["hook_us"] / row["env_us"]
            worst = max(worst, share)
            print(f"{name:42} {row['steps']:5d} {row['env_us']:8.1f} us {row['hook_us']:8.2f} us {share:6.2f}% "
                  f"{row['collect_us']:9.1f} us ({100 * row['collect_us'] / row['env_us']:4.1f}%) "
                  f"{row['end_ms']:8.1f} ms")
    print(f"recording's per-step cost: at most {worst:.2f}% of the env step (limit {LIMIT_PERCENT:g}%)")
    return 0 if worst < LIMIT_PERCENT else 1


if __name__ == "__main__":
    sys.exit(main())
