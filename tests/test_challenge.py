"""Challenge rules as configuration: phases, limits, offsets, stop rules, the gate, exports."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from core.challenge import ChallengeError, load_challenge, parse_challenge
from scoring.aggregate import combine
from scoring.episode import capped_normalized_return
from tests.conftest import slow_agent
from tests.test_episode import direct_normalized_return
from tests.test_run import DO_NOTHING, flateval

# ------------------------------------------------------------------------------------ fixtures


def run_json(tmp_path: Path, *args: str, timeout: float = 240) -> tuple[dict, float]:
    out = tmp_path / "results.json"
    started = time.monotonic()
    done = flateval("run", *args, "--output", str(out), timeout=timeout)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), elapsed


# ------------------------------------------------------------------------------------ the file


def test_bundled_neurips2020_has_the_seed_rules():
    challenge = load_challenge()
    assert challenge.name == "neurips2020" and challenge.default_phase == "round1"
    debug, round1, round2 = (challenge.phases[p] for p in ("debug", "round1", "round2"))
    assert debug.episodes == 28 and debug.time_limits.overall_s == 48 * 60
    assert round1.time_limits.planning_s == 300 and round1.time_limits.step_s == 5
    assert round1.time_limits.overall_s == 8 * 3600
    assert round1.scoring.offset == 0.0 and round2.scoring.offset == 1.0
    assert round2.stop_rules.completion_gate == 0.25 and round1.stop_rules.completion_gate is None
    assert round1.stop_rules.max_consecutive_timeouts == 10
    assert round1.agent_resources.cpu == 4 and round1.agent_resources.memory == "15Gi"


@pytest.mark.parametrize("data,message", [
    ({"name": "x", "phases": {"a": {"time_limits": {"planing_s": 3}}}},
     "phases.a.time_limits.planing_s: unknown key (known: planning_s, step_s, overall_s, time_bank_s, episode_s)"),
    ({"name": "x", "phases": {"a": {"scoring": {"offset": "one"}}}},
     "phases.a.scoring.offset: expected a number, got 'one'"),
    ({"name": "x", "phases": {"a": {"time_limits": {"step_s": -1}}}},
     "phases.a.time_limits.step_s: must be greater than 0, got -1"),
    ({"name": "x", "phases": {"a": {"scoring": {"aggregation": "median"}}}},
     "phases.a.scoring.aggregation: expected one of mean, sum, mean_of_test_means, fab, got 'median'"),
    ({"name": "x", "phases": {"a": {"stop_rules": {"completion_gate": 2}}}},
     "phases.a.stop_rules.completion_gate: must be at most 1.0, got 2"),
    ({"name": "x", "phases": {"a": {"scoring": {"rewards": "NoSuchRewards"}}}},
     "phases.a.scoring.rewards: flatland.envs.rewards has no class 'NoSuchRewards'"),
    ({"name": "x", "phases": {"a": {"observation_builders": ["tree", "magic"]}}},
     "phases.a.observation_builders[1]: expected one of none, tree, global, got 'magic'"),
    ({"name": "x", "phases": {"a": {}}, "default_phase": "b"}, "default_phase: 'b' is not one of the phases (a)"),
    ({"phases": {"a": {}}}, "name: required"),
    ({"name": "x", "phase": {}}, "phase: unknown key"),
])
def test_bad_challenge_names_the_bad_key(data, message):
    with pytest.raises(ChallengeError) as caught:
        parse_challenge(data, "c.yaml")
    assert str(caught.value).startswith(f"challenge c.yaml: {message}")
    assert "\n" not in str(caught.value)


def test_bad_challenge_file_is_one_line_on_the_command_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nphases:\n  round1:\n    time_limits: {step_s: fast}\n")
    done = flateval("run", "--agent", DO_NOTHING, "--challenge", str(bad))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"flateval: challenge {bad}: phases.round1.time_limits.step_s: expected a number, got 'fast'"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    done = flateval("run", "--agent", DO_NOTHING, "--challenge", str(broken))
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1 and "not valid YAML" in done.stderr
    done = flateval("run", "--agent", DO_NOTHING, "--phase", "round9")
    assert done.returncode != 0 and "no phase 'round9'" in done.stderr


def test_phases_inherit_defaults():
    challenge = parse_challenge({"name": "x", "defaults": {"time_limits": {"step_s": 2}},
                                 "phases": {"a": {}, "b": {"time_limits": {"step_s": 3}}}})
    assert challenge.phases["a"].time_limits.step_s == 2 and challenge.phases["b"].time_limits.step_s == 3
    assert challenge.phases["a"].time_limits.planning_s == 300


# ------------------------------------------------------------------------------------ scoring logic


def test_aggregations():
    values, tests = [-0.2, -0.4, -0.9], [0, 0, 1]
    assert combine(values, tests, "mean") == pytest.approx(-0.5)
    assert combine(values, tests, "sum") == pytest.approx(-1.5)
    assert combine(values, tests, "mean_of_test_means") == pytest.approx((-0.3 - 0.9) / 2)
    assert combine([], [], "mean") is None


def test_flatland_normalization_caps_each_agent():
    # two agents, 10 steps: one lost 25 (capped at -10), one lost 4 -> (-10 - 4) / 20
    assert capped_normalized_return([-25.0, -4.0], 10) == pytest.approx(-0.7)
    assert capped_normalized_return([-25.0, -4.0], 10, offset=1.0) == pytest.approx(0.3)


# ------------------------------------------------------------------------------------ phases, end to end


def test_debug_phase_evaluates_exactly_28_episodes(thirty_env_set, tmp_path):
    document, _ = run_json(tmp_path, "--agent", DO_NOTHING, "--test-set", str(thirty_env_set), "--workers", "2",
                           "--phase", "debug")
    assert document["status"] == "finished"
    assert len(document["episodes"]) == 28 and document["n_episodes"] == 28
    assert document["episodes"][-1]["env_file"] == "Test_9/Level_0.pkl"
    assert document["phase"] == "debug" and document["settings"]["overall_s"] == 2880


def test_round2_adds_exactly_one(small_test_set, tmp_path):
    bare = tmp_path / "no_gate.yaml"
    bare.write_text("name: r2\nphases:\n  round2:\n    scoring: {offset: 1.0}\n")
    document, _ = run_json(tmp_path, "--agent", DO_NOTHING, "--test-set", str(small_test_set), "--workers", "2",
                           "--challenge", str(bare), "--phase", "round2")
    for episode in document["episodes"]:
        expected, _, _ = direct_normalized_return(small_test_set / episode["env_file"])
        assert episode["normalized_return"] == pytest.approx(expected + 1.0, abs=1e-9)
    assert 0.0 <= document["score"]["mean_normalized_return"] <= 1.0


def test_round2_gate_stops_after_a_weak_test(thirty_env_set, tmp_path):
    # The do-nothing agent brings no train home: Test_0's mean completion 0 < 0.25 stops the run.
    document, _ = run_json(tmp_path, "--agent", DO_NOTHING, "--test-set", str(thirty_env_set), "--workers", "2",
                           "--phase", "round2")
    assert document["status"] == "finished"
    assert [e["env_file"] for e in document["episodes"]] == [f"Test_0/Level_{i}.pkl" for i in range(3)]
    assert "completion gate" in document["stopped_by"]
    assert document["score"]["mean_normalized_return"] is not None


def test_gate_that_passes_releases_every_test_in_order(thirty_env_set, tmp_path):
    open_gate = tmp_path / "open.yaml"
    open_gate.write_text("name: g\nphases:\n  p:\n    stop_rules: {completion_gate: 0.0}\n")
    document, _ = run_json(tmp_path, "--agent", DO_NOTHING, "--test-set", str(thirty_env_set), "--workers", "2",
                           "--challenge", str(open_gate))
    assert document["status"] == "finished" and len(document["episodes"]) == 30 and not document["stopped_by"]


def test_overall_timeout_fails_the_submission_promptly(thirty_env_set, tmp_path):
    agent, _ = slow_agent(tmp_path, delay=0.05)
    document, elapsed = run_json(tmp_path, "--agent", agent, "--test-set",
                                 str(thirty_env_set), "--workers", "2", "--overall-timeout", "8")
    assert document["status"] == "failed"
    assert document["score"]["mean_normalized_return"] is None
    assert "overall time limit" in document["error"]
    assert elapsed < 30


HANG_IN_PLANNING = """
import time
from agent_bridge import serve
class Hang:
    def reset(self, info):
        time.sleep(3600)
    def act(self, obs, info):
        return {}
