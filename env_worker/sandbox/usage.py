"""What an agent used: CPU seconds (user + system, all its processes) and peak memory.

From its cgroup when it has one (two small files); otherwise from /proc, summing the processes of
its session (approximate: a process that left the session or already exited is not counted).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.process_identity import stat_fields

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class AgentUsage:
    cpu_s: float | None  # cumulative since the agent started
    peak_memory_bytes: int | None  # the highest since the agent started or the last reset
    source: str = "cgroup"  # or "proc" (approximate), or "none"

    def cpu_since(self, earlier: "AgentUsage") -> float | None:
        """CPU seconds used between `earlier` and this reading (an episode's, read at its start and end)."""
        if self.cpu_s is None or earlier.cpu_s is None:
            return None
        return max(0.0, self.cpu_s - earlier.cpu_s)


def session_usage(session: int) -> AgentUsage:
    """Sum CPU time and peak resident memory over the live processes of one session."""
    cpu_ticks, peak = 0, 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = stat_fields(entry.name)
            if fields is None or int(fields[3]) != session:  # field 6 of stat: the session id
                continue
            cpu_ticks += int(fields[11]) + int(fields[12])  # utime, stime
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue
    return AgentUsage(cpu_ticks / _TICKS, peak, "proc")
