"""`flateval run`, `submit`, `status`, `results`, `cancel` and a stock `rq worker`, as a user runs them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import slow_agent
from tests.test_episode import direct_normalized_return

FLATEVAL = [sys.executable, "-m", "flateval"]
DO_NOTHING = f"{sys.executable} -m agent_bridge.examples.do_nothing"


def flateval(*args: str, timeout: float = 240, env: dict | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A `flateval` command; a run without --output writes ./flateval-results/ under `cwd`."""
    return subprocess.run([*FLATEVAL, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def leftover_processes(token: str, before: list[str] = ()) -> list[str]:
    """Live processes mentioning `token` that this checkout started (every one runs from its venv:
    another checkout's test run on the same machine is not ours to count), less those in `before`
    (what ran before the test began: a run killed earlier on this machine is not this test's)."""
    out = subprocess.run(["pgrep", "-af", token], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line and sys.prefix in line and line not in before]


def check_against_direct(document: dict, test_set: Path) -> None:
    assert document["status"] == "finished"
    episodes = document["episodes"]
    assert [e["env_file"] for e in episodes] == sorted(
        (e["env_file"] for e in episodes), key=lambda f: (int(f.split("/")[0][5:]), int(f.split("_")[-1][:-4])))
    expected = []
    for episode in episodes:
        nr, done, steps = direct_normalized_return(test_set / episode["env_file"])
        assert episode["outcome"] == "completed"
        assert episode["normalized_return"] == pytest.approx(nr, abs=1e-9)
        assert episode["percentage_complete"] == pytest.approx(done, abs=1e-9)
        assert episode["steps"] == steps
        expected.append(nr)
    assert document["score"]["mean_normalized_return"] == pytest.approx(sum(expected) / len(expected), abs=1e-9)
    assert document["timing"]["wall_s"] > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_run_do_nothing_equals_direct_stepping(workers, small_test_set, tmp_path):
    out = tmp_path / "results.json"
    done = flateval("run", "--agent", DO_NOTHING, "--test-set", str(small_test_set), "--workers", str(workers),
                    "--output", str(out))
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert {"submission_id", "status", "score", "timing", "episodes"} <= set(document)
    check_against_direct(document, small_test_set)
    assert len({e["worker"] for e in document["episodes"]}) <= workers


def test_run_on_external_redis_and_bundled_test_set(redis_url, tmp_path):
    out = tmp_path / "results.json"
    done = flateval("run", "--agent", DO_NOTHING, "--workers", "1", "--output", str(out), "--redis", redis_url)
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert document["status"] == "finished" and len(document["episodes"]) >= 4


def test_missing_test_set_is_one_clear_line(tmp_path):
    done = flateval("run", "--agent", DO_NOTHING, "--test-set", str(tmp_path / "nope"))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [f"flateval: test set {tmp_path / 'nope'} does not exist"]


def test_empty_test_set_is_one_clear_line(tmp_path):
    done = flateval("run", "--agent", DO_NOTHING, "--test-set", str(tmp_path))
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "no Test_<N>/Level_<M>.pkl" in done.stderr


def test_agent_that_cannot_start_fails_with_one_line_and_its_traceback_in_the_results(small_test_set, tmp_path,
                                                                                      fault_report):
    """An agent that crashes at start: one line saying why, exit 1, and a results document (failed, the
    error, the agent's output: the traceback a host posts as FAILED) that report, verify and export take."""
    token = f"flateval-test-{uuid.uuid4().hex[:8]}"
    agent = f"{sys.executable} -c 'print(\"loading\"); raise RuntimeError(\"cannot load model\")' {token}"
    before = leftover_processes("flateval-run-")
    done = flateval("run", "--agent", agent, "--test-set", str(small_test_set), "--workers", "2", cwd=tmp_path)
    assert done.returncode == 1
    *said, last = done.stderr.strip().splitlines()
    assert "agent command exited with code 1" in last and "RuntimeError: cannot load model" in last
    [results] = (tmp_path / "flateval-results").iterdir()
    assert said == [f"results written to flateval-results/{results.name}"], done.stderr
    document = json.loads(results.read_text())
    assert (document["status"], document["error"], document["episodes"]) == ("failed", last[len("flateval: "):], [])
    assert document["score"]["mean_normalized_return"] is None and document["n_episodes"] == 4
    assert len(document["agent_logs"]) == 2
    for tail in document["agent_logs"].values():
        assert "loading" in tail and "Traceback (most recent call last)" in tail and "cannot load model" in tail
    assert leftover_processes(token) == []
    assert leftover_processes("flateval-run-", before) == []

    page = flateval("report", str(results), "--output", str(tmp_path / "report.html"))
    assert page.returncode == 0, page.stderr
    assert "failed" in (tmp_path / "report.html").read_text() and "Traceback" in (tmp_path / "report.html").read_text()
    for command, says in ((["export", "--format", "evalai"], "submission has no score to export (agent command "),
                          (["verify"], "a failed submission, no score (agent command exited")):
        refused = flateval(*command[:1], str(results), *command[1:])
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert says in refused.stderr
    fault_report("the agent crashes at start (`flateval run --workers 2`)",
                 "one line saying why, exit 1, and a results document: `failed`, that line as its error, each "
                 "agent's output (the traceback) in `agent_logs`; report, verify and export take it", None)


def test_the_next_run_reaps_what_a_sigkilled_run_left_and_nothing_alive(small_test_set, tmp_path):
    """A SIGKILLed `flateval run` leaves its folder and its embedded redis-server (its workers and
    agents die with it); the next run stops that server and removes the folder. Folders whose owner
    runs (another run on this machine) or cannot be told (no owner file) are left alone; a pid that
    now names another process (same pid, other start time) is dead."""
    from core.process_identity import ProcessIdentity
    from flateval.run_folders import OWNER_FILE, PREFIX, make_run_dir
    from tests.test_faults import wait_for

    agent, token = slow_agent(tmp_path, delay=0.5)
    killed = subprocess.Popen([*FLATEVAL, "run", "--agent", agent, "--test-set", str(small_test_set), "--workers", "1",
                               "--overall-timeout", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: killed.stderr.readline().startswith("sandbox") or killed.poll() is not None, 60, "agents ready")
        assert killed.poll() is None
        worker = next(p for p in _processes_running(token) if p != killed.pid and b"worker" in
                      Path(f"/proc/{p}/cmdline").read_bytes())
        argv = Path(f"/proc/{worker}/cmdline").read_bytes().decode().split("\0")
        run_dir = Path(argv[argv.index("--agent-log") + 1]).parent
        server = ProcessIdentity.read(run_dir / "redis" / "redis-server.pid")
    finally:
        killed.kill()
        killed.wait()
    alive = make_run_dir()  # a live run's folder (ours)
    unknown = make_run_dir()
    (unknown / OWNER_FILE).unlink()  # a folder nobody can tell the owner of
    reused = make_run_dir()  # an owner whose pid the kernel handed to another process since
    me = ProcessIdentity.of(os.getpid())
    ProcessIdentity(me.pid, me.started - 1, me.namespace).write(reused / OWNER_FILE)
    try:
        assert server is not None and not server.gone(), "the killed run's Redis died with it: nothing to reap"
        done = flateval("run", "--agent", f"{sys.executable} -c 'import sys; sys.exit(3)'", "--test-set",
                        str(small_test_set), "--workers", "1", cwd=tmp_path)
        assert done.returncode != 0
        wait_for(lambda: server.gone(), 10, "the orphaned redis-server to stop")
        assert not run_dir.exists() and not reused.exists()
        assert alive.is_dir() and unknown.is_dir()
        assert alive.name.startswith(PREFIX)
    finally:
        if not server.gone():
            os.kill(server.pid, 9)
        for folder in (run_dir, alive, unknown, reused):
            shutil.rmtree(folder, ignore_errors=True)

def test_unreachable_redis_is_one_clear_line(small_test_set):
    done = flateval("run", "--agent", DO_NOTHING, "--test-set", str(small_test_set), "--redis",
                    "redis://127.0.0.1:1/0")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[0].startswith("flateval: cannot reach Redis at redis://127.0.0.1:1/0")


HANG_ONCE = """
import os, sys, time
from agent_bridge import serve
MARK = {marker!r}
class HangOnce:
    def reset(self, info):
        pass
    def act(self, obs, info):
        if info["step"] == 3 and not os.path.exists(MARK):
            open(MARK, "w").close()
            time.sleep(3600)
        return {{}}
serve(HangOnce())
"""


def test_pair_restarts_a_hung_agent_and_a_corrupt_env_is_an_env_error(small_test_set, tmp_path):
    test_set = tmp_path / "set"
    shutil.copytree(small_test_set, test_set)
    (test_set / "Test_1" / "Level_1.pkl").write_bytes(b"not a pickle at all")
    script = tmp_path / "hang_once.py"
    script.write_text(HANG_ONCE.format(marker=str(tmp_path / "hung")))
    out = tmp_path / "results.json"
    done = flateval("run", "--agent", f"{sys.executable} {script}", "--test-set", str(test_set), "--workers", "1",
                    "--step-timeout", "0.5", "--output", str(out))
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    outcomes = [e["outcome"] for e in document["episodes"]]
    assert outcomes == ["timeout", "completed", "completed", "env_error"]
    assert document["episodes"][0]["normalized_return"] == -1.0
    assert document["status"] == "finished"
    assert document["score"]["scored_episodes"] == 3
    assert "restarting agent" in "".join(document["agent_logs"].values())
    assert not _processes_running(str(script)), "an agent outlived its `flateval run`"


def _processes_running(needle: str) -> list[int]:
    """Pids of live processes whose command line mentions `needle`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_agent_pidfile_names_the_current_agent_after_a_restart(tmp_path):
    """A supervisor kills the agent named in the pidfile; after a restart that must be the new one."""
    from env_worker.agent_process import AgentProcess

    pidfile = tmp_path / "agent.pid"
    agent = AgentProcess(DO_NOTHING, tmp_path / "agent.log", pidfile=pidfile)
    try:
        agent.start()
        first = int(pidfile.read_text())
        assert first == agent.pid
        agent.restart()
        assert int(pidfile.read_text()) == agent.pid != first
    finally:
        agent.stop()


def test_submit_and_stock_rq_worker(redis_url, redis_conn, small_test_set, start_agent):
    agent = start_agent(module="agent_bridge.examples.do_nothing")
    done = flateval("submit", "--redis", redis_url, "--test-set", str(small_test_set), "--name", "stock")
    assert done.returncode == 0, done.stderr
    sid = done.stdout.strip()
    status = flateval("status", sid, "--redis", redis_url)
    assert status.returncode == 0 and "queued" in status.stdout and "0/4" in status.stdout

    rq = shutil.which("rq", path=os.path.dirname(sys.executable)) or "rq"
    worker = subprocess.run([rq, "worker", "-u", redis_url, "-S", "json", "--burst", f"flateval-{sid}"],
                            env={**os.environ, "FLATEVAL_AGENT_ENDPOINT": agent.endpoint},
                            capture_output=True, text=True, timeout=240)
    assert worker.returncode == 0, worker.stderr

    status = flateval("status", sid, "--redis", redis_url)
    assert "finished" in status.stdout and "4/4" in status.stdout
    results = flateval("results", sid, "--redis", redis_url)
    check_against_direct(json.loads(results.stdout), small_test_set)


def test_cancel_removes_queued_episodes(redis_url, redis_conn, small_test_set):
    sid = flateval("submit", "--redis", redis_url, "--test-set", str(small_test_set)).stdout.strip()
    done = flateval("cancel", sid, "--redis", redis_url)
    assert done.returncode == 0, done.stderr
    assert "4 queued episodes removed" in done.stdout
    assert redis_conn.llen(f"rq:queue:flateval-{sid}") == 0
    document = json.loads(flateval("results", sid, "--redis", redis_url).stdout)
    assert document["status"] == "cancelled" and document["score"]["mean_normalized_return"] is None
    again = flateval("cancel", sid, "--redis", redis_url)
    assert again.returncode != 0 and "already ended" in again.stderr


def test_generate_test_set(tmp_path):
    done = flateval("generate-test-set", str(tmp_path / "gen"), "--preset", "small", "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "gen" / "metadata.csv").exists()
    assert sorted(p.relative_to(tmp_path / "gen").as_posix() for p in (tmp_path / "gen").glob("*/*.pkl")) == [
        "Test_0/Level_0.pkl", "Test_0/Level_1.pkl", "Test_1/Level_0.pkl", "Test_1/Level_1.pkl"]


def test_episode_command_prints_the_record(small_test_set, start_agent):
    agent = start_agent(module="agent_bridge.examples.do_nothing")
    env = small_test_set / "Test_1" / "Level_0.pkl"
    done = flateval("episode", "--env", str(env), "--agent-endpoint", agent.endpoint, "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    expected, _, steps = direct_normalized_return(env)
    assert (record["env_file"], record["test"], record["level"]) == ("Test_1/Level_0.pkl", 1, 0)
    assert record["outcome"] == "completed" and record["steps"] == steps
    assert record["normalized_return"] == pytest.approx(expected, abs=1e-9)
    for key in ("percentage_complete", "cumulative_reward", "duration_s", "agent_response", "error"):
        assert key in record
    human = flateval("episode", "--env", str(env), "--agent-endpoint", agent.endpoint)
    assert human.returncode == 0 and "completed" in human.stdout
    missing = flateval("episode", "--env", str(small_test_set / "nope.pkl"), "--agent-endpoint", agent.endpoint)
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0


COUNTS_EPISODES = """
import os, time, uuid
from agent_bridge import serve
class Slow:
    def reset(self, info):  # a file per episode started (each agent has a uid of its own)
        open(os.path.join({marks!r}, uuid.uuid4().hex), "w").close()
    def act(self, obs, info):
        time.sleep(0.02)
        return {{}}
serve(Slow())
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGINT again and again", "SIGTERM"])
def test_interrupted_run_keeps_its_finished_episodes_cancelled_without_a_score(sig, thirty_env_set, tmp_path):
    """Ctrl-C (SIGINT to the run's whole process group, as a terminal sends it: the embedded Redis and
    the workers are in it too; pressed again and again, as people do) or SIGTERM (to its pid) mid-run: it stops
    within a few seconds, says so in one line, and its results document is cancelled with the episodes
    that finished, and no score."""
    import signal

    token = f"flateval-agent-{uuid.uuid4().hex[:8]}"
    marks, script = tmp_path / "episodes", tmp_path / f"{token}.py"
    marks.mkdir(mode=0o777)
    marks.chmod(0o777)
    script.write_text(COUNTS_EPISODES.format(marks=str(marks)))
    out = tmp_path / "results.json"
    run = subprocess.Popen([*FLATEVAL, "run", "--agent", f"{sys.executable} {script}", "--test-set",
                            str(thirty_env_set), "--workers", "2", "--output", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(marks.iterdir())) < 3:  # 2 pairs: one has ended an episode
        assert time.monotonic() < deadline and run.poll() is None, "no episode ended"
        time.sleep(0.02)  # polling the agents' own record of their episodes
    if sig == "SIGTERM":
        run.send_signal(signal.SIGTERM)
    else:
        os.killpg(run.pid, signal.SIGINT)
    interrupted = time.monotonic()
    while sig == "SIGINT again and again" and run.poll() is None:  # a press every 0.1 s while it stops
        time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    stopped = time.monotonic() - interrupted
    assert run.returncode == 1 and stopped < 10, (stopped, stderr)
    document = json.loads(out.read_text())
    finished = document["episodes"]
    assert (document["status"], document["error"]) == ("cancelled", "interrupted")
    assert 1 <= len(finished) < 30 and {e["outcome"] for e in finished} == {"completed"}
    assert document["score"]["mean_normalized_return"] is None and document["score"]["episodes"] == len(finished)
    assert stderr.strip().splitlines()[-1] == (f"flateval: interrupted: the submission is cancelled, its {len(finished)} "
                                               f"finished episode{'s' * (len(finished) != 1)} kept without a score; "
                                               "everything started was stopped")
    assert leftover_processes(token) == []


def test_worker_without_queue_follows_every_submission(redis_url, redis_conn, small_test_set, tmp_path):
    """... and, asked for no --agent-log, writes nothing into its current directory, nor leaves its
    temporary log behind."""
    import tempfile

    first = flateval("submit", "--redis", redis_url, "--test-set", str(small_test_set)).stdout.strip()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    worker = subprocess.Popen([*FLATEVAL, "worker", "--redis", redis_url, "--agent", DO_NOTHING], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        second = flateval("submit", "--redis", redis_url, "--test-set", str(small_test_set)).stdout.strip()
        for sid in (first, second):
            deadline = time.monotonic() + 120
            while redis_conn.hget(f"flateval:submission:{sid}", "status") != b"finished":
                assert time.monotonic() < deadline, f"{sid} did not finish"
                assert worker.poll() is None, worker.stderr.read()
                time.sleep(0.1)  # polling the submission's state in Redis
    finally:
        worker.terminate()
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert list(cwd.iterdir()) == []
    assert list(Path(tempfile.gettempdir()).glob(f"flateval-worker-{worker.pid}-*")) == []


def test_worker_takes_no_episode_before_its_external_agent_answers(redis_url, redis_conn, small_test_set):
    """A sidecar agent that never comes up fails the worker at start-up (one line), instead of costing
    the first episodes their planning time."""
    from tests.conftest import free_port

    sid = flateval("submit", "--redis", redis_url, "--test-set", str(small_test_set)).stdout.strip()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = flateval("worker", "--redis", redis_url, "--queue", f"flateval-{sid}", "--agent-endpoint", endpoint,
                    "--startup-timeout", "1", timeout=60)
    assert done.returncode != 0
    *log, failure = done.stderr.strip().splitlines()  # the start line, then the failure in one line
    assert failure == f"flateval: agent did not answer the handshake on {endpoint} within 1 s"
    assert len(log) == 1 and f"agent {endpoint}" in log[0]
    assert time.monotonic() - started < 30
    assert redis_conn.llen(f"rq:queue:flateval-{sid}") == 4  # nothing was taken
