"""Typed configuration, in one place: what an episode job carries, and the run-wide defaults.

Everything a challenge can change (deadlines, seed, offset, observation builders) is a field here,
never a constant in code. Jobs cross Redis as JSON, so every settings object has plain
`as_dict`/`from_dict` round trips.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

DEFAULT_PLANNING_TIMEOUT_S = 300.0
DEFAULT_STEP_TIMEOUT_S = 5.0
DEFAULT_OVERALL_TIMEOUT_S = 8 * 3600.0
DEFAULT_ENV_SEED = 1001  # flatland-rl's evaluator resets every env with this seed
DEFAULT_GYMNASIUM_SEED = 0  # a gymnasium run resets episode i with seed + i
DEFAULT_OBSERVATION_BUILDERS = ("none", "tree", "global")

AGENT_ENDPOINT_ENV = "FLATEVAL_AGENT_ENDPOINT"
AGENT_CURVE_KEY_ENV = "FLATEVAL_AGENT_CURVE_KEY"  # the agent's CURVE public key (Z85): encrypt the link
REDIS_URL_ENV = "FLATEVAL_REDIS_URL"

FLATLAND = "flatland"
GYMNASIUM = "gymnasium"
ENVIRONMENTS = (FLATLAND, GYMNASIUM)


def parse_env(text: str) -> tuple[str, str | None]:
    """An episode's environment: ``flatland`` -> (flatland, None); ``gymnasium:ENV_ID`` -> (gymnasium,
    ENV_ID). Anything else is a `ValueError` whose message is one line for the user."""
    kind, sep, env_id = text.partition(":")
    if text == FLATLAND:
        return FLATLAND, None
    if kind == GYMNASIUM and sep and env_id.strip() == env_id and env_id:
        return GYMNASIUM, env_id
    raise ValueError(f"expected gymnasium:ENV_ID (e.g. gymnasium:CartPole-v1), got {text!r}")


@dataclass(frozen=True)
class EpisodeSpec:
    """Everything an env worker needs to run one episode: the payload of one RQ job."""

    env_path: str  # the env file ("" for a gymnasium episode: its env is made from `env`)
    env_file: str  # the episode's name in results: a test-set file, or ENV_ID/seed_S
    env: str = FLATLAND  # or "gymnasium:ENV_ID"
    test: int | None = None
    level: int | None = None
    episode_id: str = ""
    submission_id: str | None = None
    index: int = 0
    seed: int = DEFAULT_ENV_SEED
    planning_timeout_s: float = DEFAULT_PLANNING_TIMEOUT_S
    step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S
    score_offset: float = 0.0
    normalization: str = "seed"  # or "flatland": per-agent returns capped at -max steps first; or "return"
    reference_return: float | None = None  # "return": the score is return / reference_return
    failed_return: float | None = None  # "return": what a failed episode scores (None: its return so far)
    rewards: str = "DefaultRewards"
    observation_builders: tuple[str, ...] = DEFAULT_OBSERVATION_BUILDERS

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["observation_builders"] = list(self.observation_builders)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EpisodeSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown episode field(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        if "observation_builders" in values:
            values["observation_builders"] = tuple(values["observation_builders"])
        return cls(**values)


@dataclass(frozen=True)
class RunSettings:
    """How `flateval run` evaluates a submission locally. Time limits left None come from the
    challenge phase (default: the bundled neurips2020 challenge, phase round1)."""

    agent_command: str
    test_set: str | None = None
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    redis_url: str | None = None
    output: str | None = None
    seed: int | None = None  # None: the challenge's (flatland: 1001, gymnasium: 0)
    env: str | None = None  # "gymnasium:ENV_ID": evaluate on generated episodes instead of a test set
    episodes: int | None = None  # with a gymnasium env: how many (default: the challenge phase's)
    challenge: str | None = None
    phase: str | None = None
    planning_timeout_s: float | None = None
    step_timeout_s: float | None = None
    overall_timeout_s: float | None = None
    agent_startup_timeout_s: float = 60.0
    metrics_port: int | None = None
    curve: bool = False
    agent_cpus: float | None = None  # None: the challenge's agent resources
    agent_memory: str | None = None
    agent_pids: int | None = None
    sandbox: bool = True  # False: --no-sandbox (debugging)
