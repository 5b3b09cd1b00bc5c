"""Gymnasium envs through the same pipeline: issue 9's check, bad actions, deadlines, CLI errors.

Real parts only: real gymnasium envs, real agent processes over ZeroMQ, real `flateval run`s.
Expected returns come from stepping gymnasium directly with the same seeds and actions.
"""

from __future__ import annotations

import json
import re
import runpy
import sys
import time
from pathlib import Path
from statistics import fmean
from typing import Any, Callable

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from agent_bridge import protocol as wire
from broker.plan import PlanError, plan_submission
from flateval.planning import plan_run
from broker.submit import episode_specs
from env_worker.agent_link import AgentLink
from env_worker.env_adapter import EnvLoadError
from env_worker.episode import run_episode
from env_worker.gymnasium_env import INSTALL_HINT, GymnasiumEnv, describe_space
from core.challenge import ChallengeError, parse_challenge
from core.episode_spec import EpisodeSpec
from scoring.export import to_csv, to_evalai
from tests.test_run import DO_NOTHING, flateval, leftover_processes

REPO = Path(__file__).resolve().parent.parent
CARTPOLE_AGENT = REPO / "examples" / "cartpole" / "agent.py"
ALWAYS_LEFT = f"{sys.executable} {CARTPOLE_AGENT} --always-left"


def gymnasium_return(env_id: str, seed: int, policy: Callable[[Any], Any]) -> tuple[float, int]:
    """The episode's return and length, stepping gymnasium directly."""
    env = gymnasium.make(env_id)
    obs, _ = env.reset(seed=seed)
    total, steps = 0.0, 0
    while True:
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        total += float(reward)
        steps += 1
        if terminated or truncated:
            env.close()
            return total, steps


def gym_specs(env_id: str = "CartPole-v1", episodes: int = 1, seed: int = 0, **limits: float) -> list[EpisodeSpec]:
    """Episode specs exactly as `flateval run --env gymnasium:ENV_ID` plans them."""
    return episode_specs("t", plan_submission(env=f"gymnasium:{env_id}", episodes=episodes, seed=seed, **limits))


# ------------------------------------------------------------------------------------ issue 9's check


def test_issue_check_always_left_returns_equal_gymnasiums_own(tmp_path):
    out = tmp_path / "results.json"
    done = flateval("run", "--env", "gymnasium:CartPole-v1", "--episodes", "10", "--seed", "7", "--workers", "2",
                    "--agent", ALWAYS_LEFT, "--output", str(out))
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert document["status"] == "finished"
    episodes = document["episodes"]
    assert [e["index"] for e in episodes] == list(range(10))
    assert [e["seed"] for e in episodes] == list(range(7, 17))
    expected = [gymnasium_return("CartPole-v1", seed, lambda obs: 0) for seed in range(7, 17)]
    print("always-left returns, seeds 7..16:", [e["return"] for e in episodes])
    for episode, (total, steps) in zip(episodes, expected):
        assert episode["outcome"] == "completed", episode["error"]
        assert episode["return"] == total and episode["steps"] == steps
        assert episode["normalized_return"] == total  # no normalization: the score is the return
        assert episode["env"] == "gymnasium:CartPole-v1" and episode["percentage_complete"] is None
    score = document["score"]
    assert score["mean_normalized_return"] == pytest.approx(fmean(t for t, _ in expected))
    assert score["mean_return"] == score["mean_normalized_return"] and score["mean_percentage_complete"] is None
    assert document["settings"]["env"] == "gymnasium:CartPole-v1" and document["settings"]["seed"] == 7

    rows = to_csv(document).splitlines()
    assert len(rows) == 11 and rows[1].startswith(",,") and "CartPole-v1/seed_7" in rows[1]
    assert to_evalai(document)[0]["accuracies"] == {"mean_normalized_return": score["mean_normalized_return"]}


