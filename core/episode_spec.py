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
    test_id: str | None = None  # FAB's test id (the test set's folder, e.g. level_0; a FAB host's: its uuid)
    scenario_id: str | None = None  # FAB's scenario id: the episode's id in recordings (None: from env_file)
    episode_id: str = ""
    submission_id: str | None = None
    index: int = 0
    seed: int = DEFAULT_ENV_SEED
    reset: bool = True  # False: play the env as saved (flatland's policy runner without --post-seed, as FAB)
    planning_timeout_s: float | None = DEFAULT_PLANNING_TIMEOUT_S  # None: no planning deadline (FAB)
    step_timeout_s: float | None = DEFAULT_STEP_TIMEOUT_S  # None: no per-step deadline (FAB)
    episode_timeout_s: float | None = None  # the episode's wall limit, from its start (FAB: 30 min a scenario)
    time_bank_s: float | None = None  # seconds this episode's steps may draw on past step_timeout_s
    score_offset: float = 0.0
    normalization: str = "seed"  # or "flatland": per-agent returns capped at -max steps first; or "return"
    reference_return: float | None = None  # "return": the return that scores 1 ...
    min_return: float | None = None  # ... and the one that scores 0 (None: 0); see scoring.episode.scaled_return
    failed_return: float | None = None  # "return": what a failed episode scores (None: its return so far)
    rewards: str = "DefaultRewards"
    observation_builders: tuple[str, ...] = DEFAULT_OBSERVATION_BUILDERS
    share_env_files: bool = False  # a replica agent may be sent the env file (docs/protocol.md section 15)
    record_dir: str | None = None  # record the episode under record_dir/<submission>/<ep_id> (docs/audit.md)
    videos: tuple[str, ...] = ()  # the episodes to render after they end (`selects_episode`)
    video_format: str = "mp4"  # or "gif"

    @property
    def notice_timeout_s(self) -> float:
        """How long a goodbye or an ``aborted`` notice waits for the agent: one step deadline (without
        one, flatland's default 5 s), so that a hung agent is told from a slow one."""
        return self.step_timeout_s if self.step_timeout_s is not None else DEFAULT_STEP_TIMEOUT_S

    @property
    def ep_id(self) -> str:
        """The episode's id in its recording (flatland's Trajectory ``ep_id``): its scenario id, else
        `ep_id_of` its env file."""
        return self.scenario_id or ep_id_of(self.env_file)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["observation_builders"] = list(self.observation_builders)
        data["videos"] = list(self.videos)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EpisodeSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown episode field(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        for key in ("observation_builders", "videos"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def ep_id_of(env_file: str) -> str:
    """An episode's recording id, from its name in results: ``Test_0/Level_1.pkl`` -> ``Test_0_Level_1``
    (flatland's own runners name episodes ``<test_id>_<env_id>``), ``CartPole-v1/seed_7`` ->
    ``CartPole-v1_seed_7``; a file whose name already starts with its folder's is its own id
    (ECML 2026's ``level_0/level_0_scenario_1.pkl`` -> ``level_0_scenario_1``, as FAB names it). One
    folder name, unique within a submission."""
    name = env_file.removesuffix(".pkl").replace("\\", "/")
    folder, _, stem = name.rpartition("/")
    if folder and "/" not in folder and stem.startswith(folder + "_"):
        return stem
    return name.replace("/", "_")


def selects_episode(selection: "tuple[str, ...] | list[str]", env_file: str) -> bool:
    """Whether a video selection names this episode: ``all``, or an entry naming it as its env file
    (``Test_0/Level_1.pkl``), without the suffix (``Test_0/Level_1``) or as its ep_id (``Test_0_Level_1``)."""
    own = ep_id_of(env_file)
    return any(entry == "all" or ep_id_of(entry) == own for entry in selection)