serve(Hang())
"""


def test_ten_consecutive_timeouts_end_the_submission(thirty_env_set, tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(HANG_IN_PLANNING)
    document, _ = run_json(tmp_path, "--agent", f"{sys.executable} {script}", "--test-set", str(thirty_env_set),
                           "--workers", "1", "--planning-timeout", "0.2")
    assert document["status"] == "failed"
    assert document["error"].startswith("10 consecutive timeouts")
    assert [e["outcome"] for e in document["episodes"]] == ["timeout"] * 10
    assert all(e["normalized_return"] == -1.0 for e in document["episodes"])


# ------------------------------------------------------------------------------------ exports


def test_exports_parse(small_test_set, tmp_path):
    import pandas

    document, _ = run_json(tmp_path, "--agent", DO_NOTHING, "--test-set", str(small_test_set), "--workers", "1")
    results = tmp_path / "results.json"
    done = flateval("export", str(results), "--format", "csv", "--output", str(tmp_path / "r.csv"))
    assert done.returncode == 0, done.stderr
    frame = pandas.read_csv(tmp_path / "r.csv")
    for column in ("test_id", "env_id", "reward", "normalized_reward", "percentage_complete", "steps",
                   "simulation_time"):
        assert column in frame.columns
    assert len(frame) == 4 and list(frame["test_id"]) == ["Test_0", "Test_0", "Test_1", "Test_1"]
    assert frame["normalized_reward"].tolist() == pytest.approx([e["normalized_return"] for e in document["episodes"]])

    done = flateval("export", str(results), "--format", "evalai")
    assert done.returncode == 0, done.stderr
    evalai = json.loads(done.stdout)
    assert isinstance(evalai, list) and len(evalai) == 1
    entry = evalai[0]
    assert set(entry) == {"split", "show_to_participant", "accuracies"} and entry["show_to_participant"] is True
    assert set(entry["accuracies"]) == {"mean_normalized_return", "percentage_complete"}
    assert all(isinstance(v, float) for v in entry["accuracies"].values())
    assert entry["accuracies"]["mean_normalized_return"] == pytest.approx(document["score"]["mean_normalized_return"])

    # the agent's own output is kept with the submission
    assert any("serving on" in tail for tail in document["agent_logs"].values())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    done = flateval("export", str(bad), "--format", "csv")
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1


def test_time_bank_is_a_challenge_key_off_in_neurips2020():
    from broker.plan import make_plan

    assert load_challenge("neurips2020").phase("round1").time_limits.time_bank_s is None
    rules = parse_challenge({"name": "kaggle-like", "defaults": {"time_limits": {"step_s": 1, "time_bank_s": 60}},
                             "phases": {"main": {}}})
    phase = rules.phase(None)
    assert phase.time_limits.time_bank_s == 60.0
    assert make_plan([], phase).template.time_bank_s == 60.0
    with pytest.raises(ChallengeError, match="time_limits.time_bank_s: must be greater than 0, got -1"):
        parse_challenge({"name": "x", "phases": {"main": {"time_limits": {"time_bank_s": -1}}}})
