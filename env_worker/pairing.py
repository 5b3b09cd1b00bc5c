"""The agent an env worker is paired with: its link, and its process when the worker owns it.

Under `flateval worker --agent-command CMD` the worker owns its agent: it starts it, and restarts it
after any episode the agent lost (timeout, crash, error), so one hang costs one episode. Under a
stock `rq worker` the agent is found at ``$FLATEVAL_AGENT_ENDPOINT`` and is someone else's to run
(on Kubernetes, the sidecar container).
"""

from __future__ import annotations

import os
import socket

from core.outcomes import LOST_BY_AGENT
from core.settings import AGENT_CURVE_KEY_ENV, AGENT_ENDPOINT_ENV
from env_worker.agent_link import AgentLink
from env_worker.agent_process import AgentProcess
from scoring.episode import EpisodeResult


class PairedAgent:
    def __init__(self, endpoint: str, process: AgentProcess | None = None, name: str | None = None,
                 startup_timeout_s: float = 60.0, curve_server_key: str | None = None) -> None:
        self.endpoint = endpoint
        self.curve_server_key = curve_server_key or (process.curve_public_key if process else None)
        self.process = process
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.startup_timeout_s = startup_timeout_s
        self._link: AgentLink | None = None

    @classmethod
    def from_environment(cls) -> "PairedAgent":
        """Someone else's agent, at ``$FLATEVAL_AGENT_ENDPOINT`` (a stock rq worker's pairing)."""
        endpoint = os.environ.get(AGENT_ENDPOINT_ENV)
        if not endpoint:
            raise RuntimeError(f"no agent paired with this worker: set {AGENT_ENDPOINT_ENV}")
        return cls(endpoint, curve_server_key=os.environ.get(AGENT_CURVE_KEY_ENV))

    @property
    def link(self) -> AgentLink:
        if self._link is None:
            self._link = AgentLink(self.endpoint, curve_server_key=self.curve_server_key)
        return self._link

    def after_episode(self, result: EpisodeResult) -> None:
        """Restart an agent that lost its episode, so the next episode starts from a clean agent."""
        if self.process is not None and result.outcome in LOST_BY_AGENT:
            self.process.restart(self.startup_timeout_s)

    def output_tail(self) -> str | None:
        return self.process.output_tail() if self.process else None

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
        if self.process is not None:
            self.process.stop()
