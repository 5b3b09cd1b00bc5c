"""How much CPU each agent gets when pairs share a machine, and thread pools sized to it.

One computation for every launcher of agents: `flateval run`'s local sandbox, and container launchers
(compose, Kubernetes, an agent image run by hand), so an agent sees the same share however it runs.

A challenge asks for its agent's CPUs (neurips2020: 4). When the pairs' agents together ask for more
cores than the machine has, each gets its fair share instead: whole cores, disjoint while they
suffice, never less than one. Without that, two agents on 2 cores each see both cores, and each
agent's torch (OpenMP), BLAS and numexpr start a thread per core: 2 agents x 2 spinning threads and
2 workers fight over 2 cores (measured 2.6x slower than flatland's evaluator, issue 23).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
"""What OpenMP (torch), MKL, OpenBLAS (numpy) and numexpr size their thread pools from; without them
they count the machine's cores, not the agent's."""


def machine_cores() -> int:
    """The cores this process may run on (its affinity: a cpuset or taskset narrows it)."""
    return len(os.sched_getaffinity(0))


def threads_for(cpus: float) -> int:
    """Threads for a CPU share: rounded up, at least one (1 core: 1 thread; 0.5: 1; 2.5: 3), as
    Kubernetes' ``resourceFieldRef: {resource: limits.cpu, divisor: 1}`` rounds a limit."""
    return max(1, math.ceil(cpus))


def thread_variables(cpus: float, given: Mapping[str, str] | None = None) -> dict[str, str]:
    """The thread variables for an agent with `cpus`: those `given` sets (by the challenge or the
    host) as they are, the others sized to the share."""
    given = given or {}
    return {name: given.get(name) or str(threads_for(cpus)) for name in THREAD_VARIABLES}


def _cores(value: float) -> str:
    return f"{value:g} core{'' if value == 1 else 's'}"


@dataclass(frozen=True)
class CpuShare:
    """What each of `pairs` agents gets on a machine of `cores` when `asked` CPUs each were asked for."""

    cpus: float  # each agent's CPUs: its quota, and (rounded up) its cores and threads
    asked: float  # the challenge's agent CPUs, or --agent-cpus
    pairs: int
    cores: int
    explicit: bool = False  # asked with --agent-cpus: taken as it is

    @property
    def reduced(self) -> bool:
        return self.cpus < self.asked

    @property
    def threads(self) -> int:
        return threads_for(self.cpus)

    def line(self) -> str:
        """The start-up line: "agents get 1 core each of the challenge's 4: 2 pairs on 2 cores"."""
        where = f"{self.pairs} pair{'' if self.pairs == 1 else 's'} on {_cores(self.cores)}"
        if self.explicit:
            return f"agents get {_cores(self.cpus)} each (--agent-cpus): {where}"
        if self.reduced:
            return f"agents get {_cores(self.cpus)} each of the challenge's {self.asked:g}: {where}"
        return f"agents get the challenge's {_cores(self.cpus)} each: {where}"


def fair_share(asked: float, pairs: int, cores: int | None = None, explicit: bool = False) -> CpuShare:
    """Each agent's share: what was asked while the pairs' agents fit on the machine's `cores`
    (default: ours); else whole cores split evenly once each pair's worker is counted as half a core
    (it steps the env while its agent thinks, and waits while it acts), never less than one: 1 core
    each for 2 pairs on 2 cores, and for 1 pair on 2 cores (the worker gets the other), 2 each for
    3 pairs on 8. `explicit` (--agent-cpus) always gets what it asked."""
    cores = cores if cores is not None else machine_cores()
    pairs = max(1, pairs)
    if explicit or asked * pairs <= cores:
        cpus = asked
    else:
        cpus = min(asked, max(1, (2 * cores - pairs) // (2 * pairs)))
    return CpuShare(cpus=cpus, asked=asked, pairs=pairs, cores=cores, explicit=explicit)

