"""Issue 16: every episode recorded in flatland-rl's own Trajectory format, checked by flatland's own
`flatland-trajectory-evaluate`, by `flateval verify` (which catches one changed action), and watchable
(`flateval render`). Real parts: real `flateval run`s with 2 workers on a test set with malfunctions,
real agents, flatland's own console script.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from broker.plan import PlanError, plan_submission
from core.challenge import ChallengeError, parse_challenge
from core.episode_spec import EpisodeSpec
from env_worker.agent_link import AgentLink
from env_worker.episode import run_episode
from env_worker.flatland_test_set import TestConfig, generate_test_set
from env_worker.record_folder import digest_of, recorded_files
from env_worker.recording import RecordingObserver
from env_worker.verify import targets_from, verify_all
from tests.test_run import flateval

BIN = Path(sys.executable).parent
FLATLAND_EVALUATE = str(BIN / "flatland-trajectory-evaluate")
RANDOM_AGENT = f"{sys.executable} -m agent_bridge.examples.random_agent"
ACTIONS = "event_logs/ActionEvents.discrete_action.tsv"
ARRIVED = "event_logs/TrainMovementEvents.trains_arrived.tsv"
REWARDS = "event_logs/TrainMovementEvents.trains_rewards_dones_infos.tsv"
VIDEO_EPISODE = "Test_0/Level_1.pkl"


@pytest.fixture(scope="session")
def malfunction_test_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("malfunctions")
    generate_test_set(out, [TestConfig(3, 25, 25, 2, malfunction_interval=30, levels=2),
                            TestConfig(2, 25, 25, 2, malfunction_interval=20, levels=1)], seed=11)
    return out


@pytest.fixture(scope="module")
def recorded_run(malfunction_test_set, tmp_path_factory) -> tuple[dict, Path, Path]:
    """`flateval run --record DIR --workers 2` with random trains, under a challenge that asks for the
    video of one episode: (results document, DIR, results file)."""
    tmp = tmp_path_factory.mktemp("recorded")
    challenge = tmp / "audit.yaml"
    challenge.write_text(f"name: audit\nphases:\n  only: {{}}\nrecording:\n  videos: [{VIDEO_EPISODE}]\n")
    record, out = tmp / "recordings", tmp / "results.json"
    done = flateval("run", "--agent", RANDOM_AGENT, "--test-set", str(malfunction_test_set), "--workers", "2",
                    "--challenge", str(challenge), "--record", str(record), "--output", str(out))
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert document["status"] == "finished" and len(document["episodes"]) == 3
    assert f"episodes recorded in {record / document['submission_id']}" in done.stderr
    return document, record, out


def frame_count(video: Path) -> int:
    ffprobe = shutil.which("ffprobe")
    if video.suffix == ".mp4" and ffprobe:
        out = subprocess.run([ffprobe, "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                              "stream=nb_read_frames", "-of", "csv=p=0", str(video)], capture_output=True, text=True)
        return int(out.stdout.strip())
    pytest.skip(f"cannot count the frames of {video.name}: no ffprobe (Debian: apt-get install ffmpeg)")


def tsv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_flatlands_own_evaluator_passes_every_episode_and_agrees_with_the_results(recorded_run):
    document, record, _ = recorded_run
    episodes = document["episodes"]
    checks = [subprocess.Popen([FLATLAND_EVALUATE, "--data-dir", e["trajectory"], "--ep-id", e["ep_id"]],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for e in episodes]
    for episode, check in zip(episodes, checks):
        stdout, stderr = check.communicate(timeout=120)
        assert check.returncode == 0, f"{episode['ep_id']}: {stderr[-2000:]}"
        assert "trains arrived" in stdout
    malfunctions = 0
    for episode in episodes:
        folder = Path(episode["trajectory"])
        assert folder == record / document["submission_id"] / episode["ep_id"]
        assert episode["ep_id"] == episode["env_file"].removesuffix(".pkl").replace("/", "_")
        [arrived] = tsv_rows(folder / ARRIVED)
        assert float(arrived["success_rate"]) == pytest.approx(episode["percentage_complete"], abs=1e-12)
        # flatland's normalized reward is Σr / (max steps × agents) + 1: the seed normalization's, plus 1
        assert float(arrived["normalized_reward"]) == pytest.approx(episode["normalized_return"] + 1.0, abs=1e-9)
        assert int(arrived["env_time"]) == episode["steps"] - 1
        actions = tsv_rows(folder / ACTIONS)
        assert len(actions) == episode["steps"] * episode["n_agents"]  # every agent, every step
        malfunctions += sum("'malfunction': 0" not in row["info"] for row in tsv_rows(folder / REWARDS))
        assert (folder / "serialised_state" / f"{episode['ep_id']}.pkl").is_file()
    assert malfunctions > 0, "the test set was meant to have malfunctions"
    assert not any(record.rglob(".partial")), "an undisturbed run leaves no attempt behind"
    assert json.loads((record / document["submission_id"] / "results.json").read_text()) == document


def test_the_challenge_renders_its_chosen_episode_with_one_frame_per_step(recorded_run):
    document, _, _ = recorded_run
    videos = {e["env_file"]: e["video"] for e in document["episodes"]}
    assert [f for f, v in videos.items() if v] == [VIDEO_EPISODE]
    chosen = next(e for e in document["episodes"] if e["env_file"] == VIDEO_EPISODE)
    video = Path(chosen["video"])
    assert video.parent == Path(chosen["trajectory"]) / "outputs" and video.is_file()
    assert frame_count(video) == chosen["steps"] + 1


def test_verify_passes_on_the_folder_and_on_the_results(recorded_run):
    document, record, out = recorded_run
    for target, workers in ((record, "1"), (out, "2")):
        done = flateval("verify", str(target), "--workers", workers)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "3/3 verified" in done.stdout and done.stderr == ""
        for episode in document["episodes"]:
            assert episode["ep_id"] in done.stdout


def test_render_command_makes_a_playable_video_of_a_chosen_episode(recorded_run, tmp_path):
    document, record, _ = recorded_run
    copy = tmp_path / "recordings"
    shutil.copytree(record, copy)
    episode = next(e for e in document["episodes"] if e["env_file"] == "Test_1/Level_0.pkl")
    done = flateval("render", str(copy), "--episodes", "Test_1/Level_0")
    assert done.returncode == 0, done.stderr
    video = copy / document["submission_id"] / episode["ep_id"] / "outputs" / f"{episode['ep_id']}.mp4"
    assert done.stdout.strip() == f"{document['submission_id']}/{episode['ep_id']}: {episode['steps'] + 1} frames " \
                                  f"-> {video}"
    assert frame_count(video) == episode["steps"] + 1
    assert flateval("verify", str(copy)).returncode == 0  # a video is an output, not part of the recording
    missing = flateval("render", str(copy), "--episodes", "Test_7/Level_0")
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"flateval: no complete recording of Test_7/Level_0 under {copy}"]


def _change_one_action(folder: Path) -> None:
    path = folder / ACTIONS
    lines = path.read_text().splitlines()
    row = lines[len(lines) // 2].split("\t")
    row[-1] = str((int(row[-1]) + 1) % 5)
    lines[len(lines) // 2] = "\t".join(row)
    path.write_text("\n".join(lines) + "\n")


def _rewrite_manifest(folder: Path) -> None:
    """What a careful forger does after editing a file: recompute the manifest's digests."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = recorded_files(folder)
    manifest["digest"] = digest_of(manifest["files"])
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_one_changed_action_fails_verify_with_one_line_naming_the_episode(recorded_run, tmp_path):
    document, record, _ = recorded_run
    sid = document["submission_id"]
    copy = tmp_path / "recordings"
    shutil.copytree(record, copy)
    episode = document["episodes"][1]
    _change_one_action(copy / sid / episode["ep_id"])

    done = flateval("verify", str(copy))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"flateval: {sid}/{episode['ep_id']}: tampered: {ACTIONS} changed since it was recorded"]

    # the manifest rewritten to match: the results' digest (stored with the score) still catches it
    _rewrite_manifest(copy / sid / episode["ep_id"])
    done = flateval("verify", str(copy))
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"flateval: {sid}/{episode['ep_id']}: tampered: the files differ from the ones the "
                           "result recorded")


