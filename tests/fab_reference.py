"""FAB's side of the FAB tests and benchmark: its backend sending a task, and its own sequential
evaluation path (flatland's policy runner on one scenario after another, each trajectory scored as
FAB's orchestrator scores it). Also how the tests start a `flateval fab-worker`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SUBMISSIONS = Path(__file__).resolve().parent / "flatland_submissions"
POLICY = ["--policy", "tree_policy.ClosestBranchPolicy", "--obs-builder", "tree_policy.TreeObs"]
AGENT = f"PYTHONPATH={SUBMISSIONS} {sys.executable} -m agent_bridge.flatland_policy {' '.join(POLICY)}"
ECML_BENCHMARK_ID = "c85d5fc2-15da-4a62-8e14-28d1261c29bd"  # the queue FAB's backend sends ECML 2026 to
RUNNER = Path(sys.executable).parent / "flatland-trajectory-generate-from-policy"


def send_fab_task(broker_url: str, benchmark_id: str, submission_id: str, tests: list[str] | None,
                  image: str = "ghcr.io/flatland-association/submission:1") -> None:
    """As FAB's backend: task name and queue = benchmark id, task id = submission id, its kwargs."""
    from celery import Celery

    app = Celery(broker=broker_url)
    try:
        app.send_task(benchmark_id, kwargs={"submission_data_url": image, "tests": tests}, task_id=submission_id,
                      queue=benchmark_id)
    finally:
        app.close()


def wait_final_status(fab, submission_id: str, process: subprocess.Popen, log: Path, timeout_s: float) -> dict:
    """The SUCCESS or FAILURE status the worker posted for the submission."""
    deadline = time.monotonic() + timeout_s
    while True:
        ended = [s for s in fab.statuses(submission_id) if s["status"] in ("SUCCESS", "FAILURE")]
        if ended:
            return ended[-1]
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no final status for {submission_id}: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)  # the worker reports over HTTP to the contract server: poll what it recorded


@dataclass
class FabWorkerProcess:
    process: subprocess.Popen
    data: Path
    log: Path

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until Celery says it consumes (its "ready." line): a task sent before waits in the queue anyway,
        but the benchmark times tasks, not the worker's start."""
        deadline = time.monotonic() + timeout_s
        while b"ready." not in self.log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"fab-worker did not start: {self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)  # a log line from another process: poll

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)  # Celery's warm shutdown
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def start_fab_worker(broker_url: str, fab, client_id: str, client_secret: str, test_set: Path, table: Path,
                     data: Path, workers: int = 2, agent: str | None = AGENT, benchmark_id: str = ECML_BENCHMARK_ID,
                     extra_env: dict | None = None) -> FabWorkerProcess:
    """`flateval fab-worker` configured as FAB's orchestrator is: by environment. `agent`: the local
    command every submission runs as (None: the submission's image)."""
    env = {**os.environ, "BROKER_URL": broker_url, "BENCHMARK_ID": benchmark_id, "FAB_API_URL": fab.url,
           "CLIENT_ID": client_id, "CLIENT_SECRET": client_secret, "TOKEN_URL": fab.token_url,
           "OAUTHLIB_INSECURE_TRANSPORT": "1", **(extra_env or {})}  # the token endpoint: plain http on loopback
    log = data.parent / f"{data.name}.fab-worker.log"
    args = [sys.executable, "-m", "flateval", "fab-worker", "--test-set", str(test_set), "--scenarios", str(table),
            "--data-dir", str(data), "--workers", str(workers)] + (["--agent-command", agent] if agent else [])
    with open(log, "wb") as out:
        process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    worker = FabWorkerProcess(process, data, log)
    worker.wait_ready()
    return worker


def table_for(test_set: Path, out: Path) -> Path:
    """ECML 2026's own test and scenario ids (the bundled table, read from FAB's orchestrator), cut to
    the scenarios `test_set` has (the debug set: the first scenarios of the first levels)."""
    from core.fab_scenarios import load_fab_scenarios

    table = load_fab_scenarios("ecml2026")
    tests = {test_id: {s: f for s, f in scenarios.items() if (test_set / f).exists()}
             for test_id, scenarios in table.tests.items()}
    out.write_text(json.dumps({"benchmark_id": table.benchmark_id, "tests": {t: s for t, s in tests.items() if s}}))
    return out


def fab_sequential_scores(test_set: Path, table: Path, tests: list[str], out: Path,
                          processes: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    """FAB's own path: ``flatland-trajectory-generate-from-policy`` on each scenario, one after another
    (with `processes`, one process each, as FAB runs one container each; else in this process), each
    trajectory scored right after as FAB's orchestrator scores it. Test id -> scenario id -> scores."""
    from core.challenge import load_challenge
    from flateval.fab_orchestrator import DEFAULT_CHALLENGE, rewards_object, rewards_path, scenario_scores

    rules = load_challenge(DEFAULT_CHALLENGE)
    rewards = rules.phase(None).scoring.rewards
    post_seed = ["--post-seed", str(rules.seed or 1001)] if rules.reset else []
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for test_id, scenarios in json.loads(table.read_text())["tests"].items():
        if test_id not in tests:
            continue
        for scenario_id, env_file in scenarios.items():
            data_dir = out / test_id / scenario_id
            data_dir.mkdir(parents=True)  # flatland's runner wants it made (FAB's orchestrator makes it too)
            args = ["--data-dir", str(data_dir), "--env-path", str(test_set / env_file), "--ep-id", scenario_id,
                    *POLICY, "--rewards", rewards_path(rewards), *post_seed]
            _policy_runner(args, processes)
            reward, complete = scenario_scores(data_dir, scenario_id, rewards_object(rewards))
            scores.setdefault(test_id, {})[scenario_id] = {"normalized_reward": reward, "percentage_complete": complete}
    return scores


def _policy_runner(args: list[str], process: bool) -> None:
    if process:
        done = subprocess.run([str(RUNNER), *args], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(SUBMISSIONS)})
        if done.returncode != 0:
            raise RuntimeError(f"flatland's policy runner failed: {done.stderr[-2000:]}")
        return
    from flatland.trajectories.policy_runner import generate_trajectory_from_policy

    sys.path.insert(0, str(SUBMISSIONS))
    try:
        generate_trajectory_from_policy.main([*args, "--snapshot-interval", "0"], standalone_mode=False)
    finally:
        sys.path.remove(str(SUBMISSIONS))
