"""Per-episode scores and the episode result record every other part reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from core.episode_spec import EpisodeSpec
from core.outcomes import COMPLETED, ENV_ERROR, STOPPED
from scoring.percentile import percentile

FAILED_EPISODE_RETURN = -1.0
"""Normalized return (Round-1 scale) of an episode whose agent missed a deadline or misbehaved."""


def normalized_return(cumulative_reward: float, max_episode_steps: int, n_agents: int, offset: float = 0.0) -> float:
    """The seed's formula: reward of all agents / (max steps x agents), plus the phase's offset."""
    return cumulative_reward / (max_episode_steps * n_agents) + offset


def capped_normalized_return(per_agent_rewards: "list[float]", max_episode_steps: int, offset: float = 0.0) -> float:
    """flatland's `Rewards.normalize`: each agent's return capped at -max_episode_steps first.

    flatland adds +1.0 itself; here that is the phase's offset, so both formulas share one scale.
    """
    n_agents = len(per_agent_rewards)
    capped = sum(max(r, -max_episode_steps) for r in per_agent_rewards)
    return capped / (max_episode_steps * n_agents) + offset


def scaled_return(total: float, reference_return: float | None = None, offset: float = 0.0,
                  min_return: float | None = None) -> float:
    """A gymnasium episode's score: its return on the challenge's scale, plus the phase's offset.

    Without a reference return the score is the return itself. With one, ``min_return`` (default 0)
    scores 0 and ``reference_return`` scores 1: ``(return - min_return) / (reference_return -
    min_return)``. CartPole-v1 (reference 500): a return of 250 scores 0.5. MountainCar-v0 (every
    step costs 1, 200 steps at most: min -200, reference -110): -114 scores 0.956, -122 scores 0.867.
    The challenge file refuses a scale that would rank a worse return higher (`core.challenge`)."""
    if not reference_return:
        return total + offset
    baseline = min_return if min_return is not None else 0.0
    return (total - baseline) / (reference_return - baseline) + offset


@dataclass(frozen=True)
class ScoreInputs:
    """What scoring needs from a finished (or cut) episode."""

    cumulative_reward: float  # the undiscounted sum of every agent's rewards: the episode's return
    max_episode_steps: int | None  # None: the env has no step limit of its own
    n_agents: int
    n_done: int | None  # agents that reached their goal (None: the env has no such notion)
    per_agent_rewards: tuple[float, ...] = ()


def episode_score(outcome: str, totals: ScoreInputs, spec: EpisodeSpec) -> float | None:
    """The episode's score under the challenge's normalization. Env errors and stopped episodes have
    none; a failed episode (timeout, agent error) scores -1.0 under Flatland's normalizations, and
    its return so far (or the challenge's ``failed_return``) under ``return``."""
    if outcome in (ENV_ERROR, STOPPED):
        return None
    if spec.normalization == "return":
        failed = outcome != COMPLETED and spec.failed_return is not None
        return scaled_return(spec.failed_return if failed else totals.cumulative_reward, spec.reference_return,
                             spec.score_offset, spec.min_return)
    if outcome != COMPLETED:
        return FAILED_EPISODE_RETURN + spec.score_offset
    if spec.normalization == "flatland":
        return capped_normalized_return(list(totals.per_agent_rewards), totals.max_episode_steps, spec.score_offset)
    return normalized_return(totals.cumulative_reward, totals.max_episode_steps, totals.n_agents, spec.score_offset)


def percentage_complete(n_done: int, n_agents: int) -> float:
    """Fraction (0..1) of the trains that reached their target."""
    return n_done / n_agents if n_agents else 0.0


@dataclass
class ResponseStats:
    """Agent response times (our message sent -> its reply received), in seconds."""

    planning_s: float = 0.0
    time_bank_left_s: float | None = None  # None: the episode had no time bank
    samples: list[float] = field(default_factory=list, repr=False)  # every step's: the per-step path appends

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    def as_dict(self) -> dict:
        samples = self.samples
        return {
            "count": len(samples),
            "mean_s": sum(samples) / len(samples) if samples else None,
            "max_s": max(samples) if samples else None,
            "planning_s": self.planning_s,
            "p50_s": percentile(samples, 50),
            "p95_s": percentile(samples, 95),
            "time_bank_left_s": self.time_bank_left_s,
        }


@dataclass
class EpisodeResult:
    """One episode's record, as stored in Redis and written to the results JSON."""

    env_file: str
    test: int | None
    level: int | None
    outcome: str
    normalized_return: float | None
    percentage_complete: float | None
    steps: int
    cumulative_reward: float | None
    duration_s: float
    agent_response: dict = field(default_factory=dict)
    error: str | None = None
    seed: int | None = None
    n_agents: int | None = None
    max_episode_steps: int | None = None
    observation: dict | None = None
    env: str | None = None  # "flatland" or "gymnasium:ENV_ID"
    test_id: str | None = None  # FAB's test id (the test set's folder: level_0, Test_1; a FAB host's uuid)
    scenario_id: str | None = None  # FAB's scenario id (level_0_scenario_1, Test_1_Level_0; a FAB host's uuid)
    agent_usage: dict | None = None  # the agent's cpu_s and peak_memory_bytes over the episode (if we ran it)
    # recorded episodes (docs/audit.md); set by the recorder before the result is stored
    ep_id: str | None = None  # the recording's episode id (flatland's Trajectory ep_id)
    trajectory: str | None = None  # its folder: flatland's Trajectory data dir (gymnasium: episode.jsonl's)
    trajectory_digest: str | None = None  # sha256 of the recorded files, as `flateval verify` recomputes it
    video: str | None = None  # the rendered replay (mp4 or gif), when the episode was chosen for one

    def as_dict(self) -> dict[str, Any]:
        """The record; ``return`` is the episode's undiscounted sum of rewards (``cumulative_reward``,
        under the name gymnasium challenges use)."""
        return {**asdict(self), "return": self.cumulative_reward}