def test_a_replay_catches_an_edit_that_changes_the_run_even_without_results(recorded_run, tmp_path):
    """Without results to compare digests with, an edit with a rewritten manifest is still caught by
    flatland's replay when it changes what happens (here: one train never moves)."""
    document, record, _ = recorded_run
    sid = document["submission_id"]
    episode = max(document["episodes"], key=lambda e: e["steps"])
    folder = tmp_path / episode["ep_id"]
    shutil.copytree(record / sid / episode["ep_id"], folder)
    path = folder / ACTIONS
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0]] + [line if line.split("\t")[2] != "0" else "\t".join(
        line.split("\t")[:-1] + ["4"]) for line in lines[1:]]) + "\n")  # agent 0 always STOP_MOVING
    _rewrite_manifest(folder)
    [verdict] = verify_all(targets_from(folder))
    assert verdict.status == "mismatch" and "the replay differs from the recording at step" in verdict.detail


HANG_AT_STEP_3 = """
import time
from agent_bridge import serve
class HangAtThree:
    def reset(self, info): pass
    def act(self, obs, info):
        if info["step"] == 3:
            time.sleep(3600)
        return {h: 2 for h in range(3)}
serve(HangAtThree())
"""


def test_an_episode_cut_by_a_timeout_is_recorded_up_to_the_cut(malfunction_test_set, start_agent, tmp_path):
    from flatland.evaluators.trajectory_evaluator import TrajectoryEvaluator
    from flatland.trajectories.trajectories import Trajectory

    link = AgentLink(start_agent(script=HANG_AT_STEP_3).endpoint)
    spec = EpisodeSpec(env_path=str(malfunction_test_set / "Test_0" / "Level_0.pkl"), env_file="Test_0/Level_0.pkl",
                       submission_id="cut", step_timeout_s=0.3)
    try:
        result = run_episode(spec, link, [RecordingObserver(str(tmp_path))])
    finally:
        link.close()
    assert result.outcome == "timeout" and result.steps == 3
    folder = Path(result.trajectory)
    assert folder == tmp_path / "cut" / "Test_0_Level_0"
    assert len(tsv_rows(folder / ACTIONS)) == 3 * result.n_agents
    assert tsv_rows(folder / ARRIVED) == []  # only an ended episode has its arrivals row
    TrajectoryEvaluator(Trajectory.load_existing(folder, "Test_0_Level_0")).evaluate(
        end_step=3, tqdm_kwargs={"disable": True})
    [verdict] = verify_all(targets_from(tmp_path))
    assert (verdict.status, verdict.steps, verdict.score) == ("verified", 3, -1.0), verdict


