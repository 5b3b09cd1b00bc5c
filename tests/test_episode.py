"""The episode runner against real agent processes over real ZeroMQ sockets: good, slow and hostile."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import pytest

from agent_bridge import protocol as wire
from env_worker.agent_process import AgentProcess
from env_worker.agent_link import AgentLink, AgentTimeout
from env_worker.episode import run_episode
from env_worker.observers import EpisodeObserver
from core.episode_spec import EpisodeSpec

FIRST_ENV = "Test_0/Level_0.pkl"


def direct_normalized_return(path: Path, seed: int = 1001) -> tuple[float, float, int]:
    """Step the env directly with empty action dicts, as flatland's evaluator would load and reset it."""
    from flatland.envs.persistence import RailEnvPersister
    from flatland.envs.step_utils.states import TrainState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env, _ = RailEnvPersister.load_new(str(path))
        env.reset(regenerate_rail=True, regenerate_schedule=True, random_seed=seed)
    total, steps = 0.0, 0
    while True:
        _, rewards, dones, _ = env.step({})
        total += sum(rewards.values())
        steps += 1
        if dones["__all__"]:
            break
    n = env.get_num_agents()
    done = sum(a.state == TrainState.DONE for a in env.agents) / n
    return total / (env._max_episode_steps * n), done, steps


def spec_for(test_set: Path, env_file: str = FIRST_ENV, **overrides) -> EpisodeSpec:
    test, level = (int(part.split("_")[1].split(".")[0]) for part in env_file.split("/"))
    return EpisodeSpec(env_path=str(test_set / env_file), env_file=env_file, test=test, level=level,
                       episode_id=f"t-{env_file}", **overrides)


def test_do_nothing_matches_direct_stepping(small_test_set, start_agent):
    agent = start_agent(module="agent_bridge.examples.do_nothing")
    link = AgentLink(agent.endpoint)
    for env_file in ("Test_0/Level_0.pkl", "Test_0/Level_1.pkl", "Test_1/Level_0.pkl", "Test_1/Level_1.pkl"):
        expected, done, steps = direct_normalized_return(small_test_set / env_file)
        result = run_episode(spec_for(small_test_set, env_file), link)
        assert result.outcome == "completed", result.error
        assert result.normalized_return == pytest.approx(expected, abs=1e-9)
        assert result.percentage_complete == pytest.approx(done, abs=1e-9)
        assert result.steps == steps
        assert (result.test, result.level, result.env_file) == (int(env_file[5]), int(env_file[-5]), env_file)
        assert result.agent_response["count"] == steps - 1
    link.close()


def test_offset_is_added(small_test_set, start_agent):
    agent = start_agent(module="agent_bridge.examples.do_nothing")
    expected, _, _ = direct_normalized_return(small_test_set / FIRST_ENV)
    result = run_episode(spec_for(small_test_set, score_offset=1.0), AgentLink(agent.endpoint))
    assert result.normalized_return == pytest.approx(expected + 1.0, abs=1e-9)


POLICY_AGENT = """
import os, sys, time
from agent_bridge import serve
MODE = {mode!r}
class Bad:
    def reset(self, info):
        self.n = info["env"]["n_agents"]
        if MODE == "hang_planning":
            time.sleep(3600)
    def act(self, obs, info):
        step = info["step"]
        if step < 3:
            return {{}}
        if MODE == "hang_step":
            time.sleep(3600)
        if MODE == "late":
            time.sleep(0.8)
            return {{}}
        if MODE == "exit":
            os._exit(3)
        if MODE == "raise":
            raise ValueError("boom at step 3")
        if MODE == "bad_action":
            return {{0: 9}}
        if MODE == "unknown_handle":
            return {{99: 1}}
        if MODE == "wrong_type":
            return {{0: "left"}}
        return {{}}
serve(Bad())
"""

