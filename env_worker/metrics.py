"""Prometheus metrics of episodes, hung on the episode loop as an observer.

Per-step samples are appended to a list and handed to prometheus_client's public `observe` every
`FLUSH_EVERY_STEPS` steps and at the episode's end, so the per-step path only appends to memory
(never a Redis round trip, never a multiprocess file write). Each observer belongs to the worker
that plays the episodes (see `env_worker.context`). Episodes that run in RQ's forked work horses
reach the scrape endpoint through prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``), which `flateval worker --metrics-port` and `flateval run
--metrics-port` set up themselves.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

from core.outcomes import OUTCOMES, STOPPED, TIMEOUT
from env_worker.observers import EpisodeObserver
from scoring.episode import EpisodeResult

RESPONSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.0, 3.0, 4.0, 4.5, 5.0, 7.5, 10.0, 30.0, 60.0, 300.0)
ENV_STEP_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
RETURN_BUCKETS = tuple(round(-1.0 + 0.1 * i, 1) for i in range(21))  # -1.0, -0.9, ..., 1.0
FLUSH_EVERY_STEPS = 256

EPISODES = Counter("flateval_episodes", "Episodes ended, by outcome.", ["outcome"])
STEPS = Counter("flateval_steps", "Env steps taken.")
AGENT_RESPONSE = Histogram("flateval_agent_response_seconds",
                           "Agent response time: our message sent to its reply received.", ["phase"],
                           buckets=RESPONSE_BUCKETS)
ENV_STEP = Histogram("flateval_env_step_seconds", "Env step plus observation building.", buckets=ENV_STEP_BUCKETS)
EPISODE_DURATION = Histogram("flateval_episode_duration_seconds", "Episode wall time, load to result.",
                             buckets=DURATION_BUCKETS)
NORMALIZED_RETURN = Histogram("flateval_episode_normalized_return", "Normalized return of scored episodes.",
                              buckets=RETURN_BUCKETS)
AGENT_TIMEOUTS = Counter("flateval_agent_timeouts", "Deadlines missed by agents.", ["phase"])
AGENT_CPU = Histogram("flateval_agent_cpu_seconds", "CPU seconds an agent used in one episode (all its processes).",
                      buckets=DURATION_BUCKETS)
AGENT_PEAK_MEMORY = Histogram("flateval_agent_peak_memory_bytes", "An agent's peak memory in one episode.",
                              buckets=tuple(float(1 << shift) for shift in range(24, 36)))  # 16 MiB .. 32 GiB

# Every label value exists from the start (at 0), so rates and sums are defined before the first event.
for _outcome in OUTCOMES:
    EPISODES.labels(outcome=_outcome)
for _phase in ("planning", "step"):
    AGENT_TIMEOUTS.labels(phase=_phase)
    AGENT_RESPONSE.labels(phase=_phase)


class MetricsObserver(EpisodeObserver):
    """Feeds the episode metrics of one worker."""

    def __init__(self) -> None:
        self._step_responses = AGENT_RESPONSE.labels(phase="step")
        self._responses: list[float] = []
        self._env_steps: list[float] = []

    def agent_replied(self, seconds: float, phase: str) -> None:
        if phase == "planning":
            AGENT_RESPONSE.labels(phase="planning").observe(seconds)
        else:
            self._responses.append(seconds)

    def env_stepped(self, seconds: float, actions: Any, outcome: Any) -> None:
        self._env_steps.append(seconds)
        if len(self._env_steps) >= FLUSH_EVERY_STEPS:
            self._flush()

    def _flush(self) -> None:
        if self._env_steps:
            STEPS.inc(len(self._env_steps))
        for seconds in self._env_steps:
            ENV_STEP.observe(seconds)
        for seconds in self._responses:
            self._step_responses.observe(seconds)
        self._env_steps.clear()
        self._responses.clear()

    def episode_ended(self, result: EpisodeResult) -> None:
        self._flush()
        if result.outcome == STOPPED:
            return  # its submission ended: not a result anywhere, so not an episode here either
        EPISODES.labels(outcome=result.outcome).inc()
        EPISODE_DURATION.observe(result.duration_s)
        if result.normalized_return is not None:
            NORMALIZED_RETURN.observe(result.normalized_return)
        if result.outcome == TIMEOUT:
            AGENT_TIMEOUTS.labels(phase="planning" if result.steps == 0 else "step").inc()
        usage = result.agent_usage or {}
        if usage.get("cpu_s") is not None:
            AGENT_CPU.observe(usage["cpu_s"])
        if usage.get("peak_memory_bytes") is not None:
            AGENT_PEAK_MEMORY.observe(usage["peak_memory_bytes"])
