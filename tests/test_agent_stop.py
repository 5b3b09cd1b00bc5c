"""An agent stops within 2 s of SIGTERM (issue 24, part 4): waiting for a request, or busy in its
policy, and whether or not it is a container's PID 1 (where a signal without a handler is ignored:
`serve` installs one). The PID-1 case on a real engine is in tests/test_compose_cluster.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import zmq

from agent_bridge import protocol as wire
from tests.conftest import free_port

BUSY_AGENT = """
import sys, time
from agent_bridge import serve

class Busy:
    def reset(self, info):
        print("planning", file=sys.stderr, flush=True)
        time.sleep(600)   # a long plan; also what `except Exception` in a policy cannot swallow

    def act(self, observations, info):
        return {}

serve(Busy())
"""


def _wait_for_log(tmp_path: Path, process: subprocess.Popen, text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in (tmp_path / "agent.log").read_text():
        assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
        time.sleep(0.02)


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    log = (tmp_path / "agent.log").open("w+")
    process = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=log,
                               env={**os.environ, "FLATEVAL_AGENT_BIND": endpoint}, start_new_session=True)
    _wait_for_log(tmp_path, process, "serving on")
    return process, endpoint


def _stop_time(process: subprocess.Popen) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail("the agent ignored SIGTERM for 5 s")
    return time.monotonic() - started


def test_a_waiting_agent_stops_on_sigterm(tmp_path):
    process, _ = _start(tmp_path, "-m", "agent_bridge.examples.random_agent")
    assert _stop_time(process) < 2.0
    assert process.returncode == 0
    assert "stopping: SIGTERM" in (tmp_path / "agent.log").read_text()


def test_a_busy_agent_stops_on_sigterm(tmp_path):
    script = tmp_path / "busy.py"
    script.write_text(textwrap.dedent(BUSY_AGENT))
    process, endpoint = _start(tmp_path, str(script))
    with zmq.Context.instance().socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(wire.encode(wire.episode_start_request(
            episode_id="e", env_file="Test_0/Level_0.pkl", seed=1, env={"n_agents": 1}, observation=None,
            planning_s=600, step_s=5, observations={}, info=None)))
        _wait_for_log(tmp_path, process, "planning")  # in its policy: the signal must end it there too
        assert _stop_time(process) < 2.0
    assert "stopping: SIGTERM" in (tmp_path / "agent.log").read_text()
