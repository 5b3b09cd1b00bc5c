"""The ECML 2026 challenge as configuration (issue 25): its test-set layout and metadata, its rules,
FAB's aggregation and ids, and scores equal to flatland-benchmarks' own path (flatland's policy
runner + `TrajectoryEvaluator`, as FAB's orchestrator computes them) for the same policy."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.plan import PlanError, plan_submission
from broker.test_set import TestSetError, discover, parse_env_file
from core.challenge import ChallengeError, load_challenge, parse_challenge
from core.episode_spec import ep_id_of
from env_worker.agent_link import AgentLink
from env_worker.episode import run_episode
from env_worker.flatland_test_set import generate_test_set
from scoring.aggregate import aggregate
from scoring.export import fab_results, to_csv
from tests.test_episode import POLICY_AGENT
from tests.test_run import flateval

SUBMISSIONS = Path(__file__).resolve().parent / "flatland_submissions"
POLICY = ["--policy", "tree_policy.ClosestBranchPolicy", "--obs-builder", "tree_policy.TreeObs"]
ECML_FILES = [f"level_{i}/level_{i}_scenario_{j}.pkl" for i in range(3) for j in (1, 2)]


@pytest.fixture(scope="module")
def ecml_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ecml2026")
    done = flateval("generate-test-set", str(out), "--preset", "ecml2026-debug")
    assert done.returncode == 0, done.stderr
    return out


# ------------------------------------------------------------------------------- layout and ids

def test_preset_writes_the_ecml_layout_with_fabs_metadata(ecml_set):
    assert sorted(p.relative_to(ecml_set).as_posix() for p in ecml_set.glob("*/*.pkl")) == ECML_FILES
    with open(ecml_set / "metadata.csv", newline="") as fh:  # FAB's definitions: one test_id column, the levels
        assert list(csv.reader(fh)) == [["test_id"], ["level_0"], ["level_1"], ["level_2"]]


def test_discovery_gives_fabs_test_and_scenario_ids_in_level_order(ecml_set):
    found = discover(ecml_set)
    assert [f.env_file for f in found] == ECML_FILES
    assert [(f.test, f.level, f.test_id, f.scenario_id) for f in found[:3]] == [
        (0, 1, "level_0", "level_0_scenario_1"), (0, 2, "level_0", "level_0_scenario_2"),
        (1, 1, "level_1", "level_1_scenario_1")]
    assert parse_env_file("level_1/level_2_scenario_1.pkl") is None  # another level's scenario in the wrong folder
    assert ep_id_of("level_3/level_3_scenario_5.pkl") == "level_3_scenario_5"
    assert ep_id_of("Test_1/Level_0.pkl") == "Test_1_Level_0"  # flatland's own runners' name, kept


def test_metadata_is_checked_against_the_files(ecml_set, small_test_set, tmp_path):
    def warnings_of(test_set: Path) -> tuple[str, ...]:
        return plan_submission(challenge="ecml2026", test_set=str(test_set)).warnings

    assert warnings_of(ecml_set) == () and warnings_of(small_test_set) == ()
    ecml = shutil.copytree(ecml_set, tmp_path / "ecml")
    (ecml / "metadata.csv").write_text("test_id\nlevel_0\nlevel_7\n")
    assert warnings_of(ecml) == (f"{ecml}/metadata.csv names test level_7, which the test set does not have",)
    (ecml / "metadata.csv").write_text("test_id,env_id\nlevel_0,level_0_scenario_1\n")  # flatland's columns
    [line] = warnings_of(ecml)
    assert "does not list level_0/level_0_scenario_2.pkl (flatland's evaluator would fail on it): playing it" in line
    neurips = shutil.copytree(small_test_set, tmp_path / "neurips")
    (neurips / "Test_0" / "Level_0.pkl").unlink()
    assert warnings_of(neurips) == (f"{neurips}/metadata.csv names Test_0/Level_0.pkl, which the test set does "
                                    "not have",)
    shutil.copytree(ecml / "level_0", neurips / "level_0")
    with pytest.raises(TestSetError, match="mixes"):
        discover(neurips)


# ------------------------------------------------------------------------------- the challenge

def test_bundled_ecml2026_is_fabs_rules():
    challenge = load_challenge("ecml2026")
    assert challenge.reset is False  # scenarios played as saved, as flatland's policy runner (no --post-seed)
    fab = challenge.phase("fab")
    assert (fab.time_limits.planning_s, fab.time_limits.step_s) == (None, None)
    assert (fab.time_limits.episode_s, fab.time_limits.overall_s) == (1800, 5 * 3600)
    assert (fab.scoring.rewards, fab.scoring.normalization, fab.scoring.offset) == ("ECML2026Rewards", "flatland", 1.0)
    assert fab.scoring.aggregation == "fab" and fab.stop_rules.completion_gate == 0.25
    assert fab.stop_rules.max_consecutive_timeouts is None
    assert (fab.agent_resources.cpu, fab.agent_resources.memory) == (4, "15Gi")
    live = challenge.phase(None)
    assert live.name == "live" and live.time_limits.step_s and live.time_limits.planning_s


def test_deadlines_off_need_a_wall_limit(ecml_set):
    with pytest.raises(ChallengeError, match=r"phases.p.time_limits.step_s: no deadline needs episode_s"):
        parse_challenge({"name": "x", "phases": {"p": {"time_limits": {"step_s": None}}}})
    with pytest.raises(PlanError, match="episode wall limit"):
        plan_submission(challenge="neurips2020", test_set=str(ecml_set), step_timeout_s=math.inf)
    plan = plan_submission(challenge="ecml2026", test_set=str(ecml_set), step_timeout_s=math.inf,
                           planning_timeout_s=math.inf)  # the command line's 'off'
    assert (plan.template.step_timeout_s, plan.template.planning_timeout_s) == (None, None)
    assert plan.template.episode_timeout_s == 1800 and plan.template.reset is False
    assert plan.template.rewards == "ECML2026Rewards"
    assert [(e.test_id, e.scenario_id) for e in plan.episodes][:2] == [
        ("level_0", "level_0_scenario_1"), ("level_0", "level_0_scenario_2")]


def test_the_episode_wall_limit_cuts_an_agent_without_a_step_deadline(small_test_set, start_agent, tmp_path):
    from tests.test_episode import spec_for

    agent = start_agent(script=POLICY_AGENT.format(mode="hang_step"))
    spec = spec_for(small_test_set, planning_timeout_s=None, step_timeout_s=None, episode_timeout_s=1.5)
    started = time.perf_counter()
    result = run_episode(spec, AgentLink(agent.endpoint))
    elapsed = time.perf_counter() - started
    assert result.outcome == "timeout" and result.steps == 3, result.error
    assert "the episode's time limit (1.5 s) ran out waiting for 'step'" in result.error
    assert 1.5 <= elapsed < 1.5 + 1.0  # measured: cut at the wall limit, then a short notice


# ------------------------------------------------------------------------------- FAB's aggregation

def test_fab_aggregation_sums_and_averages_per_test_skipping_nan():
    def episode(test, scenario, reward, complete, outcome="completed"):
        return {"test": int(test[-1]), "test_id": test, "scenario_id": scenario, "env_file": f"{test}/{scenario}.pkl",
                "outcome": outcome, "normalized_return": reward, "percentage_complete": complete}

    results = [episode("level_0", "a", 0.5, 1.0), episode("level_0", "b", 0.25, 0.5),
               episode("level_0", "c", float("nan"), float("nan")),  # FAB's NaN: skipped
               episode("level_1", "d", 0.125, 0.0), episode("level_1", "e", None, None, "env_error")]
    score = aggregate(results, "fab")
    assert score["fab"]["tests"] == {"level_0": {"normalized_reward": 0.75, "percentage_complete": 0.75},
                                     "level_1": {"normalized_reward": 0.125, "percentage_complete": 0.0}}
    assert score["mean_normalized_return"] == score["fab"]["normalized_reward"] == 0.875  # NANSUM of NANSUMs
    assert score["mean_percentage_complete"] == 0.375  # NANMEAN of the tests' NANMEANs (not 0.5 over episodes)
    bodies = fab_results({"episodes": results})
    assert bodies["level_0"] == {"data": [
        {"scenario_id": "a", "scores": {"normalized_reward": 0.5, "percentage_complete": 1.0}},
        {"scenario_id": "b", "scores": {"normalized_reward": 0.25, "percentage_complete": 0.5}}]}
    assert [d["scenario_id"] for d in bodies["level_1"]["data"]] == ["d"]
    rows = list(csv.DictReader(to_csv({"episodes": results}).splitlines()))
    assert (rows[0]["test_id"], rows[0]["env_id"], rows[0]["scenario_id"]) == ("level_0", "a", "a")


# ------------------------------------------------------------------------------- FAB's own path

FAB_SCENARIOS = ("level_0/level_0_scenario_1.pkl", "level_2/level_2_scenario_1.pkl")
SWAPPED = "level_1/level_1_scenario_1.pkl"  # a submission that plays level_0_scenario_2 under this id


UUIDS = ("39ae35d8-4b0f-467f-9ec4-ee19c3558c7f", "1ee01690-3671-4bad-a8c6-52499e491a34")
"""FAB's ECML 2026 ids of test level_0 and of its scenario level_0_scenario_2 (FAB's orchestrator's tables)."""


