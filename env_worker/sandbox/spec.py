"""What one agent may use: the challenge's agent resources with the command line's overrides.

``--agent-cpus 2`` gives the agent two cores (a cpuset, and the affinity the agent starts with) and
a CPU quota of 2 cores' time; ``--agent-cpus 0.5`` one core at half its time. ``--agent-memory
15Gi`` caps its memory, ``--agent-pids`` its processes and threads together, ``--agent-disk 2Gi``
what it may write (its home, /tmp, /var/tmp and /dev/shm together).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from core.challenge import AgentResources

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

DEFAULT_PIDS = 512
"""Processes and threads together: room for a multiprocessing pool with BLAS threads, not for a fork bomb."""

_UNITS = {"": 1, "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3, "t": 1000 ** 4,
          "ki": KiB, "mi": MiB, "gi": GiB, "ti": 1024 * GiB}


def parse_memory(text: str, what: str = "memory") -> int:
    """Bytes from a Kubernetes-style size: ``15Gi``, ``512Mi``, ``2G``, ``1048576``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]i?)?[bB]?\s*", str(text))
    if not match:
        raise ValueError(f"expected a size like 15Gi or 512Mi, got {text!r}")
    value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if value < 16 * MiB:
        raise ValueError(f"{text!r} is too little {what} for any agent (at least 16Mi)")
    return value


def format_bytes(value: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if value >= size:
            return f"{value / size:.{0 if value % size == 0 else 1}f} {unit}"
    return f"{value} B"


def format_cores(cores: list[int]) -> str:
    """``0-3,6`` the way cpusets print them."""
    runs: list[list[int]] = []
    for core in sorted(cores):
        if runs and core == runs[-1][-1] + 1:
            runs[-1].append(core)
        else:
            runs.append([core])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def parse_cores(text: str) -> list[int]:
    """The cores of a cpuset list: ``0-3,6`` -> [0, 1, 2, 3, 6] (`format_cores` backwards)."""
    cores = []
    for part in filter(None, text.strip().split(",")):
        low, _, high = part.partition("-")
        cores.extend(range(int(low), int(high or low) + 1))
    return cores


@dataclass(frozen=True)
class SandboxSpec:
    cpus: float = AgentResources.cpu
    memory_bytes: int = parse_memory(AgentResources.memory)
    disk_bytes: int = parse_memory(AgentResources.disk, "disk")
    """What the agent may write, its home, /tmp, /var/tmp and /dev/shm together (one tmpfs)."""
    pids: int = DEFAULT_PIDS
    cpu_offset: int | None = None
    """Where in the worker's cores the agent's start: `flateval run` gives pair i offset i x cores,
    so pairs do not share cores while there are enough. None: the cores other agents use least."""
    hide: tuple[str, ...] = ()
    """Paths the agent must not see (the test set, the run directory), besides those always hidden."""

    def __post_init__(self) -> None:
        if not self.cpus > 0:
            raise ValueError(f"the agent needs some CPU, got {self.cpus!r} cpus")
        if self.pids < 8:
            raise ValueError(f"the agent needs a few processes and threads (at least 8), got {self.pids}")

    @classmethod
    def from_options(cls, cpus: float | None = None, memory: str | None = None, pids: int | None = None,
                     resources: AgentResources = AgentResources(), disk: str | None = None,
                     **rest: Any) -> "SandboxSpec":
        """The challenge's agent `resources` (default: neurips2020's 4 CPUs, 15Gi and 2Gi of disk),
        each replaced by an option that is given. A bad value is a `ValueError` whose message is one
        line, naming the option (``--agent-disk: ...``)."""
        sizes = {}
        for option, text, default in (("memory", memory, resources.memory), ("disk", disk, resources.disk)):
            try:
                sizes[option] = parse_memory(text if text is not None else default, option)
            except ValueError as exc:
                raise ValueError(f"--agent-{option}: {exc}") from None
        return cls(cpus=cpus if cpus is not None else resources.cpu, memory_bytes=sizes["memory"],
                   disk_bytes=sizes["disk"], pids=pids if pids is not None else DEFAULT_PIDS, **rest)

    def cores(self, busy: Mapping[int, int] | None = None) -> list[int]:
        """The cores the agent gets: as many as its CPUs round up to, from the worker's own; from
        `cpu_offset` on, or else those with the fewest agents on them (`busy`: core -> agents)."""
        mine = sorted(os.sched_getaffinity(0))
        count = min(len(mine), math.ceil(self.cpus))
        if self.cpu_offset is None:
            return sorted(sorted(mine, key=lambda core: (busy or {}).get(core, 0))[:count])
        start = self.cpu_offset % len(mine)
        return sorted(mine[(start + i) % len(mine)] for i in range(count))