ALWAYS_LEFT = f"{sys.executable} {Path(__file__).resolve().parent.parent / 'examples' / 'cartpole' / 'agent.py'} " \
              "--always-left"


def test_gymnasium_episodes_are_recorded_as_json_lines_and_verified(tmp_path):
    record, out = tmp_path / "recordings", tmp_path / "results.json"
    done = flateval("run", "--env", "gymnasium:CartPole-v1", "--episodes", "2", "--seed", "5", "--workers", "1",
                    "--agent", ALWAYS_LEFT, "--record", str(record), "--output", str(out))
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    episode = document["episodes"][1]
    assert episode["ep_id"] == "CartPole-v1_seed_6"
    lines = [json.loads(line) for line in (Path(episode["trajectory"]) / "episode.jsonl").read_text().splitlines()]
    assert lines[0] == {"format": "flateval-gymnasium-episode/1", "env_id": "CartPole-v1", "seed": 6,
                        "ep_id": "CartPole-v1_seed_6"}
    assert [row["action"] for row in lines[1:-1]] == [0] * episode["steps"]
    assert lines[-1] == {"end": {"steps": episode["steps"], "return": episode["return"], "done": True}}
    assert flateval("verify", str(out)).returncode == 0

    folder = Path(episode["trajectory"])
    rows = (folder / "episode.jsonl").read_text().splitlines()
    rows[2] = rows[2].replace('"reward": 1.0', '"reward": 2.0')
    (folder / "episode.jsonl").write_text("\n".join(rows) + "\n")
    _rewrite_manifest(folder)
    done = flateval("verify", str(record))  # the results.json next to the recordings holds the digest
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"flateval: {document['submission_id']}/CartPole-v1_seed_6: tampered: the files differ")
    (record / document["submission_id"] / "results.json").unlink()  # the manifest alone: the replay catches it
    done = flateval("verify", str(record))
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert "mismatch: the replay differs from the recording at step 2: reward 1.0" in line

    pytest.importorskip("pygame", reason="cannot render CartPole without pygame (pip install flateval[test])")
    first = document["episodes"][0]
    done = flateval("render", str(record), "--episodes", "CartPole-v1/seed_5")
    assert done.returncode == 0, done.stderr
    video = Path(first["trajectory"]) / "outputs" / "CartPole-v1_seed_5.mp4"
    assert done.stdout.strip().endswith(f"{first['steps'] + 1} frames -> {video}")
    assert frame_count(video) == first["steps"] + 1


