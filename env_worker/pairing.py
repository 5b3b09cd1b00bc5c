"""The agent an env worker is paired with: its link, and its process when the worker owns it.

Under `flateval worker --agent-command CMD` the worker owns its agent: it starts it, and restarts it
when it is dead or hung, so one hang costs one episode. An agent that only lost an episode (a slow
step, an invalid action) keeps its process and its loaded state, as Flatland's rules promise. Under
a stock `rq worker` the agent is found at ``$FLATEVAL_AGENT_ENDPOINT`` and is someone else's to run
(on Kubernetes, the sidecar container).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from core.outcomes import AGENT_ERROR, LOST_BY_AGENT
from core.settings import AGENT_CURVE_KEY_ENV, AGENT_ENDPOINT_ENV
from env_worker.agent_link import AgentLink
from env_worker.agent_process import AgentProcess
from env_worker.sandbox import AgentUsage
from env_worker.observers import EpisodeObserver
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

    def name_breach(self, result: EpisodeResult) -> None:
        """An episode lost by an agent that broke a sandbox limit is an `agent_error` naming the
        limit ("memory limit 15 GiB exceeded (agent disconnected ...)"). The counters are read
        after every episode, so a breach is never blamed on a later one."""
        cause = self.process.breach() if self.process is not None else None
        if cause is not None and result.outcome in LOST_BY_AGENT:
            result.outcome = AGENT_ERROR
            result.error = f"{cause} ({result.error})" if result.error else cause

    def after_episode(self, result: EpisodeResult, step_timeout_s: float) -> None:
        """After an episode the agent lost, tell it at once; its answer doubles as a ping. Restart it
        (when it is ours) only if it is dead or did not answer within one step deadline: a hang then
        costs one episode and a restart, never two episodes."""
        if result.outcome not in LOST_BY_AGENT:
            return
        answered = self.link.deliver_notice(step_timeout_s)
        if self.process is not None and not (answered and self.process.alive()):
            self.link.drop_notice()  # the new process never saw that episode
            self.link.reset()
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


class UsageMeter(EpisodeObserver):
    """The agent's CPU seconds and peak memory over each episode, into its record (``agent_usage``):
    a participant sees why they were slow. Read at the episode's start and end (two small cgroup
    files, or a walk of /proc), never on the per-step path; none for an agent we did not start."""

    def __init__(self, agent: PairedAgent) -> None:
        self.agent = agent
        self._start: AgentUsage | None = None

    def episode_started(self, spec: Any) -> None:
        process = self.agent.process
        self._start = process.usage(reset_peak=True) if process is not None and process.alive() else None

    def episode_ended(self, result: EpisodeResult) -> None:
        process, start, self._start = self.agent.process, self._start, None
        if start is None or process is None or not process.alive():
            return  # none, or a process that died (its replacement's counters are not this episode's)
        end = process.usage()
        result.agent_usage = {"cpu_s": end.cpu_since(start), "peak_memory_bytes": end.peak_memory_bytes,
                              "source": end.source}


class BreachNamer(EpisodeObserver):
    """Names in an episode's record the sandbox limit its agent broke (`PairedAgent.name_breach`);
    hung first on the loop, so that metrics and recordings see the named outcome."""

    def __init__(self, agent: PairedAgent) -> None:
        self.agent = agent

    def episode_ended(self, result: EpisodeResult) -> None:
        self.agent.name_breach(result)
