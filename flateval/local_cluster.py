"""The processes of `flateval run`'s local cluster: N worker+agent pairs and the embedded Redis,
started and stopped by pid. Imports nothing heavy (no redis, rq, prometheus): the pairs are spawned
before the command loads those, so that the agents' start-up, the longest wait, begins first.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent_bridge.server import SPIN_ENV
from broker.embedded_redis import RedisServer, RedisStartError, socket_url, start_redis
from broker.plan import SubmissionPlan
from core.cpu_share import CpuShare, fair_share
from core.process_identity import live_group_members
from core.settings import LINK_SPIN_ENV, MULTIPROC_ENV, REDIS_URL_ENV, RunSettings
from env_worker.worker_log import is_log_line
from flateval.run_folders import REDIS_DIR

POLL_S = 0.02
MAX_RESPAWNS = 5
AGENT_SPIN_US = 1000
REDIS_WAIT_S = 15.0
"""How long a worker waits for Redis to answer at its start: the pairs are spawned before the
embedded Redis, which has 10 s to start or the run fails (and stops them)."""


class RunError(RuntimeError):
    """The evaluation could not run, or was stopped; the message is one line for the user. Once the
    submission existed, `document` holds its results document (failed or cancelled, with the
    episodes that finished and the agents' output): a run never ends without one."""

    def __init__(self, message: str, document: dict | None = None) -> None:
        super().__init__(message)
        self.document = document


@dataclass
class _Pair:
    index: int
    process: subprocess.Popen
    log: Path
    agent_pidfile: Path
    name: str  # the worker's name: its agent's log is kept under it
    agent_log: Path
    generation: int = 0


@dataclass
class LocalCluster:
    """Everything `flateval run` started; `stop()` ends all of it by pid."""

    run_dir: Path
    redis_server: RedisServer | None = None
    metrics_server: object | None = None
    pairs: list[_Pair] = field(default_factory=list)
    agent_args: list[str] = field(default_factory=list)  # every worker's sandbox options
    agent_image: str | None = None  # agents are containers of this image
    hurry: threading.Event = field(default_factory=threading.Event)  # set: stop without waiting for anyone
    share: CpuShare | None = None  # what each agent gets (None: no sandbox)

    @property
    def agent_cores(self) -> int:
        """Cores per agent: pair i's start at i x this (0: no sandbox)."""
        return self.share.threads if self.share is not None else 0

    @property
    def metrics_dir(self) -> Path:
        """Where every worker of this cluster writes its episode metrics (multiprocess mode)."""
        path = self.run_dir / "metrics"
        path.mkdir(exist_ok=True)
        return path

    def stop_pairs(self, grace_s: float = 5.0) -> None:
        """SIGTERM every worker at once; each stops its agent, and an agent waiting for its next
        episode learns the evaluation is over and may say its last. Returns once the agents are gone
        (their last words are in their logs); the workers end on their own, `stop` reaps them."""
        for pair in self.pairs:
            if pair.process.poll() is None:
                pair.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(_agent_running(pair.agent_pidfile) for pair in self.pairs) and time.monotonic() < deadline \
                and not self.hurry.is_set():
            time.sleep(POLL_S)  # an agent's exit, in another process's care, is no event we can wait on

    def start_redis(self) -> None:
        """Start the embedded Redis in the run's folder, on the socket `embedded_redis_url` names."""
        try:
            self.redis_server = start_redis(directory=str(self.run_dir / REDIS_DIR), appendonly=True)
        except RedisStartError as exc:
            raise RunError(f"cannot start the embedded Redis: {exc}") from None

    @property
    def embedded_redis_url(self) -> str:
        """Where the embedded Redis will listen: known before it starts, so the pairs may come first."""
        return socket_url(self.run_dir / REDIS_DIR)

    def stop(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        self.stop_pairs()
        for pair in self.pairs:
            _terminate(pair.process, hurry=self.hurry)
            _kill_agent_group(pair.agent_pidfile)
        if self.agent_image:  # the containers of workers that could not remove theirs (killed)
            _remove_orphan_containers()
        if self.redis_server:
            self.redis_server.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _terminate(process: subprocess.Popen, grace_s: float = 5.0, hurry: threading.Event | None = None) -> None:
    """SIGTERM, `grace_s` to end (cut short by `hurry`), then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while process.poll() is None and time.monotonic() < deadline and not (hurry and hurry.is_set()):
            time.sleep(POLL_S)  # a child's exit or a signal's flag, whichever comes first
        if process.poll() is None:
            process.kill()
            process.wait()


def _agent_running(pidfile: Path) -> bool:
    try:
        return live_group_members(int(pidfile.read_text())) > 0
    except (FileNotFoundError, ValueError):
        return False


def _kill_agent_group(pidfile: Path) -> None:
    """The agent runs in its own process group; the worker stops it, this is the backstop."""
    try:
        os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        pass


def _remove_orphan_containers() -> None:
    from env_worker.container import EngineError, find_engine
    from env_worker.container.agent import remove_orphans

    try:
        remove_orphans(find_engine())
    except EngineError:
        pass


def last_line(path: Path) -> str:
    """A worker's last words (its error), its log lines (start, episodes) left out."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines()
                 if line.strip() and not is_log_line(line)]
    except FileNotFoundError:
        return ""
    return lines[-1] if lines else ""


def _spawn_pair(cluster: LocalCluster, settings: RunSettings, redis_url: str, queue: str, index: int,
                generation: int = 0) -> _Pair:
    """One `flateval worker` that starts and supervises one agent; it writes the agent's pid to
    its pidfile once the agent answered its handshake (our readiness signal)."""
    from env_worker.sandbox.launcher import LIFELINE_ENV

    tag = f"pair-{index}" + (f"-r{generation}" if generation else "")
    log = cluster.run_dir / f"{tag}.worker.log"
    pidfile = cluster.run_dir / f"{tag}.agent.pid"
    agent_log = cluster.run_dir / f"pair-{index}.agent.log"
    name = f"{tag}-{queue}"
    args = [sys.executable, "-m", "flateval", "worker", "--queue", queue, "--agent-log", str(agent_log),
            "--agent-pidfile", str(pidfile), "--name", name, "--redis-wait", f"{REDIS_WAIT_S:g}",
            "--startup-timeout", str(settings.agent_startup_timeout_s)] + (["--curve"] if settings.curve else [])
    args += (["--agent-command", settings.agent_command] if settings.agent_command else []) + (
        ["--agent-image", settings.agent_image] if settings.agent_image else [])
    # the workers themselves are left to the scheduler: pinned beside their agents they ran slower
    # (docs/performance.md, "Agents that share cores")
    args += cluster.agent_args + (["--agent-cpu-offset", str(index * cluster.agent_cores)] if cluster.agent_cores else [])
    # the Redis URL by environment, not on a command line that any process may read in /proc
    env = {**os.environ, MULTIPROC_ENV: str(cluster.metrics_dir), **agent_spin_env(settings.workers),
           **link_spin_env(settings.workers),
           REDIS_URL_ENV: redis_url, LIFELINE_ENV: str(os.getpid())}
    with open(log, "wb") as out:  # a session of its own: a Ctrl-C reaches `flateval run` alone, which cancels
        # the submission first and then stops the workers (the lifeline ends them should it die)
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    return _Pair(index, process, log, pidfile, name, agent_log, generation)


def private_paths(plan: SubmissionPlan) -> list[str]:
    """What the agents must not see of the submission: the test set, the recordings."""
    return [path for path in (plan.test_set, plan.template.record_dir) if path]


def check_hideable(settings: RunSettings, plan: SubmissionPlan) -> None:
    """Refuse, before anything starts, a test set the sandbox cannot hide: one holding the agent's
    own files (its command's, its working directory). Each worker checks again before each start."""
    from env_worker.sandbox.box import SandboxError, absolute_command, agents_dir, unhideable

    if not settings.sandbox or settings.agent_image:  # a container is given nothing of the host's files
        return
    try:
        problem = unhideable(private_paths(plan), absolute_command(settings.agent_command), agents_dir())
    except SandboxError as exc:
        raise RunError(str(exc)) from None
    if problem:
        raise RunError(problem)


def sandbox_args(settings: RunSettings, plan: SubmissionPlan, run_dir: Path) -> tuple[list[str], CpuShare | None]:
    """The workers' sandbox options: the challenge's agent resources with the run's overrides (the
    CPUs as each agent's fair share of this machine, `core.cpu_share`), the run directory and the
    test set hidden; and that share (None without a sandbox)."""
    if not settings.sandbox:
        return ["--no-sandbox"], None
    explicit = settings.agent_cpus is not None
    share = fair_share(settings.agent_cpus if explicit else plan.agent_resources.cpu, settings.workers,
                       explicit=explicit)
    args = ["--agent-cpus", f"{share.cpus:g}", "--agent-memory", settings.agent_memory or plan.agent_resources.memory,
            "--agent-disk", settings.agent_disk or plan.agent_resources.disk, "--agent-hide", str(run_dir)]
    if settings.agent_pids is not None:
        args += ["--agent-pids", str(settings.agent_pids)]
    for private in private_paths(plan):
        args += ["--agent-hide", private]
    return args, share


def sandbox_line(log: Path, timeout_s: float = 5.0) -> str | None:
    """The line a worker prints once its agent runs, saying which fences are in force."""
    from env_worker.sandbox.report import PREFIX

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = [line for line in log.read_text(errors="replace").splitlines() if line.startswith(PREFIX)]
        except FileNotFoundError:
            found = []
        if found or time.monotonic() > deadline:
            return found[0] if found else None
        time.sleep(POLL_S)  # the worker prints it right after writing the pidfile we waited for


def agent_spin_env(workers: int) -> dict[str, str]:
    """Let agents busy-wait for their next request when every process of every pair has a core of
    its own: a blocked agent takes tens of microseconds to wake, a large part of a fast agent's
    round trip (measured: ~120 -> ~85 us per step on 2 cores). An explicit setting wins."""
    if SPIN_ENV in os.environ or workers * 2 > (os.cpu_count() or 1):
        return {}
    return {SPIN_ENV: str(AGENT_SPIN_US)}


def link_spin_env(workers: int) -> dict[str, str]:
    """Workers busy-wait for their agent's reply only when every process of every pair has a core of
    its own: with more processes than cores the spin takes the agents' time (measured: 2 pairs of a
    tree-observation script on 2 cores ran no faster than 1 pair with it, and 1.4x faster without)."""
    if LINK_SPIN_ENV in os.environ or workers * 2 <= (os.cpu_count() or 1):
        return {}
    return {LINK_SPIN_ENV: "0"}


def start_pairs(cluster: LocalCluster, settings: RunSettings, redis_url: str, queue: str) -> None:
    for index in range(settings.workers):
        cluster.pairs.append(_spawn_pair(cluster, settings, redis_url, queue, index))


def wait_pairs_ready(cluster: LocalCluster, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for pair in cluster.pairs:
            if pair.process.poll() is not None:
                reason = last_line(pair.log) or f"worker exited with code {pair.process.returncode}"
                raise RunError(reason.removeprefix("flateval: "))
        if all(pair.agent_pidfile.exists() for pair in cluster.pairs):
            return
        if time.monotonic() > deadline:
            raise RunError(f"agents did not become ready within {timeout_s:g} s")
        time.sleep(POLL_S)  # polling child processes for readiness


def respawn_dead_pairs(cluster: LocalCluster, settings: RunSettings, redis_url: str, queue: str) -> None:
    """A worker that died (killed, crashed) is replaced, agent and all; its episode is re-run by
    the reaper. A pair that keeps dying is given up after `MAX_RESPAWNS`."""
    for i, pair in enumerate(cluster.pairs):
        if pair.process.poll() is None or pair.generation >= MAX_RESPAWNS:
            continue
        _kill_agent_group(pair.agent_pidfile)
        cluster.pairs[i] = _spawn_pair(cluster, settings, redis_url, queue, pair.index, pair.generation + 1)
