"""What a worker hands each episode job it runs: its paired agent and its observers.

arq passes a ``ctx`` to every job; RQ calls a job with its arguments only. So the worker that owns
the context (`env_worker.worker.PairedWorker`) makes it current for exactly the duration of each job
(a `contextvars.ContextVar`, set and reset around RQ's public `perform_job`), and the job asks for
it. Under a stock ``rq worker`` no context is current: the job builds one from the environment
(``$FLATEVAL_AGENT_ENDPOINT``) and closes it when the episode is over.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator

from env_worker.metrics import MetricsObserver
from env_worker.observers import EpisodeObserver
from env_worker.pairing import BreachNamer, PairedAgent, UsageMeter
from core.settings import RECORD_DIR_ENV
from env_worker.recording import RecordingObserver


@dataclass
class WorkerContext:
    agent: PairedAgent
    observers: list[EpisodeObserver] = field(default_factory=list)

    @classmethod
    def for_agent(cls, agent: PairedAgent, record_dir: str | None = None) -> "WorkerContext":
        """The context of a worker paired with `agent`: the namer of its sandbox breaches and the meter
        of its CPU and memory (first, so the others see them), its metrics observer and its recorder (which records what
        submissions ask for, and everything when the worker records itself: `record_dir`, else
        ``$FLATEVAL_RECORD_DIR``)."""
        return cls(agent, [BreachNamer(agent), UsageMeter(agent), MetricsObserver(),
                           RecordingObserver(record_dir or os.environ.get(RECORD_DIR_ENV))])

    @classmethod
    def from_environment(cls) -> "WorkerContext":
        return cls.for_agent(PairedAgent.from_environment())

    def close(self) -> None:
        self.agent.close()


_current: ContextVar[WorkerContext | None] = ContextVar("flateval_worker_context", default=None)


def current_context() -> WorkerContext | None:
    """The context of the worker running the current job (None under a stock rq worker)."""
    return _current.get()


@contextmanager
def job_context(context: WorkerContext) -> Iterator[WorkerContext]:
    """Make `context` current for one job."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
