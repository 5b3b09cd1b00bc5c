"""Flatland submissions as they are: a FlatlandRemoteClient script and a flatland Policy class run
unchanged under `flateval run` (replica mode), scored exactly as flatland-rl's own service and policy
runner score them; a freeze past the step deadline costs that episode only, with and without a
restart of the agent; at the end a script learns the evaluation is over and exits 0 on its own."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from env_worker.agent_process import AgentProcess, free_tcp_endpoint
from env_worker.flatland_test_set import TestConfig, generate_test_set
from tests.test_run import flateval

REPO = Path(__file__).resolve().parent.parent
SUBMISSIONS = Path(__file__).resolve().parent / "flatland_submissions"
CLIENT_SCRIPT = SUBMISSIONS / "remote_client_tree.py"
sys.path.insert(0, str(REPO / "benchmarks"))  # flatland-rl ships a `benchmarks` package of its own
import flatland_baseline  # noqa: E402

FROZEN = "Test_0/Level_1.pkl"  # not flatland's first episode: its service crashes when that one times out
PLUS_ONE = """
name: plus-one
environment: flatland
phases:
  main:
    scoring: {{offset: 1.0, normalization: {normalization}}}
    share_env_files: true
    stop_rules: {{max_consecutive_timeouts: null}}
"""


@pytest.fixture(scope="module")
def malfunction_set(tmp_path_factory) -> Path:
    """Two tests of two levels, malfunctions on: flatland's own evaluators must agree with us on them."""
    out = tmp_path_factory.mktemp("malfunctions")
    generate_test_set(out, [TestConfig(3, 25, 25, 2, malfunction_interval=40), TestConfig(4, 30, 30, 2,
                                                                                         malfunction_interval=40)])
    return out


def challenge(tmp_path: Path, normalization: str = "seed") -> str:
    """flatland's scale (+1.0 per episode, a lost episode 0.0), no stop rule in the way."""
    path = tmp_path / f"plus-one-{normalization}.yaml"
    path.write_text(PLUS_ONE.format(normalization=normalization))
    return str(path)


def client_command(freeze: str | None = None) -> str:
    """The host's agent command for the script (exec: the shell's exit status is the script's)."""
    prefix = f"FREEZE={freeze} " if freeze else ""
    return f"{prefix}exec {sys.executable} -m agent_bridge.flatland_remote {CLIENT_SCRIPT}"


