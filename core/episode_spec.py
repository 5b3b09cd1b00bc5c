"""The payload of one episode job: everything an env worker needs to play one episode.

Jobs cross Redis as JSON (RQ's JSON serializer, never pickle), so the spec has one plain
`as_dict`/`from_dict` round trip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from core.settings import (
    DEFAULT_ENV_SEED,
    DEFAULT_OBSERVATION_BUILDERS,
    DEFAULT_PLANNING_TIMEOUT_S,
    DEFAULT_STEP_TIMEOUT_S,
    FLATLAND,
    GYMNASIUM,
)


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
    reference_return: float | None = None  # "return": the return that scores 1 ...
    min_return: float | None = None  # ... and the one that scores 0 (None: 0); see scoring.episode.scaled_return
    failed_return: float | None = None  # "return": what a failed episode scores (None: its return so far)
    rewards: str = "DefaultRewards"
    observation_builders: tuple[str, ...] = DEFAULT_OBSERVATION_BUILDERS
    share_env_files: bool = False  # a replica agent may be sent the env file (docs/protocol.md section 15)

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
