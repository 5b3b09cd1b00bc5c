"""The local sandbox: every agent flateval starts is fenced in, as far as the machine allows.

- `spec`: what an agent may use (`SandboxSpec`: cpus, memory, pids, hidden paths);
- `box`: one agent's `Sandbox` (private directory, uid, a cgroup per start, breach and usage);
- `launcher`: the program between the worker and the agent that builds the namespaces and the rest;
- `cgroups`: cgroup v2 and v1 controllers, limits, counters, kill;
- `environment`: the allowlisted environment;
- `report`: the one line saying what is in force and what is not;
- `usage`: `AgentUsage`, CPU seconds and peak memory.

docs/sandbox.md describes each fence and how it is built.
"""

from env_worker.sandbox.box import Sandbox, SandboxError
from env_worker.sandbox.report import NO_SANDBOX, Report, parse_line
from env_worker.sandbox.spec import SandboxSpec, parse_memory
from env_worker.sandbox.usage import AgentUsage

__all__ = ["AgentUsage", "NO_SANDBOX", "Report", "Sandbox", "SandboxError", "SandboxSpec", "parse_line",
           "parse_memory"]