def flateval_run(tmp_path: Path, test_set: Path, agent: str, *extra: str, normalization: str = "seed") -> dict:
    out = tmp_path / f"results-{len(list(tmp_path.glob('results-*')))}.json"
    args = ["run", "--agent", agent, "--test-set", str(test_set), "--challenge", challenge(tmp_path, normalization),
            "--output", str(out), *extra]
    done = subprocess.run([sys.executable, "-m", "flateval", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def by_file(episodes: list[dict], key: str) -> dict[str, float]:
    return {e["env_file"]: e[key] for e in episodes}


@pytest.fixture(scope="module")
def flatland_scores(malfunction_set) -> dict:
    """flatland-rl 4.3's own service + client running the same script: undisturbed, and frozen 1.5 s
    past a 1 s step deadline (whole seconds only, in flatland)."""
    runs = {}
    for name, client_env in (("plain", {}), ("frozen", {"FREEZE": f"{FROZEN}:5:1.5"})):
        run = flatland_baseline.run_flatland_script(
            malfunction_set, [str(CLIENT_SCRIPT)], flatland_baseline.free_port(), timeout_s=180,
            service_env={"FLATLAND_PER_STEP_TIMEOUT": "1"}, client_env=client_env)
        assert run["returncode"] == 0, run["output"][-2000:] + run["log_tail"]
        runs[name] = by_file(run["episodes"], "normalized_reward")
    assert runs["frozen"][FROZEN] == 0.0 and runs["plain"][FROZEN] > 0.0  # flatland's score of a timeout
    return runs


def test_a_remote_client_script_scores_as_flatlands_own_service(malfunction_set, flatland_scores, tmp_path):
    document = flateval_run(tmp_path, malfunction_set, client_command(), "--workers", "2")
    assert [e["outcome"] for e in document["episodes"]] == ["completed"] * 4
    assert by_file(document["episodes"], "normalized_return") == pytest.approx(flatland_scores["plain"], abs=1e-9)
    logs = "".join(document["agent_logs"].values())
    assert "mean_normalized_reward" in logs  # each script's own `print(remote_client.submit())` at the end
    assert logs.count("Evaluation Complete") == 2


@pytest.mark.parametrize("freeze_s, restarted", [(1.5, False), (4.0, True)])
def test_a_freeze_past_the_deadline_costs_that_episode_only(freeze_s, restarted, malfunction_set, flatland_scores,
                                                            tmp_path):
    """1.5 s frozen with a 1 s deadline: the agent answers the evaluator's ping in time, keeps its
    process, and sees the TimeoutException once. 4 s: it is hung, and restarted."""
    document = flateval_run(tmp_path, malfunction_set, client_command(f"{FROZEN}:5:{freeze_s}"), "--workers", "1",
                            "--step-timeout", "1")
    outcomes = by_file(document["episodes"], "outcome")
    assert outcomes == {name: "timeout" if name == FROZEN else "completed" for name in outcomes}
    assert by_file(document["episodes"], "normalized_return") == pytest.approx(flatland_scores["frozen"], abs=1e-9)
    logs = "".join(document["agent_logs"].values())
    assert ("restarting agent" in logs) is restarted
    if not restarted:
        assert logs.count("TimeoutException in episode") == 1
        assert logs.count("Evaluation Complete: 4 episodes, 1 timeouts") == 1


def test_a_long_lived_agent_sees_its_timeout_once_and_ends_on_its_own(malfunction_set, redis_url, tmp_path):
    """A sidecar (nobody restarts it) frozen 4 s past a 1 s deadline: that episode is lost, it plays
    the rest, raises TimeoutException once; SIGTERM at the end: it submits and exits 0."""
    bind, connect = free_tcp_endpoint()
    log = tmp_path / "agent.log"
    agent = AgentProcess(client_command(f"{FROZEN}:5:4"), log, bind=bind, connect=connect)
    agent.start(30)
    try:
        sid = flateval("submit", "--redis", redis_url, "--test-set", str(malfunction_set), "--challenge",
                       challenge(tmp_path), "--step-timeout", "1").stdout.strip()
        done = flateval("worker", "--redis", redis_url, "--queue", f"flateval-{sid}", "--agent-endpoint", connect,
                        "--burst")
        assert done.returncode == 0, done.stderr
        document = json.loads(flateval("results", sid, "--redis", redis_url).stdout)
        assert by_file(document["episodes"], "outcome")[FROZEN] == "timeout"
        assert [e["outcome"] for e in document["episodes"]].count("completed") == 3
        pid = agent.process.pid
        os.killpg(pid, signal.SIGTERM)
        assert agent.process.wait(10) == 0
    finally:
        agent.stop()
    output = log.read_text()
    assert output.count("TimeoutException in episode") == 1
    assert "Evaluation Complete: 4 episodes, 1 timeouts" in output and "mean_normalized_reward" in output


def test_a_policy_class_scores_as_flatlands_policy_runner(malfunction_set, tmp_path):
    """`python -m agent_bridge.flatland_policy` against `flatland-trajectory-generate-from-metadata
    --post-seed 1001`, flatland's offline evaluation of the same Policy class."""
    policy = ["--policy", "tree_policy.ClosestBranchPolicy", "--obs-builder", "tree_policy.TreeObs"]
    document = flateval_run(tmp_path, malfunction_set, f"PYTHONPATH={SUBMISSIONS} {sys.executable} -m "
                            f"agent_bridge.flatland_policy {' '.join(policy)}", "--workers", "2", normalization="flatland")
    runner = Path(sys.executable).parent / "flatland-trajectory-generate-from-metadata"
    data = tmp_path / "trajectories"
    data.mkdir()
    done = subprocess.run([str(runner), "--metadata-csv", str(malfunction_set / "metadata.csv"), "--data-dir",
                           str(data), *policy, "--post-seed", "1001"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SUBMISSIONS)})
    assert done.returncode == 0, done.stderr[-2000:]
    expected = {}
    for arrived in data.glob("*/*/event_logs/TrainMovementEvents.trains_arrived.tsv"):
        [row] = list(csv.DictReader(arrived.open(), delimiter="\t"))
        test, level = arrived.parts[-4], arrived.parts[-3]
        expected[f"{test}/{level}.pkl"] = float(row["normalized_reward"])
    assert len(expected) == 4
    assert by_file(document["episodes"], "normalized_return") == pytest.approx(expected, abs=1e-9)


DIVERGING = """
from flatland.evaluators.client import FlatlandRemoteClient, TimeoutException
client = FlatlandRemoteClient()
while True:
    obs, info = client.env_create()
    if not obs:
        break
    step = client.env.step
    client.env.step = lambda actions: (lambda o, r, d, i: (o, {h: v + 1.0 for h, v in r.items()}, d, i))(*step(actions))
    done = {"__all__": False}
    try:
        while not done["__all__"]:
            obs, rewards, done, info = client.env_step({})
    except TimeoutException as exc:
        print("lost:", exc, flush=True)
"""


def test_a_replica_that_diverges_is_an_agent_error_naming_the_step(small_test_set, tmp_path):
    script = tmp_path / "diverging.py"
    script.write_text(DIVERGING)
    document = flateval_run(tmp_path, small_test_set, f"{sys.executable} -m agent_bridge.flatland_remote {script}",
                            "--workers", "1")
    for episode in document["episodes"]:
        assert episode["outcome"] == "agent_error"
        assert episode["error"].startswith("agent raised: replica diverged: step 1: rewards ")
        assert episode["error"].endswith("(another flatland-rl version?) (step 1)")


def test_replica_mode_where_the_challenge_keeps_its_env_files(small_test_set, tmp_path):
    rules = tmp_path / "private.yaml"
    rules.write_text("name: private\nenvironment: flatland\nphases:\n  main:\n    share_env_files: false\n")
    out = tmp_path / "results.json"
    done = flateval("run", "--agent", client_command(), "--test-set", str(small_test_set), "--challenge", str(rules),
                    "--workers", "1", "--output", str(out))
    assert done.returncode == 0, done.stderr
    errors = {e["error"] for e in json.loads(out.read_text())["episodes"]}
    assert errors == {"replica mode (an agent with its own copy of the env, e.g. a FlatlandRemoteClient script) needs "
                      "the env files, and this challenge does not share them with agents (challenge key "
                      "share_env_files) (step 0)"}
