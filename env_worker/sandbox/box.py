"""One agent's sandbox, as `env_worker.agent_process.AgentProcess` uses it.

A `Sandbox` lives as long as its `AgentProcess`: it owns a private directory (``ipc/``, the agent's
link, stable across restarts; ``home/``, its working directory, HOME and TMPDIR, emptied at every
start) and, when flateval runs as root, a uid of its own, with no passwd entry, no groups and no
file anywhere but its home. Each start makes a fresh cgroup, runs `env_worker.sandbox.launcher`
and keeps the `Report` of what is in force; each stop kills what is left in the cgroup and removes it.
"""

from __future__ import annotations

import atexit
import getpass
import itertools
import marshal
import os
import select
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Mapping

from core.settings import TEST_SET_DIR_ENV
from env_worker.sandbox import cgroups, launcher
from env_worker.sandbox.environment import sandboxed_environment
from env_worker.sandbox.home_seed import seed_home
from env_worker.sandbox.report import Report
from env_worker.sandbox.spec import SandboxSpec, format_bytes, format_cores
from env_worker.sandbox.usage import AgentUsage

AGENT_UID_BASE = 1_800_000_000
"""Agent uids are this plus 16 x the worker's pid plus a counter: unique among the live workers of
a machine, far above any real user's, below 2^31."""

REPORT_TIMEOUT_S = 10.0
_counter = itertools.count()


def agent_uid() -> int | None:
    """A fresh uid for one agent when we are root (None otherwise: it runs as we do)."""
    return AGENT_UID_BASE + os.getpid() * 16 + next(_counter) % 16 if os.geteuid() == 0 else None


def private_dir(parent: Path) -> Path:
    """A fresh private directory for one agent (named <worker pid>-<random>, so that
    `remove_stale_dirs` finds it once its worker is gone), removed when we exit."""
    path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
    atexit.register(shutil.rmtree, path, True)
    return path


class BreachWatch:
    """The limits an agent's cgroup says it broke since the last look (its counters only grow)."""

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.seen: dict[str, int] = {}

    def check(self, cgroup: cgroups.AgentCgroup | None) -> str | None:
        events = cgroup.events() if cgroup else {}
        new = {key: value - self.seen.get(key, 0) for key, value in events.items()}
        self.seen = events
        if new.get("oom_kill"):
            return f"memory limit {format_bytes(self.spec.memory_bytes)} exceeded"
        if new.get("pids_max"):
            return f"process limit {self.spec.pids} reached"
        return None


class SandboxError(RuntimeError):
    """The sandbox could not be built; the message is one line for the user."""


def agents_dir() -> Path:
    """The parent of every agent's private directory on this machine, flateval's own (0711 as root:
    an agent may pass through to its own directory but list nothing)."""
    root = Path(tempfile.gettempdir())
    if len(str(root)) > 40:  # keep ipc:// paths far below the 107 bytes a unix socket path may have
        root = Path("/tmp")
    euid = os.geteuid()
    path = root / ("flateval-agents" if euid == 0 else f"flateval-agents-{euid}")
    mode = 0o711 if euid == 0 else 0o700
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != euid or info.st_mode & 0o022:
        raise SandboxError(f"{path} is not flateval's (owner uid {info.st_uid}, mode {oct(info.st_mode)}): remove it")
    os.chmod(path, mode)
    return path


def remove_stale_dirs(parent: Path) -> None:
    """Private directories of agents whose worker was killed (named <worker pid>-<random>)."""
    for path in parent.iterdir():
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and not cgroups.alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


_stale_removed = False


def always_hidden() -> list[str]:
    """Hidden from every agent: the test set a worker is told of, and /run (the host's service
    sockets: a unix socket needs no network). The command line adds the bundled test sets."""
    paths = ["/run"]
    if os.environ.get(TEST_SET_DIR_ENV):
        paths.append(os.environ[TEST_SET_DIR_ENV])
    return paths


