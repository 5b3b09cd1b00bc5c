"""Starting the agent a worker owns, before anything else the worker does.

An agent's start-up (an interpreter importing torch and flatland, a model loading) is the longest
wait before the first episode; the worker's own (rq, redis, flatland: about a third of a second)
overlaps it instead of coming first. So this module imports only what starting an agent needs, and
`flateval worker` calls it before it imports the worker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

from env_worker.agent_process import AgentProcess, AgentStartError
from env_worker.sandbox import SandboxSpec


@dataclass
class StartedAgent:
    """An agent on its way up (not yet asked for its handshake)."""

    process: AgentProcess
    scratch: str | None  # our folder for its log when none was asked for, never the current directory

    def discard(self) -> None:
        """Stop it and remove what we made for it (the worker could not start after all)."""
        self.process.stop()
        self.remove_scratch()

    def remove_scratch(self) -> None:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def start_agent(command: str | None, image: str | None, log: str | None, endpoint: str | None,
                sandbox: SandboxSpec | None, curve: bool = False, pidfile: str | None = None,
                timeout_s: float = 60.0) -> StartedAgent:
    """Launch the agent of `command` (a shell command), or a container of `image` (`command` then its
    arguments; always fenced: `sandbox`, else the defaults); `AgentStartError` if it cannot start."""
    scratch = None if log else tempfile.mkdtemp(prefix=f"flateval-worker-{os.getpid()}-")
    log = log or os.path.join(scratch, "agent.log")
    try:
        if image:
            process = _container(image, command, log, sandbox, curve, pidfile)
        else:
            process = AgentProcess(command, log, bind=endpoint, connect=endpoint, curve=curve, pidfile=pidfile,
                                   sandbox=sandbox)
        process.start(timeout_s, handshake=False)
    except AgentStartError:
        shutil.rmtree(scratch or "", ignore_errors=True)
        raise
    return StartedAgent(process, scratch)


def _container(image: str, command: str | None, log: str, sandbox: SandboxSpec | None, curve: bool,
               pidfile: str | None) -> AgentProcess:
    from env_worker.container import AgentContainer, EngineError, find_engine

    try:
        engine = find_engine()
    except EngineError as exc:
        raise AgentStartError(str(exc)) from None
    return AgentContainer(image, command, log, engine, sandbox or SandboxSpec(), curve=curve, pidfile=pidfile)
