"""From a challenge phase and what it is played on (a test set, or a Gymnasium env) to what a
submission runs: its episodes and its rules. `flateval run` and `flateval submit` both plan here."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from broker.test_set import EnvFile, discover, metadata_warnings
from core.challenge import AgentResources, Challenge, Phase, Recording, load_challenge
from core.episode_spec import EpisodeSpec, parse_env, selects_episode
from core.settings import DEFAULT_ENV_SEED, DEFAULT_GYMNASIUM_SEED, FLATLAND, GYMNASIUM


class PlanError(ValueError):
    """What to evaluate is ill-specified (options that exclude each other, an unknown env); one line."""


@dataclass(frozen=True)
class PlannedEpisode:
    """What differs between the episodes of one submission."""

    env_file: str  # its name in the results: a test-set file, or ENV_ID/seed_S
    seed: int
    env_path: str = ""  # the env file; "" for a gymnasium episode
    test: int | None = None
    level: int | None = None
    test_id: str | None = None  # FAB's ids (broker.test_set): a FAB host may put its own uuids here
    scenario_id: str | None = None


def test_set_episodes(env_files: Sequence[EnvFile], seed: int) -> list[PlannedEpisode]:
    """Every env file of a test set in test order, all reset with one seed (as flatland-rl's evaluator)."""
    return [PlannedEpisode(env_file=f.env_file, seed=seed, env_path=str(f.path), test=f.test, level=f.level,
                           test_id=f.test_id or None, scenario_id=f.scenario_id or None)
            for f in env_files]


def gymnasium_episodes(env_id: str, count: int, seed: int) -> list[PlannedEpisode]:
    """`count` episodes of one gymnasium env; episode i is reset with seed + i."""
    return [PlannedEpisode(env_file=f"{env_id}/seed_{seed + i}", seed=seed + i) for i in range(count)]


@dataclass(frozen=True)
class SubmissionPlan:
    episodes: tuple[PlannedEpisode, ...]  # in order, already cut to the phase's episode count
    template: EpisodeSpec  # every episode's settings (env file and seed filled in per episode)
    overall_s: float
    aggregation: str = "mean"
    max_consecutive_timeouts: int | None = None
    completion_gate: float | None = None
    challenge: str = ""
    phase: str = ""
    test_set: str = ""  # the test set's directory ("" for a gymnasium env)
    agent_resources: AgentResources = AgentResources()  # what each agent may use (the local sandbox's limits)
    warnings: tuple[str, ...] = ()  # what the user should hear at plan time, one line each

    @property
    def env_id(self) -> str | None:
        """The gymnasium env id the episodes play (None: a Flatland test set)."""
        kind, env_id = parse_env(self.template.env)
        return env_id if kind == GYMNASIUM else None


def make_plan(
    episodes: Sequence[PlannedEpisode],
    phase: Phase,
    *,
    challenge: str = "",
    env: str = FLATLAND,
    seed: int = DEFAULT_ENV_SEED,
    reset: bool = True,
    test_set: str = "",
    planning_timeout_s: float | None = None,
    step_timeout_s: float | None = None,
    overall_timeout_s: float | None = None,
) -> SubmissionPlan:
    """The phase's rules, with command-line overrides of the time limits applied (an infinite planning
    or step override, the command line's ``off``, lifts that deadline: FAB's behaviour)."""
    limits = phase.time_limits
    limits = replace(limits, **{k: (None if math.isinf(v) and k != "overall_s" else v)
                                for k, v in (("planning_s", planning_timeout_s), ("step_s", step_timeout_s),
                                             ("overall_s", overall_timeout_s)) if v is not None})
    if limits.episode_s is None and (limits.planning_s is None or limits.step_s is None):
        raise PlanError("no planning or step deadline needs the phase's episode wall limit (time_limits.episode_s), "
                        "so that a hung agent costs one episode")
    selected = tuple(episodes if phase.episodes is None else episodes[: phase.episodes])
    warnings = ()
    if phase.episodes is not None and phase.episodes > len(episodes):
        warnings = (f"phase {phase.name} asks for {phase.episodes} episodes but the test set has "
                    f"{len(episodes)}: playing those {len(episodes)}",)
    scoring = phase.scoring
    template = EpisodeSpec(
        env_path="", env_file="", env=env, seed=seed, reset=reset, planning_timeout_s=limits.planning_s,
        step_timeout_s=limits.step_s, episode_timeout_s=limits.episode_s,
        time_bank_s=limits.time_bank_s if limits.step_s is not None else None, score_offset=scoring.offset,
        normalization=scoring.normalization,
        reference_return=scoring.reference_return, min_return=scoring.min_return, failed_return=scoring.failed_return,
        rewards=scoring.rewards, observation_builders=phase.observation_builders,
        share_env_files=phase.share_env_files,
    )
    return SubmissionPlan(
        episodes=selected, template=template, overall_s=limits.overall_s,
        aggregation=scoring.aggregation,
        max_consecutive_timeouts=phase.stop_rules.max_consecutive_timeouts,
        completion_gate=phase.stop_rules.completion_gate, challenge=challenge, phase=phase.name, test_set=test_set,
        agent_resources=phase.agent_resources,
        warnings=warnings,
    )


def plan_submission(
    *,
    challenge: str | None = None,
    phase: str | None = None,
    test_set: str | None = None,
    env: str | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    planning_timeout_s: float | None = None,
    step_timeout_s: float | None = None,
    overall_timeout_s: float | None = None,
    default_test_set: Path | None = None,
    record_dir: str | None = None,
) -> SubmissionPlan:
    """What `flateval run`/`submit` evaluate, from their options: a Flatland test set (``--test-set``,
    else the challenge's, else `default_test_set`), or ``--env gymnasium:ENV_ID`` played ``--episodes``
    times (without ``--challenge``, under the bundled ``gymnasium`` challenge's rules).

    ``record_dir`` (``--record DIR``) records every episode there, as the challenge's
    ``recording.dir`` does (docs/audit.md).

    Raises `PlanError`, `ChallengeError` or `TestSetError`, each one line, before anything starts.
    Whether a gymnasium env can be made at all is the env workers' knowledge: the command line asks
    them (`flateval.planning`), so an unknown id fails before anything starts too.
    """
    rules = load_challenge(challenge or (GYMNASIUM if env else None))
    env_id = _env_id(env, rules, test_set)
    chosen = rules.phase(phase)
    if env_id is None:
        if episodes is not None:
            raise PlanError("--episodes is for gymnasium runs (--env gymnasium:ENV_ID): "
                            "a test set's episodes are its env files")
        directory = test_set or rules.test_set or default_test_set
        if not directory:
            raise PlanError("give --test-set (the challenge names none)")
        seed = seed if seed is not None else rules.seed if rules.seed is not None else DEFAULT_ENV_SEED
        env_files = discover(directory)
        plan = with_recording(make_plan(
            test_set_episodes(env_files, seed), chosen, challenge=rules.name, seed=seed,
            reset=rules.reset, test_set=str(Path(directory).resolve()), planning_timeout_s=planning_timeout_s,
            step_timeout_s=step_timeout_s, overall_timeout_s=overall_timeout_s), rules.recording, record_dir)
        return replace(plan, warnings=metadata_warnings(directory, env_files) + plan.warnings)
    seed = seed if seed is not None else rules.seed if rules.seed is not None else DEFAULT_GYMNASIUM_SEED
    if seed < 0:
        raise PlanError(f"--seed: a gymnasium seed must be at least 0, got {seed}")
    chosen = replace(chosen, episodes=episodes or chosen.episodes)
    return with_recording(make_plan(
        gymnasium_episodes(env_id, chosen.episodes, seed), chosen, challenge=rules.name, env=f"{GYMNASIUM}:{env_id}",
        seed=seed, planning_timeout_s=planning_timeout_s, step_timeout_s=step_timeout_s,
        overall_timeout_s=overall_timeout_s), rules.recording, record_dir)


def with_recording(plan: SubmissionPlan, recording: Recording, record_dir: str | None) -> SubmissionPlan:
    """The plan with its episodes recorded under `record_dir` (else the challenge's ``recording.dir``), and
    the challenge's video selection checked against its episodes."""
    directory = record_dir or recording.dir
    if recording.videos and not directory:
        raise PlanError("recording.videos: videos are rendered from recorded episodes: give --record DIR "
                        "(or the challenge's recording.dir)")
    for entry in recording.videos:
        if not any(selects_episode((entry,), e.env_file) for e in plan.episodes):
            raise PlanError(f"recording.videos: {entry!r} names no episode of this submission "
                            f"(e.g. {plan.episodes[0].env_file if plan.episodes else 'Test_0/Level_0.pkl'})")
    if not directory:
        return plan
    return replace(plan, template=replace(plan.template, record_dir=str(Path(directory).resolve()),
                                          videos=recording.videos, video_format=recording.video_format))


def _env_id(env: str | None, rules: Challenge, test_set: str | None) -> str | None:
    """The gymnasium env id to play (None: a Flatland test set), from --env or the challenge."""
    if env is None:
        if rules.environment == GYMNASIUM and test_set:
            raise PlanError(f"--test-set: challenge {rules.name} is played on a gymnasium env, not a test set")
        return rules.env_id if rules.environment == GYMNASIUM else None
    try:
        kind, env_id = parse_env(env)
    except ValueError as exc:
        raise PlanError(f"--env: {exc}") from None
    if kind != GYMNASIUM:
        raise PlanError(f"--env: expected gymnasium:ENV_ID (a Flatland run takes --test-set), got {env!r}")
    if test_set:
        raise PlanError("--env and --test-set exclude each other: a gymnasium run has no test set")
    if rules.environment != GYMNASIUM:
        raise PlanError(f"--env {env}: challenge {rules.name} is a {rules.environment} challenge "
                        "(give one with environment: gymnasium, or no --challenge)")
    return env_id