def test_recording_keys_are_validated_in_one_line(malfunction_test_set):
    base = {"name": "c", "phases": {"p": {}}}
    with pytest.raises(ChallengeError, match=r"^challenge x: recording.video_format: expected one of mp4, gif, "
                                             r"got 'avi'$"):
        parse_challenge({**base, "recording": {"video_format": "avi"}}, "x")
    with pytest.raises(ChallengeError, match=r"recording.fps: unknown key"):
        parse_challenge({**base, "recording": {"fps": 3}}, "x")
    challenge = malfunction_test_set / "c.yaml"
    challenge.write_text(textwrap.dedent("""\
        name: c
        phases: {p: {}}
        recording: {videos: [Test_5/Level_0]}
        """))
    with pytest.raises(PlanError, match="recording.videos: 'Test_5/Level_0' names no episode"):
        plan_submission(challenge=str(challenge), test_set=str(malfunction_test_set), record_dir="/tmp/x")
    with pytest.raises(PlanError, match="give --record DIR"):
        plan_submission(challenge=str(challenge), test_set=str(malfunction_test_set))
    plan = plan_submission(test_set=str(malfunction_test_set), record_dir="rel")
    assert plan.template.record_dir == str(Path("rel").resolve()) and plan.template.videos == ()


def test_videos_are_padded_to_even_sizes_and_fall_back_to_a_gif_without_ffmpeg(tmp_path, monkeypatch):
    import numpy as np

    from env_worker import video as videos

    frames = [np.full((7, 5, 4), 40 * i, dtype=np.uint8) for i in range(4)]  # odd sizes, RGBA as RenderTool's
    if shutil.which("ffmpeg"):
        made = videos.encode(iter(frames), tmp_path / "odd", "mp4")
        assert made.path == tmp_path / "odd.mp4" and made.frames == 4 and made.note is None
        probe = subprocess.run([shutil.which("ffprobe"), "-v", "error", "-select_streams", "v:0", "-count_frames",
                                "-show_entries", "stream=width,height,nb_read_frames", "-of", "csv=p=0",
                                str(made.path)], capture_output=True, text=True)
        assert probe.stdout.strip() == "6,8,4"
    monkeypatch.setattr(videos.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # imageio's ffmpeg absent too
    made = videos.encode(iter(frames), tmp_path / "fallback", "mp4")
    assert made.path == tmp_path / "fallback.gif" and made.frames == 4
    assert made.note == f"{videos.FFMPEG_MISSING}: wrote a GIF instead ({made.path})"
    from PIL import Image

    with Image.open(made.path) as gif:
        assert gif.n_frames == 4
    assert not list(tmp_path.glob(".*partial*"))


def test_trains_arrived_reward_follows_the_episodes_normalization():
    """`seed` is flatland's evaluation service's formula, `flatland` its Rewards.normalize (capped):
    both + 1, so the column is always the result's normalized return - offset + 1."""
    from flatland.envs.rewards import DefaultRewards

    from env_worker.flatland_recorder import trajectory_normalized_reward

    per_agent = [-300.0, -10.0]  # the first agent's return is below -max steps: flatland caps it
    assert trajectory_normalized_reward(per_agent, 100, "seed") == pytest.approx(-310 / 200 + 1)
    assert trajectory_normalized_reward(per_agent, 100, "flatland") == pytest.approx(
        DefaultRewards().normalize(*per_agent, num_agents=2, max_episode_steps=100))
