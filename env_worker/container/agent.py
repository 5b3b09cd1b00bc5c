"""One agent container: a participant's image run as the agent, fenced in as in the cluster.

`AgentContainer` is an `AgentProcess` whose process is the engine CLI's ``run``, attached (its
output, the container's, goes to the agent's log as a command's does); start, handshake, restart,
output tail and pidfile are the process's. What differs is built here:

- the fences: a non-root user (the image's own when it names one, else a uid of its own: flateval's
  uid scheme as root, flateval's user otherwise), a read-only root with a small writable ``/tmp``
  (also HOME and TMPDIR), no capabilities, no-new-privileges, no network at all (``--network
  none``: its one link to its worker is an ``ipc://`` socket in a private folder mounted at
  ``/flateval/link``), the challenge's cores (cpuset), CPU quota, memory (no swap) and process
  limit, an init as PID 1 that passes SIGTERM on, and nothing of this host but what it mounts
  read-only: ``agent_bridge`` (in the image's working directory) and its dependencies
  (`env_worker.container.bridge`);
- the environment: the image's own (POLICY, OBS_BUILDER, its PATH) plus its bind endpoint, HOME,
  TMPDIR and thread pools sized to its cores; nothing of ours;
- the stop: SIGTERM to the container (its init passes it on), a grace, then the engine removes it.

A worker killed with SIGKILL cannot stop its container itself: the CLI it attached gets SIGTERM as
its parent dies and passes it on, so the container stops as after a stop; every container is
labelled with its worker, and the next worker on this host (and `flateval run`'s end) removes the
stopped containers of dead workers.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
from pathlib import Path
from typing import BinaryIO

from agent_bridge.server import BIND_ENV, CURVE_SECRET_ENV, SPIN_ENV
from core.cpu_share import thread_variables
from env_worker.agent_process import AgentProcess, AgentStartError
from env_worker.container.bridge import DEPS_ENV, BridgeDepsError, bridge_deps_dir
from env_worker.container.engine import LABEL, Engine, EngineError, ImageConfig
from env_worker.sandbox import AgentUsage, SandboxSpec
from env_worker.sandbox import cgroups
from env_worker.sandbox.box import BreachWatch, agent_uid, agents_dir, private_dir, remove_stale_dirs
from env_worker.sandbox.launcher import die_with_parent
from env_worker.sandbox.spec import format_bytes

LINK_DIR = "/flateval/link"
DEPS_DIR = "/flateval/deps"
_names = itertools.count()
_orphans_removed = False


def owner() -> str:
    """This worker, as the label of its containers says it."""
    return f"{socket.gethostname()}:{os.getpid()}"


class AgentContainer(AgentProcess):
    """One agent instance: `image` (its own command, or `command` as the container's arguments, after
    the image's entrypoint as ``docker run IMAGE ARGS`` would) under `sandbox`'s limits."""

    def __init__(self, image: str, command: str | None, log_path: str | Path, engine: Engine,
                 sandbox: SandboxSpec, curve: bool = False, pidfile: str | Path | None = None) -> None:
        global _orphans_removed
        try:
            self.image_config: ImageConfig = engine.image(image)
            self.deps = bridge_deps_dir()
        except (EngineError, BridgeDepsError) as exc:
            raise AgentStartError(str(exc)) from None
        parent = agents_dir()
        if not _orphans_removed:
            _orphans_removed = True
            remove_stale_dirs(parent)
            remove_orphans(engine)
        self.engine = engine
        self.limits = sandbox
        self.args = shlex.split(command) if command else []
        self.dir = private_dir(parent)
        link = self.dir / "link"
        link.mkdir()
        link.chmod(0o777)  # whatever uid the image runs as binds its socket here; only it sees the folder
        self.uid = None if not self.image_config.runs_as_root else agent_uid() or os.geteuid()
        self.cores = sandbox.cores(cgroups.cores_in_use())
        self.name = ""
        self.cgroup: cgroups.AgentCgroup | None = None  # a view of the engine's cgroups, once it answered
        self._watch = BreachWatch(sandbox)
        described = f"image {image} " + (f"with {command}" if command else "(its own command)")
        super().__init__(described, log_path, bind=f"ipc://{LINK_DIR}/agent.sock", connect=f"ipc://{link}/agent.sock",
                         curve=curve, pidfile=pidfile)

    # ------------------------------------------------------------------------ start

    def run_args(self) -> list[str]:
        """The engine's ``run`` arguments (without the CLI), for a fresh container name."""
        spec, config = self.limits, self.image_config
        quota = min(spec.cpus, len(self.cores))  # an engine refuses more CPUs than the machine has
        env = {BIND_ENV: self.bind, DEPS_ENV: DEPS_DIR, "HOME": "/tmp", "TMPDIR": "/tmp",
               **thread_variables(len(self.cores), os.environ)}  # the share's threads unless the host sizes them
        if os.environ.get(SPIN_ENV):
            env[SPIN_ENV] = os.environ[SPIN_ENV]
        args = ["run", "--name", self.name, "--label", f"{LABEL}={owner()}", "--pull", "never",
                "--init", "--read-only", "--tmpfs", f"/tmp:rw,nosuid,nodev,size={spec.disk_bytes}",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "none", "--ipc", "private",
                "--cpuset-cpus", ",".join(map(str, self.cores)), "--cpus", f"{quota:g}",
                "--memory", str(spec.memory_bytes), "--memory-swap", str(spec.memory_bytes),
                "--pids-limit", str(spec.pids), "--log-driver", "none",
                "-v", f"{self.dir / 'link'}:{LINK_DIR}", "-v", f"{self.deps}:{DEPS_DIR}:ro",
                "-v", f"{bridge_package()}:{Path(config.workdir) / 'agent_bridge'}:ro"]
        if self.uid is not None:
            args += ["--user", f"{self.uid}:{self.uid}"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        if self._curve_secret:
            args += ["-e", CURVE_SECRET_ENV]  # its value from our environment, not on a command line
        return [*args, config.image, *self.args]

    def _launch(self, log: BinaryIO) -> subprocess.Popen:
        self.name = f"flateval-agent-{os.getpid()}-{next(_names)}"
        self.cgroup, self._watch = None, BreachWatch(self.limits)
        env = {**os.environ, CURVE_SECRET_ENV: self._curve_secret} if self._curve_secret else None
        worker = os.getpid()
        try:  # should we be SIGKILLed, the CLI gets SIGTERM and passes it to the container (--sig-proxy)
            return subprocess.Popen([self.engine.cli, *self.run_args()], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=lambda: die_with_parent(worker, signal.SIGTERM))
        except OSError as exc:
            raise AgentStartError(f"cannot run {self.engine.cli}: {exc.strerror or exc}") from None

    def mark_ready(self) -> None:
        """As a process's, and find the container's cgroups (through its init's pid) for the readings."""
        super().mark_ready()
        pid = (self.inspect().get("State") or {}).get("Pid")
        self.cgroup = cgroups.AgentCgroup.of_process(pid) if pid else None

    def start_hint(self) -> str | None:
        return (f"the container runs as {self.user()} with a read-only root, /tmp writable, no network; "
                f"`docker run --rm -it {self.image_config.image} sh` to look inside")

    # ------------------------------------------------------------------------ while it runs, and after

    def user(self) -> str:
        return f"uid {self.uid}" if self.uid is not None else f"{self.image_config.user} (the image's user)"

    def inspect(self) -> dict:
        """The engine's record of the current container ({} when there is none)."""
        if not self.name:
            return {}
        done = self.engine.run("container", "inspect", self.name, check=False)
        try:
            return json.loads(done.stdout)[0] if done.returncode == 0 else {}
        except (ValueError, IndexError):
            return {}

    def sandbox_line(self) -> str:
        """The fences the engine says it applied to the running container, in one line."""
        host = self.inspect().get("HostConfig") or {}
        if not host:
            return f"sandbox: container {self.image_config.image} on {self.engine.describe()}: not running"
        cpus = host.get("NanoCpus", 0) / 1e9
        asked = f" of {self.limits.cpus:g} asked" if cpus < self.limits.cpus else ""
        items = [
            f"user {self.user()}",
            "root read-only" if host.get("ReadonlyRootfs") else "root WRITABLE",
            f"tmp {format_bytes(self.limits.disk_bytes)}",
            "capabilities none" if "ALL" in (host.get("CapDrop") or []) else "capabilities DEFAULT",
            "no-new-privileges" if any("no-new-privileges" in o for o in host.get("SecurityOpt") or []) else "",
            f"network {host.get('NetworkMode')} (link: ipc socket)",
            f"cpus {host.get('CpusetCpus')}{asked} (cpuset)", f"quota {cpus:g} cpus",
            f"memory {format_bytes(host.get('Memory') or 0)} (no swap)" if host.get("Memory") else "memory UNLIMITED",
            f"pids {host.get('PidsLimit')}", "init (SIGTERM passed on)" if host.get("Init") else "",
            "mounts (agent_bridge and its deps read-only, nothing else of this host)",
        ]
        return (f"sandbox: container {self.image_config.image} on {self.engine.describe()}: "
                + ", ".join(item for item in items if item))

    def breach(self) -> str | None:
        """The limit broken since the last call: from the container's cgroup counters while it
        lives, else from the engine's word that it was OOM-killed."""
        named = self._watch.check(self.cgroup)
        if named or self.process is None or self.process.poll() is None:
            return named
        if (self.inspect().get("State") or {}).get("OOMKilled"):
            return f"memory limit {format_bytes(self.limits.memory_bytes)} exceeded"
        return None

    def usage(self, reset_peak: bool = False) -> AgentUsage:
        """CPU seconds and peak memory from the container's cgroups (as a sandboxed process's)."""
        measured = self.cgroup.usage(reset_peak) if self.cgroup is not None else None
        return measured or AgentUsage(None, None, "none")

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM to the container (its init passes it to the agent), `grace_s` to exit, then the
        engine kills and removes it."""
        if self.process is None:
            return
        self.engine.run("kill", "--signal", "TERM", self.name, check=False)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        self.engine.run("rm", "-f", self.name, check=False)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:  # the CLI hangs on a container that is gone
            self.process.kill()
            self.process.wait()
        self._stop_keeper()
        self.process = None


def remove_orphans(engine: Engine) -> int:
    """Remove the agent containers of this host's dead workers."""
    return engine.remove_orphans(socket.gethostname(), cgroups.alive)


def bridge_package() -> Path:
    import agent_bridge

    return Path(agent_bridge.__file__).resolve().parent
