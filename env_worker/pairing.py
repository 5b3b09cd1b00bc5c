"""The agent this env-worker process is paired with.

Under `flateval worker --agent-command CMD` the worker owns its agent: it starts it, and restarts it
after any episode the agent lost (timeout, crash, error), so one hang costs one episode. Under a
stock `rq worker` the agent is found at ``$FLATEVAL_AGENT_ENDPOINT`` and is someone else's to run
(on Kubernetes, the sidecar container).
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from typing import Sequence

from env_worker.agent_link import AgentLink
from env_worker.agent_process import AgentProcess
from env_worker.observers import EpisodeObserver
from flateval.settings import AGENT_CURVE_KEY_ENV, AGENT_ENDPOINT_ENV
from scoring.episode import AGENT_ERROR, TIMEOUT, EpisodeResult


class PairedAgent:
    def __init__(self, endpoint: str, process: AgentProcess | None = None, name: str | None = None,
                 observers: Sequence[EpisodeObserver] = (), startup_timeout_s: float = 60.0,
                 curve_server_key: str | None = None) -> None:
        self.endpoint = endpoint
        self.curve_server_key = curve_server_key or (process.curve_public_key if process else None)
        self.process = process
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.observers = list(observers)
        self.startup_timeout_s = startup_timeout_s
        self._link: AgentLink | None = None

    @property
    def link(self) -> AgentLink:
        if self._link is None:
            self._link = AgentLink(self.endpoint, curve_server_key=self.curve_server_key)
        return self._link

    def name_breach(self, result: EpisodeResult) -> EpisodeResult:
        """An episode lost by an agent that broke a sandbox limit is an `agent_error` naming the
        limit ("memory limit 15 GiB exceeded (agent disconnected ...)"). The counters are read
        after every episode, so a breach is never blamed on a later one."""
        cause = self.process.breach() if self.process is not None else None
        if cause is None or result.outcome not in (TIMEOUT, AGENT_ERROR):
            return result
        return replace(result, outcome=AGENT_ERROR, error=f"{cause} ({result.error})" if result.error else cause)

    def after_episode(self, result: EpisodeResult) -> None:
        """Restart an agent that lost its episode, so the next episode starts from a clean agent."""
        if self.process is not None and result.outcome in (TIMEOUT, AGENT_ERROR):
            self.process.restart(self.startup_timeout_s)
            if self._link is not None:  # a fresh socket: none of the dead agent's reconnect back-off
                self._link.reset()

    def output_tail(self) -> str | None:
        return self.process.output_tail() if self.process else None

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
        if self.process is not None:
            self.process.stop()


_paired: PairedAgent | None = None


def set_paired_agent(pair: PairedAgent | None) -> None:
    global _paired
    _paired = pair


def paired_agent() -> PairedAgent:
    """This process's agent: the one `flateval worker` set, else ``$FLATEVAL_AGENT_ENDPOINT``."""
    global _paired
    if _paired is None:
        endpoint = os.environ.get(AGENT_ENDPOINT_ENV)
        if not endpoint:
            raise RuntimeError(f"no agent paired with this worker: set {AGENT_ENDPOINT_ENV}")
        _paired = PairedAgent(endpoint, curve_server_key=os.environ.get(AGENT_CURVE_KEY_ENV))
    return _paired
