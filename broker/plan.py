"""From a challenge phase and a test set to what a submission runs: its episodes and its rules."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from broker.test_set import EnvFile
from flateval.challenge import Phase
from flateval.settings import DEFAULT_ENV_SEED, EpisodeSpec


@dataclass(frozen=True)
class SubmissionPlan:
    env_files: tuple[EnvFile, ...]  # in test order, already cut to the phase's episode count
    template: EpisodeSpec  # every episode's settings (paths filled in per episode)
    overall_s: float
    aggregation: str = "mean"
    max_consecutive_timeouts: int | None = None
    completion_gate: float | None = None
    challenge: str = ""
    phase: str = ""

    def record_fields(self) -> dict:
        """What the submission record keeps of the plan (read back by workers and finalization)."""
        return {
            "challenge": self.challenge, "phase": self.phase, "aggregation": self.aggregation,
            "overall_s": self.overall_s,
            "max_consecutive_timeouts": "" if self.max_consecutive_timeouts is None else self.max_consecutive_timeouts,
            "completion_gate": "" if self.completion_gate is None else self.completion_gate,
        }


def make_plan(
    env_files: Sequence[EnvFile],
    phase: Phase,
    *,
    challenge: str = "",
    seed: int = DEFAULT_ENV_SEED,
    planning_timeout_s: float | None = None,
    step_timeout_s: float | None = None,
    overall_timeout_s: float | None = None,
) -> SubmissionPlan:
    """The phase's rules, with command-line overrides of the time limits applied."""
    limits = phase.time_limits
    limits = replace(limits, **{k: v for k, v in (("planning_s", planning_timeout_s), ("step_s", step_timeout_s),
                                                   ("overall_s", overall_timeout_s)) if v is not None})
    selected = tuple(env_files if phase.episodes is None else env_files[: phase.episodes])
    template = EpisodeSpec(
        env_path="", env_file="", seed=seed, planning_timeout_s=limits.planning_s, step_timeout_s=limits.step_s,
        score_offset=phase.scoring.offset, normalization=phase.scoring.normalization,
        rewards=phase.scoring.rewards, observation_builders=phase.observation_builders,
    )
    return SubmissionPlan(
        env_files=selected, template=template, overall_s=limits.overall_s,
        aggregation=phase.scoring.aggregation,
        max_consecutive_timeouts=phase.stop_rules.max_consecutive_timeouts,
        completion_gate=phase.stop_rules.completion_gate, challenge=challenge, phase=phase.name,
    )