def absolute_command(command: str, cwd: str | None = None) -> str:
    """`command` with its relative paths made absolute (against `cwd`, default ours), since the agent
    starts in its own directory: ``.venv/bin/python my_agent.py`` runs as before. Only a plain list of
    words is rewritten (no shell operators, variables or quotes to keep); a word is a path when it
    names something that exists, is no option, is not the module after ``-m``, and, for the program
    itself, has a slash (``python`` is looked up in PATH, not here)."""
    cwd = cwd or os.getcwd()
    if any(c in command for c in "|&;<>()$`\\\"'*?[]{}~\n"):
        return command
    words = command.split()
    program = next((i for i, w in enumerate(words) if "=" not in w), 0)
    out = []
    for i, word in enumerate(words):
        relative = not word.startswith(("-", "/")) and "=" not in word and (i == 0 or words[i - 1] != "-m")
        if relative and (i != program or "/" in word) and os.path.exists(os.path.join(cwd, word)):
            word = shlex.quote(os.path.abspath(os.path.join(cwd, word)))
        out.append(word)
    return " ".join(out)


_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def needed_paths(command: str, env: dict[str, str], files_in: tuple[str, ...] = ()) -> list[str]:
    """What an agent with a uid of its own must be able to reach: the Python running us (often in a
    0700 home, e.g. pyenv's), the agent_bridge package, the directories the command and PYTHONPATH
    name (in the environment or assigned in the command). Each is reached through the directories above it, shown only as far as needed: the package
    itself, not the checkout it lives in (a clone in a 0700 ``mktemp -d`` folder shows the agent its
    ``agent_bridge/`` and ``.venv/``, nothing else). A file stays a file, not its directory, where
    that directory is one of `files_in` (``python /tmp/agent.py`` needs that file of /tmp, not /tmp)."""
    import agent_bridge

    candidates = [os.path.dirname(os.path.realpath(sys.executable)), sys.base_prefix, sys.prefix, sys.exec_prefix,
                  str(Path(agent_bridge.__file__).resolve().parent)]
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    candidates += [w for w in words if w.startswith("/")]
    assigned = [w.split("=", 1)[1] for w in words if _ASSIGNMENT.match(w)]  # PYTHONPATH=/sub python -m ...
    for value in [*assigned, env.get("PYTHONPATH", "")]:
        candidates += [p for p in value.split(os.pathsep) if p.startswith("/")]
    found = []
    for path in map(os.path.realpath, candidates):
        if os.path.isfile(path) and os.path.dirname(path) not in files_in:
            path = os.path.dirname(path)
        if os.path.exists(path) and path not in found:
            found.append(path)
    return found


def unhideable(hide: Iterable[str], command: str, own_dir: str | os.PathLike,
               env: Mapping[str, str] | None = None) -> str | None:
    """One line when a path the agent must not see (the test set, above all) holds the agent's own
    files: its private directory (where it runs), what its command names, its Python, its PYTHONPATH.
    Hiding that path would hide the agent from itself, and showing it would show the test set: the
    agent must not start. None when every path can be hidden."""
    own = [os.path.realpath(own_dir), *needed_paths(command, os.environ if env is None else env)]
    for path in hide:
        root = os.path.realpath(path).rstrip("/") + "/"
        inside = next((p for p in own if (p.rstrip("/") + "/").startswith(root)), None)
        if inside is not None:
            return (f"the sandbox cannot hide {path} from the agent: it holds the agent's own files ({inside}); "
                    f"keep the agent's command and files out of it")
    return None