def test_cartpole_example_challenge_scores_the_starter_agent(tmp_path):
    """The example challenge (reference return 500) with its starter agent, against gymnasium."""
    policy = runpy.run_path(str(CARTPOLE_AGENT))["BalancePole"]()
    out = tmp_path / "results.json"
    done = flateval("run", "--challenge", str(REPO / "examples" / "cartpole" / "challenge.yaml"), "--episodes", "3",
                    "--workers", "1", "--agent", f"{sys.executable} {CARTPOLE_AGENT}", "--output", str(out))
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert document["challenge"] == "cartpole" and document["phase"] == "dev"
    for episode in document["episodes"]:
        total, steps = gymnasium_return("CartPole-v1", episode["seed"], lambda obs: policy.act(obs, {}))
        assert (episode["return"], episode["steps"]) == (total, steps)
        assert episode["normalized_return"] == pytest.approx(total / 500)
    assert [e["seed"] for e in document["episodes"]] == [0, 1, 2]


def test_episode_command_plays_one_gymnasium_episode(start_agent):
    agent = start_agent(script=CARTPOLE_AGENT.read_text())
    policy = runpy.run_path(str(CARTPOLE_AGENT))["BalancePole"]()
    done = flateval("episode", "--env", "gymnasium:CartPole-v1", "--seed", "3", "--agent-endpoint", agent.endpoint,
                    "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    total, steps = gymnasium_return("CartPole-v1", 3, lambda obs: policy.act(obs, {}))
    assert (record["env_file"], record["seed"], record["return"], record["steps"]) == ("CartPole-v1/seed_3", 3, total,
                                                                                         steps)


# ------------------------------------------------------------------------------------ wire and actions

BOX_AGENT = """
import numpy as np
from agent_bridge import serve
class Torque:
    def reset(self, info):
        space = info["env"]["observation_space"]
        assert info["env"]["kind"] == "gymnasium" and space["type"] == "Box", info["env"]
        assert isinstance(space["low"], np.ndarray) and space["low"].dtype == np.float32, space
        self.episode = info["seed"]
    def act(self, obs, info):
        assert isinstance(obs, np.ndarray) and obs.dtype == np.float32 and obs.shape == (3,), repr(obs)
        if self.episode == 1 and info["step"] == 4:
            return np.array([[0.5]], dtype=np.float32)  # wrong shape
        return np.array([0.5], dtype=np.float32)
serve(Torque())
"""


def test_box_actions_and_array_observations_cross_as_arrays(start_agent):
    """Pendulum: float32 array observations reach the policy as arrays; its numpy action is checked
    against the Box and stepped; a wrong-shape action costs only its episode."""
    link = AgentLink(start_agent(script=BOX_AGENT).endpoint)
    good, wrong = gym_specs("Pendulum-v1", episodes=2)
    result = run_episode(good, link)
    total, steps = gymnasium_return("Pendulum-v1", 0, lambda obs: np.array([0.5], dtype=np.float32))
    assert result.outcome == "completed", result.error
    assert (result.cumulative_reward, result.steps, result.max_episode_steps) == (total, steps, 200)
    result = run_episode(wrong, link)
    assert result.outcome == "agent_error"
    assert result.error == "action must be an array of numbers of shape [1], got shape [1, 1] (step 4)"
    link.close()


BAD_ACTION_AGENT = """
from agent_bridge import serve
BAD = {bad!r}  # by episode seed: what the agent answers at step 2
class Bad:
    def reset(self, info):
        self.bad = BAD.get(info["seed"], 0)
    def act(self, obs, info):
        return self.bad if info["step"] == 2 else 0
serve(Bad())
"""

BAD_ACTIONS = [(5, "action 5 is out of range 0..1"), (0.5, "action must be an integer 0..1, got float"),
               (True, "action must be an integer 0..1, got bool"), ([0], "action must be an integer 0..1, got list"),
               ("left", "action must be an integer 0..1, got str"),
               (None, "'actions' must hold the action (a Discrete action), got nothing")]


def test_invalid_actions_are_agent_errors_and_the_next_episode_scores(start_agent, fault_report):
    bad = {seed: action for seed, (action, _) in enumerate(BAD_ACTIONS)}
    agent = start_agent(script=BAD_ACTION_AGENT.format(bad=bad))
    link = AgentLink(agent.endpoint)
    specs = gym_specs(episodes=len(BAD_ACTIONS) + 1)
    for spec, (action, message) in zip(specs, BAD_ACTIONS):
        result = run_episode(spec, link)
        assert (result.outcome, result.error) == ("agent_error", f"{message} (step 2)")
        assert result.normalized_return == 2.0  # a failed gymnasium episode scores the return it reached
        fault_report(f"gymnasium agent: action {action!r} for Discrete(2)", f"episode `agent_error`: {result.error}")
    last = run_episode(specs[-1], link)  # same agent, same link
    assert last.outcome == "completed", last.error
    assert last.cumulative_reward == gymnasium_return("CartPole-v1", specs[-1].seed, lambda obs: 0)[0]
    assert agent.alive()
    link.close()


BAD_ONCE_AGENT = """
import os
from agent_bridge import serve
MARK = {marker!r}
class BadOnce:
    def reset(self, info):
        self.bad = not os.path.exists(MARK)
        open(MARK, "w").close()
    def act(self, obs, info):
        return 7 if self.bad else 0
serve(BadOnce())
"""


def test_worker_survives_an_invalid_action(tmp_path):
    script = tmp_path / "bad_once.py"
    script.write_text(BAD_ONCE_AGENT.format(marker=str(tmp_path / "was_bad")))
    out = tmp_path / "results.json"
    done = flateval("run", "--env", "gymnasium:CartPole-v1", "--episodes", "3", "--workers", "1",
                    "--agent", f"{sys.executable} {script}", "--output", str(out))
    assert done.returncode == 0, done.stderr
    episodes = json.loads(out.read_text())["episodes"]
    assert [e["outcome"] for e in episodes] == ["agent_error", "completed", "completed"]
    assert episodes[0]["error"] == "action 7 is out of range 0..1 (step 0)"
    assert [e["return"] for e in episodes[1:]] == [gymnasium_return("CartPole-v1", s, lambda o: 0)[0] for s in (1, 2)]


# ------------------------------------------------------------------------------------ deadlines

SLOW_AT_STEP_3 = """
import time
from agent_bridge import serve
class Slow:
    def reset(self, info):
        pass
    def act(self, obs, info):
        if info["step"] == 3:
            time.sleep(3)
        return 0
serve(Slow())
"""


@pytest.mark.parametrize("failed_return,score", [(None, 3.0), (-10.0, -10.0)])
def test_missed_step_deadline_is_a_timeout(failed_return, score, start_agent):
    link = AgentLink(start_agent(script=SLOW_AT_STEP_3).endpoint)
    spec = gym_specs(step_timeout_s=0.2)[0]
    if failed_return is not None:
        spec = EpisodeSpec.from_dict({**spec.as_dict(), "failed_return": failed_return})
    started = time.perf_counter()
    result = run_episode(spec, link)
    elapsed = time.perf_counter() - started
    link.close()
    assert result.outcome == "timeout" and "'step'" in result.error and result.error.endswith("(step 3)")
    assert result.cumulative_reward == 3.0 and result.normalized_return == score
    assert elapsed < 1.5  # cut at the 0.2 s deadline, not waited out (the agent sleeps 3 s)


# ------------------------------------------------------------------------------------ errors: one line


@pytest.mark.parametrize("args,message", [
    (["--env", "gym:CartPole-v1"], "--env: expected gymnasium:ENV_ID (e.g. gymnasium:CartPole-v1), got 'gym:CartPole-v1'"),
    (["--env", "gymnasium:NoSuchEnv-v0"], "cannot make gymnasium env 'NoSuchEnv-v0': Environment `NoSuchEnv` doesn't exist."),
    (["--episodes", "3"], "--episodes is for gymnasium runs (--env gymnasium:ENV_ID): a test set's episodes are its env files"),
    (["--env", "gymnasium:CartPole-v1", "--test-set", "."], "--env and --test-set exclude each other"),
    (["--env", "gymnasium:CartPole-v1", "--challenge", "neurips2020"], "--env gymnasium:CartPole-v1: challenge neurips2020 is a flatland challenge"),
])
def test_cli_errors_are_one_line(args, message):
    started, before = time.monotonic(), leftover_processes("flateval-run-")
    done = flateval("run", "--agent", DO_NOTHING, *args)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [done.stderr.strip()] and "Traceback" not in done.stderr  # no blank line either
    assert done.stderr.startswith(f"flateval: {message}")
    assert time.monotonic() - started < 20  # before any worker or agent started
    assert leftover_processes("flateval-run-", before) == []


def test_gymnasium_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # as if the extra were not installed
    with pytest.raises(EnvLoadError, match=f"^{re.escape(INSTALL_HINT)}$"):
        GymnasiumEnv("CartPole-v1", 0)
    with pytest.raises(PlanError, match=f"^{re.escape(INSTALL_HINT)}$"):
        plan_run(env="gymnasium:CartPole-v1")


@pytest.mark.parametrize("data,message", [
    ({"environment": "gymnasium", "phases": {"a": {"episodes": 3}}},
     "env_id: a gymnasium challenge needs the id of its env (e.g. CartPole-v1), got None"),
    ({"environment": "gymnasium", "env_id": "CartPole-v1", "phases": {"a": {}}},
     "phases.a.episodes: a gymnasium challenge needs a number of episodes (here or in defaults)"),
    ({"environment": "gymnasium", "env_id": "CartPole-v1", "test_set": "t", "phases": {"a": {"episodes": 3}}},
     "test_set: only for environment flatland (this challenge's is gymnasium)"),
    ({"environment": "gymnasium", "env_id": "CartPole-v1", "phases": {"a": {"episodes": 3, "scoring": {"normalization": "seed"}}}},
     "phases.a.scoring.normalization: expected one of return, got 'seed'"),
    ({"environment": "gymnasium", "env_id": "CartPole-v1", "phases": {"a": {"episodes": 3, "stop_rules": {"completion_gate": 0.5}}}},
     "phases.a.stop_rules.completion_gate: only for environment flatland"),
    ({"environment": "gymnasium", "env_id": "CartPole-v1", "seed": -1, "phases": {"a": {"episodes": 3}}},
     "seed: must be at least 0, got -1"),
    ({"environment": "gymnasium", "env_id": "CartPole-v1", "defaults": {"scoring": {"reference_return": 0}},
      "phases": {"a": {"episodes": 3}}}, "defaults.scoring.reference_return: must not be 0"),
    ({"phases": {"a": {"scoring": {"reference_return": 500}}}},
     "phases.a.scoring.reference_return: only for environment gymnasium (this challenge's is flatland)"),
])
def test_bad_gymnasium_challenge_names_the_bad_key(data, message):
    with pytest.raises(ChallengeError) as caught:
        parse_challenge({"name": "x", **data}, "c.yaml")
    assert str(caught.value).startswith(f"challenge c.yaml: {message}")


# ------------------------------------------------------------------------------------ action validation

BOX = spaces.Box(-2.0, 2.0, (2,), np.float32)
VALID = [
    (spaces.Discrete(2), 1, 1),
    (spaces.Discrete(3, start=-1), -1, -1),
    (BOX, [0.5, -2], np.array([0.5, -2.0], dtype=np.float32)),
    (spaces.Box(0, 255, (2,), np.uint8), [0, 255], np.array([0, 255], dtype=np.uint8)),
    (spaces.MultiDiscrete([3, 4]), [2, 3], np.array([2, 3])),
    (spaces.MultiBinary(3), [1, 0, 1], np.array([1, 0, 1], dtype=np.int8)),
    (spaces.Tuple((spaces.Discrete(2), BOX)), [1, [0.0, 1.0]], (1, np.array([0.0, 1.0], dtype=np.float32))),
    (spaces.Dict({"a": spaces.Discrete(2), "b": BOX}), {"a": 0, "b": [1, 1]},
     {"a": 0, "b": np.array([1, 1], dtype=np.float32)}),
]
INVALID = [
    (spaces.Discrete(2), 2, "action 2 is out of range 0..1"),
    (spaces.Discrete(2), 1.0, "action must be an integer 0..1, got float"),
    (BOX, [0.5], "action must be an array of numbers of shape [2], got shape [1]"),
    (BOX, [0.5, 3.0], "action[1] = 3.0 is outside the Box bounds [-2.0, 2.0]"),
    (BOX, [0.5, float("nan")], "action[1] = nan is outside the Box bounds [-2.0, 2.0]"),
    (BOX, ["a", "b"], "action must be an array of numbers of shape [2], got strings"),
    (BOX, [True, False], "action must be an array of numbers of shape [2], got booleans"),
    (BOX, [0.5, None], "action must be an array of numbers of shape [2], got an array of mixed or ragged values"),
    (spaces.Box(0, 255, (2,), np.uint8), [0.5, 1], "action must hold integers (Box of uint8), got floats"),
    (spaces.MultiDiscrete([3, 4]), [3, 0], "action[0] = 3 is outside the MultiDiscrete bounds [0, 2]"),
    (spaces.MultiBinary(3), [1, 2, 0], "action[1] = 2 is outside the MultiBinary bounds [0, 1]"),
    (spaces.Tuple((spaces.Discrete(2), BOX)), [1], "action must be an array of 2 actions, got an array of 1"),
    (spaces.Dict({"a": spaces.Discrete(2)}), {"a": 0, "z": 1}, "action must be a map with the keys a, got ['a', 'z']"),
    (spaces.Dict({"a": spaces.Discrete(2)}), {"a": 3}, "action['a'] 3 is out of range 0..1"),
]


@pytest.mark.parametrize("space,action,expected", VALID, ids=[f"{type(s).__name__}-ok" for s, _, _ in VALID])
def test_valid_actions_become_what_the_space_contains(space, action, expected):
    checked = wire.parse_action({"type": "act", "actions": action}, describe_space(space))
    assert space.contains(checked)
    if isinstance(expected, np.ndarray):
        assert checked.dtype == expected.dtype and np.array_equal(checked, expected)
    else:
        assert repr(checked) == repr(expected)


@pytest.mark.parametrize("space,action,message", INVALID, ids=[f"{type(s).__name__}-{m[:24]}" for s, _, m in INVALID])
def test_invalid_actions_are_refused_with_one_line(space, action, message):
    with pytest.raises(wire.ProtocolError) as caught:
        wire.parse_action({"type": "act", "actions": action}, describe_space(space))
    assert str(caught.value) == message


class TextActionEnv(gymnasium.Env):
    """An env whose actions are strings: nothing flateval can validate."""

    observation_space = spaces.Discrete(1)
    action_space = spaces.Text(5)


def test_facts_describe_the_spaces_and_an_unsupported_action_space_is_refused():
    env = GymnasiumEnv("CartPole-v1", 0)
    facts = env.facts()
    env.release()
    assert {k: v for k, v in facts.items() if k != "observation_space"} == {
        "kind": "gymnasium", "env_id": "CartPole-v1", "n_agents": 1, "max_episode_steps": 500,
        "action_space": {"type": "Discrete", "n": 2, "start": 0}}
    observation = facts["observation_space"]
    assert (observation["type"], observation["shape"], observation["dtype"]) == ("Box", [4], "float32")
    assert observation["high"][0] == np.float32(4.8) and observation["high"][1] == np.inf

    gymnasium.register("flateval-test/TextAction-v0", entry_point=TextActionEnv)
    try:
        with pytest.raises(EnvLoadError, match=r"action space Text is not supported \(supported: Discrete, Box"):
            GymnasiumEnv("flateval-test/TextAction-v0", 0)
    finally:
        gymnasium.registry.pop("flateval-test/TextAction-v0")