def fab_run(ecml_set: Path, env_file: str, out: Path, played: str | None = None,
            ids: tuple[str, str] | None = None) -> Path:
    """One scenario as FAB runs it: `flatland-trajectory-generate-from-policy --data-dir
    <test_id>/<scenario_id> --env-path ... --ep-id <scenario_id>` in the submission's image (here:
    `played` instead of the scenario FAB gave, as a cheating image could)."""
    test_id, scenario_id = ids or env_file.removesuffix(".pkl").split("/")
    data_dir = out / test_id / scenario_id
    data_dir.mkdir(parents=True)
    runner = Path(sys.executable).parent / "flatland-trajectory-generate-from-policy"
    done = subprocess.run([str(runner), "--data-dir", str(data_dir), "--env-path", str(ecml_set / (played or env_file)),
                           "--ep-id", scenario_id, *POLICY, "--rewards", "flatland.envs.rewards.ECML2026Rewards",
                           "--snapshot-interval", "0"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(SUBMISSIONS)})
    assert done.returncode == 0, done.stderr[-2000:]
    return data_dir


def fab_scores(data_dir: Path) -> tuple[float, float]:
    """FAB's scores of a scenario (orchestrator_common.py's `_extract_stats_from_trajectory_`): flatland's
    TrajectoryEvaluator on the submission-written state, then `rewards.normalize` over every recorded
    reward, and trains_arrived's success rate."""
    from flatland.envs.rewards import ECML2026Rewards
    from flatland.evaluators.trajectory_evaluator import TrajectoryEvaluator
    from flatland.trajectories.trajectories import Trajectory

    trajectory = Trajectory.load_existing(data_dir=data_dir, ep_id=data_dir.name)
    TrajectoryEvaluator(trajectory).evaluate(tqdm_kwargs={"disable": True}, rewards=ECML2026Rewards())
    env = trajectory.load_env()
    rewards = trajectory.trains_rewards_dones_infos
    normalized = env.rewards.normalize(*rewards["reward"].to_list(), num_agents=rewards["agent_id"].max() + 1,
                                       max_episode_steps=env._max_episode_steps)
    return float(normalized), float(trajectory.trains_arrived.iloc[0]["success_rate"])


