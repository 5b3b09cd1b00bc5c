"""Shared fixtures: real Redis, real agent processes on real sockets, generated test sets.

Every process a fixture starts is stopped by its own pid (or process group) at teardown.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from env_worker.agent_process import AgentProcess, free_tcp_endpoint
from broker.embedded_redis import start_redis
from env_worker.flatland_test_set import generate_test_set
# the real container engine, Compose v2 and the base image, one instance per session for every module
from tests.container_engine import base_image, compose, container_engine  # noqa: F401,E402 (fixtures)

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    return int(free_tcp_endpoint()[1].rsplit(":", 1)[1])


SLOW_DO_NOTHING = """
import time
from agent_bridge import serve
class SlowDoNothing:
    def reset(self, info): pass
    def act(self, obs, info):
        time.sleep({delay})
        return {{}}
serve(SlowDoNothing())
"""


def slow_agent(tmp_path: Path, delay: float = 0.005) -> tuple[str, str]:
    """An agent that answers {} like do-nothing (so scores equal stepping the env directly), but
    `delay` seconds late each step; returns its command and a token unique to its processes."""
    import uuid

    token = f"flateval-agent-{uuid.uuid4().hex[:8]}"
    script = tmp_path / f"{token}.py"
    script.write_text(SLOW_DO_NOTHING.format(delay=delay))
    return f"{sys.executable} {script}", token


@pytest.fixture(autouse=True)
def agents_may_use_tmp_path(request):
    """`flateval run`/`worker` start agents as a user of their own when root: the scripts and marker
    files a test keeps in its tmp_path must be theirs to read and write (the directories above it
    are made passable for them by the sandbox, which exposes the directories a command names)."""
    if "tmp_path" in request.fixturenames:
        request.getfixturevalue("tmp_path").chmod(0o777)


@pytest.fixture(scope="session")
def small_test_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small")
    generate_test_set(out, "small", seed=42)
    return out


@pytest.fixture(scope="session")
def thirty_env_set(small_test_set, tmp_path_factory) -> Path:
    """30 episodes (Test_0..9 x Level_0..2), copies of the small set's envs: cheap to make."""
    out = tmp_path_factory.mktemp("thirty")
    import shutil

    sources = sorted(small_test_set.glob("*/*.pkl"))
    for i in range(30):
        test, level = divmod(i, 3)
        (out / f"Test_{test}").mkdir(exist_ok=True)
        shutil.copy(sources[i % len(sources)], out / f"Test_{test}" / f"Level_{level}.pkl")
    return out


@pytest.fixture(scope="session")
def redis_url():
    """A real redis-server on a free loopback port, for the whole session."""
    server = start_redis(port=free_port())
    yield server.url
    server.stop()


@pytest.fixture
def redis_conn(redis_url):
    import redis

    conn = redis.Redis.from_url(redis_url)
    conn.flushall()
    yield conn
    conn.close()


@pytest.fixture
def start_agent(tmp_path):
    """Start an agent: `start_agent(module="agent_bridge.examples.do_nothing")` or
    `start_agent(script="...python source...")`; returns the running `AgentProcess`."""
    started: list[AgentProcess] = []

    def _start(module: str | None = None, script: str | None = None, timeout_s: float = 30.0,
               handshake: bool = True) -> AgentProcess:
        if script is not None:
            path = tmp_path / f"agent_{len(started)}.py"
            path.write_text(textwrap.dedent(script))
            command = f"{sys.executable} {path}"
        else:
            command = f"{sys.executable} -m {module}"
        agent = AgentProcess(command, tmp_path / f"agent_{len(started)}.log")
        started.append(agent)
        agent.start(timeout_s, handshake=handshake)
        return agent

    yield _start
    for agent in started:
        agent.stop()
    import gc

    gc.collect()  # close the test's dropped agent links now, not whenever: they would keep reconnecting


@pytest.fixture(scope="session")
def fault_report():
    """Rows for docs/reliability.md: `fault_report(fault, what_happens, recovery_s)`.

    Written (JSON lines) to $FLATEVAL_FAULT_REPORT when set; benchmarks/reliability_report.py runs
    the suite that way and renders the table.
    """
    import json
    import os

    rows: list[dict] = []

    def record(fault: str, what_happens: str, recovery_s: float | None = None) -> None:
        rows.append({"fault": fault, "what_happens": what_happens, "recovery_s": recovery_s})

    yield record
    target = os.environ.get("FLATEVAL_FAULT_REPORT")
    if target and rows:
        with open(target, "a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
