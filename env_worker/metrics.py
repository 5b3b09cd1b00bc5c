"""Prometheus metrics of episodes, hung on the episode loop as an observer.

Per-step observations are counted in plain Python (a bisect into the bucket bounds) and flushed
into prometheus_client every `FLUSH_EVERY_STEPS` steps and at the episode's end: one
multiprocess-safe write per bucket touched instead of three per step, and never a Redis round
trip. Episodes that run in RQ's forked work horses reach the scrape endpoint through
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), which `flateval worker
--metrics-port` and `flateval run --metrics-port` set up themselves.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Sequence

from prometheus_client import Counter, Histogram

from env_worker.observers import EpisodeObserver
from scoring.episode import OUTCOMES, STOPPED, TIMEOUT, EpisodeResult

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

# Every label value exists from the start (at 0), so rates and sums are defined before the first event.
for _outcome in OUTCOMES:
    EPISODES.labels(outcome=_outcome)
for _phase in ("planning", "step"):
    AGENT_TIMEOUTS.labels(phase=_phase)
    AGENT_RESPONSE.labels(phase=_phase)


class _LocalHistogram:
    """Observations counted locally, added to a prometheus Histogram in one go."""

    def __init__(self, target: Histogram, bounds: Sequence[float]) -> None:
        self.target, self.bounds = target, list(bounds)
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def flush(self) -> None:
        if not self.n:
            return
        buckets = self.target._buckets  # one value per bucket, not cumulative (prometheus_client)
        for i, count in enumerate(self.counts):
            if count:
                buckets[i].inc(count)
                self.counts[i] = 0
        self.target._sum.inc(self.total)
        self.total, self.n = 0.0, 0


class MetricsObserver(EpisodeObserver):
    """Feeds the episode metrics; one instance per process is enough."""

    def __init__(self) -> None:
        self._responses = _LocalHistogram(AGENT_RESPONSE.labels(phase="step"), RESPONSE_BUCKETS)
        self._env_steps = _LocalHistogram(ENV_STEP, ENV_STEP_BUCKETS)

    def agent_replied(self, seconds: float, phase: str) -> None:
        if phase == "planning":
            AGENT_RESPONSE.labels(phase="planning").observe(seconds)
        else:
            self._responses.observe(seconds)

    def env_stepped(self, seconds: float) -> None:
        self._env_steps.observe(seconds)
        if self._env_steps.n >= FLUSH_EVERY_STEPS:
            self._flush()

    def _flush(self) -> None:
        STEPS.inc(self._env_steps.n)
        self._env_steps.flush()
        self._responses.flush()

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


_observer: MetricsObserver | None = None


def metrics_observer() -> MetricsObserver:
    global _observer
    if _observer is None:
        _observer = MetricsObserver()
    return _observer
