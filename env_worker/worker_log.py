"""What `flateval worker` says on stderr, as a stock `rq worker` does: a line when it starts (what it
works, which agent, where its metrics are) and one per episode (submission, env, outcome, seconds).

A line starts with the time, like RQ's own (`flateval run` tells these apart from a worker's last
words, an error, with `is_log_line`). Nothing is written per step.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TYPE_CHECKING

from env_worker.observers import EpisodeObserver

if TYPE_CHECKING:
    from core.episode_spec import EpisodeSpec
    from scoring.episode import EpisodeResult

LOGGER_NAME = "flateval.worker"
_TIME = "%H:%M:%S"
_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d ")


def worker_logger() -> logging.Logger:
    """The worker's logger: INFO and up to stderr, timestamped; independent of RQ's and the root's."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", _TIME))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def is_log_line(line: str) -> bool:
    """Whether a line of a worker's output is one of its (or RQ's) timestamped log lines."""
    return bool(_LOG_LINE.match(line))


def start_line(name: str, queues: list[str], endpoint: str, agent_command: str | None,
               metrics_url: str | None) -> str:
    works = ", ".join(queues) if queues else "every open submission's queue, oldest first"
    agent = f"{endpoint} (started with: {agent_command})" if agent_command else endpoint
    return (f"worker {name} starting: queues {works}; agent {agent}; "
            f"metrics {metrics_url or 'off (--metrics-port)'}")


class EpisodeLog(EpisodeObserver):
    """One line per episode: its submission, env, outcome and seconds (and the error of a lost one)."""

    def __init__(self, name: str, logger: logging.Logger | None = None) -> None:
        self.name = name
        self.logger = logger or worker_logger()
        self._spec: "EpisodeSpec | None" = None

    def episode_started(self, spec: "EpisodeSpec") -> None:
        self._spec = spec

    def episode_ended(self, result: "EpisodeResult") -> None:
        sid = (self._spec.submission_id if self._spec else None) or "-"
        line = f"{self.name}: {sid} {result.env_file} {result.outcome} in {result.duration_s:.2f} s"
        if result.error:
            line += f": {' '.join(result.error.split())}"
        self.logger.info(line)
