"""The agent's cgroups: each controller from cgroup v2 where v2 has it, else from v1, else none.

Agent cgroups are made under the worker's own cgroup in every hierarchy (so whatever limits the
worker keeps bounding its agents). A hybrid machine (v1 controllers, an empty v2 ``unified``) gets
its limits from v1 and, from v2's core, ``cgroup.kill`` and ``cpu.stat``, which need no controller.

Limits: ``memory`` (v2 memory.max, swap off, the whole group killed on OOM; v1 memory.limit_in_bytes),
``cpu`` (a CFS quota), ``cpuset`` (the cores, which the agent cannot widen with sched_setaffinity)
and ``pids``. Readings, each one small file: CPU seconds, peak memory, and the OOM-kill and
fork-refused counters that tell a breach.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.process_identity import stat_fields
from env_worker.sandbox.spec import parse_cores
from env_worker.sandbox.usage import AgentUsage

CFS_PERIOD_US = 100_000
LIMITED = ("memory", "cpu", "cpuset", "pids")
PREFIX = "flateval-agent-"
_STALE = re.compile(rf"^{PREFIX}(\d+)-[0-9a-f]+$")


@dataclass(frozen=True)
class Hierarchy:
    version: int
    own: Path  # the worker's cgroup in this hierarchy: agent cgroups are made inside it
    controllers: frozenset[str]  # what children made here can use (v2: enabled in subtree_control)


@dataclass(frozen=True)
class Layout:
    """Where each controller comes from on this machine, and why a missing one is missing."""

    by_controller: dict[str, Hierarchy] = field(default_factory=dict)
    core: Hierarchy | None = None  # v2, with or without controllers: cgroup.kill, cpu.stat
    missing: dict[str, str] = field(default_factory=dict)

    def hierarchies(self) -> list[Hierarchy]:
        found = list(dict.fromkeys(self.by_controller.values()))
        if self.core is not None and self.core not in found:
            found.append(self.core)
        return found


def _mounts() -> list[tuple[str, Path, str, set[str]]]:
    """(fstype, mount point, root in the hierarchy, super options) of every cgroup mount."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if extra and extra[0] in ("cgroup", "cgroup2"):
            found.append((extra[0], Path(fields[4]), fields[3], set(extra[2].split(",")) if len(extra) > 2 else set()))
    return found


def _own_dir(mount: Path, root: str, path: str) -> Path | None:
    if path != root and not path.startswith(root.rstrip("/") + "/"):
        return None  # our cgroup is outside what this mount shows
    return mount / path[len(root):].lstrip("/")


def _v2_controllers(own: Path) -> tuple[set[str], str]:
    """Controllers v2 children of `own` get, enabling the missing ones when we may; and a reason."""
    try:
        available = set((own / "cgroup.controllers").read_text().split())
        enabled = set((own / "cgroup.subtree_control").read_text().split())
    except OSError as exc:
        return set(), f"cannot read {own}: {exc.strerror}"
    wanted = (available & set(LIMITED)) - enabled
    reason = ""
    for name in sorted(wanted):
        try:
            (own / "cgroup.subtree_control").write_text(f"+{name}")
            enabled.add(name)
        except OSError as exc:
            reason = f"cannot enable {name} in {own} ({exc.strerror}; run flateval in a delegated cgroup)"
    return enabled, reason


@functools.lru_cache(maxsize=1)
def layout() -> Layout:
    """This machine's cgroups, looked up once per process."""
    own_paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own_paths[controllers] = path
    result = Layout()
    v2_reason = ""
    for fstype, mount, root, options in _mounts():
        if fstype == "cgroup2" and "" in own_paths:
            own = _own_dir(mount, root, own_paths[""])
            if own is None or not os.access(own, os.W_OK):
                continue
            enabled, v2_reason = _v2_controllers(own)
            hierarchy = Hierarchy(2, own, frozenset(enabled))
            result = Layout({**result.by_controller, **{c: hierarchy for c in enabled if c in LIMITED}},
                            hierarchy, result.missing)
        elif fstype == "cgroup":
            controllers = {o for o in options if o in (*LIMITED, "cpuacct")}
            key = next((k for k in own_paths if k and set(k.split(",")) == controllers), None)
            if not controllers or key is None:
                continue
            own = _own_dir(mount, root, own_paths[key])
            if own is None or not os.access(own, os.W_OK):
                continue
            hierarchy = Hierarchy(1, own, frozenset(controllers))
            for name in controllers:
                result.by_controller.setdefault(name, hierarchy)  # v2's, when it came first, stays
    for name in LIMITED:
        if name not in result.by_controller:
            result.missing[name] = v2_reason or "no writable cgroup has the controller (not root, or not delegated)"
    return result