@pytest.fixture(scope="module")
def fab_dir(ecml_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fab")
    for env_file in FAB_SCENARIOS:
        fab_run(ecml_set, env_file, out)
    fab_run(ecml_set, SWAPPED, out, played="level_0/level_0_scenario_2.pkl")
    fab_run(ecml_set, "level_0/level_0_scenario_2.pkl", out, ids=UUIDS)  # as FAB names its folders
    return out


def test_scores_equal_fabs_own_path(ecml_set, fab_dir, tmp_path):
    out, record = tmp_path / "results.json", tmp_path / "recordings"
    agent = f"PYTHONPATH={SUBMISSIONS} {sys.executable} -m agent_bridge.flatland_policy {' '.join(POLICY)}"
    done = flateval("run", "--agent", agent, "--test-set", str(ecml_set), "--challenge", "ecml2026", "--phase", "fab",
                    "--workers", "2", "--output", str(out), "--record", str(record))
    assert done.returncode == 0, done.stderr
    assert "normalized_reward (FAB: sum)" in done.stdout and "percentage_complete (FAB: mean of tests)" in done.stdout
    document = json.loads(out.read_text())
    assert document["status"] == "finished" and len(document["episodes"]) == 6, document.get("stopped_by")
    by_file = {e["env_file"]: e for e in document["episodes"]}
    # level_2 has malfunctions: a seeded reset (flatland's evaluator's) would play another episode there
    for env_file in FAB_SCENARIOS:
        episode = by_file[env_file]
        test_id, scenario_id = env_file.removesuffix(".pkl").split("/")
        assert (episode["test_id"], episode["scenario_id"], episode["ep_id"]) == (test_id, scenario_id, scenario_id)
        normalized, success_rate = fab_scores(fab_dir / test_id / scenario_id)
        assert episode["normalized_return"] == pytest.approx(normalized, abs=1e-12), env_file
        assert episode["percentage_complete"] == pytest.approx(success_rate, abs=1e-12), env_file
    fab = document["score"]["fab"]
    assert set(fab["tests"]) == {"level_0", "level_1", "level_2"}
    assert document["score"]["mean_normalized_return"] == pytest.approx(
        sum(e["normalized_return"] for e in document["episodes"]), abs=1e-12)
    page = tmp_path / "report.html"
    assert flateval("report", str(out), "--output", str(page)).returncode == 0
    assert "<dt>Step limit</dt><dd>none" in page.read_text() and "<dt>Episode limit</dt><dd>30 min" in page.read_text()
    exported = flateval("export", str(out), "--format", "fab")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["level_2"]["data"][0]["scenario_id"] == "level_2_scenario_1"
    checked = flateval("verify", str(record), "--test-set", str(ecml_set), "--workers", "2")
    assert checked.returncode == 0, checked.stdout + checked.stderr  # recorded as loaded: the reference states
    assert "6/6 verified" in checked.stdout



def test_verify_replays_a_fab_data_dir_from_the_test_sets_scenarios(ecml_set, fab_dir):
    swapped = fab_dir / SWAPPED.removesuffix(".pkl")
    fab_scores(swapped)  # FAB's own check passes: it replays the state the submission wrote
    done = flateval("verify", str(fab_dir), "--test-set", str(ecml_set), "--workers", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "3/4 verified" in done.stdout and "/".join(UUIDS) in done.stdout  # FAB's ids: the bundled table
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("flateval: level_1/level_1_scenario_1: tampered: its recorded initial state differs from "
                           "the test set's level_1/level_1_scenario_1.pkl (agents, "), line
    assert "grid" in line and "np_random_state" in line
    for env_file in FAB_SCENARIOS:  # re-played from the reference: FAB's scores
        label = env_file.removesuffix(".pkl")
        row = next(line for line in done.stdout.splitlines() if label in line)
        normalized, _ = fab_scores(fab_dir / label)
        assert f"{normalized:.6f}" in row and "verified" in row
    bare = flateval("verify", str(fab_dir))
    assert bare.returncode == 1 and "give --test-set" in bare.stderr
