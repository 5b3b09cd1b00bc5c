"""Issue 16 under faults: a worker SIGKILLed mid-episode while recording leaves an attempt folder that
`flateval verify` reports as incomplete (never as tampered, never as verified); the episode's re-run
writes its own recording cleanly, and the whole run verifies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.conftest import slow_agent
from tests.test_faults import finish, leases, pids_of, start_run, wait_for
from tests.test_record import FLATLAND_EVALUATE
from tests.test_run import flateval


def _attempt_of(record: Path, pid: int) -> Path | None:
    """The attempt folder the worker with this pid is recording, once its episode was reset."""
    for marker in record.glob("*/.partial/*/attempt.json"):
        try:
            if json.loads(marker.read_text())["worker"].endswith(f":{pid}"):
                return marker.parent
        except (OSError, ValueError):  # committed (renamed) while we looked
            continue
    return None


def test_worker_killed_mid_episode_leaves_an_attempt_verify_judges_correctly(redis_url, redis_conn, small_test_set,
                                                                            tmp_path, fault_report):
    agent, _ = slow_agent(tmp_path, delay=0.01)
    record, out = tmp_path / "recordings", tmp_path / "results.json"
    run = start_run("--agent", agent, "--test-set", str(small_test_set), "--workers", "2", "--redis", redis_url,
                    "--record", str(record), "--output", str(out))
    try:
        owner = wait_for(lambda: next((o for o in leases(redis_conn).values() if o.startswith("pair-0-")), None), 60,
                         "pair 0 to start an episode")
        [pid] = pids_of(f"--name {owner}")
        attempt = wait_for(lambda: _attempt_of(record, pid), 30, "pair 0's recording to start")
        os.kill(pid, signal.SIGKILL)
        document = finish(run, out)
    finally:
        run.kill()
    ep_id = json.loads((attempt / "attempt.json").read_text())["ep_id"]
    sid = document["submission_id"]
    assert attempt.parent == record / sid / ".partial" and attempt.is_dir()

    rerun = next(e for e in document["episodes"] if e["ep_id"] == ep_id)
    assert rerun["outcome"] == "completed" and Path(rerun["trajectory"]) == record / sid / ep_id
    check = subprocess.run([FLATLAND_EVALUATE, "--data-dir", rerun["trajectory"], "--ep-id", ep_id],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]

    for target in (record, out):
        done = flateval("verify", str(target))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "4/4 verified" in done.stdout or "4/5 verified" in done.stdout
    done = flateval("verify", str(record))
    assert f"{sid}/{ep_id}" in done.stdout and "incomplete (re-run verified)" in done.stdout

    # the attempt alone (no re-run to supersede it): incomplete, one line, a failure, never "tampered"
    alone = tmp_path / "alone" / sid / ".partial"
    shutil.copytree(attempt, alone / attempt.name)
    done = flateval("verify", str(tmp_path / "alone"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"flateval: {sid}/{ep_id}: incomplete: an attempt by {json.loads((attempt / 'attempt.json').read_text())['worker']}"
        " that never finished (its worker stopped mid-episode)"]
    assert "0/1 verified" in done.stdout
    fault_report("env worker SIGKILLed mid-episode while recording (`flateval run --record DIR --workers 2`)",
                 "its attempt stays in DIR/<id>/.partial and `flateval verify` reports it incomplete (never verified, "
                 "never tampered); the re-run's recording is complete and verifies, flatland's evaluator passes it")