RAW_AGENT = """
import os, pickle, zmq, msgpack
MODE = {mode!r}
ctx = zmq.Context()
sock = ctx.socket(zmq.REP)
sock.bind(os.environ["FLATEVAL_AGENT_BIND"])
class Evil:
    def __reduce__(self):
        return (open, ({marker!r}, "w"))
while True:
    msg = msgpack.unpackb(sock.recv(), raw=False, strict_map_key=False, ext_hook=lambda c, d: None)
    kind = msg["type"]
    if kind == "hello":
        sock.send(msgpack.packb({{"type": "hello", "protocol": 1, "name": "raw", "observation": None}}))
    elif kind == "step" and msg["step"] >= 3:
        if MODE == "garbage":
            sock.send(b"\\xc1\\xc1\\xff not msgpack")
        elif MODE == "huge":
            sock.send(b"\\x00" * (50 * 1024 * 1024))
        elif MODE == "pickle":
            sock.send(pickle.dumps(Evil()))
        elif MODE == "pickle_in_ext":
            sock.send(msgpack.packb({{"type": "act", "actions": msgpack.ExtType(42, pickle.dumps(Evil()))}}))
        elif MODE == "wrong_type":
            sock.send(msgpack.packb({{"type": "ok"}}))
        elif MODE == "msgpack_numpy_pickle":  # msgpack-numpy's object-array map: unpickled by its decoder
            evil = {{b"nd": True, b"kind": b"O", b"type": "|O", b"shape": [1], b"data": pickle.dumps(Evil())}}
            sock.send(msgpack.packb({{"type": "act", "actions": evil}}, use_bin_type=True))
        elif MODE == "multipart":
            sock.send_multipart([msgpack.packb({{"type": "act", "actions": {{}}}}), b"more"])
        elif MODE == "exit_between_steps":
            sock.send(msgpack.packb({{"type": "act", "actions": {{}}}}))
            os._exit(0)
    elif kind in ("episode_start", "step"):
        sock.send(msgpack.packb({{"type": "act", "actions": {{}}}}))
    else:
        sock.send(msgpack.packb({{"type": "ok"}}))
"""

CASES = [
    # (agent source, mode, expected outcome, words in the error)
    ("policy", "hang_planning", "timeout", "episode_start"),
    ("policy", "hang_step", "timeout", "step 3"),
    ("policy", "late", "timeout", "step 3"),
    ("policy", "exit", "agent_error", "disconnected"),
    ("policy", "raise", "agent_error", "boom at step 3"),
    ("policy", "bad_action", "agent_error", "out of range"),
    ("policy", "unknown_handle", "agent_error", "unknown agent handle 99"),
    ("policy", "wrong_type", "agent_error", "must be an integer"),
    ("raw", "garbage", "agent_error", "not valid msgpack"),
    ("raw", "huge", "agent_error", "cap"),
    ("raw", "pickle", "agent_error", "reply"),
    ("raw", "pickle_in_ext", "agent_error", "ext type 42"),
    ("raw", "wrong_type", "agent_error", "expected a 'act' reply"),
    ("raw", "msgpack_numpy_pickle", "agent_error", "unknown agent handle"),
    ("raw", "multipart", "agent_error", "multipart"),
    ("raw", "exit_between_steps", "agent_error", "disconnected"),
]


@pytest.mark.parametrize("source,mode,outcome,words", CASES, ids=[c[1] for c in CASES])
def test_misbehaving_agent_costs_only_its_episode(source, mode, outcome, words, small_test_set, start_agent,
                                                  tmp_path, fault_report):
    marker = tmp_path / "pwned"
    script = (POLICY_AGENT if source == "policy" else RAW_AGENT).format(mode=mode, marker=str(marker))
    bad = start_agent(script=script)
    link = AgentLink(bad.endpoint)
    spec = spec_for(small_test_set, planning_timeout_s=0.5, step_timeout_s=0.5)

    started = time.perf_counter()
    result = run_episode(spec, link)
    assert result.outcome == outcome, result.error
    assert result.normalized_return == -1.0
    assert words in result.error
    assert "\n" not in result.error
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0  # cut at the deadline, not waited out
    if mode in ("exit", "exit_between_steps", "huge"):
        assert elapsed < 0.5  # noticed at once, before the 0.5 s deadline could fire
    fault_report(f"agent: {mode.replace('_', ' ')} (0.5 s deadlines)",
                 f"episode `{outcome}`, -1.0: {result.error}; the next episode scores normally", elapsed)
    assert not marker.exists()

    # The same worker (same link, same endpoint) then scores a good agent's episode correctly.
    bad.stop()
    good = AgentProcess(f"{sys.executable} -m agent_bridge.examples.do_nothing", tmp_path / "good.log",
                        bind=bad.bind, connect=bad.endpoint)
    try:
        good.start(30)
        expected, _, _ = direct_normalized_return(small_test_set / FIRST_ENV)
        result = run_episode(spec_for(small_test_set), link)
        assert result.outcome == "completed", result.error
        assert result.normalized_return == pytest.approx(expected, abs=1e-9)
    finally:
        good.stop()
        link.close()


HANG_AGENT = """
import os, time, zmq
sock = zmq.Context().socket(zmq.REP)
sock.bind(os.environ["FLATEVAL_AGENT_BIND"])
sock.recv()
time.sleep(3600)
"""