def _read_int(path: Path, key: str | None = None) -> int | None:
    """A number from a cgroup file: the whole file, or the value of `key` in a flat keyed file."""
    try:
        text = path.read_text()
    except OSError:
        return None
    if key is None:
        return int(text.split()[0]) if text.strip() and text.split()[0].isdigit() else None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return None


class AgentCgroup:
    """One agent's cgroup in every hierarchy that gives it something; `remove()` when it is empty."""

    def __init__(self, name: str) -> None:
        self.layout = layout()
        self.dirs: dict[Hierarchy, Path] = {}
        self.failed: dict[str, str] = {}
        self._peak_fd: int | None = None
        for hierarchy in self.layout.hierarchies():
            path = hierarchy.own / name
            try:
                path.mkdir()
                self.dirs[hierarchy] = path
            except OSError as exc:
                for controller in hierarchy.controllers:
                    self.failed[controller] = f"cannot make {path}: {exc.strerror}"

    @classmethod
    def of_process(cls, pid: int) -> "AgentCgroup":
        """A view of the cgroups process `pid` is in (a container's init: its engine made them), for
        the readings below; nothing is made, limited or removed through it."""
        view = cls.__new__(cls)
        view.layout, view.dirs, view.failed, view._peak_fd = layout(), {}, {}, None
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return view
        paths = dict(line.split(":", 2)[1:] for line in lines)
        for fstype, mount, root, options in _mounts():
            if fstype == "cgroup2":
                key: str | None = ""
            else:
                controllers = {o for o in options if o in (*LIMITED, "cpuacct")}
                key = next((k for k in paths if k and set(k.split(",")) == controllers), None)
            hierarchy = next((h for h in view.layout.hierarchies() if h.version == (2 if fstype == "cgroup2" else 1)
                              and h.own.is_relative_to(mount) and (h.version == 2 or h.controllers <= set(options))),
                             None)
            path = _own_dir(mount, root, paths[key]) if key in paths and hierarchy else None
            if path is not None and path.is_dir():
                view.dirs[hierarchy] = path
        return view

    def _dir(self, controller: str) -> tuple[Path | None, int]:
        hierarchy = self.layout.by_controller.get(controller)
        path = self.dirs.get(hierarchy) if hierarchy else None
        return path, hierarchy.version if hierarchy else 0

    def _write(self, controller: str, v2_file: str, v1_file: str, value: str) -> str:
        """Write a limit; the source ("cgroup v1") on success. Raises OSError with the reason."""
        path, version = self._dir(controller)
        if path is None:
            raise OSError(0, self.failed.get(controller) or self.layout.missing.get(controller, "no cgroup"))
        (path / (v2_file if version == 2 else v1_file)).write_text(value)
        return f"cgroup v{version}"

    def limit_memory(self, limit: int) -> str:
        source = self._write("memory", "memory.max", "memory.limit_in_bytes", str(limit))
        path, version = self._dir("memory")
        extras = ({"memory.swap.max": "0", "memory.oom.group": "1"} if version == 2
                  else {"memory.memsw.limit_in_bytes": str(limit)})
        for name, value in extras.items():
            try:
                (path / name).write_text(value)
            except OSError:
                pass  # no swap accounting on this kernel: no swap to limit
        return source

    def limit_cpu(self, cpus: float) -> str:
        quota = max(1000, int(cpus * CFS_PERIOD_US))
        path, version = self._dir("cpu")
        if version == 1 and path is not None:
            (path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        return self._write("cpu", "cpu.max", "cpu.cfs_quota_us",
                           f"{quota} {CFS_PERIOD_US}" if version == 2 else str(quota))

    def limit_cores(self, cores: list[int]) -> str:
        path, version = self._dir("cpuset")
        if version == 1 and path is not None:  # a v1 cpuset starts empty: memory nodes first
            (path / "cpuset.mems").write_text((path.parent / "cpuset.effective_mems").read_text().strip()
                                              or (path.parent / "cpuset.mems").read_text().strip())
        return self._write("cpuset", "cpuset.cpus", "cpuset.cpus", ",".join(map(str, cores)))

    def limit_pids(self, count: int) -> str:
        return self._write("pids", "pids.max", "pids.max", str(count))

    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for path in self.dirs.values()]

    # ------------------------------------------------------------------------ readings

    def cpu_seconds(self) -> float | None:
        path, version = self._dir("cpuacct")
        if version == 1 and path is not None:
            usage = _read_int(path / "cpuacct.usage")
            if usage is not None:
                return usage / 1e9
        core = self.dirs.get(self.layout.core) if self.layout.core else None
        if core is not None:
            usage = _read_int(core / "cpu.stat", "usage_usec")
            if usage is not None:
                return usage / 1e6
        return None

    def peak_memory(self, reset: bool = False) -> int | None:
        """Peak memory since the last reset (or since the start); `reset` starts a new window."""
        path, version = self._dir("memory")
        if path is None:
            return None
        if version == 1:
            peak = _read_int(path / "memory.max_usage_in_bytes")
            if reset:
                try:
                    (path / "memory.max_usage_in_bytes").write_text("0")
                except OSError:
                    pass
            return peak
        try:  # v2: a reset is local to the open file (Linux 6.12+); older kernels: since the start
            if self._peak_fd is None:
                self._peak_fd = os.open(path / "memory.peak", os.O_RDWR)
            peak = int(os.pread(self._peak_fd, 64, 0).split()[0])
            if reset:
                os.write(self._peak_fd, b"reset\n")
            return peak
        except (OSError, ValueError, IndexError):
            return None

    def usage(self, reset_peak: bool = False) -> AgentUsage | None:
        """CPU seconds and peak memory (`peak_memory`'s window); None when the cgroup cannot tell both."""
        cpu, peak = self.cpu_seconds(), self.peak_memory(reset_peak)
        return AgentUsage(cpu, peak) if cpu is not None and peak is not None else None

    def events(self) -> dict[str, int]:
        """Breach counters: ``oom_kill`` (processes the OOM killer ended), ``pids_max`` (forks refused)."""
        counts = {}
        path, version = self._dir("memory")
        if path is not None:
            counts["oom_kill"] = _read_int(path / ("memory.events" if version == 2 else "memory.oom_control"),
                                           "oom_kill") or 0
        path, _ = self._dir("pids")
        if path is not None:
            counts["pids_max"] = _read_int(path / "pids.events", "max") or 0
        return counts

    def pids(self) -> list[int]:
        for path in self.dirs.values():
            try:
                return [int(p) for p in (path / "cgroup.procs").read_text().split()]
            except OSError:
                continue
        return []

    # ------------------------------------------------------------------------ the end

    def kill(self, timeout_s: float = 5.0) -> None:
        """SIGKILL everything in the cgroup (v2's cgroup.kill when there is one) and wait for it."""
        core = self.dirs.get(self.layout.core) if self.layout.core else None
        if core is not None and (core / "cgroup.kill").exists():
            try:
                (core / "cgroup.kill").write_text("1")
            except OSError:
                pass
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.pids()
            if not left or time.monotonic() > deadline:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)  # waiting for killed processes to be reaped

    def remove(self, timeout_s: float = 5.0) -> None:
        if self._peak_fd is not None:
            os.close(self._peak_fd)
            self._peak_fd = None
        deadline = time.monotonic() + timeout_s
        for path in self.dirs.values():
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY: its last processes are still being reaped
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.005)
        self.dirs = {}


def cores_in_use() -> dict[int, int]:
    """How many live agent cgroups hold each core in their cpuset (core -> count)."""
    hierarchy = layout().by_controller.get("cpuset")
    counts: dict[int, int] = {}
    if hierarchy is None:
        return counts
    try:
        siblings = [p for p in hierarchy.own.iterdir() if _STALE.match(p.name)]
    except OSError:
        return counts
    for path in siblings:
        for core in parse_cores(_read_text(path / "cpuset.cpus")):
            counts[core] = counts.get(core, 0) + 1
    return counts


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """A process that runs (a zombie is only waiting to be reaped)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def cgroup_name() -> str:
    """A fresh agent cgroup name: this worker's pid (so a later worker can tell it stale) and a nonce."""
    return f"{PREFIX}{os.getpid()}-{os.urandom(4).hex()}"


def remove_stale() -> None:
    """Agent cgroups left by workers that were killed: the empty directories only, since their
    processes died with them."""
    for hierarchy in layout().hierarchies():
        try:
            names = [p for p in hierarchy.own.iterdir() if _STALE.match(p.name)]
        except OSError:
            continue
        for path in names:
            if alive(int(_STALE.match(path.name).group(1))):
                continue
            try:
                path.rmdir()
            except OSError:
                pass
