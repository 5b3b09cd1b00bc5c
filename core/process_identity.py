"""Who a pid is. A process is its pid *and* its start time: once a process dies the kernel may hand
its pid to another, so anything that reaps what a dead process left (a run folder, a server it
started) first checks that the pid still names the process that wrote it. And which processes of
a group still run: what stopping an agent's whole group waits for."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first: "R", "S", "Z", ...; then
    ppid, pgrp, session, ...); None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "?"


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    started: int  # clock ticks after boot (field 22 of /proc/<pid>/stat)
    namespace: str  # the pid namespace `pid` was read in (another namespace's pids mean other processes)

    @classmethod
    def of(cls, pid: int) -> "ProcessIdentity | None":
        """The process that has `pid` now (None if none does)."""
        fields = stat_fields(pid)
        return cls(pid, int(fields[19]), _pid_namespace()) if fields is not None else None

    def gone(self) -> bool:
        """Provably dead: read in our pid namespace, and its pid is free, a zombie's, or another
        process's (one that started at another time). What cannot be told is not gone."""
        if self.namespace != _pid_namespace():
            return False
        fields = stat_fields(self.pid)
        return fields is None or fields[0] == "Z" or int(fields[19]) != self.started

    def to_text(self) -> str:
        return f"{self.pid} {self.started} {self.namespace}\n"

    @classmethod
    def from_text(cls, text: str) -> "ProcessIdentity | None":
        """What `to_text` wrote; None for anything else (a half-written or foreign file)."""
        parts = text.split()
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            return None
        return cls(int(parts[0]), int(parts[1]), parts[2])

    def write(self, path: Path) -> None:
        """Atomically: a reader never sees half an identity."""
        partial = path.with_name(path.name + ".partial")
        partial.write_text(self.to_text())
        partial.replace(path)

    @classmethod
    def read(cls, path: Path) -> "ProcessIdentity | None":
        try:
            return cls.from_text(path.read_text())
        except OSError:
            return None


def live_group_members(pgid: int) -> int:
    """How many processes of group `pgid` still run (zombies, which no one may reap here, excluded)."""
    count = 0
    for entry in Path("/proc").glob("[0-9]*"):
        fields = stat_fields(entry.name)
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            count += 1
    return count