def test_hung_agent_cut_within_50ms_of_deadline(start_agent):
    agent = start_agent(script=HANG_AGENT, handshake=False)  # it never answers anything
    link = AgentLink(agent.endpoint)
    overshoots = []
    for _ in range(3):
        started = time.perf_counter()
        with pytest.raises(AgentTimeout):
            link.request({"type": wire.STEP, "step": 1}, 0.5)
        overshoots.append(time.perf_counter() - started - 0.5)
    link.close()
    assert all(0 <= over < 0.05 for over in overshoots), overshoots


RAISE_ONCE = """
from agent_bridge import serve
class RaiseOnce:
    observation = {"builder": "global"}
    episodes = 0
    def reset(self, info):
        self.episodes += 1
        self.n = info["env"]["n_agents"]
        self.shape = (info["env"]["height"], info["env"]["width"])
    def act(self, obs, info):
        if self.episodes == 1:
            raise RuntimeError("first episode fails")
        assert len(obs) == self.n, obs
        rail, agents, targets = obs[0]
        assert rail.shape[:2] == self.shape and agents.shape[:2] == self.shape, (rail.shape, self.shape)
        return {h: 2 for h in range(self.n) if info["action_required"][h]}
serve(RaiseOnce())
"""


def test_policy_exception_costs_one_episode_and_the_agent_keeps_serving(small_test_set, start_agent):
    agent = start_agent(script=RAISE_ONCE)
    link = AgentLink(agent.endpoint)
    first = run_episode(spec_for(small_test_set), link)
    assert first.outcome == "agent_error" and "RuntimeError: first episode fails" in first.error
    second = run_episode(spec_for(small_test_set), link)  # same agent process, global observations
    assert second.outcome == "completed", second.error
    assert second.observation == {"builder": "global"}
    assert agent.alive()
    link.close()


def test_observation_builder_not_allowed_is_an_agent_error(small_test_set, start_agent):
    agent = start_agent(script=RAISE_ONCE)
    result = run_episode(spec_for(small_test_set, observation_builders=("none", "tree")), AgentLink(agent.endpoint))
    assert result.outcome == "agent_error" and "'global' is not allowed" in result.error


SLOW_STEPS = """
import time
from agent_bridge import serve
class SlowSteps:
    def reset(self, info): pass
    def act(self, obs, info):
        step = info.get("step", 0)
        if step == {hang_at}:
            time.sleep(3600)
        if 1 <= step <= {slow_steps}:
            time.sleep({slow_s})
        return {{}}
serve(SlowSteps())
"""


@pytest.mark.parametrize("bank_s, outcome", [(0.8, "completed"), (0.5, "timeout")])
def test_time_bank_pays_for_slow_steps_until_it_is_spent(bank_s, outcome, small_test_set, start_agent):
    """Steps 1-3 take 0.3 s against a 0.1 s deadline: 0.2 s (and a little) each from the bank."""
    agent = start_agent(script=SLOW_STEPS.format(hang_at=-1, slow_steps=3, slow_s=0.3))
    link = AgentLink(agent.endpoint)
    result = run_episode(spec_for(small_test_set, step_timeout_s=0.1, time_bank_s=bank_s), link)
    link.close()
    assert result.outcome == outcome
    left = result.agent_response["time_bank_left_s"]
    if outcome == "completed":
        assert 0.0 < left < bank_s - 3 * 0.2
    else:  # the third slow step found under 0.1 s in the bank: cut at 0.1 s plus that
        assert result.steps == 3 and left < 0.1
        assert result.error.startswith("no reply to 'step' within 0.1") and "left in the time bank (step 3)" in result.error


def test_a_hang_with_a_time_bank_is_cut_at_the_deadline_plus_the_bank(small_test_set, start_agent):
    """To the millisecond, like every deadline: cut when the step deadline and the bank are spent."""
    class Clock(EpisodeObserver):
        replied = ended = 0.0

        def agent_replied(self, seconds: float, phase: str) -> None:
            self.replied = time.perf_counter()

        def episode_ended(self, result) -> None:
            self.ended = time.perf_counter()

    agent = start_agent(script=SLOW_STEPS.format(hang_at=2, slow_steps=0, slow_s=0))
    link = AgentLink(agent.endpoint)
    clock = Clock()
    result = run_episode(spec_for(small_test_set, step_timeout_s=0.1, time_bank_s=0.4), link, [clock])
    link.close()
    assert result.outcome == "timeout" and result.steps == 2
    assert result.error.startswith("no reply to 'step' within 0.5 s: the step deadline (0.1 s) plus the 0.400 s")
    waited = clock.ended - clock.replied  # from the last reply: the env step and the request, then the cut
    assert 0.5 <= waited < 0.55, waited
