"""What a host sees without reading Redis (issue 18): `flateval worker` logs a start line and one line
per episode, as a stock `rq worker` does; `flateval status` shows the running score, timeouts and
errors, elapsed time and the deadline left; /metrics listens on loopback unless told; the --help
texts name FLATEVAL_REDIS_URL and what each test-set preset makes."""

from __future__ import annotations

import re
import subprocess
import urllib.request

import pytest
from click.testing import CliRunner

from broker import store
from broker.exporter import metrics_registry, serve_metrics
from core.settings import RunSettings
from env_worker.flatland_test_set import PRESETS
from flateval.cli import main
from flateval.progress import status_line
from scoring.aggregate import primary_score
from tests.conftest import free_port
from tests.test_run import DO_NOTHING, FLATEVAL, flateval

TIME = r"\d\d:\d\d:\d\d"


def test_worker_lines_and_status_follow_a_submission(redis_url, redis_conn, small_test_set, tmp_path):
    sid = flateval("submit", "--redis", redis_url, "--test-set", str(small_test_set)).stdout.strip()
    queued = flateval("status", sid, "--redis", redis_url)
    assert queued.returncode == 0, queued.stderr
    assert re.fullmatch(rf"{sid}  queued  0/4 episodes  mean NR -  timeouts 0  errors 0  elapsed \d+\.\ds  "
                        r"deadline in 7h59m\n", queued.stdout), queued.stdout

    port = free_port()
    worker = subprocess.run([*FLATEVAL, "worker", "--redis", redis_url, "--queue", f"flateval-{sid}", "--burst",
                             "--agent-command", DO_NOTHING, "--agent-log", str(tmp_path / "agent.log"),
                             "--name", "w1", "--metrics-port", str(port)],
                            capture_output=True, text=True, timeout=240)
    assert worker.returncode == 0, worker.stderr
    lines = [line for line in worker.stderr.splitlines() if not line.startswith("sandbox: ")]
    assert len(lines) == len(worker.stderr.splitlines()) - 1  # the agent's fences, in one line (docs/sandbox.md)
    assert re.fullmatch(rf"{TIME} worker w1 starting: queues flateval-{sid}; agent (tcp://127\.0\.0\.1:\d+|ipc://\S+) \(started "
                        rf"with: {re.escape(DO_NOTHING)}\); metrics http://127\.0\.0\.1:{port}/metrics", lines[0])
    assert re.fullmatch(rf"{TIME} w1: the agent answered its handshake; waiting for episodes", lines[1])
    episodes = [line for line in lines if re.fullmatch(rf"{TIME} w1: {sid} Test_\d/Level_\d\.pkl completed in "
                                                       r"\d+\.\d\d s", line)]
    assert len(episodes) == 4 and len(lines) == 6, worker.stderr  # nothing else: no per-step chatter

    finished = flateval("status", sid, "--redis", redis_url)
    score = primary_score(store.get_results(redis_conn, sid))
    assert re.fullmatch(rf"{sid}  finished  4/4 episodes  mean NR {re.escape(f'{score:+.4f}')}  timeouts 0  "
                        r"errors 0  elapsed \d+\.\ds\n", finished.stdout), finished.stdout


def _record(**values) -> store.Submission:
    values = {"n_episodes": 8, "planned_episodes": 8, "enqueued_at": 1000.0, "deadline_at": 1000.0 + 3600, **values}
    return store.Submission(id="s1", **values)


RESULTS = [{"outcome": "completed", "normalized_return": -0.5}, {"outcome": "timeout", "normalized_return": -1.0},
           {"outcome": "agent_error", "normalized_return": -1.0}, {"outcome": "env_error", "normalized_return": None}]


@pytest.mark.parametrize("record,now,expected", [
    (_record(status="running"), 1072.0,
     "s1  running  4/8 episodes  mean NR -0.8333  timeouts 1  errors 2  elapsed 1m12s  deadline in 58m48s"),
    (_record(status="running"), 4700.0, "s1  running  4/8 episodes  mean NR -0.8333  timeouts 1  errors 2  "
                                        "elapsed 1h01m  deadline passed"),
    (_record(status="finished", n_episodes=4, finished_at=1030.5, stopped_by="completion gate after Test_0 (mean "
                                                                             "0.00 < 0.25)"), 9999.0,
     "s1  finished  4/4 episodes (of 8 planned)  mean NR -0.8333  timeouts 1  errors 2  elapsed 30.5s  "
     "stopped by: completion gate after Test_0 (mean 0.00 < 0.25)"),
    (_record(status="failed", failed_at=1400.0, error="10 consecutive timeouts: the evaluation was stopped"), 9999.0,
     "s1  failed  4/8 episodes  no score  timeouts 1  errors 2  elapsed 6m40s  "
     "(10 consecutive timeouts: the evaluation was stopped)"),
])
def test_status_line(record, now, expected):
    assert status_line(record, RESULTS, now) == expected


def test_metrics_listen_on_loopback_unless_told(tmp_path):
    assert RunSettings(agent_command="x").metrics_host == "127.0.0.1"
    port = free_port()
    server, thread = serve_metrics(port, metrics_registry())
    try:
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


REDIS_COMMANDS = ["run", "worker", "exporter", "submit", "status", "results", "cancel", "report"]


@pytest.mark.parametrize("command", REDIS_COMMANDS)
def test_every_redis_option_names_its_environment_variable(command):
    shown = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert shown.exit_code == 0
    (line,) = [line for line in shown.output.splitlines() if line.strip().startswith("--redis")]
    assert "$FLATEVAL_REDIS_URL" in line


def test_metrics_host_is_an_option_where_metrics_are_served():
    for command, flag in (("run", "--metrics-host"), ("worker", "--metrics-host"), ("exporter", "--host")):
        shown = CliRunner().invoke(main, [command, "--help"], terminal_width=200).output
        assert re.search(rf"{flag}\b.*\[default: 127\.0\.0\.1\]", shown), (command, shown)


def test_generate_test_set_help_says_how_many_episodes_each_preset_makes(tmp_path):
    shown = " ".join(CliRunner().invoke(main, ["generate-test-set", "--help"], terminal_width=200).output.split())
    for name, tests in PRESETS.items():
        assert f"{name}: {sum(t.levels for t in tests)} episodes" in shown
    assert "small: 4 episodes" in shown and "neurips2020-debug: 28 episodes" in shown