class Sandbox:
    def __init__(self, spec: SandboxSpec, endpoint: str | None = None) -> None:
        """`endpoint`: where the agent must listen, when someone else decided (then a TCP endpoint
        keeps the agent in the host's network); default: an ipc:// socket in its private directory."""
        global _stale_removed
        self.spec = spec
        self.uid = agent_uid()
        parent = agents_dir()
        if not _stale_removed:
            _stale_removed = True
            remove_stale_dirs(parent)
            cgroups.remove_stale()
        self.agents_dir = parent
        self.dir = private_dir(parent)
        self.home = self.dir / "home"
        ipc = self.dir / "ipc"
        self._private(ipc)
        (self.dir / "disk").mkdir(mode=0o700)  # where the launcher mounts the agent's disk (its namespace only)
        if self.uid is not None:
            os.chmod(self.dir, 0o711)
        self.endpoint = endpoint or f"ipc://{ipc}/agent.sock"
        self.cores = spec.cores(cgroups.cores_in_use())
        self.cgroup: cgroups.AgentCgroup | None = None
        self.report: Report | None = None
        self._watch = BreachWatch(spec)
        self._rlimits: dict[str, int] = {}

    def _private(self, path: Path) -> None:
        path.mkdir(mode=0o700)
        if self.uid is not None:
            os.chown(path, self.uid, self.uid)

    def _fresh_home(self) -> None:
        """Empty but for the host's font list (`home_seed`); the launcher carries it into the agent's disk."""
        shutil.rmtree(self.home, ignore_errors=True)
        self._private(self.home)
        self._private(self.home / "tmp")
        seed_home(self.home, self.uid)

    # ------------------------------------------------------------------------ start

    def _limits(self, report: Report) -> None:
        """Make the agent's cgroup and write its limits; what cannot be had falls back to rlimits."""
        spec = self.spec
        self.cgroup = cgroups.AgentCgroup(cgroups.cgroup_name())
        self._watch = BreachWatch(spec)
        self._rlimits = {}

        def attempt(key: str, apply, detail) -> bool:
            try:
                source = apply()
            except OSError as exc:
                report.put(key, reason=exc.strerror or str(exc))
                return False
            report.put(key, detail(source))
            return True

        cores = format_cores(self.cores) + (f" of {spec.cpus:g} asked" if len(self.cores) < spec.cpus else "")
        attempt("cpus", lambda: self.cgroup.limit_cores(self.cores), lambda s: f"{cores} (cpuset)")
        attempt("quota", lambda: self.cgroup.limit_cpu(spec.cpus),
                lambda s: f"{spec.cpus:g} cpu{'' if spec.cpus == 1 else 's'} ({s})")
        memory = format_bytes(spec.memory_bytes)
        if not attempt("memory", lambda: self.cgroup.limit_memory(spec.memory_bytes), lambda s: f"{memory} ({s})"):
            self._rlimits["AS"] = spec.memory_bytes
        if not attempt("pids", lambda: self.cgroup.limit_pids(spec.pids), lambda s: f"{spec.pids} ({s})") \
                and self.uid is not None:
            self._rlimits["NPROC"] = spec.pids  # counted per uid: this agent's processes only

    def launch(self, command: str, bind: str, curve_secret: str | None, log: BinaryIO) -> subprocess.Popen:
        """Start `command` fenced in; returns the launcher's process (the agent, as its supervisor
        sees it). Raises `SandboxError` when the launcher cannot build the sandbox."""
        command = absolute_command(command)
        hide = [*always_hidden(), *self.spec.hide]
        problem = unhideable(hide, command, self.dir)  # PYTHONPATH: ours, as the agent's environment has it
        if problem:
            raise SandboxError(problem)
        self._fresh_home()
        socket_link = self.dir / "ipc" / "agent.sock"
        if socket_link.is_symlink():  # the last start's, into a namespace that is gone
            socket_link.unlink()
        report = Report()
        self._limits(report)
        env = sandboxed_environment(bind, str(self.home), len(self.cores), curve_secret)
        status_read, status_write = os.pipe()
        config = {
            "parent": os.getpid(), "command": command, "home": str(self.home), "uid": self.uid, "gid": self.uid,
            "network": self.endpoint.startswith("ipc://"), "agents_dir": str(self.agents_dir),
            "own_dir": str(self.dir), "hide": hide, "status_fd": status_write,
            "cgroup_procs": self.cgroup.procs_files(), "cpus": self.cores, "rlimits": self._rlimits,
            "reachable": needed_paths(command, env) if self.uid is not None else [],
            "disk": self.spec.disk_bytes, "keep": needed_paths(command, env, files_in=launcher.PLACES),
        }
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", launcher.__file__, marshal.dumps(config).hex()], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, pass_fds=(status_write,))
        except OSError:
            os.close(status_read)
            self.stopped()
            raise
        finally:
            os.close(status_write)
        try:
            launched = self._read_status(status_read)
        finally:
            os.close(status_read)
        if "error" in launched or "on" not in launched:
            process.kill()
            process.wait()
            self.stopped()
            raise SandboxError(launched.get("error") or "the sandbox launcher exited before starting the agent")
        if "disk" in launched["on"]:  # its socket is on its disk, in its mount namespace: reach it there
            socket_link.symlink_to(f"/proc/{process.pid}/root{socket_link}")
        self.report = self._compose(report, launched["on"], launched["off"])
        return process

    @staticmethod
    def _read_status(fd: int) -> dict:
        """The launcher's status (a marshalled dict), read until its write end closes: the agent's
        exec, or the launcher's end."""
        deadline = time.monotonic() + REPORT_TIMEOUT_S
        data = b""
        while time.monotonic() < deadline:
            if select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                data += chunk
        try:
            return marshal.loads(data) if data else {}
        except (EOFError, ValueError, TypeError):
            return {"error": "the sandbox launcher's status is garbled"}

    def _compose(self, report: Report, on: dict, off: dict) -> Report:
        """The start's report: our cgroup limits, corrected by what the launcher achieved."""
        if self.uid is None:
            report.put("user", reason=f"flateval runs as {getpass.getuser()}, not root: the agent runs as that user")
        else:
            report.put("user", str(self.uid) if "user" in on else None, "the uid was not changed")
        if not self.endpoint.startswith("ipc://"):
            report.put("netns", reason=f"the agent must listen on {self.endpoint}")
        else:
            report.put("netns", f"({on['netns']})" if on.get("netns") else "" if "netns" in on else None,
                       off.get("netns"))
        report.put("pidns", "(dies with its worker)" if on.get("pid1") else None,
                   off.get("pidns") or "the agent is not PID 1 of its own pid namespace")
        partial = "; ".join(f"{key} failed: {off[key]}" for key in ("proc", "reachable", "hide") if key in off)
        report.put("mounts", f"({on['mounts']}{'; ' + partial if partial else ''})" if "mounts" in on else None,
                   off.get("mounts") or off.get("mountns"))
        if "cgroups" in off:  # the limits were written but the agent is not in the cgroup
            for key in ("cpus", "quota", "memory", "pids"):
                if key in report.on:
                    report.put(key, reason=f"cannot join the cgroup: {off['cgroups']}")
        if "cpus" not in report.on:
            widen = f"affinity {format_cores(on['affinity'])} only, which an agent may widen: " if "affinity" in on else ""
            report.put("cpus", reason=widen + report.off.get("cpus", ""))
        if "rlimit_as" in on and "memory" not in report.on:
            report.put("memory", f"{format_bytes(self.spec.memory_bytes)} (RLIMIT_AS, per process)")
        if "rlimit_nproc" in on and "pids" not in report.on:
            report.put("pids", f"{self.spec.pids} (RLIMIT_NPROC)")
        places = ", ".join(["home", *on.get("disk", ())])
        report.put("disk", f"{format_bytes(self.spec.disk_bytes)} ({places}: one tmpfs, gone when it stops)"
                   if "disk" in on else None,
                   off.get("disk") or off.get("mounts") or off.get("mountns") or "no mount namespace")
        report.put("dir", "(private)")
        report.put("env", "(allowlist)")
        return report

    # ------------------------------------------------------------------------ while it runs

    def breach(self, output: Callable[[], str] = lambda: "") -> str | None:
        """The limit the agent broke since the last call (or its start), named for the user; `output`
        gives the tail of its log, read only under RLIMIT_AS (a breach is a MemoryError there)."""
        named = self._watch.check(self.cgroup)
        if named:
            return named
        if "AS" in self._rlimits and "MemoryError" in output():
            return f"memory limit {format_bytes(self.spec.memory_bytes)} exceeded (RLIMIT_AS)"
        return None

    def usage(self, reset_peak: bool = False) -> AgentUsage | None:
        """From the agent's cgroup; None when it has none that can tell (the caller falls back)."""
        return self.cgroup.usage(reset_peak) if self.cgroup is not None else None

    def stopped(self) -> None:
        """After the launcher is gone: kill whatever escaped the pid namespace (none where there is
        one), remove the cgroup, and empty the agent's home."""
        if self.cgroup is not None:
            self.cgroup.kill()
            self.cgroup.remove()
            self.cgroup = None
        shutil.rmtree(self.home, ignore_errors=True)

    def hint(self) -> str:
        """What to check when a sandboxed agent dies before answering."""
        who = f"as uid {self.uid}" if self.uid is not None else "as flateval's user"
        return (f"the sandboxed agent starts in an empty directory {who}, without network, with a /tmp of its "
                f"own: name its files by absolute path in its command{', readable by others' if self.uid is not None else ''}"
                "; --no-sandbox to compare")
